// Copyright 2026 The Petrel Authors
// SPDX-License-Identifier: Apache-2.0

package client

import (
	"math/rand/v2"
	"time"
)

// backoff computes reconnect delays: exponential with full jitter, bounded by max.
// attempt 0 is the first retry.
type backoff struct {
	base, max time.Duration
	// rnd returns a uniform value in [0, n); nil means math/rand/v2.
	rnd func(n int64) int64
}

// delay returns a random duration in [0, min(max, base*2^attempt)].
func (b backoff) delay(attempt int) time.Duration {
	ceil := b.ceiling(attempt)
	if ceil <= 0 {
		return 0
	}
	rnd := b.rnd
	if rnd == nil {
		rnd = rand.Int64N
	}
	return time.Duration(rnd(int64(ceil) + 1))
}

// ceiling returns min(max, base*2^attempt) without overflow.
func (b backoff) ceiling(attempt int) time.Duration {
	if attempt < 0 {
		attempt = 0
	}
	d := b.base
	for i := 0; i < attempt && d < b.max; i++ {
		d *= 2
	}
	if d > b.max {
		d = b.max
	}
	return d
}

// withRetryAfter honours a server hint: wait at least hint plus a jitter of up to 10% of it (at
// most 1s), so that clients given the same hint do not all return at once.
func (b backoff) withRetryAfter(d, hint time.Duration) time.Duration {
	if hint <= 0 {
		return d
	}
	rnd := b.rnd
	if rnd == nil {
		rnd = rand.Int64N
	}
	jitter := min(hint/10, time.Second)
	h := hint + time.Duration(rnd(int64(jitter)+1))
	return max(d, h)
}
