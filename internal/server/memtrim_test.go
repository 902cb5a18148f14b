// Copyright 2026 The Petrel Authors
// SPDX-License-Identifier: Apache-2.0

package server

import (
	"io"
	"log/slog"
	"runtime"
	"runtime/debug"
	"testing"
	"time"

	"github.com/prometheus/client_golang/prometheus"
	dto "github.com/prometheus/client_model/go"
)

func TestQuietAndWorth(t *testing.T) {
	live := uint64(400 << 20)
	if !quietCheck(trimSample{allocs: 1000}, trimSample{allocs: 1000 + live/8 - 1, live: live}) {
		t.Error("allocating less than an eighth of the live heap is quiet")
	}
	if quietCheck(trimSample{allocs: 1000}, trimSample{allocs: 1000 + live/8, live: live}) {
		t.Error("allocating an eighth of the live heap is not quiet")
	}
	if !quietCheck(trimSample{}, trimSample{allocs: trimQuietFloor - 1, live: 1 << 20}) {
		t.Error("below the floor is quiet on a small heap")
	}
	if worthTrim(trimSample{live: 400 << 20, objects: 400 << 20, free: 90 << 20}) {
		t.Error("less than a quarter of the live heap is not worth a trim")
	}
	if !worthTrim(trimSample{live: 400 << 20, objects: 450 << 20, free: 60 << 20}) {
		t.Error("a quarter of the live heap, counting dead objects, is worth a trim")
	}
	if worthTrim(trimSample{live: 8 << 20, objects: 8 << 20, free: trimMinGain - 1}) {
		t.Error("less than trimMinGain is never worth a trim")
	}
}

// trimRig is the runtime a test trimmer reads: samples it sets, a clock it moves, frees it counts.
type trimRig struct {
	s     trimSample
	clock time.Time
	frees int
}

// newTrimRig starts with a live heap of live bytes, all in objects.
func newTrimRig(live uint64) *trimRig {
	r := &trimRig{clock: time.Unix(1000, 0)}
	r.s.live, r.s.objects = live, live
	return r
}

// loop is a trimmer over the rig (a free returns every free page), read once as run does.
func (r *trimRig) loop(need int) *trimLoop {
	l := &trimLoop{
		need: need,
		read: func() trimSample { return r.s },
		free: func() {
			r.frees++
			r.s.released += r.s.free
			r.s.free = 0
		},
		now:     func() time.Time { return r.clock },
		metrics: newTrimMetrics(prometheus.NewRegistry()),
		log:     slog.New(slog.NewTextHandler(io.Discard, nil)),
	}
	l.prev = l.read()
	return l
}

// TestTrimOnlyWhenQuiet drives the trimmer's loop with samples: a burst (much allocated, much
// free) is not trimmed while it goes on, is trimmed after need quiet checks, and not again within
// trimMinInterval; a busy node is never trimmed.
func TestTrimOnlyWhenQuiet(t *testing.T) {
	const live = 100 << 20
	r := newTrimRig(live)
	l := r.loop(3)
	step := func(alloc, free uint64) {
		r.s.allocs += alloc
		r.s.free += free
		r.clock = r.clock.Add(5 * time.Second)
		l.check()
	}
	// A burst: each check allocates the live heap again.
	for range 10 {
		step(live, 20<<20)
	}
	if r.frees != 0 {
		t.Fatalf("trimmed %d times while busy", r.frees)
	}
	// Quiet: the third quiet check trims.
	step(1<<20, 0)
	step(1<<20, 0)
	if r.frees != 0 {
		t.Fatalf("trimmed after 2 quiet checks, want 3")
	}
	step(1<<20, 0)
	if r.frees != 1 {
		t.Fatalf("trims after 3 quiet checks: %d, want 1", r.frees)
	}
	if got := counterOf(l.metrics.released); got != 200<<20 {
		t.Fatalf("petrel_memory_trimmed_bytes_total %v, want %d", got, 200<<20)
	}
	// Another burst and quiet within trimMinInterval: not trimmed again until it passed.
	step(live, 60<<20)
	for range 4 {
		step(1<<20, 0)
	}
	if r.frees != 1 {
		t.Fatalf("trimmed again within %v", trimMinInterval)
	}
	for range 12 {
		step(1<<20, 0)
	}
	if r.frees != 2 {
		t.Fatalf("trims after trimMinInterval: %d, want 2", r.frees)
	}
	if got := counterOf(l.metrics.trims); got != 2 {
		t.Fatalf("petrel_memory_trims_total %v, want 2", got)
	}
}

// TestMemoryTrimStartsAndStops: the real trimmer (runtime samples, debug.FreeOSMemory) starts,
// is off with a negative quiet period, and stops.
func TestMemoryTrimStartsAndStops(t *testing.T) {
	log := slog.New(slog.NewTextHandler(io.Discard, nil))
	if tr := startMemoryTrim(-time.Second, 25, prometheus.NewRegistry(), log); tr != nil {
		t.Fatal("a negative memory_trim_quiet must turn the trimmer off")
	}
	tr := startMemoryTrim(30*time.Millisecond, -1, prometheus.NewRegistry(), log)
	if tr == nil {
		t.Fatal("trimmer not started")
	}
	// The live heap is what the last completed collection marked: none may have run yet in a
	// fresh test process (a failure seen once).
	runtime.GC()
	s := readTrimSample(newTrimSamples())
	if s.live == 0 || s.allocs == 0 {
		t.Fatalf("runtime samples not read: %+v", s)
	}
	debug.FreeOSMemory()
	tr.close()
}

// TestQuietLowersCollectorPercent: the percent is lowered once need checks in a row were quiet
// (not before), stays lowered across a trim, is restored by the first busy check, and by the
// trimmer's stop while quiet.
func TestQuietLowersCollectorPercent(t *testing.T) {
	const live = 100 << 20
	r := newTrimRig(live)
	pct := 0 // 0: the runtime's
	changes := 0
	l := r.loop(3)
	l.minGC = 10
	l.setGC = func(p int, again bool) {
		if again != (pct != 0) {
			t.Fatalf("setGC(%d, again=%v) with the percent at %d", p, again, pct)
		}
		pct = p
		changes++
	}
	l.restoreGC = func() {
		if pct == 0 {
			t.Fatal("restored without a lowering")
		}
		pct = 0
		changes++
	}
	step := func(alloc uint64) {
		r.s.allocs += alloc
		r.s.free += 40 << 20
		r.clock = r.clock.Add(5 * time.Second)
		l.check()
	}
	step(live)
	step(1 << 20)
	step(1 << 20)
	if pct != 0 {
		t.Fatal("lowered after 2 quiet checks, want 3")
	}
	step(1 << 20)
	if pct != 10 || gaugeOf(l.metrics.quiet) != 1 || gaugeOf(l.metrics.gcPct) != 10 {
		t.Fatalf("percent %d (petrel_memory_quiet %v) after 3 quiet checks, want 10", pct, gaugeOf(l.metrics.quiet))
	}
	for range 20 { // trims come and go; the percent stays lowered (the collector costs nothing here)
		step(1 << 20)
	}
	if pct != 10 || changes != 1 {
		t.Fatalf("percent %d after %d changes over quiet checks, want 10 after 1", pct, changes)
	}
	step(live)
	if pct != 0 || gaugeOf(l.metrics.quiet) != 0 || gaugeOf(l.metrics.gcPct) != 0 {
		t.Fatal("a busy check must restore the percent")
	}
	for range 3 {
		step(1 << 20)
	}
	if pct != 10 {
		t.Fatal("not lowered again after 3 quiet checks")
	}
	l.setQuiet(false) // what the trimmer does when it stops
	if pct != 0 {
		t.Fatal("stopping must restore the percent")
	}
}

// TestQuietPercentFollowsCollectorCost: while quiet, a collector that cost more than
// gcQuietBudget of a core over a window doubles the percent (up to gcQuietMax), one under a
// quarter of it halves it after a whole window (down to minGC), and in between it stays. The
// runtime counts a cycle's CPU when the cycle ends, so the cost arrives in lumps: checks that saw
// none must not halve a percent that costs too much.
func TestQuietPercentFollowsCollectorCost(t *testing.T) {
	r := newTrimRig(100 << 20)
	pct := 0
	l := r.loop(1)
	l.minGC = 10
	l.setGC = func(p int, _ bool) { pct = p }
	l.restoreGC = func() { pct = 0 }
	checks := int(gcTuneWindow / (5 * time.Second))
	// window runs one window of checks 5 s apart; the collector's cost (share of a core) is
	// counted in one lump every lump-th check, as cycles end.
	window := func(share float64, lump int) {
		for i := 1; i <= checks; i++ {
			r.s.allocs += 1 << 20
			if i%lump == 0 {
				r.s.gcCPU += share * 5 * float64(lump)
			}
			r.clock = r.clock.Add(5 * time.Second)
			l.check()
		}
	}
	r.s.allocs += 1 << 20
	r.clock = r.clock.Add(5 * time.Second)
	l.check()
	if pct != 10 {
		t.Fatalf("percent %d once quiet, want 10", pct)
	}
	for _, w := range []int{20, 40, 80, 100, 100} {
		window(1.5*gcQuietBudget, 4) // over budget, counted every fourth check
		if pct < w {
			t.Fatalf("over budget: percent %d, want at least %d", pct, w)
		}
	}
	if pct != 100 {
		t.Fatalf("percent %d after windows over budget, want 100", pct)
	}
	window(gcQuietBudget/2, 3) // within budget, above a quarter: stays
	if pct != 100 {
		t.Fatalf("percent %d within budget, want it kept at 100", pct)
	}
	for _, w := range []int{50, 25, 12, 10, 10} {
		window(gcQuietBudget/10, 6)
		if pct != w {
			t.Fatalf("percent %d after a window under a quarter of the budget, want %d", pct, w)
		}
	}
	if gaugeOf(l.metrics.gcPct) != 10 {
		t.Fatalf("petrel_memory_quiet_gc_percent %v, want 10", gaugeOf(l.metrics.gcPct))
	}
	// A whole window's allowance spent in one check doubles at once.
	r.s.gcCPU += 2 * gcQuietBudget * gcTuneWindow.Seconds()
	r.clock = r.clock.Add(5 * time.Second)
	l.check()
	if pct != 20 {
		t.Fatalf("percent %d after the window's allowance was spent at once, want 20", pct)
	}
}

// TestGCLoweringIsTheProcesss: servers in one process share one lowering: the first hold lowers,
// a holder may change the percent (never above the runtime's), the last release restores what
// the runtime had; a runtime percent at or below the quiet one, or off, is left alone.
func TestGCLoweringIsTheProcesss(t *testing.T) {
	pct := 100
	set := func(p int) int { old := pct; pct = p; return old }
	var g gcLowering
	g.lower(25, set, false)
	g.lower(25, set, false)
	if pct != 25 {
		t.Fatalf("percent %d after two holds, want 25", pct)
	}
	g.lower(50, set, true)
	if pct != 50 {
		t.Fatalf("percent %d after a holder's change, want 50", pct)
	}
	g.lower(400, set, true)
	if pct != 100 {
		t.Fatalf("percent %d after a change above the runtime's, want the runtime's 100", pct)
	}
	g.restore(set)
	if pct != 100 {
		t.Fatalf("percent %d with one hold left, want 100", pct)
	}
	g.lower(10, set, true)
	g.restore(set)
	if pct != 100 {
		t.Fatalf("percent %d after the last release, want the runtime's 100", pct)
	}
	g.restore(set) // more releases than holds change nothing
	for _, runtimePct := range []int{20, 25, -1} {
		pct = runtimePct
		g.lower(25, set, false)
		g.lower(10, set, true)
		if pct != runtimePct {
			t.Fatalf("runtime percent %d changed to %d", runtimePct, pct)
		}
		g.restore(set)
		if pct != runtimePct {
			t.Fatalf("runtime percent %d became %d after the release", runtimePct, pct)
		}
	}
}

func gaugeOf(g prometheus.Gauge) float64 {
	var m dto.Metric
	if err := g.Write(&m); err != nil {
		return -1
	}
	return m.GetGauge().GetValue()
}

func counterOf(c prometheus.Counter) float64 {
	var m dto.Metric
	if err := c.Write(&m); err != nil {
		return -1
	}
	return m.GetCounter().GetValue()
}
