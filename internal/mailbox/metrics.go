// Copyright 2026 The Petrel Authors
// SPDX-License-Identifier: Apache-2.0

package mailbox

import "github.com/prometheus/client_golang/prometheus"

type metrics struct {
	sends            prometheus.Counter
	deliveredLive    prometheus.Counter
	stored           prometheus.Counter
	purged           prometheus.Counter
	purges           prometheus.Counter
	commits          prometheus.Counter
	commitErrors     prometheus.Counter
	commitSeconds    prometheus.Histogram
	appendRejected   prometheus.Counter
	batchFallbacks   prometheus.Counter
	batchSplits      prometheus.Counter
	inboxFull        *prometheus.CounterVec
	storeFull        prometheus.Counter
	indexRebuilds    prometheus.Counter
	queryRateLimited prometheus.Counter
	attached         prometheus.Gauge
	busDropped       prometheus.Counter
	resyncWakes      prometheus.Counter
	crossNode        prometheus.Counter
	takeovers        prometheus.Counter
	hints            prometheus.Counter
	unlocated        prometheus.Counter
	moved            prometheus.Counter
	ticketsReleased  prometheus.Counter
	noQuorum         prometheus.Counter
	leaderReads      prometheus.Counter
	// leaderReadRetries counts leader reads asked again after leaderAttempt without an answer.
	leaderReadRetries prometheus.Counter
	inboxesDropped    prometheus.Counter
	// replicaReads counts reads that stood in for a leader read (replicas.go).
	replicaReads prometheus.Counter

	// Deliveries, acks and delivery latency by path (live, stored), resolved once: the hot path
	// pays an atomic add or a histogram observation, never a label lookup.
	pushedLive, pushedStored prometheus.Counter
	ackedLive, ackedStored   prometheus.Counter
	latencyLive              prometheus.Observer
	latencyStored            prometheus.Observer
}

// Delivery paths (the path label).
const (
	pathLive   = "live"
	pathStored = "stored"
)

// deliveryBuckets span a live delivery on one machine (about a millisecond) to a stored envelope
// read after a day offline.
var deliveryBuckets = []float64{0.001, 0.0025, 0.005, 0.01, 0.025, 0.05, 0.1, 0.25, 0.5, 1, 2.5, 5, 10, 30, 60, 300, 1800, 3600, 21600, 86400}

func newMetrics(reg prometheus.Registerer) *metrics {
	m := &metrics{
		sends:             prometheus.NewCounter(prometheus.CounterOpts{Name: "petrel_mailbox_sends_total", Help: "Messages acked to their senders."}),
		deliveredLive:     prometheus.NewCounter(prometheus.CounterOpts{Name: "petrel_mailbox_delivered_live_total", Help: "Envelopes acked live by their device."}),
		stored:            prometheus.NewCounter(prometheus.CounterOpts{Name: "petrel_mailbox_stored_total", Help: "Envelopes appended durably to an inbox."}),
		purged:            prometheus.NewCounter(prometheus.CounterOpts{Name: "petrel_mailbox_purged_total", Help: "Stored envelopes deleted after the device acked them."}),
		purges:            prometheus.NewCounter(prometheus.CounterOpts{Name: "petrel_mailbox_purges_total", Help: "Subject purges sent to delete acked envelopes (each covers every envelope of one device acked since the last)."}),
		commits:           prometheus.NewCounter(prometheus.CounterOpts{Name: "petrel_mailbox_commits_total", Help: "Inbox commits (each one fsync'd batch)."}),
		commitErrors:      prometheus.NewCounter(prometheus.CounterOpts{Name: "petrel_mailbox_commit_errors_total", Help: "Failed inbox commits (none of their messages was acked)."}),
		commitSeconds:     prometheus.NewHistogram(prometheus.HistogramOpts{Name: "petrel_mailbox_commit_seconds", Help: "Inbox commit latency.", Buckets: prometheus.ExponentialBuckets(0.0005, 2, 14)}),
		appendRejected:    prometheus.NewCounter(prometheus.CounterOpts{Name: "petrel_mailbox_append_rejected_total", Help: "Appends refused because a shard writer's queue was full."}),
		batchFallbacks:    prometheus.NewCounter(prometheus.CounterOpts{Name: "petrel_mailbox_batch_fallbacks_total", Help: "Batches re-published one by one because they held a duplicate."}),
		batchSplits:       prometheus.NewCounter(prometheus.CounterOpts{Name: "petrel_mailbox_batch_splits_total", Help: "Batches refused by a stream or store limit and re-published one by one (only the refused envelopes fail)."}),
		inboxFull:         prometheus.NewCounterVec(prometheus.CounterOpts{Name: "petrel_mailbox_inbox_full_total", Help: "Envelopes refused because the recipient's inbox, or the sender's share of it, was full (INBOX_FULL), by reason: count, bytes, sender_count, sender_bytes, stream."}, []string{"reason"}),
		storeFull:         prometheus.NewCounter(prometheus.CounterOpts{Name: "petrel_mailbox_store_full_total", Help: "Envelopes refused because an inbox stream or the store reached its byte limit (UNAVAILABLE, retryable)."}),
		indexRebuilds:     prometheus.NewCounter(prometheus.CounterOpts{Name: "petrel_mailbox_index_rebuilds_total", Help: "Inbox indexes rebuilt from the store (once per device with stored envelopes after a start)."}),
		queryRateLimited:  prometheus.NewCounter(prometheus.CounterOpts{Name: "petrel_mailbox_query_rate_limited_total", Help: "QueryQueued requests refused by the per-device rate limit."}),
		attached:          prometheus.NewGauge(prometheus.GaugeOpts{Name: "petrel_mailbox_attached_devices", Help: "Devices attached for delivery on this node."}),
		busDropped:        prometheus.NewCounter(prometheus.CounterOpts{Name: "petrel_mailbox_bus_dropped_total", Help: "Messages to attached devices (wake-ups, live requests, takeovers) that the bus connection dropped because their dispatch channel was full; each affected device's inbox is re-read."}),
		leaderReads:       prometheus.NewCounter(prometheus.CounterOpts{Name: "petrel_mailbox_leader_reads_total", Help: "Inbox reads sent to the stream leader on a replicated inbox: when a direct get (answered by any replica) lagged behind a wake-up's sequence, and once per attachment before it first goes live."}),
		leaderReadRetries: prometheus.NewCounter(prometheus.CounterOpts{Name: "petrel_mailbox_leader_read_retries_total", Help: "Leader reads sent again after 2s without an answer (the stream had no leader: an election after a node died)."}),
		replicaReads:      prometheus.NewCounter(prometheus.CounterOpts{Name: "petrel_mailbox_replica_reads_total", Help: "Inbox reads that stood in for a leader read because every node's replica of the stream had applied the same writes (a replica round): no wait for the stream leader, even while one is being elected."}),
		resyncWakes:       prometheus.NewCounter(prometheus.CounterOpts{Name: "petrel_mailbox_resync_wakes_total", Help: "Wake-ups sent to devices on this node after the bus dropped messages for them (each makes the device re-read its inbox)."}),
		crossNode:         prometheus.NewCounter(prometheus.CounterOpts{Name: "petrel_mailbox_cross_node_deliveries_total", Help: "Envelopes sent through this node and acked live by their device over the bus (the device attached on another node), not through the node-local fast path."}),
		noQuorum:          prometheus.NewCounter(prometheus.CounterOpts{Name: "petrel_mailbox_no_quorum_total", Help: "Envelopes refused at once (UNAVAILABLE, not acked) because this node had no JetStream quorum."}),
		ticketsReleased:   prometheus.NewCounter(prometheus.CounterOpts{Name: "petrel_mailbox_tickets_released_total", Help: "Refused live deliveries whose store then failed for certain (nothing stored, sender not acked): the refusing attachment forgets them at once instead of holding its drain until they expire."}),
		inboxesDropped:    prometheus.NewCounter(prometheus.CounterOpts{Name: "petrel_mailbox_inboxes_dropped_total", Help: "Inboxes deleted because their device was removed from its account."}),
		hints:             prometheus.NewCounter(prometheus.CounterOpts{Name: "petrel_mailbox_location_hints_total", Help: "Device locations this node learnt from the node holding the device (its answer to a commit's wake-up): later live deliveries to the device go there."}),
		unlocated:         prometheus.NewCounter(prometheus.CounterOpts{Name: "petrel_mailbox_unlocated_total", Help: "Envelopes to a device attached on no node this node knows of, stored without a live attempt (the device is offline, or its node has not told this one yet: the commit's wake-up brings the hint)."}),
		moved:             prometheus.NewCounter(prometheus.CounterOpts{Name: "petrel_mailbox_location_moved_total", Help: "Live deliveries sent to a node that no longer held the device (it answered \"not here\", or was gone): stored instead, and the device's location forgotten."}),
		takeovers:         prometheus.NewCounter(prometheus.CounterOpts{Name: "petrel_mailbox_takeovers_total", Help: "Device connections on this node taken over by a newer connection of the same device, on this node or another (each told CONNECTED_ELSEWHERE)."}),
	}
	deliveries := prometheus.NewCounterVec(prometheus.CounterOpts{Name: "petrel_mailbox_deliveries_total",
		Help: "Envelopes pushed to a device attached on this node, by path: live (straight from a sender), stored (read from its inbox)."}, []string{"path"})
	acks := prometheus.NewCounterVec(prometheus.CounterOpts{Name: "petrel_mailbox_acks_total",
		Help: "Envelopes acked by a device attached on this node, by path: live, stored."}, []string{"path"})
	latency := prometheus.NewHistogramVec(prometheus.HistogramOpts{Name: "petrel_mailbox_delivery_seconds",
		Help:    "End-to-end delivery latency, by path: live (from the Send reaching this node's mailbox to the device's ack reaching it back; on the sending node; after a node's first 1,024 sends, one in 8, at random), stored (from the server accepting the Send, the envelope's server time, to the device's ack; on the node holding the device).",
		Buckets: deliveryBuckets}, []string{"path"})
	m.pushedLive, m.pushedStored = deliveries.WithLabelValues(pathLive), deliveries.WithLabelValues(pathStored)
	m.ackedLive, m.ackedStored = acks.WithLabelValues(pathLive), acks.WithLabelValues(pathStored)
	m.latencyLive, m.latencyStored = latency.WithLabelValues(pathLive), latency.WithLabelValues(pathStored)
	for _, r := range []string{reasonCount, reasonBytes, reasonSenderCount, reasonSenderBytes, reasonStream} {
		m.inboxFull.WithLabelValues(r) // every reason shows, at 0, from the start
	}
	if reg != nil {
		reg.MustRegister(m.sends, m.deliveredLive, m.stored, m.purged, m.commits, m.commitErrors, m.commitSeconds, m.appendRejected, m.batchFallbacks, m.batchSplits, m.inboxFull, m.storeFull, m.indexRebuilds, m.queryRateLimited, m.attached, m.busDropped, m.resyncWakes, m.crossNode, m.takeovers, m.noQuorum, m.leaderReads, m.leaderReadRetries, m.replicaReads, m.purges, m.ticketsReleased, m.inboxesDropped, m.hints, m.unlocated, m.moved)
		reg.MustRegister(deliveries, acks, latency)
	}
	return m
}
