// Copyright 2026 The Petrel Authors
// SPDX-License-Identifier: Apache-2.0

package testserver

import (
	"crypto/rand"
	"encoding/hex"
	"slices"
	"testing"
	"time"

	pb "github.com/petrelchat/petrel/proto/petrel/v1"
)

// NewGroupID returns a random group id.
func NewGroupID(t testing.TB) string {
	t.Helper()
	var b [16]byte
	if _, err := rand.Read(b[:]); err != nil {
		t.Fatal(err)
	}
	return hex.EncodeToString(b[:])
}

// GroupEvent builds the event of a change by c (account name actor) that follows from prev (nil
// for a creation) by the rules of pb.NextGroupState, and signs it with c's identity key. It
// returns the signed event and the state after it (nil when the rules refuse the change: the
// event then carries prev's members and admins, for tests of refusals).
func (c *RawClient) GroupEvent(actor string, prev *pb.GroupState, gid string, kind pb.GroupEventKind, targets ...string) (*pb.SignedGroupEvent, *pb.GroupState) {
	c.t.Helper()
	ev := &pb.GroupEvent{GroupId: gid, Version: 1, Actor: actor, ActorDevice: c.DeviceID, Kind: kind,
		Targets: targets, CreatedMs: time.Now().UnixMilli()}
	if prev != nil {
		ev.Version = prev.Version + 1
		ev.Members, ev.Admins = prev.Members, prev.Admins
	}
	if g := guessState(prev, ev); g != nil {
		ev.Members, ev.Admins = g.Members, g.Admins
	}
	next, err := pb.NextGroupState(prev, ev, 0)
	if err != nil {
		next = nil
	}
	return c.SignGroupEvent(ev), next
}

// guessState computes the members and admins a change implies (as pb.NextGroupState does, but
// without its checks), independently of it.
func guessState(prev *pb.GroupState, ev *pb.GroupEvent) *pb.GroupState {
	var members, admins []string
	switch ev.Kind {
	case pb.GroupEventKind_GROUP_EVENT_KIND_CREATE:
		members, admins = append(slices.Clone(ev.Targets), ev.Actor), []string{ev.Actor}
	case pb.GroupEventKind_GROUP_EVENT_KIND_ADD:
		if prev == nil {
			return nil
		}
		members, admins = append(slices.Clone(prev.Members), ev.Targets...), slices.Clone(prev.Admins)
	case pb.GroupEventKind_GROUP_EVENT_KIND_REMOVE, pb.GroupEventKind_GROUP_EVENT_KIND_LEAVE:
		if prev == nil {
			return nil
		}
		gone := ev.Targets
		if ev.Kind == pb.GroupEventKind_GROUP_EVENT_KIND_LEAVE {
			gone = []string{ev.Actor}
		}
		for _, m := range prev.Members {
			if !slices.Contains(gone, m) {
				members = append(members, m)
			}
		}
		for _, a := range prev.Admins {
			if !slices.Contains(gone, a) {
				admins = append(admins, a)
			}
		}
		if len(admins) == 0 && len(members) > 0 {
			best, bestSince := "", uint64(0)
			for i, m := range prev.Members {
				if slices.Contains(members, m) && (best == "" || prev.Since[i] < bestSince) {
					best, bestSince = m, prev.Since[i]
				}
			}
			admins = []string{best}
		}
	case pb.GroupEventKind_GROUP_EVENT_KIND_PROMOTE:
		if prev == nil {
			return nil
		}
		members, admins = slices.Clone(prev.Members), append(slices.Clone(prev.Admins), ev.Targets...)
	default:
		return nil
	}
	slices.Sort(members)
	slices.Sort(admins)
	return &pb.GroupState{Members: slices.Compact(members), Admins: slices.Compact(admins)}
}

// SignGroupEvent signs ev with c's identity key.
func (c *RawClient) SignGroupEvent(ev *pb.GroupEvent) *pb.SignedGroupEvent {
	c.t.Helper()
	sge, err := pb.SignGroupEvent(c.Identity, ev)
	if err != nil {
		c.t.Fatalf("sign group event: %v", err)
	}
	return sge
}

// CreateGroup sends CreateGroup with sge and returns the answer.
func (c *RawClient) CreateGroup(sge *pb.SignedGroupEvent) *pb.Frame {
	c.t.Helper()
	return c.Request(&pb.Frame{Body: &pb.Frame_CreateGroup{CreateGroup: &pb.CreateGroup{Event: sge}}})
}

// UpdateGroup sends UpdateGroup with sge and returns the answer.
func (c *RawClient) UpdateGroup(sge *pb.SignedGroupEvent) *pb.Frame {
	c.t.Helper()
	return c.Request(&pb.Frame{Body: &pb.Frame_UpdateGroup{UpdateGroup: &pb.UpdateGroup{Event: sge}}})
}

// GetGroup sends GetGroup and returns the answer.
func (c *RawClient) GetGroup(gid string) *pb.Frame {
	c.t.Helper()
	return c.Request(&pb.Frame{Body: &pb.Frame_GetGroup{GetGroup: &pb.GetGroup{GroupId: gid}}})
}

// SendGroupAsync writes a group Send and returns its request id, for Await.
func (c *RawClient) SendGroupAsync(msgID, gid string, body []byte) uint64 {
	c.t.Helper()
	c.nextID++
	c.Write(&pb.Frame{Id: c.nextID, Body: &pb.Frame_Send{Send: &pb.Send{MessageId: msgID, GroupId: gid, GroupCiphertext: body}}})
	return c.nextID
}

// SendGroup sends a group message and returns the answer.
func (c *RawClient) SendGroup(msgID, gid string, body []byte) *pb.Frame {
	c.t.Helper()
	return c.Await(c.SendGroupAsync(msgID, gid, body))
}

// StateOf is the state a GroupResult describes.
func StateOf(r *pb.GroupResult) *pb.GroupState {
	return &pb.GroupState{GroupID: r.GetGroupId(), Version: r.GetVersion(), Members: r.GetMembers(), Admins: r.GetAdmins(), Since: r.GetMemberSince()}
}

// UpdateGroupAsync writes UpdateGroup with sge and returns its request id, for Await (the answer
// comes once every member device has the event: ack the members' deliveries meanwhile).
func (c *RawClient) UpdateGroupAsync(sge *pb.SignedGroupEvent) uint64 {
	c.t.Helper()
	c.nextID++
	c.Write(&pb.Frame{Id: c.nextID, Body: &pb.Frame_UpdateGroup{UpdateGroup: &pb.UpdateGroup{Event: sge}}})
	return c.nextID
}
