// Copyright 2026 The Petrel Authors
// SPDX-License-Identifier: Apache-2.0

package hostile

import (
	"crypto/ed25519"
	"fmt"
	"sync"
	"sync/atomic"
	"testing"
	"time"

	"github.com/nats-io/nats.go"

	"github.com/petrelchat/petrel/internal/bus"
	"github.com/petrelchat/petrel/internal/server"
	"github.com/petrelchat/petrel/internal/testserver"
	pb "github.com/petrelchat/petrel/proto/petrel/v1"
)

// inboxUser is a registered account with one device.
type inboxUser struct {
	name string
	key  ed25519.PrivateKey
	dev  string
}

// registerUser registers name; the device stays connected only if keep (else it is offline).
func registerUser(t *testing.T, s *testserver.Server, name string, keep bool) (inboxUser, *testserver.RawClient) {
	t.Helper()
	c := testserver.Dial(t, s.URL())
	c.MustRegister(name)
	u := inboxUser{name: name, key: c.AuthKey, dev: c.DeviceID}
	if !keep {
		c.WS.CloseNow()
		return u, nil
	}
	return u, c
}

// sendFrame is a Send of body to u's device.
func sendFrame(msgID string, u inboxUser, body []byte) *pb.Frame {
	return &pb.Frame{Body: &pb.Frame_Send{Send: &pb.Send{MessageId: msgID, To: u.name, Envelopes: []*pb.DeviceCiphertext{
		{DeviceId: u.dev, Type: pb.EnvelopeType_ENVELOPE_TYPE_MESSAGE, Ciphertext: body},
	}}}}
}

// pipeline keeps up to window requests in flight on c: next(i) builds request i (nil: no more),
// done(i, response) sees each answer. It returns when every request sent has been answered. Only
// this goroutine may use c meanwhile.
func pipeline(t *testing.T, c *testserver.RawClient, window int, next func(i int) *pb.Frame, done func(i int, f *pb.Frame)) {
	t.Helper()
	base := uint64(1 << 40) // ids of our own, far from RawClient's
	inflight, sent := 0, 0
	more := true
	for {
		for more && inflight < window {
			f := next(sent)
			if f == nil {
				more = false
				break
			}
			f.Id = base + uint64(sent)
			c.Write(f)
			sent++
			inflight++
		}
		if inflight == 0 {
			return
		}
		r := c.Read()
		if r.GetId() < base {
			c.Pushes = append(c.Pushes, r)
			continue
		}
		inflight--
		done(int(r.GetId()-base), r)
	}
}

// drain connects u, reads and acks everything stored for it, and returns the message ids seen.
func drain(t *testing.T, s *testserver.Server, u inboxUser) map[string]int {
	t.Helper()
	c := testserver.Dial(t, s.URL())
	defer c.WS.CloseNow()
	if r := c.Auth(u.key); r.GetError() != nil {
		t.Fatalf("auth %s: %v", u.name, r)
	}
	got := map[string]int{}
	for {
		f := c.NextPush()
		if d := f.GetDeliver(); d != nil {
			got[d.GetEnvelope().GetMessageId()]++
			c.Write(&pb.Frame{Body: &pb.Frame_DeliverAck{DeliverAck: &pb.DeliverAck{Tags: []uint64{d.GetTag()}}}})
			continue
		}
		if f.GetQueueEmpty() != nil {
			return got
		}
	}
}

// Item: a full inbox broke other users' sends. With inbox_max_per_device = 50 and one inbox shard,
// four attackers keep sending to one full inbox while honest senders send to other offline devices:
// every honest send is acked, every attacker send past the cap gets INBOX_FULL (permanent: no
// retry hint), and every acked message is delivered when its recipient connects.
func TestHostileFullInboxDoesNotBreakOtherSends(t *testing.T) {
	s := testserver.Start(t, testserver.WithConfig(func(c *server.Config) {
		c.InboxMaxPerDevice, c.InboxShards = 50, 1
		c.InboxMaxPerSender = -1 // the attackers may fill the inbox between them (the setup)
	}))
	victim, _ := registerUser(t, s, "victim", false)
	var recipients []inboxUser
	for i := range 20 {
		u, _ := registerUser(t, s, fmt.Sprintf("rcpt%d", i), false)
		recipients = append(recipients, u)
	}
	attackers := make([]*testserver.RawClient, 4)
	for i := range attackers {
		_, attackers[i] = registerUser(t, s, fmt.Sprintf("attacker%d", i), true)
	}
	honest := make([]*testserver.RawClient, 4)
	for i := range honest {
		_, honest[i] = registerUser(t, s, fmt.Sprintf("honest%d", i), true)
	}
	body := make([]byte, 200)

	// Fill the victim's inbox to its cap.
	for i := range 50 {
		if r := attackers[0].Request(sendFrame(fmt.Sprintf("fill-%d", i), victim, body)); r.GetSendResult() == nil {
			t.Fatalf("fill %d: %v", i, r)
		}
	}

	// Attackers: pipelined sends to the full inbox until the honest senders are done.
	var stop atomic.Bool
	var full, attacks, honestFailed atomic.Int64
	started := make(chan struct{}, len(attackers))
	var wg sync.WaitGroup
	attackErrs, honestErrs := make(chan error, 1), make(chan error, 1) // the first of each
	for a, c := range attackers {
		wg.Add(1)
		go func() {
			defer wg.Done()
			first := true
			pipeline(t, c, 64, func(i int) *pb.Frame {
				if stop.Load() || i >= 20_000 {
					return nil
				}
				return sendFrame(fmt.Sprintf("a%d-%d", a, i), victim, body)
			}, func(i int, f *pb.Frame) {
				attacks.Add(1)
				e := f.GetError()
				if e.GetCode() == pb.ErrorCode_ERROR_CODE_INBOX_FULL && e.GetRetryAfterMs() == 0 {
					full.Add(1)
				} else {
					select {
					case attackErrs <- fmt.Errorf("attacker %d send %d: want INBOX_FULL without retry, got %v", a, i, f):
					default:
					}
				}
				if first {
					first = false
					started <- struct{}{}
				}
			})
		}()
	}
	for range attackers {
		<-started
	}

	// Honest senders: 4 × 50 pipelined sends to the 20 offline recipients.
	acked := make([]map[string]bool, len(recipients)) // per recipient: message ids acked
	for i := range acked {
		acked[i] = map[string]bool{}
	}
	var mu sync.Mutex
	var hwg sync.WaitGroup
	for h, c := range honest {
		hwg.Add(1)
		go func() {
			defer hwg.Done()
			pipeline(t, c, 16, func(i int) *pb.Frame {
				if i >= 50 {
					return nil
				}
				return sendFrame(fmt.Sprintf("h%d-%d", h, i), recipients[(h*50+i)%len(recipients)], body)
			}, func(i int, f *pb.Frame) {
				if f.GetSendResult() == nil {
					honestFailed.Add(1)
					select {
					case honestErrs <- fmt.Errorf("honest sender %d send %d was not acked as stored: %v", h, i, f):
					default:
					}
					return
				}
				mu.Lock()
				acked[(h*50+i)%len(recipients)][fmt.Sprintf("h%d-%d", h, i)] = true
				mu.Unlock()
			})
		}()
	}
	hwg.Wait()
	stop.Store(true)
	wg.Wait()
	close(attackErrs)
	close(honestErrs)
	t.Logf("attacker sends answered: %d (INBOX_FULL: %d); honest sends failed: %d of 200", attacks.Load(), full.Load(), honestFailed.Load())
	for err := range honestErrs {
		t.Errorf("%d of 200 honest sends failed; the first: %v", honestFailed.Load(), err)
	}
	for err := range attackErrs {
		t.Errorf("%d of %d attacker sends not refused with INBOX_FULL; the first: %v", attacks.Load()-full.Load(), attacks.Load(), err)
	}
	if t.Failed() {
		t.FailNow()
	}

	// Nothing lost: every acked message reaches its recipient; the victim gets its 50.
	total := 0
	for i, u := range recipients {
		got := drain(t, s, u)
		for id := range acked[i] {
			if got[id] == 0 {
				t.Errorf("%s: acked message %s not delivered", u.name, id)
			}
		}
		total += len(acked[i])
	}
	if total != 200 {
		t.Errorf("%d honest sends acked, want 200", total)
	}
	if got := drain(t, s, victim); len(got) != 50 {
		t.Errorf("victim got %d messages, want its 50", len(got))
	}
}

// Item: one sender could fill someone's inbox. A sender's share of a device's inbox is capped
// (inbox_max_per_sender); past it its sends get INBOX_FULL, while another sender still gets in.
func TestHostileSenderCannotFillAnInbox(t *testing.T) {
	s := testserver.Start(t, testserver.WithConfig(func(c *server.Config) { c.InboxMaxPerSender = 10 }))
	victim, _ := registerUser(t, s, "victim", false)
	_, attacker := registerUser(t, s, "attacker", true)
	_, friend := registerUser(t, s, "friend", true)
	body := make([]byte, 100)
	stored, refused := 0, 0
	pipeline(t, attacker, 32, func(i int) *pb.Frame {
		if i >= 40 {
			return nil
		}
		return sendFrame(fmt.Sprintf("a%d", i), victim, body)
	}, func(i int, f *pb.Frame) {
		switch {
		case f.GetSendResult() != nil:
			stored++
		case f.GetError().GetCode() == pb.ErrorCode_ERROR_CODE_INBOX_FULL:
			refused++
		default:
			t.Fatalf("attacker send %d: %v", i, f)
		}
	})
	if stored != 10 || refused != 30 {
		t.Fatalf("attacker: %d stored, %d refused; want 10 and 30", stored, refused)
	}
	for i := range 5 {
		if r := friend.Request(sendFrame(fmt.Sprintf("f%d", i), victim, body)); r.GetSendResult() == nil {
			t.Fatalf("friend's send %d: %v", i, r)
		}
	}
	if got := drain(t, s, victim); len(got) != 15 {
		t.Fatalf("victim got %d messages, want 15", len(got))
	}
}

// Item: byte caps. A device's inbox holds at most inbox_max_bytes_per_device; sends past it get
// INBOX_FULL.
func TestHostileInboxByteCap(t *testing.T) {
	const capBytes = 100_000
	s := testserver.Start(t, testserver.WithConfig(func(c *server.Config) {
		c.InboxMaxBytesPerDevice, c.InboxMaxBytesPerSender = capBytes, -1
	}))
	victim, _ := registerUser(t, s, "victim", false)
	_, attacker := registerUser(t, s, "attacker", true)
	body := make([]byte, 10_000)
	stored, refused := 0, 0
	pipeline(t, attacker, 8, func(i int) *pb.Frame {
		if i >= 30 {
			return nil
		}
		return sendFrame(fmt.Sprintf("a%d", i), victim, body)
	}, func(i int, f *pb.Frame) {
		switch {
		case f.GetSendResult() != nil:
			stored++
		case f.GetError().GetCode() == pb.ErrorCode_ERROR_CODE_INBOX_FULL:
			refused++
		default:
			t.Fatalf("send %d: %v", i, f)
		}
	})
	// Each stored envelope is the 10,000-byte ciphertext plus its fields: 9 fit in 100,000 bytes.
	if stored != 9 || refused != 21 {
		t.Fatalf("%d stored, %d refused; want 9 and 21", stored, refused)
	}
}

// Item: any user could make the server scan another device's inbox with QueryQueued. A stranger's
// queries learn nothing and read nothing from the store (no direct get reaches the inbox stream);
// the real sender still gets correct answers; queries are rate-limited per device.
func TestHostileQueryQueuedByStranger(t *testing.T) {
	s := testserver.Start(t, testserver.WithConfig(func(c *server.Config) {
		c.InboxShards = 1
		c.QueryQueuedPerSecond, c.QueryQueuedBurst = 1, 40
	}))
	victim, _ := registerUser(t, s, "victim", false)
	_, sender := registerUser(t, s, "sender", true)
	_, stranger := registerUser(t, s, "stranger", true)
	body := make([]byte, 30_000)
	var ids []string
	pipeline(t, sender, 32, func(i int) *pb.Frame {
		if i >= 200 {
			return nil
		}
		ids = append(ids, fmt.Sprintf("m%d", i))
		return sendFrame(ids[i], victim, body)
	}, func(i int, f *pb.Frame) {
		if f.GetSendResult() == nil {
			t.Fatalf("send %d: %v", i, f)
		}
	})

	// Count the reads of the inbox stream from here on.
	nc := s.Server().Bus().Conn()
	var reads atomic.Int64
	sub, err := nc.Subscribe(bus.DirectGetSubject(bus.InboxStreamName(0)), func(*nats.Msg) { reads.Add(1) })
	if err != nil {
		t.Fatal(err)
	}
	defer sub.Unsubscribe()
	if err := nc.Flush(); err != nil {
		t.Fatal(err)
	}
	query := func(c *testserver.RawClient, ids []string) *pb.Frame {
		return c.Request(&pb.Frame{Body: &pb.Frame_QueryQueued{QueryQueued: &pb.QueryQueued{To: victim.name, DeviceId: victim.dev, MessageIds: ids}}})
	}
	start := time.Now()
	for i := range 20 {
		r := query(stranger, ids[:pb.MaxQueryQueued-56])
		if r.GetQueuedResult() == nil || len(r.GetQueuedResult().GetQueued()) != 0 {
			t.Fatalf("stranger's query %d: %v; want an empty answer", i, r)
		}
	}
	perQuery := time.Since(start) / 20
	if err := nc.Flush(); err != nil {
		t.Fatal(err)
	}
	if n := reads.Load(); n != 0 {
		t.Fatalf("20 stranger queries read the inbox: %d direct gets", n)
	}
	t.Logf("stranger query: %v each (wall, loopback round trip included)", perQuery)

	// The real sender: its queued messages are reported, unknown ids are not.
	r := query(sender, []string{"m0", "m77", "m199", "never-sent"})
	got := map[string]bool{}
	for _, id := range r.GetQueuedResult().GetQueued() {
		got[id] = true
	}
	if len(got) != 3 || !got["m0"] || !got["m77"] || !got["m199"] {
		t.Fatalf("sender's query: %v; want m0, m77, m199", r)
	}

	// Rate limit: the stranger's burst (40) is spent after 20 more; then RATE_LIMITED.
	limited := false
	for i := 0; i < 60 && !limited; i++ {
		r := query(stranger, []string{"m1"})
		limited = r.GetError().GetCode() == pb.ErrorCode_ERROR_CODE_RATE_LIMITED
	}
	if !limited {
		t.Fatal("80 queries within a burst of 40 at 1/s were never rate-limited")
	}
}
