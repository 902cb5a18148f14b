// Copyright 2026 The Petrel Authors
// SPDX-License-Identifier: Apache-2.0

// Package hostile holds tests that attack a real server as a hostile client would: raw TCP and
// hand-built WebSocket frames that lie, flood, stall and pipeline, with the server's memory and
// its service to well-behaved users measured meanwhile.
package hostile
