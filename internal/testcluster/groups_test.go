// Copyright 2026 The Petrel Authors
// SPDX-License-Identifier: Apache-2.0

package testcluster_test

import (
	"errors"
	"testing"
	"time"

	"github.com/coder/websocket"

	"github.com/petrelchat/petrel/internal/testcluster"
	"github.com/petrelchat/petrel/internal/testserver"
	pb "github.com/petrelchat/petrel/proto/petrel/v1"
)

// A group whose members are on different nodes: the creation and a message reach offline members'
// inboxes (replicated), live members on other nodes get sends from any node, a change made on one
// node is seen by another's group sends.
func TestGroupAcrossNodes(t *testing.T) {
	c := testcluster.Start(t, nodes, testcluster.Options{})
	n1, n2, n3 := c.Node(0), c.Node(1), c.Node(2)

	alice := testserver.Dial(t, n1.URL())
	alice.MustRegister("alice")
	register := func(url, name string) []byte {
		d := testserver.Dial(t, url)
		d.MustRegister(name)
		d.WS.Close(websocket.StatusNormalClosure, "")
		return d.AuthKey
	}
	bobKey, carolKey := register(n2.URL(), "bob"), register(n3.URL(), "carol")

	gid := testserver.NewGroupID(t)
	sge, st := alice.GroupEvent("alice", nil, gid, pb.GroupEventKind_GROUP_EVENT_KIND_CREATE, "bob", "carol")
	if r := alice.CreateGroup(sge); r.GetGroupResult().GetVersion() != 1 {
		t.Fatalf("create on n1: %v", r)
	}
	if r := alice.SendGroup("g1", gid, []byte("stored")); r.GetSendResult() == nil {
		t.Fatalf("send to offline members: %v", r)
	}
	connect := func(url string, key []byte) *testserver.RawClient {
		d := testserver.Dial(t, url)
		if r := d.Auth(key); r.GetWelcome() == nil {
			t.Fatalf("auth: %v", r)
		}
		if e := d.AckNextDeliver(); e.GetType() != pb.EnvelopeType_ENVELOPE_TYPE_GROUP_EVENT || e.GetGroupId() != gid {
			t.Fatalf("want the creation first, got %v", e)
		}
		if e := d.AckNextDeliver(); e.GetMessageId() != "g1" {
			t.Fatalf("want g1, got %v", e)
		}
		return d
	}
	bob, carol := connect(n2.URL(), bobKey), connect(n3.URL(), carolKey)

	// Live sends across nodes, from n1 and from n2.
	id := alice.SendGroupAsync("g2", gid, []byte("live"))
	for _, m := range []*testserver.RawClient{bob, carol} {
		if e := m.AckNextDeliver(); e.GetMessageId() != "g2" || e.GetFrom() != "alice" {
			t.Fatalf("want g2, got %v", e)
		}
	}
	if r := alice.Await(id); r.GetSendResult() == nil {
		t.Fatalf("g2: %v", r)
	}
	id = bob.SendGroupAsync("g3", gid, []byte("from n2"))
	for _, m := range []*testserver.RawClient{alice, carol} {
		if e := m.AckNextDeliver(); e.GetMessageId() != "g3" || e.GetFrom() != "bob" {
			t.Fatalf("want g3, got %v", e)
		}
	}
	if r := bob.Await(id); r.GetSendResult() == nil {
		t.Fatalf("g3: %v", r)
	}

	// carol is removed on n1; her node stops taking her group sends.
	sge, _ = alice.GroupEvent("alice", st, gid, pb.GroupEventKind_GROUP_EVENT_KIND_REMOVE, "carol")
	id = alice.UpdateGroupAsync(sge)
	for _, m := range []*testserver.RawClient{bob, carol} {
		if e := m.AckNextDeliver(); e.GetType() != pb.EnvelopeType_ENVELOPE_TYPE_GROUP_EVENT {
			t.Fatalf("want the removal, got %v", e)
		}
	}
	if r := alice.Await(id); r.GetGroupResult().GetVersion() != 2 {
		t.Fatalf("remove: %v", r)
	}
	n := 0
	testcluster.WaitFor(t, 10*time.Second, func() error {
		n++
		if r := carol.SendGroup("after-"+string(rune('a'+n%26)), gid, []byte("x")); r.GetError().GetCode() != pb.ErrorCode_ERROR_CODE_UNKNOWN_GROUP {
			return errors.New("a removed member's send on n3 is still taken")
		}
		return nil
	})
	if r := carol.GetGroup(gid); r.GetError().GetCode() != pb.ErrorCode_ERROR_CODE_UNKNOWN_GROUP {
		t.Fatalf("removed member's GetGroup on n3: %v", r)
	}
	if r := bob.GetGroup(gid).GetGroupResult(); r.GetVersion() != 2 || len(r.GetMembers()) != 2 {
		t.Fatalf("GetGroup on n2: %v", r)
	}
}
