// Copyright 2026 The Petrel Authors
// SPDX-License-Identifier: Apache-2.0

//go:build !linux

package gateway

import "github.com/petrelchat/petrel/third_party/nbio"

// socketUnread is unknown (0) off Linux: a connection past idle_timeout is closed.
func socketUnread(*nbio.Conn) int { return 0 }
