// Copyright 2026 The Petrel Authors
// SPDX-License-Identifier: Apache-2.0

package server_test

import (
	"os"
	"path/filepath"
	"strings"
	"testing"

	"github.com/petrelchat/petrel/internal/server"
	"github.com/petrelchat/petrel/internal/testcerts"
)

// The cluster keys are top-level in the file and validated together.
func TestClusterConfig(t *testing.T) {
	path := filepath.Join(t.TempDir(), "petrel.toml")
	file := `cluster_listen = "127.0.0.1:6222"
peers = ["127.0.0.1:6222", "127.0.0.1:6223", "127.0.0.1:6224"]
cluster_name = "east"
replicas = 3
`
	if err := os.WriteFile(path, []byte(file), 0o600); err != nil {
		t.Fatal(err)
	}
	c, err := server.LoadConfig(path)
	if err != nil {
		t.Fatal(err)
	}
	if c.ClusterListen != "127.0.0.1:6222" || len(c.Peers) != 3 || c.ClusterName != "east" || c.Replicas != 3 {
		t.Fatalf("loaded %+v", c.ClusterSection)
	}
	c.SetDefaults()
	if err := c.Validate(); err != nil {
		t.Fatalf("valid cluster config refused: %v", err)
	}
	var d server.Config
	d.SetDefaults()
	if d.ClusterName != "petrel" || d.Replicas != 0 {
		t.Fatalf("defaults: cluster_name %q, replicas %d", d.ClusterName, d.Replicas)
	}

	for _, tc := range []struct {
		name string
		cs   server.ClusterSection
		want string
	}{
		{"peers without listen", server.ClusterSection{Peers: []string{"127.0.0.1:6223"}}, "peers given without cluster_listen"},
		{"peer not host:port", server.ClusterSection{ClusterListen: "127.0.0.1:6222", Peers: []string{"node2"}}, `peers: "node2"`},
		{"peer without port", server.ClusterSection{ClusterListen: "127.0.0.1:6222", Peers: []string{"127.0.0.1:"}}, `peers: "127.0.0.1:"`},
		{"listen not host:port", server.ClusterSection{ClusterListen: "6222"}, `cluster_listen "6222"`},
		{"public listen without insecure", server.ClusterSection{ClusterListen: "10.0.0.1:6222"}, "not a loopback address"},
		{"replicas beyond the cluster", server.ClusterSection{ClusterListen: "127.0.0.1:6222", Peers: []string{"127.0.0.1:6222", "127.0.0.1:6223"}, Replicas: 3}, "exceeds the cluster's 2 node(s)"},
		{"replicas alone", server.ClusterSection{Replicas: 2}, "exceeds the cluster's 1 node(s)"},
		{"replicas too many", server.ClusterSection{Replicas: 6}, "want 0 (auto) or 1..5"},
		{"bad cluster name", server.ClusterSection{ClusterName: "a.b"}, "cluster_name"},
	} {
		t.Run(tc.name, func(t *testing.T) {
			c := server.Config{ClusterSection: tc.cs}
			c.SetDefaults()
			err := c.Validate()
			if err == nil || !strings.Contains(err.Error(), tc.want) {
				t.Fatalf("Validate() = %v, want it to mention %q", err, tc.want)
			}
		})
	}
}

// Off loopback the routes need the secret and TLS (or insecure); the keys are checked in full
// before the start, and their errors say which key to set without quoting the secret.
func TestClusterRouteSecurityConfig(t *testing.T) {
	dir := t.TempDir()
	const secret = "5b0e7c2a9d4f1e3b6a8c0d2f4e6b8a1c3e5d7f9b0a2c4e6d8f1b3a5c7e9d0f2b"
	token := filepath.Join(dir, "cluster.token")
	if err := os.WriteFile(token, []byte(secret+"\n"), 0o600); err != nil {
		t.Fatal(err)
	}
	short := filepath.Join(dir, "short.token")
	if err := os.WriteFile(short, []byte("tooshort"), 0o600); err != nil {
		t.Fatal(err)
	}
	// A rotation's file: the new secret first, the previous one accepted too.
	rotating := filepath.Join(dir, "rotating.token")
	rotSecret := strings.Repeat("ab", 32)
	if err := os.WriteFile(rotating, []byte(strings.Repeat("cd", 32)+"\n"+rotSecret+"\n"), 0o600); err != nil {
		t.Fatal(err)
	}
	rotatingBad := filepath.Join(dir, "rotating-bad.token")
	if err := os.WriteFile(rotatingBad, []byte(rotSecret+"\ntooshort\n"), 0o600); err != nil {
		t.Fatal(err)
	}
	tooMany := filepath.Join(dir, "too-many.token")
	if err := os.WriteFile(tooMany, []byte(strings.Repeat(rotSecret+"\n", 5)), 0o600); err != nil {
		t.Fatal(err)
	}
	ca := testcerts.NewCA(t, "cluster CA")
	node := ca.Issue(t, "n1")
	other := testcerts.NewCA(t, "other CA")
	foreign := other.Issue(t, "foreign")
	public := server.ClusterSection{ClusterListen: "10.0.0.1:6222", Peers: []string{"10.0.0.2:6222", "10.0.0.3:6222"}}
	withTLS := func(cs server.ClusterSection, f testcerts.Files, caFile string) server.ClusterSection {
		cs.ClusterTLSCert, cs.ClusterTLSKey, cs.ClusterTLSCA = f.CertFile, f.KeyFile, caFile
		return cs
	}
	withToken := func(cs server.ClusterSection, path string) server.ClusterSection {
		cs.ClusterTokenFile = path
		return cs
	}
	loop := server.ClusterSection{ClusterListen: "127.0.0.1:6222"}
	for _, tc := range []struct {
		name     string
		cs       server.ClusterSection
		insecure bool
		nats     []string
		want     []string // empty: valid
		not      []string
	}{
		{name: "public, token and TLS", cs: withTLS(withToken(public, token), node, ca.CertFile)},
		{name: "public, insecure", cs: public, insecure: true},
		{name: "public, token only, insecure", cs: withToken(public, token), insecure: true},
		{name: "loopback, nothing", cs: loop},
		{name: "loopback, token", cs: withToken(loop, token)},
		{name: "public, nothing", cs: public, want: []string{"with cluster_token_file", "cluster_tls_cert, cluster_tls_key and cluster_tls_ca"}},
		{name: "public, token only", cs: withToken(public, token), want: []string{"encrypt the cluster routes with cluster_tls_cert"}, not: []string{"authenticate the cluster routes"}},
		{name: "public, TLS only", cs: withTLS(public, node, ca.CertFile), want: []string{"authenticate the cluster routes with cluster_token_file"}, not: []string{"encrypt the cluster routes"}},
		{name: "missing token file", cs: withToken(loop, filepath.Join(dir, "none")), want: []string{"cluster_token_file: ", "does not exist"}},
		{name: "short token", cs: withToken(loop, short), want: []string{"does not hold one cluster secret of at least 32 characters"}, not: []string{"tooshort"}},
		{name: "rotating: two secrets", cs: withToken(loop, rotating)},
		{name: "rotating: a short second line", cs: withToken(loop, rotatingBad), want: []string{"line 2 is not a cluster secret of at least 32 characters"}, not: []string{"tooshort", rotSecret}},
		{name: "too many secrets", cs: withToken(loop, tooMany), want: []string{"holds 5 lines: at most 4"}, not: []string{rotSecret}},
		{name: "TLS keys apart", cs: server.ClusterSection{ClusterListen: "127.0.0.1:6222", ClusterTLSCert: node.CertFile}, want: []string{"must be given together"}},
		{name: "cert of another CA", cs: withTLS(loop, foreign, ca.CertFile), want: []string{"cluster_tls_cert, cluster_tls_key, cluster_tls_ca: ", "not signed by the CA"}},
		{name: "route keys without cluster", cs: withToken(server.ClusterSection{}, token), want: []string{"need cluster_listen"}},
		{name: "route keys with external NATS", cs: withToken(server.ClusterSection{}, token), nats: []string{"nats://127.0.0.1:4222"}, want: []string{"with nats (external) secure the NATS cluster there"}},
	} {
		t.Run(tc.name, func(t *testing.T) {
			c := server.Config{ClusterSection: tc.cs, Insecure: tc.insecure, NATS: tc.nats}
			c.SetDefaults()
			err := c.Validate()
			if len(tc.want) == 0 {
				if err != nil {
					t.Fatalf("Validate() = %v, want valid", err)
				}
				return
			}
			if err == nil {
				t.Fatalf("Validate() = nil, want %q", tc.want)
			}
			for _, w := range tc.want {
				if !strings.Contains(err.Error(), w) {
					t.Errorf("Validate() = %v, want it to mention %q", err, w)
				}
			}
			for _, n := range append(tc.not, secret) {
				if strings.Contains(err.Error(), n) {
					t.Errorf("Validate() = %v, must not mention %q", err, n)
				}
			}
		})
	}
	// The file's keys.
	path := filepath.Join(dir, "petrel.toml")
	file := `cluster_listen = "10.0.0.1:6222"
peers = ["10.0.0.2:6222", "10.0.0.3:6222"]
cluster_token_file = "` + token + `"
cluster_tls_cert = "` + node.CertFile + `"
cluster_tls_key = "` + node.KeyFile + `"
cluster_tls_ca = "` + ca.CertFile + `"
`
	if err := os.WriteFile(path, []byte(file), 0o600); err != nil {
		t.Fatal(err)
	}
	c, err := server.LoadConfig(path)
	if err != nil {
		t.Fatal(err)
	}
	if c.ClusterTokenFile != token || c.ClusterTLSCert != node.CertFile || c.ClusterTLSKey != node.KeyFile || c.ClusterTLSCA != ca.CertFile {
		t.Fatalf("loaded %+v", c.ClusterSection)
	}
	c.SetDefaults()
	if err := c.Validate(); err != nil {
		t.Fatalf("valid file refused: %v", err)
	}
}
