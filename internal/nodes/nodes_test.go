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

// TestRegistry runs registries on a real embedded NATS server: a newcomer is answered at once (the
// interval is an hour, so only the start and the answer announce), a goodbye is honoured at once,
// invalid announcements are ignored, the set is bounded, and a silent node expires after three
// intervals.
func TestRegistry(t *testing.T) {
	quiet := slog.New(slog.NewTextHandler(io.Discard, nil))
	b, err := bus.Open(context.Background(), bus.Config{DataDir: t.TempDir(), InboxShards: 1, Logger: quiet})
	if err != nil {
		t.Fatal(err)
	}
	defer b.Close()
	var now atomic.Int64
	now.Store(time.Unix(1000, 0).UnixNano())
	clock := func() time.Time { return time.Unix(0, now.Load()) }
	newReg := func(name, url string) *Registry {
		r := New(b.Conn(), Config{Subject: bus.NodesSubject, Node: name, Interval: time.Hour, Logger: quiet, Now: clock})
		if err := r.Start(url); err != nil {
			t.Fatal(err)
		}
		t.Cleanup(func() { r.Close(false) })
		return r
	}
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

// waitReadyPeer polls r until ReadyPeer reports want (see waitURLs).
func waitReadyPeer(t *testing.T, r *Registry, want bool) {
	t.Helper()
	deadline := time.Now().Add(10 * time.Second)
	for r.ReadyPeer() != want {
		if time.Now().After(deadline) {
			t.Fatalf("%s: ReadyPeer = %v, want %v", r.cfg.Node, !want, want)
		}
		time.Sleep(10 * time.Millisecond) // polling, see waitURLs
	}
}

// TestReadyPeer: a node's readiness reaches the others at once when it changes, outlives its URL
// (a node cut off from the others still knows they were serving when it lost them) and expires
// after readyTTL intervals; a goodbye withdraws it. A node counts only the others, never itself.
func TestReadyPeer(t *testing.T) {
	quiet := slog.New(slog.NewTextHandler(io.Discard, nil))
	b, err := bus.Open(context.Background(), bus.Config{DataDir: t.TempDir(), InboxShards: 1, Logger: quiet})
	if err != nil {
		t.Fatal(err)
	}
	defer b.Close()
	var now atomic.Int64
	now.Store(time.Unix(1000, 0).UnixNano())
	clock := func() time.Time { return time.Unix(0, now.Load()) }
	newReg := func(name, url string) *Registry {
		r := New(b.Conn(), Config{Subject: bus.NodesSubject, Node: name, Interval: time.Hour, Logger: quiet, Now: clock})
		if err := r.Start(url); err != nil {
			t.Fatal(err)
		}
		t.Cleanup(func() { r.Close(false) })
		return r
	}
	const u1, u2 = "https://n1.example:7443", "https://n2.example:7443"
	r1 := newReg("n1", u1)
	if r1.ReadyPeer() {
		t.Fatal("n1 alone counts a ready peer: itself?")
	}
	r2 := newReg("n2", u2)
	waitReadyPeer(t, r1, true)
	waitReadyPeer(t, r2, true)

	r2.SetReady(false) // announced at once, not an interval later
	waitReadyPeer(t, r1, false)
	if !r2.ReadyPeer() {
		t.Fatal("n2's own readiness changed what it knows of n1")
	}
	r2.SetReady(true)
	waitReadyPeer(t, r1, true)

	// Past the URL's expiry (3 intervals) n2's last word still counts; past readyTTL it does not.
	now.Add(int64(4 * time.Hour))
	if got := r1.URLs(); !slices.Equal(got, []string{u1}) {
		t.Fatalf("n1 after the URL expiry: %v, want only itself", got)
	}
	if !r1.ReadyPeer() {
		t.Fatal("n2's readiness expired with its URL")
	}
	now.Add(int64((readyTTL-4)*time.Hour + time.Second))
	if r1.ReadyPeer() {
		t.Fatal("n2's readiness counts after readyTTL")
	}

	// A goodbye withdraws it at once.
	r2.SetReady(false)
	r2.SetReady(true) // a fresh word: ready again
	waitReadyPeer(t, r1, true)
	r2.Close(true)
	waitReadyPeer(t, r1, false)
}
