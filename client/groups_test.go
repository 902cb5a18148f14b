// Copyright 2026 The Petrel Authors
// SPDX-License-Identifier: Apache-2.0

package client_test

import (
	"errors"
	"slices"
	"sync/atomic"
	"testing"
	"time"

	"github.com/petrelchat/petrel/client"
	"github.com/petrelchat/petrel/client/store"
	"github.com/petrelchat/petrel/e2ee"
	"github.com/petrelchat/petrel/internal/testserver"
	petrelv1 "github.com/petrelchat/petrel/proto/petrel/v1"
	"google.golang.org/protobuf/proto"
)

// startAll registers and starts devices on srv and waits until each has its backlog.
func startAll(t *testing.T, srv *testserver.Server, names ...string) []*device {
	t.Helper()
	var out []*device
	for _, n := range names {
		d := register(t, srv, n, devOpts{}).start()
		d.waitQueueEmpty()
		out = append(out, d)
	}
	return out
}

func (d *device) createGroup(name string, members ...string) client.Group {
	d.t.Helper()
	ctx, cancel := ctxT()
	defer cancel()
	g, err := d.c.CreateGroup(ctx, name, members)
	if err != nil {
		d.t.Fatalf("%s: create group %s: %v", d.name, name, err)
	}
	return g
}

func (d *device) sendGroup(group, text string) string {
	d.t.Helper()
	ctx, cancel := ctxT()
	defer cancel()
	id, err := d.c.SendGroup(ctx, group, text)
	if err != nil {
		d.t.Fatalf("%s: send to group %s: %v", d.name, group, err)
	}
	return id
}

// nextGroupEvent returns the next message, which must be a membership change of kind by actor.
func (d *device) nextGroupEvent(group, kind, actor string) *client.GroupEvent {
	d.t.Helper()
	m := d.nextMessage()
	if m.GroupEvent == nil || m.Group != group || m.GroupEvent.Kind != kind || m.GroupEvent.Actor != actor || m.From != actor {
		d.t.Fatalf("%s: got %+v (event %+v), want %s's %s in %s", d.name, m, m.GroupEvent, actor, kind, group)
	}
	return m.GroupEvent
}

// nextGroupText returns the next message, which must be text from `from` in group.
func (d *device) nextGroupText(group, from, text string) *client.Message {
	d.t.Helper()
	m := d.nextMessage()
	if m.GroupEvent != nil || m.Group != group || m.From != from || m.Text != text || m.To != "" {
		d.t.Fatalf("%s: got %+v (event %+v), want %q from %s in %s", d.name, m, m.GroupEvent, text, from, group)
	}
	return m
}

// waitGroupName waits until d knows group id under name (names travel as separate messages).
func (d *device) waitGroupName(id, name string) {
	d.t.Helper()
	deadline := time.Now().Add(waitFor)
	for d.c.GroupName(id) != name {
		if time.Now().After(deadline) {
			d.t.Fatalf("%s: group %s is named %q, want %q", d.name, id, d.c.GroupName(id), name)
		}
		time.Sleep(10 * time.Millisecond)
	}
}

func (d *device) group(name string) client.Group {
	d.t.Helper()
	g, err := d.c.Group(name)
	if err != nil {
		d.t.Fatalf("%s: group %s: %v", d.name, name, err)
	}
	return g
}

// Create, message, add, promote, remove, leave: every member sees every change, in order, and
// every message; names travel end to end; the last admin leaving makes the longest-standing member
// admin; a removed member is told and can send no more.
func TestGroupLifecycle(t *testing.T) {
	srv := testserver.Start(t)
	ds := startAll(t, srv, "alice", "bob", "carol", "dave")
	alice, bob, carol, dave := ds[0], ds[1], ds[2], ds[3]

	g := alice.createGroup("friends", "bob", "carol")
	if g.Version != 1 || !slices.Equal(g.Members, []string{"alice", "bob", "carol"}) || !slices.Equal(g.Admins, []string{"alice"}) {
		t.Fatalf("created %+v", g)
	}
	for _, d := range []*device{bob, carol} {
		ev := d.nextGroupEvent(g.ID, "create", "alice")
		if !slices.Equal(ev.Targets, []string{"bob", "carol"}) || ev.Version != 1 {
			t.Fatalf("%s: create event %+v", d.name, ev)
		}
		d.waitGroupName(g.ID, "friends")
	}

	id := alice.sendGroup("friends", "hello friends")
	for _, d := range []*device{bob, carol} {
		if m := d.nextGroupText(g.ID, "alice", "hello friends"); m.ID != id {
			t.Fatalf("%s: id %s, want %s", d.name, m.ID, id)
		}
	}
	alice.waitDelivered(id)
	alice.waitOutboxLen(0)
	id = bob.sendGroup("friends", "hi from bob")
	alice.nextGroupText(g.ID, "bob", "hi from bob")
	carol.nextGroupText(g.ID, "bob", "hi from bob")
	bob.waitOutboxLen(0)

	// Only admins change membership.
	ctx, cancel := ctxT()
	defer cancel()
	if err := bob.c.AddToGroup(ctx, "friends", "dave"); !errors.Is(err, client.ErrNotGroupAdmin) {
		t.Fatalf("bob adds dave: %v, want ErrNotGroupAdmin", err)
	}

	if err := alice.c.AddToGroup(ctx, "friends", "dave"); err != nil {
		t.Fatal(err)
	}
	for _, d := range []*device{bob, carol, dave} {
		if ev := d.nextGroupEvent(g.ID, "add", "alice"); !slices.Equal(ev.Targets, []string{"dave"}) || ev.Version != 2 {
			t.Fatalf("%s: add event %+v", d.name, ev)
		}
	}
	dave.waitGroupName(g.ID, "friends")
	if dg := dave.group("friends"); dg.Version != 2 || !slices.Equal(dg.Members, []string{"alice", "bob", "carol", "dave"}) {
		t.Fatalf("dave's group %+v", dg)
	}
	id = carol.sendGroup("friends", "welcome dave")
	for _, d := range []*device{alice, bob, dave} {
		d.nextGroupText(g.ID, "carol", "welcome dave")
	}
	carol.waitOutboxLen(0)

	if err := alice.c.PromoteInGroup(ctx, "friends", "carol"); err != nil {
		t.Fatal(err)
	}
	for _, d := range []*device{bob, carol, dave} {
		d.nextGroupEvent(g.ID, "promote", "alice")
	}
	if err := carol.c.RemoveFromGroup(ctx, "friends", "bob"); err != nil {
		t.Fatal(err)
	}
	for _, d := range []*device{alice, bob, dave} {
		d.nextGroupEvent(g.ID, "remove", "carol")
	}
	if bg := bob.group(g.ID); !bg.Left {
		t.Fatalf("bob's group after his removal: %+v", bg)
	}
	if _, err := bob.c.SendGroup(ctx, "friends", "still here?"); !errors.Is(err, client.ErrUnknownGroup) {
		t.Fatalf("bob sends after his removal: %v, want ErrUnknownGroup", err)
	}

	// The admins leave: alice, then carol, the last admin: dave (the longest-standing member
	// left) becomes admin.
	if err := alice.c.LeaveGroup(ctx, "friends"); err != nil {
		t.Fatal(err)
	}
	for _, d := range []*device{carol, dave} {
		d.nextGroupEvent(g.ID, "leave", "alice")
	}
	if err := carol.c.LeaveGroup(ctx, "friends"); err != nil {
		t.Fatal(err)
	}
	dave.nextGroupEvent(g.ID, "leave", "carol")
	if dg := dave.group("friends"); !slices.Equal(dg.Members, []string{"dave"}) || !slices.Equal(dg.Admins, []string{"dave"}) || dg.Version != 6 {
		t.Fatalf("dave's group %+v", dg)
	}
	id = dave.sendGroup("friends", "alone")
	dave.waitOutboxLen(0)
	for _, d := range ds {
		d.noMoreMessages()
		d.noDecryptFailures()
	}
	_ = id
}

// A group message reaches every member device, the sender's other devices included (shown there
// as sent), and the outbox waits for a receipt from every other member's device.
func TestGroupLinkedDevices(t *testing.T) {
	srv := testserver.Start(t)
	ds := startAll(t, srv, "alice", "bob")
	alice, bob := ds[0], ds[1]
	laptop, _ := linkDevice(t, srv.URL(), alice, "laptop", true, client.Config{})
	laptop.start()
	laptop.waitQueueEmpty()
	bobTab, _ := linkDevice(t, srv.URL(), bob, "tablet", true, client.Config{})
	bobTab.start()
	bobTab.waitQueueEmpty()

	g := alice.createGroup("team", "bob")
	for _, d := range []*device{laptop, bob, bobTab} {
		d.nextGroupEvent(g.ID, "create", "alice")
	}
	laptop.waitGroupName(g.ID, "team")
	bobTab.waitGroupName(g.ID, "team")
	id := alice.sendGroup("team", "to every device")
	for _, d := range []*device{bob, bobTab} {
		d.nextGroupText(g.ID, "alice", "to every device")
	}
	if m := laptop.nextMessage(); m.ID != id || !m.Outgoing || m.Group != g.ID || m.From != "alice" || m.Text != "to every device" {
		t.Fatalf("laptop got %+v", m)
	}
	alice.waitOutboxLen(0)
	// From the laptop: the phone shows it as sent.
	id = laptop.sendGroup("team", "from the laptop")
	for _, d := range []*device{bob, bobTab} {
		d.nextGroupText(g.ID, "alice", "from the laptop")
	}
	if m := alice.nextMessage(); m.ID != id || !m.Outgoing || m.Group != g.ID {
		t.Fatalf("phone got %+v", m)
	}
	laptop.waitOutboxLen(0)
	for _, d := range []*device{alice, laptop, bob, bobTab} {
		d.noMoreMessages()
		d.noDecryptFailures()
	}
}

// readRaw authenticates as d's device (d stopped) with a raw client and returns the envelopes the
// server holds for it, without acking any.
func readRaw(t *testing.T, srv *testserver.Server, d *device, until func(*petrelv1.Envelope) bool) []*petrelv1.Envelope {
	t.Helper()
	st, err := store.Open(d.home, store.Options{})
	if err != nil {
		t.Fatal(err)
	}
	var acct *store.Account
	st.View(func(tx *store.Tx) error { acct, err = tx.Account(); return err })
	st.Close()
	if err != nil {
		t.Fatal(err)
	}
	rc := testserver.Dial(t, srv.URL())
	if f := rc.Auth(acct.AuthKey); f.GetWelcome() == nil {
		t.Fatalf("raw auth: %v", f)
	}
	var out []*petrelv1.Envelope
	for {
		f := rc.NextPush()
		if env := f.GetDeliver().GetEnvelope(); env != nil {
			out = append(out, env)
			if until(env) {
				rc.WS.CloseNow()
				return out
			}
		}
	}
}

// receiversOf returns the sender keys a (stopped) device's store holds for device dev of from.
func receiversOf(t *testing.T, home, group, from, dev string) []*e2ee.SenderKeyReceiver {
	t.Helper()
	st, err := store.Open(home, store.Options{})
	if err != nil {
		t.Fatal(err)
	}
	defer st.Close()
	var out []*e2ee.SenderKeyReceiver
	err = st.View(func(tx *store.Tx) error {
		recvs, err := tx.SenderKeyReceivers(group, from, dev)
		for _, r := range recvs {
			rr, err := e2ee.UnmarshalSenderKeyReceiver(r.Receiver)
			if err != nil {
				return err
			}
			out = append(out, rr)
		}
		return err
	})
	if err != nil {
		t.Fatal(err)
	}
	return out
}

// Removal is real: a removed member, with its state from before the removal and the later
// ciphertext read raw from the server, cannot decrypt it; the same state decrypts a message sent
// before the removal (the test's method works).
func TestGroupRemovalIsReal(t *testing.T) {
	srv := testserver.Start(t)
	ds := startAll(t, srv, "alice", "bob", "carol")
	alice, bob, carol := ds[0], ds[1], ds[2]
	aliceID := alice.c.Account().DeviceID
	g := alice.createGroup("g", "bob", "carol")
	bob.nextGroupEvent(g.ID, "create", "alice")
	carol.nextGroupEvent(g.ID, "create", "alice")
	alice.sendGroup("g", "one")
	bob.nextGroupText(g.ID, "alice", "one")
	carol.nextGroupText(g.ID, "alice", "one")
	alice.waitOutboxLen(0)

	// Bob's state now, kept; carol goes offline (her inbox is the "server's data" read later).
	bob.stop()
	bobOld := copyHome(t, bob.home)
	carol.stop()
	before := alice.sendGroup("g", "two, before the removal")
	ctx, cancel := ctxT()
	defer cancel()
	if err := alice.c.RemoveFromGroup(ctx, "g", "bob"); err != nil {
		t.Fatal(err)
	}
	after := alice.sendGroup("g", "three, after the removal")

	envs := readRaw(t, srv, carol, func(e *petrelv1.Envelope) bool { return e.GetMessageId() == after })
	cts := map[string][]byte{}
	for _, e := range envs {
		if e.GetType() == petrelv1.EnvelopeType_ENVELOPE_TYPE_GROUP {
			cts[e.GetMessageId()] = e.GetCiphertext()
		}
	}
	if cts[before] == nil || cts[after] == nil {
		t.Fatalf("raw read: %d envelopes, none for the messages", len(envs))
	}
	recvs := receiversOf(t, bobOld, g.ID, "alice", aliceID)
	if len(recvs) == 0 {
		t.Fatal("bob's old state holds no sender key of alice")
	}
	decrypts := func(ct []byte) bool {
		for _, r := range recvs {
			if _, err := r.Decrypt(ct); err == nil {
				return true
			}
		}
		return false
	}
	if !decrypts(cts[before]) {
		t.Fatal("bob's old state cannot decrypt the message sent before his removal: the test proves nothing")
	}
	if decrypts(cts[after]) {
		t.Fatal("bob's old state decrypts a message sent after his removal")
	}
	k1, _ := e2ee.SenderKeyMessageKeyID(cts[before])
	k2, _ := e2ee.SenderKeyMessageKeyID(cts[after])
	if k1 == k2 {
		t.Fatal("alice did not rotate her sender key")
	}

	// Carol, back, gets both and the removal in between; bob gets the removal and nothing after.
	carol.start()
	carol.nextGroupText(g.ID, "alice", "two, before the removal")
	carol.nextGroupEvent(g.ID, "remove", "alice")
	carol.nextGroupText(g.ID, "alice", "three, after the removal")
	bob.start()
	bob.nextGroupText(g.ID, "alice", "two, before the removal")
	bob.nextGroupEvent(g.ID, "remove", "alice")
	bob.waitQueueEmpty()
	alice.waitOutboxLen(0)
	for _, d := range ds {
		d.noMoreMessages()
		d.noDecryptFailures()
	}
}

// A member added later gets the sender key as it is now: the ciphertext of a message sent before
// it joined (read raw from the server) does not decrypt with its state.
func TestGroupLateJoinerCannotReadEarlier(t *testing.T) {
	srv := testserver.Start(t)
	ds := startAll(t, srv, "alice", "bob", "carol")
	alice, bob, carol := ds[0], ds[1], ds[2]
	aliceID := alice.c.Account().DeviceID
	g := alice.createGroup("g", "bob")
	bob.nextGroupEvent(g.ID, "create", "alice")
	bob.stop()
	early := alice.sendGroup("g", "before carol")
	envs := readRaw(t, srv, bob, func(e *petrelv1.Envelope) bool { return e.GetMessageId() == early })
	earlyCT := envs[len(envs)-1].GetCiphertext()

	ctx, cancel := ctxT()
	defer cancel()
	if err := alice.c.AddToGroup(ctx, "g", "carol"); err != nil {
		t.Fatal(err)
	}
	carol.nextGroupEvent(g.ID, "add", "alice")
	alice.sendGroup("g", "after carol joined")
	carol.nextGroupText(g.ID, "alice", "after carol joined")
	carol.stop()
	recvs := receiversOf(t, carol.home, g.ID, "alice", aliceID)
	if len(recvs) != 1 {
		t.Fatalf("carol holds %d sender keys of alice", len(recvs))
	}
	if _, err := recvs[0].Decrypt(earlyCT); err == nil {
		t.Fatal("carol decrypts a message sent before she joined")
	}
	bob.start()
	bob.nextGroupText(g.ID, "alice", "before carol")
	bob.nextGroupEvent(g.ID, "add", "alice")
	bob.nextGroupText(g.ID, "alice", "after carol joined")
	bob.noDecryptFailures()
}

// A receiver that lost a sender key (its store rolled back to before the distribution) asks for
// it and decrypts the message it kept meanwhile: nothing is lost.
func TestGroupLostSenderKeyRequested(t *testing.T) {
	srv := testserver.Start(t)
	ds := startAll(t, srv, "alice", "bob")
	alice, bob := ds[0], ds[1]
	aliceID := alice.c.Account().DeviceID
	g := alice.createGroup("g", "bob")
	bob.nextGroupEvent(g.ID, "create", "alice")
	bob.waitGroupName(g.ID, "g")
	alice.sendGroup("g", "one")
	bob.nextGroupText(g.ID, "alice", "one")
	alice.waitOutboxLen(0)
	// Bob loses alice's sender key (a store restored from a backup, say).
	bob.stop()
	st, err := store.Open(bob.home, store.Options{})
	if err != nil {
		t.Fatal(err)
	}
	err = st.Update(func(tx *store.Tx) error { return tx.DeleteSenderKeyReceivers(g.ID, "alice") })
	st.Close()
	if err != nil {
		t.Fatal(err)
	}
	bob.start()
	alice.sendGroup("g", "two")
	bob.nextGroupText(g.ID, "alice", "two")
	alice.sendGroup("g", "three")
	bob.nextGroupText(g.ID, "alice", "three")
	alice.waitOutboxLen(0)
	bob.noDecryptFailures()
	bob.stop()
	if r := receiversOf(t, bob.home, g.ID, "alice", aliceID); len(r) != 1 {
		t.Fatalf("bob holds %d sender keys of alice", len(r))
	}
}

// A membership event the server did not get from an admin — injected into a member's inbox as a
// malicious server would, signed by a device that is not the actor's, or by a non-admin — is
// refused; the member's group does not change.
func TestGroupForgedEventRefused(t *testing.T) {
	srv := testserver.Start(t)
	ds := startAll(t, srv, "alice", "bob", "carol")
	alice, bob, carol := ds[0], ds[1], ds[2]
	g := alice.createGroup("g", "bob", "carol")
	bob.nextGroupEvent(g.ID, "create", "alice")
	carol.nextGroupEvent(g.ID, "create", "alice")
	bobID, carolID := bob.c.Account().DeviceID, carol.c.Account().DeviceID
	carolKey := identityPair(t, carol)
	bob.stop()

	inject := func(actor, actorDev string, key *e2ee.IdentityKeyPair, targets, members, admins []string, kind petrelv1.GroupEventKind) {
		t.Helper()
		ev := &petrelv1.GroupEvent{GroupId: g.ID, Version: 2, Actor: actor, ActorDevice: actorDev, Kind: kind,
			Targets: targets, Members: members, Admins: admins, CreatedMs: time.Now().UnixMilli()}
		sge, err := petrelv1.SignGroupEvent(key, ev)
		if err != nil {
			t.Fatal(err)
		}
		ct, err := proto.Marshal(sge)
		if err != nil {
			t.Fatal(err)
		}
		env, err := proto.Marshal(&petrelv1.Envelope{MessageId: "forged-" + actor + "-" + kind.String()[17:], From: actor, FromDevice: actorDev,
			Type: petrelv1.EnvelopeType_ENVELOPE_TYPE_GROUP_EVENT, Ciphertext: ct, ServerTimeMs: time.Now().UnixMilli(), GroupId: g.ID})
		if err != nil {
			t.Fatal(err)
		}
		b := srv.Server().Bus()
		ctx, cancel := ctxT()
		defer cancel()
		if _, err := b.JS().Publish(ctx, b.InboxSubject(bobID), env); err != nil {
			t.Fatal(err)
		}
	}
	refused := func() {
		t.Helper()
		bob.start()
		bob.waitQueueEmpty()
		select {
		case ev := <-bob.undecr:
			if !errors.Is(ev.Err, client.ErrGroupEventRefused) {
				t.Fatalf("bob's refusal: %v", ev.Err)
			}
		case <-time.After(waitFor):
			t.Fatal("bob did not refuse the forged event")
		}
	}
	// Carol (not an admin) "removes" alice, signed with her real key.
	inject("carol", carolID, carolKey, []string{"alice"}, []string{"bob", "carol"}, []string{"carol"},
		petrelv1.GroupEventKind_GROUP_EVENT_KIND_REMOVE)
	refused()
	bob.stop()
	// The server claims alice promoted carol, signed by carol's key under alice's name.
	inject("alice", carolID, carolKey, []string{"carol"}, []string{"alice", "bob", "carol"}, []string{"alice", "carol"},
		petrelv1.GroupEventKind_GROUP_EVENT_KIND_PROMOTE)
	refused()
	if bg := bob.group(g.ID); bg.Version != 1 || !slices.Equal(bg.Admins, []string{"alice"}) || len(bg.Members) != 3 {
		t.Fatalf("bob's group after forged events: %+v", bg)
	}
	// The real next change still applies.
	ctx, cancel := ctxT()
	defer cancel()
	if err := alice.c.PromoteInGroup(ctx, "g", "bob"); err != nil {
		t.Fatal(err)
	}
	bob.nextGroupEvent(g.ID, "promote", "alice")
	bob.noMoreMessages()
}

// identityPair reads a (running or stopped) device's identity key pair from its store.
func identityPair(t *testing.T, d *device) *e2ee.IdentityKeyPair {
	t.Helper()
	var raw []byte
	read := func(st *store.Store) {
		st.View(func(tx *store.Tx) error {
			a, err := tx.Account()
			if err == nil {
				raw = a.Identity
			}
			return err
		})
	}
	if d.st != nil && d.c != nil {
		read(d.st)
	} else {
		st, err := store.Open(d.home, store.Options{})
		if err != nil {
			t.Fatal(err)
		}
		read(st)
		st.Close()
	}
	k, err := e2ee.UnmarshalIdentityKeyPair(raw)
	if err != nil {
		t.Fatal(err)
	}
	return k
}

// Invariant 3 in groups: the server loses a stored group message (and the sender key that came
// before it); the sender, still missing that member's receipt after ResendInterval, sends it
// again; the member asks for the key it never got and gets the message exactly once.
func TestGroupResendAfterServerLoss(t *testing.T) {
	srv := testserver.Start(t)
	var later atomic.Bool
	clock := func() time.Time {
		if later.Load() {
			return time.Now().Add(2 * time.Hour)
		}
		return time.Now()
	}
	alice := register(t, srv, "alice", devOpts{cfg: client.Config{Now: clock}}).start()
	bob := register(t, srv, "bob", devOpts{}).start()
	alice.waitQueueEmpty()
	bob.waitQueueEmpty()
	g := alice.createGroup("g", "bob")
	bob.nextGroupEvent(g.ID, "create", "alice")
	bob.waitGroupName(g.ID, "g")
	bobID := bob.c.Account().DeviceID
	bob.stop()
	id := alice.sendGroup("g", "do not lose me")
	if n := alice.outboxLen(); n != 1 {
		t.Fatalf("alice's outbox holds %d entries, want the message awaiting bob's receipt", n)
	}

	srv.Stop()
	purgeInbox(t, srv, bobID)
	later.Store(true) // an hour and more later: the receipt is overdue
	srv.Restart(t)
	alice.waitQueueEmpty()
	bob.start()
	if m := bob.nextGroupText(g.ID, "alice", "do not lose me"); m.ID != id {
		t.Fatalf("bob got %+v", m)
	}
	alice.waitOutboxLen(0)
	bob.waitQueueEmpty()
	bob.noMoreMessages()
	bob.noDecryptFailures()
}
