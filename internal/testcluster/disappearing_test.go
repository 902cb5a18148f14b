// Copyright 2026 The Petrel Authors
// SPDX-License-Identifier: Apache-2.0

package testcluster_test

import (
	"encoding/json"
	"fmt"
	"strconv"
	"testing"
	"time"

	"github.com/coder/websocket"
	"google.golang.org/protobuf/proto"

	"github.com/petrelchat/petrel/internal/bus"
	"github.com/petrelchat/petrel/internal/testcluster"
	"github.com/petrelchat/petrel/internal/testserver"
	pb "github.com/petrelchat/petrel/proto/petrel/v1"
)

// replicaInbox lists the message ids of the envelopes stored for dev on node nd's own replica of
// dev's inbox stream, in order. It asks through the node's in-process NATS connection with
// direct gets: every replica answers them in a queue group, and NATS gives a queue message to a
// subscriber on the publisher's own server before any across a route, so the node's own replica
// answers (each node of an R3 cluster holds one). The read-time expiry check of the mailbox does
// not see these reads.
func replicaInbox(t *testing.T, nd *testcluster.Node, dev string) ([]string, error) {
	t.Helper()
	b := nd.Server().Bus()
	stream, subj := bus.InboxStreamName(b.Shard(dev)), b.InboxSubject(dev)
	var ids []string
	for from := uint64(1); ; {
		req, err := json.Marshal(map[string]any{"seq": from, "next_by_subj": subj})
		if err != nil {
			t.Fatal(err)
		}
		msg, err := b.Conn().Request(bus.DirectGetSubject(stream), req, 5*time.Second)
		if err != nil {
			return nil, fmt.Errorf("direct get via %s: %w", nd.Name(), err)
		}
		if status := msg.Header.Get("Status"); status == "404" {
			return ids, nil
		} else if status != "" {
			return nil, fmt.Errorf("direct get via %s: %s %s", nd.Name(), status, msg.Header.Get("Description"))
		}
		seq, err := strconv.ParseUint(msg.Header.Get("Nats-Sequence"), 10, 64)
		if err != nil {
			return nil, fmt.Errorf("direct get via %s: sequence: %w", nd.Name(), err)
		}
		var env pb.Envelope
		if err := proto.Unmarshal(msg.Data, &env); err != nil {
			return nil, fmt.Errorf("direct get via %s: envelope at %d: %w", nd.Name(), seq, err)
		}
		ids = append(ids, env.GetMessageId())
		from = seq + 1
	}
}

// everyReplicaHolds waits up to d until every node's replica of dev's inbox holds exactly the
// envelopes want, in order.
func everyReplicaHolds(t *testing.T, c *testcluster.Cluster, dev string, d time.Duration, want ...string) {
	t.Helper()
	testcluster.WaitFor(t, d, func() error {
		for _, nd := range c.Nodes() {
			got, err := replicaInbox(t, nd, dev)
			if err != nil {
				return err
			}
			if fmt.Sprint(got) != fmt.Sprint(want) {
				return fmt.Errorf("%s's replica holds %v, want %v", nd.Name(), got, want)
			}
		}
		return nil
	})
}

// A disappearing message stored for an offline device on an R3 inbox is deleted by the store on
// every replica at its expiry (JetStream's per-message TTL), with nobody reading it; a message
// without expiry sent at the same time stays. The device, connecting to another node afterwards,
// gets only that one.
func TestDisappearingExpiresOnEveryReplica(t *testing.T) {
	c := testcluster.Start(t, nodes, testcluster.Options{})
	n1, n2 := c.Node(0), c.Node(1)
	alice := testserver.NewAccount(t, n1.URL(), "alice").Primary
	bob := testserver.Dial(t, n2.URL())
	bob.MustRegister("bob")
	bobKey, bobDev := bob.AuthKey, bob.DeviceID
	bob.WS.Close(websocket.StatusNormalClosure, "")

	// Six seconds leave room for slow sends: under the full suite's load on 2 cores the two R3
	// sends have taken 2.1 s.
	expiry := time.Now().Add(6 * time.Second)
	for _, m := range []struct {
		id  string
		exp int64
	}{{"gone", expiry.UnixMilli()}, {"kept", 0}} {
		s := &pb.Send{MessageId: m.id, To: "bob", ExpiresAtMs: m.exp, Envelopes: []*pb.DeviceCiphertext{
			{DeviceId: bobDev, Type: pb.EnvelopeType_ENVELOPE_TYPE_MESSAGE, Ciphertext: []byte("body " + m.id)}}}
		if r := alice.Request(&pb.Frame{Body: &pb.Frame_Send{Send: s}}); r.GetSendResult().GetMessageId() != m.id {
			t.Fatalf("send %s on n1: %v", m.id, r)
		}
	}

	// Both are on every replica before the expiry: the deletion below is the store's, on each.
	if time.Until(expiry) < time.Second {
		t.Fatalf("the sends took until %s before the expiry: too slow to check the replicas first", time.Until(expiry))
	}
	everyReplicaHolds(t, c, bobDev, time.Until(expiry)-500*time.Millisecond, "gone", "kept")
	if time.Now().After(expiry) {
		t.Fatal("the replicas were checked after the expiry")
	}

	// After the expiry (the TTL is whole seconds, rounded up; the store expires on its own clock)
	// each replica holds only the message without expiry.
	everyReplicaHolds(t, c, bobDev, 15*time.Second, "kept")
	if time.Now().Before(expiry) {
		t.Fatal("the disappearing message left the replicas before its expiry")
	}
	t.Logf("gone from every replica %s after its expiry", time.Since(expiry).Round(10*time.Millisecond))

	// Bob connects to n2 (another node than the sender's) and is given only "kept".
	bob = testserver.Dial(t, n2.URL())
	if r := bob.Auth(bobKey); r.GetWelcome() == nil {
		t.Fatalf("bob's auth on n2: %v", r)
	}
	var got []*pb.Envelope
	for {
		f := bob.NextPush()
		if qe := f.GetQueueEmpty(); qe != nil {
			if qe.GetDelivered() != 1 {
				t.Fatalf("bob's QueueEmpty counts %d delivered, want 1", qe.GetDelivered())
			}
			break
		}
		if d := f.GetDeliver(); d != nil {
			got = append(got, d.GetEnvelope())
		}
	}
	if len(got) != 1 || got[0].GetMessageId() != "kept" || string(got[0].GetCiphertext()) != "body kept" || got[0].GetExpiresAtMs() != 0 {
		t.Fatalf("bob on n2 got %v, want only kept", got)
	}
}
