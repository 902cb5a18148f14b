// Copyright 2026 The Petrel Authors
// SPDX-License-Identifier: Apache-2.0

package server_test

import (
	"bytes"
	"context"
	"errors"
	"os"
	"path/filepath"
	"strings"
	"sync"
	"testing"
	"time"

	"github.com/nats-io/nats.go/jetstream"

	"github.com/petrelchat/petrel/internal/server"
	"github.com/petrelchat/petrel/internal/status"
	"github.com/petrelchat/petrel/internal/testcluster"
	"github.com/petrelchat/petrel/internal/testserver"
)

// probeRecorder is a status.ProbeSink that keeps what it is given (the status aggregates'
// place; helper status provides those).
type probeRecorder struct {
	mu      sync.Mutex
	results []status.ProbeResult
}

func (r *probeRecorder) RecordProbe(p status.ProbeResult) {
	r.mu.Lock()
	r.results = append(r.results, p)
	r.mu.Unlock()
}

func (r *probeRecorder) all() []status.ProbeResult {
	r.mu.Lock()
	defer r.mu.Unlock()
	return append([]status.ProbeResult(nil), r.results...)
}

// waitOKProbes waits until rec holds n successful probes and returns them.
func waitOKProbes(t *testing.T, rec *probeRecorder, n int) []status.ProbeResult {
	t.Helper()
	deadline := time.Now().Add(60 * time.Second)
	for {
		var ok []status.ProbeResult
		for _, r := range rec.all() {
			if r.OK {
				ok = append(ok, r)
			}
		}
		if len(ok) >= n {
			return ok
		}
		if time.Now().After(deadline) {
			t.Fatalf("timed out waiting for %d successful self-probes; got %+v", n, rec.all())
		}
		time.Sleep(20 * time.Millisecond) // polling with a deadline
	}
}

func selfProbing(rec *probeRecorder, registration string) func(*server.Config) {
	return func(c *server.Config) {
		c.ProbeInterval = server.Duration{Duration: time.Second}
		c.ProbeSink = rec
		c.Registration = registration
	}
}

// TestSelfProbe: with probe_interval a node probes itself through its public URL, with accounts
// probe-<node>-a/-b kept in <data>/probe; under invite-only registration it mints its own invites.
func TestSelfProbe(t *testing.T) {
	for _, reg := range []string{"open", "invite"} {
		t.Run(reg, func(t *testing.T) {
			rec := &probeRecorder{}
			srv := testserver.Start(t, testserver.WithConfig(selfProbing(rec, reg)))
			for _, r := range waitOKProbes(t, rec, 2) {
				if r.Source != "self" || r.Node != srv.URL() || r.LatencyMS <= 0 || r.Error != "" {
					t.Fatalf("self-probe result %+v", r)
				}
			}
			for _, d := range []string{"probe-a", "probe-b"} {
				if _, err := os.Stat(filepath.Join(srv.DataDir(), server.ProbeDir, d)); err != nil {
					t.Fatalf("probe home: %v", err)
				}
			}
			// The accounts are the node's own, and the same after a restart.
			if !accountExists(t, srv, "probe-test-a") || !accountExists(t, srv, "probe-test-b") {
				t.Fatal("no accounts probe-test-a and probe-test-b")
			}
			srv.Restart(t)
			n := len(rec.all())
			waitOKProbes(t, rec, n+1)
			keys, err := srv.Server().Bus().Accounts.ListKeys(context.Background())
			if err != nil {
				t.Fatal(err)
			}
			var probes []string
			for k := range keys.Keys() {
				if strings.HasPrefix(k, "probe-") {
					probes = append(probes, k)
				}
			}
			if len(probes) != 2 {
				t.Fatalf("probe accounts after a restart: %v", probes)
			}
		})
	}
}

// TestSelfProbeRegistrationClosed: when registration is closed the self-prober cannot create its
// accounts: it says so in the log and records no failed probe (it is not the node's health).
func TestSelfProbeRegistrationClosed(t *testing.T) {
	rec := &probeRecorder{}
	var log syncBuffer
	testserver.Start(t, testserver.WithConfig(selfProbing(rec, "closed")), testserver.WithLog(&log))
	deadline := time.Now().Add(30 * time.Second)
	for !strings.Contains(log.String(), "self-prober cannot create its accounts") {
		if time.Now().After(deadline) {
			t.Fatalf("no warning in the log:\n%s", log.String())
		}
		time.Sleep(20 * time.Millisecond) // polling with a deadline
	}
	if got := rec.all(); len(got) != 0 {
		t.Fatalf("recorded %+v", got)
	}
}

// TestSelfProbeCluster: every node of a cluster probes itself, each with its own accounts.
func TestSelfProbeCluster(t *testing.T) {
	recs := []*probeRecorder{{}, {}}
	c := testcluster.Start(t, 2, testcluster.Options{Config: func(i int, cfg *server.Config) {
		selfProbing(recs[i], "open")(cfg)
	}})
	for i, rec := range recs {
		for _, r := range waitOKProbes(t, rec, 1) {
			if r.Node != c.Node(i).URL() || r.Source != "self" {
				t.Fatalf("node %d recorded %+v", i, r)
			}
		}
	}
}

func TestProbeIntervalValidation(t *testing.T) {
	cfg := server.Config{ProbeInterval: server.Duration{Duration: 10 * time.Millisecond}}
	cfg.SetDefaults()
	if err := cfg.Validate(); err == nil || !strings.Contains(err.Error(), "probe_interval") {
		t.Fatalf("probe_interval 10ms: %v", err)
	}
}

// syncBuffer is a bytes.Buffer safe for the server's log writes and the test's reads.
type syncBuffer struct {
	mu sync.Mutex
	b  bytes.Buffer
}

func (s *syncBuffer) Write(p []byte) (int, error) {
	s.mu.Lock()
	defer s.mu.Unlock()
	return s.b.Write(p)
}

func (s *syncBuffer) String() string {
	s.mu.Lock()
	defer s.mu.Unlock()
	return s.b.String()
}

// accountExists reports whether the directory holds account name.
func accountExists(t *testing.T, srv *testserver.Server, name string) bool {
	t.Helper()
	ctx, cancel := context.WithTimeout(context.Background(), 10*time.Second)
	defer cancel()
	_, err := srv.Server().Bus().Accounts.Get(ctx, name)
	if err != nil && !errors.Is(err, jetstream.ErrKeyNotFound) {
		t.Fatalf("read account %s: %v", name, err)
	}
	return err == nil
}
