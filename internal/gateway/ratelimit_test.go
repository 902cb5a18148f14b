// Copyright 2026 The Petrel Authors
// SPDX-License-Identifier: Apache-2.0

package gateway

import (
	"testing"
	"time"
)

// advance moves the gateway's clock on by d: the clock is the time since clockBase, so an earlier
// base is a later now. Only for a Gateway no other goroutine uses.
func advance(g *Gateway, d time.Duration) { g.clockBase = g.clockBase.Add(-d) }

// The per-connection frame rate limit (conn_frames_per_second, conn_frame_burst) holds at the
// configured rate, to the frame: a new connection gets exactly its burst, then refills at the
// configured rate, never past the burst. A bucket even a few frames too lax fails.
func TestFrameRateLimitIsExact(t *testing.T) {
	const rate, burst = 100, 40
	cfg := Config{FramesPerSecond: rate, FrameBurst: burst, MaxConns: 1}
	cfg.setDefaults()
	g := &Gateway{cfg: cfg, metrics: newMetrics(nil), clockBase: time.Now()}
	c := g.newConn(nil)
	// take counts the frames allowed until the first refusal (which takes its token too).
	take := func() int {
		n := 0
		for c.allow() {
			n++
			if n > 100*burst {
				t.Fatalf("more than %d frames allowed at once", n)
			}
		}
		return n
	}
	// Real time passes too (at rate frames a second): a slow test run may add a frame or two, and
	// only ever adds.
	within := func(what string, got, want, slack int) {
		t.Helper()
		if got < want || got > want+slack {
			t.Fatalf("%s: %d frames allowed, want %d (up to %d more for the real time the test took)", what, got, want, slack)
		}
	}
	within("a new connection's burst", take(), burst, 1)

	// 250 ms at 100 frames/s is 25 tokens, less the refused frame's debt: 24.
	advance(g, 250*time.Millisecond)
	within("refill after 250ms", take(), 24, 2)

	// A long pause refills to the burst and no further.
	advance(g, 10*time.Second)
	within("after 10s idle", take(), burst, 1)

	// Over one second of 10 ms steps, taking everything each step allows: the rate, to a frame or
	// two. Each step's refusal is given its token back, so fractions carry over and the window
	// counts the refill alone (10% too fast fails).
	c.tokens = 0
	total := 0
	for range 100 {
		advance(g, 10*time.Millisecond)
		total += take()
		c.tokens++
	}
	within("one second of 10ms steps", total, rate, 2)
}

// The limit is applied on the reader's path to every frame, control frames too: a burst of pings
// gets exactly FrameBurst pongs; the rest get none.
func TestFrameRateLimitOnTheReader(t *testing.T) {
	const burst, sent = 30, 100
	r, s, _ := testReader(Config{FramesPerSecond: 1, FrameBurst: burst})
	var in []byte
	for range sent {
		in = append(in, clientFrame(true, 0x9, nil)...) // ping
	}
	if err := r.Parse(in); err != nil {
		t.Fatal(err)
	}
	pongs := 0
	for b := s.out.Bytes(); len(b) >= 2; b = b[2+int(b[1]&0x7f):] {
		if b[0] == 0x8a {
			pongs++
		}
	}
	// One frame a second: the test's own run time can refill one more.
	if pongs < burst || pongs > burst+1 || s.closed {
		t.Fatalf("%d pings: %d pongs (closed: %v); want %d pongs (the burst), the rest refused", sent, pongs, s.closed, burst)
	}
}
