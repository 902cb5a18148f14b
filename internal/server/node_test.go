// Copyright 2026 The Petrel Authors
// SPDX-License-Identifier: Apache-2.0

package server_test

import (
	"context"
	"io"
	"log/slog"
	"os"
	"path/filepath"
	"strings"
	"testing"

	"github.com/petrelchat/petrel/internal/server"
	"github.com/petrelchat/petrel/internal/testserver"
)

// Two nodes started with the default config on one machine get different names (the host name
// and the random id in <data>/node.id); a restart keeps the name; the name is the embedded NATS
// server's name; an explicit node wins.
func TestDefaultNodeName(t *testing.T) {
	def := testserver.WithConfig(func(c *server.Config) { c.Node = "" })
	a, b := testserver.Start(t, def), testserver.Start(t, def)
	na, nb := a.Server().Config().Node, b.Server().Config().Node
	host, _ := os.Hostname()
	for _, n := range []string{na, nb} {
		if !strings.HasPrefix(n, host+"-") || len(n) != len(host)+1+8 {
			t.Fatalf("default node name %q: want %q, '-' and 8 hex digits", n, host)
		}
	}
	if na == nb {
		t.Fatalf("two nodes on one machine are both named %q", na)
	}
	if got := a.Server().Bus().Conn().ConnectedServerName(); got != na {
		t.Fatalf("embedded NATS server name %q, want the node name %q", got, na)
	}
	fi, err := os.Stat(filepath.Join(a.DataDir(), server.NodeIDFile))
	if err != nil {
		t.Fatal(err)
	}
	if fi.Mode().Perm() != 0o600 {
		t.Fatalf("%s has mode %v, want 0600", server.NodeIDFile, fi.Mode().Perm())
	}
	a.Restart(t)
	if got := a.Server().Config().Node; got != na {
		t.Fatalf("after a restart the node is %q, was %q", got, na)
	}

	c := testserver.Start(t, testserver.WithConfig(func(c *server.Config) { c.Node = "explicit" }))
	if got := c.Server().Config().Node; got != "explicit" {
		t.Fatalf("configured node %q became %q", "explicit", got)
	}
	if got := c.Server().Bus().Conn().ConnectedServerName(); got != "explicit" {
		t.Fatalf("embedded NATS server name %q, want %q", got, "explicit")
	}
	if _, err := os.Stat(filepath.Join(c.DataDir(), server.NodeIDFile)); !os.IsNotExist(err) {
		t.Fatalf("%s written although node is configured (%v)", server.NodeIDFile, err)
	}
}

// A damaged node.id stops the start with an error that names the file.
func TestDamagedNodeID(t *testing.T) {
	data := t.TempDir()
	if err := os.WriteFile(filepath.Join(data, server.NodeIDFile), []byte("not an id!\n"), 0o600); err != nil {
		t.Fatal(err)
	}
	srv, err := server.New(server.Config{Listen: "127.0.0.1:0", Data: data}, slog.New(slog.NewTextHandler(io.Discard, nil)))
	if err != nil {
		t.Fatal(err)
	}
	err = srv.Run(context.Background())
	if err == nil || !strings.Contains(err.Error(), server.NodeIDFile) || !strings.Contains(err.Error(), "damaged") {
		t.Fatalf("start with a damaged %s: %v", server.NodeIDFile, err)
	}
}
