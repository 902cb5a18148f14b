// Copyright 2026 The Petrel Authors
// SPDX-License-Identifier: Apache-2.0

package bus

import (
	"bytes"
	"context"
	"crypto/tls"
	"crypto/x509"
	"fmt"
	"log/slog"
	"strings"
	"sync"
	"testing"
	"time"

	"github.com/prometheus/client_golang/prometheus"

	"github.com/petrelchat/petrel/internal/freeport"
	"github.com/petrelchat/petrel/internal/testcerts"
)

// logBuffer is a log sink that tests read while nodes write.
type logBuffer struct {
	mu sync.Mutex
	b  bytes.Buffer
}

func (l *logBuffer) Write(p []byte) (int, error) {
	l.mu.Lock()
	defer l.mu.Unlock()
	return l.b.Write(p)
}

func (l *logBuffer) String() string {
	l.mu.Lock()
	defer l.mu.Unlock()
	return l.b.String()
}

// routeNode is one embedded server of a two-node test cluster, opening in the background.
type routeNode struct {
	logs *logBuffer
	reg  *prometheus.Registry
	done chan struct{}
	bus  *Bus
	err  error
}

// startPair opens two clustered buses on loopback, each with its own secret and TLS settings,
// without waiting: neither is ready until both route (a JetStream majority of two). They close
// when the test ends. A secret's further lines are the secrets the node accepts besides it.
func startPair(t *testing.T, ctx context.Context, secrets [2]string, tlsCfgs [2]*tls.Config) [2]*routeNode {
	t.Helper()
	var addrs [2]string
	ports, err := freeport.Loopback(len(addrs))
	if err != nil {
		t.Fatal(err)
	}
	for i, p := range ports {
		addrs[i] = fmt.Sprintf("127.0.0.1:%d", p)
	}
	var nodes [2]*routeNode
	for i := range nodes {
		nd := &routeNode{logs: &logBuffer{}, reg: prometheus.NewRegistry(), done: make(chan struct{})}
		nodes[i] = nd
		cfg := Config{
			DataDir: t.TempDir(), InboxShards: 1, Name: fmt.Sprintf("r%d", i+1),
			ClusterListen: addrs[i], ClusterPeers: addrs[:], ClusterName: "routes-test",
			ClusterTLS: tlsCfgs[i],
			Logger:     slog.New(slog.NewTextHandler(nd.logs, &slog.HandlerOptions{Level: slog.LevelDebug})),
			Registry:   nd.reg,
		}
		lines := strings.Split(secrets[i], "\n")
		cfg.ClusterSecret, cfg.ClusterSecretsAccepted = lines[0], lines[1:]
		go func() {
			defer close(nd.done)
			nd.bus, nd.err = Open(ctx, cfg)
		}()
	}
	t.Cleanup(func() {
		for _, nd := range nodes {
			<-nd.done
			if nd.bus != nil {
				nd.bus.Close()
			}
		}
	})
	return nodes
}

// waitOpen waits until both nodes opened.
func waitOpen(t *testing.T, nodes [2]*routeNode) {
	t.Helper()
	for i, nd := range nodes {
		select {
		case <-nd.done:
		case <-time.After(60 * time.Second):
			t.Fatalf("node %d not open within 60s; log:\n%s", i+1, nd.logs)
		}
		if nd.err != nil {
			t.Fatalf("node %d: %v; log:\n%s", i+1, nd.err, nd.logs)
		}
		if n, _ := nd.bus.RoutedServers(); n != 1 {
			t.Fatalf("node %d routes to %d servers, want 1", i+1, n)
		}
	}
}

// waitRefused waits until each node has logged want, then cancels their start and expects it to
// fail: a refused route leaves both without a JetStream majority.
func waitRefused(t *testing.T, cancel context.CancelFunc, nodes [2]*routeNode, want [2]string) {
	t.Helper()
	deadline := time.Now().Add(30 * time.Second)
	for i, nd := range nodes {
		for !strings.Contains(nd.logs.String(), want[i]) {
			if time.Now().After(deadline) {
				t.Fatalf("node %d did not log %q within 30s; log:\n%s", i+1, want[i], nd.logs)
			}
			select {
			case <-nd.done:
				t.Fatalf("node %d opened (err %v) although its route was refused; log:\n%s", i+1, nd.err, nd.logs)
			case <-time.After(20 * time.Millisecond): // polling the log: no event announces the line
			}
		}
	}
	cancel()
	for i, nd := range nodes {
		<-nd.done
		if nd.err == nil {
			t.Fatalf("node %d opened without its peer", i+1)
		}
	}
}

const (
	secretA = "3f1c9a0e6b2d4c8f7a1e5d3b9c0a2f4e6d8b1c3a5e7f9d0b2c4a6e8f1d3b5c7a"
	secretB = "9e8d7c6b5a4f3e2d1c0b9a8f7e6d5c4b3a2f1e0d9c8b7a6f5e4d3c2b1a0f9e8d"
)

// Two nodes with the same secret route; with different secrets, or one without, each refuses the
// other's route, says so in its log, and never gets a JetStream majority. No log line carries a
// secret.
func TestRouteAuthRefused(t *testing.T) {
	t.Run("same secret", func(t *testing.T) {
		nodes := startPair(t, context.Background(), [2]string{secretA, secretA}, [2]*tls.Config{})
		waitOpen(t, nodes)
		for i, nd := range nodes {
			if strings.Contains(nd.logs.String(), secretA) {
				t.Fatalf("node %d logged the secret", i+1)
			}
		}
	})
	for _, tc := range []struct {
		name    string
		secrets [2]string
		want    [2]string
	}{
		{"wrong secret", [2]string{secretA, secretB}, [2]string{"presented a wrong cluster secret", "presented a wrong cluster secret"}},
		{"missing secret", [2]string{secretA, ""}, [2]string{"presented no cluster secret", "presented a cluster secret and this node has none"}},
	} {
		t.Run(tc.name, func(t *testing.T) {
			ctx, cancel := context.WithCancel(context.Background())
			defer cancel()
			nodes := startPair(t, ctx, tc.secrets, [2]*tls.Config{})
			waitRefused(t, cancel, nodes, tc.want)
			for i, nd := range nodes {
				logs := nd.logs.String()
				if !strings.Contains(logs, "cluster route refused for authentication") {
					t.Errorf("node %d: no refusal line; log:\n%s", i+1, logs)
				}
				if strings.Contains(logs, secretA) || strings.Contains(logs, secretB) {
					t.Errorf("node %d logged a secret:\n%s", i+1, logs)
				}
				if v := refusals(t, nd.reg, refusedAuth); v < 1 {
					t.Errorf("node %d: petrel_cluster_route_refusals_total{reason=auth} = %v", i+1, v)
				}
			}
			// Node 1 dials node 2 with its secret and is told no.
			if !strings.Contains(nodes[0].logs.String(), "cluster route refused by the peer for authentication") {
				t.Errorf("node 1 did not log that its route was refused; log:\n%s", nodes[0].logs)
			}
		})
	}
}

// The cluster secret rotates in three rolling steps, and at every step a node of the step before
// and one of the step after still route: each presents its first secret and accepts the others.
// Step 1 accepts the new secret everywhere, step 2 presents it, step 3 forgets the old one.
func TestRouteSecretRotation(t *testing.T) {
	oldS, newS := secretA, secretB
	steps := []string{
		oldS,               // before
		oldS + "\n" + newS, // 1: present the old, accept the new too
		newS + "\n" + oldS, // 2: present the new, accept the old too
		newS,               // 3: the new only
	}
	for i := 1; i < len(steps); i++ {
		t.Run(fmt.Sprintf("step %d beside step %d", i, i-1), func(t *testing.T) {
			nodes := startPair(t, context.Background(), [2]string{steps[i], steps[i-1]}, [2]*tls.Config{})
			waitOpen(t, nodes)
			for j, nd := range nodes {
				if logs := nd.logs.String(); strings.Contains(logs, oldS) || strings.Contains(logs, newS) {
					t.Fatalf("node %d logged a secret:\n%s", j+1, logs)
				}
			}
		})
	}
	// Skipping step 2 (the new secret presented to a node that does not accept it yet) is refused.
	t.Run("step 3 beside step 0", func(t *testing.T) {
		ctx, cancel := context.WithCancel(context.Background())
		defer cancel()
		nodes := startPair(t, ctx, [2]string{steps[3], steps[0]}, [2]*tls.Config{})
		waitRefused(t, cancel, nodes, [2]string{"presented a wrong cluster secret", "presented a wrong cluster secret"})
	})
}

// Two nodes with certificates from the same CA route over mutual TLS; a node whose certificate
// another CA signed is refused by the TLS handshake and never joins.
func TestRouteTLSRefused(t *testing.T) {
	ca := testcerts.NewCA(t, "petrel test cluster CA")
	rogue := testcerts.NewCA(t, "rogue CA")
	load := func(ca *testcerts.CA, f testcerts.Files) *tls.Config {
		cfg, err := RouteTLS(f.CertFile, f.KeyFile, ca.CertFile)
		if err != nil {
			t.Fatal(err)
		}
		return cfg
	}
	good1, good2 := load(ca, ca.Issue(t, "n1")), load(ca, ca.Issue(t, "n2"))
	t.Run("same CA", func(t *testing.T) {
		nodes := startPair(t, context.Background(), [2]string{secretA, secretA}, [2]*tls.Config{good1, good2})
		waitOpen(t, nodes)
	})
	t.Run("certificate from another CA", func(t *testing.T) {
		// The rogue node trusts the cluster's CA (it only lacks a certificate signed by it), so
		// it is the others' verification that refuses it.
		rf := rogue.Issue(t, "rogue")
		bad := load(rogue, rf)
		pool := x509.NewCertPool()
		pool.AddCert(ca.Cert())
		bad.RootCAs, bad.ClientCAs = pool, pool
		ctx, cancel := context.WithCancel(context.Background())
		defer cancel()
		nodes := startPair(t, ctx, [2]string{secretA, secretA}, [2]*tls.Config{good1, bad})
		want := "cluster route TLS handshake failed"
		waitRefused(t, cancel, nodes, [2]string{want, want})
		if v := refusals(t, nodes[0].reg, refusedTLS); v < 1 {
			t.Errorf("petrel_cluster_route_refusals_total{reason=tls} = %v", v)
		}
	})
	t.Run("TLS on one node only", func(t *testing.T) {
		ctx, cancel := context.WithCancel(context.Background())
		defer cancel()
		nodes := startPair(t, ctx, [2]string{secretA, secretA}, [2]*tls.Config{good1, nil})
		// The plain node reads the other's ClientHello as a protocol error (debug level).
		waitRefused(t, cancel, nodes, [2]string{"cluster route TLS handshake failed", ""})
	})
}

// RouteTLS refuses what cannot work, saying why.
func TestRouteTLSValidation(t *testing.T) {
	ca := testcerts.NewCA(t, "ca")
	other := testcerts.NewCA(t, "other")
	good := ca.Issue(t, "good")
	serverOnly := ca.Issue(t, "server-only", x509.ExtKeyUsageServerAuth)
	foreign := other.Issue(t, "foreign")
	for _, tc := range []struct {
		name         string
		cert, key, c string
		want         string
	}{
		{"good", good.CertFile, good.KeyFile, ca.CertFile, ""},
		{"not signed by the CA", foreign.CertFile, foreign.KeyFile, ca.CertFile, "is not signed by the CA"},
		{"server auth only", serverOnly.CertFile, serverOnly.KeyFile, ca.CertFile, "not valid for TLS clientAuth"},
		{"key of another cert", good.CertFile, foreign.KeyFile, ca.CertFile, "load certificate"},
		{"CA not PEM", good.CertFile, good.KeyFile, good.KeyFile, "no PEM certificate"},
		{"no CA file", good.CertFile, good.KeyFile, ca.CertFile + ".missing", "read CA"},
	} {
		t.Run(tc.name, func(t *testing.T) {
			cfg, err := RouteTLS(tc.cert, tc.key, tc.c)
			if tc.want == "" {
				if err != nil {
					t.Fatal(err)
				}
				if cfg.MinVersion != tls.VersionTLS13 || cfg.ClientAuth != tls.RequireAndVerifyClientCert {
					t.Fatalf("min version %x, client auth %v", cfg.MinVersion, cfg.ClientAuth)
				}
				return
			}
			if err == nil || !strings.Contains(err.Error(), tc.want) {
				t.Fatalf("RouteTLS = %v, want it to mention %q", err, tc.want)
			}
		})
	}
}

// refusals reads petrel_cluster_route_refusals_total{reason} from reg.
func refusals(t *testing.T, reg *prometheus.Registry, reason string) float64 {
	t.Helper()
	mfs, err := reg.Gather()
	if err != nil {
		t.Fatal(err)
	}
	for _, mf := range mfs {
		if mf.GetName() != "petrel_cluster_route_refusals_total" {
			continue
		}
		for _, m := range mf.GetMetric() {
			for _, l := range m.GetLabel() {
				if l.GetName() == "reason" && l.GetValue() == reason {
					return m.GetCounter().GetValue()
				}
			}
		}
	}
	t.Fatalf("no petrel_cluster_route_refusals_total{reason=%q}", reason)
	return 0
}
