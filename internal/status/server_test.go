// Copyright 2026 The Petrel Authors
// SPDX-License-Identifier: Apache-2.0

package status_test

import (
	"bytes"
	"context"
	"encoding/json"
	"fmt"
	"io"
	"net/http"
	"os"
	"os/exec"
	"slices"
	"sort"
	"strconv"
	"strings"
	"testing"
	"time"

	"github.com/petrelchat/petrel/internal/server"
	"github.com/petrelchat/petrel/internal/status"
	"github.com/petrelchat/petrel/internal/testserver"
)

var hc = &http.Client{Timeout: 10 * time.Second}

// get fetches url and returns the status code, body and how long it took.
func get(t *testing.T, url string) (int, string, time.Duration) {
	t.Helper()
	start := time.Now()
	resp, err := hc.Get(url)
	if err != nil {
		t.Fatalf("GET %s: %v", url, err)
	}
	defer resp.Body.Close()
	b, err := io.ReadAll(resp.Body)
	if err != nil {
		t.Fatalf("GET %s: %v", url, err)
	}
	return resp.StatusCode, string(b), time.Since(start)
}

func view(t *testing.T, base string) status.View {
	t.Helper()
	code, body, _ := get(t, base+status.JSONPath)
	if code != http.StatusOK {
		t.Fatalf("%s: %d %s", status.JSONPath, code, body)
	}
	var v status.View
	if err := json.Unmarshal([]byte(body), &v); err != nil {
		t.Fatalf("%s: %v", status.JSONPath, err)
	}
	return v
}

// post sends body to url with an optional bearer token; it returns the code and the body.
func post(t *testing.T, url, token string, body []byte) (int, http.Header, string) {
	t.Helper()
	req, err := http.NewRequest(http.MethodPost, url, bytes.NewReader(body))
	if err != nil {
		t.Fatal(err)
	}
	req.Header.Set("Content-Type", "application/json")
	if token != "" {
		req.Header.Set("Authorization", "Bearer "+token)
	}
	resp, err := hc.Do(req)
	if err != nil {
		t.Fatalf("POST %s: %v", url, err)
	}
	defer resp.Body.Close()
	b, _ := io.ReadAll(resp.Body)
	return resp.StatusCode, resp.Header, string(b)
}

func mustJSON(v any) []byte {
	b, err := json.Marshal(v)
	if err != nil {
		panic(err)
	}
	return b
}

// waitView polls /status.json until ok accepts it.
func waitView(t *testing.T, base string, within time.Duration, what string, ok func(status.View) bool) status.View {
	t.Helper()
	deadline := time.Now().Add(within)
	for {
		v := view(t, base)
		if ok(v) {
			return v
		}
		if time.Now().After(deadline) {
			t.Fatalf("%s: not within %s; last view: state %s, notes %v, reports %d", what, within, v.State, v.Notes, v.Reports.Count)
		}
		time.Sleep(50 * time.Millisecond) // polling a page that is re-rendered once a second
	}
}

func fastStatus(c *server.Config) {
	c.StatusShareInterval = server.Duration{Duration: 200 * time.Millisecond}
}

func TestStatusPageHealthy(t *testing.T) {
	s := testserver.Start(t, testserver.WithConfig(fastStatus))
	code, page, took := get(t, s.URL()+status.PagePath)
	if code != http.StatusOK {
		t.Fatalf("/status: %d", code)
	}
	for _, want := range []string{"<!doctype html>", `name="viewport"`, "All systems operational", "State: operational", "(this node)", "No incidents", "<svg"} {
		if !strings.Contains(page, want) {
			t.Errorf("/status lacks %q", want)
		}
	}
	if strings.Contains(page, "<script") {
		t.Error("/status has a script")
	}
	t.Logf("/status answered in %s", took)
	v := view(t, s.URL())
	if v.State != status.Operational || len(v.Nodes) != 1 || !v.Nodes[0].Self || v.Nodes[0].Node != "test" || !v.Nodes[0].StorageOK {
		t.Fatalf("view: %+v", v)
	}
	// Sends count: a send acked shows in sends_5m.
	alice := testserver.Dial(t, s.URL())
	alice.MustRegister("alice")
	bob := testserver.Dial(t, s.URL())
	bob.MustRegister("bob")
	if r := alice.Send("m1", "bob", []string{bob.DeviceID}, []byte("x")); r.GetSendResult() == nil {
		t.Fatalf("send: %v", r)
	}
	waitView(t, s.URL(), 5*time.Second, "the send counted", func(v status.View) bool { return v.Nodes[0].Sends5.Sends >= 1 })
}

func TestProblemReports(t *testing.T) {
	s := testserver.Start(t, testserver.WithConfig(func(c *server.Config) {
		fastStatus(c)
		c.ReportsPerIPPerMinute = 6 // burst 6: the 2 good reports and the 4 bad ones below
	}))
	url := s.URL() + status.ReportsPath
	code, _, body := post(t, url, "", mustJSON(status.ReportRequest{Category: status.CategoryCantConnect, Client: "c1", Note: "spinner for ever"}))
	if code != http.StatusAccepted || !strings.Contains(body, `"counted":true`) {
		t.Fatalf("first report: %d %s", code, body)
	}
	code, _, body = post(t, url, "", mustJSON(status.ReportRequest{Category: status.CategoryNotSending, Client: "c1"}))
	if code != http.StatusAccepted || !strings.Contains(body, `"counted":false`) {
		t.Fatalf("second report of c1: %d %s", code, body)
	}
	for _, tc := range []struct {
		name, body, want string
	}{
		{"not JSON", "category=other", "not a JSON report"},
		{"unknown category", `{"category":"fire"}`, "unknown category"},
		{"long note", string(mustJSON(status.ReportRequest{Category: "other", Note: strings.Repeat("n", status.MaxNoteBytes+1)})), "at most 500"},
		{"too large", `{"category":"other","x":"` + strings.Repeat("x", status.MaxReportBytes) + `"}`, "larger than 2048 bytes"},
	} {
		t.Run(tc.name, func(t *testing.T) {
			code, _, body := post(t, url, "", []byte(tc.body))
			var e struct{ Error string }
			if code != http.StatusBadRequest || json.Unmarshal([]byte(body), &e) != nil || !strings.Contains(e.Error, tc.want) {
				t.Fatalf("%d %s; want 400 with an error saying %q", code, body, tc.want)
			}
		})
	}
	// The burst (6) is spent: the next is refused with a retry hint.
	code, hdr, body := post(t, url, "", mustJSON(status.ReportRequest{Category: status.CategoryOther, Client: "c9"}))
	if code != http.StatusTooManyRequests || hdr.Get("Retry-After") == "" || !strings.Contains(body, "too many reports") {
		t.Fatalf("over the rate: %d %v %s", code, hdr, body)
	}
	v := waitView(t, s.URL(), 5*time.Second, "one report counted", func(v status.View) bool { return v.Reports.Count == 1 })
	if v.Reports.ByCategory[status.CategoryCantConnect] != 1 || v.Reports.Hourly[23] != 1 || v.Reports.Anomaly || v.State != status.Operational {
		t.Fatalf("reports %+v, state %s", v.Reports, v.State)
	}
}

func TestProbeIntake(t *testing.T) {
	const probeToken = "0123456789abcdef0123456789abcdef-probe"
	s := testserver.Start(t, testserver.WithConfig(func(c *server.Config) {
		fastStatus(c)
		c.ProbeToken = probeToken
	}))
	url := s.URL() + status.ProbesPath
	now := time.Now()
	ok := status.ProbeBatch{Results: []status.ProbeResult{
		{Node: s.URL(), Source: "outside", At: now, OK: true, LatencyMS: 35},
		{Node: s.URL(), Source: "outside", At: now, OK: true, LatencyMS: 40},
	}}
	if code, _, body := post(t, url, "", mustJSON(ok)); code != http.StatusUnauthorized || !strings.Contains(body, "probe token") {
		t.Fatalf("no token: %d %s", code, body)
	}
	if code, _, _ := post(t, url, "wrong-token-wrong-token-wrong-token", mustJSON(ok)); code != http.StatusUnauthorized {
		t.Fatalf("wrong token: %d", code)
	}
	if code, _, body := post(t, url, probeToken, mustJSON(ok)); code != http.StatusAccepted || !strings.Contains(body, `"accepted":2`) {
		t.Fatalf("probe token: %d %s", code, body)
	}
	if code, _, _ := post(t, url, s.AdminToken(t), mustJSON(status.ProbeBatch{Results: ok.Results[:1]})); code != http.StatusAccepted {
		t.Fatalf("operator token: %d", code)
	}
	if code, _, _ := post(t, url, probeToken, []byte("[1,2")); code != http.StatusBadRequest {
		t.Fatalf("bad JSON: %d", code)
	}
	big := status.ProbeBatch{Results: make([]status.ProbeResult, status.MaxProbeBatch+1)}
	for i := range big.Results {
		big.Results[i] = status.ProbeResult{Node: "n", Source: "s"}
	}
	if code, _, body := post(t, url, probeToken, mustJSON(big)); code != http.StatusBadRequest || !strings.Contains(body, "at most 100") {
		t.Fatalf("too many results: %d %s", code, body)
	}
	v := waitView(t, s.URL(), 5*time.Second, "probes shown", func(v status.View) bool {
		return len(v.Probes) == 1 && v.Probes[0].Window5.OK == 3
	})
	if p := v.Probes[0]; p.Source != "outside" || p.State != status.Operational || p.Last.LatencyMS == 0 || len(p.LatencyMS) != 144 || v.State != status.Operational {
		t.Fatalf("probe view %+v, state %s", p, v.State)
	}
	// The node's own sink (for its self-prober) feeds the same view; every probe of this node
	// failing makes it an outage.
	for range 3 {
		s.Server().StatusSink().RecordProbe(status.ProbeResult{Node: s.URL(), Source: "self", At: time.Now(), Error: "no answer within 10s"})
	}
	v = waitView(t, s.URL(), 5*time.Second, "failed probes shown", func(v status.View) bool { return v.State != status.Operational })
	if v.State != status.Degraded || v.Nodes[0].State != status.Degraded {
		// 3 ok from outside, 3 failed from self: half failed → degraded, not outage.
		t.Fatalf("state %s, node %s; want degraded: %v", v.State, v.Nodes[0].State, v.Notes)
	}
}

func adminDo(t *testing.T, s *testserver.Server, method string, body any) (int, string) {
	t.Helper()
	var rd io.Reader
	if body != nil {
		rd = bytes.NewReader(mustJSON(body))
	}
	req, _ := http.NewRequest(method, s.AdminURL()+status.AdminIncidentsPath, rd)
	req.Header.Set("Authorization", "Bearer "+s.AdminToken(t))
	resp, err := hc.Do(req)
	if err != nil {
		t.Fatal(err)
	}
	defer resp.Body.Close()
	b, _ := io.ReadAll(resp.Body)
	return resp.StatusCode, string(b)
}

func TestIncidentsAreDurableAndShown(t *testing.T) {
	s := testserver.Start(t, testserver.WithConfig(fastStatus))
	// Without the operator token: refused.
	if code, _, _ := post(t, s.AdminURL()+status.AdminIncidentsPath, "", mustJSON(status.IncidentRequest{Action: "open", Text: "x"})); code != http.StatusUnauthorized {
		t.Fatalf("no token: %d", code)
	}
	if code, body := adminDo(t, s, http.MethodPost, status.IncidentRequest{Action: "update", Text: "x"}); code != http.StatusNotFound || !strings.Contains(body, "none is open") {
		t.Fatalf("update with nothing open: %d %s", code, body)
	}
	if code, body := adminDo(t, s, http.MethodPost, status.IncidentRequest{Action: "open", Text: "  "}); code != http.StatusBadRequest {
		t.Fatalf("empty text: %d %s", code, body)
	}
	code, body := adminDo(t, s, http.MethodPost, status.IncidentRequest{Action: "open", Text: "Messages to some users are delayed"})
	var inc status.IncidentView
	if code != http.StatusOK || json.Unmarshal([]byte(body), &inc) != nil || inc.State != status.IncidentOpen {
		t.Fatalf("open: %d %s", code, body)
	}
	if code, body = adminDo(t, s, http.MethodPost, status.IncidentRequest{Action: "update", Text: "Cause found: a full disk"}); code != http.StatusOK {
		t.Fatalf("update: %d %s", code, body)
	}
	v := waitView(t, s.URL(), 5*time.Second, "incident shown", func(v status.View) bool { return len(v.Incidents) == 1 && len(v.Incidents[0].Updates) == 2 })
	if v.Incidents[0].ID != inc.ID || v.Incidents[0].State != status.IncidentOpen {
		t.Fatalf("incidents %+v", v.Incidents)
	}
	// Durable: after a restart the page still shows it (read back from the bucket).
	s.Restart(t)
	waitView(t, s.URL(), 10*time.Second, "incident shown after restart", func(v status.View) bool { return len(v.Incidents) == 1 && len(v.Incidents[0].Updates) == 2 })
	if code, body = adminDo(t, s, http.MethodPost, status.IncidentRequest{Action: "resolve", ID: inc.ID, Text: "Disk replaced; delayed messages delivered"}); code != http.StatusOK {
		t.Fatalf("resolve: %d %s", code, body)
	}
	if code, body = adminDo(t, s, http.MethodPost, status.IncidentRequest{Action: "update", ID: inc.ID, Text: "again"}); code != http.StatusConflict {
		t.Fatalf("update of a resolved incident: %d %s", code, body)
	}
	code, body = adminDo(t, s, http.MethodGet, nil)
	var list status.IncidentList
	if code != http.StatusOK || json.Unmarshal([]byte(body), &list) != nil || len(list.Incidents) != 1 || list.Incidents[0].ResolvedAt == nil {
		t.Fatalf("list: %d %s", code, body)
	}
	_, page, _ := get(t, s.URL()+status.PagePath)
	waitView(t, s.URL(), 5*time.Second, "resolved shown", func(v status.View) bool {
		return len(v.Incidents) == 1 && v.Incidents[0].State == status.IncidentResolved
	})
	_, page, _ = get(t, s.URL()+status.PagePath)
	for _, want := range []string{"Messages to some users are delayed", "Cause found: a full disk", "Disk replaced", "resolved"} {
		if !strings.Contains(page, want) {
			t.Errorf("page lacks %q", want)
		}
	}
}

// timedGet fetches url and returns the status code, the headers, the body and how long it took.
func timedGet(t *testing.T, url string) (int, http.Header, string, time.Duration) {
	t.Helper()
	start := time.Now()
	resp, err := hc.Get(url)
	if err != nil {
		t.Fatalf("GET %s: %v", url, err)
	}
	defer resp.Body.Close()
	b, err := io.ReadAll(resp.Body)
	if err != nil {
		t.Fatalf("GET %s: %v", url, err)
	}
	return resp.StatusCode, resp.Header, string(b), time.Since(start)
}

// serverTime is the handling time a page answer reports in its Server-Timing header.
func serverTime(t *testing.T, h http.Header) time.Duration {
	t.Helper()
	v := h.Get("Server-Timing")
	_, dur, ok := strings.Cut(v, "dur=")
	ms, err := strconv.ParseFloat(dur, 64)
	if !ok || err != nil || ms < 0 {
		t.Fatalf("Server-Timing %q: want page;dur=MS", v)
	}
	return time.Duration(ms * float64(time.Millisecond))
}

// assertFast fetches /status and /status.json: the server's own handling time (Server-Timing)
// must stay under 100 ms, and the wall clock under 1 s (a page blocked on the store or the
// messaging path takes seconds; the wall clock also holds this machine's scheduling, which other
// tests running at the same time may load: see TestStatusWhileMessagingSaturated).
func assertFast(t *testing.T, base string) (page string, walls []time.Duration) {
	t.Helper()
	for _, p := range []string{status.PagePath, status.JSONPath} {
		code, h, body, took := timedGet(t, base+p)
		if code != http.StatusOK {
			t.Fatalf("%s: %d %s", p, code, body)
		}
		if st := serverTime(t, h); st >= 100*time.Millisecond {
			t.Fatalf("%s: the server took %s (want < 100ms)", p, st)
		}
		if took >= time.Second {
			t.Fatalf("%s took %s (want < 1s, and < 100ms on a quiet machine)", p, took)
		}
		if p == status.PagePath {
			page = body
		}
		walls = append(walls, took)
	}
	return page, walls
}

func TestStatusWhileStoreBroken(t *testing.T) {
	s := testserver.Start(t, testserver.WithConfig(fastStatus))
	assertFast(t, s.URL())
	if err := s.Server().Bus().DisableJetStreamForTest(); err != nil {
		t.Fatal(err)
	}
	deadline := time.Now().Add(10 * time.Second)
	var walls []time.Duration
	for {
		page, w := assertFast(t, s.URL())
		walls = append(walls, w...)
		if strings.Contains(page, "State: outage") || strings.Contains(page, "State: degraded") {
			if !strings.Contains(page, "storage unavailable") {
				t.Fatalf("the page does not say why: %s", page)
			}
			break
		}
		if time.Now().After(deadline) {
			t.Fatal("the page still says operational 10s after the store broke")
		}
		time.Sleep(100 * time.Millisecond) // the state is sampled once a second
	}
	for range 10 {
		_, w := assertFast(t, s.URL())
		walls = append(walls, w...)
	}
	slices.Sort(walls)
	if med := walls[len(walls)/2]; med >= 100*time.Millisecond {
		t.Fatalf("while the store is down the page took %s (median of %d), want < 100ms", med, len(walls))
	}
	v := view(t, s.URL())
	if v.State != status.Outage || v.Nodes[0].StorageOK {
		t.Fatalf("state %s, storage_ok %v; want outage", v.State, v.Nodes[0].StorageOK)
	}
	// Problem reports still go in while the store is down (memory only).
	if code, _, body := post(t, s.URL()+status.ReportsPath, "", mustJSON(status.ReportRequest{Category: status.CategoryNotSending})); code != http.StatusAccepted {
		t.Fatalf("report while the store is down: %d %s", code, body)
	}
}

// TestStatusWhileMessagingSaturated: /status answers within 100 ms while the messaging path is
// saturated (invariant 8).
//
// How it measures, so that it holds on a busy 2-core machine: the load comes from a separate
// process (this test binary run again as TestSaturateHelper, bounded to 4 senders × 300 messages
// and 60 s), so that the clients' goroutines do not compete with the server and this test's
// measuring client inside one Go scheduler; and the 100 ms requirement is checked on the server's
// own handling time, which each page answer reports in its Server-Timing header. The wall clock
// as the client sees it also holds the scheduling of a machine that other processes may load, so
// it is held to looser bounds: the median of the samples under 100 ms, and none over 1 s (a page
// blocked on the messaging path or the store would take seconds).
func TestStatusWhileMessagingSaturated(t *testing.T) {
	s := testserver.Start(t, testserver.WithConfig(func(c *server.Config) {
		fastStatus(c)
		// Deliveries count as slow from 20 ms on, so that this machine's saturation shows
		// within a bounded load.
		c.StatusLagDegraded = server.Duration{Duration: 20 * time.Millisecond}
	}))
	assertFast(t, s.URL())
	ctx, cancel := context.WithTimeout(context.Background(), 90*time.Second)
	defer cancel()
	var out bytes.Buffer
	load := exec.CommandContext(ctx, os.Args[0], "-test.run=^TestSaturateHelper$", "-test.count=1", "-test.timeout=60s", "-test.v")
	load.Env = append(os.Environ(), saturateEnv+"="+s.URL())
	load.Stdout, load.Stderr = &out, &out
	if err := load.Start(); err != nil {
		t.Fatal(err)
	}
	loadDone := make(chan error, 1)
	go func() { loadDone <- load.Wait() }()

	var wall, handled []time.Duration
	saw, finished := "", false
	var loadErr error
	// The page is read on for a while after the load ends: the load may finish between two
	// readings, and what it did reaches the page at its next refresh and stays there (its
	// windows are minutes long).
	var after time.Time
	for saw == "" {
		for _, p := range []string{status.PagePath, status.JSONPath} {
			code, hdr, body, took := timedGet(t, s.URL()+p)
			if code != http.StatusOK {
				t.Fatalf("%s: %d %s", p, code, body)
			}
			srv := serverTime(t, hdr)
			wall, handled = append(wall, took), append(handled, srv)
			if srv >= 100*time.Millisecond || took >= time.Second {
				t.Fatalf("%s took %s on the server, %s in all (want < 100 ms, < 1 s)", p, srv, took)
			}
			switch {
			case p != status.PagePath:
			case strings.Contains(body, "State: degraded"):
				saw = status.Degraded
			case strings.Contains(body, "State: outage"):
				saw = status.Outage
			}
		}
		if finished && time.Since(after) > 5*time.Second {
			break
		}
		select {
		case loadErr = <-loadDone:
			finished, after = true, time.Now()
		case <-time.After(100 * time.Millisecond): // the load runs meanwhile
		}
	}
	if !finished {
		loadErr = <-loadDone
	}
	if loadErr != nil {
		t.Fatalf("the load process: %v\n%s", loadErr, out.String())
	}
	if saw == "" {
		v := view(t, s.URL())
		t.Fatalf("the page never said degraded or outage under load: %+v\nload process:\n%s", v.Nodes[0], out.String())
	}
	sort.Slice(wall, func(i, j int) bool { return wall[i] < wall[j] })
	sort.Slice(handled, func(i, j int) bool { return handled[i] < handled[j] })
	med := wall[len(wall)/2]
	t.Logf("under load the page said %s; %d requests: wall median %s max %s, server max %s", saw, len(wall), med, wall[len(wall)-1], handled[len(handled)-1])
	if med >= 100*time.Millisecond {
		t.Fatalf("the median of %d page requests took %s in all (want < 100 ms)", len(wall), med)
	}
}

// saturateEnv names the server URL TestSaturateHelper loads.
const saturateEnv = "PETREL_TEST_SATURATE_URL"

// TestSaturateHelper is the load of TestStatusWhileMessagingSaturated, run in a process of its
// own; without saturateEnv it is skipped. Four senders pipeline 300 sends each to an offline
// device (every send goes to the store) without waiting for acks, then read their acks.
func TestSaturateHelper(t *testing.T) {
	url := os.Getenv(saturateEnv)
	if url == "" {
		t.Skip("the load process of TestStatusWhileMessagingSaturated")
	}
	bob := testserver.Dial(t, url)
	bob.MustRegister("bob")
	bobDev := bob.DeviceID
	bob.WS.CloseNow() // offline: every send goes to the store
	const senders, perSender = 4, 300
	clients := make([]*testserver.RawClient, senders)
	for i := range clients {
		clients[i] = testserver.Dial(t, url)
		clients[i].MustRegister(fmt.Sprintf("sender%d", i))
	}
	body := bytes.Repeat([]byte("x"), 200)
	// Readers first (a client that does not read its acks is cut as a slow consumer), then
	// every sender's frames pipelined without waiting for acks.
	errs := make(chan error, senders)
	for _, c := range clients {
		go func() {
			for range perSender {
				if _, err := c.ReadErr(30 * time.Second); err != nil {
					errs <- err
					return
				}
			}
			errs <- nil
		}()
	}
	for j := range perSender {
		for i, c := range clients {
			c.SendAsync(fmt.Sprintf("m-%d-%d", i, j), "bob", []string{bobDev}, nil, body)
		}
	}
	for range clients {
		if err := <-errs; err != nil {
			t.Fatalf("reading acks: %v", err)
		}
	}
}

// Report notes are kept for operators (admin listener, operator token; the newest first, at most
// MaxReportNotes, with no address or client id) and never shown on the public page.
func TestReportNotesForOperators(t *testing.T) {
	s := testserver.Start(t, testserver.WithConfig(func(c *server.Config) {
		fastStatus(c)
		c.ReportsPerIPPerMinute = 10000
	}))
	const evil = `<script>alert(1)</script> & "quotes"`
	for i, note := range []string{"first note", "   ", evil} {
		req := status.ReportRequest{Category: status.CategoryNotSending, Client: fmt.Sprintf("c%d", i), Note: note}
		if code, _, body := post(t, s.URL()+status.ReportsPath, "", mustJSON(req)); code != http.StatusAccepted {
			t.Fatalf("report: %d %s", code, body)
		}
	}
	url := s.AdminURL() + status.AdminReportsPath
	if code, _, _ := get(t, url); code != http.StatusUnauthorized {
		t.Fatalf("without the operator token: %d", code)
	}
	list := func() (status.ReportNoteList, string) {
		req, _ := http.NewRequest(http.MethodGet, url, nil)
		req.Header.Set("Authorization", "Bearer "+s.AdminToken(t))
		resp, err := hc.Do(req)
		if err != nil {
			t.Fatal(err)
		}
		defer resp.Body.Close()
		b, _ := io.ReadAll(resp.Body)
		var l status.ReportNoteList
		if resp.StatusCode != http.StatusOK || json.Unmarshal(b, &l) != nil {
			t.Fatalf("%s: %d %s", status.AdminReportsPath, resp.StatusCode, b)
		}
		return l, string(b)
	}
	l, raw := list()
	if len(l.Notes) != 2 || l.Notes[0].Note != evil || l.Notes[1].Note != "first note" || l.Notes[0].Category != status.CategoryNotSending ||
		l.Notes[0].At.IsZero() || l.Max != status.MaxReportNotes || l.Node != "test" {
		t.Fatalf("notes: %+v", l)
	}
	if strings.Contains(raw, "<script>") || strings.Contains(raw, "127.0.0.1") || strings.Contains(raw, `"c2"`) {
		t.Fatalf("the answer carries raw markup, an address or a client id: %s", raw)
	}
	_, page, _ := get(t, s.URL()+status.PagePath)
	_, js, _ := get(t, s.URL()+status.JSONPath)
	if strings.Contains(page, "first note") || strings.Contains(js, "first note") || strings.Contains(page, "alert(1)") {
		t.Fatal("a report note is on the public page")
	}
	// Bounded: only the latest MaxReportNotes are kept.
	for i := range status.MaxReportNotes + 5 {
		req := status.ReportRequest{Category: status.CategoryOther, Note: fmt.Sprintf("note %d", i)}
		if code, _, body := post(t, s.URL()+status.ReportsPath, "", mustJSON(req)); code != http.StatusAccepted {
			t.Fatalf("report %d: %d %s", i, code, body)
		}
	}
	l, _ = list()
	if len(l.Notes) != status.MaxReportNotes || l.Notes[0].Note != fmt.Sprintf("note %d", status.MaxReportNotes+4) ||
		l.Notes[status.MaxReportNotes-1].Note != "note 5" {
		t.Fatalf("%d notes, newest %q, oldest %q", len(l.Notes), l.Notes[0].Note, l.Notes[len(l.Notes)-1].Note)
	}
}
