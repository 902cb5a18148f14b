// Copyright 2026 The Petrel Authors
// SPDX-License-Identifier: Apache-2.0

package server_test

import (
	"bufio"
	"fmt"
	"net/http"
	"os"
	"regexp"
	"runtime"
	"slices"
	"strings"
	"testing"
	"time"

	"github.com/prometheus/client_golang/prometheus/testutil/promlint"
	dto "github.com/prometheus/client_model/go"
	"github.com/prometheus/common/expfmt"
	"github.com/prometheus/common/model"

	"github.com/petrelchat/petrel/internal/testserver"
	pb "github.com/petrelchat/petrel/proto/petrel/v1"
)

// documentedMetric is one row of README's metrics table.
type documentedMetric struct {
	typ    string   // counter, gauge, histogram
	labels []string // label names, sorted
}

// readmeMetrics reads the metrics table under "## Operating Petrel" → "### Metrics" in README.md:
// rows "| `name` | type | labels | what |", labels as "`a`, `b`" or "".
func readmeMetrics(t *testing.T) map[string]documentedMetric {
	t.Helper()
	f, err := os.Open("../../README.md")
	if err != nil {
		t.Fatal(err)
	}
	defer f.Close()
	row := regexp.MustCompile("^\\| `(petrel_[a-z0-9_]+)` \\| (counter|gauge|histogram) \\| ([^|]*) \\|")
	label := regexp.MustCompile("`([a-z_]+)`")
	out := map[string]documentedMetric{}
	section, sub := "", ""
	sc := bufio.NewScanner(f)
	sc.Buffer(make([]byte, 1<<20), 1<<20)
	for sc.Scan() {
		line := sc.Text()
		switch {
		case strings.HasPrefix(line, "## "):
			section, sub = line, ""
		case strings.HasPrefix(line, "### "):
			sub = line
		}
		if section != "## Operating Petrel" || sub != "### Metrics" {
			continue
		}
		m := row.FindStringSubmatch(line)
		if m == nil {
			if strings.HasPrefix(line, "| `petrel_") {
				t.Errorf("README metrics table: malformed row %q", line)
			}
			continue
		}
		if _, dup := out[m[1]]; dup {
			t.Errorf("README metrics table lists %s twice", m[1])
		}
		var labels []string
		for _, l := range label.FindAllStringSubmatch(m[3], -1) {
			labels = append(labels, l[1])
		}
		slices.Sort(labels)
		out[m[1]] = documentedMetric{typ: m[2], labels: labels}
	}
	if err := sc.Err(); err != nil {
		t.Fatal(err)
	}
	if len(out) < 50 {
		t.Fatalf("README: found only %d metrics under Operating Petrel → Metrics", len(out))
	}
	return out
}

// onlyWhen are documented metrics a single node without TLS or cluster routes does not export,
// and why; the others must all be on /metrics from the start or after the traffic below.
var onlyWhen = map[string]string{
	"petrel_gateway_tls_handshakes_total":          "only with TLS on the public listener",
	"petrel_cluster_route_refusals_total":          "only with a cluster listener",
	"petrel_directory_bundle_claims_limited_total": "a limit's series appears on its first hit",
	"petrel_directory_prekeys_claimed_total":       "a kind's series appears on its first claim",
	"petrel_directory_registrations_refused_total": "a reason's series appears on its first refusal",
}

// scrape reads the admin listener's /metrics.
func scrape(t *testing.T, adminURL string) map[string]*dto.MetricFamily {
	t.Helper()
	resp, err := http.Get(adminURL + "/metrics")
	if err != nil {
		t.Fatal(err)
	}
	defer resp.Body.Close()
	if resp.StatusCode != http.StatusOK {
		t.Fatalf("/metrics: %s", resp.Status)
	}
	p := expfmt.NewTextParser(model.LegacyValidation)
	mfs, err := p.TextToMetricFamilies(resp.Body)
	if err != nil {
		t.Fatalf("/metrics does not parse: %v", err)
	}
	return mfs
}

// value is the counter or gauge value (histogram: the count) of family name's series whose
// labels include want (pairs: name, value).
func value(t *testing.T, mfs map[string]*dto.MetricFamily, name string, want ...string) float64 {
	t.Helper()
	mf, ok := mfs[name]
	if !ok {
		t.Fatalf("%s is not on /metrics", name)
	}
next:
	for _, m := range mf.GetMetric() {
		for i := 0; i+1 < len(want); i += 2 {
			if !slices.ContainsFunc(m.GetLabel(), func(l *dto.LabelPair) bool { return l.GetName() == want[i] && l.GetValue() == want[i+1] }) {
				continue next
			}
		}
		switch {
		case m.Counter != nil:
			return m.GetCounter().GetValue()
		case m.Gauge != nil:
			return m.GetGauge().GetValue()
		case m.Histogram != nil:
			return float64(m.GetHistogram().GetSampleCount())
		}
	}
	t.Fatalf("%s%v: no such series", name, want)
	return 0
}

// TestMetricsComplete drives one registration, a live send, a stored send and its drain and a
// rate-limited burst through a real server, then scrapes the admin listener's /metrics and checks
// it against README's metrics table (both ways: nothing undocumented, nothing documented
// missing), the types and labels, Prometheus's naming conventions (promlint), and that the
// counters of that traffic moved.
func TestMetricsComplete(t *testing.T) {
	s := testserver.Start(t)
	alice, bob := onlinePair(t, s) // two registrations

	// A live send: Bob is connected and acks.
	got := make(chan *pb.Deliver, 1)
	go func() {
		d := bob.NextPush().GetDeliver()
		bob.Write(&pb.Frame{Body: &pb.Frame_DeliverAck{DeliverAck: &pb.DeliverAck{Tags: []uint64{d.GetTag()}}}})
		got <- d
	}()
	if r := alice.Send("live-1", "bob", []string{bob.DeviceID}, []byte("c1")); r.GetSendResult() == nil {
		t.Fatalf("live send: %v", r)
	}
	if d := <-got; d.GetEnvelope().GetMessageId() != "live-1" {
		t.Fatalf("bob got %v", d)
	}

	// A stored send: Bob is offline; the inbox depth shows it.
	bobKey, bobDev := bob.AuthKey, bob.DeviceID
	bob.WS.CloseNow()
	waitConns(t, s, 1)
	if r := alice.Send("stored-1", "bob", []string{bobDev}, []byte("c2")); r.GetSendResult() == nil {
		t.Fatalf("stored send: %v", r)
	}
	if err := s.Server().SampleInboxDepthForTest(); err != nil {
		t.Fatal(err)
	}
	if v := value(t, scrape(t, s.AdminURL()), "petrel_mailbox_inbox_messages"); v != 1 {
		t.Fatalf("petrel_mailbox_inbox_messages = %v with one envelope stored, want 1", v)
	}
	// Bob comes back and drains it.
	bob = testserver.Dial(t, s.URL())
	if w := bob.Auth(bobKey); w.GetWelcome() == nil {
		t.Fatalf("auth: %v", w)
	}
	d := mustDeliver(t, bob)
	if d.GetEnvelope().GetMessageId() != "stored-1" {
		t.Fatalf("drain: got %v", d)
	}
	bob.Write(&pb.Frame{Body: &pb.Frame_DeliverAck{DeliverAck: &pb.DeliverAck{Tags: []uint64{d.GetTag()}}}})
	if p := bob.Request(&pb.Frame{Body: &pb.Frame_Ping{Ping: &pb.Ping{}}}); p.GetPong() == nil {
		t.Fatalf("ping: %v", p)
	}

	// A rate-limited burst: ephemeral (typing) sends past the per-device budget (burst 10).
	limited := false
	for i := range 100 {
		r := alice.Request(&pb.Frame{Body: &pb.Frame_Send{Send: &pb.Send{MessageId: fmt.Sprintf("typing-%d", i), To: "bob", Ephemeral: true,
			Envelopes: []*pb.DeviceCiphertext{{DeviceId: bobDev, Type: pb.EnvelopeType_ENVELOPE_TYPE_MESSAGE, Ciphertext: []byte{1}}}}}})
		if code(r) == pb.ErrorCode_ERROR_CODE_RATE_LIMITED {
			limited = true
			break
		}
	}
	if !limited {
		t.Fatal("100 ephemeral sends in a row were never RATE_LIMITED")
	}

	// The stored envelope's purge runs after the ack, and the quorum watch checks once a second:
	// wait for both (states no event announces).
	var mfs map[string]*dto.MetricFamily
	deadline := time.Now().Add(10 * time.Second)
	for {
		if err := s.Server().SampleInboxDepthForTest(); err != nil {
			t.Fatal(err)
		}
		mfs = scrape(t, s.AdminURL())
		if value(t, mfs, "petrel_mailbox_inbox_messages") == 0 && value(t, mfs, "petrel_bus_jetstream_check_seconds") > 0 {
			break
		}
		if time.Now().After(deadline) {
			t.Fatalf("inbox_messages %v after the drain, jetstream checks %v: want 0 and some",
				value(t, mfs, "petrel_mailbox_inbox_messages"), value(t, mfs, "petrel_bus_jetstream_check_seconds"))
		}
		time.Sleep(50 * time.Millisecond)
	}

	// README's table and the scrape agree, both ways, with types and label names.
	doc := readmeMetrics(t)
	for name, mf := range mfs {
		if !strings.HasPrefix(name, "petrel_") {
			continue
		}
		d, ok := doc[name]
		if !ok {
			t.Errorf("%s (%s) is on /metrics but not in README's metrics table", name, mf.GetType())
			continue
		}
		if typ := strings.ToLower(mf.GetType().String()); typ != d.typ {
			t.Errorf("%s: README says %s, /metrics says %s", name, d.typ, typ)
		}
		var labels []string
		if len(mf.GetMetric()) > 0 {
			for _, l := range mf.GetMetric()[0].GetLabel() {
				labels = append(labels, l.GetName())
			}
		}
		slices.Sort(labels)
		if !slices.Equal(labels, d.labels) {
			t.Errorf("%s: README lists labels %v, /metrics has %v", name, d.labels, labels)
		}
	}
	for name := range doc {
		if _, ok := mfs[name]; !ok && onlyWhen[name] == "" {
			t.Errorf("%s is in README's metrics table but not on /metrics", name)
		}
	}
	for name := range onlyWhen {
		if _, ok := doc[name]; !ok {
			t.Errorf("onlyWhen names %s, which README does not document", name)
		}
	}

	// Prometheus's naming conventions.
	var fams []*dto.MetricFamily
	for _, mf := range mfs {
		if strings.HasPrefix(mf.GetName(), "petrel_") {
			fams = append(fams, mf)
		}
	}
	problems, err := promlint.NewWithMetricFamilies(fams).Lint()
	if err != nil {
		t.Fatal(err)
	}
	for _, p := range problems {
		t.Errorf("promlint: %s: %s", p.Metric, p.Text)
	}

	// The traffic above moved its counters.
	atLeast := []struct {
		name   string
		labels []string
		min    float64
	}{
		{"petrel_gateway_registrations_total", nil, 2},
		{"petrel_gateway_connects_total", nil, 3},
		{"petrel_gateway_connections", nil, 2},
		{"petrel_mailbox_sends_total", nil, 2},
		{"petrel_gateway_sends_acked_total", nil, 2},
		{"petrel_mailbox_stored_total", nil, 1},
		{"petrel_mailbox_purged_total", nil, 1},
		{"petrel_mailbox_deliveries_total", []string{"path", "live"}, 1},
		{"petrel_mailbox_deliveries_total", []string{"path", "stored"}, 1},
		{"petrel_mailbox_acks_total", []string{"path", "live"}, 1},
		{"petrel_mailbox_acks_total", []string{"path", "stored"}, 1},
		{"petrel_mailbox_delivery_seconds", []string{"path", "live"}, 1},
		{"petrel_mailbox_delivery_seconds", []string{"path", "stored"}, 1},
		{"petrel_gateway_requests_limited_total", []string{"limit", "ephemeral"}, 1},
		{"petrel_gateway_rejected_frames_total", []string{"code", pb.ErrorCodeName(pb.ErrorCode_ERROR_CODE_RATE_LIMITED)}, 1},
		{"petrel_build_info", []string{"go_version", runtime.Version()}, 1},
		{"petrel_bus_connected", nil, 1},
		{"petrel_bus_jetstream_ok", nil, 1},
		{"petrel_cluster_quorum", nil, 1},
	}
	for _, c := range atLeast {
		if v := value(t, mfs, c.name, c.labels...); v < c.min {
			t.Errorf("%s%v = %v, want at least %v", c.name, c.labels, v, c.min)
		}
	}
	// Nothing was refused or lost on the way.
	for _, name := range []string{"petrel_mailbox_commit_errors_total", "petrel_gateway_panics_total", "petrel_bus_reconnects_total"} {
		if v := value(t, mfs, name); v != 0 {
			t.Errorf("%s = %v, want 0", name, v)
		}
	}
	if v := value(t, mfs, "petrel_mailbox_acks_total", "path", "stored"); v != 1 {
		t.Errorf("petrel_mailbox_acks_total{path=stored} = %v, want 1 (one stored envelope acked)", v)
	}
}
