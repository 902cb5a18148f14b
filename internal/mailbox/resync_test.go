// Copyright 2026 The Petrel Authors
// SPDX-License-Identifier: Apache-2.0

package mailbox

import (
	"context"
	"errors"
	"fmt"
	"io"
	"log/slog"
	"sync"
	"testing"
	"time"

	"github.com/nats-io/nats.go"
	"github.com/prometheus/client_golang/prometheus"

	"github.com/petrelchat/petrel/internal/bus"
	"github.com/petrelchat/petrel/internal/metricstest"
)

// dropSink blocks the first live push until release is closed (a dispatcher stuck behind a slow
// device), and reports every envelope it is handed.
type dropSink struct {
	empty   chan struct{} // closed by QueueEmpty
	entered chan struct{} // closed when the first live push blocks
	release chan struct{}

	mu      sync.Mutex
	blocked bool
	got     map[string]int
	want    map[string]bool
	all     chan struct{} // closed when every wanted envelope arrived
}

func (s *dropSink) Push(tag uint64, env []byte) error {
	s.mu.Lock()
	block := tag&liveTagBit != 0 && !s.blocked
	s.blocked = s.blocked || block
	s.mu.Unlock()
	if block {
		close(s.entered)
		<-s.release
	}
	s.mu.Lock()
	defer s.mu.Unlock()
	s.got[string(env)]++
	for w := range s.want {
		if s.got[w] == 0 {
			return nil
		}
	}
	if s.all != nil {
		close(s.all)
		s.all = nil
	}
	return nil
}
func (s *dropSink) QueueEmpty(int) { close(s.empty) }
func (s *dropSink) Kicked()        {}

// counterValue is the value of a counter (with the given label, if any) in reg.
func counterValue(t *testing.T, reg *prometheus.Registry, name, label, value string) float64 {
	t.Helper()
	v, ok, err := metricstest.Counter(reg, name, label, value)
	if err != nil || !ok {
		t.Fatalf("metric %s{%s=%q}: found %v, %v", name, label, value, ok, err)
	}
	return v
}

// When the bus drops a device's wake-ups and live requests (its dispatch channel is full), the drop
// is counted, and every envelope still reaches the connected device without a reconnect: the
// dropped live requests are stored after live_ack_timeout, and the resync makes the device read
// its inbox although every wake-up for those stores was dropped too.
func TestBusDropsAreRecovered(t *testing.T) {
	quiet := slog.New(slog.NewTextHandler(io.Discard, nil))
	reg := prometheus.NewRegistry()
	b, err := bus.Open(context.Background(), bus.Config{DataDir: t.TempDir(), InboxShards: 1, Logger: quiet, Registry: reg})
	if err != nil {
		t.Fatal(err)
	}
	t.Cleanup(b.Close)
	const liveTimeout = 100 * time.Millisecond
	// The device's node, with dispatch channels of two messages.
	m := New(b, Config{Logger: quiet, Registry: reg, LiveAckTimeout: liveTimeout, dispatchCap: 2})
	// Another node on the same bus: its sends reach the device over the bus only.
	other := New(b, Config{Logger: quiet, Node: "other", LiveAckTimeout: liveTimeout})
	for _, mb := range []*Mailbox{m, other} {
		if err := mb.Start(); err != nil {
			t.Fatal(err)
		}
		t.Cleanup(mb.Close)
	}
	drops := make(chan string, 64)
	defer b.OnSlowConsumer(func(sub *nats.Subscription) {
		select {
		case drops <- bus.SubjectKind(sub.Subject):
		default:
		}
	})()

	const dev = "0123456789abcdef0123456789abcdef"
	sink := &dropSink{
		empty: make(chan struct{}), entered: make(chan struct{}), release: make(chan struct{}),
		got: map[string]int{}, want: map[string]bool{"L1": true, "L2": true, "S1": true}, all: make(chan struct{}),
	}
	all := sink.all
	var releaseOnce sync.Once
	release := func() { releaseOnce.Do(func() { close(sink.release) }) }
	t.Cleanup(release) // before the mailboxes close: their dispatchers must not stay blocked
	a, err := m.Attach(dev, "c1", sink)
	if err != nil {
		t.Fatal(err)
	}
	defer a.Detach()
	<-sink.empty                    // live from here
	other.locs.put(dev, m.cfg.Node) // as a hint from m would

	outcomes := make(chan Outcome, 2)
	send := func(id string) {
		other.Send(NewRoute(), []Target{{DeviceID: dev, DedupeID: id, Envelope: []byte(id)}}, func(o Outcome) { outcomes <- o })
	}
	// L1 goes live and blocks the device's dispatcher.
	send("L1")
	<-sink.entered
	// Fill the device's dispatch channel (two), the ingress router's hands (one) and ingress
	// (two) with messages the attachment ignores.
	// (two) with messages the attachment ignores: one more until both channels are full (a
	// filler may be dropped itself while the router has not moved the earlier ones yet).
	nc := b.Conn()
	deadline := time.Now().Add(10 * time.Second)
	for len(m.ingress) < cap(m.ingress) || len(m.dispatcherFor(dev)) < cap(m.dispatcherFor(dev)) {
		if time.Now().After(deadline) {
			t.Fatalf("channels not full: ingress %d, dispatch %d", len(m.ingress), len(m.dispatcherFor(dev)))
		}
		if err := nc.Publish(bus.DeviceSubject(dev), nil); err != nil {
			t.Fatal(err)
		}
		if err := nc.Flush(); err != nil {
			t.Fatal(err)
		}
		time.Sleep(time.Millisecond) // lets the router move what it can; bounded by the deadline
	}
	fillersDropped := m.ingressDropped()
	// Dropped from here: the live request L2, the wake-up of S1's store, and the wake-ups of L1's
	// and L2's stores after live_ack_timeout.
	send("L2")
	stored := make(chan error, 1)
	other.Store(dev, "S1", []byte("S1"), func(err error) { stored <- err })
	if err := <-stored; err != nil {
		t.Fatal(err)
	}
	for range 2 {
		if o := <-outcomes; o.Err != nil || o.Stored != 1 {
			t.Fatalf("a live request the device never answered: %+v, want stored", o)
		}
	}
	// Every wake-up was published before its store was acked; after the flush the connection has
	// handled (dropped) them.
	if err := nc.Flush(); err != nil {
		t.Fatal(err)
	}
	if kind := <-drops; kind != bus.KindDevice {
		t.Fatalf("slow consumer on a %s subject, want %s", kind, bus.KindDevice)
	}
	if n := m.ingressDropped() - fillersDropped; n < 3 {
		t.Fatalf("the device subscriptions dropped %d, want at least 3 (L2, and the wake-ups of S1 and L1/L2)", n)
	}
	if v := counterValue(t, reg, "petrel_bus_slow_consumer_total", "subject_kind", bus.KindDevice); v < 1 {
		t.Fatalf("petrel_bus_slow_consumer_total{subject_kind=device} = %v, want at least 1", v)
	}

	release()
	select {
	case <-all:
	case <-time.After(20 * time.Second):
		sink.mu.Lock()
		defer sink.mu.Unlock()
		t.Fatalf("envelopes stuck after the bus dropped their wake-ups: the device got %v, want L1, L2, S1", sink.got)
	}
	if v := counterValue(t, reg, "petrel_mailbox_bus_dropped_total", "", ""); v < 3 {
		t.Fatalf("petrel_mailbox_bus_dropped_total = %v, want at least 3", v)
	}
	if v := counterValue(t, reg, "petrel_mailbox_resync_wakes_total", "", ""); v < 1 {
		t.Fatalf("petrel_mailbox_resync_wakes_total = %v, want at least 1", v)
	}
}

// pushSink reports each envelope pushed, in order, on a channel.
type pushSink struct{ got chan string }

func (s *pushSink) Push(_ uint64, env []byte) error { s.got <- string(env); return nil }
func (s *pushSink) QueueEmpty(int)                  {}
func (s *pushSink) Kicked()                         {}

// An inbox read whose answer the node's reply subscription dropped (a slow consumer) stops before
// the gap and is read again: the device gets every envelope, in order, and none is skipped (a
// skipped one would be purged with the acks of the ones after it).
func TestDroppedInboxReadIsReadAgain(t *testing.T) {
	b, m := openInternal(t)
	const dev = "0123456789abcdef0123456789abcdef"
	stored := make(chan error, 3)
	big := make([]byte, 8<<10)
	copy(big, "S2")
	for _, env := range [][]byte{[]byte("S1"), big, []byte("S3")} {
		m.Store(dev, string(env[:2]), env, func(err error) { stored <- err })
		if err := <-stored; err != nil {
			t.Fatal(err)
		}
	}
	drops := make(chan struct{}, 1)
	defer b.OnSlowConsumer(func(sub *nats.Subscription) {
		if bus.SubjectKind(sub.Subject) == bus.KindReply {
			select {
			case drops <- struct{}{}:
			default:
			}
		}
	})()
	// S2 is larger than the reply subscription's byte limit: nats.go drops it, and it alone.
	if err := m.replySub.SetPendingLimits(1<<20, 4<<10); err != nil {
		t.Fatal(err)
	}
	sink := &pushSink{got: make(chan string, 64)}
	a, err := m.Attach(dev, "c1", sink)
	if err != nil {
		t.Fatal(err)
	}
	defer a.Detach()
	<-drops
	if err := m.replySub.SetPendingLimits(1<<20, 256<<20); err != nil {
		t.Fatal(err)
	}
	var order []string
	seen := map[string]bool{}
	timeout := time.After(20 * time.Second)
	for len(seen) < 3 {
		select {
		case env := <-sink.got:
			if id := env[:2]; !seen[id] {
				seen[id] = true
				order = append(order, id)
			}
		case <-timeout:
			t.Fatalf("the device got %v after a dropped read answer, want S1 S2 S3", order)
		}
	}
	if fmt.Sprint(order) != "[S1 S2 S3]" {
		t.Fatalf("delivery order %v, want [S1 S2 S3]", order)
	}
}

// getBatch reports a lost answer as errBatchGap and stops before it.
func TestGetBatchReportsGap(t *testing.T) {
	b, m := openInternal(t)
	const dev = "0123456789abcdef0123456789abcdef"
	ctx := context.Background()
	big := make([]byte, 8<<10)
	for _, env := range [][]byte{[]byte("a"), big, []byte("c")} {
		if _, err := b.JS().Publish(ctx, b.InboxSubject(dev), env); err != nil {
			t.Fatal(err)
		}
	}
	if err := m.replySub.SetPendingLimits(1<<20, 4<<10); err != nil {
		t.Fatal(err)
	}
	var got []string
	n, err := m.getBatch(ctx, bus.InboxStreamName(0), b.InboxSubject(dev), 1, 10, 0, func(_ uint64, data []byte) bool {
		got = append(got, string(data[:1]))
		return true
	})
	if !errors.Is(err, errBatchGap) || n != 1 || fmt.Sprint(got) != "[a]" {
		t.Fatalf("read across a dropped answer: %d %v, %v; want 1 [a], errBatchGap", n, got, err)
	}
}
