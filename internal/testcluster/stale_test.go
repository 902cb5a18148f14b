// Copyright 2026 The Petrel Authors
// SPDX-License-Identifier: Apache-2.0

package testcluster_test

import (
	"fmt"
	"testing"
	"time"

	"github.com/petrelchat/petrel/internal/server"
	"github.com/petrelchat/petrel/internal/testcluster"
	"github.com/petrelchat/petrel/internal/testserver"
	pb "github.com/petrelchat/petrel/proto/petrel/v1"
)

// TestStoredWhileOnlineAcrossNodes: an envelope a connected device does not ack in time is stored
// by the sender's node, and the wake-up makes the device's node read it from the (replicated)
// inbox and push it again, whichever node leads that inbox's stream.
func TestStoredWhileOnlineAcrossNodes(t *testing.T) {
	c := testcluster.Start(t, nodes, testcluster.Options{Config: func(_ int, cfg *server.Config) {
		cfg.LiveAckTimeout.Duration = 200 * time.Millisecond
	}})
	a, cNode := c.Node(0), c.Node(2)
	alice := testserver.Dial(t, cNode.URL())
	alice.MustRegister("alice")
	for i := range 6 {
		name := fmt.Sprintf("bob%d", i)
		bob := testserver.Dial(t, a.URL())
		bob.MustRegister(name)
		if f := bob.NextPush(); f.GetQueueEmpty() == nil {
			t.Fatalf("%s: want QueueEmpty first, got %v", name, f)
		}
		locate(t, c, cNode, bob, name)
		// Bob does not ack the live push: after live_ack_timeout alice's node stores it.
		if r := alice.Send("m-"+name, name, []string{bob.DeviceID}, []byte("x")); r.GetSendResult() == nil {
			t.Fatalf("%s: want SendResult, got %v", name, r)
		}
		var tags []uint64
		for len(tags) < 2 {
			f, err := bob.ReadErr(5 * time.Second)
			if err != nil {
				t.Fatalf("%s (shard %d): got %d deliveries, want the live one and the stored one: %v", name, a.Server().Bus().Shard(bob.DeviceID), len(tags), err)
			}
			if d := f.GetDeliver(); d != nil {
				if d.GetEnvelope().GetMessageId() != "m-"+name {
					t.Fatalf("%s: got %v", name, d)
				}
				tags = append(tags, d.GetTag())
			}
		}
		bob.Write(&pb.Frame{Body: &pb.Frame_DeliverAck{DeliverAck: &pb.DeliverAck{Tags: tags}}})
	}
}
