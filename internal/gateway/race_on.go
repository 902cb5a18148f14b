// Copyright 2026 The Petrel Authors
// SPDX-License-Identifier: Apache-2.0

//go:build race

package gateway

import (
	"sync"

	"github.com/petrelchat/petrel/third_party/nbio"
	"github.com/petrelchat/petrel/third_party/nbio/nbhttp"
)

// raceMu makes the race detector see the hand-off of a new connection from nbio's accept
// goroutine to its poller goroutine. That hand-off goes through epoll (a system call, a full
// barrier in practice), which the detector cannot see, so without this every connection's
// accept-time writes are reported as racing with the poller's first read. Only race builds
// compile this; production builds add nothing to the hot path.
var raceMu sync.Mutex

// poisonPooled: race builds overwrite a message buffer given back to its pool (putMsgBuf).
const poisonPooled = true

func raceHandoff() { raceMu.Lock(); raceMu.Unlock() } //nolint:staticcheck // an intentional empty critical section

func instrumentForRace(e *nbhttp.Engine) {
	ne := e.Engine
	ne.OnReadBufferAlloc(func(c *nbio.Conn) *[]byte {
		raceHandoff()
		return ne.PollerBufferPtr(c)
	})
}
