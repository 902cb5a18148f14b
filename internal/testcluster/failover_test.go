// Copyright 2026 The Petrel Authors
// SPDX-License-Identifier: Apache-2.0

package testcluster_test

import (
	"context"
	"fmt"
	"slices"
	"sync"
	"testing"
	"time"

	"github.com/petrelchat/petrel/client"
	"github.com/petrelchat/petrel/client/store"
	"github.com/petrelchat/petrel/internal/testcluster"
)

// failoverWait bounds each wait of the failover tests.
const failoverWait = 20 * time.Second

// sdkDevice is a device run by the real SDK (client.Client), its events sorted into channels.
type sdkDevice struct {
	t         *testing.T
	c         *client.Client
	connected chan *client.Connected
	msgs      chan *client.Message
	delivered chan *client.Delivered
	reads     chan *client.Read
	// queueEmpty gets each QueueEmpty (served: the stored backlog is in).
	queueEmpty chan *client.QueueEmpty
	stop       func() // closes the client and waits for it; idempotent (also run when t ends)
}

// startSDKDevice registers name through urls (tried in turn) and runs its client.
func startSDKDevice(t *testing.T, name string, urls ...string) *sdkDevice {
	t.Helper()
	return runSDKDevice(t, name, registerSDKDevice(t, name, urls...))
}

// registerSDKDevice registers name through urls (tried in turn) into a new client store.
func registerSDKDevice(t *testing.T, name string, urls ...string) *store.Store {
	t.Helper()
	st, err := store.Open(t.TempDir(), store.Options{NoSync: true})
	if err != nil {
		t.Fatal(err)
	}
	t.Cleanup(func() { st.Close() })
	ctx, cancel := context.WithTimeout(context.Background(), failoverWait)
	defer cancel()
	// A node whose streams are electing leaders answers UNAVAILABLE: try again, as a user would.
	testcluster.WaitFor(t, failoverWait, func() error {
		_, err := client.Register(ctx, st, client.RegisterOptions{ServerURL: urls[0], ServerURLs: urls[1:], Name: name, PreKeys: 10})
		return err
	})
	return st
}

// runSDKDevice runs a client on the registered store st until stop or the end of the test.
func runSDKDevice(t *testing.T, name string, st *store.Store) *sdkDevice {
	t.Helper()
	events := make(chan client.Event)
	d := &sdkDevice{t: t, connected: make(chan *client.Connected, 100), msgs: make(chan *client.Message, 100),
		delivered: make(chan *client.Delivered, 100), reads: make(chan *client.Read, 100), queueEmpty: make(chan *client.QueueEmpty, 100)}
	var err error
	d.c, err = client.Open(client.Config{Store: st, Events: events,
		ReconnectBase: 20 * time.Millisecond, ReconnectMax: 500 * time.Millisecond})
	if err != nil {
		t.Fatal(err)
	}
	collected := make(chan struct{})
	go func() {
		defer close(collected)
		for ev := range events {
			switch ev := ev.(type) {
			case *client.Connected:
				d.connected <- ev
			case *client.Message:
				d.msgs <- ev
			case *client.Delivered:
				d.delivered <- ev
			case *client.Read:
				d.reads <- ev
			case *client.QueueEmpty:
				d.queueEmpty <- ev
			}
		}
	}()
	runErr := make(chan error, 1)
	go func() { runErr <- d.c.Run(context.Background()) }()
	var once sync.Once
	d.stop = func() {
		once.Do(func() {
			d.c.Close()
			if err := <-runErr; err != nil {
				t.Errorf("%s: Run: %v", name, err)
			}
			close(events)
			<-collected
		})
	}
	t.Cleanup(d.stop)
	return d
}

// nextConnected waits for the next connection and returns the URL it went to.
func (d *sdkDevice) nextConnected() string {
	d.t.Helper()
	select {
	case ev := <-d.connected:
		return ev.Server
	case <-time.After(failoverWait):
		d.t.Fatalf("no connection within %s (last error: %v)", failoverWait, d.c.LastError())
		return ""
	}
}

// waitNodesKnown waits until node i tells clients every node's URL.
func waitNodesKnown(t *testing.T, c *testcluster.Cluster, i int) {
	t.Helper()
	var want []string
	for _, nd := range c.Nodes() {
		want = append(want, nd.URL())
	}
	testcluster.WaitFor(t, failoverWait, func() error {
		got := c.Node(i).Server().Nodes()
		for _, u := range want {
			if !slices.Contains(got, u) {
				return fmt.Errorf("%s tells clients %v, lacks %s", c.Node(i).Name(), got, u)
			}
		}
		return nil
	})
}

// failover runs the shared shape: bob, configured with n1 only, learns n2 and n3 from Welcome;
// stopNode takes n1 away; bob reconnects to another node by himself (which counts a failover for
// reason), and a message alice sends through n3 reaches him exactly once.
func failover(t *testing.T, reason string, stopNode func(c *testcluster.Cluster)) *testcluster.Cluster {
	c := testcluster.Start(t, nodes, testcluster.Options{})
	n1, n3 := c.Node(0), c.Node(2)
	waitNodesKnown(t, c, 0)

	bob := startSDKDevice(t, "bob", n1.URL())
	if got := bob.nextConnected(); got != n1.URL() {
		t.Fatalf("bob connected to %s, want n1 %s", got, n1.URL())
	}
	servers := bob.c.Account().Servers
	for _, nd := range c.Nodes() {
		if !slices.Contains(servers, nd.URL()) {
			t.Fatalf("bob's servers %v lack %s (%s): not learned from Welcome", servers, nd.Name(), nd.URL())
		}
	}
	alice := startSDKDevice(t, "alice", n3.URL())
	alice.nextConnected()

	start := time.Now()
	stopNode(c)
	moved := bob.nextConnected()
	took := time.Since(start)
	if moved == n1.URL() {
		t.Fatalf("bob reconnected to the stopped n1")
	}
	t.Logf("bob moved to %s in %s", moved, took.Round(time.Millisecond))
	if took > 10*time.Second {
		t.Fatalf("bob took %s to move, want a few seconds", took)
	}
	for _, nd := range c.Nodes() {
		if nd.URL() != moved {
			continue
		}
		// The reason is the client's view: after a drain's GoAway the connection may also be seen
		// to break first ("lost"); a kill never sends a GoAway.
		got := metricOr0(t, nd.AdminURL(), `petrel_gateway_failovers_total{reason="lost"}`) +
			metricOr0(t, nd.AdminURL(), `petrel_gateway_failovers_total{reason="goaway"}`)
		if got != 1 || (reason == "lost" && metricOr0(t, nd.AdminURL(), `petrel_gateway_failovers_total{reason="goaway"}`) != 0) {
			t.Fatalf("%s counted %v failovers, want 1 (%s)", nd.Name(), got, reason)
		}
		if got := metric(t, nd.AdminURL(), "petrel_gateway_failover_seconds_count"); got != 1 {
			t.Fatalf("%s observed %v failover durations, want 1", nd.Name(), got)
		}
	}

	n3.WaitLeaders(t, failoverWait)
	ctx, cancel := context.WithTimeout(context.Background(), failoverWait)
	defer cancel()
	id, err := alice.c.Send(ctx, "bob", "after failover")
	if err != nil {
		t.Fatalf("alice: send: %v", err)
	}
	select {
	case m := <-bob.msgs:
		if m.ID != id || m.From != "alice" || m.Text != "after failover" {
			t.Fatalf("bob got %s from %s: %q", m.ID, m.From, m.Text)
		}
	case <-time.After(failoverWait):
		t.Fatalf("bob got no message within %s", failoverWait)
	}
	// Bob's receipt reached alice: anything he were to be shown twice would have come before it.
	select {
	case d := <-alice.delivered:
		if d.MessageID != id {
			t.Fatalf("alice: delivered %s, want %s", d.MessageID, id)
		}
	case <-time.After(failoverWait):
		t.Fatalf("alice: no delivery receipt within %s", failoverWait)
	}
	select {
	case m := <-bob.msgs:
		t.Fatalf("bob shown a second message %s: %q", m.ID, m.Text)
	default:
	}
	return c
}

// TestClientFailsOverOnKill: n1 is killed (no GoAway, sockets cut); bob moves by himself.
func TestClientFailsOverOnKill(t *testing.T) {
	failover(t, "lost", func(c *testcluster.Cluster) { c.Node(0).Kill() })
}

// TestClientFailsOverOnDrain: n1 drains (GoAway); bob moves, and the nodes that stay stop
// telling clients about n1 at once (its goodbye), not only after its announcements expire.
func TestClientFailsOverOnDrain(t *testing.T) {
	c := failover(t, "goaway", func(c *testcluster.Cluster) { c.Node(0).Stop() })
	gone := c.Node(0).URL()
	for _, i := range []int{1, 2} {
		if got := c.Node(i).Server().Nodes(); slices.Contains(got, gone) {
			t.Fatalf("%s still tells clients %v after n1 left", c.Node(i).Name(), got)
		}
	}
}
