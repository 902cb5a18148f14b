// Copyright 2026 The Petrel Authors
// SPDX-License-Identifier: Apache-2.0

//go:build js

package client

import (
	"context"

	"github.com/coder/websocket"
	petrelv1 "github.com/petrelchat/petrel/proto/petrel/v1"
)

// In the browser the WebSocket API negotiates compression itself.
func dialWebSocket(ctx context.Context, u string) (*websocket.Conn, error) {
	ws, _, err := websocket.Dial(ctx, u, &websocket.DialOptions{
		Subprotocols: []string{petrelv1.Subprotocol},
	})
	return ws, err
}
