// Copyright 2026 The Petrel Authors
// SPDX-License-Identifier: Apache-2.0

package testserver

import (
	"crypto/ed25519"
	"sync/atomic"
	"testing"
	"time"

	"github.com/petrelchat/petrel/internal/gateway"
	pb "github.com/petrelchat/petrel/proto/petrel/v1"
)

// LateAttach runs the race of a late attach for the device of key: connection A authenticates
// on urlA and its handler is held between the Welcome and the attach (as a starved executor holds
// it), while connection B authenticates on urlB (the same server, or another node) and is
// attached (its QueueEmpty read); then A's handler goes on and attaches. It returns both once A's
// attach is done. A, the earlier connection, is the one that must be taken over.
func LateAttach(t testing.TB, key ed25519.PrivateKey, urlA, urlB string) (a, b *RawClient) {
	t.Helper()
	var calls atomic.Int32
	held, release, doneA := make(chan struct{}), make(chan struct{}), make(chan struct{})
	restore := gateway.SetWelcomeHookForTest(func(string) func() {
		if calls.Add(1) != 1 {
			return nil
		}
		close(held)
		<-release
		return func() { close(doneA) }
	})
	defer restore()
	var once atomic.Bool
	t.Cleanup(func() { // a failed test must not leave A's handler held
		if once.CompareAndSwap(false, true) {
			close(release)
		}
	})

	a = Dial(t, urlA)
	if w := a.Auth(key); w.GetWelcome() == nil {
		t.Fatalf("A: %v", w)
	}
	<-held
	b = Dial(t, urlB)
	if w := b.Auth(key); w.GetWelcome() == nil {
		t.Fatalf("B: %v", w)
	}
	if f := b.NextPush(); f.GetQueueEmpty() == nil {
		t.Fatalf("B: want QueueEmpty, got %v", f)
	}
	once.Store(true)
	close(release)
	<-doneA
	return a, b
}

// WantTakenOver reads c's frames until it is told CONNECTED_ELSEWHERE (within 10 s).
func (c *RawClient) WantTakenOver(who string) {
	c.t.Helper()
	for {
		f, err := c.ReadErr(10 * time.Second)
		if err != nil {
			c.t.Fatalf("%s was not told CONNECTED_ELSEWHERE: %v", who, err)
		}
		if f.GetError().GetCode() == pb.ErrorCode_ERROR_CODE_CONNECTED_ELSEWHERE {
			return
		}
	}
}

// WantStillServed checks that c answers a ping and was never told CONNECTED_ELSEWHERE.
func (c *RawClient) WantStillServed(who string) {
	c.t.Helper()
	if r := c.Request(&pb.Frame{Body: &pb.Frame_Ping{Ping: &pb.Ping{}}}); r.GetPong() == nil {
		c.t.Fatalf("%s's ping: %v", who, r)
	}
	for _, f := range c.Pushes {
		if f.GetError().GetCode() == pb.ErrorCode_ERROR_CODE_CONNECTED_ELSEWHERE {
			c.t.Fatalf("%s was taken over: %v", who, f)
		}
	}
}
