// Copyright 2026 The Petrel Authors
// SPDX-License-Identifier: Apache-2.0

package testcluster_test

import (
	"context"
	"fmt"
	"net/http"
	"testing"
	"time"

	"github.com/nats-io/nats.go/jetstream"

	"github.com/petrelchat/petrel/client"
	"github.com/petrelchat/petrel/internal/bus"
	"github.com/petrelchat/petrel/internal/testcluster"
	"github.com/petrelchat/petrel/internal/testserver"
	pb "github.com/petrelchat/petrel/proto/petrel/v1"
)

// TestServedWhileInboxLeaderless: every stream is led by n1 (bob's inbox, the accounts, the
// prekeys: the worst case), and alice's messages are stored in bob's inbox while bob is offline,
// until every replica has applied them. n1 is cut off and then killed, so its leadership is not
// handed over (as with kill -9): n2 and n3 elect new leaders only after nats-server's election
// timeout (4–9 s). Bob connects to n2 (or n3) meanwhile and is served before that election: he gets the
// stored messages in order, QueueEmpty, and then a live message from alice, while neither n2 nor
// n3 leads his inbox, though his client's own requests (its device list, read through the
// accounts stream's leader; its prekey upload) wait for the election meanwhile. Nothing is
// shown twice once a leader is back.
func TestServedWhileInboxLeaderless(t *testing.T) {
	c := testcluster.Start(t, nodes, testcluster.Options{Proxies: true})
	n1, n2, n3 := c.Node(0), c.Node(1), c.Node(2)

	bobSt := registerSDKDevice(t, "bob", n2.URL())
	probe, err := client.Open(client.Config{Store: bobSt})
	if err != nil {
		t.Fatal(err)
	}
	bobID := probe.Account().DeviceID
	probe.Close()
	stream := bus.InboxStreamName(n2.Server().Bus().Shard(bobID))
	leadEveryStreamFrom(t, n1)

	alice := startSDKDevice(t, "alice", n3.URL())
	alice.nextConnected()
	ctx, cancel := context.WithTimeout(context.Background(), failoverWait)
	defer cancel()
	var want []string
	for i := range 3 {
		id, err := alice.c.Send(ctx, "bob", fmt.Sprintf("stored %d", i))
		if err != nil {
			t.Fatalf("alice: send %d: %v", i, err)
		}
		want = append(want, id)
	}
	if l, err := n1.Server().Bus().StreamLeaderForTest(stream); err != nil || l != n1.Name() {
		t.Fatalf("%s is led by %q (%v) after the sends, want %s", stream, l, err, n1.Name())
	}

	waitReplicasApplied(t, n2.Server().Bus().Shard(bobID), n1, n2, n3)

	// Cut first, so that n1's shutdown cannot hand its leadership over.
	c.Partition(t, 0)
	n1.Kill()
	cutAt := time.Now()
	noNewLeader := func(when string) {
		t.Helper()
		noLeaderAmong(t, cutAt, when, []string{stream}, n2, n3)
	}

	bob := runSDKDevice(t, "bob", bobSt)
	// n2, where he registered; or n3, when n2 answered his handshake UNAVAILABLE (its replica
	// of the devices bucket not answering yet, a moment after the kill) and his client moved on.
	served := n2
	switch got := bob.nextConnected(); got {
	case n2.URL():
	case n3.URL():
		served = n3
	default:
		t.Fatalf("bob connected to %s, want n2 %s or n3 %s", got, n2.URL(), n3.URL())
	}
	for i, id := range want {
		select {
		case m := <-bob.msgs:
			if m.ID != id {
				t.Fatalf("bob's message %d is %s (%q), want %s", i, m.ID, m.Text, id)
			}
		case <-time.After(failoverWait):
			t.Fatalf("bob got %d of %d stored messages", i, len(want))
		}
	}
	select {
	case <-bob.queueEmpty:
	case <-time.After(failoverWait):
		t.Fatalf("bob: no QueueEmpty within %s", failoverWait)
	}
	t.Logf("bob served %s after the cut", time.Since(cutAt).Round(time.Millisecond))
	noNewLeader("when bob was served")
	if got := metric(t, served.AdminURL(), "petrel_mailbox_replica_reads_total"); got < 1 {
		t.Fatalf("%s counted %v replica reads, want at least bob's", served.Name(), got)
	}

	live, err := alice.c.Send(ctx, "bob", "live")
	if err != nil {
		t.Fatalf("alice: live send: %v", err)
	}
	select {
	case m := <-bob.msgs:
		if m.ID != live {
			t.Fatalf("bob got %s (%q), want the live message %s", m.ID, m.Text, live)
		}
	case <-time.After(failoverWait):
		t.Fatal("bob: no live message")
	}
	t.Logf("live message shown %s after the cut", time.Since(cutAt).Round(time.Millisecond))
	noNewLeader("when bob got a live message")

	// Once a leader is back nothing more arrives: every receipt reached alice, and bob was
	// shown nothing twice.
	n2.WaitLeaders(t, failoverWait)
	got := map[string]bool{}
	for range len(want) + 1 {
		select {
		case d := <-alice.delivered:
			got[d.MessageID] = true
		case <-time.After(failoverWait):
			t.Fatalf("alice: %d of %d delivery receipts", len(got), len(want)+1)
		}
	}
	select {
	case m := <-bob.msgs:
		t.Fatalf("bob shown another message %s: %q", m.ID, m.Text)
	default:
	}
}

// waitReplicasApplied waits until every node's replica of inbox shard has applied its whole Raft
// log and holds the same last sequence. A follower learns that a write was committed from the
// leader's next append or heartbeat: when the leader dies before, no replica round can show that
// the replicas hold every acked write, and a drain rightly waits for the new leader.
func waitReplicasApplied(t *testing.T, shard int, nds ...*testcluster.Node) {
	t.Helper()
	testcluster.WaitFor(t, failoverWait, func() error {
		var last []uint64
		for _, nd := range nds {
			reps, ok := nd.Server().Bus().InboxReplicas()
			if !ok {
				return fmt.Errorf("%s cannot tell its inbox replicas", nd.Name())
			}
			found := false
			for _, r := range reps {
				if r.Shard != shard {
					continue
				}
				if !r.Applied {
					return fmt.Errorf("%s has not applied its replica of shard %d", nd.Name(), shard)
				}
				found = true
				last = append(last, r.LastSeq)
			}
			if !found {
				return fmt.Errorf("%s has no replica of shard %d", nd.Name(), shard)
			}
		}
		for _, l := range last[1:] {
			if l != last[0] {
				return fmt.Errorf("replicas of shard %d hold different last sequences %v", shard, last)
			}
		}
		return nil
	})
}

// TestStoreWaitHoldsNoAcks: every stream is led by n1, which is cut off and killed, so none has a
// leader for 4–9 s. Bob (raw protocol, on n2, live) asks for his devices, a read through the
// accounts stream's leader that waits for the election, and, without waiting for the answer,
// pings: the pong comes while no stream has a leader. A message alice sends him meanwhile is
// delivered live, and his ack reaches her as her send's result, still before any election. Before
// the request lane a connection's frames waited behind its request: the ack too, so the message
// went to the store, which waited for the same election.
func TestStoreWaitHoldsNoAcks(t *testing.T) {
	c := testcluster.Start(t, nodes, testcluster.Options{Proxies: true})
	n1, n2, n3 := c.Node(0), c.Node(1), c.Node(2)
	bob := testserver.Dial(t, n2.URL())
	bob.MustRegister("bob")
	if f := bob.NextPush(); f.GetQueueEmpty() == nil {
		t.Fatalf("bob: want QueueEmpty, got %v", f)
	}
	alice := testserver.Dial(t, n3.URL())
	alice.MustRegister("alice")
	leadEveryStreamFrom(t, n1)
	// One message before the cut, so that n3 knows bob's devices (the directory's cache).
	first := alice.SendAsync("m0", "bob", []string{bob.DeviceID}, nil, []byte("before"))
	bob.AckNextDeliver()
	if r := alice.Await(first); r.GetSendResult() == nil {
		t.Fatalf("alice: first send: %v", r)
	}
	streams := []string{"KV_" + bus.AccountsBucket, bus.InboxStreamName(n2.Server().Bus().Shard(bob.DeviceID))}

	c.Partition(t, 0)
	n1.Kill()
	cutAt := time.Now()
	noLeader := func(when string) {
		t.Helper()
		noLeaderAmong(t, cutAt, when, streams, n2, n3)
	}

	const getDevices, ping = 1001, 1002
	bob.Write(&pb.Frame{Id: getDevices, Body: &pb.Frame_GetDevices{GetDevices: &pb.GetDevices{}}})
	bob.Write(&pb.Frame{Id: ping, Body: &pb.Frame_Ping{Ping: &pb.Ping{ClientTimeMs: 1}}})
	if r := bob.Await(ping); r.GetPong() == nil {
		t.Fatalf("bob: ping answered with %v", r)
	}
	t.Logf("pong %s after the cut", time.Since(cutAt).Round(time.Millisecond))
	noLeader("when bob's pong came")
	for _, f := range bob.Pushes {
		if f.GetId() == getDevices {
			t.Fatalf("GetDevices answered before the election: %v (the test needs it to wait)", f)
		}
	}

	live := alice.SendAsync("m1", "bob", []string{bob.DeviceID}, nil, []byte("live"))
	if env := bob.AckNextDeliver(); env.GetMessageId() != "m1" {
		t.Fatalf("bob got %q, want m1", env.GetMessageId())
	}
	if r := alice.Await(live); r.GetSendResult() == nil {
		t.Fatalf("alice: live send: %v", r)
	}
	t.Logf("live send acked %s after the cut", time.Since(cutAt).Round(time.Millisecond))
	noLeader("when alice's live send was acked")
	if got := metric(t, n2.AdminURL(), "petrel_gateway_lane_runs_total"); got < 1 {
		t.Fatalf("n2 ran %v request lanes, want at least bob's", got)
	}
	// The request is answered once a leader is back (or times out as UNAVAILABLE).
	if r := bob.Await(getDevices); r.GetDeviceListResult() == nil && r.GetError().GetCode() != pb.ErrorCode_ERROR_CODE_UNAVAILABLE {
		t.Fatalf("bob: GetDevices answered %v", r)
	}
}

// noLeaderAmong fails the test if, as each of nds sees it, one of nds leads one of streams: the
// survivors of a cut at cutAt have elected a leader, so what happened (when) waited for it.
func noLeaderAmong(t *testing.T, cutAt time.Time, when string, streams []string, nds ...*testcluster.Node) {
	t.Helper()
	for _, stream := range streams {
		for _, nd := range nds {
			l, err := nd.Server().Bus().StreamLeaderForTest(stream)
			if err != nil {
				t.Fatalf("%s: leader of %s: %v", nd.Name(), stream, err)
			}
			for _, other := range nds {
				if l == other.Name() {
					t.Fatalf("%s: %s had a new leader (%s) %s, %s after the cut: it waited for the election",
						nd.Name(), stream, l, when, time.Since(cutAt).Round(time.Millisecond))
				}
			}
		}
	}
}

// leadEveryStreamFrom makes nd the leader of every stream and bucket.
func leadEveryStreamFrom(t *testing.T, nd *testcluster.Node) {
	t.Helper()
	js, err := jetstream.New(nd.Server().Bus().Conn())
	if err != nil {
		t.Fatal(err)
	}
	ctx, cancel := context.WithTimeout(context.Background(), failoverWait)
	defer cancel()
	names := js.StreamNames(ctx)
	var streams []string
	for n := range names.Name() {
		streams = append(streams, n)
	}
	if err := names.Err(); err != nil {
		t.Fatalf("stream names: %v", err)
	}
	for _, s := range streams {
		leadInboxFrom(t, nd, s)
	}
}

// leadInboxFrom makes nd the leader of stream (a leader step-down that prefers nd) and waits
// until it is.
func leadInboxFrom(t *testing.T, nd *testcluster.Node, stream string) {
	t.Helper()
	nc := nd.Server().Bus().Conn()
	testcluster.WaitFor(t, failoverWait, func() error {
		l, err := nd.Server().Bus().StreamLeaderForTest(stream)
		if err != nil {
			return err
		}
		if l == nd.Name() {
			return nil
		}
		req := fmt.Sprintf(`{"placement":{"preferred":%q}}`, nd.Name())
		if _, err := nc.Request("$JS.API.STREAM.LEADER.STEPDOWN."+stream, []byte(req), 2*time.Second); err != nil {
			return fmt.Errorf("step down %s: %w", stream, err)
		}
		return fmt.Errorf("%s is led by %q", stream, l)
	})
}

// TestWakeUpLostOnACutRouteIsMadeGood: the route between n1 and n2 is cut for a moment (too short
// for any Raft election; n3 still reaches both). Alice on n2 sends to bob, attached on n1 and
// live: n2 does not know where he is, stores the message (acked) and publishes a wake-up that
// cannot reach n1. When the route is back, n1 sees a route to the same server made again and
// wakes every device attached on it, so bob reads his inbox and gets the message; before, it
// stayed stored until he reconnected.
func TestWakeUpLostOnACutRouteIsMadeGood(t *testing.T) {
	c := testcluster.Start(t, nodes, testcluster.Options{Proxies: true})
	n1, n2 := c.Node(0), c.Node(1)
	bob := testserver.Dial(t, n1.URL())
	bob.MustRegister("bob")
	alice := testserver.Dial(t, n2.URL())
	alice.MustRegister("alice")
	// Bob's inbox is led by n2, so the store does not need n1.
	leadInboxFrom(t, n2, bus.InboxStreamName(n2.Server().Bus().Shard(bob.DeviceID)))
	if f := bob.NextPush(); f.GetQueueEmpty() == nil {
		t.Fatalf("bob: want QueueEmpty, got %v", f)
	}
	// Every node caught up first (see the catch-up gate), so that only the cut disturbs them.
	for _, nd := range c.Nodes() {
		testcluster.WaitFor(t, failoverWait, func() error {
			if code, body := readyz(t, nd.URL()); code != http.StatusOK {
				return fmt.Errorf("%s /readyz %d %q", nd.Name(), code, body)
			}
			return nil
		})
	}
	// n1's device subscriptions (a subject only n1's mailbox subscribes to), as n2 sees them.
	subj := bus.NodeDeviceSubject(n1.Server().Mailbox().Node(), bob.DeviceID)
	testcluster.WaitFor(t, failoverWait, func() error {
		if ok, err := n2.Server().Bus().InterestForTest(subj); err != nil || !ok {
			return fmt.Errorf("n2 does not see n1's device subscriptions yet (%v)", err)
		}
		return nil
	})

	c.CutRoute(t, 0, 1)
	testcluster.WaitFor(t, failoverWait, func() error {
		if ok, err := n2.Server().Bus().InterestForTest(subj); err != nil || ok {
			return fmt.Errorf("n2 still sees n1's device subscriptions (%v)", err)
		}
		return nil
	})
	// UNAVAILABLE (a directory read that found no replica answering yet) is retried, as a
	// client does; the same message id is stored once.
	testcluster.WaitFor(t, failoverWait, func() error {
		if r := alice.Send("m1", "bob", []string{bob.DeviceID}, []byte("while the route is cut")); r.GetSendResult() == nil {
			return fmt.Errorf("alice: send while the route is cut: %v", r)
		}
		return nil
	})
	c.HealRoute(t, 0, 1)
	f, err := bob.ReadErr(failoverWait)
	if err != nil {
		t.Fatalf("bob got nothing within %s of the heal: %v", failoverWait, err)
	}
	if d := f.GetDeliver(); d == nil || string(d.GetEnvelope().GetCiphertext()) != "while the route is cut" {
		t.Fatalf("bob: want the stored message, got %v", f)
	}
	if got := metric(t, n1.AdminURL(), "petrel_mailbox_resync_wakes_total"); got < 1 {
		t.Fatalf("n1 counted %v resync wake-ups, want bob's", got)
	}
}
