// Copyright 2026 The Petrel Authors
// SPDX-License-Identifier: Apache-2.0

package groups

import (
	"errors"

	"github.com/prometheus/client_golang/prometheus"

	"github.com/petrelchat/petrel/internal/directory"
	pb "github.com/petrelchat/petrel/proto/petrel/v1"
)

// metrics are the service's Prometheus metrics.
type metrics struct {
	events    *prometheus.CounterVec // by result
	conflicts prometheus.Counter
}

// The results of petrel_groups_events_total.
var eventResults = []string{"applied", "repeat", "invalid", "signature", "stale", "not_member", "not_admin", "full", "unknown_user", "not_actor", "unavailable"}

func newMetrics(reg prometheus.Registerer) *metrics {
	m := &metrics{
		events: prometheus.NewCounterVec(prometheus.CounterOpts{Name: "petrel_groups_events_total",
			Help: "Group membership events (CreateGroup, UpdateGroup), by result: applied, repeat (the group's last event sent again), or why it was refused: invalid, signature, stale, not_member, not_admin, full, unknown_user, not_actor, unavailable."}, []string{"result"}),
		conflicts: prometheus.NewCounter(prometheus.CounterOpts{Name: "petrel_groups_write_conflicts_total",
			Help: "Group record writes that lost a race with a concurrent change and were checked again."}),
	}
	for _, r := range eventResults {
		m.events.WithLabelValues(r)
	}
	if reg != nil {
		reg.MustRegister(m.events, m.conflicts)
	}
	return m
}

// observe counts one Apply by its result.
func (m *metrics) observe(err error) {
	m.events.WithLabelValues(resultOf(err)).Inc()
}

func resultOf(err error) string {
	switch {
	case err == nil:
		return "applied"
	case errors.Is(err, pb.ErrGroupEventSignature):
		return "signature"
	case errors.Is(err, pb.ErrStaleGroupEvent):
		return "stale"
	case errors.Is(err, pb.ErrNotGroupMember):
		return "not_member"
	case errors.Is(err, pb.ErrNotGroupAdmin):
		return "not_admin"
	case errors.Is(err, pb.ErrGroupFull):
		return "full"
	case errors.Is(err, directory.ErrUnknownUser):
		return "unknown_user"
	case errors.Is(err, ErrNotActor):
		return "not_actor"
	case errors.Is(err, pb.ErrInvalidGroupEvent), errors.Is(err, ErrWrongKind):
		return "invalid"
	}
	return "unavailable"
}
