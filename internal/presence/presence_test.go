// Copyright 2026 The Petrel Authors
// SPDX-License-Identifier: Apache-2.0

package presence

import (
	"context"
	"fmt"
	"io"
	"log/slog"
	"runtime"
	"testing"
	"time"

	"github.com/petrelchat/petrel/internal/bus"
)

func openService(t testing.TB, cfg Config) *Service {
	t.Helper()
	quiet := slog.New(slog.NewTextHandler(io.Discard, nil))
	b, err := bus.Open(context.Background(), bus.Config{DataDir: t.TempDir(), InboxShards: 1, Logger: quiet})
	if err != nil {
		t.Fatal(err)
	}
	t.Cleanup(b.Close)
	cfg.Logger = quiet
	if cfg.Node == "" {
		cfg.Node = "n1"
	}
	s := New(b.Conn(), b.Settings, nil, cfg)
	if err := s.Start(); err != nil {
		t.Fatal(err)
	}
	t.Cleanup(s.Close)
	return s
}

// Memory per online account on a node (one device each: the worst case per device) stays small:
// the node keeps a count per account, nothing per connection. Logged for BENCHMARKS.md.
func TestMemoryPerOnlineAccount(t *testing.T) {
	if testing.Short() {
		t.Skip("allocates 100k accounts")
	}
	s := openService(t, Config{})
	const n = 100_000
	names := make([]string, n) // the connections hold their account names anyway
	for i := range names {
		names[i] = fmt.Sprintf("user%07d", i)
	}
	heap := func() uint64 {
		runtime.GC()
		var m runtime.MemStats
		runtime.ReadMemStats(&m)
		return m.HeapAlloc
	}
	s.publishPending()
	before := heap()
	for _, a := range names {
		s.Connected(a)
	}
	s.publishPending() // what waits to be published is not kept
	online := heap() - before
	for _, a := range names {
		s.Disconnected(a)
	}
	s.publishPending()
	seen := heap() - before
	perOnline, perSeen := float64(online)/n, float64(seen)/n
	t.Logf("presence memory: %.0f B per online account, %.0f B per last-seen entry (%d accounts)", perOnline, perSeen, n)
	if perOnline > 200 || perSeen > 200 {
		t.Fatalf("presence memory: %.0f B per online account, %.0f B per last-seen entry; want ≤ 200", perOnline, perSeen)
	}
	if s.Online(names[0]) || len(s.local) != 0 {
		t.Fatalf("%d accounts still online", len(s.local))
	}
}

// Last-seen times are bounded: the oldest are forgotten first.
func TestLastSeenBounded(t *testing.T) {
	s := openService(t, Config{MaxLastSeen: 100})
	for i := range 1000 {
		a := fmt.Sprintf("u%d", i)
		s.Connected(a)
		s.Disconnected(a)
	}
	s.mu.Lock()
	defer s.mu.Unlock()
	if len(s.lastSeen) != 100 {
		t.Fatalf("%d last-seen entries, want 100", len(s.lastSeen))
	}
	if _, ok := s.lastSeen["u999"]; !ok {
		t.Fatal("the newest last-seen entry was forgotten")
	}
	if _, ok := s.lastSeen["u0"]; ok {
		t.Fatal("the oldest last-seen entry was kept")
	}
	if len(s.seenFIFO) > 2*len(s.lastSeen)+1024 {
		t.Fatalf("eviction queue grew to %d", len(s.seenFIFO))
	}
}

// A transition batch or query answer with a sequence not above the last applied from that node is
// ignored, so a transition and an answer crossing on the bus cannot leave a stale state.
func TestStaleInfoIgnored(t *testing.T) {
	s := openService(t, Config{})
	w := &watch{account: "alice", nodes: map[string]nodeState{}, subs: map[*subscription]struct{}{}, settings: nil}
	s.mu.Lock()
	s.watched["alice"] = w
	s.mu.Unlock()
	s.apply("n2", []info{{seq: 10, online: true, account: "alice"}})
	s.apply("n2", []info{{seq: 9, online: false, account: "alice", lastSeen: time.Now().UnixMilli()}})
	s.mu.Lock()
	on := w.online()
	s.mu.Unlock()
	if !on {
		t.Fatal("an older offline line overrode a newer online one")
	}
	s.apply("n2", []info{{seq: 11, online: false, account: "alice", lastSeen: 120_000}})
	s.mu.Lock()
	on, seen := w.online(), w.lastSeen
	s.mu.Unlock()
	if on || seen != 120_000 {
		t.Fatalf("online %v, last seen %d after a newer offline line", on, seen)
	}
	if p := w.presence("bob"); p.GetLastSeenMs() != 120_000 {
		t.Fatalf("presence %v", p)
	}
}

func TestParseInfos(t *testing.T) {
	node, infos := parseInfos([]byte("n2\n5 1 alice 0\nbad line\n6 0 Bob 7\n7 0 carol 60001\n8 2 dave 0\n"))
	if node != "n2" || len(infos) != 2 || infos[0].account != "alice" || !infos[0].online || infos[1].lastSeen != 60001 {
		t.Fatalf("parsed %q %+v", node, infos)
	}
	if node, infos := parseInfos(nil); node != "" || infos != nil {
		t.Fatalf("empty: %q %v", node, infos)
	}
}
