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
	var err error
	if len(uniq) == 1 {
		err = w.publishOne(ctx, uniq[0])
	} else {
		msgs := make([]*nats.Msg, len(uniq))
		for i, r := range uniq {
			msgs[i] = newInboxMsg(r)
		}
		_, err = jetstreamext.PublishMsgBatch(ctx, w.m.bus.JS(), msgs)
		if err != nil && isDuplicateErr(err) {
			// Some message was stored before (a client resend): fall back to one publish each,
			// where JetStream's dedupe answers duplicates with a success.
			w.m.metrics.batchFallbacks.Inc()
			for _, r := range uniq {
				finish(r, w.publishOne(ctx, r))
			}
			w.m.observeCommit(len(batch), start, nil)
			w.m.wakeAll(uniq, nil)
			return
		}
	}
	w.m.observeCommit(len(batch), start, err)
	if err != nil {
		err = fmt.Errorf("%w: %v", ErrStorage, err)
	}
	// Wake the devices before acking, so a live delivery that follows an ack on the same bus
	// connection reaches the device's session after the wake-up (per-sender order).
	w.m.wakeAll(uniq, err)
	for _, r := range uniq {
		finish(r, err)
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
