// Copyright 2026 The Petrel Authors
// SPDX-License-Identifier: Apache-2.0

package testcluster_test

import (
	"fmt"
	"slices"
	"testing"
	"time"

	"github.com/petrelchat/petrel/internal/server"
	"github.com/petrelchat/petrel/internal/testcluster"
	"github.com/petrelchat/petrel/internal/testserver"
	pb "github.com/petrelchat/petrel/proto/petrel/v1"
)

// nextPresence reads c's pushes until a PresenceChanged for account.
func nextPresence(t *testing.T, c *testserver.RawClient, account string) *pb.Presence {
	t.Helper()
	for {
		if p := c.NextPush().GetPresenceChanged().GetPresence(); p.GetAccount() == account {
			return p
		}
	}
}

// Presence across nodes: bob on n1 sees alice come online on n2 and n3 (two devices), stay
// online while one device remains, go offline with a last-seen time when both left, and go
// offline when the node holding her dies without a goodbye (its heartbeats stop). A NOBODY
// setting made on one node hides her on the others, and EVERYONE shows her again.
func TestPresenceAcrossNodes(t *testing.T) {
	c := testcluster.Start(t, nodes, testcluster.Options{Config: func(_ int, cfg *server.Config) {
		// Gone after 1.5 s of silence: short for the kill below, long enough that a node held up
		// under -race on a loaded machine is not declared gone (that would show alice offline
		// until the node is heard again).
		cfg.PresenceHeartbeat.Duration = 500 * time.Millisecond
	}})
	n1, n2, n3 := c.Node(0), c.Node(1), c.Node(2)
	alice := testserver.NewAccount(t, n2.URL(), "alice")
	laptop := alice.Link(n2.URL(), "laptop")
	bob := testserver.NewAccount(t, n1.URL(), "bob").Primary
	mallory := testserver.NewAccount(t, n3.URL(), "mallory").Primary

	sub := func(c *testserver.RawClient, account string) *pb.Presence {
		t.Helper()
		r := c.Request(&pb.Frame{Body: &pb.Frame_SubscribePresence{SubscribePresence: &pb.SubscribePresence{Accounts: []string{account}}}})
		if len(r.GetPresenceResult().GetPresence()) != 1 {
			t.Fatalf("SubscribePresence: %v", r)
		}
		return r.GetPresenceResult().GetPresence()[0]
	}
	// n1 learns of alice from n2 over the bus; a node held up under -race on a loaded machine
	// can miss a heartbeat and be counted gone until its next one, so n1 is asked until it
	// answers online (bounded).
	testcluster.WaitFor(t, 10*time.Second, func() error {
		if p := sub(bob, "alice"); p.GetState() != pb.PresenceState_PRESENCE_STATE_ONLINE {
			return fmt.Errorf("alice (online on n2) seen from n1: %v", p)
		}
		return nil
	})
	// An ephemeral send (typing) from n2 reaches bob on n1 over the bus.
	typing := &pb.Send{MessageId: "typing1", To: "bob", Ephemeral: true, Envelopes: []*pb.DeviceCiphertext{
		{DeviceId: bob.DeviceID, Type: pb.EnvelopeType_ENVELOPE_TYPE_MESSAGE, Ciphertext: []byte("typing")}}}
	if r := alice.Primary.Request(&pb.Frame{Body: &pb.Frame_Send{Send: typing}}); r.GetSendResult() == nil {
		t.Fatalf("ephemeral send: %v", r)
	}
	if env := bob.AckNextDeliver(); env.GetMessageId() != "typing1" || env.GetFrom() != "alice" {
		t.Fatalf("bob got %v", env)
	}
	// heldBy waits until n1 knows exactly these nodes hold alice online. Nodes' reports cross on
	// the bus: had n2 said "phone gone" before n3's "laptop here" reached n1, bob would be told
	// "offline", rightly, for that moment, and this test would read a stale push later.
	heldBy := func(want ...string) {
		t.Helper()
		testcluster.WaitFor(t, 10*time.Second, func() error {
			if got := n1.Server().Presence().OnlineAt("alice"); !slices.Equal(got, want) {
				return fmt.Errorf("n1 knows alice online at %v, want %v", got, want)
			}
			return nil
		})
	}
	phoneKey := alice.Primary.AuthKey
	lap := testserver.Connect(t, n3.URL(), laptop) // a second device, on n3
	heldBy("n2", "n3")
	alice.Primary.WS.CloseNow() // the phone leaves n2: still online on n3
	heldBy("n3")
	// The phone reconnects on n2 and the laptop leaves n3: bob is told nothing. Then the phone
	// leaves too: offline, last seen now.
	phone := testserver.Dial(t, n2.URL())
	if r := phone.Auth(phoneKey); r.GetWelcome() == nil {
		t.Fatalf("phone auth: %v", r)
	}
	heldBy("n2", "n3")
	lap.WS.CloseNow()
	heldBy("n2")
	phone.WS.CloseNow()
	if p := nextPresence(t, bob, "alice"); p.GetState() != pb.PresenceState_PRESENCE_STATE_OFFLINE || p.GetLastSeenMs() == 0 || p.GetLastSeenMs()%60_000 != 0 {
		t.Fatalf("alice gone, seen from n1: %v", p)
	}
	if p := sub(mallory, "alice"); p.GetState() != pb.PresenceState_PRESENCE_STATE_OFFLINE {
		t.Fatalf("alice gone, seen from n3 (a new subscription): %v", p)
	}

	// NOBODY, set from n2 while alice is online there, reaches bob's subscription on n1 at once;
	// EVERYONE shows her again. (Before the kill below: while the cluster re-elects leaders after
	// it, a node held up under -race can be counted gone for a moment, which bob would see.)
	phone = testserver.Dial(t, n2.URL())
	if r := phone.Auth(phoneKey); r.GetWelcome() == nil {
		t.Fatalf("phone auth: %v", r)
	}
	if p := nextPresence(t, bob, "alice"); p.GetState() != pb.PresenceState_PRESENCE_STATE_ONLINE {
		t.Fatalf("alice back on n2: %v", p)
	}
	lastSeen := func(v pb.LastSeenVisibility) {
		t.Helper()
		r := phone.Request(&pb.Frame{Body: &pb.Frame_PutSettings{PutSettings: &pb.PutSettings{Settings: &pb.Settings{LastSeen: v}}}})
		if r.GetSettingsResult() == nil {
			t.Fatalf("PutSettings %v: %v", v, r)
		}
	}
	lastSeen(pb.LastSeenVisibility_LAST_SEEN_VISIBILITY_NOBODY)
	if p := nextPresence(t, bob, "alice"); p.GetState() != pb.PresenceState_PRESENCE_STATE_UNKNOWN || p.GetLastSeenMs() != 0 {
		t.Fatalf("bob's view once NOBODY took: %v", p)
	}
	if p := sub(bob, "alice"); p.GetState() != pb.PresenceState_PRESENCE_STATE_UNKNOWN || p.GetLastSeenMs() != 0 {
		t.Fatalf("alice under NOBODY, asked again from n1: %v", p)
	}
	lastSeen(pb.LastSeenVisibility_LAST_SEEN_VISIBILITY_EVERYONE)
	if p := nextPresence(t, bob, "alice"); p.GetState() != pb.PresenceState_PRESENCE_STATE_ONLINE {
		t.Fatalf("bob's view once EVERYONE took: %v", p)
	}
	phone.WS.CloseNow()
	if p := nextPresence(t, bob, "alice"); p.GetState() != pb.PresenceState_PRESENCE_STATE_OFFLINE || p.GetLastSeenMs() == 0 {
		t.Fatalf("alice's phone left n2: %v", p)
	}

	// The laptop comes back on n3, which then dies: bob (n1) sees alice online, then offline.
	testserver.Connect(t, n3.URL(), laptop)
	if p := nextPresence(t, bob, "alice"); p.GetState() != pb.PresenceState_PRESENCE_STATE_ONLINE {
		t.Fatalf("alice back on n3: %v", p)
	}
	n3.Kill()
	if p := nextPresence(t, bob, "alice"); p.GetState() != pb.PresenceState_PRESENCE_STATE_OFFLINE || p.GetLastSeenMs() == 0 {
		t.Fatalf("alice's node died: %v", p)
	}
}
