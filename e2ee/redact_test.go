package e2ee

import (
	"bytes"
	"encoding/base64"
	"encoding/hex"
	"fmt"
	"strings"
	"testing"
)

func TestPrivateTypesPrintRedacted(t *testing.T) {
	alice, bob, ad, _ := establish(t, 121)
	sk, _ := NewSenderKey(newDetRand(122))
	recv, _ := NewSenderKeyReceiver(sk.Distribution())
	rec := NewSessionRecord()
	rec.Promote(alice)

	// Secrets that must never be printed.
	var secrets [][]byte
	secrets = append(secrets, ad.identity.edPriv.Seed(), ad.identity.xPriv.Bytes(), ad.spk.priv.Bytes(), ad.opks[0].priv.Bytes(), ad.last.dk.Bytes())
	secrets = append(secrets, alice.st.rootKey[:], alice.st.sendCK[:], alice.st.dhs.Bytes(), bob.st.rootKey[:], bob.st.recv[0].ck[:])
	secrets = append(secrets, sk.st.ck[:], sk.st.sig.Seed(), recv.st.ck[:])

	values := []any{
		ad.identity, *ad.identity, ad.spk, *ad.spk, ad.opks[0], *ad.opks[0], ad.last, *ad.last,
		alice, bob, sk, recv, rec,
		struct{ K *IdentityKeyPair }{ad.identity},
		struct{ K SignedPreKeyPair }{*ad.spk},
		[]*KEMPreKeyPair{ad.last},
		map[string]*OneTimePreKeyPair{"k": ad.opks[0]},
	}
	verbs := []string{"%v", "%+v", "%#v", "%s", "%q", "%x", "%X", "%d", "%T %v"}
	for _, v := range values {
		for _, verb := range verbs {
			out := fmt.Sprintf(verb, v)
			for _, sec := range secrets {
				for _, enc := range []string{string(sec), hex.EncodeToString(sec), strings.ToUpper(hex.EncodeToString(sec)), base64.StdEncoding.EncodeToString(sec), fmt.Sprint(sec), fmt.Sprintf("%d", sec[:8])} {
					if strings.Contains(out, enc) {
						t.Fatalf("%s of %T leaks a secret: %s", verb, v, out)
					}
				}
			}
		}
	}
	if s := fmt.Sprint(ad.identity); !strings.Contains(s, "redacted") {
		t.Fatalf("unexpected form %q", s)
	}
	// Printing a zero value does not panic.
	_ = fmt.Sprint(IdentityKeyPair{}, SignedPreKeyPair{}, (*Session)(nil), (*SenderKey)(nil))
}

func TestErrorsCarryNoKeyBytes(t *testing.T) {
	alice, bob, _, bd := establish(t, 131)
	ct, _ := alice.Encrypt([]byte("m"))
	secrets := [][]byte{bob.st.rootKey[:], bob.st.dhs.Bytes(), bd.identity.xPriv.Bytes()}
	var errs []error
	for _, f := range forgeries(ct) {
		if _, err := bob.Decrypt(f); err != nil {
			errs = append(errs, err)
		}
		if _, _, _, err := AcceptSession(nil, bd.identity, bd.store, f); err != nil {
			errs = append(errs, err)
		}
	}
	for _, err := range errs {
		msg := err.Error()
		if len(msg) > 120 {
			t.Fatalf("suspiciously long error %q", msg)
		}
		for _, s := range secrets {
			if strings.Contains(msg, hex.EncodeToString(s)) || bytes.Contains([]byte(msg), s) {
				t.Fatal("error leaks key bytes")
			}
		}
	}
}
