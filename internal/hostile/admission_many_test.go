// Copyright 2026 The Petrel Authors
// SPDX-License-Identifier: Apache-2.0

package hostile

import (
	"bytes"
	"fmt"
	"strings"
	"sync"
	"sync/atomic"
	"testing"
	"time"

	"github.com/petrelchat/petrel/internal/testserver"
	pb "github.com/petrelchat/petrel/proto/petrel/v1"
)

// manyBound is the most 100 hostile connections together may raise the process's RSS by.
const manyBound = 1 << 30

// 100 hostile connections at once (ping floods and Auth floods before authentication, pipelined
// GetBundle floods after it, frames that trickle in one byte at a time) while a well-behaved user
// keeps being answered. Together they must not raise RSS by more than 1 GiB.
func TestHostileHundredConnections(t *testing.T) {
	ts := testserver.Start(t)
	good := wellBehaved(t, ts, "victim")

	ping := bytes.Repeat(admFrame(0x9, nil, false), (256<<10)/6)
	auth := admBinary(t, &pb.Frame{Id: 1, Body: &pb.Frame_Auth{Auth: &pb.Auth{DeviceId: strings.Repeat("a", 200_000)}}})
	gb := admBinary(t, &pb.Frame{Id: 7, Body: &pb.Frame_GetBundle{GetBundle: &pb.GetBundle{Name: "victim"}}})
	bundles := bytes.Repeat(gb, (256<<10)/len(gb))
	// A frame that declares the largest size and then trickles.
	slowHdr := admFrame(0x2, make([]byte, pb.DefaultMaxFrameBytes), false)[:14]

	type attacker struct {
		w     *admWS
		batch []byte
		slow  bool
	}
	var atk []attacker
	for i := range 100 {
		w := admDial(t, ts.URL(), "")
		switch i % 4 {
		case 0:
			atk = append(atk, attacker{w: w, batch: ping})
		case 1:
			atk = append(atk, attacker{w: w, batch: auth})
		case 2:
			w.register(fmt.Sprintf("mallory%d", i))
			atk = append(atk, attacker{w: w, batch: bundles})
		case 3:
			atk = append(atk, attacker{w: w, batch: slowHdr, slow: true})
		}
	}

	base := admBaseline(t)
	var (
		peak atomic.Int64
		stop atomic.Bool
		wg   sync.WaitGroup
	)
	end := time.Now().Add(4 * time.Second)
	for _, a := range atk {
		wg.Add(1)
		go func() {
			defer wg.Done()
			for !stop.Load() && time.Now().Before(end) {
				_ = a.w.c.SetWriteDeadline(time.Now().Add(time.Second))
				if _, err := a.w.c.Write(a.batch); err != nil {
					return
				}
				if a.slow {
					a.batch = []byte{0}
					time.Sleep(50 * time.Millisecond) // a trickle, by design
				}
			}
		}()
	}
	// Sample RSS and keep the well-behaved user busy while the attack runs.
	var served []error
	tick := time.NewTicker(20 * time.Millisecond) // a user's pace, well under the rate limit
	defer tick.Stop()
	for time.Now().Before(end) && !stop.Load() {
		<-tick.C
		g := admRSS(t) - base
		if g > peak.Load() {
			peak.Store(g)
		}
		if g > manyBound {
			stop.Store(true) // the bound is broken: stop before the machine suffers
			break
		}
		if err := admServed(t, good); err != nil {
			served = append(served, err)
			break
		}
	}
	stop.Store(true)
	wg.Wait()
	t.Logf("100 hostile connections: peak RSS growth %.1f MiB", float64(peak.Load())/(1<<20))
	if p := peak.Load(); p > manyBound {
		t.Fatalf("100 hostile connections raised RSS by %.0f MiB (bound %d MiB)", float64(p)/(1<<20), manyBound>>20)
	}
	for _, err := range served {
		t.Error(err)
	}
	if err := admServed(t, good); err != nil {
		t.Fatal(err)
	}
	// Every flooding socket was cut off (the trickling ones wait for handshake_timeout).
	open := 0
	for _, a := range atk {
		if a.slow {
			continue
		}
		if _, closed := admWaitClosed(a.w.c, 100*time.Millisecond); !closed {
			open++
		}
	}
	if open > 0 {
		t.Fatalf("%d of 75 flooding sockets still open after the attack", open)
	}
}
