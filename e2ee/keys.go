package e2ee

import (
	"crypto/ecdh"
	"crypto/ed25519"
	"crypto/mlkem"
	"crypto/sha256"
	"crypto/subtle"
	"encoding/hex"
	"fmt"
	"io"
	"strings"
	"time"
)

// Sizes of the public encodings.
const (
	// IdentityKeySize is the length of IdentityKey.Bytes().
	IdentityKeySize = 1 + ed25519.PublicKeySize + 32 + ed25519.SignatureSize
	// PreKeySize is the length of an X25519 public prekey.
	PreKeySize = 32
	// KEMPreKeySize is the length of an ML-KEM-768 encapsulation key.
	KEMPreKeySize = mlkem.EncapsulationKeySize768
	// KEMCiphertextSize is the length of an ML-KEM-768 ciphertext.
	KEMCiphertextSize = mlkem.CiphertextSize768
	// SignatureSize is the length of every signature (Ed25519).
	SignatureSize = ed25519.SignatureSize

	identityKeyVersion  byte = 1
	identityKeyMaterial      = ed25519.PublicKeySize + 32
)

// IdentityKeyPair is a device's long-term identity: an Ed25519 signing key
// and an X25519 Diffie-Hellman key. The DH key is bound to the signing key
// by an Ed25519 signature (label "Petrel e2ee v1 identity DH key") that is
// part of the public encoding and checked by ParseIdentityKey. The private
// halves never appear in String/GoString/Format output or errors.
type IdentityKeyPair struct {
	edPriv ed25519.PrivateKey
	xPriv  *ecdh.PrivateKey
	pub    *IdentityKey
}

// IdentityKey is the public half of an identity: what the server stores and
// what safety numbers cover.
type IdentityKey struct {
	ed  ed25519.PublicKey
	x   [32]byte
	enc []byte // the full IdentityKeySize encoding, signature included
}

// GenerateIdentityKeyPair creates a new identity key pair, reading 64 bytes
// from rand (nil means crypto/rand.Reader): the Ed25519 seed then the X25519
// scalar.
func GenerateIdentityKeyPair(rand io.Reader) (*IdentityKeyPair, error) {
	seed, err := readRand(rand, ed25519.SeedSize)
	if err != nil {
		return nil, err
	}
	defer clear(seed)
	x, err := newX25519(rand)
	if err != nil {
		return nil, err
	}
	return newIdentityKeyPair(seed, x)
}

func newIdentityKeyPair(seed []byte, x *ecdh.PrivateKey) (*IdentityKeyPair, error) {
	edPriv := ed25519.NewKeyFromSeed(seed)
	edPub := edPriv.Public().(ed25519.PublicKey)
	xPub := x.PublicKey().Bytes()
	sig := ed25519.Sign(edPriv, identityBindingMessage(edPub, xPub))
	enc := make([]byte, 0, IdentityKeySize)
	enc = append(enc, identityKeyVersion)
	enc = append(enc, edPub...)
	enc = append(enc, xPub...)
	enc = append(enc, sig...)
	pub, err := ParseIdentityKey(enc)
	if err != nil {
		return nil, err
	}
	return &IdentityKeyPair{edPriv: edPriv, xPriv: x, pub: pub}, nil
}

func identityBindingMessage(edPub, xPub []byte) []byte {
	m := make([]byte, 0, len(labelIdentityDH)+len(edPub)+len(xPub))
	m = append(m, labelIdentityDH...)
	m = append(m, edPub...)
	return append(m, xPub...)
}

// PublicKey returns the public half.
func (k *IdentityKeyPair) PublicKey() *IdentityKey { return k.pub }

// MarshalBinary encodes the key pair, private keys included: store it as a
// secret. Layout: version 1, tag 0x10, Ed25519 seed (32), X25519 scalar
// (32).
func (k *IdentityKeyPair) MarshalBinary() ([]byte, error) {
	w := writer{b: make([]byte, 0, 66)}
	w.byte1(stateVersion)
	w.byte1(tagIdentityKeyPair)
	w.raw(k.edPriv.Seed())
	w.raw(k.xPriv.Bytes())
	return w.b, nil
}

// UnmarshalIdentityKeyPair decodes the output of MarshalBinary.
func UnmarshalIdentityKeyPair(b []byte) (*IdentityKeyPair, error) {
	r, err := stateReader(b, tagIdentityKeyPair)
	if err != nil {
		return nil, err
	}
	seed := r.take(32)
	xb := r.take(32)
	if !r.done() {
		return nil, ErrInvalidState
	}
	x, err := ecdh.X25519().NewPrivateKey(xb)
	if err != nil {
		return nil, ErrInvalidState
	}
	return newIdentityKeyPair(seed, x)
}

// Sign signs message for the application under a context label, e.g.
// "petrel auth challenge". The signed bytes are
// "Petrel e2ee v1 application signature\x00" || context || 0x00 || message,
// which can never collide with the package's own signatures. context must be
// non-empty and contain no NUL byte.
func (k *IdentityKeyPair) Sign(context string, message []byte) ([]byte, error) {
	m, err := appSignatureMessage(context, message)
	if err != nil {
		return nil, err
	}
	return ed25519.Sign(k.edPriv, m), nil
}

func appSignatureMessage(context string, message []byte) ([]byte, error) {
	if context == "" || strings.IndexByte(context, 0) >= 0 {
		return nil, fmt.Errorf("e2ee: invalid signature context")
	}
	m := make([]byte, 0, len(labelAppSignature)+len(context)+1+len(message))
	m = append(m, labelAppSignature...)
	m = append(m, context...)
	m = append(m, 0)
	return append(m, message...), nil
}

// Verify checks a signature made by IdentityKeyPair.Sign with the same
// context. It returns ErrBadSignature if it does not verify.
func (k *IdentityKey) Verify(context string, message, sig []byte) error {
	m, err := appSignatureMessage(context, message)
	if err != nil {
		return err
	}
	if len(sig) != SignatureSize || !ed25519.Verify(k.ed, m, sig) {
		return ErrBadSignature
	}
	return nil
}

// ParseIdentityKey decodes and verifies an identity key (the output of
// Bytes): version 1, Ed25519 public key (32), X25519 public key (32),
// Ed25519 signature over the binding message (64). It returns
// ErrUnsupportedVersion, ErrInvalidKey or ErrBadSignature.
func ParseIdentityKey(b []byte) (*IdentityKey, error) {
	if len(b) == 0 {
		return nil, ErrInvalidKey
	}
	if b[0] != identityKeyVersion {
		return nil, ErrUnsupportedVersion
	}
	if len(b) != IdentityKeySize {
		return nil, ErrInvalidKey
	}
	edPub := b[1:33]
	xPub := b[33:65]
	sig := b[65:]
	if _, err := ecdh.X25519().NewPublicKey(xPub); err != nil {
		return nil, ErrInvalidKey
	}
	if !ed25519.Verify(ed25519.PublicKey(edPub), identityBindingMessage(edPub, xPub), sig) {
		return nil, ErrBadSignature
	}
	k := &IdentityKey{
		ed:  append(ed25519.PublicKey(nil), edPub...),
		enc: append([]byte(nil), b...),
	}
	copy(k.x[:], xPub)
	return k, nil
}

// Bytes returns the stable encoding (IdentityKeySize bytes), what the server
// stores and ParseIdentityKey reads.
func (k *IdentityKey) Bytes() []byte { return append([]byte(nil), k.enc...) }

// material returns the 64 bytes that identify the key: the Ed25519 and
// X25519 public keys (the binding signature is excluded).
func (k *IdentityKey) material() []byte { return k.enc[1 : 1+identityKeyMaterial] }

// Equal reports whether k and o are the same identity (same Ed25519 and
// X25519 public keys). Nil equals only nil.
func (k *IdentityKey) Equal(o *IdentityKey) bool {
	if k == nil || o == nil {
		return k == o
	}
	return subtle.ConstantTimeCompare(k.material(), o.material()) == 1
}

// Fingerprint returns a short hex fingerprint (first 8 bytes of SHA-256 of
// the key material) for logs and debugging. It is not a safety number.
func (k *IdentityKey) Fingerprint() string {
	h := sha256.Sum256(k.material())
	return hex.EncodeToString(h[:8])
}

// String returns the fingerprint form; public keys are not secret.
func (k *IdentityKey) String() string {
	if k == nil {
		return "e2ee.IdentityKey(nil)"
	}
	return "e2ee.IdentityKey(" + k.Fingerprint() + ")"
}

// SignedPreKey is the public signed prekey record the server stores.
// Signature is Ed25519 by the identity over
// "Petrel e2ee v1 signed prekey\x00" || ID (4, big endian) || PublicKey.
type SignedPreKey struct {
	ID        uint32
	PublicKey []byte // X25519, PreKeySize bytes
	Signature []byte
}

// OneTimePreKey is the public one-time X25519 prekey record.
type OneTimePreKey struct {
	ID        uint32
	PublicKey []byte // X25519, PreKeySize bytes
}

// KEMPreKey is the public ML-KEM-768 prekey record. Signature is Ed25519 by
// the identity over "Petrel e2ee v1 ML-KEM prekey\x00" || ID (4, big endian)
// || LastResort (1 byte, 0 or 1) || PublicKey.
type KEMPreKey struct {
	ID         uint32
	PublicKey  []byte // ML-KEM-768 encapsulation key, KEMPreKeySize bytes
	Signature  []byte
	LastResort bool
}

// SignedPreKeyPair is a private signed X25519 prekey. It prints redacted.
type SignedPreKeyPair struct {
	// ID identifies the prekey within its device.
	ID uint32
	// CreatedAt is when the key was generated (for rotation policy).
	CreatedAt time.Time

	priv *ecdh.PrivateKey
	sig  []byte
}

// GenerateSignedPreKey creates an X25519 prekey (32 bytes from rand; nil
// means crypto/rand.Reader) signed by identity. CreatedAt is time.Now().
func GenerateSignedPreKey(rand io.Reader, id uint32, identity *IdentityKeyPair) (*SignedPreKeyPair, error) {
	priv, err := newX25519(rand)
	if err != nil {
		return nil, err
	}
	sig := ed25519.Sign(identity.edPriv, signedPreKeyMessage(id, priv.PublicKey().Bytes()))
	return &SignedPreKeyPair{ID: id, CreatedAt: time.Now().UTC(), priv: priv, sig: sig}, nil
}

func signedPreKeyMessage(id uint32, pub []byte) []byte {
	w := writer{b: make([]byte, 0, len(labelSignedPreKey)+4+len(pub))}
	w.raw([]byte(labelSignedPreKey))
	w.u32(id)
	w.raw(pub)
	return w.b
}

func kemPreKeyMessage(id uint32, lastResort bool, pub []byte) []byte {
	w := writer{b: make([]byte, 0, len(labelKEMPreKey)+5+len(pub))}
	w.raw([]byte(labelKEMPreKey))
	w.u32(id)
	w.bool1(lastResort)
	w.raw(pub)
	return w.b
}

// Public returns the public record to upload.
func (p *SignedPreKeyPair) Public() SignedPreKey {
	return SignedPreKey{ID: p.ID, PublicKey: p.priv.PublicKey().Bytes(), Signature: append([]byte(nil), p.sig...)}
}

// MarshalBinary encodes the pair, private key included. Layout: version 1,
// tag 0x11, ID (4), CreatedAt Unix seconds (8, two's complement),
// nanoseconds (4), X25519 scalar (32), signature (64).
func (p *SignedPreKeyPair) MarshalBinary() ([]byte, error) {
	w := writer{b: make([]byte, 0, 2+4+12+32+64)}
	w.byte1(stateVersion)
	w.byte1(tagSignedPreKeyPair)
	w.u32(p.ID)
	w.u64(uint64(p.CreatedAt.Unix()))
	w.u32(uint32(p.CreatedAt.Nanosecond()))
	w.raw(p.priv.Bytes())
	w.raw(p.sig)
	return w.b, nil
}

// UnmarshalSignedPreKeyPair decodes the output of MarshalBinary.
func UnmarshalSignedPreKeyPair(b []byte) (*SignedPreKeyPair, error) {
	r, err := stateReader(b, tagSignedPreKeyPair)
	if err != nil {
		return nil, err
	}
	p := &SignedPreKeyPair{ID: r.u32()}
	sec := int64(r.u64())
	nsec := r.u32()
	xb := r.take(32)
	p.sig = r.fixed(SignatureSize)
	if !r.done() || nsec >= 1e9 {
		return nil, ErrInvalidState
	}
	p.CreatedAt = time.Unix(sec, int64(nsec)).UTC()
	if p.priv, err = ecdh.X25519().NewPrivateKey(xb); err != nil {
		return nil, ErrInvalidState
	}
	return p, nil
}

// OneTimePreKeyPair is a private one-time X25519 prekey. It prints redacted.
type OneTimePreKeyPair struct {
	// ID identifies the prekey within its device.
	ID uint32

	priv *ecdh.PrivateKey
}

// GenerateOneTimePreKeys creates n one-time prekeys with ids firstID,
// firstID+1, ... (32 bytes of rand each; nil means crypto/rand.Reader).
func GenerateOneTimePreKeys(rand io.Reader, firstID uint32, n int) ([]*OneTimePreKeyPair, error) {
	if n < 0 || uint64(firstID)+uint64(n) > 1<<32 {
		return nil, fmt.Errorf("e2ee: invalid one-time prekey count")
	}
	out := make([]*OneTimePreKeyPair, 0, n)
	for i := range n {
		priv, err := newX25519(rand)
		if err != nil {
			return nil, err
		}
		out = append(out, &OneTimePreKeyPair{ID: firstID + uint32(i), priv: priv})
	}
	return out, nil
}

// Public returns the public record to upload.
func (p *OneTimePreKeyPair) Public() OneTimePreKey {
	return OneTimePreKey{ID: p.ID, PublicKey: p.priv.PublicKey().Bytes()}
}

// MarshalBinary encodes the pair, private key included. Layout: version 1,
// tag 0x12, ID (4), X25519 scalar (32).
func (p *OneTimePreKeyPair) MarshalBinary() ([]byte, error) {
	w := writer{b: make([]byte, 0, 38)}
	w.byte1(stateVersion)
	w.byte1(tagOneTimePreKeyPair)
	w.u32(p.ID)
	w.raw(p.priv.Bytes())
	return w.b, nil
}

// UnmarshalOneTimePreKeyPair decodes the output of MarshalBinary.
func UnmarshalOneTimePreKeyPair(b []byte) (*OneTimePreKeyPair, error) {
	r, err := stateReader(b, tagOneTimePreKeyPair)
	if err != nil {
		return nil, err
	}
	p := &OneTimePreKeyPair{ID: r.u32()}
	xb := r.take(32)
	if !r.done() {
		return nil, ErrInvalidState
	}
	if p.priv, err = ecdh.X25519().NewPrivateKey(xb); err != nil {
		return nil, ErrInvalidState
	}
	return p, nil
}

// KEMPreKeyPair is a private ML-KEM-768 prekey, one-time or last-resort. It
// prints redacted.
type KEMPreKeyPair struct {
	// ID identifies the prekey within its device.
	ID uint32
	// LastResort marks the key that is handed out when no one-time KEM
	// prekey is left; it is not deleted after use (it is rotated like a
	// signed prekey).
	LastResort bool

	dk  *mlkem.DecapsulationKey768
	sig []byte
}

// GenerateKEMPreKey creates an ML-KEM-768 prekey (64-byte seed from rand;
// nil means crypto/rand.Reader) signed by identity.
func GenerateKEMPreKey(rand io.Reader, id uint32, identity *IdentityKeyPair, lastResort bool) (*KEMPreKeyPair, error) {
	seed, err := readRand(rand, mlkem.SeedSize)
	if err != nil {
		return nil, err
	}
	defer clear(seed)
	dk, err := mlkem.NewDecapsulationKey768(seed)
	if err != nil {
		return nil, errRandom
	}
	sig := ed25519.Sign(identity.edPriv, kemPreKeyMessage(id, lastResort, dk.EncapsulationKey().Bytes()))
	return &KEMPreKeyPair{ID: id, LastResort: lastResort, dk: dk, sig: sig}, nil
}

// Public returns the public record to upload.
func (p *KEMPreKeyPair) Public() KEMPreKey {
	return KEMPreKey{ID: p.ID, PublicKey: p.dk.EncapsulationKey().Bytes(), Signature: append([]byte(nil), p.sig...), LastResort: p.LastResort}
}

// MarshalBinary encodes the pair, private key included. Layout: version 1,
// tag 0x13, ID (4), LastResort (1), ML-KEM seed d||z (64), signature (64).
func (p *KEMPreKeyPair) MarshalBinary() ([]byte, error) {
	w := writer{b: make([]byte, 0, 2+5+64+64)}
	w.byte1(stateVersion)
	w.byte1(tagKEMPreKeyPair)
	w.u32(p.ID)
	w.bool1(p.LastResort)
	w.raw(p.dk.Bytes())
	w.raw(p.sig)
	return w.b, nil
}

// UnmarshalKEMPreKeyPair decodes the output of MarshalBinary.
func UnmarshalKEMPreKeyPair(b []byte) (*KEMPreKeyPair, error) {
	r, err := stateReader(b, tagKEMPreKeyPair)
	if err != nil {
		return nil, err
	}
	p := &KEMPreKeyPair{ID: r.u32(), LastResort: r.bool1()}
	seed := r.take(mlkem.SeedSize)
	p.sig = r.fixed(SignatureSize)
	if !r.done() {
		return nil, ErrInvalidState
	}
	if p.dk, err = mlkem.NewDecapsulationKey768(seed); err != nil {
		return nil, ErrInvalidState
	}
	return p, nil
}

// VerifySignedPreKey checks spk's public key length and its signature by
// identity. It returns ErrInvalidKey or ErrBadSignature.
func VerifySignedPreKey(identity *IdentityKey, spk SignedPreKey) error {
	if identity == nil || len(spk.PublicKey) != PreKeySize {
		return ErrInvalidKey
	}
	if _, err := ecdh.X25519().NewPublicKey(spk.PublicKey); err != nil {
		return ErrInvalidKey
	}
	if len(spk.Signature) != SignatureSize || !ed25519.Verify(identity.ed, signedPreKeyMessage(spk.ID, spk.PublicKey), spk.Signature) {
		return ErrBadSignature
	}
	return nil
}

// VerifyKEMPreKey checks kpk's encapsulation key (length and FIPS 203
// encoding check) and its signature by identity. It returns ErrInvalidKey
// or ErrBadSignature.
func VerifyKEMPreKey(identity *IdentityKey, kpk KEMPreKey) error {
	if identity == nil || len(kpk.PublicKey) != KEMPreKeySize {
		return ErrInvalidKey
	}
	if _, err := mlkem.NewEncapsulationKey768(kpk.PublicKey); err != nil {
		return ErrInvalidKey
	}
	if len(kpk.Signature) != SignatureSize || !ed25519.Verify(identity.ed, kemPreKeyMessage(kpk.ID, kpk.LastResort, kpk.PublicKey), kpk.Signature) {
		return ErrBadSignature
	}
	return nil
}

// PreKeyBundle is what the server hands out for one device: everything an
// initiator needs to run PQXDH.
type PreKeyBundle struct {
	// Identity is the device's IdentityKey.Bytes().
	Identity []byte
	// SignedPreKey is the device's current signed prekey.
	SignedPreKey SignedPreKey
	// KEMPreKey is a one-time ML-KEM prekey if the server had one, else the
	// last-resort one.
	KEMPreKey KEMPreKey
	// OneTimePreKey is nil when the device has none left; the session still
	// establishes (with one DH fewer).
	OneTimePreKey *OneTimePreKey
}

// Verify parses the identity and verifies both prekey signatures and every
// public key's encoding. InitiateSession calls it too.
func (b *PreKeyBundle) Verify() error {
	_, err := b.verify()
	return err
}

func (b *PreKeyBundle) verify() (*IdentityKey, error) {
	id, err := ParseIdentityKey(b.Identity)
	if err != nil {
		return nil, err
	}
	if err := VerifySignedPreKey(id, b.SignedPreKey); err != nil {
		return nil, err
	}
	if err := VerifyKEMPreKey(id, b.KEMPreKey); err != nil {
		return nil, err
	}
	if b.OneTimePreKey != nil {
		if len(b.OneTimePreKey.PublicKey) != PreKeySize {
			return nil, ErrInvalidKey
		}
		if _, err := ecdh.X25519().NewPublicKey(b.OneTimePreKey.PublicKey); err != nil {
			return nil, ErrInvalidKey
		}
	}
	return id, nil
}

// stateReader checks the version and tag of a serialized state.
func stateReader(b []byte, tag byte) (*reader, error) {
	if len(b) < 2 {
		return nil, ErrInvalidState
	}
	if b[0] != stateVersion {
		return nil, ErrUnsupportedVersion
	}
	if b[1] != tag {
		return nil, ErrInvalidState
	}
	return &reader{b: b[2:]}, nil
}
