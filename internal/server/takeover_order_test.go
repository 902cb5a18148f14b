// Copyright 2026 The Petrel Authors
// SPDX-License-Identifier: Apache-2.0

package server_test

import (
	"sync/atomic"
	"testing"

	"github.com/coder/websocket"

	"github.com/petrelchat/petrel/internal/gateway"
	"github.com/petrelchat/petrel/internal/testserver"
	pb "github.com/petrelchat/petrel/proto/petrel/v1"
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

	var calls atomic.Int32
	held, release, doneA := make(chan struct{}), make(chan struct{}), make(chan struct{})
	defer gateway.SetWelcomeHookForTest(func(string) func() {
		if calls.Add(1) != 1 {
			return nil
		}
		close(held)
		<-release
		return func() { close(doneA) }
	})()

	// A authenticates; its handler is held after the Welcome, before the attach.
	a := testserver.Dial(t, s.URL())
	if w := a.Auth(key); w.GetWelcome() == nil {
		t.Fatalf("A: %v", w)
	}
	<-held
	// B authenticates and is attached; then A's handler goes on and attaches.
	b := testserver.Dial(t, s.URL())
	if w := b.Auth(key); w.GetWelcome() == nil {
		t.Fatalf("B: %v", w)
	}
	close(release)
	<-doneA

	// A, the earlier connection, is the one taken over.
	for {
		f, err := a.ReadErr(10e9)
		if err != nil {
			t.Fatalf("A was not told CONNECTED_ELSEWHERE: %v", err)
		}
		if f.GetError().GetCode() == pb.ErrorCode_ERROR_CODE_CONNECTED_ELSEWHERE {
			break
		}
	}
	// B is still served and was never told it.
	if r := b.Request(&pb.Frame{Body: &pb.Frame_Ping{Ping: &pb.Ping{}}}); r.GetPong() == nil {
		t.Fatalf("B's ping: %v", r)
	}
	for _, f := range b.Pushes {
		if f.GetError().GetCode() == pb.ErrorCode_ERROR_CODE_CONNECTED_ELSEWHERE {
			t.Fatalf("B was taken over by the late attach of an earlier connection: %v", f)
		}
	}
	if v := gauge(t, s.AdminURL(), "petrel_mailbox_takeovers_total"); v != 1 {
		t.Fatalf("petrel_mailbox_takeovers_total = %v, want 1", v)
	}
}
