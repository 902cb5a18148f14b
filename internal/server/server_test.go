// Copyright 2026 The Petrel Authors
// SPDX-License-Identifier: Apache-2.0

package server_test

import (
	"bytes"
	"crypto/ed25519"
	"fmt"
	"io"
	"net/http"
	"strings"
	"sync"
	"testing"
	"time"

	"google.golang.org/protobuf/proto"

	"github.com/petrelchat/petrel/internal/server"
	"github.com/petrelchat/petrel/internal/testserver"
	pb "github.com/petrelchat/petrel/proto/petrel/v1"
)

func code(f *pb.Frame) pb.ErrorCode { return f.GetError().GetCode() }

func mustDeliver(t *testing.T, c *testserver.RawClient) *pb.Deliver {
	t.Helper()
	for {
		f := c.NextPush()
		if d := f.GetDeliver(); d != nil {
			return d
		}
		if f.GetQueueEmpty() == nil {
			t.Fatalf("expected a Deliver, got %v", f)
		}
	}
}

func TestHealthz(t *testing.T) {
	s := testserver.Start(t)
	for _, url := range []string{s.URL() + "/healthz", s.URL() + "/readyz", s.AdminURL() + "/metrics"} {
		resp, err := http.Get(url)
		if err != nil {
			t.Fatal(err)
		}
		resp.Body.Close()
		if resp.StatusCode != 200 {
			t.Errorf("%s: status %d", url, resp.StatusCode)
		}
	}
}

// The bus's and the mailbox's drop counters are on /metrics from the start, at 0.
func TestBusDropMetricsExposed(t *testing.T) {
	s := testserver.Start(t)
	resp, err := http.Get(s.AdminURL() + "/metrics")
	if err != nil {
		t.Fatal(err)
	}
	body, err := io.ReadAll(resp.Body)
	resp.Body.Close()
	if err != nil {
		t.Fatal(err)
	}
	for _, want := range []string{
		`petrel_bus_slow_consumer_total{subject_kind="device"} 0`,
		`petrel_bus_slow_consumer_total{subject_kind="reply"} 0`,
		`petrel_bus_async_errors_total 0`,
		`petrel_mailbox_bus_dropped_total 0`,
		`petrel_mailbox_resync_wakes_total 0`,
	} {
		if !strings.Contains(string(body), want) {
			t.Errorf("/metrics lacks %s", want)
		}
	}
}

func TestLiveSendAckedByDevice(t *testing.T) {
	s := testserver.Start(t)
	alice, bob := onlinePair(t, s)
	// Alice's send completes only once Bob acks, so read Bob's delivery concurrently.
	got := make(chan *pb.Deliver, 1)
	go func() {
		d := bob.NextPush().GetDeliver()
		bob.Write(&pb.Frame{Body: &pb.Frame_DeliverAck{DeliverAck: &pb.DeliverAck{Tags: []uint64{d.GetTag()}}}})
		got <- d
	}()
	r := alice.Send("m1", "bob", []string{bob.DeviceID}, []byte("ciphertext-1"))
	if r.GetSendResult().GetMessageId() != "m1" {
		t.Fatalf("want SendResult, got %v", r)
	}
	d := <-got
	if d.GetEnvelope().GetMessageId() != "m1" || string(d.GetEnvelope().GetCiphertext()) != "ciphertext-1" {
		t.Fatalf("bob got %v", d)
	}
	// Both devices are on this node: the node-local fast path, not a cross-node delivery.
	if v := gauge(t, s.AdminURL(), "petrel_mailbox_delivered_live_total"); v != 1 {
		t.Fatalf("petrel_mailbox_delivered_live_total = %v, want 1", v)
	}
	if v := gauge(t, s.AdminURL(), "petrel_mailbox_cross_node_deliveries_total"); v != 0 {
		t.Fatalf("petrel_mailbox_cross_node_deliveries_total = %v, want 0", v)
	}
}

func TestOfflineStoreThenDrain(t *testing.T) {
	s := testserver.Start(t)
	alice, bobKey, bobDev := offlinePair(t, s)

	for i := range 5 {
		r := alice.Send(fmt.Sprintf("m%d", i), "bob", []string{bobDev}, []byte{byte(i)})
		if r.GetSendResult() == nil {
			t.Fatalf("send %d: want SendResult, got %v", i, r)
		}
	}
	bob := testserver.Dial(t, s.URL())
	if w := bob.Auth(bobKey); w.GetWelcome() == nil {
		t.Fatalf("auth: %v", w)
	}
	var tags []uint64
	for i := range 5 {
		d := mustDeliver(t, bob)
		if got := d.GetEnvelope().GetMessageId(); got != fmt.Sprintf("m%d", i) {
			t.Fatalf("delivery %d: got %s (order broken)", i, got)
		}
		if d.GetEnvelope().GetFrom() != "alice" || !bytes.Equal(d.GetEnvelope().GetCiphertext(), []byte{byte(i)}) {
			t.Fatalf("delivery %d: %v", i, d)
		}
		tags = append(tags, d.GetTag())
	}
	if f := bob.NextPush(); f.GetQueueEmpty().GetDelivered() != 5 {
		t.Fatalf("want QueueEmpty{5}, got %v", f)
	}
	bob.Write(&pb.Frame{Body: &pb.Frame_DeliverAck{DeliverAck: &pb.DeliverAck{Tags: tags}}})
	// A ping round trip orders the ack before the reconnect below.
	if p := bob.Request(&pb.Frame{Body: &pb.Frame_Ping{Ping: &pb.Ping{}}}); p.GetPong() == nil {
		t.Fatal(p)
	}
	bob.WS.CloseNow()
	bob = testserver.Dial(t, s.URL())
	bob.Auth(bobKey)
	if f := bob.NextPush(); f.GetQueueEmpty() == nil || f.GetQueueEmpty().GetDelivered() != 0 {
		t.Fatalf("after acks the inbox must be empty, got %v", f)
	}
}

func TestBadInputKeepsConnection(t *testing.T) {
	s := testserver.Start(t)
	c := testserver.Dial(t, s.URL())

	// Before auth.
	if r := c.Request(&pb.Frame{Body: &pb.Frame_Ping{Ping: &pb.Ping{}}}); code(r) != pb.ErrorCode_ERROR_CODE_NOT_AUTHENTICATED {
		t.Fatalf("request before auth: %v", r)
	}
	c.MustRegister("carol")
	other := testserver.Dial(t, s.URL())
	other.MustRegister("dave")

	tests := []struct {
		name string
		raw  []byte
		want pb.ErrorCode
	}{
		{"garbage", []byte{0xff, 0xff, 0xff, 0xff}, pb.ErrorCode_ERROR_CODE_MALFORMED_FRAME},
		{"truncated", []byte{0x0a}, pb.ErrorCode_ERROR_CODE_MALFORMED_FRAME},
		{"oversized", make([]byte, pb.DefaultMaxFrameBytes+1), pb.ErrorCode_ERROR_CODE_FRAME_TOO_LARGE},
		{"server frame from client", mustMarshal(&pb.Frame{Id: 9, Body: &pb.Frame_Welcome{Welcome: &pb.Welcome{}}}), pb.ErrorCode_ERROR_CODE_UNKNOWN_FRAME},
		{"empty frame", mustMarshal(&pb.Frame{Id: 10}), pb.ErrorCode_ERROR_CODE_UNKNOWN_FRAME},
	}
	for _, tc := range tests {
		t.Run(tc.name, func(t *testing.T) {
			c.WriteRaw(tc.raw)
			f := c.Read()
			for f.GetError() == nil {
				f = c.Read()
			}
			if code(f) != tc.want {
				t.Fatalf("got %v, want %v", f.GetError(), tc.want)
			}
			if p := c.Request(&pb.Frame{Body: &pb.Frame_Ping{Ping: &pb.Ping{ClientTimeMs: 7}}}); p.GetPong().GetClientTimeMs() != 7 {
				t.Fatalf("connection broken after %s: %v", tc.name, p)
			}
		})
	}
	t.Run("unknown user", func(t *testing.T) {
		if r := c.Send("x1", "nobody", []string{other.DeviceID}, []byte("x")); code(r) != pb.ErrorCode_ERROR_CODE_UNKNOWN_USER {
			t.Fatal(r)
		}
	})
	t.Run("device not owned", func(t *testing.T) {
		r := c.Send("x2", "dave", []string{c.DeviceID}, []byte("x"))
		if code(r) != pb.ErrorCode_ERROR_CODE_UNKNOWN_DEVICE || len(r.GetError().GetDevices()) != 0 {
			t.Fatal(r)
		}
	})
	t.Run("stale device list", func(t *testing.T) {
		r := c.Send("x3", "dave", nil, []byte("x"))
		if code(r) != pb.ErrorCode_ERROR_CODE_STALE_DEVICES || len(r.GetError().GetDevices()) != 0 {
			t.Fatal(r)
		}
	})
	t.Run("bad message id", func(t *testing.T) {
		if r := c.Send("has space", "dave", []string{other.DeviceID}, []byte("x")); code(r) != pb.ErrorCode_ERROR_CODE_INVALID_REQUEST {
			t.Fatal(r)
		}
	})
	t.Run("duplicate message id is idempotent", func(t *testing.T) {
		other.WS.CloseNow()
		a := c.Send("dup1", "dave", []string{other.DeviceID}, []byte("x"))
		b := c.Send("dup1", "dave", []string{other.DeviceID}, []byte("x"))
		if a.GetSendResult() == nil || !proto.Equal(a.GetSendResult(), b.GetSendResult()) {
			t.Fatalf("first %v, second %v", a, b)
		}
	})
}

func mustMarshal(f *pb.Frame) []byte {
	b, err := proto.Marshal(f)
	if err != nil {
		panic(err)
	}
	return b
}

func TestAuthFailures(t *testing.T) {
	s := testserver.Start(t)
	c := testserver.Dial(t, s.URL())
	c.MustRegister("erin")
	key := c.AuthKey

	t.Run("unknown device", func(t *testing.T) {
		e := testserver.Dial(t, s.URL())
		r := e.Request(&pb.Frame{Body: &pb.Frame_Auth{Auth: &pb.Auth{DeviceId: "00000000000000000000000000000000", Signature: make([]byte, 64)}}})
		if code(r) != pb.ErrorCode_ERROR_CODE_AUTH_FAILED {
			t.Fatal(r)
		}
	})
	t.Run("replayed signature", func(t *testing.T) {
		d := testserver.Dial(t, s.URL())
		// Sign the previous connection's nonce: a replay.
		r := d.Request(&pb.Frame{Body: &pb.Frame_Auth{Auth: &pb.Auth{DeviceId: c.DeviceID, Signature: signFor(key, c.Nonce, c.DeviceID)}}})
		if code(r) != pb.ErrorCode_ERROR_CODE_AUTH_FAILED {
			t.Fatal(r)
		}
		// The connection still works for a correct attempt.
		if w := d.Auth(key); w.GetWelcome() == nil {
			t.Fatal(w)
		}
	})
	t.Run("name taken", func(t *testing.T) {
		d := testserver.Dial(t, s.URL())
		if r, _ := d.Register("erin", 1); code(r) != pb.ErrorCode_ERROR_CODE_NAME_TAKEN {
			t.Fatal(r)
		}
	})
	t.Run("invalid name", func(t *testing.T) {
		d := testserver.Dial(t, s.URL())
		if r, _ := d.Register("Not Valid", 1); code(r) != pb.ErrorCode_ERROR_CODE_INVALID_NAME {
			t.Fatal(r)
		}
	})
}

func TestConcurrentPrekeyClaims(t *testing.T) {
	// 50 claims of one device at once: above the default per-target claim limit, which would
	// answer the rest without one-time prekeys.
	s := testserver.Start(t, testserver.WithConfig(func(c *server.Config) { c.PrekeyClaimTargetBurst = 100 }))
	owner := testserver.Dial(t, s.URL())
	if r, _ := owner.Register("frank", 100); r.GetWelcome().GetOneTimePrekeysLeft() != 100 {
		t.Fatalf("want 100 one-time prekeys, got %v", r)
	}
	const claimers = 50
	ids := make(chan uint32, claimers)
	var wg sync.WaitGroup
	for i := range claimers {
		wg.Add(1)
		c := testserver.Dial(t, s.URL())
		c.MustRegister(fmt.Sprintf("claimer%d", i))
		go func() {
			defer wg.Done()
			r := c.Request(&pb.Frame{Body: &pb.Frame_GetBundle{GetBundle: &pb.GetBundle{Name: "frank"}}})
			devs := r.GetBundleResult().GetDevices()
			if len(devs) != 1 || devs[0].GetOneTimePrekey() == nil {
				t.Errorf("bundle without a one-time prekey: %v", r)
				return
			}
			ids <- devs[0].GetOneTimePrekey().GetId()
		}()
	}
	wg.Wait()
	close(ids)
	seen := map[uint32]bool{}
	for id := range ids {
		if seen[id] {
			t.Fatalf("one-time prekey %d handed out twice", id)
		}
		seen[id] = true
	}
	if len(seen) != claimers {
		t.Fatalf("got %d distinct prekeys, want %d", len(seen), claimers)
	}
	st := owner.Request(&pb.Frame{Body: &pb.Frame_UploadPrekeys{UploadPrekeys: &pb.UploadPreKeys{Keys: &pb.KeyBundleUpload{}}}})
	if st.GetPrekeyStatus().GetOneTimePrekeysLeft() != 100-claimers {
		t.Fatalf("want %d left, got %v", 100-claimers, st)
	}
}

func TestBundleWithoutOneTimePrekeys(t *testing.T) {
	s := testserver.Start(t)
	owner := testserver.Dial(t, s.URL())
	owner.Register("gina", 1)
	c := testserver.Dial(t, s.URL())
	c.MustRegister("hank")
	c2 := testserver.Dial(t, s.URL()) // another requester: hank asking again would get his key again
	c2.MustRegister("hank2")
	first := c.Request(&pb.Frame{Body: &pb.Frame_GetBundle{GetBundle: &pb.GetBundle{Name: "gina"}}})
	second := c2.Request(&pb.Frame{Body: &pb.Frame_GetBundle{GetBundle: &pb.GetBundle{Name: "gina"}}})
	if first.GetBundleResult().GetDevices()[0].GetOneTimePrekey() == nil {
		t.Fatalf("first bundle should carry the one prekey: %v", first)
	}
	d := second.GetBundleResult().GetDevices()[0]
	if d.GetOneTimePrekey() != nil || !d.GetKemPrekey().GetLastResort() || d.GetSignedPrekey() == nil {
		t.Fatalf("second bundle: want no one-time prekey and the last-resort KEM prekey, got %v", d)
	}
}

func TestConnectedElsewhere(t *testing.T) {
	s := testserver.Start(t)
	a := testserver.Dial(t, s.URL())
	a.MustRegister("ivan")
	b := testserver.Dial(t, s.URL())
	if w := b.Auth(a.AuthKey); w.GetWelcome() == nil {
		t.Fatal(w)
	}
	for {
		f := a.Read()
		if code(f) == pb.ErrorCode_ERROR_CODE_CONNECTED_ELSEWHERE {
			break
		}
	}
	if _, err := a.ReadErr(5e9); err == nil {
		t.Fatal("first connection should be closed")
	}
	if v := gauge(t, s.AdminURL(), "petrel_mailbox_takeovers_total"); v != 1 {
		t.Fatalf("petrel_mailbox_takeovers_total = %v, want 1", v)
	}
}

func signFor(key ed25519.PrivateKey, nonce []byte, dev string) []byte {
	return ed25519.Sign(key, pb.AuthPayload(nonce, dev))
}

// offlinePair registers alice (connected) and bob, then takes bob offline. It returns alice's
// connection and bob's auth key and device id.
// onlinePair registers alice and bob; both stay connected, and bob's (empty) stored queue has
// been reported, so everything he gets from here on is live.
func onlinePair(t *testing.T, s *testserver.Server) (alice, bob *testserver.RawClient) {
	t.Helper()
	alice = testserver.Dial(t, s.URL())
	alice.MustRegister("alice")
	bob = testserver.Dial(t, s.URL())
	bob.MustRegister("bob")
	if f := bob.NextPush(); f.GetQueueEmpty() == nil {
		t.Fatalf("bob: want QueueEmpty first, got %v", f)
	}
	return alice, bob
}

func offlinePair(t *testing.T, s *testserver.Server) (*testserver.RawClient, ed25519.PrivateKey, string) {
	t.Helper()
	alice := testserver.Dial(t, s.URL())
	alice.MustRegister("alice")
	bob := testserver.Dial(t, s.URL())
	bob.MustRegister("bob")
	bob.WS.CloseNow()
	waitConns(t, s, 1)
	return alice, bob.AuthKey, bob.DeviceID
}

// waitConns waits until the server holds n connections (closed ones are detached by then).
func waitConns(t *testing.T, s *testserver.Server, n int) {
	t.Helper()
	deadline := time.Now().Add(10 * time.Second)
	for s.Server().Conns() != n {
		if time.Now().After(deadline) {
			t.Fatalf("server holds %d connections, want %d", s.Server().Conns(), n)
		}
		time.Sleep(5 * time.Millisecond) // polling a count the server does not announce
	}
}

// pipelineSends writes n sends to dev without waiting, ids fmt.Sprintf(idFormat, i); after each
// write, between(i) runs (may be nil). Then it waits for all n acks, failing on any error.
func pipelineSends(t *testing.T, c *testserver.RawClient, to, dev, idFormat string, n int, between func(i int)) {
	t.Helper()
	for i := range n {
		c.Write(&pb.Frame{Id: uint64(1000 + i), Body: &pb.Frame_Send{Send: &pb.Send{
			MessageId: fmt.Sprintf(idFormat, i), To: to,
			Envelopes: []*pb.DeviceCiphertext{{DeviceId: dev, Type: pb.EnvelopeType_ENVELOPE_TYPE_MESSAGE, Ciphertext: []byte{1}}},
		}}})
		if between != nil {
			between(i)
		}
	}
	for acked := 0; acked < n; {
		f := c.Read()
		if f.GetSendResult() != nil {
			acked++
		} else if f.GetError() != nil {
			t.Fatalf("send failed: %v", f)
		}
	}
}
