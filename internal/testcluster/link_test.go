// Copyright 2026 The Petrel Authors
// SPDX-License-Identifier: Apache-2.0

package testcluster_test

import (
	"context"
	"testing"
	"time"

	"github.com/nats-io/nats.go/jetstream"
	"google.golang.org/protobuf/proto"

	"github.com/petrelchat/petrel/internal/testcluster"
	"github.com/petrelchat/petrel/internal/testserver"
	pb "github.com/petrelchat/petrel/proto/petrel/v1"
)

// A new device waits on n1 while the primary, on n2, approves it: the approval crosses to n1 over
// the control channel. The linked device then gets its account's messages on n1, and when the
// primary removes it from n2 its connection on n1 is closed with DEVICE_REMOVED and its inbox is
// dropped.
func TestLinkAndRemoveAcrossNodes(t *testing.T) {
	c := testcluster.Start(t, nodes, testcluster.Options{})
	n1, n2, n3 := c.Node(0), c.Node(1), c.Node(2)
	amy := testserver.NewAccount(t, n2.URL(), "amy")
	bob := testserver.NewAccount(t, n3.URL(), "bob")

	d := testserver.MakeNewDevice(t, 3)
	w := testserver.Dial(t, n1.URL())
	linkID := w.StartLink(d).GetLinkStarted().GetLinkId()
	if linkID == "" {
		t.Fatal("no LinkStarted")
	}
	offer := amy.Primary.Request(&pb.Frame{Body: &pb.Frame_GetLinkOffer_{GetLinkOffer_: &pb.GetLinkOffer{LinkId: linkID}}}).GetLinkOffer()
	if offer.GetLinkId() != linkID || !proto.Equal(offer.GetKeys(), d.Offer.GetKeys()) {
		t.Fatalf("offer on n2: %v", offer)
	}
	if r := amy.Approve(linkID, d, "laptop"); len(r.GetDeviceListResult().GetDevices()) != 2 {
		t.Fatalf("approval on n2: %v", r)
	}
	if f := w.NextPush(); f.GetLinkApproved().GetDeviceId() != d.DeviceID || f.GetLinkApproved().GetName() != "amy" {
		t.Fatalf("waiting device on n1: %v", f)
	}
	if f, err := w.ReadErr(10 * time.Second); err == nil {
		t.Fatalf("n1 kept the waiting connection open: %v", f)
	}

	// Bob (n3) writes to both of amy's devices while the laptop is offline: the phone acks live,
	// the laptop's copy is stored.
	id := bob.Primary.SendAsync("b1", "amy", []string{amy.Primary.DeviceID, d.DeviceID}, nil, []byte("hi amy"))
	if e := amy.Primary.AckNextDeliver(); e.GetMessageId() != "b1" {
		t.Fatalf("the phone got %v", e)
	}
	if r := bob.Primary.Await(id); r.GetSendResult() == nil {
		t.Fatalf("bob's send: %v", r)
	}
	b := n1.Server().Bus()
	stored := func() uint64 {
		t.Helper()
		ctx, cancel := context.WithTimeout(context.Background(), 10*time.Second)
		defer cancel()
		subj := b.InboxSubject(d.DeviceID)
		info, err := b.Inbox(b.Shard(d.DeviceID)).Info(ctx, jetstream.WithSubjectFilter(subj))
		if err != nil {
			t.Fatal(err)
		}
		return info.State.Subjects[subj]
	}
	if n := stored(); n != 1 {
		t.Fatalf("the laptop's inbox holds %d, want 1", n)
	}

	// The laptop authenticates on n1 and is given the stored copy; it does not ack it.
	laptop := testserver.Dial(t, n1.URL())
	if r := laptop.Auth(d.AuthKey); r.GetWelcome().GetName() != "amy" {
		t.Fatalf("the linked device's Auth on n1: %v", r)
	}
	if e := laptop.NextPush().GetDeliver().GetEnvelope(); e.GetMessageId() != "b1" || e.GetFrom() != "bob" {
		t.Fatalf("the laptop got %v", e)
	}

	// The primary, on n2, removes it.
	list := amy.List(amy.Version+1, []string{d.DeviceID})
	if r := amy.Primary.Request(&pb.Frame{Body: &pb.Frame_RemoveDevice{RemoveDevice: &pb.RemoveDevice{DeviceId: d.DeviceID, DeviceList: list}}}); len(r.GetDeviceListResult().GetDevices()) != 1 {
		t.Fatalf("removal on n2: %v", r)
	}
	if n := stored(); n != 0 {
		t.Fatalf("the removed laptop's inbox still holds %d", n)
	}
	var kicked bool
	for {
		f, err := laptop.ReadErr(10 * time.Second)
		if err != nil {
			break
		}
		kicked = kicked || f.GetError().GetCode() == pb.ErrorCode_ERROR_CODE_DEVICE_REMOVED
	}
	if !kicked {
		t.Fatal("the laptop on n1 was closed without DEVICE_REMOVED")
	}
	testcluster.WaitFor(t, 10*time.Second, func() error {
		if r := testserver.Dial(t, n3.URL()).Auth(d.AuthKey); r.GetError().GetCode() != pb.ErrorCode_ERROR_CODE_AUTH_FAILED {
			return errString("the removed device still authenticates on n3")
		}
		return nil
	})
}

type errString string

func (e errString) Error() string { return string(e) }
