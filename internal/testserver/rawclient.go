// Copyright 2026 The Petrel Authors
// SPDX-License-Identifier: Apache-2.0

package testserver

import (
	"context"
	"crypto/ed25519"
	"fmt"
	"net/http"
	"strings"
	"testing"
	"time"

	"github.com/coder/websocket"
	"google.golang.org/protobuf/proto"

	"github.com/petrelchat/petrel/e2ee"
	pb "github.com/petrelchat/petrel/proto/petrel/v1"
)

// RawClient speaks the wire protocol frame by frame, for tests of the server's handling of good
// and bad input. It is not the SDK.
type RawClient struct {
	t        testing.TB
	WS       *websocket.Conn
	Nonce    []byte
	AuthKey  ed25519.PrivateKey
	DeviceID string
	Identity *e2ee.IdentityKeyPair
	nextID   uint64
	// Pushes holds frames with id 0 read while waiting for a response.
	Pushes []*pb.Frame
}

// Dial connects to the server and reads its Challenge.
func Dial(t testing.TB, baseURL string) *RawClient {
	t.Helper()
	return dial(t, baseURL, nil)
}

func dial(t testing.TB, baseURL string, hc *http.Client) *RawClient {
	t.Helper()
	ctx, cancel := context.WithTimeout(context.Background(), 10*time.Second)
	defer cancel()
	u := strings.Replace(baseURL, "http", "ws", 1) + pb.ConnectPath
	ws, _, err := websocket.Dial(ctx, u, &websocket.DialOptions{Subprotocols: []string{pb.Subprotocol}, HTTPClient: hc})
	if err != nil {
		t.Fatalf("dial %s: %v", u, err)
	}
	ws.SetReadLimit(8 << 20)
	c := &RawClient{t: t, WS: ws}
	t.Cleanup(func() { ws.CloseNow() })
	f := c.Read()
	ch := f.GetChallenge()
	if ch == nil || len(ch.GetNonce()) != pb.NonceSize {
		t.Fatalf("first frame is not a challenge: %v", f)
	}
	c.Nonce = ch.GetNonce()
	return c
}

// Read reads one frame (failing the test after 10s).
func (c *RawClient) Read() *pb.Frame {
	c.t.Helper()
	f, err := c.ReadErr(10 * time.Second)
	if err != nil {
		c.t.Fatalf("read frame: %v", err)
	}
	return f
}

// ReadErr reads one frame or returns the error (including a timeout).
func (c *RawClient) ReadErr(timeout time.Duration) (*pb.Frame, error) {
	ctx, cancel := context.WithTimeout(context.Background(), timeout)
	defer cancel()
	_, b, err := c.WS.Read(ctx)
	if err != nil {
		return nil, err
	}
	f := &pb.Frame{}
	if err := proto.Unmarshal(b, f); err != nil {
		return nil, fmt.Errorf("server sent a malformed frame: %w", err)
	}
	return f, nil
}

// WriteRaw sends bytes as one binary message.
func (c *RawClient) WriteRaw(b []byte) {
	c.t.Helper()
	ctx, cancel := context.WithTimeout(context.Background(), 10*time.Second)
	defer cancel()
	if err := c.WS.Write(ctx, websocket.MessageBinary, b); err != nil {
		c.t.Fatalf("write: %v", err)
	}
}

// Write sends a frame.
func (c *RawClient) Write(f *pb.Frame) {
	c.t.Helper()
	b, err := proto.Marshal(f)
	if err != nil {
		c.t.Fatal(err)
	}
	c.WriteRaw(b)
}

// Request sends f with a fresh id and returns the response with that id; pushes read meanwhile
// are kept in Pushes.
func (c *RawClient) Request(f *pb.Frame) *pb.Frame {
	c.t.Helper()
	c.nextID++
	f.Id = c.nextID
	c.Write(f)
	return c.Await(f.Id)
}

// Await reads until the response with id arrives.
func (c *RawClient) Await(id uint64) *pb.Frame {
	c.t.Helper()
	for {
		r := c.Read()
		if r.GetId() == id {
			return r
		}
		c.Pushes = append(c.Pushes, r)
	}
}

// NextPush returns the next frame with id 0 (from Pushes first).
func (c *RawClient) NextPush() *pb.Frame {
	c.t.Helper()
	if len(c.Pushes) > 0 {
		f := c.Pushes[0]
		c.Pushes = c.Pushes[1:]
		return f
	}
	for {
		f := c.Read()
		if f.GetId() == 0 {
			return f
		}
	}
}

// Keys holds the private parts of a registration, so tests can build sessions.
type Keys struct {
	Identity *e2ee.IdentityKeyPair
	Signed   *e2ee.SignedPreKeyPair
	KEMLast  *e2ee.KEMPreKeyPair
	OneTime  []*e2ee.OneTimePreKeyPair
	KEM      []*e2ee.KEMPreKeyPair
}

// NewKeys makes a registration's keys with n one-time prekeys of each kind.
func NewKeys(t testing.TB, n int) (*Keys, *pb.KeyBundleUpload) {
	t.Helper()
	k := &Keys{}
	var err error
	if k.Identity, err = e2ee.GenerateIdentityKeyPair(nil); err != nil {
		t.Fatal(err)
	}
	if k.Signed, err = e2ee.GenerateSignedPreKey(nil, 1, k.Identity); err != nil {
		t.Fatal(err)
	}
	if k.KEMLast, err = e2ee.GenerateKEMPreKey(nil, 1, k.Identity, true); err != nil {
		t.Fatal(err)
	}
	if k.OneTime, err = e2ee.GenerateOneTimePreKeys(nil, 1, n); err != nil {
		t.Fatal(err)
	}
	up := &pb.KeyBundleUpload{
		IdentityKey:         k.Identity.PublicKey().Bytes(),
		SignedPrekey:        &pb.SignedPreKey{Id: k.Signed.Public().ID, PublicKey: k.Signed.Public().PublicKey, Signature: k.Signed.Public().Signature},
		LastResortKemPrekey: &pb.KEMPreKey{Id: k.KEMLast.Public().ID, PublicKey: k.KEMLast.Public().PublicKey, Signature: k.KEMLast.Public().Signature, LastResort: true},
	}
	for _, o := range k.OneTime {
		up.OneTimePrekeys = append(up.OneTimePrekeys, &pb.OneTimePreKey{Id: o.Public().ID, PublicKey: o.Public().PublicKey})
	}
	for i := range n {
		kp, err := e2ee.GenerateKEMPreKey(nil, uint32(100+i), k.Identity, false)
		if err != nil {
			t.Fatal(err)
		}
		k.KEM = append(k.KEM, kp)
		p := kp.Public()
		up.KemPrekeys = append(up.KemPrekeys, &pb.KEMPreKey{Id: p.ID, PublicKey: p.PublicKey, Signature: p.Signature})
	}
	return k, up
}

// Register registers name with n one-time prekeys and returns the Welcome or Error frame.
func (c *RawClient) Register(name string, n int) (*pb.Frame, *Keys) {
	c.t.Helper()
	_, priv, err := ed25519.GenerateKey(nil)
	if err != nil {
		c.t.Fatal(err)
	}
	keys, up := NewKeys(c.t, n)
	c.AuthKey = priv
	c.DeviceID = pb.DeviceID(priv.Public().(ed25519.PublicKey))
	c.Identity = keys.Identity
	r := c.Request(&pb.Frame{Body: &pb.Frame_Register{Register: &pb.Register{
		Name:      name,
		AuthKey:   priv.Public().(ed25519.PublicKey),
		Signature: ed25519.Sign(priv, pb.AuthPayload(c.Nonce, c.DeviceID)),
		Keys:      up,
	}}})
	return r, keys
}

// MustRegister registers name and fails the test unless it is welcomed.
func (c *RawClient) MustRegister(name string) *Keys {
	c.t.Helper()
	r, k := c.Register(name, 5)
	if r.GetWelcome() == nil {
		c.t.Fatalf("register %s: %v", name, r)
	}
	return k
}

// Auth authenticates with an existing auth key and returns the response.
func (c *RawClient) Auth(key ed25519.PrivateKey) *pb.Frame {
	c.t.Helper()
	c.AuthKey = key
	c.DeviceID = pb.DeviceID(key.Public().(ed25519.PublicKey))
	return c.Request(&pb.Frame{Body: &pb.Frame_Auth{Auth: &pb.Auth{
		DeviceId:  c.DeviceID,
		Signature: ed25519.Sign(key, pb.AuthPayload(c.Nonce, c.DeviceID)),
	}}})
}

// Send sends opaque bytes as one envelope to each listed device of to.
func (c *RawClient) Send(msgID, to string, devices []string, body []byte) *pb.Frame {
	c.t.Helper()
	s := &pb.Send{MessageId: msgID, To: to}
	for _, d := range devices {
		s.Envelopes = append(s.Envelopes, &pb.DeviceCiphertext{DeviceId: d, Type: pb.EnvelopeType_ENVELOPE_TYPE_MESSAGE, Ciphertext: body})
	}
	return c.Request(&pb.Frame{Body: &pb.Frame_Send{Send: s}})
}
