// Copyright 2026 The Petrel Authors
// SPDX-License-Identifier: Apache-2.0

// Package bus connects Petrel to NATS JetStream, embedded in-process (the default: one binary,
// state under the data directory) or external (a NATS cluster), through one code path. It owns the
// definitions of every stream and key-value bucket, applied as migrations at start, and the subject
// names that services use. Services own the meaning of what they store.
package bus

import (
	"context"
	"crypto/rand"
	"crypto/tls"
	"encoding/hex"
	"encoding/json"
	"errors"
	"fmt"
	"log/slog"
	"net"
	"os"
	"path/filepath"
	"strconv"
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
	// URLs is empty. With URLs or cluster settings, a single-node store found there is imported
	// into the cluster (grow.go).
	DataDir string
	// URLs are external NATS servers; empty means start an embedded server. Default: empty.
	// They may carry credentials (nats://user:pass@host, nats://token@host): print them only
	// through RedactURL.
	URLs []string
	// Replicas is the replication factor of every stream and bucket. Default (0): 3 with external
	// NATS, 3 for an embedded cluster of at least 3 nodes (ClusterPeers plus this one), else 1.
	Replicas int
	// ClusterListen is the host:port the embedded server accepts cluster routes on. Empty: the
	// embedded server runs alone. Ignored with external NATS.
	ClusterListen string
	// ClusterPeers are the other nodes' cluster addresses (host:port); the embedded server routes
	// to each and forms one NATS cluster with JetStream clustered. This node's own ClusterListen may
	// be listed too (it is skipped). Default: empty.
	ClusterPeers []string
	// ClusterAdvertise is the host:port the other nodes are told to reach this one at (routes
	// learnt by gossip use it; configured peers are dialled as given). Default: ClusterListen.
	ClusterAdvertise string
	// ClusterName names the NATS cluster; every node of it must use the same. Default: "petrel".
	ClusterName string
	// ClusterSecret authenticates cluster routes (route.go): this node accepts a route only from
	// a node with the same secret (empty matches only empty) and presents it on the routes it
	// dials, inside TLS when ClusterTLS is set. Never printed. Default: empty.
	ClusterSecret string
	// ClusterSecretsAccepted are further secrets this node accepts on inbound routes (never
	// presents): the previous secret while the cluster rotates it (README: Rotating the cluster
	// secret). Ignored without ClusterSecret. Default: none.
	ClusterSecretsAccepted []string
	// ClusterTLS, if set, makes every cluster route mutual TLS (RouteTLS builds it). Default: nil,
	// plain TCP.
	ClusterTLS *tls.Config
	// InboxShards is the number of INBOX streams device inboxes are spread over. Default (0):
	// the count the deployment was created with, and for a new deployment
	// DefaultInboxShards(Replicas). A count that differs from the deployment's is refused
	// (devices would lose their inboxes).
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

// ClusterSize is the number of nodes of the embedded cluster: this one plus its distinct peers
// (its own address excluded). 1 when it runs alone.
func ClusterSize(listen string, peers []string) int {
	if listen == "" {
		return 1
	}
	seen := map[string]bool{listen: true}
	for _, p := range peers {
		seen[p] = true
	}
	return len(seen)
}

// DefaultInboxShards is the inbox shard count of a new deployment whose configuration names
// none: 32 with one replica, 16 with more. On one node more streams mean more fsyncs in
// parallel and a shorter walk for a drain past other devices' envelopes (a shard's devices
// share its blocks); replicated, every shard is a Raft group on every node, and fewer, larger
// commits store faster (BENCHMARKS.md: one node, 1,000 inboxes × 200 messages, drains 38–41k
// msgs/s at 16 shards, 57k at 32; R3 stores 29–30k msgs/s at 16, 22–23k at 32).
func DefaultInboxShards(replicas int) int {
	if replicas <= 1 {
		return 32
	}
	return 16
}

func (c *Config) setDefaults() {
	if c.Replicas == 0 {
		c.Replicas = 1
		if len(c.URLs) > 0 || ClusterSize(c.ClusterListen, c.ClusterPeers) >= 3 {
			c.Replicas = 3
		}
	}
	if c.ClusterName == "" {
		c.ClusterName = "petrel"
	}
	if c.InboxShards == 0 {
		c.InboxShards = DefaultInboxShards(c.Replicas)
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
	// clientToken authenticates clients of a clustered embedded server (see clusterOptions).
	clientToken string
	// routes authenticates cluster routes and logs their refusals; nil when not clustered.
	routes *routeGuard
	nc     *nats.Conn
	js     jetstream.JetStream
	// async counts and logs the connection's asynchronous errors (slow consumers) and tells the
	// OnSlowConsumer listeners.
	async *asyncErrors

	// Buckets and streams, opened by migrate.
	Accounts jetstream.KeyValue // account name → account record
	Devices  jetstream.KeyValue // device id → device record
	Invites  jetstream.KeyValue // invite code → invite record
	Links    jetstream.KeyValue // link id → pending device link (per-entry TTL)
	LastSeen jetstream.KeyValue // device id → when it last authenticated (directory.Seen)
	Groups   jetstream.KeyValue // group records and the per-account group index (package groups)
	Settings jetstream.KeyValue // account name → presence and privacy settings (presence.go)
	PreKeys  jetstream.Stream   // one-time prekeys: prekeys.otk.<device>, prekeys.kem.<device>
	inboxes  []jetstream.Stream
	meta     jetstream.KeyValue // deployment facts

	// Incidents holds the status page's incident notes (package status).
	Incidents jetstream.KeyValue
	// Baseline holds each node's problem-report counts for the status page's baseline (package
	// status).
	Baseline jetstream.KeyValue

	// A single-node store being imported into the cluster (grow.go); nil otherwise.
	single   *server.Server
	singleNC *nats.Conn
	singleJS jetstream.JetStream
	grow     growState // this node's part in forming the deployment, set by migrate
	// shardsAuto: the configuration named no shard count, so the node adopts the deployment's
	// (cfg.InboxShards is set by Open, before it returns: the single-node store's when it grows
	// one, the recorded one otherwise).
	shardsAuto bool
}

// Open starts the embedded server (or dials the external one), connects, waits until JetStream
// answers (in a cluster: a meta leader is elected, which needs a majority of the nodes up), and
// applies migrations. It waits as long as ctx allows.
func Open(ctx context.Context, cfg Config) (*Bus, error) {
	shardsAuto := cfg.InboxShards == 0
	cfg.setDefaults()
	b := &Bus{cfg: cfg, shardsAuto: shardsAuto, async: newAsyncErrors(cfg.Logger, cfg.Registry)}
	if err := b.connect(); err != nil {
		b.Close()
		return nil, err
	}
	if err := b.waitJetStream(ctx); err != nil {
		b.Close()
		return nil, err
	}
	if len(cfg.URLs) > 0 {
		if err := b.checkExternal(ctx); err != nil {
			b.Close()
			return nil, err
		}
	}
	if err := b.migrateRetry(ctx); err != nil {
		b.Close()
		return nil, fmt.Errorf("bus migrations: %w", err)
	}
	if err := b.growRetry(ctx); err != nil {
		b.Close()
		return nil, fmt.Errorf("grow a single node into a cluster: %w", err)
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
		if err := b.prepareExternal(); err != nil {
			return err
		}
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
		if err := b.prepareStore(storeDir); err != nil {
			return err
		}
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
		if err := b.clusterOptions(sopts); err != nil {
			return err
		}
		srv, err := server.NewServer(sopts)
		if err != nil {
			return fmt.Errorf("embedded nats: %w", err)
		}
		b.srv = srv
		if b.routes != nil {
			srv.SetLoggerV2(natsLogger{b.routes}, false, false, false)
		}
		srv.Start()
		if !srv.ReadyForConnections(30 * time.Second) {
			return errors.New("embedded nats did not become ready within 30s")
		}
		if b.clientToken != "" {
			opts = append(opts, nats.Token(b.clientToken))
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

// clusterOptions adds the cluster listener and the routes to the peers when ClusterListen is set.
// Every node keeps SyncAlways; on a replicated stream nats-server relies on the Raft log's fsync.
func (b *Bus) clusterOptions(o *server.Options) error {
	if b.cfg.ClusterListen == "" {
		return nil
	}
	host, port, err := splitHostPort(b.cfg.ClusterListen)
	if err != nil {
		return fmt.Errorf("cluster listen %q: %w", b.cfg.ClusterListen, err)
	}
	o.Cluster = server.ClusterOpts{Name: b.cfg.ClusterName, Host: host, Port: port, Advertise: b.cfg.ClusterAdvertise}
	if b.cfg.ClusterTLS != nil {
		o.Cluster.TLSConfig = b.cfg.ClusterTLS.Clone()
		o.Cluster.TLSTimeout = 5 // seconds
	}
	b.routes = newRouteGuard(b.cfg.ClusterSecret, b.cfg.ClusterSecretsAccepted, b.cfg.Logger.With("component", "routes"), b.cfg.Registry)
	b.routes.options(o)
	// nats-server starts routing only once its client accept loop runs, which DontListen skips.
	// So a clustered node listens for clients too, on a random loopback port, behind a random
	// token that only this process knows (its own connection is in-process).
	var tok [24]byte
	if _, err := rand.Read(tok[:]); err != nil {
		return err
	}
	o.DontListen = false
	o.Host, o.Port = "127.0.0.1", server.RANDOM_PORT
	o.Authorization = hex.EncodeToString(tok[:])
	b.clientToken = o.Authorization
	for _, p := range b.cfg.ClusterPeers {
		if p == b.cfg.ClusterListen {
			continue
		}
		if _, _, err := splitHostPort(p); err != nil {
			return fmt.Errorf("cluster peer %q: %w", p, err)
		}
		o.Routes = append(o.Routes, b.routes.routeURL(p))
	}
	return nil
}

func splitHostPort(addr string) (string, int, error) {
	host, ps, err := net.SplitHostPort(addr)
	if err != nil {
		return "", 0, err
	}
	port, err := strconv.Atoi(ps)
	if err != nil || port < 0 || port > 65535 {
		return "", 0, fmt.Errorf("bad port %q", ps)
	}
	return host, port, nil
}

// waitJetStream polls until the JetStream API answers: at once alone, and in a cluster once a
// meta leader is elected (a majority of the nodes are up and routed). It logs while it waits.
func (b *Bus) waitJetStream(ctx context.Context) error {
	start := time.Now()
	lastLog := start
	delay := 50 * time.Millisecond
	for {
		actx, cancel := context.WithTimeout(ctx, 5*time.Second)
		_, err := b.js.AccountInfo(actx)
		cancel()
		if err == nil {
			if b.cfg.ClusterListen != "" {
				b.cfg.Logger.Info("jetstream cluster ready", "cluster", b.cfg.ClusterName, "waited", time.Since(start).Round(time.Millisecond))
			}
			return nil
		}
		if ctx.Err() != nil {
			return fmt.Errorf("waiting for jetstream: %w (last error: %v)", context.Cause(ctx), err)
		}
		if b.cfg.ClusterListen == "" && (errors.Is(err, jetstream.ErrJetStreamNotEnabled) || errors.Is(err, jetstream.ErrJetStreamNotEnabledForAccount)) {
			if len(b.cfg.URLs) > 0 { // a server without JetStream: waiting will not help
				return fmt.Errorf("jetstream: %w: the NATS servers at %v do not run JetStream for this account: enable it on every server "+
					"(jetstream { store_dir: ..., sync_interval: always }) and for the account if accounts are configured (README: External NATS)",
					err, RedactURLs(b.cfg.URLs))
			}
			return fmt.Errorf("jetstream: %w", err)
		}
		if time.Since(lastLog) >= 10*time.Second {
			lastLog = time.Now()
			args := []any{"err", err, "waited", time.Since(start).Round(time.Second)}
			if b.routes != nil {
				if r := b.routes.lastRefusal(); r != "" {
					args = append(args, "last_route_refusal", r)
				}
			}
			b.cfg.Logger.Warn("waiting for jetstream (in a cluster: for a majority of the nodes, each with a unique node name and the same cluster_name, cluster_token_file and cluster TLS CA)", args...)
		}
		t := time.NewTimer(delay)
		select {
		case <-t.C:
		case <-ctx.Done():
			t.Stop()
		}
		delay = min(delay*2, time.Second)
	}
}

// Conn is the NATS connection (core subjects: live delivery, wake-ups).
func (b *Bus) Conn() *nats.Conn { return b.nc }

// DirectGetSubject is the subject of the direct-get API of stream. The bus's JetStream context
// uses the default API prefix, "$JS.API".
func DirectGetSubject(stream string) string { return "$JS.API.DIRECT.GET." + stream }

// JS is the JetStream context.
func (b *Bus) JS() jetstream.JetStream { return b.js }

// MsgGetSubject is the JetStream API subject of a (non-direct) message get from stream, which
// only the stream's leader answers: unlike a direct get (any replica, which may lag behind the
// leader's acks), it sees every acked write.
func MsgGetSubject(stream string) string { return "$JS.API.STREAM.MSG.GET." + stream }

// StreamInfoSubject is the JetStream API subject of stream's info, which its leader answers (and
// replicas that count it leaderless); with a subjects_filter it carries per-subject totals.
func StreamInfoSubject(stream string) string { return "$JS.API.STREAM.INFO." + stream }

// KVLatest reads the latest value of key in bucket, and its revision, from the bucket stream's
// leader: unlike jetstream.KeyValue.Get (a direct get, which any replica may answer, a moment
// behind), it sees every acknowledged write, so a read-check-update with the revision (optimistic
// concurrency) does not spin on a lagging replica. ok is false when the key does not exist or was
// deleted. A stream without a leader (an election) does not answer: the request waits for ctx.
func (b *Bus) KVLatest(ctx context.Context, bucket, key string) (value []byte, revision uint64, ok bool, err error) {
	req, _ := json.Marshal(map[string]string{"last_by_subj": "$KV." + bucket + "." + key})
	msg, err := b.nc.RequestWithContext(ctx, MsgGetSubject("KV_"+bucket), req)
	if err != nil {
		return nil, 0, false, err
	}
	var resp struct {
		Message *struct {
			Sequence uint64 `json:"seq"`
			Header   []byte `json:"hdrs"`
			Data     []byte `json:"data"`
		} `json:"message"`
		Error *jetstream.APIError `json:"error"`
	}
	if err := json.Unmarshal(msg.Data, &resp); err != nil {
		return nil, 0, false, fmt.Errorf("message get from %s: %w", bucket, err)
	}
	if resp.Error != nil {
		if resp.Error.ErrorCode == jetstream.JSErrCodeMessageNotFound {
			return nil, 0, false, nil
		}
		return nil, 0, false, fmt.Errorf("message get from %s: %w", bucket, resp.Error)
	}
	if resp.Message == nil {
		return nil, 0, false, fmt.Errorf("message get from %s: empty answer", bucket)
	}
	if len(resp.Message.Header) > 0 {
		if h, err := nats.DecodeHeadersMsg(resp.Message.Header); err == nil && h.Get(kvOperation) != "" {
			return nil, resp.Message.Sequence, false, nil // deleted or purged
		}
	}
	return resp.Message.Data, resp.Message.Sequence, true, nil
}

// MailboxPingSubject is answered by every node's mailbox (with its node name). A node publishes
// a ping right after it subscribes to a device, on the same connection: a server that forwards
// the ping over a route has applied the subscription first (a route carries an account's
// subscription updates and its messages in order, on one connection).
const MailboxPingSubject = "petrel.mailbox.ping"

// RoutedServers is how many other NATS servers the embedded server has routes to now; ok is
// false with external NATS (unknown here).
func (b *Bus) RoutedServers() (n int, ok bool) {
	if b.srv == nil {
		return 0, false
	}
	rz, err := b.srv.Routez(&server.RoutezOptions{})
	if err != nil {
		return 0, false
	}
	names := make(map[string]struct{}, len(rz.Routes))
	for _, r := range rz.Routes {
		names[r.RemoteID] = struct{}{}
	}
	return len(names), true
}

// RouteConns returns, for each server the embedded server routes to now (by its server id, new
// on each start), the id of its newest route connection. A route to the same server that broke
// and came back has a higher id: messages published meanwhile may have been lost (a wake-up for
// a device attached on the other side), and the mailbox re-reads its devices' inboxes. ok is
// false with external NATS.
func (b *Bus) RouteConns() (conns map[string]uint64, ok bool) {
	if b.srv == nil {
		return nil, false
	}
	rz, err := b.srv.Routez(&server.RoutezOptions{})
	if err != nil {
		return nil, false
	}
	conns = make(map[string]uint64, len(rz.Routes))
	for _, r := range rz.Routes {
		conns[r.RemoteID] = max(conns[r.RemoteID], r.Rid)
	}
	return conns, true
}

// MailboxPeers is how many other NATS servers have a subscriber for MailboxPingSubject now, as
// the embedded server knows from its routes: the nodes whose mailbox runs. A node that is routed
// but still starting (catching up, running migrations) has no mailbox yet, so it has no senders
// either. ok is false with external NATS. The caller's own mailbox must be subscribed.
func (b *Bus) MailboxPeers() (n int, ok bool) {
	if b.srv == nil {
		return 0, false
	}
	// One matching subscription per route that carries a remote subscriber, plus this node's own.
	return max(b.srv.GlobalAccount().Interest(MailboxPingSubject)-1, 0), true
}

// Clustered reports whether other nodes may share this bus: external NATS, or an embedded
// server with cluster routes configured. A node alone knows every connection of its devices.
func (b *Bus) Clustered() bool { return len(b.cfg.URLs) > 0 || b.cfg.ClusterListen != "" }

// Replicas is the replication factor of the streams (1: a direct get's answer is the leader's).
func (b *Bus) Replicas() int { return b.cfg.Replicas }

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

// Close drains the connection and stops the embedded server. Safe to call more than once, and
// while other goroutines still ask the bus about its server (a killed node's mailbox watching its
// routes): b.srv stays set, a shut-down server answers with nothing routed.
func (b *Bus) Close() {
	b.closeSingle()
	if b.nc != nil {
		b.nc.Close()
	}
	if b.srv != nil {
		b.srv.Shutdown()
		b.srv.WaitForShutdown()
	}
}

// InterestForTest reports whether the embedded server knows a subscriber for subject, on this
// node or (through routes) on another. Cluster tests wait on it before they expect a live path.
// It refuses to run outside tests.
func (b *Bus) InterestForTest(subject string) (bool, error) {
	if !testing.Testing() {
		return false, errors.New("InterestForTest called outside a test")
	}
	if b.srv == nil {
		return false, errors.New("no embedded server")
	}
	return b.srv.GlobalAccount().SubscriptionInterest(subject), nil
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

// StreamLeaderForTest returns the leader of stream as this node's embedded server sees it (""
// for none): a follower still names a dead leader until it has elected another. Cluster tests
// use it to prove something happened before an election. It refuses to run outside tests.
func (b *Bus) StreamLeaderForTest(stream string) (string, error) {
	if !testing.Testing() {
		return "", errors.New("StreamLeaderForTest called outside a test")
	}
	if b.srv == nil {
		return "", errors.New("no embedded server")
	}
	d, err := b.srv.JszAccount(&server.JSzOptions{Account: b.srv.GlobalAccount().GetName(), Streams: true})
	if err != nil {
		return "", err
	}
	for _, sd := range d.Streams {
		if sd.Name == stream {
			if sd.Cluster == nil {
				return "", nil
			}
			return sd.Cluster.Leader, nil
		}
	}
	return "", fmt.Errorf("no stream %s on this node", stream)
}
