// Copyright 2026 The Petrel Authors
// SPDX-License-Identifier: Apache-2.0

package nodes

import (
	"context"
	"fmt"
	"io"
	"log/slog"
	"slices"
	"strings"
	"sync/atomic"
	"testing"
	"time"

	"github.com/nats-io/nats.go"

	"github.com/petrelchat/petrel/internal/bus"
)

func TestValidURL(t *testing.T) {
	for _, tc := range []struct {
		url  string
		want bool
	}{
		{"https://chat1.example:7443", true},
		{"http://127.0.0.1:7070", true},
		{"https://chat.example/", true},
		{"http://[::1]:7070", true},
		{"", false},
		{"chat.example:7443", false},
		{"ftp://chat.example", false},
		{"https://", false},
		{"https://chat.example/path", false},
		{"https://chat.example?x=1", false},
		{"https://u:p@chat.example", false},
		{"https://chat.example#frag", false},
		{"https://" + string(make([]byte, 300)), false},
	} {
		if got := ValidURL(tc.url); got != tc.want {
			t.Errorf("ValidURL(%q) = %v, want %v", tc.url, got, tc.want)
		}
	}
}

// waitURLs polls r until it returns want (announcements arrive on the subscription's goroutine;
// no event announces them to the test).
func waitURLs(t *testing.T, r *Registry, want ...string) {
	t.Helper()
	deadline := time.Now().Add(10 * time.Second)
	for {
		got := r.URLs()
		if slices.Equal(got, want) {
			return
		}
		if time.Now().After(deadline) {
			t.Fatalf("%s: URLs = %v, want %v", r.cfg.Node, got, want)
		}
		time.Sleep(10 * time.Millisecond) // polling, see above
	}
}

// registries opens a bus on a real embedded NATS server for the test and returns it with a
// function that starts a registry on it (interval an hour: only starts, answers and changes
// announce; clock nil: the real one), closed when the test ends.
func registries(t *testing.T, clock func() time.Time) (*bus.Bus, func(name, url string) *Registry) {
	t.Helper()
	quiet := slog.New(slog.NewTextHandler(io.Discard, nil))
	b, err := bus.Open(context.Background(), bus.Config{DataDir: t.TempDir(), InboxShards: 1, Logger: quiet})
	if err != nil {
		t.Fatal(err)
	}
	t.Cleanup(b.Close)
	return b, func(name, url string) *Registry {
		r := New(b.Conn(), Config{Subject: bus.NodesSubject, Node: name, Interval: time.Hour, Logger: quiet, Now: clock})
		if err := r.Start(url); err != nil {
			t.Fatal(err)
		}
		t.Cleanup(func() { r.Close(false) })
		return r
	}
}

// TestRegistry runs registries on a real embedded NATS server: a newcomer is answered at once (the
// interval is an hour, so only the start and the answer announce), a goodbye is honoured at once,
// invalid announcements are ignored, the set is bounded, and a silent node expires after three
// intervals.
func TestRegistry(t *testing.T) {
	var now atomic.Int64
	now.Store(time.Unix(1000, 0).UnixNano())
	b, newReg := registries(t, func() time.Time { return time.Unix(0, now.Load()) })
	const u1, u2 = "https://n1.example:7443", "https://n2.example:7443"
	r1 := newReg("n1", u1)
	r2 := newReg("n2", u2)
	waitURLs(t, r1, u1, u2)
	waitURLs(t, r2, u2, u1) // learned only from n1's answer

	r2.Close(true)
	waitURLs(t, r1, u1)

	// Invalid and oversized announcements are ignored; names past the bound too.
	nc := b.Conn()
	for _, raw := range []string{`{"node":"x","url":"ftp://x"}`, `{"node":"y"}`, `not json`,
		`{"node":"z","url":"https://z.example","pad":"` + strings.Repeat("a", maxAnnouncement) + `"}`} {
		if err := nc.Publish(bus.NodesSubject, []byte(raw)); err != nil {
			t.Fatal(err)
		}
	}
	for i := range 2 * MaxNodes {
		raw := fmt.Sprintf(`{"node":"f%02d","url":"https://f%02d.example"}`, i, i)
		if err := nc.Publish(bus.NodesSubject, []byte(raw)); err != nil {
			t.Fatal(err)
		}
	}
	// n1 keeps the first MaxNodes names it heard; it tells its own URL first.
	var want []string
	for i := range MaxNodes - 1 {
		want = append(want, fmt.Sprintf("https://f%02d.example", i))
	}
	waitURLs(t, r1, append([]string{u1}, want...)...)
	r1.mu.Lock()
	kept := len(r1.peers)
	_, bad := r1.peers["x"]
	_, big := r1.peers["z"]
	r1.mu.Unlock()
	if kept != MaxNodes || bad || big {
		t.Fatalf("n1 keeps %d nodes (x kept: %v, z kept: %v), want the bound %d and neither", kept, bad, big, MaxNodes)
	}

	// Silent for more than three intervals: expired.
	now.Add(int64(3*time.Hour + time.Second))
	if got := r1.URLs(); !slices.Equal(got, []string{u1}) {
		t.Fatalf("n1 after expiry: %v, want only itself", got)
	}
}

// waitSaid polls until r holds want as node's last word on its readiness (see waitURLs).
func waitSaid(t *testing.T, r *Registry, node string, want bool) {
	t.Helper()
	deadline := time.Now().Add(10 * time.Second)
	for {
		r.mu.Lock()
		s, ok := r.said[node]
		r.mu.Unlock()
		if ok && s.ready == want {
			return
		}
		if time.Now().After(deadline) {
			t.Fatalf("%s: %s's readiness = %v (known: %v), want %v", r.cfg.Node, node, s.ready, ok, want)
		}
		time.Sleep(10 * time.Millisecond) // polling, see waitURLs
	}
}

// TestServingPeersUnreachable: a node's readiness reaches the others at once when it changes; a
// node whose last word was that it serves counts as unreachable only when NATS answers "no
// responders" for its probe (its subscription is gone: cut off, or crashed without a goodbye),
// not while it is routed to but too slow to answer (a storm), nor once it said it was not ready;
// and only a majority of the serving nodes unreachable counts.
func TestServingPeersUnreachable(t *testing.T) {
	b, newReg := registries(t, nil)
	ctx := context.Background()
	r1 := newReg("n1", "https://n1.example:7443")
	if r1.ServingPeersUnreachable(ctx) {
		t.Fatal("n1 alone: no serving node to lose")
	}
	r2 := newReg("n2", "https://n2.example:7443")
	waitSaid(t, r1, "n2", true)
	if r1.ServingPeersUnreachable(ctx) {
		t.Fatal("n2 is routed to and answers: not unreachable")
	}
	r2.SetReady(false) // announced at once, not an interval later
	waitSaid(t, r1, "n2", false)
	r2.SetReady(true)
	waitSaid(t, r1, "n2", true)

	// n3 is routed to but does not answer its probe (too slow): reachable.
	nc := b.Conn()
	slow, err := nc.Subscribe(ProbeSubject(bus.NodesSubject, "n3"), func(*nats.Msg) {})
	if err != nil {
		t.Fatal(err)
	}
	defer slow.Unsubscribe()
	if err := nc.Publish(bus.NodesSubject, []byte(`{"node":"n3","url":"https://n3.example:7443"}`)); err != nil {
		t.Fatal(err)
	}
	waitSaid(t, r1, "n3", true)

	// n2 crashes (no goodbye): its probe has no responders, but that is one of the two serving.
	r2.Close(false)
	if r1.ServingPeersUnreachable(ctx) {
		t.Fatal("one of two serving nodes unreachable counts as most")
	}
	// n3 gone too: both unreachable.
	if err := slow.Unsubscribe(); err != nil {
		t.Fatal(err)
	}
	if !r1.ServingPeersUnreachable(ctx) {
		t.Fatal("every serving node unreachable: want true")
	}
	// A node that said it was not ready is not a serving node lost.
	if err := nc.Publish(bus.NodesSubject, []byte(`{"node":"n3","url":"https://n3.example:7443","unready":true}`)); err != nil {
		t.Fatal(err)
	}
	waitSaid(t, r1, "n3", false)
	if err := nc.Publish(bus.NodesSubject, []byte(`{"node":"n2","url":"https://n2.example:7443","unready":true}`)); err != nil {
		t.Fatal(err)
	}
	waitSaid(t, r1, "n2", false)
	if r1.ServingPeersUnreachable(ctx) {
		t.Fatal("no node said it serves: nothing lost")
	}
}
