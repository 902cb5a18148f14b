package e2ee

import (
	"errors"
	"io"
	"time"
)

var errNotImplemented = errors.New("e2ee: not implemented yet")

// Errors returned by this package. Callers branch on them with errors.Is.
var (
	// ErrInvalidMessage reports a malformed, forged or unauthenticated message.
	ErrInvalidMessage = errors.New("e2ee: invalid message")
	// ErrDuplicateMessage reports a replay of a message that was already decrypted.
	ErrDuplicateMessage = errors.New("e2ee: duplicate message")
	// ErrBadSignature reports a signature that does not verify.
	ErrBadSignature = errors.New("e2ee: bad signature")
	// ErrPreKeyNotFound reports an unknown or already consumed prekey id.
	ErrPreKeyNotFound = errors.New("e2ee: prekey not found")
	// ErrTooManySkipped reports a message that would exceed the skipped-key bounds.
	ErrTooManySkipped = errors.New("e2ee: too many skipped messages")
	// ErrUnsupportedVersion reports an unknown message or state format version.
	ErrUnsupportedVersion = errors.New("e2ee: unsupported version")
)

// IdentityKeyPair is a device's long-term identity.
type IdentityKeyPair struct{ x int }

// GenerateIdentityKeyPair creates a new identity key pair.
func GenerateIdentityKeyPair(rand io.Reader) (*IdentityKeyPair, error) { return nil, errNotImplemented }

// PublicKey returns the public half.
func (k *IdentityKeyPair) PublicKey() *IdentityKey { return nil }

// MarshalBinary encodes the key pair (private!).
func (k *IdentityKeyPair) MarshalBinary() ([]byte, error) { return nil, errNotImplemented }

// UnmarshalIdentityKeyPair decodes a key pair.
func UnmarshalIdentityKeyPair(b []byte) (*IdentityKeyPair, error) { return nil, errNotImplemented }

// IdentityKey is the public half of an identity.
type IdentityKey struct{ x int }

// ParseIdentityKey decodes an identity key.
func ParseIdentityKey(b []byte) (*IdentityKey, error) { return nil, errNotImplemented }

// Bytes returns the stable encoding.
func (k *IdentityKey) Bytes() []byte { return nil }

// Equal reports whether two identity keys are the same.
func (k *IdentityKey) Equal(o *IdentityKey) bool { return false }

// SignedPreKey is the public signed prekey record.
type SignedPreKey struct {
	ID        uint32
	PublicKey []byte
	Signature []byte
}

// OneTimePreKey is the public one-time prekey record.
type OneTimePreKey struct {
	ID        uint32
	PublicKey []byte
}

// KEMPreKey is the public ML-KEM prekey record.
type KEMPreKey struct {
	ID         uint32
	PublicKey  []byte
	Signature  []byte
	LastResort bool
}

// SignedPreKeyPair is a private signed prekey.
type SignedPreKeyPair struct {
	ID        uint32
	CreatedAt time.Time
}

// GenerateSignedPreKey creates a signed prekey.
func GenerateSignedPreKey(rand io.Reader, id uint32, identity *IdentityKeyPair) (*SignedPreKeyPair, error) {
	return nil, errNotImplemented
}

// Public returns the public record.
func (p *SignedPreKeyPair) Public() SignedPreKey { return SignedPreKey{} }

// MarshalBinary encodes the pair.
func (p *SignedPreKeyPair) MarshalBinary() ([]byte, error) { return nil, errNotImplemented }

// UnmarshalSignedPreKeyPair decodes a pair.
func UnmarshalSignedPreKeyPair(b []byte) (*SignedPreKeyPair, error) { return nil, errNotImplemented }

// OneTimePreKeyPair is a private one-time prekey.
type OneTimePreKeyPair struct{ ID uint32 }

// GenerateOneTimePreKeys creates n one-time prekeys.
func GenerateOneTimePreKeys(rand io.Reader, firstID uint32, n int) ([]*OneTimePreKeyPair, error) {
	return nil, errNotImplemented
}

// Public returns the public record.
func (p *OneTimePreKeyPair) Public() OneTimePreKey { return OneTimePreKey{} }

// MarshalBinary encodes the pair.
func (p *OneTimePreKeyPair) MarshalBinary() ([]byte, error) { return nil, errNotImplemented }

// UnmarshalOneTimePreKeyPair decodes a pair.
func UnmarshalOneTimePreKeyPair(b []byte) (*OneTimePreKeyPair, error) { return nil, errNotImplemented }

// KEMPreKeyPair is a private ML-KEM prekey.
type KEMPreKeyPair struct {
	ID         uint32
	LastResort bool
}

// GenerateKEMPreKey creates a signed ML-KEM prekey.
func GenerateKEMPreKey(rand io.Reader, id uint32, identity *IdentityKeyPair, lastResort bool) (*KEMPreKeyPair, error) {
	return nil, errNotImplemented
}

// Public returns the public record.
func (p *KEMPreKeyPair) Public() KEMPreKey { return KEMPreKey{} }

// MarshalBinary encodes the pair.
func (p *KEMPreKeyPair) MarshalBinary() ([]byte, error) { return nil, errNotImplemented }

// UnmarshalKEMPreKeyPair decodes a pair.
func UnmarshalKEMPreKeyPair(b []byte) (*KEMPreKeyPair, error) { return nil, errNotImplemented }

// VerifySignedPreKey verifies a signed prekey's signature.
func VerifySignedPreKey(identity *IdentityKey, spk SignedPreKey) error { return errNotImplemented }

// VerifyKEMPreKey verifies a KEM prekey's signature.
func VerifyKEMPreKey(identity *IdentityKey, kpk KEMPreKey) error { return errNotImplemented }

// PreKeyBundle is what the server hands out for one device.
type PreKeyBundle struct {
	Identity      []byte
	SignedPreKey  SignedPreKey
	KEMPreKey     KEMPreKey
	OneTimePreKey *OneTimePreKey
}

// Verify parses the identity and verifies both signatures.
func (b *PreKeyBundle) Verify() error { return errNotImplemented }

// PreKeyStore gives the responder its private prekeys.
type PreKeyStore interface {
	SignedPreKey(id uint32) (*SignedPreKeyPair, error)
	OneTimePreKey(id uint32) (*OneTimePreKeyPair, error)
	KEMPreKey(id uint32) (*KEMPreKeyPair, error)
}

// Session is a pairwise Double Ratchet session.
type Session struct{ x int }

// InitiateSession runs PQXDH as the initiator.
func InitiateSession(rand io.Reader, local *IdentityKeyPair, bundle *PreKeyBundle) (*Session, error) {
	return nil, errNotImplemented
}

// IsPreKeyMessage reports whether ciphertext is a PreKey message.
func IsPreKeyMessage(ciphertext []byte) bool { return false }

// UsedPreKeys lists the prekeys a session consumed.
type UsedPreKeys struct {
	HasOneTime      bool
	OneTimePreKeyID uint32
	SignedPreKeyID  uint32
	KEMPreKeyID     uint32
	KEMLastResort   bool
}

// AcceptSession runs PQXDH as the responder.
func AcceptSession(rand io.Reader, local *IdentityKeyPair, store PreKeyStore, ciphertext []byte) (*Session, []byte, UsedPreKeys, error) {
	return nil, nil, UsedPreKeys{}, errNotImplemented
}

// PreKeyMessageIdentity returns the sender identity of a PreKey message.
func PreKeyMessageIdentity(ciphertext []byte) (*IdentityKey, error) { return nil, errNotImplemented }

// Encrypt encrypts a message.
func (s *Session) Encrypt(plaintext []byte) ([]byte, error) { return nil, errNotImplemented }

// Decrypt decrypts a message.
func (s *Session) Decrypt(ciphertext []byte) ([]byte, error) { return nil, errNotImplemented }

// RemoteIdentity returns the peer's identity.
func (s *Session) RemoteIdentity() *IdentityKey { return nil }

// MarshalBinary encodes the session.
func (s *Session) MarshalBinary() ([]byte, error) { return nil, errNotImplemented }

// UnmarshalSession decodes a session.
func UnmarshalSession(b []byte) (*Session, error) { return nil, errNotImplemented }

// SenderKey is my sending state for one group.
type SenderKey struct{ x int }

// NewSenderKey creates a sender key.
func NewSenderKey(rand io.Reader) (*SenderKey, error) { return nil, errNotImplemented }

// Distribution returns the distribution message.
func (k *SenderKey) Distribution() []byte { return nil }

// Encrypt encrypts a group message.
func (k *SenderKey) Encrypt(plaintext []byte) ([]byte, error) { return nil, errNotImplemented }

// MarshalBinary encodes the sender key.
func (k *SenderKey) MarshalBinary() ([]byte, error) { return nil, errNotImplemented }

// UnmarshalSenderKey decodes a sender key.
func UnmarshalSenderKey(b []byte) (*SenderKey, error) { return nil, errNotImplemented }

// SenderKeyReceiver decrypts one remote sender in one group.
type SenderKeyReceiver struct{ x int }

// NewSenderKeyReceiver creates a receiver from a distribution message.
func NewSenderKeyReceiver(distribution []byte) (*SenderKeyReceiver, error) {
	return nil, errNotImplemented
}

// Decrypt decrypts a group message.
func (r *SenderKeyReceiver) Decrypt(ciphertext []byte) ([]byte, error) { return nil, errNotImplemented }

// MarshalBinary encodes the receiver.
func (r *SenderKeyReceiver) MarshalBinary() ([]byte, error) { return nil, errNotImplemented }

// UnmarshalSenderKeyReceiver decodes a receiver.
func UnmarshalSenderKeyReceiver(b []byte) (*SenderKeyReceiver, error) { return nil, errNotImplemented }

// SafetyNumber computes the 60-digit safety number.
func SafetyNumber(localID string, local []*IdentityKey, remoteID string, remote []*IdentityKey) string {
	return ""
}
