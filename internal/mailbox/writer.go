// Copyright 2026 The Petrel Authors
// SPDX-License-Identifier: Apache-2.0

package mailbox

import (
	"context"
	"errors"
	"fmt"
	"strings"
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
	data     []byte
	done     func(error)
}

// shardWriter group-commits appends to one inbox stream: it takes whatever has queued up while
// the previous commit was in flight (up to maxBatch) and commits it as one atomic batch, so one
// fsync covers many messages. A failed commit fails every request in it: none is acked.
type shardWriter struct {
	m        *Mailbox
	stream   string
	ch       chan *appendReq
	maxBatch int
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
	errs := make([]error, len(uniq))
	if len(uniq) < w.m.cfg.MinAtomicBatch {
		// Small commits: one pipelined publish each. An R1 atomic batch pays a fixed cost for
		// staging (nats-server builds a temporary file store per batch) that only large batches
		// amortise; see BENCHMARKS.md.
		w.publishEach(ctx, uniq, errs)
	} else {
		msgs := make([]*nats.Msg, len(uniq))
		for i, r := range uniq {
			msgs[i] = newInboxMsg(r)
		}
		_, err := jetstreamext.PublishMsgBatch(ctx, w.m.bus.JS(), msgs)
		switch {
		case err != nil && isDuplicateErr(err):
			// Some message was stored before (a client resend): fall back to one publish each,
			// where JetStream's dedupe answers duplicates with a success.
			w.m.metrics.batchFallbacks.Inc()
			w.publishEach(ctx, uniq, errs)
		case err != nil:
			for i := range errs {
				errs[i] = fmt.Errorf("%w: %v", ErrStorage, err)
			}
		}
	}
	stored := uniq[:0:0]
	var firstErr error
	for i, r := range uniq {
		if errs[i] == nil {
			stored = append(stored, r)
		} else if firstErr == nil {
			firstErr = errs[i]
		}
	}
	w.m.observeCommit(len(stored), start, firstErr)
	// Wake the devices before acking, so a live delivery that follows an ack on the same bus
	// connection reaches the device's session after the wake-up (per-sender order).
	w.m.wakeAll(stored, nil)
	for i, r := range uniq {
		finish(r, errs[i])
	}
}

// publishEach publishes every request on its own, pipelined, and records each result in errs.
func (w *shardWriter) publishEach(ctx context.Context, reqs []*appendReq, errs []error) {
	futures := make([]jetstream.PubAckFuture, len(reqs))
	for i, r := range reqs {
		f, err := w.m.bus.JS().PublishMsgAsync(newInboxMsg(r))
		if err != nil {
			errs[i] = fmt.Errorf("%w: %v", ErrStorage, err)
			continue
		}
		futures[i] = f
	}
	for i, f := range futures {
		if f == nil {
			continue
		}
		select {
		case <-f.Ok():
		case err := <-f.Err():
			errs[i] = fmt.Errorf("%w: %v", ErrStorage, err)
		case <-ctx.Done():
			errs[i] = fmt.Errorf("%w: %v", ErrStorage, ctx.Err())
		}
	}
}

func (w *shardWriter) publishOne(ctx context.Context, r *appendReq) error {
	_, err := w.m.bus.JS().PublishMsg(ctx, newInboxMsg(r))
	if err != nil {
		return fmt.Errorf("%w: %v", ErrStorage, err)
	}
	return nil
}

func newInboxMsg(r *appendReq) *nats.Msg {
	m := &nats.Msg{Subject: r.subject, Data: r.data, Header: nats.Header{}}
	if r.dedupeID != "" {
		m.Header.Set(jetstream.MsgIDHeader, r.dedupeID)
	}
	return m
}

func isDuplicateErr(err error) bool {
	var apiErr *jetstream.APIError
	if errors.As(err, &apiErr) && (apiErr.ErrorCode == 10201 || apiErr.ErrorCode == 10158) {
		return true
	}
	s := err.Error()
	return strings.Contains(s, "duplicate")
}
