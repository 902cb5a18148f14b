// Copyright 2026 The Petrel Authors
// SPDX-License-Identifier: Apache-2.0

package client

import (
	"errors"
	"fmt"
	"slices"
	"time"

	"google.golang.org/protobuf/proto"

	"github.com/petrelchat/petrel/client/store"
	petrelv1 "github.com/petrelchat/petrel/proto/petrel/v1"
)

// Read receipts. A delivery receipt (DELIVERED) is sent for every message received; a read
// receipt (READ) when the application shows a message and calls MarkRead, unless read receipts
// are off (SetReadReceipts). Off works both ways, as in WhatsApp: no read receipts are sent, and
// those received are ignored (no Read events, no StatusRead). Both kinds travel end to end
// encrypted, through the outbox (they are retried until the server takes them).

// Read reports that a device of To showed message MessageID (a read receipt). A read message is
// delivered too. For a group message (Group set, To empty) it reports that every member it was
// sent to showed it.
type Read struct {
	To, MessageID string
	// Group is the group id of a group message.
	Group string
}

func (*Read) isEvent() {}

// ReadReceipts reports whether read receipts are on (the default).
func (c *Client) ReadReceipts() (bool, error) {
	var on bool
	err := c.st.View(func(tx *store.Tx) error {
		s, err := tx.Settings()
		if err == nil {
			on = !s.ReadReceiptsOff
		}
		return err
	})
	return on, err
}

// SetReadReceipts turns read receipts on or off on this device (nothing is sent to the server).
func (c *Client) SetReadReceipts(on bool) error {
	return c.st.Update(func(tx *store.Tx) error {
		s, err := tx.Settings()
		if err != nil {
			return err
		}
		s.ReadReceiptsOff = !on
		return tx.PutSettings(s)
	})
}

// receiptKey groups receipts by the sender they go to and the group of the messages ("" for 1:1).
type receiptKey struct{ to, group string }

// MarkRead queues read receipts for msgs (received messages the application has shown) to their
// senders; messages this account sent are skipped. A group message's receipt goes to its sender
// (pairwise) and names the group. With read receipts off it does nothing.
func (c *Client) MarkRead(msgs ...*Message) error {
	byKey := map[receiptKey][]string{}
	var order []receiptKey
	for _, m := range msgs {
		if m == nil || m.Outgoing || m.From == c.name || m.GroupEvent != nil {
			continue
		}
		k := receiptKey{m.From, m.Group}
		if _, ok := byKey[k]; !ok {
			order = append(order, k)
		}
		byKey[k] = append(byKey[k], m.ID)
	}
	if len(order) == 0 {
		return nil
	}
	queued := false
	err := c.st.Update(func(tx *store.Tx) error {
		queued = false
		s, err := tx.Settings()
		if err != nil || s.ReadReceiptsOff {
			return err
		}
		for _, k := range order {
			ids := byKey[k]
			for len(ids) > 0 {
				n := min(len(ids), maxReceiptIDs)
				if err := c.queueReceiptOf(tx, k.to, k.group, ids[:n], petrelv1.ReceiptType_RECEIPT_TYPE_READ); err != nil {
					return err
				}
				ids = ids[n:]
				queued = true
			}
		}
		return nil
	})
	if err != nil {
		return fmt.Errorf("queue read receipts: %w", err)
	}
	if queued {
		c.kickOutbox()
	}
	return nil
}

// queueReceiptOf adds a receipt of type typ for ids to the outbox (sent to every device of to);
// group is the group id of group messages ("" for 1:1), carried in Content.group_id.
func (c *Client) queueReceiptOf(tx *store.Tx, to, group string, ids []string, typ petrelv1.ReceiptType) error {
	id, err := NewMessageID(c.cfg.Rand)
	if err != nil {
		return err
	}
	content, err := proto.Marshal(&petrelv1.Content{
		MessageId: id,
		GroupId:   group,
		Body:      &petrelv1.Content_Receipt{Receipt: &petrelv1.Receipt{MessageIds: ids, Type: typ}},
	})
	if err != nil {
		return err
	}
	return tx.AddOutbox(&store.OutboxEntry{ID: id, To: to, Kind: store.KindReceipt, Content: content, CreatedAt: c.cfg.Now()})
}

// applyReceipts handles a receipt (read or delivered) from device dev of account from for ids
// inside tx. group is the receipt's group id (a receipt from an older client names none: the
// group is then found through the outbox). For a 1:1 message, a delivery receipt makes it
// delivered and a read receipt read (and delivered to that device); for a group message, the
// member is recorded and the message becomes delivered (read) once every member is
// (groupReceipt). Read receipts are ignored while read receipts are off.
func (c *Client) applyReceipts(tx *store.Tx, from, dev, group string, ids []string, read bool, now time.Time) ([]Event, error) {
	if read {
		s, err := tx.Settings()
		if err != nil || s.ReadReceiptsOff {
			return nil, err
		}
	}
	var events []Event
	for _, mid := range ids {
		gid := group
		if gid == "" {
			gid = tx.GroupOfOutbox(mid)
		}
		ev, err := c.applyReceipt(tx, from, dev, mid, gid, now)
		if err != nil {
			return nil, err
		}
		if ev != nil {
			events = append(events, ev)
		}
		if gid != "" {
			evs, err := c.groupReceipt(tx, gid, from, mid, read)
			if err != nil {
				return nil, err
			}
			events = append(events, evs...)
			continue
		}
		if !read {
			continue
		}
		r, err := tx.HistoryByID(store.Outgoing, from, mid)
		if errors.Is(err, store.ErrNotFound) {
			continue
		}
		if err != nil {
			return nil, err
		}
		if r.Status == store.StatusRead {
			continue
		}
		r.Status = store.StatusRead
		if err := tx.PutHistory(r); err != nil {
			return nil, err
		}
		events = append(events, &Read{To: from, MessageID: mid})
	}
	return events, nil
}

// groupReceipt records that a device of member from has (read) group message id, which this
// device sent to group gid, and reports it delivered (read) once every member is. Before the
// server's ack (no member list yet) the account is kept by name, at most maxEarlyMarks of them.
func (c *Client) groupReceipt(tx *store.Tx, gid, from, id string, read bool) ([]Event, error) {
	r, err := tx.HistoryByID(store.Outgoing, store.GroupKey(gid), id)
	if errors.Is(err, store.ErrNotFound) {
		return nil, nil
	}
	if err != nil || r.Synced || r.Group != gid {
		return nil, err
	}
	var changed bool
	if len(r.GroupMembers) > 0 {
		foldEarlyMarks(r) // a record stored before the bitsets
		m := marksOf(r)
		changed = m.mark(from, read)
		m.store(r)
	} else {
		add := func(list []string) ([]string, bool) {
			if slices.Contains(list, from) || len(list) >= maxEarlyMarks {
				return list, false
			}
			return append(list, from), true
		}
		var changedD, changedR bool
		r.DeliveredBy, changedD = add(r.DeliveredBy)
		if read {
			r.ReadBy, changedR = add(r.ReadBy)
		}
		changed = changedD || changedR
	}
	if !changed {
		return nil, nil
	}
	events := groupMarks(r)
	return events, tx.PutHistory(r)
}

// statusRank orders the statuses of a sent message (pending < sent < delivered < read).
func statusRank(s store.Status) int {
	switch s {
	case store.StatusSent:
		return 1
	case store.StatusDelivered:
		return 2
	case store.StatusRead:
		return 3
	}
	return 0
}

// groupMarks moves a sent group message's status on to delivered (read) once every member it
// was sent to has sent a delivery or read receipt (a read receipt), and reports the change. It
// needs the server's ack first (GroupMembers set, status sent).
func groupMarks(r *store.HistoryRecord) []Event {
	if len(r.GroupMembers) == 0 || statusRank(r.Status) < 1 {
		return nil
	}
	m := marksOf(r)
	var events []Event
	if statusRank(r.Status) < 2 && m.allDelivered() {
		r.Status = store.StatusDelivered
		events = append(events, &Delivered{MessageID: r.ID, Group: r.Group})
	}
	if statusRank(r.Status) < 3 && m.allRead() {
		r.Status = store.StatusRead
		events = append(events, &Read{MessageID: r.ID, Group: r.Group})
	}
	return events
}
