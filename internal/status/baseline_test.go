// Copyright 2026 The Petrel Authors
// SPDX-License-Identifier: Apache-2.0

package status_test

import (
	"bytes"
	"context"
	"fmt"
	"log/slog"
	"net/http"
	"net/http/httptest"
	"strings"
	"sync"
	"testing"
	"time"

	"github.com/nats-io/nats.go/jetstream"

	"github.com/petrelchat/petrel/internal/bus"
	"github.com/petrelchat/petrel/internal/server"
	"github.com/petrelchat/petrel/internal/status"
	"github.com/petrelchat/petrel/internal/testcluster"
)

// fakeClock is a clock the test moves.
type fakeClock struct {
	mu sync.Mutex
	t  time.Time
}

func (c *fakeClock) Now() time.Time { c.mu.Lock(); defer c.mu.Unlock(); return c.t }
func (c *fakeClock) Add(d time.Duration) {
	c.mu.Lock()
	c.t = c.t.Add(d)
	c.mu.Unlock()
}

// syncBuffer is a log sink safe for concurrent writes.
type syncBuffer struct {
	mu sync.Mutex
	b  bytes.Buffer
}

func (b *syncBuffer) Write(p []byte) (int, error) {
	b.mu.Lock()
	defer b.mu.Unlock()
	return b.b.Write(p)
}
func (b *syncBuffer) String() string { b.mu.Lock(); defer b.mu.Unlock(); return b.b.String() }

// baselineNode is a status service named node over the baseline bucket kv, on clock clk, with
// its public routes on a test HTTP server (for reports).
func baselineNode(t *testing.T, node string, kv jetstream.KeyValue, clk *fakeClock, log *syncBuffer) (*status.Service, string) {
	t.Helper()
	s := status.New(status.Config{Node: node, Baseline: kv, Now: clk.Now,
		Logger: slog.New(slog.NewTextHandler(log, nil))})
	if err := s.Start(); err != nil {
		t.Fatal(err)
	}
	t.Cleanup(s.Close)
	mux := http.NewServeMux()
	s.Register(mux)
	hs := httptest.NewServer(mux)
	t.Cleanup(hs.Close)
	return s, hs.URL
}

// reportN posts n reports from distinct clients.
func reportN(t *testing.T, base, prefix string, n int) {
	t.Helper()
	for i := range n {
		req := status.ReportRequest{Category: status.CategoryOther, Client: fmt.Sprintf("%s-%d", prefix, i)}
		if code, _, body := post(t, base+status.ReportsPath, "", mustJSON(req)); code != http.StatusAccepted {
			t.Fatalf("report: %d %s", code, body)
		}
	}
}

// waitFor polls cond until it holds (at most within).
func waitFor(t *testing.T, within time.Duration, what string, cond func() bool) {
	t.Helper()
	deadline := time.Now().Add(within)
	for !cond() {
		if time.Now().After(deadline) {
			t.Fatalf("%s: not within %s", what, within)
		}
		time.Sleep(20 * time.Millisecond) // polling state a goroutine of the service changes
	}
}

// weekAgo is a time in the hour a week before now's, 30 s into it.
func weekAgo(now time.Time) time.Time {
	return now.UTC().Truncate(time.Hour).Add(-7*24*time.Hour + 30*time.Second)
}

// The report baseline is kept in the baseline bucket: counts made before a restart are the
// baseline a week later, after the store and the service were restarted; a damaged or foreign
// record is logged and ignored.
func TestBaselineSurvivesRestart(t *testing.T) {
	dir := t.TempDir()
	ctx := context.Background()
	quiet := slog.New(slog.NewTextHandler(&syncBuffer{}, nil))
	b, err := bus.Open(ctx, bus.Config{DataDir: dir, InboxShards: 1, Name: "b1", Logger: quiet})
	if err != nil {
		t.Fatal(err)
	}
	clk := &fakeClock{t: time.Date(2026, 12, 7, 10, 0, 30, 0, time.UTC)} // a Monday
	var log syncBuffer
	s, url := baselineNode(t, "n1", b.Baseline, clk, &log)
	reportN(t, url, "c", 3)
	clk.Add(time.Hour) // the hour ends: the service writes its counts
	waitFor(t, 10*time.Second, "the record written", func() bool {
		e, err := b.Baseline.Get(ctx, "n1")
		return err == nil && len(e.Value()) > 0
	})
	s.Close()
	b.Close()

	b, err = bus.Open(ctx, bus.Config{DataDir: dir, InboxShards: 1, Name: "b1", Logger: quiet})
	if err != nil {
		t.Fatal(err)
	}
	defer b.Close()
	// Damaged and foreign records beside it.
	if _, err := b.Baseline.Put(ctx, "junk", []byte("\x00not json")); err != nil {
		t.Fatal(err)
	}
	if _, err := b.Baseline.Put(ctx, "n9", []byte(`{"v":1,"node":"n1","week":1,"counts":[]}`)); err != nil {
		t.Fatal(err)
	}
	if _, err := b.Baseline.Put(ctx, "n8", []byte(`{"v":7,"node":"n8"}`)); err != nil {
		t.Fatal(err)
	}
	clk.Add(7*24*time.Hour - time.Hour) // Monday 10:00 a week later
	s, _ = baselineNode(t, "n1", b.Baseline, clk, &log)
	waitFor(t, 10*time.Second, "the baseline read back after a restart", func() bool { return s.View().Reports.Baseline == 3 })
	waitFor(t, 10*time.Second, "the bad records logged", func() bool {
		return strings.Count(log.String(), "a baseline record is ignored") >= 3
	})
	for _, want := range []string{"bucket_key=junk", "bucket_key=n9", "another node's key", "bucket_key=n8", "version 7"} {
		if !strings.Contains(log.String(), want) {
			t.Errorf("log lacks %q:\n%s", want, log.String())
		}
	}
	if v := s.View(); v.Reports.Baseline != 3 || v.State != status.Operational {
		t.Fatalf("after the bad records: baseline %v state %s", v.Reports.Baseline, v.State)
	}
}

// The nodes of a cluster share one baseline: the counts two nodes made (services on two nodes'
// buses, on a clock a week behind) are summed in the baseline every node's page shows for this
// hour.
func TestClusterNodesShareTheBaseline(t *testing.T) {
	c := testcluster.Start(t, 3, testcluster.Options{Config: func(_ int, cfg *server.Config) {
		cfg.StatusShareInterval = server.Duration{Duration: 200 * time.Millisecond}
	}})
	clk := &fakeClock{t: weekAgo(time.Now())}
	thisHour := clk.Now().Add(7 * 24 * time.Hour).Truncate(time.Hour)
	var log syncBuffer
	_, urlA := baselineNode(t, "a", c.Node(0).Server().Bus().Baseline, clk, &log)
	_, urlB := baselineNode(t, "b", c.Node(1).Server().Bus().Baseline, clk, &log)
	reportN(t, urlA, "a", 2)
	reportN(t, urlB, "b", 4)
	clk.Add(time.Hour) // the hour a week ago ends: a and b write their counts
	for i := range 3 {
		nd := c.Node(i)
		waitView(t, nd.URL(), 20*time.Second, nd.Name()+"'s baseline for this hour", func(v status.View) bool {
			k := int(thisHour.Sub(v.Reports.HourStart) / time.Hour)
			return k >= 0 && k < len(v.Reports.BaselineHour) && v.Reports.BaselineHour[k] == 6
		})
	}
	if strings.Contains(log.String(), "ignored") || strings.Contains(log.String(), "not written") {
		t.Fatalf("log:\n%s", log.String())
	}
}
