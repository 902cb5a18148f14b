// Copyright 2026 The Petrel Authors
// SPDX-License-Identifier: Apache-2.0

package server

import (
	"context"
	"time"
)

// The catch-up gate: after a start, /readyz answers 503 "catching up" until this node's
// embedded JetStream is current with its cluster (bus.CaughtUp: the meta group and every stream
// replica the node holds, nats-server's own health check). A rolling restart waits for it on a
// restarted node before it stops the next one (README "Cluster"), so no stream is ever left with
// one current replica. Once open, the gate stays open: a replica that lags for a moment under
// load does not take a serving node out of rotation (the quorum watch covers a lost majority).

// catchUpEvery is how often the gate asks until the node is current.
const catchUpEvery = 250 * time.Millisecond

// startCatchUpGate runs the gate on the quorum watch's group (it reads the embedded server, so
// it must end before the bus closes) until the node is current or ctx ends.
func (s *Server) startCatchUpGate(ctx context.Context) {
	q := s.quorum
	start := time.Now()
	q.wg.Go(func() {
		t := time.NewTicker(catchUpEvery)
		defer t.Stop()
		for {
			err := s.bus.CaughtUp()
			if err == nil {
				q.current.Store(true)
				q.currentGauge.Set(1)
				s.log.Info("caught up with the cluster: ready", "after", time.Since(start).Round(time.Millisecond))
				return
			}
			reason := "catching up: " + err.Error()
			q.currentReason.Store(&reason)
			select {
			case <-ctx.Done():
				return
			case <-t.C:
			}
		}
	})
}

// caughtUp reports whether the catch-up gate is open and, if not, why.
func (q *quorumWatch) caughtUp() (bool, string) {
	if q.current.Load() {
		return true, ""
	}
	if r := q.currentReason.Load(); r != nil {
		return false, *r
	}
	return false, "catching up"
}
