// Copyright 2026 The Petrel Authors
// SPDX-License-Identifier: Apache-2.0

package mailbox

import (
	"context"
	"fmt"
	"io"
	"log/slog"
	"sync"
	"testing"
	"time"

	"github.com/synadia-io/orbit.go/jetstreamext"

	"github.com/petrelchat/petrel/internal/bus"
)

type quietSink struct{ empty chan struct{} }

// openInternal opens a bus (one inbox shard) and a started mailbox (cfg, if given), both closed
// when t ends.
func openInternal(t testing.TB, cfg ...Config) (*bus.Bus, *Mailbox) {
	t.Helper()
	quiet := slog.New(slog.NewTextHandler(io.Discard, nil))
	b, err := bus.Open(context.Background(), bus.Config{DataDir: t.TempDir(), InboxShards: 1, Logger: quiet})
	if err != nil {
		t.Fatal(err)
	}
	var c Config
	if len(cfg) > 0 {
		c = cfg[0]
	}
	c.Logger = quiet
	m := New(b, c)
	if err := m.Start(); err != nil {
		b.Close()
		t.Fatal(err)
	}
	t.Cleanup(func() { m.Close(); b.Close() })
	return b, m
}

func (s *quietSink) Push(uint64, []byte) error { return nil }
func (s *quietSink) QueueEmpty(int)            { close(s.empty) }
func (s *quietSink) Kicked()                   {}

// Acks of tags that were never pushed are ignored: a client cannot grow the server's state by
// acking bogus tags (invariant 7).
func TestBogusAcksAreNotRemembered(t *testing.T) {
	_, m := openInternal(t)
	sink := &quietSink{empty: make(chan struct{})}
	a, err := m.Attach("0123456789abcdef0123456789abcdef", "c1", sink)
	if err != nil {
		t.Fatal(err)
	}
	defer a.Detach()
	<-sink.empty
	bogus := make([]uint64, 20_000)
	for i := range bogus {
		bogus[i] = uint64(i + 1) // stored-envelope tags that were never pushed
	}
	a.Ack(bogus)
	a.Ack([]uint64{liveTagBit | 12345})
	a.mu.Lock()
	defer a.mu.Unlock()
	acked := 0
	if a.sp != nil {
		acked = len(a.sp.acked)
	}
	if acked != 0 || len(a.live) != 0 {
		t.Fatalf("bogus acks remembered: acked %d, live %d", acked, len(a.live))
	}
}

// getBatch reads through the node's shared reply subscription: an empty subject, a partial batch,
// an exact batch, an early stop, and a start past the end all give the right messages in order.
func TestGetBatch(t *testing.T) {
	b, m := openInternal(t)
	const dev = "0123456789abcdef0123456789abcdef"
	ctx := context.Background()
	stream, subject := bus.InboxStreamName(0), b.InboxSubject(dev)
	read := func(from uint64, max int, stopAfter int) []string {
		t.Helper()
		var got []string
		n, err := m.getBatch(ctx, stream, subject, from, max, 0, func(_ uint64, data []byte) bool {
			got = append(got, string(data))
			return stopAfter == 0 || len(got) < stopAfter
		})
		if err != nil {
			t.Fatalf("getBatch(from %d, max %d): %v", from, max, err)
		}
		if n != len(got) {
			t.Fatalf("getBatch returned %d, saw %d", n, len(got))
		}
		return got
	}
	if got := read(1, 10, 0); len(got) != 0 {
		t.Fatalf("empty inbox: got %q", got)
	}
	// Interleave another device's messages so next_by_subj has to skip them.
	for i := range 5 {
		if _, err := b.JS().Publish(ctx, subject, []byte{'a' + byte(i)}); err != nil {
			t.Fatal(err)
		}
		if _, err := b.JS().Publish(ctx, b.InboxSubject("fedcba9876543210fedcba9876543210"), []byte("x")); err != nil {
			t.Fatal(err)
		}
	}
	if got := fmt.Sprint(read(1, 10, 0)); got != "[a b c d e]" {
		t.Fatalf("partial batch: %s", got)
	}
	if got := fmt.Sprint(read(1, 5, 0)); got != "[a b c d e]" {
		t.Fatalf("exact batch: %s", got)
	}
	if got := fmt.Sprint(read(1, 3, 0)); got != "[a b c]" {
		t.Fatalf("short batch: %s", got)
	}
	if got := fmt.Sprint(read(4, 10, 0)); got != "[c d e]" { // sequences 5, 7, 9
		t.Fatalf("from sequence 4: %s", got)
	}
	if got := fmt.Sprint(read(1, 10, 2)); got != "[a b]" {
		t.Fatalf("early stop: %s", got)
	}
	if got := read(100, 10, 0); len(got) != 0 {
		t.Fatalf("past the end: %q", got)
	}
	m.pendingMu.Lock()
	left := len(m.reads)
	m.pendingMu.Unlock()
	if left != 0 {
		t.Fatalf("%d reads still registered", left)
	}
}

// Detach answers this node's waiting senders without holding the attachment's lock: a sender
// callback that closes the connection (and so detaches again) must not deadlock.
func TestDetachAnswersWithoutTheLock(t *testing.T) {
	_, m := openInternal(t)
	const dev = "0123456789abcdef0123456789abcdef"
	sink := &quietSink{empty: make(chan struct{})}
	a, err := m.Attach(dev, "c1", sink)
	if err != nil {
		t.Fatal(err)
	}
	<-sink.empty // live from here; the sink never acks
	done := make(chan Outcome, 1)
	m.Send(NewRoute(), []Target{{DeviceID: dev, DedupeID: "d1", Envelope: []byte("e")}}, func(o Outcome) {
		a.Detach() // as a connection closed by the answer would
		done <- o
	})
	// Make the hand-back's store fail at once, so the whole callback chain runs inside Detach.
	m.closed.Store(true)
	finished := make(chan struct{})
	go func() { a.Detach(); close(finished) }()
	select {
	case <-finished:
	case <-time.After(10 * time.Second):
		t.Fatal("Detach deadlocked in its own sender callback")
	}
	m.closed.Store(false)
	if o := <-done; o.Err == nil {
		t.Fatalf("the handed-back send could not be stored, yet got %+v", o)
	}
}

// BenchmarkInboxDrainRead reads one device's 2,048 stored envelopes 256 at a time (batched direct
// gets). mailbox: the server's read path (getBatch, through the node's reply subscription);
// jetstreamext: jetstreamext.GetBatch, which the server used before (a subscription per read).
func BenchmarkInboxDrainRead(b *testing.B) {
	bs, m := openInternal(b)
	const dev = "0123456789abcdef0123456789abcdef"
	const stored = 2048
	done := make(chan error, stored)
	for i := range stored {
		m.Store(dev, fmt.Sprint(i), make([]byte, 300), func(err error) { done <- err })
	}
	for range stored {
		if err := <-done; err != nil {
			b.Fatal(err)
		}
	}
	ctx := context.Background()
	stream, subject := bus.InboxStreamName(0), bs.InboxSubject(dev)
	b.Run("mailbox", func(b *testing.B) {
		b.ReportAllocs()
		read := 0
		for b.Loop() {
			seq := uint64(1)
			for got := 0; got < stored; {
				n, err := m.getBatch(ctx, stream, subject, seq, 256, 0, func(s uint64, _ []byte) bool { seq = s + 1; return true })
				if err != nil || n == 0 {
					b.Fatalf("read %d at %d: %v", n, got, err)
				}
				got += n
			}
			read += stored
		}
		b.ReportMetric(float64(read)/b.Elapsed().Seconds(), "msgs/s")
	})
	b.Run("jetstreamext", func(b *testing.B) {
		b.ReportAllocs()
		read := 0
		for b.Loop() {
			seq := uint64(1)
			for got := 0; got < stored; {
				it, err := jetstreamext.GetBatch(ctx, bs.JS(), stream, 256,
					jetstreamext.GetBatchSubject(subject), jetstreamext.GetBatchSeq(seq))
				if err != nil {
					b.Fatal(err)
				}
				for msg, err := range it {
					if err != nil {
						b.Fatal(err)
					}
					seq = msg.Sequence + 1
					got++
				}
			}
			read += stored
		}
		b.ReportMetric(float64(read)/b.Elapsed().Seconds(), "msgs/s")
	})
}

// windowSink records the stored bytes pushed and not yet acked.
type windowSink struct {
	mu      sync.Mutex
	tags    []uint64
	unacked int
	maxSeen int
	pushed  int
	empty   chan int // QueueEmpty's count
}

func (s *windowSink) Push(tag uint64, env []byte) error {
	s.mu.Lock()
	defer s.mu.Unlock()
	s.tags = append(s.tags, tag)
	s.unacked += len(env)
	s.maxSeen = max(s.maxSeen, s.unacked)
	s.pushed++
	return nil
}
func (s *windowSink) QueueEmpty(n int) { s.empty <- n }
func (s *windowSink) Kicked()          {}

// A deep inbox of large envelopes is pushed a byte window at a time: the drain waits for acks
// once WindowBytes (and the one envelope that crosses it) are unacked, although the count window
// would allow them all.
func TestDrainByteWindow(t *testing.T) {
	const windowBytes, n, size = 256 << 10, 40, 32 << 10 // 1.25 MiB stored: five windows
	_, m := openInternal(t, Config{WindowBytes: windowBytes})
	waits := make(chan struct{})
	m.drainWaits = func() { waits <- struct{}{} } // before any Attach
	const dev = "0123456789abcdef0123456789abcdef"
	done := make(chan error, n)
	for i := range n {
		m.Store(dev, fmt.Sprint(i), make([]byte, size), func(err error) { done <- err })
	}
	for range n {
		if err := <-done; err != nil {
			t.Fatal(err)
		}
	}
	sink := &windowSink{empty: make(chan int, 1)}
	a, err := m.Attach(dev, "c1", sink)
	if err != nil {
		t.Fatal(err)
	}
	defer a.Detach()
	deadline := time.After(20 * time.Second)
	for windows := 0; ; {
		select {
		case <-waits: // the drain stopped for acks: check what is unacked, then ack it
			sink.mu.Lock()
			tags, unacked := sink.tags, sink.unacked
			sink.tags, sink.unacked = nil, 0
			sink.mu.Unlock()
			if unacked < windowBytes || unacked > windowBytes+size {
				t.Fatalf("the drain waits with %d bytes unacked; the byte window is %d (+ one envelope of %d)", unacked, windowBytes, size)
			}
			windows++
			a.Ack(tags)
		case delivered := <-sink.empty:
			sink.mu.Lock()
			defer sink.mu.Unlock()
			if delivered != n || sink.pushed != n || windows < n*size/(windowBytes+size) {
				t.Fatalf("QueueEmpty after %d (%d pushed, %d waits for acks); want %d", delivered, sink.pushed, windows, n)
			}
			if sink.maxSeen > windowBytes+size {
				t.Fatalf("%d bytes pushed and unacked at once; the byte window is %d (+ one envelope of %d)", sink.maxSeen, windowBytes, size)
			}
			return
		case <-deadline:
			sink.mu.Lock()
			defer sink.mu.Unlock()
			t.Fatalf("drain stalled: %d of %d pushed, %d bytes unacked", sink.pushed, n, sink.unacked)
		}
	}
}
