// Copyright 2026 The Petrel Authors
// SPDX-License-Identifier: Apache-2.0

package bus

import (
	"errors"
	"log/slog"
	"strings"
	"sync"
	"time"

	"github.com/nats-io/nats.go"
	"github.com/prometheus/client_golang/prometheus"
)

// Kinds of subject, the subject_kind label of the bus's metrics.
const (
	KindDevice = "device" // dev.*, pn.<node>.*, mbw.*: live deliveries, wake-ups, takeovers
	KindReply  = "reply"  // _PR.<node>.*: a node's replies (live acks, inbox reads)
	KindOther  = "other"
)

// SubjectKind classifies a subscription's subject for metrics and logs (never the device id).
func SubjectKind(subject string) string {
	switch {
	case strings.HasPrefix(subject, "dev."), strings.HasPrefix(subject, "pn."), strings.HasPrefix(subject, "mbw."):
		return KindDevice
	case strings.HasPrefix(subject, "_PR."):
		return KindReply
	default:
		return KindOther
	}
}

// slowConsumerLogBurst is the most slow-consumer (or other asynchronous error) log lines per second;
// the rest are counted and the next line says how many were suppressed.
const slowConsumerLogBurst = 5

// asyncErrors handles nats.go's asynchronous errors. A slow consumer is a subscription whose
// pending limits, or whose channel (ChanSubscribe), were full: nats.go dropped a message for it.
// nats.go reports one per episode: a subscription that keeps dropping is reported again only
// after one of its messages got through (Subscription.Dropped counts every drop).
type asyncErrors struct {
	log          *slog.Logger
	now          func() time.Time // the log limiter's clock
	slowConsumer *prometheus.CounterVec
	errs         prometheus.Counter

	mu         sync.Mutex // guards the fields below
	listeners  map[uint64]func(*nats.Subscription)
	nextID     uint64
	window     time.Time // start of the current log second
	logged     int       // lines logged in the current second
	suppressed int       // lines not logged since the last one
}

func newAsyncErrors(log *slog.Logger, reg prometheus.Registerer) *asyncErrors {
	e := &asyncErrors{
		log: log,
		now: time.Now,
		slowConsumer: prometheus.NewCounterVec(prometheus.CounterOpts{
			Name: "petrel_bus_slow_consumer_total",
			Help: "Slow-consumer episodes on this node's bus connection (nats.go dropped messages for a subscription whose channel or pending limits were full), by subject kind: device, reply, other.",
		}, []string{"subject_kind"}),
		errs: prometheus.NewCounter(prometheus.CounterOpts{
			Name: "petrel_bus_async_errors_total",
			Help: "Other asynchronous errors reported by the bus connection (permissions, protocol).",
		}),
		listeners: make(map[uint64]func(*nats.Subscription)),
	}
	for _, k := range []string{KindDevice, KindReply, KindOther} {
		e.slowConsumer.WithLabelValues(k) // every kind shows, at 0, from the start
	}
	if reg != nil {
		reg.MustRegister(e.slowConsumer, e.errs)
	}
	return e
}

// handle is the connection's nats.ErrorHandler. It runs on nats.go's callback goroutine.
func (e *asyncErrors) handle(_ *nats.Conn, sub *nats.Subscription, err error) {
	if !errors.Is(err, nats.ErrSlowConsumer) || sub == nil {
		e.errs.Inc()
		e.logLimited("nats asynchronous error", "err", err)
		return
	}
	kind := SubjectKind(sub.Subject)
	e.slowConsumer.WithLabelValues(kind).Inc()
	dropped, _ := sub.Dropped()
	e.logLimited("nats slow consumer: messages dropped", "subject_kind", kind, "dropped_by_subscription", dropped)
	e.mu.Lock()
	fns := make([]func(*nats.Subscription), 0, len(e.listeners))
	for _, fn := range e.listeners {
		fns = append(fns, fn)
	}
	e.mu.Unlock()
	for _, fn := range fns {
		fn(sub)
	}
}

// logLimited logs at most slowConsumerLogBurst lines a second, saying how many it left out.
func (e *asyncErrors) logLimited(msg string, args ...any) {
	now := e.now()
	e.mu.Lock()
	if now.Sub(e.window) >= time.Second {
		e.window, e.logged = now, 0
	}
	if e.logged >= slowConsumerLogBurst {
		e.suppressed++
		e.mu.Unlock()
		return
	}
	e.logged++
	suppressed := e.suppressed
	e.suppressed = 0
	e.mu.Unlock()
	if suppressed > 0 {
		args = append(args, "suppressed", suppressed)
	}
	e.log.Warn(msg, args...)
}

// OnSlowConsumer calls fn each time nats.go reports a slow consumer on the bus connection (it
// dropped at least one message for sub), after the drop is counted and logged. fn runs on nats.go's
// callback goroutine, one report at a time: it must not block. The returned function removes fn.
func (b *Bus) OnSlowConsumer(fn func(sub *nats.Subscription)) (remove func()) {
	e := b.async
	e.mu.Lock()
	e.nextID++
	id := e.nextID
	e.listeners[id] = fn
	e.mu.Unlock()
	return func() {
		e.mu.Lock()
		delete(e.listeners, id)
		e.mu.Unlock()
	}
}
