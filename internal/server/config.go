// Copyright 2026 The Petrel Authors
// SPDX-License-Identifier: Apache-2.0

package server

import (
	"errors"
	"fmt"
	"net"
	"os"
	"strings"
	"time"

	"github.com/BurntSushi/toml"

	"github.com/petrelchat/petrel/internal/directory"
	"github.com/petrelchat/petrel/internal/gateway"
	"github.com/petrelchat/petrel/internal/mailbox"
	pb "github.com/petrelchat/petrel/proto/petrel/v1"
)

// Duration is a time.Duration written as "30s", "720h" in the config file.
type Duration struct{ time.Duration }

// UnmarshalText parses a Go duration string.
func (d *Duration) UnmarshalText(b []byte) error {
	v, err := time.ParseDuration(string(b))
	if err != nil {
		return err
	}
	d.Duration = v
	return nil
}

// MarshalText writes a Go duration string.
func (d Duration) MarshalText() ([]byte, error) { return []byte(d.String()), nil }

// Config is the whole server configuration: the config file (TOML) with flags applied on top.
// Every key is documented in README.md ("Configuration").
type Config struct {
	// Listen is the address of the HTTP/WebSocket listener. Default: 127.0.0.1:7070.
	Listen string `toml:"listen"`
	// Data is the directory for all server state (embedded NATS JetStream, admin token). Default: ./petrel-data.
	Data string `toml:"data"`
	// TLSCert and TLSKey are PEM files; when set the listener serves TLS. Default: none.
	TLSCert string `toml:"tls_cert"`
	TLSKey  string `toml:"tls_key"`
	// TLSMaxHandshakes is the most TLS handshakes computing at once; more wait for a slot. A
	// handshake waiting for its client holds none, and a connection costs no goroutine until its
	// ClientHello is in. The whole TLS handshake must end within handshake_timeout of accept.
	// Default: 32.
	TLSMaxHandshakes int `toml:"tls_max_handshakes"`
	// Insecure allows plain HTTP on a non-loopback address. Default: false.
	Insecure bool `toml:"insecure"`
	// Registration is "open", "invite" or "closed". Default: open on a loopback listen address, invite otherwise.
	Registration string `toml:"registration"`
	// MaxFrameBytes is the largest frame accepted. Default: 262144 (256 KiB).
	MaxFrameBytes int `toml:"max_frame_bytes"`
	// InboxTTL is how long undelivered envelopes are kept. Default: 720h (30 days).
	InboxTTL Duration `toml:"inbox_ttl"`
	// InboxShards is the number of inbox streams; fixed once the data directory exists. Default: 16.
	InboxShards int `toml:"inbox_shards"`
	// InboxMaxPerDevice caps one device's stored envelopes. Default: 100000.
	InboxMaxPerDevice int64 `toml:"inbox_max_per_device"`
	// DeliveryWindow is the most unacked envelopes pushed to one device. Default: 1024.
	DeliveryWindow int `toml:"delivery_window"`
	// LiveAckTimeout is how long a live delivery waits for the device's ack before it is stored. Default: 2s.
	LiveAckTimeout Duration `toml:"live_ack_timeout"`
	// HandshakeTimeout is how long a new connection has to authenticate. Default: 10s.
	HandshakeTimeout Duration `toml:"handshake_timeout"`
	// IdleTimeout closes a connection that sends no frame for this long (clients ping). Default: 120s.
	IdleTimeout Duration `toml:"idle_timeout"`
	// DrainTimeout bounds the graceful shutdown. Default: 20s.
	DrainTimeout Duration `toml:"drain_timeout"`
	// NATS lists external NATS server URLs; empty runs NATS embedded in-process. Default: empty.
	NATS []string `toml:"nats"`
	// MaxConns caps device connections; 0 derives it from RLIMIT_NOFILE minus headroom. Default: 0.
	MaxConns int `toml:"max_conns"`
	// PrekeyReplenishBelow tells clients to upload one-time prekeys under this count. Default: 20.
	PrekeyReplenishBelow uint32 `toml:"prekey_replenish_below"`
	// AccountCacheSize and DeviceCacheSize bound the in-memory caches of accounts (send path) and
	// device auth keys (connect path). Defaults: 100000 and 200000.
	AccountCacheSize int `toml:"account_cache_size"`
	DeviceCacheSize  int `toml:"device_cache_size"`
	// ConnFramesPerSecond and ConnFrameBurst rate-limit each connection. Defaults: 2000 and 4000.
	ConnFramesPerSecond float64 `toml:"conn_frames_per_second"`
	ConnFrameBurst      int     `toml:"conn_frame_burst"`
	// RegistrationsPerSecond rate-limits registrations on this node. Default: 20.
	RegistrationsPerSecond float64 `toml:"registrations_per_second"`
	// Node names this node in logs and metrics. Default: the host name.
	Node string `toml:"node"`
	// LogLevel is debug, info, warn or error. Default: info.
	LogLevel string `toml:"log_level"`
	// LogFormat is text or json. Default: text.
	LogFormat string `toml:"log_format"`
}

// LoadConfig reads a TOML config file; unknown keys are errors.
func LoadConfig(path string) (Config, error) {
	var c Config
	md, err := toml.DecodeFile(path, &c)
	if err != nil {
		return c, fmt.Errorf("config %s: %w", path, err)
	}
	if und := md.Undecoded(); len(und) > 0 {
		keys := make([]string, len(und))
		for i, k := range und {
			keys[i] = k.String()
		}
		return c, fmt.Errorf("config %s: unknown keys: %s", path, strings.Join(keys, ", "))
	}
	return c, nil
}

// SetDefaults fills unset fields.
func (c *Config) SetDefaults() {
	if c.Listen == "" {
		c.Listen = "127.0.0.1:7070"
	}
	if c.Data == "" {
		c.Data = "./petrel-data"
	}
	if c.Registration == "" {
		c.Registration = directory.PolicyInvite
		if isLoopback(c.Listen) {
			c.Registration = directory.PolicyOpen
		}
	}
	if c.MaxFrameBytes == 0 {
		c.MaxFrameBytes = pb.DefaultMaxFrameBytes
	}
	if c.InboxTTL.Duration == 0 {
		c.InboxTTL.Duration = 30 * 24 * time.Hour
	}
	if c.InboxShards == 0 {
		c.InboxShards = 16
	}
	if c.InboxMaxPerDevice == 0 {
		c.InboxMaxPerDevice = 100_000
	}
	if c.LiveAckTimeout.Duration == 0 {
		c.LiveAckTimeout.Duration = 2 * time.Second
	}
	if c.DrainTimeout.Duration == 0 {
		c.DrainTimeout.Duration = 20 * time.Second
	}
	if c.HandshakeTimeout.Duration == 0 {
		c.HandshakeTimeout.Duration = 10 * time.Second
	}
	if c.TLSMaxHandshakes == 0 {
		c.TLSMaxHandshakes = gateway.DefaultTLSMaxHandshakes
	}
	if c.IdleTimeout.Duration == 0 {
		c.IdleTimeout.Duration = 120 * time.Second
	}
	if c.PrekeyReplenishBelow == 0 {
		c.PrekeyReplenishBelow = 20
	}
	if c.DeliveryWindow == 0 {
		c.DeliveryWindow = mailbox.DefaultWindow
	}
	if c.AccountCacheSize == 0 {
		c.AccountCacheSize = directory.DefaultAccountCacheSize
	}
	if c.DeviceCacheSize == 0 {
		c.DeviceCacheSize = directory.DefaultDeviceCacheSize
	}
	if c.Node == "" {
		c.Node, _ = os.Hostname()
		if c.Node == "" {
			c.Node = "petrel"
		}
	}
	if c.LogLevel == "" {
		c.LogLevel = "info"
	}
	if c.LogFormat == "" {
		c.LogFormat = "text"
	}
}

// Validate reports every problem in c at once.
func (c *Config) Validate() error {
	var errs []error
	bad := func(format string, a ...any) { errs = append(errs, fmt.Errorf(format, a...)) }
	host, _, err := net.SplitHostPort(c.Listen)
	if err != nil {
		bad("listen %q: %v", c.Listen, err)
	}
	if (c.TLSCert == "") != (c.TLSKey == "") {
		bad("tls_cert and tls_key must be given together")
	}
	if c.TLSMaxHandshakes < 1 || c.TLSMaxHandshakes > 4096 {
		bad("tls_max_handshakes %d: want 1..4096", c.TLSMaxHandshakes)
	}
	if err == nil && c.TLSCert == "" && !c.Insecure && !isLoopback(c.Listen) {
		bad("listen %q is not a loopback address: serve TLS (--tls-cert/--tls-key) or pass --insecure", c.Listen)
	}
	_ = host
	switch c.Registration {
	case directory.PolicyOpen, directory.PolicyInvite, directory.PolicyClosed:
	default:
		bad("registration %q: want open, invite or closed", c.Registration)
	}
	if c.MaxFrameBytes < 4096 || c.MaxFrameBytes > 16<<20 {
		bad("max_frame_bytes %d: want 4096..16777216", c.MaxFrameBytes)
	}
	if c.InboxTTL.Duration < time.Minute {
		bad("inbox_ttl %s: want at least 1m", c.InboxTTL.Duration)
	}
	if c.InboxShards < 1 || c.InboxShards > 256 {
		bad("inbox_shards %d: want 1..256", c.InboxShards)
	}
	if c.InboxMaxPerDevice < 1 {
		bad("inbox_max_per_device %d: want at least 1", c.InboxMaxPerDevice)
	}
	if c.DeliveryWindow < 1 || c.DeliveryWindow > 65536 {
		bad("delivery_window %d: want 1..65536", c.DeliveryWindow)
	}
	if c.LiveAckTimeout.Duration < 10*time.Millisecond || c.LiveAckTimeout.Duration > time.Minute {
		bad("live_ack_timeout %s: want 10ms..1m", c.LiveAckTimeout.Duration)
	}
	if c.HandshakeTimeout.Duration < 100*time.Millisecond || c.HandshakeTimeout.Duration > 5*time.Minute {
		bad("handshake_timeout %s: want 100ms..5m", c.HandshakeTimeout.Duration)
	}
	if c.IdleTimeout.Duration < 100*time.Millisecond || c.IdleTimeout.Duration > 24*time.Hour {
		bad("idle_timeout %s: want 100ms..24h", c.IdleTimeout.Duration)
	}
	if c.AccountCacheSize < 1 || c.AccountCacheSize > 100_000_000 {
		bad("account_cache_size %d: want 1..100000000", c.AccountCacheSize)
	}
	if c.DeviceCacheSize < 1 || c.DeviceCacheSize > 100_000_000 {
		bad("device_cache_size %d: want 1..100000000", c.DeviceCacheSize)
	}
	if c.DrainTimeout.Duration < 0 {
		bad("drain_timeout %s: must not be negative", c.DrainTimeout.Duration)
	}
	if c.MaxConns < 0 {
		bad("max_conns %d: must not be negative", c.MaxConns)
	}
	if c.ConnFramesPerSecond < 0 || c.ConnFrameBurst < 0 || c.RegistrationsPerSecond < 0 {
		bad("rate limits must not be negative")
	}
	switch c.LogLevel {
	case "debug", "info", "warn", "error":
	default:
		bad("log_level %q: want debug, info, warn or error", c.LogLevel)
	}
	switch c.LogFormat {
	case "text", "json":
	default:
		bad("log_format %q: want text or json", c.LogFormat)
	}
	return errors.Join(errs...)
}

func isLoopback(listen string) bool {
	host, _, err := net.SplitHostPort(listen)
	if err != nil {
		return false
	}
	if host == "localhost" {
		return true
	}
	ip := net.ParseIP(host)
	return ip != nil && ip.IsLoopback()
}
