// Copyright 2026 The Petrel Authors
// SPDX-License-Identifier: Apache-2.0

package directory

import "github.com/prometheus/client_golang/prometheus"

// metrics are the directory's Prometheus metrics.
type metrics struct {
	prekeysClaimed  *prometheus.CounterVec // by kind: ec, kem
	claimLimited    *prometheus.CounterVec // by limit: requester, pair, target
	bundleCached    prometheus.Counter
	registerRefused *prometheus.CounterVec // by reason
	invitesReturned prometheus.Counter
	links           *prometheus.CounterVec // by result: started, approved, expired, refused
	devicesRemoved  *prometheus.CounterVec // by who asked: primary, self
	seenWrites      prometheus.Counter
	recoveries      *prometheus.CounterVec // by result: recovered, refused (recovery.go)
	readsConfirmed  *prometheus.CounterVec // by bucket: devices, accounts
	countsDirect    prometheus.Counter
}

func newMetrics(reg prometheus.Registerer) *metrics {
	m := &metrics{
		prekeysClaimed: prometheus.NewCounterVec(prometheus.CounterOpts{Name: "petrel_directory_prekeys_claimed_total",
			Help: "One-time prekeys handed out in bundles, by kind (ec, kem)."}, []string{"kind"}),
		claimLimited: prometheus.NewCounterVec(prometheus.CounterOpts{Name: "petrel_directory_bundle_claims_limited_total",
			Help: "Bundle claims over a limit, by limit: requester and pair refuse the request (RATE_LIMITED); target answers without one-time prekeys."}, []string{"limit"}),
		bundleCached: prometheus.NewCounter(prometheus.CounterOpts{Name: "petrel_directory_bundle_cached_answers_total",
			Help: "Device bundles asked for again by the same requester within bundle_cache_ttl, answered without one-time prekeys (no new claim)."}),
		registerRefused: prometheus.NewCounterVec(prometheus.CounterOpts{Name: "petrel_directory_registrations_refused_total",
			Help: "Registrations refused by the directory, by reason."}, []string{"reason"}),
		invitesReturned: prometheus.NewCounter(prometheus.CounterOpts{Name: "petrel_directory_invites_returned_total",
			Help: "Invite codes given back because the registration that spent them failed to be written."}),
		links: prometheus.NewCounterVec(prometheus.CounterOpts{Name: "petrel_directory_links_total",
			Help: "Device links, by result: started (StartLink stored an offer), approved, expired (an offer or approval found the link unknown, used or expired), refused (a StartLink or approval refused otherwise)."}, []string{"result"}),
		devicesRemoved: prometheus.NewCounterVec(prometheus.CounterOpts{Name: "petrel_directory_devices_removed_total",
			Help: "Linked devices removed from their account, by who asked: primary, self."}, []string{"by"}),
		seenWrites: prometheus.NewCounter(prometheus.CounterOpts{Name: "petrel_directory_last_seen_writes_total",
			Help: "Account records written to update a device's last-seen time (at most one a device an hour)."}),
		recoveries: prometheus.NewCounterVec(prometheus.CounterOpts{Name: "petrel_directory_recoveries_total",
			Help: "Account recoveries (Recover), by result: recovered; refused (a wrong recovery key, no verifier, a malformed request; rate limits are counted by the gateway)."}, []string{"result"}),
		readsConfirmed: prometheus.NewCounterVec(prometheus.CounterOpts{Name: "petrel_directory_reads_confirmed_total",
			Help: "Records that a replica answered as not found and the bucket stream's leader held, by bucket (devices, accounts): a replica that could not serve the read, e.g. on a node being stopped. Without the leader's read the device or user would have been refused as unknown."}, []string{"bucket"}),
		countsDirect: prometheus.NewCounter(prometheus.CounterOpts{Name: "petrel_directory_prekey_counts_direct_total",
			Help: "Prekey counts (a connect's, an upload's) taken with direct gets, which any replica answers (each loads a block of the PREKEYS stream into memory), because the PREKEYS stream's leader did not answer the stream-info request that reads them from its subject index, within 1 s, or in the 5 s before."}),
	}
	for _, r := range []string{"recovered", "refused"} {
		m.recoveries.WithLabelValues(r)
	}
	for _, r := range []string{linkStarted, linkApproved, linkExpired, linkRefused} {
		m.links.WithLabelValues(r)
	}
	for _, b := range []string{"devices", "accounts"} {
		m.readsConfirmed.WithLabelValues(b)
	}
	for _, by := range []string{"primary", "self"} {
		m.devicesRemoved.WithLabelValues(by)
	}
	if reg != nil {
		reg.MustRegister(m.prekeysClaimed, m.claimLimited, m.bundleCached, m.registerRefused, m.invitesReturned,
			m.links, m.devicesRemoved, m.seenWrites, m.recoveries, m.readsConfirmed, m.countsDirect)
	}
	return m
}

// claimed counts the one-time prekeys in k.
func (m *metrics) claimed(k claimedKeys) {
	if k.otk != nil {
		m.prekeysClaimed.WithLabelValues("ec").Inc()
	}
	if k.kem != nil {
		m.prekeysClaimed.WithLabelValues("kem").Inc()
	}
}

// removed counts a device removal, by the device itself (self) or by the primary.
func (m *metrics) removed(self bool) {
	by := "primary"
	if self {
		by = "self"
	}
	m.devicesRemoved.WithLabelValues(by).Inc()
}
