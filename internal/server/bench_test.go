// Copyright 2026 The Petrel Authors
// SPDX-License-Identifier: Apache-2.0

package server_test

import (
	"context"
	"fmt"
	"sync"
	"sync/atomic"
	"testing"
	"time"

	"github.com/coder/websocket"
	"google.golang.org/protobuf/proto"

	"github.com/petrelchat/petrel/internal/server"
	"github.com/petrelchat/petrel/internal/testserver"
	pb "github.com/petrelchat/petrel/proto/petrel/v1"
)

// BenchmarkRelayLive measures the live path through a real in-process server: pairs of connected
// devices, each sender keeping a window of sends in flight, each receiver acking every delivery.
// 300-byte opaque payloads. The server, the clients and the benchmark share the machine's cores.
func BenchmarkRelayLive(b *testing.B) {
	for _, pairs := range []int{16, 64} {
		b.Run(fmt.Sprintf("pairs=%d", pairs), func(b *testing.B) { benchRelay(b, pairs, 32) })
	}
}

func benchRelay(b *testing.B, pairs, window int) {
	s := testserver.Start(b, testserver.WithConfig(func(c *server.Config) { c.ConnFramesPerSecond = 1e9; c.ConnFrameBurst = 1 << 30 }))
	type pair struct{ snd, rcv *testserver.RawClient }
	ps := make([]pair, pairs)
	for i := range ps {
		ps[i].snd = testserver.Dial(b, s.URL())
		ps[i].snd.MustRegister(fmt.Sprintf("s%d", i))
		ps[i].rcv = testserver.Dial(b, s.URL())
		ps[i].rcv.MustRegister(fmt.Sprintf("r%d", i))
		if f := ps[i].rcv.NextPush(); f.GetQueueEmpty() == nil {
			b.Fatalf("want QueueEmpty, got %v", f)
		}
	}
	payload := make([]byte, 300)
	perPair := b.N/pairs + 1
	var delivered, errs atomic.Int64
	ctx, cancel := context.WithTimeout(context.Background(), 5*time.Minute)
	defer cancel()
	b.ResetTimer()
	start := time.Now()
	var wg sync.WaitGroup
	for i, p := range ps {
		wg.Add(2)
		go func() { // receiver: ack every delivery
			defer wg.Done()
			for got := 0; got < perPair; {
				_, data, err := p.rcv.WS.Read(ctx)
				if err != nil {
					errs.Add(1)
					return
				}
				f := &pb.Frame{}
				if proto.Unmarshal(data, f) != nil || f.GetDeliver() == nil {
					continue
				}
				got++
				delivered.Add(1)
				ack, _ := proto.Marshal(&pb.Frame{Body: &pb.Frame_DeliverAck{DeliverAck: &pb.DeliverAck{Tags: []uint64{f.GetDeliver().GetTag()}}}})
				if p.rcv.WS.Write(ctx, websocket.MessageBinary, ack) != nil {
					errs.Add(1)
					return
				}
			}
		}()
		go func() { // sender: keep `window` sends in flight
			defer wg.Done()
			sem := make(chan struct{}, window)
			done := make(chan struct{})
			go func() {
				defer close(done)
				for acked := 0; acked < perPair; {
					_, data, err := p.snd.WS.Read(ctx)
					if err != nil {
						errs.Add(1)
						return
					}
					f := &pb.Frame{}
					if proto.Unmarshal(data, f) != nil {
						continue
					}
					if f.GetSendResult() != nil || f.GetError() != nil {
						if f.GetError() != nil {
							errs.Add(1)
						}
						acked++
						<-sem
					}
				}
			}()
			dev := p.rcv.DeviceID
			for n := 0; n < perPair; n++ {
				sem <- struct{}{}
				fr, _ := proto.Marshal(&pb.Frame{Id: uint64(n + 1), Body: &pb.Frame_Send{Send: &pb.Send{
					MessageId: fmt.Sprintf("p%dm%d", i, n), To: fmt.Sprintf("r%d", i),
					Envelopes: []*pb.DeviceCiphertext{{DeviceId: dev, Type: pb.EnvelopeType_ENVELOPE_TYPE_MESSAGE, Ciphertext: payload}},
				}}})
				if p.snd.WS.Write(ctx, websocket.MessageBinary, fr) != nil {
					errs.Add(1)
					return
				}
			}
			<-done
		}()
	}
	wg.Wait()
	el := time.Since(start)
	b.StopTimer()
	if errs.Load() > 0 {
		b.Fatalf("%d errors", errs.Load())
	}
	b.ReportMetric(float64(delivered.Load())/el.Seconds(), "msgs/s")
}
