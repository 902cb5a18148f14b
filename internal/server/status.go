// Copyright 2026 The Petrel Authors
// SPDX-License-Identifier: Apache-2.0

package server

import (
	"net"

	"github.com/petrelchat/petrel/internal/bus"
	"github.com/petrelchat/petrel/internal/status"
)

// startStatus makes the status service (package status) and starts its goroutines. It reads
// storage health from memory only (the bus connection's state and the cached quorum state), so
// the page keeps answering while the store is sick.
func (s *Server) startStatus() {
	s.status = status.New(status.Config{
		Node:    s.cfg.Node,
		URL:     s.publicURLQuiet,
		Storage: s.storageState,
		Conn:    s.bus.Conn(), Subject: bus.StatusSubject,
		Incidents:     s.bus.Incidents,
		Baseline:      s.bus.Baseline,
		OperatorToken: s.token, ProbeToken: s.cfg.ProbeToken,
		ShareInterval: s.cfg.StatusShareInterval.Duration,
		Thresholds: status.Thresholds{
			LagDegraded: s.cfg.StatusLagDegraded.Duration,
			ProbeSlow:   s.cfg.StatusProbeSlow.Duration,
		},
		ReportsPerIPPerMinute: s.cfg.ReportsPerIPPerMinute,
		Logger:                s.log.With("component", "status"),
		Registry:              s.reg,
	})
	// The self-prober's results go to the page too.
	s.probeSink = teeSink{s.status, s.probeSink}
	if err := s.status.Start(); err != nil {
		// Only the subscription can fail: the page then shows this node's view alone.
		s.log.Warn("status: nodes' views not shared", "err", err)
	}
}

// storageState is whether storage is usable, and why not: the bus connection and the cached
// quorum state (no JetStream request).
func (s *Server) storageState() (bool, string) {
	if s.bus == nil || !s.bus.Healthy() {
		return false, "storage unavailable"
	}
	if ok, why := s.quorum.state(); !ok {
		return false, why
	}
	return true, ""
}

// publicURLQuiet is public_url, or the bound listener's URL when it can be reached from
// elsewhere, else "" (publicURL without its warning).
func (s *Server) publicURLQuiet() string {
	if s.cfg.PublicURL != "" {
		return s.cfg.PublicURL
	}
	if a, ok := s.Addr().(*net.TCPAddr); !ok || a.IP.IsUnspecified() {
		return ""
	}
	return s.URL()
}

// StatusSink is where a node's own prober sends its results (status.ProbeSink); nil before the
// server has started.
func (s *Server) StatusSink() status.ProbeSink {
	if s.status == nil {
		return nil
	}
	return s.status
}
