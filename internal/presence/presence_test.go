// Copyright 2026 The Petrel Authors
// SPDX-License-Identifier: Apache-2.0

package presence

import (
	"context"
	"fmt"
	"io"
	"log/slog"
	"runtime"
	"slices"
	"testing"
	"time"

	"github.com/prometheus/client_golang/prometheus"
	dto "github.com/prometheus/client_model/go"
	"google.golang.org/protobuf/proto"

	"github.com/petrelchat/petrel/internal/bus"
	pb "github.com/petrelchat/petrel/proto/petrel/v1"
)

func openService(t testing.TB, cfg Config) *Service {
	t.Helper()
	quiet := slog.New(slog.NewTextHandler(io.Discard, nil))
	b, err := bus.Open(context.Background(), bus.Config{DataDir: t.TempDir(), InboxShards: 1, Logger: quiet})
	if err != nil {
		t.Fatal(err)
	}
	t.Cleanup(b.Close)
	return startService(t, b, cfg)
}

// startService starts a service on b (several may share one bus: each is a node).
func startService(t testing.TB, b *bus.Bus, cfg Config) *Service {
	t.Helper()
	cfg.Logger = slog.New(slog.NewTextHandler(io.Discard, nil))
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

// recorder is a Watcher that hands its pushes to a channel.
type recorder chan *pb.Presence

func (r recorder) PresenceChanged(p *pb.Presence) { r <- p }

// watchFor makes s watch account for a ready subscriber with the default settings (EVERYONE).
func watchFor(s *Service, account string, w Watcher) {
	s.mu.Lock()
	defer s.mu.Unlock()
	sub := &subscription{w: w, asker: "bob", accounts: []string{account}, ready: true}
	wt := &watch{account: account, nodes: map[string]nodeState{}, subs: map[*subscription]struct{}{sub: {}}}
	wt.setSettings(nil)
	s.watched[account] = wt
	s.watchers[w] = sub
}

func counterValue(c prometheus.Counter) float64 {
	var m dto.Metric
	_ = c.Write(&m)
	return m.GetCounter().GetValue()
}

func nextState(t *testing.T, r recorder) pb.PresenceState {
	t.Helper()
	select {
	case p := <-r:
		return p.GetState()
	case <-time.After(10 * time.Second):
		t.Fatal("no presence push within 10 s")
		return 0
	}
}

// A node declares another gone only for silence it could have heard: the 3 intervals are
// counted up to when it last heard its own heartbeat, so a node whose own deliveries stall
// declares nobody gone.
func TestOwnStallDeclaresNobodyGone(t *testing.T) {
	s := openService(t, Config{HeartbeatInterval: time.Second})
	s.mu.Lock() // held throughout: the heartbeat loop waits
	defer s.mu.Unlock()
	s.nodes = map[string]int64{"n2": 10_000, "n3": 1_000}
	s.selfSeen = 0
	if n, _ := s.silentLocked(); len(n) != 0 {
		t.Fatalf("gone before this node heard itself: %v", n)
	}
	// This node's own heartbeats stalled as long as n2's (the clock is far past both): n2's
	// silence is not known; n3 was silent for 9 s while this node heard itself.
	s.selfSeen = 10_500
	if n, _ := s.silentLocked(); !slices.Equal(n, []string{"n3"}) {
		t.Fatalf("gone while this node's own heartbeats stalled: %v, want only n3", n)
	}
	s.selfSeen = 13_500 // heard itself 3.5 intervals after n2's last: n2 is gone, n3 was already
	n, at := s.silentLocked()
	slices.Sort(n)
	if !slices.Equal(n, []string{"n2", "n3"}) || len(at) != 2 {
		t.Fatalf("gone: %v %v, want n2 and n3", n, at)
	}
}

// A node declared gone for late heartbeats is asked again when heard again: the account it
// holds online shows online again instead of staying offline until its next transition.
func TestNodeHeardAgainIsAskedAgain(t *testing.T) {
	quiet := slog.New(slog.NewTextHandler(io.Discard, nil))
	b, err := bus.Open(context.Background(), bus.Config{DataDir: t.TempDir(), InboxShards: 1, Logger: quiet})
	if err != nil {
		t.Fatal(err)
	}
	t.Cleanup(b.Close)
	s1 := startService(t, b, Config{Node: "n1", HeartbeatInterval: time.Hour})
	s2 := startService(t, b, Config{Node: "n2", HeartbeatInterval: time.Hour})
	r := make(recorder, 16)
	watchFor(s1, "alice", r)
	s2.Connected("alice")
	if st := nextState(t, r); st != pb.PresenceState_PRESENCE_STATE_ONLINE {
		t.Fatalf("alice connected to n2: %v", st)
	}
	// n1 declares n2 gone, as its heartbeat loop does after 3 silent intervals.
	s1.mu.Lock()
	s1.gone["n2"] = time.Now().UnixMilli()
	out := s1.nodeGoneLocked("n2", time.Now().UnixMilli(), nil)
	s1.mu.Unlock()
	s1.deliver(out)
	if st := nextState(t, r); st != pb.PresenceState_PRESENCE_STATE_OFFLINE {
		t.Fatalf("n2 declared gone: %v", st)
	}
	s2.heartbeat("") // n2 was only late
	if st := nextState(t, r); st != pb.PresenceState_PRESENCE_STATE_ONLINE {
		t.Fatalf("n2 heard again: %v", st)
	}
	if got := counterValue(s1.metrics.returned); got != 1 {
		t.Fatalf("petrel_presence_nodes_returned_total %v, want 1", got)
	}
	// A restarted node ("hello") is not asked again: it holds nothing it has not announced.
	s1.mu.Lock()
	s1.gone["n2"] = time.Now().UnixMilli()
	s1.mu.Unlock()
	s2.heartbeat("hello")
	s2.heartbeat("") // after the hello: n2 is known again, not returned
	deadline := time.Now().Add(10 * time.Second)
	for {
		s1.mu.Lock()
		_, gone := s1.gone["n2"]
		s1.mu.Unlock()
		if !gone {
			break
		}
		if time.Now().After(deadline) {
			t.Fatal("n2's hello was not heard")
		}
		runtime.Gosched()
	}
	if got := counterValue(s1.metrics.returned); got != 1 {
		t.Fatalf("petrel_presence_nodes_returned_total %v after a hello, want 1", got)
	}
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

// A node told of a settings change reads until it has that revision: a replica that has not
// applied the change yet answers with the value before it, which must not be taken as the news
// (a NOBODY setting would not hide the account from live subscribers on that node).
func TestSettingsChangeReadsItsRevision(t *testing.T) {
	s := openService(t, Config{})
	ctx := context.Background()
	if _, err := s.PutSettings(ctx, "alice", &pb.Settings{LastSeen: pb.LastSeenVisibility_LAST_SEEN_VISIBILITY_EVERYONE}); err != nil {
		t.Fatal(err)
	}
	_, rev, err := s.readSettings(ctx, "alice")
	if err != nil || rev == 0 {
		t.Fatalf("read: rev %d, %v", rev, err)
	}
	if _, err := s.settingsAtLeast(ctx, "alice", rev); err != nil {
		t.Fatalf("the stored revision: %v", err)
	}
	// A later revision than the store has (what a lagging replica looks like): not accepted...
	short, cancel := context.WithTimeout(ctx, 100*time.Millisecond)
	defer cancel()
	if st, err := s.settingsAtLeast(short, "alice", rev+1); err == nil {
		t.Fatalf("revision %d taken for %d: %v", rev, rev+1, st)
	}
	// ...until it is there.
	got := make(chan *pb.Settings, 1)
	go func() {
		st, err := s.settingsAtLeast(ctx, "alice", rev+1)
		if err != nil {
			t.Error(err)
		}
		got <- st
	}()
	if _, err := s.kv.Put(ctx, "alice", mustMarshal(t, &pb.Settings{LastSeen: pb.LastSeenVisibility_LAST_SEEN_VISIBILITY_NOBODY})); err != nil {
		t.Fatal(err)
	}
	select {
	case st := <-got:
		if st.GetLastSeen() != pb.LastSeenVisibility_LAST_SEEN_VISIBILITY_NOBODY {
			t.Fatalf("read %v, want NOBODY", st)
		}
	case <-time.After(10 * time.Second):
		t.Fatal("the new revision was not read within 10 s")
	}
}

func mustMarshal(t *testing.T, m *pb.Settings) []byte {
	t.Helper()
	b, err := proto.Marshal(m)
	if err != nil {
		t.Fatal(err)
	}
	return b
}
