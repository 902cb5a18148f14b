// Copyright 2026 The Petrel Authors
// SPDX-License-Identifier: Apache-2.0

package server

import "context"

// SampleInboxDepthForTest samples the inbox depth now instead of at the next 15 s tick.
func (s *Server) SampleInboxDepthForTest() error {
	_, err := s.nodeMetrics.sampleInboxDepth(context.Background(), s.bus)
	return err
}
