package e2ee

import (
	"errors"
	"fmt"
	mrand "math/rand/v2"
	"testing"
)

// TestRoundTrip10k sends 10,000 messages each way with random batching,
// reordering, loss, duplication and delays, all within the documented
// bounds, and restores both sessions from their serialisation now and then.
func TestRoundTrip10k(t *testing.T) {
	const perSide = 10_000
	alice, bob, _, _ := establish(t, 141)
	rng := mrand.New(mrand.NewPCG(2024, 7))

	type inflight struct {
		ct   []byte
		pt   string
		dup  bool // a duplicate of an already-delivered message
		held int  // rounds spent in flight
	}
	type link struct {
		name     string
		from, to **Session
		queue    []*inflight
		sent     int
		lost     int
		got      int
		dups     int
		lastSeen int
	}
	links := []*link{
		{name: "a->b", from: &alice, to: &bob},
		{name: "b->a", from: &bob, to: &alice},
	}
	const maxHeld = 3 // rounds; fewer than MaxOldReceivingChains ratchet turns
	round := 0
	deliver := func(l *link, flush bool) {
		var now, later []*inflight
		for _, m := range l.queue {
			if flush || m.held >= maxHeld || rng.IntN(10) < 7 {
				now = append(now, m)
			} else {
				m.held++
				later = append(later, m)
			}
		}
		rng.Shuffle(len(now), func(i, j int) { now[i], now[j] = now[j], now[i] })
		for _, m := range now {
			pt, err := (*l.to).Decrypt(m.ct)
			if m.dup {
				if !errors.Is(err, ErrDuplicateMessage) {
					t.Fatalf("%s round %d: duplicate gave %v", l.name, round, err)
				}
				l.dups++
				continue
			}
			if err != nil {
				t.Fatalf("%s round %d: decrypt: %v", l.name, round, err)
			}
			if string(pt) != m.pt {
				t.Fatalf("%s: got %q want %q", l.name, pt, m.pt)
			}
			l.got++
			if !flush && rng.IntN(100) < 3 {
				later = append(later, &inflight{ct: m.ct, dup: true})
			}
		}
		l.queue = later
	}
	for links[0].sent < perSide || links[1].sent < perSide {
		round++
		l := links[rng.IntN(2)]
		batch := 1 + rng.IntN(30)
		for i := 0; i < batch && l.sent < perSide; i++ {
			msg := fmt.Sprintf("%s #%d", l.name, l.sent)
			ct, err := (*l.from).Encrypt([]byte(msg))
			if err != nil {
				t.Fatal(err)
			}
			l.sent++
			if rng.IntN(100) < 2 {
				l.lost++
				continue
			}
			l.queue = append(l.queue, &inflight{ct: ct, pt: msg})
		}
		for _, l := range links {
			deliver(l, false)
		}
		if round%400 == 0 {
			for _, s := range []**Session{&alice, &bob} {
				restored, err := UnmarshalSession(mustMarshal(t, *s))
				if err != nil {
					t.Fatal(err)
				}
				restored.rand = newDetRand(uint64(round))
				*s = restored
			}
		}
	}
	for _, l := range links {
		deliver(l, true)
		if l.got+l.lost != perSide {
			t.Fatalf("%s: %d delivered + %d lost != %d", l.name, l.got, l.lost, perSide)
		}
		t.Logf("%s: %d delivered, %d lost, %d duplicates rejected, %d rounds", l.name, l.got, l.lost, l.dups, round)
	}
	if n := len(alice.st.skipped) + len(bob.st.skipped); n > 2*MaxSkippedTotal {
		t.Fatalf("skipped keys %d", n)
	}
}
