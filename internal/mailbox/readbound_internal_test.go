// Copyright 2026 The Petrel Authors
// SPDX-License-Identifier: Apache-2.0

package mailbox

import (
	"context"
	"errors"
	"testing"
	"time"
)

// slotSink records pushes and QueueEmpty.
type slotSink struct {
	pushed chan uint64
	empty  chan struct{}
}

func (s *slotSink) Push(tag uint64, _ []byte) error { s.pushed <- tag; return nil }
func (s *slotSink) QueueEmpty(int)                  { close(s.empty) }
func (s *slotSink) Kicked()                         {}

// A drain's inbox reads take one of the node's maxInboxReads slots: with every slot held, a
// drain sends no read (its read ends with its own deadline, none reaches the servers) and the
// stored envelope waits; once a slot frees it is delivered. The store path does not wait behind
// drains.
func TestDrainReadsAreBounded(t *testing.T) {
	_, m := openInternal(t)
	const dev = "0123456789abcdef0123456789abcdef"
	stored := make(chan error, 1)
	m.Store(dev, "id-1", []byte("sealed"), func(err error) { stored <- err }) // the store path: not bounded
	for range maxInboxReads {
		m.inboxReads <- struct{}{}
	}
	if err := <-stored; err != nil {
		t.Fatalf("store with every read slot held: %v", err)
	}
	// With every slot held a bounded read ends with its context and sends nothing.
	ctx, cancel := context.WithTimeout(context.Background(), 20*time.Millisecond)
	_, err := m.getBatchBounded(ctx, "INBOX_00", m.bus.InboxSubject(dev), 1, 1, 0, func(uint64, []byte) bool { return true })
	cancel()
	if !errors.Is(err, context.DeadlineExceeded) {
		t.Fatalf("bounded read with no slot: %v, want the context's deadline", err)
	}
	sink := &slotSink{pushed: make(chan uint64, 4), empty: make(chan struct{})}
	a, err := m.Attach(dev, "c1", sink)
	if err != nil {
		t.Fatal(err)
	}
	defer a.Detach()
	select {
	case tag := <-sink.pushed:
		t.Fatalf("pushed %d while every read slot was held", tag)
	case <-sink.empty:
		t.Fatal("QueueEmpty while every read slot was held")
	default:
	}
	<-m.inboxReads // one slot frees: the drain reads and delivers
	select {
	case <-sink.pushed:
	case <-time.After(30 * time.Second):
		t.Fatal("the stored envelope was not delivered once a read slot freed")
	}
	<-sink.empty
}
