// Copyright 2026 The Petrel Authors
// SPDX-License-Identifier: Apache-2.0

package mailbox

import (
	"sync"
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
	mu      sync.Mutex
	storing map[string]int // device → envelopes in the store path; guarded by mu
}

// NewRoute returns an empty route.
func NewRoute() *Route { return &Route{storing: map[string]int{}} }

func (r *Route) mustStore(dev string) bool {
	r.mu.Lock()
	defer r.mu.Unlock()
	return r.storing[dev] > 0
}

func (r *Route) beginStore(dev string) {
	r.mu.Lock()
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
		store := func() {
			route.beginStore(t.DeviceID)
			m.Store(t.DeviceID, t.DedupeID, t.Envelope, func(err error) {
				route.endStore(t.DeviceID)
				finish(false, err)
			})
		}
		if route.mustStore(t.DeviceID) {
			store()
			continue
		}
		payload := encodeLive(t.DedupeID, t.Envelope)
		m.sendLive(t.DeviceID, payload, func(res liveResult) {
			switch res {
			case liveAcked:
				m.metrics.deliveredLive.Inc()
				finish(true, nil)
			case liveStored:
				finish(false, nil)
			default:
				store()
			}
		})
	}
}

// encodeLive builds a live request: kindLive, the dedupe id's length (1 byte), the dedupe id, and
// the encoded Envelope. The dedupe id travels along so that the device's node can store the
// envelope itself, under the same id, when the device cannot take it live.
func encodeLive(dedupeID string, env []byte) []byte {
	if len(dedupeID) > 255 {
		dedupeID = dedupeID[:255]
	}
	b := make([]byte, 0, 2+len(dedupeID)+len(env))
	b = append(b, kindLive, byte(len(dedupeID)))
	b = append(b, dedupeID...)
	return append(b, env...)
}

// decodeLive splits a live request's payload (after the kind byte).
func decodeLive(b []byte) (dedupeID string, env []byte, ok bool) {
	if len(b) < 1 || len(b) < 1+int(b[0]) {
		return "", nil, false
	}
	n := int(b[0])
	return string(b[1 : 1+n]), b[1+n:], true
}
