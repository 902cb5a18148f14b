// Copyright 2026 The Petrel Authors
// SPDX-License-Identifier: Apache-2.0

// Package server is the composition root of a Petrel node: it turns a Config into a running
// server (bus, directory, mailbox, gateway, HTTP endpoints), owns the top-level goroutines, and
// shuts everything down in lame-duck order: readiness off → clients told to reconnect → in-flight
// sends answered → connections closed → storage closed.
package server

import (
	"context"
	"crypto/rand"
	"crypto/subtle"
	"encoding/hex"
	"errors"
	"fmt"
	"io"
	"log/slog"
	"net"
	"net/http"
	httppprof "net/http/pprof"
	"os"
	"path/filepath"
	"strings"
	"sync"
	"sync/atomic"
	"syscall"
	"time"

	"github.com/prometheus/client_golang/prometheus"
	"github.com/prometheus/client_golang/prometheus/collectors"
	"github.com/prometheus/client_golang/prometheus/promhttp"
	"google.golang.org/protobuf/proto"

	"github.com/petrelchat/petrel/internal/bus"
	"github.com/petrelchat/petrel/internal/directory"
	"github.com/petrelchat/petrel/internal/gateway"
	"github.com/petrelchat/petrel/internal/mailbox"
	pb "github.com/petrelchat/petrel/proto/petrel/v1"
)

// fdHeadroom is how many file descriptors are kept for the store, listeners and admin work.
const fdHeadroom = 512

// AdminTokenFile is the operator credential, created in the data directory at first start.
const AdminTokenFile = "admin.token"

// Server is one Petrel node.
type Server struct {
	cfg Config
	log *slog.Logger

	reg    *prometheus.Registry
	bus    *bus.Bus
	dir    *directory.Directory
	mb     *mailbox.Mailbox
	gw     *gateway.Gateway
	engine *gateway.Engine
	addr   atomic.Value // net.Addr
	token  string

	runCtx    context.Context // lives until Shutdown closes storage
	runCancel context.CancelFunc
	ready     chan struct{}
	shutOnce  sync.Once
	shutErr   error
	done      chan struct{}
}

// New validates cfg and returns a server. It does no I/O.
func New(cfg Config, log *slog.Logger) (*Server, error) {
	cfg.SetDefaults()
	if err := cfg.Validate(); err != nil {
		return nil, err
	}
	if log == nil {
		log = slog.Default()
	}
	runCtx, runCancel := context.WithCancel(context.Background())
	return &Server{cfg: cfg, log: log, ready: make(chan struct{}), done: make(chan struct{}), runCtx: runCtx, runCancel: runCancel}, nil
}

// Config returns the effective configuration.
func (s *Server) Config() Config { return s.cfg }

// Addr is the listener's address once Ready is closed.
func (s *Server) Addr() net.Addr {
	a, _ := s.addr.Load().(net.Addr)
	return a
}

// URL is the base URL clients use, once Ready is closed.
func (s *Server) URL() string {
	scheme := "http"
	if s.cfg.TLSCert != "" {
		scheme = "https"
	}
	return scheme + "://" + s.Addr().String()
}

// Ready is closed when the server serves.
func (s *Server) Ready() <-chan struct{} { return s.ready }

// Run starts the server and blocks until ctx ends, then shuts down gracefully.
func (s *Server) Run(ctx context.Context) error {
	if err := s.start(ctx); err != nil {
		s.closeStorage()
		return err
	}
	close(s.ready)
	<-ctx.Done()
	sctx, cancel := context.WithTimeoutCause(context.Background(), s.cfg.DrainTimeout.Duration,
		fmt.Errorf("graceful shutdown exceeded drain_timeout %s", s.cfg.DrainTimeout.Duration))
	defer cancel()
	return s.Shutdown(sctx)
}

func (s *Server) start(ctx context.Context) error {
	if err := os.MkdirAll(s.cfg.Data, 0o700); err != nil {
		return fmt.Errorf("data directory: %w", err)
	}
	token, err := loadOrCreateToken(filepath.Join(s.cfg.Data, AdminTokenFile))
	if err != nil {
		return err
	}
	s.token = token
	maxConns := s.cfg.MaxConns
	var lim syscall.Rlimit
	if err := syscall.Getrlimit(syscall.RLIMIT_NOFILE, &lim); err == nil {
		auto := int(lim.Cur) - fdHeadroom
		if auto < 16 {
			auto = 16
		}
		if maxConns == 0 || maxConns > auto {
			maxConns = auto
		}
		s.log.Info("file descriptor limit", "rlimit_nofile", lim.Cur, "max_conns", maxConns)
	} else if maxConns == 0 {
		maxConns = 1000
	}

	s.reg = prometheus.NewRegistry()
	s.reg.MustRegister(collectors.NewGoCollector(), collectors.NewProcessCollector(collectors.ProcessCollectorOpts{}))
	s.bus, err = bus.Open(ctx, bus.Config{
		DataDir:           s.cfg.Data,
		URLs:              s.cfg.NATS,
		InboxShards:       s.cfg.InboxShards,
		InboxMaxAge:       s.cfg.InboxTTL.Duration,
		InboxMaxPerDevice: s.cfg.InboxMaxPerDevice,
		Name:              s.cfg.Node,
		Logger:            s.log.With("component", "bus"),
	})
	if err != nil {
		return err
	}
	s.dir = directory.New(s.bus, directory.Config{
		Policy:           s.cfg.Registration,
		ReplenishBelow:   s.cfg.PrekeyReplenishBelow,
		AccountCacheSize: s.cfg.AccountCacheSize,
		DeviceCacheSize:  s.cfg.DeviceCacheSize,
		Logger:           s.log.With("component", "directory"),
	})
	if err := s.dir.Start(s.runCtx); err != nil {
		return fmt.Errorf("directory: %w", err)
	}
	s.mb = mailbox.New(s.bus, mailbox.Config{
		LiveAckTimeout: s.cfg.LiveAckTimeout.Duration,
		Window:         s.cfg.DeliveryWindow,
		Logger:         s.log.With("component", "mailbox"),
		Registry:       s.reg,
	})
	if err := s.mb.Start(); err != nil {
		return err
	}
	s.gw = gateway.New(s.dir, s.mb, gateway.Config{
		MaxFrameBytes:          s.cfg.MaxFrameBytes,
		MaxConns:               maxConns,
		HandshakeTimeout:       s.cfg.HandshakeTimeout.Duration,
		IdleTimeout:            s.cfg.IdleTimeout.Duration,
		FramesPerSecond:        s.cfg.ConnFramesPerSecond,
		FrameBurst:             s.cfg.ConnFrameBurst,
		RegistrationsPerSecond: s.cfg.RegistrationsPerSecond,
		Node:                   s.cfg.Node,
		Logger:                 s.log.With("component", "gateway"),
		Registry:               s.reg,
	})

	mux := http.NewServeMux()
	mux.Handle("GET "+pb.ConnectPath, s.gw)
	mux.HandleFunc("GET /healthz", s.healthz)
	mux.HandleFunc("GET /readyz", s.readyz)
	mux.Handle("GET /metrics", promhttp.HandlerFor(s.reg, promhttp.HandlerOpts{}))
	mux.HandleFunc("POST /v1/admin/invites", s.createInvite)
	mux.HandleFunc("POST /v1/admin/register-bulk", s.registerBulk)
	mux.HandleFunc("GET /debug/pprof/", s.pprof)

	var tlsOpts *gateway.TLS
	if s.cfg.TLSCert != "" {
		tlsCfg, err := gateway.LoadTLS(s.cfg.TLSCert, s.cfg.TLSKey)
		if err != nil {
			return err
		}
		tlsOpts = &gateway.TLS{
			Config:           tlsCfg,
			MaxHandshakes:    s.cfg.TLSMaxHandshakes,
			HandshakeTimeout: s.cfg.HandshakeTimeout.Duration,
			Gateway:          s.gw,
			Logger:           s.log.With("component", "tls"),
			Registry:         s.reg,
		}
	}
	// The bound address is recorded so that port 0 works.
	s.engine, err = gateway.NewEngine("petrel", s.cfg.Listen, tlsOpts, maxConns, mux, func(a net.Addr) { s.addr.Store(a) })
	if err != nil {
		return err
	}
	if err := s.engine.Start(); err != nil {
		return fmt.Errorf("listen on %s: %w", s.cfg.Listen, err)
	}
	return nil
}

// Shutdown drains the node: readiness goes false, clients are told to reconnect with jitter,
// in-flight sends finish (or are not acked) within ctx, then connections and storage close.
// Idempotent.
func (s *Server) Shutdown(ctx context.Context) error {
	s.shutOnce.Do(func() {
		defer close(s.done)
		var errs []error
		if s.gw != nil {
			if err := s.gw.Drain(ctx); err != nil {
				errs = append(errs, err)
			}
		}
		if s.engine != nil {
			s.engine.Stop()
		}
		if s.gw != nil {
			s.gw.Close()
		}
		s.closeStorage()
		s.shutErr = errors.Join(errs...)
		s.log.Info("stopped")
	})
	return s.shutErr
}

func (s *Server) closeStorage() {
	s.runCancel()
	if s.dir != nil {
		s.dir.Wait()
	}
	if s.mb != nil {
		s.mb.Close()
	}
	if s.bus != nil {
		s.bus.Close()
	}
}

// Done is closed when Shutdown has finished.
func (s *Server) Done() <-chan struct{} { return s.done }

func (s *Server) healthz(w http.ResponseWriter, _ *http.Request) {
	if s.bus == nil || !s.bus.Healthy() {
		http.Error(w, "storage unavailable", http.StatusServiceUnavailable)
		return
	}
	fmt.Fprintln(w, "ok")
}

func (s *Server) readyz(w http.ResponseWriter, _ *http.Request) {
	if s.gw == nil || !s.gw.Ready() || !s.mb.Healthy() {
		http.Error(w, "not ready", http.StatusServiceUnavailable)
		return
	}
	fmt.Fprintln(w, "ready")
}

// createInvite makes a one-time invite code. It needs the operator token from the data directory.
func (s *Server) createInvite(w http.ResponseWriter, r *http.Request) {
	if !s.operator(w, r) {
		return
	}
	ctx, cancel := context.WithTimeout(r.Context(), 10*time.Second)
	defer cancel()
	code, err := s.dir.CreateInvite(ctx)
	if err != nil {
		http.Error(w, "could not create invite: storage unavailable", http.StatusServiceUnavailable)
		return
	}
	w.Header().Set("Content-Type", "text/plain")
	fmt.Fprintln(w, code)
}

// operator checks the operator token (constant time) and answers 401 when it is missing or wrong.
func (s *Server) operator(w http.ResponseWriter, r *http.Request) bool {
	tok, ok := strings.CutPrefix(r.Header.Get("Authorization"), "Bearer ")
	if !ok || subtle.ConstantTimeCompare([]byte(tok), []byte(s.token)) != 1 {
		http.Error(w, "operator token required", http.StatusUnauthorized)
		return false
	}
	return true
}

// registerBulk registers synthetic accounts for load generators and fixtures (operator only).
func (s *Server) registerBulk(w http.ResponseWriter, r *http.Request) {
	if !s.operator(w, r) {
		return
	}
	body, err := io.ReadAll(io.LimitReader(r.Body, 64<<20))
	if err != nil {
		http.Error(w, "read body: "+err.Error(), http.StatusBadRequest)
		return
	}
	req := &pb.BulkRegisterRequest{}
	if err := proto.Unmarshal(body, req); err != nil {
		http.Error(w, "body is not a BulkRegisterRequest", http.StatusBadRequest)
		return
	}
	ctx, cancel := context.WithTimeout(r.Context(), 2*time.Minute)
	defer cancel()
	res, err := s.dir.RegisterBulk(ctx, req.GetDevices())
	if err != nil {
		http.Error(w, err.Error(), http.StatusBadRequest)
		return
	}
	out, _ := proto.Marshal(res)
	w.Header().Set("Content-Type", "application/x-protobuf")
	_, _ = w.Write(out)
}

// pprof serves the Go runtime profiles (operator only): heap, goroutine, allocs, and
// /debug/pprof/profile?seconds=N for CPU.
func (s *Server) pprof(w http.ResponseWriter, r *http.Request) {
	if !s.operator(w, r) {
		return
	}
	switch strings.TrimPrefix(r.URL.Path, "/debug/pprof/") {
	case "profile":
		httppprof.Profile(w, r)
	case "trace":
		httppprof.Trace(w, r)
	default:
		httppprof.Index(w, r)
	}
}

func loadOrCreateToken(path string) (string, error) {
	b, err := os.ReadFile(path)
	if err == nil {
		t := strings.TrimSpace(string(b))
		if len(t) >= 32 {
			return t, nil
		}
		return "", fmt.Errorf("%s is damaged: delete it to create a new operator token", path)
	}
	if !errors.Is(err, os.ErrNotExist) {
		return "", fmt.Errorf("read operator token: %w", err)
	}
	var raw [32]byte
	if _, err := rand.Read(raw[:]); err != nil {
		return "", err
	}
	t := hex.EncodeToString(raw[:])
	if err := os.WriteFile(path, []byte(t+"\n"), 0o600); err != nil {
		return "", fmt.Errorf("write operator token: %w", err)
	}
	return t, nil
}

// Conns is the number of open device connections.
func (s *Server) Conns() int {
	if s.gw == nil {
		return 0
	}
	return s.gw.Conns()
}

// Bus exposes the node's bus to tests in other packages (failure injection).
func (s *Server) Bus() *bus.Bus { return s.bus }
