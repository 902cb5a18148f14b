// Copyright 2026 The Petrel Authors
// SPDX-License-Identifier: Apache-2.0

package testserver

import (
	"context"
	"net"
	"net/http"
	"strings"
	"testing"
	"time"

	"github.com/coder/websocket"

	pb "github.com/petrelchat/petrel/proto/petrel/v1"
)

// DialFrom is Dial with the connection's source address set to localIP, a loopback address such
// as 127.0.0.2 (Linux answers for all of 127.0.0.0/8), so that tests can act as several peers.
func DialFrom(t testing.TB, baseURL, localIP string) *RawClient {
	t.Helper()
	d := &net.Dialer{LocalAddr: &net.TCPAddr{IP: net.ParseIP(localIP)}}
	return dial(t, baseURL, &http.Client{Transport: &http.Transport{DialContext: d.DialContext}})
}

// DialWSFrom opens a WebSocket to the server's connect path from localIP (any loopback address)
// and returns it before reading anything. The caller closes it.
func DialWSFrom(baseURL, localIP string) (*websocket.Conn, error) {
	ctx, cancel := context.WithTimeout(context.Background(), 10*time.Second)
	defer cancel()
	d := &net.Dialer{LocalAddr: &net.TCPAddr{IP: net.ParseIP(localIP)}}
	hc := &http.Client{Transport: &http.Transport{DialContext: d.DialContext}}
	u := strings.Replace(baseURL, "http", "ws", 1) + pb.ConnectPath
	ws, _, err := websocket.Dial(ctx, u, &websocket.DialOptions{Subprotocols: []string{pb.Subprotocol}, HTTPClient: hc})
	if err != nil {
		return nil, err
	}
	ws.SetReadLimit(8 << 20)
	return ws, nil
}
