// Copyright 2026 The Petrel Authors
// SPDX-License-Identifier: Apache-2.0

package main

import (
	"context"
	"encoding/json"
	"errors"
	"fmt"
	"slices"
	"strings"
	"time"

	"github.com/petrelchat/petrel/client"
	"github.com/petrelchat/petrel/client/store"
)

// petrel history and petrel outbox: what the home holds, read from the store without connecting.

const (
	// historyScanMax bounds the history records read for one conversation (newest first).
	historyScanMax = 1_000_000
	// historyLimitMax bounds --limit.
	historyLimitMax = 100_000
	// outboxListMax bounds the outbox entries listed.
	outboxListMax = 10_000
	// failedScanMax bounds the recent history records searched for failed messages.
	failedScanMax = 10_000
)

// convKey is the conversation a history record belongs to: the peer's account name, or
// store.GroupKey(group id) for a group's messages and membership changes.
func convKey(r *store.HistoryRecord) string {
	if r.Group != "" {
		return store.GroupKey(r.Group)
	}
	return r.Peer
}

// convHistory returns up to limit visible records of conversation key, oldest first, reading at
// most historyScanMax records from the newest.
func convHistory(tx *store.Tx, key string, limit int) ([]*store.HistoryRecord, error) {
	var out []*store.HistoryRecord
	var before uint64
	for scanned := 0; scanned < historyScanMax && len(out) < limit; {
		page, err := tx.HistoryBefore(before, 512)
		if err != nil {
			return nil, err
		}
		if len(page) == 0 {
			break
		}
		for _, r := range page {
			before = r.Seq
			scanned++
			if r.Unverified || convKey(r) != key {
				continue
			}
			out = append(out, r)
			if len(out) == limit {
				break
			}
		}
	}
	slices.Reverse(out)
	return out, nil
}

// markWord is a sent message's mark in words (the status of an outgoing record).
func markWord(r *store.HistoryRecord) string {
	if r.Dir != store.Outgoing || r.Synced || r.Timer || r.GroupEvent != nil {
		return ""
	}
	switch r.Status {
	case store.StatusPending, "":
		return "… queued"
	case store.StatusSent:
		return "✓ sent"
	case store.StatusDelivered:
		return "✓✓ delivered"
	case store.StatusRead:
		return "✓✓ read"
	case store.StatusFailed:
		return "✗ failed: " + r.Failure
	}
	return string(r.Status)
}

// jsonHistory is one line of history --json: recv --json's keys, plus status (an own message's
// mark: pending, sent, delivered, read or failed) and failure.
type jsonHistory struct {
	Type       string `json:"type"` // "message", "group_event" or "disappearing"
	ID         string `json:"id"`
	From       string `json:"from"`
	FromDevice string `json:"from_device,omitempty"`
	To         string `json:"to,omitempty"`
	Group      string `json:"group,omitempty"`
	Text       string `json:"text"`
	SentAt     string `json:"sent_at,omitempty"`
	ServerTime string `json:"server_time,omitempty"`
	ReceivedAt string `json:"received_at,omitempty"`
	Direction  string `json:"direction"`
	Status     string `json:"status,omitempty"`
	Failure    string `json:"failure,omitempty"`
	ExpiresIn  int64  `json:"expires_in,omitempty"`
}

// recordText is the text a record shows: the message, or a membership change ("alice added
// carol") or timer change ("alice set disappearing messages to 1 day") with its author.
func recordText(r *store.HistoryRecord, me string) string {
	switch {
	case r.GroupEvent != nil:
		ev := r.GroupEvent
		return (&client.GroupEvent{Kind: ev.Kind, Actor: ev.Actor, Targets: ev.Targets, Version: ev.Version}).String()
	case r.Timer:
		who := recordFrom(r, me)
		if r.Dir == store.Outgoing && !r.Synced {
			who = "you"
		}
		return timerText(who, r.TimerSet)
	}
	return r.Body
}

// recordFrom is who wrote a record: an account name (this account's for an outgoing one).
func recordFrom(r *store.HistoryRecord, me string) string {
	switch {
	case r.GroupEvent != nil:
		return r.GroupEvent.Actor
	case r.Dir == store.Outgoing:
		return me
	}
	return r.Peer
}

func runHistory(ctx context.Context, e *env, args []string) int {
	const cmd = "history"
	fs := newFlags(e, cmd, "history NAME [--limit N] [--json] | history --group GROUP [--limit N] [--json]\n\n"+
		"Prints the stored history of the conversation with NAME (or group GROUP) from this home,\n"+
		"oldest first, without connecting: '[2026-12-04 14:05] alice: TEXT' in local time, your\n"+
		"own messages as 'you: TEXT ✓✓ delivered' (… queued, ✓ sent, ✓✓ delivered, ✓✓ read,\n"+
		"✗ failed). With --json one object per line: type, id, from, from_device, to, group, text,\n"+
		"sent_at, server_time, received_at, direction, status and failure.")
	group := fs.String("group", "", "the group (local name or id) instead of an account")
	limit := fs.Int("limit", 50, fmt.Sprintf("the newest N messages (at most %d)", historyLimitMax))
	asJSON := fs.Bool("json", false, "print one JSON object per message")
	// NAME may come before the flags too (history bob --limit 5).
	var names []string
	if len(args) > 0 && !strings.HasPrefix(args[0], "-") {
		names, args = args[:1], args[1:]
	}
	if code, ok := parseFlags(fs, args); !ok {
		return code
	}
	names = append(names, fs.Args()...)
	if *group == "" && len(names) != 1 || *group != "" && len(names) != 0 {
		return usageErr(e, cmd, "want exactly one NAME, or --group GROUP")
	}
	if *limit < 1 || *limit > historyLimitMax {
		return usageErr(e, cmd, "--limit must be between 1 and %d", historyLimitMax)
	}
	st, err := openStore(e, false)
	if err != nil {
		return fail(e, cmd, err)
	}
	defer st.Close()
	var recs []*store.HistoryRecord
	var me, groupName string
	err = st.View(func(tx *store.Tx) error {
		a, err := tx.Account()
		if err != nil {
			return err
		}
		me = a.Name
		key := ""
		if len(names) == 1 {
			key = strings.ToLower(names[0])
		}
		if *group != "" {
			g, err := tx.GroupByName(*group)
			if errors.Is(err, store.ErrNotFound) {
				g, err = tx.Group(*group)
			}
			if errors.Is(err, store.ErrNotFound) {
				return fmt.Errorf("no group %q on this device (see petrel group list)", *group)
			}
			if err != nil {
				return err
			}
			key, groupName = store.GroupKey(g.ID), g.Name
		}
		recs, err = convHistory(tx, key, *limit)
		return err
	})
	if err != nil {
		return fail(e, cmd, err)
	}
	for _, r := range recs {
		var line string
		if *asJSON {
			j := jsonHistory{Type: "message", ID: r.ID, From: recordFrom(r, me), FromDevice: r.PeerDevice, Group: groupName,
				Text: recordText(r, me), SentAt: formatTime(r.SentAt), ServerTime: formatTime(r.ServerTime),
				ReceivedAt: formatTime(r.ReceivedAt), Direction: "in", ExpiresIn: int64(r.ExpiresIn / time.Second)}
			if r.Dir == store.Outgoing {
				j.Direction, j.FromDevice = "out", ""
				if groupName == "" {
					j.To = r.Peer
				}
				if !r.Synced {
					j.Status, j.Failure = string(r.Status), r.Failure
				}
			}
			switch {
			case r.GroupEvent != nil:
				j.Type = "group_event"
			case r.Timer:
				j.Type = "disappearing"
			}
			b, err := json.Marshal(j)
			if err != nil {
				return fail(e, cmd, err)
			}
			line = string(escapeJSONInvisible(b))
		} else {
			line = historyLine(r, me)
		}
		if _, err := fmt.Fprintln(e.stdout, line); err != nil {
			return fail(e, cmd, err)
		}
	}
	if len(recs) == 0 && !*asJSON {
		fmt.Fprintln(e.stderr, "petrel history: no messages stored for this conversation")
	}
	return 0
}

// recordTime is when a record happened, as shown: the server's time for a received message, the
// sender's clock otherwise.
func recordTime(r *store.HistoryRecord) time.Time {
	switch {
	case !r.ServerTime.IsZero():
		return r.ServerTime
	case !r.SentAt.IsZero():
		return r.SentAt
	}
	return r.ReceivedAt
}

// historyLine is the text form of a record: "[2026-12-04 14:05] alice: TEXT" (local time, every
// part escaped for the terminal), "you: TEXT ✓✓ delivered" for this device's own.
func historyLine(r *store.HistoryRecord, me string) string {
	ts := recordTime(r).Local().Format("2006-01-02 15:04")
	switch {
	case r.GroupEvent != nil, r.Timer:
		return fmt.Sprintf("[%s] %s", ts, sanitize(recordText(r, me)))
	case r.Dir == store.Outgoing && !r.Synced:
		return fmt.Sprintf("[%s] you: %s %s", ts, sanitize(r.Body), sanitize(markWord(r)))
	}
	return fmt.Sprintf("[%s] %s: %s", ts, sanitize(recordFrom(r, me)), sanitize(r.Body))
}

// jsonOutbox is one line of outbox --json.
type jsonOutbox struct {
	Type          string `json:"type"` // "outbox"
	ID            string `json:"id"`
	To            string `json:"to,omitempty"`
	Group         string `json:"group,omitempty"`
	Text          string `json:"text"`
	State         string `json:"state"` // "queued", "awaiting_receipts" or "failed"
	Reason        string `json:"reason"`
	CreatedAt     string `json:"created_at"`
	ServerAckedAt string `json:"server_acked_at,omitempty"`
	Awaiting      int    `json:"awaiting,omitempty"`
}

func runOutbox(ctx context.Context, e *env, args []string) int {
	const cmd = "outbox"
	fs := newFlags(e, cmd, "outbox [--json]\n\n"+
		"Lists the messages this home has not finished sending, and why: 'queued' (the server has\n"+
		"not acked it yet: the next petrel send, recv, chat or tui sends it), 'awaiting receipts'\n"+
		"(the server has it; kept until every recipient device confirms delivery, and sent again\n"+
		"if the server lost it) or 'failed' (refused for good, with the reason). Receipts and\n"+
		"control messages waiting for the server are counted on the last line.")
	asJSON := fs.Bool("json", false, "print one JSON object per message")
	if code, ok := parseFlags(fs, args); !ok {
		return code
	}
	if fs.NArg() > 0 {
		return usageErr(e, cmd, "unexpected argument %q", fs.Arg(0))
	}
	st, err := openStore(e, false)
	if err != nil {
		return fail(e, cmd, err)
	}
	defer st.Close()
	var rows []jsonOutbox
	others := 0
	err = st.View(func(tx *store.Tx) error {
		var after uint64
		for len(rows)+others < outboxListMax {
			page, err := tx.Outbox(after, 256)
			if err != nil {
				return err
			}
			if len(page) == 0 {
				break
			}
			for _, o := range page {
				after = o.Seq
				if o.Kind != store.KindText {
					if o.Pending() {
						others++
					}
					continue
				}
				row := jsonOutbox{Type: "outbox", ID: o.ID, CreatedAt: formatTime(o.CreatedAt), ServerAckedAt: formatTime(o.ServerAckedAt)}
				if gid := store.GroupOf(o.To); gid != "" {
					row.Group = gid
					if g, err := tx.Group(gid); err == nil {
						row.Group = g.Name
					}
				} else {
					row.To = o.To
				}
				if r, err := tx.HistoryByID(store.Outgoing, o.To, o.ID); err == nil {
					row.Text = r.Body
				}
				if o.Pending() {
					row.State, row.Reason = "queued", "not acked by the server yet"
				} else {
					row.State, row.Awaiting = "awaiting_receipts", len(o.Awaiting)
					row.Reason = fmt.Sprintf("the server has it; waiting for delivery receipts from %d device(s)", len(o.Awaiting))
				}
				rows = append(rows, row)
			}
		}
		// Failed messages have left the outbox; the recent history says which and why.
		recs, err := tx.HistoryBefore(0, failedScanMax)
		if err != nil {
			return err
		}
		for i := len(recs) - 1; i >= 0; i-- {
			r := recs[i]
			if r.Dir != store.Outgoing || r.Status != store.StatusFailed {
				continue
			}
			row := jsonOutbox{Type: "outbox", ID: r.ID, Text: r.Body, State: "failed", Reason: r.Failure, CreatedAt: formatTime(r.SentAt)}
			if r.Group != "" {
				row.Group = r.Group
				if g, err := tx.Group(r.Group); err == nil {
					row.Group = g.Name
				}
			} else {
				row.To = r.Peer
			}
			rows = append(rows, row)
		}
		return nil
	})
	if err != nil {
		return fail(e, cmd, err)
	}
	for _, row := range rows {
		if *asJSON {
			b, err := json.Marshal(row)
			if err != nil {
				return fail(e, cmd, err)
			}
			fmt.Fprintf(e.stdout, "%s\n", escapeJSONInvisible(b))
			continue
		}
		to := row.To
		if row.Group != "" {
			to = "[" + row.Group + "]"
		}
		state := strings.ReplaceAll(row.State, "_", " ")
		fmt.Fprintf(e.stdout, "%s  %s  to %s: %s — %s\n", row.ID, state, sanitize(to), sanitize(quote(row.Text)), sanitize(row.Reason))
	}
	if !*asJSON {
		if len(rows) == 0 {
			fmt.Fprintln(e.stdout, "the outbox is empty: everything sent was delivered")
		}
		if others > 0 {
			fmt.Fprintf(e.stdout, "(%d receipts and control messages wait for the server too)\n", others)
		}
		if queued := countState(rows, "queued"); queued > 0 {
			fmt.Fprintf(e.stdout, "%d queued: the next 'petrel send', 'recv', 'chat' or 'tui' delivers them\n", queued)
		}
	}
	return 0
}

func countState(rows []jsonOutbox, state string) int {
	n := 0
	for _, r := range rows {
		if r.State == state {
			n++
		}
	}
	return n
}

// queuedHint tells, when a send ended with an error but message id stayed in the outbox (the
// server did not ack it in time, or could not be reached), that it is not lost and what sends it.
func queuedHint(e *env, cmd string, st *store.Store, id string, sendErr error) {
	if id == "" || errors.Is(sendErr, client.ErrUnknownUser) || errors.Is(sendErr, client.ErrInvalidName) ||
		errors.Is(sendErr, client.ErrFrameTooLarge) {
		return
	}
	queued := false
	_ = st.View(func(tx *store.Tx) error {
		pending, err := tx.PendingOutbox(outboxListMax)
		for _, o := range pending {
			if o.ID == id {
				queued = true
			}
		}
		return err
	})
	if queued {
		fmt.Fprintf(e.stderr, "petrel %s: message %s is queued in this home; the next 'petrel send', 'recv' or 'chat' delivers it ('petrel outbox' lists what waits)\n", cmd, id)
	}
}
