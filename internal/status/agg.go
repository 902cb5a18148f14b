// Copyright 2026 The Petrel Authors
// SPDX-License-Identifier: Apache-2.0

package status

import (
	"math"
	"sort"
	"strings"
	"sync"
	"sync/atomic"
	"time"
)

// Bounds of the aggregates.
const (
	// MaxProbeSeries bounds the (node, source) pairs whose probes one node keeps; past it the
	// pair heard from least recently is forgotten.
	MaxProbeSeries = 64
	// MaxReportClients bounds the client ids remembered in one report window (for "first report
	// per client per window"); past it reports still count, without the check.
	MaxReportClients = 1 << 16
	// ReportWindow is the window in which only a client's first report counts, and the window
	// compared with the baseline.
	ReportWindow = 15 * time.Minute
	// maxNameLen bounds a probe's node and source names.
	maxNameLen = 200
)

// lagBucketsMS are the upper bounds (ms) of the latency histograms of sends and probes; one more
// bucket holds what is above the last.
var lagBucketsMS = [...]float64{5, 10, 25, 50, 100, 250, 500, 1000, 2500, 5000, 10000, 30000}

type hist [len(lagBucketsMS) + 1]uint32

func (h *hist) add(ms float64) {
	for i, b := range lagBucketsMS {
		if ms <= b {
			h[i]++
			return
		}
	}
	h[len(lagBucketsMS)]++
}

func (h *hist) merge(o *hist) {
	for i := range h {
		h[i] += o[i]
	}
}

// quantile is the upper bound of the bucket holding quantile q (the overflow bucket reads as
// maxMS); 0 when empty.
func (h *hist) quantile(q float64, maxMS float64) float64 {
	var n uint64
	for _, c := range h {
		n += uint64(c)
	}
	if n == 0 {
		return 0
	}
	want := uint64(math.Ceil(q * float64(n)))
	var seen uint64
	for i, c := range h {
		seen += uint64(c)
		if seen >= want {
			if i < len(lagBucketsMS) {
				return math.Min(lagBucketsMS[i], math.Max(maxMS, 0.001))
			}
			return maxMS
		}
	}
	return maxMS
}

type sendSlot struct {
	n, errs uint32
	maxMS   float64
	lag     hist
}

type probeSlot struct {
	ok, fail uint32
	sumMS    float64
	maxMS    float64
	lat      hist
}

type reportSlot struct {
	cat [len(Categories)]uint32
}

// Categories are the report categories, in the order the page shows them.
var Categories = [...]string{CategoryCantConnect, CategoryNotSending, CategoryNotReceiving, CategoryOther}

func categoryIndex(c string) int {
	for i, x := range Categories {
		if x == c {
			return i
		}
	}
	return -1
}

type probeKey struct{ node, source string }

type probeSeries struct {
	ring ring[probeSlot]
	last ProbeResult
	seen time.Time // when a result last arrived
}

// Aggregates are one node's own view: probe results by (probed node, source), the send outcomes
// the gateway reports, and user problem reports, each in per-minute rings over 24 hours, plus the
// report counts per hour of the week of this node and the others (the baseline, baseline.go). It implements ProbeSink. Safe for concurrent use; every method
// works on memory only.
type Aggregates struct {
	now func() time.Time
	// minute is the current minute as Snapshot last saw it (every second while the service
	// runs), so that ObserveSend, on every send's path, reads no clock. Only with the real
	// clock (coarse): a test's clock is read each time.
	minute atomic.Int64
	coarse bool

	mu      sync.Mutex // guards the fields below
	sends   ring[sendSlot]
	reports ring[reportSlot]
	probes  map[probeKey]*probeSeries
	// clients holds the client ids that reported in the current report window (window number
	// clientsWin); cleared when the window changes.
	clients    map[string]struct{}
	clientsWin int64
	// own is this node's report counts per hour of the week over the last weeks (baseline.go),
	// others the other nodes' (from the baseline bucket). folded is the last hour (Unix hours)
	// folded into own; foldedNew is set when an hour is folded (to write own).
	own       baseTable
	others    map[string]*baseTable
	folded    int64
	foldedNew bool
}

// NewAggregates returns empty aggregates on clock now (nil: time.Now, read by Snapshot and
// remembered to the minute for ObserveSend, which then reads no clock).
func NewAggregates(now func() time.Time) *Aggregates {
	coarse := now == nil
	if coarse {
		now = time.Now
	}
	a := &Aggregates{now: now, coarse: coarse, probes: make(map[probeKey]*probeSeries), clients: make(map[string]struct{}),
		others: make(map[string]*baseTable), folded: now().Unix()/3600 - 1}
	a.minute.Store(minuteOf(now()))
	return a
}

// RecordProbe adds one probe result (ProbeSink). Names are cut to a bounded length; a result
// dated in the future or more than a day ago is dated now.
func (a *Aggregates) RecordProbe(r ProbeResult) {
	r.Node, r.Source, r.Error = clip(r.Node, maxNameLen), clip(r.Source, maxNameLen), clip(r.Error, 300)
	if r.Source == "" {
		r.Source = "unknown"
	}
	now := a.now()
	if r.At.IsZero() || r.At.After(now.Add(time.Minute)) || r.At.Before(now.Add(-24*time.Hour)) {
		r.At = now
	}
	if r.LatencyMS < 0 || math.IsNaN(r.LatencyMS) || math.IsInf(r.LatencyMS, 0) {
		r.LatencyMS = 0
	}
	if !r.OK {
		r.LatencyMS = 0
	}
	k := probeKey{r.Node, r.Source}
	a.mu.Lock()
	defer a.mu.Unlock()
	s := a.probes[k]
	if s == nil {
		if len(a.probes) >= MaxProbeSeries {
			var oldest probeKey
			var t time.Time
			for k2, s2 := range a.probes {
				if t.IsZero() || s2.seen.Before(t) {
					oldest, t = k2, s2.seen
				}
			}
			delete(a.probes, oldest)
		}
		s = &probeSeries{}
		a.probes[k] = s
	}
	s.seen = now
	if !r.At.Before(s.last.At) {
		s.last = r
	}
	slot := s.ring.at(minuteOf(r.At))
	if r.OK {
		slot.ok++
		slot.sumMS += r.LatencyMS
		slot.maxMS = math.Max(slot.maxMS, r.LatencyMS)
		slot.lat.add(r.LatencyMS)
	} else {
		slot.fail++
	}
}

// ObserveSend records the outcome of one send: ok, or failed on the server's side, and how long
// it took from its arrival to its outcome (the delivery lag as a sender sees it). The gateway
// calls it (gateway.SendObserver).
func (a *Aggregates) ObserveSend(ok bool, lag time.Duration) {
	ms := float64(lag) / 1e6
	m := a.minute.Load()
	if !a.coarse {
		m = minuteOf(a.now())
	}
	a.mu.Lock()
	defer a.mu.Unlock()
	s := a.sends.at(m)
	s.n++
	if !ok {
		s.errs++
	}
	s.maxMS = math.Max(s.maxMS, ms)
	s.lag.add(ms)
}

// RecordReport counts a problem report of category cat from client (a random id; "" counts
// always). It returns false when the client already reported in this window (not counted) or the
// category is unknown.
func (a *Aggregates) RecordReport(cat, client string) bool {
	i := categoryIndex(cat)
	if i < 0 {
		return false
	}
	now := a.now()
	a.mu.Lock()
	defer a.mu.Unlock()
	a.foldLocked(now)
	if win := now.Unix() / int64(ReportWindow/time.Second); win != a.clientsWin {
		a.clientsWin = win
		clear(a.clients)
	}
	if client != "" {
		client = clip(client, 64)
		if _, dup := a.clients[client]; dup {
			return false
		}
		if len(a.clients) < MaxReportClients {
			a.clients[client] = struct{}{}
		}
	}
	a.reports.at(minuteOf(now)).cat[i]++
	return true
}

// hourOfWeek is the hour of the week (Sunday 00:00 UTC = 0) of Unix hour h.
func hourOfWeek(h int64) int {
	t := time.Unix(h*3600, 0).UTC()
	return int(t.Weekday())*24 + t.Hour()
}

// foldLocked folds every hour completed since the last fold into this node's counts per hour of
// the week.
func (a *Aggregates) foldLocked(now time.Time) {
	cur := now.Unix() / 3600
	if cur-a.folded > 24 { // asleep for longer than the ring: what is older is gone
		a.folded = cur - 24
	}
	for h := a.folded + 1; h < cur; h++ {
		var n uint32
		a.reports.each(h*60, h*60+59, func(_ int64, s *reportSlot) {
			for _, c := range s.cat {
				n += c
			}
		})
		a.own[hourOfWeek(h)].set(h/hoursPerWeek, n, true)
		a.folded, a.foldedNew = h, true
	}
}

// Snapshot is this node's own view as a Summary (without the node's name, URL and storage state,
// which the service adds).
func (a *Aggregates) Snapshot() Summary {
	now := a.now()
	cur := minuteOf(now)
	a.minute.Store(cur)
	a.mu.Lock()
	defer a.mu.Unlock()
	a.foldLocked(now)
	var s Summary
	s.At = now.UTC()
	s.Sends5 = a.sendStatsLocked(cur-4, cur)
	s.Sends60 = a.sendStatsLocked(cur-59, cur)

	// Reports: the last window by category, and 24 hourly counts ending with the current hour.
	win := int64(ReportWindow / time.Minute)
	r := ReportStats{ByCategory: map[string]int{}}
	a.reports.each(cur-win+1, cur, func(_ int64, sl *reportSlot) {
		for i, c := range sl.cat {
			r.Window += int(c)
			r.ByCategory[Categories[i]] += int(c)
		}
	})
	curHour := now.Unix() / 3600
	r.HourStart = time.Unix((curHour-23)*3600, 0).UTC()
	r.Hourly = make([]int, 24)
	r.Baseline = make([]float64, 24)
	for i := range 24 {
		h := curHour - 23 + int64(i)
		a.reports.each(h*60, h*60+59, func(_ int64, sl *reportSlot) {
			for _, c := range sl.cat {
				r.Hourly[i] += int(c)
			}
		})
		r.Baseline[i] = round2(a.baselineLocked(h))
	}
	s.Reports = r

	keys := make([]probeKey, 0, len(a.probes))
	for k := range a.probes {
		keys = append(keys, k)
	}
	sort.Slice(keys, func(i, j int) bool {
		if keys[i].node != keys[j].node {
			return keys[i].node < keys[j].node
		}
		return keys[i].source < keys[j].source
	})
	for _, k := range keys {
		ps := a.probes[k]
		st := ProbeStats{Node: k.node, Source: k.source, Last: ps.last}
		st.Window5 = probeWindow(&ps.ring, cur-4, cur)
		st.Window60 = probeWindow(&ps.ring, cur-59, cur)
		// The chart: 144 ten-minute slots ending with the current one.
		st.LatencyMS = make([]float64, chartSlots)
		st.Failed = make([]int, chartSlots)
		first := cur - cur%10 - (chartSlots-1)*10
		var oks [chartSlots]int
		ps.ring.each(first, cur, func(m int64, sl *probeSlot) {
			i := (m - first) / 10
			st.LatencyMS[i] += sl.sumMS
			oks[i] += int(sl.ok)
			st.Failed[i] += int(sl.fail)
		})
		for i, n := range oks {
			if n > 0 {
				st.LatencyMS[i] = round2(st.LatencyMS[i] / float64(n))
			}
		}
		s.Probes = append(s.Probes, st)
	}
	return s
}

// chartSlots is how many ten-minute points a probe latency chart has (24 hours).
const chartSlots = 144

func (a *Aggregates) sendStatsLocked(from, to int64) SendStats {
	var h hist
	var st SendStats
	var maxMS float64
	a.sends.each(from, to, func(_ int64, s *sendSlot) {
		st.Sends += int(s.n)
		st.Errors += int(s.errs)
		maxMS = math.Max(maxMS, s.maxMS)
		h.merge(&s.lag)
	})
	if st.Sends > 0 {
		st.ErrorRate = round4(float64(st.Errors) / float64(st.Sends))
	}
	st.LagP95MS = round2(h.quantile(0.95, maxMS))
	return st
}

func probeWindow(r *ring[probeSlot], from, to int64) ProbeWindow {
	var h hist
	var w ProbeWindow
	var maxMS float64
	r.each(from, to, func(_ int64, s *probeSlot) {
		w.OK += int(s.ok)
		w.Failed += int(s.fail)
		maxMS = math.Max(maxMS, s.maxMS)
		h.merge(&s.lat)
	})
	w.P95MS = round2(h.quantile(0.95, maxMS))
	return w
}

func clip(s string, n int) string {
	if len(s) <= n {
		return s
	}
	return strings.ToValidUTF8(s[:n], "") // a rune cut in two is dropped
}

func round2(f float64) float64 { return math.Round(f*100) / 100 }
func round4(f float64) float64 { return math.Round(f*10000) / 10000 }
