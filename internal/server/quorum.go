// Copyright 2026 The Petrel Authors
// SPDX-License-Identifier: Apache-2.0

package server

import (
	"context"
	"errors"
	"sync"
	"sync/atomic"
	"time"

	"github.com/prometheus/client_golang/prometheus"

	"github.com/petrelchat/petrel/internal/bus"
)

// The quorum watch: every quorumEvery the node asks whether it reaches a JetStream majority
// (bus.Quorum, bounded by quorumTimeout). quorumFailures checks in a row failing mark it lost;
// one success marks it back. /readyz reads the cached state, never JetStream. In a cluster, a
// node whose quorum stays lost for quorumMoveAfter sends its clients to other nodes and refuses
// new ones until it is back (a node alone has nowhere to send them); at once when the node is
// cut off (bus.ErrCutOff: it has no routes to a majority of the nodes). When only the JetStream
// API failed (bus.ErrAPISlow), it does so only while another node's last word was that it
// serves are no longer routed to (nodes.Registry.ServingPeersUnreachable): see shouldMove.
const (
	quorumEvery     = time.Second
	quorumTimeout   = 2 * time.Second
	quorumFailures  = 2
	quorumMoveAfter = 5 * time.Second
	// cutOffRecheck is how soon a node that found itself cut off (bus.ErrCutOff) checks again,
	// to confirm it before it counts the quorum lost and moves its clients.
	cutOffRecheck = 250 * time.Millisecond
	// quorumMoveWait bounds the wait for in-flight sends when clients are moved: a send's store
	// ends (acked or UNAVAILABLE) within the mailbox's store timeout (10 s).
	quorumMoveWait = 12 * time.Second
)

// quorumWatch holds the cached quorum state.
type quorumWatch struct {
	ok     atomic.Bool
	reason atomic.Pointer[string] // why the quorum is lost; nil while ok

	gauge prometheus.Gauge
	lost  prometheus.Counter

	// The catch-up gate (catchup.go): current once the node caught up after its start.
	current       atomic.Bool
	currentReason atomic.Pointer[string]
	currentGauge  prometheus.Gauge
	cancel        context.CancelFunc // ends the watch; nil until it starts
	wg            sync.WaitGroup
}

func newQuorumWatch(reg prometheus.Registerer) *quorumWatch {
	q := &quorumWatch{
		gauge:        prometheus.NewGauge(prometheus.GaugeOpts{Name: "petrel_cluster_quorum", Help: "1 while this node reaches a JetStream majority (a meta leader answers), else 0."}),
		lost:         prometheus.NewCounter(prometheus.CounterOpts{Name: "petrel_cluster_quorum_lost_total", Help: "Times this node lost its JetStream majority."}),
		currentGauge: prometheus.NewGauge(prometheus.GaugeOpts{Name: "petrel_cluster_caught_up", Help: "1 once this node's JetStream caught up with its cluster after the start (meta group and every stream replica it holds current), else 0; /readyz answers 503 until then."}),
	}
	q.ok.Store(true) // the bus opened only once JetStream answered
	q.gauge.Set(1)
	if reg != nil {
		reg.MustRegister(q.gauge, q.lost, q.currentGauge)
	}
	return q
}

// state is the cached quorum state and, when lost, the reason.
func (q *quorumWatch) state() (bool, string) {
	if q.ok.Load() {
		return true, ""
	}
	if r := q.reason.Load(); r != nil {
		return false, *r
	}
	return false, "no jetstream quorum"
}

// stop ends the watch and waits for it (before the bus closes). Idempotent.
func (q *quorumWatch) stop() {
	if q.cancel != nil {
		q.cancel()
	}
	q.wg.Wait()
}

// startQuorumWatch runs the watch until s.runCtx ends or quorumWatch.stop.
func (s *Server) startQuorumWatch() {
	q := s.quorum
	ctx, cancel := context.WithCancel(s.runCtx)
	q.cancel = cancel
	clustered := s.cfg.ClusterListen != "" || len(s.cfg.NATS) > 0
	s.startCatchUpGate(ctx)
	s.startInboxDepth(ctx, &q.wg)
	q.wg.Go(func() {
		t := time.NewTimer(quorumEvery)
		defer t.Stop()
		failures := 0
		var lostAt time.Time
		moved := false
		// move sends the clients away, once per loss: after quorumMoveAfter, or at once when the
		// node is cut off.
		move := func(err error) {
			if !clustered || moved || !shouldMove(err, time.Since(lostAt), func() bool { return s.servingLost(ctx) }) {
				return
			}
			moved = true
			mctx, mcancel := context.WithTimeout(ctx, quorumMoveWait)
			n := s.gw.Move(mctx)
			mcancel()
			s.log.Warn("jetstream quorum still lost: clients sent to other nodes, new connections refused", "connections", n, "lost_for", time.Since(lostAt).Round(time.Millisecond))
		}
		for {
			select {
			case <-ctx.Done():
				return
			case <-t.C:
			}
			cctx, ccancel := context.WithTimeout(ctx, quorumTimeout)
			checked := time.Now()
			err := s.bus.Quorum(cctx)
			ccancel()
			if ctx.Err() != nil {
				return
			}
			s.nodeMetrics.observeCheck(time.Since(checked), err)
			// A node that finds itself cut off checks again soon, so that its clients move
			// within about a second; any other state is checked once a second.
			if errors.Is(err, bus.ErrCutOff) && q.ok.Load() {
				t.Reset(cutOffRecheck)
			} else {
				t.Reset(quorumEvery)
			}
			switch {
			case err == nil:
				failures = 0
				if q.ok.Load() {
					continue
				}
				q.ok.Store(true)
				q.reason.Store(nil)
				q.gauge.Set(1)
				s.setReadyAnnounced(true)
				if moved {
					s.gw.Resume()
					moved = false
				}
				s.log.Info("jetstream quorum recovered: ready again", "lost_for", time.Since(lostAt).Round(time.Millisecond))
			case q.ok.Load():
				if failures++; failures < quorumFailures {
					continue
				}
				reason := err.Error()
				q.reason.Store(&reason)
				q.ok.Store(false)
				q.gauge.Set(0)
				q.lost.Inc()
				lostAt = time.Now()
				s.setReadyAnnounced(false)
				s.log.Warn("jetstream quorum lost: not ready, sends are refused (UNAVAILABLE) until it is back", "reason", reason)
				move(err)
			default:
				reason := err.Error()
				q.reason.Store(&reason)
				move(err)
			}
		}
	})
}

// shouldMove decides whether a node whose quorum has been lost for lostFor (err: the last
// check's failure) sends its clients to other nodes. At once when it is cut off itself
// (bus.ErrCutOff: no routes to a majority); after quorumMoveAfter for any other failure of its
// own (its bus connection down, no meta leader in its view). A JetStream API that failed while
// the node's own state is healthy (bus.ErrAPISlow) looks the same from every node when the API
// is overwhelmed (a reconnect storm: moving 10,000 clients off every node at once was how
// 117,000 of 196,000 held connections were dropped) as from an edge whose NATS server sits in a
// minority partition. It moves them only when servingLost: most nodes whose last word was that
// they serve are no longer routed to at all, which a partition does and a storm does not. (Two
// weaker signals each sent clients away in a 200,000-connection storm: another node still
// ready, and ready nodes gone silent.)
func shouldMove(err error, lostFor time.Duration, servingLost func() bool) bool {
	switch {
	case errors.Is(err, bus.ErrCutOff):
		return true
	case lostFor < quorumMoveAfter:
		return false
	case errors.Is(err, bus.ErrAPISlow):
		return servingLost()
	}
	return true
}

// servingLost reports whether most nodes that were serving are no longer routed to
// (nodes.Registry.ServingPeersUnreachable), within ctx.
func (s *Server) servingLost(ctx context.Context) bool {
	return s.nodes != nil && s.nodes.ServingPeersUnreachable(ctx)
}

// setReadyAnnounced tells the other nodes whether this one serves.
func (s *Server) setReadyAnnounced(ready bool) {
	if s.nodes != nil {
		s.nodes.SetReady(ready)
	}
}
