// Copyright 2026 The Petrel Authors
// SPDX-License-Identifier: Apache-2.0

package server

import (
	"context"
	"errors"
	"fmt"
	"runtime"
	"runtime/debug"
	"strings"
	"sync"
	"time"

	"github.com/prometheus/client_golang/prometheus"

	"github.com/petrelchat/petrel/internal/bus"
)

// The node's own metrics (the packages register theirs): build info, the bus connection's and
// JetStream's health as this node sees it, and the depth of the inbox streams. Nothing here runs
// on a request's path: the gauges read state the bus keeps anyway, the JetStream check is the
// quorum watch's (once a second), and the inbox depth is sampled every inboxDepthEvery.

// inboxDepthEvery is how often the inbox streams' depth is sampled (one stream info request per
// inbox shard); inboxDepthTimeout bounds one sample.
const (
	inboxDepthEvery   = 15 * time.Second
	inboxDepthTimeout = 5 * time.Second
)

// Why a JetStream check failed (petrel_bus_jetstream_check_failures_total).
const (
	checkCutOff  = "cut_off"  // routes to too few nodes for a majority
	checkAPISlow = "api_slow" // connected, but the JetStream API did not answer in time
	checkOther   = "other"    // no meta leader, JetStream disabled, disconnected, an API error
)

// nodeMetrics are the metrics registerNodeMetrics makes.
type nodeMetrics struct {
	jsOK          prometheus.Gauge
	checkSeconds  prometheus.Histogram
	checkFailures *prometheus.CounterVec
	inboxMsgs     prometheus.Gauge
	inboxBytes    prometheus.Gauge
	// inboxUnavailable: inbox streams whose info the last sample did not get.
	inboxUnavailable prometheus.Gauge

	sampleMu sync.Mutex // one inbox depth sample at a time
}

// registerNodeMetrics registers the node's own metrics on reg; b is the open bus.
func registerNodeMetrics(reg prometheus.Registerer, b *bus.Bus, version string) *nodeMetrics {
	m := &nodeMetrics{
		jsOK: prometheus.NewGauge(prometheus.GaugeOpts{Name: "petrel_bus_jetstream_ok",
			Help: "1 if this node's last JetStream check passed (its view of the meta group, and the JetStream API answered within 2s), else 0. Checked every second; petrel_cluster_quorum is the same with hysteresis."}),
		checkSeconds: prometheus.NewHistogram(prometheus.HistogramOpts{Name: "petrel_bus_jetstream_check_seconds",
			Help:    "Duration of this node's JetStream checks (meta group view and an account-info round trip), once a second.",
			Buckets: []float64{0.0005, 0.001, 0.0025, 0.005, 0.01, 0.025, 0.05, 0.1, 0.25, 0.5, 1, 2}}),
		checkFailures: prometheus.NewCounterVec(prometheus.CounterOpts{Name: "petrel_bus_jetstream_check_failures_total",
			Help: "Failed JetStream checks, by reason: cut_off (routes to too few nodes), api_slow (the API did not answer in time), other."}, []string{"reason"}),
		inboxMsgs: prometheus.NewGauge(prometheus.GaugeOpts{Name: "petrel_mailbox_inbox_messages",
			Help: "Envelopes stored in the inbox streams, all devices (sampled every 15s from stream info; the whole cluster's, the same on every node)."}),
		inboxBytes: prometheus.NewGauge(prometheus.GaugeOpts{Name: "petrel_mailbox_inbox_bytes",
			Help: "Bytes stored in the inbox streams, all devices (sampled with petrel_mailbox_inbox_messages)."}),
		inboxUnavailable: prometheus.NewGauge(prometheus.GaugeOpts{Name: "petrel_mailbox_inbox_streams_unavailable",
			Help: "Inbox streams whose leader did not answer the last sample (every 15s): no leader (with more than three JetStream nodes a stream can lose its majority while the cluster keeps its own), or no JetStream quorum. 0 when all serve."}),
	}
	for _, r := range []string{checkCutOff, checkAPISlow, checkOther} {
		m.checkFailures.WithLabelValues(r) // every reason shows, at 0, from the start
	}
	m.jsOK.Set(1) // the bus opened only once JetStream answered
	nc := b.Conn()
	info := buildInfo(version)
	reg.MustRegister(m.jsOK, m.checkSeconds, m.checkFailures, m.inboxMsgs, m.inboxBytes, m.inboxUnavailable,
		prometheus.NewGaugeFunc(prometheus.GaugeOpts{Name: "petrel_build_info",
			Help:        "Always 1; the labels say which build runs: version, go_version, revision (the VCS commit, or unknown).",
			ConstLabels: prometheus.Labels{"version": info.version, "go_version": info.goVersion, "revision": info.revision}},
			func() float64 { return 1 }),
		prometheus.NewGaugeFunc(prometheus.GaugeOpts{Name: "petrel_bus_connected",
			Help: "1 while this node's connection to NATS is up, else 0 (reconnecting or closed)."},
			func() float64 { return boolGauge(nc.IsConnected()) }),
		prometheus.NewCounterFunc(prometheus.CounterOpts{Name: "petrel_bus_reconnects_total",
			Help: "Times this node's NATS connection reconnected (external NATS; the embedded server's in-process connection does not drop)."},
			func() float64 { return float64(nc.Stats().Reconnects) }),
		&routesCollector{bus: b, desc: prometheus.NewDesc("petrel_cluster_routes",
			"Other NATS servers this node's embedded server has routes to now (absent with external NATS).", nil, nil)},
	)
	return m
}

// observeCheck records one JetStream check that took d and ended with err.
func (m *nodeMetrics) observeCheck(d time.Duration, err error) {
	m.checkSeconds.Observe(d.Seconds())
	if err == nil {
		m.jsOK.Set(1)
		return
	}
	m.jsOK.Set(0)
	switch {
	case errors.Is(err, bus.ErrCutOff):
		m.checkFailures.WithLabelValues(checkCutOff).Inc()
	case errors.Is(err, bus.ErrAPISlow):
		m.checkFailures.WithLabelValues(checkAPISlow).Inc()
	default:
		m.checkFailures.WithLabelValues(checkOther).Inc()
	}
}

// sampleInboxDepth sets the inbox gauges from every inbox stream's info (the stream leader's
// answer; all shards at once, each bounded by inboxDepthTimeout) and returns the streams that did
// not answer: a stream with no leader (with more than three JetStream nodes, two lost replicas of
// one stream leave it without a majority while the meta group keeps its own), or an API that
// does not answer at all. petrel_mailbox_inbox_streams_unavailable counts them; the depth gauges
// keep their last full sample until every stream answers again.
func (m *nodeMetrics) sampleInboxDepth(ctx context.Context, b *bus.Bus) (unavailable []string, err error) {
	m.sampleMu.Lock()
	defer m.sampleMu.Unlock()
	ctx, cancel := context.WithTimeout(ctx, inboxDepthTimeout)
	defer cancel()
	n := b.InboxShards()
	msgs, bytes, errs := make([]uint64, n), make([]uint64, n), make([]error, n)
	var wg sync.WaitGroup
	for shard := range n {
		wg.Go(func() {
			info, err := b.Inbox(shard).Info(ctx)
			if err != nil {
				errs[shard] = err
				return
			}
			msgs[shard], bytes[shard] = info.State.Msgs, info.State.Bytes
		})
	}
	wg.Wait()
	var sumMsgs, sumBytes uint64
	for shard := range n {
		if errs[shard] != nil {
			unavailable = append(unavailable, bus.InboxStreamName(shard))
			if err == nil {
				err = fmt.Errorf("%s: %w", bus.InboxStreamName(shard), errs[shard])
			}
			continue
		}
		sumMsgs += msgs[shard]
		sumBytes += bytes[shard]
	}
	m.inboxUnavailable.Set(float64(len(unavailable)))
	if err != nil {
		return unavailable, err
	}
	m.inboxMsgs.Set(float64(sumMsgs))
	m.inboxBytes.Set(float64(sumBytes))
	return nil, nil
}

// startInboxDepth samples the inbox depth now and every inboxDepthEvery until ctx ends, on a
// goroutine wg owns, and logs when inbox streams stop or start answering again.
func (s *Server) startInboxDepth(ctx context.Context, wg *sync.WaitGroup) {
	wg.Go(func() {
		t := time.NewTicker(inboxDepthEvery)
		defer t.Stop()
		before := 0
		for {
			unavailable, err := s.nodeMetrics.sampleInboxDepth(ctx, s.bus)
			if ctx.Err() != nil {
				return
			}
			switch {
			case len(unavailable) > 0 && len(unavailable) != before:
				s.log.Warn("inbox streams not answering (no leader, or no jetstream quorum): devices whose inbox is there cannot be stored to or drained until they elect one",
					"streams", strings.Join(unavailable, ","), "of", s.bus.InboxShards(), "err", err)
			case len(unavailable) == 0 && before > 0:
				s.log.Info("every inbox stream answers again", "streams", s.bus.InboxShards())
			case err != nil:
				s.log.Debug("inbox depth not sampled", "err", err)
			}
			before = len(unavailable)
			select {
			case <-ctx.Done():
				return
			case <-t.C:
			}
		}
	})
}

// routesCollector reports petrel_cluster_routes at scrape time (a read of the embedded server's
// route table), and nothing with external NATS.
type routesCollector struct {
	bus  *bus.Bus
	desc *prometheus.Desc
}

// Describe implements prometheus.Collector.
func (c *routesCollector) Describe(ch chan<- *prometheus.Desc) { ch <- c.desc }

// Collect implements prometheus.Collector.
func (c *routesCollector) Collect(ch chan<- prometheus.Metric) {
	if n, ok := c.bus.RoutedServers(); ok {
		ch <- prometheus.MustNewConstMetric(c.desc, prometheus.GaugeValue, float64(n))
	}
}

func boolGauge(b bool) float64 {
	if b {
		return 1
	}
	return 0
}

// build is what petrel_build_info says about the running binary.
type build struct{ version, goVersion, revision string }

// buildInfo describes the running binary: version as given (else the main module's version from
// the build info, else "dev"), the Go version, and the VCS revision the build recorded.
func buildInfo(version string) build {
	b := build{version: version, goVersion: runtime.Version(), revision: "unknown"}
	if bi, ok := debug.ReadBuildInfo(); ok {
		if b.version == "" && bi.Main.Version != "" && bi.Main.Version != "(devel)" {
			b.version = bi.Main.Version
		}
		for _, kv := range bi.Settings {
			if kv.Key == "vcs.revision" && kv.Value != "" {
				b.revision = kv.Value
			}
		}
	}
	if b.version == "" {
		b.version = "dev"
	}
	return b
}
