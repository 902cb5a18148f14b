// Copyright 2026 The Petrel Authors
// SPDX-License-Identifier: Apache-2.0

package status_test

import (
	"net/http"
	"os"
	"path/filepath"
	"strings"
	"testing"
	"time"

	"github.com/petrelchat/petrel/internal/server"
	"github.com/petrelchat/petrel/internal/status"
	"github.com/petrelchat/petrel/internal/testcluster"
)

// Every node of a cluster serves the same page: a report and a probe received by node 1, and an
// incident posted on node 1, show on node 2's /status.json; each node marks its own view; a node
// that stops is forgotten.
func TestClusterNodesShareTheirViews(t *testing.T) {
	c := testcluster.Start(t, 3, testcluster.Options{Config: func(_ int, cfg *server.Config) {
		cfg.StatusShareInterval = server.Duration{Duration: 200 * time.Millisecond}
	}})
	a, b := c.Node(0), c.Node(1)
	if code, _, body := post(t, a.URL()+status.ReportsPath, "", mustJSON(status.ReportRequest{Category: status.CategoryNotReceiving, Client: "x"})); code != http.StatusAccepted {
		t.Fatalf("report on %s: %d %s", a.Name(), code, body)
	}
	tok := adminToken(t, a.DataDir())
	batch := status.ProbeBatch{Results: []status.ProbeResult{{Node: b.URL(), Source: "outside", At: time.Now(), OK: true, LatencyMS: 21}}}
	if code, _, body := post(t, a.URL()+status.ProbesPath, tok, mustJSON(batch)); code != http.StatusAccepted {
		t.Fatalf("probes on %s: %d %s", a.Name(), code, body)
	}
	if code, _, body := post(t, a.AdminURL()+status.AdminIncidentsPath, tok, mustJSON(status.IncidentRequest{Action: "open", Text: "Node maintenance"})); code != http.StatusOK {
		t.Fatalf("incident on %s: %d %s", a.Name(), code, body)
	}
	v := waitView(t, b.URL(), 20*time.Second, "node 1's report, probe and incident on node 2", func(v status.View) bool {
		return len(v.Nodes) == 3 && v.Reports.Count == 1 && len(v.Probes) == 1 && len(v.Incidents) == 1
	})
	if v.ServedBy != b.Name() || v.Reports.ByCategory[status.CategoryNotReceiving] != 1 || v.Probes[0].Node != b.URL() || v.State != status.Operational {
		t.Fatalf("view on %s: %+v", b.Name(), v)
	}
	selves := 0
	for _, n := range v.Nodes {
		if n.Self {
			selves++
			if n.Node != b.Name() {
				t.Fatalf("%s marks %s as itself", b.Name(), n.Node)
			}
		}
	}
	if selves != 1 {
		t.Fatalf("%d nodes marked self", selves)
	}
	c.Node(2).Stop()
	waitView(t, b.URL(), 20*time.Second, "the stopped node forgotten", func(v status.View) bool { return len(v.Nodes) == 2 })
}

// adminToken reads a node's operator token from its data directory.
func adminToken(t *testing.T, dataDir string) string {
	t.Helper()
	b, err := os.ReadFile(filepath.Join(dataDir, server.AdminTokenFile))
	if err != nil {
		t.Fatal(err)
	}
	return strings.TrimSpace(string(b))
}
