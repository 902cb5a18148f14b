// Copyright 2026 The Petrel Authors
// SPDX-License-Identifier: Apache-2.0

package directory_test

import (
	"bytes"
	"context"
	"crypto/ed25519"
	"encoding/json"
	"errors"
	"fmt"
	"sync"
	"testing"
	"time"

	"github.com/nats-io/nats.go/jetstream"
	"google.golang.org/protobuf/proto"

	"github.com/petrelchat/petrel/e2ee"
	"github.com/petrelchat/petrel/internal/bus"
	"github.com/petrelchat/petrel/internal/directory"
	"github.com/petrelchat/petrel/internal/testserver"
	pb "github.com/petrelchat/petrel/proto/petrel/v1"
)

// linking is a new device waiting to be linked: its keys and its started link.
type linking struct {
	id     string
	priv   ed25519.PrivateKey
	keys   *testserver.Keys
	offer  *pb.LinkOffer
	linkID string
}

// newLinking builds a new device's StartLink for nonce, with n one-time prekeys of each kind.
func newLinking(t testing.TB, seed byte, n int, nonce []byte) (*linking, *pb.StartLink) {
	t.Helper()
	priv := ed25519.NewKeyFromSeed(bytes.Repeat([]byte{seed}, 32))
	pub := priv.Public().(ed25519.PublicKey)
	keys, up := testserver.NewKeys(t, n)
	offer := &pb.LinkOffer{
		AuthKey:      pub,
		Keys:         up,
		EphemeralKey: bytes.Repeat([]byte{seed ^ 0x55}, 32),
		Mac:          bytes.Repeat([]byte{seed ^ 0xaa}, 32),
	}
	l := &linking{id: pb.DeviceID(pub), priv: priv, keys: keys, offer: offer}
	return l, &pb.StartLink{Offer: offer, Signature: ed25519.Sign(priv, pb.AuthPayload(nonce, l.id))}
}

// startLinking starts a link for a new device.
func startLinking(t testing.TB, d *directory.Directory, seed byte, n int) *linking {
	t.Helper()
	nonce := bytes.Repeat([]byte{seed, 0x11}, 16)
	l, req := newLinking(t, seed, n, nonce)
	id, exp, err := d.StartLink(context.Background(), nonce, req)
	if err != nil {
		t.Fatalf("StartLink: %v", err)
	}
	if len(id) != 8 || exp.IsZero() {
		t.Fatalf("link id %q, expires %v", id, exp)
	}
	l.linkID = id
	return l
}

// entry is one device of a list to sign.
type entry struct {
	id      string
	ik      *e2ee.IdentityKeyPair
	primary bool
}

// signList signs a device list with signer, as a primary does.
func signList(t testing.TB, signer *e2ee.IdentityKeyPair, account string, version uint64, devs ...entry) *pb.SignedDeviceList {
	t.Helper()
	l := &pb.DeviceList{Account: account, Version: version, CreatedMs: time.Now().UnixMilli()}
	for _, e := range devs {
		l.Devices = append(l.Devices, &pb.ListedDevice{DeviceId: e.id, IdentityKey: e.ik.PublicKey().Bytes(), Primary: e.primary})
	}
	b, err := proto.MarshalOptions{Deterministic: true}.Marshal(l)
	if err != nil {
		t.Fatal(err)
	}
	sig, err := signer.Sign("petrel-device-list-v1", b)
	if err != nil {
		t.Fatal(err)
	}
	return &pb.SignedDeviceList{List: b, Signature: sig}
}

// account is a registered account under test: its primary and linked companions.
type account struct {
	name    string
	primary registered
	p       directory.Principal
	version uint64
	comps   []*linking
	last    *pb.SignedDeviceList // the list of the last approval sent
}

func (a *account) entries() []entry {
	es := []entry{{id: a.primary.id, ik: a.primary.keys.Identity, primary: true}}
	for _, c := range a.comps {
		es = append(es, entry{id: c.id, ik: c.keys.Identity})
	}
	return es
}

// list signs the account's current devices plus extra at version.
func (a *account) list(t testing.TB, version uint64, extra ...*linking) *pb.SignedDeviceList {
	es := a.entries()
	for _, l := range extra {
		es = append(es, entry{id: l.id, ik: l.keys.Identity})
	}
	return signList(t, a.primary.keys.Identity, a.name, version, es...)
}

func newAccount(t *testing.T, d *directory.Directory, name string, seed byte) *account {
	t.Helper()
	r := register(t, d, name, seed, 2)
	return &account{name: name, primary: r, p: principal(t, d, r.id, r.priv)}
}

// principal authenticates a device and returns its principal.
func principal(t testing.TB, d *directory.Directory, id string, priv ed25519.PrivateKey) directory.Principal {
	t.Helper()
	nonce := bytes.Repeat([]byte{0x7e}, 32)
	p, err := d.Authenticate(context.Background(), id, nonce, ed25519.Sign(priv, pb.AuthPayload(nonce, id)))
	if err != nil {
		t.Fatalf("authenticate %s: %v", id, err)
	}
	return p
}

// approve approves l on a, named name, as the primary does.
func (a *account) approve(t testing.TB, d *directory.Directory, l *linking, name string) (*directory.Approved, error) {
	a.last = a.list(t, a.version+1, l)
	req := &pb.ApproveLink{LinkId: l.linkID, DeviceName: name, DeviceList: a.last,
		EphemeralKey: bytes.Repeat([]byte{9}, 32), SealedApproval: []byte("sealed")}
	res, err := d.ApproveLink(context.Background(), a.p, req)
	if err == nil {
		a.version++
		a.comps = append(a.comps, l)
	}
	return res, err
}

// link starts and approves a new device on a.
func (a *account) link(t *testing.T, d *directory.Directory, seed byte, name string) *linking {
	t.Helper()
	l := startLinking(t, d, seed, 2)
	if _, err := a.approve(t, d, l, name); err != nil {
		t.Fatalf("approve %s: %v", name, err)
	}
	return l
}

func TestLinkRoundTrip(t *testing.T) {
	ctx := context.Background()
	d, _ := startedDir(t, directory.Config{})
	amy := newAccount(t, d, "amy", 1)
	n := startLinking(t, d, 2, 3)

	offer, err := d.LinkOffer(ctx, amy.p, n.linkID)
	if err != nil {
		t.Fatal(err)
	}
	want := proto.Clone(n.offer).(*pb.LinkOffer)
	want.LinkId = n.linkID
	if !proto.Equal(offer, want) {
		t.Fatalf("offer %v\nwant %v", offer, want)
	}
	// Only canonical ids (the SDK's code parser makes them from what the user typed).
	if _, err := d.LinkOffer(ctx, amy.p, string(bytes.ToLower([]byte(n.linkID)))); !errors.Is(err, directory.ErrLinkExpired) {
		t.Fatalf("lower-case link id: %v", err)
	}

	before := time.Now().UnixMilli()
	res, err := amy.approve(t, d, n, "Laptop ✓")
	if err != nil {
		t.Fatal(err)
	}
	if res.LinkID != n.linkID || res.NewDeviceID != n.id || res.Name != "amy" || !proto.Equal(res.DeviceList, amy.last) || !proto.Equal(mustList(t, d, "amy"), amy.last) {
		t.Fatalf("approved %+v", res)
	}
	info := res.Info.GetDevices()
	if len(info) != 2 || info[0].GetDeviceId() != amy.primary.id || !info[0].GetPrimary() ||
		info[1].GetDeviceId() != n.id || info[1].GetPrimary() || info[1].GetName() != "Laptop ✓" || info[1].GetLinkedMs() < before {
		t.Fatalf("devices %v", info)
	}
	if !bytes.Equal(res.Info.GetDeviceList().GetList(), res.DeviceList.GetList()) {
		t.Fatal("the result's list is not the stored one")
	}

	// The new device authenticates as a device of amy, and shows in her bundles with its
	// one-time prekeys, next to the signed list.
	np := principal(t, d, n.id, n.priv)
	if np.Name != "amy" {
		t.Fatalf("linked device's principal %+v", np)
	}
	b, err := d.Bundles(ctx, fmt.Sprintf("%032x", 7), "amy", nil)
	if err != nil {
		t.Fatal(err)
	}
	if len(b.GetDevices()) != 2 || b.GetDevices()[1].GetDeviceId() != n.id || b.GetDevices()[1].GetOneTimePrekey() == nil ||
		!bytes.Equal(b.GetDevices()[1].GetIdentityKey(), n.keys.Identity.PublicKey().Bytes()) {
		t.Fatalf("bundles %v", b.GetDevices())
	}
	if !bytes.Equal(b.GetDeviceList().GetList(), res.DeviceList.GetList()) || !bytes.Equal(b.GetDeviceList().GetSignature(), res.DeviceList.GetSignature()) {
		t.Fatalf("bundle's device list %v", b.GetDeviceList())
	}
	acc, err := d.Account(ctx, "amy")
	if err != nil || len(acc.Devices) != 2 || acc.Primary() != amy.primary.id || !slicesEqual(acc.OtherDevices(n.id), []string{amy.primary.id}) {
		t.Fatalf("account %+v %v", acc, err)
	}
	devs, err := d.Devices(ctx, np)
	if err != nil || !proto.Equal(devs, res.Info) {
		t.Fatalf("Devices %v %v, want %v", devs, err, res.Info)
	}

	// A link approves once.
	if _, err := d.LinkOffer(ctx, amy.p, n.linkID); !errors.Is(err, directory.ErrLinkExpired) {
		t.Fatalf("offer of a used link: %v", err)
	}
	again := &pb.ApproveLink{LinkId: n.linkID, DeviceName: "again", DeviceList: amy.list(t, 2),
		EphemeralKey: bytes.Repeat([]byte{9}, 32), SealedApproval: []byte("x")}
	if _, err := d.ApproveLink(ctx, amy.p, again); !errors.Is(err, directory.ErrLinkExpired) {
		t.Fatalf("second approval: %v", err)
	}
	if _, err := d.LinkOffer(ctx, amy.p, "ZZZZZZZZ"); !errors.Is(err, directory.ErrLinkExpired) {
		t.Fatalf("unknown link: %v", err)
	}
	if _, err := d.LinkOffer(ctx, amy.p, "not-an-id"); !errors.Is(err, directory.ErrLinkExpired) {
		t.Fatalf("malformed link: %v", err)
	}
}

func mustList(t *testing.T, d *directory.Directory, name string) *pb.SignedDeviceList {
	t.Helper()
	acc, err := d.Account(context.Background(), name)
	if err != nil {
		t.Fatal(err)
	}
	return acc.SignedDeviceList()
}

func slicesEqual(a, b []string) bool {
	if len(a) != len(b) {
		return false
	}
	for i := range a {
		if a[i] != b[i] {
			return false
		}
	}
	return true
}

func TestStartLinkRefusals(t *testing.T) {
	ctx := context.Background()
	d, _ := startedDir(t, directory.Config{})
	amy := newAccount(t, d, "amy", 1)
	nonce := bytes.Repeat([]byte{3}, 32)
	for _, tc := range []struct {
		name   string
		change func(*pb.StartLink)
		want   error
	}{
		{"no offer", func(r *pb.StartLink) { r.Offer = nil }, directory.ErrInvalidRequest},
		{"short auth key", func(r *pb.StartLink) { r.Offer.AuthKey = r.Offer.AuthKey[:31] }, directory.ErrInvalidKeys},
		{"bad signature", func(r *pb.StartLink) { r.Signature[0] ^= 1 }, directory.ErrAuthFailed},
		{"signature over another nonce", func(r *pb.StartLink) { r.Signature = nil }, directory.ErrAuthFailed},
		{"short ephemeral key", func(r *pb.StartLink) { r.Offer.EphemeralKey = r.Offer.EphemeralKey[:16] }, directory.ErrInvalidRequest},
		{"no mac", func(r *pb.StartLink) { r.Offer.Mac = nil }, directory.ErrInvalidRequest},
		{"forged signed prekey", func(r *pb.StartLink) { r.Offer.Keys.SignedPrekey.Signature[0] ^= 1 }, directory.ErrInvalidKeys},
		{"bad identity key", func(r *pb.StartLink) { r.Offer.Keys.IdentityKey = r.Offer.Keys.IdentityKey[:10] }, directory.ErrInvalidKeys},
		{"forged KEM prekey", func(r *pb.StartLink) { r.Offer.Keys.KemPrekeys[0].Signature[0] ^= 1 }, directory.ErrInvalidKeys},
		{"too many prekeys", func(r *pb.StartLink) {
			for range directory.MaxPreKeysPerUpload {
				r.Offer.Keys.OneTimePrekeys = append(r.Offer.Keys.OneTimePrekeys, r.Offer.Keys.OneTimePrekeys[0])
			}
		}, directory.ErrTooManyPreKeys},
	} {
		t.Run(tc.name, func(t *testing.T) {
			_, req := newLinking(t, 40, 1, nonce)
			tc.change(req)
			if _, _, err := d.StartLink(ctx, nonce, req); !errors.Is(err, tc.want) {
				t.Fatalf("got %v, want %v", err, tc.want)
			}
		})
	}
	t.Run("registered device", func(t *testing.T) {
		// The primary's own auth key offered again.
		_, req := newLinking(t, 1, 1, nonce)
		if pb.DeviceID(req.Offer.AuthKey) != amy.primary.id {
			t.Fatal("test setup: not the primary's key")
		}
		if _, _, err := d.StartLink(ctx, nonce, req); !errors.Is(err, directory.ErrDeviceExists) {
			t.Fatalf("got %v", err)
		}
	})
}

// A link expires at its TTL: by the directory's clock at once, and from the bucket by its TTL.
func TestLinkExpiry(t *testing.T) {
	ctx := context.Background()
	t.Run("by the clock", func(t *testing.T) {
		clock := newFakeClock()
		d, _ := startedDir(t, directory.Config{LinkTTL: time.Minute, Now: clock.Now})
		amy := newAccount(t, d, "amy", 1)
		n := startLinking(t, d, 2, 1)
		clock.Add(59 * time.Second)
		if _, err := d.LinkOffer(ctx, amy.p, n.linkID); err != nil {
			t.Fatalf("before expiry: %v", err)
		}
		clock.Add(time.Second)
		if _, err := d.LinkOffer(ctx, amy.p, n.linkID); !errors.Is(err, directory.ErrLinkExpired) {
			t.Fatalf("offer at expiry: %v", err)
		}
		if _, err := amy.approve(t, d, n, "late"); !errors.Is(err, directory.ErrLinkExpired) {
			t.Fatalf("approval at expiry: %v", err)
		}
	})
	t.Run("from the bucket", func(t *testing.T) {
		d, b := startedDir(t, directory.Config{LinkTTL: time.Second})
		n := startLinking(t, d, 2, 1)
		if _, err := b.Links.Get(ctx, n.linkID); err != nil {
			t.Fatalf("stored link: %v", err)
		}
		deadline := time.Now().Add(15 * time.Second)
		for {
			_, err := b.Links.Get(ctx, n.linkID)
			if errors.Is(err, jetstream.ErrKeyNotFound) {
				break
			}
			if time.Now().After(deadline) {
				t.Fatalf("the link entry is still there 15s after its 1s TTL: %v", err)
			}
			time.Sleep(50 * time.Millisecond) // JetStream expires it on its own timer
		}
	})
}

// Of two concurrent approvals of one link, exactly one wins; the other is told the link is used.
func TestConcurrentApprovals(t *testing.T) {
	d, _ := startedDir(t, directory.Config{})
	amy := newAccount(t, d, "amy", 1)
	for round := range directory.DefaultMaxDevices - 1 {
		n := startLinking(t, d, byte(10+round), 1)
		req := &pb.ApproveLink{LinkId: n.linkID, DeviceName: "n", DeviceList: amy.list(t, amy.version+1, n),
			EphemeralKey: bytes.Repeat([]byte{9}, 32), SealedApproval: []byte("sealed")}
		var wg sync.WaitGroup
		errs := make([]error, 4)
		for i := range errs {
			wg.Go(func() { _, errs[i] = d.ApproveLink(context.Background(), amy.p, req) })
		}
		wg.Wait()
		won := 0
		for _, err := range errs {
			switch {
			case err == nil:
				won++
			case !errors.Is(err, directory.ErrLinkExpired):
				t.Fatalf("round %d: a losing approval got %v, want ErrLinkExpired", round, err)
			}
		}
		if won != 1 {
			t.Fatalf("round %d: %d approvals won (%v)", round, won, errs)
		}
		amy.version++
		amy.comps = append(amy.comps, n)
	}
	acc, err := d.Devices(context.Background(), amy.p)
	if err != nil || len(acc.GetDevices()) != 5 {
		t.Fatalf("devices %v %v", acc, err)
	}
}

// Approval and removal race on the same account state: exactly one applies; the other is stale.
func TestApprovalRacesRemoval(t *testing.T) {
	ctx := context.Background()
	d, _ := startedDir(t, directory.Config{})
	amy := newAccount(t, d, "amy", 1)
	c1 := amy.link(t, d, 2, "one")
	for round := range 4 {
		n := startLinking(t, d, byte(20+round), 1)
		approve := &pb.ApproveLink{LinkId: n.linkID, DeviceName: "n", DeviceList: amy.list(t, amy.version+1, n),
			EphemeralKey: bytes.Repeat([]byte{9}, 32), SealedApproval: []byte("sealed")}
		without := &account{name: amy.name, primary: amy.primary}
		removeList := without.list(t, amy.version+1)
		var wg sync.WaitGroup
		var aErr, rErr error
		wg.Go(func() { _, aErr = d.ApproveLink(ctx, amy.p, approve) })
		wg.Go(func() { rErr = d.RemoveDevice(ctx, amy.p, c1.id, removeList) })
		wg.Wait()
		if (aErr == nil) == (rErr == nil) {
			t.Fatalf("round %d: approval %v, removal %v: want exactly one", round, aErr, rErr)
		}
		res, err := d.Devices(ctx, amy.p)
		if err != nil {
			t.Fatal(err)
		}
		var lost error
		if aErr == nil {
			lost = rErr
			if len(res.GetDevices()) != 3 {
				t.Fatalf("round %d: approval won but devices are %v", round, res.GetDevices())
			}
			amy.comps = append(amy.comps, n)
			// Back to one companion for the next round.
			amy.comps = amy.comps[:1]
			if err := d.RemoveDevice(ctx, amy.p, n.id, amy.list(t, amy.version+2)); err != nil {
				t.Fatal(err)
			}
			amy.version += 2
		} else {
			lost = aErr
			if len(res.GetDevices()) != 1 {
				t.Fatalf("round %d: removal won but devices are %v", round, res.GetDevices())
			}
			amy.comps = nil
			amy.version++
			c1 = amy.link(t, d, byte(40+round), "one again")
		}
		if !errors.Is(lost, directory.ErrStaleDeviceList) && !errors.Is(lost, directory.ErrUnknownDevice) {
			t.Fatalf("round %d: the loser got %v, want a stale list", round, lost)
		}
	}
}

func TestOnlyThePrimary(t *testing.T) {
	ctx := context.Background()
	d, _ := startedDir(t, directory.Config{})
	amy := newAccount(t, d, "amy", 1)
	c1 := amy.link(t, d, 2, "one")
	c2 := amy.link(t, d, 3, "two")
	cp := principal(t, d, c1.id, c1.priv)
	n := startLinking(t, d, 4, 1)

	if _, err := d.LinkOffer(ctx, cp, n.linkID); !errors.Is(err, directory.ErrPermissionDenied) {
		t.Fatalf("offer to a companion: %v", err)
	}
	req := &pb.ApproveLink{LinkId: n.linkID, DeviceName: "n", DeviceList: amy.list(t, amy.version+1, n),
		EphemeralKey: bytes.Repeat([]byte{9}, 32), SealedApproval: []byte("sealed")}
	if _, err := d.ApproveLink(ctx, cp, req); !errors.Is(err, directory.ErrPermissionDenied) {
		t.Fatalf("approval by a companion: %v", err)
	}
	// Even with a list the companion signs as if it were the primary.
	forged := signList(t, c1.keys.Identity, "amy", amy.version+1, entry{id: c1.id, ik: c1.keys.Identity, primary: true},
		entry{id: amy.primary.id, ik: amy.primary.keys.Identity}, entry{id: c2.id, ik: c2.keys.Identity}, entry{id: n.id, ik: n.keys.Identity})
	req.DeviceList = forged
	if _, err := d.ApproveLink(ctx, cp, req); !errors.Is(err, directory.ErrPermissionDenied) {
		t.Fatalf("approval by a companion with its own list: %v", err)
	}
	if err := d.PutDeviceList(ctx, cp, forged); !errors.Is(err, directory.ErrPermissionDenied) {
		t.Fatalf("list put by a companion: %v", err)
	}
	if err := d.RemoveDevice(ctx, cp, c2.id, forged); !errors.Is(err, directory.ErrPermissionDenied) {
		t.Fatalf("companion removing another: %v", err)
	}
	if err := d.RemoveDevice(ctx, cp, amy.primary.id, nil); !errors.Is(err, directory.ErrPermissionDenied) {
		t.Fatalf("companion removing the primary: %v", err)
	}
	if err := d.RemoveDevice(ctx, amy.p, amy.primary.id, amy.list(t, amy.version+1)); !errors.Is(err, directory.ErrPermissionDenied) {
		t.Fatalf("primary removing itself: %v", err)
	}
	// The link is still usable by the primary.
	if _, err := amy.approve(t, d, n, "n"); err != nil {
		t.Fatalf("primary after refusals: %v", err)
	}
}

// Forged or wrong lists are refused, and a refused approval leaves the link usable.
func TestForgedListsRefused(t *testing.T) {
	ctx := context.Background()
	d, _ := startedDir(t, directory.Config{})
	amy := newAccount(t, d, "amy", 1)
	c1 := amy.link(t, d, 2, "one")
	n := startLinking(t, d, 3, 1)
	stranger, err := e2ee.GenerateIdentityKeyPair(nil)
	if err != nil {
		t.Fatal(err)
	}
	other := register(t, d, "bob", 50, 0)
	P := entry{id: amy.primary.id, ik: amy.primary.keys.Identity, primary: true}
	C := entry{id: c1.id, ik: c1.keys.Identity}
	N := entry{id: n.id, ik: n.keys.Identity}
	ik := amy.primary.keys.Identity
	for _, tc := range []struct {
		name string
		sdl  *pb.SignedDeviceList
		want error
	}{
		{"wrong signer", signList(t, stranger, "amy", 2, P, C, N), directory.ErrInvalidDeviceList},
		{"signer posing as primary", signList(t, stranger, "amy", 2, entry{id: P.id, ik: stranger, primary: true}, C, N), directory.ErrInvalidDeviceList},
		{"new device as primary", signList(t, n.keys.Identity, "amy", 2, entry{id: P.id, ik: P.ik}, C, entry{id: N.id, ik: N.ik, primary: true}), directory.ErrInvalidDeviceList},
		{"version not incremented", signList(t, ik, "amy", 1, P, C, N), directory.ErrStaleDeviceList},
		{"version skipped", signList(t, ik, "amy", 3, P, C, N), directory.ErrInvalidDeviceList},
		{"version 0", signList(t, ik, "amy", 0, P, C, N), directory.ErrInvalidDeviceList},
		{"missing device", signList(t, ik, "amy", 2, P, N), directory.ErrStaleDeviceList},
		{"missing new device", signList(t, ik, "amy", 2, P, C), directory.ErrStaleDeviceList},
		{"extra device", signList(t, ik, "amy", 2, P, C, N, entry{id: other.id, ik: other.keys.Identity}), directory.ErrStaleDeviceList},
		{"wrong identity key of the new device", signList(t, ik, "amy", 2, P, C, entry{id: N.id, ik: stranger}), directory.ErrInvalidDeviceList},
		{"another account", signList(t, ik, "bob", 2, P, C, N), directory.ErrInvalidDeviceList},
		{"two primaries", signList(t, ik, "amy", 2, P, entry{id: C.id, ik: C.ik, primary: true}, N), directory.ErrInvalidDeviceList},
		{"device twice", signList(t, ik, "amy", 2, P, C, N, N), directory.ErrInvalidDeviceList},
		{"no list", nil, directory.ErrInvalidDeviceList},
		{"flipped signature", func() *pb.SignedDeviceList {
			s := signList(t, ik, "amy", 2, P, C, N)
			s.Signature[5] ^= 1
			return s
		}(), directory.ErrInvalidDeviceList},
	} {
		t.Run(tc.name, func(t *testing.T) {
			req := &pb.ApproveLink{LinkId: n.linkID, DeviceName: "n", DeviceList: tc.sdl,
				EphemeralKey: bytes.Repeat([]byte{9}, 32), SealedApproval: []byte("sealed")}
			if _, err := d.ApproveLink(ctx, amy.p, req); !errors.Is(err, tc.want) {
				t.Fatalf("approval: got %v, want %v", err, tc.want)
			}
		})
	}
	for _, tc := range []struct {
		name string
		req  *pb.ApproveLink
	}{
		{"empty device name", &pb.ApproveLink{DeviceName: ""}},
		{"device name too long", &pb.ApproveLink{DeviceName: string(bytes.Repeat([]byte("é"), 65))}},
		{"unprintable device name", &pb.ApproveLink{DeviceName: "a\nb"}},
		{"short ephemeral key", &pb.ApproveLink{DeviceName: "n", EphemeralKey: []byte{1}}},
		{"no sealed approval", &pb.ApproveLink{DeviceName: "n", EphemeralKey: bytes.Repeat([]byte{9}, 32)}},
	} {
		t.Run(tc.name, func(t *testing.T) {
			tc.req.LinkId = n.linkID
			if tc.req.EphemeralKey == nil {
				tc.req.EphemeralKey = bytes.Repeat([]byte{9}, 32)
			}
			if tc.req.SealedApproval == nil && tc.name != "no sealed approval" {
				tc.req.SealedApproval = []byte("s")
			}
			tc.req.DeviceList = amy.list(t, 2, n)
			if _, err := d.ApproveLink(ctx, amy.p, tc.req); !errors.Is(err, directory.ErrInvalidRequest) {
				t.Fatalf("got %v, want ErrInvalidRequest", err)
			}
		})
	}
	// Nothing of the refusals stuck: the link and the account are as they were.
	if _, err := amy.approve(t, d, n, "n"); err != nil {
		t.Fatalf("valid approval after refusals: %v", err)
	}
	if got := len(mustAccount(t, d, "amy").Devices); got != 3 {
		t.Fatalf("%d devices, want 3", got)
	}
}

func mustAccount(t *testing.T, d *directory.Directory, name string) *directory.Account {
	t.Helper()
	acc, err := d.Account(context.Background(), name)
	if err != nil {
		t.Fatal(err)
	}
	return acc
}

func TestTooManyDevices(t *testing.T) {
	d, _ := startedDir(t, directory.Config{})
	amy := newAccount(t, d, "amy", 1)
	for i := range directory.DefaultMaxDevices - 1 {
		amy.link(t, d, byte(2+i), fmt.Sprintf("dev %d", i))
	}
	sixth := startLinking(t, d, 30, 1)
	if _, err := amy.approve(t, d, sixth, "sixth"); !errors.Is(err, directory.ErrTooManyDevices) {
		t.Fatalf("sixth device: %v", err)
	}
	// After a removal there is room again.
	last := amy.comps[len(amy.comps)-1]
	amy.comps = amy.comps[:len(amy.comps)-1]
	if err := d.RemoveDevice(context.Background(), amy.p, last.id, amy.list(t, amy.version+1)); err != nil {
		t.Fatal(err)
	}
	amy.version++
	if _, err := amy.approve(t, d, sixth, "sixth"); err != nil {
		t.Fatalf("after a removal: %v", err)
	}
}

func TestRemoveDevice(t *testing.T) {
	ctx := context.Background()
	d, b := startedDir(t, directory.Config{})
	amy := newAccount(t, d, "amy", 1)
	c1 := amy.link(t, d, 2, "one")
	c2 := amy.link(t, d, 3, "two")
	c1p := principal(t, d, c1.id, c1.priv)
	c2p := principal(t, d, c2.id, c2.priv)
	nonce := bytes.Repeat([]byte{0x42}, 32)

	t.Run("refusals", func(t *testing.T) {
		if err := d.RemoveDevice(ctx, amy.p, "0123456789abcdef0123456789abcdef", amy.list(t, amy.version+1)); !errors.Is(err, directory.ErrUnknownDevice) {
			t.Fatalf("unknown device: %v", err)
		}
		if err := d.RemoveDevice(ctx, amy.p, "nope", nil); !errors.Is(err, directory.ErrInvalidRequest) {
			t.Fatalf("malformed device id: %v", err)
		}
		if err := d.RemoveDevice(ctx, amy.p, c1.id, nil); !errors.Is(err, directory.ErrInvalidRequest) {
			t.Fatalf("primary without a list: %v", err)
		}
		withoutC1 := signList(t, amy.primary.keys.Identity, "amy", amy.version+1,
			entry{id: amy.primary.id, ik: amy.primary.keys.Identity, primary: true}, entry{id: c2.id, ik: c2.keys.Identity})
		if err := d.RemoveDevice(ctx, amy.p, c2.id, withoutC1); !errors.Is(err, directory.ErrStaleDeviceList) {
			t.Fatalf("list without another device: %v", err)
		}
		if err := d.RemoveDevice(ctx, c1p, c1.id, withoutC1); !errors.Is(err, directory.ErrInvalidRequest) {
			t.Fatalf("self-removal with a list: %v", err)
		}
	})

	t.Run("by the primary", func(t *testing.T) {
		amy.comps = []*linking{c2}
		if err := d.RemoveDevice(ctx, amy.p, c1.id, amy.list(t, amy.version+1)); err != nil {
			t.Fatal(err)
		}
		amy.version++
		if _, err := d.Authenticate(ctx, c1.id, nonce, ed25519.Sign(c1.priv, pb.AuthPayload(nonce, c1.id))); !errors.Is(err, directory.ErrAuthFailed) {
			t.Fatalf("removed device authenticates: %v", err)
		}
		if _, err := d.Devices(ctx, c1p); !errors.Is(err, directory.ErrUnknownDevice) {
			t.Fatalf("removed device lists devices: %v", err)
		}
		if _, err := b.Devices.Get(ctx, c1.id); !errors.Is(err, jetstream.ErrKeyNotFound) {
			t.Fatalf("device record: %v", err)
		}
		st, err := d.Status(ctx, c1p)
		if err != nil || st.GetOneTimePrekeysLeft() != 0 || st.GetKemPrekeysLeft() != 0 {
			t.Fatalf("removed device's prekeys: %v %v", st, err)
		}
		if _, err := d.Bundles(ctx, fmt.Sprintf("%032x", 9), "amy", []string{c1.id}); !errors.Is(err, directory.ErrUnknownDevice) {
			t.Fatalf("bundle of a removed device: %v", err)
		}
		if err := d.RemoveDevice(ctx, amy.p, c1.id, amy.list(t, amy.version+1)); !errors.Is(err, directory.ErrUnknownDevice) {
			t.Fatalf("removed twice: %v", err)
		}
	})

	t.Run("by itself", func(t *testing.T) {
		stored := mustList(t, d, "amy")
		if err := d.RemoveDevice(ctx, c2p, c2.id, nil); err != nil {
			t.Fatal(err)
		}
		if _, err := d.Authenticate(ctx, c2.id, nonce, ed25519.Sign(c2.priv, pb.AuthPayload(nonce, c2.id))); !errors.Is(err, directory.ErrAuthFailed) {
			t.Fatalf("removed device authenticates: %v", err)
		}
		// The primary's list is kept until it signs a new one.
		acc, _, err := latest(ctx, b, "amy")
		if err != nil || len(acc.Devices) != 1 || !bytes.Equal(acc.DeviceList.List, stored.GetList()) {
			t.Fatalf("account after self-removal %+v %v", acc, err)
		}
		amy.comps = nil
		if err := d.PutDeviceList(ctx, amy.p, amy.list(t, amy.version)); !errors.Is(err, directory.ErrStaleDeviceList) {
			t.Fatalf("re-signed list at the same version: %v", err)
		}
		if err := d.PutDeviceList(ctx, amy.p, amy.list(t, amy.version+1)); err != nil {
			t.Fatalf("re-signed list: %v", err)
		}
	})
}

// latest reads an account record straight from the bucket.
func latest(ctx context.Context, b *bus.Bus, name string) (*directory.Account, uint64, error) {
	e, err := b.Accounts.Get(ctx, name)
	if err != nil {
		return nil, 0, err
	}
	acc := &directory.Account{}
	return acc, e.Revision(), json.Unmarshal(e.Value(), acc)
}

// Records written before linked devices load: the first device is the primary, there is no list,
// and the account can publish one and link devices.
func TestOldRecordsLoad(t *testing.T) {
	ctx := context.Background()
	d, b := startedDir(t, directory.Config{})
	r := register(t, d, "old", 1, 1)
	created := time.Date(2025, 3, 1, 12, 0, 0, 0, time.UTC)
	// Exactly what the previous release wrote.
	raw := fmt.Sprintf(`{"name":"old","devices":[%q],"created":%q}`, r.id, created.Format(time.RFC3339Nano))
	if _, err := b.Accounts.Put(ctx, "old", []byte(raw)); err != nil {
		t.Fatal(err)
	}
	p := principal(t, d, r.id, r.priv)
	res, err := d.Devices(ctx, p)
	if err != nil {
		t.Fatal(err)
	}
	if len(res.GetDevices()) != 1 || !res.GetDevices()[0].GetPrimary() || res.GetDevices()[0].GetLinkedMs() != created.UnixMilli() || res.GetDeviceList() != nil {
		t.Fatalf("old account's devices %v", res)
	}
	bundles, err := d.Bundles(ctx, fmt.Sprintf("%032x", 3), "old", nil)
	if err != nil || bundles.GetDeviceList() != nil || len(bundles.GetDevices()) != 1 {
		t.Fatalf("old account's bundles %v %v", bundles, err)
	}
	// A registration of this release still writes the old format (no new keys).
	register(t, d, "new", 2, 0)
	e, err := b.Accounts.Get(ctx, "new")
	if err != nil {
		t.Fatal(err)
	}
	var keys map[string]json.RawMessage
	if err := json.Unmarshal(e.Value(), &keys); err != nil || len(keys) != 3 {
		t.Fatalf("new registration's record %s: %v", e.Value(), err)
	}

	old := &account{name: "old", primary: r, p: p}
	if err := d.PutDeviceList(ctx, p, old.list(t, 1)); err != nil {
		t.Fatalf("first list of an old account: %v", err)
	}
	old.version = 1
	n := old.link(t, d, 3, "phone")
	acc, _, err := latest(ctx, b, "old")
	if err != nil || acc.PrimaryID != r.id || !slicesEqual(acc.Devices, []string{r.id, n.id}) || acc.DeviceList.Version != 2 || !acc.Created.Equal(created) {
		t.Fatalf("old account after a link %+v %v", acc, err)
	}
}

// Seen writes last-seen at most once an hour per device, into the last-seen bucket: never into the
// account record, which every node caches for the send path.
func TestSeenThrottled(t *testing.T) {
	ctx := context.Background()
	d, b := startedDir(t, directory.Config{})
	amy := newAccount(t, d, "amy", 1)
	c := amy.link(t, d, 2, "one")
	t0 := time.Now().Truncate(time.Millisecond)
	accRev := func() uint64 {
		t.Helper()
		_, r, err := latest(ctx, b, "amy")
		if err != nil {
			t.Fatal(err)
		}
		return r
	}
	seenRev := func() uint64 {
		t.Helper()
		e, err := b.LastSeen.Get(ctx, c.id)
		if err != nil {
			return 0
		}
		return e.Revision()
	}
	seen := func(id string) int64 {
		t.Helper()
		res, err := d.Devices(ctx, amy.p)
		if err != nil {
			t.Fatal(err)
		}
		for _, i := range res.GetDevices() {
			if i.GetDeviceId() == id {
				return i.GetLastSeenMs()
			}
		}
		t.Fatalf("no device %s", id)
		return 0
	}
	a0 := accRev()
	d.Seen(ctx, c.id, t0)
	if got := seen(c.id); got != t0.UnixMilli() {
		t.Fatalf("last seen %d, want %d", got, t0.UnixMilli())
	}
	r1 := seenRev()
	if r1 == 0 {
		t.Fatal("first Seen wrote nothing")
	}
	// Within the hour: nothing written, however often.
	for _, dt := range []time.Duration{time.Second, 30 * time.Minute, 59 * time.Minute} {
		d.Seen(ctx, c.id, t0.Add(dt))
	}
	if r := seenRev(); r != r1 {
		t.Fatalf("Seen within the hour wrote again (revision %d → %d)", r1, r)
	}
	d.Seen(ctx, c.id, t0.Add(61*time.Minute))
	if got := seen(c.id); got != t0.Add(61*time.Minute).UnixMilli() {
		t.Fatalf("last seen after an hour %d", got)
	}
	if seen(amy.primary.id) != 0 {
		t.Fatal("the primary was never seen")
	}
	if a := accRev(); a != a0 {
		t.Fatalf("Seen wrote the account record (revision %d → %d): every node's cached copy is dropped", a0, a)
	}
	d.Seen(ctx, "0123456789abcdef0123456789abcdef", t0) // unknown: nothing happens
	d.Seen(ctx, "junk", t0)
}

// waitAccountCached waits until the account cache holds name again (after the watch dropped it).
func waitAccountCached(t *testing.T, d *directory.Directory, name string) {
	t.Helper()
	deadline := time.Now().Add(10 * time.Second)
	for {
		if _, err := d.Account(context.Background(), name); err != nil {
			t.Fatal(err)
		}
		if d.AccountCachedForTest(name) {
			return
		}
		if time.Now().After(deadline) {
			t.Fatalf("account %s not cached", name)
		}
		time.Sleep(time.Millisecond) // the watch drops the entry asynchronously, once
	}
}

func TestConfigValidate(t *testing.T) {
	if err := (directory.Config{}).Validate(); err != nil {
		t.Fatalf("defaults: %v", err)
	}
	err := directory.Config{Policy: "sometimes", MaxDevices: 17, LinkTTL: time.Millisecond}.Validate()
	for _, want := range []string{"policy", "max_devices", "link_ttl"} {
		if err == nil || !bytes.Contains([]byte(err.Error()), []byte(want)) {
			t.Fatalf("%v does not report %s", err, want)
		}
	}
	if err := (directory.Config{LinkTTL: 2 * time.Hour}).Validate(); err == nil {
		t.Fatal("a link TTL beyond the bucket's age limit passed")
	}
}
