// Copyright 2026 The Petrel Authors
// SPDX-License-Identifier: Apache-2.0

// Package hostile holds tests that attack a real server as a hostile client would: raw WebSocket
// and protobuf clients that lie, flood, stall and pipeline against an in-process server
// (internal/testserver), asserting the server's bounds and that other users keep being served.
package hostile
