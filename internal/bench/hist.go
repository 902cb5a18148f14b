// Copyright 2026 The Petrel Authors
// SPDX-License-Identifier: Apache-2.0

package bench

import (
	"encoding/json"
	"fmt"
	"math"
	"math/bits"
	"sync/atomic"
	"time"
)

// Histogram layout: values below subCount nanoseconds have a bucket each; above, every power of
// two is split into subCount buckets, so a bucket is at most 1/subCount (0.8%) of its value wide.
// Values at or above 2^maxExp ns (about 73 minutes) land in the last bucket.
const (
	subBits  = 7
	subCount = 1 << subBits
	maxExp   = 42
	nBuckets = (maxExp - subBits + 1) * subCount
)

// hist is a log-bucketed latency histogram in the style of HdrHistogram. Record is safe for
// concurrent use (atomic counters); histograms from several goroutines or processes merge
// exactly by adding bucket counts, so percentiles of merged results are real percentiles, not
// averages of percentiles.
type hist struct {
	counts [nBuckets]atomic.Uint64
	n      atomic.Uint64
	sum    atomic.Uint64 // nanoseconds
	max    atomic.Int64  // nanoseconds
}

func newHist() *hist { return &hist{} }

func bucketOf(v int64) int {
	if v < subCount {
		if v < 0 {
			return 0
		}
		return int(v)
	}
	e := bits.Len64(uint64(v)) - 1
	if e >= maxExp {
		return nBuckets - 1
	}
	shift := e - subBits
	return (shift+1)*subCount + int(uint64(v)>>uint(shift)) - subCount
}

// bucketHigh is the largest value that falls in bucket i.
func bucketHigh(i int) int64 {
	if i < subCount {
		return int64(i)
	}
	shift := i/subCount - 1
	m := int64(i%subCount + subCount)
	return (m+1)<<uint(shift) - 1
}

// Record adds one value.
func (h *hist) Record(d time.Duration) {
	v := int64(d)
	if v < 0 {
		v = 0
	}
	h.counts[bucketOf(v)].Add(1)
	h.n.Add(1)
	h.sum.Add(uint64(v))
	for {
		m := h.max.Load()
		if v <= m || h.max.CompareAndSwap(m, v) {
			break
		}
	}
}

// Count is the number of recorded values.
func (h *hist) Count() uint64 { return h.n.Load() }

// Merge adds o's values into h.
func (h *hist) Merge(o *hist) {
	if o == nil {
		return
	}
	for i := range o.counts {
		if c := o.counts[i].Load(); c != 0 {
			h.counts[i].Add(c)
		}
	}
	h.n.Add(o.n.Load())
	h.sum.Add(o.sum.Load())
	if v := o.max.Load(); v > h.max.Load() {
		h.max.Store(v)
	}
}

// Quantile returns the value at quantile q (0 < q <= 1): the highest value of the bucket holding
// that rank, capped at the largest value recorded. It returns 0 for an empty histogram.
func (h *hist) Quantile(q float64) time.Duration {
	n := h.n.Load()
	if n == 0 {
		return 0
	}
	rank := uint64(math.Ceil(q * float64(n)))
	if rank < 1 {
		rank = 1
	}
	var seen uint64
	for i := range h.counts {
		seen += h.counts[i].Load()
		if seen >= rank {
			return time.Duration(min(bucketHigh(i), h.max.Load()))
		}
	}
	return time.Duration(h.max.Load())
}

// Mean returns the average value.
func (h *hist) Mean() time.Duration {
	n := h.n.Load()
	if n == 0 {
		return 0
	}
	return time.Duration(h.sum.Load() / n)
}

// Max returns the largest value recorded.
func (h *hist) Max() time.Duration { return time.Duration(h.max.Load()) }

// histJSON is the sparse wire form of a hist (between a worker and the coordinator).
type histJSON struct {
	Buckets [][2]uint64 `json:"b,omitempty"` // [bucket index, count]
	N       uint64      `json:"n"`
	Sum     uint64      `json:"sum"`
	Max     int64       `json:"max"`
}

func (h *hist) MarshalJSON() ([]byte, error) {
	j := histJSON{N: h.n.Load(), Sum: h.sum.Load(), Max: h.max.Load()}
	for i := range h.counts {
		if c := h.counts[i].Load(); c != 0 {
			j.Buckets = append(j.Buckets, [2]uint64{uint64(i), c})
		}
	}
	return json.Marshal(j)
}

func (h *hist) UnmarshalJSON(b []byte) error {
	var j histJSON
	if err := json.Unmarshal(b, &j); err != nil {
		return err
	}
	for _, bc := range j.Buckets {
		if bc[0] >= nBuckets {
			return fmt.Errorf("histogram bucket %d out of range", bc[0])
		}
		h.counts[bc[0]].Store(bc[1])
	}
	h.n.Store(j.N)
	h.sum.Store(j.Sum)
	h.max.Store(j.Max)
	return nil
}
