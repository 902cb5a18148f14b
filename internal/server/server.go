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
	stdtls "crypto/tls"
	"encoding/hex"
	"errors"
	"fmt"
	"io"
	"log/slog"
	"net"
	"net/http"
	"os"
	"path/filepath"
	"strconv"
	"strings"
	"sync"
	"sync/atomic"
	"syscall"
	"time"

	"github.com/prometheus/client_golang/prometheus"
	"github.com/prometheus/client_golang/prometheus/collectors"

	"github.com/petrelchat/petrel/internal/admin"
	"github.com/petrelchat/petrel/internal/bus"
	"github.com/petrelchat/petrel/internal/directory"
	"github.com/petrelchat/petrel/internal/gateway"
	"github.com/petrelchat/petrel/internal/groups"
	"github.com/petrelchat/petrel/internal/mailbox"
	"github.com/petrelchat/petrel/internal/messaging"
	"github.com/petrelchat/petrel/internal/nodes"
	"github.com/petrelchat/petrel/internal/presence"
	"github.com/petrelchat/petrel/internal/status"
	pb "github.com/petrelchat/petrel/proto/petrel/v1"
)

// fdHeadroom is how many file descriptors are kept for the store, listeners and admin work.
const fdHeadroom = 512

// AdminTokenFile is the operator credential, created in the data directory at first start unless
// the config's admin.token_file names another file.
const AdminTokenFile = "admin.token"

// Server is one Petrel node.
type Server struct {
	cfg Config
	log *slog.Logger

	reg    *prometheus.Registry
	bus    *bus.Bus
	dir    *directory.Directory
	groups *groups.Service
	mb     *mailbox.Mailbox
	gw     *gateway.Gateway
	engine *gateway.Engine
	nodes  *nodes.Registry // the other nodes' public URLs, for Welcome
	admin  *admin.Server   // nil when admin_listen is "off"
	addr   atomic.Value    // net.Addr
	token  string
	quorum *quorumWatch // cached JetStream quorum state (quorum.go)

	nodeMetrics *nodeMetrics // build info, bus health, inbox depth (metrics.go)

	pres *presence.Service // who is online, last seen, settings (memory and bus)
	acme *acmeTLS          // automatic certificates; nil without tls.acme_domain (acme.go)

	// probeSink takes the self-prober's results (selfprobe.go): the status aggregates once
	// they run (startStatus), plus Config.ProbeSink when set.
	probeSink status.ProbeSink
	selfProbe *selfProbe  // nil when probe_interval is 0
	trim      *memoryTrim // nil when limits.memory_trim_quiet is negative

	status *status.Service // the status page, problem reports, probe intake, incidents

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
	for _, w := range cfg.Warnings {
		log.Warn(w)
	}
	runCtx, runCancel := context.WithCancel(context.Background())
	var sink status.ProbeSink = noProbeSink{}
	if cfg.ProbeSink != nil {
		sink = teeSink{sink, cfg.ProbeSink}
	}
	return &Server{cfg: cfg, log: log, ready: make(chan struct{}), done: make(chan struct{}), runCtx: runCtx, runCancel: runCancel,
		probeSink: sink}, nil
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
	if s.cfg.servesTLS() {
		scheme = "https"
	}
	return scheme + "://" + s.Addr().String()
}

// AdminAddr is the admin listener's address once Ready is closed; nil when admin_listen is "off".
func (s *Server) AdminAddr() net.Addr {
	if s.admin == nil {
		return nil
	}
	return s.admin.Addr()
}

// AdminURL is the admin listener's base URL once Ready is closed (the content of
// <data>/admin.addr); "" when admin_listen is "off".
func (s *Server) AdminURL() string {
	if s.admin == nil {
		return ""
	}
	return s.admin.URL()
}

// Ready is closed when the server serves.
func (s *Server) Ready() <-chan struct{} { return s.ready }

// Run starts the server and blocks until ctx ends, then shuts down gracefully.
func (s *Server) Run(ctx context.Context) error {
	if err := s.start(ctx); err != nil {
		// Undo what start got to: the admin listener (and its admin.addr), the gateway's
		// goroutines, storage.
		_ = s.stopAdmin(context.Background())
		s.stopACME(context.Background())
		if s.gw != nil {
			s.gw.Close()
		}
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
	if s.cfg.Node == "" {
		node, err := defaultNodeName(s.cfg.Data)
		if err != nil {
			return err
		}
		s.cfg.Node = node
	}
	s.log.Info("node", "name", s.cfg.Node)
	var token string
	var err error
	if s.cfg.AdminTokenFile != "" {
		token, err = readTokenFile(s.cfg.AdminTokenFile)
		if err != nil {
			err = fmt.Errorf("admin.token_file: %w", err)
		}
	} else {
		token, err = loadOrCreateToken(filepath.Join(s.cfg.Data, AdminTokenFile))
	}
	if err != nil {
		return err
	}
	s.token = token
	applyMemoryLimit(s.cfg.MemoryLimit, s.log)
	maxConns := s.cfg.MaxConns
	var lim syscall.Rlimit
	if err := syscall.Getrlimit(syscall.RLIMIT_NOFILE, &lim); err == nil {
		// Sockets that have not upgraded have slots of their own (max_pending_upgrades).
		auto := int(lim.Cur) - fdHeadroom - s.cfg.MaxPendingUpgrades
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

	var clusterSecret string
	var clusterAccepted []string
	if s.cfg.ClusterTokenFile != "" {
		if clusterSecret, clusterAccepted, err = readClusterSecrets(s.cfg.ClusterTokenFile); err != nil {
			return fmt.Errorf("cluster_token_file: %w", err)
		}
	}
	var clusterTLS *stdtls.Config
	if s.cfg.ClusterTLSCert != "" || s.cfg.ClusterTLSKey != "" || s.cfg.ClusterTLSCA != "" {
		if clusterTLS, err = bus.RouteTLS(s.cfg.ClusterTLSCert, s.cfg.ClusterTLSKey, s.cfg.ClusterTLSCA); err != nil {
			return fmt.Errorf("cluster_tls_cert, cluster_tls_key, cluster_tls_ca: %w", err)
		}
	}
	if s.cfg.ClusterListen != "" {
		s.log.Info("cluster routes", "listen", s.cfg.ClusterListen, "authenticated", clusterSecret != "", "tls", clusterTLS != nil)
	}

	s.reg = prometheus.NewRegistry()
	s.reg.MustRegister(collectors.NewGoCollector(), collectors.NewProcessCollector(collectors.ProcessCollectorOpts{}))
	s.bus, err = bus.Open(ctx, bus.Config{
		DataDir:                s.cfg.Data,
		URLs:                   s.cfg.NATS,
		InboxShards:            s.cfg.InboxShards,
		InboxMaxAge:            s.cfg.InboxTTL.Duration,
		InboxMaxPerDevice:      s.cfg.InboxMaxPerDevice,
		InboxStreamMaxBytes:    s.cfg.InboxStreamMaxBytes,
		StoreMaxBytes:          s.cfg.StoreMaxBytes,
		Replicas:               s.cfg.Replicas,
		ClusterListen:          s.cfg.ClusterListen,
		ClusterPeers:           s.cfg.Peers,
		ClusterAdvertise:       s.cfg.ClusterAdvertise,
		ClusterName:            s.cfg.ClusterName,
		ClusterSecret:          clusterSecret,
		ClusterSecretsAccepted: clusterAccepted,
		ClusterTLS:             clusterTLS,
		Name:                   s.cfg.Node,
		Logger:                 s.log.With("component", "bus"),
		Registry:               s.reg,
	})
	if err != nil {
		return err
	}
	s.quorum = newQuorumWatch(s.reg)
	s.nodeMetrics = registerNodeMetrics(s.reg, s.bus, s.cfg.Version)
	s.dir = directory.New(s.bus, directory.Config{
		Policy:           s.cfg.Registration,
		ReplenishBelow:   s.cfg.PrekeyReplenishBelow,
		AccountCacheSize: s.cfg.AccountCacheSize,
		DeviceCacheSize:  s.cfg.DeviceCacheSize,
		BundleCacheTTL:   s.cfg.BundleCacheTTL.Duration,
		BundleCacheSize:  s.cfg.BundleCacheSize,

		ClaimRequesterBurst:     s.cfg.PrekeyClaimRequesterBurst,
		ClaimRequesterPerMinute: s.cfg.PrekeyClaimRequesterPerMinute,
		ClaimPairBurst:          s.cfg.PrekeyClaimPairBurst,
		ClaimPairPerMinute:      s.cfg.PrekeyClaimPairPerMinute,
		ClaimTargetBurst:        s.cfg.PrekeyClaimTargetBurst,
		ClaimTargetPerMinute:    s.cfg.PrekeyClaimTargetPerMinute,
		ClaimLimiterKeys:        s.cfg.PrekeyClaimLimiterKeys,

		MaxDevices: s.cfg.MaxDevices,
		LinkTTL:    s.cfg.LinkTTL.Duration,

		Logger:   s.log.With("component", "directory"),
		Registry: s.reg,
	})
	if err := s.dir.Start(s.runCtx); err != nil {
		return fmt.Errorf("directory: %w", err)
	}
	s.mb = mailbox.New(s.bus, mailbox.Config{
		LiveAckTimeout:    s.cfg.LiveAckTimeout.Duration,
		Window:            s.cfg.DeliveryWindow,
		MaxBytesPerDevice: s.cfg.InboxMaxBytesPerDevice,
		MaxPerSender:      s.cfg.InboxMaxPerSender,
		MaxBytesPerSender: s.cfg.InboxMaxBytesPerSender,
		QueryRate:         s.cfg.QueryQueuedPerSecond,
		QueryBurst:        s.cfg.QueryQueuedBurst,
		Quorum:            s.quorum.ok.Load,
		Logger:            s.log.With("component", "mailbox"),
		Registry:          s.reg,
	})
	if err := s.mb.StartContext(s.runCtx); err != nil {
		return err
	}
	s.nodes = nodes.New(s.bus.Conn(), nodes.Config{Subject: bus.NodesSubject, Node: s.cfg.Node,
		Logger: s.log.With("component", "nodes")})
	s.groups = groups.New(s.bus, s.dir, groups.Config{
		MaxMembers: s.cfg.MaxGroupMembers,
		Logger:     s.log.With("component", "groups"),
		Registry:   s.reg,
	})
	if err := s.groups.Start(s.runCtx); err != nil {
		return fmt.Errorf("groups: %w", err)
	}
	s.pres = presence.New(s.bus.Conn(), s.bus.Settings, s.dir, presence.Config{Node: s.cfg.Node,
		HeartbeatInterval: s.cfg.PresenceHeartbeat.Duration, MaxLastSeen: s.cfg.PresenceMaxLastSeen,
		Logger: s.log.With("component", "presence"), Registry: s.reg})
	if err := s.pres.Start(); err != nil {
		return err
	}
	s.startStatus()
	msg := messaging.New(s.dir, messaging.WithGroups(s.groups, func(err error) bool { return errors.Is(err, groups.ErrUnknownGroup) }))
	s.gw = gateway.New(s.dir, s.mb, msg, s.withAdmission(gateway.Config{
		MaxFrameBytes:          s.cfg.MaxFrameBytes,
		MaxConns:               maxConns,
		HandshakeTimeout:       s.cfg.HandshakeTimeout.Duration,
		IdleTimeout:            s.cfg.IdleTimeout.Duration,
		FramesPerSecond:        s.cfg.ConnFramesPerSecond,
		FrameBurst:             s.cfg.ConnFrameBurst,
		RegistrationsPerSecond: s.cfg.RegistrationsPerSecond,
		Registration: gateway.RegistrationLimits{
			PerIPPerMinute:       s.cfg.RegistrationsPerIPPerMinute,
			PerIPBurst:           s.cfg.RegistrationIPBurst,
			LimitLoopback:        s.cfg.RegistrationIPLimitLoopback,
			MaxHandshakeFailures: s.cfg.HandshakeMaxFailures,
		},
		MaxPendingLinks: s.cfg.MaxPendingLinks,
		MaxDevices:      s.cfg.MaxDevices,
		Groups:          s.groups,
		Bus:             s.bus.Conn(),
		DrainRate:       s.cfg.DrainRate,
		Node:            s.cfg.Node,
		Nodes:           s.nodeURLs,
		Presence:        s.pres,
		Logger:          s.log.With("component", "gateway"),
		Registry:        s.reg,
		SendObserver:    s.status,
	}))
	if err := s.gw.Start(); err != nil {
		return fmt.Errorf("gateway: %w", err)
	}

	mux := http.NewServeMux()
	mux.Handle("GET "+pb.ConnectPath, s.gw)
	mux.HandleFunc("GET /healthz", s.healthz)
	mux.HandleFunc("GET /readyz", s.readyz)
	s.status.Register(mux) // /status, /status.json, /v1/reports, /v1/probes
	// Operator surfaces (/metrics, pprof, /v1/admin/*) are on the admin listener only.

	var tlsOpts *gateway.TLS
	if s.cfg.servesTLS() {
		var tlsCfg *stdtls.Config
		if len(s.cfg.ACMEDomain) > 0 {
			s.acme = newACME(s.cfg, s.log.With("component", "acme"))
			tlsCfg = s.acme.serverTLS()
		} else if tlsCfg, err = gateway.LoadTLS(s.cfg.TLSCert, s.cfg.TLSKey); err != nil {
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
	if err := s.startAdmin(); err != nil {
		return err
	}
	// The bound address is recorded so that port 0 works.
	s.engine, err = gateway.NewEngine("petrel", s.cfg.Listen, tlsOpts, maxConns, mux, func(a net.Addr) { s.addr.Store(a) })
	if err != nil {
		return err
	}
	s.gw.Protect(s.engine.Engine)
	if err := s.engine.Start(); err != nil {
		s.engine = nil
		return fmt.Errorf("listen on %s: %w", s.cfg.Listen, err)
	}
	if s.acme != nil {
		if err := s.acme.start(s.cfg.ACMEHTTPListen); err != nil {
			return err
		}
	}
	// Announced once the listener is bound: the default public URL needs the bound port.
	if err := s.nodes.Start(s.publicURL()); err != nil {
		return fmt.Errorf("node announcements: %w", err)
	}
	s.startQuorumWatch()
	if err := s.startSelfProbe(); err != nil {
		return fmt.Errorf("self-prober: %w", err)
	}
	s.trim = startMemoryTrim(s.cfg.MemoryTrimQuiet.Duration, s.cfg.MemoryQuietGCPercent, s.reg, s.log.With("component", "memory"))
	return nil
}

// publicURL is public_url, or the URL of the bound listener when that address can be reached
// from elsewhere (not 0.0.0.0 or ::); "" means the node is not announced.
func (s *Server) publicURL() string {
	if s.cfg.PublicURL != "" {
		return s.cfg.PublicURL
	}
	if len(s.cfg.ACMEDomain) > 0 {
		// Clients verify the certificate against the name, not the address.
		u := "https://" + s.cfg.ACMEDomain[0]
		if a, ok := s.Addr().(*net.TCPAddr); ok && a.Port != 443 {
			u += ":" + strconv.Itoa(a.Port)
		}
		return u
	}
	if a, ok := s.Addr().(*net.TCPAddr); ok && a.IP.IsUnspecified() {
		s.log.Warn("public_url not set and listen address unspecified: clients are not told this node's URL", "listen", s.cfg.Listen)
		return ""
	}
	return s.URL()
}

// Nodes returns the public URLs this node tells clients in Welcome: its own first, then those of
// the nodes it heard from recently.
func (s *Server) Nodes() []string { return s.nodeURLs() }

// nodeURLs is the gateway's source for Welcome.nodes.
func (s *Server) nodeURLs() []string {
	if s.nodes == nil {
		return nil
	}
	return s.nodes.URLs()
}

// startAdmin starts the admin listener (metrics, pprof, invites, bulk registration) and writes
// its address to <data>/admin.addr. It serves TLS only off loopback, with the public listener's
// certificate; on loopback /metrics needs no token.
func (s *Server) startAdmin() error {
	if s.cfg.AdminListen == AdminListenOff {
		s.log.Info("admin listener off")
		return nil
	}
	loopback := isLoopback(s.cfg.AdminListen)
	var tlsCfg *stdtls.Config
	if !loopback && s.cfg.servesTLS() {
		var certs []stdtls.Certificate
		if s.acme == nil {
			cert, err := stdtls.LoadX509KeyPair(s.cfg.TLSCert, s.cfg.TLSKey)
			if err != nil {
				return fmt.Errorf("admin listener: load TLS certificate: %w", err)
			}
			certs = []stdtls.Certificate{cert}
		}
		tlsCfg = &stdtls.Config{
			Certificates: certs,
			MinVersion:   stdtls.VersionTLS12,
			// TLS 1.2: ECDHE with AEAD only (TLS 1.3's suites are fixed; its key exchange includes
			// X25519MLKEM768 by default).
			CipherSuites: []uint16{
				stdtls.TLS_ECDHE_ECDSA_WITH_AES_128_GCM_SHA256, stdtls.TLS_ECDHE_RSA_WITH_AES_128_GCM_SHA256,
				stdtls.TLS_ECDHE_ECDSA_WITH_AES_256_GCM_SHA384, stdtls.TLS_ECDHE_RSA_WITH_AES_256_GCM_SHA384,
				stdtls.TLS_ECDHE_ECDSA_WITH_CHACHA20_POLY1305_SHA256, stdtls.TLS_ECDHE_RSA_WITH_CHACHA20_POLY1305_SHA256,
			},
		}
		if s.acme != nil {
			tlsCfg.GetCertificate = s.acme.m.GetCertificate
		}
	}
	if !loopback && tlsCfg == nil {
		s.log.Warn("admin listener serves plain HTTP on a non-loopback address (--insecure): the operator token crosses the network in clear", "admin_listen", s.cfg.AdminListen)
	}
	a, err := admin.New(admin.Config{
		Listen:      s.cfg.AdminListen,
		Token:       s.token,
		TLS:         tlsCfg,
		OpenMetrics: loopback,
		Gatherer:    s.reg,
		Registerer:  s.reg,
		AddrFile:    filepath.Join(s.cfg.Data, admin.AddrFile),
		Logger:      s.log.With("component", "admin"),
		Operator:    s.status.AdminHandlers(),
	}, s.dir)
	if err != nil {
		return err
	}
	if err := a.Start(); err != nil {
		return err
	}
	s.admin = a
	return nil
}

// Shutdown drains the node: readiness goes false, clients are told to reconnect with jitter,
// in-flight sends finish (or are not acked) within ctx, then connections and storage close.
// Idempotent.
func (s *Server) Shutdown(ctx context.Context) error {
	s.shutOnce.Do(func() {
		defer close(s.done)
		var errs []error
		s.selfProbe.stop() // its probe clients would only see the drain
		s.trim.close()
		if s.nodes != nil {
			// First, so the nodes that stay stop telling clients to come here.
			s.nodes.Close(true)
		}
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
		if err := s.stopAdmin(ctx); err != nil {
			errs = append(errs, err)
		}
		s.stopACME(ctx)
		s.closeStorage()
		s.shutErr = errors.Join(errs...)
		s.log.Info("stopped")
	})
	return s.shutErr
}

// Kill stops the node at once, as near to a crash as a process can stop a part of itself: no
// drain (clients get no GoAway, in-flight sends get no answer), the client sockets are closed,
// then the bus is closed (the embedded NATS server shuts down; nats-server still steps its Raft
// leaders down on the way, which a real crash would not). Run returns nil afterwards. Idempotent,
// and a later Shutdown does nothing.
func (s *Server) Kill() {
	s.shutOnce.Do(func() {
		defer close(s.done)
		s.selfProbe.stop()
		s.trim.close()
		// No goodbye: the others forget this node when its announcements stop.
		if s.nodes != nil {
			s.nodes.Close(false)
		}
		if s.engine != nil {
			s.engine.Stop()
		}
		if s.gw != nil {
			s.gw.Close()
		}
		if s.quorum != nil {
			s.quorum.stop() // it reads the bus
		}
		if s.bus != nil {
			s.bus.Close()
		}
		ctx, cancel := context.WithTimeout(context.Background(), time.Second)
		defer cancel()
		_ = s.stopAdmin(ctx)
		s.stopACME(ctx)
		s.closeStorage()
		s.log.Info("killed")
	})
}

// stopAdmin shuts the admin listener down (it stays up through the drain, for metrics). Idempotent.
func (s *Server) stopAdmin(ctx context.Context) error {
	if s.admin == nil {
		return nil
	}
	return s.admin.Shutdown(ctx)
}

// stopACME stops the ACME HTTP-01 listener and the first-certificate loop (acme.go), waiting
// within ctx. Idempotent.
func (s *Server) stopACME(ctx context.Context) {
	if s.acme == nil {
		return
	}
	if err := s.acme.shutdown(ctx); err != nil {
		s.log.Warn("ACME shutdown", "err", err)
	}
}

func (s *Server) closeStorage() {
	s.runCancel()
	if s.pres != nil {
		// Its goodbye goes out while the bus is open (Shutdown); after Kill it does not.
		s.pres.Close()
	}
	if s.status != nil {
		s.status.Close()
	}
	if s.quorum != nil {
		s.quorum.stop()
	}
	if s.dir != nil {
		s.dir.Wait()
	}
	if s.groups != nil {
		s.groups.Wait()
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

// readyz answers 503, with the reason in the body, while the node drains, its storage is down, it
// has no JetStream quorum (the cached state of the quorum watch, quorum.go), or it has not yet
// caught up with its cluster since it started (catchup.go).
func (s *Server) readyz(w http.ResponseWriter, _ *http.Request) {
	reason := ""
	switch {
	case s.gw == nil || !s.gw.Ready():
		reason = "draining"
	case !s.mb.Healthy():
		reason = "storage unavailable"
	default:
		if ok, why := s.quorum.state(); !ok {
			reason = why
		} else if ok, why := s.quorum.caughtUp(); !ok {
			reason = why
		}
	}
	if reason != "" {
		http.Error(w, "not ready: "+reason, http.StatusServiceUnavailable)
		return
	}
	fmt.Fprintln(w, "ready")
}

// withAdmission adds the admission-control limits of the config to the gateway's config.
func (s *Server) withAdmission(g gateway.Config) gateway.Config {
	g.QueuedFrames, g.QueuedBytes = s.cfg.ConnQueuedFrames, s.cfg.ConnQueuedBytes
	g.PreauthQueuedFrames, g.PreauthQueuedBytes = s.cfg.PreauthQueuedFrames, s.cfg.PreauthQueuedBytes
	g.InboundBytes = s.cfg.InboundBytes
	g.MaxPendingUpgrades, g.MaxPendingUpgradesPerIP = s.cfg.MaxPendingUpgrades, s.cfg.MaxPendingUpgradesPerIP
	g.MaxHeaderBytes, g.MaxBodyBytes = s.cfg.HTTPMaxHeaderBytes, s.cfg.HTTPMaxBodyBytes
	return g
}

// minTokenLen is the shortest operator token accepted (a generated one has 64 hex digits).
const minTokenLen = 32

// readTokenFile reads an operator token the operator provides (admin.token_file); it never creates
// one.
func readTokenFile(path string) (string, error) {
	return readSecretFile(path, "operator token", fmt.Sprintf("give every node the same token file, e.g. one node's <data>/%s", AdminTokenFile))
}

// maxClusterSecrets bounds the lines of cluster_token_file: the secret presented and those
// accepted besides it during a rotation.
const maxClusterSecrets = 4

// readClusterSecrets reads the cluster routes' secrets (cluster_token_file): one per line, the
// first presented on the routes this node dials and accepted, the others only accepted (the
// previous secret while the cluster rotates it; README: Rotating the cluster secret).
func readClusterSecrets(path string) (present string, accepted []string, err error) {
	lines, err := readSecretLines(path, "cluster secret", "create it once (openssl rand -hex 32 > cluster.token; chmod 600 cluster.token) and give every node a copy", maxClusterSecrets)
	if err != nil {
		return "", nil, err
	}
	return lines[0], lines[1:], nil
}

// readSecretFile reads a secret of at least minTokenLen characters, without white space, from a
// file the operator provides. Its errors never quote the file's content.
func readSecretFile(path, what, missingHint string) (string, error) {
	lines, err := readSecretLines(path, what, missingHint, 1)
	if err != nil {
		return "", err
	}
	return lines[0], nil
}

// readSecretLines reads 1 to max secrets, one per line (blank lines ignored), each of at least
// minTokenLen characters without white space. Its errors never quote the file's content.
func readSecretLines(path, what, missingHint string, max int) ([]string, error) {
	f, err := os.Open(path)
	if errors.Is(err, os.ErrNotExist) {
		return nil, fmt.Errorf("%s does not exist (%s)", path, missingHint)
	}
	if err != nil {
		return nil, fmt.Errorf("read %s: %w", what, err)
	}
	defer f.Close()
	if fi, err := f.Stat(); err == nil && !fi.Mode().IsRegular() {
		return nil, fmt.Errorf("%s is not a regular file", path)
	}
	b, err := io.ReadAll(io.LimitReader(f, 4096))
	if err != nil {
		return nil, fmt.Errorf("read %s %s: %w", what, path, err)
	}
	var lines []string
	for l := range strings.Lines(string(b)) {
		if l = strings.TrimSpace(l); l != "" {
			lines = append(lines, l)
		}
	}
	switch {
	case len(lines) == 0:
		return nil, fmt.Errorf("%s is empty: it must hold the %s", path, what)
	case len(lines) > max && max == 1:
		return nil, fmt.Errorf("%s does not hold one %s of at least %d characters (e.g. 64 hex digits: openssl rand -hex 32)", path, what, minTokenLen)
	case len(lines) > max:
		return nil, fmt.Errorf("%s holds %d lines: at most %d (the %s this node presents first, then the ones it also accepts)", path, len(lines), max, what)
	}
	for i, l := range lines {
		if len(l) < minTokenLen || strings.ContainsAny(l, " \t") {
			if len(lines) == 1 {
				return nil, fmt.Errorf("%s does not hold one %s of at least %d characters (e.g. 64 hex digits: openssl rand -hex 32)", path, what, minTokenLen)
			}
			return nil, fmt.Errorf("%s line %d is not a %s of at least %d characters without spaces (e.g. 64 hex digits: openssl rand -hex 32)", path, i+1, what, minTokenLen)
		}
	}
	return lines, nil
}

func loadOrCreateToken(path string) (string, error) {
	b, err := os.ReadFile(path)
	if err == nil {
		t := strings.TrimSpace(string(b))
		if len(t) >= minTokenLen {
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

// Metrics is the node's metric registry (what the admin listener's /metrics serves). It stays
// readable after Shutdown, when the admin listener is gone.
func (s *Server) Metrics() prometheus.Gatherer { return s.reg }

// Bus exposes the node's bus to tests in other packages (failure injection).
func (s *Server) Bus() *bus.Bus { return s.bus }

// Presence exposes the node's presence service to tests in other packages (what it knows).
func (s *Server) Presence() *presence.Service { return s.pres }

// Mailbox exposes the node's mailbox to tests in other packages (where devices are attached).
func (s *Server) Mailbox() *mailbox.Mailbox { return s.mb }
