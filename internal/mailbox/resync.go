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
// Device subscriptions deliver into a few shared, bounded channels (see dispatch). When one is
// full, nats.go drops the message (a wake-up, a live request, a takeover) and reports a slow
// consumer. A dropped live request ends in its sender's LiveAckTimeout and is stored then; a
// dropped wake-up would leave stored envelopes waiting until the next wake-up or reconnect. So a
// report starts a resync: every attachment on this node whose subscription dropped something
// (Subscription.Dropped grew) is sent a wake-up of its own over the bus, which makes it read its
// inbox. The resync waits for room in the channels before it publishes, sends at most
// resyncChunk wake-ups between flushes, and repeats until a pass finds no new drop.
//
// A route that broke and came back loses messages the same way, without a report: while it was
// down, a sender on the other side found no responders for a device attached here, stored, and
// published a wake-up that could not reach it (a partition healed before its clients were moved;
// a route that dropped for a moment). So a node that sees a route to the same server made again
// (bus.RouteConns; a server restarted has a new id and had no senders while it was down) wakes
// every attachment it holds, the same way.
//
// Why that cannot lose a drop: nats.go reports a subscription's drops once per episode; it
// reports again only after one of its messages got through. A pass flushes its wake-ups, so
// each was either delivered (the episode is over: later drops are reported again) or dropped
// (Dropped grew: the next pass sends another). A pass that finds no growth therefore leaves no
// subscription in an unreported episode.

// resyncChunk is the most resync wake-ups published between flushes: a quarter of one dispatch
// channel, so a resync cannot fill the channels by itself.
func (m *Mailbox) resyncChunk() int { return max(1, cap(m.dispatch[0])/4) }

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

// resync wakes every attachment whose subscription dropped messages since the last resync, and
// repeats until it finds none. It returns how many drops it found and how many wake-ups it sent.
func (m *Mailbox) resync() (dropped, woken int) {
	type wake struct {
		a    *Attachment
		prev int // seenDropped before this pass
	}
	var grown []wake
	for {
		if !m.waitDispatchRoom() {
			return
		}
		grown = grown[:0]
		lost := 0
		for _, a := range m.attached.Values() {
			n, err := a.sub.Dropped()
			if err != nil { // unsubscribed: detached, nothing to deliver
				continue
			}
			// seenDropped is only touched by this goroutine.
			if n > a.seenDropped {
				lost += n - a.seenDropped
				grown = append(grown, wake{a, a.seenDropped})
				a.seenDropped = n
			}
		}
		if len(grown) == 0 {
			return dropped, woken
		}
		chunk := m.resyncChunk()
		var err error
		for i, w := range grown {
			if i > 0 && i%chunk == 0 {
				// Let the dispatchers catch up before the next chunk.
				if err = m.nc.Flush(); err != nil {
					break
				}
				if !m.waitDispatchRoom() {
					return
				}
			}
			if err = m.nc.Publish(w.a.sub.Subject, []byte{kindWake}); err != nil {
				break
			}
			m.metrics.resyncWakes.Inc()
			woken++
		}
		// After the flush each wake-up was either delivered or dropped (the connection handles
		// what the server sent before its PONG): the next pass tells which.
		if err == nil {
			err = m.nc.Flush()
		}
		if err == nil {
			m.metrics.busDropped.Add(float64(lost))
			dropped += lost
		} else {
			// The bus is away: forget this pass's drops, so the next pass finds (and counts) them
			// again and sends their wake-ups again.
			m.log.Warn("resync wake-ups not confirmed; retrying", "err", err)
			for _, w := range grown {
				w.a.seenDropped = w.prev
			}
			t := time.NewTimer(time.Second)
			select {
			case <-t.C:
			case <-m.stop:
				t.Stop()
				return
			}
		}
	}
}

// waitDispatchRoom waits until every dispatch channel is at most half full. It returns false if
// the mailbox closed meanwhile.
func (m *Mailbox) waitDispatchRoom() bool {
	var t *time.Ticker
	for {
		full := false
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

// wakeAttached sends every attachment on this node a wake-up of its own over the bus (as resync
// does), so that each reads its inbox; it returns how many it sent.
func (m *Mailbox) wakeAttached() (woken int) {
	var subs []string
	for _, a := range m.attached.Values() {
		subs = append(subs, a.sub.Subject)
	}
	chunk := m.resyncChunk()
	for i, subj := range subs {
		if i%chunk == 0 {
			// Let the dispatchers catch up before the next chunk.
			if i > 0 {
				if err := m.nc.Flush(); err != nil {
					m.log.Warn("wake-ups after a route came back: not all sent", "err", err, "sent", woken, "attached", len(subs))
					return woken
				}
			}
			if !m.waitDispatchRoom() {
				return woken
			}
		}
		if err := m.nc.Publish(subj, []byte{kindWake}); err != nil {
			m.log.Warn("wake-ups after a route came back: not all sent", "err", err, "sent", woken, "attached", len(subs))
			return woken
		}
		m.metrics.resyncWakes.Inc()
		woken++
	}
	return woken
}
