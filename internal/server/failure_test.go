// Copyright 2026 The Petrel Authors
// SPDX-License-Identifier: Apache-2.0

package server_test

import (
	"context"
	"fmt"
	"testing"
	"time"

	"github.com/petrelchat/petrel/internal/gateway"
	"github.com/petrelchat/petrel/internal/server"
	"github.com/petrelchat/petrel/internal/testserver"
	pb "github.com/petrelchat/petrel/proto/petrel/v1"
)

// A send while storage is down gets a retryable error and no ack; the connection keeps working.
func TestSendWhileStorageUnavailable(t *testing.T) {
	s := testserver.Start(t)
	alice, _, bobDev := offlinePair(t, s)

	if err := s.Server().Bus().DisableJetStreamForTest(); err != nil {
		t.Fatal(err)
	}
	r := alice.Send("m1", "bob", []string{bobDev}, []byte("x"))
	if r.GetSendResult() != nil {
		t.Fatalf("acked while storage is down: %v", r)
	}
	if code(r) != pb.ErrorCode_ERROR_CODE_UNAVAILABLE || r.GetError().GetRetryAfterMs() == 0 {
		t.Fatalf("want UNAVAILABLE with retry_after, got %v", r)
	}
	if p := alice.Request(&pb.Frame{Body: &pb.Frame_Ping{Ping: &pb.Ping{}}}); p.GetPong() == nil {
		t.Fatalf("connection broken: %v", p)
	}
}

// Shutdown tells connected clients to go away with a retry hint, and a message acked before the
// shutdown is delivered after the restart.
func TestGracefulShutdownAndRestart(t *testing.T) {
	s := testserver.Start(t)
	alice, bobKey, bobDev := offlinePair(t, s)
	if r := alice.Send("before-restart", "bob", []string{bobDev}, []byte("x")); r.GetSendResult() == nil {
		t.Fatal(r)
	}
	stopped := make(chan struct{})
	go func() {
		ctx, cancel := context.WithTimeout(context.Background(), 10*time.Second)
		defer cancel()
		_ = s.Server().Shutdown(ctx)
		close(stopped)
	}()
	for {
		f := alice.Read()
		if ga := f.GetGoAway(); ga != nil {
			if ga.GetRetryAfterMs() == 0 || ga.GetReason() != pb.ErrorCode_ERROR_CODE_SHUTTING_DOWN {
				t.Fatalf("GoAway without a retry hint: %v", ga)
			}
			break
		}
	}
	<-stopped
	s.Restart(t)
	bob := testserver.Dial(t, s.URL())
	if w := bob.Auth(bobKey); w.GetWelcome() == nil {
		t.Fatal(w)
	}
	if d := mustDeliver(t, bob); d.GetEnvelope().GetMessageId() != "before-restart" {
		t.Fatalf("got %v", d)
	}
}

// Per-sender order holds while the recipient connects in the middle of a burst, so that some
// envelopes are stored before it connects, some are refused (and stored) while it drains, and some
// are delivered live. Nothing is lost and nothing overtakes an earlier message.
func TestPerSenderOrderAcrossConnect(t *testing.T) {
	s := testserver.Start(t)
	alice, bobKey, bobDev := offlinePair(t, s)

	const n = 300
	type rcv struct {
		ids []string
		err error
	}
	got := make(chan rcv, 1)
	pipelineSends(t, alice, "bob", bobDev, "m%04d", n, func(i int) {
		if i == n/3 {
			// Bob connects mid-burst and behaves: he acks everything he gets.
			go func() {
				c := testserver.Dial(t, s.URL())
				c.Auth(bobKey)
				var r rcv
				seen := map[string]bool{}
				for len(seen) < n {
					f, err := c.ReadErr(20 * time.Second)
					if err != nil {
						r.err = fmt.Errorf("after %d messages: %w", len(seen), err)
						break
					}
					d := f.GetDeliver()
					if d == nil {
						continue
					}
					c.Write(&pb.Frame{Body: &pb.Frame_DeliverAck{DeliverAck: &pb.DeliverAck{Tags: []uint64{d.GetTag()}}}})
					id := d.GetEnvelope().GetMessageId()
					if seen[id] {
						continue
					}
					seen[id] = true
					r.ids = append(r.ids, id)
				}
				got <- r
			}()
		}
	})
	r := <-got
	if r.err != nil {
		t.Fatal(r.err)
	}
	for i, id := range r.ids {
		if want := fmt.Sprintf("m%04d", i); id != want {
			t.Fatalf("message %d is %s, want %s (order broken)", i, id, want)
		}
	}
}

// Invariant 6: a panic while handling one frame is contained to that request. The request gets
// INTERNAL with its id, the connection goes on working, and other connections never notice.
func TestPanicIsContainedToOneRequest(t *testing.T) {
	s := testserver.Start(t)
	victim := testserver.Dial(t, s.URL())
	victim.MustRegister("vic")
	other := testserver.Dial(t, s.URL())
	other.MustRegister("oscar")
	const poisonID = 6660 // a GetDevices with this id panics: it runs on the request lane
	defer gateway.SetFrameHookForTest(func(f *pb.Frame) {
		if f.GetPing().GetClientTimeMs() == 666 || (f.GetGetDevices() != nil && f.Id == poisonID) {
			panic("poison frame")
		}
	})()
	r := victim.Request(&pb.Frame{Body: &pb.Frame_Ping{Ping: &pb.Ping{ClientTimeMs: 666}}})
	if code(r) != pb.ErrorCode_ERROR_CODE_INTERNAL || r.GetError().GetErrorId() == "" {
		t.Fatalf("want INTERNAL with an error id, got %v", r)
	}
	victim.Write(&pb.Frame{Id: poisonID, Body: &pb.Frame_GetDevices{GetDevices: &pb.GetDevices{}}})
	if r := victim.Await(poisonID); code(r) != pb.ErrorCode_ERROR_CODE_INTERNAL || r.GetError().GetErrorId() == "" {
		t.Fatalf("request lane: want INTERNAL with an error id, got %v", r)
	}
	for _, c := range []*testserver.RawClient{victim, other} {
		if p := c.Request(&pb.Frame{Body: &pb.Frame_Ping{Ping: &pb.Ping{ClientTimeMs: 1}}}); p.GetPong().GetClientTimeMs() != 1 {
			t.Fatalf("connection broken after a contained panic: %v", p)
		}
		if d := c.Request(&pb.Frame{Body: &pb.Frame_GetDevices{GetDevices: &pb.GetDevices{}}}); d.GetDeviceListResult() == nil {
			t.Fatalf("request lane broken after a contained panic: %v", d)
		}
	}
}

// A device that reconnects to the same node in the middle of a burst (a takeover: the old
// connection's unacked live deliveries are handed back) loses nothing: every acked send reaches
// the device, through the new connection, at least once. Order across a takeover is the
// documented exception, so only completeness is checked.
func TestTakeoverMidBurstLosesNothing(t *testing.T) {
	s := testserver.Start(t)
	alice, bob := onlinePair(t, s)
	const n = 300
	// The first connection reads without acking: its live deliveries stay unanswered until the
	// takeover hands them back to the sender, who stores them.
	go func() {
		for {
			if _, err := bob.ReadErr(30 * time.Second); err != nil {
				return
			}
		}
	}()
	got := make(chan map[string]bool, 1)
	pipelineSends(t, alice, "bob", bob.DeviceID, "t%04d", n, func(i int) {
		if i != n/2 {
			return
		}
		// Half-way, bob connects again on the same node: the old connection is kicked.
		go func() {
			c := testserver.Dial(t, s.URL())
			c.Auth(bob.AuthKey)
			seen := map[string]bool{}
			for len(seen) < n {
				f, err := c.ReadErr(20 * time.Second)
				if err != nil {
					t.Errorf("after %d distinct messages: %v", len(seen), err)
					break
				}
				if d := f.GetDeliver(); d != nil {
					c.Write(&pb.Frame{Body: &pb.Frame_DeliverAck{DeliverAck: &pb.DeliverAck{Tags: []uint64{d.GetTag()}}}})
					seen[d.GetEnvelope().GetMessageId()] = true
				}
			}
			got <- seen
		}()
	})
	seen := <-got
	for i := range n {
		if id := fmt.Sprintf("t%04d", i); !seen[id] {
			t.Fatalf("%s was acked to the sender but never reached the device", id)
		}
	}
}

// A drain sends its clients away one at a time, spread over connections/drain_rate, not all at
// once: with 10 clients at 10 a second the last GoAway leaves at least 0.9 s after the first (it
// is not due before), and every one is counted.
func TestDrainSpreadsGoAways(t *testing.T) {
	const n, rate = 10, 10.0
	s := testserver.Start(t, testserver.WithConfig(func(c *server.Config) { c.DrainRate = rate }))
	arrived := make(chan time.Time, n)
	for i := range n {
		c := testserver.Dial(t, s.URL())
		c.MustRegister(fmt.Sprintf("u%d", i))
		go func() {
			for {
				f, err := c.ReadErr(20 * time.Second)
				if err != nil {
					return
				}
				if f.GetGoAway() != nil {
					arrived <- time.Now()
					return
				}
			}
		}()
	}
	waitConns(t, s, n)
	ctx, cancel := context.WithTimeout(context.Background(), 20*time.Second)
	defer cancel()
	if err := s.Server().Shutdown(ctx); err != nil {
		t.Fatal(err)
	}
	var first, last time.Time
	for i := range n {
		select {
		case at := <-arrived:
			if i == 0 {
				first = at
			}
			last = at
		case <-time.After(10 * time.Second):
			t.Fatalf("%d of %d clients got a GoAway", i, n)
		}
	}
	window := time.Duration(n / rate * float64(time.Second))
	if spread := last.Sub(first); spread < window*(n-1)/n-100*time.Millisecond {
		t.Fatalf("GoAways spread over %s, want about %s", spread, window)
	}
	mfs, err := s.Server().Metrics().Gather()
	if err != nil {
		t.Fatal(err)
	}
	var sentAway float64
	for _, mf := range mfs {
		if mf.GetName() == "petrel_gateway_sent_away_total" {
			for _, m := range mf.GetMetric() {
				sentAway += m.GetCounter().GetValue()
			}
		}
	}
	if sentAway != n {
		t.Fatalf("petrel_gateway_sent_away_total %v, want %d", sentAway, n)
	}
}
