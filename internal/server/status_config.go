// Copyright 2026 The Petrel Authors
// SPDX-License-Identifier: Apache-2.0

package server

import (
	"strings"
	"time"

	"github.com/petrelchat/petrel/internal/status"
)

// StatusSection is [status]: the status page, problem reports and probe intake
// (internal/status).
type StatusSection struct {
	// ProbeToken, when set, is accepted on POST /v1/probes besides the operator token, so that an
	// external prober needs no operator credential (at least 32 characters, no white space).
	// Default: "" (the operator token only).
	ProbeToken string `toml:"probe_token"`
	// StatusShareInterval is how often each node shares its own view with the others over the
	// bus; a node not heard for six of them leaves the page (100ms..1m). Default: 10s.
	StatusShareInterval Duration `toml:"share_interval"`
	// StatusLagDegraded: a node whose sends' 95th percentile delivery lag over 5 minutes reaches
	// it is degraded (1ms..10m). Default: 2s.
	StatusLagDegraded Duration `toml:"lag_degraded"`
	// StatusProbeSlow: a probed node whose probes' 95th percentile latency over 5 minutes exceeds
	// it is degraded (1ms..10m). Default: 3s.
	StatusProbeSlow Duration `toml:"probe_slow"`
	// ReportsPerIPPerMinute rate-limits problem reports per client address (burst 5, or the rate
	// if higher) (0.01..10000). Default: 2.
	ReportsPerIPPerMinute float64 `toml:"reports_per_ip_per_minute"`
}

func (c *StatusSection) setStatusDefaults() {
	if c.StatusShareInterval.Duration == 0 {
		c.StatusShareInterval.Duration = status.DefaultShareInterval
	}
	if c.StatusLagDegraded.Duration == 0 {
		c.StatusLagDegraded.Duration = status.DefaultLagDegraded
	}
	if c.StatusProbeSlow.Duration == 0 {
		c.StatusProbeSlow.Duration = status.DefaultProbeSlow
	}
	if c.ReportsPerIPPerMinute == 0 {
		c.ReportsPerIPPerMinute = status.DefaultReportsPerIPPerMinute
	}
}

func (c *StatusSection) validateStatus(bad func(format string, a ...any)) {
	if t := c.ProbeToken; t != "" && (len(t) < minTokenLen || strings.ContainsAny(t, " \t\r\n")) {
		// Never quote the token.
		bad("status.probe_token: want at least %d characters without white space (e.g. openssl rand -hex 32)", minTokenLen)
	}
	if d := c.StatusShareInterval.Duration; d < 100*time.Millisecond || d > time.Minute {
		bad("status.share_interval %s: want 100ms..1m", d)
	}
	for _, k := range []struct {
		name string
		d    time.Duration
	}{{"status.lag_degraded", c.StatusLagDegraded.Duration}, {"status.probe_slow", c.StatusProbeSlow.Duration}} {
		if k.d < time.Millisecond || k.d > 10*time.Minute {
			bad("%s %s: want 1ms..10m", k.name, k.d)
		}
	}
	if r := c.ReportsPerIPPerMinute; r < 0.01 || r > 10000 {
		bad("status.reports_per_ip_per_minute %g: want 0.01..10000", r)
	}
}
