// Copyright 2026 The Petrel Authors
// SPDX-License-Identifier: Apache-2.0

package status

import (
	"fmt"
	"math"
	"sort"
	"strings"
	"time"
)

// States, worst last.
const (
	Operational = "operational"
	Degraded    = "degraded"
	Outage      = "outage"
)

func rank(s string) int {
	switch s {
	case Degraded:
		return 1
	case Outage:
		return 2
	}
	return 0
}

func worst(a, b string) string {
	if rank(b) > rank(a) {
		return b
	}
	return a
}

// Summary is one node's own view, as it shares it with the other nodes (JSON on the bus every
// share interval) and as the page merges it.
type Summary struct {
	Node string    `json:"node"`
	URL  string    `json:"url,omitempty"`
	At   time.Time `json:"at"`
	// StorageOK: the node's storage is reachable and has its quorum; StorageNote says why not.
	StorageOK   bool         `json:"storage_ok"`
	StorageNote string       `json:"storage_note,omitempty"`
	Sends5      SendStats    `json:"sends_5m"`
	Sends60     SendStats    `json:"sends_60m"`
	Reports     ReportStats  `json:"reports"`
	Probes      []ProbeStats `json:"probes,omitempty"`
}

// SendStats are the sends a node saw over a window: how many had an outcome, how many failed on
// the server's side, and the 95th percentile of their delivery lag (arrival to outcome, the
// upper bound of its histogram bucket).
type SendStats struct {
	Sends     int     `json:"sends"`
	Errors    int     `json:"errors"`
	ErrorRate float64 `json:"error_rate"`
	LagP95MS  float64 `json:"lag_p95_ms"`
}

// ReportStats are the problem reports a node counted: in the last ReportWindow (in all and by
// category), and per hour over 24 hours with the baseline of each of those hours of the week.
type ReportStats struct {
	Window     int            `json:"window"`
	ByCategory map[string]int `json:"by_category"`
	HourStart  time.Time      `json:"hour_start"`
	Hourly     []int          `json:"hourly"`
	Baseline   []float64      `json:"baseline_hourly"`
}

// ProbeWindow sums a probe series over a window.
type ProbeWindow struct {
	OK     int     `json:"ok"`
	Failed int     `json:"failed"`
	P95MS  float64 `json:"p95_ms"`
}

// ProbeStats is one (probed node, source) series.
type ProbeStats struct {
	Node     string      `json:"node"`
	Source   string      `json:"source"`
	Last     ProbeResult `json:"last"`
	Window5  ProbeWindow `json:"5m"`
	Window60 ProbeWindow `json:"60m"`
	// LatencyMS and Failed are 144 ten-minute points over 24 hours, oldest first: the average
	// latency of the successful probes (0: none), and the failed probes.
	LatencyMS []float64 `json:"latency_ms"`
	Failed    []int     `json:"failed"`
}

// Thresholds are the tunable limits of the state rules (README, "Status page").
type Thresholds struct {
	// LagDegraded: a node whose sends' 95th percentile delivery lag over 5 minutes reaches it is
	// degraded.
	LagDegraded time.Duration
	// ProbeSlow: a probed node whose probes' 95th percentile latency over 5 minutes exceeds it is
	// degraded.
	ProbeSlow time.Duration
}

// Minimum samples before a rate decides anything.
const (
	minSends5   = 10
	minSends60  = 100
	minProbes5  = 2
	anomalyMin  = 5 // reports in a window never flag an anomaly below this
	anomalyMult = 3 // reports flag an anomaly above this many times the baseline
)

// judgeProbes applies the probe rules to a 5-minute window.
func judgeProbes(w ProbeWindow, th Thresholds) (string, []string) {
	n := w.OK + w.Failed
	switch {
	case n == 0:
		return Operational, nil
	case w.OK == 0 && n >= minProbes5:
		return Outage, []string{fmt.Sprintf("every probe failed in the last 5 minutes (%d)", n)}
	case w.Failed > 0 && float64(w.OK)/float64(n) < 0.9:
		return Degraded, []string{fmt.Sprintf("%d of %d probes failed in the last 5 minutes", w.Failed, n)}
	case w.P95MS > float64(th.ProbeSlow.Milliseconds()):
		return Degraded, []string{fmt.Sprintf("probes slow: p95 %s over 5 minutes", ms(w.P95MS))}
	}
	return Operational, nil
}

// judgeNode applies the node rules to a node's summary and the probes of it (each prober's
// 5-minute window).
func judgeNode(s *Summary, probes []ProbeWindow, th Thresholds) (string, []string) {
	state := Operational
	var why []string
	add := func(st string, reason ...string) {
		state = worst(state, st)
		why = append(why, reason...)
	}
	if !s.StorageOK {
		note := s.StorageNote
		if note == "" {
			note = "storage unavailable"
		}
		add(Outage, note)
	}
	// Every prober's probes of the node together: one prober failing while another succeeds is
	// degraded (a path is broken), not an outage.
	var all ProbeWindow
	for _, w := range probes {
		all.OK += w.OK
		all.Failed += w.Failed
		all.P95MS = math.Max(all.P95MS, w.P95MS)
	}
	if st, r := judgeProbes(all, th); st != Operational {
		add(st, r...)
	}
	s5, s60 := s.Sends5, s.Sends60
	switch {
	case s5.Sends >= minSends5 && s5.ErrorRate >= 0.5:
		add(Outage, fmt.Sprintf("%.0f%% of sends failed in the last 5 minutes", 100*s5.ErrorRate))
	case s5.Sends >= minSends5 && s5.ErrorRate >= 0.05:
		add(Degraded, fmt.Sprintf("%.0f%% of sends failed in the last 5 minutes", 100*s5.ErrorRate))
	case s60.Sends >= minSends60 && s60.ErrorRate >= 0.05:
		add(Degraded, fmt.Sprintf("%.0f%% of sends failed in the last hour", 100*s60.ErrorRate))
	}
	if s5.Sends >= minSends5 && s5.LagP95MS >= float64(th.LagDegraded.Milliseconds()) {
		add(Degraded, fmt.Sprintf("deliveries slow: p95 lag %s over 5 minutes", ms(s5.LagP95MS)))
	}
	return state, why
}

func ms(v float64) string {
	if v >= 1000 {
		return fmt.Sprintf("%.1f s", v/1000)
	}
	return fmt.Sprintf("%.0f ms", v)
}

// anomaly applies the report rule: reports in the window exceed max(anomalyMin, anomalyMult ×
// the baseline for a window of this hour of the week).
func anomaly(count int, baselineHour float64) (threshold float64, flagged bool) {
	perWindow := baselineHour * float64(ReportWindow) / float64(time.Hour)
	threshold = math.Max(anomalyMin, anomalyMult*perWindow)
	return round2(threshold), float64(count) > threshold
}

// View is the whole page's content: GET /status.json.
type View struct {
	State       string         `json:"state"`
	GeneratedAt time.Time      `json:"generated_at"`
	ServedBy    string         `json:"served_by"`
	Notes       []string       `json:"notes"`
	Nodes       []NodeView     `json:"nodes"`
	Probes      []ProbeView    `json:"probes"`
	Reports     ReportsView    `json:"reports"`
	Incidents   []IncidentView `json:"incidents"`
}

// NodeView is one node's state.
type NodeView struct {
	Node      string    `json:"node"`
	URL       string    `json:"url,omitempty"`
	Self      bool      `json:"self"`
	State     string    `json:"state"`
	Reasons   []string  `json:"reasons"`
	HeardAt   time.Time `json:"heard_at"`
	StorageOK bool      `json:"storage_ok"`
	Sends5    SendStats `json:"sends_5m"`
	Sends60   SendStats `json:"sends_60m"`
}

// ProbeView is one (probed node, source) series merged over the nodes that received it.
type ProbeView struct {
	ProbeStats
	State string `json:"state"`
}

// ReportsView is the problem reports of every node together.
type ReportsView struct {
	WindowMinutes int            `json:"window_minutes"`
	Count         int            `json:"count"`
	ByCategory    map[string]int `json:"by_category"`
	Baseline      float64        `json:"baseline"`
	Threshold     float64        `json:"threshold"`
	Anomaly       bool           `json:"anomaly"`
	HourStart     time.Time      `json:"hour_start"`
	Hourly        []int          `json:"hourly"`
	BaselineHour  []float64      `json:"baseline_hourly"`
}

// peer is a summary and whether it is this node's own.
type peer struct {
	Summary
	self bool
}

// buildView merges the summaries (own first) into the page's view.
func buildView(self string, sums []peer, incidents []IncidentView, th Thresholds, now time.Time) View {
	v := View{GeneratedAt: now.UTC(), ServedBy: self, Notes: []string{}, Nodes: []NodeView{}, Probes: []ProbeView{},
		Incidents: incidents}
	if v.Incidents == nil {
		v.Incidents = []IncidentView{}
	}
	// Probes by (node, source), merged.
	merged := map[probeKey]*ProbeView{}
	for _, p := range sums {
		for _, ps := range p.Probes {
			k := probeKey{ps.Node, ps.Source}
			m := merged[k]
			if m == nil {
				c := ps
				c.LatencyMS = append([]float64(nil), ps.LatencyMS...)
				c.Failed = append([]int(nil), ps.Failed...)
				merged[k] = &ProbeView{ProbeStats: c}
				continue
			}
			mergeProbe(&m.ProbeStats, &ps)
		}
	}
	keys := make([]probeKey, 0, len(merged))
	for k := range merged {
		keys = append(keys, k)
	}
	sort.Slice(keys, func(i, j int) bool {
		if keys[i].node != keys[j].node {
			return keys[i].node < keys[j].node
		}
		return keys[i].source < keys[j].source
	})
	matched := map[probeKey]bool{}
	allNodesOut := len(sums) > 0
	overall := Operational
	for _, p := range sums {
		var windows []ProbeWindow
		for _, k := range keys {
			if targets(k.node, p.Node, p.URL) {
				windows = append(windows, merged[k].Window5)
				matched[k] = true
			}
		}
		st, why := judgeNode(&p.Summary, windows, th)
		if why == nil {
			why = []string{}
		}
		v.Nodes = append(v.Nodes, NodeView{Node: p.Node, URL: p.URL, Self: p.self, State: st, Reasons: why,
			HeardAt: p.At, StorageOK: p.StorageOK, Sends5: p.Sends5, Sends60: p.Sends60})
		if st != Outage {
			allNodesOut = false
		}
		overall = worst(overall, min2(st, Degraded))
		for _, r := range why {
			v.Notes = append(v.Notes, p.Node+": "+r)
		}
	}
	if allNodesOut {
		overall = Outage
	}
	others, othersOut := 0, 0
	for _, k := range keys {
		pv := merged[k]
		st, why := judgeProbes(pv.Window5, th)
		pv.State = st
		v.Probes = append(v.Probes, *pv)
		if matched[k] {
			continue
		}
		others++
		if st == Outage {
			othersOut++
		}
		overall = worst(overall, min2(st, Degraded))
		for _, r := range why {
			v.Notes = append(v.Notes, fmt.Sprintf("%s (probed by %s): %s", k.node, k.source, r))
		}
	}
	if others > 0 && othersOut == others {
		overall = Outage
	}
	v.State = overall

	// Reports: the sum of every node's counts; the baseline is this node's (own first), which
	// already merges every node's counts (baseline.go).
	r := ReportsView{WindowMinutes: int(ReportWindow / time.Minute), ByCategory: map[string]int{},
		Hourly: make([]int, 24), BaselineHour: make([]float64, 24)}
	for _, c := range Categories {
		r.ByCategory[c] = 0
	}
	for _, p := range sums {
		rs := p.Reports
		r.Count += rs.Window
		for c, n := range rs.ByCategory {
			if _, ok := r.ByCategory[c]; ok {
				r.ByCategory[c] += n
			}
		}
		if r.HourStart.IsZero() || rs.HourStart.After(r.HourStart) {
			r.HourStart = rs.HourStart
		}
	}
	for k, p := range sums {
		rs := p.Reports
		// Align each node's hours on the newest start (a node's snapshot may be an hour older).
		shift := int(r.HourStart.Sub(rs.HourStart) / time.Hour)
		for i := range 24 {
			j := i + shift
			if j >= 0 && j < len(rs.Hourly) {
				r.Hourly[i] += rs.Hourly[j]
			}
			if k == 0 && j >= 0 && j < len(rs.Baseline) {
				r.BaselineHour[i] = round2(rs.Baseline[j])
			}
		}
	}
	r.Baseline = r.BaselineHour[23]
	r.Threshold, r.Anomaly = anomaly(r.Count, r.Baseline)
	v.Reports = r
	if r.Anomaly {
		v.Notes = append(v.Notes, "users report problems")
	}
	return v
}

// min2 is the better of two states.
func min2(a, b string) string {
	if rank(a) < rank(b) {
		return a
	}
	return b
}

// targets reports whether a probe's node field names the node (its name, or its URL with or
// without a trailing slash).
func targets(probed, node, url string) bool {
	if probed == node {
		return true
	}
	return url != "" && strings.TrimRight(probed, "/") == strings.TrimRight(url, "/")
}

func mergeProbe(m, o *ProbeStats) {
	if o.Last.At.After(m.Last.At) {
		m.Last = o.Last
	}
	mw := func(a *ProbeWindow, b ProbeWindow) {
		a.OK += b.OK
		a.Failed += b.Failed
		a.P95MS = math.Max(a.P95MS, b.P95MS)
	}
	mw(&m.Window5, o.Window5)
	mw(&m.Window60, o.Window60)
	for i := range min(len(m.LatencyMS), len(o.LatencyMS)) {
		switch {
		case m.LatencyMS[i] == 0:
			m.LatencyMS[i] = o.LatencyMS[i]
		case o.LatencyMS[i] != 0:
			m.LatencyMS[i] = round2((m.LatencyMS[i] + o.LatencyMS[i]) / 2)
		}
	}
	for i := range min(len(m.Failed), len(o.Failed)) {
		m.Failed[i] += o.Failed[i]
	}
}
