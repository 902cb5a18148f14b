package e2ee

import (
	"bytes"
	"errors"
	"testing"
)

func TestStateRoundTrip(t *testing.T) {
	alice, bob, ad, _ := establish(t, 151)
	// Give Bob skipped keys and several chains.
	for range 3 {
		alice.Encrypt([]byte("lost"))
	}
	roundTrip(t, alice, bob, "x")
	roundTrip(t, bob, alice, "y")
	roundTrip(t, alice, bob, "z")
	pending, err := InitiateSession(newDetRand(1), ad.identity, newDevice(t, newDetRand(2)).bundle(0, 0))
	if err != nil {
		t.Fatal(err)
	}
	sk, _ := NewSenderKey(newDetRand(152))
	recv, _ := NewSenderKeyReceiver(sk.Distribution())
	for range 3 {
		sk.Encrypt(nil)
	}
	ct, _ := sk.Encrypt([]byte("g"))
	recv.Decrypt(ct)
	rec := NewSessionRecord()
	rec.Promote(bob)
	rec.Promote(pending)

	type codec struct {
		name string
		v    interface{ MarshalBinary() ([]byte, error) }
		un   func([]byte) (interface{ MarshalBinary() ([]byte, error) }, error)
	}
	wrap := func(f any) func([]byte) (interface{ MarshalBinary() ([]byte, error) }, error) {
		return func(b []byte) (interface{ MarshalBinary() ([]byte, error) }, error) {
			switch f := f.(type) {
			case func([]byte) (*IdentityKeyPair, error):
				return f(b)
			case func([]byte) (*SignedPreKeyPair, error):
				return f(b)
			case func([]byte) (*OneTimePreKeyPair, error):
				return f(b)
			case func([]byte) (*KEMPreKeyPair, error):
				return f(b)
			case func([]byte) (*Session, error):
				return f(b)
			case func([]byte) (*SessionRecord, error):
				return f(b)
			case func([]byte) (*SenderKey, error):
				return f(b)
			case func([]byte) (*SenderKeyReceiver, error):
				return f(b)
			}
			panic("unknown")
		}
	}
	codecs := []codec{
		{"identity", ad.identity, wrap(UnmarshalIdentityKeyPair)},
		{"signed prekey", ad.spk, wrap(UnmarshalSignedPreKeyPair)},
		{"one-time prekey", ad.opks[0], wrap(UnmarshalOneTimePreKeyPair)},
		{"KEM prekey", ad.last, wrap(UnmarshalKEMPreKeyPair)},
		{"session (responder)", bob, wrap(UnmarshalSession)},
		{"session (initiator)", alice, wrap(UnmarshalSession)},
		{"session (pending)", pending, wrap(UnmarshalSession)},
		{"session record", rec, wrap(UnmarshalSessionRecord)},
		{"sender key", sk, wrap(UnmarshalSenderKey)},
		{"sender key receiver", recv, wrap(UnmarshalSenderKeyReceiver)},
	}
	for _, c := range codecs {
		t.Run(c.name, func(t *testing.T) {
			b := mustMarshal(t, c.v)
			v, err := c.un(b)
			if err != nil {
				t.Fatal(err)
			}
			if b2 := mustMarshal(t, v); !bytes.Equal(b, b2) {
				t.Fatal("round trip changed the encoding")
			}
			if len(b) < 2 || b[0] != stateVersion {
				t.Fatal("missing version byte")
			}
			// Version, tag, truncation and extension are all rejected.
			v1 := bytes.Clone(b)
			v1[0] = 2
			if _, err := c.un(v1); !errors.Is(err, ErrUnsupportedVersion) {
				t.Fatalf("version: %v", err)
			}
			v2 := bytes.Clone(b)
			v2[1] ^= 0x40
			if _, err := c.un(v2); err == nil {
				t.Fatal("wrong tag accepted")
			}
			for _, n := range []int{0, 1, 2, len(b) / 2, len(b) - 1} {
				if _, err := c.un(b[:n]); err == nil {
					t.Fatalf("truncated to %d accepted", n)
				}
			}
			if _, err := c.un(append(bytes.Clone(b), 0)); err == nil {
				t.Fatal("trailing byte accepted")
			}
		})
	}
	// Restored key pairs still work: public records match.
	spk2, _ := UnmarshalSignedPreKeyPair(mustMarshal(t, ad.spk))
	if !bytes.Equal(spk2.Public().PublicKey, ad.spk.Public().PublicKey) || !spk2.CreatedAt.Equal(ad.spk.CreatedAt) {
		t.Fatal("signed prekey changed")
	}
	if err := VerifySignedPreKey(ad.identity.PublicKey(), spk2.Public()); err != nil {
		t.Fatal(err)
	}
	id2, _ := UnmarshalIdentityKeyPair(mustMarshal(t, ad.identity))
	if !id2.PublicKey().Equal(ad.identity.PublicKey()) || !bytes.Equal(id2.PublicKey().Bytes(), ad.identity.PublicKey().Bytes()) {
		t.Fatal("identity changed")
	}
	// A restored pending session still sends PreKey messages.
	p2, _ := UnmarshalSession(mustMarshal(t, pending))
	if ct, _ := p2.Encrypt([]byte("p")); !IsPreKeyMessage(ct) {
		t.Fatal("restored pending session lost its PreKey header")
	}
}
