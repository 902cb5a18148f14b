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
// A connection takes its takeover order when it authenticates (Mailbox.Order: the node's clock in
// nanoseconds, strictly increasing on each node), and its attachment keeps it as its claim; ties
// between nodes are broken by the connection id, so claims are totally ordered. Attach enters the
// attachment in the node's table unless an attachment with a higher claim is there already (then
// it is the one taken over, CONNECTED_ELSEWHERE), and takes over the one it replaces: of two
// racing attachments on one node, the one whose connection authenticated last stays, even when
// the other's attach comes later (its handler held up between the Welcome and the attach).
//
// In a cluster (bus.Clustered) the attachment then announces its claim to every node (on
// dev.<device>, which every node's mailbox subscribes to; kindClaim, with the node's name, so
// that every node learns where the device is: location.go), and once more
// interestTimeout later. An attachment that hears a claim higher than its own is taken over; one
// that hears a lower claim announces its own again, so the lower one hears it. So of any
// attachments of a device only the one with the highest claim stays: each is in its node's table
// before it announces, so of two racing attachments the one that announces last is heard by the
// other, and both compare the same two claims. An announcement the bus dropped is made good by
// the second one, and by a resync (which announces again too).
// Of two racing connections the later one normally wins: claims follow the nodes' clocks, and a
// clock skew only decides which of two connections made within the skew stays. No claim is
// written anywhere: a connect costs one or two core NATS messages, not a replicated write (with
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
// Attach, owned by m.wg, until the claim is announced twice or a is detached.
func (a *Attachment) claim() {
	m := a.m
	if a.isClosed() {
		return
	}
	if h := m.hooks.claim; h != nil {
		h(a)
	}
	if h := m.hooks.claimed; h != nil {
		h(a, a.claimRev)
	}
	a.announce()
	// Once more, for an announcement of either attachment the bus may have dropped.
	if m.pause(interestTimeout) {
		if h := m.hooks.recheck; h != nil {
			h(a)
		}
		a.checkClaim()
	}
}

// announce publishes a's claim on its device's subject.
func (a *Attachment) announce() {
	rev := a.claimRev // set before a was shared
	if a.isClosed() {
		return
	}
	msg := make([]byte, 9, 9+len(a.connID))
	msg[0] = kindClaim
	binary.BigEndian.PutUint64(msg[1:], rev)
	_ = a.m.nc.PublishMsg(&nats.Msg{Subject: bus.DeviceSubject(a.dev), Data: append(msg, a.connID...),
		Header: nats.Header{claimNodeHeader: []string{a.m.cfg.Node}}})
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
	if (claimOf{a.claimRev, a.connID}).above(heard) { // an older one: make sure it hears ours
		a.announce()
		return
	}
	a.takenOver()
}

// checkClaim announces a's claim again: for an announcement a or the other attachment may not
// have heard (dropped by the bus: see settle). A higher claim
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
