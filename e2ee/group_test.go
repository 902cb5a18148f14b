package e2ee

import (
	"bytes"
	"errors"
	"fmt"
	"testing"
)

func TestSenderKeys(t *testing.T) {
	r := newDetRand(101)
	sk, err := NewSenderKey(r)
	if err != nil {
		t.Fatal(err)
	}
	early, _ := sk.Encrypt([]byte("before the member joined"))
	dist := sk.Distribution()
	recv, err := NewSenderKeyReceiver(dist)
	if err != nil {
		t.Fatal(err)
	}
	if recv.KeyID() != sk.KeyID() {
		t.Fatal("key id")
	}
	if _, err := recv.Decrypt(early); !errors.Is(err, ErrDuplicateMessage) {
		t.Fatalf("message from before the distribution: %v", err)
	}
	var cts [][]byte
	for i := range 10 {
		ct, err := sk.Encrypt([]byte(fmt.Sprint("group ", i)))
		if err != nil {
			t.Fatal(err)
		}
		cts = append(cts, ct)
	}
	if id, err := SenderKeyMessageKeyID(cts[0]); err != nil || id != sk.KeyID() {
		t.Fatal(err)
	}
	// Out of order, with forgeries and replays in between.
	for _, i := range []int{3, 0, 9, 1, 2, 8, 4, 5, 7, 6} {
		for _, f := range forgeries(cts[i]) {
			before := mustMarshal(t, recv)
			if _, err := recv.Decrypt(f); err == nil {
				t.Fatal("forged group message decrypted")
			}
			if !bytes.Equal(before, mustMarshal(t, recv)) {
				t.Fatal("failed group decrypt changed the state")
			}
		}
		pt, err := recv.Decrypt(cts[i])
		if err != nil || string(pt) != fmt.Sprint("group ", i) {
			t.Fatalf("message %d: %q %v", i, pt, err)
		}
		before := mustMarshal(t, recv)
		if _, err := recv.Decrypt(cts[i]); !errors.Is(err, ErrDuplicateMessage) {
			t.Fatalf("replay: %v", err)
		}
		if !bytes.Equal(before, mustMarshal(t, recv)) {
			t.Fatal("replay changed the state")
		}
	}
	// A message re-signed by someone else fails (only the holder of the
	// signing key can send, even though every member has the chain key).
	other, _ := NewSenderKey(r)
	ct, _ := sk.Encrypt([]byte("x"))
	forged := bytes.Clone(ct[:len(ct)-SignatureSize])
	forged = append(forged, make([]byte, SignatureSize)...)
	if _, err := recv.Decrypt(forged); !errors.Is(err, ErrInvalidMessage) {
		t.Fatal(err)
	}
	octs, _ := other.Encrypt([]byte("other"))
	if _, err := recv.Decrypt(octs); !errors.Is(err, ErrInvalidMessage) {
		t.Fatal(err)
	}
	// Bounds.
	var far []byte
	for range MaxSkip + 2 {
		far, _ = sk.Encrypt([]byte("far"))
	}
	if _, err := recv.Decrypt(far); !errors.Is(err, ErrTooManySkipped) {
		t.Fatalf("far: %v", err)
	}
	// Serialisation round trips and both halves keep working.
	sk2, err := UnmarshalSenderKey(mustMarshal(t, sk))
	if err != nil {
		t.Fatal(err)
	}
	recv2, err := NewSenderKeyReceiver(sk2.Distribution())
	if err != nil {
		t.Fatal(err)
	}
	recv3, err := UnmarshalSenderKeyReceiver(mustMarshal(t, recv2))
	if err != nil {
		t.Fatal(err)
	}
	ct, _ = sk2.Encrypt([]byte("after restore"))
	if pt, err := recv3.Decrypt(ct); err != nil || string(pt) != "after restore" {
		t.Fatal(err)
	}
}

func TestSenderKeyRotationOnMembershipChange(t *testing.T) {
	r := newDetRand(102)
	old, _ := NewSenderKey(r)
	removed, _ := NewSenderKeyReceiver(old.Distribution())
	staying, _ := NewSenderKeyReceiver(old.Distribution())
	ct, _ := old.Encrypt([]byte("before"))
	for _, rc := range []*SenderKeyReceiver{removed, staying} {
		if _, err := rc.Decrypt(ct); err != nil {
			t.Fatal(err)
		}
	}
	// Membership changes: the sender rotates and distributes the new key to
	// the remaining members only.
	fresh, _ := NewSenderKey(r)
	if fresh.KeyID() == old.KeyID() {
		t.Fatal("same key id")
	}
	stayingNew, _ := NewSenderKeyReceiver(fresh.Distribution())
	ct, _ = fresh.Encrypt([]byte("after"))
	if _, err := removed.Decrypt(ct); err == nil {
		t.Fatal("removed member decrypted a message after rotation")
	}
	if _, err := staying.Decrypt(ct); err == nil {
		t.Fatal("old receiver decrypted the new key's message")
	}
	if pt, err := stayingNew.Decrypt(ct); err != nil || string(pt) != "after" {
		t.Fatal(err)
	}
}

func TestSenderKeyDistributionParsing(t *testing.T) {
	sk, _ := NewSenderKey(newDetRand(103))
	d := sk.Distribution()
	for _, bad := range [][]byte{nil, d[:1], d[:len(d)-1], append(bytes.Clone(d), 0)} {
		if _, err := NewSenderKeyReceiver(bad); err == nil {
			t.Fatal("accepted malformed distribution")
		}
	}
	v := bytes.Clone(d)
	v[0] = 7
	if _, err := NewSenderKeyReceiver(v); !errors.Is(err, ErrUnsupportedVersion) {
		t.Fatal(err)
	}
}

func TestSafetyNumber(t *testing.T) {
	r := newDetRand(111)
	var a, b []*IdentityKey
	for range 3 {
		k, _ := GenerateIdentityKeyPair(r)
		a = append(a, k.PublicKey())
		k, _ = GenerateIdentityKeyPair(r)
		b = append(b, k.PublicKey())
	}
	sn := SafetyNumber("alice", a, "bob", b)
	if len(sn) != 60 {
		t.Fatalf("len %d", len(sn))
	}
	for _, c := range sn {
		if c < '0' || c > '9' {
			t.Fatalf("non-digit in %q", sn)
		}
	}
	if got := SafetyNumber("bob", b, "alice", a); got != sn {
		t.Fatal("not symmetric")
	}
	if got := SafetyNumber("alice", []*IdentityKey{a[2], a[0], a[1], a[0], nil}, "bob", []*IdentityKey{b[1], b[2], b[0]}); got != sn {
		t.Fatal("depends on device order or duplicates")
	}
	if got := SafetyNumber("alice", a[:2], "bob", b); got == sn {
		t.Fatal("does not cover every device")
	}
	if got := SafetyNumber("alice", a, "bob", b[1:]); got == sn {
		t.Fatal("does not cover every remote device")
	}
	if got := SafetyNumber("alicf", a, "bob", b); got == sn {
		t.Fatal("does not cover the id")
	}
	if f := FormatSafetyNumber(sn); len(f) != 71 || f[5] != ' ' {
		t.Fatalf("format %q", f)
	}
}
