// Copyright 2026 The Petrel Authors
// SPDX-License-Identifier: Apache-2.0

package server

import (
	"log/slog"
	"runtime/debug"
	"runtime/metrics"
	"sync"
	"time"

	"github.com/prometheus/client_golang/prometheus"
)

// Returning a burst's memory once the node is quiet.
//
// After a collection the Go runtime keeps the heap up to its next goal, about twice the live
// heap (GOGC=100), and returns to the system only what lies above it. A connect storm or a flood
// leaves that much behind; a node that then holds its connections idle keeps it for nothing: at
// 15,000 idle connections an edge node held 85 MB of RSS for 35 MB of live heap. The trimmer
// watches the allocation rate; once the node has been quiet for memory_trim_quiet and holds freed
// memory worth returning, it runs one collection and returns every free page
// (debug.FreeOSMemory). A busy node is left alone: the collector's headroom is what keeps its
// latency low, and the next burst grows the heap again as before.
//
// A trim alone does not keep the memory away: the pings of the idle connections go on
// allocating, the heap grows back to its goal (twice the live heap) before the next collection,
// and the runtime keeps those pages. So while the node is quiet the collector also runs at a
// lower percent (as GOGC), starting at memory_quiet_gc_percent (10 by default: the heap grows a
// tenth over the live heap between collections). What that costs depends on the allocation
// rate, not on the heap's size (each collection marks the live heap, and collections come every
// percent-of-the-live-heap allocated), so the trimmer measures it over windows of gcTuneWindow
// (the runtime adds a cycle's CPU when the cycle ends, so a shorter window would see nothing, then
// all of it): past gcQuietBudget of a core the percent doubles (up to 100; at once when the
// window's allowance is spent), under a quarter of it the percent halves (down to
// memory_quiet_gc_percent). The first busy check
// restores the runtime's percent (GOGC, default 100). The percent is the process's: every
// server in a process shares one lowering (gcLowering).

// trimSample is what one check reads from the runtime.
type trimSample struct {
	allocs   uint64  // bytes allocated since the process started
	live     uint64  // live heap after the last collection
	objects  uint64  // heap bytes in objects, live or not yet collected
	free     uint64  // free heap pages not yet returned to the system
	released uint64  // heap pages returned to the system
	gcCPU    float64 // CPU seconds the collector has used (the runtime's estimate)
}

var trimMetricNames = []string{
	"/gc/heap/allocs:bytes",
	"/gc/heap/live:bytes",
	"/memory/classes/heap/objects:bytes",
	"/memory/classes/heap/free:bytes",
	"/memory/classes/heap/released:bytes",
	"/cpu/classes/gc/total:cpu-seconds",
}

// newTrimSamples makes the runtime/metrics samples readTrimSample reads.
func newTrimSamples() []metrics.Sample {
	s := make([]metrics.Sample, len(trimMetricNames))
	for i, n := range trimMetricNames {
		s[i].Name = n
	}
	return s
}

func readTrimSample(s []metrics.Sample) trimSample {
	metrics.Read(s)
	u := func(i int) uint64 {
		if s[i].Value.Kind() != metrics.KindUint64 {
			return 0
		}
		return s[i].Value.Uint64()
	}
	var gcCPU float64
	if s[5].Value.Kind() == metrics.KindFloat64 {
		gcCPU = s[5].Value.Float64()
	}
	return trimSample{allocs: u(0), live: u(1), objects: u(2), free: u(3), released: u(4), gcCPU: gcCPU}
}

const (
	// trimMinGain: less than this to return is not worth a collection.
	trimMinGain = 16 << 20
	// trimQuietFloor: allocating less than this per check counts as quiet whatever the live heap.
	trimQuietFloor = 2 << 20
	// trimMinInterval between two trims.
	trimMinInterval = time.Minute
	// gcQuietBudget is the share of one core the collector may take while the node is quiet
	// (see above): past it the lowered percent doubles, under a quarter of it the percent halves.
	gcQuietBudget = 0.01
	// gcQuietMax is the highest lowered percent (the runtime's default).
	gcQuietMax = 100
	// gcTuneWindow is how long the collector's cost is measured before the percent is halved.
	gcTuneWindow = time.Minute
)

// quietCheck reports whether the node allocated little between two checks: less than an eighth of
// its live heap (at least trimQuietFloor). Idle connections' pings allocate a few hundred bytes
// each; a node relaying messages allocates its live heap every few seconds.
func quietCheck(prev, cur trimSample) bool {
	return cur.allocs-prev.allocs < max(trimQuietFloor, cur.live/8)
}

// trimGain estimates what a trim would return: the free pages kept, and the heap in objects that
// are not live any more.
func trimGain(s trimSample) uint64 {
	dead := uint64(0)
	if s.objects > s.live {
		dead = s.objects - s.live
	}
	return s.free + dead
}

// worthTrim reports whether the memory a trim would return is worth a collection: at least
// trimMinGain and a quarter of the live heap.
func worthTrim(s trimSample) bool {
	g := trimGain(s)
	return g >= trimMinGain && g >= s.live/4
}

// memoryTrim is the running trimmer.
type memoryTrim struct {
	stop chan struct{}
	wg   sync.WaitGroup
}

// trimMetrics count what the trimmer did.
type trimMetrics struct {
	trims    prometheus.Counter
	released prometheus.Counter
	quiet    prometheus.Gauge
	gcPct    prometheus.Gauge
}

func newTrimMetrics(reg prometheus.Registerer) *trimMetrics {
	m := &trimMetrics{
		trims: prometheus.NewCounter(prometheus.CounterOpts{Name: "petrel_memory_trims_total",
			Help: "Times the node returned freed heap to the system after it went quiet (limits.memory_trim_quiet)."}),
		released: prometheus.NewCounter(prometheus.CounterOpts{Name: "petrel_memory_trimmed_bytes_total",
			Help: "Heap bytes returned to the system by those trims."}),
		quiet: prometheus.NewGauge(prometheus.GaugeOpts{Name: "petrel_memory_quiet",
			Help: "1 while the node counts as quiet and its collector runs at a lowered percent (limits.memory_quiet_gc_percent), else 0."}),
		gcPct: prometheus.NewGauge(prometheus.GaugeOpts{Name: "petrel_memory_quiet_gc_percent",
			Help: "The collector's percent (as GOGC) while the node is quiet: from limits.memory_quiet_gc_percent up to 100, as its measured cost allows; 0 while busy (the runtime's percent)."}),
	}
	reg.MustRegister(m.trims, m.released, m.quiet, m.gcPct)
	return m
}

// startMemoryTrim starts the trimmer (nil when quiet is negative: off). It checks every
// quiet/3 (at most every 5 s); once every check of the last quiet period was quiet it lowers
// the collector's percent, starting at quietGC (never when quietGC is negative; not below the
// runtime's), and trims.
func startMemoryTrim(quiet time.Duration, quietGC int, reg prometheus.Registerer, log *slog.Logger) *memoryTrim {
	if quiet < 0 {
		return nil
	}
	m := newTrimMetrics(reg)
	every := min(5*time.Second, max(quiet/3, 10*time.Millisecond))
	samples := newTrimSamples()
	l := &trimLoop{
		need:    int((quiet + every - 1) / every),
		read:    func() trimSample { return readTrimSample(samples) },
		free:    debug.FreeOSMemory,
		now:     time.Now,
		metrics: m,
		log:     log,
	}
	if quietGC >= 0 {
		l.minGC = max(quietGC, 1)
		l.setGC = func(pct int, again bool) { processGC.lower(pct, debug.SetGCPercent, again) }
		l.restoreGC = func() { processGC.restore(debug.SetGCPercent) }
	}
	t := &memoryTrim{stop: make(chan struct{})}
	t.wg.Add(1)
	go func() {
		defer t.wg.Done()
		tick := time.NewTicker(every)
		defer tick.Stop()
		l.run(tick.C, t.stop)
		l.setQuiet(false)
	}()
	return t
}

// gcLowering is the process's lowering of the collector's percent: every trimmer in the process
// (one per server) that counts its node quiet holds it; the first lowers the percent, the last
// to let go restores what the runtime had. A percent the runtime has at or below the quiet one
// (or off: GOGC=off) is left as it is.
type gcLowering struct {
	mu      sync.Mutex
	holders int
	saved   int  // the runtime's percent before the first holder lowered it
	lowered bool // the percent was changed (and saved must be restored)
}

var processGC gcLowering

// lower takes a hold (restore gives it back; a holder calling it again only changes the percent)
// and sets the percent to pct, never above the runtime's. The first hold saves the runtime's.
func (g *gcLowering) lower(pct int, set func(int) int, again bool) {
	g.mu.Lock()
	defer g.mu.Unlock()
	if !again {
		g.holders++
	}
	if g.holders == 1 && !again {
		g.saved = set(pct)
		g.lowered = true
		if g.saved < 0 || g.saved <= pct {
			set(g.saved) // off, or already as low: leave the runtime's
			g.lowered = false
		}
		return
	}
	if g.lowered {
		set(min(pct, g.saved))
	}
}

// restore gives a hold back; the last one restores the runtime's percent.
func (g *gcLowering) restore(set func(int) int) {
	g.mu.Lock()
	defer g.mu.Unlock()
	if g.holders == 0 {
		return
	}
	g.holders--
	if g.holders == 0 && g.lowered {
		set(g.saved)
		g.lowered = false
	}
}

// trimLoop is the trimmer's loop, with what it reads and does as functions (tests give their own).
type trimLoop struct {
	need    int // quiet checks in a row before a trim
	read    func() trimSample
	free    func()
	now     func() time.Time
	metrics *trimMetrics
	log     *slog.Logger
	// setGC and restoreGC set the collector's percent while the node is quiet (again: a change
	// of a percent already set) and restore the runtime's (nil: the percent is left alone); minGC
	// is the lowest percent set.
	setGC     func(pct int, again bool)
	restoreGC func()
	minGC     int

	prev  trimSample // the last check's sample
	quiet int        // quiet checks in a row
	last  time.Time  // the last trim
	gcPct int        // the percent set while quiet; 0: none set (busy)
	// tuneCPU and tuneStart: the collector's CPU and the time when the current window began.
	tuneCPU   float64
	tuneStart time.Time
}

// setQuiet lowers the collector's percent to minGC when the node turns quiet and restores the
// runtime's when it turns busy (or the trimmer stops).
func (l *trimLoop) setQuiet(q bool) {
	if l.setGC == nil || q == (l.gcPct != 0) {
		return
	}
	if q {
		l.gcPct = l.minGC
		l.setGC(l.gcPct, false)
		l.metrics.quiet.Set(1)
		l.metrics.gcPct.Set(float64(l.gcPct))
		l.log.Debug("quiet: collector percent lowered", "percent", l.gcPct)
		return
	}
	l.restoreGC()
	l.gcPct = 0
	l.metrics.quiet.Set(0)
	l.metrics.gcPct.Set(0)
	l.log.Debug("busy: collector percent restored")
}

// tuneGC doubles the lowered percent when the collector has cost more than gcQuietBudget of a
// core over the current window (at once once the whole window's allowance is spent) and halves
// it, down to minGC, when a full window cost less than a quarter of that; each decision starts a
// new window.
func (l *trimLoop) tuneGC(cur trimSample, now time.Time) {
	spent, elapsed := cur.gcCPU-l.tuneCPU, now.Sub(l.tuneStart)
	allowance := gcQuietBudget * gcTuneWindow.Seconds()
	pct := l.gcPct
	switch {
	case spent > allowance || (elapsed >= gcTuneWindow && spent > gcQuietBudget*elapsed.Seconds()):
		pct = min(pct*2, gcQuietMax)
	case elapsed < gcTuneWindow:
		return // measuring
	case spent < gcQuietBudget/4*elapsed.Seconds():
		pct = max(pct/2, l.minGC)
	}
	l.tuneCPU, l.tuneStart = cur.gcCPU, now
	if pct != l.gcPct {
		l.gcPct = pct
		l.setGC(pct, true)
		l.metrics.gcPct.Set(float64(pct))
		l.log.Debug("quiet: collector percent changed", "percent", pct, "gc_cpu_s", spent, "over", elapsed)
	}
}

// run checks on every tick until stop closes.
func (l *trimLoop) run(tick <-chan time.Time, stop <-chan struct{}) {
	l.prev = l.read()
	for {
		select {
		case <-stop:
			return
		case <-tick:
		}
		l.check()
	}
}

// check is one check: it trims when the last need checks were quiet and a trim is worth it.
func (l *trimLoop) check() {
	cur, now := l.read(), l.now()
	if quietCheck(l.prev, cur) {
		l.quiet++
	} else {
		l.quiet = 0
		l.setQuiet(false)
	}
	if l.gcPct != 0 {
		l.tuneGC(cur, now)
	} else if l.quiet >= l.need {
		l.setQuiet(true)
		l.tuneCPU, l.tuneStart = cur.gcCPU, now
	}
	l.prev = cur
	if l.quiet < l.need || !worthTrim(cur) || (!l.last.IsZero() && l.now().Sub(l.last) < trimMinInterval) {
		return
	}
	start := l.now()
	l.free()
	l.last = l.now()
	after := l.read()
	var freed uint64
	if after.released > cur.released {
		freed = after.released - cur.released
	}
	l.metrics.trims.Inc()
	l.metrics.released.Add(float64(freed))
	l.log.Debug("quiet: returned freed heap to the system", "bytes", freed, "live_heap", after.live, "took", l.last.Sub(start))
	l.prev = after
	l.tuneCPU += after.gcCPU - cur.gcCPU // the trim's own collection is not the percent's cost
	l.quiet = 0
}

// close stops the trimmer and waits for it. Nil-safe; call once.
func (t *memoryTrim) close() {
	if t == nil {
		return
	}
	close(t.stop)
	t.wg.Wait()
}
