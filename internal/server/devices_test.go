// Copyright 2026 The Petrel Authors
// SPDX-License-Identifier: Apache-2.0

package server_test

import (
	"bytes"
	"context"
	"testing"
	"time"

	"github.com/coder/websocket"
	"github.com/nats-io/nats.go/jetstream"
	"google.golang.org/protobuf/proto"

	"github.com/petrelchat/petrel/internal/server"
	"github.com/petrelchat/petrel/internal/testserver"
	pb "github.com/petrelchat/petrel/proto/petrel/v1"
)

// pump reads c's frames on a goroutine until the connection ends, acks every Deliver as a device
// does, and passes every frame on, the ones in c.Pushes first. The test must not read c itself
// any more.
func pump(c *testserver.RawClient) <-chan *pb.Frame {
	ch := make(chan *pb.Frame, 64)
	pushed := c.Pushes
	c.Pushes = nil
	go func() {
		defer close(ch)
		for _, f := range pushed {
			ch <- f
		}
		for {
			f, err := c.ReadErr(time.Minute)
			if err != nil {
				return
			}
			if d := f.GetDeliver(); d != nil {
				ack, _ := proto.Marshal(&pb.Frame{Body: &pb.Frame_DeliverAck{DeliverAck: &pb.DeliverAck{Tags: []uint64{d.GetTag()}}}})
				ctx, cancel := context.WithTimeout(context.Background(), 10*time.Second)
				err := c.WS.Write(ctx, websocket.MessageBinary, ack)
				cancel()
				if err != nil {
					return
				}
			}
			ch <- f
		}
	}()
	return ch
}

// nextFrame returns the next frame from ch that want accepts, failing on a closed channel or
// after 10s; the frames it skips are returned too.
func nextFrame(t *testing.T, ch <-chan *pb.Frame, what string, want func(*pb.Frame) bool) *pb.Frame {
	t.Helper()
	timeout := time.After(10 * time.Second)
	for {
		select {
		case f, ok := <-ch:
			if !ok {
				t.Fatalf("connection ended before %s", what)
			}
			if want(f) {
				return f
			}
		case <-timeout:
			t.Fatalf("no %s within 10s", what)
		}
	}
}

func isDeliver(f *pb.Frame) bool { return f.GetDeliver() != nil }

// envelopeOf waits for the next Deliver on ch and returns its envelope.
func envelopeOf(t *testing.T, ch <-chan *pb.Frame) *pb.Envelope {
	t.Helper()
	return nextFrame(t, ch, "a Deliver", isDeliver).GetDeliver().GetEnvelope()
}

func codeOf(f *pb.Frame) pb.ErrorCode { return f.GetError().GetCode() }

// Linking, step by step: start → offer → approve → LinkApproved pushed → the new device
// authenticates and sees the account's devices.
func TestLinkFlow(t *testing.T) {
	s := testserver.Start(t)
	amy := testserver.NewAccount(t, s.URL(), "amy")
	d := testserver.MakeNewDevice(t, 3)
	w := testserver.Dial(t, s.URL())
	before := time.Now()
	started := w.StartLink(d).GetLinkStarted()
	if len(started.GetLinkId()) != 8 {
		t.Fatalf("LinkStarted %v", started)
	}
	if exp := time.UnixMilli(started.GetExpiresMs()); exp.Before(before.Add(4*time.Minute)) || exp.After(time.Now().Add(5*time.Minute+time.Second)) {
		t.Fatalf("link expires at %v, want 5 minutes from now", exp)
	}
	// The waiting connection may ping.
	if r := w.Request(&pb.Frame{Body: &pb.Frame_Ping{Ping: &pb.Ping{ClientTimeMs: 7}}}); r.GetPong().GetClientTimeMs() != 7 {
		t.Fatalf("ping while linking: %v", r)
	}

	offer := amy.Primary.Request(&pb.Frame{Body: &pb.Frame_GetLinkOffer_{GetLinkOffer_: &pb.GetLinkOffer{LinkId: started.GetLinkId()}}}).GetLinkOffer()
	want := proto.Clone(d.Offer).(*pb.LinkOffer)
	want.LinkId = started.GetLinkId()
	if !proto.Equal(offer, want) {
		t.Fatalf("offer %v\nwant %v", offer, want)
	}
	res := amy.Approve(started.GetLinkId(), d, "laptop").GetDeviceListResult()
	if devs := res.GetDevices(); len(devs) != 2 || devs[1].GetDeviceId() != d.DeviceID || devs[1].GetName() != "laptop" || devs[1].GetPrimary() || !devs[0].GetPrimary() {
		t.Fatalf("devices after approval: %v", devs)
	}
	approved := w.NextPush().GetLinkApproved()
	if approved.GetName() != "amy" || approved.GetDeviceId() != d.DeviceID || !bytes.Equal(approved.GetEphemeralKey(), bytes.Repeat([]byte{0x50}, 32)) ||
		string(approved.GetSealedApproval()) != "sealed approval for laptop" {
		t.Fatalf("LinkApproved %v", approved)
	}
	if f, err := w.ReadErr(10 * time.Second); err == nil {
		t.Fatalf("the waiting connection stays open after LinkApproved: %v", f)
	}

	n := testserver.Connect(t, s.URL(), d)
	// The Auth is recorded as the device's last-seen time, a moment later (off the connect path).
	var got *pb.DeviceListResult
	for deadline := time.Now().Add(10 * time.Second); ; {
		got = n.Request(&pb.Frame{Body: &pb.Frame_GetDevices{GetDevices: &pb.GetDevices{}}}).GetDeviceListResult()
		if len(got.GetDevices()) == 2 && got.GetDevices()[1].GetLastSeenMs() >= before.UnixMilli()-time.Hour.Milliseconds() {
			break
		}
		if time.Now().After(deadline) {
			t.Fatalf("the new device's last-seen time is not recorded: %v", got)
		}
		time.Sleep(20 * time.Millisecond) // an update the server does not announce
	}
	got.GetDevices()[1].LastSeenMs = 0
	if !proto.Equal(got, res) {
		t.Fatalf("GetDevices from the new device: %v\nwant %v", got, res)
	}
	if !proto.Equal(got.GetDeviceList(), amy.Last) {
		t.Fatal("the stored list is not the one the primary signed")
	}
	// A used link is gone.
	if r := amy.Primary.Request(&pb.Frame{Body: &pb.Frame_GetLinkOffer_{GetLinkOffer_: &pb.GetLinkOffer{LinkId: started.GetLinkId()}}}); codeOf(r) != pb.ErrorCode_ERROR_CODE_LINK_EXPIRED {
		t.Fatalf("offer of a used link: %v", r)
	}
}

// Own envelopes reach the sender's other devices as the sender's; a stale own list is refused;
// a send to one's own account reaches only the named device; the recipient's list includes
// every linked device.
func TestOwnEnvelopes(t *testing.T) {
	s := testserver.Start(t)
	amy := testserver.NewAccount(t, s.URL(), "amy")
	bob := testserver.NewAccount(t, s.URL(), "bob")
	laptop := amy.Link(s.URL(), "laptop")
	p, bobDev := amy.Primary, bob.Primary.DeviceID
	n := testserver.Connect(t, s.URL(), laptop)
	nFrames := pump(n)
	bobFrames := pump(bob.Primary)

	if r := p.SendOwn("m1", "bob", []string{bobDev}, []string{laptop.DeviceID}, []byte("hello bob")); r.GetSendResult().GetMessageId() != "m1" {
		t.Fatalf("send with own envelopes: %v", r)
	}
	for who, ch := range map[string]<-chan *pb.Frame{"bob": bobFrames, "amy's laptop": nFrames} {
		e := envelopeOf(t, ch)
		if e.GetMessageId() != "m1" || e.GetFrom() != "amy" || e.GetFromDevice() != p.DeviceID || string(e.GetCiphertext()) != "hello bob" {
			t.Fatalf("%s got %v", who, e)
		}
	}
	for _, tc := range []struct {
		name string
		own  []string
		code pb.ErrorCode
	}{
		{"no own envelopes", nil, pb.ErrorCode_ERROR_CODE_STALE_DEVICES},
		{"the sending device", []string{laptop.DeviceID, p.DeviceID}, pb.ErrorCode_ERROR_CODE_INVALID_REQUEST},
		{"a stranger", []string{bobDev}, pb.ErrorCode_ERROR_CODE_UNKNOWN_DEVICE},
	} {
		if r := p.SendOwn("bad", "bob", []string{bobDev}, tc.own, []byte("x")); codeOf(r) != tc.code {
			t.Fatalf("%s: %v, want %v", tc.name, r, tc.code)
		}
	}
	// The laptop sends too: its own copy goes to the phone.
	id := n.SendAsync("m2", "bob", []string{bobDev}, []string{p.DeviceID}, []byte("from the laptop"))
	if e := p.AckNextDeliver(); e.GetMessageId() != "m2" || e.GetFrom() != "amy" || e.GetFromDevice() != laptop.DeviceID {
		t.Fatalf("the phone got %v", e)
	}
	if e := envelopeOf(t, bobFrames); e.GetMessageId() != "m2" || e.GetFromDevice() != laptop.DeviceID {
		t.Fatalf("bob got %v", e)
	}
	if r := nextFrame(t, nFrames, "the laptop's SendResult", func(f *pb.Frame) bool { return f.GetId() == id }); r.GetSendResult() == nil {
		t.Fatalf("the laptop's send: %v", r)
	}

	// Device to device: only the named device gets it.
	if r := p.SendOwn("h1", "amy", []string{laptop.DeviceID}, nil, []byte("history chunk")); r.GetSendResult() == nil {
		t.Fatalf("device-to-device send: %v", r)
	}
	if e := envelopeOf(t, nFrames); e.GetMessageId() != "h1" || e.GetFrom() != "amy" || string(e.GetCiphertext()) != "history chunk" {
		t.Fatalf("the laptop got %v", e)
	}
	if r := p.SendOwn("h2", "amy", []string{p.DeviceID}, nil, []byte("x")); codeOf(r) != pb.ErrorCode_ERROR_CODE_INVALID_REQUEST {
		t.Fatalf("device-to-device send to itself: %v", r)
	}

	// Bob must encrypt for both of amy's devices.
	bobC := testserver.Dial(t, s.URL())
	if r := bobC.Auth(bob.Primary.AuthKey); r.GetWelcome() == nil {
		t.Fatalf("bob again: %v", r)
	}
	if r := bobC.Send("b1", "amy", []string{p.DeviceID}, []byte("x")); codeOf(r) != pb.ErrorCode_ERROR_CODE_STALE_DEVICES {
		t.Fatalf("send to amy's phone only: %v", r)
	}
}

// A linking connection that is not approved gets LINK_EXPIRED at the link's expiry and is closed;
// the node holds at most max_pending_links of them.
func TestLinkExpiryAndBound(t *testing.T) {
	s := testserver.Start(t, testserver.WithConfig(func(c *server.Config) {
		c.LinkTTL.Duration = time.Second
		c.MaxPendingLinks = 2
	}))
	var waiting []*testserver.RawClient
	for range 2 {
		w := testserver.Dial(t, s.URL())
		if r := w.StartLink(testserver.MakeNewDevice(t, 1)); r.GetLinkStarted() == nil {
			t.Fatalf("StartLink: %v", r)
		}
		waiting = append(waiting, w)
	}
	third := testserver.Dial(t, s.URL())
	if r := third.StartLink(testserver.MakeNewDevice(t, 1)); codeOf(r) != pb.ErrorCode_ERROR_CODE_RATE_LIMITED || r.GetError().GetRetryAfterMs() == 0 {
		t.Fatalf("third pending link: %v", r)
	}
	for _, w := range waiting {
		f := w.NextPush()
		if codeOf(f) != pb.ErrorCode_ERROR_CODE_LINK_EXPIRED {
			t.Fatalf("at expiry: %v", f)
		}
		if f, err := w.ReadErr(10 * time.Second); err == nil {
			t.Fatalf("open after LINK_EXPIRED: %v", f)
		}
	}
	// Their slots are free again (given back before LINK_EXPIRED was written).
	if r := third.StartLink(testserver.MakeNewDevice(t, 1)); r.GetLinkStarted() == nil {
		t.Fatalf("StartLink after the others expired: %v", r)
	}
}

// Removing a device closes its connection with DEVICE_REMOVED, drops its inbox, tells the other
// devices, and it can no longer authenticate.
func TestRemoveDevice(t *testing.T) {
	s := testserver.Start(t)
	amy := testserver.NewAccount(t, s.URL(), "amy")
	bob := testserver.NewAccount(t, s.URL(), "bob")
	laptop := amy.Link(s.URL(), "laptop")
	tablet := amy.Link(s.URL(), "tablet") // stays offline: its messages are stored
	all := []string{amy.Primary.DeviceID, laptop.DeviceID, tablet.DeviceID}
	n := testserver.Connect(t, s.URL(), laptop)
	nFrames := pump(n)

	// Bob writes to amy: the phone acks live, the laptop too, the tablet's copy is stored.
	id := bob.Primary.SendAsync("b1", "amy", all, nil, []byte("hi amy"))
	amy.Primary.AckNextDeliver()
	if r := bob.Primary.Await(id); r.GetSendResult() == nil {
		t.Fatalf("bob's send: %v", r)
	}
	envelopeOf(t, nFrames)
	b := s.Server().Bus()
	stored := func(dev string) uint64 {
		t.Helper()
		info, err := b.Inbox(b.Shard(dev)).Info(context.Background(), jetstream.WithSubjectFilter(b.InboxSubject(dev)))
		if err != nil {
			t.Fatal(err)
		}
		return info.State.Subjects[b.InboxSubject(dev)]
	}
	if got := stored(tablet.DeviceID); got != 1 {
		t.Fatalf("the tablet's inbox holds %d, want 1", got)
	}

	// The primary removes the tablet (offline) and then the laptop (online).
	remove := func(dev string) *pb.DeviceListResult {
		t.Helper()
		list := amy.List(amy.Version+1, []string{dev})
		r := amy.Primary.Request(&pb.Frame{Body: &pb.Frame_RemoveDevice{RemoveDevice: &pb.RemoveDevice{DeviceId: dev, DeviceList: list}}})
		if r.GetDeviceListResult() == nil {
			t.Fatalf("remove %s: %v", dev, r)
		}
		amy.Version++
		for i, d := range amy.Devices {
			if d.DeviceID == dev {
				amy.Devices = append(amy.Devices[:i], amy.Devices[i+1:]...)
				break
			}
		}
		return r.GetDeviceListResult()
	}
	res := remove(tablet.DeviceID)
	if len(res.GetDevices()) != 2 {
		t.Fatalf("devices after removing the tablet: %v", res.GetDevices())
	}
	if got := stored(tablet.DeviceID); got != 0 {
		t.Fatalf("the removed tablet's inbox still holds %d", got)
	}
	changed := nextFrame(t, nFrames, "DeviceListChanged", func(f *pb.Frame) bool { return f.GetDeviceListChanged() != nil })
	if !bytes.Equal(changed.GetDeviceListChanged().GetDeviceList().GetList(), res.GetDeviceList().GetList()) {
		t.Fatal("the laptop was pushed another list than the one stored")
	}
	if c := testserver.Dial(t, s.URL()); codeOf(c.Auth(tablet.AuthKey)) != pb.ErrorCode_ERROR_CODE_AUTH_FAILED {
		t.Fatal("the removed tablet still authenticates")
	}

	remove(laptop.DeviceID)
	kick := nextFrame(t, nFrames, "DEVICE_REMOVED", func(f *pb.Frame) bool { return f.GetError() != nil })
	if codeOf(kick) != pb.ErrorCode_ERROR_CODE_DEVICE_REMOVED {
		t.Fatalf("the laptop got %v", kick)
	}
	for range nFrames { // the connection ends
	}
	// Amy is now the phone alone.
	id = bob.Primary.SendAsync("b2", "amy", all[:1], nil, []byte("just the phone"))
	if e := amy.Primary.AckNextDeliver(); e.GetMessageId() != "b2" {
		t.Fatalf("the phone got %v", e)
	}
	if r := bob.Primary.Await(id); r.GetSendResult() == nil {
		t.Fatalf("send to amy's phone: %v", r)
	}
	if r := bob.Primary.SendOwn("b3", "amy", all[:2], nil, []byte("x")); codeOf(r) != pb.ErrorCode_ERROR_CODE_UNKNOWN_DEVICE {
		t.Fatalf("send to the removed laptop: %v", r)
	}
}

// GetDevices answers the account's devices to any of them; a companion may not approve or sign.
func TestDevicesPermissions(t *testing.T) {
	s := testserver.Start(t)
	amy := testserver.NewAccount(t, s.URL(), "amy")
	laptop := amy.Link(s.URL(), "laptop")
	n := testserver.Connect(t, s.URL(), laptop)
	w := testserver.Dial(t, s.URL())
	d := testserver.MakeNewDevice(t, 1)
	id := w.StartLink(d).GetLinkStarted().GetLinkId()
	for name, f := range map[string]*pb.Frame{
		"GetLinkOffer":  {Body: &pb.Frame_GetLinkOffer_{GetLinkOffer_: &pb.GetLinkOffer{LinkId: id}}},
		"ApproveLink":   {Body: &pb.Frame_ApproveLink{ApproveLink: &pb.ApproveLink{LinkId: id, DeviceName: "x", DeviceList: amy.List(amy.Version+1, nil), EphemeralKey: make([]byte, 32), SealedApproval: []byte("s")}}},
		"PutDeviceList": {Body: &pb.Frame_PutDeviceList{PutDeviceList: &pb.PutDeviceList{DeviceList: amy.List(amy.Version+1, nil)}}},
		"RemoveDevice":  {Body: &pb.Frame_RemoveDevice{RemoveDevice: &pb.RemoveDevice{DeviceId: amy.Primary.DeviceID}}},
	} {
		if r := n.Request(f); codeOf(r) != pb.ErrorCode_ERROR_CODE_PERMISSION_DENIED {
			t.Fatalf("%s from a companion: %v", name, r)
		}
	}
	// The link is still usable by the primary.
	if r := amy.Approve(id, d, "tablet"); r.GetDeviceListResult() == nil {
		t.Fatalf("approval after the companion's attempts: %v", r)
	}
	// The primary re-signs the list (PutDeviceList) and the laptop is told.
	r := amy.Primary.Request(&pb.Frame{Body: &pb.Frame_PutDeviceList{PutDeviceList: &pb.PutDeviceList{DeviceList: amy.List(amy.Version+1, nil)}}})
	if r.GetDeviceListResult() == nil {
		t.Fatalf("PutDeviceList: %v", r)
	}
	amy.Version++
	for _, want := range [][]byte{nil, r.GetDeviceListResult().GetDeviceList().GetList()} {
		f := n.NextPush()
		if f.GetDeviceListChanged() == nil {
			t.Fatalf("laptop: want DeviceListChanged, got %v", f)
		}
		if want != nil && !bytes.Equal(f.GetDeviceListChanged().GetDeviceList().GetList(), want) {
			t.Fatal("laptop: pushed another list than the one stored")
		}
	}
	if r := amy.Primary.Request(&pb.Frame{Body: &pb.Frame_PutDeviceList{PutDeviceList: &pb.PutDeviceList{DeviceList: amy.List(amy.Version, nil)}}}); codeOf(r) != pb.ErrorCode_ERROR_CODE_STALE_DEVICES {
		t.Fatalf("a list at the stored version again: %v", r)
	}
	// A companion removes itself: answered, then closed with DEVICE_REMOVED.
	if r := n.Request(&pb.Frame{Body: &pb.Frame_RemoveDevice{RemoveDevice: &pb.RemoveDevice{DeviceId: laptop.DeviceID}}}); r.GetDeviceListResult() == nil {
		t.Fatalf("self-removal: %v", r)
	}
	if f := n.NextPush(); codeOf(f) != pb.ErrorCode_ERROR_CODE_DEVICE_REMOVED {
		t.Fatalf("after self-removal: %v", f)
	}
}
