// Copyright 2026 The Petrel Authors
// SPDX-License-Identifier: Apache-2.0

package prober_test

import (
	"context"
	"io"
	"net/http"
	"strings"
	"testing"
	"time"

	"github.com/petrelchat/petrel/internal/prober"
	"github.com/petrelchat/petrel/internal/server"
	"github.com/petrelchat/petrel/internal/status"
	"github.com/petrelchat/petrel/internal/testcluster"
	"github.com/petrelchat/petrel/internal/testserver"
)

func newProber(t *testing.T, cfg prober.Config) *prober.Prober {
	t.Helper()
	cfg.NoSync = true
	if cfg.Home == "" {
		cfg.Home = t.TempDir()
	}
	p, err := prober.New(cfg)
	if err != nil {
		t.Fatal(err)
	}
	t.Cleanup(func() { p.Close() })
	return p
}

func checkOK(t *testing.T, r status.ProbeResult, node, source string) {
	t.Helper()
	if !r.OK || r.Error != "" || r.LatencyMS <= 0 || r.LatencyMS > 10_000 || r.Node != node || r.Source != source || r.At.IsZero() {
		t.Fatalf("probe of %s: %+v", node, r)
	}
}

// TestProbeSingleNode: the accounts are created at the first probe and kept in the home; later
// probes, and a new prober on the same home, use them again.
func TestProbeSingleNode(t *testing.T) {
	srv := testserver.Start(t)
	home := t.TempDir()
	p := newProber(t, prober.Config{Home: home, Source: "test"})
	for range 3 {
		rs := p.Round(context.Background(), []string{srv.URL()})
		if len(rs) != 1 {
			t.Fatalf("%d results", len(rs))
		}
		checkOK(t, rs[0], srv.URL(), "test")
	}
	a, b := p.Names()
	if !strings.HasPrefix(a, "probe-") || !strings.HasSuffix(a, "-a") || !strings.HasSuffix(b, "-b") || a[:len(a)-2] != b[:len(b)-2] {
		t.Fatalf("names %q %q", a, b)
	}
	p.Close()
	if r := p.Probe(context.Background(), srv.URL(), nil); r.OK || r.Error == "" {
		t.Fatalf("probe after Close: %+v", r)
	}

	p2 := newProber(t, prober.Config{Home: home, Source: "test", Name: "other"})
	checkOK(t, p2.Probe(context.Background(), srv.URL(), nil), srv.URL(), "test")
	if a2, b2 := p2.Names(); a2 != a || b2 != b {
		t.Fatalf("second prober on the home made new accounts: %q %q, want %q %q", a2, b2, a, b)
	}
}

// TestProbeDownNode: a node that does not answer fails its probe, with the cause in words and
// well within the deadline.
func TestProbeDownNode(t *testing.T) {
	srv := testserver.Start(t)
	p := newProber(t, prober.Config{Source: "test", Timeout: 5 * time.Second})
	checkOK(t, p.Probe(context.Background(), srv.URL(), nil), srv.URL(), "test")
	srv.Stop()
	start := time.Now()
	r := p.Probe(context.Background(), srv.URL(), nil)
	if r.OK || r.LatencyMS != 0 || !strings.Contains(r.Error, "could not connect to "+srv.URL()) {
		t.Fatalf("probe of a stopped node: %+v", r)
	}
	if el := time.Since(start); el > 5*time.Second {
		t.Fatalf("failed probe took %v", el)
	}
}

// TestProbeInviteOnly: on an invite-only server the prober registers with the invites it is
// given, one per account; without them it says what is missing.
func TestProbeInviteOnly(t *testing.T) {
	srv := testserver.Start(t, testserver.WithConfig(func(c *server.Config) { c.Registration = "invite" }))
	token := srv.AdminToken(t)
	minted := 0
	invite := func(ctx context.Context) (string, error) {
		req, _ := http.NewRequestWithContext(ctx, http.MethodPost, srv.AdminURL()+"/v1/admin/invites", nil)
		req.Header.Set("Authorization", "Bearer "+token)
		resp, err := http.DefaultClient.Do(req)
		if err != nil {
			return "", err
		}
		defer resp.Body.Close()
		b, _ := io.ReadAll(resp.Body)
		minted++
		return strings.TrimSpace(string(b)), nil
	}
	bare := newProber(t, prober.Config{Source: "test"})
	if r := bare.Probe(context.Background(), srv.URL(), nil); r.OK || !strings.Contains(r.Error, "invite") {
		t.Fatalf("probe without invites: %+v", r)
	}
	p := newProber(t, prober.Config{Source: "test", Invite: invite})
	checkOK(t, p.Probe(context.Background(), srv.URL(), nil), srv.URL(), "test")
	checkOK(t, p.Probe(context.Background(), srv.URL(), nil), srv.URL(), "test")
	if minted != 2 {
		t.Fatalf("%d invites used, want 2 (one per account, once)", minted)
	}
}

// TestProbeNameTaken: when a probe account's name is taken, the prober registers under another.
func TestProbeNameTaken(t *testing.T) {
	srv := testserver.Start(t)
	first := newProber(t, prober.Config{Source: "test", Name: "probe-x"})
	checkOK(t, first.Probe(context.Background(), srv.URL(), nil), srv.URL(), "test")
	second := newProber(t, prober.Config{Source: "test", Name: "probe-x"}) // another home
	checkOK(t, second.Probe(context.Background(), srv.URL(), nil), srv.URL(), "test")
	a1, _ := first.Names()
	a2, b2 := second.Names()
	if a1 != "probe-x-a" || a2 == a1 || !strings.HasPrefix(a2, "probe-x-") || !strings.HasSuffix(b2, "-b") {
		t.Fatalf("names %q, then %q %q", a1, a2, b2)
	}
}

// TestProbeClusterPerNode: in a 3-node cluster each node is probed through itself; a killed node
// fails its probe while the others pass (the probe accounts do not fail over to another node).
func TestProbeClusterPerNode(t *testing.T) {
	c := testcluster.Start(t, 3, testcluster.Options{})
	urls := []string{c.Node(0).URL(), c.Node(1).URL(), c.Node(2).URL()}
	p := newProber(t, prober.Config{Source: "ext", Timeout: 10 * time.Second})
	rs := p.Round(context.Background(), urls)
	for i, r := range rs {
		checkOK(t, r, urls[i], "ext")
	}
	c.Node(1).Kill()
	rs = p.Round(context.Background(), urls)
	if len(rs) != 3 {
		t.Fatalf("%d results", len(rs))
	}
	for i, r := range rs {
		if i == 1 {
			if r.OK || r.Node != urls[1] || !strings.Contains(r.Error, urls[1]) {
				t.Fatalf("probe of the killed node: %+v", r)
			}
			continue
		}
		checkOK(t, r, urls[i], "ext")
	}
}

func TestSanitizeName(t *testing.T) {
	for _, tc := range []struct{ in, want string }{
		{"Probe-DB1", "probe-db1"},
		{"-x y", "x-y"},
		{"", "probe"},
		{"probe-averyveryverylongnodename-3f9a0c12", "veryverylongnodename-3f9a0c12"[4:]},
	} {
		if got := prober.SanitizeName(tc.in); got != tc.want || len(got) > 25 {
			t.Errorf("SanitizeName(%q) = %q, want %q", tc.in, got, tc.want)
		}
	}
}
