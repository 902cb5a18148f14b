package e2ee

import "encoding/binary"

// Pairwise message layouts (all integers big endian):
//
//	Message (type 1):
//	  0     version (1)
//	  1     type = 1
//	  2     sender ratchet public key (32)
//	  34    PN: length of the sender's previous sending chain (4)
//	  38    N: message number in the current sending chain (4)
//	  42    AES-256-GCM ciphertext || tag (len(plaintext) + 16)
//
//	PreKey message (type 2): the PQXDH header, then the same ratchet header
//	and ciphertext:
//	  0     version (1)
//	  1     type = 2
//	  2     initiator identity key (IdentityKeySize = 129)
//	  131   signed prekey id (4)
//	  135   flags (1): bit 0 = a one-time prekey was used; others zero
//	  136   one-time prekey id (4, zero when flag bit 0 is clear)
//	  140   ML-KEM prekey id (4)
//	  144   initiator base (ephemeral) key (32)
//	  176   ML-KEM-768 ciphertext (1088)
//	  1264  sender ratchet public key (32)
//	  1296  PN (4)
//	  1300  N (4)
//	  1304  ciphertext || tag
//
// The AEAD associated data is label || AD || every byte before the
// ciphertext, so the whole header is authenticated.
const (
	ratchetHeaderSize = 32 + 4 + 4
	messageHeaderSize = 2 + ratchetHeaderSize
	preKeyHeaderSize  = 2 + IdentityKeySize + 4 + 1 + 4 + 4 + 32 + KEMCiphertextSize
	preKeyMessageHdr  = preKeyHeaderSize + ratchetHeaderSize
	tagSize           = 16
	// maxMessageSize bounds any message a decoder looks at.
	maxMessageSize = preKeyMessageHdr + MaxPlaintextSize + tagSize
)

type ratchetHeader struct {
	pub [32]byte
	pn  uint32
	n   uint32
}

type preKeyHeader struct {
	identity   []byte // IdentityKeySize bytes, not yet parsed
	spkID      uint32
	hasOneTime bool
	opkID      uint32
	kemID      uint32
	baseKey    [32]byte
	kemCT      []byte
}

// parsedMessage is a decoded message; slices alias the input.
type parsedMessage struct {
	preKey   *preKeyHeader
	header   ratchetHeader
	adPrefix []byte // every byte before the ciphertext
	ct       []byte
}

func appendRatchetHeader(b []byte, h ratchetHeader) []byte {
	b = append(b, h.pub[:]...)
	b = binary.BigEndian.AppendUint32(b, h.pn)
	return binary.BigEndian.AppendUint32(b, h.n)
}

func encodePreKeyHeader(h *preKeyHeader) []byte {
	w := writer{b: make([]byte, 0, preKeyHeaderSize)}
	w.byte1(wireVersion)
	w.byte1(typePreKey)
	w.raw(h.identity)
	w.u32(h.spkID)
	if h.hasOneTime {
		w.byte1(1)
	} else {
		w.byte1(0)
	}
	w.u32(h.opkID)
	w.u32(h.kemID)
	w.raw(h.baseKey[:])
	w.raw(h.kemCT)
	return w.b
}

// IsPreKeyMessage reports whether ciphertext looks like a PreKey message
// (version 1, type 2). It does not validate anything else.
func IsPreKeyMessage(ciphertext []byte) bool {
	return len(ciphertext) >= 2 && ciphertext[0] == wireVersion && ciphertext[1] == typePreKey
}

// parseMessage decodes a pairwise message (either type) without any
// cryptography. It never panics and never allocates from attacker lengths.
func parseMessage(b []byte) (*parsedMessage, error) {
	if len(b) < 2 {
		return nil, ErrInvalidMessage
	}
	if b[0] != wireVersion {
		return nil, ErrUnsupportedVersion
	}
	if len(b) > maxMessageSize {
		return nil, ErrInvalidMessage
	}
	m := &parsedMessage{}
	r := reader{b: b[2:]}
	switch b[1] {
	case typeMessage:
	case typePreKey:
		h := &preKeyHeader{identity: r.take(IdentityKeySize), spkID: r.u32()}
		flags := r.byte1()
		if flags&^1 != 0 {
			return nil, ErrInvalidMessage
		}
		h.hasOneTime = flags&1 == 1
		h.opkID = r.u32()
		if !h.hasOneTime && h.opkID != 0 {
			return nil, ErrInvalidMessage
		}
		h.kemID = r.u32()
		h.baseKey = r.key32()
		h.kemCT = r.take(KEMCiphertextSize)
		m.preKey = h
	default:
		return nil, ErrInvalidMessage
	}
	m.header.pub = r.key32()
	m.header.pn = r.u32()
	m.header.n = r.u32()
	if r.bad || len(r.b) < tagSize {
		return nil, ErrInvalidMessage
	}
	m.ct = r.rest()
	m.adPrefix = b[:len(b)-len(m.ct)]
	return m, nil
}

// PreKeyMessageIdentity returns the sender identity carried by a PreKey
// message without decrypting it (for trust decisions before
// AcceptSession). The identity's binding signature is verified; the
// message itself is not authenticated by this call.
func PreKeyMessageIdentity(ciphertext []byte) (*IdentityKey, error) {
	m, err := parseMessage(ciphertext)
	if err != nil {
		return nil, err
	}
	if m.preKey == nil {
		return nil, ErrInvalidMessage
	}
	return ParseIdentityKey(m.preKey.identity)
}
