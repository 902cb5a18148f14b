// Copyright 2026 The Petrel Authors
// SPDX-License-Identifier: Apache-2.0

package testcluster_test

import (
	"context"
	"fmt"
	"os"
	"path/filepath"
	"strings"
	"testing"
	"time"

	"github.com/petrelchat/petrel/internal/bus"
	"github.com/petrelchat/petrel/internal/server"
	"github.com/petrelchat/petrel/internal/testcluster"
	"github.com/petrelchat/petrel/internal/testserver"
	pb "github.com/petrelchat/petrel/proto/petrel/v1"
)

// TestGrowSingleNode follows README's procedure: a single node with accounts, prekeys and stored
// envelopes is stopped and restarted with cluster settings beside two fresh nodes. Every stream
// and bucket ends up R3 on all three, every stored envelope is delivered exactly once and in
// order, every unclaimed prekey can be claimed once, and a kill of the original node afterwards
// loses nothing.
func TestGrowSingleNode(t *testing.T) {
	// n1 takes the default node name (host name and <data>/node.id), as a deployment does.
	c := testcluster.StartSingle(t, testcluster.Options{Config: func(i int, c *server.Config) {
		if i == 0 {
			c.Node = ""
		}
	}})
	n1 := c.Node(0)
	nodeID := readFile(t, filepath.Join(n1.DataDir(), server.NodeIDFile))
	token := readFile(t, filepath.Join(n1.DataDir(), server.AdminTokenFile))

	alice := testserver.Dial(t, n1.URL())
	alice.MustRegister("alice")
	recipients := map[string]*testserver.RawClient{}
	for _, name := range []string{"bob", "carol"} {
		r := testserver.Dial(t, n1.URL())
		r.MustRegister(name) // 5 one-time prekeys of each kind
		r.WS.CloseNow()
		recipients[name] = r
		testcluster.WaitFor(t, 10*time.Second, func() error {
			if attached, _ := n1.Server().Mailbox().Attached(r.DeviceID); attached {
				return fmt.Errorf("n1 still sees %s attached", name)
			}
			return nil
		})
	}
	// One of bob's one-time prekeys is claimed before the grow: it must not come back.
	claimed := claimPreKey(t, alice, "bob")
	if claimed == 0 {
		t.Fatal("no one-time prekey for bob before the grow")
	}
	const perRecipient = 40
	for name, r := range recipients {
		for i := range perRecipient {
			id := fmt.Sprintf("%s-%03d", name, i)
			if res := alice.Send(id, name, []string{r.DeviceID}, []byte(id)); res.GetSendResult().GetMessageId() != id {
				t.Fatalf("send %s: %v", id, res)
			}
		}
	}
	alice.WS.CloseNow()

	c.Grow(t, nodes)

	if got := readFile(t, filepath.Join(n1.DataDir(), server.NodeIDFile)); got != nodeID {
		t.Fatalf("node.id changed from %q to %q", nodeID, got)
	}
	if got := readFile(t, filepath.Join(n1.DataDir(), server.AdminTokenFile)); got != token {
		t.Fatal("the admin token changed")
	}
	if _, err := os.Stat(filepath.Join(n1.DataDir(), bus.SingleNodeDir)); !os.IsNotExist(err) {
		t.Fatalf("%s is still there after the grow (%v)", bus.SingleNodeDir, err)
	}
	if _, err := os.Stat(filepath.Join(n1.DataDir(), bus.ImportedDir)); err != nil {
		t.Fatalf("no backup of the single-node store: %v", err)
	}
	checkR3(t, c)

	// Bob drains through n2, then the original node dies; carol drains through n3.
	expectExactlyOnce(t, authRetry(t, c.Node(1).URL(), recipients["bob"].AuthKey), "bob", perRecipient)
	n1.Kill()
	c.Node(2).WaitLeaders(t, 20*time.Second)
	expectExactlyOnce(t, authRetry(t, c.Node(2).URL(), recipients["carol"].AuthKey), "carol", perRecipient)

	// Alice's account survives, and bob's remaining four one-time prekeys, each claimable once
	// (by new accounts: a device asking again for a bundle within bundle_cache_ttl claims none).
	authRetry(t, c.Node(1).URL(), alice.AuthKey)
	seen := map[uint32]bool{claimed: true}
	for i := range 5 {
		claimer := testserver.Dial(t, c.Node(1).URL())
		claimer.MustRegister(fmt.Sprintf("claimer%d", i))
		id := claimPreKey(t, claimer, "bob")
		switch {
		case i == 4 && id != 0:
			t.Fatalf("a sixth one-time prekey %d: a prekey was copied twice", id)
		case i < 4 && (id == 0 || seen[id]):
			t.Fatalf("claimed one-time prekey %d after the grow: claimed before, or none (seen %v)", id, seen)
		}
		seen[id] = true
	}
}

// checkR3 waits until every stream and bucket is R3 with a leader and two current replicas, and
// holds on every node.
func checkR3(t *testing.T, c *testcluster.Cluster) {
	t.Helper()
	js := c.Node(1).Server().Bus().JS()
	names := []string{bus.PreKeysStream, "KV_" + bus.AccountsBucket, "KV_" + bus.DevicesBucket, "KV_" + bus.InvitesBucket, "KV_" + bus.MetaBucket}
	for i := range 4 {
		names = append(names, bus.InboxStreamName(i))
	}
	for _, name := range names {
		testcluster.WaitFor(t, 20*time.Second, func() error {
			ctx, cancel := context.WithTimeout(context.Background(), 5*time.Second)
			defer cancel()
			s, err := js.Stream(ctx, name)
			if err != nil {
				return err
			}
			info, err := s.Info(ctx)
			if err != nil {
				return err
			}
			if info.Config.Replicas != 3 {
				t.Fatalf("%s: R%d after the grow, want R3", name, info.Config.Replicas)
			}
			if info.Cluster == nil || info.Cluster.Leader == "" || len(info.Cluster.Replicas) != 2 {
				return fmt.Errorf("%s: cluster %+v, want a leader and 2 replicas", name, info.Cluster)
			}
			for _, r := range info.Cluster.Replicas {
				if !r.Current {
					return fmt.Errorf("%s: replica %s not current", name, r.Name)
				}
			}
			return nil
		})
	}
}

// expectExactlyOnce reads deliveries until QueueEmpty, acking each, and checks that they are
// name-000 … name-(n-1), in order, once each.
func expectExactlyOnce(t *testing.T, c *testserver.RawClient, name string, n int) {
	t.Helper()
	var got []string
	for {
		f, err := c.ReadErr(30 * time.Second)
		if err != nil {
			t.Fatalf("%s: %v (got %d deliveries)", name, err, len(got))
		}
		if d := f.GetDeliver(); d != nil {
			got = append(got, d.GetEnvelope().GetMessageId())
			c.Write(&pb.Frame{Body: &pb.Frame_DeliverAck{DeliverAck: &pb.DeliverAck{Tags: []uint64{d.GetTag()}}}})
			continue
		}
		if f.GetQueueEmpty() != nil {
			break
		}
		t.Fatalf("%s: unexpected %v", name, f)
	}
	if len(got) != n {
		t.Fatalf("%s: %d deliveries, want %d: %v", name, len(got), n, got)
	}
	for i, id := range got {
		if want := fmt.Sprintf("%s-%03d", name, i); id != want {
			t.Fatalf("%s: delivery %d is %s, want %s (all: %v)", name, i, id, want, got)
		}
	}
}

// claimPreKey fetches name's bundle (claiming one one-time prekey) and returns the one-time
// prekey's id, 0 when none was left.
func claimPreKey(t *testing.T, c *testserver.RawClient, name string) uint32 {
	t.Helper()
	r := c.Request(&pb.Frame{Body: &pb.Frame_GetBundle{GetBundle: &pb.GetBundle{Name: name}}})
	devs := r.GetBundleResult().GetDevices()
	if len(devs) != 1 {
		t.Fatalf("bundle of %s: %v", name, r)
	}
	return devs[0].GetOneTimePrekey().GetId()
}

func readFile(t *testing.T, path string) string {
	t.Helper()
	b, err := os.ReadFile(path)
	if err != nil {
		t.Fatal(err)
	}
	return string(b)
}

// TestScaleUpReplicas: a cluster that ran with replicas = 1 is restarted with replicas = 3; the
// migrations scale every stream and bucket up, stored envelopes are delivered exactly once, and
// the loss of any one node afterwards loses nothing.
func TestScaleUpReplicas(t *testing.T) {
	c := testcluster.Start(t, nodes, testcluster.Options{Config: func(_ int, c *server.Config) { c.Replicas = 1 }})
	alice := testserver.Dial(t, c.Node(0).URL())
	alice.MustRegister("alice")
	bob := testserver.Dial(t, c.Node(0).URL())
	bob.MustRegister("bob")
	bob.WS.CloseNow()
	testcluster.WaitFor(t, 10*time.Second, func() error {
		for _, nd := range c.Nodes() {
			if attached, _ := nd.Server().Mailbox().Attached(bob.DeviceID); attached {
				return fmt.Errorf("%s still sees bob attached", nd.Name())
			}
		}
		return nil
	})
	const n = 30
	for i := range n {
		id := fmt.Sprintf("bob-%03d", i)
		if res := alice.Send(id, "bob", []string{bob.DeviceID}, []byte(id)); res.GetSendResult().GetMessageId() != id {
			t.Fatalf("send %s: %v", id, res)
		}
	}
	alice.WS.CloseNow()

	// Which node holds bob's R1 inbox: after the scale-up its loss must not matter.
	ctx, cancel := context.WithTimeout(context.Background(), 10*time.Second)
	defer cancel()
	b := c.Node(0).Server().Bus()
	s, err := b.JS().Stream(ctx, bus.InboxStreamName(b.Shard(bob.DeviceID)))
	if err != nil {
		t.Fatal(err)
	}
	holder := s.CachedInfo().Cluster.Leader

	for _, nd := range c.Nodes() {
		nd.Configure(func(c *server.Config) { c.Replicas = 3 })
	}
	c.RestartAll(t)
	checkR3(t, c)
	for i, nd := range c.Nodes() {
		if nd.Name() == holder {
			nd.Kill()
			c.Node((i+1)%nodes).WaitLeaders(t, 20*time.Second)
			expectExactlyOnce(t, authRetry(t, c.Node((i+1)%nodes).URL(), bob.AuthKey), "bob", n)
			return
		}
	}
	t.Fatalf("bob's inbox was led by %q, not one of the nodes", holder)
}

// TestGrowRefusals: what cannot work is refused at start with an error that says what to do, and
// the cluster keeps serving.
func TestGrowRefusals(t *testing.T) {
	c := testcluster.Start(t, nodes, testcluster.Options{})
	n3 := c.Node(2)
	n3.Stop()
	settings := n3.Server().Config().ClusterSection

	// A cluster node's store started without cluster settings would serve a stale copy.
	n3.Configure(func(cfg *server.Config) { cfg.ClusterSection = server.ClusterSection{} })
	err := n3.StartErr(t)
	if err == nil || !strings.Contains(err.Error(), "cluster node's store") || !strings.Contains(err.Error(), "cluster_listen and peers") {
		t.Fatalf("a cluster store started alone: want a refusal, got %v", err)
	}

	// A single-node store cannot join a cluster that already holds a deployment.
	single := testcluster.StartSingle(t, testcluster.Options{})
	r := testserver.Dial(t, single.Node(0).URL())
	r.MustRegister("zoe")
	single.Stop()
	n3.Configure(func(cfg *server.Config) {
		cfg.Data = single.Node(0).DataDir()
		cfg.ClusterSection = settings
	})
	err = n3.StartErr(t)
	if err == nil || !strings.Contains(err.Error(), "cannot join a cluster that already holds a deployment") {
		t.Fatalf("a single-node store joining a deployment: want a refusal, got %v", err)
	}
	if _, err := os.Stat(filepath.Join(single.Node(0).DataDir(), bus.SingleNodeDir)); err != nil {
		t.Fatalf("the refused store is not kept aside: %v", err)
	}

	// The cluster still serves, with two nodes.
	c.Node(0).WaitLeaders(t, 20*time.Second)
	ok := testserver.Dial(t, c.Node(0).URL())
	ok.MustRegister("yann")
}
