// Copyright 2026 The Petrel Authors
// SPDX-License-Identifier: Apache-2.0

package mailbox

import (
	"context"
	"io"
	"log/slog"
	"testing"

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
