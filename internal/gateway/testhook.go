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
	return setHook(&frameHook, h, "SetFrameHookForTest")
}

// pollerHook, when set (tests only), runs on the poller goroutine for every chunk read from a
// plain socket, before it is parsed: a test can hold the poller, as a starved one is.
var pollerHook atomic.Pointer[func()]

// SetPollerHookForTest installs h as a hook on every chunk the public listener's pollers read and
// returns a function that removes it. It panics outside tests.
func SetPollerHookForTest(h func()) (restore func()) {
	return setHook(&pollerHook, h, "SetPollerHookForTest")
}

// sweepHook, when set (tests only), runs at the start of every sweep tick, on the sweep goroutine:
// a test can hold the sweep, as slow closes do.
var sweepHook atomic.Pointer[func()]

// SetSweepHookForTest installs h as a hook on every sweep tick and returns a function that
// removes it. It panics outside tests.
func SetSweepHookForTest(h func()) (restore func()) {
	return setHook(&sweepHook, h, "SetSweepHookForTest")
}

// welcomeHook, when set (tests only), runs in a handshake after the Welcome is written and
// before the device is attached, with the device's id; the function it returns (if any) runs
// when the handshake's handler returns. A test can hold a connection there, as a starved
// executor does.
var welcomeHook atomic.Pointer[func(deviceID string) (done func())]

// SetWelcomeHookForTest installs h as a hook between a handshake's Welcome and its attach and
// returns a function that removes it. It panics outside tests.
func SetWelcomeHookForTest(h func(deviceID string) (done func())) (restore func()) {
	return setHook(&welcomeHook, h, "SetWelcomeHookForTest")
}

// setHook installs h in p and returns what removes it; outside tests it panics (name says which
// function was called).
func setHook[T any](p *atomic.Pointer[T], h T, name string) (restore func()) {
	if !testing.Testing() {
		panic("gateway." + name + " called outside a test")
	}
	p.Store(&h)
	return func() { p.Store(nil) }
}
