// Copyright 2026 The Petrel Authors
// SPDX-License-Identifier: Apache-2.0

package client

import (
	"errors"
	"fmt"
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
// delivered too.
type Read struct {
	To, MessageID string
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

// MarkRead queues read receipts for msgs (received messages the application has shown) to their
// senders; messages this account sent are skipped. With read receipts off it does nothing.
func (c *Client) MarkRead(msgs ...*Message) error {
	bySender := map[string][]string{}
	var order []string
	for _, m := range msgs {
		if m == nil || m.Outgoing || m.From == c.name {
			continue
		}
		if _, ok := bySender[m.From]; !ok {
			order = append(order, m.From)
		}
		bySender[m.From] = append(bySender[m.From], m.ID)
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
		for _, from := range order {
			ids := bySender[from]
			for len(ids) > 0 {
				n := min(len(ids), maxReceiptIDs)
				if err := c.queueReceiptOf(tx, from, ids[:n], petrelv1.ReceiptType_RECEIPT_TYPE_READ); err != nil {
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

// queueReceiptOf adds a receipt of type typ for ids to the outbox (sent to every device of to).
func (c *Client) queueReceiptOf(tx *store.Tx, to string, ids []string, typ petrelv1.ReceiptType) error {
	id, err := NewMessageID(c.cfg.Rand)
	if err != nil {
		return err
	}
	content, err := proto.Marshal(&petrelv1.Content{
		MessageId: id,
		Body:      &petrelv1.Content_Receipt{Receipt: &petrelv1.Receipt{MessageIds: ids, Type: typ}},
	})
	if err != nil {
		return err
	}
	return tx.AddOutbox(&store.OutboxEntry{ID: id, To: to, Kind: store.KindReceipt, Content: content, CreatedAt: c.cfg.Now()})
}

// applyReadReceipt handles a read receipt from device dev of account from inside tx: each message
// is delivered to that device (as a delivery receipt would say) and read. Ignored while read
// receipts are off.
func (c *Client) applyReadReceipt(tx *store.Tx, from, dev string, ids []string, now time.Time) ([]Event, error) {
	s, err := tx.Settings()
	if err != nil || s.ReadReceiptsOff {
		return nil, err
	}
	var events []Event
	for _, mid := range ids {
		ev, err := c.applyReceipt(tx, from, dev, mid, now)
		if err != nil {
			return nil, err
		}
		if ev != nil {
			events = append(events, ev)
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
