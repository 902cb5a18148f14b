package e2ee

import (
	"crypto/ed25519"
	"encoding/binary"
	"fmt"
	"io"
	"math"
	"slices"
	"sync"
)

// Sender keys (WhatsApp/Signal groups). Each member device keeps one
// SenderKey per group for sending and one SenderKeyReceiver per (group,
// member device) for receiving. The SenderKeyDistributionMessage
// (Distribution) travels to every member over the pairwise sessions, which
// authenticate it. When membership changes, every remaining member creates a
// new SenderKey (NewSenderKey) and distributes it, so removed members
// cannot read later messages and new members cannot read earlier ones.
//
// Distribution message (type 4), 74 bytes:
//
//	0   version (1)
//	1   type = 4
//	2   key id (4)
//	6   iteration (4): the next message number
//	10  chain key at that iteration (32)
//	42  Ed25519 signature public key (32)
//
// Group message (type 3):
//
//	0   version (1)
//	1   type = 3
//	2   key id (4)
//	6   iteration (4)
//	10  AES-256-GCM ciphertext || tag
//	-64 Ed25519 signature over "Petrel e2ee v1 group message signature\x00"
//	    || every preceding byte
const (
	distributionSize = 2 + 4 + 4 + 32 + 32
	groupHeaderSize  = 2 + 4 + 4
	groupMinSize     = groupHeaderSize + tagSize + SignatureSize
	maxGroupSize     = groupHeaderSize + MaxPlaintextSize + tagSize + SignatureSize
)

// SenderKey is this device's sending state for one group: key id, chain
// key, iteration and signing key. It is safe for concurrent use and prints
// redacted.
type SenderKey struct {
	mu sync.Mutex // guards st
	st *senderKeyState
}

type senderKeyState struct {
	keyID     uint32
	iteration uint32
	ck        [32]byte
	sig       ed25519.PrivateKey
}

// NewSenderKey creates a sender key for one group, reading from rand (nil
// means crypto/rand.Reader), in order: key id (4), chain key (32), Ed25519
// seed (32).
func NewSenderKey(rand io.Reader) (*SenderKey, error) {
	b, err := readRand(rand, 4+32+32)
	if err != nil {
		return nil, err
	}
	defer clear(b)
	st := &senderKeyState{keyID: binary.BigEndian.Uint32(b), sig: ed25519.NewKeyFromSeed(b[36:68])}
	copy(st.ck[:], b[4:36])
	return &SenderKey{st: st}, nil
}

// KeyID returns the key id carried in every message (random, 32 bits).
func (k *SenderKey) KeyID() uint32 {
	k.mu.Lock()
	defer k.mu.Unlock()
	return k.st.keyID
}

// Distribution returns the SenderKeyDistributionMessage for the current
// iteration: send it to each member over the pairwise sessions. A receiver
// built from it decrypts messages from this iteration on, not earlier ones.
func (k *SenderKey) Distribution() []byte {
	k.mu.Lock()
	defer k.mu.Unlock()
	w := writer{b: make([]byte, 0, distributionSize)}
	w.byte1(wireVersion)
	w.byte1(typeDistribution)
	w.u32(k.st.keyID)
	w.u32(k.st.iteration)
	w.raw(k.st.ck[:])
	w.raw(k.st.sig.Public().(ed25519.PublicKey))
	return w.b
}

func groupAD(sigPub, header []byte) []byte {
	ad := make([]byte, 0, len(labelGroupAD)+len(sigPub)+len(header))
	ad = append(ad, labelGroupAD...)
	ad = append(ad, sigPub...)
	return append(ad, header...)
}

func groupSignatureMessage(body []byte) []byte {
	m := make([]byte, 0, len(labelGroupSignature)+len(body))
	m = append(m, labelGroupSignature...)
	return append(m, body...)
}

// Encrypt encrypts and signs a group message (at most MaxPlaintextSize
// bytes of plaintext). Persist the sender key before sending the result
// (see Session.Encrypt).
func (k *SenderKey) Encrypt(plaintext []byte) ([]byte, error) {
	if len(plaintext) > MaxPlaintextSize {
		return nil, ErrMessageTooLarge
	}
	k.mu.Lock()
	defer k.mu.Unlock()
	st := k.st
	if st.iteration == math.MaxUint32 {
		return nil, ErrChainExhausted
	}
	mk, next := kdfChain(st.ck)
	w := writer{b: make([]byte, 0, groupHeaderSize+len(plaintext)+tagSize+SignatureSize)}
	w.byte1(wireVersion)
	w.byte1(typeGroupMessage)
	w.u32(st.keyID)
	w.u32(st.iteration)
	out := w.b
	out = sealMessage(out, mk, labelGroupKeys, plaintext, groupAD(st.sig.Public().(ed25519.PublicKey), out[:groupHeaderSize]))
	clear(mk[:])
	out = append(out, ed25519.Sign(st.sig, groupSignatureMessage(out))...)
	st.ck = next
	st.iteration++
	return out, nil
}

// Sender key layout (version 1, tag 0x30): key id (4), iteration (4), chain
// key (32), Ed25519 seed (32).

// MarshalBinary serialises the sender key, secrets included.
func (k *SenderKey) MarshalBinary() ([]byte, error) {
	k.mu.Lock()
	defer k.mu.Unlock()
	w := writer{b: make([]byte, 0, 2+8+64)}
	w.byte1(stateVersion)
	w.byte1(tagSenderKey)
	w.u32(k.st.keyID)
	w.u32(k.st.iteration)
	w.raw(k.st.ck[:])
	w.raw(k.st.sig.Seed())
	return w.b, nil
}

// UnmarshalSenderKey decodes the output of SenderKey.MarshalBinary.
func UnmarshalSenderKey(b []byte) (*SenderKey, error) {
	r, err := stateReader(b, tagSenderKey)
	if err != nil {
		return nil, err
	}
	st := &senderKeyState{keyID: r.u32(), iteration: r.u32(), ck: r.key32()}
	seed := r.take(ed25519.SeedSize)
	if !r.done() {
		return nil, ErrInvalidState
	}
	st.sig = ed25519.NewKeyFromSeed(seed)
	return &SenderKey{st: st}, nil
}

// SenderKeyReceiver is the state for decrypting one remote sender in one
// group. Decrypt is transactional and keeps at most MaxSkip skipped message
// keys. It is safe for concurrent use and prints redacted.
type SenderKeyReceiver struct {
	mu sync.Mutex // guards st
	st *receiverState
}

type receiverState struct {
	keyID   uint32
	sigPub  [32]byte
	ck      [32]byte
	n       uint32       // next iteration not yet derived
	skipped []skippedKey // pub is unused (zero); oldest first
}

// NewSenderKeyReceiver builds a receiver from a distribution message.
func NewSenderKeyReceiver(distribution []byte) (*SenderKeyReceiver, error) {
	if len(distribution) < 2 {
		return nil, ErrInvalidMessage
	}
	if distribution[0] != wireVersion {
		return nil, ErrUnsupportedVersion
	}
	if distribution[1] != typeDistribution || len(distribution) != distributionSize {
		return nil, ErrInvalidMessage
	}
	r := reader{b: distribution[2:]}
	st := &receiverState{keyID: r.u32(), n: r.u32(), ck: r.key32(), sigPub: r.key32()}
	if !r.done() {
		return nil, ErrInvalidMessage
	}
	return &SenderKeyReceiver{st: st}, nil
}

// KeyID returns the key id of the sender key this receiver decrypts.
func (r *SenderKeyReceiver) KeyID() uint32 {
	r.mu.Lock()
	defer r.mu.Unlock()
	return r.st.keyID
}

// SenderKeyMessageKeyID returns the key id of a group message, so the
// caller can pick the right receiver (or notice it needs a new
// distribution). It does not authenticate anything.
func SenderKeyMessageKeyID(ciphertext []byte) (uint32, error) {
	if _, _, err := parseGroupMessage(ciphertext); err != nil {
		return 0, err
	}
	return binary.BigEndian.Uint32(ciphertext[2:6]), nil
}

func parseGroupMessage(b []byte) (iteration uint32, ct []byte, err error) {
	if len(b) < 2 {
		return 0, nil, ErrInvalidMessage
	}
	if b[0] != wireVersion {
		return 0, nil, ErrUnsupportedVersion
	}
	if b[1] != typeGroupMessage || len(b) < groupMinSize || len(b) > maxGroupSize {
		return 0, nil, ErrInvalidMessage
	}
	return binary.BigEndian.Uint32(b[6:10]), b[groupHeaderSize : len(b)-SignatureSize], nil
}

// Decrypt verifies the signature of a group message, then decrypts it.
// On any error the state is unchanged. Errors: ErrInvalidMessage (also for
// a different key id or a bad signature), ErrDuplicateMessage,
// ErrTooManySkipped, ErrUnsupportedVersion.
func (r *SenderKeyReceiver) Decrypt(ciphertext []byte) ([]byte, error) {
	n, ct, err := parseGroupMessage(ciphertext)
	if err != nil {
		return nil, err
	}
	r.mu.Lock()
	defer r.mu.Unlock()
	st := r.st
	if binary.BigEndian.Uint32(ciphertext[2:6]) != st.keyID {
		return nil, fmt.Errorf("%w: unknown sender key id", ErrInvalidMessage)
	}
	body := ciphertext[:len(ciphertext)-SignatureSize]
	if !ed25519.Verify(ed25519.PublicKey(st.sigPub[:]), groupSignatureMessage(body), ciphertext[len(body):]) {
		return nil, ErrInvalidMessage
	}
	ad := groupAD(st.sigPub[:], ciphertext[:groupHeaderSize])
	for i := range st.skipped {
		if st.skipped[i].n == n {
			pt, err := openMessage(st.skipped[i].mk, labelGroupKeys, ct, ad)
			if err != nil {
				return nil, err
			}
			clear(st.skipped[i].mk[:])
			st.skipped = slices.Delete(st.skipped, i, i+1)
			return pt, nil
		}
	}
	if n < st.n {
		return nil, ErrDuplicateMessage
	}
	if n-st.n > MaxSkip {
		return nil, ErrTooManySkipped
	}
	mk, next, skipped := deriveTo(st.ck, st.n, n, [32]byte{})
	pt, err := openMessage(mk, labelGroupKeys, ct, ad)
	if err != nil {
		return nil, err
	}
	st.ck, st.n = next, n+1
	if len(skipped) > 0 {
		st.skipped = appendSkipped(st.skipped, skipped, [32]byte{})
	}
	return pt, nil
}

// Receiver layout (version 1, tag 0x31): key id (4), signature public key
// (32), chain key (32), next iteration (4), skipped count (4, at most
// MaxSkip), each: iteration (4), message key (32).

// MarshalBinary serialises the receiver, secrets included.
func (r *SenderKeyReceiver) MarshalBinary() ([]byte, error) {
	r.mu.Lock()
	defer r.mu.Unlock()
	st := r.st
	w := writer{b: make([]byte, 0, 2+4+64+8+len(st.skipped)*36)}
	w.byte1(stateVersion)
	w.byte1(tagSenderKeyReceiver)
	w.u32(st.keyID)
	w.raw(st.sigPub[:])
	w.raw(st.ck[:])
	w.u32(st.n)
	w.u32(uint32(len(st.skipped)))
	for _, k := range st.skipped {
		w.u32(k.n)
		w.raw(k.mk[:])
	}
	return w.b, nil
}

// UnmarshalSenderKeyReceiver decodes the output of
// SenderKeyReceiver.MarshalBinary.
func UnmarshalSenderKeyReceiver(b []byte) (*SenderKeyReceiver, error) {
	r, err := stateReader(b, tagSenderKeyReceiver)
	if err != nil {
		return nil, err
	}
	st := &receiverState{keyID: r.u32(), sigPub: r.key32(), ck: r.key32(), n: r.u32()}
	count := r.u32()
	if r.bad || count > MaxSkip || uint64(count)*36 != uint64(len(r.b)) {
		return nil, ErrInvalidState
	}
	st.skipped = make([]skippedKey, count)
	for i := range st.skipped {
		st.skipped[i].n = r.u32()
		st.skipped[i].mk = r.key32()
	}
	if !r.done() {
		return nil, ErrInvalidState
	}
	return &SenderKeyReceiver{st: st}, nil
}
