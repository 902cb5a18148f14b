// Copyright 2026 The Petrel Authors
// SPDX-License-Identifier: Apache-2.0

package testserver

import (
	"net/http"
	"testing"

	pb "github.com/petrelchat/petrel/proto/petrel/v1"
)

// UpgradeRequest is a bare WebSocket upgrade request to base's connect path, as a client sends
// it, for tests that look at the HTTP answer (a refusal's status and Retry-After) themselves.
func UpgradeRequest(base string) *http.Request {
	req, err := http.NewRequest(http.MethodGet, base+pb.ConnectPath, nil)
	if err != nil {
		panic(err) // base is a test server's URL
	}
	req.Header.Set("Connection", "Upgrade")
	req.Header.Set("Upgrade", "websocket")
	req.Header.Set("Sec-WebSocket-Version", "13")
	req.Header.Set("Sec-WebSocket-Key", "dGhlIHNhbXBsZSBub25jZQ==")
	req.Header.Set("Sec-WebSocket-Protocol", pb.Subprotocol)
	return req
}

// UpgradeStatus is the HTTP status of an upgrade request to base (101 when accepted; the
// connection is then closed).
func UpgradeStatus(t testing.TB, base string) int {
	t.Helper()
	resp, err := http.DefaultClient.Do(UpgradeRequest(base))
	if err != nil {
		t.Fatal(err)
	}
	resp.Body.Close()
	return resp.StatusCode
}
