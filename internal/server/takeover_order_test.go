// Copyright 2026 The Petrel Authors
// SPDX-License-Identifier: Apache-2.0

package server_test

import (
	"testing"

	"github.com/coder/websocket"

	"github.com/petrelchat/petrel/internal/testserver"
)

// Of two connections of a device, the one that authenticated later stays, even when the earlier
// one's attach comes after it (its handler held up between the Welcome and the attach, as a
// starved executor holds it): the late attach is the one taken over. Seen in CI
// (TestCLIErrorMessages): a CLI was told CONNECTED_ELSEWHERE by the late attach of its previous
// process's connection.
func TestLateAttachDoesNotTakeOver(t *testing.T) {
	s := testserver.Start(t)
	reg := testserver.Dial(t, s.URL())
	reg.MustRegister("ursa")
	key := reg.AuthKey
	reg.WS.Close(websocket.StatusNormalClosure, "")

	// A authenticates; its handler is held after the Welcome, before the attach. B authenticates
	// and is attached; then A's handler goes on and attaches.
	a, b := testserver.LateAttach(t, key, s.URL(), s.URL())

	// A, the earlier connection, is the one taken over; B is still served and was never told it.
	a.WantTakenOver("A")
	b.WantStillServed("B, by the late attach of an earlier connection,")
	if v := gauge(t, s.AdminURL(), "petrel_mailbox_takeovers_total"); v != 1 {
		t.Fatalf("petrel_mailbox_takeovers_total = %v, want 1", v)
	}
}
