// Copyright 2026 The Petrel Authors
// SPDX-License-Identifier: Apache-2.0

package main

import (
	"encoding/json"
	"net/http"
	"os"
	"path/filepath"
	"testing"
	"time"

	"github.com/petrelchat/petrel/internal/server"
	"github.com/petrelchat/petrel/internal/status"
	"github.com/petrelchat/petrel/internal/testserver"
)

// statusView reads a node's /status.json.
func statusView(t *testing.T, base string) status.View {
	t.Helper()
	resp, err := (&http.Client{Timeout: 10 * time.Second}).Get(base + status.JSONPath)
	if err != nil {
		t.Fatal(err)
	}
	defer resp.Body.Close()
	var v status.View
	if err := json.NewDecoder(resp.Body).Decode(&v); err != nil {
		t.Fatalf("%s: %v", status.JSONPath, err)
	}
	return v
}

// probeOf waits until base's status page shows an OK probe of node from source.
func probeOf(t *testing.T, base, node, source string) status.ProbeView {
	t.Helper()
	deadline := time.Now().Add(30 * time.Second)
	for {
		for _, p := range statusView(t, base).Probes {
			if p.Node == node && p.Source == source && p.Last.OK {
				return p
			}
		}
		if time.Now().After(deadline) {
			t.Fatalf("%s shows no OK probe of %s from %q: %+v", base, node, source, statusView(t, base).Probes)
		}
		time.Sleep(50 * time.Millisecond) // the page is re-rendered once a second
	}
}

// The pieces of outage transparency together, on a real node: an external `petrel probe
// --report-to` pushes its results to the node (operator token), and the node's own prober
// (probe_interval) records its own; the status page shows both, and `petrel report` is counted.
func TestProbesAndReportsReachTheStatusPage(t *testing.T) {
	srv := testserver.Start(t, testserver.WithConfig(func(c *server.Config) {
		c.ProbeInterval = server.Duration{Duration: time.Second}
	}))
	tok := filepath.Join(t.TempDir(), "token")
	if err := os.WriteFile(tok, []byte(srv.AdminToken(t)+"\n"), 0o600); err != nil {
		t.Fatal(err)
	}
	probeCLI(t, t.TempDir(), nil, "--server", srv.URL(), "--count", "1", "--name", "outside",
		"--report-to", srv.URL(), "--token-file", tok).must(t, 0)
	if p := probeOf(t, srv.URL(), srv.URL(), "outside"); p.Last.LatencyMS <= 0 {
		t.Fatalf("external probe %+v", p)
	}
	probeOf(t, srv.URL(), srv.URL(), "self")

	petrel(t, t.TempDir(), "", "report", "--server", srv.URL(), "--category", "not-receiving", "--note", "nothing since noon").must(t, 0)
	deadline := time.Now().Add(30 * time.Second)
	for statusView(t, srv.URL()).Reports.ByCategory["not-receiving"] < 1 {
		if time.Now().After(deadline) {
			t.Fatalf("the report is not counted: %+v", statusView(t, srv.URL()).Reports)
		}
		time.Sleep(50 * time.Millisecond) // the page is re-rendered once a second
	}
}
