// Copyright 2026 The Petrel Authors
// SPDX-License-Identifier: Apache-2.0

// Package hostile holds tests that attack a real server as a hostile client would: raw WebSocket
// and protobuf clients that lie, flood, stall and pipeline, against servers started with
// internal/testserver on loopback. Each test asserts a bound (memory, time, keys spent) and that
// other users keep being served meanwhile. It has no non-test code.
package hostile
