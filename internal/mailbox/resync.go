// Copyright 2026 The Petrel Authors
// SPDX-License-Identifier: Apache-2.0

package mailbox

import (
	"time"

	"github.com/nats-io/nats.go"

	"github.com/petrelchat/petrel/internal/bus"
)

// Recovery from messages the bus dropped.
//
// The device subscriptions deliver into one bounded channel (ingress; location.go). When it is
// full, nats.go drops the message (a wake-up, a live request, a takeover) and reports a slow
// consumer. A dropped live request ends in its sender's LiveAckTimeout and is stored then; a
// dropped wake-up would leave stored envelopes waiting until the next wake-up or reconnect; a
// dropped claim is announced again (takeover.go). Which device a dropped message was for is not
// known, so a report starts a resync: once the channels have room again, every attachment on this
// node is woken (it reads its inbox, asks the stream leader or a replica round whether anything
// is left, and announces its claim again, as after it attached), and the pass repeats while
// the subscriptions dropped more meanwhile.
//
// A route that broke and came back loses messages the same way, without a report: while it was
// down, a sender on the other side stored for a device attached here and published a wake-up
// that could not reach it (a partition healed before its clients were moved; a route that
// dropped for a moment). So a node that sees a route to the same server made again
// (bus.RouteConns; a server restarted has a new id and had no senders while it was down) wakes
// every attachment it holds, the same way.
//
// Why that cannot lose a drop: a pass reads the drop count after the channels have room and
// before it wakes anything, so every drop counted is followed by a wake-up of every attachment.
// A drop after the count either shows in the next pass's count, or belongs to a new episode
// (once the channel has room, the next message gets through, and nats.go reports the next drop
// again), whose report asks for another resync.

// onSlowConsumer is the bus's slow-consumer callback; it must not block.
func (m *Mailbox) onSlowConsumer(sub *nats.Subscription) {
	if bus.SubjectKind(sub.Subject) != bus.KindDevice {
		// Replies: a dropped live ack ends in LiveAckTimeout (the envelope is stored and
		// delivered again); a dropped inbox read fails on its sequence check and is retried.
		return
	}
	select {
	case m.resyncReq <- struct{}{}:
	default: // a resync is already due; it will see this drop
	}
}

// runResync runs a resync after each slow-consumer report, until the mailbox closes. It logs at
// most one line a second, with the totals since the last one.
func (m *Mailbox) runResync() {
	var lastLog time.Time
	var dropped, woken int
	for {
		select {
		case <-m.resyncAllReq:
			w := m.wakeAttached()
			m.log.Info("a route came back: attached devices' inboxes are re-read", "wakeups", w)
		case <-m.resyncReq:
			d, w := m.resync()
			dropped, woken = dropped+d, woken+w
			if dropped > 0 && time.Since(lastLog) >= time.Second {
				m.log.Warn("bus dropped messages to attached devices: their inboxes are re-read", "dropped", dropped, "wakeups", woken)
				lastLog, dropped, woken = time.Now(), 0, 0
			}
		case <-m.stop:
			return
		}
	}
}

// resync wakes every attachment when the device subscriptions dropped messages since the last
// resync, and repeats until they dropped none meanwhile. It returns how many drops it found and
// how many wake-ups it made.
func (m *Mailbox) resync() (dropped, woken int) {
	for {
		if !m.waitDispatchRoom() {
			return
		}
		n := m.ingressDropped()
		if n <= m.seenDropped {
			return dropped, woken
		}
		lost := n - m.seenDropped
		m.seenDropped = n
		m.metrics.busDropped.Add(float64(lost))
		dropped += lost
		woken += m.wakeAttached()
	}
}

// waitDispatchRoom waits until ingress and every dispatch channel are at most half full. It
// returns false if the mailbox closed meanwhile.
func (m *Mailbox) waitDispatchRoom() bool {
	var t *time.Ticker
	for {
		full := len(m.ingress) > cap(m.ingress)/2
		for _, ch := range m.dispatch {
			if len(ch) > cap(ch)/2 {
				full = true
				break
			}
		}
		if !full {
			if t != nil {
				t.Stop()
			}
			return true
		}
		if t == nil {
			t = time.NewTicker(5 * time.Millisecond)
		}
		select {
		case <-t.C:
		case <-m.stop:
			t.Stop()
			return false
		}
	}
}

// routeWatchEvery is how often the node looks for routes made again (watchRoutes).
const routeWatchEvery = 500 * time.Millisecond

// watchRoutes asks for a wake-up of every attachment (wakeAttached) whenever a route to a
// server it was routed to before is made again (see above), until the mailbox closes. Not with
// external NATS, whose routes the node cannot see.
func (m *Mailbox) watchRoutes() {
	seen, ok := m.bus.RouteConns()
	if !ok {
		return
	}
	t := time.NewTicker(routeWatchEvery)
	defer t.Stop()
	for {
		select {
		case <-t.C:
		case <-m.stop:
			return
		}
		now, ok := m.bus.RouteConns()
		if !ok {
			continue
		}
		again := false
		for id, conn := range now {
			if prev, known := seen[id]; known && conn > prev {
				again = true
			}
			seen[id] = conn
		}
		if len(seen) > 4*len(now)+16 { // forget servers gone for good (restarted ones have new ids)
			for id := range seen {
				if _, up := now[id]; !up {
					delete(seen, id)
				}
			}
		}
		if again {
			select {
			case m.resyncAllReq <- struct{}{}:
			default: // one is due already
			}
		}
	}
}

// wakeAttached wakes every attachment on this node (seq 0: each reads its inbox, settles again,
// and announces its claim again) and returns how many. It wakes them resyncPace at a time, each
// group once the node's inbox reads have room again, so that a resync of a node holding tens of
// thousands of devices adds no burst of its own to a bus that was already too slow.
func (m *Mailbox) wakeAttached() (woken int) {
	for i, a := range m.local.Values() {
		if i > 0 && i%resyncPace == 0 && !m.waitReadRoom() {
			break
		}
		a.wake("", 0)
		m.metrics.resyncWakes.Inc()
		woken++
	}
	return woken
}

// resyncPace is how many attachments a resync wakes before it waits for room in the inbox reads.
const resyncPace = 256

// waitReadRoom waits until at most half of the node's inbox read slots are taken (polled every
// 5 ms). It returns false if the mailbox closed meanwhile.
func (m *Mailbox) waitReadRoom() bool {
	for len(m.inboxReads) > cap(m.inboxReads)/2 {
		t := time.NewTimer(5 * time.Millisecond)
		select {
		case <-t.C:
		case <-m.stop:
			t.Stop()
			return false
		}
	}
	return !m.closed.Load()
}
