// Copyright 2026 The Petrel Authors
// SPDX-License-Identifier: Apache-2.0

// Package keyrate is a set of token buckets keyed by an identity (a device, a pair of devices, an
// IP address), bounded in memory: it tracks at most a configured number of keys, forgets a key
// whose bucket has refilled (a full bucket is the same as none), and when the table is full
// evicts at random.
//
// Eviction resets a key to a full bucket, so the bound on memory is also a bound on how many
// identities can be limited at once; size it above the number of identities active within one
// refill period (Burst/Rate). A key is tracked only once it has taken a token.
//
// A Limiter is local to one process. In a cluster every node limits on its own, so the node-wide
// rate of an identity that spreads over N nodes is up to N times the configured one.
package keyrate

import (
	"math"
	"sync"
	"time"
)

// Config sets the buckets of a Limiter.
type Config struct {
	// Rate is how many tokens a bucket regains per second. Required (> 0).
	Rate float64
	// Burst is a bucket's capacity, and how many tokens a new key starts with. Required (>= 1).
	Burst float64
	// MaxKeys bounds the keys tracked at once (about 48 bytes each plus the key). Required (>= 1).
	MaxKeys int
	// Now is the clock; nil means time.Now. Tests set a fake one.
	Now func() time.Time
}

// Limiter is a bounded set of token buckets, one per key. It is safe for concurrent use.
type Limiter[K comparable] struct {
	rate, burst float64
	max         int
	now         func() time.Time
	base        time.Time // bucket times are nanoseconds since base (monotonic)

	mu      sync.Mutex // guards the fields below
	buckets map[K]bucket
	evicted uint64
}

// bucket is one key's tokens as of last (nanoseconds since the limiter's base).
type bucket struct {
	tokens float64
	last   int64
}

// New returns a limiter. Rate, Burst and MaxKeys must be positive.
func New[K comparable](cfg Config) *Limiter[K] {
	if cfg.Now == nil {
		cfg.Now = time.Now
	}
	return &Limiter[K]{
		rate: cfg.Rate, burst: math.Max(cfg.Burst, 1), max: max(cfg.MaxKeys, 1),
		now: cfg.Now, base: cfg.Now(),
		buckets: make(map[K]bucket),
	}
}

// clock is the time now in nanoseconds since base.
func (l *Limiter[K]) clock() int64 { return int64(l.now().Sub(l.base)) }

// tokensLocked is k's bucket refilled up to now; ok is false when k is not tracked (a full bucket).
func (l *Limiter[K]) tokensLocked(k K, now int64) (float64, bool) {
	b, ok := l.buckets[k]
	if !ok {
		return l.burst, false
	}
	return math.Min(l.burst, b.tokens+float64(now-b.last)/1e9*l.rate), true
}

// Take takes n tokens from k's bucket. When there are fewer than n it takes none and returns
// false with how long until n are there (n is capped at Burst, so every request can succeed).
func (l *Limiter[K]) Take(k K, n float64) (ok bool, retryAfter time.Duration) {
	n = math.Min(n, l.burst)
	l.mu.Lock()
	defer l.mu.Unlock()
	now := l.clock()
	t, tracked := l.tokensLocked(k, now)
	if t < n {
		return false, time.Duration((n - t) / l.rate * 1e9)
	}
	if !tracked && len(l.buckets) >= l.max {
		l.makeRoomLocked(now)
	}
	l.buckets[k] = bucket{tokens: t - n, last: now}
	return true, 0
}

// Give returns n tokens to k's bucket (for a caller that took tokens from several limiters and
// then could not go on). Tokens beyond Burst are dropped.
func (l *Limiter[K]) Give(k K, n float64) {
	l.mu.Lock()
	defer l.mu.Unlock()
	now := l.clock()
	t, tracked := l.tokensLocked(k, now)
	if !tracked {
		return
	}
	t = math.Min(l.burst, t+n)
	if t >= l.burst {
		delete(l.buckets, k)
		return
	}
	l.buckets[k] = bucket{tokens: t, last: now}
}

// makeRoomLocked frees space in a full table: first it forgets every key whose bucket has
// refilled; if that frees less than a quarter, it evicts at random down to three quarters. The
// sweep is linear, but after it a quarter of the table is free, so its cost is constant per Take
// on average.
func (l *Limiter[K]) makeRoomLocked(now int64) {
	for k := range l.buckets {
		if t, _ := l.tokensLocked(k, now); t >= l.burst {
			delete(l.buckets, k)
		}
	}
	target := l.max * 3 / 4
	for k := range l.buckets { // map order is random
		if len(l.buckets) <= target {
			break
		}
		delete(l.buckets, k)
		l.evicted++
	}
}

// Len is the number of keys tracked.
func (l *Limiter[K]) Len() int {
	l.mu.Lock()
	defer l.mu.Unlock()
	return len(l.buckets)
}

// Evicted is how many keys were forgotten before their bucket refilled, since New.
func (l *Limiter[K]) Evicted() uint64 {
	l.mu.Lock()
	defer l.mu.Unlock()
	return l.evicted
}
