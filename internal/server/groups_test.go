// Copyright 2026 The Petrel Authors
// SPDX-License-Identifier: Apache-2.0

package server_test

import (
	"bytes"
	"slices"
	"testing"

	"github.com/coder/websocket"
	"google.golang.org/protobuf/proto"

	"github.com/petrelchat/petrel/internal/server"
	"github.com/petrelchat/petrel/internal/testserver"
	pb "github.com/petrelchat/petrel/proto/petrel/v1"
)

// gdev is a device driven by a test: its frames are pumped (every Deliver acked at once), requests
// wait for their answer, and the envelopes delivered meanwhile are kept in order.
type gdev struct {
	t    *testing.T
	name string
	c    *testserver.RawClient
	ch   <-chan *pb.Frame
	id   uint64
	got  []*pb.Envelope
}

func newGdev(t *testing.T, name string, c *testserver.RawClient) *gdev {
	return &gdev{t: t, name: name, c: c, ch: pump(c), id: 1 << 20}
}

// account registers name and pumps its primary.
func account(t *testing.T, url, name string) *gdev {
	t.Helper()
	return newGdev(t, name, testserver.NewAccount(t, url, name).Primary)
}

func (d *gdev) request(f *pb.Frame) *pb.Frame {
	d.t.Helper()
	d.id++
	f.Id = d.id
	d.c.Write(f)
	return d.await(f.Id)
}

func (d *gdev) await(id uint64) *pb.Frame {
	d.t.Helper()
	r := nextFrame(d.t, d.ch, d.name+"'s answer", func(f *pb.Frame) bool {
		if e := f.GetDeliver().GetEnvelope(); e != nil {
			d.got = append(d.got, e)
		}
		return f.GetId() == id
	})
	return r
}

// envelope returns the next envelope delivered to d.
func (d *gdev) envelope() *pb.Envelope {
	d.t.Helper()
	if len(d.got) > 0 {
		e := d.got[0]
		d.got = d.got[1:]
		return e
	}
	return envelopeOf(d.t, d.ch)
}

func (d *gdev) create(sge *pb.SignedGroupEvent) *pb.Frame {
	return d.request(&pb.Frame{Body: &pb.Frame_CreateGroup{CreateGroup: &pb.CreateGroup{Event: sge}}})
}

func (d *gdev) update(sge *pb.SignedGroupEvent) *pb.Frame {
	return d.request(&pb.Frame{Body: &pb.Frame_UpdateGroup{UpdateGroup: &pb.UpdateGroup{Event: sge}}})
}

func (d *gdev) get(gid string) *pb.Frame {
	return d.request(&pb.Frame{Body: &pb.Frame_GetGroup{GetGroup: &pb.GetGroup{GroupId: gid}}})
}

func (d *gdev) sendGroup(msgID, gid string, body []byte) *pb.Frame {
	return d.request(&pb.Frame{Body: &pb.Frame_Send{Send: &pb.Send{MessageId: msgID, GroupId: gid, GroupCiphertext: body}}})
}

// send1 sends a 1:1 message to the listed devices of to.
func (d *gdev) send1(msgID, to string, devices ...string) *pb.Frame {
	s := &pb.Send{MessageId: msgID, To: to}
	for _, dev := range devices {
		s.Envelopes = append(s.Envelopes, &pb.DeviceCiphertext{DeviceId: dev, Type: pb.EnvelopeType_ENVELOPE_TYPE_MESSAGE, Ciphertext: []byte(msgID)})
	}
	return d.request(&pb.Frame{Body: &pb.Frame_Send{Send: s}})
}

// event makes d's signed event for a change of prev (nil: a creation).
func (d *gdev) event(prev *pb.GroupState, gid string, kind pb.GroupEventKind, targets ...string) (*pb.SignedGroupEvent, *pb.GroupState) {
	return d.c.GroupEvent(d.name, prev, gid, kind, targets...)
}

// mustApply applies d's change and returns the state after it.
func (d *gdev) mustApply(prev *pb.GroupState, gid string, kind pb.GroupEventKind, targets ...string) *pb.GroupState {
	d.t.Helper()
	sge, want := d.event(prev, gid, kind, targets...)
	var r *pb.Frame
	if kind == pb.GroupEventKind_GROUP_EVENT_KIND_CREATE {
		r = d.create(sge)
	} else {
		r = d.update(sge)
	}
	res := r.GetGroupResult()
	if res == nil {
		d.t.Fatalf("%s %v %v: %v", d.name, kind, targets, r)
	}
	if want == nil || !slices.Equal(res.GetMembers(), want.Members) || !slices.Equal(res.GetAdmins(), want.Admins) ||
		res.GetVersion() != want.Version || !slices.Equal(res.GetMemberSince(), want.Since) || !proto.Equal(res.GetLastEvent(), sge) {
		d.t.Fatalf("%s %v %v: result %v, want %+v", d.name, kind, targets, res, want)
	}
	return testserver.StateOf(res)
}

// wantEvent checks that d's next envelope is the group event sge from actor.
func (d *gdev) wantEvent(actor *gdev, gid string, sge *pb.SignedGroupEvent) {
	d.t.Helper()
	e := d.envelope()
	b, _ := proto.Marshal(sge)
	if e.GetType() != pb.EnvelopeType_ENVELOPE_TYPE_GROUP_EVENT || e.GetGroupId() != gid || e.GetFrom() != actor.name ||
		e.GetFromDevice() != actor.c.DeviceID || !bytes.Equal(e.GetCiphertext(), b) {
		d.t.Fatalf("%s: want the group event of %s, got %v", d.name, actor.name, e)
	}
	got := &pb.SignedGroupEvent{}
	if err := proto.Unmarshal(e.GetCiphertext(), got); err != nil || pb.VerifyGroupEvent(actor.c.Identity.PublicKey().Bytes(), got) != nil {
		d.t.Fatalf("%s: the delivered event does not verify: %v", d.name, err)
	}
}

// lastEvent is the signed event of a state's version, as the actor's answer carried it: read
// through GetGroup by a member.
func lastEvent(t *testing.T, member *gdev, gid string) *pb.SignedGroupEvent {
	t.Helper()
	return member.get(gid).GetGroupResult().GetLastEvent()
}

func wantCode(t *testing.T, what string, f *pb.Frame, code pb.ErrorCode) {
	t.Helper()
	if codeOf(f) != code {
		t.Fatalf("%s: want %v, got %v", what, code, f)
	}
	if f.GetError().GetMessage() == "" {
		t.Fatalf("%s: an error without its text", what)
	}
}

const (
	kCreate  = pb.GroupEventKind_GROUP_EVENT_KIND_CREATE
	kAdd     = pb.GroupEventKind_GROUP_EVENT_KIND_ADD
	kRemove  = pb.GroupEventKind_GROUP_EVENT_KIND_REMOVE
	kLeave   = pb.GroupEventKind_GROUP_EVENT_KIND_LEAVE
	kPromote = pb.GroupEventKind_GROUP_EVENT_KIND_PROMOTE
)

// Membership through a real server: create, add, promote, remove, leave (the last admin's leave
// promotes the longest-standing member, not the first by name), each event delivered to every
// member before and after it; the refusals of non-admins, stale versions and outsiders.
func TestGroupMembership(t *testing.T) {
	s := testserver.Start(t)
	alice, bob, carol, aaron := account(t, s.URL(), "alice"), account(t, s.URL(), "bob"), account(t, s.URL(), "carol"), account(t, s.URL(), "aaron")
	gid := testserver.NewGroupID(t)

	st := alice.mustApply(nil, gid, kCreate, "bob", "carol")
	if r := alice.get(gid).GetGroupResult(); !slices.Equal(r.GetMemberDevices(), []uint32{1, 1, 1}) || !slices.Equal(r.GetMemberSince(), []uint64{1, 1, 1}) {
		t.Fatalf("GetGroup after create: %v", r)
	}
	created := lastEvent(t, alice, gid)
	bob.wantEvent(alice, gid, created)
	carol.wantEvent(alice, gid, created)

	// Only admins add; versions must be current + 1; outsiders know nothing.
	sge, _ := bob.event(st, gid, kAdd, "aaron")
	wantCode(t, "a non-admin adds", bob.update(sge), pb.ErrorCode_ERROR_CODE_PERMISSION_DENIED)
	sge, _ = aaron.event(st, gid, kLeave)
	wantCode(t, "an outsider leaves", aaron.update(sge), pb.ErrorCode_ERROR_CODE_UNKNOWN_GROUP)
	wantCode(t, "an outsider's GetGroup", aaron.get(gid), pb.ErrorCode_ERROR_CODE_UNKNOWN_GROUP)
	stale := *st
	stale.Version = 0 // the event claims version 1 again
	sge, _ = alice.event(&stale, gid, kAdd, "aaron")
	wantCode(t, "a stale version", alice.update(sge), pb.ErrorCode_ERROR_CODE_STALE_GROUP)
	ahead := *st
	ahead.Version = 5
	sge, _ = alice.event(&ahead, gid, kAdd, "aaron")
	wantCode(t, "a version ahead", alice.update(sge), pb.ErrorCode_ERROR_CODE_STALE_GROUP)
	sge, _ = alice.event(nil, gid, kCreate, "aaron")
	wantCode(t, "a second creation of the id", alice.create(sge), pb.ErrorCode_ERROR_CODE_STALE_GROUP)
	sge, _ = alice.event(st, gid, kAdd, "nobody")
	wantCode(t, "adding an account that does not exist", alice.update(sge), pb.ErrorCode_ERROR_CODE_UNKNOWN_USER)

	// aaron joins at version 2: alphabetically first, but the newest member.
	st = alice.mustApply(st, gid, kAdd, "aaron")
	added := lastEvent(t, alice, gid)
	for _, m := range []*gdev{bob, carol, aaron} {
		m.wantEvent(alice, gid, added)
	}
	// Sending the same event again is answered as applied (a retry) and changes nothing.
	if r := alice.update(added).GetGroupResult(); r.GetVersion() != 2 {
		t.Fatalf("the last event again: %v", r)
	}
	for _, m := range []*gdev{bob, carol, aaron} {
		m.wantEvent(alice, gid, added) // delivered again: receivers drop duplicates by message id
	}

	st = alice.mustApply(st, gid, kPromote, "bob")
	promoted := lastEvent(t, alice, gid)
	for _, m := range []*gdev{bob, carol, aaron} {
		m.wantEvent(alice, gid, promoted)
	}
	if !slices.Equal(st.Admins, []string{"alice", "bob"}) {
		t.Fatalf("admins after promote: %v", st.Admins)
	}

	// An admin removes an admin; the removed member gets the event and then nothing.
	st = bob.mustApply(st, gid, kRemove, "alice")
	removed := lastEvent(t, bob, gid)
	for _, m := range []*gdev{alice, carol, aaron} {
		m.wantEvent(bob, gid, removed)
	}
	wantCode(t, "a removed member's GetGroup", alice.get(gid), pb.ErrorCode_ERROR_CODE_UNKNOWN_GROUP)
	wantCode(t, "a removed member's send", alice.sendGroup("after-removal", gid, []byte("x")), pb.ErrorCode_ERROR_CODE_UNKNOWN_GROUP)
	sge, _ = alice.event(st, gid, kAdd, "alice")
	wantCode(t, "a removed admin adds itself back", alice.update(sge), pb.ErrorCode_ERROR_CODE_UNKNOWN_GROUP)

	// The last admin leaves: carol (member since 1) becomes the admin, not aaron (since 2).
	st = bob.mustApply(st, gid, kLeave)
	if !slices.Equal(st.Admins, []string{"carol"}) || !slices.Equal(st.Members, []string{"aaron", "carol"}) {
		t.Fatalf("after the last admin left: members %v admins %v", st.Members, st.Admins)
	}
	left := lastEvent(t, carol, gid)
	carol.wantEvent(bob, gid, left)
	aaron.wantEvent(bob, gid, left)

	// ListGroups names the group for members only.
	lists := func(d *gdev) bool {
		r := d.request(&pb.Frame{Body: &pb.Frame_ListGroups{ListGroups: &pb.ListGroups{}}}).GetGroupList()
		for _, g := range r.GetGroups() {
			if g.GetGroupId() == gid {
				if g.GetVersion() != st.Version || !slices.Equal(g.GetMembers(), st.Members) {
					t.Fatalf("%s lists %v", d.name, g)
				}
				return true
			}
		}
		return false
	}
	if !lists(carol) || !lists(aaron) || lists(bob) || lists(alice) {
		t.Fatal("ListGroups: want the group listed for carol and aaron only")
	}
	// alice is added again: she starts anew (member since the event that adds her).
	st = carol.mustApply(st, gid, kAdd, "alice")
	if i, _ := slices.BinarySearch(st.Members, "alice"); st.Since[i] != st.Version || !lists(alice) {
		t.Fatalf("alice added again: since %v", st.Since)
	}
}

// Forged and malformed events are refused, and refusals change nothing.
func TestGroupForgedEvents(t *testing.T) {
	s := testserver.Start(t)
	alice, bob := account(t, s.URL(), "alice"), account(t, s.URL(), "bob")
	gid := testserver.NewGroupID(t)
	st := alice.mustApply(nil, gid, kCreate, "bob")
	bob.envelope() // the creation

	base := func() *pb.GroupEvent {
		return &pb.GroupEvent{GroupId: gid, Version: 2, Actor: "alice", ActorDevice: alice.c.DeviceID, Kind: kPromote,
			Targets: []string{"bob"}, Members: []string{"alice", "bob"}, Admins: []string{"alice", "bob"}, CreatedMs: 1}
	}
	sign := func(d *gdev, ev *pb.GroupEvent) *pb.SignedGroupEvent { return d.c.SignGroupEvent(ev) }
	cases := []struct {
		name string
		by   *gdev
		sge  func() *pb.SignedGroupEvent
		code pb.ErrorCode
	}{
		{"signed by another key", alice, func() *pb.SignedGroupEvent { return sign(bob, base()) }, pb.ErrorCode_ERROR_CODE_INVALID_REQUEST},
		{"signature of other bytes", alice, func() *pb.SignedGroupEvent {
			sge := sign(alice, base())
			ev := base()
			ev.CreatedMs = 2
			sge.Event, _ = proto.MarshalOptions{Deterministic: true}.Marshal(ev)
			return sge
		}, pb.ErrorCode_ERROR_CODE_INVALID_REQUEST},
		{"actor is another account", bob, func() *pb.SignedGroupEvent { return sign(bob, base()) }, pb.ErrorCode_ERROR_CODE_PERMISSION_DENIED},
		{"actor device not the connection's", bob, func() *pb.SignedGroupEvent {
			ev := base()
			ev.Actor, ev.Kind, ev.Targets, ev.Admins = "bob", kLeave, nil, []string{"alice"}
			ev.Members = []string{"alice"}
			return sign(bob, ev) // actor_device is alice's
		}, pb.ErrorCode_ERROR_CODE_PERMISSION_DENIED},
		{"admins do not follow", alice, func() *pb.SignedGroupEvent {
			ev := base()
			ev.Admins = []string{"alice"}
			return sign(alice, ev)
		}, pb.ErrorCode_ERROR_CODE_INVALID_REQUEST},
		{"members do not follow", alice, func() *pb.SignedGroupEvent {
			ev := base()
			ev.Kind, ev.Targets, ev.Admins = kAdd, []string{"carol"}, []string{"alice"}
			return sign(alice, ev) // members lack carol
		}, pb.ErrorCode_ERROR_CODE_INVALID_REQUEST},
		{"members unsorted", alice, func() *pb.SignedGroupEvent {
			ev := base()
			ev.Members = []string{"bob", "alice"}
			b, _ := proto.MarshalOptions{Deterministic: true}.Marshal(ev)
			sig, _ := alice.c.Identity.Sign(pb.GroupEventContext, b)
			return &pb.SignedGroupEvent{Event: b, Signature: sig}
		}, pb.ErrorCode_ERROR_CODE_INVALID_REQUEST},
		{"not the deterministic encoding", alice, func() *pb.SignedGroupEvent {
			b, _ := proto.MarshalOptions{Deterministic: true}.Marshal(base())
			b = append(b, protoVarintField(9, 1)...) // created_ms twice: parses, not canonical
			sig, _ := alice.c.Identity.Sign(pb.GroupEventContext, b)
			return &pb.SignedGroupEvent{Event: b, Signature: sig}
		}, pb.ErrorCode_ERROR_CODE_INVALID_REQUEST},
		{"wrong version", alice, func() *pb.SignedGroupEvent {
			ev := base()
			ev.Version = 3
			return sign(alice, ev)
		}, pb.ErrorCode_ERROR_CODE_STALE_GROUP},
		{"a creation through UpdateGroup", alice, func() *pb.SignedGroupEvent {
			sge, _ := alice.event(nil, testserver.NewGroupID(t), kCreate, "bob")
			return sge
		}, pb.ErrorCode_ERROR_CODE_INVALID_REQUEST},
		{"bad group id", alice, func() *pb.SignedGroupEvent {
			ev := base()
			ev.GroupId = "ABC"
			b, _ := proto.MarshalOptions{Deterministic: true}.Marshal(ev)
			sig, _ := alice.c.Identity.Sign(pb.GroupEventContext, b)
			return &pb.SignedGroupEvent{Event: b, Signature: sig}
		}, pb.ErrorCode_ERROR_CODE_INVALID_REQUEST},
		{"no event", alice, func() *pb.SignedGroupEvent { return nil }, pb.ErrorCode_ERROR_CODE_INVALID_REQUEST},
	}
	for _, tc := range cases {
		t.Run(tc.name, func(t *testing.T) {
			tc.by.t = t
			wantCode(t, tc.name, tc.by.update(tc.sge()), tc.code)
		})
	}
	alice.t, bob.t = t, t
	// Nothing changed: the version is still 1, and the valid change still applies.
	if r := bob.get(gid).GetGroupResult(); r.GetVersion() != 1 {
		t.Fatalf("after the refusals: %v", r)
	}
	alice.mustApply(st, gid, kPromote, "bob")
}

// protoVarintField encodes one varint field.
func protoVarintField(num, v uint64) []byte {
	return []byte{byte(num<<3 | 0), byte(v)}
}

// A group send reaches every device of every member (the sender's other devices included) with
// the same bytes, and not the sending device, non-members or removed members; the sender is
// acked after every device has it.
func TestGroupSend(t *testing.T) {
	s := testserver.Start(t)
	aliceAcc := testserver.NewAccount(t, s.URL(), "alice")
	laptopDev := aliceAcc.Link(s.URL(), "laptop")
	laptop := newGdev(t, "alice", testserver.Connect(t, s.URL(), laptopDev))
	alice := newGdev(t, "alice", aliceAcc.Primary)
	bob, carol, eve := account(t, s.URL(), "bob"), account(t, s.URL(), "carol"), account(t, s.URL(), "eve")
	gid := testserver.NewGroupID(t)
	st := alice.mustApply(nil, gid, kCreate, "bob", "carol")
	for _, m := range []*gdev{laptop, bob, carol} {
		if e := m.envelope(); e.GetType() != pb.EnvelopeType_ENVELOPE_TYPE_GROUP_EVENT {
			t.Fatalf("%s: want the creation, got %v", m.name, e)
		}
	}

	if r := laptop.get(gid).GetGroupResult(); !slices.Equal(r.GetMemberDevices(), []uint32{2, 1, 1}) {
		t.Fatalf("member_devices: %v", r)
	}
	if r := alice.sendGroup("m1", gid, []byte("sender-key ciphertext")); r.GetSendResult().GetMessageId() != "m1" {
		t.Fatalf("group send: %v", r)
	}
	var first []byte
	for _, m := range []*gdev{laptop, bob, carol} {
		e := m.envelope()
		if e.GetType() != pb.EnvelopeType_ENVELOPE_TYPE_GROUP || e.GetGroupId() != gid || e.GetMessageId() != "m1" ||
			e.GetFrom() != "alice" || e.GetFromDevice() != alice.c.DeviceID || string(e.GetCiphertext()) != "sender-key ciphertext" {
			t.Fatalf("%s got %v", m.name, e)
		}
		b, _ := proto.Marshal(e)
		if first == nil {
			first = b
		} else if !bytes.Equal(b, first) {
			t.Fatalf("%s got other bytes than the first member", m.name)
		}
	}
	// Neither the sending device nor eve got it: the next envelope each gets is a later marker.
	wantMarker := func(d *gdev, marker string) {
		t.Helper()
		if e := d.envelope(); e.GetMessageId() != marker {
			t.Fatalf("%s: want the marker %s next, got %v", d.name, marker, e)
		}
	}
	bob.send1("mark-eve", "eve", eve.c.DeviceID)
	wantMarker(eve, "mark-eve")
	bob.send1("mark-alice", "alice", alice.c.DeviceID, laptop.c.DeviceID)
	wantMarker(alice, "mark-alice")
	wantMarker(laptop, "mark-alice")

	// A non-member's send, a malformed one.
	wantCode(t, "a non-member's send", eve.sendGroup("m2", gid, []byte("x")), pb.ErrorCode_ERROR_CODE_UNKNOWN_GROUP)
	wantCode(t, "a send to no group", eve.sendGroup("m2", testserver.NewGroupID(t), []byte("x")), pb.ErrorCode_ERROR_CODE_UNKNOWN_GROUP)
	wantCode(t, "a group send with envelopes", eve.request(&pb.Frame{Body: &pb.Frame_Send{Send: &pb.Send{MessageId: "m3", GroupId: gid, GroupCiphertext: []byte("x"), To: "bob"}}}),
		pb.ErrorCode_ERROR_CODE_INVALID_REQUEST)
	wantCode(t, "an empty group ciphertext", bob.sendGroup("m4", gid, nil), pb.ErrorCode_ERROR_CODE_INVALID_REQUEST)

	// After carol's removal a send reaches bob and alice's devices, not carol.
	alice.mustApply(st, gid, kRemove, "carol")
	for _, m := range []*gdev{laptop, bob, carol} {
		if e := m.envelope(); e.GetType() != pb.EnvelopeType_ENVELOPE_TYPE_GROUP_EVENT {
			t.Fatalf("%s: want the removal, got %v", m.name, e)
		}
	}
	if r := bob.sendGroup("m5", gid, []byte("after")); r.GetSendResult() == nil {
		t.Fatalf("send after removal: %v", r)
	}
	wantMarker(alice, "m5")
	wantMarker(laptop, "m5")
	bob.send1("mark-carol", "carol", carol.c.DeviceID)
	wantMarker(carol, "mark-carol")
}

// Members offline: the send is acked once every inbox has it; a restarted server still holds it,
// and each member gets it when it connects.
func TestGroupSendStoredForOfflineMembers(t *testing.T) {
	s := testserver.Start(t)
	alice := account(t, s.URL(), "alice")
	type off struct {
		name string
		key  []byte
	}
	var offline []off
	var names []string
	for _, n := range []string{"m1", "m2", "m3"} {
		a := testserver.NewAccount(t, s.URL(), n)
		offline = append(offline, off{n, a.Primary.AuthKey})
		names = append(names, n)
		a.Primary.WS.Close(websocket.StatusNormalClosure, "")
	}
	gid := testserver.NewGroupID(t)
	alice.mustApply(nil, gid, kCreate, names...)
	if r := alice.sendGroup("stored", gid, []byte("for the inboxes")); r.GetSendResult() == nil {
		t.Fatalf("send to offline members: %v", r)
	}
	s.Restart(t)
	for _, o := range offline {
		c := testserver.Dial(t, s.URL())
		if r := c.Auth(o.key); r.GetWelcome() == nil {
			t.Fatalf("%s: auth %v", o.name, r)
		}
		if e := c.AckNextDeliver(); e.GetType() != pb.EnvelopeType_ENVELOPE_TYPE_GROUP_EVENT {
			t.Fatalf("%s: want the creation first, got %v", o.name, e)
		}
		if e := c.AckNextDeliver(); e.GetMessageId() != "stored" || e.GetGroupId() != gid {
			t.Fatalf("%s: want the group message, got %v", o.name, e)
		}
	}
}

// A group has at most max_group_members members: a creation or an addition past it is GROUP_FULL.
func TestGroupFull(t *testing.T) {
	s := testserver.Start(t, testserver.WithConfig(func(c *server.Config) { c.MaxGroupMembers = 3 }))
	alice := account(t, s.URL(), "alice")
	for _, n := range []string{"b1", "b2", "b3"} {
		account(t, s.URL(), n)
	}
	sge, _ := alice.event(nil, testserver.NewGroupID(t), kCreate, "b1", "b2", "b3")
	wantCode(t, "a creation with 4 members", alice.create(sge), pb.ErrorCode_ERROR_CODE_GROUP_FULL)
	gid := testserver.NewGroupID(t)
	st := alice.mustApply(nil, gid, kCreate, "b1", "b2")
	sge, _ = alice.event(st, gid, kAdd, "b3")
	wantCode(t, "an addition past the limit", alice.update(sge), pb.ErrorCode_ERROR_CODE_GROUP_FULL)
	st = alice.mustApply(st, gid, kRemove, "b2")
	alice.mustApply(st, gid, kAdd, "b3")
}

// Group frames are rate-limited per device.
func TestGroupFramesRateLimited(t *testing.T) {
	s := testserver.Start(t)
	alice := account(t, s.URL(), "alice")
	limited := false
	for range 200 {
		if r := alice.get(testserver.NewGroupID(t)); codeOf(r) == pb.ErrorCode_ERROR_CODE_RATE_LIMITED {
			if r.GetError().GetRetryAfterMs() == 0 {
				t.Fatalf("RATE_LIMITED without a retry hint: %v", r)
			}
			limited = true
			break
		} else if codeOf(r) != pb.ErrorCode_ERROR_CODE_UNKNOWN_GROUP {
			t.Fatalf("GetGroup of an unknown group: %v", r)
		}
	}
	if !limited {
		t.Fatal("200 GetGroup frames in a row were never rate-limited")
	}
}

// The ack rule: a group send is acked only when every member device has it. One member's full
// inbox fails the send (INBOX_FULL, not acked) while the other members still get it.
func TestGroupSendNotAckedUnlessEveryDeviceHasIt(t *testing.T) {
	s := testserver.Start(t, testserver.WithConfig(func(c *server.Config) { c.InboxMaxPerDevice, c.InboxMaxPerSender = 3, 3 }))
	alice, bob := account(t, s.URL(), "alice"), account(t, s.URL(), "bob")
	full := testserver.NewAccount(t, s.URL(), "full")
	full.Primary.WS.Close(websocket.StatusNormalClosure, "")
	gid := testserver.NewGroupID(t)
	alice.mustApply(nil, gid, kCreate, "bob", "full") // full's inbox: 1
	bob.envelope()
	for i, id := range []string{"a", "b"} { // full's inbox: 2, 3
		if r := alice.sendGroup(id, gid, []byte(id)); r.GetSendResult() == nil {
			t.Fatalf("send %d: %v", i, r)
		}
		if e := bob.envelope(); e.GetMessageId() != id {
			t.Fatalf("bob: want %s, got %v", id, e)
		}
	}
	wantCode(t, "a send that one inbox cannot take", alice.sendGroup("c", gid, []byte("c")), pb.ErrorCode_ERROR_CODE_INBOX_FULL)
	if e := bob.envelope(); e.GetMessageId() != "c" {
		t.Fatalf("bob: want c (the others still get it), got %v", e)
	}
}
