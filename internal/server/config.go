// Copyright 2026 The Petrel Authors
// SPDX-License-Identifier: Apache-2.0

package server

import (
	"bytes"
	"errors"
	"fmt"
	"maps"
	"net"
	"slices"
	"strconv"
	"strings"
	"time"

	"github.com/BurntSushi/toml"
	"golang.org/x/crypto/acme"

	"github.com/petrelchat/petrel/internal/admin"
	"github.com/petrelchat/petrel/internal/bus"
	"github.com/petrelchat/petrel/internal/directory"
	"github.com/petrelchat/petrel/internal/gateway"
	"github.com/petrelchat/petrel/internal/mailbox"
	"github.com/petrelchat/petrel/internal/nodes"
	"github.com/petrelchat/petrel/internal/status"
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
// Keys are grouped in sections ([tls], [admin], [inbox], [limits], [prekeys], [cache], [devices], [groups]); the
// section structs are embedded, so a key's Go field is reached directly (c.TLSCert is [tls] cert).
// Every key is documented in README.md ("Configuration").
type Config struct {
	// Listen is the address of the HTTP/WebSocket listener. Default: 127.0.0.1:7070.
	Listen string `toml:"listen"`
	// Data is the directory for all server state (embedded NATS JetStream, admin token). Default: ./petrel-data.
	Data string `toml:"data"`
	// Insecure allows plain HTTP on a non-loopback address. Default: false.
	Insecure bool `toml:"insecure"`
	// Registration is "open", "invite" or "closed". Default: open on a loopback listen address, invite otherwise.
	Registration string `toml:"registration"`
	// DrainTimeout bounds the graceful shutdown. Default: 20s.
	DrainTimeout Duration `toml:"drain_timeout"`
	// DrainRate is how many client connections a second a draining node sends to other nodes
	// (each its own GoAway, spread evenly), so that they reconnect spread over time, not as a
	// storm; the spread takes at most half of drain_timeout. Default: 1000.
	DrainRate float64 `toml:"drain_rate"`
	// NATS lists external NATS server URLs; empty runs NATS embedded in-process. Default: empty.
	NATS []string `toml:"nats"`
	// Node names this node in logs and metrics, and is its embedded NATS server's name (unique in
	// a cluster). Default: the host name, "-" and a random id kept in <data>/node.id (created at
	// first start), e.g. "db1-3f9a0c12": unique per data directory and stable across restarts.
	// Set when the server starts: empty in a Config before that.
	Node string `toml:"node"`
	// PublicURL is this node's base URL as clients reach it (e.g. "https://chat1.example:7443"),
	// announced to the other nodes and told to clients in Welcome so they can fail over to it.
	// Default: derived from the bound listen address and scheme, unless that address is
	// unspecified (0.0.0.0, ::), in which case the node is not announced.
	PublicURL string `toml:"public_url"`
	// ProbeInterval makes the node run the black-box prober against its own public URL every
	// interval (two probe accounts, probe-<node>-a and probe-<node>-b, created through
	// registration and kept in <data>/probe); 0 turns it off. At least 1s. Default: 0 (off: it
	// creates accounts and traffic, so operators opt in; 30s is a good value).
	ProbeInterval Duration `toml:"probe_interval"`
	// ProbeSink, if set, also receives every self-probe result. Not in the config file: for tests
	// and programs that embed the server. Default: nil.
	ProbeSink status.ProbeSink `toml:"-"`
	// LogLevel is debug, info, warn or error. Default: info.
	LogLevel string `toml:"log_level"`
	// LogFormat is text or json. Default: text.
	LogFormat string `toml:"log_format"`

	// ClusterSection's keys are top-level (cluster_listen, peers, cluster_name, replicas,
	// cluster_token_file, cluster_tls_cert, cluster_tls_key, cluster_tls_ca).
	ClusterSection

	TLSSection     `toml:"tls"`
	AdminSection   `toml:"admin"`
	InboxSection   `toml:"inbox"`
	LimitsSection  `toml:"limits"`
	PrekeysSection `toml:"prekeys"`
	CacheSection   `toml:"cache"`
	DevicesSection `toml:"devices"`
	GroupsSection  `toml:"groups"`

	PresenceSection `toml:"presence"`
	StatusSection   `toml:"status"`

	// Warnings are what LoadConfig found to say about the file (deprecated keys); the server logs
	// them when it starts.
	Warnings []string `toml:"-"`

	// Version is the build's version, shown by petrel_build_info. Not in the config file: the
	// petrel command sets it. Default: the main module's version from the build info, or "dev".
	Version string `toml:"-"`
}

// ClusterSection holds the cluster keys. Unlike the other sections its keys are top-level: the
// struct is embedded without a table name.
type ClusterSection struct {
	// ClusterListen is the host:port this node's embedded NATS server accepts cluster routes on;
	// empty runs the node alone. Off loopback it needs cluster_token_file and cluster_tls_cert,
	// cluster_tls_key and cluster_tls_ca, or insecure (routes in the clear on a private network).
	// Default: empty.
	ClusterListen string `toml:"cluster_listen"`
	// Peers are the other nodes' cluster_listen addresses (host:port); this node's own may be
	// listed too. Requires cluster_listen. Default: empty.
	Peers []string `toml:"peers"`
	// ClusterName names the NATS cluster; every node of it uses the same. Default: petrel.
	ClusterName string `toml:"cluster_name"`
	// Replicas is the replication factor of every stream and bucket, 1..5; 0 picks it: 3 with
	// external NATS or a cluster of at least 3 nodes (peers plus this one), else 1. In an embedded
	// cluster it may not exceed the number of nodes. Default: 0.
	Replicas int `toml:"replicas"`
	// ClusterTokenFile is a file holding the cluster secret (at least 32 characters, e.g.
	// `openssl rand -hex 32`; surrounding white space is ignored), the same on every node: a node
	// accepts a cluster route only from a node with the same secret. The server only reads it.
	// Default: none (routes unauthenticated; only nodes without a secret route to each other).
	ClusterTokenFile string `toml:"cluster_token_file"`
	// ClusterTLSCert and ClusterTLSKey are this node's certificate and key (PEM) for cluster
	// routes, signed by ClusterTLSCA, valid for TLS server and client authentication and for the
	// address the other nodes dial (its host in their peers). With all three set every route is
	// mutual TLS 1.3. Default: none (routes in the clear).
	ClusterTLSCert string `toml:"cluster_tls_cert"`
	ClusterTLSKey  string `toml:"cluster_tls_key"`
	// ClusterTLSCA is the CA certificate (PEM) that signed every node's route certificate; a route
	// whose peer presents another is refused. Default: none.
	ClusterTLSCA string `toml:"cluster_tls_ca"`
	// ClusterAdvertise is the host:port this node tells the other nodes to reach its cluster
	// listener at, which they use for routes they learn by gossip rather than from peers. Not in
	// the config file (flag --cluster-advertise): the test harness and petrel bench chaos set it
	// to a closed port so that every route goes through their fault-injecting proxies
	// (internal/faultproxy). Default: cluster_listen.
	ClusterAdvertise string `toml:"-"`
}

// TLSSection is [tls]: TLS on the public listener.
type TLSSection struct {
	// TLSCert and TLSKey are PEM files; when set the listener serves TLS. Default: none.
	TLSCert string `toml:"cert"`
	TLSKey  string `toml:"key"`
	// TLSMaxHandshakes is the most TLS handshakes computing at once; more wait for a slot. A
	// handshake waiting for its client holds none, and a connection costs no goroutine until its
	// ClientHello is in. The whole TLS handshake must end within handshake_timeout of accept.
	// Default: 32.
	TLSMaxHandshakes int `toml:"max_handshakes"`
	// ACMEDomain lists the DNS names to get certificates for automatically over ACME (acme.go),
	// instead of cert and key: the CA must reach the public listener as NAME:443. Default: none.
	ACMEDomain []string `toml:"acme_domain"`
	// ACMEEmail is the contact address given to the CA (expiry and incident mail). Default: none.
	ACMEEmail string `toml:"acme_email"`
	// ACMEDirectory is the ACME CA's directory URL. Default: Let's Encrypt's production directory.
	ACMEDirectory string `toml:"acme_directory"`
	// ACMEHTTPListen is the address of a plain HTTP listener for the HTTP-01 challenge (what the
	// names' port 80 reaches, e.g. ":80"); it redirects everything else to https. Empty: only
	// TLS-ALPN-01 on the public listener. Default: empty.
	ACMEHTTPListen string `toml:"acme_http_listen"`
}

// AdminSection is [admin]: the operator listener.
type AdminSection struct {
	// AdminListen is the address of the operator listener (/metrics, /debug/pprof/, /v1/admin/*),
	// "127.0.0.1:0" for any free port (its address is written to <data>/admin.addr), "off" for
	// none. Off loopback it serves TLS with [tls] cert/key, or plain HTTP only with insecure.
	// Default: 127.0.0.1:7071; 127.0.0.1:0 when listen's port is 0 (so that servers started on
	// any free port never collide on the admin port). The top-level key admin_listen is the same.
	AdminListen string `toml:"listen"`
	// AdminTokenFile is the file holding the operator token (at least 32 characters; surrounding
	// white space is ignored). Give every node of a cluster the same file so that one credential
	// works on all of them; the server only reads it. Default: <data>/admin.token, created at
	// first start (empty in the Config means the default).
	AdminTokenFile string `toml:"token_file"`
}

// InboxSection is [inbox]: store-and-forward.
type InboxSection struct {
	// InboxTTL is how long undelivered envelopes are kept. Default: 720h (30 days).
	InboxTTL Duration `toml:"ttl"`
	// InboxShards is the number of inbox streams; fixed once the deployment exists. Default (0):
	// the deployment's count, and for a new deployment 32 on a single node, 16 replicated
	// (bus.DefaultInboxShards).
	InboxShards int `toml:"shards"`
	// InboxMaxPerDevice caps one device's stored envelopes. Default: 100000.
	InboxMaxPerDevice int64 `toml:"max_per_device"`
	// InboxMaxBytesPerDevice caps the bytes of one device's stored envelopes; -1: no cap.
	// Default: 67108864 (64 MiB).
	InboxMaxBytesPerDevice int64 `toml:"max_bytes_per_device"`
	// InboxMaxPerSender caps the envelopes one sending device may have stored in one device's
	// inbox, so one sender cannot fill it; -1: no cap. Default: max_per_device / 10 (10000).
	InboxMaxPerSender int64 `toml:"max_per_sender"`
	// InboxMaxBytesPerSender is max_per_sender in bytes; -1: no cap. Default:
	// max_bytes_per_device / 10 (6710886).
	InboxMaxBytesPerSender int64 `toml:"max_bytes_per_sender"`
	// InboxStreamMaxBytes caps each inbox stream (shard) in bytes; 0: no cap of its own. Default: 0.
	InboxStreamMaxBytes int64 `toml:"stream_max_bytes"`
	// StoreMaxBytes caps the embedded JetStream store in bytes; 0: nats-server's default (a share
	// of the disk's free space). Ignored with external NATS. Default: 0.
	StoreMaxBytes int64 `toml:"store_max_bytes"`
	// QueryQueuedPerSecond and QueryQueuedBurst rate-limit each device's queue queries (the
	// outbox check). Defaults: 16 and 128.
	QueryQueuedPerSecond float64 `toml:"query_queued_per_second"`
	QueryQueuedBurst     int     `toml:"query_queued_burst"`
	// DeliveryWindow is the most unacked envelopes pushed to one device. Default: 1024.
	DeliveryWindow int `toml:"delivery_window"`
	// LiveAckTimeout is how long a live delivery waits for the device's ack before it is stored. Default: 2s.
	LiveAckTimeout Duration `toml:"live_ack_timeout"`
}

// LimitsSection is [limits]: what one connection, one address and the whole node may use.
type LimitsSection struct {
	// MaxFrameBytes is the largest frame accepted. Default: 262144 (256 KiB).
	MaxFrameBytes int `toml:"max_frame_bytes"`
	// MaxConns caps device connections; 0 derives it from RLIMIT_NOFILE minus headroom. Default: 0.
	MaxConns int `toml:"max_conns"`
	// HandshakeTimeout is how long a new connection has to send its whole HTTP request (and TLS
	// handshake), and then to authenticate. Default: 10s.
	HandshakeTimeout Duration `toml:"handshake_timeout"`
	// IdleTimeout closes a connection that sends no frame for this long (clients ping). Default: 120s.
	IdleTimeout Duration `toml:"idle_timeout"`
	// HandshakeMaxFailures closes a connection after this many refused handshake frames. Default: 3.
	HandshakeMaxFailures int `toml:"handshake_max_failures"`
	// ConnFramesPerSecond and ConnFrameBurst rate-limit each connection. Defaults: 2000 and 4000.
	ConnFramesPerSecond float64 `toml:"conn_frames_per_second"`
	ConnFrameBurst      int     `toml:"conn_frame_burst"`
	// ConnQueuedFrames and ConnQueuedBytes bound what one authenticated connection may have sent
	// and not yet had handled (frames; bytes, each frame's payload plus 128); past either it is
	// closed (WebSocket 1008). Defaults: 4096 and 16777216 (16 MiB).
	ConnQueuedFrames int   `toml:"conn_queued_frames"`
	ConnQueuedBytes  int64 `toml:"conn_queued_bytes"`
	// PreauthQueuedFrames and PreauthQueuedBytes are the same bounds before a connection has
	// authenticated. Defaults: 8 and max_frame_bytes + 65536.
	PreauthQueuedFrames int   `toml:"preauth_queued_frames"`
	PreauthQueuedBytes  int64 `toml:"preauth_queued_bytes"`
	// InboundBytes bounds the received, not yet handled bytes of all connections together
	// (unauthenticated ones may hold half); past it a connection asking for more is closed with
	// WebSocket 1013 (try again later). Default: 268435456 (256 MiB).
	InboundBytes int64 `toml:"inbound_bytes"`
	// MaxPendingUpgrades bounds the listener's sockets that have not upgraded to a WebSocket
	// (HTTP requests, TLS handshakes, stalled clients); they do not use max_conns slots, and their
	// file descriptors are kept apart from the ones max_conns derives from RLIMIT_NOFILE.
	// Default: 1024.
	MaxPendingUpgrades int `toml:"max_pending_upgrades"`
	// MaxPendingUpgradesPerIP bounds them per client address (IPv6: per /64). Default: 256.
	MaxPendingUpgradesPerIP int `toml:"max_pending_upgrades_per_ip"`
	// HTTPMaxHeaderBytes bounds an HTTP request's line and headers (431). Default: 16384.
	HTTPMaxHeaderBytes int `toml:"http_max_header_bytes"`
	// HTTPMaxBodyBytes bounds an HTTP request body on the public listener, checked from the
	// headers before the body is read (413; chunked bodies 411). The admin listener has its own,
	// larger limit. Default: 65536.
	HTTPMaxBodyBytes int `toml:"http_max_body_bytes"`
	// MemoryLimit is the Go runtime's soft memory limit in bytes (as GOMEMLIMIT): the collector
	// works harder near it and returns freed memory to the system sooner. 0 derives it: 80% of
	// the smaller of the cgroup memory limit and the machine's memory. -1 leaves the runtime's
	// (GOMEMLIMIT, or none). A GOMEMLIMIT environment variable always wins. Default: 0.
	MemoryLimit int64 `toml:"memory_limit"`
	// MemoryTrimQuiet: once the node has allocated little for this long (idle connections held
	// after a burst), it returns the freed heap the burst left behind to the system (memtrim.go).
	// Negative: never. Default: 30s.
	MemoryTrimQuiet Duration `toml:"memory_trim_quiet"`
	// MemoryQuietGCPercent: while the node is quiet (as memory_trim_quiet counts it), the
	// collector runs at a lower percent (as GOGC) than the runtime's, starting at this one and
	// raised (up to 100) while the collector would take over 1% of a core, so the heap the idle
	// connections' pings grow between collections stays small (memtrim.go). 0: the default, 10;
	// negative: the runtime's percent always.
	MemoryQuietGCPercent int `toml:"memory_quiet_gc_percent"`
	// RegistrationsPerSecond rate-limits registrations on this node; only registrations that pass
	// every check spend it. Default: 20.
	RegistrationsPerSecond float64 `toml:"registrations_per_second"`
	// RegistrationsPerIPPerMinute and RegistrationIPBurst limit Register attempts, valid or not,
	// from one IP address (IPv6: one /64). Defaults: 6 and 20.
	RegistrationsPerIPPerMinute float64 `toml:"registrations_per_ip_per_minute"`
	RegistrationIPBurst         float64 `toml:"registration_ip_burst"`
	// MaxPendingLinks bounds the connections of new devices waiting on this node for their link
	// to be approved; past it StartLink is refused (RATE_LIMITED). Default: 1000.
	MaxPendingLinks int `toml:"max_pending_links"`
	// RegistrationIPLimitLoopback applies the per-IP limit to loopback peers (a local reverse
	// proxy, the operator's tools) too. Default: false.
	RegistrationIPLimitLoopback bool `toml:"registration_ip_limit_loopback"`
}

// PrekeysSection is [prekeys]: one-time prekeys and who may claim them.
type PrekeysSection struct {
	// PrekeyReplenishBelow tells clients to upload one-time prekeys under this count. Default: 20.
	PrekeyReplenishBelow uint32 `toml:"replenish_below"`
	// BundleCacheTTL is how long a device asking again for another device's bundle gets it without
	// one-time prekeys (claims none). Default: 10m.
	BundleCacheTTL Duration `toml:"bundle_cache_ttl"`
	// BundleCacheSize bounds the claims remembered for that (about 64 bytes each). Default: 200000.
	BundleCacheSize int `toml:"bundle_cache_size"`
	// PrekeyClaimRequesterBurst and PrekeyClaimRequesterPerMinute limit how many devices' one-time
	// prekeys one device may claim (refused beyond). Defaults: 100 and 10.
	PrekeyClaimRequesterBurst     float64 `toml:"claim_requester_burst"`
	PrekeyClaimRequesterPerMinute float64 `toml:"claim_requester_per_minute"`
	// PrekeyClaimPairBurst and PrekeyClaimPairPerMinute limit claims by one device from one other
	// device (refused beyond). Defaults: 6 and 0.1.
	PrekeyClaimPairBurst     float64 `toml:"claim_pair_burst"`
	PrekeyClaimPairPerMinute float64 `toml:"claim_pair_per_minute"`
	// PrekeyClaimTargetBurst and PrekeyClaimTargetPerMinute limit claims of one device's one-time
	// prekeys by everybody (beyond: bundles without one-time prekeys). Defaults: 20 and 1.
	PrekeyClaimTargetBurst     float64 `toml:"claim_target_burst"`
	PrekeyClaimTargetPerMinute float64 `toml:"claim_target_per_minute"`
	// PrekeyClaimLimiterKeys bounds the devices or pairs each claim limiter tracks. Default: 100000.
	PrekeyClaimLimiterKeys int `toml:"claim_limiter_keys"`
}

// CacheSection is [cache]: in-memory caches.
type CacheSection struct {
	// AccountCacheSize and DeviceCacheSize bound the in-memory caches of accounts (send path) and
	// device auth keys (connect path). Defaults: 100000 and 200000.
	AccountCacheSize int `toml:"accounts"`
	DeviceCacheSize  int `toml:"devices"`
}

// DevicesSection is [devices]: linked devices.
type DevicesSection struct {
	// MaxDevices is the most devices one account may have, its primary included (1..16). Default: 5.
	MaxDevices int `toml:"max_devices"`
	// LinkTTL is how long a new device's link code waits for its approval (1s..1h). Default: 5m.
	LinkTTL Duration `toml:"link_ttl"`
}

// GroupsSection is [groups]: group membership.
type GroupsSection struct {
	// MaxGroupMembers is the most members one group may have (1..2048); past it a change is
	// refused with GROUP_FULL. (One membership event is at most 192 KiB: at 2,048 members of long
	// names, promote them in a few events.) Default: 1024.
	MaxGroupMembers int `toml:"max_group_members"`
}

// legacyKeys maps the flat keys of earlier releases to their section and key. They are accepted
// for one release, with a warning. admin_listen is the same as [admin] listen, without one.
var legacyKeys = map[string][2]string{
	"tls_cert":                 {"tls", "cert"},
	"tls_key":                  {"tls", "key"},
	"admin_listen":             {"admin", "listen"},
	"max_frame_bytes":          {"limits", "max_frame_bytes"},
	"max_conns":                {"limits", "max_conns"},
	"handshake_timeout":        {"limits", "handshake_timeout"},
	"idle_timeout":             {"limits", "idle_timeout"},
	"conn_frames_per_second":   {"limits", "conn_frames_per_second"},
	"conn_frame_burst":         {"limits", "conn_frame_burst"},
	"registrations_per_second": {"limits", "registrations_per_second"},
	"inbox_ttl":                {"inbox", "ttl"},
	"inbox_shards":             {"inbox", "shards"},
	"inbox_max_per_device":     {"inbox", "max_per_device"},
	"delivery_window":          {"inbox", "delivery_window"},
	"live_ack_timeout":         {"inbox", "live_ack_timeout"},
	"prekey_replenish_below":   {"prekeys", "replenish_below"},
	"account_cache_size":       {"cache", "accounts"},
	"device_cache_size":        {"cache", "devices"},
}

// AdminListenOff as admin_listen runs no admin listener.
const AdminListenOff = "off"

// LoadConfig reads a TOML config file; unknown keys are errors. The flat keys of earlier releases
// (legacyKeys) are moved into their sections, each with a warning in Config.Warnings.
func LoadConfig(path string) (Config, error) {
	var c Config
	raw := map[string]any{}
	if _, err := toml.DecodeFile(path, &raw); err != nil {
		return c, fmt.Errorf("config %s: %w", path, err)
	}
	var warnings []string
	for _, old := range slices.Sorted(maps.Keys(raw)) {
		to, ok := legacyKeys[old]
		if !ok {
			continue
		}
		sec, isTable := raw[to[0]].(map[string]any)
		if raw[to[0]] != nil && !isTable {
			return c, fmt.Errorf("config %s: %s must be a section ([%s])", path, to[0], to[0])
		}
		if sec == nil {
			sec = map[string]any{}
			raw[to[0]] = sec
		}
		if _, dup := sec[to[1]]; dup {
			return c, fmt.Errorf("config %s: %s and [%s] %s are the same key: give it once", path, old, to[0], to[1])
		}
		sec[to[1]] = raw[old]
		delete(raw, old)
		if old != "admin_listen" {
			warnings = append(warnings, fmt.Sprintf("config %s: key %s is deprecated and will be removed in the next release: write it as %s in [%s]", path, old, to[1], to[0]))
		}
	}
	var buf bytes.Buffer
	if err := toml.NewEncoder(&buf).Encode(raw); err != nil {
		return c, fmt.Errorf("config %s: %w", path, err)
	}
	md, err := toml.Decode(buf.String(), &c)
	if err != nil {
		return c, fmt.Errorf("config %s: %w", path, err)
	}
	if und := md.Undecoded(); len(und) > 0 {
		keys := make([]string, len(und))
		for i, k := range und {
			keys[i] = k.String()
		}
		return c, fmt.Errorf("config %s: unknown keys: %s (see README.md, Configuration)", path, strings.Join(keys, ", "))
	}
	c.Warnings = warnings
	return c, nil
}

// SetDefaults fills unset fields.
func (c *Config) SetDefaults() {
	if c.Listen == "" {
		c.Listen = "127.0.0.1:7070"
	}
	if c.AdminListen == "" {
		c.AdminListen = admin.DefaultListen
		if _, port, err := net.SplitHostPort(c.Listen); err == nil && port == "0" {
			c.AdminListen = "127.0.0.1:0"
		}
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
	if c.InboxMaxPerDevice == 0 {
		c.InboxMaxPerDevice = 100_000
	}
	if c.InboxMaxBytesPerDevice == 0 {
		c.InboxMaxBytesPerDevice = 64 << 20
	}
	if c.InboxMaxPerSender == 0 {
		c.InboxMaxPerSender = max(1, c.InboxMaxPerDevice/10)
	}
	if c.InboxMaxBytesPerSender == 0 {
		c.InboxMaxBytesPerSender = -1
		if c.InboxMaxBytesPerDevice > 0 {
			c.InboxMaxBytesPerSender = max(1, c.InboxMaxBytesPerDevice/10)
		}
	}
	if c.QueryQueuedPerSecond == 0 {
		c.QueryQueuedPerSecond = 16
	}
	if c.QueryQueuedBurst == 0 {
		c.QueryQueuedBurst = 128
	}
	if c.LiveAckTimeout.Duration == 0 {
		c.LiveAckTimeout.Duration = 2 * time.Second
	}
	if c.DrainTimeout.Duration == 0 {
		c.DrainTimeout.Duration = 20 * time.Second
	}
	if c.DrainRate == 0 {
		c.DrainRate = 1000
	}
	if c.HandshakeTimeout.Duration == 0 {
		c.HandshakeTimeout.Duration = 10 * time.Second
	}
	if c.ACMEDirectory == "" {
		c.ACMEDirectory = acme.LetsEncryptURL
	}
	if c.TLSMaxHandshakes == 0 {
		c.TLSMaxHandshakes = gateway.DefaultTLSMaxHandshakes
	}
	if c.IdleTimeout.Duration == 0 {
		c.IdleTimeout.Duration = 120 * time.Second
	}
	if c.MemoryQuietGCPercent == 0 {
		c.MemoryQuietGCPercent = 10
	}
	if c.MemoryTrimQuiet.Duration == 0 {
		c.MemoryTrimQuiet.Duration = 30 * time.Second
	}
	if c.MaxPendingUpgrades == 0 {
		c.MaxPendingUpgrades = gateway.DefaultMaxPendingUpgrades
	}
	if c.MaxPendingUpgradesPerIP == 0 {
		c.MaxPendingUpgradesPerIP = gateway.DefaultMaxPendingUpgradesPerIP
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
	if c.MaxDevices == 0 {
		c.MaxDevices = directory.DefaultMaxDevices
	}
	if c.MaxGroupMembers == 0 {
		c.MaxGroupMembers = pb.DefaultMaxGroupMembers
	}
	if c.LinkTTL.Duration == 0 {
		c.LinkTTL.Duration = directory.DefaultLinkTTL
	}
	if c.MaxPendingLinks == 0 {
		c.MaxPendingLinks = gateway.DefaultMaxPendingLinks
	}
	if c.DeviceCacheSize == 0 {
		c.DeviceCacheSize = directory.DefaultDeviceCacheSize
	}
	c.setGatewayDefaults()
	c.setAbuseDefaults()
	c.setPresenceDefaults()
	c.setStatusDefaults()
	if c.LogLevel == "" {
		c.LogLevel = "info"
	}
	if c.LogFormat == "" {
		c.LogFormat = "text"
	}
	if c.ClusterName == "" {
		c.ClusterName = "petrel"
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
		bad("tls.cert and tls.key must be given together")
	}
	if c.TLSMaxHandshakes < 1 || c.TLSMaxHandshakes > 4096 {
		bad("tls.max_handshakes %d: want 1..4096", c.TLSMaxHandshakes)
	}
	c.validateACME(bad)
	if err == nil && !c.servesTLS() && !c.Insecure && !isLoopback(c.Listen) {
		bad("listen %q is not a loopback address: serve TLS (--tls-cert/--tls-key, or --acme-domain) or pass --insecure", c.Listen)
	}
	_ = host
	if c.PublicURL != "" && !nodes.ValidURL(c.PublicURL) {
		bad("public_url %q: want http(s)://HOST[:PORT], with no path, query or user info", c.PublicURL)
	}
	if c.AdminListen != AdminListenOff {
		if _, _, err := net.SplitHostPort(c.AdminListen); err != nil {
			bad("admin.listen %q: %v (want HOST:PORT or off)", c.AdminListen, err)
		} else if !c.servesTLS() && !c.Insecure && !isLoopback(c.AdminListen) {
			bad("admin.listen %q is not a loopback address: serve TLS (--tls-cert/--tls-key, or --acme-domain) or pass --insecure", c.AdminListen)
		}
	}
	if c.AdminTokenFile != "" {
		if _, err := readTokenFile(c.AdminTokenFile); err != nil {
			bad("admin.token_file: %v", err)
		}
	}
	switch c.Registration {
	case directory.PolicyOpen, directory.PolicyInvite, directory.PolicyClosed:
	default:
		bad("registration %q: want open, invite or closed", c.Registration)
	}
	if c.MaxDevices < 1 || c.MaxDevices > directory.MaxListedDevices {
		bad("devices.max_devices %d: want 1..%d", c.MaxDevices, directory.MaxListedDevices)
	}
	if c.MaxGroupMembers < 1 || c.MaxGroupMembers > 2048 {
		bad("groups.max_group_members %d: want 1..2048", c.MaxGroupMembers)
	}
	if c.LinkTTL.Duration < time.Second || c.LinkTTL.Duration > bus.LinksMaxAge {
		bad("devices.link_ttl %s: want 1s..%s", c.LinkTTL.Duration, bus.LinksMaxAge)
	}
	c.validatePresence(bad)
	c.validateStatus(bad)
	if c.MaxPendingLinks < 1 || c.MaxPendingLinks > 1_000_000 {
		bad("limits.max_pending_links %d: want 1..1000000", c.MaxPendingLinks)
	}
	if c.MaxFrameBytes < 4096 || c.MaxFrameBytes > 16<<20 {
		bad("limits.max_frame_bytes %d: want 4096..16777216", c.MaxFrameBytes)
	}
	if c.InboxTTL.Duration < time.Minute {
		bad("inbox.ttl %s: want at least 1m", c.InboxTTL.Duration)
	}
	if c.InboxShards < 0 || c.InboxShards > bus.MaxInboxShards {
		bad("inbox.shards %d: want 1..%d, or 0 (unset: the deployment's count, 32 for a new single node, 16 for a new cluster)", c.InboxShards, bus.MaxInboxShards)
	}
	if c.InboxMaxPerDevice < 1 {
		bad("inbox.max_per_device %d: want at least 1", c.InboxMaxPerDevice)
	}
	for _, v := range []struct {
		key string
		val int64
	}{{"inbox.max_bytes_per_device", c.InboxMaxBytesPerDevice}, {"inbox.max_per_sender", c.InboxMaxPerSender}, {"inbox.max_bytes_per_sender", c.InboxMaxBytesPerSender}} {
		if v.val < -1 || v.val == 0 {
			bad("%s %d: want at least 1, or -1 for no cap", v.key, v.val)
		}
	}
	if c.InboxStreamMaxBytes < 0 || c.StoreMaxBytes < 0 {
		bad("inbox.stream_max_bytes and inbox.store_max_bytes must not be negative (0: no cap of their own)")
	}
	if c.InboxShards > 0 && c.InboxStreamMaxBytes > 0 && c.StoreMaxBytes > 0 && int64(c.InboxShards) > c.StoreMaxBytes/c.InboxStreamMaxBytes {
		bad("inbox.stream_max_bytes %d × inbox.shards %d exceeds inbox.store_max_bytes %d (JetStream reserves each stream's cap)", c.InboxStreamMaxBytes, c.InboxShards, c.StoreMaxBytes)
	}
	if c.QueryQueuedPerSecond < 0 || c.QueryQueuedBurst < 0 {
		bad("inbox.query_queued_per_second and inbox.query_queued_burst must not be negative")
	}
	if c.DeliveryWindow < 1 || c.DeliveryWindow > 65536 {
		bad("inbox.delivery_window %d: want 1..65536", c.DeliveryWindow)
	}
	if c.LiveAckTimeout.Duration < 10*time.Millisecond || c.LiveAckTimeout.Duration > time.Minute {
		bad("inbox.live_ack_timeout %s: want 10ms..1m", c.LiveAckTimeout.Duration)
	}
	if c.HandshakeTimeout.Duration < 100*time.Millisecond || c.HandshakeTimeout.Duration > 5*time.Minute {
		bad("limits.handshake_timeout %s: want 100ms..5m", c.HandshakeTimeout.Duration)
	}
	if c.IdleTimeout.Duration < 100*time.Millisecond || c.IdleTimeout.Duration > 24*time.Hour {
		bad("limits.idle_timeout %s: want 100ms..24h", c.IdleTimeout.Duration)
	}
	if c.AccountCacheSize < 1 || c.AccountCacheSize > 100_000_000 {
		bad("cache.accounts %d: want 1..100000000", c.AccountCacheSize)
	}
	if c.DeviceCacheSize < 1 || c.DeviceCacheSize > 100_000_000 {
		bad("cache.devices %d: want 1..100000000", c.DeviceCacheSize)
	}
	if d := c.ProbeInterval.Duration; d != 0 && d < time.Second {
		bad("probe_interval %s: want 0 (off) or at least 1s", d)
	}
	if c.DrainRate < 0 {
		bad("drain_rate %v: must not be negative", c.DrainRate)
	}
	if c.DrainTimeout.Duration < 0 {
		bad("drain_timeout %s: must not be negative", c.DrainTimeout.Duration)
	}
	if c.MaxConns < 0 {
		bad("limits.max_conns %d: must not be negative", c.MaxConns)
	}
	if c.ConnFramesPerSecond < 0 || c.ConnFrameBurst < 0 || c.RegistrationsPerSecond < 0 {
		bad("limits.conn_frames_per_second, limits.conn_frame_burst and limits.registrations_per_second must not be negative")
	}
	errs = append(errs, c.validateAbuse()...)
	if c.ConnQueuedFrames < 0 || c.PreauthQueuedFrames < 0 || c.MaxPendingUpgrades < 0 || c.MaxPendingUpgradesPerIP < 0 {
		bad("limits.conn_queued_frames, limits.preauth_queued_frames, limits.max_pending_upgrades and limits.max_pending_upgrades_per_ip must not be negative")
	}
	oneFrame := int64(c.MaxFrameBytes) + 128
	if c.ConnQueuedBytes != 0 && c.ConnQueuedBytes < oneFrame {
		bad("limits.conn_queued_bytes %d: want at least limits.max_frame_bytes + 128 (%d)", c.ConnQueuedBytes, oneFrame)
	}
	if c.PreauthQueuedBytes != 0 && c.PreauthQueuedBytes < oneFrame {
		bad("limits.preauth_queued_bytes %d: want at least limits.max_frame_bytes + 128 (%d)", c.PreauthQueuedBytes, oneFrame)
	}
	if c.InboundBytes != 0 && c.InboundBytes < 4*oneFrame {
		bad("limits.inbound_bytes %d: want at least 4 × (limits.max_frame_bytes + 128) (%d)", c.InboundBytes, 4*oneFrame)
	}
	if c.HTTPMaxHeaderBytes != 0 && (c.HTTPMaxHeaderBytes < 1024 || c.HTTPMaxHeaderBytes > 1<<20) {
		bad("limits.http_max_header_bytes %d: want 1024..1048576", c.HTTPMaxHeaderBytes)
	}
	if c.HTTPMaxBodyBytes < 0 || c.HTTPMaxBodyBytes > 64<<20 {
		bad("limits.http_max_body_bytes %d: want 0..67108864", c.HTTPMaxBodyBytes)
	}
	if c.MemoryLimit < -1 {
		bad("limits.memory_limit %d: want a byte count, 0 (derive) or -1 (off)", c.MemoryLimit)
	}
	errs = append(errs, c.validateCluster()...)
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

// validateCluster reports problems in the cluster keys.
func (c *Config) validateCluster() []error {
	var errs []error
	bad := func(format string, a ...any) { errs = append(errs, fmt.Errorf(format, a...)) }
	if len(c.Peers) > 0 && c.ClusterListen == "" {
		bad("peers given without cluster_listen: a clustered node needs an address for routes")
	}
	if c.ClusterListen != "" {
		if len(c.NATS) > 0 {
			bad("cluster_listen is for the embedded NATS server: with nats (external) configure the cluster there")
		}
		if err := checkHostPort(c.ClusterListen); err != nil {
			bad("cluster_listen %q: %v", c.ClusterListen, err)
		} else if !c.Insecure && !isLoopback(c.ClusterListen) {
			if c.ClusterTokenFile == "" {
				bad("cluster_listen %q is not a loopback address: authenticate the cluster routes with cluster_token_file (--cluster-token-file; the same secret on every node, e.g. openssl rand -hex 32), or pass --insecure on a private network", c.ClusterListen)
			}
			if c.ClusterTLSCert == "" && c.ClusterTLSKey == "" && c.ClusterTLSCA == "" {
				bad("cluster_listen %q is not a loopback address: encrypt the cluster routes with cluster_tls_cert, cluster_tls_key and cluster_tls_ca (--cluster-tls-cert, --cluster-tls-key, --cluster-tls-ca), or pass --insecure on a private network", c.ClusterListen)
			}
		}
	}
	routeKeys := c.ClusterTokenFile != "" || c.ClusterTLSCert != "" || c.ClusterTLSKey != "" || c.ClusterTLSCA != ""
	switch {
	case routeKeys && len(c.NATS) > 0:
		bad("cluster_token_file and cluster_tls_* are for the embedded cluster's routes: with nats (external) secure the NATS cluster there")
	case routeKeys && c.ClusterListen == "":
		bad("cluster_token_file and cluster_tls_* need cluster_listen: they secure the routes of an embedded cluster")
	}
	if c.ClusterTokenFile != "" {
		if _, _, err := readClusterSecrets(c.ClusterTokenFile); err != nil {
			bad("cluster_token_file: %v", err)
		}
	}
	tlsSet := 0
	for _, f := range []string{c.ClusterTLSCert, c.ClusterTLSKey, c.ClusterTLSCA} {
		if f != "" {
			tlsSet++
		}
	}
	switch tlsSet {
	case 0:
	case 3:
		if _, err := bus.RouteTLS(c.ClusterTLSCert, c.ClusterTLSKey, c.ClusterTLSCA); err != nil {
			bad("cluster_tls_cert, cluster_tls_key, cluster_tls_ca: %v", err)
		}
	default:
		bad("cluster_tls_cert, cluster_tls_key and cluster_tls_ca must be given together")
	}
	for _, p := range c.Peers {
		if err := checkHostPort(p); err != nil {
			bad("peers: %q: %v", p, err)
		}
	}
	if c.ClusterAdvertise != "" {
		if c.ClusterListen == "" {
			bad("cluster advertise address given without cluster_listen")
		} else if err := checkHostPort(c.ClusterAdvertise); err != nil {
			bad("cluster advertise address %q: %v", c.ClusterAdvertise, err)
		}
	}
	if c.ClusterName == "" || strings.ContainsAny(c.ClusterName, " \t\r\n.*>") {
		bad("cluster_name %q: want a name without spaces, dots, * or >", c.ClusterName)
	}
	if c.Replicas < 0 || c.Replicas > 5 {
		bad("replicas %d: want 0 (auto) or 1..5", c.Replicas)
	} else if n := bus.ClusterSize(c.ClusterListen, c.Peers); len(c.NATS) == 0 && c.Replicas > n {
		bad("replicas %d exceeds the cluster's %d node(s) (cluster_listen plus peers)", c.Replicas, n)
	}
	return errs
}

// servesTLS reports whether the public listener serves TLS (certificate files or ACME).
func (c *Config) servesTLS() bool { return c.TLSCert != "" || len(c.ACMEDomain) > 0 }

// checkHostPort accepts host:port with a non-empty host and a port in 1..65535.
func checkHostPort(addr string) error {
	host, port, err := net.SplitHostPort(addr)
	if err != nil {
		return err
	}
	if host == "" {
		return errors.New("want host:port with a host")
	}
	if n, err := strconv.Atoi(port); err != nil || n < 1 || n > 65535 {
		return fmt.Errorf("port %q: want 1..65535", port)
	}
	return nil
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

// setGatewayDefaults fills the [limits] keys whose defaults the gateway owns with its values, so
// the Config shows what is in force (deploy/petrel.example.toml is checked against it).
func (c *Config) setGatewayDefaults() {
	g := gateway.Config{MaxFrameBytes: c.MaxFrameBytes}.WithDefaults()
	if c.ConnFramesPerSecond == 0 {
		c.ConnFramesPerSecond = g.FramesPerSecond
	}
	if c.ConnFrameBurst == 0 {
		c.ConnFrameBurst = g.FrameBurst
	}
	if c.RegistrationsPerSecond == 0 {
		c.RegistrationsPerSecond = g.RegistrationsPerSecond
	}
	if c.ConnQueuedFrames == 0 {
		c.ConnQueuedFrames = g.QueuedFrames
	}
	if c.ConnQueuedBytes == 0 {
		c.ConnQueuedBytes = g.QueuedBytes
	}
	if c.PreauthQueuedFrames == 0 {
		c.PreauthQueuedFrames = g.PreauthQueuedFrames
	}
	if c.PreauthQueuedBytes == 0 {
		c.PreauthQueuedBytes = g.PreauthQueuedBytes
	}
	if c.InboundBytes == 0 {
		c.InboundBytes = g.InboundBytes
	}
	if c.HTTPMaxHeaderBytes == 0 {
		c.HTTPMaxHeaderBytes = g.MaxHeaderBytes
	}
	if c.HTTPMaxBodyBytes == 0 {
		c.HTTPMaxBodyBytes = g.MaxBodyBytes
	}
}

// setAbuseDefaults fills the registration and prekey-claim limits.
func (c *Config) setAbuseDefaults() {
	def := func(v *float64, d float64) {
		if *v == 0 {
			*v = d
		}
	}
	def(&c.RegistrationsPerIPPerMinute, 6)
	def(&c.RegistrationIPBurst, 20)
	if c.HandshakeMaxFailures == 0 {
		c.HandshakeMaxFailures = 3
	}
	if c.BundleCacheTTL.Duration == 0 {
		c.BundleCacheTTL.Duration = directory.DefaultBundleCacheTTL
	}
	if c.BundleCacheSize == 0 {
		c.BundleCacheSize = directory.DefaultBundleCacheSize
	}
	def(&c.PrekeyClaimRequesterBurst, directory.DefaultClaimRequesterBurst)
	def(&c.PrekeyClaimRequesterPerMinute, directory.DefaultClaimRequesterPerMinute)
	def(&c.PrekeyClaimPairBurst, directory.DefaultClaimPairBurst)
	def(&c.PrekeyClaimPairPerMinute, directory.DefaultClaimPairPerMinute)
	def(&c.PrekeyClaimTargetBurst, directory.DefaultClaimTargetBurst)
	def(&c.PrekeyClaimTargetPerMinute, directory.DefaultClaimTargetPerMinute)
	if c.PrekeyClaimLimiterKeys == 0 {
		c.PrekeyClaimLimiterKeys = directory.DefaultClaimLimiterKeys
	}
}

// validateAbuse reports problems in the registration and prekey-claim limits.
func (c *Config) validateAbuse() []error {
	var errs []error
	rates := map[string]float64{
		"limits.registrations_per_ip_per_minute": c.RegistrationsPerIPPerMinute,
		"prekeys.claim_requester_per_minute":     c.PrekeyClaimRequesterPerMinute,
		"prekeys.claim_pair_per_minute":          c.PrekeyClaimPairPerMinute,
		"prekeys.claim_target_per_minute":        c.PrekeyClaimTargetPerMinute,
	}
	bursts := map[string]float64{
		"limits.registration_ip_burst":  c.RegistrationIPBurst,
		"prekeys.claim_requester_burst": c.PrekeyClaimRequesterBurst,
		"prekeys.claim_pair_burst":      c.PrekeyClaimPairBurst,
		"prekeys.claim_target_burst":    c.PrekeyClaimTargetBurst,
	}
	for _, k := range slices.Sorted(maps.Keys(rates)) {
		if !(rates[k] > 0) { // also NaN
			errs = append(errs, fmt.Errorf("%s %v: want more than 0", k, rates[k]))
		}
	}
	for _, k := range slices.Sorted(maps.Keys(bursts)) {
		if !(bursts[k] >= 1) {
			errs = append(errs, fmt.Errorf("%s %v: want at least 1", k, bursts[k]))
		}
	}
	if c.HandshakeMaxFailures < 1 || c.HandshakeMaxFailures > 1000 {
		errs = append(errs, fmt.Errorf("limits.handshake_max_failures %d: want 1..1000", c.HandshakeMaxFailures))
	}
	if c.BundleCacheTTL.Duration < time.Second || c.BundleCacheTTL.Duration > 24*time.Hour {
		errs = append(errs, fmt.Errorf("prekeys.bundle_cache_ttl %s: want 1s..24h", c.BundleCacheTTL.Duration))
	}
	if c.BundleCacheSize < 1 || c.BundleCacheSize > 10_000_000 {
		errs = append(errs, fmt.Errorf("prekeys.bundle_cache_size %d: want 1..10000000", c.BundleCacheSize))
	}
	if c.PrekeyClaimLimiterKeys < 1 || c.PrekeyClaimLimiterKeys > 100_000_000 {
		errs = append(errs, fmt.Errorf("prekeys.claim_limiter_keys %d: want 1..100000000", c.PrekeyClaimLimiterKeys))
	}
	return errs
}
