// Copyright 2026 The Petrel Authors
// SPDX-License-Identifier: Apache-2.0

package gateway

import (
	"time"

	pb "github.com/petrelchat/petrel/proto/petrel/v1"
)

// SendObserver is told the outcome of sends, for the status page's send error rate and delivery
// lag. ObserveSend must be quick and must not block: it runs on the send's completion path.
type SendObserver interface {
	// ObserveSend reports one send: ok (acked), or failed on the server's side (UNAVAILABLE or
	// INTERNAL: storage, quorum, overload), and the time from its arrival to that outcome.
	// Refusals the sender caused (an unknown recipient, a stale device list, a full inbox, a rate
	// limit) are not reported: they say nothing about the service's health.
	ObserveSend(ok bool, lag time.Duration)
}

// observeSend tells the SendObserver about a send that arrived at start and ended with err.
func (g *Gateway) observeSend(start time.Time, err error) {
	o := g.cfg.SendObserver
	if o == nil {
		return
	}
	if err != nil {
		switch code, _ := codeFor(err); code {
		case pb.ErrorCode_ERROR_CODE_UNAVAILABLE, pb.ErrorCode_ERROR_CODE_INTERNAL:
		default:
			return
		}
	}
	o.ObserveSend(err == nil, time.Since(start))
}
