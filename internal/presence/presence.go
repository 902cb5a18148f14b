// Copyright 2026 The Petrel Authors
// SPDX-License-Identifier: Apache-2.0

// Package presence knows which accounts are online (at least one device connected to any node)
// and when each was last seen, across the nodes of a cluster, and answers subscriptions to it
// under each account's privacy setting. Presence is ephemeral: it lives in memory and on core
// bus subjects (bus.Presence*), never in a stream; only the settings are stored (the KV bucket
// bus.SettingsBucket).
//
// Per node, the state is bounded by what the node serves, never by the cluster:
//   - local: the accounts with devices connected to this node, with a count (one map entry per
//     online account, nothing per device beyond the count);
//   - last seen: for accounts whose last device on this node left, when (at most MaxLastSeen,
//     the oldest forgotten first);
//   - watches: the accounts this node's connections subscribed to (at most 256 per
//     connection), each with what the nodes said of it.
//
// Protocol (text lines, names are [a-z0-9_.-] and need no escaping):
//   - transitions (bus.PresenceTransitions): a node publishes, in batches gathered for
//     BatchDelay, "NODE\n" then "SEQ 1 ACCOUNT 0\n" when an account's first device connects to it
//     and "SEQ 0 ACCOUNT LASTSEEN_MS\n" when its last one leaves. SEQ grows strictly per node
//     (it starts at the node's start time in nanoseconds, so a restarted node's are larger).
//     Every node subscribes once and applies the lines about accounts it watches.
//   - queries (bus.PresenceQuery): a node that gets a subscription asks every node about the
//     accounts new to it ("ACCOUNT\n" lines); each answers "NODE\n" then one "SEQ 0|1 ACCOUNT
//     LASTSEEN_MS\n" line per account, SEQ being its current sequence. The asker waits for every
//     node it has heard a heartbeat from (and itself), at most QueryTimeout. A line is applied
//     only if its SEQ is above the last one applied from that node for that account, so a
//     transition and an answer that cross on the way cannot leave a stale state.
//   - heartbeats (bus.PresenceHeartbeat): "NODE" every HeartbeatInterval, "NODE hello" at start
//     (the others answer with their heartbeat at once), "NODE bye" when it stops. A node not
//     heard for 3 intervals is gone: the accounts it had online go offline, last seen at its
//     last heartbeat. The intervals are counted up to the last time this node heard its own
//     heartbeat come back, not up to now: a node whose own deliveries stall (a loaded machine,
//     a NATS reconnect) cannot tell who else went quiet, and declares nobody gone. A node
//     declared gone that is heard again without a "hello" (it never stopped: its heartbeats were
//     late) is asked again about every watched account, so what it holds online shows again.
//   - settings (bus.PresenceSettingsChanged): "ACCOUNT" after its settings changed, with header
//     Petrel-Revision: the settings bucket's revision of the new value (older nodes send none);
//     nodes that watch it read them again, until they read that revision or a later one (a
//     replica may answer before it has the new value), and tell subscribers who can no longer (or
//     can now) see it.
//
// Visibility: an account's Settings.last_seen is EVERYONE (the default), CONTACTS (only the
// accounts in its Settings.contacts) or NOBODY. An asker who may not see an account, and anyone
// asking about an account that does not exist, gets PRESENCE_STATE_UNKNOWN and no time. An
// account always sees itself. Last-seen times are rounded down to the minute.
package presence

import (
	"bytes"
	"context"
	"errors"
	"fmt"
	"log/slog"
	"math/rand/v2"
	"slices"
	"strconv"
	"strings"
	"sync"
	"sync/atomic"
	"time"

	"github.com/nats-io/nats.go"
	"github.com/nats-io/nats.go/jetstream"
	"github.com/nats-io/nuid"
	"github.com/prometheus/client_golang/prometheus"
	"google.golang.org/protobuf/proto"

	"github.com/petrelchat/petrel/internal/bus"
	"github.com/petrelchat/petrel/internal/directory"
	pb "github.com/petrelchat/petrel/proto/petrel/v1"
)

// Accounts looks accounts up (the directory): presence tells nothing about an account that does
// not exist. An unknown account is directory.ErrUnknownUser.
type Accounts interface {
	Account(ctx context.Context, name string) (*directory.Account, error)
}

// Watcher is a subscriber (a device connection). PresenceChanged must not block: it may drop the
// push when the connection is loaded (presence is shed first).
type Watcher interface {
	PresenceChanged(p *pb.Presence)
}

// Config configures a Service.
type Config struct {
	// Node is this node's name; required, unique in the cluster.
	Node string
	// HeartbeatInterval is the time between heartbeats; a node is gone after 3 missed. Default: 5s.
	HeartbeatInterval time.Duration
	// QueryTimeout bounds a subscription's wait for the other nodes' answers. Default: 500ms.
	QueryTimeout time.Duration
	// BatchDelay is how long transitions are gathered before they are published. Default: 20ms.
	BatchDelay time.Duration
	// MaxLastSeen bounds the last-seen times kept (the oldest are forgotten). Default: 262144.
	MaxLastSeen int
	Logger      *slog.Logger
	Registry    prometheus.Registerer
	// Now is the clock. Default: time.Now.
	Now func() time.Time
}

func (c *Config) setDefaults() {
	if c.HeartbeatInterval <= 0 {
		c.HeartbeatInterval = 5 * time.Second
	}
	if c.QueryTimeout <= 0 {
		c.QueryTimeout = 500 * time.Millisecond
	}
	if c.BatchDelay <= 0 {
		c.BatchDelay = 20 * time.Millisecond
	}
	if c.MaxLastSeen <= 0 {
		c.MaxLastSeen = 1 << 18
	}
	if c.Logger == nil {
		c.Logger = slog.Default()
	}
	if c.Now == nil {
		c.Now = time.Now
	}
}

// ErrInvalidSettings is a PutSettings refused for its content.
var ErrInvalidSettings = errors.New("invalid settings")

// maxBatchBytes bounds one published batch of transitions.
const maxBatchBytes = 60 << 10

// nodeState is what one node last said of a watched account.
type nodeState struct {
	seq    uint64
	online bool
}

// watch is a watched account: what the nodes said of it, its settings and its subscribers.
type watch struct {
	account  string
	nodes    map[string]nodeState
	lastSeen int64 // ms, the latest any node reported (0: unknown)
	settings *pb.Settings
	contacts map[string]struct{} // settings.contacts as a set (CONTACTS only)
	subs     map[*subscription]struct{}
}

func (w *watch) online() bool {
	for _, n := range w.nodes {
		if n.online {
			return true
		}
	}
	return false
}

// visibleTo reports whether asker may see the account's presence.
func (w *watch) visibleTo(asker string) bool {
	if asker == w.account {
		return true
	}
	switch w.settings.GetLastSeen() {
	case pb.LastSeenVisibility_LAST_SEEN_VISIBILITY_EVERYONE:
		return true
	case pb.LastSeenVisibility_LAST_SEEN_VISIBILITY_CONTACTS:
		_, ok := w.contacts[asker]
		return ok
	}
	return false
}

// presence is the account's presence as asker may see it.
func (w *watch) presence(asker string) *pb.Presence {
	p := &pb.Presence{Account: w.account}
	if !w.visibleTo(asker) {
		return p
	}
	if w.online() {
		p.State = pb.PresenceState_PRESENCE_STATE_ONLINE
		return p
	}
	p.State = pb.PresenceState_PRESENCE_STATE_OFFLINE
	p.LastSeenMs = roundMinute(w.lastSeen)
	return p
}

func roundMinute(ms int64) int64 { return ms - ms%60_000 }

// subscription is one watcher's set of accounts.
type subscription struct {
	w        Watcher
	asker    string
	accounts []string
	ready    bool // the answer was computed: pushes go out from here on
}

// seenEntry is one last-seen time in the eviction order.
type seenEntry struct {
	account string
	at      int64
}

// push is one PresenceChanged to deliver after the lock is released.
type push struct {
	w Watcher
	p *pb.Presence
}

// Service is one node's presence service.
type Service struct {
	nc       *nats.Conn
	kv       jetstream.KeyValue
	accounts Accounts
	cfg      Config
	log      *slog.Logger
	metrics  *metrics

	replyPrefix string
	seq         atomic.Uint64
	kick        chan struct{}
	resync      chan struct{} // a node declared gone was heard again
	stop        chan struct{}
	wg          sync.WaitGroup
	subs        []*nats.Subscription
	closed      atomic.Bool

	qmu     sync.Mutex                // guards queries
	queries map[uint64]chan *nats.Msg // query token → answers
	nextTok atomic.Uint64

	mu       sync.Mutex // guards the fields below; never held while calling out
	local    map[string]int32
	lastSeen map[string]int64
	seenFIFO []seenEntry      // eviction order of lastSeen (entries whose time changed since are stale)
	pending  []byte           // transitions not yet published
	nodes    map[string]int64 // other nodes → when last heard (ms)
	gone     map[string]int64 // nodes declared gone for silence → when (ms); pruned
	selfSeen int64            // when this node last heard its own heartbeat (ms; 0: not yet)
	watched  map[string]*watch
	watchers map[Watcher]*subscription
}

// New returns a service. kv is the settings bucket; it does no I/O.
func New(nc *nats.Conn, kv jetstream.KeyValue, accounts Accounts, cfg Config) *Service {
	cfg.setDefaults()
	s := &Service{
		nc: nc, kv: kv, accounts: accounts, cfg: cfg, log: cfg.Logger,
		replyPrefix: "_PRESQ." + nuid.Next() + ".",
		kick:        make(chan struct{}, 1),
		resync:      make(chan struct{}, 1),
		stop:        make(chan struct{}),
		queries:     map[uint64]chan *nats.Msg{},
		local:       map[string]int32{},
		lastSeen:    map[string]int64{},
		nodes:       map[string]int64{},
		gone:        map[string]int64{},
		watched:     map[string]*watch{},
		watchers:    map[Watcher]*subscription{},
	}
	s.metrics = newMetrics(cfg.Registry, s)
	return s
}

// Start subscribes to the presence subjects and starts the heartbeat and the publisher.
func (s *Service) Start() error {
	s.seq.Store(uint64(s.cfg.Now().UnixNano()))
	for _, x := range []struct {
		subj string
		fn   nats.MsgHandler
	}{
		{bus.PresenceTransitions, s.onTransitions},
		{bus.PresenceQuery, s.onQuery},
		{bus.PresenceHeartbeat, s.onHeartbeat},
		{bus.PresenceSettingsChanged, s.onSettingsChanged},
		{s.replyPrefix + "*", s.onAnswer},
	} {
		sub, err := s.nc.Subscribe(x.subj, x.fn)
		if err != nil {
			s.unsubscribe()
			return fmt.Errorf("presence: subscribe %s: %w", x.subj, err)
		}
		_ = sub.SetPendingLimits(1<<16, 64<<20)
		s.subs = append(s.subs, sub)
	}
	s.heartbeat("hello")
	s.wg.Add(3)
	go func() { defer s.wg.Done(); s.runHeartbeats() }()
	go func() { defer s.wg.Done(); s.runPublisher() }()
	go func() { defer s.wg.Done(); s.runResync() }()
	return nil
}

func (s *Service) unsubscribe() {
	for _, sub := range s.subs {
		_ = sub.Unsubscribe()
	}
	s.subs = nil
}

// Close publishes what is pending and a goodbye, and stops. Idempotent.
func (s *Service) Close() {
	if !s.closed.CompareAndSwap(false, true) {
		return
	}
	close(s.stop)
	s.wg.Wait()
	s.publishPending()
	s.heartbeat("bye")
	s.unsubscribe()
}

// Connected records a device of account connected to this node.
func (s *Service) Connected(account string) {
	s.mu.Lock()
	s.local[account]++
	first := s.local[account] == 1
	if first {
		s.addTransitionLocked(account, true, 0)
	}
	s.mu.Unlock()
	if first {
		s.kickPublisher()
	}
}

// Disconnected records a device of account that left this node (a Connected before it).
func (s *Service) Disconnected(account string) {
	s.mu.Lock()
	n := s.local[account] - 1
	last := n <= 0
	if last {
		delete(s.local, account)
		now := s.cfg.Now().UnixMilli()
		s.rememberLocked(account, now)
		s.addTransitionLocked(account, false, now)
	} else {
		s.local[account] = n
	}
	s.mu.Unlock()
	if last {
		s.kickPublisher()
	}
}

// rememberLocked records account's last-seen time, forgetting the oldest beyond MaxLastSeen.
func (s *Service) rememberLocked(account string, at int64) {
	s.lastSeen[account] = at
	s.seenFIFO = append(s.seenFIFO, seenEntry{account, at})
	for len(s.lastSeen) > s.cfg.MaxLastSeen && len(s.seenFIFO) > 0 {
		e := s.seenFIFO[0]
		s.seenFIFO = s.seenFIFO[1:]
		if s.lastSeen[e.account] == e.at {
			delete(s.lastSeen, e.account)
		}
	}
	// Stale entries (times overwritten since) are dropped when the queue outgrows the map.
	if len(s.seenFIFO) > 2*len(s.lastSeen)+1024 {
		fresh := make([]seenEntry, 0, len(s.lastSeen))
		for _, e := range s.seenFIFO {
			if s.lastSeen[e.account] == e.at {
				fresh = append(fresh, e)
			}
		}
		s.seenFIFO = fresh
	}
}

func (s *Service) addTransitionLocked(account string, online bool, lastSeen int64) {
	s.metrics.transitions.Inc()
	s.pending = appendInfo(s.pending, s.seq.Add(1), online, account, lastSeen)
}

// appendInfo appends one "SEQ 0|1 ACCOUNT LASTSEEN" line.
func appendInfo(b []byte, seq uint64, online bool, account string, lastSeen int64) []byte {
	b = strconv.AppendUint(b, seq, 10)
	if online {
		b = append(b, " 1 "...)
	} else {
		b = append(b, " 0 "...)
	}
	b = append(b, account...)
	b = append(b, ' ')
	b = strconv.AppendInt(b, lastSeen, 10)
	return append(b, '\n')
}

func (s *Service) kickPublisher() {
	select {
	case s.kick <- struct{}{}:
	default:
	}
}

// runPublisher publishes pending transitions BatchDelay after the first of a batch.
func (s *Service) runPublisher() {
	t := time.NewTimer(time.Hour)
	t.Stop()
	for {
		select {
		case <-s.kick:
		case <-s.stop:
			return
		}
		t.Reset(s.cfg.BatchDelay)
		select {
		case <-t.C:
		case <-s.stop:
			t.Stop()
			return
		}
		s.publishPending()
	}
}

// publishPending publishes the pending transitions, in messages of at most maxBatchBytes.
func (s *Service) publishPending() {
	s.mu.Lock()
	data := s.pending
	s.pending = nil
	s.mu.Unlock()
	for len(data) > 0 {
		n := len(data)
		if n > maxBatchBytes {
			n = bytes.LastIndexByte(data[:maxBatchBytes], '\n') + 1
		}
		msg := make([]byte, 0, len(s.cfg.Node)+1+n)
		msg = append(append(append(msg, s.cfg.Node...), '\n'), data[:n]...)
		if err := s.nc.Publish(bus.PresenceTransitions, msg); err != nil {
			s.log.Warn("presence: transitions not published", "err", err)
		}
		data = data[n:]
	}
}

// info is one parsed "SEQ 0|1 ACCOUNT LASTSEEN" line.
type info struct {
	seq      uint64
	online   bool
	account  string
	lastSeen int64
}

// parseInfos parses a message of a node line then info lines; malformed lines are skipped.
func parseInfos(data []byte) (node string, infos []info) {
	lines := strings.Split(string(data), "\n")
	if len(lines) == 0 || lines[0] == "" {
		return "", nil
	}
	node = lines[0]
	for _, l := range lines[1:] {
		f := strings.Fields(l)
		if len(f) != 4 || (f[1] != "0" && f[1] != "1") || !pb.ValidName(f[2]) {
			continue
		}
		seq, err1 := strconv.ParseUint(f[0], 10, 64)
		ls, err2 := strconv.ParseInt(f[3], 10, 64)
		if err1 != nil || err2 != nil {
			continue
		}
		infos = append(infos, info{seq: seq, online: f[1] == "1", account: f[2], lastSeen: ls})
	}
	return node, infos
}

// onTransitions applies a node's batch to the watched accounts.
func (s *Service) onTransitions(msg *nats.Msg) {
	node, infos := parseInfos(msg.Data)
	if node == "" {
		return
	}
	s.deliver(s.apply(node, infos))
}

// apply applies what node said of accounts and returns the pushes it causes.
func (s *Service) apply(node string, infos []info) []push {
	var out []push
	s.mu.Lock()
	defer s.mu.Unlock()
	if node != s.cfg.Node {
		if _, known := s.nodes[node]; !known {
			s.nodes[node] = s.cfg.Now().UnixMilli() // a node we had not heard: expect it in queries
		}
	}
	for _, in := range infos {
		w := s.watched[in.account]
		if w == nil {
			continue
		}
		if cur, ok := w.nodes[node]; ok && in.seq <= cur.seq {
			continue
		}
		before, beforeSeen := w.online(), w.lastSeen
		w.nodes[node] = nodeState{seq: in.seq, online: in.online}
		w.lastSeen = max(w.lastSeen, in.lastSeen)
		if w.online() != before || (!w.online() && roundMinute(w.lastSeen) != roundMinute(beforeSeen)) {
			out = s.pushesLocked(w, out)
		}
	}
	return out
}

// pushesLocked appends a push of w's presence to each of its ready subscribers that may see it
// (one that may not gets nothing: not even the timing of a change).
func (s *Service) pushesLocked(w *watch, out []push) []push {
	for sub := range w.subs {
		if sub.ready && w.visibleTo(sub.asker) {
			out = append(out, push{sub.w, w.presence(sub.asker)})
		}
	}
	return out
}

func (s *Service) deliver(pushes []push) {
	for _, p := range pushes {
		s.metrics.pushes.Inc()
		p.w.PresenceChanged(p.p)
	}
}

// onQuery answers what this node knows of the accounts asked about.
func (s *Service) onQuery(msg *nats.Msg) {
	if msg.Reply == "" {
		return
	}
	names := strings.Split(string(msg.Data), "\n")
	if len(names) > pb.MaxPresenceAccounts {
		names = names[:pb.MaxPresenceAccounts]
	}
	b := make([]byte, 0, len(s.cfg.Node)+1+len(names)*48)
	b = append(append(b, s.cfg.Node...), '\n')
	s.mu.Lock()
	seq := s.seq.Load()
	for _, a := range names {
		if !pb.ValidName(a) {
			continue
		}
		b = appendInfo(b, seq, s.local[a] > 0, a, s.lastSeen[a])
	}
	s.mu.Unlock()
	_ = s.nc.Publish(msg.Reply, b)
}

// onAnswer routes an answer to the query waiting for it.
func (s *Service) onAnswer(msg *nats.Msg) {
	tok, err := strconv.ParseUint(msg.Subject[len(s.replyPrefix):], 36, 64)
	if err != nil {
		return
	}
	s.qmu.Lock()
	ch := s.queries[tok]
	s.qmu.Unlock()
	if ch != nil {
		select {
		case ch <- msg:
		default:
		}
	}
}

// heartbeat publishes this node's heartbeat ("" for a plain one, "hello", "bye").
func (s *Service) heartbeat(kind string) {
	data := s.cfg.Node
	if kind != "" {
		data += " " + kind
	}
	_ = s.nc.Publish(bus.PresenceHeartbeat, []byte(data))
}

func (s *Service) onHeartbeat(msg *nats.Msg) {
	node, kind, _ := strings.Cut(string(msg.Data), " ")
	if node == "" {
		return
	}
	now := s.cfg.Now().UnixMilli()
	if node == s.cfg.Node {
		s.mu.Lock()
		s.selfSeen = now
		s.mu.Unlock()
		return
	}
	switch kind {
	case "bye":
		s.deliver(s.nodeGone(node, now))
		return
	case "hello":
		s.heartbeat("")
	}
	s.mu.Lock()
	_, wasGone := s.gone[node]
	delete(s.gone, node)
	s.nodes[node] = now
	s.mu.Unlock()
	if wasGone && kind != "hello" { // late, not restarted: what it holds online was forgotten
		s.metrics.returned.Inc()
		s.log.Info("presence: node heard again after it was declared gone", "node", node)
		select {
		case s.resync <- struct{}{}:
		default:
		}
	}
}

// runResync asks every node again about every watched account each time a node declared gone
// was heard again (queries of pb.MaxPresenceAccounts accounts, one at a time).
func (s *Service) runResync() {
	for {
		select {
		case <-s.resync:
		case <-s.stop:
			return
		}
		s.mu.Lock()
		accounts := make([]string, 0, len(s.watched))
		for a := range s.watched {
			accounts = append(accounts, a)
		}
		expect := len(s.nodes) + 1
		s.mu.Unlock()
		for len(accounts) > 0 {
			n := min(len(accounts), pb.MaxPresenceAccounts)
			s.deliver(s.query(context.Background(), accounts[:n], expect))
			accounts = accounts[n:]
		}
	}
}

// runHeartbeats publishes heartbeats and forgets nodes not heard for 3 intervals before this
// node last heard its own.
func (s *Service) runHeartbeats() {
	t := time.NewTicker(s.cfg.HeartbeatInterval)
	defer t.Stop()
	for {
		select {
		case <-t.C:
		case <-s.stop:
			return
		}
		s.heartbeat("")
		var out []push
		s.mu.Lock()
		gone, at := s.silentLocked()
		for i, n := range gone {
			s.gone[n] = s.selfSeen
			out = s.nodeGoneLocked(n, at[i], out)
		}
		forget := s.selfSeen - 100*s.cfg.HeartbeatInterval.Milliseconds()
		for n, when := range s.gone {
			if when < forget {
				delete(s.gone, n)
			}
		}
		s.mu.Unlock()
		for _, n := range gone {
			s.log.Info("presence: node gone (no heartbeat)", "node", n)
		}
		s.deliver(out)
	}
}

// silentLocked returns the other nodes not heard for 3 intervals before this node last heard its
// own heartbeat, and when each was last heard.
func (s *Service) silentLocked() (nodes []string, at []int64) {
	if s.selfSeen == 0 {
		return nil, nil
	}
	limit := s.selfSeen - 3*s.cfg.HeartbeatInterval.Milliseconds()
	for n, seen := range s.nodes {
		if seen < limit {
			nodes, at = append(nodes, n), append(at, seen)
		}
	}
	return nodes, at
}

// nodeGone forgets a node: the watched accounts it had online go offline, last seen at.
func (s *Service) nodeGone(node string, at int64) []push {
	s.mu.Lock()
	defer s.mu.Unlock()
	return s.nodeGoneLocked(node, at, nil)
}

// nodeGoneLocked is nodeGone with s.mu held; it appends the pushes to out.
func (s *Service) nodeGoneLocked(node string, at int64, out []push) []push {
	delete(s.nodes, node)
	for _, w := range s.watched {
		ns, ok := w.nodes[node]
		if !ok {
			continue
		}
		delete(w.nodes, node)
		if ns.online {
			w.lastSeen = max(w.lastSeen, at)
			if !w.online() {
				out = s.pushesLocked(w, out)
			}
		}
	}
	return out
}

// Subscribe replaces w's subscription with accounts (at most pb.MaxPresenceAccounts, valid
// names, no duplicates: the caller checks) on behalf of account asker, and returns their
// presence now as asker may see it. PresenceChanged pushes follow while the subscription lasts.
func (s *Service) Subscribe(ctx context.Context, w Watcher, asker string, accounts []string) ([]*pb.Presence, error) {
	if len(accounts) > pb.MaxPresenceAccounts {
		return nil, fmt.Errorf("presence: at most %d accounts", pb.MaxPresenceAccounts)
	}
	// The settings of the accounts not watched yet, and whether they exist, are read outside the
	// lock; a watch dropped meanwhile (its last subscriber left) is read again (a few rounds).
	loaded := map[string]*pb.Settings{}
	missing := map[string]bool{} // no such account
	for round := 0; ; round++ {
		s.mu.Lock()
		var fresh []string
		for _, a := range accounts {
			if s.watched[a] == nil && loaded[a] == nil && !missing[a] {
				fresh = append(fresh, a)
			}
		}
		if len(fresh) == 0 || round == 3 {
			break // with s.mu held
		}
		s.mu.Unlock()
		for _, a := range fresh {
			if _, err := s.accounts.Account(ctx, a); errors.Is(err, directory.ErrUnknownUser) {
				missing[a] = true // no watch: UNKNOWN
				continue
			} else if err != nil {
				return nil, err
			}
			st, err := s.Settings(ctx, a)
			if err != nil {
				return nil, err
			}
			loaded[a] = st
		}
	}
	// s.mu is held. The new subscription joins its watches before the old one leaves them, so a
	// watch both share is kept.
	sub := &subscription{w: w, asker: asker, accounts: accounts}
	var ask []string
	old := s.watchers[w]
	s.watchers[w] = sub
	for _, a := range accounts {
		wt := s.watched[a]
		if wt == nil {
			st, ok := loaded[a]
			if !ok {
				continue
			}
			wt = &watch{account: a, nodes: map[string]nodeState{}, subs: map[*subscription]struct{}{}}
			wt.setSettings(st)
			s.watched[a] = wt
			ask = append(ask, a)
		}
		wt.subs[sub] = struct{}{}
	}
	if old != nil {
		s.leaveLocked(old)
	}
	expect := len(s.nodes) + 1
	s.mu.Unlock()
	if len(ask) > 0 {
		s.deliver(s.query(ctx, ask, expect))
	}
	out := make([]*pb.Presence, 0, len(accounts))
	s.mu.Lock()
	for _, a := range accounts {
		if wt := s.watched[a]; wt != nil {
			out = append(out, wt.presence(asker))
		} else {
			out = append(out, &pb.Presence{Account: a})
		}
	}
	if s.watchers[w] == sub {
		sub.ready = true
	}
	s.mu.Unlock()
	return out, nil
}

// query asks every node about accounts and applies the answers: it waits for expect answers (the
// nodes heard from, and this one), at most QueryTimeout.
func (s *Service) query(ctx context.Context, accounts []string, expect int) []push {
	tok := s.nextTok.Add(1)
	ch := make(chan *nats.Msg, expect+16)
	s.qmu.Lock()
	s.queries[tok] = ch
	s.qmu.Unlock()
	defer func() {
		s.qmu.Lock()
		delete(s.queries, tok)
		s.qmu.Unlock()
	}()
	data := []byte(strings.Join(accounts, "\n"))
	if err := s.nc.PublishMsg(&nats.Msg{Subject: bus.PresenceQuery, Reply: s.replyPrefix + strconv.FormatUint(tok, 36), Data: data}); err != nil {
		s.log.Warn("presence: query not published", "err", err)
		return nil
	}
	t := time.NewTimer(s.cfg.QueryTimeout)
	defer t.Stop()
	var out []push
	seen := map[string]bool{}
	for len(seen) < expect {
		select {
		case msg := <-ch:
			node, infos := parseInfos(msg.Data)
			if node == "" || seen[node] {
				continue
			}
			seen[node] = true
			out = append(out, s.apply(node, infos)...)
		case <-t.C:
			s.metrics.queryTimeouts.Inc()
			return out
		case <-ctx.Done():
			return out
		case <-s.stop:
			return out
		}
	}
	return out
}

// Unsubscribe ends w's subscription (its connection closed).
func (s *Service) Unsubscribe(w Watcher) {
	s.mu.Lock()
	s.dropLocked(w)
	s.mu.Unlock()
}

// dropLocked removes w's subscription and the watches nobody else holds.
func (s *Service) dropLocked(w Watcher) {
	sub := s.watchers[w]
	if sub == nil {
		return
	}
	delete(s.watchers, w)
	s.leaveLocked(sub)
}

// leaveLocked removes sub from its watches, and the watches nobody else holds.
func (s *Service) leaveLocked(sub *subscription) {
	for _, a := range sub.accounts {
		wt := s.watched[a]
		if wt == nil {
			continue
		}
		delete(wt.subs, sub)
		if len(wt.subs) == 0 {
			delete(s.watched, a)
		}
	}
}

func (w *watch) setSettings(st *pb.Settings) {
	w.settings = st
	w.contacts = nil
	if st.GetLastSeen() == pb.LastSeenVisibility_LAST_SEEN_VISIBILITY_CONTACTS {
		w.contacts = make(map[string]struct{}, len(st.GetContacts()))
		for _, c := range st.GetContacts() {
			w.contacts[c] = struct{}{}
		}
	}
}

// Settings returns an account's stored settings (the defaults when it has none).
func (s *Service) Settings(ctx context.Context, account string) (*pb.Settings, error) {
	st, _, err := s.readSettings(ctx, account)
	return st, err
}

// readSettings reads account's settings and the bucket revision they were read at (0: none
// stored).
func (s *Service) readSettings(ctx context.Context, account string) (*pb.Settings, uint64, error) {
	e, err := s.kv.Get(ctx, account)
	if errors.Is(err, jetstream.ErrKeyNotFound) {
		return &pb.Settings{}, 0, nil
	}
	if err != nil {
		return nil, 0, fmt.Errorf("read settings: %w", err)
	}
	st := &pb.Settings{}
	if err := proto.Unmarshal(e.Value(), st); err != nil {
		return nil, 0, fmt.Errorf("read settings: %w", err)
	}
	return st, e.Revision(), nil
}

// settingsAtLeast reads account's settings until it reads revision rev or a later one: the
// bucket's replicas answer reads, and one that has not applied the change yet returns the value
// before it. Retries back off (10 ms doubling to 500 ms, jittered) until ctx ends.
func (s *Service) settingsAtLeast(ctx context.Context, account string, rev uint64) (*pb.Settings, error) {
	wait := 10 * time.Millisecond
	for {
		st, at, err := s.readSettings(ctx, account)
		if err == nil && at >= rev {
			return st, nil
		}
		if err == nil {
			err = fmt.Errorf("read revision %d, want %d or later", at, rev)
		}
		t := time.NewTimer(wait/2 + rand.N(wait/2+1))
		select {
		case <-t.C:
		case <-ctx.Done():
			t.Stop()
			return nil, err
		case <-s.stop:
			t.Stop()
			return nil, err
		}
		wait = min(2*wait, 500*time.Millisecond)
	}
}

// NormalizeSettings checks st and returns what is stored: contacts sorted and de-duplicated,
// and kept only under CONTACTS (the server keeps no list it does not need).
func NormalizeSettings(st *pb.Settings) (*pb.Settings, error) {
	switch st.GetLastSeen() {
	case pb.LastSeenVisibility_LAST_SEEN_VISIBILITY_EVERYONE, pb.LastSeenVisibility_LAST_SEEN_VISIBILITY_CONTACTS,
		pb.LastSeenVisibility_LAST_SEEN_VISIBILITY_NOBODY:
	default:
		return nil, fmt.Errorf("%w: unknown last_seen value %d", ErrInvalidSettings, st.GetLastSeen())
	}
	if len(st.GetContacts()) > pb.MaxSettingsContacts {
		return nil, fmt.Errorf("%w: at most %d contacts", ErrInvalidSettings, pb.MaxSettingsContacts)
	}
	out := &pb.Settings{LastSeen: st.GetLastSeen()}
	if st.GetLastSeen() != pb.LastSeenVisibility_LAST_SEEN_VISIBILITY_CONTACTS {
		return out, nil
	}
	for _, c := range st.GetContacts() {
		if !pb.ValidName(c) {
			return nil, fmt.Errorf("%w: a contact is not a valid account name", ErrInvalidSettings)
		}
	}
	out.Contacts = slices.Compact(slices.Sorted(slices.Values(st.GetContacts())))
	return out, nil
}

// PutSettings stores account's settings (NormalizeSettings first) and tells the nodes, which
// apply them to their subscribers at once. It returns what was stored.
func (s *Service) PutSettings(ctx context.Context, account string, st *pb.Settings) (*pb.Settings, error) {
	norm, err := NormalizeSettings(st)
	if err != nil {
		return nil, err
	}
	b, err := proto.MarshalOptions{Deterministic: true}.Marshal(norm)
	if err != nil {
		return nil, err
	}
	rev, err := s.kv.Put(ctx, account, b)
	if err != nil {
		return nil, fmt.Errorf("store settings: %w", err)
	}
	msg := &nats.Msg{Subject: bus.PresenceSettingsChanged, Data: []byte(account), Header: nats.Header{}}
	msg.Header.Set(revisionHeader, strconv.FormatUint(rev, 10))
	if err := s.nc.PublishMsg(msg); err != nil {
		s.log.Warn("presence: settings change not published", "err", err)
	}
	return norm, nil
}

// revisionHeader carries, on a settings change, the bucket revision of the new settings.
const revisionHeader = "Petrel-Revision"

// onSettingsChanged reads a watched account's settings again and tells the subscribers whose view
// of it changed (hidden now: UNKNOWN; visible now: its presence).
func (s *Service) onSettingsChanged(msg *nats.Msg) {
	account := string(msg.Data)
	rev, _ := strconv.ParseUint(msg.Header.Get(revisionHeader), 10, 64) // 0 (an older node): any
	s.mu.Lock()
	_, watched := s.watched[account]
	s.mu.Unlock()
	if !watched || !pb.ValidName(account) {
		return
	}
	// Read on a goroutine of our own: the subscription's handler must not wait on the store.
	s.wg.Add(1)
	go func() {
		defer s.wg.Done()
		ctx, cancel := context.WithTimeout(context.Background(), 5*time.Second)
		defer cancel()
		st, err := s.settingsAtLeast(ctx, account, rev)
		if err != nil {
			s.log.Warn("presence: read changed settings", "account", account, "err", err)
			return
		}
		var out []push
		s.mu.Lock()
		if w := s.watched[account]; w != nil {
			before := map[*subscription]bool{}
			for sub := range w.subs {
				before[sub] = w.visibleTo(sub.asker)
			}
			w.setSettings(st)
			for sub := range w.subs {
				if sub.ready && before[sub] != w.visibleTo(sub.asker) {
					out = append(out, push{sub.w, w.presence(sub.asker)})
				}
			}
		}
		s.mu.Unlock()
		s.deliver(out)
	}()
}

// Online reports whether account has a device connected to this node (tests, status).
func (s *Service) Online(account string) bool {
	s.mu.Lock()
	defer s.mu.Unlock()
	return s.local[account] > 0
}

// OnlineAt reports the nodes this node knows hold account online, sorted (none if it does not
// watch account). Tests: what a subscriber here sees comes from this.
func (s *Service) OnlineAt(account string) []string {
	s.mu.Lock()
	defer s.mu.Unlock()
	var nodes []string
	if w := s.watched[account]; w != nil {
		for n, st := range w.nodes {
			if st.online {
				nodes = append(nodes, n)
			}
		}
	}
	slices.Sort(nodes)
	return nodes
}

type metrics struct {
	transitions   prometheus.Counter
	pushes        prometheus.Counter
	queryTimeouts prometheus.Counter
	returned      prometheus.Counter
}

func newMetrics(reg prometheus.Registerer, s *Service) *metrics {
	m := &metrics{
		transitions:   prometheus.NewCounter(prometheus.CounterOpts{Name: "petrel_presence_transitions_total", Help: "Accounts that went online (first device) or offline (last device) on this node."}),
		pushes:        prometheus.NewCounter(prometheus.CounterOpts{Name: "petrel_presence_pushes_total", Help: "PresenceChanged pushes handed to connections (a loaded connection may still drop one)."}),
		queryTimeouts: prometheus.NewCounter(prometheus.CounterOpts{Name: "petrel_presence_query_timeouts_total", Help: "Presence queries that did not hear from every known node within the query timeout."}),
		returned:      prometheus.NewCounter(prometheus.CounterOpts{Name: "petrel_presence_nodes_returned_total", Help: "Nodes declared gone for missed heartbeats that were heard again without having restarted (their accounts were asked about again)."}),
	}
	if reg != nil {
		gauge := func(name, help string, f func() int) prometheus.Collector {
			return prometheus.NewGaugeFunc(prometheus.GaugeOpts{Name: name, Help: help}, func() float64 {
				s.mu.Lock()
				defer s.mu.Unlock()
				return float64(f())
			})
		}
		reg.MustRegister(m.transitions, m.pushes, m.queryTimeouts, m.returned,
			gauge("petrel_presence_online_accounts", "Accounts with at least one device connected to this node.", func() int { return len(s.local) }),
			gauge("petrel_presence_watched_accounts", "Accounts this node's connections subscribed to.", func() int { return len(s.watched) }),
			gauge("petrel_presence_last_seen_entries", "Last-seen times this node keeps (presence.max_last_seen bounds them).", func() int { return len(s.lastSeen) }),
			gauge("petrel_presence_nodes", "Other nodes this node hears presence heartbeats from.", func() int { return len(s.nodes) }))
	}
	return m
}
