// Copyright 2026 The Petrel Authors
// SPDX-License-Identifier: Apache-2.0

package mailbox

import (
	"io"
	"log/slog"
	"sync/atomic"
	"testing"
	"time"

	"github.com/nats-io/nats.go"

	"github.com/petrelchat/petrel/internal/bus"
)

// kickSink records that its connection was taken over.
type kickSink struct {
	empty  chan struct{}
	kicked chan struct{}
}

func newKickSink() *kickSink {
	return &kickSink{empty: make(chan struct{}, 1), kicked: make(chan struct{}, 1)}
}

func (s *kickSink) Push(uint64, []byte) error { return nil }
func (s *kickSink) QueueEmpty(int) {
	select {
	case s.empty <- struct{}{}:
	default:
	}
}
func (s *kickSink) Kicked() {
	select {
	case s.kicked <- struct{}{}:
	default:
	}
}

// openNode starts another mailbox on b, as another node of a cluster would run: its own name, its
// own hooks. Closed when t ends, before b.
func openNode(t *testing.T, b *bus.Bus, node string, hooks testHooks, claims bool, gates ...*gate) *Mailbox {
	t.Helper()
	m := New(b, Config{Node: node, Logger: slog.New(slog.NewTextHandler(io.Discard, nil))})
	m.hooks, m.claims = hooks, claims
	if err := m.Start(); err != nil {
		t.Fatal(err)
	}
	t.Cleanup(m.Close)
	for _, g := range gates {
		t.Cleanup(g.release)
	}
	return m
}

// attachAsync attaches in the background; the channel gets the attachment.
func attachAsync(t *testing.T, m *Mailbox, connID string, sink Sink) chan *Attachment {
	ch := make(chan *Attachment, 1)
	go func() {
		a, err := m.Attach(orderDev, connID, sink)
		if err != nil {
			t.Errorf("attach %s: %v", connID, err)
		}
		ch <- a
	}()
	return ch
}

func awaitKick(t *testing.T, s *kickSink, who string) {
	t.Helper()
	select {
	case <-s.kicked:
	case <-time.After(10 * time.Second):
		t.Fatalf("%s was not taken over: two connections of one device stay", who)
	}
}

func notKicked(t *testing.T, s *kickSink, who string) {
	t.Helper()
	select {
	case <-s.kicked:
		t.Fatalf("%s was taken over too: no connection of the device is left", who)
	default:
	}
}

// Two connections of one device race: the first is held just before its subscription exists
// (in a cluster, a subscription still spreading to the other nodes looks the same from there),
// while the second attaches completely. Exactly one must stay, the other is taken over: on a node
// alone and on two nodes of a cluster (two mailboxes on one bus, taking over by claims).
func TestRacingAttachmentsOneStays(t *testing.T) {
	for _, tc := range []struct {
		name    string
		cluster bool
	}{{"node alone", false}, {"cluster", true}} {
		t.Run(tc.name, func(t *testing.T) {
			hold := newGate()
			b, m1 := openHooked(t, Config{Node: "n1"}, testHooks{attachSubscribe: func(a *Attachment) {
				if a.connID == "c1" {
					hold.wait()
				}
			}}, hold)
			m2 := m1
			claimed2 := make(chan struct{}, 1)
			if tc.cluster {
				m1.claims = true // before any Attach
				m2 = openNode(t, b, "n2", testHooks{claimed: func(a *Attachment, _ uint64) {
					if a.connID == "c2" {
						claimed2 <- struct{}{}
					}
				}}, true)
			}
			s1, s2 := newKickSink(), newKickSink()
			first := attachAsync(t, m1, "c1", s1)
			hold.awaitReached(t, "the first attach")
			a2, err := m2.Attach(orderDev, "c2", s2)
			if err != nil {
				t.Fatal(err)
			}
			defer a2.Detach()
			<-s2.empty
			if tc.cluster {
				// c2 has its claim before c1 takes one. (Its claim is taken on a goroutine of its
				// own after the subscription spread: under load that can come after c1's, and then
				// c2 is the newer connection and rightly stays.)
				select {
				case <-claimed2:
				case <-time.After(10 * time.Second):
					t.Fatal("c2 took no claim")
				}
			}
			hold.release()
			a1 := <-first
			defer a1.Detach()
			// The first attach finished last: it is the newer connection.
			awaitKick(t, s2, "the older connection")
			notKicked(t, s1, "the newer connection")
			if tc.cluster {
				a1.mu.Lock()
				rev, closed := a1.claimRev, a1.closed
				a1.mu.Unlock()
				a2.mu.Lock()
				older := a2.claimRev
				a2.mu.Unlock()
				if closed || rev <= older {
					t.Fatalf("the connection that stays has claim %d (closed %v), the one taken over %d", rev, closed, older)
				}
			}
		})
	}
}

// A claim announced before an attachment announced its own: the attachment compares at once (its
// claim was taken when it attached), and the lower claim is taken over without announcing its own.
func TestClaimHeardBeforeOwnIsAnnounced(t *testing.T) {
	hold := newGate()
	b, m1 := openHooked(t, Config{Node: "n1"}, testHooks{claimed: func(a *Attachment, _ uint64) { hold.wait() }}, hold)
	m1.claims = true // before any Attach
	m2 := openNode(t, b, "n2", testHooks{}, true)
	s1, s2 := newKickSink(), newKickSink()
	a1, err := m1.Attach(orderDev, "c1", s1)
	if err != nil {
		t.Fatal(err)
	}
	defer a1.Detach()
	hold.awaitReached(t, "the first claim")
	a2, err := m2.Attach(orderDev, "c2", s2)
	if err != nil {
		t.Fatal(err)
	}
	defer a2.Detach()
	awaitKick(t, s1, "the connection with the lower claim, before it announced")
	hold.release()
	notKicked(t, s2, "the connection with the higher claim")
}

// waitCond polls cond (nothing announces an attachment's state to a test) for up to 10 s.
func waitCond(t *testing.T, what string, cond func() bool) {
	t.Helper()
	deadline := time.Now().Add(10 * time.Second)
	for !cond() {
		if time.Now().After(deadline) {
			t.Fatalf("%s: not within 10s", what)
		}
		time.Sleep(time.Millisecond) // polling: no event announces it
	}
}

// An announcement that is not heard (sent before the hearing attachment's subscription had
// spread to the sender's node, or dropped by the bus) is made up for by the announcements
// interestTimeout later: here the older attachment misses the newer claim's announcement, and is
// taken over once it announces its own again (the newer one answers with its own), not before.
func TestUnheardClaimSettledByTheSecondAnnouncement(t *testing.T) {
	var missed atomic.Bool
	hold, hold2 := newGate(), newGate()
	b, m1 := openHooked(t, Config{Node: "n1"}, testHooks{
		claimHeard: func(*Attachment) bool { return !missed.CompareAndSwap(false, true) }, // misses the first
		recheck:    func(*Attachment) { hold.wait() },
	}, hold)
	m1.claims = true // before any Attach
	// The newer attachment's own second announcement is held: only the older one's can settle it.
	// And it does not hear the older one's first announcement (it may reach n2 after it attached):
	// nothing is heard before the older one's second announcement.
	var hearing atomic.Bool
	m2 := openNode(t, b, "n2", testHooks{
		recheck:    func(*Attachment) { hold2.wait() },
		claimHeard: func(*Attachment) bool { return hearing.Load() },
	}, true, hold2)
	s1, s2 := newKickSink(), newKickSink()
	// The first attachment's first announcement, as every node hears it.
	announced := make(chan struct{}, 1)
	sub, err := b.Conn().Subscribe(bus.DeviceSubject(orderDev), func(msg *nats.Msg) {
		if len(msg.Data) > 9 && msg.Data[0] == kindClaim && string(msg.Data[9:]) == "c1" {
			select {
			case announced <- struct{}{}:
			default:
			}
		}
	})
	if err != nil {
		t.Fatal(err)
	}
	defer func() { _ = sub.Unsubscribe() }()
	a1, err := m1.Attach(orderDev, "c1", s1)
	if err != nil {
		t.Fatal(err)
	}
	defer a1.Detach()
	select {
	case <-announced:
	case <-time.After(10 * time.Second):
		t.Fatal("the first claim was not announced")
	}
	a2, err := m2.Attach(orderDev, "c2", s2)
	if err != nil {
		t.Fatal(err)
	}
	defer a2.Detach()
	waitCond(t, "the second claim's announcement missed by the first attachment", missed.Load)
	hold.awaitReached(t, "the first attachment's second announcement")
	notKicked(t, s1, "the older connection, before its second announcement")
	hearing.Store(true)
	hold.release()
	awaitKick(t, s1, "the older connection")
	notKicked(t, s2, "the newer connection")
}
