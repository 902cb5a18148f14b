// Copyright 2026 The Petrel Authors
// SPDX-License-Identifier: Apache-2.0

package mailbox

import (
	"context"
	"sync/atomic"
	"testing"
	"time"
)

// On a replicated inbox a direct get may be answered by a replica that has not yet applied a
// write the leader acked (nats-server lets every current replica join the direct-get queue
// group). A drain woken by a commit must not read "empty" from such a replica and go live while
// the envelope sits stored. The staleRead hook makes reads answer as that replica would; each
// case fails without the wake-up's sequence check (the envelope is never pushed).
func TestDrainReadsUpToTheWakeSequence(t *testing.T) {
	for _, tc := range []struct {
		name  string
		stale int32 // reads after the wake-up that answer "nothing": -1 every one
	}{
		{"one stale read, then the replica catches up", 1},
		{"the replica never catches up: the leader is asked", -1},
	} {
		t.Run(tc.name, func(t *testing.T) {
			var staleLeft atomic.Int32 // 0 until the device is live
			live := make(chan struct{}, 16)
			hooks := testHooks{
				staleRead: func(_ *Attachment, _ uint64) bool {
					for {
						n := staleLeft.Load()
						switch {
						case n == 0:
							return false
						case n < 0:
							return true
						case staleLeft.CompareAndSwap(n, n-1):
							return true
						}
					}
				},
				drainIdle: func(_ *Attachment, isLive bool, _ int) {
					if isLive {
						live <- struct{}{}
					}
				},
			}
			_, m := openHooked(t, Config{}, hooks)
			m.replicated = true // as on an R3 inbox; the embedded test bus is R1
			s := newOrderSink()
			a, err := m.Attach(orderDev, "c1", s)
			if err != nil {
				t.Fatal(err)
			}
			defer a.Detach()
			s.ackAll(t, a)
			<-s.empty
			awaitLive(t, live)

			staleLeft.Store(tc.stale)
			done := make(chan error, 1)
			m.Store(orderDev, "id-1", []byte("e1"), func(err error) { done <- err })
			if err := <-done; err != nil {
				t.Fatal(err)
			}
			if got := s.waitPushes(t, 1); len(got) != 1 || got[0] != "e1" {
				t.Fatalf("pushed %q, want [e1]", got)
			}
			awaitLive(t, live)
			if got := s.pushes(); len(got) != 1 {
				t.Fatalf("pushed %q, want e1 once", got)
			}
		})
	}
}

// A wake-up whose envelope is gone by the time the drain reads (acked on another connection and
// purged, or expired) does not hold the drain: the leader says there is nothing, and it goes live.
func TestDrainGoesLiveWhenTheWokenEnvelopeIsGone(t *testing.T) {
	var stale atomic.Bool
	live := make(chan struct{}, 16)
	hooks := testHooks{
		staleRead: func(*Attachment, uint64) bool { return stale.Load() },
		drainIdle: func(_ *Attachment, isLive bool, _ int) {
			if isLive {
				live <- struct{}{}
			}
		},
	}
	_, m := openHooked(t, Config{}, hooks)
	m.replicated = true
	s := newOrderSink()
	a, err := m.Attach(orderDev, "c1", s)
	if err != nil {
		t.Fatal(err)
	}
	defer a.Detach()
	<-s.empty
	awaitLive(t, live)
	stale.Store(true)
	a.wake("", 42) // nothing was ever stored at 42
	awaitLive(t, live)
	a.mu.Lock()
	leaderTo := a.leaderTo
	a.mu.Unlock()
	if leaderTo != 42 {
		t.Fatalf("leaderTo = %d, want 42 (the leader confirmed the announced envelope is gone)", leaderTo)
	}
	if got := s.pushes(); len(got) != 0 {
		t.Fatalf("pushed %q, want nothing", got)
	}
}

// awaitLive waits until the drain switches the attachment to live delivery.
func awaitLive(t *testing.T, live chan struct{}) {
	t.Helper()
	select {
	case <-live:
	case <-time.After(20 * time.Second):
		t.Fatal("the drain never went live")
	}
}

// A store whose wake-up was lost — its sender's node had not yet seen the device's new
// subscription — and that the replica answering the drain has not applied yet, is still pushed
// before QueueEmpty: on a replicated inbox the first switch to live waits until every node has
// the subscription, then asks the stream leader. The envelope is appended straight to the
// stream (no wake-up at all) and the staleRead hook hides it from every direct get.
func TestFirstDrainAsksTheLeader(t *testing.T) {
	hooks := testHooks{staleRead: func(*Attachment, uint64) bool { return true }}
	b, m := openHooked(t, Config{}, hooks)
	m.replicated = true
	ctx, cancel := context.WithTimeout(context.Background(), 10*time.Second)
	defer cancel()
	if _, err := b.JS().Publish(ctx, b.InboxSubject(orderDev), []byte("e1")); err != nil {
		t.Fatal(err)
	}
	s := newOrderSink()
	a, err := m.Attach(orderDev, "c1", s)
	if err != nil {
		t.Fatal(err)
	}
	defer a.Detach()
	select {
	case n := <-s.empty:
		if got := s.pushes(); n != 1 || len(got) != 1 || got[0] != "e1" {
			t.Fatalf("QueueEmpty(%d) after pushes %q, want QueueEmpty(1) after [e1]", n, got)
		}
	case <-time.After(20 * time.Second):
		t.Fatal("no QueueEmpty")
	}
	// Alone, the node's own mailbox answers its ping: confirmed without waiting for a timeout.
	if !m.confirmInterest() {
		t.Fatal("confirmInterest: not confirmed on a lone node")
	}
}

// A resync's wake-up carries no sequence (the wake-ups the bus dropped did): on a replicated
// inbox the drain it starts asks the stream leader before it goes live again, so an envelope the
// answering replica has not applied is still pushed.
func TestResyncWakeAsksTheLeader(t *testing.T) {
	var stale atomic.Bool
	live := make(chan struct{}, 16)
	hooks := testHooks{
		staleRead: func(*Attachment, uint64) bool { return stale.Load() },
		drainIdle: func(_ *Attachment, isLive bool, _ int) {
			if isLive {
				live <- struct{}{}
			}
		},
	}
	b, m := openHooked(t, Config{}, hooks)
	m.replicated = true
	s := newOrderSink()
	a, err := m.Attach(orderDev, "c1", s)
	if err != nil {
		t.Fatal(err)
	}
	defer a.Detach()
	s.ackAll(t, a)
	<-s.empty
	awaitLive(t, live)

	stale.Store(true)
	ctx, cancel := context.WithTimeout(context.Background(), 10*time.Second)
	defer cancel()
	if _, err := b.JS().Publish(ctx, b.InboxSubject(orderDev), []byte("e1")); err != nil {
		t.Fatal(err)
	}
	// What a resync does after the bus dropped messages.
	if n := m.wakeAttached(); n != 1 {
		t.Fatalf("a resync woke %d attachments, want 1", n)
	}
	if got := s.waitPushes(t, 1); len(got) != 1 || got[0] != "e1" {
		t.Fatalf("pushed %q, want [e1]", got)
	}
	awaitLive(t, live)
}

// Concurrent confirmations share pings (one in flight at a time) and each still ends confirmed.
func TestConfirmInterestCoalesces(t *testing.T) {
	_, m := openInternal(t)
	const calls = 64
	res := make(chan bool, calls)
	for range calls {
		go func() { res <- m.confirmInterest() }()
	}
	for range calls {
		select {
		case ok := <-res:
			if !ok {
				t.Fatal("confirmInterest: not confirmed on a lone node")
			}
		case <-time.After(20 * time.Second):
			t.Fatal("confirmInterest never returned")
		}
	}
	m.pinger.mu.Lock()
	running, next := m.pinger.running, m.pinger.next
	m.pinger.mu.Unlock()
	if next != nil {
		t.Fatalf("a round is left waiting after every call returned (running %v)", running)
	}
}
