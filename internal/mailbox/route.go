// Copyright 2026 The Petrel Authors
// SPDX-License-Identifier: Apache-2.0

package mailbox

import (
	"sync"

	"github.com/nats-io/nuid"
)

// Target is one recipient device and the encoded Envelope it should receive.
type Target struct {
	DeviceID string
	// DedupeID identifies this envelope for this device across resends (JetStream Nats-Msg-Id).
	DedupeID string
	Envelope []byte
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
	local   map[string]int // node-local live requests not yet answered
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
// the path changes only when the old one has nothing unanswered.
func (r *Route) decide(dev string, att *Attachment) (store, unanswered, local bool) {
	r.mu.Lock()
	defer r.mu.Unlock()
	remote, loc := r.remote[dev], r.local[dev]
	unanswered = remote+loc > 0
	if !unanswered && r.storing[dev] > 0 {
		return true, false, false
	}
	if att != nil && remote == 0 {
		if r.local == nil {
			r.local = make(map[string]int)
		}
		r.local[dev]++
		return false, unanswered, true
	}
	if r.remote == nil {
		r.remote = make(map[string]int)
	}
	r.remote[dev]++
	return false, unanswered, false
}

func (r *Route) liveAnswered(dev string, local bool) {
	r.mu.Lock()
	m := r.remote
	if local {
		m = r.local
	}
	if m[dev]--; m[dev] <= 0 {
		delete(m, dev)
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
	if a, ok := m.local.Load(dev); ok {
		return a.(*Attachment)
	}
	return nil
}

// Send delivers one message to every target and calls done once, when each device has either
// acked it live or has it stored durably (Outcome.Err == nil), or when that failed for some device.
// It never blocks on the network.
func (m *Mailbox) Send(route *Route, targets []Target, done func(Outcome)) {
	if len(targets) == 0 {
		done(Outcome{})
		return
	}
	var (
		mu   sync.Mutex
		out  Outcome
		left = len(targets)
	)
	finish := func(live bool, err error) {
		mu.Lock()
		switch {
		case err != nil:
			if out.Err == nil {
				out.Err = err
			}
		case live:
			out.Live++
		default:
			out.Stored++
		}
		left--
		last := left == 0
		res := out
		mu.Unlock()
		if last {
			if res.Err == nil {
				m.metrics.sends.Inc()
			}
			done(res)
		}
	}
	for _, t := range targets {
		store := func(ticket string) {
			route.beginStore(t.DeviceID)
			m.store(t.DeviceID, t.DedupeID, ticket, t.Envelope, func(err error) {
				route.endStore(t.DeviceID)
				finish(false, err)
			})
		}
		att := m.localAttachment(t.DeviceID)
		mustStore, unanswered, local := route.decide(t.DeviceID, att)
		if mustStore {
			store("")
			continue
		}
		answered := func(res liveResult) {
			// Begin the store (if any) before the live request counts as answered, so the next
			// envelope sees one path or the other in use.
			if !res.acked {
				store(res.ticket)
			}
			route.liveAnswered(t.DeviceID, local)
			if res.acked {
				m.metrics.deliveredLive.Inc()
				finish(true, nil)
			}
		}
		if local {
			att.offer(route.id, unanswered, t.Envelope, waiter{tok: m.addPending(answered)})
			continue
		}
		m.sendLive(t.DeviceID, encodeLive(route.id, unanswered, t.Envelope), answered)
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
