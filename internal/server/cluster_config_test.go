// Copyright 2026 The Petrel Authors
// SPDX-License-Identifier: Apache-2.0

package server_test

import (
	"os"
	"path/filepath"
	"strings"
	"testing"

	"github.com/petrelchat/petrel/internal/server"
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
