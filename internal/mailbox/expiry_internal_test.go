// Copyright 2026 The Petrel Authors
// SPDX-License-Identifier: Apache-2.0

package mailbox

import (
	"context"
	"fmt"
	"io"
	"log/slog"
	"strconv"
	"sync"
	"sync/atomic"
	"syscall"
	"testing"
	"time"

	"github.com/nats-io/nats.go/jetstream"
	"google.golang.org/protobuf/proto"

	"github.com/petrelchat/petrel/internal/bus"
	pb "github.com/petrelchat/petrel/proto/petrel/v1"
)

// recordSink records pushed envelopes' message ids and acks each at once.
type recordSink struct {
	mu    sync.Mutex
	ids   []string
	a     *Attachment
	empty chan struct{}
}

func (s *recordSink) Push(tag uint64, env []byte) error {
	var e pb.Envelope
	_ = proto.Unmarshal(env, &e)
	s.mu.Lock()
	s.ids = append(s.ids, e.GetMessageId())
	a := s.a
	s.mu.Unlock()
	go a.Ack([]uint64{tag})
	return nil
}
func (s *recordSink) QueueEmpty(int) { close(s.empty) }
func (s *recordSink) Kicked()        {}

func envelope(id string, exp int64) []byte {
	return pb.AppendEnvelopeExpiry(pb.AppendEnvelope(nil, id, "alice", "fedcba9876543210fedcba9876543210", pb.EnvelopeType_ENVELOPE_TYPE_MESSAGE, []byte("ct "+id), 1), exp)
}

// A stored envelope read after its expiry (before the store's own TTL deleted it) is never
// pushed, and is purged with the envelopes acked around it; one already expired when it would be
// stored is not stored; each carries a TTL in the store.
func TestExpiredEnvelopesNeverDelivered(t *testing.T) {
	b, m := openInternal(t)
	const dev = "0123456789abcdef0123456789abcdef"
	base := time.Now().UnixMilli()
	clock := base
	var clockMu sync.Mutex
	nowMs = func() int64 { clockMu.Lock(); defer clockMu.Unlock(); return clock }
	t.Cleanup(func() { nowMs = func() int64 { return time.Now().UnixMilli() } })

	store := func(id string, exp int64) {
		done := make(chan error, 1)
		m.Send(NewRoute(), []Target{{DeviceID: dev, DedupeID: "s." + id + "." + dev, Envelope: envelope(id, exp), ExpiresAtMs: exp}},
			func(o Outcome) { done <- o.Err })
		if err := <-done; err != nil {
			t.Fatalf("store %s: %v", id, err)
		}
	}
	store("a", 0)
	store("b", base+3_600_000) // an hour: the store keeps it, our clock moves past it
	store("c", 0)
	store("gone", base-1) // already expired: not stored
	ctx := context.Background()
	subj := b.InboxSubject(dev)
	info, err := b.Inbox(0).Info(ctx, jetstream.WithSubjectFilter(subj))
	if err != nil || info.State.Subjects[subj] != 3 {
		t.Fatalf("stored %v (%v), want 3", info.State.Subjects, err)
	}
	msg, err := b.Inbox(0).GetLastMsgForSubject(ctx, subj)
	if err != nil {
		t.Fatal(err)
	}
	first, err := b.Inbox(0).GetMsg(ctx, msg.Sequence-1)
	if err != nil || first.Header.Get(jetstream.MsgTTLHeader) != "3600" {
		t.Fatalf("b's TTL header %q (%v), want 3600", first.Header.Get(jetstream.MsgTTLHeader), err)
	}

	clockMu.Lock()
	clock = base + 3_600_001
	clockMu.Unlock()
	sink := &recordSink{empty: make(chan struct{})}
	sink.mu.Lock()
	a, err := m.Attach(dev, "c1", sink)
	sink.a = a
	sink.mu.Unlock()
	if err != nil {
		t.Fatal(err)
	}
	defer a.Detach()
	<-sink.empty
	sink.mu.Lock()
	got := append([]string(nil), sink.ids...)
	sink.mu.Unlock()
	if len(got) != 2 || got[0] != "a" || got[1] != "c" {
		t.Fatalf("pushed %v, want [a c]", got)
	}
	// Every envelope, the expired one too, is purged once a and c are acked.
	deadline := time.Now().Add(10 * time.Second)
	for {
		info, err := b.Inbox(0).Info(ctx, jetstream.WithSubjectFilter(subj))
		if err == nil && info.State.Subjects[subj] == 0 {
			break
		}
		if time.Now().After(deadline) {
			t.Fatalf("inbox still holds %v", info.State.Subjects)
		}
		time.Sleep(10 * time.Millisecond) // the purge runs on its own goroutine after the acks
	}
}

// BenchmarkInboxStoreExpiring is BenchmarkInboxStoreInFlight/inflight=4096 with every envelope
// a disappearing one (a per-message TTL of an hour): what the TTL costs the store path.
func BenchmarkInboxStoreExpiring(b *testing.B) {
	for _, ttl := range []time.Duration{0, time.Hour} {
		b.Run("ttl="+ttl.String(), func(b *testing.B) {
			quiet := slog.New(slog.NewTextHandler(io.Discard, nil))
			bs, err := bus.Open(context.Background(), bus.Config{DataDir: b.TempDir(), InboxShards: 16, Logger: quiet})
			if err != nil {
				b.Fatal(err)
			}
			m := New(bs, Config{Logger: quiet})
			if err := m.Start(); err != nil {
				b.Fatal(err)
			}
			b.Cleanup(func() { m.Close(); bs.Close() })
			devs := make([]string, 100)
			for i := range devs {
				devs[i] = fmt.Sprintf("%032x", i+1)
			}
			env := make([]byte, 300)
			sem := make(chan struct{}, 4096)
			var wg sync.WaitGroup
			var failed atomic.Int64
			b.ReportAllocs()
			i := 0
			cpu0 := rusageCPU()
			for b.Loop() {
				sem <- struct{}{}
				wg.Add(1)
				i++
				var exp int64
				if ttl > 0 {
					exp = time.Now().Add(ttl).UnixMilli()
				}
				m.store(devs[i%len(devs)], strconv.Itoa(i), "", env, exp, func(err error) {
					if err != nil {
						failed.Add(1)
					}
					<-sem
					wg.Done()
				})
			}
			wg.Wait()
			b.ReportMetric(float64(i)/b.Elapsed().Seconds(), "appends/s")
			b.ReportMetric(float64((rusageCPU()-cpu0).Microseconds())/float64(i), "cpu-µs/append")
			if n := failed.Load(); n > 0 {
				b.Fatalf("%d of %d appends failed", n, i)
			}
		})
	}
}

func rusageCPU() time.Duration {
	var ru syscall.Rusage
	if err := syscall.Getrusage(syscall.RUSAGE_SELF, &ru); err != nil {
		return 0
	}
	return time.Duration(ru.Utime.Nano() + ru.Stime.Nano())
}
