package e2ee

import (
	"crypto/aes"
	"crypto/cipher"
	"crypto/ecdh"
	"crypto/hkdf"
	"crypto/hmac"
	"crypto/sha256"
	"encoding/binary"
	"errors"
	"fmt"
	"io"
)

// Linking a new device to an account (docs/protocol.md, "Linked devices").
//
// The new device shows a link code: a server-chosen link id plus a random
// 80-bit LinkSecret that never reaches the server. The new device's offer
// carries a MAC under the secret (LinkOfferMAC), so the approving primary
// device can tell the offer the server hands it is the one the code names.
// The primary seals its approval to the new device's ephemeral X25519 key,
// mixed with the secret (SealLinkApproval), and signs the account's device
// list (SignDeviceList).

// Sizes and bounds of the linking constructions.
const (
	// LinkSecretSize is the length of a LinkSecret (80 bits).
	LinkSecretSize = 10
	// LinkIDLen is the length of a link id: 8 Crockford base32 characters
	// (40 bits).
	LinkIDLen = 8
	// LinkCodeLen is the number of characters of a link code without
	// separators: the link id then 16 characters encoding the secret.
	LinkCodeLen = LinkIDLen + 16
	// LinkMACSize is the length of an offer MAC (HMAC-SHA-256).
	LinkMACSize = sha256.Size
	// LinkEphemeralKeySize is the length of the X25519 public keys used by
	// the approval.
	LinkEphemeralKeySize = 32
	// MaxLinkApprovalSize is the largest approval plaintext SealLinkApproval
	// accepts (64 KiB).
	MaxLinkApprovalSize = 64 << 10
	// DeviceListContext is the IdentityKeyPair.Sign context of device list
	// signatures.
	DeviceListContext = "petrel-device-list-v1"

	linkTagSize = 16 // AES-GCM tag
)

// Labels of the linking constructions. Changing any of them changes the
// protocol; the linking known-answer tests pin them.
const (
	labelLinkMACKey   = "petrel-link-mac-v1"
	labelLinkOffer    = "petrel-link-offer-v1\x00"
	labelLinkApproval = "petrel-link-approval-v1"
)

// crockford is Crockford's base32 alphabet: digits and upper-case letters
// without I, L, O and U.
const crockford = "0123456789ABCDEFGHJKMNPQRSTVWXYZ"

// crockfordValue maps an input byte to its 5-bit value, or -1. Lower case is
// accepted, I and L read as 1, O as 0.
var crockfordValue = func() (t [256]int8) {
	for i := range t {
		t[i] = -1
	}
	for i := 0; i < len(crockford); i++ {
		c := crockford[i]
		t[c] = int8(i)
		if c >= 'A' && c <= 'Z' {
			t[c+'a'-'A'] = int8(i)
		}
	}
	for _, c := range "iIlL" {
		t[c] = 1
	}
	for _, c := range "oO" {
		t[c] = 0
	}
	return t
}()

var (
	// ErrInvalidLinkCode reports a link code (or link id) that does not
	// parse: wrong length or a character outside Crockford base32. The
	// wrapped message says which; it never repeats the code.
	ErrInvalidLinkCode = errors.New("e2ee: invalid link code")
	// ErrLinkMismatch reports an offer whose MAC does not verify under the
	// code's secret: the code was mistyped, or the offer is not the one the
	// code names (a forged or substituted offer).
	ErrLinkMismatch = errors.New("e2ee: link code does not match the offer")
)

// LinkSecret is the 80-bit secret of a link code. It never reaches the
// server. It prints redacted with every fmt verb; FormatLinkCode is the only
// way to show it.
type LinkSecret [LinkSecretSize]byte

// String returns a redacted description.
func (LinkSecret) String() string { return "e2ee.LinkSecret{" + redactedText + "}" }

// GoString returns the same redacted description as String.
func (s LinkSecret) GoString() string { return s.String() }

// Format writes the redacted description for every verb.
func (s LinkSecret) Format(f fmt.State, _ rune) { formatRedacted(f, s.String()) }

// NewLinkSecret reads a fresh secret from rand (nil means crypto/rand.Reader).
func NewLinkSecret(rand io.Reader) (LinkSecret, error) {
	var s LinkSecret
	b, err := readRand(rand, LinkSecretSize)
	if err != nil {
		return s, err
	}
	copy(s[:], b)
	clear(b)
	return s, nil
}

// NewLinkID returns a fresh link id: 40 bits from rand (nil means
// crypto/rand.Reader) as 8 Crockford base32 characters. The server chooses
// link ids.
func NewLinkID(rand io.Reader) (string, error) {
	b, err := readRand(rand, 5)
	if err != nil {
		return "", err
	}
	return string(crockfordEncode(nil, b)), nil
}

// ValidLinkID reports whether id is a link id in canonical form: exactly 8
// characters of Crockford base32's upper-case alphabet (what NewLinkID and
// ParseLinkCode return).
func ValidLinkID(id string) bool {
	if len(id) != LinkIDLen {
		return false
	}
	for i := 0; i < len(id); i++ {
		v := crockfordValue[id[i]]
		if v < 0 || crockford[v] != id[i] {
			return false
		}
	}
	return true
}

// FormatLinkCode returns the link code for a link id and secret: 24
// upper-case Crockford base32 characters (the 8 of the link id, then 16
// encoding the secret, most significant bit first) in groups of 4 joined by
// '-', e.g. "7K3M-Q9XA-000G-40R4-0M30-E209". linkID must satisfy
// ValidLinkID; with any other value the code does not round-trip through
// ParseLinkCode.
func FormatLinkCode(linkID string, s LinkSecret) string {
	raw := make([]byte, 0, LinkCodeLen)
	raw = append(raw, linkID...)
	raw = crockfordEncode(raw, s[:])
	out := make([]byte, 0, len(raw)+len(raw)/4)
	for i, c := range raw {
		if i > 0 && i%4 == 0 {
			out = append(out, '-')
		}
		out = append(out, c)
	}
	clear(raw)
	return string(out)
}

// ParseLinkCode reads a link code as a person may type it: case-insensitive,
// spaces, tabs, line breaks and dashes ignored, I and L read as 1, O as 0.
// It returns the canonical link id and the secret, or an error wrapping
// ErrInvalidLinkCode that says what is wrong (never repeating the code).
func ParseLinkCode(code string) (linkID string, s LinkSecret, err error) {
	var vals [LinkCodeLen]byte
	n := 0
	for i := 0; i < len(code); i++ {
		c := code[i]
		switch c {
		case ' ', '\t', '\r', '\n', '-':
			continue
		}
		v := crockfordValue[c]
		if v < 0 {
			return "", s, fmt.Errorf("%w: character %d is not a code character (codes use 0-9 and A-Z without U)", ErrInvalidLinkCode, n+1)
		}
		if n == LinkCodeLen {
			return "", s, fmt.Errorf("%w: more than %d characters", ErrInvalidLinkCode, LinkCodeLen)
		}
		vals[n] = byte(v)
		n++
	}
	if n != LinkCodeLen {
		return "", s, fmt.Errorf("%w: %d characters, want %d", ErrInvalidLinkCode, n, LinkCodeLen)
	}
	id := make([]byte, LinkIDLen)
	for i := range id {
		id[i] = crockford[vals[i]]
	}
	// 16 five-bit values are exactly 80 bits: no padding bits to check.
	var acc uint64
	bits, j := 0, 0
	for _, v := range vals[LinkIDLen:] {
		acc = acc<<5 | uint64(v)
		bits += 5
		for bits >= 8 {
			bits -= 8
			s[j] = byte(acc >> bits)
			j++
		}
	}
	clear(vals[:])
	return string(id), s, nil
}

// crockfordEncode appends the base32 encoding of b (whose bit length must be
// a multiple of 5: 5 or 10 bytes here), most significant bit first.
func crockfordEncode(dst, b []byte) []byte {
	var acc uint64
	bits := 0
	for _, x := range b {
		acc = acc<<8 | uint64(x)
		bits += 8
		for bits >= 5 {
			bits -= 5
			dst = append(dst, crockford[(acc>>bits)&31])
		}
	}
	return dst
}

// LinkOfferMAC returns the MAC that binds a new device's offer to the link
// secret:
//
//	key = HKDF-SHA-256(salt = none, ikm = secret, info = "petrel-link-mac-v1", L = 32)
//	mac = HMAC-SHA-256(key, "petrel-link-offer-v1\x00" ||
//	        u32 len || authKey || u32 len || identityKey || u32 len || ephemeralKey)
//
// authKey is the new device's Ed25519 auth public key, identityKey its
// IdentityKey encoding, ephemeralKey its X25519 link ephemeral public key.
func LinkOfferMAC(s LinkSecret, authKey, identityKey, ephemeralKey []byte) []byte {
	key, err := hkdf.Key(sha256.New, s[:], nil, labelLinkMACKey, 32)
	if err != nil {
		panic("e2ee: hkdf: " + err.Error()) // unreachable: fixed sizes
	}
	h := hmac.New(sha256.New, key)
	clear(key)
	h.Write([]byte(labelLinkOffer))
	for _, part := range [][]byte{authKey, identityKey, ephemeralKey} {
		var n [4]byte
		binary.BigEndian.PutUint32(n[:], uint32(len(part)))
		h.Write(n[:])
		h.Write(part)
	}
	return h.Sum(nil)
}

// VerifyLinkOfferMAC checks an offer MAC in constant time. It returns
// ErrInvalidKey when a key has the wrong length (auth key 32 bytes, identity
// key IdentityKeySize, ephemeral key 32) and ErrLinkMismatch when the MAC
// does not verify.
func VerifyLinkOfferMAC(s LinkSecret, authKey, identityKey, ephemeralKey, mac []byte) error {
	if len(authKey) != 32 || len(identityKey) != IdentityKeySize || len(ephemeralKey) != LinkEphemeralKeySize {
		return ErrInvalidKey
	}
	if !hmac.Equal(LinkOfferMAC(s, authKey, identityKey, ephemeralKey), mac) {
		return ErrLinkMismatch
	}
	return nil
}

// GenerateLinkEphemeral returns a fresh X25519 key pair for one link (32
// bytes from rand; nil means crypto/rand.Reader). The new device keeps the
// private key until the approval arrives and then discards it.
func GenerateLinkEphemeral(rand io.Reader) (*ecdh.PrivateKey, error) {
	return newX25519(rand)
}

// SealLinkApproval encrypts an approval for the new device whose link
// ephemeral public key is newDeviceEphemeral. It generates the approver's
// ephemeral pair (32 bytes from rand; nil means crypto/rand.Reader) and
// returns its public key with the ciphertext:
//
//	shared = X25519(e_p, E_n)                       (low-order E_n: ErrInvalidKey)
//	key    = HKDF-SHA-256(salt = secret, ikm = shared,
//	                      info = "petrel-link-approval-v1" || E_n || E_p, L = 32)
//	sealed = AES-256-GCM(key, nonce = 12 zero bytes, plaintext,
//	                     aad = "petrel-link-approval-v1")
//
// The key is used once (e_p is fresh), so the fixed nonce is safe. Plaintexts
// over MaxLinkApprovalSize fail with ErrMessageTooLarge.
func SealLinkApproval(rand io.Reader, s LinkSecret, newDeviceEphemeral []byte, plaintext []byte) (approverEphemeral, sealed []byte, err error) {
	if len(plaintext) > MaxLinkApprovalSize {
		return nil, nil, ErrMessageTooLarge
	}
	if len(newDeviceEphemeral) != LinkEphemeralKeySize {
		return nil, nil, ErrInvalidKey
	}
	ep, err := newX25519(rand)
	if err != nil {
		return nil, nil, err
	}
	shared, err := dh(ep, newDeviceEphemeral)
	if err != nil {
		return nil, nil, err
	}
	approverEphemeral = ep.PublicKey().Bytes()
	aead := linkApprovalAEAD(s, shared, newDeviceEphemeral, approverEphemeral)
	clear(shared)
	sealed = aead.Seal(nil, make([]byte, aead.NonceSize()), plaintext, []byte(labelLinkApproval))
	return approverEphemeral, sealed, nil
}

// OpenLinkApproval decrypts an approval sealed by SealLinkApproval. priv is
// the new device's link ephemeral private key (X25519). It returns
// ErrInvalidKey for a malformed or low-order approverEphemeral (or a priv
// that is not X25519) and ErrInvalidMessage when the ciphertext does not
// authenticate: a wrong secret, a wrong key, or tampering.
func OpenLinkApproval(s LinkSecret, priv *ecdh.PrivateKey, approverEphemeral, sealed []byte) ([]byte, error) {
	if priv == nil || priv.Curve() != ecdh.X25519() || len(approverEphemeral) != LinkEphemeralKeySize {
		return nil, ErrInvalidKey
	}
	if len(sealed) < linkTagSize || len(sealed) > MaxLinkApprovalSize+linkTagSize {
		return nil, ErrInvalidMessage
	}
	shared, err := dh(priv, approverEphemeral)
	if err != nil {
		return nil, err
	}
	aead := linkApprovalAEAD(s, shared, priv.PublicKey().Bytes(), approverEphemeral)
	clear(shared)
	pt, err := aead.Open(nil, make([]byte, aead.NonceSize()), sealed, []byte(labelLinkApproval))
	if err != nil {
		return nil, ErrInvalidMessage
	}
	return pt, nil
}

func linkApprovalAEAD(s LinkSecret, shared, newEph, approverEph []byte) cipher.AEAD {
	info := make([]byte, 0, len(labelLinkApproval)+len(newEph)+len(approverEph))
	info = append(info, labelLinkApproval...)
	info = append(info, newEph...)
	info = append(info, approverEph...)
	key, err := hkdf.Key(sha256.New, shared, s[:], string(info), 32)
	if err != nil {
		panic("e2ee: hkdf: " + err.Error()) // unreachable: fixed sizes
	}
	block, err := aes.NewCipher(key)
	clear(key)
	if err != nil {
		panic("e2ee: aes: " + err.Error()) // unreachable: 32-byte key
	}
	aead, err := cipher.NewGCM(block)
	if err != nil {
		panic("e2ee: gcm: " + err.Error()) // unreachable
	}
	return aead
}

// SignDeviceList signs a serialised device list with the primary device's
// identity: IdentityKeyPair.Sign with context DeviceListContext
// ("petrel-device-list-v1"). proto/petrel/v1 builds and checks the list
// itself (SignDeviceList, VerifyDeviceList there).
func SignDeviceList(k *IdentityKeyPair, list []byte) ([]byte, error) {
	if k == nil {
		return nil, ErrInvalidKey
	}
	return k.Sign(DeviceListContext, list)
}

// VerifyDeviceListSignature checks a signature made by SignDeviceList. It
// returns ErrBadSignature if it does not verify (ErrInvalidKey for a nil
// key).
func VerifyDeviceListSignature(k *IdentityKey, list, sig []byte) error {
	if k == nil {
		return ErrInvalidKey
	}
	return k.Verify(DeviceListContext, list, sig)
}
