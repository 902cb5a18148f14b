// Copyright 2026 The Petrel Authors
// SPDX-License-Identifier: Apache-2.0

//go:build !js

package client

import (
	"context"

	"github.com/coder/websocket"
	petrelv1 "github.com/petrelchat/petrel/proto/petrel/v1"
)

func dialWebSocket(ctx context.Context, u string) (*websocket.Conn, error) {
	ws, resp, err := websocket.Dial(ctx, u, &websocket.DialOptions{
		Subprotocols: []string{petrelv1.Subprotocol},
		// Ciphertext does not compress, and compressing attacker-chosen bytes next to secrets
		// invites CRIME-style leaks.
		CompressionMode: websocket.CompressionDisabled,
	})
	if resp != nil && resp.Body != nil {
		resp.Body.Close()
	}
	if err != nil && resp != nil && resp.StatusCode != 101 {
		err = &HandshakeStatusError{Code: resp.StatusCode, Err: err}
	}
	return ws, err
}
