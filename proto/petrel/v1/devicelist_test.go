// Copyright 2026 The Petrel Authors
// SPDX-License-Identifier: Apache-2.0

package petrelv1

import (
	"bytes"
	"crypto/sha256"
	"encoding/hex"
	"errors"
	mrand "math/rand/v2"
	"strings"
	"testing"

	"github.com/petrelchat/petrel/e2ee"
	"google.golang.org/protobuf/proto"
)

// listDevice is one test device: its identity key pair and device id.
type listDevice struct {
	id  string
	key *e2ee.IdentityKeyPair
}

func newListDevices(t testing.TB, seed uint64, n int) []listDevice {
	t.Helper()
	var s [32]byte
	s[0] = byte(seed)
	r := mrand.NewChaCha8(s)
	out := make([]listDevice, n)
	for i := range out {
		k, err := e2ee.GenerateIdentityKeyPair(r)
		if err != nil {
			t.Fatal(err)
		}
		auth := make([]byte, 32)
		r.Read(auth)
		sum := sha256.Sum256(auth)
		out[i] = listDevice{id: hex.EncodeToString(sum[:16]), key: k}
	}
	return out
}

// listOf builds a DeviceList for alice whose first device is the primary.
func listOf(devs []listDevice, version uint64) *DeviceList {
	l := &DeviceList{Account: "alice", Version: version, CreatedMs: 1_767_225_600_000}
	for i, d := range devs {
		l.Devices = append(l.Devices, &ListedDevice{DeviceId: d.id, IdentityKey: d.key.PublicKey().Bytes(), Primary: i == 0})
	}
	return l
}

// signRaw signs any list with k, bypassing SignDeviceList's own checks, so tests can present
// VerifyDeviceList with well-signed bad lists.
func signRaw(t testing.TB, k *e2ee.IdentityKeyPair, l *DeviceList) *SignedDeviceList {
	t.Helper()
	b, err := proto.MarshalOptions{Deterministic: true}.Marshal(l)
	if err != nil {
		t.Fatal(err)
	}
	sig, err := e2ee.SignDeviceList(k, b)
	if err != nil {
		t.Fatal(err)
	}
	return &SignedDeviceList{List: b, Signature: sig}
}

func TestDeviceListSignVerify(t *testing.T) {
	devs := newListDevices(t, 1, 3)
	l := listOf(devs, 7)
	sdl, err := SignDeviceList(devs[0].key, l)
	if err != nil {
		t.Fatal(err)
	}
	got, err := VerifyDeviceList(sdl, "alice")
	if err != nil {
		t.Fatalf("genuine list: %v", err)
	}
	if !proto.Equal(got, l) {
		t.Fatalf("verified list differs from the signed one:\n%v\n%v", got, l)
	}
	if p := got.Primary(); p == nil || p.DeviceId != devs[0].id {
		t.Fatalf("Primary() = %v", p)
	}
	for _, d := range devs {
		if f := got.Find(d.id); f == nil || !bytes.Equal(f.IdentityKey, d.key.PublicKey().Bytes()) {
			t.Fatalf("Find(%s) = %v", d.id, f)
		}
		if !got.Contains(d.id, d.key.PublicKey().Bytes()) {
			t.Fatalf("Contains(%s, its key) = false", d.id)
		}
	}
	other := newListDevices(t, 2, 1)[0]
	if got.Find(other.id) != nil || got.Contains(other.id, other.key.PublicKey().Bytes()) {
		t.Fatal("an unlisted device was found")
	}
	// A bundle device whose id is listed but whose identity key is not the listed one is refused.
	if got.Contains(devs[1].id, devs[2].key.PublicKey().Bytes()) || got.Contains(devs[1].id, nil) {
		t.Fatal("Contains accepted a listed id with another identity key")
	}
	var empty *DeviceList
	if empty.Primary() != nil || empty.Find(devs[0].id) != nil || empty.Contains(devs[0].id, devs[0].key.PublicKey().Bytes()) {
		t.Fatal("nil list found something")
	}

	// Signing is deterministic: the same list gives the same bytes and signature.
	again, err := SignDeviceList(devs[0].key, listOf(devs, 7))
	if err != nil {
		t.Fatal(err)
	}
	if !bytes.Equal(again.List, sdl.List) || !bytes.Equal(again.Signature, sdl.Signature) {
		t.Fatal("signing the same list twice gave different bytes")
	}
	// The signature is e2ee's device-list signature over the list bytes.
	if err := e2ee.VerifyDeviceListSignature(devs[0].key.PublicKey(), sdl.List, sdl.Signature); err != nil {
		t.Fatal(err)
	}

	// The boundary: MaxListedDevices devices are fine.
	many := newListDevices(t, 3, MaxListedDevices)
	if _, err := SignDeviceList(many[0].key, listOf(many, 1)); err != nil {
		t.Fatalf("%d devices: %v", MaxListedDevices, err)
	}
}

func TestVerifyDeviceListRejects(t *testing.T) {
	devs := newListDevices(t, 4, 3)
	many := newListDevices(t, 5, MaxListedDevices+1)
	primary := devs[0].key
	mutate := func(f func(l *DeviceList)) *SignedDeviceList {
		l := listOf(devs, 2)
		f(l)
		return signRaw(t, primary, l)
	}
	good := signRaw(t, primary, listOf(devs, 2))
	flipped := func(b []byte, i int) []byte { c := bytes.Clone(b); c[i] ^= 1; return c }

	for _, tc := range []struct {
		name    string
		sdl     *SignedDeviceList
		account string
		want    error
		msg     string
	}{
		{"nil", nil, "alice", ErrInvalidDeviceList, "missing"},
		{"empty list bytes", &SignedDeviceList{Signature: good.Signature}, "alice", ErrInvalidDeviceList, "missing"},
		{"oversized", &SignedDeviceList{List: make([]byte, MaxDeviceListBytes+1), Signature: good.Signature}, "alice", ErrInvalidDeviceList, "limit"},
		{"garbage", &SignedDeviceList{List: []byte{0xff, 0xff, 0xff}, Signature: good.Signature}, "alice", ErrInvalidDeviceList, "does not parse"},
		{"no devices", mutate(func(l *DeviceList) { l.Devices = nil }), "alice", ErrInvalidDeviceList, "no devices"},
		{"too many devices", signRaw(t, many[0].key, listOf(many, 1)), "alice", ErrInvalidDeviceList, "17 devices, limit 16"},
		{"version 0", mutate(func(l *DeviceList) { l.Version = 0 }), "alice", ErrInvalidDeviceList, "version 0"},
		{"negative created_ms", mutate(func(l *DeviceList) { l.CreatedMs = -1 }), "alice", ErrInvalidDeviceList, "created_ms"},
		{"bad account name", mutate(func(l *DeviceList) { l.Account = "Alice!" }), "Alice!", ErrInvalidDeviceList, "account name"},
		{"upper-case device id", mutate(func(l *DeviceList) { l.Devices[1].DeviceId = strings.ToUpper(l.Devices[1].DeviceId) }), "alice", ErrInvalidDeviceList, "device 1: device id"},
		{"short device id", mutate(func(l *DeviceList) { l.Devices[2].DeviceId = l.Devices[2].DeviceId[:31] }), "alice", ErrInvalidDeviceList, "device 2: device id"},
		{"empty device id", mutate(func(l *DeviceList) { l.Devices[1].DeviceId = "" }), "alice", ErrInvalidDeviceList, "device 1: device id"},
		{"duplicate device id", mutate(func(l *DeviceList) { l.Devices[2].DeviceId = l.Devices[1].DeviceId }), "alice", ErrInvalidDeviceList, "listed twice"},
		{"missing identity key", mutate(func(l *DeviceList) { l.Devices[1].IdentityKey = nil }), "alice", ErrInvalidDeviceList, "identity key does not parse"},
		{"truncated identity key", mutate(func(l *DeviceList) { l.Devices[1].IdentityKey = l.Devices[1].IdentityKey[:100] }), "alice", ErrInvalidDeviceList, "identity key does not parse"},
		{"identity key with a bad binding", mutate(func(l *DeviceList) { l.Devices[1].IdentityKey = flipped(l.Devices[1].IdentityKey, 100) }), "alice", ErrInvalidDeviceList, "identity key does not parse"},
		{"duplicate identity key", mutate(func(l *DeviceList) { l.Devices[2].IdentityKey = l.Devices[1].IdentityKey }), "alice", ErrInvalidDeviceList, "identity key listed twice"},
		{"no primary", mutate(func(l *DeviceList) { l.Devices[0].Primary = false }), "alice", ErrInvalidDeviceList, "no primary"},
		{"two primaries", mutate(func(l *DeviceList) { l.Devices[1].Primary = true }), "alice", ErrInvalidDeviceList, "more than one primary"},
		{"another account", good, "bob", ErrDeviceListAccount, ""},
		{"empty account", good, "", ErrDeviceListAccount, ""},
		{"signed by a companion", signRaw(t, devs[1].key, listOf(devs, 2)), "alice", ErrDeviceListSignature, ""},
		{"primary moved to the signer's entry", mutate(func(l *DeviceList) { l.Devices[0].Primary, l.Devices[1].Primary = false, true }), "alice", ErrDeviceListSignature, ""},
		{"tampered signature", &SignedDeviceList{List: good.List, Signature: flipped(good.Signature, 5)}, "alice", ErrDeviceListSignature, ""},
		{"missing signature", &SignedDeviceList{List: good.List}, "alice", ErrDeviceListSignature, ""},
		{"signature over another list", &SignedDeviceList{List: signRaw(t, primary, listOf(devs, 3)).List, Signature: good.Signature}, "alice", ErrDeviceListSignature, ""},
		{"signature under another context", func() *SignedDeviceList {
			sig, _ := primary.Sign("petrel-auth-v1", good.List)
			return &SignedDeviceList{List: good.List, Signature: sig}
		}(), "alice", ErrDeviceListSignature, ""},
	} {
		t.Run(tc.name, func(t *testing.T) {
			l, err := VerifyDeviceList(tc.sdl, tc.account)
			if !errors.Is(err, tc.want) || l != nil {
				t.Fatalf("VerifyDeviceList = %v, %v; want %v", l, err, tc.want)
			}
			if !strings.Contains(err.Error(), tc.msg) {
				t.Fatalf("error %q does not say %q", err, tc.msg)
			}
			for _, other := range []error{ErrInvalidDeviceList, ErrDeviceListAccount, ErrDeviceListSignature} {
				if other != tc.want && errors.Is(err, other) {
					t.Fatalf("error %v also matches %v", err, other)
				}
			}
		})
	}
	if _, err := VerifyDeviceList(good, "alice"); err != nil {
		t.Fatalf("the unmutated list must verify: %v", err)
	}
}

func TestSignDeviceListRefuses(t *testing.T) {
	devs := newListDevices(t, 6, 2)
	if _, err := SignDeviceList(devs[1].key, listOf(devs, 1)); !errors.Is(err, ErrDeviceListSignature) {
		t.Fatalf("signing with a key that is not the primary's: %v", err)
	}
	l := listOf(devs, 1)
	l.Devices[1].Primary = true
	if _, err := SignDeviceList(devs[0].key, l); !errors.Is(err, ErrInvalidDeviceList) {
		t.Fatalf("signing a list with two primaries: %v", err)
	}
	if _, err := SignDeviceList(nil, listOf(devs, 1)); !errors.Is(err, ErrInvalidDeviceList) {
		t.Fatalf("nil key: %v", err)
	}
	if _, err := SignDeviceList(devs[0].key, nil); !errors.Is(err, ErrInvalidDeviceList) {
		t.Fatalf("nil list: %v", err)
	}
}

func TestCheckDeviceListVersion(t *testing.T) {
	for _, tc := range []struct {
		seen, version uint64
		rollback      bool
	}{
		{0, 1, false}, {3, 3, false}, {3, 4, false}, {4, 3, true}, {1 << 40, 1, true},
	} {
		err := CheckDeviceListVersion(tc.seen, &DeviceList{Version: tc.version})
		if errors.Is(err, ErrDeviceListRollback) != tc.rollback {
			t.Errorf("seen %d, got version %d: %v", tc.seen, tc.version, err)
		}
	}
}

func FuzzVerifyDeviceList(f *testing.F) {
	devs := newListDevices(f, 7, 3)
	good := signRaw(f, devs[0].key, listOf(devs, 2))
	f.Add(good.List, good.Signature, "alice")
	f.Add(good.List, good.Signature, "bob")
	two := signRaw(f, devs[0].key, listOf(devs[:1], 1))
	f.Add(two.List, two.Signature, "alice")
	f.Add([]byte{0x0a, 0x05, 'a', 'l', 'i', 'c', 'e'}, []byte{}, "alice")
	f.Fuzz(func(t *testing.T, list, sig []byte, account string) {
		l, err := VerifyDeviceList(&SignedDeviceList{List: list, Signature: sig}, account)
		if err != nil {
			if l != nil || !errors.Is(err, ErrInvalidDeviceList) && !errors.Is(err, ErrDeviceListAccount) && !errors.Is(err, ErrDeviceListSignature) {
				t.Fatalf("failure returned %v, %v", l, err)
			}
			return
		}
		// Whatever verifies keeps every promise VerifyDeviceList makes.
		if l.Account != account || len(l.Devices) == 0 || len(l.Devices) > MaxListedDevices || l.Version == 0 {
			t.Fatalf("verified list breaks the rules: %v", l)
		}
		p := l.Primary()
		if p == nil || l.Find(p.DeviceId) != p {
			t.Fatal("verified list has no primary")
		}
		pk, err := e2ee.ParseIdentityKey(p.IdentityKey)
		if err != nil || e2ee.VerifyDeviceListSignature(pk, list, sig) != nil {
			t.Fatal("verified list's signature is not the primary's")
		}
		n := 0
		for _, d := range l.Devices {
			if d.Primary {
				n++
			}
			if !ValidDeviceID(d.DeviceId) || !l.Contains(d.DeviceId, d.IdentityKey) {
				t.Fatalf("verified list has a bad entry %v", d)
			}
		}
		if n != 1 {
			t.Fatalf("verified list has %d primaries", n)
		}
	})
}
