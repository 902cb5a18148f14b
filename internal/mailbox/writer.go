// Copyright 2026 The Petrel Authors
// SPDX-License-Identifier: Apache-2.0

package mailbox

import (
	"context"
	"errors"
	"fmt"
	"strings"
	"sync"
	"time"

	"github.com/nats-io/nats.go"
	"github.com/nats-io/nats.go/jetstream"
	"github.com/synadia-io/orbit.go/jetstreamext"
)

// appendReq is one envelope to append to one device's inbox.
type appendReq struct {
	subject  string
	dedupeID string
	deviceID string
	ticket   string // the refusing attachment's ticket, handed back in the wake-up
	seq      uint64 // the inbox stream sequence it was stored at, once committed
	expires  int64  // Unix ms, 0: never (a disappearing message; expiry.go)
	data     []byte
	done     func(error)
}

// shardWriter group-commits appends to one inbox stream: it takes whatever has queued up while
// the previous commit was in flight (up to maxBatch), refuses those that would overfill their
// inbox (see quota.go), and commits the rest as one atomic batch, so one fsync covers many
// messages. A failed commit fails every request in it: none is acked.
type shardWriter struct {
	m        *Mailbox
	stream   string
	ch       chan *appendReq
	maxBatch int

	// mu guards the inbox index below. The writer holds it while it admits a batch and while it
	// records the result (not while it publishes); purges (Mailbox.released) and QueryQueued take
	// it too. Nothing else is locked while it is held, and no callback runs under it.
	mu        sync.Mutex
	usage     map[string]*inboxUsage // devices with envelopes stored or admitted, by device id
	unindexed map[string]struct{}    // devices with envelopes stored before start, not yet indexed
}

// enqueue hands r to the writer without blocking; a full queue fails r at once (retryable).
func (w *shardWriter) enqueue(r *appendReq) {
	select {
	case w.ch <- r:
	default:
		w.m.metrics.appendRejected.Inc()
		r.done(ErrOverloaded)
	}
}

func (w *shardWriter) run(stop <-chan struct{}) {
	batch := make([]*appendReq, 0, w.maxBatch)
	for {
		select {
		case r := <-w.ch:
			batch = append(batch[:0], r)
		case <-stop:
			// Fail what is left: nothing in it was acked.
			for {
				select {
				case r := <-w.ch:
					r.done(ErrClosed)
				default:
					return
				}
			}
		}
	fill:
		for len(batch) < w.maxBatch {
			select {
			case r := <-w.ch:
				batch = append(batch, r)
			default:
				break fill
			}
		}
		w.commit(batch)
		clear(batch)
	}
}

func (w *shardWriter) commit(batch []*appendReq) {
	if h := w.m.hooks.commit; h != nil {
		h(batch)
	}
	start := time.Now()
	// One entry per dedupe id: a second request for the same id shares the first one's result.
	uniq := make([]*appendReq, 0, len(batch))
	followers := map[string][]*appendReq{}
	for _, r := range batch {
		if r.dedupeID == "" {
			uniq = append(uniq, r) // no id: never a duplicate of anything
			continue
		}
		if _, dup := followers[r.dedupeID]; dup {
			followers[r.dedupeID] = append(followers[r.dedupeID], r)
			continue
		}
		followers[r.dedupeID] = nil
		uniq = append(uniq, r)
	}
	finish := func(r *appendReq, err error) {
		r.done(err)
		if r.dedupeID == "" {
			return
		}
		for _, f := range followers[r.dedupeID] {
			f.done(err)
		}
	}
	ctx, cancel := context.WithTimeout(context.Background(), w.m.cfg.StoreTimeout)
	defer cancel()
	res := make([]pubResult, len(uniq))
	// Admission: an envelope that would overfill its inbox (or its sender's share) is refused
	// here, so it never joins the batch and never fails the others.
	admitted := w.admit(ctx, uniq, res)
	atomicBatch := len(admitted) >= w.m.cfg.MinAtomicBatch
	var reserved int64 // store bytes counted as used before an atomic batch
	if atomicBatch {
		reserved, atomicBatch = w.m.reserveBatch(uniq, admitted)
	}
	switch {
	case len(admitted) == 0:
	case !atomicBatch:
		// Small commits: one pipelined publish each. An R1 atomic batch pays a fixed cost for
		// staging (nats-server builds a temporary file store per batch) that only large batches
		// amortise; see BENCHMARKS.md. Also when the store might fill up (see reserveBatch).
		w.publishEach(ctx, uniq, admitted, res)
	default:
		msgs := make([]*nats.Msg, len(admitted))
		for k, i := range admitted {
			msgs[k] = newInboxMsg(uniq[i])
		}
		ack, err := jetstreamext.PublishMsgBatch(ctx, w.m.bus.JS(), msgs, noAckFirst)
		switch {
		case err == nil:
			first := ack.Sequence - uint64(len(msgs)) + 1 // an atomic batch is stored contiguously
			for k, i := range admitted {
				res[i].seq = first + uint64(k)
			}
		case isDuplicateErr(err):
			// Some message was stored before (a client resend): fall back to one publish each,
			// where JetStream's dedupe answers duplicates with a success.
			w.m.metrics.batchFallbacks.Inc()
			w.publishEach(ctx, uniq, admitted, res)
		case isLimitErr(err) || isIncompleteBatch(err):
			// A stream or store limit refused the batch (the index lagged: another node appended,
			// or the store filled up): one publish each, so only the refused envelopes fail.
			w.m.metrics.batchSplits.Inc()
			w.publishEach(ctx, uniq, admitted, res)
		default:
			if errors.Is(err, context.DeadlineExceeded) {
				w.m.batchTimedOut.Store(true) // perhaps the store filled up: single publishes until the next read
			}
			for _, i := range admitted {
				res[i].err = fmt.Errorf("%w: %v", ErrStorage, err)
			}
		}
	}
	w.record(uniq, admitted, res)
	var added int64
	for _, i := range admitted {
		if res[i].err == nil && !res[i].dup {
			added += storedSize(uniq[i])
		}
	}
	w.m.storeUsed.Add(added - reserved)
	stored := uniq[:0:0]
	var firstErr error
	for i, r := range uniq {
		switch err := res[i].err; {
		case err == nil:
			r.seq = res[i].seq
			stored = append(stored, r)
		case errors.Is(err, ErrInboxFull):
			// A refusal, not a storage failure: counted by reason, not logged.
		case firstErr == nil:
			firstErr = err
		}
	}
	w.m.observeCommit(len(stored), start, firstErr)
	// Wake the devices before acking, so a live delivery that follows an ack on the same bus
	// connection reaches the device's session after the wake-up (per-sender order).
	w.m.wakeAll(stored, nil)
	for i, r := range uniq {
		finish(r, res[i].err)
	}
}

// noAckFirst publishes an atomic batch without waiting for the server to acknowledge its first
// message: every message goes out at once and the commit's answer alone tells how the batch
// ended. The first-message ack only reports early what the commit reports anyway (a stream
// without atomic publishing, too many batches in flight: the commit then fails, and nothing of
// the batch is stored), and it costs a round trip to the stream leader per commit, during which
// the shard's next batch cannot start.
var noAckFirst = jetstreamext.BatchFlowControl{AckFirst: false}

// pubResult is how one append ended: stored at seq (dup: it was stored before), or err.
type pubResult struct {
	seq uint64
	dup bool
	err error
}

// admit checks each request against its inbox's caps and reserves room for those within them; it
// returns the indexes of the admitted ones and sets res[i].err for the others.
func (w *shardWriter) admit(ctx context.Context, reqs []*appendReq, res []pubResult) []int {
	admitted := make([]int, 0, len(reqs))
	w.mu.Lock()
	defer w.mu.Unlock()
	for i, r := range reqs {
		u, err := w.usageLocked(ctx, r.deviceID)
		if err != nil {
			res[i].err = err
			continue
		}
		sender, size := senderOf(r.dedupeID), int64(len(r.data))
		reason := u.refusal(w.m.limits, sender, size)
		if reason != "" && w.resyncLocked(ctx, r.deviceID, u) {
			reason = u.refusal(w.m.limits, sender, size) // envelopes expired or were purged elsewhere
		}
		if reason != "" {
			res[i].err = refusalErr(reason)
			w.m.metrics.inboxFull.WithLabelValues(reason).Inc()
			if u.empty() {
				delete(w.usage, r.deviceID)
			}
			continue
		}
		u.reserve(sender, size)
		admitted = append(admitted, i)
	}
	return admitted
}

// record ends the reservations of the admitted requests and indexes the stored envelopes.
func (w *shardWriter) record(reqs []*appendReq, admitted []int, res []pubResult) {
	w.mu.Lock()
	defer w.mu.Unlock()
	for _, i := range admitted {
		r := reqs[i]
		sender, size := senderOf(r.dedupeID), int64(len(r.data))
		u := w.usage[r.deviceID] // kept while it has reservations
		u.unreserve(sender, size)
		switch err := res[i].err; {
		case err == nil && !res[i].dup: // a duplicate's original is indexed (or already purged)
			u.add(sender, inboxEntry{seq: res[i].seq, id: hashID(r.dedupeID), size: size})
		case errors.Is(err, ErrInboxFull):
			w.m.metrics.inboxFull.WithLabelValues(reasonStream).Inc()
		case errors.Is(err, ErrStoreFull):
			w.m.metrics.storeFull.Inc()
		}
		if u.empty() {
			delete(w.usage, r.deviceID)
		}
	}
}

// refusalErr is the error for an admission refusal.
func refusalErr(reason string) error {
	switch reason {
	case reasonBytes:
		return errFullBytes
	case reasonSenderCount:
		return errFullSenderCount
	case reasonSenderBytes:
		return errFullSenderBytes
	}
	return errFullCount
}

// publishEach publishes the requests reqs[i] for i in idx on their own, pipelined, and records
// each result in res.
func (w *shardWriter) publishEach(ctx context.Context, reqs []*appendReq, idx []int, res []pubResult) {
	futures := make([]jetstream.PubAckFuture, len(idx))
	for k, i := range idx {
		f, err := w.m.bus.JS().PublishMsgAsync(newInboxMsg(reqs[i]))
		if err != nil {
			res[i].err = classifyStoreErr(err)
			continue
		}
		futures[k] = f
	}
	for k, f := range futures {
		if f == nil {
			continue
		}
		i := idx[k]
		select {
		case ack := <-f.Ok():
			res[i].seq, res[i].dup = ack.Sequence, ack.Duplicate
		case err := <-f.Err():
			res[i].err = classifyStoreErr(err)
		case <-ctx.Done():
			res[i].err = fmt.Errorf("%w: %v", ErrStorage, ctx.Err())
		}
	}
}

func newInboxMsg(r *appendReq) *nats.Msg {
	m := &nats.Msg{Subject: r.subject, Data: r.data, Header: nats.Header{}}
	if r.dedupeID != "" {
		m.Header.Set(jetstream.MsgIDHeader, r.dedupeID)
	}
	if r.expires != 0 {
		m.Header.Set(jetstream.MsgTTLHeader, ttlHeader(r.expires))
	}
	return m
}

// isIncompleteBatch reports an atomic batch the server dropped part of (it ran into a limit while
// staging it): nothing of it was stored, so it is safe to publish one by one.
func isIncompleteBatch(err error) bool {
	var apiErr *jetstream.APIError
	return errors.As(err, &apiErr) && apiErr.ErrorCode == 10176
}

func isDuplicateErr(err error) bool {
	var apiErr *jetstream.APIError
	if errors.As(err, &apiErr) && (apiErr.ErrorCode == 10201 || apiErr.ErrorCode == 10158) {
		return true
	}
	s := err.Error()
	return strings.Contains(s, "duplicate")
}
