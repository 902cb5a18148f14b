// Copyright 2026 The Petrel Authors
// SPDX-License-Identifier: Apache-2.0

package client_test

import (
	"context"
	"errors"
	"maps"
	"os"
	"path/filepath"
	"slices"
	"strings"
	"sync"
	"testing"
	"time"

	"github.com/nats-io/nats.go/jetstream"
	"google.golang.org/protobuf/proto"

	"github.com/petrelchat/petrel/client"
	"github.com/petrelchat/petrel/client/store"
	"github.com/petrelchat/petrel/e2ee"
	"github.com/petrelchat/petrel/internal/bus"
	"github.com/petrelchat/petrel/internal/server"
	"github.com/petrelchat/petrel/internal/testserver"
	petrelv1 "github.com/petrelchat/petrel/proto/petrel/v1"
)

// waitFor bounds every wait in these tests; nothing sleeps.
const waitFor = 20 * time.Second

// device is one registered test device with its client running.
type device struct {
	t      testing.TB
	name   string
	home   string
	st     *store.Store
	c      *client.Client
	cfg    client.Config
	events chan client.Event
	runErr chan error

	msgs      chan *client.Message
	delivered chan *client.Delivered
	idents    chan *client.IdentityChanged
	queueEmpt chan *client.QueueEmpty
	failed    chan *client.SendFailed
	prekeys   chan *client.PreKeysUploaded
	undecr    chan *client.DecryptFailed
	changed   chan *client.DevicesChanged
	history   chan *client.HistoryReceived
	collected chan struct{}
	// beforeRun, if set, is called with the client after it opens and before it runs.
	beforeRun func(*client.Client)
}

type devOpts struct {
	preKeys int
	cfg     client.Config
}

// register creates a home, registers name on srv and returns the device, not running.
func register(t testing.TB, srv *testserver.Server, name string, o devOpts) *device {
	t.Helper()
	return registerAt(t, srv.URL(), name, o)
}

// registerAt is register on the server at url.
func registerAt(t testing.TB, url, name string, o devOpts) *device {
	t.Helper()
	home := t.TempDir()
	st, err := store.Open(home, store.Options{NoSync: true})
	if err != nil {
		t.Fatal(err)
	}
	ctx, cancel := context.WithTimeout(context.Background(), waitFor)
	defer cancel()
	if _, err := client.Register(ctx, st, client.RegisterOptions{ServerURL: url, Name: name, PreKeys: o.preKeys}); err != nil {
		t.Fatalf("register %s: %v", name, err)
	}
	st.Close()
	return &device{t: t, name: name, home: home, cfg: o.cfg}
}

func fastConfig(cfg client.Config) client.Config {
	if cfg.ReconnectBase == 0 {
		cfg.ReconnectBase = 5 * time.Millisecond
	}
	if cfg.ReconnectMax == 0 {
		cfg.ReconnectMax = 100 * time.Millisecond
	}
	return cfg
}

// start opens the device's store and runs its client until stop (or the test's end).
func (d *device) start() *device {
	d.t.Helper()
	st, err := store.Open(d.home, store.Options{NoSync: true})
	if err != nil {
		d.t.Fatal(err)
	}
	d.st = st
	d.events = make(chan client.Event)
	d.msgs = make(chan *client.Message, 1000)
	d.delivered = make(chan *client.Delivered, 1000)
	d.idents = make(chan *client.IdentityChanged, 100)
	d.queueEmpt = make(chan *client.QueueEmpty, 100)
	d.failed = make(chan *client.SendFailed, 100)
	d.prekeys = make(chan *client.PreKeysUploaded, 100)
	d.undecr = make(chan *client.DecryptFailed, 100)
	d.changed = make(chan *client.DevicesChanged, 100)
	d.history = make(chan *client.HistoryReceived, 1000)
	d.collected = make(chan struct{})
	cfg := fastConfig(d.cfg)
	cfg.Store = st
	cfg.Events = d.events
	c, err := client.Open(cfg)
	if err != nil {
		d.t.Fatal(err)
	}
	d.c = c
	if d.beforeRun != nil {
		d.beforeRun(c)
	}
	runErr := make(chan error, 1)
	d.runErr = runErr
	go d.collect()
	go func() { runErr <- c.Run(context.Background()) }()
	d.t.Cleanup(d.stop)
	return d
}

// collect sorts events into per-kind channels (large buffers: the client must never block here).
func (d *device) collect() {
	defer close(d.collected)
	for ev := range d.events {
		switch ev := ev.(type) {
		case *client.Message:
			d.msgs <- ev
		case *client.Delivered:
			d.delivered <- ev
		case *client.IdentityChanged:
			d.idents <- ev
		case *client.QueueEmpty:
			d.queueEmpt <- ev
		case *client.SendFailed:
			d.failed <- ev
		case *client.PreKeysUploaded:
			d.prekeys <- ev
		case *client.DecryptFailed:
			d.undecr <- ev
		case *client.DevicesChanged:
			d.changed <- ev
		case *client.HistoryReceived:
			d.history <- ev
		}
	}
}

// stop closes the client and its store. Idempotent.
func (d *device) stop() {
	if d.c == nil {
		return
	}
	d.c.Close()
	close(d.events)
	<-d.collected
	d.st.Close()
	d.c = nil
}

func (d *device) send(to, text string) string {
	d.t.Helper()
	ctx, cancel := context.WithTimeout(context.Background(), waitFor)
	defer cancel()
	id, err := d.c.Send(ctx, to, text)
	if err != nil {
		d.t.Fatalf("%s: send to %s: %v", d.name, to, err)
	}
	return id
}

func (d *device) nextMessage() *client.Message {
	d.t.Helper()
	select {
	case m := <-d.msgs:
		return m
	case <-time.After(waitFor):
		d.t.Fatalf("%s: no message within %v", d.name, waitFor)
		return nil
	}
}

func (d *device) waitDelivered(ids ...string) {
	d.t.Helper()
	want := map[string]bool{}
	for _, id := range ids {
		want[id] = true
	}
	timeout := time.After(waitFor)
	for len(want) > 0 {
		select {
		case ev := <-d.delivered:
			delete(want, ev.MessageID)
		case <-timeout:
			d.t.Fatalf("%s: not delivered within %v: %v", d.name, waitFor, want)
		}
	}
}

func (d *device) waitQueueEmpty() {
	d.t.Helper()
	select {
	case <-d.queueEmpt:
	case <-time.After(waitFor):
		d.t.Fatalf("%s: no QueueEmpty within %v", d.name, waitFor)
	}
}

// noMoreMessages checks that nothing else was reported.
func (d *device) noMoreMessages() {
	d.t.Helper()
	select {
	case m := <-d.msgs:
		d.t.Fatalf("%s: unexpected message %s from %s: %q", d.name, m.ID, m.From, m.Text)
	default:
	}
}

// waitOutboxLen waits until the outbox holds n entries: a receipt can be read before the
// server's ack of the same send, and the entry leaves the outbox only when both are in.
func (d *device) waitOutboxLen(n int) {
	d.t.Helper()
	deadline := time.Now().Add(waitFor)
	for got := d.outboxLen(); got != n; got = d.outboxLen() {
		if time.Now().After(deadline) {
			d.t.Fatalf("%s: outbox holds %d entries after %v, want %d", d.name, got, waitFor, n)
		}
		time.Sleep(10 * time.Millisecond)
	}
}

func (d *device) outboxLen() int {
	d.t.Helper()
	n, err := d.c.OutboxLen()
	if err != nil {
		d.t.Fatal(err)
	}
	return n
}

func TestSendOnlineAndOffline(t *testing.T) {
	srv := testserver.Start(t)
	alice := register(t, srv, "alice", devOpts{}).start()
	bob := register(t, srv, "bob", devOpts{}).start()
	bob.waitQueueEmpty()

	id := alice.send("bob", "hello bob")
	m := bob.nextMessage()
	if m.ID != id || m.From != "alice" || m.Text != "hello bob" {
		t.Fatalf("bob got %+v", m)
	}
	alice.waitDelivered(id)
	alice.waitOutboxLen(0)

	// Bob answers over the session Alice started.
	rid := bob.send("alice", "hi alice")
	if m := alice.nextMessage(); m.ID != rid || m.Text != "hi alice" {
		t.Fatalf("alice got %+v", m)
	}
	bob.waitDelivered(rid)

	// Offline: Bob's device is down; the server stores, Bob drains in order on reconnect.
	bob.stop()
	ids := []string{alice.send("bob", "one"), alice.send("bob", "two"), alice.send("bob", "three")}
	if n := alice.outboxLen(); n != 3 {
		t.Fatalf("alice's outbox holds %d entries, want 3 awaiting receipts", n)
	}
	bob.start()
	for i, want := range []string{"one", "two", "three"} {
		m := bob.nextMessage()
		if m.ID != ids[i] || m.Text != want {
			t.Fatalf("bob message %d: got %s %q, want %s %q", i, m.ID, m.Text, ids[i], want)
		}
	}
	bob.waitQueueEmpty()
	alice.waitDelivered(ids...)
	bob.noMoreMessages()
}

func TestUnknownUser(t *testing.T) {
	srv := testserver.Start(t)
	alice := register(t, srv, "alice", devOpts{}).start()
	ctx, cancel := context.WithTimeout(context.Background(), waitFor)
	defer cancel()
	_, err := alice.c.Send(ctx, "nobody", "hello?")
	if !errors.Is(err, client.ErrUnknownUser) {
		t.Fatalf("send to unknown user: got %v, want ErrUnknownUser", err)
	}
	var ce *client.Error
	if !errors.As(err, &ce) || ce.Code != petrelv1.ErrorCode_ERROR_CODE_UNKNOWN_USER {
		t.Fatalf("want a *client.Error with code UNKNOWN_USER, got %#v", err)
	}
	alice.waitOutboxLen(0)
}

// A resend of a message the receiver already has (its receipt was lost) is dropped by the
// receiver, acked and receipted again.
func TestDuplicateDropped(t *testing.T) {
	srv := testserver.Start(t)
	alice := register(t, srv, "alice", devOpts{}).start()
	bob := register(t, srv, "bob", devOpts{}).start()
	bob.waitQueueEmpty()
	id := alice.send("bob", "only once")
	bob.nextMessage()
	alice.waitDelivered(id)

	// Alice's device forgets the receipt: the message is back in her outbox, never acked.
	alice.stop()
	st, err := store.Open(alice.home, store.Options{})
	if err != nil {
		t.Fatal(err)
	}
	content, _ := proto.Marshal(&petrelv1.Content{MessageId: id,
		Body: &petrelv1.Content_Text{Text: &petrelv1.Text{Body: "only once", SentAtMs: time.Now().UnixMilli()}}})
	err = st.Update(func(tx *store.Tx) error {
		return tx.AddOutbox(&store.OutboxEntry{ID: id, To: "bob", Kind: store.KindText, Content: content, CreatedAt: time.Now()})
	})
	st.Close()
	if err != nil {
		t.Fatal(err)
	}
	alice.start()
	alice.waitDelivered(id) // resent, dropped by Bob as a duplicate, receipted again
	bob.noMoreMessages()
	alice.waitOutboxLen(0)
}

// The sender's device list for the recipient is wrong (an extra device, the real one missing):
// the server answers UNKNOWN_DEVICE (without listing bob's devices), the client refetches them
// with GetBundle and recovers.
func TestStaleDeviceList(t *testing.T) {
	srv := testserver.Start(t)
	alice := register(t, srv, "alice", devOpts{}).start()
	bob := register(t, srv, "bob", devOpts{}).start()
	bob.waitQueueEmpty()
	id := alice.send("bob", "first")
	bob.nextMessage()
	alice.waitDelivered(id)

	alice.stop()
	st, err := store.Open(alice.home, store.Options{})
	if err != nil {
		t.Fatal(err)
	}
	const ghost = "0123456789abcdef0123456789abcdef"
	err = st.Update(func(tx *store.Tx) error {
		ct, err := tx.Contact("bob")
		if err != nil {
			return err
		}
		for _, dev := range slices.Collect(maps.Keys(ct.Devices)) {
			d := ct.Devices[dev]
			rec := tx.SessionRecord("bob", dev)
			// Pretend Bob's device is a ghost device, and forget the real one.
			if err := tx.PutSessionRecord("bob", ghost, rec); err != nil {
				return err
			}
			if err := tx.DeleteSessionRecord("bob", dev); err != nil {
				return err
			}
			ct.Devices[ghost] = d
			delete(ct.Devices, dev)
		}
		return tx.PutContact(ct)
	})
	st.Close()
	if err != nil {
		t.Fatal(err)
	}
	alice.start()
	id2 := alice.send("bob", "second")
	if m := bob.nextMessage(); m.ID != id2 || m.Text != "second" {
		t.Fatalf("bob got %+v", m)
	}
	alice.waitDelivered(id2)
	ct, ok, err := alice.c.Contact("bob")
	if err != nil || !ok {
		t.Fatal(ok, err)
	}
	if len(ct.Devices) != 1 || ct.Devices[0].DeviceID == ghost {
		t.Fatalf("alice's device list for bob: %+v", ct.Devices)
	}
	bob.noMoreMessages()
}

// More senders than one-time prekeys: later sessions use the last-resort KEM prekey and no
// one-time EC prekey, and still work. The device replenishes when it comes online.
func TestPreKeysExhausted(t *testing.T) {
	srv := testserver.Start(t)
	bob := register(t, srv, "bob", devOpts{preKeys: 1})
	var senders []*device
	var ids []string
	for _, name := range []string{"alice", "carol", "dave"} {
		d := register(t, srv, name, devOpts{}).start()
		senders = append(senders, d)
		ids = append(ids, d.send("bob", "from "+name))
	}
	bob.start()
	got := map[string]string{}
	for range ids {
		m := bob.nextMessage()
		got[m.ID] = m.From + ": " + m.Text
	}
	for i, id := range ids {
		if want := senders[i].name + ": from " + senders[i].name; got[id] != want {
			t.Fatalf("message %s: got %q, want %q", id, got[id], want)
		}
		senders[i].waitDelivered(id)
	}
	// Bob uploaded fresh one-time prekeys on connect (the server said it had none left).
	select {
	case ev := <-bob.prekeys:
		if ev.OneTime < 99 || ev.KEM < 99 {
			t.Fatalf("replenished %+v", ev)
		}
	case <-time.After(waitFor):
		t.Fatal("no prekey upload")
	}
	var otks int
	bob.st.View(func(tx *store.Tx) error { otks = tx.CountOneTimePreKeys(); return nil })
	if otks < 100 {
		t.Fatalf("bob holds %d one-time prekeys after replenishing, want >= 100", otks)
	}
	// A new sender after the replenish works too.
	erin := register(t, srv, "erin", devOpts{}).start()
	id := erin.send("bob", "late")
	if m := bob.nextMessage(); m.ID != id {
		t.Fatalf("bob got %+v", m)
	}
}

func TestReconnectAfterServerRestart(t *testing.T) {
	srv := testserver.Start(t)
	alice := register(t, srv, "alice", devOpts{}).start()
	bob := register(t, srv, "bob", devOpts{}).start()
	bob.waitQueueEmpty()
	alice.waitQueueEmpty()
	id := alice.send("bob", "before")
	bob.nextMessage()
	alice.waitDelivered(id)

	srv.Restart(t)
	// Send waits for the reconnection (backoff bounded by ReconnectMax) and the server's ack.
	id = alice.send("bob", "after")
	if m := bob.nextMessage(); m.ID != id || m.Text != "after" {
		t.Fatalf("bob got %+v", m)
	}
	alice.waitDelivered(id)
}

// purgeInbox loses every envelope stored for a device, through the server's own storage (the
// server must be stopped). It stands in for a disk loss or a storage-engine bug.
func purgeInbox(t *testing.T, srv *testserver.Server, deviceID string) {
	t.Helper()
	ctx, cancel := context.WithTimeout(context.Background(), waitFor)
	defer cancel()
	b, err := bus.Open(ctx, bus.Config{DataDir: srv.DataDir(), InboxShards: 4, Name: "test-purge"})
	if err != nil {
		t.Fatal(err)
	}
	defer b.Close()
	st := b.Inbox(b.Shard(deviceID))
	if err := st.Purge(ctx, jetstream.WithPurgeSubject(b.InboxSubject(deviceID))); err != nil {
		t.Fatal(err)
	}
}

// Invariant 3: the server loses a stored envelope; the sender's outbox notices (QueryQueued) and
// resends; the receiver gets it exactly once.
func TestOutboxResendsAfterServerLoss(t *testing.T) {
	srv := testserver.Start(t)
	alice := register(t, srv, "alice", devOpts{cfg: client.Config{ResendInterval: time.Nanosecond}}).start()
	bob := register(t, srv, "bob", devOpts{})
	bobID := deviceID(t, bob)
	alice.waitQueueEmpty()
	id := alice.send("bob", "do not lose me")

	srv.Stop()
	purgeInbox(t, srv, bobID)
	srv.Restart(t)
	// Alice reconnects; after QueueEmpty she asks about her unreceipted message, learns the
	// server no longer holds it, and resends it.
	alice.waitQueueEmpty()
	bob.start()
	m := bob.nextMessage()
	if m.ID != id || m.Text != "do not lose me" {
		t.Fatalf("bob got %+v", m)
	}
	alice.waitDelivered(id)
	bob.waitQueueEmpty()
	bob.noMoreMessages()
}

func deviceID(t *testing.T, d *device) string {
	t.Helper()
	st, err := store.Open(d.home, store.Options{})
	if err != nil {
		t.Fatal(err)
	}
	defer st.Close()
	var id string
	err = st.View(func(tx *store.Tx) error {
		a, err := tx.Account()
		if err == nil {
			id = a.DeviceID
		}
		return err
	})
	if err != nil {
		t.Fatal(err)
	}
	return id
}

// copyHome clones a home directory: a second instance of the same device.
func copyHome(t *testing.T, from string) string {
	t.Helper()
	to := t.TempDir()
	b, err := os.ReadFile(filepath.Join(from, store.FileName))
	if err != nil {
		t.Fatal(err)
	}
	if err := os.WriteFile(filepath.Join(to, store.FileName), b, 0o600); err != nil {
		t.Fatal(err)
	}
	return to
}

func TestConnectedElsewhere(t *testing.T) {
	srv := testserver.Start(t)
	alice := register(t, srv, "alice", devOpts{})
	twin := &device{t: t, name: "alice-twin", home: copyHome(t, alice.home)}
	alice.start()
	alice.waitQueueEmpty()
	twin.start()
	twin.waitQueueEmpty()
	select {
	case err := <-alice.runErr:
		if !errors.Is(err, client.ErrConnectedElsewhere) {
			t.Fatalf("alice's Run: got %v, want ErrConnectedElsewhere", err)
		}
	case <-time.After(waitFor):
		t.Fatal("alice kept running after another instance of her device connected")
	}
	// Sends on the displaced instance fail at once instead of queueing forever.
	ctx, cancel := context.WithTimeout(context.Background(), waitFor)
	defer cancel()
	if _, err := alice.c.Send(ctx, "alice-twin", "x"); !errors.Is(err, client.ErrConnectedElsewhere) {
		t.Fatalf("send after takeover: got %v", err)
	}
}

func TestRegisterErrors(t *testing.T) {
	srv := testserver.Start(t)
	register(t, srv, "taken", devOpts{})
	ctx, cancel := context.WithTimeout(context.Background(), waitFor)
	defer cancel()
	cases := []struct {
		name   string
		server string
		want   error
	}{
		{"taken", srv.URL(), client.ErrNameTaken},
		{"Bad Name", srv.URL(), client.ErrInvalidName},
	}
	for _, tc := range cases {
		t.Run(tc.name, func(t *testing.T) {
			st, err := store.Open(t.TempDir(), store.Options{NoSync: true})
			if err != nil {
				t.Fatal(err)
			}
			defer st.Close()
			_, err = client.Register(ctx, st, client.RegisterOptions{ServerURL: tc.server, Name: tc.name, PreKeys: 1})
			if !errors.Is(err, tc.want) {
				t.Fatalf("got %v, want %v", err, tc.want)
			}
		})
	}

	// A home holds one registered device.
	d := register(t, srv, "once", devOpts{preKeys: 1})
	st, err := store.Open(d.home, store.Options{})
	if err != nil {
		t.Fatal(err)
	}
	defer st.Close()
	_, err = client.Register(ctx, st, client.RegisterOptions{ServerURL: srv.URL(), Name: "twice", PreKeys: 1})
	if !errors.Is(err, client.ErrAlreadyRegistered) {
		t.Fatalf("second registration in one home: got %v", err)
	}
}

func TestIdentityChangeReported(t *testing.T) {
	srv := testserver.Start(t)
	alice := register(t, srv, "alice", devOpts{}).start()
	bob := register(t, srv, "bob", devOpts{}).start()
	bob.waitQueueEmpty()
	id := alice.send("bob", "hi")
	bob.nextMessage()
	alice.waitDelivered(id)
	sn1, err := alice.c.SafetyNumber(context.Background(), "bob")
	if err != nil {
		t.Fatal(err)
	}
	sn2, err := bob.c.SafetyNumber(context.Background(), "alice")
	if err != nil {
		t.Fatal(err)
	}
	if len(sn1) != 60 || sn1 != sn2 {
		t.Fatalf("safety numbers differ or malformed: %q vs %q", sn1, sn2)
	}

	// Alice's record of Bob's identity is replaced by another key, as if Bob's key changed:
	// the next bundle fetch reports it.
	alice.stop()
	st, err := store.Open(alice.home, store.Options{})
	if err != nil {
		t.Fatal(err)
	}
	other := register(t, srv, "other", devOpts{preKeys: 1})
	otherKey := identityKey(t, other)
	err = st.Update(func(tx *store.Tx) error {
		ct, err := tx.Contact("bob")
		if err != nil {
			return err
		}
		for dev, d := range ct.Devices {
			d.IdentityKey = otherKey
			if err := tx.DeleteSessionRecord("bob", dev); err != nil {
				return err
			}
		}
		return tx.PutContact(ct)
	})
	st.Close()
	if err != nil {
		t.Fatal(err)
	}
	alice.start()
	id = alice.send("bob", "still there?")
	select {
	case ev := <-alice.idents:
		if ev.Name != "bob" || ev.NewDevice || ev.OldFingerprint == ev.NewFingerprint {
			t.Fatalf("identity event: %+v", ev)
		}
	case <-time.After(waitFor):
		t.Fatal("no IdentityChanged event")
	}
	if m := bob.nextMessage(); m.ID != id {
		t.Fatalf("bob got %+v", m)
	}
}

func identityKey(t *testing.T, d *device) []byte {
	t.Helper()
	st, err := store.Open(d.home, store.Options{})
	if err != nil {
		t.Fatal(err)
	}
	defer st.Close()
	var raw []byte
	st.View(func(tx *store.Tx) error {
		a, err := tx.Account()
		if err == nil {
			raw = a.Identity
		}
		return err
	})
	kp, err := e2ee.UnmarshalIdentityKeyPair(raw)
	if err != nil {
		t.Fatal(err)
	}
	return kp.PublicKey().Bytes()
}

// The signed prekey is rotated when older than SignedPreKeyRotation; a PreKey message made with
// the previous one (in flight during the rotation) still decrypts.
func TestSignedPreKeyRotation(t *testing.T) {
	srv := testserver.Start(t)
	bob := register(t, srv, "bob", devOpts{})
	alice := register(t, srv, "alice", devOpts{}).start()
	id1 := alice.send("bob", "made with the first signed prekey")

	later := func() time.Time { return time.Now().Add(8 * 24 * time.Hour) }
	bob.cfg.Now = later
	bob.start()
	if m := bob.nextMessage(); m.ID != id1 {
		t.Fatalf("bob got %+v", m)
	}
	select {
	case ev := <-bob.prekeys:
		if !ev.Rotated {
			t.Fatalf("prekey upload without rotation: %+v", ev)
		}
	case <-time.After(waitFor):
		t.Fatal("no prekey upload")
	}
	var current, retired int
	bob.st.View(func(tx *store.Tx) error {
		ks, err := tx.SignedPreKeys()
		for _, k := range ks {
			if k.RetiredAt.IsZero() {
				current++
			} else {
				retired++
			}
		}
		return err
	})
	if current != 1 || retired != 1 {
		t.Fatalf("signed prekeys: %d current, %d retired; want 1 and 1", current, retired)
	}
	// A new contact gets the new signed prekey.
	carol := register(t, srv, "carol", devOpts{}).start()
	id2 := carol.send("bob", "made with the second")
	if m := bob.nextMessage(); m.ID != id2 {
		t.Fatalf("bob got %+v", m)
	}
	alice.waitDelivered(id1)
	carol.waitDelivered(id2)
}

// The client refuses frames over the server's max_frame_bytes with a clear error, and splits
// prekey uploads to fit.
func TestFrameLimit(t *testing.T) {
	srv := testserver.Start(t, testserver.WithConfig(func(c *server.Config) { c.MaxFrameBytes = 16384 }))
	alice := register(t, srv, "alice", devOpts{preKeys: 1}).start()
	bob := register(t, srv, "bob", devOpts{preKeys: 1}).start()
	bob.waitQueueEmpty()
	select {
	case ev := <-bob.prekeys:
		if ev.KEM < 99 {
			t.Fatalf("replenished %+v", ev)
		}
	case <-time.After(waitFor):
		t.Fatal("no prekey upload")
	}
	ctx, cancel := context.WithTimeout(context.Background(), waitFor)
	defer cancel()
	for _, n := range []int{20000, 15500} {
		_, err := alice.c.Send(ctx, "bob", strings.Repeat("x", n))
		if !errors.Is(err, client.ErrFrameTooLarge) || !strings.Contains(err.Error(), "16384") {
			t.Fatalf("%d-byte message: got %v, want ErrFrameTooLarge naming the limit", n, err)
		}
	}
	alice.waitOutboxLen(0)
	id := alice.send("bob", "small enough")
	if m := bob.nextMessage(); m.ID != id {
		t.Fatalf("bob got %+v", m)
	}
}

// loseFirstAck makes d lose the ack of the first batch it commits with envelopes in it, as if the
// connection dropped after the commit. Every batch's tags, lost or acked, go to the returned
// channel, in order.
func (d *device) loseFirstAck() chan []uint64 {
	acks := make(chan []uint64, 100)
	var once sync.Once
	d.beforeRun = func(c *client.Client) {
		c.SetAckHookForTest(func(tags []uint64) error {
			var err error
			once.Do(func() { err = errors.New("test: connection lost before the ack") })
			acks <- tags
			return err
		})
	}
	return acks
}

// noDecryptFailures checks that d reported no undecryptable envelope.
func (d *device) noDecryptFailures() {
	d.t.Helper()
	select {
	case ev := <-d.undecr:
		d.t.Fatalf("%s: envelope %s from %s reported undecryptable: %v", d.name, ev.MessageID, ev.From, ev.Err)
	default:
	}
}

// waitInboxEmpty waits until the server holds nothing for d: everything it got was acked.
func waitInboxEmpty(t *testing.T, srv *testserver.Server, d *device) {
	t.Helper()
	b, dev := srv.Server().Bus(), d.c.Account().DeviceID
	subj := b.InboxSubject(dev)
	deadline := time.Now().Add(waitFor)
	for {
		info, err := b.Inbox(b.Shard(dev)).Info(context.Background(), jetstream.WithSubjectFilter(subj))
		if err != nil {
			t.Fatal(err)
		}
		n := info.State.Subjects[subj]
		if n == 0 {
			return
		}
		if time.Now().After(deadline) {
			t.Fatalf("%s: %d envelopes still queued on the server: never acked", d.name, n)
		}
		time.Sleep(20 * time.Millisecond) // the purge after an ack is not announced
	}
}

// An envelope the client processed and committed, whose ack was lost (the connection dropped
// between the commit and the ack), comes back after the reconnect: it is dropped as the
// duplicate it is and acked, never reported as undecryptable, and the message is reported once.
// Both kinds are checked: a text (bob) and a delivery receipt (alice).
func TestRedeliveryAfterLostAckIsADuplicate(t *testing.T) {
	srv := testserver.Start(t)
	aliceD, bobD := register(t, srv, "alice", devOpts{}), register(t, srv, "bob", devOpts{})
	aliceAcks, bobAcks := aliceD.loseFirstAck(), bobD.loseFirstAck()
	alice, bob := aliceD.start(), bobD.start()
	bob.waitQueueEmpty()

	id := alice.send("bob", "exactly once")
	for _, l := range []struct {
		name string
		acks chan []uint64
	}{{"bob (the text)", bobAcks}, {"alice (the receipt)", aliceAcks}} {
		for _, what := range []string{"the lost ack", "the redelivery's ack"} {
			select {
			case <-l.acks:
			case <-time.After(waitFor):
				t.Fatalf("%s: no batch for %s", l.name, what)
			}
		}
	}
	if m := bob.nextMessage(); m.ID != id || m.Text != "exactly once" {
		t.Fatalf("bob got %s %q", m.ID, m.Text)
	}
	alice.waitDelivered(id)
	waitInboxEmpty(t, srv, bob) // the redeliveries were acked
	waitInboxEmpty(t, srv, alice)
	// Another message each way flushes the events of the redeliveries out (one inbound loop).
	after := alice.send("bob", "after")
	if m := bob.nextMessage(); m.ID != after {
		t.Fatalf("bob got %s %q, want %s: the redelivered message was reported again", m.ID, m.Text, after)
	}
	alice.waitDelivered(after)
	for _, d := range []*device{bob, alice} {
		d.noDecryptFailures()
	}
	bob.noMoreMessages()
	select {
	case ev := <-alice.delivered:
		t.Fatalf("alice: a second Delivered for %s", ev.MessageID)
	default:
	}
	alice.waitOutboxLen(0)
}

// TestLearnedServersStoredAndSurvived: the server names a node (its public_url, here an address
// where nothing listens); the client stores it with the configured URL, and after the server
// restarts it tries the learned node, fails, and comes back to the configured one by itself.
func TestLearnedServersStoredAndSurvived(t *testing.T) {
	const dead = "http://127.0.0.1:1"
	srv := testserver.Start(t, testserver.WithConfig(func(c *server.Config) { c.PublicURL = dead }))
	alice := register(t, srv, "alice", devOpts{}).start()
	bob := register(t, srv, "bob", devOpts{}).start()
	alice.waitQueueEmpty()
	bob.waitQueueEmpty()
	if got, want := alice.c.Account().Servers, []string{srv.URL(), dead}; !slices.Equal(got, want) {
		t.Fatalf("servers = %v, want %v", got, want)
	}
	alice.stop()
	alice.start()
	alice.waitQueueEmpty()
	if got, want := alice.c.Account().Servers, []string{srv.URL(), dead}; !slices.Equal(got, want) {
		t.Fatalf("servers after reopening the store = %v, want %v", got, want)
	}

	srv.Restart(t)
	id := alice.send("bob", "after")
	if m := bob.nextMessage(); m.ID != id || m.Text != "after" {
		t.Fatalf("bob got %+v", m)
	}
	alice.waitDelivered(id)
}
