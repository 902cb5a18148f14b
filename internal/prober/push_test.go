// Copyright 2026 The Petrel Authors
// SPDX-License-Identifier: Apache-2.0

package prober_test

import (
	"context"
	"encoding/json"
	"net/http"
	"net/http/httptest"
	"sync"
	"sync/atomic"
	"testing"
	"time"

	"github.com/petrelchat/petrel/internal/prober"
	"github.com/petrelchat/petrel/internal/status"
)

func waitCond(t *testing.T, what string, cond func() bool) {
	t.Helper()
	deadline := time.Now().Add(20 * time.Second)
	for !cond() {
		if time.Now().After(deadline) {
			t.Fatalf("timed out waiting for %s", what)
		}
		time.Sleep(5 * time.Millisecond) // polling with a deadline
	}
}

// TestPusherRefusedTokenNotRetried: 401 ends a batch at once; the next batch is still tried.
func TestPusherRefusedTokenNotRetried(t *testing.T) {
	var n atomic.Int32
	hs := httptest.NewServer(http.HandlerFunc(func(w http.ResponseWriter, r *http.Request) {
		n.Add(1)
		http.Error(w, "no", http.StatusUnauthorized)
	}))
	defer hs.Close()
	p, err := prober.NewPusher(prober.PusherConfig{URL: hs.URL, Token: "t", RetryBase: time.Millisecond})
	if err != nil {
		t.Fatal(err)
	}
	ctx, cancel := context.WithCancel(context.Background())
	var wg sync.WaitGroup
	wg.Add(1)
	go func() { defer wg.Done(); p.Run(ctx) }()
	defer func() { cancel(); wg.Wait() }()
	p.Push(status.ProbeBatch{Results: []status.ProbeResult{{Node: "a"}}})
	p.Push(status.ProbeBatch{Results: []status.ProbeResult{{Node: "b"}}})
	waitCond(t, "two batches dropped", func() bool { _, d := p.Stats(); return d == 2 })
	if got := n.Load(); got != 2 {
		t.Fatalf("%d requests for two refused batches, want 2 (no retries)", got)
	}
}

// TestPusherQueueBounded: while the server does not answer, Push never blocks and keeps only the
// newest PushQueue batches; once it answers they arrive in order.
func TestPusherQueueBounded(t *testing.T) {
	release := make(chan struct{})
	var mu sync.Mutex
	var got []string
	hs := httptest.NewServer(http.HandlerFunc(func(w http.ResponseWriter, r *http.Request) {
		<-release
		var b status.ProbeBatch
		_ = json.NewDecoder(r.Body).Decode(&b)
		mu.Lock()
		got = append(got, b.Results[0].Node)
		mu.Unlock()
	}))
	defer hs.Close()
	defer close(release)
	p, err := prober.NewPusher(prober.PusherConfig{URL: hs.URL, Token: "t"})
	if err != nil {
		t.Fatal(err)
	}
	ctx, cancel := context.WithCancel(context.Background())
	var wg sync.WaitGroup
	wg.Add(1)
	go func() { defer wg.Done(); p.Run(ctx) }()
	defer func() { cancel(); wg.Wait() }()
	p.Push(status.ProbeBatch{Results: []status.ProbeResult{{Node: "first"}}})
	waitCond(t, "the first batch in flight", func() bool { return p.Pending() == 0 })
	if p.Idle() {
		t.Fatal("Idle while a batch is being sent: petrel probe would cancel the push in flight")
	}
	start := time.Now()
	for i := range 3 * prober.PushQueue {
		p.Push(status.ProbeBatch{Results: []status.ProbeResult{{Node: string(rune('A' + i%26))}}})
	}
	if el := time.Since(start); el > time.Second {
		t.Fatalf("Push blocked for %v", el)
	}
	if p.Pending() != prober.PushQueue {
		t.Fatalf("%d pending, want %d", p.Pending(), prober.PushQueue)
	}
	if _, d := p.Stats(); d != 2*prober.PushQueue {
		t.Fatalf("%d dropped, want %d", d, 2*prober.PushQueue)
	}
	release <- struct{}{} // unblock the first; the rest go one after the other
	for range prober.PushQueue {
		release <- struct{}{}
	}
	waitCond(t, "every kept batch sent", func() bool { s, _ := p.Stats(); return s == 1+prober.PushQueue })
	mu.Lock()
	defer mu.Unlock()
	if got[0] != "first" || len(got) != 1+prober.PushQueue {
		t.Fatalf("got %v", got)
	}
}

func TestNewPusherChecks(t *testing.T) {
	if _, err := prober.NewPusher(prober.PusherConfig{URL: "ftp://x", Token: "t"}); err == nil {
		t.Fatal("ftp URL accepted")
	}
	if _, err := prober.NewPusher(prober.PusherConfig{URL: "http://x"}); err == nil {
		t.Fatal("no token accepted")
	}
}
