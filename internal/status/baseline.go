// Copyright 2026 The Petrel Authors
// SPDX-License-Identifier: Apache-2.0

package status

import (
	"bytes"
	"context"
	"crypto/sha256"
	"encoding/hex"
	"encoding/json"
	"errors"
	"fmt"
	"log/slog"
	mrand "math/rand/v2"
	"time"

	"github.com/nats-io/nats.go/jetstream"
)

// The problem-report baseline (README, "Problem reports"): per hour of the week, the reports
// counted in that hour on each of the last BaselineWeeks weeks, by every node of the cluster.
//
// Each node keeps its own counts in memory (baseTable) and writes them as one record under its
// own key of the baseline bucket (bus.BaselineBucket) at most once an hour, after an hour ends.
// Every node watches the bucket and keeps every node's record in memory, so the page never reads
// NATS. One key per node means no two nodes ever write the same key: no compare-and-swap, no lost
// update, and a node's record is its whole state (a rewrite replaces it). The baseline of an hour
// is the mean, over the past weeks that any node counted, of the sum of the nodes' counts.

const (
	// BaselineWeeks is how many past weeks of each hour of the week the baseline averages.
	BaselineWeeks = 8
	// hoursPerWeek is the number of hour-of-week slots.
	hoursPerWeek = 7 * 24
	// baselineRecordV is the version of the record format.
	baselineRecordV = 1
	// maxBaselineRecord bounds a record read from the bucket (a real one is 1–4 KB).
	maxBaselineRecord = 32 << 10
	// maxBaselineCount bounds one count in a record.
	maxBaselineCount = 1 << 30
)

// weekCount is the count of one hour of the week in one week (week: Unix hours / 168; 0: empty).
type weekCount struct {
	week int64
	n    uint32
}

// slotWeeks holds one hour of the week's counts of up to BaselineWeeks weeks, in no order.
type slotWeeks [BaselineWeeks]weekCount

// set records n for week. An existing count of that week is replaced only when overwrite; when
// full, the oldest week gives way to a newer one.
func (s *slotWeeks) set(week int64, n uint32, overwrite bool) {
	for i := range s {
		if s[i].week == week {
			if overwrite {
				s[i].n = n
			}
			return
		}
	}
	oldest := 0
	for i := range s {
		if s[i].week == 0 {
			s[i] = weekCount{week, n}
			return
		}
		if s[i].week < s[oldest].week {
			oldest = i
		}
	}
	if week > s[oldest].week {
		s[oldest] = weekCount{week, n}
	}
}

// baseTable is one node's counts per hour of the week (Sunday 00:00 UTC = 0).
type baseTable [hoursPerWeek]slotWeeks

// baselineRecord is a node's record in the baseline bucket (JSON).
type baselineRecord struct {
	V    int    `json:"v"`
	Node string `json:"node"`
	// Week is the newest week (Unix hours / 168) the counts go back from.
	Week int64 `json:"week"`
	// Counts has one entry per hour of the week (Sunday 00:00 UTC = 0); in it, [i] is the count
	// of week Week-i, -1 when not counted (the node was down), at most BaselineWeeks.
	Counts [][]int64 `json:"counts"`
}

// baselineKey is a node's key in the baseline bucket: its name when that is a valid key of at
// most 64 characters of [A-Za-z0-9_-], else "h-" and a hash of it.
func baselineKey(node string) string {
	ok := node != "" && len(node) <= 64
	for i := 0; ok && i < len(node); i++ {
		c := node[i]
		ok = c >= 'a' && c <= 'z' || c >= 'A' && c <= 'Z' || c >= '0' && c <= '9' || c == '_' || c == '-'
	}
	if ok {
		return node
	}
	h := sha256.Sum256([]byte(node))
	return "h-" + hex.EncodeToString(h[:16])
}

// recordOf is t as node's record.
func recordOf(node string, t *baseTable) baselineRecord {
	rec := baselineRecord{V: baselineRecordV, Node: node, Counts: make([][]int64, hoursPerWeek)}
	for _, s := range t {
		for _, wc := range s {
			rec.Week = max(rec.Week, wc.week)
		}
	}
	for slot, s := range t {
		row := make([]int64, 0, BaselineWeeks)
		for i := range BaselineWeeks {
			v := int64(-1)
			for _, wc := range s {
				if wc.week != 0 && wc.week == rec.Week-int64(i) {
					v = int64(wc.n)
				}
			}
			row = append(row, v)
		}
		for len(row) > 0 && row[len(row)-1] < 0 {
			row = row[:len(row)-1]
		}
		rec.Counts[slot] = row
	}
	return rec
}

// parseBaseline decodes and checks the record stored under key. nowWeek is the current week: a
// record from further in the future is refused.
func parseBaseline(key string, b []byte, nowWeek int64) (baselineRecord, error) {
	var rec baselineRecord
	if len(b) > maxBaselineRecord {
		return rec, fmt.Errorf("%d bytes, at most %d", len(b), maxBaselineRecord)
	}
	dec := json.NewDecoder(bytes.NewReader(b))
	dec.DisallowUnknownFields()
	if err := dec.Decode(&rec); err != nil {
		return rec, fmt.Errorf("not a baseline record: %w", err)
	}
	switch {
	case rec.V != baselineRecordV:
		return rec, fmt.Errorf("record version %d, this node reads %d", rec.V, baselineRecordV)
	case rec.Node == "" || len(rec.Node) > maxNameLen:
		return rec, errors.New("no node name, or a name too long")
	case baselineKey(rec.Node) != key:
		return rec, fmt.Errorf("written for node %q under another node's key", clip(rec.Node, 64))
	case rec.Week <= 0 || rec.Week > nowWeek+1:
		return rec, fmt.Errorf("week %d is not a past week (now %d)", rec.Week, nowWeek)
	case len(rec.Counts) != hoursPerWeek:
		return rec, fmt.Errorf("%d hours of the week, want %d", len(rec.Counts), hoursPerWeek)
	}
	for slot, row := range rec.Counts {
		if len(row) > BaselineWeeks {
			return rec, fmt.Errorf("hour %d: %d weeks, at most %d", slot, len(row), BaselineWeeks)
		}
		for _, v := range row {
			if v < -1 || v > maxBaselineCount {
				return rec, fmt.Errorf("hour %d: count %d out of range", slot, v)
			}
		}
	}
	return rec, nil
}

// table is rec's counts as a table.
func (rec *baselineRecord) table() *baseTable {
	var t baseTable
	rec.mergeInto(&t, true)
	return &t
}

// mergeInto puts rec's counts into t; a week t already has is replaced only when overwrite.
func (rec *baselineRecord) mergeInto(t *baseTable, overwrite bool) {
	for slot, row := range rec.Counts {
		for i, v := range row {
			if w := rec.Week - int64(i); v >= 0 && w > 0 {
				t[slot].set(w, uint32(v), overwrite)
			}
		}
	}
}

// ApplyBaseline merges a node's record read from the bucket: another node's replaces what was
// known of it (at most maxPeers other nodes); this node's own (read back after a restart) adds
// the weeks it had counted before, and never replaces a count made since.
func (a *Aggregates) applyBaseline(rec *baselineRecord, self bool) bool {
	a.mu.Lock()
	defer a.mu.Unlock()
	if self {
		rec.mergeInto(&a.own, false)
		return true
	}
	if _, known := a.others[rec.Node]; !known && len(a.others) >= maxPeers {
		return false
	}
	a.others[rec.Node] = rec.table()
	return true
}

// forgetBaseline drops another node's counts (its record was deleted).
func (a *Aggregates) forgetBaseline(node string) {
	a.mu.Lock()
	defer a.mu.Unlock()
	delete(a.others, node)
}

// ownBaseline is this node's record, to be written.
func (a *Aggregates) ownBaseline(node string) baselineRecord {
	a.mu.Lock()
	defer a.mu.Unlock()
	return recordOf(node, &a.own)
}

// takeFolded reports whether an hour was folded into this node's counts since the last call.
func (a *Aggregates) takeFolded() bool {
	a.mu.Lock()
	defer a.mu.Unlock()
	f := a.foldedNew
	a.foldedNew = false
	return f
}

// baselineLocked is the baseline of Unix hour h: the mean, over the past BaselineWeeks weeks
// counted by any node, of the nodes' counts in that hour of the week summed. The hour's own week
// is not part of it.
func (a *Aggregates) baselineLocked(h int64) float64 {
	slot, w := hourOfWeek(h), h/hoursPerWeek
	var sums [BaselineWeeks]float64
	var seen [BaselineWeeks]bool
	add := func(t *baseTable) {
		for _, wc := range t[slot] {
			if k := w - wc.week; wc.week != 0 && k >= 1 && k <= BaselineWeeks {
				sums[k-1] += float64(wc.n)
				seen[k-1] = true
			}
		}
	}
	add(&a.own)
	for _, t := range a.others {
		add(t)
	}
	var total float64
	weeks := 0
	for i, ok := range seen {
		if ok {
			total += sums[i]
			weeks++
		}
	}
	if weeks == 0 {
		return 0
	}
	return total / float64(weeks)
}

// baselineTimeout bounds one write of this node's record.
const baselineTimeout = 10 * time.Second

// followBaseline keeps every node's record in memory until ctx ends (a watch of the bucket),
// and closes loaded once the records present at the start are read. A damaged or foreign record
// is logged and ignored.
func (s *Service) followBaseline(ctx context.Context, loaded chan<- struct{}) {
	var once bool
	watchBucket(ctx, s.cfg.Baseline, s.log, "baseline", func(e jetstream.KeyValueEntry) {
		if e == nil {
			if !once {
				once = true
				close(loaded)
			}
			return
		}
		if e.Operation() != jetstream.KeyValuePut {
			s.agg.forgetBaselineKey(e.Key())
			return
		}
		rec, err := parseBaseline(e.Key(), e.Value(), s.cfg.Now().Unix()/3600/hoursPerWeek)
		if err != nil {
			s.log.Warn("status: a baseline record is ignored", "bucket_key", e.Key(), "err", err)
			return
		}
		if !s.agg.applyBaseline(&rec, rec.Node == s.cfg.Node) {
			s.log.Warn("status: a baseline record is ignored: too many nodes", "bucket_key", e.Key(), "max", maxPeers)
		}
	})
}

// forgetBaselineKey drops the other node whose key is key.
func (a *Aggregates) forgetBaselineKey(key string) {
	a.mu.Lock()
	var node string
	for n := range a.others {
		if baselineKey(n) == key {
			node = n
		}
	}
	a.mu.Unlock()
	if node != "" {
		a.forgetBaseline(node)
	}
}

// persistBaseline writes this node's record each time it is asked to (persist: after an hour is
// folded), once the records already in the bucket are loaded (so that a restart never writes
// its empty counts over the weeks it had). A failed write is tried again with a jittered backoff
// (1 s doubling to 5 minutes) until it succeeds or ctx ends.
func (s *Service) persistBaseline(ctx context.Context, loaded <-chan struct{}, persist <-chan struct{}) {
	select {
	case <-ctx.Done():
		return
	case <-loaded:
	}
	key := baselineKey(s.cfg.Node)
	for {
		select {
		case <-ctx.Done():
			return
		case <-persist:
		}
		delay := time.Second
		for failed := 0; ; failed++ {
			b, _ := json.Marshal(s.agg.ownBaseline(s.cfg.Node))
			wctx, cancel := context.WithTimeout(ctx, baselineTimeout)
			_, err := s.cfg.Baseline.Put(wctx, key, b)
			cancel()
			if err == nil {
				if failed > 0 {
					s.log.Info("status: baseline written after failures", "failures", failed)
				}
				break
			}
			if failed == 0 {
				s.log.Warn("status: baseline not written: trying again", "err", err)
			}
			if !sleepCtx(ctx, delay/2+time.Duration(mrand.Int64N(int64(delay)))) {
				return
			}
			delay = min(2*delay, 5*time.Minute)
		}
	}
}

// sleepCtx waits d or until ctx ends (false).
func sleepCtx(ctx context.Context, d time.Duration) bool {
	t := time.NewTimer(d)
	defer t.Stop()
	select {
	case <-ctx.Done():
		return false
	case <-t.C:
		return true
	}
}

// watchBucket follows every entry of kv until ctx ends: apply gets each entry, and nil once the
// entries present at the start are all delivered. When the watch cannot be made (storage down)
// or ends, it is made again after a jittered backoff (1 s doubling to 30 s).
func watchBucket(ctx context.Context, kv jetstream.KeyValue, log *slog.Logger, what string, apply func(jetstream.KeyValueEntry)) {
	delay := time.Second
	for ctx.Err() == nil {
		w, err := kv.WatchAll(ctx)
		if err == nil {
			follow(ctx, w, apply)
			_ = w.Stop()
			delay = time.Second
		} else {
			log.Debug("status: watch", "bucket", what, "err", err)
		}
		if !sleepCtx(ctx, delay/2+time.Duration(mrand.Int64N(int64(delay)))) {
			return
		}
		delay = min(2*delay, 30*time.Second)
	}
}

func follow(ctx context.Context, w jetstream.KeyWatcher, apply func(jetstream.KeyValueEntry)) {
	for {
		select {
		case <-ctx.Done():
			return
		case e, ok := <-w.Updates():
			if !ok {
				return
			}
			apply(e)
		}
	}
}
