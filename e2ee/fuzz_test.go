package e2ee

import (
	"bytes"
	"fmt"
	"os"
	"path/filepath"
	"sync"
	"testing"
)

// fuzzFixture is a deterministic set of real sessions and messages used to
// seed and drive the fuzz targets.
type fuzzFixture struct {
	alice, bob   *Session
	bobState     []byte
	bobDevice    *device
	aliceDevice  *device
	messages     [][]byte // real pairwise messages to bob: PreKey and normal
	preKey       []byte   // a fresh PreKey message for bobDevice
	senderKey    *SenderKey
	distribution []byte
	group        [][]byte
	recvState    []byte
	states       [][]byte // serialized states of every type
}

var (
	fixtureOnce sync.Once
	fixture     *fuzzFixture
)

func getFixture(t testing.TB) *fuzzFixture {
	fixtureOnce.Do(func() {
		fx := &fuzzFixture{}
		r := newDetRand(777)
		fx.aliceDevice, fx.bobDevice = newDevice(t, r), newDevice(t, r)
		a, err := InitiateSession(r, fx.aliceDevice.identity, fx.bobDevice.bundle(0, 0))
		if err != nil {
			t.Fatal(err)
		}
		first, _ := a.Encrypt([]byte("first"))
		second, _ := a.Encrypt([]byte("second, delayed"))
		b, _, _, err := AcceptSession(r, fx.bobDevice.identity, fx.bobDevice.store, first)
		if err != nil {
			t.Fatal(err)
		}
		reply, _ := b.Encrypt([]byte("reply"))
		if _, err := a.Decrypt(reply); err != nil {
			t.Fatal(err)
		}
		fx.messages = append(fx.messages, first, second)
		for i := range 3 {
			ct, _ := a.Encrypt([]byte(fmt.Sprint("normal ", i)))
			fx.messages = append(fx.messages, ct)
		}
		fx.alice, fx.bob = a, b
		fx.bobState = mustMarshal(t, b)
		a2, err := InitiateSession(r, fx.aliceDevice.identity, fx.bobDevice.bundle(1, -1))
		if err != nil {
			t.Fatal(err)
		}
		fx.preKey, _ = a2.Encrypt([]byte("fresh"))

		fx.senderKey, _ = NewSenderKey(r)
		fx.distribution = fx.senderKey.Distribution()
		recv, _ := NewSenderKeyReceiver(fx.distribution)
		for i := range 3 {
			ct, _ := fx.senderKey.Encrypt([]byte(fmt.Sprint("group ", i)))
			fx.group = append(fx.group, ct)
		}
		fx.recvState = mustMarshal(t, recv)
		rec := NewSessionRecord()
		rec.Promote(b)
		for _, v := range []interface{ MarshalBinary() ([]byte, error) }{
			fx.aliceDevice.identity, fx.aliceDevice.spk, fx.aliceDevice.opks[0], fx.aliceDevice.last,
			a, b, a2, rec, fx.senderKey, recv,
		} {
			fx.states = append(fx.states, mustMarshal(t, v))
		}
		fixture = fx
	})
	if fixture == nil {
		t.Fatal("fixture failed")
	}
	return fixture
}

func FuzzDecrypt(f *testing.F) {
	fx := getFixture(f)
	for _, m := range fx.messages {
		f.Add(m)
	}
	f.Add(fx.preKey)
	f.Add(fx.group[0])
	f.Add([]byte{1, 1})
	bob, err := UnmarshalSession(fx.bobState)
	if err != nil {
		f.Fatal(err)
	}
	bob.rand = newDetRand(1)
	f.Fuzz(func(t *testing.T, data []byte) {
		before := mustMarshal(t, bob)
		_, err := bob.Decrypt(data)
		if err != nil {
			if !bytes.Equal(before, mustMarshal(t, bob)) {
				t.Fatal("failed decrypt changed the session state")
			}
			return
		}
		// A real message decrypted: start the next input from the
		// original state again.
		if bob, err = UnmarshalSession(fx.bobState); err != nil {
			t.Fatal(err)
		}
		bob.rand = newDetRand(1)
	})
}

func FuzzAcceptSession(f *testing.F) {
	fx := getFixture(f)
	f.Add(fx.preKey)
	for _, m := range fx.messages {
		f.Add(m)
	}
	f.Add([]byte{1, 2})
	r := newDetRand(2)
	f.Fuzz(func(t *testing.T, data []byte) {
		IsPreKeyMessage(data)
		if id, err := PreKeyMessageIdentity(data); err == nil && id == nil {
			t.Fatal("nil identity without error")
		}
		s, pt, _, err := AcceptSession(r, fx.bobDevice.identity, fx.bobDevice.store, data)
		if err == nil {
			if s == nil || pt == nil && len(data) > preKeyMessageHdr+tagSize {
				t.Fatal("success without session")
			}
			if _, err := s.Encrypt([]byte("ok")); err != nil {
				t.Fatal(err)
			}
		}
	})
}

func FuzzParseIdentityKey(f *testing.F) {
	fx := getFixture(f)
	f.Add(fx.aliceDevice.identity.PublicKey().Bytes())
	f.Add(fx.bobDevice.identity.PublicKey().Bytes())
	f.Add([]byte{1})
	f.Fuzz(func(t *testing.T, data []byte) {
		k, err := ParseIdentityKey(data)
		if err != nil {
			return
		}
		if !bytes.Equal(k.Bytes(), data) {
			t.Fatal("Bytes does not round-trip")
		}
		k2, err := ParseIdentityKey(k.Bytes())
		if err != nil || !k2.Equal(k) {
			t.Fatal("re-parse failed")
		}
		_ = SafetyNumber("a", []*IdentityKey{k}, "b", []*IdentityKey{k2})
	})
}

func FuzzUnmarshalSession(f *testing.F) {
	fx := getFixture(f)
	for _, s := range fx.states {
		f.Add(s)
	}
	f.Fuzz(func(t *testing.T, data []byte) {
		// Every state decoder must reject or round-trip; none may panic.
		if s, err := UnmarshalSession(data); err == nil {
			if !bytes.Equal(mustMarshal(t, s), data) {
				t.Fatal("session does not round-trip")
			}
			s.rand = newDetRand(3)
			s.Encrypt([]byte("x"))
			s.Decrypt(fx.messages[len(fx.messages)-1])
		}
		if r, err := UnmarshalSessionRecord(data); err == nil {
			if !bytes.Equal(mustMarshal(t, r), data) {
				t.Fatal("record does not round-trip")
			}
			r.Decrypt(fx.messages[2])
		}
		if k, err := UnmarshalSenderKey(data); err == nil {
			k.Encrypt([]byte("x"))
		}
		if r, err := UnmarshalSenderKeyReceiver(data); err == nil {
			if !bytes.Equal(mustMarshal(t, r), data) {
				t.Fatal("receiver does not round-trip")
			}
			r.Decrypt(fx.group[1])
		}
		if k, err := UnmarshalIdentityKeyPair(data); err == nil {
			k.Sign("x", nil)
		}
		if k, err := UnmarshalSignedPreKeyPair(data); err == nil {
			k.Public()
		}
		if k, err := UnmarshalOneTimePreKeyPair(data); err == nil {
			k.Public()
		}
		if k, err := UnmarshalKEMPreKeyPair(data); err == nil {
			k.Public()
		}
	})
}

func FuzzSenderKeyDecrypt(f *testing.F) {
	fx := getFixture(f)
	for _, g := range fx.group {
		f.Add(g)
	}
	f.Add(fx.distribution)
	f.Add(fx.messages[2])
	recv, err := UnmarshalSenderKeyReceiver(fx.recvState)
	if err != nil {
		f.Fatal(err)
	}
	f.Fuzz(func(t *testing.T, data []byte) {
		SenderKeyMessageKeyID(data)
		if r, err := NewSenderKeyReceiver(data); err == nil {
			r.Decrypt(fx.group[0])
		}
		before := mustMarshal(t, recv)
		if _, err := recv.Decrypt(data); err != nil {
			if !bytes.Equal(before, mustMarshal(t, recv)) {
				t.Fatal("failed group decrypt changed the state")
			}
			return
		}
		if recv, err = UnmarshalSenderKeyReceiver(fx.recvState); err != nil {
			t.Fatal(err)
		}
	})
}

func FuzzPreKeyBundle(f *testing.F) {
	fx := getFixture(f)
	b := fx.bobDevice.bundle(0, 0)
	f.Add(b.Identity, b.SignedPreKey.ID, b.SignedPreKey.PublicKey, b.SignedPreKey.Signature,
		b.KEMPreKey.ID, b.KEMPreKey.PublicKey, b.KEMPreKey.Signature, b.KEMPreKey.LastResort, b.OneTimePreKey.ID, b.OneTimePreKey.PublicKey, true)
	b = fx.bobDevice.bundle(-1, -1)
	f.Add(b.Identity, b.SignedPreKey.ID, b.SignedPreKey.PublicKey, b.SignedPreKey.Signature,
		b.KEMPreKey.ID, b.KEMPreKey.PublicKey, b.KEMPreKey.Signature, b.KEMPreKey.LastResort, uint32(0), []byte(nil), false)
	r := newDetRand(4)
	f.Fuzz(func(t *testing.T, id []byte, spkID uint32, spkPub, spkSig []byte, kemID uint32, kemPub, kemSig []byte, last bool, opkID uint32, opkPub []byte, hasOPK bool) {
		b := &PreKeyBundle{
			Identity:     id,
			SignedPreKey: SignedPreKey{ID: spkID, PublicKey: spkPub, Signature: spkSig},
			KEMPreKey:    KEMPreKey{ID: kemID, PublicKey: kemPub, Signature: kemSig, LastResort: last},
		}
		if hasOPK {
			b.OneTimePreKey = &OneTimePreKey{ID: opkID, PublicKey: opkPub}
		}
		verr := b.Verify()
		s, err := InitiateSession(r, fx.aliceDevice.identity, b)
		if (verr == nil) != (err == nil) {
			t.Fatalf("Verify %v but InitiateSession %v", verr, err)
		}
		if err == nil {
			if _, err := s.Encrypt([]byte("x")); err != nil {
				t.Fatal(err)
			}
		}
	})
}

// TestWriteFuzzCorpus writes a few real messages as checked-in seed files
// under testdata/fuzz/<FuzzName>/ (run with -update).
func TestWriteFuzzCorpus(t *testing.T) {
	if !*updateKAT {
		t.Skip("run with -update to regenerate the checked-in fuzz seeds")
	}
	fx := getFixture(t)
	write := func(target, name string, data []byte) {
		dir := filepath.Join("testdata", "fuzz", target)
		if err := os.MkdirAll(dir, 0o755); err != nil {
			t.Fatal(err)
		}
		body := fmt.Sprintf("go test fuzz v1\n[]byte(%q)\n", data)
		if err := os.WriteFile(filepath.Join(dir, name), []byte(body), 0o644); err != nil {
			t.Fatal(err)
		}
	}
	write("FuzzDecrypt", "prekey-message", fx.messages[1])
	write("FuzzDecrypt", "normal-message", fx.messages[3])
	write("FuzzAcceptSession", "prekey-message", fx.preKey)
	write("FuzzParseIdentityKey", "identity", fx.aliceDevice.identity.PublicKey().Bytes())
	write("FuzzUnmarshalSession", "session", fx.states[5])
	write("FuzzUnmarshalSession", "sender-key-receiver", fx.states[9])
	write("FuzzSenderKeyDecrypt", "group-message", fx.group[2])
}
