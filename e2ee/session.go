package e2ee

import (
	"bytes"
	"crypto/ecdh"
	"crypto/hkdf"
	"crypto/mlkem"
	"crypto/sha256"
	"crypto/subtle"
	"fmt"
	"io"
	"math"
	"slices"
	"sync"
)

// Session is one pairwise Double Ratchet session with one remote device.
// It is safe for concurrent use: an internal mutex serialises Encrypt,
// Decrypt and MarshalBinary, so no message key or nonce is ever used twice.
// Decrypt is transactional: on any error the state is unchanged.
type Session struct {
	mu   sync.Mutex    // guards st
	st   *sessionState // never nil
	rand io.Reader     // for new ratchet keys; nil means crypto/rand.Reader
}

// recvChain is a receiving chain, identified by the remote ratchet key.
type recvChain struct {
	pub [32]byte
	ck  [32]byte
	n   uint32 // next message number not yet derived
}

// skippedKey is a message key derived ahead of time for an out-of-order
// message.
type skippedKey struct {
	pub [32]byte
	n   uint32
	mk  [32]byte
}

// sessionState is the Double Ratchet state. It is only touched under
// Session.mu; Decrypt computes a plan and commits it only after the AEAD
// tag verified.
type sessionState struct {
	initiator     bool
	pendingPreKey bool // initiator: wrap messages in PreKey messages
	local, remote *IdentityKey
	ad            []byte // initiator material || responder material

	rootKey [32]byte
	dhs     *ecdh.PrivateKey // our current ratchet key pair

	hasSend bool
	sendCK  [32]byte
	sendN   uint32
	pn      uint32

	recv    []recvChain  // recv[0] is the current chain; at most 1+MaxOldReceivingChains
	skipped []skippedKey // oldest first; at most MaxSkippedTotal

	baseKey      [32]byte // initiator's PQXDH base key, both roles
	preKeyHeader []byte   // initiator while pendingPreKey: the PQXDH header
}

func sessionAD(initiator, responder *IdentityKey) []byte {
	ad := make([]byte, 0, 2*identityKeyMaterial)
	ad = append(ad, initiator.material()...)
	return append(ad, responder.material()...)
}

// InitiateSession runs PQXDH as the initiator against a verified bundle
// (Verify is called; a bad signature fails with ErrBadSignature). Until the
// first message from the peer is decrypted, Encrypt produces PreKey
// messages carrying what the responder needs to run PQXDH. Randomness read
// from rand (nil means crypto/rand.Reader), in order: the base key (32), the
// ML-KEM encapsulation message (32), the first ratchet key (32).
func InitiateSession(rand io.Reader, local *IdentityKeyPair, bundle *PreKeyBundle) (*Session, error) {
	if local == nil || bundle == nil {
		return nil, ErrInvalidKey
	}
	remote, err := bundle.verify()
	if err != nil {
		return nil, err
	}
	ek, err := mlkem.NewEncapsulationKey768(bundle.KEMPreKey.PublicKey)
	if err != nil {
		return nil, ErrInvalidKey
	}
	base, err := newX25519(rand)
	if err != nil {
		return nil, err
	}
	ss, kemCT, err := kemEncapsulate(rand, ek)
	if err != nil {
		return nil, err
	}
	hdr := &preKeyHeader{
		identity: local.pub.enc,
		spkID:    bundle.SignedPreKey.ID,
		kemID:    bundle.KEMPreKey.ID,
		kemCT:    kemCT,
	}
	copy(hdr.baseKey[:], base.PublicKey().Bytes())
	var opk []byte
	if bundle.OneTimePreKey != nil {
		hdr.hasOneTime = true
		hdr.opkID = bundle.OneTimePreKey.ID
		opk = bundle.OneTimePreKey.PublicKey
	}
	hdrBytes := encodePreKeyHeader(hdr)

	dh1, err := dh(local.xPriv, bundle.SignedPreKey.PublicKey)
	if err != nil {
		return nil, err
	}
	dh2, err := dh(base, remote.x[:])
	if err != nil {
		return nil, err
	}
	dh3, err := dh(base, bundle.SignedPreKey.PublicKey)
	if err != nil {
		return nil, err
	}
	var dh4 []byte
	if opk != nil {
		if dh4, err = dh(base, opk); err != nil {
			return nil, err
		}
	}
	sk := pqxdhSecret(dh1, dh2, dh3, dh4, ss, remote, bundle.SignedPreKey.PublicKey, opk, bundle.KEMPreKey.PublicKey, hdrBytes)

	dhs, err := newX25519(rand)
	if err != nil {
		return nil, err
	}
	dhOut, err := dh(dhs, bundle.SignedPreKey.PublicKey)
	if err != nil {
		return nil, err
	}
	st := &sessionState{
		initiator:     true,
		pendingPreKey: true,
		local:         local.pub,
		remote:        remote,
		ad:            sessionAD(local.pub, remote),
		dhs:           dhs,
		hasSend:       true,
		baseKey:       hdr.baseKey,
		preKeyHeader:  hdrBytes,
	}
	st.rootKey, st.sendCK = kdfRoot(sk, dhOut)
	return &Session{st: st, rand: rand}, nil
}

// pqxdhSecret computes SK = HKDF-SHA256(salt = 32 zero bytes,
// ikm = 0xFF*32 || DH1 || DH2 || DH3 [|| DH4] || SS,
// info = labelPQXDH || transcript hash, L = 32), where the transcript hash
// binds the responder's identity and every public prekey to the
// initiator's PQXDH header (its identity, prekey ids, base key and KEM
// ciphertext).
func pqxdhSecret(dh1, dh2, dh3, dh4, ss []byte, responder *IdentityKey, spk, opk, kemPK, hdr []byte) [32]byte {
	ikm := make([]byte, 0, 32*6)
	ikm = append(ikm, bytes.Repeat([]byte{0xFF}, 32)...)
	ikm = append(ikm, dh1...)
	ikm = append(ikm, dh2...)
	ikm = append(ikm, dh3...)
	ikm = append(ikm, dh4...)
	ikm = append(ikm, ss...)

	h := sha256.New()
	h.Write([]byte(labelTranscript))
	h.Write(responder.enc)
	h.Write(spk)
	h.Write(opk) // presence is fixed by the flags byte inside hdr
	h.Write(kemPK)
	h.Write(hdr)
	info := string(labelPQXDH) + string(h.Sum(nil))

	out, err := hkdf.Key(sha256.New, ikm, make([]byte, 32), info, 32)
	if err != nil {
		panic("e2ee: hkdf: " + err.Error()) // unreachable: fixed sizes
	}
	clear(ikm)
	var sk [32]byte
	copy(sk[:], out)
	clear(out)
	return sk
}

// UsedPreKeys reports which of the responder's prekeys a PreKey message
// used, so the caller can delete the one-time ones after persisting the
// session.
type UsedPreKeys struct {
	// HasOneTime reports whether a one-time X25519 prekey was used.
	HasOneTime bool
	// OneTimePreKeyID is the one-time prekey to delete when HasOneTime.
	OneTimePreKeyID uint32
	// SignedPreKeyID is the signed prekey used (not deleted; rotated).
	SignedPreKeyID uint32
	// KEMPreKeyID is the ML-KEM prekey used; delete it unless KEMLastResort.
	KEMPreKeyID uint32
	// KEMLastResort reports that KEMPreKeyID is the last-resort key.
	KEMLastResort bool
}

// PreKeyStore gives the responder its private prekeys (the SDK's store).
type PreKeyStore interface {
	// SignedPreKey returns ErrPreKeyNotFound if id is unknown.
	SignedPreKey(id uint32) (*SignedPreKeyPair, error)
	// OneTimePreKey returns ErrPreKeyNotFound if id is consumed or unknown.
	OneTimePreKey(id uint32) (*OneTimePreKeyPair, error)
	// KEMPreKey returns ErrPreKeyNotFound if id is consumed or unknown.
	KEMPreKey(id uint32) (*KEMPreKeyPair, error)
}

// AcceptSession runs PQXDH as the responder on a PreKey message and
// decrypts it. It deletes nothing: after persisting the session the caller
// deletes used.OneTimePreKeyID if used.HasOneTime and used.KEMPreKeyID
// unless used.KEMLastResort. Errors from the store are returned wrapped (so
// errors.Is(err, ErrPreKeyNotFound) works). rand (nil means
// crypto/rand.Reader) supplies the responder's first ratchet key (32 bytes)
// and later ones.
func AcceptSession(rand io.Reader, local *IdentityKeyPair, store PreKeyStore, ciphertext []byte) (*Session, []byte, UsedPreKeys, error) {
	fail := func(err error) (*Session, []byte, UsedPreKeys, error) { return nil, nil, UsedPreKeys{}, err }
	if local == nil || store == nil {
		return fail(ErrInvalidKey)
	}
	m, err := parseMessage(ciphertext)
	if err != nil {
		return fail(err)
	}
	if m.preKey == nil {
		return fail(ErrInvalidMessage)
	}
	h := m.preKey
	remote, err := ParseIdentityKey(h.identity)
	if err != nil {
		return fail(fmt.Errorf("%w: initiator identity: %w", ErrInvalidMessage, err))
	}
	used := UsedPreKeys{HasOneTime: h.hasOneTime, OneTimePreKeyID: h.opkID, SignedPreKeyID: h.spkID, KEMPreKeyID: h.kemID}
	spk, err := store.SignedPreKey(h.spkID)
	if err != nil {
		return fail(fmt.Errorf("e2ee: signed prekey %d: %w", h.spkID, err))
	}
	if spk == nil || spk.priv == nil {
		return fail(fmt.Errorf("e2ee: signed prekey %d: %w", h.spkID, ErrPreKeyNotFound))
	}
	kpk, err := store.KEMPreKey(h.kemID)
	if err != nil {
		return fail(fmt.Errorf("e2ee: KEM prekey %d: %w", h.kemID, err))
	}
	if kpk == nil || kpk.dk == nil {
		return fail(fmt.Errorf("e2ee: KEM prekey %d: %w", h.kemID, ErrPreKeyNotFound))
	}
	used.KEMLastResort = kpk.LastResort
	var opk *OneTimePreKeyPair
	if h.hasOneTime {
		if opk, err = store.OneTimePreKey(h.opkID); err != nil {
			return fail(fmt.Errorf("e2ee: one-time prekey %d: %w", h.opkID, err))
		}
		if opk == nil || opk.priv == nil {
			return fail(fmt.Errorf("e2ee: one-time prekey %d: %w", h.opkID, ErrPreKeyNotFound))
		}
	}

	// Any failure below is indistinguishable from a forgery.
	dh1, err := dh(spk.priv, remote.x[:])
	if err != nil {
		return fail(ErrInvalidMessage)
	}
	dh2, err := dh(local.xPriv, h.baseKey[:])
	if err != nil {
		return fail(ErrInvalidMessage)
	}
	dh3, err := dh(spk.priv, h.baseKey[:])
	if err != nil {
		return fail(ErrInvalidMessage)
	}
	var dh4, opkPub []byte
	if opk != nil {
		if dh4, err = dh(opk.priv, h.baseKey[:]); err != nil {
			return fail(ErrInvalidMessage)
		}
		opkPub = opk.priv.PublicKey().Bytes()
	}
	ss, err := kpk.dk.Decapsulate(h.kemCT)
	if err != nil {
		return fail(ErrInvalidMessage)
	}
	hdrBytes := m.adPrefix[:preKeyHeaderSize]
	sk := pqxdhSecret(dh1, dh2, dh3, dh4, ss, local.pub, spk.priv.PublicKey().Bytes(), opkPub, kpk.dk.EncapsulationKey().Bytes(), hdrBytes)

	st := &sessionState{
		local:   local.pub,
		remote:  remote,
		ad:      sessionAD(remote, local.pub),
		rootKey: sk,
		dhs:     spk.priv,
		baseKey: h.baseKey,
	}
	plan, err := st.planDecrypt(rand, m)
	if err != nil {
		return fail(err)
	}
	st.commit(plan)
	return &Session{st: st, rand: rand}, plan.plaintext, used, nil
}

// Encrypt encrypts plaintext (at most MaxPlaintextSize bytes) as the next
// message of the sending chain. Until the peer's first message has been
// decrypted, the initiator's messages are PreKey messages. Persist the
// session before sending the result: a session restored from an older
// serialisation would encrypt the next message with the same key.
func (s *Session) Encrypt(plaintext []byte) ([]byte, error) {
	if len(plaintext) > MaxPlaintextSize {
		return nil, ErrMessageTooLarge
	}
	s.mu.Lock()
	defer s.mu.Unlock()
	st := s.st
	if !st.hasSend {
		return nil, ErrNoSession // unreachable for sessions built by this package
	}
	if st.sendN == math.MaxUint32 {
		return nil, ErrChainExhausted
	}
	mk, next := kdfChain(st.sendCK)
	h := ratchetHeader{pn: st.pn, n: st.sendN}
	copy(h.pub[:], st.dhs.PublicKey().Bytes())
	var out []byte
	if st.pendingPreKey {
		out = make([]byte, 0, preKeyMessageHdr+len(plaintext)+tagSize)
		out = append(out, st.preKeyHeader...)
	} else {
		out = make([]byte, 0, messageHeaderSize+len(plaintext)+tagSize)
		out = append(out, wireVersion, typeMessage)
	}
	out = appendRatchetHeader(out, h)
	out = sealMessage(out, mk, labelMessageKeys, plaintext, st.messageAD(out))
	clear(mk[:])
	st.sendCK = next
	st.sendN++
	return out, nil
}

func (st *sessionState) messageAD(prefix []byte) []byte {
	ad := make([]byte, 0, len(labelMessageAD)+len(st.ad)+len(prefix))
	ad = append(ad, labelMessageAD...)
	ad = append(ad, st.ad...)
	return append(ad, prefix...)
}

// Decrypt decrypts a message from the peer. It is transactional: on any
// error (ErrInvalidMessage, ErrDuplicateMessage, ErrTooManySkipped,
// ErrUnsupportedVersion) the session state is unchanged. A PreKey message
// that belongs to this session (same initiator base key) decrypts like a
// normal message; one that does not fails with an error matching both
// ErrInvalidMessage and ErrNoSession.
func (s *Session) Decrypt(ciphertext []byte) ([]byte, error) {
	m, err := parseMessage(ciphertext)
	if err != nil {
		return nil, err
	}
	s.mu.Lock()
	defer s.mu.Unlock()
	st := s.st
	if m.preKey != nil {
		if st.initiator || subtle.ConstantTimeCompare(m.preKey.baseKey[:], st.baseKey[:]) != 1 {
			return nil, fmt.Errorf("%w: %w", ErrInvalidMessage, ErrNoSession)
		}
	}
	plan, err := st.planDecrypt(s.rand, m)
	if err != nil {
		return nil, err
	}
	st.commit(plan)
	return plan.plaintext, nil
}

// belongsTo reports whether a PreKey message m was made for this session.
func (s *Session) matchesPreKey(m *parsedMessage) bool {
	s.mu.Lock()
	defer s.mu.Unlock()
	return !s.st.initiator && m.preKey != nil && subtle.ConstantTimeCompare(m.preKey.baseKey[:], s.st.baseKey[:]) == 1
}

// decryptPlan is every state change a successful decryption makes.
type decryptPlan struct {
	plaintext []byte

	useSkipped int // index into skipped, or -1

	chainIdx  int // index into recv of the chain advanced, or -1
	newCK     [32]byte
	newN      uint32
	addSkip   []skippedKey
	skipChain [32]byte

	ratchet   bool // a DH ratchet turn
	newChain  recvChain
	newRoot   [32]byte
	newDHs    *ecdh.PrivateKey
	newSendCK [32]byte
}

// planDecrypt finds or derives the message key for m and opens it without
// changing st.
func (st *sessionState) planDecrypt(rand io.Reader, m *parsedMessage) (*decryptPlan, error) {
	ad := st.messageAD(m.adPrefix)
	h := m.header
	p := &decryptPlan{useSkipped: -1, chainIdx: -1}

	for i := range st.skipped {
		sk := &st.skipped[i]
		if sk.n == h.n && sk.pub == h.pub {
			pt, err := openMessage(sk.mk, labelMessageKeys, m.ct, ad)
			if err != nil {
				return nil, err
			}
			p.plaintext, p.useSkipped = pt, i
			return p, nil
		}
	}

	for i := range st.recv {
		c := &st.recv[i]
		if c.pub != h.pub {
			continue
		}
		if h.n < c.n {
			return nil, ErrDuplicateMessage
		}
		if h.n-c.n > MaxSkip {
			return nil, ErrTooManySkipped
		}
		mk, ck, skipped := deriveTo(c.ck, c.n, h.n, h.pub)
		pt, err := openMessage(mk, labelMessageKeys, m.ct, ad)
		if err != nil {
			return nil, err
		}
		p.plaintext, p.chainIdx, p.newCK, p.newN, p.addSkip, p.skipChain = pt, i, ck, h.n+1, skipped, h.pub
		return p, nil
	}

	// A new remote ratchet key: a DH ratchet turn.
	if h.n > MaxSkip {
		return nil, ErrTooManySkipped
	}
	dhOut, err := dh(st.dhs, h.pub[:])
	if err != nil {
		return nil, ErrInvalidMessage
	}
	rk1, ckr := kdfRoot(st.rootKey, dhOut)
	mk, ck, skipped := deriveTo(ckr, 0, h.n, h.pub)
	pt, err := openMessage(mk, labelMessageKeys, m.ct, ad)
	if err != nil {
		return nil, err
	}
	// Authentic: now pay for a new ratchet key.
	newDHs, err := newX25519(rand)
	if err != nil {
		return nil, err
	}
	dhOut2, err := dh(newDHs, h.pub[:])
	if err != nil {
		return nil, ErrInvalidMessage
	}
	p.plaintext = pt
	p.ratchet = true
	p.newChain = recvChain{pub: h.pub, ck: ck, n: h.n + 1}
	p.addSkip, p.skipChain = skipped, h.pub
	p.newRoot, p.newSendCK = kdfRoot(rk1, dhOut2)
	p.newDHs = newDHs
	return p, nil
}

// deriveTo derives the chain from (ck, from) up to message n: it returns
// n's message key, the chain key after n, and the skipped keys from..n-1.
func deriveTo(ck [32]byte, from, n uint32, pub [32]byte) (mk, next [32]byte, skipped []skippedKey) {
	if n > from {
		skipped = make([]skippedKey, 0, n-from)
	}
	for i := from; i < n; i++ {
		var k [32]byte
		k, ck = kdfChain(ck)
		skipped = append(skipped, skippedKey{pub: pub, n: i, mk: k})
	}
	mk, next = kdfChain(ck)
	return mk, next, skipped
}

// commit applies a plan produced by planDecrypt on the same state.
func (st *sessionState) commit(p *decryptPlan) {
	st.pendingPreKey = false
	st.preKeyHeader = nil
	if p.useSkipped >= 0 {
		clear(st.skipped[p.useSkipped].mk[:])
		st.skipped = slices.Delete(st.skipped, p.useSkipped, p.useSkipped+1)
		return
	}
	if p.chainIdx >= 0 {
		c := &st.recv[p.chainIdx]
		c.ck, c.n = p.newCK, p.newN
	}
	if p.ratchet {
		st.recv = append([]recvChain{p.newChain}, st.recv...)
		if len(st.recv) > 1+MaxOldReceivingChains {
			st.recv = st.recv[:1+MaxOldReceivingChains]
		}
		st.rootKey = p.newRoot
		st.dhs = p.newDHs
		if st.hasSend {
			st.pn = st.sendN
		}
		st.hasSend, st.sendCK, st.sendN = true, p.newSendCK, 0
	}
	if len(p.addSkip) > 0 {
		st.skipped = appendSkipped(st.skipped, p.addSkip, p.skipChain)
	}
}

// appendSkipped adds keys for one chain and enforces the bounds: at most
// MaxSkip stored keys for that chain and MaxSkippedTotal overall, evicting
// the oldest first.
func appendSkipped(list, add []skippedKey, pub [32]byte) []skippedKey {
	list = append(list, add...)
	count := 0
	for i := range list {
		if list[i].pub == pub {
			count++
		}
	}
	if count > MaxSkip {
		drop := count - MaxSkip
		out := list[:0]
		for _, k := range list {
			if drop > 0 && k.pub == pub {
				drop--
				continue
			}
			out = append(out, k)
		}
		clear(list[len(out):])
		list = out
	}
	if len(list) > MaxSkippedTotal {
		clear(list[:len(list)-MaxSkippedTotal])
		list = slices.Delete(list, 0, len(list)-MaxSkippedTotal)
	}
	return list
}

// RemoteIdentity returns the peer device's identity key.
func (s *Session) RemoteIdentity() *IdentityKey {
	s.mu.Lock()
	defer s.mu.Unlock()
	return s.st.remote
}

// LocalIdentity returns this device's identity key as bound into the
// session.
func (s *Session) LocalIdentity() *IdentityKey {
	s.mu.Lock()
	defer s.mu.Unlock()
	return s.st.local
}

// Initiator reports whether this side ran PQXDH as the initiator.
func (s *Session) Initiator() bool {
	s.mu.Lock()
	defer s.mu.Unlock()
	return s.st.initiator
}

// PendingPreKey reports whether Encrypt still produces PreKey messages
// (the initiator has not yet decrypted a message from the peer).
func (s *Session) PendingPreKey() bool {
	s.mu.Lock()
	defer s.mu.Unlock()
	return s.st.pendingPreKey
}

// Session state layout (version 1, tag 0x20), integers big endian:
//
//	flags (1): bit 0 initiator, bit 1 pendingPreKey, bit 2 hasSend
//	local identity (129), remote identity (129)
//	root key (32), our ratchet private key (32)
//	sending chain key (32), sendN (4), PN (4)
//	base key (32)
//	PreKey header (preKeyHeaderSize) if pendingPreKey
//	receiving chain count (1, at most 1+MaxOldReceivingChains), each:
//	  remote ratchet key (32), chain key (32), n (4)
//	skipped key count (4, at most MaxSkippedTotal), each:
//	  remote ratchet key (32), n (4), message key (32)

// MarshalBinary serialises the session, secrets included: store it as a
// secret.
func (s *Session) MarshalBinary() ([]byte, error) {
	s.mu.Lock()
	defer s.mu.Unlock()
	return s.st.marshal(), nil
}

func (st *sessionState) marshal() []byte {
	w := writer{b: make([]byte, 0, 512+len(st.preKeyHeader)+len(st.recv)*68+len(st.skipped)*68)}
	w.byte1(stateVersion)
	w.byte1(tagSession)
	var flags byte
	if st.initiator {
		flags |= 1
	}
	if st.pendingPreKey {
		flags |= 2
	}
	if st.hasSend {
		flags |= 4
	}
	w.byte1(flags)
	w.raw(st.local.enc)
	w.raw(st.remote.enc)
	w.raw(st.rootKey[:])
	w.raw(st.dhs.Bytes())
	w.raw(st.sendCK[:])
	w.u32(st.sendN)
	w.u32(st.pn)
	w.raw(st.baseKey[:])
	if st.pendingPreKey {
		w.raw(st.preKeyHeader)
	}
	w.byte1(byte(len(st.recv)))
	for _, c := range st.recv {
		w.raw(c.pub[:])
		w.raw(c.ck[:])
		w.u32(c.n)
	}
	w.u32(uint32(len(st.skipped)))
	for _, k := range st.skipped {
		w.raw(k.pub[:])
		w.u32(k.n)
		w.raw(k.mk[:])
	}
	return w.b
}

// UnmarshalSession decodes the output of Session.MarshalBinary. The
// session uses crypto/rand.Reader for new ratchet keys.
func UnmarshalSession(b []byte) (*Session, error) {
	r, err := stateReader(b, tagSession)
	if err != nil {
		return nil, err
	}
	st, err := unmarshalSessionState(r)
	if err != nil {
		return nil, err
	}
	if !r.done() {
		return nil, ErrInvalidState
	}
	return &Session{st: st}, nil
}

func unmarshalSessionState(r *reader) (*sessionState, error) {
	flags := r.byte1()
	if flags&^7 != 0 {
		return nil, ErrInvalidState
	}
	st := &sessionState{initiator: flags&1 != 0, pendingPreKey: flags&2 != 0, hasSend: flags&4 != 0}
	localEnc := r.take(IdentityKeySize)
	remoteEnc := r.take(IdentityKeySize)
	st.rootKey = r.key32()
	dhsB := r.take(32)
	st.sendCK = r.key32()
	st.sendN = r.u32()
	st.pn = r.u32()
	st.baseKey = r.key32()
	if st.pendingPreKey {
		if !st.initiator {
			return nil, ErrInvalidState
		}
		st.preKeyHeader = r.fixed(preKeyHeaderSize)
	}
	nRecv := int(r.byte1())
	if r.bad || nRecv > 1+MaxOldReceivingChains {
		return nil, ErrInvalidState
	}
	st.recv = make([]recvChain, nRecv)
	for i := range st.recv {
		c := &st.recv[i]
		c.pub = r.key32()
		c.ck = r.key32()
		c.n = r.u32()
	}
	nSkip := r.u32()
	if r.bad || nSkip > MaxSkippedTotal || uint64(nSkip)*68 > uint64(len(r.b)) {
		return nil, ErrInvalidState
	}
	st.skipped = make([]skippedKey, nSkip)
	perChain := map[[32]byte]int{}
	for i := range st.skipped {
		k := &st.skipped[i]
		k.pub = r.key32()
		k.n = r.u32()
		k.mk = r.key32()
		perChain[k.pub]++
		if perChain[k.pub] > MaxSkip {
			return nil, ErrInvalidState
		}
	}
	if r.bad {
		return nil, ErrInvalidState
	}
	var err error
	if st.local, err = ParseIdentityKey(localEnc); err != nil {
		return nil, ErrInvalidState
	}
	if st.remote, err = ParseIdentityKey(remoteEnc); err != nil {
		return nil, ErrInvalidState
	}
	if st.initiator {
		st.ad = sessionAD(st.local, st.remote)
	} else {
		st.ad = sessionAD(st.remote, st.local)
	}
	if st.dhs, err = ecdh.X25519().NewPrivateKey(dhsB); err != nil {
		return nil, ErrInvalidState
	}
	if st.pendingPreKey && (len(st.preKeyHeader) < 2 || !IsPreKeyMessage(st.preKeyHeader)) {
		return nil, ErrInvalidState
	}
	return st, nil
}
