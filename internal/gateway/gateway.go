// Copyright 2026 The Petrel Authors
// SPDX-License-Identifier: Apache-2.0

// Package gateway accepts device WebSocket connections at /v1/connect (subprotocol "petrel.v1",
// compression off), runs the challenge–response handshake, and turns frames into directory,
// messaging and mailbox calls: each connection state has a table of frame handlers keyed by the
// frame's body type (handlers.go). The gateway is the transport; who gets an envelope is the
// messaging service's decision. It is event-driven: connections live in nbio's pollers, and a goroutine runs for
// a connection only while one of its frames is being handled, so an idle connection costs a small
// struct and no buffers.
//
// A frame's handler never waits on the network for a send: sends complete asynchronously and their
// results are written when ready, so a connection keeps reading (and acking) while its own sends are
// in flight.
package gateway

import (
	"context"
	cryptorand "crypto/rand"
	"errors"
	"fmt"
	"log/slog"
	"math/rand/v2"
	"net"
	"net/http"
	"slices"
	"strconv"
	"strings"
	"sync"
	"sync/atomic"
	"syscall"
	"time"

	"github.com/nats-io/nats.go"
	"github.com/prometheus/client_golang/prometheus"
	"golang.org/x/time/rate"

	"github.com/petrelchat/petrel/internal/directory"
	"github.com/petrelchat/petrel/internal/groups"
	"github.com/petrelchat/petrel/internal/keyrate"
	"github.com/petrelchat/petrel/internal/mailbox"
	"github.com/petrelchat/petrel/internal/messaging"
	"github.com/petrelchat/petrel/internal/presence"
	pb "github.com/petrelchat/petrel/proto/petrel/v1"
	"github.com/petrelchat/petrel/third_party/nbio"
	"github.com/petrelchat/petrel/third_party/nbio/nbhttp"
	"github.com/petrelchat/petrel/third_party/nbio/nbhttp/websocket"
)

// Defaults of the pending-socket slots (Config.MaxPendingUpgrades, MaxPendingUpgradesPerIP). One
// address may hold a quarter of the slots: a load generator or a busy NAT connects a few hundred
// sockets at once, and an attacker needs four addresses to fill them.
const (
	DefaultMaxPendingUpgrades      = 1024
	DefaultMaxPendingUpgradesPerIP = 256
)

// Config tunes the gateway.
type Config struct {
	// MaxFrameBytes is the largest frame accepted. Default: 256 KiB.
	MaxFrameBytes int
	// HandshakeTimeout is how long a new connection has to authenticate. Default: 10s.
	HandshakeTimeout time.Duration
	// IdleTimeout closes a connection that sends nothing (clients ping) for this long. Default: 120s.
	IdleTimeout time.Duration
	// MaxConns is the most connections held; beyond it upgrades get 503 with Retry-After. Required.
	MaxConns int
	// FramesPerSecond and FrameBurst rate-limit each connection. Defaults: 2000 and 4000.
	FramesPerSecond float64
	FrameBurst      int
	// MaxInflightSends bounds the unacked sends of one connection. Default: 1024.
	MaxInflightSends int
	// QueuedFrames and QueuedBytes bound what one authenticated connection may have received and
	// not yet had handled: messages queued, and bytes (each frame's payload plus 128). Past either
	// the connection is closed (1008). Defaults: 4096 and 16 MiB.
	QueuedFrames int
	QueuedBytes  int64
	// PreauthQueuedFrames and PreauthQueuedBytes are the same bounds before the connection has
	// authenticated. Defaults: 8 and MaxFrameBytes + 64 KiB (one frame of any size).
	PreauthQueuedFrames int
	PreauthQueuedBytes  int64
	// InboundBytes bounds the bytes all connections together hold that way; unauthenticated ones
	// may use half. Past it a connection asking for more is closed with 1013 (try again later).
	// Default: 256 MiB.
	InboundBytes int64
	// MaxPendingUpgrades bounds the sockets of the public listener that have not (yet) upgraded to
	// a WebSocket: HTTP requests in progress, keep-alive connections, slow or stalled clients.
	// They have their own slots, apart from MaxConns, so they never take an established device's.
	// Past it new sockets are closed at once. Default: DefaultMaxPendingUpgrades.
	MaxPendingUpgrades int
	// MaxPendingUpgradesPerIP bounds those sockets per client address (per /64 for IPv6).
	// Default: DefaultMaxPendingUpgradesPerIP.
	MaxPendingUpgradesPerIP int
	// MaxHeaderBytes bounds an HTTP request's line and headers (431 past it). Default: 16 KiB.
	MaxHeaderBytes int
	// MaxBodyBytes bounds an HTTP request body on the public listener, checked from the headers
	// before any of the body is read (413 past it; chunked bodies are refused with 411). Default:
	// 64 KiB.
	MaxBodyBytes int
	// RegistrationsPerSecond rate-limits registrations node-wide. Default: 20 (burst 100).
	RegistrationsPerSecond float64
	// Registration limits Register attempts per address and refused handshakes per connection.
	Registration RegistrationLimits
	// MaxPendingLinks bounds the connections of new devices waiting for their link to be approved
	// (link.go); past it StartLink is refused with RATE_LIMITED. Default: DefaultMaxPendingLinks.
	MaxPendingLinks int
	// MaxDevices is the directory's limit of devices per account, quoted in TOO_MANY_DEVICES
	// answers. Default: directory.DefaultMaxDevices.
	MaxDevices int
	// Groups is the groups service (group frames); nil: group frames are refused and group sends
	// are UNKNOWN_GROUP.
	Groups *groups.Service
	// Bus is the node's bus connection, for the control channel between nodes (control.go). Nil:
	// this gateway is alone (events are handled locally).
	Bus *nats.Conn
	// DrainRate is how many connections a second Drain and Move send away: each connection gets
	// its GoAway at its own moment, the moments spread evenly (in random order) over
	// connections/DrainRate seconds, so their reconnects reach the other nodes spread over time,
	// not as a storm. The spread takes at most half of the time Drain or Move is given; what is
	// left then is sent away at once. Default: 1000.
	DrainRate float64
	// Node is this node's name (shown in Challenge).
	Node string
	// Presence is the node's presence service (presence.go). Nil: presence frames are refused.
	Presence *presence.Service
	// Nodes, if set, returns the public URLs of the cluster's nodes that Welcome tells clients.
	Nodes    func() []string
	Logger   *slog.Logger
	Registry prometheus.Registerer

	// SendObserver, if set, is told the outcome of every 1:1 and group send (observe.go).
	SendObserver SendObserver
}

// WithDefaults returns c with every unset field at the default New gives it, so that callers can
// show the effective values.
func (c Config) WithDefaults() Config {
	c.setDefaults()
	return c
}

func (c *Config) setDefaults() {
	if c.MaxFrameBytes == 0 {
		c.MaxFrameBytes = pb.DefaultMaxFrameBytes
	}
	if c.HandshakeTimeout == 0 {
		c.HandshakeTimeout = 10 * time.Second
	}
	if c.IdleTimeout == 0 {
		c.IdleTimeout = 120 * time.Second
	}
	if c.FramesPerSecond == 0 {
		c.FramesPerSecond = 2000
	}
	if c.FrameBurst == 0 {
		c.FrameBurst = 4000
	}
	if c.MaxInflightSends == 0 {
		c.MaxInflightSends = 1024
	}
	if c.RegistrationsPerSecond == 0 {
		c.RegistrationsPerSecond = 20
	}
	if c.QueuedFrames == 0 {
		c.QueuedFrames = 4096
	}
	if c.QueuedBytes == 0 {
		c.QueuedBytes = 16 << 20
	}
	if c.PreauthQueuedFrames == 0 {
		c.PreauthQueuedFrames = 8
	}
	if c.PreauthQueuedBytes == 0 {
		c.PreauthQueuedBytes = int64(c.MaxFrameBytes) + 64<<10
	}
	if c.InboundBytes == 0 {
		c.InboundBytes = 256 << 20
	}
	if c.DrainRate <= 0 {
		c.DrainRate = 1000
	}
	if c.MaxPendingUpgrades == 0 {
		c.MaxPendingUpgrades = DefaultMaxPendingUpgrades
	}
	if c.MaxPendingUpgradesPerIP == 0 {
		c.MaxPendingUpgradesPerIP = DefaultMaxPendingUpgradesPerIP
	}
	if c.MaxHeaderBytes == 0 {
		c.MaxHeaderBytes = 16 << 10
	}
	if c.MaxBodyBytes == 0 {
		c.MaxBodyBytes = 64 << 10
	}
	if c.MaxPendingLinks == 0 {
		c.MaxPendingLinks = DefaultMaxPendingLinks
	}
	if c.MaxDevices == 0 {
		c.MaxDevices = directory.DefaultMaxDevices
	}
	if c.Logger == nil {
		c.Logger = slog.Default()
	}
}

// Gateway serves device connections.
type Gateway struct {
	cfg      Config
	dir      *directory.Directory
	mb       *mailbox.Mailbox
	msg      *messaging.Service // recipient resolution (the Send path)
	log      *slog.Logger
	metrics  *metrics
	upgrader *websocket.Upgrader
	regLimit *rate.Limiter
	errLog   *errorLog                // rate-limits the log lines of errors answered to clients
	reg      *regGuard                // per-IP and per-connection handshake limits (limits.go)
	devOps   *keyrate.Limiter[string] // device-management frames per device (devices.go)
	// recoverOps limits Recover attempts per account name (recover.go).
	recoverOps *keyrate.Limiter[string]
	grp        *groups.Service          // nil without groups (groups.go)
	groupOps   *keyrate.Limiter[string] // group frames per device (groups.go)

	groupMetrics *groupMetrics
	ext          *extras // presence, settings, ephemeral sends (presence.go)

	draining atomic.Bool
	moving   atomic.Bool // the node lost its cluster quorum: clients are sent elsewhere (Move)
	count    atomic.Int64
	inflight inflight // sends not yet answered

	inbound   atomic.Int64 // inbound bytes held by all connections (admission.go)
	upgrading sync.Map     // *nbio.Conn -> *conn: upgraded, reader not installed yet
	pre       *preUpgrade  // sockets that have not upgraded (preupgrade.go)

	mu sync.Mutex
	// conns are the open connections, each at its index (conn.idx); guarded by mu. A slice, not
	// a map: 8 bytes a connection instead of ~140 (addConn, removeConn).
	conns []*conn
	links map[string]*conn // link id → the new device's waiting connection; guarded by mu

	pendingLinks atomic.Int64         // linking connections, and StartLinks in progress (link.go)
	ctlSubs      []*nats.Subscription // the control channel (control.go)
	seenq        chan string          // last-seen updates to make (control.go)
	seenStop     chan struct{}
	seenOnce     sync.Once
	seenWG       sync.WaitGroup

	// clockBase is the origin of the gateway clock (clock): connection deadlines are on it, so a
	// frame costs a clock read and an atomic store instead of a timer reset.
	clockBase time.Time
	sweepStop chan struct{}
	sweepDone chan struct{}

	flushq       chan *conn // connections with frames to write (writer.go)
	flushWG      sync.WaitGroup
	flushMu      sync.RWMutex // guards flushStopped and the closing of flushq
	flushStopped bool
	closeOnce    sync.Once
}

// New returns a gateway. It does no I/O.
func New(dir *directory.Directory, mb *mailbox.Mailbox, msg *messaging.Service, cfg Config) *Gateway {
	cfg.setDefaults()
	routeNBIOLogs(cfg.Logger)
	g := &Gateway{
		cfg:        cfg,
		dir:        dir,
		mb:         mb,
		msg:        msg,
		log:        cfg.Logger,
		metrics:    newMetrics(cfg.Registry),
		pre:        newPreUpgrade(cfg),
		regLimit:   rate.NewLimiter(rate.Limit(cfg.RegistrationsPerSecond), 100),
		errLog:     newErrorLog(),
		reg:        newRegGuard(cfg.Registration, cfg.Registry),
		devOps:     keyrate.New[string](keyrate.Config{Rate: deviceOpsPerMinute / 60, Burst: deviceOpsBurst, MaxKeys: 100_000}),
		grp:        cfg.Groups,
		recoverOps: newRecoverLimiter(),
		groupOps:   newGroupOps(),
		ext:        newExtras(cfg),
		links:      map[string]*conn{},

		groupMetrics: newGroupMetrics(cfg.Registry),
		seenStop:     make(chan struct{}),
	}
	if cfg.Registry != nil {
		cfg.Registry.MustRegister(
			prometheus.NewGaugeFunc(prometheus.GaugeOpts{Name: "petrel_gateway_inbound_bytes", Help: "Inbound bytes received and not yet handled, all connections (admission control)."},
				func() float64 { return float64(g.inbound.Load()) }),
			prometheus.NewGaugeFunc(prometheus.GaugeOpts{Name: "petrel_gateway_pending_upgrades", Help: "Sockets of the public listener that have not upgraded to a WebSocket."},
				func() float64 { return float64(g.pre.pending()) }),
			prometheus.NewGaugeFunc(prometheus.GaugeOpts{Name: "petrel_gateway_pending_links", Help: "Connections of new devices waiting for their link to be approved (max_pending_links bounds them)."},
				func() float64 { return float64(g.pendingLinks.Load()) }),
		)
	}
	u := websocket.NewUpgrader()
	u.Subprotocols = []string{pb.Subprotocol}
	u.EnableCompression(false) // ciphertext does not compress; compression next to secrets invites CRIME-style leaks
	u.MessageLengthLimit = cfg.MaxFrameBytes
	u.CheckOrigin = func(*http.Request) bool { return true } // auth is by device signature, not cookies
	// No nbio read deadline after the upgrade: sweep enforces handshake_timeout and idle_timeout,
	// without a timer per connection or a timer reset per frame.
	u.KeepaliveTime = 0
	u.OnOpen(g.onOpen)
	u.OnClose(g.onClose)
	// Frames are read by the connection's wsReader, never by nbio's parser (no OnMessage). Should
	// nbio's parser ever see a frame, it must not answer it either.
	u.SetPingHandler(func(*websocket.Conn, string) {})
	g.upgrader = u
	g.startFlushers()
	g.clockBase = time.Now()
	g.sweepStop, g.sweepDone = make(chan struct{}), make(chan struct{})
	go g.sweep()
	return g
}

// Close stops the control channel, the flushers and the deadline sweep. Call it after the HTTP
// engine has stopped.
func (g *Gateway) Close() {
	g.stopControl()
	g.stopFlushers()
	g.closeOnce.Do(func() { close(g.sweepStop) })
	<-g.sweepDone
}

// clock is the gateway clock: nanoseconds since clockBase (monotonic). Deadlines are read from it
// where they are set, never from a value the sweep last stored: a sweep held up (its closes detach
// devices, which can wait on a loaded bus) would leave such a value stale, and every deadline set
// meanwhile would fall due early, all at once when the sweep comes back: a mass close of
// connections whose clients kept pinging. (One clock read per frame; allow reads it too.)
func (g *Gateway) clock() int64 { return int64(time.Since(g.clockBase)) }

// sweepEvery is how often sweep runs: a connection is closed between its deadline and one period
// after it.
func (g *Gateway) sweepEvery() time.Duration {
	return max(min(g.cfg.HandshakeTimeout, g.cfg.IdleTimeout)/8, 10*time.Millisecond)
}

// sweep advances the gateway clock and closes connections past their deadline (no handshake in
// time, or idle too long). One goroutine for the node replaces a timer per connection.
func (g *Gateway) sweep() {
	defer close(g.sweepDone)
	t := time.NewTicker(g.sweepEvery())
	defer t.Stop()
	var expired []*conn
	var lastUnreadLog time.Time
	for {
		select {
		case <-t.C:
		case <-g.sweepStop:
			return
		}
		if h := sweepHook.Load(); h != nil {
			(*h)()
		}
		now := g.clock()
		expired = expired[:0]
		g.mu.Lock()
		for _, c := range g.conns {
			if d := c.deadline.Load(); d != 0 && d <= now {
				expired = append(expired, c)
			}
		}
		g.mu.Unlock()
		spared := 0
		for _, c := range expired {
			switch c.state.Load() {
			case stateLinking:
				c.linkExpired() // its deadline is the link's expiry: told, not just closed
				continue
			case stateHandshake:
				g.metrics.timeouts.WithLabelValues("handshake").Inc()
			default:
				// Bytes waiting in the socket were sent by the client: it is not idle, the node
				// has not read them yet (one poller reads every socket, and it falls behind when
				// the cores are starved). Closing it would only add a reconnect to the overload.
				if socketUnread(c.nbc) > 0 {
					c.deadline.Store(now + int64(g.cfg.IdleTimeout))
					spared++
					continue
				}
				g.metrics.timeouts.WithLabelValues("idle").Inc()
			}
			c.closeNow()
		}
		clear(expired)
		if spared > 0 {
			g.metrics.idleUnread.Add(float64(spared))
			if t := time.Now(); t.Sub(lastUnreadLog) >= time.Minute {
				lastUnreadLog = t
				g.log.Warn("connections past idle_timeout had sent bytes this node has not read yet: kept open; the node is not keeping up with its sockets", "connections", spared)
			}
		}
	}
}

// MaxFrameBytes is the configured frame limit.
func (g *Gateway) MaxFrameBytes() int { return g.cfg.MaxFrameBytes }

// Conns is the number of open connections.
func (g *Gateway) Conns() int { return int(g.count.Load()) }

// ServeHTTP upgrades GET /v1/connect. Near the connection limit, or while draining, it answers
// 503 with Retry-After instead of accepting, so the process never fails inside accept.
func (g *Gateway) ServeHTTP(w http.ResponseWriter, r *http.Request) {
	if g.draining.Load() {
		g.metrics.refused.WithLabelValues("draining").Inc()
		w.Header().Set("Retry-After", strconv.Itoa(1+rand.IntN(5)))
		http.Error(w, "server is shutting down, reconnect elsewhere", http.StatusServiceUnavailable)
		return
	}
	if g.moving.Load() {
		g.metrics.refused.WithLabelValues("no_quorum").Inc()
		w.Header().Set("Retry-After", strconv.Itoa(1+rand.IntN(5)))
		http.Error(w, "this node cannot reach its cluster's majority, connect to another node", http.StatusServiceUnavailable)
		return
	}
	if !isUpgrade(r) || !hasSubprotocol(r) {
		http.Error(w, "expected a WebSocket upgrade with subprotocol "+pb.Subprotocol, http.StatusBadRequest)
		return
	}
	// Reserve a slot before upgrading, so concurrent upgrades cannot overshoot MaxConns; onClose
	// gives it back.
	if g.count.Add(1) > int64(g.cfg.MaxConns) {
		g.count.Add(-1)
		g.metrics.refused.WithLabelValues("full").Inc()
		w.Header().Set("Retry-After", strconv.Itoa(1+rand.IntN(10)))
		http.Error(w, "server is at its connection limit", http.StatusServiceUnavailable)
		return
	}
	// The connection exists before the upgrade, so that the reader is in place before the first
	// frame can arrive (admission.go, feed).
	res, ok := w.(*nbhttp.Response)
	var nbc *nbio.Conn
	if ok && res.Parser != nil {
		nbc = nbioConn(res.Parser.Conn)
	}
	if nbc == nil {
		g.count.Add(-1)
		http.Error(w, "not served by the gateway's engine", http.StatusInternalServerError)
		return
	}
	c := g.newConn(nbc)
	g.upgrading.Store(nbc, c)
	ws, err := g.upgrader.Upgrade(w, r, nil)
	if err != nil {
		g.upgrading.Delete(nbc)
		g.count.Add(-1)
		g.metrics.refused.WithLabelValues("upgrade").Inc()
		return
	}
	if res.Parser.ParserCloser == nbhttp.ParserCloser(ws) {
		// A TLS connection: its HTTP parser runs this handler in line and hands what follows the
		// request (in the same chunk too) to its ParserCloser. The reader takes over at once, so
		// no frame ever reaches nbio's own WebSocket parser. (A plain socket's reader is installed
		// by the poller with its next data: feed.)
		g.upgrading.Delete(nbc)
		c.rd.c, c.rd.wsc = c, ws
		res.Parser.ParserCloser = &c.rd
		g.pre.upgraded(r.RemoteAddr, nil)
		return
	}
	g.pre.upgraded(r.RemoteAddr, nbc)
}

func isUpgrade(r *http.Request) bool {
	return headerHasToken(r, "Upgrade", func(p string) bool { return strings.EqualFold(p, "websocket") })
}

// hasSubprotocol: subprotocol tokens are case-sensitive (RFC 6455).
func hasSubprotocol(r *http.Request) bool {
	return headerHasToken(r, "Sec-Websocket-Protocol", func(p string) bool { return p == pb.Subprotocol })
}

// headerHasToken reports whether a comma-separated header lists a token that match accepts.
func headerHasToken(r *http.Request, name string, match func(string) bool) bool {
	for _, v := range r.Header.Values(name) {
		for p := range strings.SplitSeq(v, ",") {
			if match(strings.TrimSpace(p)) {
				return true
			}
		}
	}
	return false
}

// addConnLocked adds c to g.conns. Call with g.mu held.
func (g *Gateway) addConnLocked(c *conn) {
	c.idx = int32(len(g.conns)) // at most max_connections, far below 2^31
	g.conns = append(g.conns, c)
}

// removeConnLocked removes c from g.conns (the last one takes its place) and reports whether it
// was there. Call with g.mu held.
func (g *Gateway) removeConnLocked(c *conn) bool {
	i := int(c.idx)
	if i < 0 || i >= len(g.conns) || g.conns[i] != c {
		return false
	}
	last := len(g.conns) - 1
	g.conns[i] = g.conns[last]
	g.conns[i].idx = int32(i)
	g.conns[last] = nil
	g.conns = g.conns[:last]
	c.idx = -1
	if cap(g.conns) > 1024 && len(g.conns) < cap(g.conns)/4 {
		g.conns = slices.Clip(slices.Clone(g.conns)) // give back what a burst grew
	}
	return true
}

// newConn makes the state of a connection about to be upgraded.
func (g *Gateway) newConn(nbc *nbio.Conn) *conn {
	c := &conn{g: g, nbc: nbc, idx: -1}
	c.id = newErrorID()
	c.tokens, c.tokensTime = float64(g.cfg.FrameBurst), time.Since(g.clockBase)
	return c
}

func (g *Gateway) onOpen(ws *websocket.Conn) {
	v, ok := g.upgrading.Load(nbioConn(ws.UnderlayerConn()))
	if !ok {
		ws.Close()
		return
	}
	c := v.(*conn)
	c.wmu.Lock() // flushLocked reads ws under wmu: a frame may be answered before this runs
	c.ws = ws
	c.wmu.Unlock()
	hs := new(handshake)
	if _, err := cryptorand.Read(hs.nonce[:]); err != nil {
		ws.Close()
		return
	}
	c.hs = hs
	ws.SetSession(c)
	g.mu.Lock()
	g.addConnLocked(c)
	g.mu.Unlock()
	g.metrics.conns.Inc() // the slot was reserved in ServeHTTP
	c.deadline.Store(g.clock() + int64(g.cfg.HandshakeTimeout))
	c.write(&pb.Frame{Body: &pb.Frame_Challenge{Challenge: &pb.Challenge{
		Nonce:        hs.nonce[:],
		ServerTimeMs: time.Now().UnixMilli(),
		Node:         g.cfg.Node,
	}}})
}

func (g *Gateway) onClose(ws *websocket.Conn, _ error) {
	c, ok := ws.Session().(*conn)
	if !ok {
		return
	}
	g.upgrading.Delete(c.nbc) // if no frame ever came
	c.releaseAll()
	g.mu.Lock()
	present := g.removeConnLocked(c)
	g.mu.Unlock()
	if !present {
		return
	}
	c.closeWriter()
	c.shutdown() // detach first: a connection no longer counted is no longer attached
	g.count.Add(-1)
	g.metrics.conns.Dec()
}

// Drain is the lame-duck shutdown of the gateway: refuse new connections, send every client away
// with a GoAway (spread over time, see Config.DrainRate, to avoid a reconnect storm), wait for
// in-flight sends to be answered, then close what is left. It returns when done or when ctx ends.
func (g *Gateway) Drain(ctx context.Context) error {
	g.draining.Store(true)
	g.sendAway(ctx, pb.ErrorCode_ERROR_CODE_SHUTTING_DOWN, "server is shutting down; reconnect", "drain")
	var err error
	select {
	case <-g.inflight.idle():
	case <-ctx.Done():
		err = fmt.Errorf("waiting for in-flight sends: %w", context.Cause(ctx))
	}
	g.closeAll()
	return err
}

// Move sends every client to another node, for a node that lost its cluster quorum and so cannot
// store or ack anything through the store path: new connections are refused (503 with
// Retry-After) until Resume, every connection gets a GoAway (UNAVAILABLE; spread over time as in
// Drain), in-flight sends are waited for (they end acked or UNAVAILABLE within the mailbox's
// store timeout) until ctx ends, then the connections are closed. It returns the number of
// connections told to move.
func (g *Gateway) Move(ctx context.Context) int {
	g.moving.Store(true)
	n := g.sendAway(ctx, pb.ErrorCode_ERROR_CODE_UNAVAILABLE, "this node cannot reach its cluster's majority; reconnect to another node", "no_quorum")
	select {
	case <-g.inflight.idle():
	case <-ctx.Done():
	}
	g.closeAll()
	return n
}

// drainTick is how often sendAway sends the GoAways that are due.
const drainTick = 10 * time.Millisecond

// sendAway sends a GoAway to every connection, in random order, spread evenly over
// connections/DrainRate (at most half of the time left before ctx's deadline; at once when ctx
// ends). A connection that authenticates meanwhile is refused by the caller's flag (draining or
// moving) before it gets here. It returns how many were sent away.
func (g *Gateway) sendAway(ctx context.Context, reason pb.ErrorCode, msg, label string) int {
	g.mu.Lock()
	conns := slices.Clone(g.conns)
	g.mu.Unlock()
	n := len(conns)
	rand.Shuffle(n, func(i, j int) { conns[i], conns[j] = conns[j], conns[i] })
	window := time.Duration(float64(n) / g.cfg.DrainRate * float64(time.Second))
	if dl, ok := ctx.Deadline(); ok {
		window = min(window, time.Until(dl)/2)
	}
	counter := g.metrics.sentAway.WithLabelValues(label)
	start := time.Now()
	var tick *time.Ticker
	for sent := 0; sent < n; {
		due := n
		if window > 0 {
			due = min(n, 1+int(float64(n)*float64(time.Since(start))/float64(window)))
		}
		for ; sent < due; sent++ {
			conns[sent].write(&pb.Frame{Body: &pb.Frame_GoAway{GoAway: &pb.GoAway{
				Reason: reason,
				// The server spreads the moves; the hint only keeps a client from coming back
				// within the same instant as the ones sent away with it.
				RetryAfterMs: uint32(50 + rand.IntN(200)),
				Message:      msg,
			}}})
			counter.Inc()
		}
		if sent == n {
			break
		}
		if tick == nil {
			tick = time.NewTicker(drainTick)
			defer tick.Stop()
		}
		select {
		case <-tick.C:
		case <-ctx.Done():
			window = 0 // out of time: the rest at once
		}
	}
	return n
}

// closeAll closes every connection.
func (g *Gateway) closeAll() {
	g.mu.Lock()
	conns := slices.Clone(g.conns)
	g.mu.Unlock()
	for _, c := range conns {
		c.close()
	}
}

// Resume accepts connections again after Move.
func (g *Gateway) Resume() { g.moving.Store(false) }

// inflight counts sends not yet answered, for Drain to wait until none is left. (Not a
// sync.WaitGroup: sends go on starting while Drain waits, and a WaitGroup forbids an Add from zero
// concurrent with Wait.)
type inflight struct {
	n    atomic.Int64
	mu   sync.Mutex
	zero chan struct{} // closed when n reaches zero while idle waits; guarded by mu
}

func (f *inflight) add() { f.n.Add(1) }

func (f *inflight) done() {
	if f.n.Add(-1) != 0 {
		return
	}
	f.mu.Lock()
	if f.zero != nil && f.n.Load() == 0 { // not if another send started meanwhile
		close(f.zero)
		f.zero = nil
	}
	f.mu.Unlock()
}

// idle returns a channel that is closed once no send is in flight.
func (f *inflight) idle() <-chan struct{} {
	f.mu.Lock()
	defer f.mu.Unlock()
	if f.n.Load() == 0 {
		ch := make(chan struct{})
		close(ch)
		return ch
	}
	if f.zero == nil {
		f.zero = make(chan struct{})
	}
	return f.zero
}

// Ready reports whether the gateway accepts connections.
func (g *Gateway) Ready() bool { return !g.draining.Load() }

// Engine is the public listener: nbio's HTTP engine and, with TLS, the acceptor that runs TLS
// handshakes (tls.go) before handing connections to the engine's pollers.
type Engine struct {
	*nbhttp.Engine
	tls  *tlsServer
	jobs *workers
}

// Start starts the pollers and the listener.
func (e *Engine) Start() error {
	if err := e.Engine.Start(); err != nil {
		return err
	}
	if e.tls != nil {
		if err := e.tls.start(); err != nil {
			e.Engine.Stop()
			e.jobs.stop()
			return err
		}
	}
	return nil
}

// Stop closes the listener, ends handshakes in progress and closes every connection.
func (e *Engine) Stop() {
	if e.tls != nil {
		e.tls.stop()
	}
	e.Engine.Stop()
	e.jobs.stop()
}

// maxIdleWorkers bounds the goroutines that wait parked for the engine's next job (workers).
const maxIdleWorkers = 1024

// retireWorkersEvery: a goroutine parked this long without a job exits (workers.retire).
const retireWorkersEvery = 30 * time.Second

// NewEngine builds the engine that serves handler on addr, with TLS when tlsOpts is set.
// bound, if not nil, is told the listener's address (port 0 picks one). The engine always listens
// with listen: callers must not replace Engine.Listen, or accepted sockets get TCP keepalive back.
func NewEngine(name, addr string, tlsOpts *TLS, maxConns int, handler http.Handler, bound func(net.Addr)) (*Engine, error) {
	jobs := newWorkers(maxIdleWorkers, retireWorkersEvery)
	conf := nbhttp.Config{
		Name:                    name,
		ServerExecutor:          jobs.Go,
		Network:                 "tcp",
		MaxLoad:                 maxConns + 64,
		Handler:                 handler,
		ReleaseWebsocketPayload: false,
		MaxWriteBufferSize:      8 << 20, // a client that stops reading is cut off, not buffered forever
		ReadBufferSize:          16 << 10,
		Listen: func(network, addr string) (net.Listener, error) {
			ln, err := listen(network, addr)
			if err == nil && bound != nil {
				bound(ln.Addr())
			}
			return ln, err
		},
	}
	if tlsOpts == nil {
		conf.Addrs = []string{addr}
	} // with TLS the engine has no listener of its own: tlsServer accepts
	ne := nbhttp.NewEngine(conf)
	ne.OnOpen(func(c net.Conn) {
		setCloseOnExec(c)
		raceHandoff()
	})
	instrumentForRace(ne)
	e := &Engine{Engine: ne, jobs: jobs}
	if tlsOpts != nil {
		ts, err := newTLSServer(ne, conf.Network, addr, bound, tlsOpts)
		if err != nil {
			return nil, err
		}
		e.tls = ts
	}
	return e, nil
}

// listen opens the engine's listening socket. Accepted connections get no TCP keepalive: Go's
// default (a probe every 15 s on an idle connection) would cost a million idle connections
// ~66,000 probes a second, as many answers, and woken mobile radios, and it takes four system
// calls per accept. Liveness is the application's: clients ping, and idle_timeout closes a
// connection that has gone quiet.
func listen(network, addr string) (net.Listener, error) {
	lc := net.ListenConfig{KeepAlive: -1}
	return lc.Listen(context.Background(), network, addr)
}

// setCloseOnExec marks an accepted socket close-on-exec. nbio duplicates each accepted socket with
// dup(2), which drops the flag, so a process forked from the server (a hook, a worker) would
// inherit live client sockets and keep them open.
func setCloseOnExec(c net.Conn) {
	for range 4 {
		switch v := c.(type) {
		case *nbio.Conn:
			if fd := v.Hash(); fd > 0 {
				syscall.CloseOnExec(fd)
			}
			return
		case interface{ Conn() net.Conn }:
			c = v.Conn()
		default:
			return
		}
	}
}

// errorFrame maps an error to a wire Error: its stable code, a short fixed message for that code
// (publicMessage) and errID. The error's own text never reaches the client: it may carry storage
// internals (NATS errors, subjects, record keys); the caller logs it under errID instead (see
// conn.writeError). A codedError's or messaging.Error's message is fixed text and is sent as is.
func errorFrame(id uint64, err error, errID string) *pb.Frame {
	code, retry := codeFor(err)
	msg := publicMessage(code)
	var ce *codedError
	var me *messaging.Error
	switch {
	case errors.As(err, &ce) && ce.msg != "":
		msg = ce.msg
	case errors.As(err, &me) && me.Msg != "":
		msg = me.Msg
	}
	return &pb.Frame{Id: id, Body: &pb.Frame_Error{Error: &pb.Error{Code: code, Message: msg, RetryAfterMs: retry, ErrorId: errID}}}
}

// publicMessage is the fixed client-facing text of a code.
func publicMessage(code pb.ErrorCode) string {
	switch code {
	case pb.ErrorCode_ERROR_CODE_UNKNOWN_USER:
		return "unknown user"
	case pb.ErrorCode_ERROR_CODE_UNKNOWN_DEVICE:
		return "unknown device: fetch the recipient's devices again (GetBundle)"
	case pb.ErrorCode_ERROR_CODE_STALE_DEVICES:
		return "the device list is stale: fetch the recipient's devices again (GetBundle)"
	case pb.ErrorCode_ERROR_CODE_AUTH_FAILED:
		return "authentication failed"
	case pb.ErrorCode_ERROR_CODE_NAME_TAKEN:
		return "name taken"
	case pb.ErrorCode_ERROR_CODE_INVALID_NAME:
		return "invalid name: use 1-32 of a-z 0-9 _ . - starting with a letter or digit"
	case pb.ErrorCode_ERROR_CODE_REGISTRATION_CLOSED:
		return "registration is closed"
	case pb.ErrorCode_ERROR_CODE_INVALID_INVITE:
		return "invalid or used invite code"
	case pb.ErrorCode_ERROR_CODE_INVALID_KEYS:
		return "invalid keys: a key, prekey or signature does not verify"
	case pb.ErrorCode_ERROR_CODE_INVALID_REQUEST:
		return "invalid request: a field is missing or out of range"
	case pb.ErrorCode_ERROR_CODE_UNAVAILABLE:
		return "storage unavailable: nothing was acked, retry later"
	case pb.ErrorCode_ERROR_CODE_RATE_LIMITED:
		return "rate limited: retry later"
	case pb.ErrorCode_ERROR_CODE_SHUTTING_DOWN:
		return "server is shutting down: reconnect"
	case pb.ErrorCode_ERROR_CODE_PERMISSION_DENIED:
		return "permission denied"
	case pb.ErrorCode_ERROR_CODE_INBOX_FULL:
		return "the recipient's inbox is full"
	case pb.ErrorCode_ERROR_CODE_DEVICE_REMOVED:
		return "this device was removed from its account"
	case pb.ErrorCode_ERROR_CODE_TOO_MANY_DEVICES:
		return "the account has as many devices as it may: remove one with petrel devices remove"
	case pb.ErrorCode_ERROR_CODE_LINK_EXPIRED:
		return "the link code is unknown, used or expired: start linking again"
	case pb.ErrorCode_ERROR_CODE_UNKNOWN_GROUP:
		return msgUnknownGroup
	case pb.ErrorCode_ERROR_CODE_GROUP_FULL:
		return "the group has as many members as it may"
	case pb.ErrorCode_ERROR_CODE_STALE_GROUP:
		return msgStaleGroup
	default:
		return "internal error"
	}
}

// codedError carries a wire code chosen by the gateway itself, with a fixed message (no request
// data, no internals: it is sent to the client).
type codedError struct {
	code  pb.ErrorCode
	msg   string
	retry uint32
}

func (e *codedError) Error() string { return e.msg }

func codeFor(err error) (pb.ErrorCode, uint32) {
	var ce *codedError
	var me *messaging.Error
	switch {
	case errors.As(err, &ce):
		return ce.code, ce.retry
	case errors.As(err, &me):
		return me.Code, 0
	case errors.Is(err, directory.ErrUnknownUser):
		return pb.ErrorCode_ERROR_CODE_UNKNOWN_USER, 0
	case errors.Is(err, directory.ErrUnknownDevice):
		return pb.ErrorCode_ERROR_CODE_UNKNOWN_DEVICE, 0
	case errors.Is(err, directory.ErrAuthFailed):
		return pb.ErrorCode_ERROR_CODE_AUTH_FAILED, 0
	case errors.Is(err, directory.ErrNameTaken), errors.Is(err, directory.ErrDeviceExists):
		return pb.ErrorCode_ERROR_CODE_NAME_TAKEN, 0
	case errors.Is(err, directory.ErrInvalidName):
		return pb.ErrorCode_ERROR_CODE_INVALID_NAME, 0
	case errors.Is(err, directory.ErrRegistrationClosed):
		return pb.ErrorCode_ERROR_CODE_REGISTRATION_CLOSED, 0
	case errors.Is(err, directory.ErrInvalidInvite):
		return pb.ErrorCode_ERROR_CODE_INVALID_INVITE, 0
	case errors.Is(err, directory.ErrInvalidKeys):
		return pb.ErrorCode_ERROR_CODE_INVALID_KEYS, 0
	case errors.Is(err, directory.ErrInvalidRequest), errors.Is(err, directory.ErrTooManyPreKeys):
		return pb.ErrorCode_ERROR_CODE_INVALID_REQUEST, 0
	case errors.Is(err, directory.ErrLinkExpired):
		return pb.ErrorCode_ERROR_CODE_LINK_EXPIRED, 0
	case errors.Is(err, directory.ErrTooManyDevices):
		return pb.ErrorCode_ERROR_CODE_TOO_MANY_DEVICES, 0
	case errors.Is(err, directory.ErrPermissionDenied):
		return pb.ErrorCode_ERROR_CODE_PERMISSION_DENIED, 0
	case errors.Is(err, directory.ErrStaleDeviceList):
		return pb.ErrorCode_ERROR_CODE_STALE_DEVICES, 0
	case errors.Is(err, directory.ErrInvalidDeviceList):
		return pb.ErrorCode_ERROR_CODE_INVALID_REQUEST, 0
	case errors.Is(err, mailbox.ErrInboxFull):
		return pb.ErrorCode_ERROR_CODE_INBOX_FULL, 0 // permanent: no retry hint
	case errors.Is(err, mailbox.ErrQueryRateLimited):
		return pb.ErrorCode_ERROR_CODE_RATE_LIMITED, uint32(1000 + rand.IntN(1000))
	case errors.Is(err, groups.ErrUnknownGroup):
		return pb.ErrorCode_ERROR_CODE_UNKNOWN_GROUP, 0
	case errors.Is(err, directory.ErrUnavailable), errors.Is(err, groups.ErrUnavailable), errors.Is(err, mailbox.ErrStorage),
		errors.Is(err, mailbox.ErrStoreFull), errors.Is(err, mailbox.ErrOverloaded),
		errors.Is(err, context.DeadlineExceeded):
		return pb.ErrorCode_ERROR_CODE_UNAVAILABLE, uint32(500 + rand.IntN(1500))
	case errors.Is(err, mailbox.ErrClosed):
		return pb.ErrorCode_ERROR_CODE_SHUTTING_DOWN, uint32(250 + rand.IntN(2750))
	default:
		return pb.ErrorCode_ERROR_CODE_INTERNAL, 1000
	}
}

// nodeURLs is what Welcome.nodes tells clients.
func (g *Gateway) nodeURLs() []string {
	if g.cfg.Nodes == nil {
		return nil
	}
	return g.cfg.Nodes()
}
