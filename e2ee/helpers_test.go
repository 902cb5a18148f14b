package e2ee

import (
	"fmt"
	"io"
	mrand "math/rand/v2"
	"sync"
	"testing"
)

// detRand is a deterministic, concurrency-safe io.Reader for tests.
type detRand struct {
	mu sync.Mutex
	c  *mrand.ChaCha8
}

func newDetRand(seed uint64) *detRand {
	var s [32]byte
	for i := range 8 {
		s[i] = byte(seed >> (8 * i))
	}
	copy(s[8:], "petrel e2ee test randomness")
	return &detRand{c: mrand.NewChaCha8(s)}
}

func (d *detRand) Read(p []byte) (int, error) {
	d.mu.Lock()
	defer d.mu.Unlock()
	return d.c.Read(p)
}

// memStore is an in-memory PreKeyStore that deletes like the SDK would.
type memStore struct {
	mu   sync.Mutex
	spks map[uint32]*SignedPreKeyPair
	opks map[uint32]*OneTimePreKeyPair
	kems map[uint32]*KEMPreKeyPair
}

func (m *memStore) SignedPreKey(id uint32) (*SignedPreKeyPair, error) {
	m.mu.Lock()
	defer m.mu.Unlock()
	if k, ok := m.spks[id]; ok {
		return k, nil
	}
	return nil, ErrPreKeyNotFound
}

func (m *memStore) OneTimePreKey(id uint32) (*OneTimePreKeyPair, error) {
	m.mu.Lock()
	defer m.mu.Unlock()
	if k, ok := m.opks[id]; ok {
		return k, nil
	}
	return nil, ErrPreKeyNotFound
}

func (m *memStore) KEMPreKey(id uint32) (*KEMPreKeyPair, error) {
	m.mu.Lock()
	defer m.mu.Unlock()
	if k, ok := m.kems[id]; ok {
		return k, nil
	}
	return nil, ErrPreKeyNotFound
}

// consume deletes what the caller must delete after AcceptSession.
func (m *memStore) consume(u UsedPreKeys) {
	m.mu.Lock()
	defer m.mu.Unlock()
	if u.HasOneTime {
		delete(m.opks, u.OneTimePreKeyID)
	}
	if !u.KEMLastResort {
		delete(m.kems, u.KEMPreKeyID)
	}
}

// device is a test device with a full prekey supply.
type device struct {
	rand     io.Reader
	identity *IdentityKeyPair
	spk      *SignedPreKeyPair
	opks     []*OneTimePreKeyPair
	kems     []*KEMPreKeyPair
	last     *KEMPreKeyPair
	store    *memStore
}

func newDevice(t testing.TB, rand io.Reader) *device {
	t.Helper()
	must := func(err error) {
		t.Helper()
		if err != nil {
			t.Fatal(err)
		}
	}
	d := &device{rand: rand, store: &memStore{spks: map[uint32]*SignedPreKeyPair{}, opks: map[uint32]*OneTimePreKeyPair{}, kems: map[uint32]*KEMPreKeyPair{}}}
	var err error
	d.identity, err = GenerateIdentityKeyPair(rand)
	must(err)
	d.spk, err = GenerateSignedPreKey(rand, 1, d.identity)
	must(err)
	d.store.spks[d.spk.ID] = d.spk
	d.opks, err = GenerateOneTimePreKeys(rand, 100, 3)
	must(err)
	for _, k := range d.opks {
		d.store.opks[k.ID] = k
	}
	for i := range 3 {
		k, err := GenerateKEMPreKey(rand, 200+uint32(i), d.identity, false)
		must(err)
		d.kems = append(d.kems, k)
		d.store.kems[k.ID] = k
	}
	d.last, err = GenerateKEMPreKey(rand, 999, d.identity, true)
	must(err)
	d.store.kems[d.last.ID] = d.last
	return d
}

// bundle returns a bundle using one-time prekey i and KEM prekey i; -1 means
// none (no one-time EC key, last-resort KEM key).
func (d *device) bundle(opk, kem int) *PreKeyBundle {
	b := &PreKeyBundle{Identity: d.identity.PublicKey().Bytes(), SignedPreKey: d.spk.Public()}
	if opk >= 0 {
		p := d.opks[opk].Public()
		b.OneTimePreKey = &p
	}
	if kem >= 0 {
		b.KEMPreKey = d.kems[kem].Public()
	} else {
		b.KEMPreKey = d.last.Public()
	}
	return b
}

// establish returns an initiator session (alice) and responder session
// (bob) that have exchanged one message each way.
func establish(t testing.TB, seed uint64) (alice, bob *Session, ad, bd *device) {
	t.Helper()
	r := newDetRand(seed)
	ad, bd = newDevice(t, r), newDevice(t, r)
	alice, err := InitiateSession(r, ad.identity, bd.bundle(0, 0))
	if err != nil {
		t.Fatal(err)
	}
	ct, err := alice.Encrypt([]byte("hello bob"))
	if err != nil {
		t.Fatal(err)
	}
	bob, pt, used, err := AcceptSession(r, bd.identity, bd.store, ct)
	if err != nil {
		t.Fatal(err)
	}
	bd.store.consume(used)
	if string(pt) != "hello bob" {
		t.Fatalf("got %q", pt)
	}
	ct, err = bob.Encrypt([]byte("hello alice"))
	if err != nil {
		t.Fatal(err)
	}
	if pt, err = alice.Decrypt(ct); err != nil || string(pt) != "hello alice" {
		t.Fatalf("alice decrypt: %q %v", pt, err)
	}
	return alice, bob, ad, bd
}

func mustMarshal(t testing.TB, m interface{ MarshalBinary() ([]byte, error) }) []byte {
	t.Helper()
	b, err := m.MarshalBinary()
	if err != nil {
		t.Fatal(err)
	}
	return b
}

// roundTrip sends msg from a to b and checks it arrives.
func roundTrip(t testing.TB, from, to *Session, msg string) {
	t.Helper()
	ct, err := from.Encrypt([]byte(msg))
	if err != nil {
		t.Fatal(err)
	}
	pt, err := to.Decrypt(ct)
	if err != nil {
		t.Fatalf("decrypt %q: %v", msg, err)
	}
	if string(pt) != msg {
		t.Fatalf("got %q want %q", pt, msg)
	}
}

var _ = fmt.Sprint
