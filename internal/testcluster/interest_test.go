// Copyright 2026 The Petrel Authors
// SPDX-License-Identifier: Apache-2.0

package testcluster_test

import (
	"fmt"
	"testing"
	"time"

	natsserver "github.com/nats-io/nats-server/v2/server"

	"github.com/petrelchat/petrel/internal/testcluster"
)

// TestRoutedServerWithoutMailboxHoldsNoConnect: a NATS server routed into the cluster with no
// Petrel mailbox on it (as a restarted node is while it catches up and runs its migrations) is
// not waited for. Before, every mailbox ping (which confirms a new connection's subscription on
// every node, and asks every node for its inbox replicas) waited its 2 s timeout for it, so each
// device connecting anywhere got its QueueEmpty 2–4 s late while a node restarted.
func TestRoutedServerWithoutMailboxHoldsNoConnect(t *testing.T) {
	c := testcluster.Start(t, nodes, testcluster.Options{})
	ns, err := natsserver.NewServer(&natsserver.Options{
		ServerName: "bare", Host: "127.0.0.1", Port: -1, NoLog: true, NoSigs: true,
		Cluster: natsserver.ClusterOpts{Name: "petrel-test", Host: "127.0.0.1", Port: -1},
		Routes:  natsserver.RoutesFromStr("nats://" + c.Node(0).ClusterAddr()),
	})
	if err != nil {
		t.Fatal(err)
	}
	ns.Start()
	t.Cleanup(ns.Shutdown)
	testcluster.WaitFor(t, failoverWait, func() error {
		for _, nd := range c.Nodes() {
			if n, _ := nd.Server().Bus().RoutedServers(); n < len(c.Nodes()) {
				return fmt.Errorf("%s routes to %d servers, want %d", nd.Name(), n, len(c.Nodes()))
			}
		}
		return nil
	})

	for i, nd := range c.Nodes() {
		d := startSDKDevice(t, fmt.Sprintf("dev%d", i), nd.URL())
		d.nextConnected()
		connected := time.Now()
		select {
		case <-d.queueEmpty:
		case <-time.After(failoverWait):
			t.Fatalf("%s: no QueueEmpty", nd.Name())
		}
		took := time.Since(connected)
		t.Logf("%s: served %s after connecting", nd.Name(), took.Round(time.Millisecond))
		if took >= 1500*time.Millisecond {
			t.Fatalf("%s: QueueEmpty %s after connecting: the pings waited for the server without a mailbox", nd.Name(), took)
		}
	}
}
