// Copyright 2026 The Petrel Authors
// SPDX-License-Identifier: Apache-2.0

package server_test

import (
	"testing"
	"time"

	"github.com/coder/websocket"

	"github.com/petrelchat/petrel/internal/testserver"
	pb "github.com/petrelchat/petrel/proto/petrel/v1"
)

// Group sends with ephemeral set (typing in a group) reach the member devices connected now and
// are never stored; group sends with expires_at_ms carry it to every member device and are
// stored with it (one already past is acked and not stored; one too far ahead is refused).
func TestGroupEphemeralAndExpiry(t *testing.T) {
	s := testserver.Start(t)
	alice, bob := account(t, s.URL(), "alice"), account(t, s.URL(), "bob")
	carol := testserver.NewAccount(t, s.URL(), "carol")
	carolDev, carolKey := carol.Primary.DeviceID, carol.Primary.AuthKey
	carol.Primary.WS.Close(websocket.StatusNormalClosure, "")
	gid := testserver.NewGroupID(t)
	alice.mustApply(nil, gid, kCreate, "bob", "carol")
	if e := bob.envelope(); e.GetType() != pb.EnvelopeType_ENVELOPE_TYPE_GROUP_EVENT {
		t.Fatalf("bob: want the creation, got %v", e)
	}
	if n := inboxCount(t, s.Server(), carolDev); n != 1 {
		t.Fatalf("carol's inbox holds %d, want the creation", n)
	}

	send := func(id string, mod func(*pb.Send)) *pb.Frame {
		snd := &pb.Send{MessageId: id, GroupId: gid, GroupCiphertext: []byte("ct " + id)}
		mod(snd)
		return alice.request(&pb.Frame{Body: &pb.Frame_Send{Send: snd}})
	}
	if r := send("typing1", func(s *pb.Send) { s.Ephemeral = true }); r.GetSendResult().GetMessageId() != "typing1" {
		t.Fatalf("ephemeral group send: %v", r)
	}
	if e := bob.envelope(); e.GetMessageId() != "typing1" || e.GetType() != pb.EnvelopeType_ENVELOPE_TYPE_GROUP || e.GetGroupId() != gid {
		t.Fatalf("bob: want the ephemeral group envelope, got %v", e)
	}
	if r := send("typing2", func(s *pb.Send) { s.Ephemeral = true; s.GroupId = testserver.NewGroupID(t) }); r.GetError().GetCode() != pb.ErrorCode_ERROR_CODE_UNKNOWN_GROUP {
		t.Fatalf("ephemeral send to a group alice is not in: %v", r)
	}

	later := time.Now().Add(time.Hour).UnixMilli()
	if r := send("later", func(s *pb.Send) { s.ExpiresAtMs = later }); r.GetSendResult() == nil {
		t.Fatalf("send with expiry: %v", r)
	}
	if e := bob.envelope(); e.GetMessageId() != "later" || e.GetExpiresAtMs() != later {
		t.Fatalf("bob: want the message with its expiry, got %v", e)
	}
	if r := send("past", func(s *pb.Send) { s.ExpiresAtMs = time.Now().Add(-time.Minute).UnixMilli() }); r.GetSendResult() == nil {
		t.Fatalf("send already expired: %v", r)
	}
	if r := send("far", func(s *pb.Send) { s.ExpiresAtMs = time.Now().Add(400 * 24 * time.Hour).UnixMilli() }); r.GetError().GetCode() != pb.ErrorCode_ERROR_CODE_INVALID_REQUEST {
		t.Fatalf("expiry 400 days ahead: %v", r)
	}
	// Carol's inbox: the creation and "later" (not the typing, not the expired one).
	if n := inboxCount(t, s.Server(), carolDev); n != 2 {
		t.Fatalf("carol's inbox holds %d envelopes, want 2", n)
	}
	c, delivered := reconnect(t, s.URL(), carolKey)
	if delivered != 2 {
		t.Fatalf("carol got %d stored envelopes, want 2", delivered)
	}
	if e := c.AckNextDeliver(); e.GetType() != pb.EnvelopeType_ENVELOPE_TYPE_GROUP_EVENT {
		t.Fatalf("carol: want the creation, got %v", e)
	}
	if e := c.AckNextDeliver(); e.GetMessageId() != "later" || e.GetExpiresAtMs() != later {
		t.Fatalf("carol: want the message with its expiry, got %v", e)
	}
}
