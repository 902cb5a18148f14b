// Copyright 2026 The Petrel Authors
// SPDX-License-Identifier: Apache-2.0

package mailbox

import (
	"context"
	"encoding/binary"
	"math/rand/v2"
	"slices"
	"strconv"
	"sync"
	"time"

	"github.com/nats-io/nats.go"
	"github.com/nats-io/nats.go/jetstream"

	"github.com/petrelchat/petrel/internal/bus"
	pb "github.com/petrelchat/petrel/proto/petrel/v1"
)

// Sink is the connection side of an Attachment. Its methods must not block.
type Sink interface {
	// Push hands one envelope (an encoded Envelope) to the device. An error means the connection
	// is gone; the envelope stays stored (or the live sender stores it).
	Push(tag uint64, envelope []byte) error
	// QueueEmpty tells the device that everything stored before it attached has been pushed.
	QueueEmpty(delivered int)
	// Kicked tells the connection that another connection of the same device took over.
	Kicked()
}

// maxRoutesRemembered bounds the per-attachment set of sending routes seen; maxTickets bounds the
// refusals awaiting their store's confirmation.
const (
	maxRoutesRemembered = 4096
	maxTickets          = 8192
)

// liveTagBit marks tags of live deliveries; stored deliveries use the stream sequence as tag.
const liveTagBit = 1 << 63

// Attachment is one connected device's delivery state on this node.
type Attachment struct {
	m      *Mailbox
	dev    string
	connID string
	sink   Sink
	space  chan struct{} // signalled when the window frees up or the attachment closes; guarded by mu, made on first wait

	// handMu is held by Detach while it answers this node's waiting senders (see Detach); taken
	// after mu, never while holding anything else.
	handMu sync.Mutex
	mu     sync.Mutex // guards the fields below
	// closed: detached; nothing more is pushed.
	closed bool
	// draining: stored envelopes may be waiting; live deliveries are stored instead, in order.
	draining     bool
	drainRunning bool
	// settled: on a replicated inbox, the first switch to live waits until every node has seen
	// this node's device subscriptions and the stream leader has nothing more for the device (see
	// settle).
	settled bool
	// gen counts wake-ups: a drain that read an empty inbox may only switch to live if gen did not
	// move meanwhile and every refused live delivery has been stored (its ticket came back).
	gen uint64
	// wakeSeq is the highest inbox sequence a wake-up announced; leaderTo is the highest of them
	// the stream leader confirmed is no longer stored (purged or expired). On a replicated inbox
	// the drain reads on until it read past wakeSeq, or asks the leader, before it goes live: a
	// direct get may be answered by a replica that has not applied the acked write yet.
	wakeSeq, leaderTo uint64
	tickets           map[string]time.Time // refusals whose store has not been confirmed, by ticket
	routes            map[string]struct{}  // routes seen by this attachment
	overflowUntil     time.Time            // refusals beyond maxTickets: drain at least until then
	nextTicket        uint64
	live              map[uint64]waiter // live tag → the waiting sender
	nextLive          uint64
	// sp is the state of stored envelopes pushed, made by the first push: most attachments of
	// idle devices never push one, and it is a third of the attachment's size.
	sp           *storedPushes
	nextSeq      uint64
	pushedStored int
	queueEmpty   bool // QueueEmpty was sent

	// claimRev is this attachment's claim on its device: its connection's takeover order, set
	// before the attachment is shared (takeover.go).
	claimRev uint64
}

// storedPushes is an attachment's stored envelopes pushed and not yet purged, and its purges;
// guarded by the attachment's mu.
type storedPushes struct {
	outstanding  []uint64 // stream sequences pushed and not yet purged, ascending
	outBytes     []uint32 // the size of each outstanding envelope
	outSent      []int64  // each outstanding envelope's server time (Unix ms; 0 unknown, sentExpired)
	unackedBytes int      // the sum of outBytes
	acked        map[uint64]bool
	purgeWant    uint64 // purge stored envelopes up to here (all acked)
	purgedTo     uint64 // purged up to here
	purgeCount   int    // acked envelopes not yet counted as purged
	purging      bool   // a purge goroutine runs
}

// outstandingLocked is the number of stored envelopes pushed and not yet acked in order.
func (a *Attachment) outstandingLocked() int {
	if a.sp == nil {
		return 0
	}
	return len(a.sp.outstanding)
}

// unackedBytesLocked is their size.
func (a *Attachment) unackedBytesLocked() int {
	if a.sp == nil {
		return 0
	}
	return a.sp.unackedBytes
}

// addOutstandingLocked records a stored envelope pushed (or dropped as expired: sent is
// sentExpired).
func (a *Attachment) addOutstandingLocked(seq uint64, size int, sent int64) {
	if a.sp == nil {
		a.sp = &storedPushes{}
	}
	sp := a.sp
	sp.outstanding, sp.outBytes = append(sp.outstanding, seq), append(sp.outBytes, uint32(size))
	sp.outSent = append(sp.outSent, sent)
	sp.unackedBytes += size
}

// Attach starts delivery to a connected device: it enters the device in the node's table (where
// the node's device subscriptions find it; location.go), takes the device over from any other
// connection (on any node; takeover.go) and drains its inbox. Of two connections of a device, the
// one attached last stays; AttachAfter orders them by when they authenticated instead.
func (m *Mailbox) Attach(deviceID, connID string, sink Sink) (*Attachment, error) {
	return m.AttachAfter(deviceID, connID, 0, sink)
}

// Order is a value of the node's takeover order (its clock in nanoseconds, strictly
// increasing): a connection takes one when it authenticates and passes it to AttachAfter.
func (m *Mailbox) Order() uint64 { return m.nextClaim() }

// AttachAfter is Attach for a connection that authenticated at order (from Order; 0: at the
// attach itself, as Attach does). A connection whose attach comes late (its handler held up
// between the Welcome and the attach) does not take the device over from one that authenticated
// after it: it is the one taken over (CONNECTED_ELSEWHERE). Across nodes the order is the claim
// (takeover.go).
func (m *Mailbox) AttachAfter(deviceID, connID string, order uint64, sink Sink) (*Attachment, error) {
	if m.closed.Load() {
		return nil, ErrClosed
	}
	a := &Attachment{
		m:        m,
		dev:      deviceID,
		connID:   connID,
		sink:     sink,
		draining: true,
		nextSeq:  1,
	}

	if h := m.hooks.attachSubscribe; h != nil {
		h(a)
	}
	// claimRev is the takeover order, set once here, before a is shared.
	a.claimRev = order
	if order == 0 {
		a.claimRev = m.nextClaim()
	}
	m.metrics.attached.Inc()
	// Take the device over (takeover.go): from the attachment this one replaces in the node's
	// table; in a cluster also by a claim, announced on a goroutine of its own.
	prev, replaced, set := m.local.SwapUnless(deviceID, a, func(p *Attachment) bool { return p.claimRev > a.claimRev })
	if !set {
		// A connection that authenticated after this one is attached already: it stays.
		a.takenOver()
		return a, nil
	}
	if m.claims {
		m.wg.Add(1)
		go func() {
			defer m.wg.Done()
			a.claim()
		}()
	}
	a.mu.Lock()
	a.startDrainLocked()
	a.mu.Unlock()
	if replaced && prev != nil {
		prev.takenOver()
	}
	return a, nil
}

// Detach stops delivery. Live deliveries not yet acked are handed back to their senders, who store
// them; stored ones stay in the inbox. Idempotent.
func (a *Attachment) Detach() {
	a.mu.Lock()
	if a.closed {
		a.mu.Unlock()
		return
	}
	a.closed = true
	live := a.live
	a.live = nil
	// Hand back in tag order (the order they arrived in) so the senders store them in order. A
	// local request that finds the attachment closed waits on handMu until this node's senders
	// are answered, so its store queues behind theirs. The answers run without a.mu: they call
	// the senders back, which may close connections (and so Detach again).
	a.handMu.Lock()
	a.mu.Unlock()
	tags := make([]uint64, 0, len(live))
	for t := range live {
		tags = append(tags, t)
	}
	slices.Sort(tags)
	for _, t := range tags {
		if w := live[t]; w.reply == "" {
			a.m.finishLive(w.tok, liveRefused)
		}
	}
	a.handMu.Unlock()
	a.m.local.CompareAndDelete(a.dev, a)
	a.m.metrics.attached.Dec()
	a.signal()
	for _, t := range tags {
		if w := live[t]; w.reply != "" {
			_ = a.m.nc.Publish(w.reply, replyStore)
		}
	}
}

// signal wakes a drain waiting for space, if one ever waited. Call it without a.mu held.
func (a *Attachment) signal() {
	a.mu.Lock()
	ch := a.space
	a.mu.Unlock()
	if ch == nil {
		return
	}
	select {
	case ch <- struct{}{}:
	default:
	}
}

// spaceLocked returns the channel signal uses, made on first use: most attachments never wait.
// Made under a.mu in the same critical section that decided to wait, so a signal after that
// decision cannot be missed (the channel holds one).
func (a *Attachment) spaceLocked() chan struct{} {
	if a.space == nil {
		a.space = make(chan struct{}, 1)
	}
	return a.space
}

// expireTicketsLocked forgets refusals whose store was never confirmed (the sender's commit failed
// or it went away): the sender then did not ack, so nothing can be overtaken.
func (a *Attachment) expireTicketsLocked() {
	limit := time.Now().Add(-2 * a.m.cfg.StoreTimeout)
	for t, at := range a.tickets {
		if at.Before(limit) {
			delete(a.tickets, t)
		}
	}
}

// waitSpace waits for a signal on space or d.
func waitSpace(space chan struct{}, d time.Duration) {
	t := time.NewTimer(d)
	defer t.Stop()
	select {
	case <-space:
	case <-t.C:
	}
}

// onMsg handles one message on dev.<device>, in order, on the device's dispatcher goroutine.
func (a *Attachment) onMsg(msg *nats.Msg) {
	if len(msg.Data) == 0 {
		return
	}
	switch msg.Data[0] {
	case kindClaim:
		a.onClaim(msg)
	case kindWake:
		a.wake(string(msg.Data[1:]), 0)
	case kindWakeSeq:
		if len(msg.Data) >= 9 {
			a.wake(string(msg.Data[9:]), binary.BigEndian.Uint64(msg.Data[1:9]))
		}
	case kindLive:
		a.onLive(msg)
	case kindRelease:
		a.release(string(msg.Data[1:]))
	case kindEphemeral:
		a.pushEphemeral(msg.Data[1:])
	}
}

// release forgets a ticket whose store failed for certain (see kindRelease) and lets a drain that
// waits for it go on.
func (a *Attachment) release(ticket string) {
	a.mu.Lock()
	_, had := a.tickets[ticket]
	delete(a.tickets, ticket)
	a.mu.Unlock()
	if had {
		a.signal()
	}
}

// wake makes the attachment drain its inbox; ticket, if set, is a refusal whose store committed;
// seq, if set, is the last inbox sequence that commit stored for this device. A wake-up without
// one (a resync's, after the bus dropped messages that may have carried one) makes the drain
// ask the stream leader again before it goes live.
func (a *Attachment) wake(ticket string, seq uint64) {
	a.mu.Lock()
	a.gen++
	a.wakeSeq = max(a.wakeSeq, seq)
	if seq == 0 {
		a.settled = false
	}
	if ticket != "" {
		delete(a.tickets, ticket)
	}
	a.startDrainLocked()
	a.mu.Unlock()
	a.signal()
}

func (a *Attachment) startDrainLocked() {
	if a.closed {
		return
	}
	a.draining = true
	if a.drainRunning {
		return
	}
	a.drainRunning = true
	a.m.wg.Add(1)
	go func() {
		defer a.m.wg.Done()
		a.drain()
	}()
}

// waiter is the sender waiting for a live delivery's outcome: a reply subject on the bus, or (for
// this node's own senders) a pending-request token.
type waiter struct {
	reply string
	tok   uint64
}

// answer tells the waiting sender how its live request ended.
func (a *Attachment) answer(w waiter, res liveResult) {
	if w.reply == "" {
		a.m.finishLive(w.tok, res)
		return
	}
	switch {
	case res.acked:
		_ = a.m.nc.Publish(w.reply, replyAcked)
	case res.ticket != "":
		_ = a.m.nc.Publish(w.reply, append(append([]byte(nil), replyStore...), res.ticket...))
	default:
		_ = a.m.nc.Publish(w.reply, replyStore)
	}
}

// onLive handles a live request that came over the bus.
func (a *Attachment) onLive(msg *nats.Msg) {
	routeID, unanswered, env, ok := decodeLive(msg.Data[1:])
	w := waiter{reply: msg.Reply}
	if !ok || w.reply == "" {
		if w.reply != "" {
			a.answer(w, liveRefused)
		}
		return
	}
	a.offer(routeID, unanswered, env, w)
}

// offer delivers one live request to the device, or refuses it (the sender stores it).
func (a *Attachment) offer(routeID string, unanswered bool, env []byte, w waiter) {
	a.mu.Lock()
	if a.closed {
		a.mu.Unlock()
		if w.reply == "" {
			a.handMu.Lock() // wait until Detach has answered this node's earlier requests
			a.handMu.Unlock()
		}
		a.answer(w, liveRefused)
		return
	}
	// The first request from a route that still has earlier requests unanswered: those were
	// published before we subscribed (no responders, or another connection's), and their sender
	// will store them. This one must queue behind them.
	_, seen := a.routes[routeID]
	if !seen {
		if len(a.routes) >= maxRoutesRemembered {
			clear(a.routes) // forgetting only makes a refusal more likely, never an overtake
		}
		if a.routes == nil {
			a.routes = make(map[string]struct{})
		}
		a.routes[routeID] = struct{}{}
	}
	if a.draining || len(a.live)+a.outstandingLocked() >= a.m.cfg.Window || (!seen && unanswered) {
		// Refuse: the sender stores it, in its own order, and hands our ticket back with the
		// wake-up that follows the commit. Until every ticket is back the drain does not switch
		// to live, so nothing from that sender can overtake it.
		var ticket string
		if len(a.tickets) < maxTickets {
			a.nextTicket++
			ticket = a.connID + "." + strconv.FormatUint(a.nextTicket, 36)
			if a.tickets == nil {
				a.tickets = make(map[string]time.Time)
			}
			a.tickets[ticket] = time.Now()
		} else {
			// Too many unconfirmed refusals: refuse without a ticket, and keep draining until an
			// unconfirmed store could no longer be pending (as when tickets expire).
			a.overflowUntil = time.Now().Add(2 * a.m.cfg.StoreTimeout)
		}
		if a.m.debug() {
			a.m.log.Debug("live delivery refused: the sender stores it", "device", a.dev, "draining", a.draining,
				"window_full", len(a.live)+a.outstandingLocked() >= a.m.cfg.Window, "behind_unanswered", !seen && unanswered)
		}
		a.gen++
		a.startDrainLocked()
		a.mu.Unlock()
		a.answer(w, liveResult{ticket: ticket})
		return
	}
	a.nextLive++
	tag := liveTagBit | a.nextLive
	if a.live == nil {
		a.live = make(map[uint64]waiter)
	}
	a.live[tag] = w
	a.mu.Unlock()
	err := a.sink.Push(tag, env)
	if err == nil {
		a.m.metrics.pushedLive.Inc()
	}
	if err != nil {
		a.mu.Lock()
		_, mine := a.live[tag]
		delete(a.live, tag)
		a.mu.Unlock()
		if mine { // else Detach answered it
			a.answer(w, liveRefused)
		}
	}
}

// Ack handles the device's acks: live ones are answered to their senders, stored ones are purged
// from the inbox once every earlier pushed envelope is acked too.
func (a *Attachment) Ack(tags []uint64) {
	var replies []waiter
	var purgeTo uint64
	var now int64 // Unix ms, read once for the stored acks' latency
	a.mu.Lock()
	for _, t := range tags {
		if t&liveTagBit != 0 {
			if reply, ok := a.live[t]; ok {
				delete(a.live, t)
				replies = append(replies, reply)
			}
			continue
		}
		// Only tags pushed and not yet purged count: a client cannot grow this map with bogus tags.
		if sp := a.sp; sp != nil {
			if i, ok := slices.BinarySearch(sp.outstanding, t); ok {
				if sp.acked == nil {
					sp.acked = make(map[uint64]bool)
				}
				if !sp.acked[t] {
					a.ackedStoredLocked(sp.outSent[i], &now)
				}
				sp.acked[t] = true
			}
		}
	}
	n := 0
	if sp := a.sp; sp != nil {
		for n < len(sp.outstanding) && sp.acked[sp.outstanding[n]] {
			delete(sp.acked, sp.outstanding[n])
			purgeTo = sp.outstanding[n]
			sp.unackedBytes -= int(sp.outBytes[n])
			n++
		}
		sp.outstanding, sp.outBytes, sp.outSent = sp.outstanding[n:], sp.outBytes[n:], sp.outSent[n:]
	}
	a.mu.Unlock()
	if len(replies) > 0 {
		a.m.metrics.ackedLive.Add(float64(len(replies)))
	}
	for _, w := range replies {
		a.answer(w, liveResult{acked: true})
	}
	if purgeTo > 0 {
		a.purge(purgeTo, n)
	}
	if len(tags) > 0 {
		a.signal()
	}
}

// purgeRun is a device's purge loop, for a later attachment of the same device to wait on.
type purgeRun struct {
	owner *Attachment
	done  chan struct{}
}

// purge deletes the stored envelopes up to sequence to (all acked) and n more for the metrics. At
// most one purge per device is in flight: acks that arrive meanwhile are folded into the next one,
// so a fast reader costs a purge per round trip, not per ack.
func (a *Attachment) purge(to uint64, n int) {
	a.mu.Lock()
	sp := a.sp // made by the push of what is purged
	sp.purgeWant = max(sp.purgeWant, to)
	sp.purgeCount += n
	if sp.purging {
		a.mu.Unlock()
		return
	}
	sp.purging = true
	a.mu.Unlock()
	p := &purgeRun{owner: a, done: make(chan struct{})}
	a.m.purges.Store(a.dev, p)
	a.m.wg.Add(1)
	go func() {
		defer a.m.wg.Done()
		defer func() {
			a.m.purges.CompareAndDelete(a.dev, p)
			close(p.done)
		}()
		for {
			a.mu.Lock()
			to, n := sp.purgeWant, sp.purgeCount
			if to <= sp.purgedTo {
				sp.purging = false
				a.mu.Unlock()
				return
			}
			sp.purgeCount = 0
			a.mu.Unlock()
			ctx, cancel := a.m.ctxStore()
			shard := a.m.bus.Shard(a.dev)
			err := a.m.bus.Inbox(shard).Purge(ctx, jetstream.WithPurgeSubject(a.m.bus.InboxSubject(a.dev)), jetstream.WithPurgeSequence(to+1))
			cancel()
			a.m.metrics.purges.Inc()
			a.mu.Lock()
			if err == nil {
				sp.purgedTo = to
			}
			a.mu.Unlock()
			if err == nil {
				a.m.released(a.dev, to)
			}
			if err != nil {
				// The envelopes stay stored and will be delivered again: at-least-once.
				a.m.log.Warn("purge acked envelopes", "device", a.dev, "err", err)
				a.mu.Lock()
				sp.purging = false
				a.mu.Unlock()
				return
			}
			a.m.metrics.purged.Add(float64(n))
		}
	}()
}

// drain pushes stored envelopes in order until the inbox is empty and no wake-up or refused live
// delivery is pending, then switches the attachment to live delivery.
func (a *Attachment) drain() {
	// A purge of this device's acked envelopes still running for a previous connection on this node
	// would let them be delivered again: wait for it, briefly.
	if p, ok := a.m.purges.Load(a.dev); ok && p.(*purgeRun).owner != a {
		t := time.NewTimer(a.m.cfg.StoreTimeout)
		select {
		case <-p.(*purgeRun).done:
		case <-t.C:
		}
		t.Stop()
	}
	backoff := 50 * time.Millisecond
	staleTries := 0
	for {
		a.mu.Lock()
		if a.closed {
			a.drainRunning = false
			a.mu.Unlock()
			return
		}
		gen, from := a.gen, a.nextSeq
		free := a.m.cfg.Window - len(a.live) - a.outstandingLocked()
		budget := a.m.cfg.WindowBytes - a.unackedBytesLocked()
		var space chan struct{}
		if free <= 0 || budget <= 0 {
			space = a.spaceLocked()
		}
		a.mu.Unlock()
		if free <= 0 || budget <= 0 {
			if a.m.drainWaits != nil {
				a.m.drainWaits()
			}
			<-space
			continue
		}
		if h := a.m.hooks.drainRead; h != nil {
			h(a)
		}
		var n int
		var err error
		if h := a.m.hooks.staleRead; h == nil || !h(a, from) {
			n, err = a.readBatch(from, min(free, maxReadBatch), budget)
		}
		if err != nil {
			a.m.log.Warn("inbox drain", "device", a.dev, "err", err)
			a.mu.Lock()
			space := a.spaceLocked()
			a.mu.Unlock()
			waitSpace(space, backoff/2+rand.N(backoff/2+1))
			backoff = min(backoff*2, 5*time.Second)
			continue
		}
		backoff = 50 * time.Millisecond
		if n > 0 {
			staleTries = 0
			continue
		}
		a.mu.Lock()
		if a.closed {
			a.drainRunning = false
			a.mu.Unlock()
			return
		}
		if want := a.wakeSeq; a.m.replicated && a.nextSeq <= want && a.leaderTo < want {
			// A wake-up announced an envelope this read did not see: the replica that answered
			// lags behind the leader. Read again after a short pause, then ask the leader.
			a.mu.Unlock()
			if staleTries < staleRereads {
				waitSpace(nil, time.Millisecond<<staleTries)
				staleTries++
			} else if err := a.readLeader(from, want); err != nil {
				a.m.log.Warn("inbox drain: leader read", "device", a.dev, "err", err)
				waitSpace(nil, backoff)
			}
			continue
		}
		staleTries = 0
		a.expireTicketsLocked()
		pending := len(a.tickets)
		if time.Now().Before(a.overflowUntil) {
			pending++
		}
		if a.gen != gen || pending > 0 {
			var space chan struct{}
			if pending > 0 {
				space = a.spaceLocked()
			}
			a.mu.Unlock()
			if h := a.m.hooks.drainIdle; h != nil {
				h(a, false, pending)
			}
			if pending > 0 {
				waitSpace(space, a.m.cfg.StoreTimeout)
			}
			continue
		}
		if a.m.replicated && !a.settled {
			a.mu.Unlock()
			if err := a.settle(); err != nil {
				a.m.log.Warn("inbox drain: leader read", "device", a.dev, "err", err)
				waitSpace(nil, backoff)
			}
			continue
		}
		a.draining = false
		a.drainRunning = false
		first := !a.queueEmpty
		a.queueEmpty = true
		pushed := a.pushedStored
		a.mu.Unlock()
		if h := a.m.hooks.drainIdle; h != nil {
			h(a, true, 0)
		}
		if first {
			a.sink.QueueEmpty(pushed)
		}
		return
	}
}

// maxReadBatch bounds one inbox read (one batched direct get).
const maxReadBatch = 1024

// staleRereads is how many times a drain reads the inbox again (after 1, 2, 4 ms) when the answer
// lags behind a wake-up's sequence, before it reads through the stream leader.
const staleRereads = 3

// readLeader reads the device's first envelope from sequence from on as the stream leader would
// answer it (authoritativeGet) and pushes it; if there is none, the envelopes announced up to
// want are gone (acked on another connection and purged, or expired) and the drain stops
// waiting for them.
func (a *Attachment) readLeader(from, want uint64) error {
	ctx, cancel := a.m.ctxStore()
	defer cancel()
	// The wake-up that announced want came after its write was acked: a replica round after it
	// covers that write.
	seq, data, found, err := a.authoritativeGet(ctx, from, true)
	if err != nil {
		return err
	}
	if !found {
		a.mu.Lock()
		a.leaderTo = max(a.leaderTo, want)
		a.mu.Unlock()
		return nil
	}
	if !a.pushStored(seq, data) {
		a.Detach()
	}
	return nil
}

// authoritativeGet reads the device's first envelope from sequence from on, seeing every write
// acked before the call: through the replicas when a replica round shows that they hold every
// such write (replicas.go; only if replicas is set), else through the stream leader.
func (a *Attachment) authoritativeGet(ctx context.Context, from uint64, replicas bool) (seq uint64, data []byte, found bool, err error) {
	if replicas && a.replicasSettled() {
		a.m.metrics.replicaReads.Inc()
		return a.firstFrom(ctx, from)
	}
	a.m.metrics.leaderReads.Inc()
	return a.m.leaderGet(ctx, bus.InboxStreamName(a.m.bus.Shard(a.dev)), a.m.bus.InboxSubject(a.dev), from)
}

// settle closes, on a replicated inbox, the window in which a commit's wake-up did not reach
// this attachment: one that reached the node before the attachment was in the node's table, or
// before the node's device subscriptions reached the committing node; and a direct get here may
// be answered by a replica that has not applied that commit. So before its first switch to live
// the drain makes sure that every routed node has the node's device subscriptions (nodeInterest,
// once per node) and then reads the first envelope from where it read to, as the leader would
// answer (authoritativeGet: through the replicas only if every node has the subscriptions, so
// that a commit acked after the replica round began wakes it): one is pushed (and the drain goes
// on), none settles it.
func (a *Attachment) settle() error {
	// Best effort: external NATS cannot tell, a silent node times out. A round not answered by
	// every node (one was being cut off) is tried again on the next attempt: only after one that
	// was can the replicas stand in for the leader.
	all := a.m.nodeInterest()
	a.mu.Lock()
	from, resettled := a.nextSeq, a.queueEmpty
	a.mu.Unlock()
	if a.m.claims && resettled {
		// Settling again after a resync: the bus may have dropped a newer claim's announcement
		// too. (The first settle needs none: claim announces twice on its own.)
		a.checkClaim()
	}
	ctx, cancel := a.m.ctxStore()
	defer cancel()
	seq, data, found, err := a.authoritativeGet(ctx, from, all)
	if err != nil {
		return err
	}
	if !found {
		a.mu.Lock()
		if a.nextSeq == from {
			a.settled = true
		}
		a.mu.Unlock()
		return nil
	}
	if !a.pushStored(seq, data) {
		a.Detach()
	}
	return nil
}

// pushStored pushes the stored envelope at seq; false means the connection is gone (the caller
// detaches). An attachment already closed pushes nothing and returns true.
func (a *Attachment) pushStored(seq uint64, data []byte) bool {
	if expired(data) { // a disappearing message past its expiry is never delivered (expiry.go)
		a.dropExpired(seq, len(data))
		return true
	}
	a.mu.Lock()
	if a.closed || seq < a.nextSeq {
		a.mu.Unlock()
		return true
	}
	a.addOutstandingLocked(seq, len(data), pb.EnvelopeServerTime(data))
	a.nextSeq = seq + 1
	a.pushedStored++
	a.mu.Unlock()
	if a.sink.Push(seq, data) != nil {
		return false
	}
	a.m.metrics.pushedStored.Inc()
	return true
}

// sentExpired marks an outstanding envelope that was dropped as expired, not delivered (outSent).
const sentExpired = -1

// ackedStoredLocked counts the device's first ack of a stored envelope the server accepted at
// sent (Unix ms; see outSent) and observes its delivery latency; *now caches the clock for one
// batch of acks.
func (a *Attachment) ackedStoredLocked(sent int64, now *int64) {
	if sent == sentExpired {
		return
	}
	a.m.metrics.ackedStored.Inc()
	if sent <= 0 {
		return
	}
	if *now == 0 {
		*now = time.Now().UnixMilli()
	}
	// Another node's clock may run a little ahead of this one's.
	a.m.metrics.latencyStored.Observe(float64(max(*now-sent, 0)) / 1e3)
}

// readBatch reads up to max envelopes from seq from, stopping after the one that brings them to
// maxBytes, and pushes them; it returns how many.
func (a *Attachment) readBatch(from uint64, max, maxBytes int) (int, error) {
	ctx, cancel := a.m.ctxStore()
	defer cancel()
	detached := false
	// The inbox's names are derived here, not kept: an idle attachment stays small.
	shard := a.m.bus.Shard(a.dev)
	n, err := a.m.getBatchBounded(ctx, bus.InboxStreamName(shard), a.m.bus.InboxSubject(a.dev), from, max, maxBytes, func(seq uint64, data []byte) bool {
		a.mu.Lock()
		closed := a.closed
		a.mu.Unlock()
		if closed {
			return false
		}
		if !a.pushStored(seq, data) {
			detached = true
			return false
		}
		return true
	})
	if detached {
		a.Detach()
		return n, nil
	}
	return n, err
}
