// Copyright 2026 The Petrel Authors
// SPDX-License-Identifier: Apache-2.0

package gateway

import (
	"time"

	"github.com/prometheus/client_golang/prometheus"

	pb "github.com/petrelchat/petrel/proto/petrel/v1"
)

type metrics struct {
	conns         prometheus.Gauge
	frames        prometheus.Counter
	sends         prometheus.Counter
	pushed        prometheus.Counter
	registrations prometheus.Counter
	authFailures  prometheus.Counter
	panics        prometheus.Counter
	laneRuns      prometheus.Counter
	flushes       prometheus.Counter
	slowConsumers prometheus.Counter
	refused       *prometheus.CounterVec
	rejected      *prometheus.CounterVec
	timeouts      *prometheus.CounterVec
	rateLimited   *prometheus.CounterVec
	inboundClosed *prometheus.CounterVec
	httpRefused   *prometheus.CounterVec
	sentAway      *prometheus.CounterVec
	failovers     *prometheus.CounterVec
	failoverTime  prometheus.Histogram
	linkConns     *prometheus.CounterVec
	control       *prometheus.CounterVec
	seenDropped   prometheus.Counter
	idleUnread    prometheus.Counter
	// connects counts authenticated connections (its rate is connects per second).
	connects prometheus.Counter
	// limited counts requests refused by a per-device limit, by limit (limitHit).
	limited *prometheus.CounterVec
}

// Per-device limits that answer a request RATE_LIMITED (petrel_gateway_requests_limited_total).
const (
	limitDeviceChanges = "device_changes"  // GetLinkOffer, ApproveLink, PutDeviceList, RemoveDevice
	limitGroups        = "groups"          // CreateGroup, UpdateGroup, GetGroup, ListGroups
	limitPresence      = "presence"        // SubscribePresence, PutSettings
	limitEphemeral     = "ephemeral"       // ephemeral (typing) sends, 1:1 and group
	limitSendsInFlight = "sends_in_flight" // a connection's sends waiting for their ack
)

// limitHit counts a request refused by the named per-device limit; rejected says whether it
// also counts as a frame answered with an error (petrel_gateway_rejected_frames_total).
func (g *Gateway) limitHit(limit string, rejected bool) {
	g.metrics.limited.WithLabelValues(limit).Inc()
	if rejected {
		g.metrics.rejected.WithLabelValues(pb.ErrorCodeName(pb.ErrorCode_ERROR_CODE_RATE_LIMITED)).Inc()
	}
}

// maxFailover clamps the failover duration a client reports.
const maxFailover = 10 * time.Minute

// countFailover counts a device that arrived here after its connection to another node ended (its
// Auth says so and since when).
func (g *Gateway) countFailover(a *pb.Auth) {
	reason := a.GetFailoverReason()
	if reason != "goaway" && reason != "lost" {
		reason = "other"
	}
	g.metrics.failovers.WithLabelValues(reason).Inc()
	d := min(time.Duration(a.GetFailoverMs())*time.Millisecond, maxFailover)
	g.metrics.failoverTime.Observe(d.Seconds())
}

func newMetrics(reg prometheus.Registerer) *metrics {
	m := &metrics{
		conns:         prometheus.NewGauge(prometheus.GaugeOpts{Name: "petrel_gateway_connections", Help: "Open device connections."}),
		frames:        prometheus.NewCounter(prometheus.CounterOpts{Name: "petrel_gateway_frames_total", Help: "Frames received."}),
		sends:         prometheus.NewCounter(prometheus.CounterOpts{Name: "petrel_gateway_sends_acked_total", Help: "Sends acked to clients."}),
		pushed:        prometheus.NewCounter(prometheus.CounterOpts{Name: "petrel_gateway_envelopes_pushed_total", Help: "Envelopes pushed to devices."}),
		registrations: prometheus.NewCounter(prometheus.CounterOpts{Name: "petrel_gateway_registrations_total", Help: "Accounts registered."}),
		authFailures:  prometheus.NewCounter(prometheus.CounterOpts{Name: "petrel_gateway_handshake_failures_total", Help: "Refused Register/Auth/StartLink."}),
		panics:        prometheus.NewCounter(prometheus.CounterOpts{Name: "petrel_gateway_panics_total", Help: "Panics contained while handling a frame."}),
		laneRuns:      prometheus.NewCounter(prometheus.CounterOpts{Name: "petrel_gateway_lane_runs_total", Help: "Goroutines started for connections' request lanes: requests that wait on the store, run apart from the connection's acks and pings."}),
		flushes:       prometheus.NewCounter(prometheus.CounterOpts{Name: "petrel_gateway_flushes_total", Help: "Coalesced writes (each one or more frames)."}),
		slowConsumers: prometheus.NewCounter(prometheus.CounterOpts{Name: "petrel_gateway_slow_consumers_total", Help: "Connections closed because they stopped reading."}),
		refused:       prometheus.NewCounterVec(prometheus.CounterOpts{Name: "petrel_gateway_refused_total", Help: "Connections refused before upgrade, by reason."}, []string{"reason"}),
		rejected:      prometheus.NewCounterVec(prometheus.CounterOpts{Name: "petrel_gateway_rejected_frames_total", Help: "Frames answered with an error, by code."}, []string{"code"}),
		timeouts:      prometheus.NewCounterVec(prometheus.CounterOpts{Name: "petrel_gateway_timeouts_total", Help: "Connections closed for sending nothing in time, by phase (upgrade, handshake, idle)."}, []string{"phase"}),
		rateLimited:   prometheus.NewCounterVec(prometheus.CounterOpts{Name: "petrel_gateway_rate_limited_frames_total", Help: "Frames over the connection's rate, refused before being queued, by kind (data: answered RATE_LIMITED; control: a ping without pong)."}, []string{"kind"}),
		inboundClosed: prometheus.NewCounterVec(prometheus.CounterOpts{Name: "petrel_gateway_inbound_closed_total", Help: "WebSocket connections closed by admission control, by reason (conn_frames, conn_bytes, node_bytes, rate, too_large, unmasked, protocol)."}, []string{"reason"}),
		httpRefused:   prometheus.NewCounterVec(prometheus.CounterOpts{Name: "petrel_gateway_http_refused_total", Help: "Sockets and HTTP requests of the public listener refused before the upgrade, by reason (pending_full, pending_per_ip, header_too_large, body_too_large, chunked, malformed)."}, []string{"reason"}),
		failovers:     prometheus.NewCounterVec(prometheus.CounterOpts{Name: "petrel_gateway_failovers_total", Help: "Devices that authenticated here after their connection to another node ended, by why it ended (goaway: sent away; lost: it broke; other), as the client reports it."}, []string{"reason"}),
		failoverTime: prometheus.NewHistogram(prometheus.HistogramOpts{Name: "petrel_gateway_failover_seconds", Help: "For those devices: from the end of the connection to the other node until authenticated here, as the client reports it (clamped to 10 minutes).",
			Buckets: []float64{0.1, 0.25, 0.5, 1, 2, 5, 10, 30, 60, 300}}),
		sentAway:    prometheus.NewCounterVec(prometheus.CounterOpts{Name: "petrel_gateway_sent_away_total", Help: "Connections sent to another node with a GoAway, by reason (drain: the node shuts down; no_quorum: it lost its cluster majority)."}, []string{"reason"}),
		linkConns:   prometheus.NewCounterVec(prometheus.CounterOpts{Name: "petrel_gateway_link_connections_total", Help: "Connections of new devices that waited for a link approval, by how they ended (approved: LinkApproved written; expired: LINK_EXPIRED at the link's expiry; closed: the client left or broke a rule; limited: StartLink refused, max_pending_links reached)."}, []string{"outcome"}),
		control:     prometheus.NewCounterVec(prometheus.CounterOpts{Name: "petrel_gateway_control_events_total", Help: "Control-channel events acted on for a device connected to this node, by kind (device_list: DeviceListChanged pushed; removed: closed with DEVICE_REMOVED)."}, []string{"kind"}),
		seenDropped: prometheus.NewCounter(prometheus.CounterOpts{Name: "petrel_gateway_last_seen_dropped_total", Help: "Last-seen updates not made because their queue was full (the device's next Auth tries again)."}),
		idleUnread:  prometheus.NewCounter(prometheus.CounterOpts{Name: "petrel_gateway_idle_unread_total", Help: "Connections past idle_timeout kept open because bytes they sent still waited, unread, in their socket: the node was too busy to read them. Rising means an overloaded node, not idle clients."}),
		connects:    prometheus.NewCounter(prometheus.CounterOpts{Name: "petrel_gateway_connects_total", Help: "Device connections authenticated (Register or Auth answered Welcome); its rate is connects per second."}),
		limited:     prometheus.NewCounterVec(prometheus.CounterOpts{Name: "petrel_gateway_requests_limited_total", Help: "Requests answered RATE_LIMITED by a per-device limit, by limit: device_changes, groups, presence, ephemeral, sends_in_flight."}, []string{"limit"}),
	}
	// Every reason of a shed, drop, refusal or limit shows, at 0, from the start, so that rates
	// and alerts work before the first one.
	for vec, values := range map[*prometheus.CounterVec][]string{
		m.limited:       {limitDeviceChanges, limitGroups, limitPresence, limitEphemeral, limitSendsInFlight},
		m.refused:       {"full", "draining", "upgrade", "no_quorum"},
		m.timeouts:      {"upgrade", "handshake", "idle"},
		m.rateLimited:   {"data", "control"},
		m.inboundClosed: {"conn_frames", "conn_bytes", "node_bytes", "rate", "too_large", "unmasked", "protocol"},
		m.httpRefused:   {"pending_full", "pending_per_ip", "header_too_large", "body_too_large", "chunked", "malformed"},
		m.sentAway:      {"drain", "no_quorum"},
		m.failovers:     {"goaway", "lost", "other"},
		m.control:       {"device_list", "removed"},
	} {
		for _, v := range values {
			vec.WithLabelValues(v)
		}
	}
	for _, o := range []string{"approved", "expired", "closed", "limited"} {
		m.linkConns.WithLabelValues(o)
	}
	if reg != nil {
		reg.MustRegister(m.linkConns, m.control, m.seenDropped, m.idleUnread, m.connects, m.limited)
		reg.MustRegister(m.conns, m.frames, m.sends, m.pushed, m.registrations, m.authFailures, m.panics, m.laneRuns, m.flushes, m.slowConsumers, m.refused, m.rejected, m.timeouts, m.rateLimited, m.inboundClosed, m.httpRefused, m.sentAway, m.failovers, m.failoverTime)
	}
	return m
}
