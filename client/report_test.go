// Copyright 2026 The Petrel Authors
// SPDX-License-Identifier: Apache-2.0

package client_test

import (
	"context"
	"encoding/json"
	"io"
	"net"
	"net/http"
	"net/http/httptest"
	"regexp"
	"slices"
	"strings"
	"sync"
	"testing"
	"time"

	"github.com/petrelchat/petrel/client"
	"github.com/petrelchat/petrel/client/store"
	"github.com/petrelchat/petrel/internal/status"
	"github.com/petrelchat/petrel/internal/testserver"
)

// reportSink is the external party's side of the reports endpoint (the status helper owns the
// server's handler): it decodes the contract's JSON and counts reports.
type reportSink struct {
	t *testing.T
	// fail makes the first fail requests answer 503.
	fail int

	mu       sync.Mutex
	requests int
	reports  []status.ReportRequest
	keys     [][]string
}

func (rs *reportSink) ServeHTTP(w http.ResponseWriter, r *http.Request) {
	if r.URL.Path != status.ReportsPath {
		http.NotFound(w, r) // the WebSocket path too: this "server" cannot be connected to
		return
	}
	rs.mu.Lock()
	defer rs.mu.Unlock()
	rs.requests++
	if r.Method != http.MethodPost || r.Header.Get("Content-Type") != "application/json" {
		rs.t.Errorf("report: %s with Content-Type %q", r.Method, r.Header.Get("Content-Type"))
	}
	if rs.requests <= rs.fail {
		http.Error(w, "try later", http.StatusServiceUnavailable)
		return
	}
	b, _ := io.ReadAll(io.LimitReader(r.Body, 4096))
	var req status.ReportRequest
	var raw map[string]any
	if err := json.Unmarshal(b, &req); err != nil {
		rs.t.Errorf("report: %v: %s", err, b)
	}
	_ = json.Unmarshal(b, &raw)
	var keys []string
	for k := range raw {
		keys = append(keys, k)
	}
	slices.Sort(keys)
	rs.reports = append(rs.reports, req)
	rs.keys = append(rs.keys, keys)
	w.WriteHeader(http.StatusNoContent)
}

func (rs *reportSink) state() (requests int, reports []status.ReportRequest, keys [][]string) {
	rs.mu.Lock()
	defer rs.mu.Unlock()
	return rs.requests, slices.Clone(rs.reports), slices.Clone(rs.keys)
}

// deadURL returns the URL of a loopback port nothing listens on.
func deadURL(t *testing.T) string {
	ln, err := net.Listen("tcp", "127.0.0.1:0")
	if err != nil {
		t.Fatal(err)
	}
	u := "http://" + ln.Addr().String()
	ln.Close()
	return u
}

// failingClient runs the registered device in home with cfg; it returns a channel that gets one
// value per Disconnected event, and the client.
func failingClient(t *testing.T, home string, cfg client.Config, setup func(*client.Client)) (*client.Client, <-chan struct{}) {
	t.Helper()
	st, err := store.Open(home, store.Options{NoSync: true})
	if err != nil {
		t.Fatal(err)
	}
	events := make(chan client.Event)
	cfg.Store, cfg.Events = st, events
	cfg.ReconnectBase, cfg.ReconnectMax = 2*time.Millisecond, 20*time.Millisecond
	c, err := client.Open(cfg)
	if err != nil {
		t.Fatal(err)
	}
	if setup != nil {
		setup(c)
	}
	disc := make(chan struct{}, 10000)
	collected := make(chan struct{})
	go func() {
		defer close(collected)
		for ev := range events {
			switch ev.(type) {
			case *client.Disconnected:
				disc <- struct{}{}
			case *client.Connected:
				t.Errorf("connected, but every attempt should fail")
			}
		}
	}()
	runDone := make(chan error, 1)
	go func() { runDone <- c.Run(context.Background()) }()
	t.Cleanup(func() {
		c.Close()
		<-runDone
		close(events)
		<-collected
		st.Close()
	})
	return c, disc
}

// registeredHome registers name on a real server and returns its home; the server then stops, so
// that the account exists but nothing answers at its URL.
func registeredHome(t *testing.T, name string) string {
	t.Helper()
	srv := testserver.Start(t)
	d := register(t, srv, name, devOpts{})
	srv.Stop()
	return d.home
}

func waitUntil(t *testing.T, what string, cond func() bool) {
	t.Helper()
	deadline := time.Now().Add(waitFor)
	for !cond() {
		if time.Now().After(deadline) {
			t.Fatalf("timed out waiting for %s", what)
		}
		time.Sleep(5 * time.Millisecond) // polling with a deadline
	}
}

// waitDisconnects waits for n more failed attempts.
func waitDisconnects(t *testing.T, disc <-chan struct{}, n int) {
	t.Helper()
	timeout := time.After(waitFor)
	for range n {
		select {
		case <-disc:
		case <-timeout:
			t.Fatalf("timed out waiting for %d failed attempts", n)
		}
	}
}

// TestAutoReportAfterSustainedFailure: a client that cannot connect (the host answers HTTP but
// not the WebSocket) sends one anonymous cant-connect report to the same host's reports
// endpoint, and no second one within the hour however often it fails again.
func TestAutoReportAfterSustainedFailure(t *testing.T) {
	home := registeredHome(t, "alice")
	sink := &reportSink{t: t}
	hs := httptest.NewServer(sink)
	defer hs.Close()
	start := time.Now()
	c, disc := failingClient(t, home, client.Config{OnlyServer: hs.URL, AutoReportAfter: 200 * time.Millisecond}, nil)
	waitUntil(t, "a report", func() bool { _, r, _ := sink.state(); return len(r) > 0 })
	if el := time.Since(start); el < 200*time.Millisecond {
		t.Fatalf("reported after %v, before AutoReportAfter", el)
	}
	_, reports, keys := sink.state()
	r := reports[0]
	if r.Category != status.CategoryCantConnect || r.Note != "" || !regexp.MustCompile(`^[0-9a-f]{32}$`).MatchString(r.Client) {
		t.Fatalf("report %+v", r)
	}
	if !slices.Equal(keys[0], []string{"category", "client"}) {
		t.Fatalf("report carries keys %v, want only category and client", keys[0])
	}
	if got := c.Account().Servers; !slices.Equal(got, []string{hs.URL}) {
		t.Fatalf("pinned client's servers %v", got)
	}
	// Many more failures: still one report (one an hour).
	waitDisconnects(t, disc, 30)
	if n, reports, _ := sink.state(); n != 1 || len(reports) != 1 {
		t.Fatalf("%d requests, %d reports after more failures; want 1", n, len(reports))
	}
	if c.ReportsSentForTest() != 1 {
		t.Fatalf("client counted %d reports sent", c.ReportsSentForTest())
	}
}

// TestAutoReportRetries: the reports endpoint (Config.ReportURL, apart from the unreachable
// server) fails twice; the report gets through on the third POST, and only once.
func TestAutoReportRetries(t *testing.T) {
	home := registeredHome(t, "bob")
	sink := &reportSink{t: t, fail: 2}
	hs := httptest.NewServer(sink)
	defer hs.Close()
	c, disc := failingClient(t, home, client.Config{OnlyServer: deadURL(t), ReportURL: hs.URL, AutoReportAfter: time.Millisecond},
		func(c *client.Client) { c.SetReportRetryForTest(5 * time.Millisecond) })
	waitUntil(t, "the report taken", func() bool { return c.ReportsSentForTest() == 1 })
	waitDisconnects(t, disc, 20)
	n, reports, _ := sink.state()
	if n != 3 || len(reports) != 1 {
		t.Fatalf("%d requests, %d reports; want 3 requests (2 refused), 1 report", n, len(reports))
	}
}

// TestAutoReportOff: with NoAutoReport a client that keeps failing reports nothing.
func TestAutoReportOff(t *testing.T) {
	home := registeredHome(t, "carol")
	sink := &reportSink{t: t}
	hs := httptest.NewServer(sink)
	defer hs.Close()
	start := time.Now()
	_, disc := failingClient(t, home, client.Config{OnlyServer: hs.URL, NoAutoReport: true, AutoReportAfter: time.Millisecond}, nil)
	waitDisconnects(t, disc, 10)
	for time.Since(start) < 100*time.Millisecond {
		waitDisconnects(t, disc, 1)
	}
	if n, _, _ := sink.state(); n != 0 {
		t.Fatalf("%d reports with NoAutoReport", n)
	}
}

// TestOnlyServerPins: a client pinned to one URL connects there and keeps no other URL, although
// the account was registered with several and the server names others.
func TestOnlyServerPins(t *testing.T) {
	srv := testserver.Start(t)
	other := deadURL(t)
	d := register(t, srv, "dave", devOpts{cfg: client.Config{OnlyServer: srv.URL(), Servers: []string{other}}})
	d.start()
	d.waitQueueEmpty()
	if got := d.c.Account().Servers; !slices.Equal(got, []string{srv.URL()}) {
		t.Fatalf("servers %v, want only %s", got, srv.URL())
	}
	if _, err := client.Open(client.Config{Store: d.st, OnlyServer: "ftp://x"}); err == nil {
		t.Fatal("OnlyServer ftp://x accepted")
	}
}

// TestAutoReportCountedByARealServer: the report of a client that cannot reach its server is
// taken by a real node's reports endpoint (Config.ReportURL) and shows on its status page.
func TestAutoReportCountedByARealServer(t *testing.T) {
	home := registeredHome(t, "dave")
	srv := testserver.Start(t)
	c, _ := failingClient(t, home, client.Config{OnlyServer: deadURL(t), ReportURL: srv.URL(), AutoReportAfter: time.Millisecond}, nil)
	waitUntil(t, "the report taken", func() bool { return c.ReportsSentForTest() == 1 })
	counted := func() bool { // the page is re-rendered once a second
		r, err := http.Get(srv.URL() + status.JSONPath)
		if err != nil {
			t.Fatal(err)
		}
		defer r.Body.Close()
		var v status.View
		if err := json.NewDecoder(r.Body).Decode(&v); err != nil {
			t.Fatal(err)
		}
		return v.Reports.ByCategory[status.CategoryCantConnect] == 1
	}
	waitUntil(t, "the report on the status page", counted)
}

// TestSendAfterRunEndedIsQueued: with FailFast, Run ends at the first failed connection; a Send
// made after that is still stored in the outbox and says so (the same words as a Send whose run
// ended while it waited), so that a send with the server down queues its message whichever
// comes first.
func TestSendAfterRunEndedIsQueued(t *testing.T) {
	home := registeredHome(t, "erin")
	st, err := store.Open(home, store.Options{})
	if err != nil {
		t.Fatal(err)
	}
	defer st.Close()
	c, err := client.Open(client.Config{Store: st, OnlyServer: deadURL(t), FailFast: true, NoAutoReport: true})
	if err != nil {
		t.Fatal(err)
	}
	defer c.Close()
	if err := c.Run(context.Background()); err == nil {
		t.Fatal("Run with nothing to connect to ended without an error")
	}
	id, err := c.Send(context.Background(), "frank", "are you there?")
	if err == nil || id == "" || !strings.Contains(err.Error(), "it stays in the outbox") {
		t.Fatalf("Send after Run ended: id %q, err %v", id, err)
	}
	if err := st.View(func(tx *store.Tx) error {
		e, err := tx.OutboxByID("frank", id)
		if err != nil || e == nil || !e.Pending() {
			t.Fatalf("message %s in the outbox: %+v, %v", id, e, err)
		}
		return nil
	}); err != nil {
		t.Fatal(err)
	}
}
