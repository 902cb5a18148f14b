// Copyright 2026 The Petrel Authors
// SPDX-License-Identifier: Apache-2.0

package testserver

import (
	"bytes"
	"crypto/ed25519"
	"testing"
	"time"

	"github.com/petrelchat/petrel/e2ee"
	pb "github.com/petrelchat/petrel/proto/petrel/v1"
)

// NewDevice is a device made for linking: its auth key, E2EE keys and link offer. The offer's MAC
// and ephemeral key are filler: the server stores them without being able to check them.
type NewDevice struct {
	AuthKey  ed25519.PrivateKey
	DeviceID string
	Keys     *Keys
	Offer    *pb.LinkOffer
}

// MakeNewDevice makes a new device's keys and link offer (n one-time prekeys of each kind).
func MakeNewDevice(t testing.TB, n int) *NewDevice {
	t.Helper()
	_, priv, err := ed25519.GenerateKey(nil)
	if err != nil {
		t.Fatal(err)
	}
	keys, up := NewKeys(t, n)
	pub := priv.Public().(ed25519.PublicKey)
	return &NewDevice{AuthKey: priv, DeviceID: pb.DeviceID(pub), Keys: keys, Offer: &pb.LinkOffer{
		AuthKey: pub, Keys: up, EphemeralKey: bytes.Repeat([]byte{0x4e}, 32), Mac: bytes.Repeat([]byte{0x4d}, 32),
	}}
}

// StartLink sends StartLink for d on c (a fresh connection) and returns the response.
func (c *RawClient) StartLink(d *NewDevice) *pb.Frame {
	c.t.Helper()
	return c.Request(&pb.Frame{Body: &pb.Frame_StartLink{StartLink: &pb.StartLink{
		Offer: d.Offer, Signature: ed25519.Sign(d.AuthKey, pb.AuthPayload(c.Nonce, d.DeviceID)),
	}}})
}

// Listed is one device of a device list to sign.
type Listed struct {
	DeviceID string
	Identity *e2ee.IdentityKeyPair
	Primary  bool
}

// SignDeviceList signs a device list with signer, as a primary device does.
func SignDeviceList(t testing.TB, signer *e2ee.IdentityKeyPair, account string, version uint64, devs ...Listed) *pb.SignedDeviceList {
	t.Helper()
	l := &pb.DeviceList{Account: account, Version: version, CreatedMs: time.Now().UnixMilli()}
	for _, d := range devs {
		l.Devices = append(l.Devices, &pb.ListedDevice{DeviceId: d.DeviceID, IdentityKey: d.Identity.PublicKey().Bytes(), Primary: d.Primary})
	}
	sdl, err := pb.SignDeviceList(signer, l)
	if err != nil {
		t.Fatal(err)
	}
	return sdl
}

// SendOwn sends opaque bytes as one envelope to each listed device of to and one own envelope to
// each of own (the sender's other devices), and returns the answer.
func (c *RawClient) SendOwn(msgID, to string, devices, own []string, body []byte) *pb.Frame {
	c.t.Helper()
	return c.Await(c.SendAsync(msgID, to, devices, own, body))
}

// Account is an account with linked devices, driven through raw connections.
type Account struct {
	t       testing.TB
	Name    string
	Primary *RawClient // the primary's open, authenticated connection
	Version uint64     // the version of the last device list it signed
	Devices []Listed   // the account's devices, the primary first
	// Last is the list of the last approval sent.
	Last *pb.SignedDeviceList
}

// NewAccount registers name on baseURL. The primary's connection stays open, its QueueEmpty read.
func NewAccount(t testing.TB, baseURL, name string) *Account {
	t.Helper()
	p := Dial(t, baseURL)
	p.MustRegister(name)
	if f := p.NextPush(); f.GetQueueEmpty() == nil {
		t.Fatalf("%s: want QueueEmpty first, got %v", name, f)
	}
	return &Account{t: t, Name: name, Primary: p, Devices: []Listed{{DeviceID: p.DeviceID, Identity: p.Identity, Primary: true}}}
}

// List signs the account's devices but those named in without, plus extra, at version.
func (a *Account) List(version uint64, without []string, extra ...Listed) *pb.SignedDeviceList {
	a.t.Helper()
	var devs []Listed
	for _, d := range a.Devices {
		skip := false
		for _, w := range without {
			skip = skip || d.DeviceID == w
		}
		if !skip {
			devs = append(devs, d)
		}
	}
	return SignDeviceList(a.t, a.Primary.Identity, a.Name, version, append(devs, extra...)...)
}

// Approve approves the pending link linkID of d from the primary, and returns the answer. On
// success the account's version and devices follow.
func (a *Account) Approve(linkID string, d *NewDevice, name string) *pb.Frame {
	a.t.Helper()
	entry := Listed{DeviceID: d.DeviceID, Identity: d.Keys.Identity}
	a.Last = a.List(a.Version+1, nil, entry)
	r := a.Primary.Request(&pb.Frame{Body: &pb.Frame_ApproveLink{ApproveLink: &pb.ApproveLink{
		LinkId: linkID, DeviceName: name, DeviceList: a.Last,
		EphemeralKey: bytes.Repeat([]byte{0x50}, 32), SealedApproval: []byte("sealed approval for " + name),
	}}})
	if r.GetDeviceListResult() != nil {
		a.Version++
		a.Devices = append(a.Devices, entry)
	}
	return r
}

// Link links a new device: it starts linking on a fresh connection to waitURL, the primary
// approves, and the waiting connection gets LinkApproved. It returns the new device.
func (a *Account) Link(waitURL, name string) *NewDevice {
	a.t.Helper()
	d := MakeNewDevice(a.t, 3)
	w := Dial(a.t, waitURL)
	started := w.StartLink(d).GetLinkStarted()
	if started == nil {
		a.t.Fatalf("StartLink: no LinkStarted")
	}
	if r := a.Approve(started.GetLinkId(), d, name); r.GetDeviceListResult() == nil {
		a.t.Fatalf("approve %s: %v", name, r)
	}
	if f := w.NextPush(); f.GetLinkApproved().GetDeviceId() != d.DeviceID {
		a.t.Fatalf("waiting device: want LinkApproved, got %v", f)
	}
	return d
}

// Connect authenticates d on a new connection to baseURL and reads up to its QueueEmpty (the
// pushes before it, such as Deliver, stay in Pushes).
func Connect(t testing.TB, baseURL string, d *NewDevice) *RawClient {
	t.Helper()
	c := Dial(t, baseURL)
	if r := c.Auth(d.AuthKey); r.GetWelcome() == nil {
		t.Fatalf("auth %s: %v", d.DeviceID, r)
	}
	c.Identity = d.Keys.Identity
	var before []*pb.Frame
	for {
		f := c.NextPush()
		if f.GetQueueEmpty() != nil {
			break
		}
		before = append(before, f)
	}
	c.Pushes = append(before, c.Pushes...)
	return c
}

// SendAsync writes a Send (one envelope for each of devices, one own envelope for each of own)
// and returns its request id, for Await.
func (c *RawClient) SendAsync(msgID, to string, devices, own []string, body []byte) uint64 {
	c.t.Helper()
	s := &pb.Send{MessageId: msgID, To: to}
	for _, d := range devices {
		s.Envelopes = append(s.Envelopes, &pb.DeviceCiphertext{DeviceId: d, Type: pb.EnvelopeType_ENVELOPE_TYPE_MESSAGE, Ciphertext: body})
	}
	for _, d := range own {
		s.OwnEnvelopes = append(s.OwnEnvelopes, &pb.DeviceCiphertext{DeviceId: d, Type: pb.EnvelopeType_ENVELOPE_TYPE_MESSAGE, Ciphertext: body})
	}
	c.nextID++
	c.Write(&pb.Frame{Id: c.nextID, Body: &pb.Frame_Send{Send: s}})
	return c.nextID
}

// AckNextDeliver reads up to the next Deliver (other pushes stay in Pushes), acks it, and
// returns its envelope.
func (c *RawClient) AckNextDeliver() *pb.Envelope {
	c.t.Helper()
	var d *pb.Deliver
	for i, f := range c.Pushes {
		if d = f.GetDeliver(); d != nil {
			c.Pushes = append(c.Pushes[:i:i], c.Pushes[i+1:]...)
			break
		}
	}
	for d == nil {
		f := c.Read()
		if d = f.GetDeliver(); d == nil {
			c.Pushes = append(c.Pushes, f)
		}
	}
	c.Write(&pb.Frame{Body: &pb.Frame_DeliverAck{DeliverAck: &pb.DeliverAck{Tags: []uint64{d.GetTag()}}}})
	return d.GetEnvelope()
}
