package e2ee

import "errors"

// Errors returned by this package. Callers branch on them with errors.Is.
// Error strings never contain key material or message contents.
var (
	// ErrInvalidMessage reports a malformed, truncated, forged or
	// unauthenticated message (including an AEAD or signature failure on a
	// message).
	ErrInvalidMessage = errors.New("e2ee: invalid message")
	// ErrDuplicateMessage reports a message whose key was already used: a
	// replay of an already-decrypted message (or, rarely, a message whose
	// skipped key was evicted under the bounds; it can never be decrypted).
	ErrDuplicateMessage = errors.New("e2ee: duplicate message")
	// ErrBadSignature reports a prekey or identity signature that does not
	// verify.
	ErrBadSignature = errors.New("e2ee: bad signature")
	// ErrPreKeyNotFound reports an unknown or already consumed prekey id. A
	// PreKeyStore returns it (possibly wrapped) for ids it does not hold.
	ErrPreKeyNotFound = errors.New("e2ee: prekey not found")
	// ErrTooManySkipped reports a message that would need more skipped
	// message keys than the bounds allow (see MaxSkip).
	ErrTooManySkipped = errors.New("e2ee: too many skipped messages")
	// ErrUnsupportedVersion reports an unknown message or state format
	// version.
	ErrUnsupportedVersion = errors.New("e2ee: unsupported version")
	// ErrInvalidState reports serialized state (a session, key pair or
	// sender key) that does not decode.
	ErrInvalidState = errors.New("e2ee: invalid serialized state")
	// ErrInvalidKey reports a malformed public key or prekey bundle.
	ErrInvalidKey = errors.New("e2ee: invalid key")
	// ErrNoSession reports that no session in a SessionRecord matches a
	// message (for a PreKey message: call AcceptSession and add the result).
	ErrNoSession = errors.New("e2ee: no matching session")
	// ErrMessageTooLarge reports a plaintext larger than MaxPlaintextSize.
	ErrMessageTooLarge = errors.New("e2ee: message too large")
	// ErrChainExhausted reports a sending chain that reached 2^32-1
	// messages; start a new session or sender key.
	ErrChainExhausted = errors.New("e2ee: sending chain exhausted")
)

// Bounds. They are part of the protocol specification (docs/protocol.md).
const (
	// MaxPlaintextSize is the largest plaintext Encrypt accepts and the
	// largest a decoder considers (1 MiB). Larger payloads (media) are
	// encrypted separately and referenced from a message.
	MaxPlaintextSize = 1 << 20

	// MaxSkip is the largest number of message keys one receiving chain may
	// skip for a single incoming message, and the most skipped keys stored
	// for one chain (pairwise sessions and sender keys).
	MaxSkip = 1000

	// MaxSkippedTotal is the most skipped message keys a session (or a
	// sender-key receiver) stores in total; the oldest are evicted first.
	MaxSkippedTotal = 2000

	// MaxOldReceivingChains is how many previous receiving chains a session
	// keeps (besides the current one) so messages delayed across up to that
	// many DH ratchet turns still decrypt.
	MaxOldReceivingChains = 5

	// MaxArchivedSessions is how many inactive sessions a SessionRecord
	// keeps besides the active one.
	MaxArchivedSessions = 5
)
