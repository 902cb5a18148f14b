// Copyright 2026 The Petrel Authors
// SPDX-License-Identifier: Apache-2.0

package client_test

import (
	"context"
	"errors"
	"sync/atomic"
	"testing"
	"time"

	"github.com/petrelchat/petrel/client"
	"github.com/petrelchat/petrel/client/store"
	"github.com/petrelchat/petrel/internal/testserver"
)

// extDevice runs a registered device with every event in one channel, in order.
type extDevice struct {
	*device
	all     chan client.Event
	pending []client.Event // read while waiting for the first QueueEmpty, not yet looked at
	offset  atomic.Int64   // added to the device's clock (Config.Now)
}

func startExt(t *testing.T, d *device) *extDevice {
	t.Helper()
	return startExtWith(t, d, nil)
}

// startExtWith is startExt with setup called on the client before Run.
func startExtWith(t *testing.T, d *device, setup func(*client.Client)) *extDevice {
	t.Helper()
	x := &extDevice{device: d, all: make(chan client.Event, 10_000)}
	d.cfg.Now = func() time.Time { return time.Now().Add(time.Duration(x.offset.Load())) }
	st, err := store.Open(d.home, store.Options{NoSync: true})
	if err != nil {
		t.Fatal(err)
	}
	d.st = st
	events := make(chan client.Event)
	cfg := fastConfig(d.cfg)
	cfg.Store, cfg.Events = st, events
	c, err := client.Open(cfg)
	if err != nil {
		t.Fatal(err)
	}
	d.c = c
	if setup != nil {
		setup(c)
	}
	done := make(chan struct{})
	go func() {
		defer close(done)
		for ev := range events {
			x.all <- ev
		}
	}()
	runDone := make(chan struct{})
	go func() { defer close(runDone); _ = c.Run(context.Background()) }()
	t.Cleanup(x.stop)
	d.events, d.collected = events, done
	var before []client.Event
	x.waitFor(t, "queue empty", func(ev client.Event) bool {
		_, ok := ev.(*client.QueueEmpty)
		if !ok {
			before = append(before, ev)
		}
		return ok
	})
	x.pending = before
	return x
}

// waitFor returns the first event (in order) that want accepts, failing after waitFor.
func (x *extDevice) waitFor(t *testing.T, what string, want func(client.Event) bool) client.Event {
	t.Helper()
	for len(x.pending) > 0 {
		ev := x.pending[0]
		x.pending = x.pending[1:]
		if want(ev) {
			return ev
		}
	}
	timeout := time.After(waitFor)
	for {
		select {
		case ev := <-x.all:
			if want(ev) {
				return ev
			}
		case <-timeout:
			t.Fatalf("%s: no %s within %v", x.name, what, waitFor)
			return nil
		}
	}
}

// nextOf returns the next event of type T, and every event before it.
func nextOf[T client.Event](t *testing.T, x *extDevice) (T, []client.Event) {
	t.Helper()
	var before []client.Event
	var zero T
	ev := x.waitFor(t, "event", func(ev client.Event) bool {
		if _, ok := ev.(T); ok {
			return true
		}
		before = append(before, ev)
		return false
	})
	if ev == nil {
		return zero, before
	}
	return ev.(T), before
}

func ctxExt(t *testing.T) context.Context {
	ctx, cancel := context.WithTimeout(context.Background(), waitFor)
	t.Cleanup(cancel)
	return ctx
}

// Read receipts: a message shown and marked read comes back as Read (and delivered); with read
// receipts off on the reader nothing is sent, and with them off on the sender those received are
// ignored.
func TestReadReceipts(t *testing.T) {
	srv := testserver.Start(t)
	alice := startExt(t, register(t, srv, "alice", devOpts{}))
	bob := startExt(t, register(t, srv, "bob", devOpts{}))
	ctx := ctxExt(t)

	id1, err := alice.c.Send(ctx, "bob", "one")
	if err != nil {
		t.Fatal(err)
	}
	m1, _ := nextOf[*client.Message](t, bob)
	if err := bob.c.MarkRead(m1); err != nil {
		t.Fatal(err)
	}
	r, _ := nextOf[*client.Read](t, alice)
	if r.To != "bob" || r.MessageID != id1 {
		t.Fatalf("read receipt %+v, want bob/%s", r, id1)
	}
	if st := historyStatus(t, alice, id1); st != store.StatusRead {
		t.Fatalf("alice's record of %s: %s", id1, st)
	}

	// Bob turns read receipts off: marking msg 2 read sends nothing; on again, msg 3's read
	// receipt is the first alice gets (the outbox keeps bob's receipts to her in order).
	if err := bob.c.SetReadReceipts(false); err != nil {
		t.Fatal(err)
	}
	id2, _ := alice.c.Send(ctx, "bob", "two")
	m2, _ := nextOf[*client.Message](t, bob)
	if err := bob.c.MarkRead(m2); err != nil {
		t.Fatal(err)
	}
	if err := bob.c.SetReadReceipts(true); err != nil {
		t.Fatal(err)
	}
	id3, _ := alice.c.Send(ctx, "bob", "three")
	m3, _ := nextOf[*client.Message](t, bob)
	if err := bob.c.MarkRead(m3); err != nil {
		t.Fatal(err)
	}
	if r, _ := nextOf[*client.Read](t, alice); r.MessageID != id3 {
		t.Fatalf("read receipt for %s, want %s (%s was read with receipts off)", r.MessageID, id3, id2)
	}

	// Alice turns them off: bob's read receipt for msg 4 is ignored (bob's text after it, in the
	// same order, proves it arrived first).
	if err := alice.c.SetReadReceipts(false); err != nil {
		t.Fatal(err)
	}
	id4, _ := alice.c.Send(ctx, "bob", "four")
	m4, _ := nextOf[*client.Message](t, bob)
	if err := bob.c.MarkRead(m4); err != nil {
		t.Fatal(err)
	}
	if _, err := bob.c.Send(ctx, "alice", "after the receipt"); err != nil {
		t.Fatal(err)
	}
	_, before := nextOf[*client.Message](t, alice)
	for _, ev := range before {
		if _, ok := ev.(*client.Read); ok {
			t.Fatalf("alice (read receipts off) got %+v", ev)
		}
	}
	if st := historyStatus(t, alice, id4); st == store.StatusRead {
		t.Fatalf("alice (read receipts off) recorded %s as read", id4)
	}
}

func historyStatus(t *testing.T, x *extDevice, id string) store.Status {
	t.Helper()
	var st store.Status
	err := x.st.View(func(tx *store.Tx) error {
		recs, err := tx.History(0, 1000)
		for _, r := range recs {
			if r.ID == id {
				st = r.Status
			}
		}
		return err
	})
	if err != nil {
		t.Fatal(err)
	}
	return st
}

// Typing indicators reach a connected device as Typing events and are never stored: a device
// that was offline never gets them. Presence: subscribed accounts come online and go offline,
// and an account's NOBODY setting hides it.
func TestTypingAndPresence(t *testing.T) {
	srv := testserver.Start(t)
	alice := startExt(t, register(t, srv, "alice", devOpts{}))
	bobDev := register(t, srv, "bob", devOpts{})
	bob := startExt(t, bobDev)
	ctx := ctxExt(t)

	got, err := alice.c.SubscribePresence(ctx, "bob")
	if err != nil || len(got) != 1 || got[0].State != client.PresenceOnline {
		t.Fatalf("presence of bob: %+v, %v", got, err)
	}
	if err := alice.c.SendTyping(ctx, "bob", true); err != nil {
		t.Fatal(err)
	}
	if ty, _ := nextOf[*client.Typing](t, bob); ty.From != "alice" || !ty.Typing {
		t.Fatalf("bob got %+v", ty)
	}
	if err := alice.c.SendTyping(ctx, "bob", false); err != nil {
		t.Fatal(err)
	}
	if ty, _ := nextOf[*client.Typing](t, bob); ty.Typing {
		t.Fatalf("bob got %+v, want stopped", ty)
	}

	// Bob leaves: alice sees him offline (last seen), and a typing indicator is not even sent.
	bob.stop()
	var p *client.PresenceChanged
	for p, _ = nextOf[*client.PresenceChanged](t, alice); p.State != client.PresenceOffline; p, _ = nextOf[*client.PresenceChanged](t, alice) {
	}
	if p.Account != "bob" || p.LastSeen.IsZero() || p.LastSeen.Second() != 0 {
		t.Fatalf("bob gone: %+v", p)
	}
	if err := alice.c.SendTyping(ctx, "bob", true); !errors.Is(err, client.ErrTypingSkipped) {
		t.Fatalf("typing to an offline account: %v", err)
	}
	// Sent anyway while alice does not know (no subscription): acked, never stored.
	if _, err := alice.c.SubscribePresence(ctx); err != nil {
		t.Fatal(err)
	}
	carol := startExt(t, register(t, srv, "carol", devOpts{}))
	if err := carol.c.SendTyping(ctx, "bob", true); err != nil {
		t.Fatalf("typing to bob while offline, without presence: %v", err)
	}
	if _, err := carol.c.Send(ctx, "bob", "hello bob"); err != nil {
		t.Fatal(err)
	}
	bob = startExt(t, bobDev)
	m, before := nextOf[*client.Message](t, bob)
	if m.Text != "hello bob" {
		t.Fatalf("bob got %+v", m)
	}
	for _, ev := range before {
		if _, ok := ev.(*client.Typing); ok {
			t.Fatalf("bob, offline when it was sent, got a typing indicator: %+v", ev)
		}
	}

	// Bob comes back (alice sees it), then hides his presence: alice is told UNKNOWN.
	if _, err := alice.c.SubscribePresence(ctx, "bob"); err != nil {
		t.Fatal(err)
	}
	if err := bob.c.SetLastSeen(ctx, store.LastSeenNobody); err != nil {
		t.Fatal(err)
	}
	for p, _ = nextOf[*client.PresenceChanged](t, alice); p.State != client.PresenceUnknown; p, _ = nextOf[*client.PresenceChanged](t, alice) {
	}
	// CONTACTS: bob's contacts are alice and carol (he got messages from both).
	if err := bob.c.SetLastSeen(ctx, store.LastSeenContacts); err != nil {
		t.Fatal(err)
	}
	if p, _ := nextOf[*client.PresenceChanged](t, alice); p.State != client.PresenceOnline {
		t.Fatalf("alice, a contact of bob's, sees %+v", p)
	}
	dave := startExt(t, register(t, srv, "dave", devOpts{}))
	if got, err := dave.c.SubscribePresence(ctx, "bob"); err != nil || got[0].State != client.PresenceUnknown {
		t.Fatalf("dave, not a contact of bob's, sees %+v (%v)", got, err)
	}
	if s, err := bob.c.Settings(); err != nil || s.LastSeen != store.LastSeenContacts {
		t.Fatalf("bob's settings %+v, %v", s, err)
	}
}

// Disappearing messages: a timer change is shown on both sides; later messages carry it and are
// deleted from both histories when their countdown ends (the receiver's starts when shown); an
// unsent one leaves the outbox.
func TestDisappearingMessages(t *testing.T) {
	srv := testserver.Start(t)
	alice := startExt(t, register(t, srv, "alice", devOpts{}))
	bob := startExt(t, register(t, srv, "bob", devOpts{}))
	ctx := ctxExt(t)

	if _, err := alice.c.SetDisappearing("bob", 1500*time.Millisecond); err == nil {
		t.Fatal("a timer that is not whole seconds was taken")
	}
	if _, err := alice.c.SetDisappearing("bob", time.Hour); err != nil {
		t.Fatal(err)
	}
	tm, _ := nextOf[*client.Message](t, bob)
	if !tm.Timer || tm.TimerSet != time.Hour || tm.From != "alice" {
		t.Fatalf("bob got %+v, want a timer change to 1h", tm)
	}
	if d, _ := bob.c.Disappearing("alice"); d != time.Hour {
		t.Fatalf("bob's timer with alice: %v", d)
	}
	id, err := alice.c.Send(ctx, "bob", "this will disappear")
	if err != nil {
		t.Fatal(err)
	}
	m, _ := nextOf[*client.Message](t, bob)
	if m.ID != id || m.ExpiresIn != time.Hour || !m.ExpiresAt.IsZero() {
		t.Fatalf("bob got %+v", m)
	}
	if claimed, err := bob.c.ClaimSeen(m.Seq); err != nil || !claimed {
		t.Fatalf("claim: %v %v", claimed, err)
	}
	// Bob's reply carries bob's timer too (he adopted alice's).
	reply, _ := bob.c.Send(ctx, "alice", "so will this")
	if r, _ := nextOf[*client.Message](t, alice); r.ID != reply || r.ExpiresIn != time.Hour {
		t.Fatalf("alice got %+v", r)
	}

	inHistory := func(x *extDevice, id string) bool {
		msgs, err := x.c.History(0, 1000)
		if err != nil {
			t.Fatal(err)
		}
		for _, m := range msgs {
			if m.ID == id {
				return true
			}
		}
		return false
	}
	if !inHistory(alice, id) || !inHistory(bob, id) {
		t.Fatal("the message is not in both histories before its expiry")
	}
	alice.offset.Store(int64(time.Hour + time.Second))
	bob.offset.Store(int64(time.Hour + time.Second))
	for _, x := range []*extDevice{alice, bob} {
		if _, err := x.c.SweepExpired(); err != nil {
			t.Fatal(err)
		}
	}
	if inHistory(alice, id) || inHistory(bob, id) || inHistory(bob, reply) {
		t.Fatal("an expired message is still in a history")
	}

	// Off again: the next message does not disappear.
	if _, err := alice.c.SetDisappearing("bob", 0); err != nil {
		t.Fatal(err)
	}
	if tm, _ := nextOf[*client.Message](t, bob); !tm.Timer || tm.TimerSet != 0 {
		t.Fatalf("bob got %+v, want timer off", tm)
	}
	id2, _ := alice.c.Send(ctx, "bob", "stays")
	if m, _ := nextOf[*client.Message](t, bob); m.ID != id2 || m.ExpiresIn != 0 {
		t.Fatalf("bob got %+v", m)
	}
}
