// Copyright 2026 The Petrel Authors
// SPDX-License-Identifier: Apache-2.0

package mailbox_test

import (
	"fmt"
	"io"
	"log/slog"
	"strconv"
	"sync"
	"sync/atomic"
	"syscall"
	"testing"
	"time"

	"github.com/petrelchat/petrel/internal/bus"
	"github.com/petrelchat/petrel/internal/mailbox"
)

// ackSink acks every live push at once, like a fast device.
type ackSink struct {
	att   atomic.Pointer[mailbox.Attachment]
	empty chan struct{}
}

func (s *ackSink) Push(tag uint64, _ []byte) error {
	if a := s.att.Load(); a != nil {
		a.Ack([]uint64{tag})
	}
	return nil
}
func (s *ackSink) QueueEmpty(int) { close(s.empty) }
func (s *ackSink) Kicked()        {}

// BenchmarkLiveRoute: one Send to a connected device, acked by the device — the server's live
// path without WebSockets. local: the device is attached on the sending node (the node-local fast
// path); bus: it is attached to another mailbox on the same bus (another node), so the request,
// push, ack and reply cross the bus.
func BenchmarkLiveRoute(b *testing.B) {
	b.Run("local", func(b *testing.B) { benchLiveRoute(b, false) })
	b.Run("bus", func(b *testing.B) { benchLiveRoute(b, true) })
}

func benchLiveRoute(b *testing.B, remote bool) {
	bs, m := openB(b, bus.Config{InboxShards: 4})
	recv := m
	if remote {
		recv = mailbox.New(bs, mailbox.Config{Logger: slog.New(slog.NewTextHandler(io.Discard, nil))})
		if err := recv.Start(); err != nil {
			b.Fatal(err)
		}
		b.Cleanup(recv.Close)
	}
	dev := "0123456789abcdef0123456789abcdef"
	sink := &ackSink{empty: make(chan struct{})}
	att, err := recv.Attach(dev, "bench", sink)
	if err != nil {
		b.Fatal(err)
	}
	sink.att.Store(att)
	<-sink.empty // live mode from here
	env := make([]byte, 300)
	route := mailbox.NewRoute()
	const window = 64
	sem := make(chan struct{}, window)
	var wg sync.WaitGroup
	var stored atomic.Int64
	b.ReportAllocs()
	i := 0
	for b.Loop() {
		sem <- struct{}{}
		wg.Add(1)
		i++
		m.Send(route, []mailbox.Target{{DeviceID: dev, DedupeID: fmt.Sprint(i), Envelope: env}}, func(o mailbox.Outcome) {
			if o.Err != nil || o.Live != 1 {
				stored.Add(1)
			}
			<-sem
			wg.Done()
		})
	}
	wg.Wait()
	if n := stored.Load(); n > 0 {
		b.Logf("%d of %d went to storage", n, i)
	}
}

// BenchmarkInboxAppend: durable appends (fsync'd before done) from 64 concurrent senders spread
// over 16 shards; the writers group-commit what queues up meanwhile (max_batch=1: one publish per
// commit, for comparison).
func BenchmarkInboxAppend(b *testing.B) {
	for _, maxBatch := range []int{1, 256} {
		b.Run(fmt.Sprintf("max_batch=%d", maxBatch), func(b *testing.B) { benchAppend(b, maxBatch) })
	}
}

func benchAppend(b *testing.B, maxBatch int) {
	_, m := openB(b, bus.Config{InboxShards: 16}, mailbox.Config{MaxBatch: maxBatch})
	env := make([]byte, 300)
	var n atomic.Int64
	b.SetParallelism(32) // × GOMAXPROCS senders
	b.ReportAllocs()
	b.RunParallel(func(pb *testing.PB) {
		done := make(chan error, 1)
		for pb.Next() {
			k := n.Add(1)
			dev := fmt.Sprintf("%032x", k%1000)
			m.Store(dev, fmt.Sprint(k), env, func(err error) { done <- err })
			if err := <-done; err != nil {
				b.Error(err)
				return
			}
		}
	})
}

// BenchmarkInboxStoreInFlight: durable appends with a fixed number of stores in flight (a new one
// starts when one is acked), for 100 devices over 16 shards: the store path of `petrel bench
// offline` without the gateway and the generator, so all of this process's CPU goes to the
// mailbox and the embedded NATS server.
func BenchmarkInboxStoreInFlight(b *testing.B) {
	for _, inflight := range []int{1024, 4096} {
		b.Run(fmt.Sprintf("inflight=%d", inflight), func(b *testing.B) {
			_, m := openB(b, bus.Config{InboxShards: 16})
			devs := make([]string, 100)
			for i := range devs {
				devs[i] = fmt.Sprintf("%032x", i+1)
			}
			env := make([]byte, 300)
			sem := make(chan struct{}, inflight)
			var wg sync.WaitGroup
			var failed atomic.Int64
			b.ReportAllocs()
			i := 0
			cpu0 := processCPU()
			for b.Loop() {
				sem <- struct{}{}
				wg.Add(1)
				i++
				m.Store(devs[i%len(devs)], strconv.Itoa(i), env, func(err error) {
					if err != nil {
						failed.Add(1)
					}
					<-sem
					wg.Done()
				})
			}
			wg.Wait()
			b.ReportMetric(float64(i)/b.Elapsed().Seconds(), "appends/s")
			b.ReportMetric(float64((processCPU()-cpu0).Microseconds())/float64(i), "cpu-µs/append")
			if n := failed.Load(); n > 0 {
				b.Fatalf("%d of %d appends failed", n, i)
			}
		})
	}
}

// processCPU is this process's user and system CPU time so far.
func processCPU() time.Duration {
	var ru syscall.Rusage
	if err := syscall.Getrusage(syscall.RUSAGE_SELF, &ru); err != nil {
		return 0
	}
	return time.Duration(ru.Utime.Nano() + ru.Stime.Nano())
}

// BenchmarkFanOut: one Send to 1,024 connected devices sharing one envelope (a group message),
// every device acking at once. local: attached on the sending node; bus: on another mailbox of
// the same bus. send-ns/target is the time the Send call itself takes (what the sending
// connection's executor spends) per target; allocs/op counts the whole delivery.
func BenchmarkFanOut(b *testing.B) {
	b.Run("local", func(b *testing.B) { benchFanOut(b, false) })
	b.Run("bus", func(b *testing.B) { benchFanOut(b, true) })
}

func benchFanOut(b *testing.B, remote bool) {
	const n = 1024
	bs, m := openB(b, bus.Config{InboxShards: 4})
	recv := m
	if remote {
		recv = mailbox.New(bs, mailbox.Config{Logger: slog.New(slog.NewTextHandler(io.Discard, nil))})
		if err := recv.Start(); err != nil {
			b.Fatal(err)
		}
		b.Cleanup(recv.Close)
	}
	targets := make([]mailbox.Target, n)
	env := make([]byte, 300)
	for i := range targets {
		dev := fmt.Sprintf("%032x", i+1)
		sink := &ackSink{empty: make(chan struct{})}
		att, err := recv.Attach(dev, "bench", sink)
		if err != nil {
			b.Fatal(err)
		}
		sink.att.Store(att)
		<-sink.empty
		targets[i] = mailbox.Target{DeviceID: dev, Envelope: env}
	}
	route := mailbox.NewRoute()
	var inSend time.Duration
	var stored atomic.Int64
	b.ReportAllocs()
	i := 0
	for b.Loop() {
		i++
		id := strconv.Itoa(i)
		for j := range targets {
			targets[j].DedupeID = id
		}
		done := make(chan struct{})
		start := time.Now()
		m.Send(route, targets, func(o mailbox.Outcome) {
			if o.Err != nil || o.Live != n {
				stored.Add(1)
			}
			close(done)
		})
		inSend += time.Since(start)
		<-done
	}
	b.ReportMetric(float64(inSend.Nanoseconds())/float64(i*n), "send-ns/target")
	if k := stored.Load(); k > 0 {
		b.Logf("%d of %d sends were not all live", k, i)
	}
}
