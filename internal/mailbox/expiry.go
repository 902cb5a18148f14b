// Copyright 2026 The Petrel Authors
// SPDX-License-Identifier: Apache-2.0

package mailbox

import (
	"strconv"
	"time"

	"github.com/prometheus/client_golang/prometheus"

	pb "github.com/petrelchat/petrel/proto/petrel/v1"
)

// Disappearing messages. A Send with expires_at_ms gives each of its targets that expiry
// (Target.ExpiresAtMs; the envelope carries it too, Envelope.expires_at_ms). The mailbox keeps
// it in three places, none of which costs a send without an expiry anything:
//
//   - Store: the append carries a JetStream per-message TTL (the Nats-TTL header, whole seconds,
//     rounded up; the inbox streams allow them), so the store itself deletes the envelope at its
//     expiry: no sweeper of ours, no index of expiring envelopes. An envelope already expired
//     when it would be stored is not stored at all (the sender is acked: it was deleted at its
//     expiry, which is now).
//   - Read: the store deletes expired messages on its own schedule (and the TTL is rounded up to
//     a second), so every stored envelope read for delivery is checked against the clock first
//     (EnvelopeExpiry reads one varint of the envelope's top level): an expired one is never
//     pushed, but counted as acked, so the purge that follows the device's acks deletes it too.
//   - Live delivery is immediate: a connected device gets the envelope at once, expiry or not
//     (its client deletes the message from its history at expiry).
//
// The inbox index (quota.go) counts an envelope the store expired until the device drains its
// inbox (or the index is rebuilt after a restart): a device whose inbox fills up with expired
// envelopes and never connects is refused a little early. The stream's MaxAge (inbox_max_age)
// still bounds every envelope, expiring or not.

// kindEphemeral + an encoded Envelope: an ephemeral delivery (ephemeral.go); no reply expected.
const kindEphemeral = 'e'

// nowMs is the mailbox's wall clock for expiries (Unix ms); tests in this package replace it.
var nowMs = func() int64 { return time.Now().UnixMilli() }

// ttlHeader is the Nats-TTL header value for an envelope expiring at expiresAtMs: the seconds
// from now, rounded up, at least 1 (JetStream's smallest TTL).
func ttlHeader(expiresAtMs int64) string {
	ms := expiresAtMs - nowMs()
	secs := max((ms+999)/1000, 1)
	return strconv.FormatInt(secs, 10)
}

// expiredAtStore reports whether an envelope expiring at expiresAtMs (0: never) has expired
// already, and counts it.
func (m *Mailbox) expiredAtStore(expiresAtMs int64) bool {
	if expiresAtMs == 0 || expiresAtMs > nowMs() {
		return false
	}
	m.ext.expired.WithLabelValues("store").Inc()
	return true
}

// expired reports whether a stored envelope is a disappearing message past its expiry.
func expired(envelope []byte) bool {
	exp := pb.EnvelopeExpiry(envelope)
	return exp != 0 && exp <= nowMs()
}

// dropExpired handles a stored envelope read past its expiry: it is not pushed, but recorded as
// pushed and acked, so the next purge deletes it with the envelopes acked before it.
func (a *Attachment) dropExpired(seq uint64, size int) {
	a.mu.Lock()
	if a.closed || seq < a.nextSeq {
		a.mu.Unlock()
		return
	}
	a.addOutstandingLocked(seq, size, sentExpired)
	a.nextSeq = seq + 1
	a.mu.Unlock()
	a.m.ext.expired.WithLabelValues("read").Inc()
	a.Ack([]uint64{seq})
}

// extMetrics are the mailbox's metrics for disappearing and ephemeral envelopes.
type extMetrics struct {
	expired   *prometheus.CounterVec
	ephemeral *prometheus.CounterVec
}

// Outcomes of an ephemeral envelope (petrel_mailbox_ephemeral_total).
const (
	ephemeralPushed  = "pushed"  // written to a device's connection on this node
	ephemeralRelayed = "relayed" // published to the node holding the device (counted there too)
	ephemeralShed    = "shed"    // dropped: the connection was slow or the node loaded
	ephemeralBusy    = "busy"    // dropped: the device was draining its inbox or its window was full
)

func newExtMetrics(reg prometheus.Registerer) *extMetrics {
	m := &extMetrics{
		expired: prometheus.NewCounterVec(prometheus.CounterOpts{Name: "petrel_mailbox_expired_total",
			Help: "Disappearing envelopes not delivered because they had expired: store (expired before it was stored: not stored), read (read from an inbox after its expiry, before the store deleted it: not pushed, purged)."}, []string{"where"}),
		ephemeral: prometheus.NewCounterVec(prometheus.CounterOpts{Name: "petrel_mailbox_ephemeral_total",
			Help: "Ephemeral envelopes (typing indicators; never stored), by outcome: pushed, relayed (to another node), shed (slow connection or loaded node), busy (device draining or window full)."}, []string{"outcome"}),
	}
	for _, w := range []string{"store", "read"} {
		m.expired.WithLabelValues(w)
	}
	for _, o := range []string{ephemeralPushed, ephemeralRelayed, ephemeralShed, ephemeralBusy} {
		m.ephemeral.WithLabelValues(o)
	}
	if reg != nil {
		reg.MustRegister(m.expired, m.ephemeral)
	}
	return m
}
