// Copyright 2026 The Petrel Authors
// SPDX-License-Identifier: Apache-2.0

package mailbox

import (
	"context"
	"encoding/binary"
	"time"

	"github.com/nats-io/nats.go"

	"github.com/petrelchat/petrel/internal/bus"
)

// Takeover: one connection per device across the cluster.
//
// On a node alone, Attach swaps the device's entry in the node's table of attachments: of two
// racing attachments, the one that swaps last stays, and it takes the other over.
//
// In a cluster (bus.Clustered), a new attachment first subscribes to its device's subject, waits
// until every routed node has that subscription (confirmInterest), then claims the device: it
// publishes to claim.<device> (bus.ClaimsStream) and the stream sequence of that publish is its
// claim. Then it announces the claim on the device's subject (kindClaim). An attachment that
// hears a claim higher than its own is taken over (CONNECTED_ELSEWHERE); a lower one it ignores;
// one it hears before its own claim is back is remembered and compared when it is. So of any
// attachments of a device, only the one with the highest claim stays:
//   - claims are totally ordered (one stream, sequences assigned by its leader);
//   - an older attachment hears every newer claim: the newer claim was made after the older one
//     was stored, so after the older attachment's subscription had reached every node, and the
//     newer announcement is published after that.
//
// Where a subscription cannot be confirmed (external NATS; a node that does not answer the ping),
// an attachment checks once more, interestTimeout after its own claim, whether a newer one was
// stored meanwhile (a read through the stream leader). So does a drain after a resync (see settle),
// for an announcement the bus may have dropped.

// kindClaim on dev.<device>: + the 8-byte big-endian claim + the connection id (for logs).
const kindClaim = 'c'

// claimRetryMax bounds the pause between attempts to store a claim (no quorum, a leader election).
const claimRetryMax = 5 * time.Second

// maxClaims bounds the claims one node has in flight: a reconnect storm (a dead node's clients
// arriving at once) queues its claims here rather than flooding the claims stream's leader.
const maxClaims = 256

// claim claims the device for a in the cluster (see above). It runs on its own goroutine from
// Attach, owned by m.wg, until the claim is announced or a is detached.
func (a *Attachment) claim() {
	m := a.m
	confirmed := m.confirmInterest() && !m.hooks.claimUnconfirmed
	backoff := 100 * time.Millisecond
	var rev uint64
	for {
		if a.isClosed() {
			return
		}
		if h := m.hooks.claim; h != nil {
			h(a)
		}
		select {
		case m.claimSlots <- struct{}{}:
		case <-m.stop:
			return
		}
		ctx, cancel := context.WithTimeout(m.stopCtx, m.cfg.StoreTimeout) // Close does not wait it out
		ack, err := m.bus.JS().Publish(ctx, bus.ClaimSubject(a.dev), []byte(m.cfg.Node))
		cancel()
		<-m.claimSlots
		if err == nil {
			rev = ack.Sequence
			break
		}
		if m.stopCtx.Err() != nil {
			return
		}
		m.log.Warn("connection claim", "device", a.dev, "err", err)
		if !m.pause(backoff) {
			return
		}
		backoff = min(2*backoff, claimRetryMax)
	}
	if h := m.hooks.claimed; h != nil {
		h(a, rev)
	}
	a.mu.Lock()
	a.claimRev = rev
	lost := a.newerClaim > rev
	a.mu.Unlock()
	if lost {
		a.takenOver()
		return
	}
	if a.isClosed() {
		return
	}
	msg := make([]byte, 9, 9+len(a.connID))
	msg[0] = kindClaim
	binary.BigEndian.PutUint64(msg[1:], rev)
	_ = m.nc.Publish(bus.DeviceSubject(a.dev), append(msg, a.connID...))
	if !confirmed && m.pause(interestTimeout) {
		if h := m.hooks.recheck; h != nil {
			h(a)
		}
		a.checkClaim()
	}
}

// onClaim handles another attachment's claim announcement.
func (a *Attachment) onClaim(msg *nats.Msg) {
	if len(msg.Data) < 9 {
		return
	}
	if h := a.m.hooks.claimHeard; h != nil && !h(a) {
		return
	}
	rev := binary.BigEndian.Uint64(msg.Data[1:9])
	a.mu.Lock()
	switch {
	case a.claimRev == 0: // ours is not back yet: compare when it is
		a.newerClaim = max(a.newerClaim, rev)
		a.mu.Unlock()
		return
	case rev <= a.claimRev: // our own, or an older one: it hears ours
		a.mu.Unlock()
		return
	}
	a.mu.Unlock()
	a.takenOver()
}

// checkClaim asks the claims stream's leader whether a claim newer than a's was stored, and hands
// the device over if so. For an announcement a may not have heard.
func (a *Attachment) checkClaim() {
	a.mu.Lock()
	rev := a.claimRev
	a.mu.Unlock()
	if rev == 0 || a.isClosed() {
		return
	}
	ctx, cancel := a.m.ctxStore()
	defer cancel()
	_, _, found, err := a.m.leaderGet(ctx, bus.ClaimsStream, bus.ClaimSubject(a.dev), rev+1)
	if err != nil {
		a.m.log.Warn("connection claim: check", "device", a.dev, "err", err)
		return
	}
	if found {
		a.takenOver()
	}
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
