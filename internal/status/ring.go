// Copyright 2026 The Petrel Authors
// SPDX-License-Identifier: Apache-2.0

package status

import "time"

// RingMinutes is how far back the aggregates remember: one slot a minute for 24 hours.
const RingMinutes = 24 * 60

// minuteOf is t's minute number since the Unix epoch.
func minuteOf(t time.Time) int64 { return t.Unix() / 60 }

// ring is a fixed-size per-minute ring buffer over the last RingMinutes minutes: slot i holds the
// minute whose number modulo RingMinutes is i, stamped with that minute so that a slot left over
// from an older day reads as empty. Its size never changes. Not safe for concurrent use: its
// owner's mutex guards it.
type ring[T any] struct {
	mins  [RingMinutes]int64
	slots [RingMinutes]T
}

// at returns minute m's slot for writing, emptied first if it held an older minute.
func (r *ring[T]) at(m int64) *T {
	i := m % RingMinutes
	if r.mins[i] != m {
		var zero T
		r.mins[i], r.slots[i] = m, zero
	}
	return &r.slots[i]
}

// get returns minute m's slot, or nil if nothing was recorded in that minute (or it is older than
// the ring).
func (r *ring[T]) get(m int64) *T {
	i := m % RingMinutes
	if r.mins[i] != m {
		return nil
	}
	return &r.slots[i]
}

// each calls f for every recorded minute in [from, to], oldest first.
func (r *ring[T]) each(from, to int64, f func(m int64, v *T)) {
	if to-from >= RingMinutes {
		from = to - RingMinutes + 1
	}
	for m := from; m <= to; m++ {
		if v := r.get(m); v != nil {
			f(m, v)
		}
	}
}
