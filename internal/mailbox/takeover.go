// Copyright 2026 The Petrel Authors
// SPDX-License-Identifier: Apache-2.0

package mailbox

import (
	"encoding/binary"
	"time"

	"github.com/nats-io/nats.go"

	"github.com/petrelchat/petrel/internal/bus"
)

// Takeover: one connection per device across the cluster.
//
// On a node alone, Attach swaps the device's entry in the node's table of attachments: of two
// racing attachments, the one whose connection authenticated last stays (the gateway takes the
// order at authentication, AttachAfter), and it takes the other over, even when the other's
// attach comes later (its handler held up between the Welcome and the attach).
//
// In a cluster (bus.Clustered), a new attachment first subscribes to its device's subject, waits
// until every routed node has that subscription (confirmInterest), then takes a claim: the node's
// clock in nanoseconds (strictly increasing on each node), ties between nodes broken by the
// connection id, so claims are totally ordered. It announces the claim on the device's subject
// (kindClaim) and once more interestTimeout later. An attachment that hears a claim higher than
// its own is taken over (CONNECTED_ELSEWHERE); one that hears a lower claim announces its own
// again, so the lower one hears it; a claim heard before its own is taken is remembered and
// compared then. So of any attachments of a device only the one with the highest claim stays:
//   - once both subscriptions have reached every node, any announcement of either is heard by the
//     other, and both compare the same two claims;
//   - an announcement made before the other's subscription had spread is followed by the
//     announcement interestTimeout later (by then it has spread, or confirmInterest would have
//     waited for it), and a resync (the bus dropped messages) announces again too.
// Of two racing connections the later one normally wins: claims follow the nodes' clocks, and a
// clock skew only decides which of two connections made within the skew stays. No claim is
// written anywhere: a connect costs two or three core NATS messages, not a replicated write (with
// 200,000 devices reconnecting, replicated claims kept three fsync'd stores busy for minutes).

// kindClaim on dev.<device>: + the 8-byte big-endian claim + the connection id.
const kindClaim = 'c'

// claimOf is one announced claim.
type claimOf struct {
	rev    uint64
	connID string
}

// above reports whether c orders after d (the higher claim stays).
func (c claimOf) above(d claimOf) bool {
	return c.rev > d.rev || (c.rev == d.rev && c.connID > d.connID)
}

// nextClaim takes this node's next claim value: its clock in nanoseconds, strictly increasing.
func (m *Mailbox) nextClaim() uint64 {
	now := uint64(time.Now().UnixNano())
	for {
		last := m.lastClaim.Load()
		next := max(now, last+1)
		if m.lastClaim.CompareAndSwap(last, next) {
			return next
		}
	}
}

// claim claims the device for a in the cluster (see above). It runs on its own goroutine from
// Attach, owned by m.wg, until the claim is announced or a is detached.
func (a *Attachment) claim() {
	m := a.m
	m.confirmInterest() // the subscription has spread (or interestTimeout passed)
	if a.isClosed() {
		return
	}
	if h := m.hooks.claim; h != nil {
		h(a)
	}
	rev := m.nextClaim()
	if h := m.hooks.claimed; h != nil {
		h(a, rev)
	}
	mine := claimOf{rev, a.connID}
	a.mu.Lock()
	a.claimRev = rev
	lost := a.newerClaim.above(mine)
	a.mu.Unlock()
	if lost {
		a.takenOver()
		return
	}
	a.announce()
	// Once more when the other attachment's subscription has surely spread too (see above).
	if m.pause(interestTimeout) {
		if h := m.hooks.recheck; h != nil {
			h(a)
		}
		a.checkClaim()
	}
}

// announce publishes a's claim on its device's subject.
func (a *Attachment) announce() {
	a.mu.Lock()
	rev, closed := a.claimRev, a.closed
	a.mu.Unlock()
	if rev == 0 || closed {
		return
	}
	msg := make([]byte, 9, 9+len(a.connID))
	msg[0] = kindClaim
	binary.BigEndian.PutUint64(msg[1:], rev)
	_ = a.m.nc.Publish(bus.DeviceSubject(a.dev), append(msg, a.connID...))
}

// onClaim handles a claim announcement (another attachment's, or a's own).
func (a *Attachment) onClaim(msg *nats.Msg) {
	if len(msg.Data) < 9 {
		return
	}
	heard := claimOf{binary.BigEndian.Uint64(msg.Data[1:9]), string(msg.Data[9:])}
	if heard.connID == a.connID {
		return // our own
	}
	if h := a.m.hooks.claimHeard; h != nil && !h(a) {
		return
	}
	a.mu.Lock()
	mine := claimOf{a.claimRev, a.connID}
	switch {
	case a.claimRev == 0: // ours is not taken yet: compare when it is
		if heard.above(a.newerClaim) {
			a.newerClaim = heard
		}
		a.mu.Unlock()
		return
	case mine.above(heard): // an older one: make sure it hears ours
		a.mu.Unlock()
		a.announce()
		return
	}
	a.mu.Unlock()
	a.takenOver()
}

// checkClaim announces a's claim again: for an announcement a or the other attachment may not
// have heard (a subscription still spreading, or dropped by the bus: see settle). A higher claim
// answers with its own announcement.
func (a *Attachment) checkClaim() {
	a.announce()
}

// takenOver detaches a, taken over by a newer connection of its device, and tells its connection.
func (a *Attachment) takenOver() {
	if a.isClosed() {
		return
	}
	a.m.metrics.takeovers.Inc()
	a.Detach()
	a.sink.Kicked()
}

func (a *Attachment) isClosed() bool {
	a.mu.Lock()
	defer a.mu.Unlock()
	return a.closed
}

// pause waits d, or less when the mailbox closes (false).
func (m *Mailbox) pause(d time.Duration) bool {
	t := time.NewTimer(d)
	defer t.Stop()
	select {
	case <-t.C:
		return true
	case <-m.stop:
		return false
	}
}
