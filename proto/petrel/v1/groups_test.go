// Copyright 2026 The Petrel Authors
// SPDX-License-Identifier: Apache-2.0

package petrelv1_test

import (
	"errors"
	"slices"
	"testing"

	"github.com/petrelchat/petrel/e2ee"
	pb "github.com/petrelchat/petrel/proto/petrel/v1"
)

const gid = "0123456789abcdef0123456789abcdef"

func state(version uint64, members, admins []string, since []uint64) *pb.GroupState {
	return &pb.GroupState{GroupID: gid, Version: version, Members: members, Admins: admins, Since: since}
}

func ev(version uint64, actor string, kind pb.GroupEventKind, targets, members, admins []string) *pb.GroupEvent {
	return &pb.GroupEvent{GroupId: gid, Version: version, Actor: actor, ActorDevice: gid, Kind: kind,
		Targets: targets, Members: members, Admins: admins}
}

func l(s ...string) []string { return s }

// The transition rules, case by case: what each change implies, and why one is refused.
func TestNextGroupState(t *testing.T) {
	g := state(3, l("amy", "bob", "cat", "dan"), l("dan"), []uint64{3, 1, 1, 1})
	cases := []struct {
		name        string
		prev        *pb.GroupState
		ev          *pb.GroupEvent
		max         int
		err         error
		members     []string
		admins      []string
		since       []uint64
		wantVersion uint64
	}{
		{name: "create", ev: ev(1, "zed", pb.GroupEventKind_GROUP_EVENT_KIND_CREATE, l("bob", "amy"), l("amy", "bob", "zed"), l("zed")),
			members: l("amy", "bob", "zed"), admins: l("zed"), since: []uint64{1, 1, 1}},
		{name: "create alone", ev: ev(1, "zed", pb.GroupEventKind_GROUP_EVENT_KIND_CREATE, nil, l("zed"), l("zed")),
			members: l("zed"), admins: l("zed"), since: []uint64{1}},
		{name: "create of an existing group", prev: g, ev: ev(1, "zed", pb.GroupEventKind_GROUP_EVENT_KIND_CREATE, nil, l("zed"), l("zed")), err: pb.ErrStaleGroupEvent},
		{name: "create at version 2", ev: ev(2, "zed", pb.GroupEventKind_GROUP_EVENT_KIND_CREATE, nil, l("zed"), l("zed")), err: pb.ErrStaleGroupEvent},
		{name: "create naming the creator", ev: ev(1, "zed", pb.GroupEventKind_GROUP_EVENT_KIND_CREATE, l("zed"), l("zed"), l("zed")), err: pb.ErrInvalidGroupEvent},
		{name: "create over the limit", max: 2, ev: ev(1, "zed", pb.GroupEventKind_GROUP_EVENT_KIND_CREATE, l("bob", "amy"), l("amy", "bob", "zed"), l("zed")), err: pb.ErrGroupFull},
		{name: "create, admins wrong", ev: ev(1, "zed", pb.GroupEventKind_GROUP_EVENT_KIND_CREATE, l("amy"), l("amy", "zed"), l("amy", "zed")), err: pb.ErrInvalidGroupEvent},
		{name: "add", prev: g, ev: ev(4, "dan", pb.GroupEventKind_GROUP_EVENT_KIND_ADD, l("eve", "abe"), l("abe", "amy", "bob", "cat", "dan", "eve"), l("dan")),
			members: l("abe", "amy", "bob", "cat", "dan", "eve"), admins: l("dan"), since: []uint64{4, 3, 1, 1, 1, 4}},
		{name: "add by a member", prev: g, ev: ev(4, "bob", pb.GroupEventKind_GROUP_EVENT_KIND_ADD, l("eve"), l("amy", "bob", "cat", "dan", "eve"), l("dan")), err: pb.ErrNotGroupAdmin},
		{name: "add by an outsider", prev: g, ev: ev(4, "eve", pb.GroupEventKind_GROUP_EVENT_KIND_ADD, l("eve"), l("amy", "bob", "cat", "dan", "eve"), l("dan")), err: pb.ErrNotGroupMember},
		{name: "add a member", prev: g, ev: ev(4, "dan", pb.GroupEventKind_GROUP_EVENT_KIND_ADD, l("amy"), l("amy", "bob", "cat", "dan"), l("dan")), err: pb.ErrInvalidGroupEvent},
		{name: "add past the limit", prev: g, max: 4, ev: ev(4, "dan", pb.GroupEventKind_GROUP_EVENT_KIND_ADD, l("eve"), l("amy", "bob", "cat", "dan", "eve"), l("dan")), err: pb.ErrGroupFull},
		{name: "add at the current version", prev: g, ev: ev(3, "dan", pb.GroupEventKind_GROUP_EVENT_KIND_ADD, l("eve"), l("amy", "bob", "cat", "dan", "eve"), l("dan")), err: pb.ErrStaleGroupEvent},
		{name: "add to no group", ev: ev(4, "dan", pb.GroupEventKind_GROUP_EVENT_KIND_ADD, l("eve"), l("dan", "eve"), l("dan")), err: pb.ErrNotGroupMember},
		{name: "add, members missing one", prev: g, ev: ev(4, "dan", pb.GroupEventKind_GROUP_EVENT_KIND_ADD, l("eve"), l("amy", "bob", "cat", "dan"), l("dan")), err: pb.ErrInvalidGroupEvent},
		{name: "remove an admin", prev: state(3, l("amy", "bob"), l("amy", "bob"), []uint64{1, 1}), ev: ev(4, "amy", pb.GroupEventKind_GROUP_EVENT_KIND_REMOVE, l("bob"), l("amy"), l("amy")),
			members: l("amy"), admins: l("amy"), since: []uint64{1}},
		{name: "remove oneself", prev: g, ev: ev(4, "dan", pb.GroupEventKind_GROUP_EVENT_KIND_REMOVE, l("dan"), l("amy", "bob", "cat"), l("amy")), err: pb.ErrInvalidGroupEvent},
		{name: "remove an outsider", prev: g, ev: ev(4, "dan", pb.GroupEventKind_GROUP_EVENT_KIND_REMOVE, l("eve"), l("amy", "bob", "cat", "dan"), l("dan")), err: pb.ErrInvalidGroupEvent},
		{name: "promote", prev: g, ev: ev(4, "dan", pb.GroupEventKind_GROUP_EVENT_KIND_PROMOTE, l("bob", "amy"), l("amy", "bob", "cat", "dan"), l("amy", "bob", "dan")),
			members: l("amy", "bob", "cat", "dan"), admins: l("amy", "bob", "dan"), since: []uint64{3, 1, 1, 1}},
		{name: "promote an admin", prev: g, ev: ev(4, "dan", pb.GroupEventKind_GROUP_EVENT_KIND_PROMOTE, l("dan"), l("amy", "bob", "cat", "dan"), l("dan")), err: pb.ErrInvalidGroupEvent},
		// The last admin leaves: the member with the smallest since; among bob, cat (both 1) the
		// smaller name. amy comes first by name but joined last.
		{name: "last admin leaves", prev: g, ev: ev(4, "dan", pb.GroupEventKind_GROUP_EVENT_KIND_LEAVE, nil, l("amy", "bob", "cat"), l("bob")),
			members: l("amy", "bob", "cat"), admins: l("bob"), since: []uint64{3, 1, 1}},
		{name: "last admin leaves, another promoted", prev: g, ev: ev(4, "dan", pb.GroupEventKind_GROUP_EVENT_KIND_LEAVE, nil, l("amy", "bob", "cat"), l("amy")), err: pb.ErrInvalidGroupEvent},
		{name: "a member leaves", prev: g, ev: ev(4, "amy", pb.GroupEventKind_GROUP_EVENT_KIND_LEAVE, nil, l("bob", "cat", "dan"), l("dan")),
			members: l("bob", "cat", "dan"), admins: l("dan"), since: []uint64{1, 1, 1}},
		{name: "an admin leaves, another stays", prev: state(5, l("amy", "bob"), l("amy", "bob"), []uint64{1, 2}), ev: ev(6, "amy", pb.GroupEventKind_GROUP_EVENT_KIND_LEAVE, nil, l("bob"), l("bob")),
			members: l("bob"), admins: l("bob"), since: []uint64{2}},
		{name: "the last member leaves", prev: state(5, l("amy"), l("amy"), []uint64{1}), ev: ev(6, "amy", pb.GroupEventKind_GROUP_EVENT_KIND_LEAVE, nil, nil, nil),
			members: nil, admins: nil, since: nil},
		{name: "another group's event", prev: &pb.GroupState{GroupID: "ffffffffffffffffffffffffffffffff", Version: 3, Members: l("dan"), Admins: l("dan"), Since: []uint64{1}},
			ev: ev(4, "dan", pb.GroupEventKind_GROUP_EVENT_KIND_LEAVE, nil, nil, nil), err: pb.ErrInvalidGroupEvent},
	}
	for _, tc := range cases {
		t.Run(tc.name, func(t *testing.T) {
			next, err := pb.NextGroupState(tc.prev, tc.ev, tc.max)
			if tc.err != nil {
				if !errors.Is(err, tc.err) {
					t.Fatalf("got %v, want %v", err, tc.err)
				}
				return
			}
			if err != nil {
				t.Fatal(err)
			}
			if !slices.Equal(next.Members, tc.members) || !slices.Equal(next.Admins, tc.admins) || !slices.Equal(next.Since, tc.since) || next.Version != tc.ev.Version {
				t.Fatalf("got %+v", next)
			}
		})
	}
}

// A signed event round-trips; a changed byte, another key or a non-canonical encoding does not.
func TestGroupEventSignature(t *testing.T) {
	k, err := e2ee.GenerateIdentityKeyPair(nil)
	if err != nil {
		t.Fatal(err)
	}
	other, _ := e2ee.GenerateIdentityKeyPair(nil)
	e := ev(1, "zed", pb.GroupEventKind_GROUP_EVENT_KIND_CREATE, l("amy"), l("amy", "zed"), l("zed"))
	sge, err := pb.SignGroupEvent(k, e)
	if err != nil {
		t.Fatal(err)
	}
	if _, err := pb.ParseGroupEvent(sge); err != nil {
		t.Fatal(err)
	}
	if err := pb.VerifyGroupEvent(k.PublicKey().Bytes(), sge); err != nil {
		t.Fatal(err)
	}
	if err := pb.VerifyGroupEvent(other.PublicKey().Bytes(), sge); !errors.Is(err, pb.ErrGroupEventSignature) {
		t.Fatalf("another key: %v", err)
	}
	changed := &pb.SignedGroupEvent{Event: append([]byte(nil), sge.Event...), Signature: sge.Signature}
	changed.Event[len(changed.Event)-1] ^= 1
	if err := pb.VerifyGroupEvent(k.PublicKey().Bytes(), changed); !errors.Is(err, pb.ErrGroupEventSignature) {
		t.Fatalf("a changed byte: %v", err)
	}
	// Signed under another context (a device list's), the same bytes do not verify.
	sig, _ := k.Sign(e2ee.DeviceListContext, sge.Event)
	if err := pb.VerifyGroupEvent(k.PublicKey().Bytes(), &pb.SignedGroupEvent{Event: sge.Event, Signature: sig}); !errors.Is(err, pb.ErrGroupEventSignature) {
		t.Fatalf("another context: %v", err)
	}
	// Shape refusals.
	for name, e := range map[string]*pb.GroupEvent{
		"bad id":          {GroupId: "XYZ", Version: 1, Actor: "zed", ActorDevice: gid, Kind: pb.GroupEventKind_GROUP_EVENT_KIND_CREATE, Members: l("zed"), Admins: l("zed")},
		"version 0":       {GroupId: gid, Actor: "zed", ActorDevice: gid, Kind: pb.GroupEventKind_GROUP_EVENT_KIND_CREATE, Members: l("zed"), Admins: l("zed")},
		"leave targets":   {GroupId: gid, Version: 2, Actor: "zed", ActorDevice: gid, Kind: pb.GroupEventKind_GROUP_EVENT_KIND_LEAVE, Targets: l("amy")},
		"add no targets":  {GroupId: gid, Version: 2, Actor: "zed", ActorDevice: gid, Kind: pb.GroupEventKind_GROUP_EVENT_KIND_ADD},
		"twice a target":  {GroupId: gid, Version: 2, Actor: "zed", ActorDevice: gid, Kind: pb.GroupEventKind_GROUP_EVENT_KIND_ADD, Targets: l("amy", "amy")},
		"admin no member": {GroupId: gid, Version: 2, Actor: "zed", ActorDevice: gid, Kind: pb.GroupEventKind_GROUP_EVENT_KIND_LEAVE, Members: l("amy"), Admins: l("bob")},
		"unknown kind":    {GroupId: gid, Version: 2, Actor: "zed", ActorDevice: gid, Kind: 9},
		"bad actor":       {GroupId: gid, Version: 2, Actor: "Zed", ActorDevice: gid, Kind: pb.GroupEventKind_GROUP_EVENT_KIND_LEAVE},
	} {
		if _, err := pb.SignGroupEvent(k, e); !errors.Is(err, pb.ErrInvalidGroupEvent) {
			t.Errorf("%s: %v", name, err)
		}
	}
}

// Recipients of an event: every member before and after it.
func TestGroupEventRecipients(t *testing.T) {
	if got := pb.GroupEventRecipients(ev(4, "dan", pb.GroupEventKind_GROUP_EVENT_KIND_REMOVE, l("bob"), l("amy", "dan"), l("dan"))); !slices.Equal(got, l("amy", "bob", "dan")) {
		t.Fatalf("remove: %v", got)
	}
	if got := pb.GroupEventRecipients(ev(4, "dan", pb.GroupEventKind_GROUP_EVENT_KIND_LEAVE, nil, l("amy"), l("amy"))); !slices.Equal(got, l("amy", "dan")) {
		t.Fatalf("leave: %v", got)
	}
	if got := pb.GroupEventRecipients(ev(4, "dan", pb.GroupEventKind_GROUP_EVENT_KIND_ADD, l("eve"), l("dan", "eve"), l("dan"))); !slices.Equal(got, l("dan", "eve")) {
		t.Fatalf("add: %v", got)
	}
}
