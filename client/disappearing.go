// Copyright 2026 The Petrel Authors
// SPDX-License-Identifier: Apache-2.0

package client

import (
	"context"
	"errors"
	"fmt"
	"time"

	"google.golang.org/protobuf/proto"

	"github.com/petrelchat/petrel/client/store"
	petrelv1 "github.com/petrelchat/petrel/proto/petrel/v1"
)

// Disappearing messages. Each chat has a timer (0: off), set by either participant with
// SetDisappearing: an end-to-end encrypted control message (Content.disappearing) that both
// sides record in their history and show ("alice set disappearing messages to 1 day"); a
// received one sets the timer here too. Later texts carry the timer (Content.expires_in_ms) and
// the send carries its expiry (Send.expires_at_ms: sent time + timer), so the server deletes
// stored copies for offline devices at that time. Locally a record is deleted from the history
// when its countdown ends: a sent one (and its copies on this account's other devices) timer
// after it was sent, a received one timer after it was shown (ClaimSeen or MarkSeen). A sweeper
// (running with Run) deletes due records, and the outbox entries of messages that expired before
// they left. Disappearing messages and timer changes are left out of history transfers to a new
// device.

// MaxDisappearing is the longest disappearing timer.
const MaxDisappearing = time.Duration(petrelv1.MaxExpiresInMs) * time.Millisecond

// sweepBatch bounds the records one sweep transaction deletes.
const sweepBatch = 256

// Disappearing returns the chat's disappearing timer with peer (0: off).
func (c *Client) Disappearing(peer string) (time.Duration, error) {
	var d time.Duration
	err := c.st.View(func(tx *store.Tx) error {
		cs, err := tx.ChatSettings(peer)
		if err == nil {
			d = cs.ExpiresIn
		}
		return err
	})
	return d, err
}

// SetDisappearing sets the chat's disappearing timer with peer (0: off; at most MaxDisappearing,
// whole seconds) and queues the control message that tells peer (and this account's other
// devices). It returns the message id at once; Flush waits for the server.
func (c *Client) SetDisappearing(peer string, d time.Duration) (string, error) {
	if !petrelv1.ValidName(peer) {
		return "", fmt.Errorf("%w: %q", ErrInvalidName, peer)
	}
	if peer == c.name {
		return "", errors.New("disappearing messages are set in a chat with another account")
	}
	if d < 0 || d > MaxDisappearing || d%time.Second != 0 {
		return "", fmt.Errorf("disappearing timer %v: want 0 (off) or whole seconds up to %v", d, MaxDisappearing)
	}
	id, err := NewMessageID(c.cfg.Rand)
	if err != nil {
		return "", err
	}
	now := c.cfg.Now()
	content, err := proto.Marshal(&petrelv1.Content{MessageId: id,
		Body: &petrelv1.Content_Disappearing{Disappearing: &petrelv1.DisappearingTimer{ExpiresInMs: d.Milliseconds()}}})
	if err != nil {
		return "", err
	}
	err = c.st.Update(func(tx *store.Tx) error {
		if err := tx.AddOutbox(&store.OutboxEntry{ID: id, To: peer, Kind: store.KindText, Content: content, CreatedAt: now}); err != nil {
			return err
		}
		if err := tx.AddHistory(&store.HistoryRecord{ID: id, Dir: store.Outgoing, Peer: peer, SentAt: now,
			Status: store.StatusPending, Timer: true, TimerSet: d}); err != nil {
			return err
		}
		return tx.PutChatSettings(&store.ChatSettings{Peer: peer, ExpiresIn: d, SetBy: c.name, SetAt: now})
	})
	if err != nil {
		return "", fmt.Errorf("store timer change: %w", err)
	}
	c.kickOutbox()
	return id, nil
}

// GroupDisappearing returns the disappearing timer of group (a local name or id; 0: off).
func (c *Client) GroupDisappearing(group string) (time.Duration, error) {
	var d time.Duration
	err := c.st.View(func(tx *store.Tx) error {
		g, err := findGroup(tx, group)
		if err != nil {
			return err
		}
		cs, err := tx.ChatSettings(store.GroupKey(g.ID))
		if err == nil {
			d = cs.ExpiresIn
		}
		return err
	})
	return d, err
}

// SetGroupDisappearing sets the disappearing timer of group (a local name or id; 0: off; at most
// MaxDisappearing, whole seconds) and queues the change as a group message (Content.disappearing
// with group_id, under the sender key) that every member applies and shows. Later group messages
// carry it. It returns the message id at once; Flush waits for the server.
func (c *Client) SetGroupDisappearing(group string, d time.Duration) (string, error) {
	if d < 0 || d > MaxDisappearing || d%time.Second != 0 {
		return "", fmt.Errorf("disappearing timer %v: want 0 (off) or whole seconds up to %v", d, MaxDisappearing)
	}
	id, err := NewMessageID(c.cfg.Rand)
	if err != nil {
		return "", err
	}
	now := c.cfg.Now()
	err = c.st.Update(func(tx *store.Tx) error {
		g, err := findGroup(tx, group)
		if err != nil {
			return err
		}
		if g.Left {
			return fmt.Errorf("%w: this account is no longer a member of %q", ErrUnknownGroup, g.Name)
		}
		content, err := proto.Marshal(&petrelv1.Content{MessageId: id, GroupId: g.ID,
			Body: &petrelv1.Content_Disappearing{Disappearing: &petrelv1.DisappearingTimer{ExpiresInMs: d.Milliseconds()}}})
		if err != nil {
			return err
		}
		key := store.GroupKey(g.ID)
		if err := tx.AddOutbox(&store.OutboxEntry{ID: id, To: key, Kind: store.KindText, Content: content, CreatedAt: now}); err != nil {
			return err
		}
		if err := tx.AddHistory(&store.HistoryRecord{ID: id, Dir: store.Outgoing, Peer: key, Group: g.ID, SentAt: now,
			Status: store.StatusPending, Timer: true, TimerSet: d}); err != nil {
			return err
		}
		return tx.PutChatSettings(&store.ChatSettings{Peer: key, ExpiresIn: d, SetBy: c.name, SetAt: now})
	})
	if err != nil {
		if errors.Is(err, ErrUnknownGroup) {
			return "", err
		}
		return "", fmt.Errorf("store timer change: %w", err)
	}
	c.kickOutbox()
	return id, nil
}

// receiveGroupTimer records a timer change in group h.Group from h.From (own: another device of
// this account) inside tx, as a history record of the group shown like a message.
func (c *Client) receiveGroupTimer(tx *store.Tx, h *store.HeldGroupItem, own bool, t *petrelv1.DisappearingTimer, now time.Time) (receiveResult, error) {
	var res receiveResult
	key := store.GroupKey(h.Group)
	d := timerFromContent(t.GetExpiresInMs())
	if err := tx.PutChatSettings(&store.ChatSettings{Peer: key, ExpiresIn: d, SetBy: h.From, SetAt: now}); err != nil {
		return res, err
	}
	rec := &store.HistoryRecord{ID: h.ID, Dir: store.Incoming, Peer: h.From, PeerDevice: h.FromDevice, Group: h.Group,
		SentAt: h.ServerTime, ServerTime: h.ServerTime, ReceivedAt: now, Timer: true, TimerSet: d}
	if own {
		rec.Dir, rec.Peer, rec.Synced, rec.Status = store.Outgoing, key, true, store.StatusSent
	} else {
		res.receiptFor, res.receiptGroup = h.ID, h.Group
	}
	if err := tx.AddHistory(rec); err != nil {
		return res, err
	}
	res.events = append(res.events, c.messageFromRecord(rec))
	return res, nil
}

// timerFromContent is a content's expires_in_ms as a duration, bounded (a peer's bad value is
// taken as the longest timer, never as none).
func timerFromContent(ms int64) time.Duration {
	if ms <= 0 {
		return 0
	}
	return min(time.Duration(ms)*time.Millisecond, MaxDisappearing)
}

// receiveTimer records a timer change from peer (or, own, from another device of this account
// for its chat with peer) inside tx, as a history record shown like a message.
func (c *Client) receiveTimer(tx *store.Tx, env *petrelv1.Envelope, peer string, own bool, t *petrelv1.DisappearingTimer, now time.Time) (receiveResult, error) {
	var res receiveResult
	id, dev := env.GetMessageId(), env.GetFromDevice()
	dir := store.Incoming
	if own {
		dir = store.Outgoing
	} else {
		res.receiptFor = id
	}
	if _, err := tx.HistoryByID(dir, peer, id); err == nil {
		return res, nil // a duplicate
	} else if !errors.Is(err, store.ErrNotFound) {
		return res, err
	}
	d := timerFromContent(t.GetExpiresInMs())
	setBy := peer
	if own {
		setBy = c.name
	}
	if err := tx.PutChatSettings(&store.ChatSettings{Peer: peer, ExpiresIn: d, SetBy: setBy, SetAt: now}); err != nil {
		return res, err
	}
	rec := &store.HistoryRecord{ID: id, Dir: dir, Peer: peer, PeerDevice: dev, SentAt: time.UnixMilli(env.GetServerTimeMs()),
		ServerTime: time.UnixMilli(env.GetServerTimeMs()), ReceivedAt: now, Timer: true, TimerSet: d}
	if own {
		rec.Synced, rec.Status = true, store.StatusSent
	}
	if err := tx.AddHistory(rec); err != nil {
		return res, err
	}
	res.events = append(res.events, c.messageFromRecord(rec))
	return res, nil
}

// startCountdown starts the expiry of the history record seq if it is a disappearing message
// that has none yet (a received one, when shown). Inside tx.
func (c *Client) startCountdown(tx *store.Tx, seq uint64) error {
	recs, err := tx.History(seq-1, 1)
	if err != nil || len(recs) != 1 || recs[0].Seq != seq {
		return err
	}
	r := recs[0]
	if r.ExpiresIn <= 0 || !r.ExpiresAt.IsZero() {
		return nil
	}
	if err := tx.SetHistoryExpiry(r, c.cfg.Now().Add(r.ExpiresIn)); err != nil {
		return err
	}
	c.kickSweep()
	return nil
}

// kickSweep wakes the sweeper (a countdown started).
func (c *Client) kickSweep() {
	c.ext.mu.Lock()
	ch := c.ext.sweepKick
	c.ext.mu.Unlock()
	if ch != nil {
		select {
		case ch <- struct{}{}:
		default:
		}
	}
}

// startSweeper runs the sweeper until ctx ends; the returned function stops it and waits.
func (c *Client) startSweeper(ctx context.Context) func() {
	kick := make(chan struct{}, 1)
	c.ext.mu.Lock()
	c.ext.sweepKick = kick
	c.ext.mu.Unlock()
	ctx, cancel := context.WithCancel(ctx)
	done := make(chan struct{})
	go func() {
		defer close(done)
		c.runSweeper(ctx, kick)
	}()
	return func() {
		cancel()
		<-done
		c.ext.mu.Lock()
		c.ext.sweepKick = nil
		c.ext.mu.Unlock()
	}
}

// maxSweepWait is the longest the sweeper sleeps (the clock may jump; Config.Now may be faked).
const maxSweepWait = 30 * time.Second

// runSweeper deletes expired history records (and the outbox entries of those not sent yet) as
// they fall due.
func (c *Client) runSweeper(ctx context.Context, kick chan struct{}) {
	t := time.NewTimer(0)
	defer t.Stop()
	for {
		select {
		case <-t.C:
		case <-kick:
		case <-ctx.Done():
			return
		}
		wait, err := c.SweepExpired()
		if err != nil {
			c.log.Warn("disappearing messages: sweep failed", "err", err)
			wait = maxSweepWait
		}
		if !t.Stop() {
			select {
			case <-t.C:
			default:
			}
		}
		t.Reset(wait)
	}
}

// SweepExpired deletes every expired disappearing message from the local history now (Run does
// it as they fall due) and returns how long until the next one is due (at most 30 s).
func (c *Client) SweepExpired() (time.Duration, error) {
	for {
		now := c.cfg.Now()
		var n int
		next := maxSweepWait
		err := c.st.Update(func(tx *store.Tx) error {
			gone, err := tx.SweepExpired(now, sweepBatch)
			if err != nil {
				return err
			}
			n = len(gone)
			for _, r := range gone {
				if r.Dir != store.Outgoing || r.Synced {
					continue
				}
				// Not sent before it expired: it never leaves.
				e, err := tx.OutboxByID(r.Peer, r.ID)
				if errors.Is(err, store.ErrNotFound) {
					continue
				}
				if err != nil {
					return err
				}
				if err := tx.DeleteOutbox(e); err != nil {
					return err
				}
			}
			if at, ok := tx.NextExpiry(); ok {
				next = min(max(at.Sub(now), 10*time.Millisecond), maxSweepWait)
			}
			return nil
		})
		if err != nil || n < sweepBatch {
			return next, err
		}
	}
}

// startSentCountdown starts the countdown of a sent disappearing message (this device's, or a
// copy from another device of this account): timer after it was sent. Inside tx.
func (c *Client) startSentCountdown(tx *store.Tx, r *store.HistoryRecord) error {
	if r.ExpiresIn <= 0 {
		return nil
	}
	if err := tx.SetHistoryExpiry(r, r.SentAt.Add(r.ExpiresIn)); err != nil {
		return err
	}
	c.kickSweep()
	return nil
}
