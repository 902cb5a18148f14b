// Copyright 2026 The Petrel Authors
// SPDX-License-Identifier: Apache-2.0

// Package mailbox is Petrel's store-and-forward: it routes each envelope to its recipient device
// live when that device is connected to any node (the sender is acked when the device acks), and
// otherwise appends it to the device's durable inbox before the sender is acked (invariant 1).
//
// Live path: a request on the core subject pn.<node>.<device> (bus.NodeDeviceSubject) to the node
// holding that device's connection, answered once the device acks. A node knows where a device
// is only from a hint of the node holding it (location.go; no subscription per device): without
// one, on "not here" or no responders (that node is gone), after a refusal, or without an ack
// within LiveAckTimeout the envelope goes down the store path instead. When the device is
// attached on the sending node itself, the request skips the bus (the node-local fast path):
// same rules, same answers, no bus round trip. A route switches between the two only when the
// path it used has no request unanswered (and sends to one node while requests to it are
// unanswered), and a commit wakes a device attached on its node directly (as well as over the
// bus) before the senders are acked, so neither path can overtake the other.
//
// Store path: per inbox shard, a writer group-commits appends as atomic batches (one fsync for
// many messages), then publishes the commit's wake-ups to every node (one message, mbw.<node>)
// and acks the senders. The node holding a woken device answers with a hint (where it is), so
// the next envelope from the committing node goes live. Each wake-up carries the last inbox
// sequence the commit stored for the device: on a replicated inbox any current replica answers
// direct gets (nats-server v2.15 has no read-after-write guarantee for them), and one may not
// have applied a write the leader acked. A drain that read less than a wake-up announced reads
// again (1, 2, 4 ms later), then asks the stream leader (a JetStream API message get), before it
// reports the inbox empty or goes live. And a wake-up that reached the node before the
// attachment was in the node's table is lost for it. So on a replicated inbox the first switch
// to live asks the stream leader whether anything is left (settle), once every routed node has
// answered a ping sent after the node's device subscriptions were made (bus.MailboxPingSubject;
// once per node). Where the leader is asked, a replica round may answer instead, without it
// (while it is being elected after its node died; replicas.go). A single node's reads are the
// leader's: it never waits and never asks. A route made again after it broke may have lost
// wake-ups: every attachment on the node then reads its inbox again (resync.go).
//
// Takeover (takeover.go): one attachment per device across the cluster; of racing ones, the
// highest claim (the node's clock when the connection authenticated, then the connection id;
// announced to every node on dev.<device>) stays and the others are told CONNECTED_ELSEWHERE.
//
// Delivery: a device's Attachment drains its inbox in order with a bounded in-flight window,
// signals QueueEmpty once the backlog present at connect has been sent, then switches to live mode;
// a wake-up switches it back to draining. Acks delete stored envelopes with a subject purge.
//
// Per-sender order (one Route per sending connection; every store of a route's envelopes is
// queued from the answers to its live requests, which arrive in publish order):
//   - While a live request to a device is unanswered, later envelopes to it go live too; if they
//     are refused, their stores queue behind the earlier refusals.
//   - Otherwise, while an envelope to the device is being stored, later ones are stored directly
//     (behind it, in the shard writer's FIFO).
//   - An attachment never stores. It refuses a live request while it drains, when its window is
//     full, or when it is the first request it sees from a route that still has earlier requests
//     unanswered (those went elsewhere: to another node, or stored); a refusal carries a ticket, the
//     sender hands the ticket back in the wake-up it publishes after the commit, and the drain
//     switches to live only when the inbox read empty, no wake-up came meanwhile and every ticket
//     is back. The writer publishes wake-ups before it acks, on the same bus connection as later
//     live requests, so a wake-up always reaches the attachment first.
//
// The exception: a live delivery the device does not ack within LiveAckTimeout is stored then, and
// may land behind envelopes sent after it.
//
// Messages the bus drops (a full ingress channel or reply subscription: a slow consumer) lose
// nothing for long: a dropped live request is stored after LiveAckTimeout, a dropped wake-up is
// made good by a resync that re-reads every attached device's inbox (resync.go), and an inbox
// read that lost an answer stops before the gap and is read again (direct.go).
package mailbox

import (
	"context"
	"encoding/binary"
	"errors"
	"fmt"
	"hash/maphash"
	"log/slog"
	"slices"
	"strconv"
	"strings"
	"sync"
	"sync/atomic"
	"time"

	"github.com/nats-io/nats.go"
	"github.com/nats-io/nuid"
	"github.com/prometheus/client_golang/prometheus"

	"github.com/petrelchat/petrel/internal/bus"
)

// Errors callers branch on.
var (
	ErrStorage    = errors.New("inbox storage unavailable")
	ErrOverloaded = errors.New("inbox writer overloaded")
	ErrClosed     = errors.New("mailbox closed")
	// ErrInboxFull: the recipient device's inbox, or the sender's share of it, is full. Permanent
	// for this envelope (until the device reads its inbox); only envelopes to that inbox fail.
	ErrInboxFull = errors.New("recipient's inbox is full")
	// ErrStoreFull: the inbox stream or the whole store reached its byte limit (retryable).
	ErrStoreFull = errors.New("inbox storage full")
	// ErrQueryRateLimited: the asking device sent too many QueryQueued requests (retryable).
	ErrQueryRateLimited = errors.New("too many queue queries")
)

// DefaultWindow is Config.Window's default (the server's delivery_window).
const DefaultWindow = 1024

// Config tunes the mailbox.
type Config struct {
	// LiveAckTimeout is how long a live delivery may wait for the device's ack before the envelope
	// is stored instead. Default: 2s.
	LiveAckTimeout time.Duration
	// StoreTimeout bounds one inbox commit. Default: 10s.
	StoreTimeout time.Duration
	// MaxBatch is the most envelopes one commit holds. Default: 256.
	MaxBatch int
	// MinAtomicBatch is the smallest commit written as one atomic batch; smaller ones are written
	// as pipelined single publishes. Default: 16 (measured crossover on the development machine).
	MinAtomicBatch int
	// QueueDepth is each shard writer's queue length; beyond it appends fail fast (retryable). Default: 8192.
	QueueDepth int
	// Window is the most unacked envelopes (live and stored) pushed to one device. Default: 1024.
	Window int
	// WindowBytes bounds the bytes of stored envelopes pushed to one device and not yet acked (one
	// envelope may go past it), so a deep inbox of large envelopes does not outrun a slow
	// connection's write buffer. Default: 2 MiB.
	WindowBytes int
	// MaxBytesPerDevice caps the bytes of one device's stored envelopes (inbox_max_bytes_per_device);
	// the envelope cap is the bus's InboxMaxPerDevice. -1: no cap. Default: 64 MiB.
	MaxBytesPerDevice int64
	// MaxPerSender caps the envelopes one sending device may have stored in one device's inbox
	// (inbox_max_per_sender), so that one sender cannot fill it. -1: no cap. Default: a tenth of
	// the bus's InboxMaxPerDevice (10,000), at least 1.
	MaxPerSender int64
	// MaxBytesPerSender is MaxPerSender in bytes (inbox_max_bytes_per_sender). -1: no cap.
	// Default: a tenth of MaxBytesPerDevice (6.4 MiB).
	MaxBytesPerSender int64
	// QueryRate and QueryBurst rate-limit QueryQueued per asking device (queries per second, and
	// the burst). QueryRate -1: no limit. Defaults: 16 and 128.
	QueryRate  float64
	QueryBurst int
	// Quorum, if set, reports whether this node reaches a JetStream majority (the server's cached
	// quorum watch). While it reports false, stores fail at once with ErrStorage (UNAVAILABLE,
	// retryable, nothing acked) instead of waiting StoreTimeout for a commit that cannot happen.
	// Live delivery goes on: a live ack means the device has the envelope. Default: nil (always).
	Quorum func() bool
	// Node names this node in reply subjects. Default: a random id.
	Node     string
	Logger   *slog.Logger
	Registry prometheus.Registerer

	// dispatchCap is the capacity of each dispatch channel; tests make it small to force the bus
	// to drop messages. Default: 65536.
	dispatchCap int
}

func (c *Config) setDefaults() {
	if c.LiveAckTimeout == 0 {
		c.LiveAckTimeout = 2 * time.Second
	}
	if c.StoreTimeout == 0 {
		c.StoreTimeout = 10 * time.Second
	}
	if c.MaxBatch == 0 {
		c.MaxBatch = 256
	}
	if c.MinAtomicBatch == 0 {
		c.MinAtomicBatch = 16
	}
	if c.QueueDepth == 0 {
		c.QueueDepth = 8192
	}
	if c.Window == 0 {
		c.Window = DefaultWindow
	}
	if c.WindowBytes == 0 {
		c.WindowBytes = 2 << 20
	}
	if c.MaxBytesPerDevice == 0 {
		c.MaxBytesPerDevice = 64 << 20
	}
	if c.MaxBytesPerSender == 0 && c.MaxBytesPerDevice > 0 {
		c.MaxBytesPerSender = max(1, c.MaxBytesPerDevice/10)
	}
	if c.QueryRate == 0 {
		c.QueryRate = 16
	}
	if c.QueryBurst == 0 {
		c.QueryBurst = 128
	}
	if c.Node == "" {
		c.Node = nuid.Next()
	}
	if c.dispatchCap == 0 {
		c.dispatchCap = 1 << 16
	}
	if c.Logger == nil {
		c.Logger = slog.Default()
	}
}

// Kinds of message for a device (on pn.<node>.<device> or dev.<device>, or made from a commit's
// wake-ups): the first byte of the payload.
const (
	kindLive = 'm' // + Envelope bytes; reply expected
	kindWake = 'w' // the inbox has new envelopes (+ a ticket, optional); sent by nodes of older versions' resyncs
	// kindWakeSeq: the inbox has new envelopes, up to the 8-byte big-endian stream sequence that
	// follows (+ a ticket, optional). A direct get may be answered by a replica that has not yet
	// applied what the leader acked: the drain reads on until it has seen that sequence.
	kindWakeSeq = 'v'
	// kindRelease + a ticket: the store of the refused envelope failed for certain (nothing was
	// stored, the sender was not acked): the attachment forgets the ticket at once instead of
	// waiting for it to expire (2 × StoreTimeout), which held a failed-over device's drain, and
	// so its first QueueEmpty, while its inbox stream elected a leader.
	kindRelease = 'r'
	// kindClaim (takeover.go): another attachment of the device claimed it.
)

// Replies to a live request.
var (
	replyAcked = []byte("ok") // the device acked it
	replyStore = []byte("st") // not delivered: the sender must store it; a ticket may follow
)

// liveResult is how a live request ended: acked, or refused (no responders, refused, timed out)
// with the refusing attachment's ticket, if any, to hand back after the store.
type liveResult struct {
	acked  bool
	ticket string
}

// testHooks let tests in this package stop the mailbox at the points where per-sender order is
// decided, so that a race can be run the same way every time. All nil outside tests: each costs
// one nil check on its path.
type testHooks struct {
	// attachSubscribe runs in Attach just before the attachment enters the node's table.
	attachSubscribe func(a *Attachment)
	// claim runs before a connection claim is taken; claimed when it was, before the attachment
	// looks at the claims it heard meanwhile (takeover.go).
	claim   func(a *Attachment)
	claimed func(a *Attachment, rev uint64)
	// claimHeard runs before an attachment looks at a claim announcement (false: it is not heard,
	// as one the bus dropped); recheck runs
	// before a claim is announced again, interestTimeout after the first time.
	claimHeard func(a *Attachment) bool
	recheck    func(a *Attachment)
	// drainRead runs before each inbox read of a drain (without locks held).
	drainRead func(a *Attachment)
	// drainIdle runs when a drain has read an empty inbox (without locks held): live is whether
	// it switched to live delivery; pending counts the refusals whose store is not confirmed.
	drainIdle func(a *Attachment, live bool, pending int)
	// commit runs on the shard writer before it commits batch.
	commit func(batch []*appendReq)
	// staleRead runs before each direct inbox read (without locks held); true makes the read
	// answer "nothing from here", as a replica that lags behind the leader would.
	staleRead func(a *Attachment, from uint64) bool
}

// Mailbox routes, stores and delivers envelopes.
type Mailbox struct {
	cfg     Config
	bus     *bus.Bus
	nc      *nats.Conn
	log     *slog.Logger
	metrics *metrics
	ext     *extMetrics // disappearing and ephemeral envelopes (expiry.go, ephemeral.go)

	writers    []*shardWriter
	limits     limits        // admission caps (quota.go)
	queryLimit *queryLimiter // QueryQueued's rate limit
	// The store's usage (bytes; read every second, plus what writers committed since) and limit
	// (0: unknown), and whether an atomic commit timed out since the last read: see storeTight.
	storeUsed, storeLimit atomic.Int64
	batchTimedOut         atomic.Bool
	stop                  chan struct{}
	// stopCtx ends when the mailbox closes (with stop), for storage calls that must not hold Close.
	stopCtx    context.Context
	stopCancel context.CancelFunc
	wg         sync.WaitGroup
	closed     atomic.Bool

	// drainWaits, set by tests before any Attach, is told each time a drain waits for its window.
	drainWaits func()
	// hooks, set by tests before Start, hold the drain or a commit at its racy point.
	hooks testHooks
	// replicated: the inbox streams have replicas (a direct get may lag behind acked writes), so
	// a drain checks that it read up to the sequence its wake-ups announced. Tests set it.
	replicated bool
	// claims: other nodes share the bus, so a new attachment takes its device over by a claim in
	// the bus, not only in this node's table (takeover.go). Tests set it.
	claims bool

	replyPrefix string
	replySub    *nats.Subscription
	pingSub     *nats.Subscription // answers bus.MailboxPingSubject
	pinger      pinger             // coalesces confirmInterest's pings
	leaderReads chan struct{}      // bounds concurrent leader reads (leaderGet)
	inboxReads  chan struct{}      // bounds concurrent drain reads (getBatchBounded)
	lastClaim   atomic.Uint64      // the last claim value taken on this node (takeover.go)
	// latencyCount counts the sends measured for the delivery latency, up to latencyAlways
	// (route.go): the first ones are all measured, later one in latencySample.
	latencyCount atomic.Int64
	pendingMu    sync.Mutex
	pending      map[uint64]liveReq        // guarded by pendingMu
	reads        map[uint64]chan *nats.Msg // batched direct gets in progress; guarded by pendingMu
	nextToken    atomic.Uint64
	// replicaPinger coalesces replica rounds (replicas.go); its replicas is set in New.
	replicaPinger pinger

	// The device subscriptions deliver into ingress; runIngress hands each message on to its
	// device's dispatch channel, whose one dispatcher goroutine keeps the order of the device's
	// messages (a device always maps to the same dispatcher). See location.go.
	ingress     chan *nats.Msg
	ingressSubs []*nats.Subscription
	hintSub     *nats.Subscription
	dispatch    []chan *nats.Msg
	locs        locations                      // where devices this node sends to are attached
	local       *devTable[string, *Attachment] // attached on this node, by device id
	// interestOK: a ping round after the device subscriptions were made was answered by every
	// routed node (they have the subscriptions); see settle.
	interestOK atomic.Bool
	// seenDropped is ingressDropped when the last resync looked; only the resync goroutine uses it.
	seenDropped int
	purges      sync.Map // device id → *purgeRun while acked envelopes are being purged

	// resyncReq asks for a resync after the bus dropped device messages (resync.go);
	// stopSlowConsumer removes the bus callback that sends it.
	resyncReq        chan struct{}
	resyncAllReq     chan struct{} // asks for a wake-up of every attachment (a route came back)
	stopSlowConsumer func()
}

// New returns a mailbox over b. Start must be called before use.
func New(b *bus.Bus, cfg Config) *Mailbox {
	cfg.setDefaults()
	m := &Mailbox{
		cfg:     cfg,
		bus:     b,
		nc:      b.Conn(),
		log:     cfg.Logger,
		metrics: newMetrics(cfg.Registry),
		ext:     newExtMetrics(cfg.Registry),
		stop:    make(chan struct{}),
		pending: make(map[uint64]liveReq),
		reads:   make(map[uint64]chan *nats.Msg),

		local: newDevTable[string, *Attachment](),

		leaderReads: make(chan struct{}, maxLeaderReads),
		inboxReads:  make(chan struct{}, maxInboxReads),

		replicaPinger: pinger{replicas: true},
	}
	m.stopCtx, m.stopCancel = context.WithCancel(context.Background())
	m.replyPrefix = "_PR." + cfg.Node + "."
	m.replicated = b.Replicas() > 1
	m.claims = b.Clustered()
	perSender := cfg.MaxPerSender
	if perSender == 0 {
		perSender = max(1, b.InboxMaxPerDevice()/10)
	}
	nonNeg := func(v int64) int64 { return max(v, 0) } // -1 (no cap) is 0 for admission
	m.limits = limits{
		perDevice:      nonNeg(b.InboxMaxPerDevice()),
		perDeviceBytes: nonNeg(cfg.MaxBytesPerDevice),
		perSender:      nonNeg(perSender),
		perSenderBytes: nonNeg(cfg.MaxBytesPerSender),
	}
	m.queryLimit = &queryLimiter{rate: max(cfg.QueryRate, 0), burst: float64(max(cfg.QueryBurst, 1)), seed: maphash.MakeSeed()}
	for i := 0; i < b.InboxShards(); i++ {
		m.writers = append(m.writers, &shardWriter{
			m: m, stream: bus.InboxStreamName(i), ch: make(chan *appendReq, cfg.QueueDepth), maxBatch: cfg.MaxBatch,
			usage: make(map[string]*inboxUsage), unindexed: make(map[string]struct{}),
		})
	}
	m.ingress = make(chan *nats.Msg, cfg.dispatchCap)
	for range 4 {
		m.dispatch = append(m.dispatch, make(chan *nats.Msg, cfg.dispatchCap))
	}
	m.resyncReq = make(chan struct{}, 1)
	m.resyncAllReq = make(chan struct{}, 1)
	return m
}

// Start subscribes to live replies and starts the shard writers and dispatchers.
func (m *Mailbox) Start() error { return m.StartContext(context.Background()) }

// StartContext is Start; it gives up (ErrClosed) if ctx ends while the inbox shards cannot be read
// yet (a node restarted while its cluster elects stream leaders waits for them).
func (m *Mailbox) StartContext(ctx context.Context) error {
	sub, err := m.nc.Subscribe(m.replyPrefix+"*", m.onReply)
	if err != nil {
		return fmt.Errorf("subscribe to live replies: %w", err)
	}
	if err := sub.SetPendingLimits(1<<20, 256<<20); err != nil {
		return fmt.Errorf("reply subscription limits: %w", err)
	}
	m.replySub = sub
	if m.pingSub, err = m.nc.Subscribe(bus.MailboxPingSubject, m.answerPing); err != nil {
		return fmt.Errorf("subscribe to mailbox pings: %w", err)
	}
	if err := m.subscribeDevices(); err != nil {
		return fmt.Errorf("subscribe to device traffic: %w", err)
	}
	for i, w := range m.writers {
		if err := m.loadUnindexed(ctx, w, i); err != nil {
			return err
		}
	}
	for _, w := range m.writers {
		m.wg.Add(1)
		go func() { defer m.wg.Done(); w.run(m.stop) }()
	}
	m.wg.Add(1)
	go func() { defer m.wg.Done(); m.expireLive() }()
	m.readStoreUsage()
	m.wg.Add(1)
	go func() { defer m.wg.Done(); m.watchStore() }()
	for _, ch := range m.dispatch {
		m.wg.Add(1)
		go func() { defer m.wg.Done(); m.runDispatch(ch) }()
	}
	m.wg.Add(1)
	go func() { defer m.wg.Done(); m.runIngress() }()
	m.stopSlowConsumer = m.bus.OnSlowConsumer(m.onSlowConsumer)
	m.wg.Add(1)
	go func() { defer m.wg.Done(); m.runResync() }()
	m.wg.Add(1)
	go func() { defer m.wg.Done(); m.watchRoutes() }()
	return nil
}

// loadUnindexed lists shard i's stored devices, asking again until it is answered or the mailbox
// closes: a node restarted after a crash may not reach a stream's leader until its JetStream has
// caught up, or while the stream elects one, and must come back by itself rather than exit
// (petrel bench chaos saw a restarted node exit on one unanswered stream info). It gives up when
// ctx ends.
func (m *Mailbox) loadUnindexed(ctx context.Context, w *shardWriter, i int) error {
	start := time.Now()
	for {
		actx, cancel := context.WithTimeout(ctx, loadAttempt)
		err := w.loadUnindexed(actx, i)
		cancel()
		if err == nil {
			return nil
		}
		m.log.Warn("inbox index: retrying", "err", err, "waited", time.Since(start).Round(time.Millisecond))
		t := time.NewTimer(time.Second)
		select {
		case <-t.C:
		case <-m.stop:
			t.Stop()
			return ErrClosed
		case <-ctx.Done():
			t.Stop()
			return fmt.Errorf("%w: %w", ErrClosed, err)
		}
	}
}

// loadAttempt bounds one listing of a shard's stored devices at start.
const loadAttempt = 10 * time.Second

// Close stops the writers (failing queued, unacked appends) and dispatchers. Idempotent.
func (m *Mailbox) Close() {
	if !m.closed.CompareAndSwap(false, true) {
		return
	}
	if m.replySub != nil {
		_ = m.replySub.Unsubscribe()
	}
	if m.pingSub != nil {
		_ = m.pingSub.Unsubscribe()
	}
	for _, sub := range m.ingressSubs {
		_ = sub.Unsubscribe()
	}
	if m.hintSub != nil {
		_ = m.hintSub.Unsubscribe()
	}
	if m.stopSlowConsumer != nil {
		m.stopSlowConsumer()
	}
	close(m.stop)
	m.stopCancel()
	m.wg.Wait()
	m.pendingMu.Lock()
	pend := m.pending
	m.pending = map[uint64]liveReq{}
	m.pendingMu.Unlock()
	for _, p := range pend {
		p.done(liveRefused)
	}
}

// maxLeaderReads bounds the leader reads (JetStream API message gets) one node has in flight.
const maxLeaderReads = 32

// maxInboxReads bounds the batched inbox reads (direct gets) one node has in flight. Every drain
// reads its inbox at least once, so a reconnect storm starts one per device at once: 200,000 over
// twelve edge nodes kept the three JetStream servers so busy that every read timed out and was
// sent again, a retry storm with no end. Bounded, the reads wait their turn on the node (no
// stale request for the servers to answer) and each is answered in time.
const maxInboxReads = 256

// debug reports whether debug lines are logged: those on the send path are built only then (every
// send to an offline device answers "no responders").
func (m *Mailbox) debug() bool { return m.log.Enabled(context.Background(), slog.LevelDebug) }

// clock is the base of nanotime.
var clock = time.Now()

// nanotime is a monotonic clock in nanoseconds.
func nanotime() int64 { return int64(time.Since(clock)) }

// expireLive ends, as refusals, the live requests whose device has not answered within
// LiveAckTimeout. One sweep every eighth of the timeout replaces a timer per request, so a
// request ends between 1 and 1.125 timeouts after it was sent.
func (m *Mailbox) expireLive() {
	t := time.NewTicker(m.cfg.LiveAckTimeout / 8)
	defer t.Stop()
	var expired []uint64
	for {
		select {
		case <-t.C:
		case <-m.stop:
			return
		}
		now := nanotime()
		expired = expired[:0]
		m.pendingMu.Lock()
		for tok, p := range m.pending {
			if p.deadline <= now {
				expired = append(expired, tok)
			}
		}
		m.pendingMu.Unlock()
		slices.Sort(expired) // in request order, so a route's stores queue in send order
		if len(expired) > 0 && m.debug() {
			m.log.Debug("live deliveries not acked in time: stored instead", "n", len(expired))
		}
		for _, tok := range expired {
			m.finishLive(tok, liveRefused)
		}
	}
}

func (m *Mailbox) runDispatch(ch chan *nats.Msg) {
	for {
		select {
		case msg := <-ch:
			if a, ok := m.local.Load(subjectDevice(msg.Subject)); ok {
				a.onMsg(msg)
			} else {
				m.notHere(msg) // detached meanwhile
			}
		case <-m.stop:
			return
		}
	}
}

func (m *Mailbox) dispatcherFor(deviceID string) chan *nats.Msg {
	var h uint32
	for i := 0; i < len(deviceID); i++ {
		h = h*31 + uint32(deviceID[i])
	}
	return m.dispatch[h%uint32(len(m.dispatch))]
}

// liveReq is one live delivery waiting for its device's ack.
type liveReq struct {
	deadline int64 // monotonic nanoseconds (nanotime); swept by expireLive
	done     func(liveResult)
	// dev and node: where a request over the bus was sent (its node is forgotten for the device
	// if it answers "not here" or is gone); empty for this node's own attachments.
	dev, node string
}

var liveRefused = liveResult{}

// addPending registers a live request that ends with done, by the device's answer or by
// LiveAckTimeout (as a refusal), and returns its token.
func (m *Mailbox) addPending(done func(liveResult)) uint64 {
	return m.addPendingAt(liveReq{done: done})
}

// addPendingAt is addPending for a request over the bus to r.dev on r.node.
func (m *Mailbox) addPendingAt(r liveReq) uint64 {
	tok := m.nextToken.Add(1)
	r.deadline = nanotime() + int64(m.cfg.LiveAckTimeout)
	m.pendingMu.Lock()
	m.pending[tok] = r
	m.pendingMu.Unlock()
	return tok
}

// sendLive publishes a live request to the node holding the device (node, from locations; empty:
// none known, and the request is refused at once, as by no responders); done runs exactly once
// with how it ended.
func (m *Mailbox) sendLive(deviceID, node string, payload []byte, done func(liveResult)) {
	if node == "" {
		m.metrics.unlocated.Inc()
		done(liveRefused)
		return
	}
	tok := m.addPendingAt(liveReq{done: done, dev: deviceID, node: node})
	reply := m.replyPrefix + strconv.FormatUint(tok, 36)
	if err := m.nc.PublishMsg(&nats.Msg{Subject: bus.NodeDeviceSubject(node, deviceID), Reply: reply, Data: payload}); err != nil {
		m.finishLive(tok, liveRefused)
	}
}

func (m *Mailbox) onReply(msg *nats.Msg) {
	tok, err := strconv.ParseUint(msg.Subject[len(m.replyPrefix):], 36, 64)
	if err != nil {
		return
	}
	m.pendingMu.Lock()
	ch, isRead := m.reads[tok]
	m.pendingMu.Unlock()
	if isRead {
		select {
		case ch <- msg:
		default: // more answers than asked for: the reader fails on the count
		}
		return
	}
	// An empty reply with a header is NATS's "no responders": the node is gone. "Not here": the
	// device is not attached there (any more). Either way its node is forgotten.
	var res liveResult
	moved := false
	switch {
	case string(msg.Data) == string(replyAcked):
		res.acked = true
	case len(msg.Data) > len(replyStore) && string(msg.Data[:len(replyStore)]) == string(replyStore):
		res.ticket = string(msg.Data[len(replyStore):])
	case string(msg.Data) == string(replyNotHere):
		moved = true
	case len(msg.Data) == 0:
		moved = true
		if m.debug() {
			m.log.Debug("live delivery: no responders, stored instead", "status", msg.Header.Get("Status"))
		}
	}
	p, ok := m.takeLive(tok)
	if !ok {
		return
	}
	if moved && p.node != "" {
		m.locs.forget(p.dev, p.node)
		m.metrics.moved.Inc()
	}
	p.done(res)
}

func (m *Mailbox) finishLive(tok uint64, res liveResult) {
	if p, ok := m.takeLive(tok); ok {
		p.done(res)
	}
}

// takeLive removes and returns the pending live request tok.
func (m *Mailbox) takeLive(tok uint64) (liveReq, bool) {
	m.pendingMu.Lock()
	p, ok := m.pending[tok]
	delete(m.pending, tok)
	m.pendingMu.Unlock()
	return p, ok
}

// wakeAll tells each device that got an envelope in a successful commit to drain its inbox, up to
// the last sequence the commit stored for it (see kindWakeSeq): on this node directly, on the
// others with one message for the whole commit (WakeSubject; location.go).
func (m *Mailbox) wakeAll(reqs []*appendReq, err error) {
	if err != nil {
		return
	}
	last := make(map[string]uint64, len(reqs))
	for _, r := range reqs {
		last[r.deviceID] = max(last[r.deviceID], r.seq)
	}
	batch := make([]byte, 0, 64*len(last))
	wake := func(dev string, seq uint64, ticket string) {
		var ok bool
		if batch, ok = encodeWakes(batch, dev, seq, ticket); !ok {
			_ = m.nc.Publish(bus.DeviceSubject(dev), encodeWake(seq, ticket))
		}
		if a := m.localAttachment(dev); a != nil {
			a.wake(ticket, seq)
		}
	}
	for _, r := range reqs {
		if r.ticket != "" {
			// Hands the refusing attachment its ticket back; also a wake-up.
			wake(r.deviceID, last[r.deviceID], r.ticket)
			last[r.deviceID] = 0 // woken
		}
	}
	for _, r := range reqs {
		seq, ok := last[r.deviceID]
		if !ok || seq == 0 {
			continue
		}
		delete(last, r.deviceID)
		wake(r.deviceID, seq, "")
	}
	if len(batch) > 0 {
		_ = m.nc.Publish(bus.WakeSubject(m.cfg.Node), batch)
	}
}

// encodeWake builds a kindWakeSeq message.
func encodeWake(seq uint64, ticket string) []byte {
	b := make([]byte, 9, 9+len(ticket))
	b[0] = kindWakeSeq
	binary.BigEndian.PutUint64(b[1:], seq)
	return append(b, ticket...)
}

func (m *Mailbox) observeCommit(stored int, start time.Time, err error) {
	m.metrics.stored.Add(float64(stored))
	if err != nil {
		m.metrics.commitErrors.Inc()
		m.log.Warn("inbox commit failed", "stored", stored, "err", err)
		return
	}
	m.metrics.commits.Inc()
	m.metrics.commitSeconds.Observe(time.Since(start).Seconds())
}

// Store appends one envelope to a device's inbox and calls done when it is durable (nil) or not.
func (m *Mailbox) Store(deviceID, dedupeID string, envelope []byte, done func(error)) {
	m.store(deviceID, dedupeID, "", envelope, 0, done)
}

// store is Store with the ticket of the attachment that refused the envelope, if any, and the
// envelope's expiry (Unix ms, 0: never; see expiry.go).
func (m *Mailbox) store(deviceID, dedupeID, ticket string, envelope []byte, expiresAtMs int64, done func(error)) {
	if ticket != "" {
		stored := done
		done = func(err error) {
			if err != nil && notStored(err) {
				m.releaseTicket(deviceID, ticket)
			}
			stored(err)
		}
	}
	if m.closed.Load() {
		done(ErrClosed)
		return
	}
	if q := m.cfg.Quorum; q != nil && !q() {
		m.metrics.noQuorum.Inc()
		done(fmt.Errorf("%w: no jetstream quorum on this node", ErrStorage))
		return
	}
	if m.expiredAtStore(expiresAtMs) {
		done(nil) // deleted at its expiry, which is now: nothing to store
		return
	}
	m.writers[m.bus.Shard(deviceID)].enqueue(&appendReq{
		subject:  m.bus.InboxSubject(deviceID),
		dedupeID: dedupeID,
		deviceID: deviceID,
		ticket:   ticket,
		data:     envelope,
		expires:  expiresAtMs,
		done:     done,
	})
}

// notStored reports whether a store error says for certain that nothing was stored: a refusal
// (inbox full, store full, no quorum, overloaded, closed, an error answered by the stream) or no
// stream to answer at all. A timeout leaves it open: the commit may have landed unseen, so its
// ticket is left to expire.
func notStored(err error) bool {
	if errors.Is(err, context.DeadlineExceeded) || errors.Is(err, nats.ErrTimeout) || errors.Is(err, context.Canceled) {
		return false
	}
	s := err.Error()
	return !strings.Contains(s, "deadline exceeded") && !strings.Contains(s, "timeout") &&
		!strings.Contains(s, "timed out") && !strings.Contains(s, "context canceled")
}

// releaseTicket tells the attachment that refused an envelope that its store failed for certain
// (kindRelease), wherever the attachment is.
func (m *Mailbox) releaseTicket(deviceID, ticket string) {
	m.metrics.ticketsReleased.Inc()
	_ = m.nc.Publish(bus.DeviceSubject(deviceID), append([]byte{kindRelease}, ticket...))
	if a := m.localAttachment(deviceID); a != nil {
		a.release(ticket)
	}
}

// Healthy reports whether the mailbox can store (the bus is connected).
func (m *Mailbox) Healthy() bool { return !m.closed.Load() && m.bus.Healthy() }

// ctxStore is a context for storage calls made outside a request.
func (m *Mailbox) ctxStore() (context.Context, context.CancelFunc) {
	return context.WithTimeout(context.Background(), m.cfg.StoreTimeout)
}
