package e2ee

import (
	"bytes"
	"errors"
	"testing"
)

func TestSessionEstablishment(t *testing.T) {
	cases := []struct {
		name     string
		opk, kem int
	}{
		{"one-time EC and KEM prekeys", 0, 0},
		{"no one-time EC prekey", -1, 1},
		{"last-resort KEM prekey", 1, -1},
		{"no one-time keys at all", -1, -1},
	}
	for _, tc := range cases {
		t.Run(tc.name, func(t *testing.T) {
			r := newDetRand(7)
			ad, bd := newDevice(t, r), newDevice(t, r)
			bundle := bd.bundle(tc.opk, tc.kem)
			if err := bundle.Verify(); err != nil {
				t.Fatal(err)
			}
			alice, err := InitiateSession(r, ad.identity, bundle)
			if err != nil {
				t.Fatal(err)
			}
			if !alice.PendingPreKey() || !alice.Initiator() {
				t.Fatal("new initiator session should be pending")
			}
			ct1, _ := alice.Encrypt([]byte("one"))
			ct2, _ := alice.Encrypt([]byte("two"))
			if !IsPreKeyMessage(ct1) || !IsPreKeyMessage(ct2) {
				t.Fatal("initiator must send PreKey messages until it hears back")
			}
			id, err := PreKeyMessageIdentity(ct2)
			if err != nil || !id.Equal(ad.identity.PublicKey()) {
				t.Fatalf("PreKeyMessageIdentity: %v", err)
			}
			// Bob receives the second message first.
			bob, pt, used, err := AcceptSession(r, bd.identity, bd.store, ct2)
			if err != nil {
				t.Fatal(err)
			}
			if string(pt) != "two" {
				t.Fatalf("got %q", pt)
			}
			want := UsedPreKeys{SignedPreKeyID: 1, KEMPreKeyID: 999, KEMLastResort: true}
			if tc.opk >= 0 {
				want.HasOneTime, want.OneTimePreKeyID = true, bd.opks[tc.opk].ID
			}
			if tc.kem >= 0 {
				want.KEMPreKeyID, want.KEMLastResort = bd.kems[tc.kem].ID, false
			}
			if used != want {
				t.Fatalf("used = %+v, want %+v", used, want)
			}
			bd.store.consume(used)
			if !bob.RemoteIdentity().Equal(ad.identity.PublicKey()) || !alice.RemoteIdentity().Equal(bd.identity.PublicKey()) {
				t.Fatal("remote identities wrong")
			}
			// The first PreKey message, delayed, decrypts on the session.
			if pt, err := bob.Decrypt(ct1); err != nil || string(pt) != "one" {
				t.Fatalf("delayed PreKey message: %q %v", pt, err)
			}
			if _, err := bob.Decrypt(ct2); !errors.Is(err, ErrDuplicateMessage) {
				t.Fatalf("replayed PreKey message: %v", err)
			}
			// A replay to AcceptSession fails once one-time keys are gone,
			// or yields a duplicate session when only last-resort keys were
			// used (the SessionRecord catches that case).
			_, _, _, err = AcceptSession(r, bd.identity, bd.store, ct1)
			if tc.opk >= 0 || tc.kem >= 0 {
				if !errors.Is(err, ErrPreKeyNotFound) {
					t.Fatalf("replay after consume: %v", err)
				}
			}
			roundTrip(t, bob, alice, "reply")
			if alice.PendingPreKey() {
				t.Fatal("still pending after a reply")
			}
			ct3, _ := alice.Encrypt([]byte("three"))
			if IsPreKeyMessage(ct3) {
				t.Fatal("PreKey message after reply")
			}
			if pt, err := bob.Decrypt(ct3); err != nil || string(pt) != "three" {
				t.Fatal(err)
			}
			for i := range 10 {
				roundTrip(t, alice, bob, "a")
				if i%3 == 0 {
					roundTrip(t, bob, alice, "b")
				}
			}
		})
	}
}

func TestBundleVerification(t *testing.T) {
	r := newDetRand(3)
	d, other := newDevice(t, r), newDevice(t, r)
	flip := func(b []byte, i int) []byte { c := bytes.Clone(b); c[i] ^= 1; return c }
	cases := []struct {
		name   string
		mutate func(b *PreKeyBundle)
		want   error
	}{
		{"valid", func(b *PreKeyBundle) {}, nil},
		{"signed prekey signature", func(b *PreKeyBundle) { b.SignedPreKey.Signature = flip(b.SignedPreKey.Signature, 5) }, ErrBadSignature},
		{"signed prekey key", func(b *PreKeyBundle) { b.SignedPreKey.PublicKey = flip(b.SignedPreKey.PublicKey, 5) }, ErrBadSignature},
		{"signed prekey id", func(b *PreKeyBundle) { b.SignedPreKey.ID++ }, ErrBadSignature},
		{"KEM signature", func(b *PreKeyBundle) { b.KEMPreKey.Signature = flip(b.KEMPreKey.Signature, 9) }, ErrBadSignature},
		{"KEM last-resort flag", func(b *PreKeyBundle) { b.KEMPreKey.LastResort = !b.KEMPreKey.LastResort }, ErrBadSignature},
		{"KEM id", func(b *PreKeyBundle) { b.KEMPreKey.ID++ }, ErrBadSignature},
		{"KEM key length", func(b *PreKeyBundle) { b.KEMPreKey.PublicKey = b.KEMPreKey.PublicKey[:100] }, ErrInvalidKey},
		{"identity of another device", func(b *PreKeyBundle) { b.Identity = other.identity.PublicKey().Bytes() }, ErrBadSignature},
		{"identity binding", func(b *PreKeyBundle) { b.Identity = flip(b.Identity, 40) }, ErrBadSignature},
		{"identity version", func(b *PreKeyBundle) { b.Identity = flip(b.Identity, 0) }, ErrUnsupportedVersion},
		{"identity truncated", func(b *PreKeyBundle) { b.Identity = b.Identity[:64] }, ErrInvalidKey},
		{"one-time key length", func(b *PreKeyBundle) { b.OneTimePreKey.PublicKey = b.OneTimePreKey.PublicKey[:31] }, ErrInvalidKey},
		{"signed prekey signature used as KEM signature", func(b *PreKeyBundle) {
			// Domain separation: a signature over one record type never
			// verifies as another.
			b.KEMPreKey.Signature = b.SignedPreKey.Signature
		}, ErrBadSignature},
	}
	for _, tc := range cases {
		t.Run(tc.name, func(t *testing.T) {
			b := d.bundle(0, 0)
			tc.mutate(b)
			err := b.Verify()
			if !errors.Is(err, tc.want) || (tc.want == nil) != (err == nil) {
				t.Fatalf("Verify = %v, want %v", err, tc.want)
			}
			a := newDevice(t, r)
			_, err = InitiateSession(r, a.identity, b)
			if (tc.want == nil) != (err == nil) {
				t.Fatalf("InitiateSession = %v, want %v", err, tc.want)
			}
		})
	}
	if err := VerifySignedPreKey(d.identity.PublicKey(), d.spk.Public()); err != nil {
		t.Fatal(err)
	}
	if err := VerifyKEMPreKey(d.identity.PublicKey(), d.last.Public()); err != nil {
		t.Fatal(err)
	}
	if err := VerifyKEMPreKey(other.identity.PublicKey(), d.last.Public()); !errors.Is(err, ErrBadSignature) {
		t.Fatal(err)
	}
}

func TestAcceptSessionErrors(t *testing.T) {
	r := newDetRand(4)
	ad, bd := newDevice(t, r), newDevice(t, r)
	alice, err := InitiateSession(r, ad.identity, bd.bundle(0, 0))
	if err != nil {
		t.Fatal(err)
	}
	ct, _ := alice.Encrypt([]byte("hi"))

	// Missing keys in the store.
	for _, del := range []func(){
		func() { delete(bd.store.opks, bd.opks[0].ID) },
		func() { delete(bd.store.kems, bd.kems[0].ID) },
		func() { delete(bd.store.spks, bd.spk.ID) },
	} {
		del()
		if _, _, _, err := AcceptSession(r, bd.identity, bd.store, ct); !errors.Is(err, ErrPreKeyNotFound) {
			t.Fatalf("got %v, want ErrPreKeyNotFound", err)
		}
	}

	// The wrong responder identity: AD and DH2 differ.
	cd := newDevice(t, r)
	cd.store = bd.store
	bd.store.spks[bd.spk.ID] = bd.spk
	bd.store.opks[bd.opks[0].ID] = bd.opks[0]
	bd.store.kems[bd.kems[0].ID] = bd.kems[0]
	if _, _, _, err := AcceptSession(r, cd.identity, bd.store, ct); !errors.Is(err, ErrInvalidMessage) {
		t.Fatalf("wrong responder: %v", err)
	}
	// A normal message is not a PreKey message.
	a2, b2, _, _ := establish(t, 9)
	ct2, _ := b2.Encrypt([]byte("x"))
	if _, _, _, err := AcceptSession(r, bd.identity, bd.store, ct2); !errors.Is(err, ErrInvalidMessage) {
		t.Fatalf("normal message: %v", err)
	}
	_ = a2
	// A PreKey message for a different session.
	if _, err := b2.Decrypt(ct); !errors.Is(err, ErrNoSession) || !errors.Is(err, ErrInvalidMessage) {
		t.Fatalf("foreign PreKey message: %v", err)
	}
	// Finally it works.
	if _, pt, _, err := AcceptSession(r, bd.identity, bd.store, ct); err != nil || string(pt) != "hi" {
		t.Fatalf("accept: %q %v", pt, err)
	}
}

func TestIdentitySignatures(t *testing.T) {
	r := newDetRand(5)
	id, err := GenerateIdentityKeyPair(r)
	if err != nil {
		t.Fatal(err)
	}
	sig, err := id.Sign("petrel auth", []byte("challenge"))
	if err != nil {
		t.Fatal(err)
	}
	if err := id.PublicKey().Verify("petrel auth", []byte("challenge"), sig); err != nil {
		t.Fatal(err)
	}
	if err := id.PublicKey().Verify("petrel auth2", []byte("challenge"), sig); !errors.Is(err, ErrBadSignature) {
		t.Fatal(err)
	}
	if _, err := id.Sign("bad\x00ctx", nil); err == nil {
		t.Fatal("NUL in context accepted")
	}
	if _, err := id.Sign("", nil); err == nil {
		t.Fatal("empty context accepted")
	}
	pk, err := ParseIdentityKey(id.PublicKey().Bytes())
	if err != nil || !pk.Equal(id.PublicKey()) {
		t.Fatal(err)
	}
	if len(pk.Bytes()) != IdentityKeySize {
		t.Fatal("size")
	}
	var nilKey *IdentityKey
	if pk.Equal(nil) || !nilKey.Equal(nil) {
		t.Fatal("nil Equal")
	}
}

func TestSessionRecordSesame(t *testing.T) {
	r := newDetRand(11)
	ad, bd := newDevice(t, r), newDevice(t, r)
	aRec, bRec := NewSessionRecord(), NewSessionRecord()
	if _, err := aRec.Encrypt([]byte("x")); !errors.Is(err, ErrNoSession) {
		t.Fatal(err)
	}
	// Simultaneous initiation: both sides start a session.
	as, err := InitiateSession(r, ad.identity, bd.bundle(0, 0))
	if err != nil {
		t.Fatal(err)
	}
	bs, err := InitiateSession(r, bd.identity, ad.bundle(0, 0))
	if err != nil {
		t.Fatal(err)
	}
	aRec.Promote(as)
	bRec.Promote(bs)
	a1, _ := aRec.Encrypt([]byte("from a"))
	b1, _ := bRec.Encrypt([]byte("from b"))

	recv := func(rec *SessionRecord, d *device, ct []byte, want string) {
		t.Helper()
		pt, err := rec.Decrypt(ct)
		if errors.Is(err, ErrNoSession) {
			var s *Session
			var used UsedPreKeys
			s, pt, used, err = AcceptSession(r, d.identity, d.store, ct)
			if err != nil {
				t.Fatal(err)
			}
			d.store.consume(used)
			rec.Promote(s)
		}
		if err != nil || string(pt) != want {
			t.Fatalf("decrypt: %q %v", pt, err)
		}
	}
	recv(bRec, bd, a1, "from a")
	recv(aRec, ad, b1, "from b")
	if aRec.Len() != 2 || bRec.Len() != 2 {
		t.Fatal("want two sessions each")
	}
	// Each side now sends on the session it accepted; the other side
	// decrypts on its own initiated session and promotes it. They converge.
	for i := range 4 {
		a, _ := aRec.Encrypt([]byte("ping"))
		recv(bRec, bd, a, "ping")
		b, _ := bRec.Encrypt([]byte("pong"))
		recv(aRec, ad, b, "pong")
		_ = i
	}
	// A replayed PreKey message is a duplicate, not a new session.
	if _, err := bRec.Decrypt(a1); !errors.Is(err, ErrDuplicateMessage) {
		t.Fatalf("replay: %v", err)
	}
	// Serialisation round trip keeps working.
	aRec2, err := UnmarshalSessionRecord(mustMarshal(t, aRec))
	if err != nil {
		t.Fatal(err)
	}
	bRec2, err := UnmarshalSessionRecord(mustMarshal(t, bRec))
	if err != nil {
		t.Fatal(err)
	}
	a, _ := aRec2.Encrypt([]byte("after restore"))
	recv(bRec2, bd, a, "after restore")
	// Archive bound.
	for range MaxArchivedSessions + 3 {
		s, err := InitiateSession(r, ad.identity, bd.bundle(-1, -1))
		if err != nil {
			t.Fatal(err)
		}
		aRec.Promote(s)
	}
	if aRec.Len() != 1+MaxArchivedSessions {
		t.Fatalf("len %d", aRec.Len())
	}
}
