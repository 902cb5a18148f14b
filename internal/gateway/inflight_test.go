// Copyright 2026 The Petrel Authors
// SPDX-License-Identifier: Apache-2.0

package gateway

import (
	"sync"
	"testing"
)

func closed(ch <-chan struct{}) bool {
	select {
	case <-ch:
		return true
	default:
		return false
	}
}

// Drain's wait for in-flight sends: idle is closed exactly when none is in flight, and sends may
// go on starting and ending while somebody waits (what a sync.WaitGroup forbids).
func TestInflightIdle(t *testing.T) {
	var f inflight
	if !closed(f.idle()) {
		t.Fatal("idle with nothing in flight is not closed")
	}
	f.add()
	f.add()
	w := f.idle()
	f.done()
	if closed(w) {
		t.Fatal("idle closed with a send still in flight")
	}
	f.done()
	if !closed(w) {
		t.Fatal("idle not closed after the last send ended")
	}

	var wg sync.WaitGroup
	for range 8 {
		wg.Go(func() {
			for range 1000 {
				f.add()
				f.done()
			}
		})
	}
	for range 100 {
		<-f.idle() // never hangs: every add is followed by its done
	}
	wg.Wait()
	if !closed(f.idle()) || f.n.Load() != 0 {
		t.Fatalf("after every send ended: %d in flight", f.n.Load())
	}
}
