// Copyright 2026 The Petrel Authors
// SPDX-License-Identifier: Apache-2.0

// Package admin is the operator listener of a Petrel node: Prometheus metrics (/metrics), the Go
// runtime profiles (/debug/pprof/), invite codes (POST /v1/admin/invites) and bulk registration
// (POST /v1/admin/register-bulk) and the endpoints other services add (Config.Operator: the status
// page's incidents), on the standard library's net/http and apart from the public listener.
//
// Every endpoint needs the operator token (the content of <data>/admin.token) as
// "Authorization: Bearer TOKEN", compared in constant time, except /metrics when Config.OpenMetrics
// is set (the server sets it when the admin listener is on a loopback address, where Prometheus
// scrapes without credentials as usual). The token is checked before any request body is read.
// Request bodies are small (Config.MaxBodyBytes) except on bulk registration
// (Config.BulkMaxBytes).
//
// Once listening, the listener's base URL is written to Config.AddrFile (<data>/admin.addr, beside
// admin.token; atomically, mode 0600) so that `--admin-listen 127.0.0.1:0` works and the operator
// tools (petrel admin, petrel bench) find the listener; Shutdown removes it. ReadAddrFile and
// CheckTokenTransport are the client half of that contract.
//
// Lifecycle: New (no I/O) → Start (listen, write the address file, serve in one owned goroutine)
// → Shutdown(ctx) (bounded, idempotent).
package admin

import (
	"context"
	"crypto/subtle"
	"crypto/tls"
	"errors"
	"fmt"
	"io"
	"log/slog"
	"net"
	"net/http"
	httppprof "net/http/pprof"
	"strings"
	"sync"
	"sync/atomic"
	"time"

	"github.com/prometheus/client_golang/prometheus"
	"github.com/prometheus/client_golang/prometheus/promhttp"
	"google.golang.org/protobuf/proto"

	pb "github.com/petrelchat/petrel/proto/petrel/v1"
)

// Paths served by the admin listener.
const (
	MetricsPath      = "/metrics"
	PprofPath        = "/debug/pprof/"
	InvitesPath      = "/v1/admin/invites"
	RegisterBulkPath = "/v1/admin/register-bulk"
)

// Defaults of Config.
const (
	// DefaultListen is the admin listener's address when none is configured.
	DefaultListen = "127.0.0.1:7071"
	// DefaultBulkMaxBytes bounds a bulk registration body (1,000 devices with prekeys fit well).
	DefaultBulkMaxBytes = 64 << 20
	// DefaultMaxBodyBytes bounds the body of every other request.
	DefaultMaxBodyBytes = 64 << 10
	// DefaultMaxConns bounds the admin listener's open connections.
	DefaultMaxConns = 64
	// DefaultReadHeaderTimeout bounds reading a request's headers.
	DefaultReadHeaderTimeout = 10 * time.Second
	// DefaultReadTimeout bounds reading a whole request (a bulk registration body included).
	DefaultReadTimeout = 2 * time.Minute
	// DefaultWriteTimeout bounds a request from the end of its headers to the end of its answer:
	// long enough for a bulk registration and for /debug/pprof/profile?seconds=N up to N = 290.
	DefaultWriteTimeout = 5 * time.Minute
	// DefaultIdleTimeout closes keep-alive connections idle this long.
	DefaultIdleTimeout = 2 * time.Minute
	// DefaultMaxHeaderBytes bounds a request's headers.
	DefaultMaxHeaderBytes = 16 << 10
	// DefaultShutdownTimeout bounds Shutdown's wait for requests in flight beyond the caller's ctx.
	DefaultShutdownTimeout = 5 * time.Second
)

// inviteTimeout and bulkTimeout bound the storage work of one request.
const (
	inviteTimeout = 10 * time.Second
	bulkTimeout   = 2 * time.Minute
)

// Directory is what the admin listener needs of the directory service.
type Directory interface {
	// CreateInvite makes a one-time invite code.
	CreateInvite(ctx context.Context) (string, error)
	// RegisterBulk registers synthetic devices; the caller has checked the operator token.
	RegisterBulk(ctx context.Context, devs []*pb.BulkDevice) (*pb.BulkRegisterResponse, error)
}

// Config configures the admin listener. Zero values mean the documented defaults.
type Config struct {
	// Listen is the address to listen on ("127.0.0.1:0" for any free port). Default: DefaultListen.
	Listen string
	// Token is the operator token. Required.
	Token string
	// TLS, when set, makes the listener serve HTTPS only. Default: nil (plain HTTP).
	TLS *tls.Config
	// OpenMetrics serves /metrics without the operator token. Default: false.
	OpenMetrics bool
	// Gatherer is the metrics registry served on /metrics. Default: none (/metrics answers 404).
	Gatherer prometheus.Gatherer
	// Registerer receives the admin listener's own metrics. Default: none.
	Registerer prometheus.Registerer
	// AddrFile is where the listener's base URL is written once it listens, and removed at
	// Shutdown. Default: "" (not written).
	AddrFile string
	// BulkMaxBytes bounds a bulk registration body, in bytes. Default: DefaultBulkMaxBytes.
	BulkMaxBytes int64
	// MaxBodyBytes bounds every other request body, in bytes. Default: DefaultMaxBodyBytes.
	MaxBodyBytes int64
	// MaxConns bounds open connections; more wait in the kernel's accept queue. Default: DefaultMaxConns.
	MaxConns int
	// ReadHeaderTimeout, ReadTimeout, WriteTimeout and IdleTimeout are net/http's. Defaults:
	// DefaultReadHeaderTimeout, DefaultReadTimeout, DefaultWriteTimeout, DefaultIdleTimeout.
	ReadHeaderTimeout, ReadTimeout, WriteTimeout, IdleTimeout time.Duration
	// MaxHeaderBytes bounds a request's headers, in bytes. Default: DefaultMaxHeaderBytes.
	MaxHeaderBytes int
	// Logger receives the listener's log lines. Default: slog.Default().
	Logger *slog.Logger
	// Operator adds endpoints of other services (pattern, e.g. "POST /v1/admin/incidents" →
	// handler), each behind the operator token and the MaxBodyBytes limit. Default: none.
	Operator map[string]http.Handler
}

func (c *Config) setDefaults() {
	if c.Listen == "" {
		c.Listen = DefaultListen
	}
	if c.BulkMaxBytes <= 0 {
		c.BulkMaxBytes = DefaultBulkMaxBytes
	}
	if c.MaxBodyBytes <= 0 {
		c.MaxBodyBytes = DefaultMaxBodyBytes
	}
	if c.MaxConns <= 0 {
		c.MaxConns = DefaultMaxConns
	}
	if c.ReadHeaderTimeout <= 0 {
		c.ReadHeaderTimeout = DefaultReadHeaderTimeout
	}
	if c.ReadTimeout <= 0 {
		c.ReadTimeout = DefaultReadTimeout
	}
	if c.WriteTimeout <= 0 {
		c.WriteTimeout = DefaultWriteTimeout
	}
	if c.IdleTimeout <= 0 {
		c.IdleTimeout = DefaultIdleTimeout
	}
	if c.MaxHeaderBytes <= 0 {
		c.MaxHeaderBytes = DefaultMaxHeaderBytes
	}
	if c.Logger == nil {
		c.Logger = slog.Default()
	}
}

// Server is the admin listener.
type Server struct {
	cfg     Config
	dir     Directory
	log     *slog.Logger
	handler http.Handler
	refused *prometheus.CounterVec

	baseCtx    context.Context // requests' parent; cancelled by Shutdown
	baseCancel context.CancelFunc

	reqMu    sync.Mutex    // guards the following fields
	reqs     int           // handlers running
	draining bool          // Shutdown waits for reqs to reach 0; no new handler starts
	idle     chan struct{} // closed when reqs reaches 0 while draining

	mu       sync.Mutex // guards the following fields
	http     *http.Server
	ln       net.Listener
	served   chan struct{} // closed when the serve goroutine has returned
	addrFile string        // content written to cfg.AddrFile, "" if none
	shut     bool

	addr atomic.Value // net.Addr, once listening
}

// New returns an admin listener for dir. It does no I/O.
func New(cfg Config, dir Directory) (*Server, error) {
	cfg.setDefaults()
	if cfg.Token == "" {
		return nil, errors.New("admin: no operator token")
	}
	if dir == nil {
		return nil, errors.New("admin: no directory")
	}
	if _, _, err := net.SplitHostPort(cfg.Listen); err != nil {
		return nil, fmt.Errorf("admin: listen %q: %w", cfg.Listen, err)
	}
	s := &Server{cfg: cfg, dir: dir, log: cfg.Logger}
	s.baseCtx, s.baseCancel = context.WithCancel(context.Background())
	s.refused = prometheus.NewCounterVec(prometheus.CounterOpts{
		Name: "petrel_admin_refused_total",
		Help: "Admin listener requests refused, by reason: token (missing or wrong operator token), body_too_large.",
	}, []string{"reason"})
	for _, r := range []string{"token", "body_too_large"} {
		s.refused.WithLabelValues(r)
	}
	if cfg.Registerer != nil {
		if err := cfg.Registerer.Register(s.refused); err != nil {
			return nil, fmt.Errorf("admin: register metrics: %w", err)
		}
	}
	s.handler = s.routes()
	return s, nil
}

// Handler is the admin listener's HTTP handler (for tests; Start serves it).
func (s *Server) Handler() http.Handler { return s.handler }

func (s *Server) routes() http.Handler {
	mux := http.NewServeMux()
	if s.cfg.Gatherer != nil {
		metrics := promhttp.HandlerFor(s.cfg.Gatherer, promhttp.HandlerOpts{})
		if !s.cfg.OpenMetrics {
			metrics = s.operator(metrics)
		}
		mux.Handle("GET "+MetricsPath, s.limitBody(s.cfg.MaxBodyBytes, metrics))
	}
	small := func(h http.HandlerFunc) http.Handler { return s.operator(s.limitBody(s.cfg.MaxBodyBytes, h)) }
	mux.Handle("GET "+PprofPath, small(httppprof.Index))
	mux.Handle("GET "+PprofPath+"cmdline", small(httppprof.Cmdline))
	mux.Handle("GET "+PprofPath+"profile", small(httppprof.Profile))
	mux.Handle("GET "+PprofPath+"symbol", small(httppprof.Symbol))
	mux.Handle("POST "+PprofPath+"symbol", small(httppprof.Symbol)) // go tool pprof posts addresses
	mux.Handle("GET "+PprofPath+"trace", small(httppprof.Trace))
	mux.Handle("POST "+InvitesPath, small(s.createInvite))
	mux.Handle("POST "+RegisterBulkPath, s.operator(s.limitBody(s.cfg.BulkMaxBytes, http.HandlerFunc(s.registerBulk))))
	for pattern, h := range s.cfg.Operator {
		mux.Handle(pattern, s.operator(s.limitBody(s.cfg.MaxBodyBytes, h)))
	}
	return s.track(mux)
}

// track counts handlers in flight so that Shutdown can wait for them, and refuses new ones once
// Shutdown waits.
func (s *Server) track(h http.Handler) http.Handler {
	return http.HandlerFunc(func(w http.ResponseWriter, r *http.Request) {
		s.reqMu.Lock()
		if s.draining {
			s.reqMu.Unlock()
			http.Error(w, "shutting down", http.StatusServiceUnavailable)
			return
		}
		s.reqs++
		s.reqMu.Unlock()
		defer func() {
			s.reqMu.Lock()
			s.reqs--
			if s.reqs == 0 && s.idle != nil {
				close(s.idle)
				s.idle = nil
			}
			s.reqMu.Unlock()
		}()
		h.ServeHTTP(w, r)
	})
}

// operator answers 401 unless the request carries the operator token (compared in constant time).
func (s *Server) operator(h http.Handler) http.Handler {
	want := []byte(s.cfg.Token)
	return http.HandlerFunc(func(w http.ResponseWriter, r *http.Request) {
		tok, ok := strings.CutPrefix(r.Header.Get("Authorization"), "Bearer ")
		if !ok || subtle.ConstantTimeCompare([]byte(tok), want) != 1 {
			s.refused.WithLabelValues("token").Inc()
			w.Header().Set("WWW-Authenticate", `Bearer realm="petrel-admin"`)
			http.Error(w, "operator token required", http.StatusUnauthorized)
			return
		}
		h.ServeHTTP(w, r)
	})
}

// limitBody answers 413 to a declared body over limit and cuts a longer body at limit.
func (s *Server) limitBody(limit int64, h http.Handler) http.Handler {
	return http.HandlerFunc(func(w http.ResponseWriter, r *http.Request) {
		if r.ContentLength > limit {
			s.tooLarge(w, limit)
			return
		}
		r.Body = http.MaxBytesReader(w, r.Body, limit)
		h.ServeHTTP(w, r)
	})
}

func (s *Server) tooLarge(w http.ResponseWriter, limit int64) {
	s.refused.WithLabelValues("body_too_large").Inc()
	w.Header().Set("Connection", "close")
	http.Error(w, fmt.Sprintf("request body larger than %d bytes", limit), http.StatusRequestEntityTooLarge)
}

// createInvite makes a one-time invite code.
func (s *Server) createInvite(w http.ResponseWriter, r *http.Request) {
	ctx, cancel := context.WithTimeout(r.Context(), inviteTimeout)
	defer cancel()
	code, err := s.dir.CreateInvite(ctx)
	if err != nil {
		s.log.Warn("create invite", "err", err)
		http.Error(w, "could not create invite: storage unavailable", http.StatusServiceUnavailable)
		return
	}
	w.Header().Set("Content-Type", "text/plain; charset=utf-8")
	fmt.Fprintln(w, code)
}

// registerBulk registers synthetic accounts for load generators and fixtures.
func (s *Server) registerBulk(w http.ResponseWriter, r *http.Request) {
	body, err := io.ReadAll(r.Body)
	if err != nil {
		var mbe *http.MaxBytesError
		if errors.As(err, &mbe) {
			s.tooLarge(w, mbe.Limit)
			return
		}
		http.Error(w, "read body: "+err.Error(), http.StatusBadRequest)
		return
	}
	req := &pb.BulkRegisterRequest{}
	if err := proto.Unmarshal(body, req); err != nil {
		http.Error(w, "body is not a BulkRegisterRequest", http.StatusBadRequest)
		return
	}
	ctx, cancel := context.WithTimeout(r.Context(), bulkTimeout)
	defer cancel()
	res, err := s.dir.RegisterBulk(ctx, req.GetDevices())
	if err != nil {
		http.Error(w, err.Error(), http.StatusBadRequest)
		return
	}
	out, err := proto.Marshal(res)
	if err != nil {
		http.Error(w, "encode answer: "+err.Error(), http.StatusInternalServerError)
		return
	}
	w.Header().Set("Content-Type", "application/x-protobuf")
	_, _ = w.Write(out)
}

// Start listens, writes the address file and serves in a goroutine that Shutdown waits for.
func (s *Server) Start() error {
	s.mu.Lock()
	defer s.mu.Unlock()
	if s.shut {
		return errors.New("admin: already shut down")
	}
	if s.ln != nil {
		return errors.New("admin: already started")
	}
	ln, err := net.Listen("tcp", s.cfg.Listen)
	if err != nil {
		return fmt.Errorf("admin listener: %w (set admin_listen / --admin-listen to a free address, 127.0.0.1:0 for any free port, or off)", err)
	}
	s.addr.Store(ln.Addr())
	if s.cfg.AddrFile != "" {
		content := s.URL() + "\n"
		if err := writeFileAtomic(s.cfg.AddrFile, []byte(content), 0o600); err != nil {
			ln.Close()
			return fmt.Errorf("admin listener: write address file: %w", err)
		}
		s.addrFile = content
	}
	s.ln = ln
	var serveLn net.Listener = newLimitListener(ln, s.cfg.MaxConns)
	if s.cfg.TLS != nil {
		serveLn = tls.NewListener(serveLn, s.cfg.TLS)
	}
	s.http = &http.Server{
		Handler:           s.handler,
		ReadHeaderTimeout: s.cfg.ReadHeaderTimeout,
		ReadTimeout:       s.cfg.ReadTimeout,
		WriteTimeout:      s.cfg.WriteTimeout,
		IdleTimeout:       s.cfg.IdleTimeout,
		MaxHeaderBytes:    s.cfg.MaxHeaderBytes,
		BaseContext:       func(net.Listener) context.Context { return s.baseCtx },
		ErrorLog:          slog.NewLogLogger(s.log.Handler(), slog.LevelDebug),
	}
	s.served = make(chan struct{})
	srv, served := s.http, s.served
	go func() {
		defer close(served)
		if err := srv.Serve(serveLn); err != nil && !errors.Is(err, http.ErrServerClosed) {
			s.log.Error("admin listener stopped", "err", err)
		}
	}()
	s.log.Info("admin listener", "url", s.URL(), "open_metrics", s.cfg.OpenMetrics)
	return nil
}

// Addr is the bound address once Start has returned, else nil.
func (s *Server) Addr() net.Addr {
	a, _ := s.addr.Load().(net.Addr)
	return a
}

// URL is the listener's base URL once Start has returned ("http://127.0.0.1:7071"). An
// unspecified bound address (0.0.0.0, ::) is written as the loopback address of its family.
func (s *Server) URL() string {
	a, ok := s.Addr().(*net.TCPAddr)
	if !ok {
		return ""
	}
	ip := a.IP
	switch {
	case ip.IsUnspecified() && ip.To4() != nil:
		ip = net.IPv4(127, 0, 0, 1)
	case ip.IsUnspecified():
		ip = net.IPv6loopback
	}
	scheme := "http"
	if s.cfg.TLS != nil {
		scheme = "https"
	}
	return scheme + "://" + net.JoinHostPort(ip.String(), fmt.Sprint(a.Port))
}

// Shutdown stops accepting, lets requests in flight finish within ctx (and at most
// DefaultShutdownTimeout), then cancels the rest and waits for them; it removes the address file.
// Idempotent; safe before Start.
func (s *Server) Shutdown(ctx context.Context) error {
	s.mu.Lock()
	if s.shut {
		s.mu.Unlock()
		return nil
	}
	s.shut = true
	srv, served := s.http, s.served
	s.mu.Unlock()
	if srv == nil {
		s.baseCancel()
		return nil
	}
	sctx, cancel := context.WithTimeout(ctx, DefaultShutdownTimeout)
	defer cancel()
	err := srv.Shutdown(sctx)
	s.baseCancel() // long requests (profiles, bulk registration) see their context end
	if err != nil {
		_ = srv.Close()
	}
	<-served
	// Handlers whose connections Close cut have been told to stop by baseCancel; wait for them
	// with a bound, since they use storage that closes next.
	s.reqMu.Lock()
	s.draining = true
	var idle chan struct{}
	if s.reqs > 0 {
		idle = make(chan struct{})
		s.idle = idle
	}
	s.reqMu.Unlock()
	if idle != nil {
		wait := time.NewTimer(DefaultShutdownTimeout)
		defer wait.Stop()
		select {
		case <-idle:
		case <-wait.C:
			s.log.Warn("admin listener: requests still running after shutdown")
		}
	}
	s.removeAddrFile()
	if err != nil && !errors.Is(err, context.DeadlineExceeded) && !errors.Is(err, context.Canceled) {
		return fmt.Errorf("admin listener shutdown: %w", err)
	}
	return nil
}
