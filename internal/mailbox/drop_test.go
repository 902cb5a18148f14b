// Copyright 2026 The Petrel Authors
// SPDX-License-Identifier: Apache-2.0

package mailbox_test

import (
	"context"
	"errors"
	"fmt"
	"slices"
	"testing"

	"github.com/petrelchat/petrel/internal/bus"
	"github.com/petrelchat/petrel/internal/mailbox"
)

// countSink counts stored pushes and reports QueueEmpty.
type countSink struct {
	pushed int
	empty  chan int
}

func (s *countSink) Push(uint64, []byte) error { s.pushed++; return nil }
func (s *countSink) QueueEmpty(n int)          { s.empty <- n }
func (s *countSink) Kicked()                   {}

// DropInbox deletes a removed device's stored envelopes and its index, and nothing of another
// device's inbox in the same shard.
func TestDropInbox(t *testing.T) {
	b, m := openB(t, bus.Config{InboxShards: 1}, mailbox.Config{MaxPerSender: 5})
	ctx := context.Background()
	gone, kept, from := devN(1), devN(2), devN(3)
	var devs, ids []string
	for i := range 5 {
		devs, ids = append(devs, gone), append(ids, mailbox.DedupeID(from, fmt.Sprint("m", i), gone))
	}
	devs, ids = append(devs, kept), append(ids, mailbox.DedupeID(from, "k", kept))
	for _, err := range storeAll(t, m, devs, ids, 10) {
		if err != nil {
			t.Fatal(err)
		}
	}
	if n := pending(t, b, gone); n != 5 {
		t.Fatalf("stored %d, want 5", n)
	}
	if err := m.DropInbox(ctx, gone); err != nil {
		t.Fatal(err)
	}
	if n := pending(t, b, gone); n != 0 {
		t.Fatalf("%d envelopes left after DropInbox", n)
	}
	if n := pending(t, b, kept); n != 1 {
		t.Fatalf("the other device's inbox holds %d, want 1", n)
	}
	// The index forgot the dropped envelopes: none is reported queued, and the sender's quota
	// (5, used up before) is free again.
	if got, err := m.QueryQueued(ctx, gone, from, []string{"m0", "m4"}); err != nil || len(got) != 0 {
		t.Fatalf("QueryQueued after DropInbox = %v, %v", got, err)
	}
	if got, _ := m.QueryQueued(ctx, kept, from, []string{"k"}); !slices.Equal(got, []string{"k"}) {
		t.Fatalf("the other device's index lost its envelope: %v", got)
	}
	if errs := storeAll(t, m, []string{gone}, []string{mailbox.DedupeID(from, "m5", gone)}, 10); errs[0] != nil {
		t.Fatalf("store after DropInbox: %v", errs[0])
	}
	if err := m.DropInbox(ctx, gone); err != nil { // idempotent; drops the new one too
		t.Fatal(err)
	}
	// A connection of the device finds nothing to drain.
	s := &countSink{empty: make(chan int, 1)}
	att, err := m.Attach(gone, "c1", s)
	if err != nil {
		t.Fatal(err)
	}
	defer att.Detach()
	if n := <-s.empty; n != 0 || s.pushed != 0 {
		t.Fatalf("drained %d (pushed %d) after DropInbox", n, s.pushed)
	}
	if m.Sink(gone) != s || m.Sink(kept) != nil {
		t.Fatal("Sink does not name the attached connection")
	}
	m.Close()
	if err := m.DropInbox(ctx, kept); !errors.Is(err, mailbox.ErrClosed) {
		t.Fatalf("DropInbox on a closed mailbox: %v", err)
	}
}
