package e2ee

import (
	"bytes"
	"encoding/binary"
	"errors"
	"fmt"
	"sync"
	"testing"
)

// forgeries returns many corruptions of a real message: every single-bit
// header flip, tag flips, truncations, extensions and random bytes.
func forgeries(ct []byte) [][]byte {
	var out [][]byte
	for i := 0; i < len(ct); i++ {
		if i > 64 && i < len(ct)-20 && i%97 != 0 {
			continue // every header byte, a sample of the rest
		}
		for _, bit := range []byte{1, 0x80} {
			c := bytes.Clone(ct)
			c[i] ^= bit
			out = append(out, c)
		}
	}
	for _, n := range []int{0, 1, 2, 10, 41, 42, 57, len(ct) - 16, len(ct) - 1} {
		if n >= 0 && n < len(ct) {
			out = append(out, bytes.Clone(ct[:n]))
		}
	}
	out = append(out, append(bytes.Clone(ct), 0))
	r := newDetRand(99)
	for range 20 {
		b := make([]byte, len(ct))
		r.Read(b)
		b[0], b[1] = ct[0], ct[1]
		out = append(out, b)
	}
	return out
}

func TestDecryptTransactional(t *testing.T) {
	alice, bob, _, _ := establish(t, 21)
	// Leave skipped keys and an old chain in Bob's state so every branch
	// of planDecrypt is exercised.
	var held [][]byte
	for i := range 5 {
		ct, _ := alice.Encrypt([]byte(fmt.Sprint("held ", i)))
		held = append(held, ct)
	}
	roundTrip(t, alice, bob, "skip ahead")
	roundTrip(t, bob, alice, "turn")
	roundTrip(t, alice, bob, "new chain")

	candidates := [][]byte{held[0], held[3]}
	next, _ := alice.Encrypt([]byte("next"))
	candidates = append(candidates, next)
	// A message too far ahead, from a copy of Alice's session so the real
	// one stays within bounds.
	aliceCopy, err := UnmarshalSession(mustMarshal(t, alice))
	if err != nil {
		t.Fatal(err)
	}
	var ahead []byte
	for range MaxSkip + 2 {
		ahead, _ = aliceCopy.Encrypt([]byte("far"))
	}
	forgedCount := 0
	for _, real := range candidates {
		for _, f := range forgeries(real) {
			before := mustMarshal(t, bob)
			if _, err := bob.Decrypt(f); err == nil {
				t.Fatalf("forgery decrypted (len %d)", len(f))
			}
			if after := mustMarshal(t, bob); !bytes.Equal(before, after) {
				t.Fatal("failed decrypt changed the state")
			}
			forgedCount++
		}
	}
	// Too far ahead: rejected, no state change.
	before := mustMarshal(t, bob)
	if _, err := bob.Decrypt(ahead); !errors.Is(err, ErrTooManySkipped) {
		t.Fatalf("far ahead: %v", err)
	}
	if !bytes.Equal(before, mustMarshal(t, bob)) {
		t.Fatal("ErrTooManySkipped changed the state")
	}
	// Replays: decrypt once, then replay; state unchanged by the replay.
	for _, ct := range candidates {
		if _, err := bob.Decrypt(ct); err != nil {
			t.Fatal(err)
		}
		before := mustMarshal(t, bob)
		if _, err := bob.Decrypt(ct); !errors.Is(err, ErrDuplicateMessage) {
			t.Fatalf("replay: %v", err)
		}
		if !bytes.Equal(before, mustMarshal(t, bob)) {
			t.Fatal("replay changed the state")
		}
	}
	t.Logf("%d forged messages rejected without state change", forgedCount)
	// The session still works both ways, and the held messages still decrypt.
	for i, ct := range held {
		if i == 0 || i == 3 {
			continue
		}
		if pt, err := bob.Decrypt(ct); err != nil || string(pt) != fmt.Sprint("held ", i) {
			t.Fatalf("held %d: %q %v", i, pt, err)
		}
	}
	for range 3 {
		roundTrip(t, alice, bob, "still")
		roundTrip(t, bob, alice, "works")
	}
}

func TestAcceptSessionForgeriesLeaveNoTrace(t *testing.T) {
	r := newDetRand(22)
	ad, bd := newDevice(t, r), newDevice(t, r)
	alice, err := InitiateSession(r, ad.identity, bd.bundle(0, 0))
	if err != nil {
		t.Fatal(err)
	}
	ct, _ := alice.Encrypt([]byte("hi"))
	for _, f := range forgeries(ct) {
		if _, _, _, err := AcceptSession(r, bd.identity, bd.store, f); err == nil {
			t.Fatal("forged PreKey message accepted")
		}
	}
	bob, pt, _, err := AcceptSession(r, bd.identity, bd.store, ct)
	if err != nil || string(pt) != "hi" {
		t.Fatal(err)
	}
	roundTrip(t, bob, alice, "ok")
}

func TestConcurrentEncryptNeverReusesKeys(t *testing.T) {
	alice, bob, _, _ := establish(t, 31)
	sk, err := NewSenderKey(newDetRand(32))
	if err != nil {
		t.Fatal(err)
	}
	recv, err := NewSenderKeyReceiver(sk.Distribution())
	if err != nil {
		t.Fatal(err)
	}
	var mu sync.Mutex
	seen := map[string]bool{}
	dups := 0
	testHookMessageKey = func(key, nonce []byte) {
		mu.Lock()
		defer mu.Unlock()
		k := string(key) + "|" + string(nonce)
		if seen[k] {
			dups++
		}
		seen[k] = true
	}
	defer func() { testHookMessageKey = nil }()

	const goroutines, each = 16, 40
	var wg sync.WaitGroup
	var cmu sync.Mutex
	var pairwise, group [][]byte
	for g := range goroutines {
		wg.Go(func() {
			for i := range each {
				msg := []byte(fmt.Sprintf("g%d m%d", g, i))
				var s *Session = alice
				if i%2 == 1 {
					s = bob
				}
				ct, err := s.Encrypt(msg)
				if err != nil {
					t.Error(err)
					return
				}
				gct, err := sk.Encrypt(msg)
				if err != nil {
					t.Error(err)
					return
				}
				cmu.Lock()
				if s == alice {
					pairwise = append(pairwise, ct)
				}
				group = append(group, gct)
				cmu.Unlock()
			}
		})
	}
	// Concurrent decryption and serialisation too.
	wg.Go(func() {
		for range 50 {
			if _, err := bob.MarshalBinary(); err != nil {
				t.Error(err)
			}
		}
	})
	wg.Wait()
	testHookMessageKey = nil
	if want := 2 * goroutines * each; len(seen) != want || dups != 0 {
		t.Fatalf("%d unique (key, nonce) pairs, %d duplicates, want %d unique", len(seen), dups, want)
	}
	// Every message decrypts, in the (interleaved) order collected, from
	// concurrent receivers.
	var wg2 sync.WaitGroup
	for _, ct := range pairwise {
		wg2.Go(func() {
			if _, err := bob.Decrypt(ct); err != nil {
				t.Error(err)
			}
		})
	}
	for _, ct := range group {
		wg2.Go(func() {
			if _, err := recv.Decrypt(ct); err != nil {
				t.Error(err)
			}
		})
	}
	wg2.Wait()
}

func TestForwardSecrecy(t *testing.T) {
	alice, bob, _, _ := establish(t, 41)
	var delivered [][]byte
	for i := range 5 {
		ct, _ := alice.Encrypt([]byte(fmt.Sprint("secret ", i)))
		if _, err := bob.Decrypt(ct); err != nil {
			t.Fatal(err)
		}
		delivered = append(delivered, ct)
	}
	// Messages across a ratchet turn, too.
	roundTrip(t, bob, alice, "turn")
	for i := range 3 {
		ct, _ := alice.Encrypt([]byte(fmt.Sprint("later ", i)))
		if _, err := bob.Decrypt(ct); err != nil {
			t.Fatal(err)
		}
		delivered = append(delivered, ct)
	}
	// An attacker steals Bob's complete current state (both copies of it).
	for _, leaked := range [][]byte{mustMarshal(t, bob), mustMarshal(t, alice)} {
		stolen, err := UnmarshalSession(leaked)
		if err != nil {
			t.Fatal(err)
		}
		for i, ct := range delivered {
			if pt, err := stolen.Decrypt(ct); err == nil {
				t.Fatalf("leaked state decrypted earlier message %d: %q", i, pt)
			}
		}
	}
}

func TestPostCompromiseRecovery(t *testing.T) {
	alice, bob, _, _ := establish(t, 51)
	roundTrip(t, alice, bob, "before")
	// The attacker copies Bob's whole state and keeps following the
	// conversation passively.
	stolen, err := UnmarshalSession(mustMarshal(t, bob))
	if err != nil {
		t.Fatal(err)
	}
	stolen.rand = newDetRand(666)

	ct1, _ := alice.Encrypt([]byte("still readable by the attacker"))
	if _, err := bob.Decrypt(ct1); err != nil {
		t.Fatal(err)
	}
	if pt, err := stolen.Decrypt(ct1); err != nil {
		t.Fatalf("sanity: the attacker should read the current chain: %v", err)
	} else if string(pt) != "still readable by the attacker" {
		t.Fatal("bad plaintext")
	}
	// Bob's reply still uses the ratchet key the attacker stole, and so
	// does Alice's answer (DH of her new key with that stolen key): the
	// attacker reads both. This is inherent to the Double Ratchet.
	ctB, _ := bob.Encrypt([]byte("bob, old ratchet key"))
	if _, err := alice.Decrypt(ctB); err != nil {
		t.Fatal(err)
	}
	ct2, _ := alice.Encrypt([]byte("alice, new key x stolen key"))
	if _, err := stolen.Decrypt(ct2); err != nil {
		t.Fatalf("sanity: %v", err)
	}
	if _, err := bob.Decrypt(ct2); err != nil {
		t.Fatal(err)
	}
	// Receiving ct2 made Bob generate a fresh ratchet key the attacker
	// does not have. From here on the attacker is locked out both ways.
	ct3, _ := bob.Encrypt([]byte("bob healed"))
	if _, err := stolen.Decrypt(ct3); err == nil {
		t.Fatal("attacker decrypted Bob's message after his ratchet turn")
	}
	if pt, err := alice.Decrypt(ct3); err != nil || string(pt) != "bob healed" {
		t.Fatal(err)
	}
	for i := range 3 {
		ct, _ := alice.Encrypt([]byte(fmt.Sprint("alice healed ", i)))
		if _, err := stolen.Decrypt(ct); err == nil {
			t.Fatal("attacker with old state decrypted a message after the ratchet turn")
		}
		if _, err := bob.Decrypt(ct); err != nil {
			t.Fatal(err)
		}
		roundTrip(t, bob, alice, "and back")
	}
	// Even a snapshot taken by the attacker's own replica stays useless.
	for range 2 {
		ct, _ := bob.Encrypt([]byte("x"))
		if _, err := stolen.Decrypt(ct); err == nil {
			t.Fatal("attacker decrypted")
		}
		if _, err := alice.Decrypt(ct); err != nil {
			t.Fatal(err)
		}
	}
}

func TestSkippedKeyBounds(t *testing.T) {
	alice, bob, _, _ := establish(t, 61)
	// Exactly MaxSkip skipped keys in one chain is fine.
	var first []byte
	for i := range MaxSkip + 1 {
		ct, _ := alice.Encrypt([]byte("m"))
		if i == 0 {
			first = ct
		}
		if i == MaxSkip {
			if _, err := bob.Decrypt(ct); err != nil {
				t.Fatalf("skip of exactly MaxSkip: %v", err)
			}
		}
	}
	if n := len(bob.st.skipped); n != MaxSkip {
		t.Fatalf("%d skipped keys stored", n)
	}
	// Another full skip in the same chain evicts the oldest keys of that
	// chain: the per-chain bound holds.
	for i := range MaxSkip + 1 {
		ct, _ := alice.Encrypt([]byte("m"))
		if i == MaxSkip {
			if _, err := bob.Decrypt(ct); err != nil {
				t.Fatal(err)
			}
		}
	}
	if n := len(bob.st.skipped); n != MaxSkip {
		t.Fatalf("%d skipped keys stored, want per-chain bound %d", n, MaxSkip)
	}
	if _, err := bob.Decrypt(first); !errors.Is(err, ErrDuplicateMessage) {
		t.Fatalf("evicted key: %v", err)
	}
	// Over several chains the total bound holds.
	for range 4 {
		roundTrip(t, bob, alice, "turn")
		for i := range 800 {
			ct, _ := alice.Encrypt([]byte("m"))
			if i == 799 {
				if _, err := bob.Decrypt(ct); err != nil {
					t.Fatal(err)
				}
			}
		}
		if n := len(bob.st.skipped); n > MaxSkippedTotal {
			t.Fatalf("%d skipped keys stored, bound %d", n, MaxSkippedTotal)
		}
	}
	if n := len(bob.st.skipped); n != MaxSkippedTotal {
		t.Fatalf("%d skipped keys, want exactly the total bound", n)
	}
}

func TestOldReceivingChains(t *testing.T) {
	alice, bob, _, _ := establish(t, 71)
	// One delayed message from each of several consecutive Alice chains.
	var delayed [][]byte
	for turn := range MaxOldReceivingChains + 2 {
		ct, _ := alice.Encrypt([]byte(fmt.Sprint("delayed ", turn)))
		delayed = append(delayed, ct)
		roundTrip(t, alice, bob, "delivered") // Bob sees this chain (n=1)
		roundTrip(t, bob, alice, "turn")
	}
	roundTrip(t, alice, bob, "current")
	// Bob now has the current chain plus MaxOldReceivingChains old ones.
	// The delayed messages are n=0 of their chains: they were stored as
	// skipped keys when n=1 arrived, so all of them decrypt.
	for i, ct := range delayed {
		if _, err := bob.Decrypt(ct); err != nil {
			t.Fatalf("delayed %d: %v", i, err)
		}
	}
	// Lazily derived keys: messages sent after the last one Bob saw on an
	// old chain need the chain itself.
	alice2, bob2, _, _ := establish(t, 72)
	var late [][]byte
	for turn := range MaxOldReceivingChains + 2 {
		roundTrip(t, alice2, bob2, "first")
		ct, _ := alice2.Encrypt([]byte(fmt.Sprint("late ", turn)))
		late = append(late, ct)
		roundTrip(t, bob2, alice2, "turn")
	}
	roundTrip(t, alice2, bob2, "current")
	if len(bob2.st.recv) != 1+MaxOldReceivingChains {
		t.Fatalf("%d receiving chains", len(bob2.st.recv))
	}
	for i, ct := range late {
		before := mustMarshal(t, bob2)
		_, err := bob2.Decrypt(ct)
		// late[i] was sent on chain i; chains older than the kept ones are
		// gone (the current chain plus MaxOldReceivingChains are kept).
		kept := i >= len(late)-MaxOldReceivingChains
		if kept && err != nil {
			t.Fatalf("late %d within bounds: %v", i, err)
		}
		if !kept {
			if err == nil {
				t.Fatalf("late %d decrypted beyond the chain bound", i)
			}
			if !bytes.Equal(before, mustMarshal(t, bob2)) {
				t.Fatal("state changed")
			}
		}
	}
}

func TestMessageTooLarge(t *testing.T) {
	alice, _, _, _ := establish(t, 81)
	if _, err := alice.Encrypt(make([]byte, MaxPlaintextSize+1)); !errors.Is(err, ErrMessageTooLarge) {
		t.Fatal(err)
	}
	if _, err := alice.Encrypt(make([]byte, MaxPlaintextSize)); err != nil {
		t.Fatal(err)
	}
}

func TestUnsupportedVersion(t *testing.T) {
	alice, bob, _, _ := establish(t, 82)
	ct, _ := alice.Encrypt([]byte("v"))
	ct[0] = 2
	if _, err := bob.Decrypt(ct); !errors.Is(err, ErrUnsupportedVersion) {
		t.Fatal(err)
	}
	st := mustMarshal(t, bob)
	st[0] = 9
	if _, err := UnmarshalSession(st); !errors.Is(err, ErrUnsupportedVersion) {
		t.Fatal(err)
	}
	_ = binary.BigEndian
}
