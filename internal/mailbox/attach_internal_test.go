// Copyright 2026 The Petrel Authors
// SPDX-License-Identifier: Apache-2.0

package mailbox

import (
	"context"
	"fmt"
	"io"
	"log/slog"
	"testing"
	"time"

	"github.com/petrelchat/petrel/internal/bus"
)

type quietSink struct{ empty chan struct{} }

func (s *quietSink) Push(uint64, []byte) error { return nil }
func (s *quietSink) QueueEmpty(int)            { close(s.empty) }
func (s *quietSink) Kicked()                   {}

// Acks of tags that were never pushed are ignored: a client cannot grow the server's state by
// acking bogus tags (invariant 7).
func TestBogusAcksAreNotRemembered(t *testing.T) {
	quiet := slog.New(slog.NewTextHandler(io.Discard, nil))
	b, err := bus.Open(context.Background(), bus.Config{DataDir: t.TempDir(), InboxShards: 1, Logger: quiet})
	if err != nil {
		t.Fatal(err)
	}
	defer b.Close()
	m := New(b, Config{Logger: quiet})
	if err := m.Start(); err != nil {
		t.Fatal(err)
	}
	defer m.Close()
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
	if len(a.acked) != 0 || len(a.live) != 0 {
		t.Fatalf("bogus acks remembered: acked %d, live %d", len(a.acked), len(a.live))
	}
}

// getBatch reads through the node's shared reply subscription: an empty subject, a partial batch,
// an exact batch, an early stop, and a start past the end all give the right messages in order.
func TestGetBatch(t *testing.T) {
	quiet := slog.New(slog.NewTextHandler(io.Discard, nil))
	b, err := bus.Open(context.Background(), bus.Config{DataDir: t.TempDir(), InboxShards: 1, Logger: quiet})
	if err != nil {
		t.Fatal(err)
	}
	defer b.Close()
	m := New(b, Config{Logger: quiet})
	if err := m.Start(); err != nil {
		t.Fatal(err)
	}
	defer m.Close()
	const dev = "0123456789abcdef0123456789abcdef"
	ctx := context.Background()
	stream, subject := bus.InboxStreamName(0), b.InboxSubject(dev)
	read := func(from uint64, max int, stopAfter int) []string {
		t.Helper()
		var got []string
		n, err := m.getBatch(ctx, stream, subject, from, max, func(_ uint64, data []byte) bool {
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
	quiet := slog.New(slog.NewTextHandler(io.Discard, nil))
	b, err := bus.Open(context.Background(), bus.Config{DataDir: t.TempDir(), InboxShards: 1, Logger: quiet})
	if err != nil {
		t.Fatal(err)
	}
	defer b.Close()
	m := New(b, Config{Logger: quiet})
	if err := m.Start(); err != nil {
		t.Fatal(err)
	}
	defer m.Close()
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
