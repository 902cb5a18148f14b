// Copyright 2026 The Petrel Authors
// SPDX-License-Identifier: Apache-2.0

package client_test

import (
	"errors"
	"testing"
	"time"

	"github.com/petrelchat/petrel/client"
	"github.com/petrelchat/petrel/client/store"
	"github.com/petrelchat/petrel/internal/testserver"
)

// nextGroupTextOf returns the next text message in group gid, and the events before it.
func nextGroupTextOf(t *testing.T, x *extDevice, gid string) (*client.Message, []client.Event) {
	t.Helper()
	var before []client.Event
	ev := x.waitFor(t, "group text", func(ev client.Event) bool {
		if m, ok := ev.(*client.Message); ok && m.Group == gid && m.GroupEvent == nil && !m.Timer {
			return true
		}
		before = append(before, ev)
		return false
	})
	return ev.(*client.Message), before
}

// noEventOf fails if evs hold an event of type T that match accepts.
func noEventOf[T client.Event](t *testing.T, who string, evs []client.Event, match func(T) bool) {
	t.Helper()
	for _, ev := range evs {
		if e, ok := ev.(T); ok && match(e) {
			t.Fatalf("%s got %+v too early", who, e)
		}
	}
}

// Group marks: a group message is delivered once every member has it (one member offline keeps
// it "sent"), and read once every member showed it; the events name the group, not a recipient.
func TestGroupReceipts(t *testing.T) {
	srv := testserver.Start(t)
	alice := startExt(t, register(t, srv, "alice", devOpts{}))
	bob := startExt(t, register(t, srv, "bob", devOpts{}))
	carolDev := register(t, srv, "carol", devOpts{})
	carol := startExt(t, carolDev)
	ctx := ctxExt(t)

	g, err := alice.c.CreateGroup(ctx, "club", []string{"bob", "carol"})
	if err != nil {
		t.Fatal(err)
	}
	for _, x := range []*extDevice{bob, carol} {
		x.waitFor(t, "create event", func(ev client.Event) bool {
			m, ok := ev.(*client.Message)
			return ok && m.GroupEvent != nil && m.Group == g.ID
		})
	}
	carol.stop()

	id, err := alice.c.SendGroup(ctx, "club", "hello club")
	if err != nil {
		t.Fatal(err)
	}
	bm, _ := nextGroupTextOf(t, bob, g.ID)
	if bm.ID != id {
		t.Fatalf("bob got %+v", bm)
	}
	// Bob's text to alice leaves after his delivery receipt (one lane): once alice has it, she
	// has the receipt too, and one member of two is not enough.
	if _, err := bob.c.Send(ctx, "alice", "got it"); err != nil {
		t.Fatal(err)
	}
	_, before := nextOf[*client.Message](t, alice)
	noEventOf(t, "alice", before, func(d *client.Delivered) bool { return d.MessageID == id })
	if st := historyStatus(t, alice, id); st != store.StatusSent {
		t.Fatalf("alice's group message with one member of two receipted: %s, want sent", st)
	}

	carol = startExt(t, carolDev)
	cm, _ := nextGroupTextOf(t, carol, g.ID)
	d, _ := nextOf[*client.Delivered](t, alice)
	if d.MessageID != id || d.Group != g.ID || d.To != "" {
		t.Fatalf("alice got %+v, want group %s message %s delivered", d, g.ID, id)
	}
	if st := historyStatus(t, alice, id); st != store.StatusDelivered {
		t.Fatalf("alice's record: %s, want delivered", st)
	}

	// Read: bob's read receipt alone is not enough; carol's makes it read.
	if err := bob.c.MarkRead(bm); err != nil {
		t.Fatal(err)
	}
	if _, err := bob.c.Send(ctx, "alice", "read it"); err != nil {
		t.Fatal(err)
	}
	_, before = nextOf[*client.Message](t, alice)
	noEventOf(t, "alice", before, func(r *client.Read) bool { return r.MessageID == id })
	if err := carol.c.MarkRead(cm); err != nil {
		t.Fatal(err)
	}
	r, _ := nextOf[*client.Read](t, alice)
	if r.MessageID != id || r.Group != g.ID || r.To != "" {
		t.Fatalf("alice got %+v, want group %s message %s read", r, g.ID, id)
	}
	if st := historyStatus(t, alice, id); st != store.StatusRead {
		t.Fatalf("alice's record: %s, want read", st)
	}
	alice.waitOutboxLen(0)
}

// Group typing: an ephemeral group send under the sender key, shown to the members connected now
// as Typing with the group, never stored (a member offline then never gets it), rate-limited like
// 1:1 typing; nothing is sent before this device has a sender key for the group.
func TestGroupTyping(t *testing.T) {
	srv := testserver.Start(t)
	alice := startExt(t, register(t, srv, "alice", devOpts{}))
	bob := startExt(t, register(t, srv, "bob", devOpts{}))
	carolDev := register(t, srv, "carol", devOpts{})
	carol := startExt(t, carolDev)
	ctx := ctxExt(t)

	g, err := alice.c.CreateGroup(ctx, "club", []string{"bob", "carol"})
	if err != nil {
		t.Fatal(err)
	}
	if err := alice.c.SendGroupTyping(ctx, "club", true); !errors.Is(err, client.ErrTypingSkipped) {
		t.Fatalf("typing before any sender key: %v, want ErrTypingSkipped", err)
	}
	if _, err := alice.c.SendGroup(ctx, "club", "hello"); err != nil {
		t.Fatal(err)
	}
	for _, x := range []*extDevice{bob, carol} {
		nextGroupTextOf(t, x, g.ID)
	}
	carol.stop()
	if err := alice.c.SendGroupTyping(ctx, "club", true); err != nil {
		t.Fatal(err)
	}
	ty, _ := nextOf[*client.Typing](t, bob)
	if ty.From != "alice" || ty.Group != g.ID || !ty.Typing {
		t.Fatalf("bob got %+v", ty)
	}
	if err := alice.c.SendGroupTyping(ctx, "club", false); err != nil {
		t.Fatal(err)
	}
	if ty, _ := nextOf[*client.Typing](t, bob); ty.Typing || ty.Group != g.ID {
		t.Fatalf("bob got %+v, want stopped", ty)
	}
	// Carol, offline meanwhile, gets the next message but never the indicators; the skipped
	// sender-key iterations do not stop her decrypting it.
	id, err := alice.c.SendGroup(ctx, "club", "after typing")
	if err != nil {
		t.Fatal(err)
	}
	carol = startExt(t, carolDev)
	m, before := nextGroupTextOf(t, carol, g.ID)
	if m.ID != id {
		t.Fatalf("carol got %+v", m)
	}
	noEventOf(t, "carol", before, func(*client.Typing) bool { return true })
	noEventOf(t, "carol", before, func(*client.DecryptFailed) bool { return true })

	// Rate limit: a burst of 10, then RATE_LIMITED.
	limited := false
	for i := 0; i < 20 && !limited; i++ {
		err := alice.c.SendGroupTyping(ctx, "club", true)
		if errors.Is(err, client.ErrRateLimited) {
			limited = true
		} else if err != nil {
			t.Fatal(err)
		}
	}
	if !limited {
		t.Fatal("20 group typing indicators in a row were all taken")
	}
}

// Group disappearing timers: a change is a group message every member applies and shows; later
// group messages carry the timer and leave every history when their countdown ends.
func TestGroupDisappearing(t *testing.T) {
	srv := testserver.Start(t)
	alice := startExt(t, register(t, srv, "alice", devOpts{}))
	bob := startExt(t, register(t, srv, "bob", devOpts{}))
	ctx := ctxExt(t)

	g, err := alice.c.CreateGroup(ctx, "club", []string{"bob"})
	if err != nil {
		t.Fatal(err)
	}
	if _, err := alice.c.SetGroupDisappearing("club", time.Hour); err != nil {
		t.Fatal(err)
	}
	tm := bob.waitFor(t, "timer change", func(ev client.Event) bool {
		m, ok := ev.(*client.Message)
		return ok && m.Timer
	}).(*client.Message)
	if tm.Group != g.ID || tm.TimerSet != time.Hour || tm.From != "alice" {
		t.Fatalf("bob got %+v, want alice's timer change to 1h in the group", tm)
	}
	if d, err := bob.c.GroupDisappearing(g.ID); err != nil || d != time.Hour {
		t.Fatalf("bob's group timer: %v %v", d, err)
	}
	// Bob's message carries the timer he adopted.
	id, err := bob.c.SendGroup(ctx, g.ID, "gone in an hour")
	if err != nil {
		t.Fatal(err)
	}
	m, _ := nextGroupTextOf(t, alice, g.ID)
	if m.ID != id || m.ExpiresIn != time.Hour {
		t.Fatalf("alice got %+v", m)
	}
	if claimed, err := alice.c.ClaimSeen(m.Seq); err != nil || !claimed {
		t.Fatalf("claim: %v %v", claimed, err)
	}
	inHistory := func(x *extDevice) bool {
		msgs, err := x.c.History(0, 1000)
		if err != nil {
			t.Fatal(err)
		}
		for _, h := range msgs {
			if h.ID == id {
				return true
			}
		}
		return false
	}
	if !inHistory(alice) || !inHistory(bob) {
		t.Fatal("the message is not in both histories before its expiry")
	}
	for _, x := range []*extDevice{alice, bob} {
		x.offset.Store(int64(time.Hour + time.Second))
		if _, err := x.c.SweepExpired(); err != nil {
			t.Fatal(err)
		}
	}
	if inHistory(alice) || inHistory(bob) {
		t.Fatal("an expired group message is still in a history")
	}
}

// Group marks past the outbox's bound: a group message sent to more member devices than the
// outbox waits for (lowered here from 256 to 1 so that a 4-member group is past it) leaves the
// outbox at the server's ack, and still becomes delivered once every member has it and read once
// every member showed it.
func TestGroupReceiptsPastOutboxBound(t *testing.T) {
	srv := testserver.Start(t)
	alice := startExtWith(t, register(t, srv, "alice", devOpts{}), func(c *client.Client) { c.SetGroupAwaitingForTest(1) })
	members := []*extDevice{
		startExt(t, register(t, srv, "bob", devOpts{})),
		startExt(t, register(t, srv, "carol", devOpts{})),
		startExt(t, register(t, srv, "dave", devOpts{})),
	}
	ctx := ctxExt(t)
	g, err := alice.c.CreateGroup(ctx, "big", []string{"bob", "carol", "dave"})
	if err != nil {
		t.Fatal(err)
	}
	for _, x := range members {
		x.waitFor(t, "create event", func(ev client.Event) bool {
			m, ok := ev.(*client.Message)
			return ok && m.GroupEvent != nil && m.Group == g.ID
		})
	}

	id, err := alice.c.SendGroup(ctx, "big", "hello all")
	if err != nil {
		t.Fatal(err)
	}
	if n := alice.outboxLen(); n != 0 {
		t.Fatalf("alice's outbox holds %d entries after the ack of a send past the bound, want 0", n)
	}
	var got []*client.Message
	for _, x := range members {
		m, _ := nextGroupTextOf(t, x, g.ID)
		if m.ID != id {
			t.Fatalf("%s got %+v", x.name, m)
		}
		got = append(got, m)
	}
	d, _ := nextOf[*client.Delivered](t, alice)
	if d.MessageID != id || d.Group != g.ID {
		t.Fatalf("alice got %+v, want group %s message %s delivered", d, g.ID, id)
	}
	if st := historyStatus(t, alice, id); st != store.StatusDelivered {
		t.Fatalf("alice's record: %s, want delivered", st)
	}

	// Two reads of three are not enough (each member's text to alice leaves after its read
	// receipt, on one lane); the third makes it read.
	for i, x := range members[:2] {
		if err := x.c.MarkRead(got[i]); err != nil {
			t.Fatal(err)
		}
		if _, err := x.c.Send(ctx, "alice", "read it"); err != nil {
			t.Fatal(err)
		}
		_, before := nextOf[*client.Message](t, alice)
		noEventOf(t, "alice", before, func(r *client.Read) bool { return r.MessageID == id })
	}
	if st := historyStatus(t, alice, id); st != store.StatusDelivered {
		t.Fatalf("alice's record after two reads of three: %s, want delivered", st)
	}
	if err := members[2].c.MarkRead(got[2]); err != nil {
		t.Fatal(err)
	}
	r, _ := nextOf[*client.Read](t, alice)
	if r.MessageID != id || r.Group != g.ID {
		t.Fatalf("alice got %+v, want group %s message %s read", r, g.ID, id)
	}
	if st := historyStatus(t, alice, id); st != store.StatusRead {
		t.Fatalf("alice's record: %s, want read", st)
	}
}
