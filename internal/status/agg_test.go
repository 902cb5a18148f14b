// Copyright 2026 The Petrel Authors
// SPDX-License-Identifier: Apache-2.0

package status

import (
	"bytes"
	"encoding/json"
	"fmt"
	"strings"
	"sync"
	"testing"
	"time"
)

// clock is a fake clock for the aggregates.
type clock struct {
	mu sync.Mutex
	t  time.Time
}

func (c *clock) now() time.Time { c.mu.Lock(); defer c.mu.Unlock(); return c.t }
func (c *clock) add(d time.Duration) {
	c.mu.Lock()
	c.t = c.t.Add(d)
	c.mu.Unlock()
}

func newClock() *clock {
	// A Monday, 10:00:30 UTC.
	return &clock{t: time.Date(2026, 12, 7, 10, 0, 30, 0, time.UTC)}
}

func TestRingForgetsWhatIsOlderThanADay(t *testing.T) {
	var r ring[int]
	*r.at(100) = 7
	if v := r.get(100); v == nil || *v != 7 {
		t.Fatalf("get(100) = %v", v)
	}
	// The same slot a day later is another minute: the old value must not show.
	if v := r.get(100 + RingMinutes); v != nil {
		t.Fatalf("a minute a day later read the old slot: %d", *v)
	}
	if *r.at(100 + RingMinutes) != 0 {
		t.Fatal("at() of a new minute did not empty the slot")
	}
	if r.get(100) != nil {
		t.Fatal("the older minute is still there after its slot was reused")
	}
	n := 0
	r.each(0, 100+RingMinutes, func(int64, *int) { n++ })
	if n != 1 {
		t.Fatalf("each saw %d minutes, want 1", n)
	}
}

func TestReportsCountFirstPerClientPerWindow(t *testing.T) {
	c := newClock()
	a := NewAggregates(c.now)
	if !a.RecordReport(CategoryCantConnect, "client-1") {
		t.Fatal("first report not counted")
	}
	if a.RecordReport(CategoryNotSending, "client-1") {
		t.Fatal("second report of the same client in the window counted")
	}
	if !a.RecordReport(CategoryNotSending, "client-2") || !a.RecordReport(CategoryOther, "") {
		t.Fatal("other clients' reports not counted")
	}
	if a.RecordReport("on-fire", "client-3") {
		t.Fatal("unknown category counted")
	}
	s := a.Snapshot()
	if s.Reports.Window != 3 || s.Reports.ByCategory[CategoryCantConnect] != 1 || s.Reports.ByCategory[CategoryNotSending] != 1 {
		t.Fatalf("window %d, by category %v; want 3 (1 cant-connect, 1 not-sending, 1 other)", s.Reports.Window, s.Reports.ByCategory)
	}
	c.add(ReportWindow)
	if !a.RecordReport(CategoryCantConnect, "client-1") {
		t.Fatal("the client's report in the next window not counted")
	}
	if got := a.Snapshot().Reports.Hourly[23]; got != 4 {
		t.Fatalf("this hour's count %d, want 4", got)
	}
}

func TestBaselineIsPerHourOfWeek(t *testing.T) {
	c := newClock()
	a := NewAggregates(c.now)
	for i := range 8 {
		a.RecordReport(CategoryOther, string(rune('a'+i)))
	}
	c.add(time.Hour) // the hour ends: folded into Monday 10:00's counts
	s := a.Snapshot()
	// Hourly[22] is the past hour (Monday 10), [23] the current (Monday 11). An hour's baseline
	// is made of past weeks only: none yet.
	if s.Reports.Hourly[22] != 8 || s.Reports.Baseline[22] != 0 || s.Reports.Baseline[23] != 0 {
		t.Fatalf("hourly %v baseline %v", s.Reports.Hourly[20:], s.Reports.Baseline[20:])
	}
	if !a.takeFolded() || a.takeFolded() {
		t.Fatal("a folded hour is not reported exactly once")
	}
	// A week later, the same hour of the week has that baseline; after a quiet Monday 10:00 it is
	// the mean of the two weeks.
	c.add(7*24*time.Hour - time.Hour)
	if s = a.Snapshot(); s.Reports.Baseline[23] != 8 {
		t.Fatalf("Monday 10:00 a week later: baseline %v, want 8", s.Reports.Baseline[23])
	}
	c.add(time.Hour)
	if s = a.Snapshot(); s.Reports.Baseline[22] != 8 || s.Reports.Hourly[22] != 0 {
		t.Fatalf("the quiet Monday 10:00: baseline %v hourly %v, want 8 and 0", s.Reports.Baseline[22], s.Reports.Hourly[22])
	}
	c.add(7 * 24 * time.Hour)
	if s = a.Snapshot(); s.Reports.Baseline[22] != 4 {
		t.Fatalf("after a quiet Monday 10:00: baseline %v, want 4 (8 and 0)", s.Reports.Baseline[22])
	}
	// Other nodes' counts add up week by week; after BaselineWeeks weeks a count is forgotten.
	other := baselineRecord{V: baselineRecordV, Node: "n2", Counts: make([][]int64, hoursPerWeek)}
	now := c.now().Unix() / 3600
	other.Week = (now - 1) / hoursPerWeek
	other.Counts[hourOfWeek(now-1)] = []int64{-1, 6, 2} // nothing this week; 6 a week ago, 2 before
	if !a.applyBaseline(&other, false) {
		t.Fatal("record refused")
	}
	if s = a.Snapshot(); s.Reports.Baseline[22] != 8 { // ((0+6) + (8+2)) / 2
		t.Fatalf("with another node: baseline %v, want 8", s.Reports.Baseline[22])
	}
	c.add(BaselineWeeks * 7 * 24 * time.Hour)
	if s = a.Snapshot(); s.Reports.Baseline[22] != 0 {
		t.Fatalf("%d weeks later: baseline %v, want 0", BaselineWeeks, s.Reports.Baseline[22])
	}
}

func TestBaselineRecords(t *testing.T) {
	c := newClock()
	a := NewAggregates(c.now)
	for i := range 3 {
		a.RecordReport(CategoryOther, string(rune('a'+i)))
	}
	c.add(time.Hour)
	a.Snapshot()
	rec := recordOf("node-1", &a.own)
	b, err := json.Marshal(rec)
	if err != nil {
		t.Fatal(err)
	}
	if len(b) > 4096 {
		t.Fatalf("a record is %d bytes: want a few KB at most", len(b))
	}
	week := c.now().Unix() / 3600 / hoursPerWeek
	got, err := parseBaseline("node-1", b, week)
	if err != nil {
		t.Fatal(err)
	}
	// Read back into fresh aggregates (a restart), a week later: the count is the baseline.
	c.add(7*24*time.Hour - time.Hour)
	a2 := NewAggregates(c.now)
	a2.RecordReport(CategoryOther, "z") // counted since the restart: kept
	a2.applyBaseline(&got, true)
	if s := a2.Snapshot(); s.Reports.Baseline[23] != 3 || s.Reports.Hourly[23] != 1 {
		t.Fatalf("after a restart: baseline %v hourly %v, want 3 and 1", s.Reports.Baseline[23], s.Reports.Hourly[23])
	}
	if k := baselineKey("db 1.example/x"); k == "db 1.example/x" || !strings.HasPrefix(k, "h-") || baselineKey("db1-3f9a0c12") != "db1-3f9a0c12" {
		t.Fatalf("keys: %q", k)
	}
	for _, tc := range []struct{ name, key, body, want string }{
		{"not JSON", "node-1", "\x00\x01garbage", "not a baseline record"},
		{"other version", "node-1", `{"v":2,"node":"node-1","week":1,"counts":[]}`, "version 2"},
		{"foreign key", "node-2", string(b), "another node's key"},
		{"unknown field", "node-1", `{"v":1,"node":"node-1","week":1,"counts":[],"x":1}`, "unknown field"},
		{"short", "node-1", `{"v":1,"node":"node-1","week":1,"counts":[[1]]}`, "hours of the week"},
		{"future", "node-1", fmt.Sprintf(`{"v":1,"node":"node-1","week":%d,"counts":[]}`, week+5), "not a past week"},
		{"negative", "node-1", strings.Replace(string(b), "[3]", "[-7]", 1), "out of range"},
	} {
		t.Run(tc.name, func(t *testing.T) {
			if _, err := parseBaseline(tc.key, []byte(tc.body), week); err == nil || !strings.Contains(err.Error(), tc.want) {
				t.Fatalf("err %v, want one saying %q", err, tc.want)
			}
		})
	}
}

func TestAnomalyRule(t *testing.T) {
	for _, tc := range []struct {
		name     string
		count    int
		baseline float64 // per hour
		want     bool
	}{
		{"quiet", 3, 0, false},
		{"five is the floor", 5, 0, false},
		{"six over a zero baseline", 6, 0, true},
		{"within three times a busy hour", 30, 40, false}, // threshold 3 × 10 per window
		{"over three times a busy hour", 31, 40, true},
	} {
		t.Run(tc.name, func(t *testing.T) {
			if _, got := anomaly(tc.count, tc.baseline); got != tc.want {
				t.Fatalf("anomaly(%d, %v) = %v, want %v", tc.count, tc.baseline, got, tc.want)
			}
		})
	}
}

func TestSendStatsAndLag(t *testing.T) {
	c := newClock()
	a := NewAggregates(c.now)
	for range 90 {
		a.ObserveSend(true, 3*time.Millisecond)
	}
	for range 10 {
		a.ObserveSend(false, 400*time.Millisecond)
	}
	s := a.Snapshot()
	if s.Sends5.Sends != 100 || s.Sends5.Errors != 10 || s.Sends5.ErrorRate != 0.1 {
		t.Fatalf("sends_5m %+v", s.Sends5)
	}
	if s.Sends5.LagP95MS != 400 { // the 500 ms bucket, capped at the largest lag seen
		t.Fatalf("lag p95 %v, want 400", s.Sends5.LagP95MS)
	}
	c.add(10 * time.Minute)
	s = a.Snapshot()
	if s.Sends5.Sends != 0 || s.Sends60.Sends != 100 {
		t.Fatalf("after 10 minutes: 5m %+v, 60m %+v", s.Sends5, s.Sends60)
	}
}

func TestProbeSeriesAreBounded(t *testing.T) {
	c := newClock()
	a := NewAggregates(c.now)
	for i := range MaxProbeSeries + 10 {
		a.RecordProbe(ProbeResult{Node: "n", Source: strings.Repeat("s", i+1), At: c.now(), OK: true, LatencyMS: 12})
		c.add(time.Millisecond)
	}
	s := a.Snapshot()
	if len(s.Probes) != MaxProbeSeries {
		t.Fatalf("%d series kept, want %d", len(s.Probes), MaxProbeSeries)
	}
	for _, p := range s.Probes {
		if len(p.Source) <= 10 {
			t.Fatalf("an oldest series (%q) was kept", p.Source)
		}
	}
	long := strings.Repeat("é", 300)
	a.RecordProbe(ProbeResult{Node: long, Source: "x", At: c.now().Add(time.Hour), LatencyMS: 5})
	for _, p := range a.Snapshot().Probes {
		if p.Source == "x" {
			if len(p.Node) > maxNameLen || !p.Last.At.Equal(c.now()) || p.Last.LatencyMS != 0 {
				t.Fatalf("not clipped or not dated now: %d bytes, at %v, latency %v", len(p.Node), p.Last.At, p.Last.LatencyMS)
			}
		}
	}
}

func TestStateRules(t *testing.T) {
	th := Thresholds{LagDegraded: time.Second, ProbeSlow: 2 * time.Second}
	ok := Summary{Node: "a", StorageOK: true}
	for _, tc := range []struct {
		name   string
		s      Summary
		probes []ProbeWindow
		want   string
	}{
		{"healthy", ok, nil, Operational},
		{"storage down", Summary{Node: "a", StorageNote: "storage unavailable"}, nil, Outage},
		{"every probe failed", ok, []ProbeWindow{{Failed: 3}}, Outage},
		{"one probe, failed", ok, []ProbeWindow{{Failed: 1}}, Degraded},
		{"some probes failed", ok, []ProbeWindow{{OK: 5, Failed: 2}}, Degraded},
		{"one failure in thirty", ok, []ProbeWindow{{OK: 29, Failed: 1}}, Operational},
		{"probes slow", ok, []ProbeWindow{{OK: 5, P95MS: 2500}}, Degraded},
		{"half the sends failed", Summary{StorageOK: true, Sends5: SendStats{Sends: 20, Errors: 10, ErrorRate: 0.5}}, nil, Outage},
		{"a tenth of sends failed", Summary{StorageOK: true, Sends5: SendStats{Sends: 20, Errors: 2, ErrorRate: 0.1}}, nil, Degraded},
		{"too few sends to judge", Summary{StorageOK: true, Sends5: SendStats{Sends: 4, Errors: 4, ErrorRate: 1}}, nil, Operational},
		{"the hour's errors", Summary{StorageOK: true, Sends60: SendStats{Sends: 200, Errors: 20, ErrorRate: 0.1}}, nil, Degraded},
		{"lag", Summary{StorageOK: true, Sends5: SendStats{Sends: 50, LagP95MS: 1000}}, nil, Degraded},
	} {
		t.Run(tc.name, func(t *testing.T) {
			got, why := judgeNode(&tc.s, tc.probes, th)
			if got != tc.want {
				t.Fatalf("state %s (%v), want %s", got, why, tc.want)
			}
			if got != Operational && len(why) == 0 {
				t.Fatal("no reason given")
			}
		})
	}
}

func TestOverallStateAndReportsNeverFlipIt(t *testing.T) {
	th := Thresholds{LagDegraded: time.Second, ProbeSlow: time.Second}
	now := time.Now()
	node := func(name string, storage bool) peer {
		return peer{Summary: Summary{Node: name, StorageOK: storage, Reports: ReportStats{HourStart: now, Hourly: make([]int, 24), Baseline: make([]float64, 24)}}}
	}
	v := buildView("a", []peer{node("a", true), node("b", false), node("c", true)}, nil, th, now)
	if v.State != Degraded || v.Nodes[1].State != Outage {
		t.Fatalf("one node of three down: overall %s, node b %s; want degraded, outage", v.State, v.Nodes[1].State)
	}
	v = buildView("a", []peer{node("a", false), node("b", false)}, nil, th, now)
	if v.State != Outage {
		t.Fatalf("every node down: %s", v.State)
	}
	// Many reports: a note, never a state.
	p := node("a", true)
	p.Reports.Window = 500
	v = buildView("a", []peer{p}, nil, th, now)
	if v.State != Operational || !v.Reports.Anomaly || !strings.Contains(strings.Join(v.Notes, ";"), "users report problems") {
		t.Fatalf("state %s anomaly %v notes %v", v.State, v.Reports.Anomaly, v.Notes)
	}
	// An external prober's target that is not a node (a load balancer's URL) failing every
	// probe: outage.
	p = node("a", true)
	p.Probes = []ProbeStats{{Node: "https://chat.example.org", Source: "outside", Window5: ProbeWindow{Failed: 4}}}
	if v = buildView("a", []peer{p}, nil, th, now); v.State != Outage {
		t.Fatalf("unreachable from outside: %s", v.State)
	}
	// A probe of a node by its URL counts for that node.
	p = node("a", true)
	p.URL = "http://10.0.0.1:7070"
	p.Probes = []ProbeStats{{Node: "http://10.0.0.1:7070/", Source: "self", Window5: ProbeWindow{OK: 3, Failed: 3}}}
	if v = buildView("a", []peer{p}, nil, th, now); v.Nodes[0].State != Degraded || v.State != Degraded {
		t.Fatalf("node %s overall %s, want degraded", v.Nodes[0].State, v.State)
	}
}

func TestPageRendersEveryPart(t *testing.T) {
	c := newClock()
	a := NewAggregates(c.now)
	a.RecordReport(CategoryCantConnect, "x")
	a.RecordProbe(ProbeResult{Node: "n1", Source: "self", At: c.now(), OK: true, LatencyMS: 42})
	a.RecordProbe(ProbeResult{Node: "n1", Source: "self", At: c.now(), Error: "<script>alert(1)</script>"})
	s := a.Snapshot()
	s.Node, s.StorageOK = "n1", true
	resolved := c.now()
	v := buildView("n1", []peer{{Summary: s, self: true}}, []IncidentView{
		{ID: "i1", State: IncidentOpen, OpenedAt: c.now(), Updates: []IncidentUpdate{{At: c.now(), Kind: IncidentOpen, Text: "Sends fail for some users"}}},
		{ID: "i0", State: IncidentResolved, OpenedAt: c.now(), ResolvedAt: &resolved, Updates: []IncidentUpdate{{At: c.now(), Kind: IncidentResolved, Text: "fixed"}}},
	}, Thresholds{LagDegraded: time.Second, ProbeSlow: time.Second}, c.now())
	var buf bytes.Buffer
	if err := renderPage(&buf, &v); err != nil {
		t.Fatal(err)
	}
	page := buf.String()
	for _, want := range []string{`name="viewport"`, "Degraded service", "State: degraded", "Sends fail for some users", "resolved", "n1", "(this node)", "<svg", "<polyline", "<rect", "42 ms", "&lt;script&gt;"} {
		if !strings.Contains(page, want) {
			t.Errorf("page lacks %q", want)
		}
	}
	if strings.Contains(page, "<script>") {
		t.Error("a probe's error text reached the page unescaped")
	}
}
