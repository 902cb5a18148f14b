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

// errStartSession reports a session that could not be started from a verified bundle.
var errStartSession = errors.New("cannot start an E2EE session")

const (
	// flushBatch bounds the outbox entries read per flush round.
	flushBatch = 64
	// maxDeviceRounds bounds the stale-device-list recoveries for one send.
	maxDeviceRounds = 4
	// maxTransientRetries bounds retries of one send refused with a retryable error before the
	// connection is dropped (and re-made with backoff).
	maxTransientRetries = 5
	// maxCheckScan bounds the outbox entries examined by one resend check.
	maxCheckScan = 4096
	// paddingBlock: plaintexts are padded to a multiple of this many bytes.
	paddingBlock = 160
)

// The send window. Sends on one connection are pipelined: up to Config.SendWindow entries are
// in flight at once, but at most ONE per recipient account (a "lane"); a recipient's next entry
// leaves only once the previous one is acked or refused for good.
//
// Why not pipeline one recipient's messages too? The server would keep them in order — it runs a
// connection's frames in order and the mailbox keeps per-sender order per connection
// (internal/mailbox, "Per-sender order") — but only for the sends it accepts. A refusal that the
// client recovers from (STALE_DEVICES or UNKNOWN_DEVICE: refetch, re-encrypt, resend; a transient
// RATE_LIMITED or UNAVAILABLE: back off, resend) would come back after later messages of the same
// chat had already been accepted and delivered, and the recipient would show them out of order.
// Keeping one message per recipient in flight makes a recovered send cost only its own lane;
// different chats (and receipts to different senders) still overlap their round trips, which is
// what a device that talks to many accounts needs.
const (
	// DefaultSendWindow is Config.SendWindow's default.
	DefaultSendWindow = 32
	// maxSendWindow bounds Config.SendWindow (below the connection's request bound, so pings and
	// prekey uploads still get through).
	maxSendWindow = maxPendingRequests / 2
	// maxQueued bounds the outbox entries a flush holds in memory; more are read as these leave.
	maxQueued = 1024
)

// sendLane is one recipient's queue in a flush: entries in outbox order, one in flight at a time.
type sendLane struct {
	to      string
	queue   []*store.OutboxEntry
	running bool
}

// laneDone is a lane's report that its entry left the outbox's pending state (or failed).
type laneDone struct {
	lane *sendLane
	err  error
}

// flush sends every pending outbox entry, with up to Config.SendWindow in flight and each
// recipient's entries in order (see the send window above). It returns an error only when the
// connection (or the store) is unusable; entries refused for good leave the outbox and fail
// their Send. It returns once nothing is pending or in flight.
func (l *link) flush(ctx context.Context) (err error) {
	c := l.c
	window := c.cfg.SendWindow
	fctx, cancel := context.WithCancel(ctx)
	var wg sync.WaitGroup
	defer func() {
		cancel()
		wg.Wait()
	}()
	lanes := map[string]*sendLane{}
	done := make(chan laneDone, window)
	var (
		lastSeq  uint64 // entries up to here were read into the lanes
		queued   int    // entries in the lanes' queues (not in flight)
		inflight int
		drained  bool // the last read found nothing more
	)
	refill := func() error {
		if queued > maxQueued/2 {
			return nil
		}
		var entries []*store.OutboxEntry
		err := c.st.View(func(tx *store.Tx) error {
			var err error
			entries, err = tx.PendingOutboxAfter(lastSeq, maxQueued-queued)
			return err
		})
		if err != nil {
			return &storeError{err}
		}
		drained = len(entries) == 0
		for _, e := range entries {
			lastSeq = e.Seq
			ln := lanes[e.To]
			if ln == nil {
				ln = &sendLane{to: e.To}
				lanes[e.To] = ln
			}
			ln.queue = append(ln.queue, e)
			queued++
		}
		return nil
	}
	// start runs the head entry of idle lanes while the window has room, oldest head first.
	start := func() {
		for inflight < window {
			var next *sendLane
			for _, ln := range lanes {
				if !ln.running && len(ln.queue) > 0 && (next == nil || ln.queue[0].Seq < next.queue[0].Seq) {
					next = ln
				}
			}
			if next == nil {
				return
			}
			e := next.queue[0]
			next.queue = next.queue[1:]
			next.running = true
			queued--
			inflight++
			if int64(inflight) > c.sendHighWater.Load() {
				c.sendHighWater.Store(int64(inflight))
			}
			wg.Add(1)
			go func(ln *sendLane) {
				defer wg.Done()
				done <- laneDone{ln, l.sendEntry(fctx, e)}
			}(next)
		}
	}
	for {
		if err := refill(); err != nil {
			return err
		}
		start()
		if inflight == 0 {
			if drained {
				return nil
			}
			continue
		}
		select {
		case d := <-done:
			inflight--
			d.lane.running = false
			if len(d.lane.queue) == 0 {
				delete(lanes, d.lane.to)
			}
			if d.err != nil {
				return d.err
			}
		case <-ctx.Done():
			return ctx.Err()
		}
	}
}

// sendEntry sends one entry until the server acks it, refuses it for good, or the connection fails.
func (l *link) sendEntry(ctx context.Context, e *store.OutboxEntry) error {
	c := l.c
	for attempt := 1; ; attempt++ {
		err := l.trySend(ctx, e)
		switch {
		case err == nil:
			return nil
		case isConnErr(err) || isStoreErr(err):
			return err
		case isTransient(err):
			if attempt > maxTransientRetries {
				return err
			}
			wait := c.boff.withRetryAfter(c.boff.delay(attempt), retryAfter(err))
			c.log.Info("send refused for now, retrying", "message_id", e.ID, "err", err, "retry_in", wait)
			t := time.NewTimer(wait)
			select {
			case <-t.C:
			case <-ctx.Done():
				t.Stop()
				return ctx.Err()
			}
		default:
			return c.failEntry(ctx, e, err)
		}
	}
}

// errOwnDeviceGone reports a device-to-device entry whose device left this account's list.
var errOwnDeviceGone = errors.New("that device is no longer linked to this account")

// trySend encrypts e for every current device of its recipient and for every other device of this
// account (a KindDevice entry: for its one device) and sends it, recovering from a stale device
// list (the recipient's or this account's: both are fetched again).
func (l *link) trySend(ctx context.Context, e *store.OutboxEntry) error {
	c := l.c
	if g := store.GroupOf(e.To); g != "" {
		return l.sendGroupEntry(ctx, e, g)
	}
	for round := 0; ; round++ {
		var devices, own []string
		var err error
		if e.Kind == store.KindDevice {
			others, err := l.ensureSessions(ctx, c.name)
			if err != nil {
				return err
			}
			if !slices.Contains(others, e.Device) {
				return fmt.Errorf("%w: %s", errOwnDeviceGone, e.Device)
			}
			devices = []string{e.Device}
		} else {
			if devices, err = l.ensureSessions(ctx, e.To); err != nil {
				return err
			}
			if len(devices) == 0 {
				return fmt.Errorf("%w: %s has no devices", ErrUnknownDevice, e.To)
			}
			if own, err = l.ensureSessions(ctx, c.name); err != nil {
				return err
			}
		}
		frame, err := c.encryptEntry(e, devices, own)
		if err != nil {
			return err
		}
		resp, err := l.conn.request(ctx, frame)
		if err == nil {
			if resp.GetSendResult() == nil {
				return fmt.Errorf("%w: expected SendResult", ErrProtocol)
			}
			return c.serverAcked(ctx, e, devices)
		}
		var se *Error
		if errors.As(err, &se) && round < maxDeviceRounds &&
			(se.Code == petrelv1.ErrorCode_ERROR_CODE_STALE_DEVICES || se.Code == petrelv1.ErrorCode_ERROR_CODE_UNKNOWN_DEVICE) {
			c.log.Info("devices changed, refetching them and re-encrypting", "to", e.To, "message_id", e.ID)
			if err := c.forgetDevices(e.To); err != nil {
				return err
			}
			if err := c.forgetDevices(c.name); err != nil {
				return err
			}
			continue
		}
		return err
	}
}

// encryptEntry encrypts the entry's content once per recipient device and, with sent_to set,
// once per other device of this account (own), advancing and persisting each session before
// anything leaves, and builds the Send frame.
func (c *Client) encryptEntry(e *store.OutboxEntry, devices, own []string) (*petrelv1.Frame, error) {
	var content petrelv1.Content
	if err := proto.Unmarshal(e.Content, &content); err != nil {
		return nil, fmt.Errorf("stored outbox entry: %w", err)
	}
	pt, err := padded(&content)
	if err != nil {
		return nil, err
	}
	ownPT := pt
	if len(own) > 0 && e.Kind == store.KindText {
		content.SentTo = e.To
		if ownPT, err = padded(&content); err != nil {
			return nil, err
		}
	}
	send := &petrelv1.Send{MessageId: e.ID, To: e.To}
	if ms := content.GetExpiresInMs(); ms > 0 { // a disappearing message: the server deletes it then
		send.ExpiresAtMs = e.CreatedAt.UnixMilli() + ms
	}
	err = c.st.Update(func(tx *store.Tx) error {
		var err error
		if send.Envelopes, err = encryptFor(tx, e.To, devices, pt, send.Envelopes[:0]); err != nil {
			return err
		}
		send.OwnEnvelopes, err = encryptFor(tx, c.name, own, ownPT, send.OwnEnvelopes[:0])
		return err
	})
	if err != nil {
		return nil, err
	}
	return &petrelv1.Frame{Body: &petrelv1.Frame_Send{Send: send}}, nil
}

// padded serialises content with padding to close to a multiple of paddingBlock.
func padded(content *petrelv1.Content) ([]byte, error) {
	content.Padding = nil
	if n := proto.Size(content) % paddingBlock; n != 0 {
		// The field's own tag and length take 2-3 bytes; the result is close to a block multiple.
		content.Padding = make([]byte, max(paddingBlock-n-3, 0))
	}
	return proto.Marshal(content)
}

// encryptFor encrypts pt for each device of name inside tx and appends the ciphertexts.
func encryptFor(tx *store.Tx, name string, devices []string, pt []byte, out []*petrelv1.DeviceCiphertext) ([]*petrelv1.DeviceCiphertext, error) {
	for _, dev := range devices {
		rec, err := loadRecord(tx, name, dev)
		if err != nil {
			return nil, err
		}
		ct, err := rec.Encrypt(pt)
		if err != nil {
			return nil, fmt.Errorf("encrypt for %s/%s: %w", name, dev, err)
		}
		if err := saveRecord(tx, name, dev, rec); err != nil {
			return nil, err
		}
		typ := petrelv1.EnvelopeType_ENVELOPE_TYPE_MESSAGE
		if e2ee.IsPreKeyMessage(ct) {
			typ = petrelv1.EnvelopeType_ENVELOPE_TYPE_PREKEY
		}
		out = append(out, &petrelv1.DeviceCiphertext{DeviceId: dev, Type: typ, Ciphertext: ct})
	}
	return out, nil
}

// serverAcked records the server's ack of e, sent to devices.
func (c *Client) serverAcked(ctx context.Context, e *store.OutboxEntry, devices []string) error {
	var ev Event
	err := c.st.Update(func(tx *store.Tx) error {
		ev = nil
		cur, err := tx.OutboxByID(e.To, e.ID)
		if errors.Is(err, store.ErrNotFound) {
			return nil
		}
		if err != nil {
			return err
		}
		if cur.Kind != store.KindText {
			return tx.DeleteOutbox(cur)
		}
		cur.Awaiting = slices.DeleteFunc(slices.Clone(devices), func(d string) bool { return slices.Contains(cur.Receipted, d) })
		if len(cur.Awaiting) == 0 {
			ev, err = c.completeOutbox(tx, cur)
			return err
		}
		cur.ServerAckedAt = c.cfg.Now()
		cur.CheckedAt = time.Time{}
		cur.Sends++
		if err := tx.PutOutbox(cur); err != nil {
			return err
		}
		if cur.Delivered {
			return nil
		}
		return c.setHistoryStatus(tx, e.To, e.ID, store.StatusSent, "")
	})
	if err != nil {
		return &storeError{err}
	}
	c.finish(e.ID, nil)
	if ev != nil {
		c.emit(ctx, ev)
	}
	return nil
}

// failEntry removes an entry the server refused for good and fails its Send.
func (c *Client) failEntry(ctx context.Context, e *store.OutboxEntry, cause error) error {
	c.log.Warn("message refused, removed from the outbox", "to", e.To, "message_id", e.ID, "err", cause)
	err := c.st.Update(func(tx *store.Tx) error {
		cur, err := tx.OutboxByID(e.To, e.ID)
		if errors.Is(err, store.ErrNotFound) {
			return nil
		}
		if err != nil {
			return err
		}
		if err := tx.DeleteOutbox(cur); err != nil {
			return err
		}
		return c.setHistoryStatus(tx, e.To, e.ID, store.StatusFailed, cause.Error())
	})
	if err != nil {
		return &storeError{err}
	}
	if waited := c.finish(e.ID, cause); !waited && e.Kind == store.KindText {
		c.emit(ctx, &SendFailed{To: e.To, MessageID: e.ID, Err: cause})
	}
	return nil
}

// ensureSessions makes sure there is a session with every known device of name, fetching prekey
// bundles where needed, and returns the device ids to send to (sorted). For this account's own
// name they are its other devices: those of its verified device list that the server has too.
func (l *link) ensureSessions(ctx context.Context, name string) ([]string, error) {
	c := l.c
	own := name == c.name
	var (
		full    bool
		missing []string
	)
	scan := func() error {
		full, missing = false, nil
		return c.st.View(func(tx *store.Tx) error {
			ct, err := tx.Contact(name)
			if errors.Is(err, store.ErrNotFound) {
				full = true
				return nil
			}
			if err != nil {
				return err
			}
			if !ct.DevicesKnown || !own && len(ct.Devices) == 0 {
				full = true
				return nil
			}
			for dev := range ct.Devices {
				if !hasSession(tx, name, dev) {
					missing = append(missing, dev)
				}
			}
			return nil
		})
	}
	if err := scan(); err != nil {
		return nil, &storeError{err}
	}
	if own && full {
		// This account's devices come from its signed list (GetDevices), not from a bundle fetch.
		if _, err := l.syncOwnDevices(ctx); errors.Is(err, ErrUnknownFrame) {
			return nil, nil // a server without linked devices: this device is the only one
		} else if err != nil {
			return nil, err
		}
		if err := scan(); err != nil {
			return nil, &storeError{err}
		}
		full = false
	}
	if full || len(missing) > 0 {
		slices.Sort(missing)
		req := &petrelv1.GetBundle{Name: name, DeviceIds: missing}
		resp, err := l.conn.request(ctx, &petrelv1.Frame{Body: &petrelv1.Frame_GetBundle{GetBundle: req}})
		if err != nil {
			return nil, err
		}
		res := resp.GetBundleResult()
		if res == nil {
			return nil, fmt.Errorf("%w: expected BundleResult", ErrProtocol)
		}
		if own {
			err = c.acceptOwnBundles(res)
		} else {
			err = c.acceptBundles(ctx, name, missing, res)
		}
		if err != nil {
			return nil, err
		}
	}
	var devices []string
	err := c.st.View(func(tx *store.Tx) error {
		ct, err := tx.Contact(name)
		if own && errors.Is(err, store.ErrNotFound) {
			return nil
		}
		if err != nil {
			return err
		}
		for _, dev := range slices.Sorted(maps.Keys(ct.Devices)) {
			if hasSession(tx, name, dev) {
				devices = append(devices, dev)
			}
		}
		return nil
	})
	if err != nil {
		return nil, &storeError{err}
	}
	return devices, nil
}

// acceptOwnBundles starts sessions with other devices of this account from fetched bundles: only
// devices the verified list names, with the identity key it names.
func (c *Client) acceptOwnBundles(res *petrelv1.BundleResult) error {
	err := c.st.Update(func(tx *store.Tx) error {
		ct, err := tx.Contact(c.name)
		if err != nil {
			return err
		}
		for _, db := range res.GetDevices() {
			dev := db.GetDeviceId()
			d, ok := ct.Devices[dev]
			if !ok || dev == c.deviceID || db.GetSignedPrekey() == nil || db.GetKemPrekey() == nil {
				continue
			}
			b := bundleFromProto(db)
			if !bytesEqual(b.Identity, d.IdentityKey) {
				c.log.Warn("own device's bundle has another identity key than the signed list", "peer_device", dev)
				continue
			}
			if err := b.Verify(); err != nil {
				c.log.Warn("own device's prekey bundle does not verify", "peer_device", dev, "err", err)
				continue
			}
			if hasSession(tx, c.name, dev) {
				continue
			}
			s, err := e2ee.InitiateSession(c.cfg.Rand, c.identity, b)
			if err != nil {
				return fmt.Errorf("%w with own device %s: %w", errStartSession, dev, err)
			}
			rec := e2ee.NewSessionRecord()
			rec.Promote(s)
			if err := saveRecord(tx, c.name, dev, rec); err != nil {
				return err
			}
		}
		return nil
	})
	if err != nil {
		if errors.Is(err, errStartSession) || isStoreErr(err) {
			return err
		}
		return &storeError{err}
	}
	return nil
}

// acceptBundles verifies fetched bundles and the account's signed device list, records the
// devices' identity keys (trust on first use, changes reported) and starts sessions with devices
// that have none. Only devices the list names with the same identity key are kept (all of them
// for an account without a list). requested lists the devices asked for (nil: all devices, so
// devices missing from res are gone); devices that left the list are gone too.
func (c *Client) acceptBundles(ctx context.Context, name string, requested []string, res *petrelv1.BundleResult) error {
	type fetched struct {
		dev    string
		bundle *e2ee.PreKeyBundle
	}
	var got []fetched
	for _, db := range res.GetDevices() {
		dev := db.GetDeviceId()
		if !petrelv1.ValidDeviceID(dev) || db.GetSignedPrekey() == nil || db.GetKemPrekey() == nil {
			return fmt.Errorf("%w: malformed bundle", ErrProtocol)
		}
		b := bundleFromProto(db)
		if err := b.Verify(); err != nil {
			c.log.Warn("prekey bundle does not verify", "name", name, "peer_device", dev, "err", err)
			return fmt.Errorf("%w: %s device %s: %w", ErrUntrustedBundle, name, dev, err)
		}
		got = append(got, fetched{dev, b})
	}
	var events []Event
	err := c.st.Update(func(tx *store.Tx) error {
		events = events[:0]
		ct, err := tx.Contact(name)
		if errors.Is(err, store.ErrNotFound) {
			ct = &store.Contact{Name: name, Devices: map[string]*store.ContactDevice{}}
		} else if err != nil {
			return err
		}
		var oldList *petrelv1.DeviceList
		if ct.ListVersion > 0 {
			oldList = &petrelv1.DeviceList{}
			for dev, d := range ct.Devices {
				oldList.Devices = append(oldList.Devices, &petrelv1.ListedDevice{DeviceId: dev, IdentityKey: d.IdentityKey})
			}
		}
		list, primaryEv, err := c.acceptContactList(ct, res.GetDeviceList())
		if err != nil {
			return err
		}
		if primaryEv != nil {
			events = append(events, primaryEv)
		}
		seen := map[string]bool{}
		for _, f := range got {
			if list != nil && !list.Contains(f.dev, f.bundle.Identity) {
				c.log.Warn("bundle of a device the signed device list does not name; not encrypting to it", "name", name, "peer_device", f.dev)
				continue
			}
			seen[f.dev] = true
			if ev := c.trustDevice(ct, f.dev, f.bundle.Identity); ev != nil {
				events = append(events, ev)
				if !ev.NewDevice {
					// Sessions with the old identity must not be used any more.
					if err := tx.DeleteSessionRecord(name, f.dev); err != nil {
						return err
					}
				}
			}
			if hasSession(tx, name, f.dev) {
				continue // a session appeared meanwhile (the device wrote first)
			}
			s, err := e2ee.InitiateSession(c.cfg.Rand, c.identity, f.bundle)
			if err != nil {
				return fmt.Errorf("%w with %s/%s: %w", errStartSession, name, f.dev, err)
			}
			rec := e2ee.NewSessionRecord()
			rec.Promote(s)
			if err := saveRecord(tx, name, f.dev, rec); err != nil {
				return err
			}
		}
		gone := requested
		if requested == nil {
			gone = slices.Collect(maps.Keys(ct.Devices))
		}
		gone = slices.DeleteFunc(slices.Clone(gone), func(dev string) bool { return seen[dev] })
		if list != nil {
			for dev, d := range ct.Devices {
				if !list.Contains(dev, d.IdentityKey) && !slices.Contains(gone, dev) {
					gone = append(gone, dev)
				}
			}
		}
		for _, dev := range gone {
			delete(ct.Devices, dev)
		}
		evs, err := c.devicesGone(tx, name, gone)
		if err != nil {
			return err
		}
		events = append(events, evs...)
		ct.DevicesKnown = true
		ct.UpdatedAt = c.cfg.Now()
		if list != nil {
			if ch := listChange(name, oldList, list); ch != nil && len(ch.Removed) > 0 {
				ch.Added = nil // reported one by one as IdentityChanged (new device)
				events = append(events, ch)
			}
		}
		return tx.PutContact(ct)
	})
	if err != nil {
		if errors.Is(err, errStartSession) || errors.Is(err, ErrUntrustedDeviceList) || isStoreErr(err) {
			return err
		}
		return &storeError{err}
	}
	for _, ev := range events {
		c.emit(ctx, ev)
	}
	return nil
}

func bundleFromProto(db *petrelv1.DeviceBundle) *e2ee.PreKeyBundle {
	spk, kpk := db.GetSignedPrekey(), db.GetKemPrekey()
	b := &e2ee.PreKeyBundle{
		Identity:     db.GetIdentityKey(),
		SignedPreKey: e2ee.SignedPreKey{ID: spk.GetId(), PublicKey: spk.GetPublicKey(), Signature: spk.GetSignature()},
		KEMPreKey: e2ee.KEMPreKey{ID: kpk.GetId(), PublicKey: kpk.GetPublicKey(), Signature: kpk.GetSignature(),
			LastResort: kpk.GetLastResort()},
	}
	if otk := db.GetOneTimePrekey(); otk != nil {
		b.OneTimePreKey = &e2ee.OneTimePreKey{ID: otk.GetId(), PublicKey: otk.GetPublicKey()}
	}
	return b
}

// forgetDevices handles a STALE_DEVICES or UNKNOWN_DEVICE answer: the contact's device list is
// marked unknown, so the next ensureSessions refetches every device of name through GetBundle
// (the server's Send answers never list devices), drops the devices that are gone (and their
// sessions), and starts sessions with the new ones.
func (c *Client) forgetDevices(name string) error {
	err := c.st.Update(func(tx *store.Tx) error {
		ct, err := tx.Contact(name)
		if errors.Is(err, store.ErrNotFound) {
			return nil // nothing known: the next ensureSessions fetches everything anyway
		} else if err != nil {
			return err
		}
		ct.DevicesKnown = false
		ct.UpdatedAt = c.cfg.Now()
		return tx.PutContact(ct)
	})
	if err != nil {
		return &storeError{err}
	}
	return nil
}

// checkOutbox asks the server about messages it acked long ago that still miss receipts, and
// marks those it no longer holds for resending (same id, re-encrypted).
func (l *link) checkOutbox(ctx context.Context) error {
	c := l.c
	if err := c.checkGroupOutbox(); err != nil {
		return err
	}
	now := c.cfg.Now()
	type target struct{ to, dev string }
	groups := map[target][]string{}
	var order []target
	err := c.st.View(func(tx *store.Tx) error {
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
				if e.Pending() || e.Kind != store.KindText || len(e.Awaiting) == 0 || store.GroupOf(e.To) != "" {
					continue // (group messages: checkGroupOutbox)
				}
				last := e.ServerAckedAt
				if e.CheckedAt.After(last) {
					last = e.CheckedAt
				}
				if now.Sub(last) < c.cfg.ResendInterval {
					continue
				}
				for _, dev := range e.Awaiting {
					t := target{e.To, dev}
					if _, ok := groups[t]; !ok {
						order = append(order, t)
					}
					groups[t] = append(groups[t], e.ID)
				}
			}
		}
		return nil
	})
	if err != nil {
		return &storeError{err}
	}
	if len(order) == 0 {
		return nil
	}
	type msgKey struct{ to, id string }
	lost := map[msgKey]bool{}
	checked := map[msgKey]bool{}
	goneDevice := map[msgKey][]string{}
	var failed []msgKey
	for _, t := range order {
		ids := groups[t]
		for len(ids) > 0 {
			n := min(len(ids), petrelv1.MaxQueryQueued)
			batch := ids[:n]
			ids = ids[n:]
			q := &petrelv1.QueryQueued{To: t.to, DeviceId: t.dev, MessageIds: batch}
			resp, err := l.conn.request(ctx, &petrelv1.Frame{Body: &petrelv1.Frame_QueryQueued{QueryQueued: q}})
			var se *Error
			switch {
			case err == nil:
				queued := map[string]bool{}
				for _, id := range resp.GetQueuedResult().GetQueued() {
					queued[id] = true
				}
				for _, id := range batch {
					k := msgKey{t.to, id}
					checked[k] = true
					if !queued[id] {
						lost[k] = true
					}
				}
			case errors.Is(err, ErrUnknownDevice):
				for _, id := range batch {
					k := msgKey{t.to, id}
					goneDevice[k] = append(goneDevice[k], t.dev)
				}
			case errors.Is(err, ErrUnknownUser):
				for _, id := range batch {
					failed = append(failed, msgKey{t.to, id})
				}
			case errors.As(err, &se):
				c.log.Info("outbox check refused, will retry later", "to", t.to, "err", err)
			default:
				return err
			}
		}
	}
	var events []Event
	resend := 0
	err = c.st.Update(func(tx *store.Tx) error {
		events, resend = events[:0], 0
		keys := map[msgKey]bool{}
		for k := range checked {
			keys[k] = true
		}
		for k := range goneDevice {
			keys[k] = true
		}
		for k := range keys {
			e, err := tx.OutboxByID(k.to, k.id)
			if errors.Is(err, store.ErrNotFound) {
				continue
			}
			if err != nil {
				return err
			}
			if e.Pending() {
				continue
			}
			for _, dev := range goneDevice[k] {
				e.Awaiting = slices.DeleteFunc(e.Awaiting, func(d string) bool { return d == dev })
			}
			switch {
			case len(e.Awaiting) == 0:
				ev, err := c.completeOutbox(tx, e)
				if err != nil {
					return err
				}
				if ev != nil {
					events = append(events, ev)
				}
				continue
			case lost[k]:
				// The server no longer holds it and no receipt came: send it again.
				e.ServerAckedAt, e.CheckedAt, e.Awaiting = time.Time{}, time.Time{}, nil
				resend++
			default:
				e.CheckedAt = now
			}
			if err := tx.PutOutbox(e); err != nil {
				return err
			}
		}
		return nil
	})
	if err != nil {
		return &storeError{err}
	}
	for _, k := range failed {
		e := &store.OutboxEntry{To: k.to, ID: k.id, Kind: store.KindText}
		if err := c.failEntry(ctx, e, fmt.Errorf("%w: %s", ErrUnknownUser, k.to)); err != nil {
			return err
		}
	}
	if resend > 0 {
		c.log.Info("resending messages the server no longer holds", "count", resend)
	}
	for _, ev := range events {
		c.emit(ctx, ev)
	}
	return nil
}
