// Copyright 2026 The Petrel Authors
// SPDX-License-Identifier: Apache-2.0

package main

import (
	"bytes"
	"context"
	"encoding/json"
	"io"
	"net/http"
	"net/http/httptest"
	"os"
	"path/filepath"
	"regexp"
	"strings"
	"sync"
	"testing"
	"time"

	"github.com/petrelchat/petrel/internal/server"
	"github.com/petrelchat/petrel/internal/status"
	"github.com/petrelchat/petrel/internal/testserver"
)

// probeCLI runs petrel probe in-process with home as its --home and environment vars.
func probeCLI(t *testing.T, home string, vars map[string]string, args ...string) result {
	t.Helper()
	var out, errb bytes.Buffer
	ctx, cancel := context.WithTimeout(context.Background(), cliWait)
	defer cancel()
	e := &env{stdin: strings.NewReader(""), stdout: &out, stderr: &errb, getenv: func(k string) string { return vars[k] }}
	code := run(ctx, append([]string{"--home", home, "probe"}, args...), e)
	return result{code, out.String(), errb.String()}
}

// probeSink is the receiving side of --report-to (the status helper owns the server's handler):
// it decodes the contract's JSON and keeps what it got.
type probeSink struct {
	t    *testing.T
	fail int // the first fail requests get 503

	mu       sync.Mutex
	requests int
	auth     []string
	batches  []status.ProbeBatch
}

func (ps *probeSink) ServeHTTP(w http.ResponseWriter, r *http.Request) {
	ps.mu.Lock()
	defer ps.mu.Unlock()
	if r.Method != http.MethodPost || r.URL.Path != status.ProbesPath {
		ps.t.Errorf("push: %s %s", r.Method, r.URL.Path)
	}
	ps.requests++
	if ps.requests <= ps.fail {
		http.Error(w, "busy", http.StatusServiceUnavailable)
		return
	}
	var b status.ProbeBatch
	body, _ := io.ReadAll(r.Body)
	if err := json.Unmarshal(body, &b); err != nil {
		ps.t.Errorf("push body: %v: %s", err, body)
	}
	ps.auth = append(ps.auth, r.Header.Get("Authorization"))
	ps.batches = append(ps.batches, b)
	w.WriteHeader(http.StatusNoContent)
}

func (ps *probeSink) got() (int, []string, []status.ProbeBatch) {
	ps.mu.Lock()
	defer ps.mu.Unlock()
	return ps.requests, append([]string(nil), ps.auth...), append([]status.ProbeBatch(nil), ps.batches...)
}

func TestCLIProbeText(t *testing.T) {
	srv := testserver.Start(t)
	home := t.TempDir()
	r := probeCLI(t, home, nil, "--server", srv.URL(), "--count", "2", "--interval", "10ms").must(t, 0)
	re := regexp.MustCompile(`^ok   node=` + regexp.QuoteMeta(srv.URL()) + ` latency=[0-9.]+(ms|s)$`)
	lines := strings.Split(strings.TrimSpace(r.stdout), "\n")
	if len(lines) != 2 || !re.MatchString(lines[0]) || !re.MatchString(lines[1]) {
		t.Fatalf("output:\n%s\nstderr:\n%s", r.stdout, r.stderr)
	}
	for _, d := range []string{"probe-a", "probe-b"} {
		if _, err := os.Stat(filepath.Join(home, d)); err != nil {
			t.Fatalf("probe home %s: %v", d, err)
		}
	}
}

// TestCLIProbeFailure: a node that does not answer gives a FAIL line and exit code 1.
func TestCLIProbeFailure(t *testing.T) {
	srv := testserver.Start(t)
	dead := deadURL(t)
	home := t.TempDir()
	// The accounts are created through the live node; the dead one fails its probe.
	r := probeCLI(t, home, nil, "--server", srv.URL()+","+dead, "--count", "1").must(t, 1)
	lines := strings.Split(strings.TrimSpace(r.stdout), "\n")
	if len(lines) != 2 || !strings.HasPrefix(lines[0], "ok   node="+srv.URL()+" ") ||
		!regexp.MustCompile(`^FAIL node=`+regexp.QuoteMeta(dead)+` error=".*could not connect.*"$`).MatchString(lines[1]) {
		t.Fatalf("output:\n%s", r.stdout)
	}
}

// TestCLIProbeJSONReportTo: --json prints the ProbeResult keys; --report-to pushes the round as a
// ProbeBatch with the token (file, or PETREL_PROBE_TOKEN), retrying a push the server refused.
func TestCLIProbeJSONReportTo(t *testing.T) {
	old := probeTuning
	probeTuning.pushRetry = 10 * time.Millisecond
	t.Cleanup(func() { probeTuning = old })
	srv := testserver.Start(t)
	sink := &probeSink{t: t, fail: 1}
	hs := httptest.NewServer(sink)
	defer hs.Close()
	home := t.TempDir()
	tokFile := filepath.Join(t.TempDir(), "probe.token")
	if err := os.WriteFile(tokFile, []byte("file-token\n"), 0o600); err != nil {
		t.Fatal(err)
	}
	r := probeCLI(t, home, nil, "--server", srv.URL(), "--count", "1", "--json", "--name", "outside",
		"--report-to", hs.URL, "--token-file", tokFile).must(t, 0)
	var keys map[string]any
	if err := json.Unmarshal([]byte(strings.TrimSpace(r.stdout)), &keys); err != nil {
		t.Fatalf("stdout %q: %v", r.stdout, err)
	}
	for _, k := range []string{"node", "source", "at", "ok", "latency_ms"} {
		if _, ok := keys[k]; !ok {
			t.Fatalf("JSON line lacks %q: %s", k, r.stdout)
		}
	}
	var res status.ProbeResult
	_ = json.Unmarshal([]byte(r.stdout), &res)
	if !res.OK || res.Node != srv.URL() || res.Source != "outside" || res.LatencyMS <= 0 {
		t.Fatalf("result %+v", res)
	}
	n, auth, batches := sink.got()
	if n != 2 || len(batches) != 1 || len(batches[0].Results) != 1 || batches[0].Results[0].Node != srv.URL() ||
		!batches[0].Results[0].OK || auth[0] != "Bearer file-token" {
		t.Fatalf("%d requests, batches %+v, auth %q", n, batches, auth)
	}

	probeCLI(t, home, map[string]string{"PETREL_PROBE_TOKEN": "env-token"}, "--server", srv.URL(), "--count", "1",
		"--report-to", hs.URL).must(t, 0)
	if _, auth, _ := sink.got(); len(auth) != 2 || auth[1] != "Bearer env-token" {
		t.Fatalf("auth %q", auth)
	}
}

// TestCLIProbeInvites: on an invite-only server the two probe accounts use --invite CODE,CODE.
func TestCLIProbeInvites(t *testing.T) {
	srv := testserver.Start(t, testserver.WithConfig(func(c *server.Config) { c.Registration = "invite" }))
	var codes []string
	for range 2 {
		codes = append(codes, strings.TrimSpace(petrel(t, t.TempDir(), "", "admin", "invite", "--data", srv.DataDir()).must(t, 0).stdout))
	}
	r := probeCLI(t, t.TempDir(), nil, "--server", srv.URL(), "--count", "1", "--invite", codes[0]).must(t, 1)
	if !strings.Contains(r.stdout, "invite") {
		t.Fatalf("one code for two accounts: %s", r.stdout)
	}
	probeCLI(t, t.TempDir(), nil, "--server", srv.URL(), "--count", "1", "--invite", codes[1]+","+codes[0]).must(t, 1)
	// codes[0] was spent above (the first account of the first home); two fresh ones work.
	var fresh []string
	for range 2 {
		fresh = append(fresh, strings.TrimSpace(petrel(t, t.TempDir(), "", "admin", "invite", "--data", srv.DataDir()).must(t, 0).stdout))
	}
	probeCLI(t, t.TempDir(), nil, "--server", srv.URL(), "--count", "1", "--invite", strings.Join(fresh, ",")).must(t, 0)
}

func TestCLIProbeUsage(t *testing.T) {
	home := t.TempDir()
	r := probeCLI(t, home, nil, "--help").must(t, 0)
	if !strings.Contains(r.stderr, "usage: petrel probe") || !strings.Contains(r.stderr, "Exit code: 0 if every probe of the last round") {
		t.Fatalf("--help:\n%s", r.stderr)
	}
	for _, args := range [][]string{
		{},
		{"--server", "ftp://x"},
		{"--server", "http://127.0.0.1:1", "--interval", "0s"},
		{"--server", "http://127.0.0.1:1", "--report-to", "http://127.0.0.1:1"}, // no token
		{"--server", "http://127.0.0.1:1", "--invite", "a,b,c"},
		{"--server", "http://127.0.0.1:1", "extra"},
	} {
		if r := probeCLI(t, home, nil, args...); r.code != 2 || r.stderr == "" {
			t.Errorf("%v: exit %d, stderr %q", args, r.code, r.stderr)
		}
	}
}
