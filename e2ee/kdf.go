package e2ee

import (
	"crypto/aes"
	"crypto/cipher"
	"crypto/ecdh"
	"crypto/hkdf"
	"crypto/hmac"
	"crypto/mlkem"
	"crypto/mlkem/mlkemtest"
	"crypto/rand"
	"crypto/sha256"
	"errors"
	"io"
)

// KDF labels. Changing any of them changes the wire protocol; the
// known-answer tests pin them.
const (
	labelPQXDH          = "Petrel_PQXDH_X25519_SHA-256_ML-KEM-768_v1"
	labelRatchet        = "Petrel e2ee v1 root ratchet"
	labelMessageKeys    = "Petrel e2ee v1 message keys"
	labelMessageAD      = "Petrel e2ee v1 message\x00"
	labelGroupKeys      = "Petrel e2ee v1 group message keys"
	labelGroupAD        = "Petrel e2ee v1 group message\x00"
	labelGroupSignature = "Petrel e2ee v1 group message signature\x00"
	labelIdentityDH     = "Petrel e2ee v1 identity DH key\x00"
	labelSignedPreKey   = "Petrel e2ee v1 signed prekey\x00"
	labelKEMPreKey      = "Petrel e2ee v1 ML-KEM prekey\x00"
	labelAppSignature   = "Petrel e2ee v1 application signature\x00"
	labelTranscript     = "Petrel e2ee v1 PQXDH transcript\x00"
)

// testHookMessageKey, when non-nil (tests only), observes every AEAD key and
// nonce used for encryption, pairwise and group.
var testHookMessageKey func(key, nonce []byte)

func randOrDefault(r io.Reader) io.Reader {
	if r == nil {
		return rand.Reader
	}
	return r
}

var errRandom = errors.New("e2ee: reading randomness failed")

func readRand(r io.Reader, n int) ([]byte, error) {
	b := make([]byte, n)
	if _, err := io.ReadFull(randOrDefault(r), b); err != nil {
		return nil, errRandom
	}
	return b, nil
}

// newX25519 derives an X25519 private key from 32 bytes of r.
func newX25519(r io.Reader) (*ecdh.PrivateKey, error) {
	b, err := readRand(r, 32)
	if err != nil {
		return nil, err
	}
	k, err := ecdh.X25519().NewPrivateKey(b)
	clear(b)
	if err != nil {
		return nil, errRandom
	}
	return k, nil
}

// dh runs X25519. It fails (without revealing anything) on a low-order
// public key, which yields the all-zero output.
func dh(priv *ecdh.PrivateKey, pub []byte) ([]byte, error) {
	p, err := ecdh.X25519().NewPublicKey(pub)
	if err != nil {
		return nil, ErrInvalidKey
	}
	s, err := priv.ECDH(p)
	if err != nil {
		return nil, ErrInvalidKey
	}
	return s, nil
}

// kemEncapsulate encapsulates to ek. With a nil reader (or crypto/rand's)
// it uses the standard randomized ML-KEM.Encaps; with any other reader it
// reads the 32-byte message m from it and runs ML-KEM.Encaps_internal
// (FIPS 203), which is what makes known-answer tests possible.
func kemEncapsulate(r io.Reader, ek *mlkem.EncapsulationKey768) (shared, ct []byte, err error) {
	if r == nil || r == rand.Reader {
		shared, ct = ek.Encapsulate()
		return shared, ct, nil
	}
	m, err := readRand(r, 32)
	if err != nil {
		return nil, nil, err
	}
	shared, ct, err = mlkemtest.Encapsulate768(ek, m)
	clear(m)
	if err != nil {
		return nil, nil, errRandom
	}
	return shared, ct, nil
}

// kdfRoot is KDF_RK: HKDF-SHA256(salt = root key, ikm = DH output) -> new
// root key, chain key.
func kdfRoot(rk [32]byte, dhOut []byte) (newRK, ck [32]byte) {
	out, err := hkdf.Key(sha256.New, dhOut, rk[:], labelRatchet, 64)
	if err != nil {
		panic("e2ee: hkdf: " + err.Error()) // unreachable: fixed sizes
	}
	copy(newRK[:], out[:32])
	copy(ck[:], out[32:])
	clear(out)
	return newRK, ck
}

// kdfChain is KDF_CK: message key = HMAC-SHA256(ck, 0x01), next chain key =
// HMAC-SHA256(ck, 0x02).
func kdfChain(ck [32]byte) (mk, next [32]byte) {
	h := hmac.New(sha256.New, ck[:])
	h.Write([]byte{1})
	h.Sum(mk[:0])
	h.Reset()
	h.Write([]byte{2})
	h.Sum(next[:0])
	return mk, next
}

// messageAEAD expands a message key into an AES-256-GCM key and a 96-bit
// nonce: HKDF-SHA256(salt = 32 zero bytes, ikm = mk, info = label, L = 44).
// When seal is true the test hook (if any) observes the key and nonce.
func messageAEAD(mk [32]byte, label string, seal bool) (cipher.AEAD, []byte) {
	out, err := hkdf.Key(sha256.New, mk[:], make([]byte, 32), label, 44)
	if err != nil {
		panic("e2ee: hkdf: " + err.Error()) // unreachable: fixed sizes
	}
	block, err := aes.NewCipher(out[:32])
	if err != nil {
		panic("e2ee: aes: " + err.Error()) // unreachable: 32-byte key
	}
	aead, err := cipher.NewGCM(block)
	if err != nil {
		panic("e2ee: gcm: " + err.Error()) // unreachable
	}
	nonce := out[32:44:44]
	if seal && testHookMessageKey != nil {
		testHookMessageKey(out[:32], nonce)
	}
	clear(out[:32])
	return aead, nonce
}

// sealMessage encrypts with the AEAD derived from mk, appending to dst.
func sealMessage(dst []byte, mk [32]byte, label string, plaintext, ad []byte) []byte {
	aead, nonce := messageAEAD(mk, label, true)
	return aead.Seal(dst, nonce, plaintext, ad)
}

// openMessage decrypts with the AEAD derived from mk. The tag comparison is
// constant-time (crypto/cipher GCM).
func openMessage(mk [32]byte, label string, ciphertext, ad []byte) ([]byte, error) {
	aead, nonce := messageAEAD(mk, label, false)
	pt, err := aead.Open(nil, nonce, ciphertext, ad)
	if err != nil {
		return nil, ErrInvalidMessage
	}
	return pt, nil
}
