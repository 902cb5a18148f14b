// Copyright 2026 The Petrel Authors
// SPDX-License-Identifier: Apache-2.0

package mailbox

import (
	"testing"
	"time"

	"github.com/prometheus/client_golang/prometheus"
	dto "github.com/prometheus/client_model/go"
)

// counterOf reads a mailbox counter.
func counterOf(t *testing.T, c prometheus.Counter) float64 {
	t.Helper()
	var m dto.Metric
	if err := c.Write(&m); err != nil {
		t.Fatal(err)
	}
	return m.GetCounter().GetValue()
}

// attachAcking attaches orderDev on m with a sink that acks every push, and waits for its
// QueueEmpty.
func attachAcking(t *testing.T, m *Mailbox) (*Attachment, *orderSink) {
	t.Helper()
	s := newOrderSink()
	a, err := m.Attach(orderDev, "c1", s)
	if err != nil {
		t.Fatal(err)
	}
	s.ackAll(t, a)
	<-s.empty
	return a, s
}

// A node learns where a device is from the node holding it, without a subscription per device:
// its first envelope to the device is stored (it knows no node) and the commit's wake-up, which
// the holding node answers with a hint, tells it; the next envelope goes live to that node. After
// the device detached, that node answers "not here": the envelope is stored and the location
// forgotten. Fails when hints are not sent or not kept (the second envelope is stored too), or
// when "not here" is not answered (the third waits live_ack_timeout: the send outlives 1 s).
func TestLocationLearntFromTheHoldingNode(t *testing.T) {
	b, m1 := openHooked(t, Config{Node: "n1", LiveAckTimeout: 10 * time.Second}, testHooks{})
	m2 := openNode(t, b, "n2", testHooks{}, false)
	a, s := attachAcking(t, m2)
	if n, ok := m1.Located(orderDev); ok {
		t.Fatalf("n1 knows the device is on %q before anything was sent to it", n)
	}

	r := NewRoute()
	if o := outcome(t, send(m1, r, "e1"), "e1"); o.Stored != 1 {
		t.Fatalf("e1: %+v, want stored (n1 knows no node for the device)", o)
	}
	if v := counterOf(t, m1.metrics.unlocated); v != 1 {
		t.Fatalf("n1 counted %v unlocated sends, want 1", v)
	}
	s.waitPushes(t, 1)
	waitCond(t, "n1 told where the device is", func() bool { n, ok := m1.Located(orderDev); return ok && n == "n2" })
	waitCond(t, "the attachment live again", func() bool { _, live := m2.Attached(orderDev); return live })
	if o := outcome(t, send(m1, r, "e2"), "e2"); o.Live != 1 {
		t.Fatalf("e2: %+v, want live (n1 knows the device is on n2)", o)
	}
	wantOrder(t, s.waitPushes(t, 2), "e1", "e2")

	a.Detach()
	start := time.Now()
	if o := outcome(t, send(m1, r, "e3"), "e3"); o.Stored != 1 {
		t.Fatalf("e3: %+v, want stored (the device is gone)", o)
	}
	if d := time.Since(start); d > time.Second {
		t.Fatalf("e3 took %s: n2 did not answer \"not here\"", d)
	}
	if n, ok := m1.Located(orderDev); ok {
		t.Fatalf("n1 still sends the device's envelopes to %q after \"not here\"", n)
	}
	if v := counterOf(t, m1.metrics.moved); v != 1 {
		t.Fatalf("n1 counted %v moved devices, want 1", v)
	}
}

// Every node hears a new connection's claim, which names its node: a device that connects is
// reached live from any node at once, with nothing stored (after its node died, while its inbox
// stream may have no leader). Fails when claims do not carry the node.
func TestLocationLearntFromClaims(t *testing.T) {
	b, m1 := openHooked(t, Config{Node: "n1", LiveAckTimeout: 10 * time.Second}, testHooks{})
	m1.claims = true
	m2 := openNode(t, b, "n2", testHooks{}, true)
	attachAcking(t, m2)
	waitCond(t, "n1 heard the claim", func() bool { n, ok := m1.Located(orderDev); return ok && n == "n2" })
	if o := outcome(t, send(m1, NewRoute(), "e1"), "e1"); o.Live != 1 {
		t.Fatalf("e1: %+v, want live", o)
	}
	if v := counterOf(t, m1.metrics.unlocated); v != 0 {
		t.Fatalf("n1 counted %v unlocated sends, want 0", v)
	}
}

// The cache of locations stays bounded, whatever the number of devices heard of.
func TestLocationsBounded(t *testing.T) {
	var l locations
	for i := range 3 * maxLocations {
		l.put(string(rune('a'+i%26))+time.Duration(i).String(), "n"+string(rune('0'+i%3)))
	}
	if n := l.len(); n > maxLocations || n < maxLocations*7/8 {
		t.Fatalf("%d locations kept, want at most %d and most of them", n, maxLocations)
	}
	if len(l.names) != 3 {
		t.Fatalf("%d node names kept, want 3 (shared by the entries)", len(l.names))
	}
}
