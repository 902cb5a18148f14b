// Copyright 2026 The Petrel Authors
// SPDX-License-Identifier: Apache-2.0

// Package bus connects Petrel to NATS JetStream, embedded in-process (the default: one binary,
// state under the data directory) or external (a NATS cluster), through one code path. It owns the
// definitions of every stream and key-value bucket, applied as migrations at start, and the subject
// names that services use. Services own the meaning of what they store.
package bus

import (
	"context"
	"errors"
	"fmt"
	"log/slog"
	"os"
	"path/filepath"
	"testing"
	"time"

	"github.com/nats-io/nats-server/v2/server"
	"github.com/nats-io/nats.go"
	"github.com/nats-io/nats.go/jetstream"
	"github.com/prometheus/client_golang/prometheus"
)

// Config selects and tunes the bus.
type Config struct {
	// DataDir is where the embedded server keeps JetStream state (DataDir/jetstream). Required when
	// URLs is empty.
	DataDir string
	// URLs are external NATS servers; empty means start an embedded server. Default: empty.
	// They may carry credentials (nats://user:pass@host, nats://token@host): print them only
	// through RedactURL.
	URLs []string
	// Replicas is the replication factor of every stream and bucket. Default: 1 (embedded) or 3 (external).
	Replicas int
	// InboxShards is the number of INBOX streams device inboxes are spread over. Default: 16.
	// Changing it on an existing deployment is refused (devices would lose their inboxes).
	InboxShards int
	// InboxMaxAge is how long an undelivered envelope is kept. Default: 720h (30 days).
	InboxMaxAge time.Duration
	// InboxMaxPerDevice caps one device's stored envelopes; further appends are refused (never
	// silently dropped). Default: 100,000.
	InboxMaxPerDevice int64
	// InboxStreamMaxBytes caps each inbox stream (shard) in bytes; appends beyond it are refused
	// (discard new), never silently dropped. 0 means no cap of its own (the store's limit applies).
	// Default: 0.
	InboxStreamMaxBytes int64
	// StoreMaxBytes caps the embedded server's JetStream file store (every stream and bucket),
	// in bytes; writes beyond it are refused. 0 leaves nats-server's own default (a share of the
	// disk's free space at start). Ignored with external NATS (configure the servers). Default: 0.
	StoreMaxBytes int64
	// DuplicateWindow is JetStream's message-id dedupe window for inbox appends. Default: 10m.
	DuplicateWindow time.Duration
	// Name is this node's name, used as the NATS connection name. Default: "petrel".
	Name string
	// Logger receives bus events. Default: slog.Default().
	Logger *slog.Logger
	// Registry receives the bus's metrics (slow consumers); nil registers none.
	Registry prometheus.Registerer
}

func (c *Config) setDefaults() {
	if c.Replicas == 0 {
		c.Replicas = 1
		if len(c.URLs) > 0 {
			c.Replicas = 3
		}
	}
	if c.InboxShards == 0 {
		c.InboxShards = 16
	}
	if c.InboxMaxAge == 0 {
		c.InboxMaxAge = 30 * 24 * time.Hour
	}
	if c.InboxMaxPerDevice == 0 {
		c.InboxMaxPerDevice = 100_000
	}
	if c.DuplicateWindow == 0 {
		c.DuplicateWindow = 10 * time.Minute
	}
	if c.DuplicateWindow > c.InboxMaxAge {
		c.DuplicateWindow = c.InboxMaxAge // JetStream refuses a window longer than the max age
	}
	if c.Name == "" {
		c.Name = "petrel"
	}
	if c.Logger == nil {
		c.Logger = slog.Default()
	}
}

// Bus is a live connection to JetStream plus the embedded server, if any.
type Bus struct {
	cfg Config
	srv *server.Server // nil when external
	nc  *nats.Conn
	js  jetstream.JetStream
	// async counts and logs the connection's asynchronous errors (slow consumers) and tells the
	// OnSlowConsumer listeners.
	async *asyncErrors

	// Buckets and streams, opened by migrate.
	Accounts jetstream.KeyValue // account name → account record
	Devices  jetstream.KeyValue // device id → device record
	Invites  jetstream.KeyValue // invite code → invite record
	PreKeys  jetstream.Stream   // one-time prekeys: prekeys.otk.<device>, prekeys.kem.<device>
	inboxes  []jetstream.Stream
}

// Open starts the embedded server (or dials the external one), connects, and applies migrations.
func Open(ctx context.Context, cfg Config) (*Bus, error) {
	cfg.setDefaults()
	b := &Bus{cfg: cfg, async: newAsyncErrors(cfg.Logger, cfg.Registry)}
	if err := b.connect(); err != nil {
		b.Close()
		return nil, err
	}
	if err := b.migrate(ctx); err != nil {
		b.Close()
		return nil, fmt.Errorf("bus migrations: %w", err)
	}
	return b, nil
}

func (b *Bus) connect() error {
	opts := []nats.Option{
		nats.Name(b.cfg.Name),
		nats.MaxReconnects(-1),
		nats.ReconnectBufSize(16 << 20),
		nats.DisconnectErrHandler(func(_ *nats.Conn, err error) {
			if err != nil {
				b.cfg.Logger.Warn("nats disconnected", "err", err)
			}
		}),
		nats.ReconnectHandler(func(_ *nats.Conn) { b.cfg.Logger.Info("nats reconnected") }),
		// Without it nats.go drops messages for a full subscription silently.
		nats.ErrorHandler(b.async.handle),
	}
	if len(b.cfg.URLs) > 0 {
		url := b.cfg.URLs[0]
		for _, u := range b.cfg.URLs[1:] {
			url += "," + u
		}
		nc, err := nats.Connect(url, opts...)
		if err != nil {
			// Neither the URLs nor the client's error (a URL parse error quotes the URL) may
			// print credentials.
			msg := fmt.Sprintf("connect to nats %v: %s", RedactURLs(b.cfg.URLs), redactSecrets(err.Error(), b.cfg.URLs))
			return &credentialError{msg: msg, err: err}
		}
		b.nc = nc
	} else {
		if b.cfg.DataDir == "" {
			return errors.New("bus: DataDir is required for the embedded server")
		}
		storeDir := filepath.Join(b.cfg.DataDir, "jetstream")
		if err := os.MkdirAll(storeDir, 0o700); err != nil {
			return fmt.Errorf("create %s: %w", storeDir, err)
		}
		sopts := &server.Options{
			ServerName:         b.cfg.Name,
			DontListen:         true,
			JetStream:          true,
			StoreDir:           storeDir,
			SyncAlways:         true, // sync_interval: always — an ack means fsync'd (DESIGN.md)
			NoSigs:             true,
			NoLog:              true,
			MaxPayload:         8 << 20,
			JetStreamMaxMemory: 256 << 20,
			JetStreamMaxStore:  b.cfg.StoreMaxBytes,
		}
		srv, err := server.NewServer(sopts)
		if err != nil {
			return fmt.Errorf("embedded nats: %w", err)
		}
		b.srv = srv
		srv.Start()
		if !srv.ReadyForConnections(30 * time.Second) {
			return errors.New("embedded nats did not become ready within 30s")
		}
		nc, err := nats.Connect("", append(opts, nats.InProcessServer(srv))...)
		if err != nil {
			return fmt.Errorf("connect to embedded nats: %w", err)
		}
		b.nc = nc
	}
	js, err := jetstream.New(b.nc)
	if err != nil {
		return fmt.Errorf("jetstream: %w", err)
	}
	b.js = js
	return nil
}

// Conn is the NATS connection (core subjects: live delivery, wake-ups).
func (b *Bus) Conn() *nats.Conn { return b.nc }

// DirectGetSubject is the subject of the direct-get API of stream. The bus's JetStream context
// uses the default API prefix, "$JS.API".
func DirectGetSubject(stream string) string { return "$JS.API.DIRECT.GET." + stream }

// JS is the JetStream context.
func (b *Bus) JS() jetstream.JetStream { return b.js }

// InboxShards is the number of inbox streams.
func (b *Bus) InboxShards() int { return b.cfg.InboxShards }

// InboxMaxPerDevice is the cap on one device's stored envelopes (the inbox streams' per-subject limit).
func (b *Bus) InboxMaxPerDevice() int64 { return b.cfg.InboxMaxPerDevice }

// StoreMaxBytes is the embedded store's configured byte limit (0: nats-server's default).
func (b *Bus) StoreMaxBytes() int64 { return b.cfg.StoreMaxBytes }

// InboxMaxAge is how long an undelivered envelope is kept.
func (b *Bus) InboxMaxAge() time.Duration { return b.cfg.InboxMaxAge }

// Inbox returns the stream that holds the given shard.
func (b *Bus) Inbox(shard int) jetstream.Stream { return b.inboxes[shard] }

// Healthy reports whether the bus can serve: connected and (embedded) JetStream enabled.
func (b *Bus) Healthy() bool {
	if b.nc == nil || !b.nc.IsConnected() {
		return false
	}
	if b.srv != nil && !b.srv.JetStreamEnabled() {
		return false
	}
	return true
}

// Close drains the connection and stops the embedded server. Safe to call more than once.
func (b *Bus) Close() {
	if b.nc != nil {
		b.nc.Close()
	}
	if b.srv != nil {
		b.srv.Shutdown()
		b.srv.WaitForShutdown()
		b.srv = nil
	}
}

// DisableJetStreamForTest switches JetStream off on the embedded server, so tests can prove that a
// storage outage yields retryable errors and no acks. It refuses to run outside tests.
func (b *Bus) DisableJetStreamForTest() error {
	if !testing.Testing() {
		return errors.New("DisableJetStreamForTest called outside a test")
	}
	if b.srv == nil {
		return errors.New("no embedded server")
	}
	return b.srv.DisableJetStream()
}
