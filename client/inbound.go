// Copyright 2026 The Petrel Authors
// SPDX-License-Identifier: Apache-2.0

package client

import (
	"context"
	"errors"
	"fmt"
	"slices"
	"time"

	"github.com/petrelchat/petrel/client/store"
	"github.com/petrelchat/petrel/e2ee"
	petrelv1 "github.com/petrelchat/petrel/proto/petrel/v1"
	"google.golang.org/protobuf/proto"
)

// maxReceiptIDs bounds the message ids in one receipt.
const maxReceiptIDs = 256

// processBatch handles envelopes in one transaction: for each, decrypt (advancing or creating
// the session), drop duplicates, record texts in the history and apply receipts to the outbox,
// and queue delivery receipts in the outbox. Only after the commit are the envelopes acked.
func (l *link) processBatch(ctx context.Context, batch []inboundItem) error {
	c := l.c
	var (
		tags       []uint64
		events     []Event
		receipt    bool
		syncOwn    bool
		syncGroups bool
		qe         *petrelv1.QueueEmpty
	)
	err := c.st.Update(func(tx *store.Tx) error {
		tags, events, receipt, qe, syncOwn, syncGroups = tags[:0], events[:0], false, nil, false, false
		toReceipt := map[receiptKey][]string{} // sender (and group) → message ids to receipt
		var order []receiptKey
		verifyOwn := false
		for _, it := range batch {
			if it.queueEmpty != nil {
				qe = it.queueEmpty
				continue
			}
			if it.listChanged != nil {
				evs, err := c.ownListPushed(tx, it.listChanged)
				if err != nil {
					return err
				}
				events = append(events, evs...)
				verifyOwn = true
				continue
			}
			d := it.deliver
			tags = append(tags, d.GetTag())
			res, err := c.receive(tx, d.GetEnvelope())
			if err != nil {
				return err
			}
			events = append(events, res.events...)
			verifyOwn = verifyOwn || res.unverified
			syncGroups = syncGroups || res.groupSync
			if res.receiptFor != "" {
				k := receiptKey{d.GetEnvelope().GetFrom(), res.receiptGroup}
				if _, ok := toReceipt[k]; !ok {
					order = append(order, k)
				}
				toReceipt[k] = append(toReceipt[k], res.receiptFor)
			}
		}
		for _, k := range order {
			ids := toReceipt[k]
			for len(ids) > 0 {
				n := min(len(ids), maxReceiptIDs)
				if err := c.queueReceipt(tx, k.to, k.group, ids[:n]); err != nil {
					return err
				}
				ids = ids[n:]
				receipt = true
			}
		}
		syncOwn = verifyOwn
		return nil
	})
	if err != nil {
		return fmt.Errorf("store received messages: %w", err)
	}
	if syncOwn {
		// This account's device list changed, or a device it does not name yet sent a message:
		// the sender loop fetches the list (requests cannot wait here: the reader may be blocked
		// handing this loop more envelopes) and then shows or drops what waits for it.
		c.requestOwnSync()
	}
	if syncGroups {
		c.requestGroupSync()
	}
	// The batch is committed: report it even if the ack is lost (the connection drops). The
	// server then delivers the envelopes again, and receive drops them as duplicates.
	var ackErr error
	if len(tags) > 0 {
		if h := c.ackHook; h != nil {
			ackErr = h(tags)
		}
		if ackErr == nil {
			ack := &petrelv1.Frame{Body: &petrelv1.Frame_DeliverAck{DeliverAck: &petrelv1.DeliverAck{Tags: tags}}}
			ackErr = l.conn.write(ctx, ack)
		}
	}
	if receipt {
		c.kickOutbox()
	}
	// Reported with Run's context, not the connection's: they are in the store now, and a
	// redelivery would be dropped as a duplicate, so an event given up here would never reach
	// the application while it runs (only Unseen would show it).
	for _, ev := range events {
		if !c.emit(l.runCtx, ev) {
			return ackErr
		}
	}
	if ackErr != nil {
		return ackErr
	}
	if qe != nil {
		select {
		case <-l.queueEmpty:
		default:
			close(l.queueEmpty)
		}
		c.emit(ctx, &QueueEmpty{Delivered: int(qe.GetDelivered())})
	}
	return nil
}

// receiveResult is what one envelope produced.
type receiveResult struct {
	events []Event
	// receiptFor is the message id to send a delivery receipt for ("" for none); receiptGroup
	// the group id of a group message's.
	receiptFor, receiptGroup string
	// unverified: a message from a device of this account that its verified list does not name
	// (yet) was kept out of sight until the list is fetched.
	unverified bool
	// groupSync asks for syncGroups (groupsrecv.go); done reports a held group item used up.
	groupSync, done bool
}

// receive handles one envelope inside tx. It returns an error only for store failures (the batch
// is then not acked); bad envelopes are reported as DecryptFailed and dropped.
func (c *Client) receive(tx *store.Tx, env *petrelv1.Envelope) (receiveResult, error) {
	var res receiveResult
	from, dev, id := env.GetFrom(), env.GetFromDevice(), env.GetMessageId()
	fail := func(err error) (receiveResult, error) {
		c.log.Warn("dropping undecryptable envelope", "from", from, "from_device", dev, "message_id", id, "err", err)
		res.events = append(res.events, &DecryptFailed{From: from, FromDevice: dev, MessageID: id, Err: err})
		return res, nil
	}
	if !petrelv1.ValidName(from) || !petrelv1.ValidDeviceID(dev) || !petrelv1.ValidMessageID(id) {
		return fail(fmt.Errorf("%w: malformed envelope", ErrProtocol))
	}
	switch env.GetType() {
	case petrelv1.EnvelopeType_ENVELOPE_TYPE_GROUP:
		return c.receiveGroupMessage(tx, env)
	case petrelv1.EnvelopeType_ENVELOPE_TYPE_GROUP_EVENT:
		return c.receiveGroupEvent(tx, env)
	}
	pt, ident, newSession, err := c.decrypt(tx, from, dev, env.GetCiphertext())
	if err != nil {
		if isStoreErr(err) {
			return res, err
		}
		// A redelivery of something already processed (persisted, but the ack was lost) can no
		// longer decrypt: its message key is spent. Treat it as the duplicate it is: a text is in
		// the history (receipt it again); other contents (receipts) leave only the spent key.
		if _, herr := tx.HistoryByID(store.Incoming, from, id); herr == nil {
			res.receiptFor = id
			return res, nil
		} else if !errors.Is(herr, store.ErrNotFound) {
			return res, herr
		}
		if errors.Is(err, e2ee.ErrDuplicateMessage) {
			c.log.Debug("dropping duplicate", "from", from, "message_id", id)
			return res, nil
		}
		return fail(err)
	}
	if newSession && from != c.name {
		// (This account's own devices are trusted through its signed list, never on first use.)
		evs, err := c.trustOnReceive(tx, from, dev, ident)
		if err != nil {
			return res, err
		}
		res.events = append(res.events, evs...)
	}
	var content petrelv1.Content
	if err := proto.Unmarshal(pt, &content); err != nil {
		return fail(fmt.Errorf("%w: undecodable content", ErrProtocol))
	}
	if content.GetMessageId() != id {
		return fail(fmt.Errorf("%w: message id does not match the encrypted one", ErrProtocol))
	}
	now := c.cfg.Now()
	if isGroupControl(&content) {
		return c.receiveGroupControl(tx, env, &content, ident)
	}
	if from == c.name {
		return c.receiveOwn(tx, env, &content, ident, now)
	}
	c.heardFrom(from) // typing indicators to from may go on (presence.go)
	switch b := content.GetBody().(type) {
	case *petrelv1.Content_Text:
		res.receiptFor = id
		_, err := tx.HistoryByID(store.Incoming, from, id)
		if err == nil {
			c.log.Debug("dropping duplicate", "from", from, "message_id", id)
			return res, nil
		}
		if !errors.Is(err, store.ErrNotFound) {
			return res, err
		}
		rec := &store.HistoryRecord{ID: id, Dir: store.Incoming, Peer: from, PeerDevice: dev,
			Body: b.Text.GetBody(), SentAt: time.UnixMilli(b.Text.GetSentAtMs()),
			ServerTime: time.UnixMilli(env.GetServerTimeMs()), ReceivedAt: now,
			ExpiresIn: timerFromContent(content.GetExpiresInMs())}
		if err := tx.AddHistory(rec); err != nil {
			return res, err
		}
		res.events = append(res.events, c.messageFromRecord(rec))
	case *petrelv1.Content_Receipt:
		ids := b.Receipt.GetMessageIds()
		if len(ids) > maxReceiptIDs {
			ids = ids[:maxReceiptIDs]
		}
		read := b.Receipt.GetType() == petrelv1.ReceiptType_RECEIPT_TYPE_READ
		if !read && b.Receipt.GetType() != petrelv1.ReceiptType_RECEIPT_TYPE_DELIVERED {
			return res, nil
		}
		gid := content.GetGroupId()
		if gid != "" && !petrelv1.ValidGroupID(gid) {
			return fail(fmt.Errorf("%w: receipt with a malformed group id", ErrProtocol))
		}
		evs, err := c.applyReceipts(tx, from, dev, gid, ids, read, now) // receipts.go
		res.events = append(res.events, evs...)
		return res, err
	case *petrelv1.Content_Typing: // presence.go: shown, never stored
		res.events = append(res.events, &Typing{From: from, Typing: b.Typing.GetTyping()})
	case *petrelv1.Content_Disappearing: // disappearing.go
		return c.receiveTimer(tx, env, from, false, b.Disappearing, now)
	default:
		// A content type this version does not know: acked and ignored.
	}
	return res, nil
}

// applyReceipt records that device dev of account from has message id (of group gid, or "").
// The first receipt of a 1:1 message makes it delivered (any recipient device has it); it
// leaves the outbox once every device it was sent to receipted it (or left the recipient's
// device list). A group message leaves the outbox the same way, but its marks are per member
// (groupReceipt).
func (c *Client) applyReceipt(tx *store.Tx, from, dev, id, gid string, now time.Time) (Event, error) {
	e, err := tx.OutboxByID(from, id)
	if errors.Is(err, store.ErrNotFound) && gid != "" {
		e, err = tx.OutboxByID(store.GroupKey(gid), id) // a group message: receipted by each member
	}
	if errors.Is(err, store.ErrNotFound) {
		return nil, nil
	}
	if err != nil || e.Kind != store.KindText {
		return nil, err
	}
	if !slices.Contains(e.Receipted, dev) {
		e.Receipted = append(e.Receipted, dev)
	}
	e.Awaiting = slices.DeleteFunc(e.Awaiting, func(d string) bool { return d == dev })
	if store.GroupOf(e.To) != "" {
		if e.Pending() || len(e.Awaiting) > 0 {
			return nil, tx.PutOutbox(e)
		}
		return nil, tx.DeleteOutbox(e)
	}
	if e.Pending() || len(e.Awaiting) > 0 {
		var ev Event
		if !e.Delivered {
			e.Delivered = true
			if err := c.setHistoryStatus(tx, e.To, e.ID, store.StatusDelivered, ""); err != nil {
				return nil, err
			}
			ev = &Delivered{To: e.To, MessageID: e.ID}
		}
		return ev, tx.PutOutbox(e)
	}
	return c.completeOutbox(tx, e)
}

// completeOutbox removes a fully receipted entry and marks its history record delivered. It
// reports Delivered unless an earlier receipt did.
func (c *Client) completeOutbox(tx *store.Tx, e *store.OutboxEntry) (Event, error) {
	if err := tx.DeleteOutbox(e); err != nil {
		return nil, err
	}
	if e.Delivered {
		return nil, nil
	}
	if err := c.setHistoryStatus(tx, e.To, e.ID, store.StatusDelivered, ""); err != nil {
		return nil, err
	}
	return &Delivered{To: e.To, MessageID: e.ID}, nil
}

func (c *Client) setHistoryStatus(tx *store.Tx, to, id string, s store.Status, failure string) error {
	r, err := tx.HistoryByID(store.Outgoing, to, id)
	if errors.Is(err, store.ErrNotFound) {
		return nil
	}
	if err != nil {
		return err
	}
	r.Status, r.Failure = s, failure
	return tx.PutHistory(r)
}

// queueReceipt adds a delivery receipt for ids (of group, or "") to the outbox (sent to every
// device of to).
func (c *Client) queueReceipt(tx *store.Tx, to, group string, ids []string) error {
	return c.queueReceiptOf(tx, to, group, ids, petrelv1.ReceiptType_RECEIPT_TYPE_DELIVERED)
}

// storeError marks errors from the local store, which abort a batch instead of dropping a message.
type storeError struct{ err error }

func (e *storeError) Error() string { return "local store: " + e.err.Error() }
func (e *storeError) Unwrap() error { return e.err }

func isStoreErr(err error) bool {
	var s *storeError
	return errors.As(err, &s)
}

// decrypt decrypts with the session record of (from, dev) (the active session, then previous
// ones), and for a PreKey message that matches none, accepts a new session. newSession reports the
// latter; ident is the sender's identity key.
func (c *Client) decrypt(tx *store.Tx, from, dev string, ct []byte) (pt []byte, ident *e2ee.IdentityKey, newSession bool, err error) {
	rec, err := loadRecord(tx, from, dev)
	if err != nil {
		return nil, nil, false, err
	}
	pt, err = rec.Decrypt(ct)
	if err == nil {
		if err := saveRecord(tx, from, dev, rec); err != nil {
			return nil, nil, false, err
		}
		return pt, rec.Active().RemoteIdentity(), false, nil
	}
	if !e2ee.IsPreKeyMessage(ct) || !errors.Is(err, e2ee.ErrNoSession) {
		return nil, nil, false, err
	}
	s, pt, used, err := e2ee.AcceptSession(c.cfg.Rand, c.identity, preKeyStore{tx: tx}, ct)
	if err != nil {
		var se *storeError
		if errors.As(err, &se) {
			return nil, nil, false, se
		}
		return nil, nil, false, err
	}
	if used.HasOneTime {
		if err := tx.DeleteOneTimePreKey(used.OneTimePreKeyID); err != nil {
			return nil, nil, false, &storeError{err}
		}
	}
	if !used.KEMLastResort {
		if err := tx.DeleteKEMPreKey(used.KEMPreKeyID); err != nil {
			return nil, nil, false, &storeError{err}
		}
	}
	rec.Promote(s)
	if err := saveRecord(tx, from, dev, rec); err != nil {
		return nil, nil, false, err
	}
	return pt, s.RemoteIdentity(), true, nil
}

// loadRecord returns the session record with (name, dev), empty if there is none.
func loadRecord(tx *store.Tx, name, dev string) (*e2ee.SessionRecord, error) {
	raw := tx.SessionRecord(name, dev)
	if raw == nil {
		return e2ee.NewSessionRecord(), nil
	}
	rec, err := e2ee.UnmarshalSessionRecord(raw)
	if err != nil {
		return nil, &storeError{fmt.Errorf("session record of %s/%s: %w", name, dev, err)}
	}
	return rec, nil
}

func saveRecord(tx *store.Tx, name, dev string, rec *e2ee.SessionRecord) error {
	b, err := rec.MarshalBinary()
	if err != nil {
		return err
	}
	if err := tx.PutSessionRecord(name, dev, b); err != nil {
		return &storeError{err}
	}
	return nil
}

// hasSession reports whether there is a session with (name, dev).
func hasSession(tx *store.Tx, name, dev string) bool {
	return tx.SessionRecord(name, dev) != nil
}

// trustOnReceive records the identity of a device that started a session with us, trusting it on
// first use and reporting a change.
func (c *Client) trustOnReceive(tx *store.Tx, name, dev string, ident *e2ee.IdentityKey) ([]Event, error) {
	if ident == nil {
		return nil, nil
	}
	ct, err := tx.Contact(name)
	if errors.Is(err, store.ErrNotFound) {
		ct = &store.Contact{Name: name, Devices: map[string]*store.ContactDevice{}}
	} else if err != nil {
		return nil, err
	}
	ev := c.trustDevice(ct, dev, ident.Bytes())
	if err := tx.PutContact(ct); err != nil {
		return nil, err
	}
	if ev == nil {
		return nil, nil
	}
	return []Event{ev}, nil
}

// trustDevice records device dev's identity key in ct. It returns an IdentityChanged event when the
// key replaces a different one, or when dev is a new device of a contact already known.
func (c *Client) trustDevice(ct *store.Contact, dev string, key []byte) *IdentityChanged {
	now := c.cfg.Now()
	ct.UpdatedAt = now
	old, ok := ct.Devices[dev]
	switch {
	case ok && len(old.IdentityKey) > 0 && !bytesEqual(old.IdentityKey, key):
		ev := &IdentityChanged{Name: ct.Name, DeviceID: dev,
			OldFingerprint: Fingerprint(old.IdentityKey), NewFingerprint: Fingerprint(key)}
		old.IdentityKey = append([]byte(nil), key...)
		c.log.Warn("identity key changed", "name", ct.Name, "peer_device", dev)
		return ev
	case ok && len(old.IdentityKey) > 0:
		return nil
	case ok:
		// Learnt from a device list without its key; this is its first key.
		old.IdentityKey = append([]byte(nil), key...)
		return nil
	}
	known := false
	for _, d := range ct.Devices {
		if len(d.IdentityKey) > 0 {
			known = true
		}
	}
	ct.Devices[dev] = &store.ContactDevice{IdentityKey: append([]byte(nil), key...), FirstSeen: now}
	if !known {
		return nil // first contact: trust on first use
	}
	return &IdentityChanged{Name: ct.Name, DeviceID: dev, NewDevice: true, NewFingerprint: Fingerprint(key)}
}

func bytesEqual(a, b []byte) bool { return string(a) == string(b) }

// preKeyStore gives e2ee.AcceptSession this device's private prekeys from a transaction.
type preKeyStore struct{ tx *store.Tx }

func (p preKeyStore) SignedPreKey(id uint32) (*e2ee.SignedPreKeyPair, error) {
	k, err := p.tx.SignedPreKey(id)
	if errors.Is(err, store.ErrNotFound) {
		return nil, e2ee.ErrPreKeyNotFound
	}
	if err != nil {
		return nil, &storeError{err}
	}
	return e2ee.UnmarshalSignedPreKeyPair(k.Pair)
}

func (p preKeyStore) OneTimePreKey(id uint32) (*e2ee.OneTimePreKeyPair, error) {
	b, err := p.tx.OneTimePreKey(id)
	if errors.Is(err, store.ErrNotFound) {
		return nil, e2ee.ErrPreKeyNotFound
	}
	if err != nil {
		return nil, &storeError{err}
	}
	return e2ee.UnmarshalOneTimePreKeyPair(b)
}

func (p preKeyStore) KEMPreKey(id uint32) (*e2ee.KEMPreKeyPair, error) {
	k, err := p.tx.KEMPreKey(id)
	if errors.Is(err, store.ErrNotFound) {
		return nil, e2ee.ErrPreKeyNotFound
	}
	if err != nil {
		return nil, &storeError{err}
	}
	return e2ee.UnmarshalKEMPreKeyPair(k.Pair)
}
