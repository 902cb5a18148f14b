// Copyright 2026 The Petrel Authors
// SPDX-License-Identifier: Apache-2.0

package keyrate

import (
	"testing"
	"time"
)

// fakeClock is a clock a test moves by hand.
type fakeClock struct{ t time.Time }

func (c *fakeClock) now() time.Time      { return c.t }
func (c *fakeClock) add(d time.Duration) { c.t = c.t.Add(d) }
func newFake() *fakeClock                { return &fakeClock{t: time.Unix(1_000_000, 0)} }
func newLimiter(c *fakeClock, rate, burst float64, keys int) *Limiter[string] {
	return New[string](Config{Rate: rate, Burst: burst, MaxKeys: keys, Now: c.now})
}

func TestTakeRefillAndRetryAfter(t *testing.T) {
	c := newFake()
	l := newLimiter(c, 1, 3, 10) // 1 a second, burst 3
	for i := range 3 {
		if ok, _ := l.Take("a", 1); !ok {
			t.Fatalf("take %d refused within the burst", i)
		}
	}
	ok, retry := l.Take("a", 1)
	if ok || retry <= 0 || retry > time.Second {
		t.Fatalf("over the burst: ok=%v retry=%s, want refused with retry in (0, 1s]", ok, retry)
	}
	if ok, _ := l.Take("b", 1); !ok {
		t.Fatal("another key is limited by the first one's bucket")
	}
	c.add(time.Second)
	if ok, _ := l.Take("a", 1); !ok {
		t.Fatal("no token after a second at 1/s")
	}
	// Taking several at once is all or nothing.
	c.add(1500 * time.Millisecond)
	if ok, retry := l.Take("a", 2); ok || retry != 500*time.Millisecond {
		t.Fatalf("take 2 of 1.5: ok=%v retry=%s, want refused, retry 500ms", ok, retry)
	}
	if ok, _ := l.Take("a", 1); !ok {
		t.Fatal("the refused take of 2 spent tokens")
	}
	// n above the burst is capped, so it can succeed.
	if ok, _ := l.Take("z", 100); !ok {
		t.Fatal("a take above the burst never succeeds")
	}
}

func TestGive(t *testing.T) {
	c := newFake()
	l := newLimiter(c, 0.001, 2, 10)
	l.Take("a", 2)
	l.Give("a", 1)
	if ok, _ := l.Take("a", 1); !ok {
		t.Fatal("a given-back token cannot be taken")
	}
	l.Give("a", 5) // refilled: forgotten
	if l.Len() != 0 {
		t.Fatalf("a full bucket is still tracked: %d keys", l.Len())
	}
	l.Give("untracked", 1)
	if l.Len() != 0 {
		t.Fatal("Give tracked a new key")
	}
}

// The table never holds more than MaxKeys; refilled keys go first, then random ones.
func TestBounded(t *testing.T) {
	c := newFake()
	l := newLimiter(c, 1, 10, 100)
	for i := range 100 {
		l.Take(string(rune('A'+i%26))+string(rune(i)), 1)
	}
	if l.Len() != 100 {
		t.Fatalf("len %d, want 100", l.Len())
	}
	c.add(time.Hour) // every bucket refilled
	l.Take("new", 1)
	if l.Len() != 1 || l.Evicted() != 0 {
		t.Fatalf("after refill: len %d evicted %d, want 1 and 0", l.Len(), l.Evicted())
	}
	for i := range 10_000 {
		l.Take(string(rune(i+1000)), 1)
		if l.Len() > 100 {
			t.Fatalf("len %d above the bound", l.Len())
		}
	}
	if l.Evicted() == 0 {
		t.Fatal("no eviction with 10,000 active keys and room for 100")
	}
}

func BenchmarkTake(b *testing.B) {
	l := New[uint64](Config{Rate: 1, Burst: 1e9, MaxKeys: 1 << 16})
	for i := range b.N {
		l.Take(uint64(i%50_000), 1)
	}
}
