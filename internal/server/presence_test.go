// Copyright 2026 The Petrel Authors
// SPDX-License-Identifier: Apache-2.0

package server_test

import (
	"context"
	"crypto/ed25519"
	"testing"
	"time"

	"github.com/nats-io/nats.go/jetstream"

	"github.com/petrelchat/petrel/internal/server"
	"github.com/petrelchat/petrel/internal/testserver"
	pb "github.com/petrelchat/petrel/proto/petrel/v1"
)

// registered registers name on url and reads its QueueEmpty; the connection stays open.
func registered(t *testing.T, url, name string) *testserver.RawClient {
	t.Helper()
	c := testserver.Dial(t, url)
	c.MustRegister(name)
	if f := c.NextPush(); f.GetQueueEmpty() == nil {
		t.Fatalf("%s: want QueueEmpty, got %v", name, f)
	}
	return c
}

// reconnect authenticates key on a new connection to url and returns it with the frames before
// its QueueEmpty (kept in Pushes) and the QueueEmpty's delivered count.
func reconnect(t *testing.T, url string, key ed25519.PrivateKey) (*testserver.RawClient, uint32) {
	t.Helper()
	c := testserver.Dial(t, url)
	if r := c.Auth(key); r.GetWelcome() == nil {
		t.Fatalf("auth: %v", r)
	}
	var before []*pb.Frame
	for {
		f := c.NextPush()
		if qe := f.GetQueueEmpty(); qe != nil {
			c.Pushes = append(before, c.Pushes...)
			return c, qe.GetDelivered()
		}
		before = append(before, f)
	}
}

// sendFrame builds a Send of body to each of devices of to.
func sendFrame(id, to string, devices []string, body string, mod func(*pb.Send)) *pb.Frame {
	s := &pb.Send{MessageId: id, To: to}
	for _, d := range devices {
		s.Envelopes = append(s.Envelopes, &pb.DeviceCiphertext{DeviceId: d, Type: pb.EnvelopeType_ENVELOPE_TYPE_MESSAGE, Ciphertext: []byte(body)})
	}
	if mod != nil {
		mod(s)
	}
	return &pb.Frame{Body: &pb.Frame_Send{Send: s}}
}

func ephemeral(s *pb.Send) { s.Ephemeral = true }

// inboxCount is how many envelopes dev's inbox holds.
func inboxCount(t *testing.T, srv *server.Server, dev string) uint64 {
	t.Helper()
	b := srv.Bus()
	ctx, cancel := context.WithTimeout(context.Background(), 5*time.Second)
	defer cancel()
	subj := b.InboxSubject(dev)
	info, err := b.Inbox(b.Shard(dev)).Info(ctx, jetstream.WithSubjectFilter(subj))
	if err != nil {
		t.Fatal(err)
	}
	return info.State.Subjects[subj]
}

// An ephemeral send reaches a connected device and is acked; a device that is offline never
// gets it (it was never stored); own copies are refused; the per-device rate limit answers
// RATE_LIMITED.
func TestEphemeralSendNeverStored(t *testing.T) {
	srv := testserver.Start(t)
	alice := registered(t, srv.URL(), "alice")
	bob := registered(t, srv.URL(), "bob")
	carol := registered(t, srv.URL(), "carol")
	carolKey, carolDev := carol.AuthKey, carol.DeviceID
	carol.WS.CloseNow()

	if r := alice.Request(sendFrame("t1", "bob", []string{bob.DeviceID}, "typing", ephemeral)); r.GetSendResult().GetMessageId() != "t1" {
		t.Fatalf("ephemeral send to an online device: %v", r)
	}
	if env := bob.AckNextDeliver(); env.GetMessageId() != "t1" || string(env.GetCiphertext()) != "typing" || env.GetFrom() != "alice" {
		t.Fatalf("bob got %v", env)
	}
	if r := alice.Request(sendFrame("t2", "carol", []string{carolDev}, "typing", ephemeral)); r.GetSendResult().GetMessageId() != "t2" {
		t.Fatalf("ephemeral send to an offline device: %v", r)
	}
	if n := inboxCount(t, srv.Server(), carolDev); n != 0 {
		t.Fatalf("carol's inbox holds %d envelopes after an ephemeral send", n)
	}
	// Stale devices are refused as for any send; own copies and self-sends are refused.
	if r := alice.Request(sendFrame("t3", "bob", nil, "typing", ephemeral)); r.GetError().GetCode() != pb.ErrorCode_ERROR_CODE_STALE_DEVICES {
		t.Fatalf("ephemeral send without envelopes: %v", r)
	}
	own := func(s *pb.Send) {
		s.Ephemeral = true
		s.OwnEnvelopes = []*pb.DeviceCiphertext{{DeviceId: alice.DeviceID, Type: pb.EnvelopeType_ENVELOPE_TYPE_MESSAGE, Ciphertext: []byte("x")}}
	}
	if r := alice.Request(sendFrame("t4", "bob", []string{bob.DeviceID}, "typing", own)); r.GetError().GetCode() != pb.ErrorCode_ERROR_CODE_INVALID_REQUEST {
		t.Fatalf("ephemeral send with own envelopes: %v", r)
	}
	// Carol reconnects: nothing waits for her; the next message is the first thing she gets.
	carol, delivered := reconnect(t, srv.URL(), carolKey)
	if delivered != 0 || len(carol.Pushes) != 0 {
		t.Fatalf("carol got %d envelopes (%v) sent while she was offline as ephemeral", delivered, carol.Pushes)
	}
	if r := alice.Request(sendFrame("m1", "carol", []string{carolDev}, "hello", nil)); r.GetSendResult() == nil {
		t.Fatalf("send: %v", r)
	}
	if env := carol.AckNextDeliver(); env.GetMessageId() != "m1" {
		t.Fatalf("carol's first envelope: %v", env)
	}
	// The rate limit: a burst of 10 (some spent above), then 5 a second.
	limited := false
	for i := range 15 {
		r := alice.Request(sendFrame("r"+string(rune('a'+i)), "bob", []string{bob.DeviceID}, "typing", ephemeral))
		if r.GetError().GetCode() == pb.ErrorCode_ERROR_CODE_RATE_LIMITED {
			limited = r.GetError().GetRetryAfterMs() > 0
			break
		}
	}
	if !limited {
		t.Fatal("15 ephemeral sends in a row were never RATE_LIMITED (with a retry hint)")
	}
}

// A disappearing message stored for an offline device is deleted by the server at its expiry:
// the device reconnecting later gets only the messages that have not expired, and those carry
// their expiry.
func TestDisappearingDeletedOnServer(t *testing.T) {
	srv := testserver.Start(t)
	alice := registered(t, srv.URL(), "alice")
	bob := registered(t, srv.URL(), "bob")
	bobKey, bobDev := bob.AuthKey, bob.DeviceID
	bob.WS.CloseNow()

	soon := time.Now().Add(1500 * time.Millisecond).UnixMilli()
	later := time.Now().Add(time.Hour).UnixMilli()
	for _, m := range []struct {
		id  string
		exp int64
	}{{"d1", soon}, {"d2", later}, {"n3", 0}, {"past", time.Now().Add(-time.Minute).UnixMilli()}} {
		r := alice.Request(sendFrame(m.id, "bob", []string{bobDev}, "body "+m.id, func(s *pb.Send) { s.ExpiresAtMs = m.exp }))
		if r.GetSendResult().GetMessageId() != m.id {
			t.Fatalf("send %s: %v", m.id, r)
		}
	}
	if r := alice.Request(sendFrame("far", "bob", []string{bobDev}, "x", func(s *pb.Send) {
		s.ExpiresAtMs = time.Now().Add(400 * 24 * time.Hour).UnixMilli()
	})); r.GetError().GetCode() != pb.ErrorCode_ERROR_CODE_INVALID_REQUEST {
		t.Fatalf("expiry 400 days ahead: %v", r)
	}
	// Stored: d1, d2, n3 (the one already expired was not stored).
	if n := inboxCount(t, srv.Server(), bobDev); n != 3 {
		t.Fatalf("bob's inbox holds %d envelopes, want 3", n)
	}
	// The store deletes d1 at its expiry (JetStream's per-message TTL), with nobody reading.
	deadline := time.Now().Add(15 * time.Second)
	for inboxCount(t, srv.Server(), bobDev) != 2 {
		if time.Now().After(deadline) {
			t.Fatalf("the expired envelope is still stored 15s later")
		}
		time.Sleep(100 * time.Millisecond) // no event to await: the store expires on its own clock
	}
	bob, delivered := reconnect(t, srv.URL(), bobKey)
	if delivered != 2 {
		t.Fatalf("bob got %d stored envelopes, want 2", delivered)
	}
	var got []*pb.Envelope
	for range 2 {
		got = append(got, bob.AckNextDeliver())
	}
	if got[0].GetMessageId() != "d2" || got[0].GetExpiresAtMs() != later || got[1].GetMessageId() != "n3" || got[1].GetExpiresAtMs() != 0 {
		t.Fatalf("bob got %v", got)
	}
}

// presenceOf reads frames of c until a PresenceChanged for account arrives.
func presenceOf(t *testing.T, c *testserver.RawClient, account string) *pb.Presence {
	t.Helper()
	for {
		f := c.NextPush()
		if p := f.GetPresenceChanged().GetPresence(); p.GetAccount() == account {
			return p
		}
	}
}

func subscribe(t *testing.T, c *testserver.RawClient, accounts ...string) map[string]*pb.Presence {
	t.Helper()
	r := c.Request(&pb.Frame{Body: &pb.Frame_SubscribePresence{SubscribePresence: &pb.SubscribePresence{Accounts: accounts}}})
	res := r.GetPresenceResult()
	if res == nil {
		t.Fatalf("SubscribePresence: %v", r)
	}
	out := map[string]*pb.Presence{}
	for _, p := range res.GetPresence() {
		out[p.GetAccount()] = p
	}
	if len(out) != len(accounts) {
		t.Fatalf("PresenceResult for %d accounts, asked %d: %v", len(out), len(accounts), res)
	}
	return out
}

func putSettings(t *testing.T, c *testserver.RawClient, st *pb.Settings) *pb.Settings {
	t.Helper()
	r := c.Request(&pb.Frame{Body: &pb.Frame_PutSettings{PutSettings: &pb.PutSettings{Settings: st}}})
	if r.GetSettingsResult() == nil {
		t.Fatalf("PutSettings: %v", r)
	}
	return r.GetSettingsResult().GetSettings()
}

const (
	online  = pb.PresenceState_PRESENCE_STATE_ONLINE
	offline = pb.PresenceState_PRESENCE_STATE_OFFLINE
	unknown = pb.PresenceState_PRESENCE_STATE_UNKNOWN
)

// Presence on one node: online, offline with a last-seen time rounded to the minute, pushes
// while subscribed, and each visibility setting enforced by the server.
func TestPresenceAndVisibility(t *testing.T) {
	srv := testserver.Start(t)
	alice := registered(t, srv.URL(), "alice")
	aliceKey := alice.AuthKey
	bob := registered(t, srv.URL(), "bob")
	mallory := registered(t, srv.URL(), "mallory")

	got := subscribe(t, bob, "alice", "nobody-here", "bob")
	if got["alice"].GetState() != online || got["nobody-here"].GetState() != unknown || got["bob"].GetState() != online {
		t.Fatalf("presence: %v", got)
	}
	before := time.Now().UnixMilli()
	alice.WS.CloseNow()
	p := presenceOf(t, bob, "alice")
	if p.GetState() != offline || p.GetLastSeenMs()%60_000 != 0 || p.GetLastSeenMs() > time.Now().UnixMilli() || p.GetLastSeenMs() < before-60_000 {
		t.Fatalf("after alice left: %v", p)
	}
	alice, _ = reconnect(t, srv.URL(), aliceKey)
	if p := presenceOf(t, bob, "alice"); p.GetState() != online {
		t.Fatalf("after alice came back: %v", p)
	}

	// NOBODY: bob's subscription is told UNKNOWN at once; mallory asking gets UNKNOWN; alice
	// still sees herself.
	if st := putSettings(t, alice, &pb.Settings{LastSeen: pb.LastSeenVisibility_LAST_SEEN_VISIBILITY_NOBODY, Contacts: []string{"bob"}}); len(st.GetContacts()) != 0 {
		t.Fatalf("contacts kept under NOBODY: %v", st)
	}
	if p := presenceOf(t, bob, "alice"); p.GetState() != unknown || p.GetLastSeenMs() != 0 {
		t.Fatalf("bob's view under NOBODY: %v", p)
	}
	if got := subscribe(t, mallory, "alice"); got["alice"].GetState() != unknown {
		t.Fatalf("mallory's view under NOBODY: %v", got)
	}
	if got := subscribe(t, alice, "alice"); got["alice"].GetState() != online {
		t.Fatalf("alice's view of herself under NOBODY: %v", got)
	}
	// CONTACTS with bob: bob sees her again, mallory does not, also across a disconnect.
	st := putSettings(t, alice, &pb.Settings{LastSeen: pb.LastSeenVisibility_LAST_SEEN_VISIBILITY_CONTACTS, Contacts: []string{"bob", "carol", "bob"}})
	if len(st.GetContacts()) != 2 || st.GetContacts()[0] != "bob" {
		t.Fatalf("stored contacts: %v", st)
	}
	if p := presenceOf(t, bob, "alice"); p.GetState() != online {
		t.Fatalf("bob's view under CONTACTS: %v", p)
	}
	if got := subscribe(t, mallory, "alice"); got["alice"].GetState() != unknown {
		t.Fatalf("mallory's view under CONTACTS: %v", got)
	}
	alice.WS.CloseNow()
	if p := presenceOf(t, bob, "alice"); p.GetState() != offline || p.GetLastSeenMs() == 0 {
		t.Fatalf("bob's view of alice gone under CONTACTS: %v", p)
	}
	if got := subscribe(t, mallory, "alice"); got["alice"].GetState() != unknown || got["alice"].GetLastSeenMs() != 0 {
		t.Fatalf("mallory's view of alice gone under CONTACTS: %v", got)
	}
	// EVERYONE again: mallory sees the last-seen time.
	alice, _ = reconnect(t, srv.URL(), aliceKey)
	putSettings(t, alice, &pb.Settings{LastSeen: pb.LastSeenVisibility_LAST_SEEN_VISIBILITY_EVERYONE})
	// The setting and alice's return may reach mallory in either order: offline (last seen),
	// then online; never UNKNOWN.
	for p := presenceOf(t, mallory, "alice"); p.GetState() != online; p = presenceOf(t, mallory, "alice") {
		if p.GetState() != offline || p.GetLastSeenMs() == 0 {
			t.Fatalf("mallory's view under EVERYONE: %v", p)
		}
	}

	// Bad requests.
	many := make([]string, pb.MaxPresenceAccounts+1)
	for i := range many {
		many[i] = "a" + string(rune('a'+i%26)) + string(rune('a'+i/26))
	}
	for _, bad := range [][]string{many, {"Bad Name"}, {"bob", "bob"}} {
		r := mallory.Request(&pb.Frame{Body: &pb.Frame_SubscribePresence{SubscribePresence: &pb.SubscribePresence{Accounts: bad}}})
		if r.GetError().GetCode() != pb.ErrorCode_ERROR_CODE_INVALID_REQUEST {
			t.Fatalf("SubscribePresence %d accounts: %v", len(bad), r)
		}
	}
	r := alice.Request(&pb.Frame{Body: &pb.Frame_PutSettings{PutSettings: &pb.PutSettings{Settings: &pb.Settings{LastSeen: 7}}}})
	if r.GetError().GetCode() != pb.ErrorCode_ERROR_CODE_INVALID_REQUEST {
		t.Fatalf("PutSettings with an unknown visibility: %v", r)
	}
	// Rate limit: 20 in a burst, then 20 a minute.
	limited := false
	for range 30 {
		r := mallory.Request(&pb.Frame{Body: &pb.Frame_SubscribePresence{SubscribePresence: &pb.SubscribePresence{Accounts: []string{"alice"}}}})
		if r.GetError().GetCode() == pb.ErrorCode_ERROR_CODE_RATE_LIMITED {
			limited = true
			break
		}
	}
	if !limited {
		t.Fatal("30 subscriptions in a row were never RATE_LIMITED")
	}
}
