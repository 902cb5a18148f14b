// Copyright 2026 The Petrel Authors
// SPDX-License-Identifier: Apache-2.0

package testcluster_test

import (
	"fmt"
	"io"
	"net/http"
	"os"
	"strings"
	"testing"
	"time"

	"github.com/petrelchat/petrel/internal/server"
	"github.com/petrelchat/petrel/internal/testcluster"
	"github.com/petrelchat/petrel/internal/testserver"
	pb "github.com/petrelchat/petrel/proto/petrel/v1"
)

// TestSecureRoutes runs a cluster as a deployment off loopback must: every route authenticated by
// the shared secret and mutual TLS, through the fault-injecting proxies. It forms, carries a live
// message across nodes, survives a partition and heals; a node restarted with another secret is
// refused by the others (each side logs why, the node logs that it waits for JetStream with the
// refusal) until it has the right one again. No log line and no metric carries the secret.
func TestSecureRoutes(t *testing.T) {
	logs := &syncBuffer{}
	c := testcluster.Start(t, nodes, testcluster.Options{Proxies: true, SecureRoutes: true, Log: logs})
	n1, n2, n3 := c.Node(0), c.Node(1), c.Node(2)
	if n := logs.count(`msg="cluster routes"`, "authenticated=true", "tls=true"); n != nodes {
		t.Fatalf("%d nodes logged secured routes, want %d", n, nodes)
	}

	// A live message from a device on n3 to one on n1.
	bob := testserver.Dial(t, n1.URL())
	bob.MustRegister("bob")
	if f := bob.NextPush(); f.GetQueueEmpty() == nil {
		t.Fatalf("bob: want QueueEmpty first, got %v", f)
	}
	alice := testserver.Dial(t, n3.URL())
	alice.MustRegister("alice")
	locate(t, c, n3, bob, "bob")
	got := make(chan *pb.Deliver, 1)
	go func() {
		f, err := bob.ReadErr(10 * time.Second)
		if err != nil {
			got <- nil
			return
		}
		d := f.GetDeliver()
		if d != nil {
			bob.Write(&pb.Frame{Body: &pb.Frame_DeliverAck{DeliverAck: &pb.DeliverAck{Tags: []uint64{d.GetTag()}}}})
		}
		got <- d
	}()
	if r := alice.Send("m1", "bob", []string{bob.DeviceID}, []byte("across")); r.GetSendResult().GetMessageId() != "m1" {
		t.Fatalf("want SendResult, got %v", r)
	}
	if d := <-got; d == nil || d.GetEnvelope().GetMessageId() != "m1" || string(d.GetEnvelope().GetCiphertext()) != "across" {
		t.Fatalf("bob got %v", d)
	}
	if v := metric(t, n3.AdminURL(), "petrel_mailbox_cross_node_deliveries_total"); v != 1 {
		t.Fatalf("n3 counted %v cross-node deliveries, want 1", v)
	}
	bob.WS.CloseNow()
	alice.WS.CloseNow()

	// Partition n1 and heal: the secured routes come back by themselves.
	c.Partition(t, 0)
	testcluster.WaitFor(t, partitionBound, func() error {
		if code, body := readyz(t, n1.URL()); code != http.StatusServiceUnavailable {
			return fmt.Errorf("n1 /readyz %d %q", code, body)
		}
		return nil
	})
	c.Heal(t, 0)
	testcluster.WaitFor(t, 2*partitionBound, func() error {
		if code, body := readyz(t, n1.URL()); code != http.StatusOK {
			return fmt.Errorf("n1 /readyz %d %q", code, body)
		}
		return nil
	})
	n1.WaitLeaders(t, partitionBound)
	carol := testserver.Dial(t, n1.URL())
	carol.MustRegister("carol")
	if r := carol.Send("c1", "bob", []string{bob.DeviceID}, []byte("healed")); r.GetSendResult() == nil {
		t.Fatalf("send through n1 after the heal: %v", r)
	}

	// n3 with another secret: the others refuse its routes and it refuses theirs.
	secret, err := os.ReadFile(c.TokenFile())
	if err != nil {
		t.Fatal(err)
	}
	wrong := testcluster.WriteSecret(t)
	wrongSecret, err := os.ReadFile(wrong)
	if err != nil {
		t.Fatal(err)
	}
	n3.Stop()
	n3.Configure(func(cfg *server.Config) { cfg.ClusterTokenFile = wrong })
	n3.Launch(t)
	testcluster.WaitFor(t, 30*time.Second, func() error {
		for _, want := range [][]string{
			{"node=n3", "cluster route refused for authentication: it presented a wrong cluster secret"},
			{"node=n3", "cluster route refused by the peer for authentication"},
			{"node=n1", "cluster route refused for authentication: it presented a wrong cluster secret"},
			{"node=n2", "cluster route refused for authentication: it presented a wrong cluster secret"},
			{"node=n3", "waiting for jetstream", "last_route_refusal="},
		} {
			if logs.count(want...) == 0 {
				return fmt.Errorf("no log line with %q", want)
			}
		}
		return nil
	})
	if v := metric(t, n1.AdminURL(), `petrel_cluster_route_refusals_total{reason="auth"}`); v < 1 {
		t.Fatalf("n1 petrel_cluster_route_refusals_total{reason=auth} = %v", v)
	}
	for _, nd := range []*testcluster.Node{n1, n2} {
		if n, _ := nd.Server().Bus().RoutedServers(); n != 1 {
			t.Fatalf("%s routes to %d servers while n3 has another secret, want 1", nd.Name(), n)
		}
	}
	n3.Stop()

	// With the right secret again it rejoins.
	n3.Configure(func(cfg *server.Config) { cfg.ClusterTokenFile = c.TokenFile() })
	n3.Restart(t)
	n3.WaitLeaders(t, partitionBound)

	for _, s := range [][]byte{secret, wrongSecret} {
		s := strings.TrimSpace(string(s))
		if logs.count(s) != 0 {
			t.Fatal("a log line carries a cluster secret")
		}
		for _, nd := range c.Nodes() {
			resp, err := http.Get(nd.AdminURL() + "/metrics")
			if err != nil {
				t.Fatal(err)
			}
			body, _ := io.ReadAll(resp.Body)
			resp.Body.Close()
			if strings.Contains(string(body), s) {
				t.Fatalf("%s /metrics carries a cluster secret", nd.Name())
			}
		}
	}
}
