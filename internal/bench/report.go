// Copyright 2026 The Petrel Authors
// SPDX-License-Identifier: Apache-2.0

package bench

import (
	"maps"
	"slices"
	"sync"
	"sync/atomic"
	"time"
)

// report is what one shard says about one step. Reports of several shards merge by adding
// counters and histograms.
type report struct {
	// Start and End bound the step's activity on this shard (Unix nanoseconds; 0: unset).
	Start int64 `json:"start,omitempty"`
	End   int64 `json:"end,omitempty"`

	Conns      int64 `json:"conns,omitempty"`       // connections established (or held)
	ConnFailed int64 `json:"conn_failed,omitempty"` // connections given up after retries
	Dropped    int64 `json:"dropped,omitempty"`     // held connections that the server closed
	// DroppedSilent counts the dropped connections this side had written nothing to for longer
	// than twice the keepalive interval (the keepalive fell behind, not the server).
	DroppedSilent int64 `json:"dropped_silent,omitempty"`

	Sent              int64 `json:"sent,omitempty"`
	Acked             int64 `json:"acked,omitempty"`
	AckedInWindow     int64 `json:"acked_in_window,omitempty"`
	Delivered         int64 `json:"delivered,omitempty"` // unique messages received
	DeliveredInWindow int64 `json:"delivered_in_window,omitempty"`
	Duplicates        int64 `json:"duplicates,omitempty"`
	Lost              int64 `json:"lost,omitempty"`
	OrderViolations   int64 `json:"order_violations,omitempty"`
	LeftStored        int64 `json:"left_stored,omitempty"`
	Skipped           int64 `json:"skipped,omitempty"` // scheduled work not started: every slot busy

	// DeviceDeliveries counts unique (device, message) deliveries: relay counts every device that
	// gets a pair's messages (with one device per account, the same as Delivered).
	DeviceDeliveries         int64 `json:"device_deliveries,omitempty"`
	DeviceDeliveriesInWindow int64 `json:"device_deliveries_in_window,omitempty"`

	Connect *hist `json:"connect,omitempty"` // connect + auth time
	Ping    *hist `json:"ping,omitempty"`    // Ping → Pong round trip
	Latency *hist `json:"latency,omitempty"` // end-to-end message latency
	Ack     *hist `json:"ack,omitempty"`     // Send → SendResult
	Lag     *hist `json:"lag,omitempty"`     // open loop: actual - scheduled send time
	Silence *hist `json:"silence,omitempty"` // idle: how long a dropped connection had had no write from this side
	// Idle's keepalive, to tell where a connection's pings went: when each drop was seen and when
	// this side had last written to a connection dropped silent (both since the connect step
	// began), how long each keepalive write took, and the gaps between the pingers' passes.
	DropAt      *hist `json:"drop_at,omitempty"`
	SilentSince *hist `json:"silent_since,omitempty"`
	PingWrite   *hist `json:"ping_write,omitempty"`
	PingerGap   *hist `json:"pinger_gap,omitempty"`
	// DroppedBySource counts idle's dropped connections by source address (one per worker).
	DroppedBySource map[string]int64 `json:"dropped_by_source,omitempty"`

	SourceIPs []string `json:"source_ips,omitempty"`

	mu       sync.Mutex       // guards Failures and Errors while a step runs
	Failures map[string]int64 `json:"failures,omitempty"` // failed connection attempts, by reason
	Errors   map[string]int64 `json:"errors,omitempty"`   // other errors, by reason
	// Examples holds the first error text seen for each failure reason (for the log).
	Examples map[string]string `json:"examples,omitempty"`
}

func newReport() *report {
	return &report{Failures: map[string]int64{}, Errors: map[string]int64{}}
}

// fail counts a failed connection attempt.
func (r *report) fail(reason string, err error) {
	r.mu.Lock()
	r.Failures[reason]++
	if _, ok := r.Examples[reason]; !ok && err != nil {
		if r.Examples == nil {
			r.Examples = map[string]string{}
		}
		r.Examples[reason] = err.Error()
	}
	r.mu.Unlock()
}

// error counts an error.
func (r *report) error(reason string) {
	r.mu.Lock()
	r.Errors[reason]++
	r.mu.Unlock()
}

func (r *report) span(start, end time.Time) {
	r.Start, r.End = start.UnixNano(), end.UnixNano()
}

func sumMap(m map[string]int64) int64 {
	var n int64
	for _, v := range m {
		n += v
	}
	return n
}

func mergeHist(dst **hist, src *hist) {
	if src == nil {
		return
	}
	if *dst == nil {
		*dst = newHist()
	}
	(*dst).Merge(src)
}

// merge adds o into r.
func (r *report) merge(o *report) {
	if o.Start != 0 && (r.Start == 0 || o.Start < r.Start) {
		r.Start = o.Start
	}
	r.End = max(r.End, o.End)
	r.Conns += o.Conns
	r.ConnFailed += o.ConnFailed
	r.Dropped += o.Dropped
	r.DroppedSilent += o.DroppedSilent
	r.Sent += o.Sent
	r.Acked += o.Acked
	r.AckedInWindow += o.AckedInWindow
	r.Delivered += o.Delivered
	r.DeliveredInWindow += o.DeliveredInWindow
	r.DeviceDeliveries += o.DeviceDeliveries
	r.DeviceDeliveriesInWindow += o.DeviceDeliveriesInWindow
	r.Duplicates += o.Duplicates
	r.Lost += o.Lost
	r.OrderViolations += o.OrderViolations
	r.LeftStored += o.LeftStored
	r.Skipped += o.Skipped
	mergeHist(&r.Connect, o.Connect)
	mergeHist(&r.Ping, o.Ping)
	mergeHist(&r.Latency, o.Latency)
	mergeHist(&r.Ack, o.Ack)
	mergeHist(&r.Lag, o.Lag)
	mergeHist(&r.Silence, o.Silence)
	mergeHist(&r.DropAt, o.DropAt)
	mergeHist(&r.SilentSince, o.SilentSince)
	mergeHist(&r.PingWrite, o.PingWrite)
	mergeHist(&r.PingerGap, o.PingerGap)
	for k, v := range o.DroppedBySource {
		if r.DroppedBySource == nil {
			r.DroppedBySource = map[string]int64{}
		}
		r.DroppedBySource[k] += v
	}
	for _, ip := range o.SourceIPs {
		if !slices.Contains(r.SourceIPs, ip) {
			r.SourceIPs = append(r.SourceIPs, ip)
		}
	}
	if r.Failures == nil {
		r.Failures = map[string]int64{}
	}
	if r.Errors == nil {
		r.Errors = map[string]int64{}
	}
	for k, v := range o.Failures {
		r.Failures[k] += v
	}
	for k, v := range o.Errors {
		r.Errors[k] += v
	}
	for k, v := range o.Examples {
		if _, ok := r.Examples[k]; !ok {
			if r.Examples == nil {
				r.Examples = map[string]string{}
			}
			r.Examples[k] = v
		}
	}
}

// elapsed is End - Start.
func (r *report) elapsed() time.Duration {
	if r.Start == 0 || r.End < r.Start {
		return 0
	}
	return time.Duration(r.End - r.Start)
}

// counters are the hot-path tallies a shard keeps while a step runs.
type counters struct {
	sent, acked, ackedInWindow   atomic.Int64
	delivered, deliveredInWindow atomic.Int64
	duplicates, orderViolations  atomic.Int64
	lastEvent                    atomic.Int64 // Unix ns of the last delivery or ack
	// relay: unique deliveries to every device that gets a pair's messages
	deviceDeliveries, deviceDeliveriesInWindow atomic.Int64
}

func (c *counters) into(r *report) {
	r.Sent += c.sent.Load()
	r.Acked += c.acked.Load()
	r.AckedInWindow += c.ackedInWindow.Load()
	r.Delivered += c.delivered.Load()
	r.DeliveredInWindow += c.deliveredInWindow.Load()
	r.DeviceDeliveries += c.deviceDeliveries.Load()
	r.DeviceDeliveriesInWindow += c.deviceDeliveriesInWindow.Load()
	r.Duplicates += c.duplicates.Load()
	r.OrderViolations += c.orderViolations.Load()
}

func (c *counters) touch(now int64) {
	for {
		v := c.lastEvent.Load()
		if now <= v || c.lastEvent.CompareAndSwap(v, now) {
			return
		}
	}
}

// sortedKeys returns m's keys in order (for stable output).
func sortedKeys(m map[string]int64) []string { return slices.Sorted(maps.Keys(m)) }
