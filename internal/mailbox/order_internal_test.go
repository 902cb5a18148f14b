// Copyright 2026 The Petrel Authors
// SPDX-License-Identifier: Apache-2.0

package mailbox

import (
	"context"
	"fmt"
	"io"
	"log/slog"
	"strings"
	"sync"
	"sync/atomic"
	"testing"
	"time"

	"github.com/nats-io/nats.go"
	dto "github.com/prometheus/client_model/go"

	"github.com/petrelchat/petrel/internal/bus"
)

// The guards of per-sender order (see the package doc), each tested by holding the drain or a
// commit at the moment its race is decided. Each test fails when its guard is removed.

const orderDev = "0123456789abcdef0123456789abcdef"

// openHooked is openInternal with test hooks, set before the mailbox starts. The gates the hooks
// use are opened when the test ends, before the mailbox closes.
func openHooked(t *testing.T, cfg Config, hooks testHooks, gates ...*gate) (*bus.Bus, *Mailbox) {
	t.Helper()
	quiet := slog.New(slog.NewTextHandler(io.Discard, nil))
	b, err := bus.Open(context.Background(), bus.Config{DataDir: t.TempDir(), InboxShards: 1, Logger: quiet})
	if err != nil {
		t.Fatal(err)
	}
	cfg.Logger = quiet
	m := New(b, cfg)
	m.hooks = hooks
	if err := m.Start(); err != nil {
		b.Close()
		t.Fatal(err)
	}
	t.Cleanup(func() { m.Close(); b.Close() })
	for _, g := range gates {
		t.Cleanup(g.release) // cleanups run last first: before the mailbox closes
	}
	return b, m
}

// gate is a hook that holds whoever reaches it until it is opened; reached tells the test that
// somebody did.
type gate struct {
	reached chan struct{}
	open    chan struct{}
	once    sync.Once
}

func newGate() *gate {
	return &gate{reached: make(chan struct{}, 1), open: make(chan struct{})}
}

func (g *gate) wait() {
	select {
	case g.reached <- struct{}{}:
	default:
	}
	<-g.open
}

func (g *gate) release() { g.once.Do(func() { close(g.open) }) }

// awaitReached waits until something is held at g.
func (g *gate) awaitReached(t *testing.T, what string) {
	t.Helper()
	select {
	case <-g.reached:
	case <-time.After(20 * time.Second):
		t.Fatalf("%s never happened", what)
	}
}

// orderSink records what is pushed to the device, in order, and how many are unacked.
type orderSink struct {
	mu         sync.Mutex
	got        []string // envelopes pushed, in push order
	unacked    int
	maxUnacked int
	tags       chan uint64   // pushed tags not yet taken by the acker
	pushed     chan struct{} // signalled on each push
	empty      chan int      // QueueEmpty's count
}

func newOrderSink() *orderSink {
	return &orderSink{tags: make(chan uint64, 1024), pushed: make(chan struct{}, 1), empty: make(chan int, 1)}
}

func (s *orderSink) Push(tag uint64, env []byte) error {
	s.mu.Lock()
	s.got = append(s.got, string(env))
	s.unacked++
	s.maxUnacked = max(s.maxUnacked, s.unacked)
	s.mu.Unlock()
	s.tags <- tag
	select {
	case s.pushed <- struct{}{}:
	default:
	}
	return nil
}
func (s *orderSink) QueueEmpty(n int) { s.empty <- n }
func (s *orderSink) Kicked()          {}

// pushes is what was pushed so far.
func (s *orderSink) pushes() []string {
	s.mu.Lock()
	defer s.mu.Unlock()
	return append([]string(nil), s.got...)
}

// ack acks every tag pushed so far; it returns how many.
func (s *orderSink) ack(a *Attachment) int {
	var tags []uint64
take:
	for {
		select {
		case t := <-s.tags:
			tags = append(tags, t)
		default:
			break take
		}
	}
	s.mu.Lock()
	s.unacked -= len(tags)
	s.mu.Unlock()
	if len(tags) > 0 {
		a.Ack(tags)
	}
	return len(tags)
}

// ackAll acks every push as it comes, until the test ends.
func (s *orderSink) ackAll(t *testing.T, a *Attachment) {
	stop := make(chan struct{})
	done := make(chan struct{})
	t.Cleanup(func() { close(stop); <-done })
	go func() {
		defer close(done)
		for {
			select {
			case tag := <-s.tags:
				s.mu.Lock()
				s.unacked--
				s.mu.Unlock()
				a.Ack([]uint64{tag})
			case <-stop:
				return
			}
		}
	}()
}

// waitPushes waits until n envelopes were pushed and returns them.
func (s *orderSink) waitPushes(t *testing.T, n int) []string {
	t.Helper()
	deadline := time.After(20 * time.Second)
	for {
		if got := s.pushes(); len(got) >= n {
			return got
		}
		select {
		case <-s.pushed:
		case <-deadline:
			t.Fatalf("%d envelopes pushed, want %d: %q", len(s.pushes()), n, s.pushes())
		}
	}
}

// send sends one envelope (its id is its content) on route r; the channel gets the outcome.
func send(m *Mailbox, r *Route, id string) chan Outcome {
	ch := make(chan Outcome, 1)
	m.Send(r, []Target{{DeviceID: orderDev, DedupeID: id, Envelope: []byte(id)}}, func(o Outcome) { ch <- o })
	return ch
}

func outcome(t *testing.T, ch chan Outcome, id string) Outcome {
	t.Helper()
	select {
	case o := <-ch:
		if o.Err != nil {
			t.Fatalf("send %s: %v", id, o.Err)
		}
		return o
	case <-time.After(20 * time.Second):
		t.Fatalf("send %s never ended", id)
	}
	return Outcome{}
}

func wantOrder(t *testing.T, got []string, want ...string) {
	t.Helper()
	if strings.Join(got, " ") != strings.Join(want, " ") {
		t.Fatalf("pushed %q, want %q (per-sender order broken)", got, want)
	}
}

// Guard 1: while a device that just connected drains its stored envelopes, a live delivery from
// the same sender does not overtake them (the attachment refuses live while it drains).
func TestLiveDoesNotOvertakeTheDrainAtConnect(t *testing.T) {
	read := newGate()
	_, m := openHooked(t, Config{}, testHooks{drainRead: func(*Attachment) { read.wait() }}, read)
	r := NewRoute()
	for _, id := range []string{"m1", "m2", "m3"} { // the device is offline: stored
		if o := outcome(t, send(m, r, id), id); o.Stored != 1 {
			t.Fatalf("send %s while offline: %+v, want stored", id, o)
		}
	}
	sink := newOrderSink()
	a, err := m.Attach(orderDev, "c1", sink)
	if err != nil {
		t.Fatal(err)
	}
	defer a.Detach()
	sink.ackAll(t, a)
	read.awaitReached(t, "the drain's first read") // held before it reads the three stored envelopes
	outcome(t, send(m, r, "m4"), "m4")             // stored (refused while draining), or acked if it went live
	if got := sink.pushes(); len(got) != 0 {
		t.Fatalf("pushed %q before the drain read the inbox: the live delivery overtook m1..m3", got)
	}
	read.release()
	wantOrder(t, sink.waitPushes(t, 4), "m1", "m2", "m3", "m4")
}

// Guard 2: while an envelope from a route is being stored, the next one to the same device is
// stored behind it, even when the device has meanwhile connected and gone live.
func TestStoreInFlightIsNotOvertakenByLive(t *testing.T) {
	commit := newGate()
	var first sync.Once
	_, m := openHooked(t, Config{}, testHooks{commit: func([]*appendReq) {
		first.Do(commit.wait) // hold the first commit (m1's) only
	}}, commit)
	r := NewRoute()
	o1 := send(m, r, "m1") // the device is offline: no responders, so m1 goes to the store
	commit.awaitReached(t, "m1's commit")
	sink := newOrderSink()
	a, err := m.Attach(orderDev, "c1", sink)
	if err != nil {
		t.Fatal(err)
	}
	defer a.Detach()
	sink.ackAll(t, a)
	select {
	case <-sink.empty: // the inbox read empty (m1 is not committed): the attachment is live
	case <-time.After(20 * time.Second):
		t.Fatal("no QueueEmpty")
	}
	o2 := send(m, r, "m2")
	if got := sink.pushes(); len(got) != 0 {
		t.Fatalf("pushed %q while m1 was being stored: m2 went live and overtook m1", got)
	}
	commit.release()
	outcome(t, o1, "m1")
	outcome(t, o2, "m2")
	wantOrder(t, sink.waitPushes(t, 2), "m1", "m2")
}

// Guard 3: a drain does not switch to live delivery until every refusal it handed out has come
// back from its store. Here a sender on another node had two live requests in flight: the first
// was refused while the device drained; the second arrives after the drain read an empty inbox,
// while the first is still being stored, and must be refused too.
func TestDrainWaitsForEveryTicket(t *testing.T) {
	read := newGate()
	idle := make(chan [2]int, 16) // (live, pending) of each idle drain
	_, m := openHooked(t, Config{}, testHooks{
		drainRead: func(*Attachment) { read.wait() },
		drainIdle: func(_ *Attachment, live bool, pending int) {
			l := 0
			if live {
				l = 1
			}
			select {
			case idle <- [2]int{l, pending}:
			default: // the test stopped listening
			}
		},
	}, read)
	sink := newOrderSink()
	a, err := m.Attach(orderDev, "c1", sink)
	if err != nil {
		t.Fatal(err)
	}
	defer a.Detach()
	sink.ackAll(t, a)
	read.awaitReached(t, "the drain's first read")

	// The test is the other node's sender: it publishes live requests of one route and reads
	// the answers.
	nc := m.nc
	const route = "remote-route"
	ask := func(id string, unanswered bool) string {
		t.Helper()
		reply := nats.NewInbox()
		sub, err := nc.SubscribeSync(reply)
		if err != nil {
			t.Fatal(err)
		}
		defer sub.Unsubscribe()
		if err := nc.PublishMsg(&nats.Msg{Subject: bus.DeviceSubject(orderDev), Reply: reply, Data: encodeLive(route, unanswered, []byte(id))}); err != nil {
			t.Fatal(err)
		}
		ans, err := sub.NextMsg(20 * time.Second)
		if err != nil {
			t.Fatalf("answer to %s: %v", id, err)
		}
		return string(ans.Data)
	}
	a1 := ask("m1", false)
	t1, refused := strings.CutPrefix(a1, string(replyStore))
	if !refused || t1 == "" {
		t.Fatalf("m1 while draining: answer %q, want a refusal with a ticket", a1)
	}
	read.release() // the drain reads an empty inbox: m1 is not stored yet
	for settled := false; !settled; {
		select {
		case st := <-idle:
			settled = st[0] == 1 || st[1] > 0 // live, or waiting for a ticket
		case <-time.After(20 * time.Second):
			t.Fatal("the drain never read its inbox")
		}
	}
	// m2 was published before m1's answer reached the sender (so it is flagged unanswered), and
	// arrives now, while m1's store is still in flight.
	a2 := ask("m2", true)
	t2, refused := strings.CutPrefix(a2, string(replyStore))
	if !refused || t2 == "" {
		t.Fatalf("m2 while m1's store is unconfirmed: answer %q (pushed %q), want a refusal with a ticket: it overtook m1", a2, sink.pushes())
	}
	if got := sink.pushes(); len(got) != 0 {
		t.Fatalf("pushed %q before m1 was stored", got)
	}
	// The sender stores both, in order, each with its ticket.
	for _, x := range [][2]string{{"m1", t1}, {"m2", t2}} {
		done := make(chan error, 1)
		m.store(orderDev, x[0], x[1], []byte(x[0]), 0, func(err error) { done <- err })
		if err := <-done; err != nil {
			t.Fatal(err)
		}
	}
	wantOrder(t, sink.waitPushes(t, 2), "m1", "m2")
}

// Guard 4: the live path keeps delivery_window: at most Window envelopes, live and stored
// together, are pushed to one device and unacked; the rest are stored and follow, in order, as
// acks open the window.
func TestLiveRespectsTheWindow(t *testing.T) {
	const window, n = 4, 12
	_, m := openHooked(t, Config{Window: window, LiveAckTimeout: time.Minute}, testHooks{})
	sink := newOrderSink()
	a, err := m.Attach(orderDev, "c1", sink)
	if err != nil {
		t.Fatal(err)
	}
	defer a.Detach()
	select {
	case <-sink.empty: // live
	case <-time.After(20 * time.Second):
		t.Fatal("no QueueEmpty")
	}
	r := NewRoute()
	outs := make([]chan Outcome, n)
	var want []string
	for i := range n {
		id := fmt.Sprintf("m%02d", i)
		want = append(want, id)
		outs[i] = send(m, r, id)
	}
	// Nothing is acked yet: the first window went live, the rest were refused and stored.
	if got := sink.pushes(); len(got) != window {
		t.Fatalf("%d envelopes pushed live and unacked (%q); delivery_window is %d", len(got), got, window)
	}
	for i := window; i < n; i++ {
		if o := outcome(t, outs[i], want[i]); o.Stored != 1 {
			t.Fatalf("send %s past the window: %+v, want stored", want[i], o)
		}
	}
	// Ack what was pushed, a window at a time, until everything came.
	deadline := time.After(30 * time.Second)
	for len(sink.pushes()) < n {
		if sink.ack(a) == 0 {
			select {
			case <-sink.pushed:
			case <-deadline:
				t.Fatalf("delivery stalled: %q", sink.pushes())
			}
		}
	}
	sink.ack(a)
	for i := range window {
		if o := outcome(t, outs[i], want[i]); o.Live != 1 {
			t.Fatalf("send %s: %+v, want acked live", want[i], o)
		}
	}
	wantOrder(t, sink.pushes(), want...)
	sink.mu.Lock()
	defer sink.mu.Unlock()
	if sink.maxUnacked > window {
		t.Fatalf("%d envelopes pushed and unacked at once; delivery_window is %d", sink.maxUnacked, window)
	}
}

// A refused live delivery whose store then fails for certain (nothing stored, the sender not
// acked: here the node has no quorum) hands its ticket back at once. Before, the drain waited for
// the ticket to expire (2 × StoreTimeout: 20 s by default), and the device got no QueueEmpty, so
// its client could not send, for that long after a failover (petrel bench chaos).
func TestFailedStoreReleasesItsTicket(t *testing.T) {
	read := newGate()
	idle := make(chan int, 16) // pending tickets of each idle drain
	var quorum atomic.Bool
	quorum.Store(true)
	// StoreTimeout is far above the test's wait: only the release can end the wait for the ticket.
	_, m := openHooked(t, Config{StoreTimeout: 10 * time.Minute, Quorum: quorum.Load}, testHooks{
		drainRead: func(*Attachment) { read.wait() },
		drainIdle: func(_ *Attachment, _ bool, pending int) {
			select {
			case idle <- pending:
			default:
			}
		},
	}, read)
	sink := newOrderSink()
	a, err := m.Attach(orderDev, "c1", sink)
	if err != nil {
		t.Fatal(err)
	}
	defer a.Detach()
	sink.ackAll(t, a)
	read.awaitReached(t, "the drain's first read")

	reply := nats.NewInbox()
	sub, err := m.nc.SubscribeSync(reply)
	if err != nil {
		t.Fatal(err)
	}
	defer sub.Unsubscribe()
	if err := m.nc.PublishMsg(&nats.Msg{Subject: bus.DeviceSubject(orderDev), Reply: reply, Data: encodeLive("remote-route", false, []byte("m1"))}); err != nil {
		t.Fatal(err)
	}
	ans, err := sub.NextMsg(20 * time.Second)
	if err != nil {
		t.Fatal(err)
	}
	ticket, refused := strings.CutPrefix(string(ans.Data), string(replyStore))
	if !refused || ticket == "" {
		t.Fatalf("m1 while draining: answer %q, want a refusal with a ticket", ans.Data)
	}
	read.release()
	for pending := 0; pending == 0; {
		select {
		case pending = <-idle:
		case <-time.After(20 * time.Second):
			t.Fatal("the drain never waited for the ticket")
		}
	}
	quorum.Store(false) // the sender's store fails for certain
	done := make(chan error, 1)
	m.store(orderDev, "m1", ticket, []byte("m1"), 0, func(err error) { done <- err })
	if err := <-done; err == nil {
		t.Fatal("the store succeeded without quorum")
	}
	select {
	case <-sink.empty:
	case <-time.After(30 * time.Second):
		t.Fatal("no QueueEmpty: the drain still waits for the ticket of a store that failed")
	}
	var mm dto.Metric
	if err := m.metrics.ticketsReleased.Write(&mm); err != nil || mm.GetCounter().GetValue() != 1 {
		t.Fatalf("tickets released = %v (%v), want 1", mm.GetCounter().GetValue(), err)
	}
}
