// Copyright 2026 The Petrel Authors
// SPDX-License-Identifier: Apache-2.0

package server_test

import (
	"errors"
	"log/slog"
	"net/http"
	"os"
	"path/filepath"
	"strings"
	"testing"

	"github.com/petrelchat/petrel/internal/admin"
	"github.com/petrelchat/petrel/internal/server"
	"github.com/petrelchat/petrel/internal/testserver"
)

func TestAdminListenConfig(t *testing.T) {
	def := server.Config{}
	def.SetDefaults()
	if def.AdminListen != "127.0.0.1:7071" {
		t.Fatalf("default admin_listen %q", def.AdminListen)
	}
	anyPort := server.Config{Listen: "127.0.0.1:0"}
	anyPort.SetDefaults()
	if anyPort.AdminListen != "127.0.0.1:0" {
		t.Fatalf("default admin_listen with listen on port 0: %q", anyPort.AdminListen)
	}
	cases := []struct {
		name    string
		edit    func(*server.Config)
		wantErr string
	}{
		{"loopback", func(c *server.Config) { c.AdminListen = "127.0.0.1:0" }, ""},
		{"ipv6 loopback", func(c *server.Config) { c.AdminListen = "[::1]:7071" }, ""},
		{"off", func(c *server.Config) { c.AdminListen = "off" }, ""},
		{"not an address", func(c *server.Config) { c.AdminListen = "7071" }, "admin.listen"},
		{"all interfaces, plain", func(c *server.Config) { c.AdminListen = ":7071" }, "admin.listen \":7071\" is not a loopback address"},
		{"remote, plain", func(c *server.Config) { c.AdminListen = "10.0.0.1:7071" }, "not a loopback address"},
		{"remote, insecure", func(c *server.Config) { c.AdminListen = "10.0.0.1:7071"; c.Insecure = true }, ""},
		{"remote, TLS", func(c *server.Config) { c.AdminListen = "10.0.0.1:7071"; c.TLSCert, c.TLSKey = "c.pem", "k.pem" }, ""},
	}
	for _, tc := range cases {
		t.Run(tc.name, func(t *testing.T) {
			c := server.Config{}
			tc.edit(&c)
			c.SetDefaults()
			err := c.Validate()
			switch {
			case tc.wantErr == "" && err != nil:
				t.Fatalf("unexpected error: %v", err)
			case tc.wantErr != "" && (err == nil || !strings.Contains(err.Error(), tc.wantErr)):
				t.Fatalf("error %v, want one containing %q", err, tc.wantErr)
			}
		})
	}
	p := filepath.Join(t.TempDir(), "petrel.toml")
	os.WriteFile(p, []byte("admin_listen = \"127.0.0.1:0\"\n"), 0o600)
	if c, err := server.LoadConfig(p); err != nil || c.AdminListen != "127.0.0.1:0" {
		t.Fatalf("admin_listen from a file: %+v %v", c.AdminListen, err)
	}
}

// admin.addr appears when the server serves, holds the admin listener's URL, goes at shutdown,
// and comes back on restart.
func TestAdminAddrFileLifecycle(t *testing.T) {
	s := testserver.Start(t)
	path := filepath.Join(s.DataDir(), admin.AddrFile)
	url := s.AdminURL()
	if got, err := admin.ReadAddrFile(path); err != nil || got != url || s.Server().AdminAddr() == nil {
		t.Fatalf("admin.addr %q %v, admin URL %s", got, err, url)
	}
	s.Stop()
	if _, err := admin.ReadAddrFile(path); !errors.Is(err, admin.ErrNoAddrFile) {
		t.Fatalf("after shutdown: %v", err)
	}
	s.Restart(t)
	if got, err := admin.ReadAddrFile(path); err != nil || got != url {
		t.Fatalf("after restart: admin.addr %q %v, want %s", got, err, url)
	}
}

// admin_listen = "off": no admin listener, no admin.addr, and the public listener still serves no
// operator surface.
func TestAdminListenOff(t *testing.T) {
	s := testserver.Start(t, testserver.WithConfig(func(c *server.Config) { c.AdminListen = server.AdminListenOff }))
	if s.AdminURL() != "" || s.Server().AdminAddr() != nil {
		t.Fatalf("admin URL %q with admin_listen off", s.AdminURL())
	}
	if _, err := os.Stat(filepath.Join(s.DataDir(), admin.AddrFile)); !errors.Is(err, os.ErrNotExist) {
		t.Fatalf("admin.addr with admin_listen off: %v", err)
	}
	resp, err := http.Get(s.URL() + "/metrics")
	if err != nil {
		t.Fatal(err)
	}
	resp.Body.Close()
	if resp.StatusCode != http.StatusNotFound {
		t.Fatalf("public /metrics: %d", resp.StatusCode)
	}
}

// A busy admin address fails the start with a way out, and leaves no listener behind.
func TestAdminListenBusy(t *testing.T) {
	a := testserver.Start(t)
	c := server.Config{Listen: "127.0.0.1:0", Data: t.TempDir(), Node: "busy"}
	c.AdminListen, c.InboxShards = a.Server().AdminAddr().String(), 1
	srv, err := server.New(c, slog.New(slog.DiscardHandler))
	if err != nil {
		t.Fatal(err)
	}
	err = srv.Run(t.Context())
	if err == nil || !strings.Contains(err.Error(), "admin listener") || !strings.Contains(err.Error(), "127.0.0.1:0") {
		t.Fatalf("Run with a busy admin address: %v", err)
	}
}
