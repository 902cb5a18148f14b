// Copyright 2026 The Petrel Authors
// SPDX-License-Identifier: Apache-2.0

package client

import (
	"errors"
	"fmt"
	"slices"
	"time"

	"github.com/petrelchat/petrel/client/store"
	"github.com/petrelchat/petrel/e2ee"
	petrelv1 "github.com/petrelchat/petrel/proto/petrel/v1"
	"google.golang.org/protobuf/proto"
)

// History transfer (docs/protocol.md, "Linked devices"): after approving a link, the primary sends
// the new device the last Config.HistoryLimit messages of each chat as Content.history chunks of at
// most 64 KiB of items, oldest first, each an ordinary E2EE message to that one device (a Send to
// this account's own name with one envelope). The server sees ciphertext of bounded size only.

const (
	// maxHistoryChunkBytes bounds the items of one chunk.
	maxHistoryChunkBytes = 64 << 10
	// maxHistoryItemBytes: a message larger than this is left out of a transfer (it could not
	// share a chunk).
	maxHistoryItemBytes = maxHistoryChunkBytes - 256
	// maxHistoryScan bounds the history records read to build one transfer.
	maxHistoryScan = 1_000_000
	// maxChunkItems bounds the items a receiver takes from one chunk.
	maxChunkItems = 8192
)

// queueHistory adds the history transfer for own device dev to the outbox (in one transaction)
// and returns the number of chunks. A transfer always has at least one chunk (the last).
func (c *Client) queueHistory(dev string) (int, error) {
	limit := c.cfg.HistoryLimit
	chunks := 0
	err := c.st.Update(func(tx *store.Tx) error {
		chunks = 0
		perChat := map[string]int{}
		var items []*petrelv1.HistoryItem // newest first
		var before uint64
	scan:
		for scanned := 0; scanned < maxHistoryScan; {
			page, err := tx.HistoryBefore(before, 512)
			if err != nil {
				return err
			}
			if len(page) == 0 {
				break
			}
			for _, r := range page {
				before = r.Seq
				scanned++
				if r.Unverified || r.Group != "" || r.Status == store.StatusFailed || len(r.Body) > maxHistoryItemBytes ||
					perChat[r.Peer] >= limit || r.Timer || r.ExpiresIn > 0 { // disappearing ones stay behind
					continue
				}
				perChat[r.Peer]++
				it := &petrelv1.HistoryItem{Peer: r.Peer, Outgoing: r.Dir == store.Outgoing, MessageId: r.ID,
					Body: r.Body, SentAtMs: r.SentAt.UnixMilli(), FromDevice: r.PeerDevice}
				if it.Outgoing && !r.Synced {
					it.FromDevice = c.deviceID
				}
				items = append(items, it)
				if scanned >= maxHistoryScan {
					break scan
				}
			}
		}
		slices.Reverse(items)
		var parts [][]*petrelv1.HistoryItem
		var cur []*petrelv1.HistoryItem
		size := 0
		for _, it := range items {
			n := proto.Size(it) + 4
			if size+n > maxHistoryChunkBytes && len(cur) > 0 {
				parts = append(parts, cur)
				cur, size = nil, 0
			}
			cur = append(cur, it)
			size += n
		}
		parts = append(parts, cur)
		now := c.cfg.Now()
		for i, p := range parts {
			id, err := NewMessageID(c.cfg.Rand)
			if err != nil {
				return err
			}
			content, err := proto.Marshal(&petrelv1.Content{MessageId: id, Body: &petrelv1.Content_History{
				History: &petrelv1.HistoryChunk{Seq: uint32(i), Last: i == len(parts)-1, Items: p}}})
			if err != nil {
				return err
			}
			if err := tx.AddOutbox(&store.OutboxEntry{ID: id, To: c.name, Kind: store.KindDevice, Device: dev,
				Content: content, CreatedAt: now}); err != nil {
				return err
			}
		}
		chunks = len(parts)
		return nil
	})
	if err != nil {
		return 0, err
	}
	c.kickOutbox()
	return chunks, nil
}

// ownListed reports whether this account's verified device list names dev with key ident.
func (c *Client) ownListed(tx *store.Tx, dev string, ident []byte) (bool, error) {
	acct, err := tx.Account()
	if err != nil {
		return false, err
	}
	l, err := ownList(acct)
	if err != nil {
		return false, err
	}
	return l.Contains(dev, ident), nil
}

// receiveOwn handles the content of an envelope from another device of this account: a copy of a
// message it sent (sent_to), or a history chunk. A copy from a device the verified list does not
// name yet is kept out of sight until the list is fetched again (and dropped if it still does not
// name it); a history chunk is taken only from the account's primary as the list names it.
func (c *Client) receiveOwn(tx *store.Tx, env *petrelv1.Envelope, content *petrelv1.Content, ident *e2ee.IdentityKey, now time.Time) (receiveResult, error) {
	var res receiveResult
	dev, id := env.GetFromDevice(), env.GetMessageId()
	var key []byte
	if ident != nil {
		key = ident.Bytes()
	}
	listed, err := c.ownListed(tx, dev, key)
	if err != nil {
		return res, err
	}
	switch b := content.GetBody().(type) {
	case *petrelv1.Content_Text:
		to := content.GetSentTo()
		if !petrelv1.ValidName(to) {
			c.log.Warn("dropping a message from an own device without a valid sent_to", "from_device", dev, "message_id", id)
			return res, nil
		}
		if _, err := tx.HistoryByID(store.Outgoing, to, id); err == nil {
			c.log.Debug("dropping duplicate", "from_device", dev, "message_id", id)
			return res, nil
		} else if !errors.Is(err, store.ErrNotFound) {
			return res, err
		}
		rec := &store.HistoryRecord{ID: id, Dir: store.Outgoing, Peer: to, PeerDevice: dev, Synced: true,
			Body: b.Text.GetBody(), SentAt: time.UnixMilli(b.Text.GetSentAtMs()),
			ServerTime: time.UnixMilli(env.GetServerTimeMs()), ReceivedAt: now, Status: store.StatusSent,
			ExpiresIn: timerFromContent(content.GetExpiresInMs())}
		if !listed {
			rec.Unverified, rec.SenderIdentity = true, key
			res.unverified = true
		}
		if err := tx.AddHistory(rec); err != nil {
			return res, err
		}
		if err := c.startSentCountdown(tx, rec); err != nil { // disappearing.go
			return res, err
		}
		if listed {
			res.events = append(res.events, c.messageFromRecord(rec))
		}
	case *petrelv1.Content_Disappearing: // set from another device of this account
		if to := content.GetSentTo(); listed && petrelv1.ValidName(to) {
			return c.receiveTimer(tx, env, to, true, b.Disappearing, now)
		}
	case *petrelv1.Content_History:
		acct, err := tx.Account()
		if err != nil {
			return res, err
		}
		l, err := ownList(acct)
		if err != nil {
			return res, err
		}
		if p := l.Primary(); !listed || p.GetDeviceId() != dev {
			// History comes only from the account's primary (docs/protocol.md §9.8).
			c.log.Warn("dropping history from a device other than this account's primary", "from_device", dev)
			return res, nil
		}
		return c.receiveHistory(tx, dev, b.History, now)
	default:
		// Receipts and unknown contents from own devices: nothing to do.
	}
	return res, nil
}

// receiveHistory stores the items of a history chunk (as seen: they are history, not news).
func (c *Client) receiveHistory(tx *store.Tx, dev string, h *petrelv1.HistoryChunk, now time.Time) (receiveResult, error) {
	var res receiveResult
	items := h.GetItems()
	if len(items) > maxChunkItems {
		items = items[:maxChunkItems]
	}
	added := 0
	for _, it := range items {
		if !petrelv1.ValidName(it.GetPeer()) || !petrelv1.ValidMessageID(it.GetMessageId()) {
			continue
		}
		dir := store.Incoming
		if it.GetOutgoing() {
			dir = store.Outgoing
		}
		if _, err := tx.HistoryByID(dir, it.GetPeer(), it.GetMessageId()); err == nil {
			continue
		} else if !errors.Is(err, store.ErrNotFound) {
			return res, err
		}
		rec := &store.HistoryRecord{ID: it.GetMessageId(), Dir: dir, Peer: it.GetPeer(), PeerDevice: it.GetFromDevice(),
			Body: it.GetBody(), SentAt: time.UnixMilli(it.GetSentAtMs()), ReceivedAt: now, Seen: true, FromHistory: true}
		if dir == store.Outgoing {
			rec.Status, rec.Synced = store.StatusSent, true
		}
		if err := tx.AddHistory(rec); err != nil {
			return res, err
		}
		added++
	}
	res.events = append(res.events, &HistoryReceived{FromDevice: dev, Chunk: int(h.GetSeq()) + 1, Messages: added, Last: h.GetLast()})
	return res, nil
}

// ownListPushed takes a DeviceListChanged push: a list that verifies (and is not older than the
// stored one) is stored; the own devices are fetched again before the next send either way.
func (c *Client) ownListPushed(tx *store.Tx, push *petrelv1.DeviceListChanged) ([]Event, error) {
	acct, err := tx.Account()
	if err != nil {
		return nil, err
	}
	var events []Event
	if sdl := push.GetDeviceList(); sdl != nil {
		l, err := c.verifyOwnList(acct, sdl)
		if err != nil {
			c.log.Warn("ignoring a pushed device list", "err", err)
		} else {
			ev, err := c.acceptOwnList(tx, sdl, l, nil)
			if err != nil {
				return nil, err
			}
			if ev != nil {
				events = append(events, ev)
			}
			evs, err := c.verifyUnverified(tx, false)
			if err != nil {
				return nil, err
			}
			events = append(events, evs...)
			return events, nil
		}
	}
	ct, err := tx.Contact(c.name)
	if errors.Is(err, store.ErrNotFound) {
		return events, nil
	}
	if err != nil {
		return nil, err
	}
	ct.DevicesKnown = false
	return events, tx.PutContact(ct)
}

// verifyUnverified shows the kept-back copies whose device the verified list now names with the
// same key; with final (the list was just fetched from the server), it drops the others.
func (c *Client) verifyUnverified(tx *store.Tx, final bool) ([]Event, error) {
	recs, err := tx.UnverifiedHistory(4096)
	if err != nil {
		return nil, err
	}
	var events []Event
	for _, r := range recs {
		ok, err := c.ownListed(tx, r.PeerDevice, r.SenderIdentity)
		if err != nil {
			return nil, err
		}
		switch {
		case ok:
			r.Unverified, r.SenderIdentity = false, nil
			if err := tx.PutHistory(r); err != nil {
				return nil, err
			}
			events = append(events, c.messageFromRecord(r))
		case final:
			c.log.Warn("dropping a message from a device this account's signed list does not name", "from_device", r.PeerDevice, "message_id", r.ID)
			if err := tx.DeleteHistory(r); err != nil {
				return nil, err
			}
			events = append(events, &DecryptFailed{From: c.name, FromDevice: r.PeerDevice, MessageID: r.ID,
				Err: fmt.Errorf("%w: device %s is not in this account's signed device list", ErrUntrustedDeviceList, r.PeerDevice)})
		}
	}
	return events, nil
}
