// Copyright 2026 The Petrel Authors
// SPDX-License-Identifier: Apache-2.0

package gateway

import (
	"sync/atomic"
	"testing"

	pb "github.com/petrelchat/petrel/proto/petrel/v1"
)

// frameHook, when set (tests only), runs on every decoded frame right before its handler, where
// the handler runs (the connection's executor, or its request lane).
var frameHook atomic.Pointer[func(*pb.Frame)]

// SetFrameHookForTest installs h as a hook on every decoded frame (for failure injection, e.g. a
// panic) and returns a function that removes it. It panics outside tests.
func SetFrameHookForTest(h func(*pb.Frame)) (restore func()) {
	if !testing.Testing() {
		panic("gateway.SetFrameHookForTest called outside a test")
	}
	frameHook.Store(&h)
	return func() { frameHook.Store(nil) }
}
