// Copyright 2026 The Petrel Authors
// SPDX-License-Identifier: Apache-2.0

package hostile

import (
	"bytes"
	"context"
	"testing"
	"time"

	"github.com/coder/websocket"

	"github.com/petrelchat/petrel/internal/bus"
	"github.com/petrelchat/petrel/internal/server"
	"github.com/petrelchat/petrel/internal/testserver"
	pb "github.com/petrelchat/petrel/proto/petrel/v1"
)

// closedAfter reads c until the server closes it (10 s at most) and returns the frames read.
func closedAfter(t *testing.T, c *testserver.RawClient) []*pb.Frame {
	t.Helper()
	var got []*pb.Frame
	deadline := time.Now().Add(10 * time.Second)
	for {
		f, err := c.ReadErr(max(time.Until(deadline), time.Millisecond))
		if err != nil {
			if time.Now().After(deadline) {
				t.Fatalf("still open after 10s; read %v", got)
			}
			return got
		}
		got = append(got, f)
	}
}

// A connection waiting for its link may ping; any other frame — a handshake, a request, a second
// StartLink, junk — is refused NOT_AUTHENTICATED and the connection is closed.
func TestHostileFramesWhileLinking(t *testing.T) {
	s := testserver.Start(t)
	amy := testserver.NewAccount(t, s.URL(), "amy")
	for _, tc := range []struct {
		name string
		raw  []byte
		mt   websocket.MessageType
		f    *pb.Frame
	}{
		{name: "Register", f: &pb.Frame{Id: 9, Body: &pb.Frame_Register{Register: &pb.Register{Name: "eve"}}}},
		{name: "Auth as the primary", f: &pb.Frame{Id: 9, Body: &pb.Frame_Auth{Auth: &pb.Auth{DeviceId: amy.Primary.DeviceID}}}},
		{name: "another StartLink", f: &pb.Frame{Id: 9, Body: &pb.Frame_StartLink{StartLink: &pb.StartLink{}}}},
		{name: "Send", f: &pb.Frame{Id: 9, Body: &pb.Frame_Send{Send: &pb.Send{MessageId: "m", To: "amy"}}}},
		{name: "GetDevices", f: &pb.Frame{Id: 9, Body: &pb.Frame_GetDevices{GetDevices: &pb.GetDevices{}}}},
		{name: "ApproveLink", f: &pb.Frame{Id: 9, Body: &pb.Frame_ApproveLink{ApproveLink: &pb.ApproveLink{LinkId: "AAAAAAAA"}}}},
		{name: "GetBundle", f: &pb.Frame{Id: 9, Body: &pb.Frame_GetBundle{GetBundle: &pb.GetBundle{Name: "amy"}}}},
		{name: "malformed", raw: []byte{0xff, 0xff, 0xff}, mt: websocket.MessageBinary},
		{name: "text", raw: []byte("hello"), mt: websocket.MessageText},
	} {
		t.Run(tc.name, func(t *testing.T) {
			w := testserver.Dial(t, s.URL())
			if r := w.StartLink(testserver.MakeNewDevice(t, 1)); r.GetLinkStarted() == nil {
				t.Fatalf("StartLink: %v", r)
			}
			if tc.f != nil {
				w.Write(tc.f)
			} else {
				ctx, cancel := context.WithTimeout(context.Background(), 10*time.Second)
				if err := w.WS.Write(ctx, tc.mt, tc.raw); err != nil {
					t.Fatal(err)
				}
				cancel()
			}
			got := closedAfter(t, w)
			if len(got) != 1 || got[0].GetError().GetCode() != pb.ErrorCode_ERROR_CODE_NOT_AUTHENTICATED {
				t.Fatalf("got %v, want one NOT_AUTHENTICATED and the close", got)
			}
		})
	}
	// Its slot was given back: the pending-link gauge is back to zero.
	testserverWaitGauge(t, s, "petrel_gateway_pending_links", 0)
}

// testserverWaitGauge waits until the server's gauge has value want.
func testserverWaitGauge(t *testing.T, s *testserver.Server, name string, want float64) {
	t.Helper()
	deadline := time.Now().Add(10 * time.Second)
	for {
		mfs, err := s.Server().Metrics().Gather()
		if err != nil {
			t.Fatal(err)
		}
		for _, mf := range mfs {
			if mf.GetName() == name && len(mf.GetMetric()) == 1 && mf.GetMetric()[0].GetGauge().GetValue() == want {
				return
			}
		}
		if time.Now().After(deadline) {
			t.Fatalf("%s is not %v within 10s", name, want)
		}
		time.Sleep(10 * time.Millisecond) // the server notices a close on its own time
	}
}

// Only the account's primary sees or approves an offer: a companion gets PERMISSION_DENIED, and
// the link stays usable. An unknown or malformed link id is LINK_EXPIRED and reaches no subject.
func TestHostileApprovals(t *testing.T) {
	s := testserver.Start(t)
	amy := testserver.NewAccount(t, s.URL(), "amy")
	laptop := amy.Link(s.URL(), "laptop")
	comp := testserver.Connect(t, s.URL(), laptop)

	// Watch every link subject: an approval that reaches none publishes nothing.
	sub, err := s.Server().Bus().Conn().SubscribeSync(bus.LinkSubjects)
	if err != nil {
		t.Fatal(err)
	}
	defer sub.Unsubscribe()

	w := testserver.Dial(t, s.URL())
	d := testserver.MakeNewDevice(t, 1)
	id := w.StartLink(d).GetLinkStarted().GetLinkId()
	approve := func(c *testserver.RawClient, linkID string) *pb.Frame {
		return c.Request(&pb.Frame{Body: &pb.Frame_ApproveLink{ApproveLink: &pb.ApproveLink{
			LinkId: linkID, DeviceName: "evil", DeviceList: amy.List(amy.Version+1, nil, testserver.Listed{DeviceID: d.DeviceID, Identity: d.Keys.Identity}),
			EphemeralKey: bytes.Repeat([]byte{1}, 32), SealedApproval: []byte("x"),
		}}})
	}
	if r := comp.Request(&pb.Frame{Body: &pb.Frame_GetLinkOffer_{GetLinkOffer_: &pb.GetLinkOffer{LinkId: id}}}); r.GetError().GetCode() != pb.ErrorCode_ERROR_CODE_PERMISSION_DENIED {
		t.Fatalf("offer to a companion: %v", r)
	}
	if r := approve(comp, id); r.GetError().GetCode() != pb.ErrorCode_ERROR_CODE_PERMISSION_DENIED || r.GetError().GetMessage() != "approve from your primary device" {
		t.Fatalf("approval by a companion: %v", r)
	}
	for _, bad := range []string{"ZZZZZZZZ", "link.*", "*", ">", "AAAA.AAA", "", "AAAAAAAAA"} {
		if r := approve(amy.Primary, bad); r.GetError().GetCode() != pb.ErrorCode_ERROR_CODE_LINK_EXPIRED {
			t.Fatalf("approval of link %q: %v", bad, r)
		}
	}
	if m, err := sub.NextMsg(100 * time.Millisecond); err == nil {
		t.Fatalf("a refused approval published on %s", m.Subject)
	}
	// The waiting device was not touched by any of it, and its link still works.
	if r := amy.Approve(id, d, "tablet"); r.GetDeviceListResult() == nil {
		t.Fatalf("approval by the primary: %v", r)
	}
	if f := w.NextPush(); f.GetLinkApproved().GetDeviceId() != d.DeviceID {
		t.Fatalf("waiting device: %v", f)
	}
	if m, err := sub.NextMsg(10 * time.Second); err != nil || m.Subject != bus.LinkSubject(id) {
		t.Fatalf("the approval's control message: %v, %v", m, err)
	}
}

// StartLink spends the per-address budget as Register does, and the node-wide bound of pending
// link connections holds against many addresses' worth of them.
func TestHostileStartLinkFlood(t *testing.T) {
	s := testserver.Start(t, testserver.WithConfig(func(c *server.Config) {
		c.RegistrationIPLimitLoopback = true
		c.RegistrationIPBurst, c.RegistrationsPerIPPerMinute = 3, 0.01
	}))
	for i := range 4 {
		w := testserver.Dial(t, s.URL())
		r := w.StartLink(testserver.MakeNewDevice(t, 1))
		switch {
		case i < 3 && r.GetLinkStarted() == nil:
			t.Fatalf("StartLink %d: %v", i, r)
		case i == 3 && r.GetError().GetCode() != pb.ErrorCode_ERROR_CODE_RATE_LIMITED:
			t.Fatalf("StartLink past the address's budget: %v", r)
		}
	}
}
