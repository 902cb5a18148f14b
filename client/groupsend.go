// Copyright 2026 The Petrel Authors
// SPDX-License-Identifier: Apache-2.0

package client

import (
	"context"
	"errors"
	"fmt"
	"maps"
	"slices"
	"sync"
	"time"

	"github.com/petrelchat/petrel/client/store"
	"github.com/petrelchat/petrel/e2ee"
	petrelv1 "github.com/petrelchat/petrel/proto/petrel/v1"
	"google.golang.org/protobuf/proto"
)

// Sending in groups. A group message is an outbox entry like a 1:1 one (Kind text) whose
// recipient is store.GroupKey(group id): the group is its own lane of the send window, so its
// messages leave in order. Sending it (sendGroupEntry):
//
//  1. the member devices: every device of every other member account (their signed lists, as for
//     1:1) and this account's other devices;
//  2. this device's sender key for the group, replaced by a new one when a device that holds the
//     current one is no longer a member device (a member removed or gone, a device unlinked);
//  3. the key's distribution, over the pairwise sessions, to every member device that does not
//     hold it yet (one Send per member account; this account's other devices get it as the
//     copies every Send carries, or device to device), recorded per device once the server acks;
//  4. the message, encrypted once with the sender key, sent as one group Send.
//
// Invariant 3 for groups: the entry stays in the outbox after the server's ack until every
// device of the other members that it was sent to (as this device knew them) has sent a delivery
// receipt, when there are at most maxGroupAwaiting of them; above that, the server's ack ends it.
// A message whose receipts are still missing after Config.ResendInterval is sent again (same id;
// receivers drop duplicates), at most maxGroupSends times in all, then leaves the outbox.
// The delivered and read marks do not depend on the outbox entry (groupmarks.go): they count
// member accounts, for any group size up to maxGroupMarkMembers.

// SendGroup sends text to group (a local name or id) and returns the message id once the server
// has acked it (every member device has it, live or stored). See Send for the outbox rules.
func (c *Client) SendGroup(ctx context.Context, group, text string) (string, error) {
	done := make(chan error, 1)
	id, err := c.enqueueGroup(group, text, done)
	if err != nil {
		return id, err
	}
	return id, c.awaitAck(ctx, id, done)
}

// EnqueueGroup stores text for group in the outbox and returns its message id at once (see
// Enqueue).
func (c *Client) EnqueueGroup(group, text string) (string, error) {
	return c.enqueueGroup(group, text, nil)
}

func (c *Client) enqueueGroup(group, text string, done chan error) (string, error) {
	if n := len(text); n > c.frameLimit() {
		return "", frameTooLarge(n, c.frameLimit())
	}
	id, err := NewMessageID(c.cfg.Rand)
	if err != nil {
		return "", err
	}
	now := c.cfg.Now()
	stopped := c.addWaiter(id, done)
	if stopped != nil && !c.runEnded() {
		return "", stopped
	}
	err = c.st.Update(func(tx *store.Tx) error {
		g, err := findGroup(tx, group)
		if err != nil {
			return err
		}
		if g.Left {
			return fmt.Errorf("%w: this account is no longer a member of %q", ErrUnknownGroup, g.Name)
		}
		to := store.GroupKey(g.ID)
		cs, err := tx.ChatSettings(to) // the group's disappearing timer (disappearing.go)
		if err != nil {
			return err
		}
		content, err := proto.Marshal(&petrelv1.Content{MessageId: id, GroupId: g.ID,
			Body:        &petrelv1.Content_Text{Text: &petrelv1.Text{Body: text, SentAtMs: now.UnixMilli()}},
			ExpiresInMs: cs.ExpiresIn.Milliseconds()})
		if err != nil {
			return err
		}
		if err := tx.AddOutbox(&store.OutboxEntry{ID: id, To: to, Kind: store.KindText, Content: content, CreatedAt: now}); err != nil {
			return err
		}
		rec := &store.HistoryRecord{ID: id, Dir: store.Outgoing, Peer: to, Group: g.ID, Body: text,
			SentAt: now, Status: store.StatusPending, ExpiresIn: cs.ExpiresIn}
		if err := tx.AddHistory(rec); err != nil {
			return err
		}
		return c.startSentCountdown(tx, rec)
	})
	if err != nil {
		c.finish(id, nil)
		if errors.Is(err, ErrUnknownGroup) {
			return "", err
		}
		return "", fmt.Errorf("store message: %w", err)
	}
	if stopped != nil {
		return id, queuedAfterRun(id, stopped)
	}
	c.kickOutbox()
	return id, nil
}

// sendGroupEntry sends one group message (see the steps above).
func (l *link) sendGroupEntry(ctx context.Context, e *store.OutboxEntry, gid string) error {
	c := l.c
	var g *store.Group
	err := c.st.View(func(tx *store.Tx) error {
		var err error
		g, err = tx.Group(gid)
		return err
	})
	if errors.Is(err, store.ErrNotFound) || err == nil && g.Left {
		return fmt.Errorf("%w: this account is no longer a member", ErrUnknownGroup)
	}
	if err != nil {
		return &storeError{err}
	}
	devices, err := l.memberDevices(ctx, g)
	if err != nil {
		return err
	}
	dist, keyID, missing, err := c.senderKeyFor(gid, devices)
	if err != nil {
		return err
	}
	if len(missing) > 0 {
		if err := l.distribute(ctx, g, keyID, dist, missing); err != nil {
			return err
		}
	}
	var frame *petrelv1.Frame
	err = c.st.Update(func(tx *store.Tx) error {
		g, err := tx.Group(gid)
		if err != nil {
			return err
		}
		if g.SenderKey == nil || g.SenderKeyID != keyID {
			return errors.New("the sender key changed meanwhile")
		}
		sk, err := e2ee.UnmarshalSenderKey(g.SenderKey)
		if err != nil {
			return fmt.Errorf("stored sender key: %w", err)
		}
		var content petrelv1.Content
		if err := proto.Unmarshal(e.Content, &content); err != nil {
			return fmt.Errorf("stored outbox entry: %w", err)
		}
		pt, err := padded(&content)
		if err != nil {
			return err
		}
		ct, err := sk.Encrypt(pt)
		if err != nil {
			return err
		}
		// The key advances before anything leaves (a message key is never used twice).
		if g.SenderKey, err = sk.MarshalBinary(); err != nil {
			return err
		}
		if err := tx.PutGroup(g); err != nil {
			return err
		}
		send := &petrelv1.Send{MessageId: e.ID, GroupId: gid, GroupCiphertext: ct}
		if ms := content.GetExpiresInMs(); ms > 0 { // a disappearing message: the server deletes it then
			send.ExpiresAtMs = e.CreatedAt.UnixMilli() + ms
		}
		frame = &petrelv1.Frame{Body: &petrelv1.Frame_Send{Send: send}}
		return nil
	})
	if err != nil {
		return storeErr(err)
	}
	resp, err := l.conn.request(ctx, frame)
	if err != nil {
		return err
	}
	if resp.GetSendResult() == nil {
		return fmt.Errorf("%w: expected SendResult", ErrProtocol)
	}
	var awaiting, members []string
	for dev, acct := range devices {
		if acct != c.name {
			awaiting = append(awaiting, dev)
			if !slices.Contains(members, acct) {
				members = append(members, acct)
			}
		}
	}
	slices.Sort(awaiting)
	slices.Sort(members)
	return c.groupAcked(l.runCtx, e, awaiting, members)
}

// groupAcked records the server's ack of group message e, sent to the member devices awaiting
// (of the other member accounts members). The entry then waits for their delivery receipts, or,
// sent to more than maxGroupAwaiting devices, leaves the outbox at once (the server's ack is its
// last word). Its history record becomes "sent" and learns members for its marks (groupMarks:
// receipts may have come first).
func (c *Client) groupAcked(ctx context.Context, e *store.OutboxEntry, awaiting, members []string) error {
	var events []Event
	err := c.st.Update(func(tx *store.Tx) error {
		events = nil
		cur, err := tx.OutboxByID(e.To, e.ID)
		if errors.Is(err, store.ErrNotFound) {
			return nil
		}
		if err != nil {
			return err
		}
		cur.Awaiting = slices.DeleteFunc(slices.Clone(awaiting), func(d string) bool { return slices.Contains(cur.Receipted, d) })
		if len(awaiting) > c.groupAwaiting || len(cur.Awaiting) == 0 {
			err = tx.DeleteOutbox(cur)
		} else {
			cur.ServerAckedAt = c.cfg.Now()
			cur.CheckedAt = time.Time{}
			cur.Sends++
			err = tx.PutOutbox(cur)
		}
		if err != nil {
			return err
		}
		r, err := tx.HistoryByID(store.Outgoing, e.To, e.ID)
		if errors.Is(err, store.ErrNotFound) {
			return nil
		}
		if err != nil {
			return err
		}
		if statusRank(r.Status) < 1 {
			r.Status, r.Failure = store.StatusSent, ""
		}
		if len(members) <= maxGroupMarkMembers && len(r.GroupMembers) == 0 {
			r.GroupMembers = members // sorted (groupmarks.go)
			foldEarlyMarks(r)
		}
		events = groupMarks(r)
		return tx.PutHistory(r)
	})
	if err != nil {
		return &storeError{err}
	}
	c.finish(e.ID, nil)
	c.heardFrom(e.To) // the group's typing count starts again (presence.go)
	for _, ev := range events {
		c.emit(ctx, ev)
	}
	return nil
}

// memberDevices returns the member devices of g other than this one (device id → account): the
// devices of each other member's verified list that the server has (fetched where not known,
// groupFetchConcurrency at a time), and this account's other devices. A member account that no
// longer exists is left out.
func (l *link) memberDevices(ctx context.Context, g *store.Group) (map[string]string, error) {
	c := l.c
	out := map[string]string{}
	var (
		mu       sync.Mutex
		firstErr error
		wg       sync.WaitGroup
	)
	sem := make(chan struct{}, groupFetchConcurrency)
	for _, m := range g.Members {
		select {
		case sem <- struct{}{}:
		case <-ctx.Done():
			wg.Wait()
			return nil, ctx.Err()
		}
		wg.Add(1)
		go func(m string) {
			defer func() { <-sem; wg.Done() }()
			devs, err := l.ensureSessions(ctx, m)
			mu.Lock()
			defer mu.Unlock()
			switch {
			case errors.Is(err, ErrUnknownUser):
				c.log.Info("a group member's account is gone", "group", g.ID, "member", m)
			case err != nil:
				if firstErr == nil {
					firstErr = err
				}
			default:
				for _, d := range devs {
					out[d] = m
				}
			}
		}(m)
	}
	wg.Wait()
	if firstErr != nil {
		return nil, firstErr
	}
	delete(out, c.deviceID)
	return out, nil
}

// senderKeyFor returns this device's sender key for group gid (its distribution now and its key
// id), making a new one first if there is none or a device that holds the current one is not
// among devices any more (rotation), and the devices that do not hold it yet.
func (c *Client) senderKeyFor(gid string, devices map[string]string) (dist []byte, keyID uint32, missing map[string]string, err error) {
	err = c.st.Update(func(tx *store.Tx) error {
		g, err := tx.Group(gid)
		if err != nil {
			return err
		}
		var holders map[string]string
		rotate := g.SenderKey == nil
		if !rotate {
			if holders, err = tx.GivenDevices(gid, g.SenderKeyID); err != nil {
				return err
			}
			for dev, acct := range holders {
				if devices[dev] != acct {
					rotate = true
					c.log.Info("rotating the group's sender key: a device that holds it is no longer a member device", "group", gid, "peer_device", dev)
					break
				}
			}
		}
		var sk *e2ee.SenderKey
		if rotate {
			if g.SenderKey != nil {
				g.OldKeyIDs = append(g.OldKeyIDs, g.SenderKeyID)
				for len(g.OldKeyIDs) > maxOldKeys {
					if err := tx.DeleteGiven(gid, g.OldKeyIDs[0]); err != nil {
						return err
					}
					g.OldKeyIDs = g.OldKeyIDs[1:]
				}
			}
			if sk, err = e2ee.NewSenderKey(c.cfg.Rand); err != nil {
				return err
			}
			if g.SenderKey, err = sk.MarshalBinary(); err != nil {
				return err
			}
			g.SenderKeyID, holders = sk.KeyID(), nil
			if err := tx.DeleteGiven(gid, g.SenderKeyID); err != nil { // a reused random id
				return err
			}
			if err := tx.PutGroup(g); err != nil {
				return err
			}
		} else if sk, err = e2ee.UnmarshalSenderKey(g.SenderKey); err != nil {
			return fmt.Errorf("stored sender key: %w", err)
		}
		dist, keyID = sk.Distribution(), g.SenderKeyID
		missing = map[string]string{}
		for dev, acct := range devices {
			if _, ok := holders[dev]; !ok {
				missing[dev] = acct
			}
		}
		return nil
	})
	return dist, keyID, missing, storeErr(err)
}

// distribute gives distribution dist of key keyID to the missing member devices: one pairwise
// Send per member account (groupFetchConcurrency at a time), then device to device for this
// account's other devices that none of those Sends reached. Each device is recorded as a holder
// once the server acked the Send that carried it.
func (l *link) distribute(ctx context.Context, g *store.Group, keyID uint32, dist []byte, missing map[string]string) error {
	c := l.c
	byAccount := map[string][]string{}
	for dev, acct := range missing {
		byAccount[acct] = append(byAccount[acct], dev)
	}
	content := func() *petrelv1.Content {
		return &petrelv1.Content{GroupId: g.ID, Body: &petrelv1.Content_SenderKey{SenderKey: &petrelv1.SenderKeyDistribution{
			Distribution: dist, GroupVersion: g.Version}}}
	}
	record := func(reached map[string]string) error {
		return storeErr(c.st.Update(func(tx *store.Tx) error {
			for dev, acct := range reached {
				if err := tx.PutGiven(g.ID, keyID, dev, &store.GivenKey{Account: acct, Distribution: dist}); err != nil {
					return err
				}
			}
			return nil
		}))
	}
	var (
		mu       sync.Mutex
		firstErr error
		wg       sync.WaitGroup
		ownDone  = map[string]bool{}
	)
	sem := make(chan struct{}, groupFetchConcurrency)
	for _, acct := range slices.Sorted(maps.Keys(byAccount)) {
		if acct == c.name {
			continue
		}
		select {
		case sem <- struct{}{}:
		case <-ctx.Done():
			wg.Wait()
			return ctx.Err()
		}
		wg.Add(1)
		go func(acct string) {
			defer func() { <-sem; wg.Done() }()
			devs, own, err := l.sendControlNow(ctx, acct, nil, content())
			if errors.Is(err, ErrUnknownUser) {
				return
			}
			reached := map[string]string{}
			for _, d := range devs {
				reached[d] = acct
			}
			for _, d := range own {
				reached[d] = c.name
			}
			if err == nil {
				err = record(reached)
			}
			mu.Lock()
			defer mu.Unlock()
			if err != nil && firstErr == nil {
				firstErr = err
			}
			for _, d := range own {
				ownDone[d] = err == nil
			}
		}(acct)
	}
	wg.Wait()
	if firstErr != nil {
		return firstErr
	}
	var own []string
	for _, dev := range byAccount[c.name] {
		if !ownDone[dev] {
			own = append(own, dev)
		}
	}
	if len(own) == 0 {
		return nil
	}
	devs, _, err := l.sendControlNow(ctx, c.name, own, content())
	if err != nil {
		return err
	}
	reached := map[string]string{}
	for _, d := range devs {
		reached[d] = c.name
	}
	return record(reached)
}

// sendControlNow sends a pairwise control message at once (not through the outbox) to every
// device of account to (and, as copies, this account's other devices), or, with to = this
// account, to its other devices in subset. It returns the devices it reached, refetching stale
// device lists like trySend.
func (l *link) sendControlNow(ctx context.Context, to string, subset []string, content *petrelv1.Content) (devices, own []string, err error) {
	c := l.c
	for round := 0; ; round++ {
		id, err := NewMessageID(c.cfg.Rand)
		if err != nil {
			return nil, nil, err
		}
		content.MessageId = id
		raw, err := proto.Marshal(content)
		if err != nil {
			return nil, nil, err
		}
		e := &store.OutboxEntry{ID: id, To: to, Kind: store.KindControl, Content: raw, CreatedAt: c.cfg.Now()}
		if to == c.name {
			others, err := l.ensureSessions(ctx, c.name)
			if err != nil {
				return nil, nil, err
			}
			devices = slices.DeleteFunc(slices.Clone(subset), func(d string) bool { return !slices.Contains(others, d) })
			own = nil
		} else {
			if devices, err = l.ensureSessions(ctx, to); err != nil {
				return nil, nil, err
			}
			if own, err = l.ensureSessions(ctx, c.name); err != nil {
				return nil, nil, err
			}
		}
		if len(devices) == 0 {
			return nil, nil, nil
		}
		frame, err := c.encryptEntry(e, devices, own)
		if err != nil {
			return nil, nil, err
		}
		_, err = l.conn.request(ctx, frame)
		if err == nil {
			return devices, own, nil
		}
		var se *Error
		if errors.As(err, &se) && round < maxDeviceRounds &&
			(se.Code == petrelv1.ErrorCode_ERROR_CODE_STALE_DEVICES || se.Code == petrelv1.ErrorCode_ERROR_CODE_UNKNOWN_DEVICE) {
			if err := c.forgetDevices(to); err != nil {
				return nil, nil, err
			}
			if err := c.forgetDevices(c.name); err != nil {
				return nil, nil, err
			}
			continue
		}
		return nil, nil, err
	}
}

// checkGroupOutbox sends again the group messages whose receipts are still missing
// Config.ResendInterval after the server's last ack (at most maxGroupSends sends in all; then
// the entry leaves the outbox, its status "sent").
func (c *Client) checkGroupOutbox() error {
	now := c.cfg.Now()
	resend := 0
	err := c.st.Update(func(tx *store.Tx) error {
		resend = 0
		var after uint64
		for scanned := 0; scanned < maxCheckScan; {
			page, err := tx.Outbox(after, 256)
			if err != nil {
				return err
			}
			if len(page) == 0 {
				return nil
			}
			for _, e := range page {
				after = e.Seq
				scanned++
				if store.GroupOf(e.To) == "" || e.Pending() || e.Kind != store.KindText || len(e.Awaiting) == 0 ||
					now.Sub(e.ServerAckedAt) < c.cfg.ResendInterval {
					continue
				}
				if e.Sends >= maxGroupSends {
					c.log.Warn("group message still misses receipts after its last send; leaving the outbox",
						"message_id", e.ID, "awaiting", len(e.Awaiting))
					if err := tx.DeleteOutbox(e); err != nil {
						return err
					}
					continue
				}
				e.ServerAckedAt, e.CheckedAt, e.Awaiting = time.Time{}, time.Time{}, nil
				if err := tx.PutOutbox(e); err != nil {
					return err
				}
				resend++
			}
		}
		return nil
	})
	if err != nil {
		return &storeError{err}
	}
	if resend > 0 {
		c.log.Info("sending group messages again: receipts missing", "count", resend)
	}
	return nil
}
