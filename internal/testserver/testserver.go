// Copyright 2026 The Petrel Authors
// SPDX-License-Identifier: Apache-2.0

// Package testserver starts a real Petrel server in-process for tests: embedded NATS, a temporary
// data directory, a random loopback port. Nothing in it is a mock.
package testserver

import (
	"context"
	"crypto/tls"
	"io"
	"log/slog"
	"net/http"
	"os"
	"path/filepath"
	"runtime"
	"strings"
	"testing"
	"time"

	"github.com/petrelchat/petrel/internal/freeport"
	"github.com/petrelchat/petrel/internal/server"
)

// Server is a running test server.
type Server struct {
	cfg    server.Config
	log    io.Writer // the server's log at debug level, or nil
	srv    *server.Server
	cancel context.CancelFunc
	errc   chan error
}

// Option adjusts the server before start.
type Option func(*Server)

// WithConfig applies f to the config.
func WithConfig(f func(*server.Config)) Option { return func(s *Server) { f(&s.cfg) } }

// WithLog writes the server's log, at debug level, to w.
func WithLog(w io.Writer) Option { return func(s *Server) { s.log = w } }

// Start starts a server and stops it when the test ends.
func Start(t testing.TB, opts ...Option) *Server {
	t.Helper()
	// Ports below the ephemeral range (freeport): a restart binds them again, and a port 0 bind's
	// port could be taken meanwhile by any process's outgoing connection.
	addrs, err := freeport.LoopbackAddrs(2)
	if err != nil {
		t.Fatalf("testserver: %v", err)
	}
	s := &Server{cfg: server.Config{
		Listen:       addrs[0],
		AdminSection: server.AdminSection{AdminListen: addrs[1]},
		InboxSection: server.InboxSection{InboxShards: 4},
		Data:         t.TempDir(),
		Node:         "test",
	}}
	for _, o := range opts {
		o(s)
	}
	s.start(t)
	t.Cleanup(s.Stop)
	return s
}

func (s *Server) start(t testing.TB) {
	t.Helper()
	var log *slog.Logger
	switch {
	case s.log != nil:
		log = slog.New(slog.NewTextHandler(s.log, &slog.HandlerOptions{Level: slog.LevelDebug}))
	case os.Getenv("PETREL_TEST_LOG") != "":
		log = slog.New(slog.NewTextHandler(os.Stderr, &slog.HandlerOptions{Level: slog.LevelDebug}))
	default:
		log = slog.New(slog.NewTextHandler(io.Discard, nil))
	}
	srv, err := server.New(s.cfg, log)
	if err != nil {
		t.Fatalf("testserver: %v", err)
	}
	ctx, cancel := context.WithCancel(context.Background())
	s.srv, s.cancel, s.errc = srv, cancel, make(chan error, 1)
	go func() { s.errc <- srv.Run(ctx) }()
	select {
	case <-srv.Ready():
	case err := <-s.errc:
		cancel()
		t.Fatalf("testserver: start: %v", err)
	case <-time.After(30 * time.Second):
		cancel()
		t.Fatal("testserver: not ready within 30s")
	}
	ProbePollers(t, srv.URL())
	// Pin the ports so a restart comes back at the same URLs.
	s.cfg.Listen = srv.Addr().String()
	if a := srv.AdminAddr(); a != nil {
		s.cfg.AdminListen = a.String()
	}
}

// ProbePollers makes requests through the public listener until nbio's acceptor and pollers have
// certainly entered their loops. nbio v1.6.9 clears a poller's shutdown flag when its loop starts
// (poller_epoll.go: "p.shutdown = false"), so a Stop that comes before that hangs for ever; a test
// that stops a server right after Start, or talks only to the admin listener, would hit it. Each
// request on a new connection lands on some poller (connections are spread by descriptor), so a
// few per poller make it very likely that every poller has run; with the one poller of a machine
// of fewer than 8 cores, one request is proof.
func ProbePollers(t testing.TB, base string) {
	t.Helper()
	tr := &http.Transport{DisableKeepAlives: true, TLSClientConfig: &tls.Config{InsecureSkipVerify: true}} // loopback test server
	defer tr.CloseIdleConnections()
	hc := &http.Client{Transport: tr, Timeout: 10 * time.Second}
	for range 2 * max(1, runtime.NumCPU()/4) {
		resp, err := hc.Get(base + "/healthz")
		if err != nil {
			t.Fatalf("testserver: probe: %v", err)
		}
		resp.Body.Close()
	}
}

// URL is the server's base URL (http://127.0.0.1:PORT).
func (s *Server) URL() string { return s.srv.URL() }

// AdminURL is the admin listener's base URL (http://127.0.0.1:PORT): /metrics, /debug/pprof/,
// /v1/admin/*. "" when the config turned it off.
func (s *Server) AdminURL() string { return s.srv.AdminURL() }

// AdminToken is the operator token (the content of admin.token_file, by default <data>/admin.token).
func (s *Server) AdminToken(t testing.TB) string {
	t.Helper()
	path := s.cfg.AdminTokenFile
	if path == "" {
		path = filepath.Join(s.cfg.Data, server.AdminTokenFile)
	}
	b, err := os.ReadFile(path)
	if err != nil {
		t.Fatalf("testserver: read operator token: %v", err)
	}
	return strings.TrimSpace(string(b))
}

// DataDir is the server's data directory.
func (s *Server) DataDir() string { return s.cfg.Data }

// Server is the running server.
func (s *Server) Server() *server.Server { return s.srv }

// Stop shuts the server down gracefully and waits. Idempotent.
func (s *Server) Stop() {
	if s.cancel == nil {
		return
	}
	s.cancel()
	<-s.errc
	s.cancel = nil
}

// Restart stops the server and starts it again on the same data directory and port.
func (s *Server) Restart(t testing.TB) {
	t.Helper()
	s.Stop()
	s.start(t)
}
