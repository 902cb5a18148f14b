// Copyright 2026 The Petrel Authors
// SPDX-License-Identifier: Apache-2.0

// Package metricstest reads Prometheus metrics for tests.
package metricstest

import "github.com/prometheus/client_golang/prometheus"

// Counter returns the value of the counter name in g whose label has value (any series of name
// when label is empty), and whether g has one.
func Counter(g prometheus.Gatherer, name, label, value string) (float64, bool, error) {
	mfs, err := g.Gather()
	if err != nil {
		return 0, false, err
	}
	for _, mf := range mfs {
		if mf.GetName() != name {
			continue
		}
		for _, m := range mf.GetMetric() {
			match := label == ""
			for _, lp := range m.GetLabel() {
				if lp.GetName() == label && lp.GetValue() == value {
					match = true
				}
			}
			if match {
				return m.GetCounter().GetValue(), true, nil
			}
		}
	}
	return 0, false, nil
}
