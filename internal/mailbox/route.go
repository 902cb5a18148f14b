// Copyright 2026 The Petrel Authors
// SPDX-License-Identifier: Apache-2.0

package mailbox

import (
	"math/rand/v2"
	"sync"

	"github.com/nats-io/nuid"
)

// latencySample: after a node's first latencyAlways sends, one send in latencySample (at random)
// has its live delivery latency measured (petrel_mailbox_delivery_seconds{path="live"}): a clock
// read at each end of every send was a measurable share of the relay's CPU, and a distribution
// needs no more.
const (
	latencySample = 8
	latencyAlways = 1024
)

// Target is one recipient device and the encoded Envelope it should receive.
type Target struct {
	DeviceID string
	// DedupeID identifies this envelope for this device across resends (JetStream Nats-Msg-Id).
	DedupeID string
	Envelope []byte
	// ExpiresAtMs (Unix ms, 0: never) is a disappearing message's expiry: a stored copy is deleted
	// by the store at that time and never delivered after it (expiry.go).
	ExpiresAtMs int64
}

// Outcome is the result of one Send.
type Outcome struct {
	Live   int   // devices that acked live
	Stored int   // devices for which the envelope was stored durably
	Err    error // non-nil: not every device has it; the send must not be acked
}

// Route carries one sending connection's per-recipient order: while an envelope from this route
// to a device is being stored, later envelopes to that device are stored too (in order).
type Route struct {
	id string
	mu sync.Mutex
	// Per device, guarded by mu; the maps are made on first use (most connections never send).
	storing map[string]int // envelopes in the store path
	remote  map[string]int // live requests over the bus not yet answered
	// at is the node the unanswered requests over the bus went to: later ones go there too, so
	// that their answers come back in order (from one node), whatever its location says meanwhile.
	at    map[string]string
	local map[string]int // node-local live requests not yet answered
}

// NewRoute returns an empty route.
func NewRoute() *Route {
	return &Route{id: nuid.Next()}
}

// decide picks the path for the next envelope to dev. While an earlier live request is
// unanswered it goes live too: answers arrive in request order, so if they are refusals the
// stores are queued in send order. Otherwise, while an earlier envelope is being stored, it is
// stored (queued behind it). Otherwise it goes live. A live request goes straight to att (the
// device's attachment on this node, if any) unless requests over the bus are still unanswered:
// the path changes only when the old one has nothing unanswered. A request over the bus goes to
// node: the node of the route's unanswered requests to dev, else the one locs knows ("": none).
func (r *Route) decide(dev string, att *Attachment, locs *locations) (store, unanswered, local bool, node string) {
	r.mu.Lock()
	defer r.mu.Unlock()
	remote, loc := r.remote[dev], r.local[dev]
	unanswered = remote+loc > 0
	if !unanswered && r.storing[dev] > 0 {
		return true, false, false, ""
	}
	if att != nil && remote == 0 {
		if r.local == nil {
			r.local = make(map[string]int)
		}
		r.local[dev]++
		return false, unanswered, true, ""
	}
	if r.remote == nil {
		r.remote, r.at = make(map[string]int), make(map[string]string)
	}
	if remote > 0 {
		node = r.at[dev]
	} else {
		node, _ = locs.get(dev)
		r.at[dev] = node
	}
	r.remote[dev]++
	return false, unanswered, false, node
}

func (r *Route) liveAnswered(dev string, local bool) {
	r.mu.Lock()
	m := r.remote
	if local {
		m = r.local
	}
	if m[dev]--; m[dev] <= 0 {
		delete(m, dev)
		if !local {
			delete(r.at, dev)
		}
	}
	r.mu.Unlock()
}

func (r *Route) beginStore(dev string) {
	r.mu.Lock()
	if r.storing == nil {
		r.storing = make(map[string]int)
	}
	r.storing[dev]++
	r.mu.Unlock()
}

func (r *Route) endStore(dev string) {
	r.mu.Lock()
	if r.storing[dev]--; r.storing[dev] <= 0 {
		delete(r.storing, dev)
	}
	r.mu.Unlock()
}

// localAttachment is the device's attachment on this node, or nil.
func (m *Mailbox) localAttachment(dev string) *Attachment {
	a, _ := m.local.Load(dev)
	return a
}

// Send delivers one message to every target and calls done once, when each device has either
// acked it live or has it stored durably (Outcome.Err == nil), or when that failed for some device.
// It never blocks on the network. It keeps the targets' values, not the targets slice: the caller
// may reuse it once Send returns (the envelope bytes must stay unchanged).
func (m *Mailbox) Send(route *Route, targets []Target, done func(Outcome)) {
	if len(targets) == 0 {
		done(Outcome{})
		return
	}
	op := &sendOp{m: m, route: route, done: done, left: len(targets)}
	if m.latencyCount.Load() < latencyAlways {
		m.latencyCount.Add(1)
		op.start = nanotime()
	} else if rand.Uint32()%latencySample == 0 {
		op.start = nanotime()
	}
	if len(targets) == 1 {
		op.one.op, op.one.t = op, targets[0]
		op.one.start()
		return
	}
	// One allocation for every target's state (a group message has thousands).
	ts := make([]sendTarget, len(targets))
	for i, t := range targets {
		ts[i] = sendTarget{op: op, t: t}
		ts[i].start()
	}
}

// sendOp is one Send in progress.
type sendOp struct {
	m     *Mailbox
	route *Route
	done  func(Outcome)
	one   sendTarget // the target of a single-target send (no second allocation)
	// live holds the live requests already encoded for targets that share one envelope (a group
	// message: every target has the same bytes), by the unanswered flag; env is that envelope.
	// Only Send's own loop uses them.
	live [2][]byte
	env  []byte

	start int64 // nanotime when Send was called, for one send in latencySample (else 0): live delivery latency runs from here

	mu   sync.Mutex // guards out and left
	out  Outcome
	left int
}

// finish records one target's outcome; the last one calls done.
func (op *sendOp) finish(live bool, err error) {
	op.mu.Lock()
	switch {
	case err != nil:
		if op.out.Err == nil {
			op.out.Err = err
		}
	case live:
		op.out.Live++
	default:
		op.out.Stored++
	}
	op.left--
	last := op.left == 0
	res := op.out
	op.mu.Unlock()
	if last {
		if res.Err == nil {
			op.m.metrics.sends.Inc()
		}
		op.done(res)
	}
}

// sendTarget is one recipient device of a Send.
type sendTarget struct {
	op    *sendOp
	t     Target
	local bool // the live request went to an attachment on this node
}

func (x *sendTarget) start() {
	m, route, dev := x.op.m, x.op.route, x.t.DeviceID
	att := m.localAttachment(dev)
	mustStore, unanswered, local, node := route.decide(dev, att, &m.locs)
	if mustStore {
		x.store("")
		return
	}
	x.local = local
	if local {
		att.offer(route.id, unanswered, x.t.Envelope, waiter{tok: m.addPending(x.answered)})
		return
	}
	m.sendLive(dev, node, x.op.livePayload(route.id, unanswered, x.t.Envelope), x.answered)
}

// livePayload is encodeLive(routeID, unanswered, env), shared by the targets of this send whose
// envelope is the same slice (publishing copies it: nothing keeps the payload).
func (op *sendOp) livePayload(routeID string, unanswered bool, env []byte) []byte {
	if len(env) == 0 || len(op.env) != len(env) || &op.env[0] != &env[0] {
		op.env, op.live = env, [2][]byte{}
	}
	i := 0
	if unanswered {
		i = 1
	}
	if op.live[i] == nil {
		op.live[i] = encodeLive(routeID, unanswered, env)
	}
	return op.live[i]
}

func (x *sendTarget) store(ticket string) {
	x.op.route.beginStore(x.t.DeviceID)
	x.op.m.store(x.t.DeviceID, x.t.DedupeID, ticket, x.t.Envelope, x.t.ExpiresAtMs, x.stored)
}

func (x *sendTarget) stored(err error) {
	x.op.route.endStore(x.t.DeviceID)
	x.op.finish(false, err)
}

// answered ends the live request: acked, or refused (then stored, with the ticket if any).
func (x *sendTarget) answered(res liveResult) {
	// Begin the store (if any) before the live request counts as answered, so the next envelope
	// sees one path or the other in use.
	if !res.acked {
		x.store(res.ticket)
	}
	x.op.route.liveAnswered(x.t.DeviceID, x.local)
	if res.acked {
		x.op.m.metrics.deliveredLive.Inc()
		if x.op.start != 0 {
			x.op.m.metrics.latencyLive.Observe(float64(nanotime()-x.op.start) / 1e9)
		}
		if !x.local {
			x.op.m.metrics.crossNode.Inc()
		}
		x.op.finish(true, nil)
	}
}

// encodeLive builds a live request: kindLive, a flags byte (bit 0: earlier live requests from this
// route to this device are unanswered), the route id's length (1 byte), the route id, and the
// encoded Envelope.
func encodeLive(routeID string, unanswered bool, env []byte) []byte {
	if len(routeID) > 255 {
		routeID = routeID[:255]
	}
	var flags byte
	if unanswered {
		flags = 1
	}
	b := make([]byte, 0, 3+len(routeID)+len(env))
	b = append(b, kindLive, flags, byte(len(routeID)))
	b = append(b, routeID...)
	return append(b, env...)
}

// decodeLive splits a live request's payload (after the kind byte).
func decodeLive(b []byte) (routeID string, unanswered bool, env []byte, ok bool) {
	if len(b) < 2 || len(b) < 2+int(b[1]) {
		return "", false, nil, false
	}
	n := int(b[1])
	return string(b[2 : 2+n]), b[0]&1 != 0, b[2+n:], true
}
