// Copyright 2026 The Petrel Authors
// SPDX-License-Identifier: Apache-2.0

package testcluster_test

import (
	"context"
	"crypto/ed25519"
	"fmt"
	"testing"
	"time"

	"github.com/coder/websocket"
	"google.golang.org/protobuf/proto"

	"github.com/petrelchat/petrel/internal/testcluster"
	"github.com/petrelchat/petrel/internal/testserver"
	pb "github.com/petrelchat/petrel/proto/petrel/v1"
)

// racer is one connection of a racing pair, read by its own goroutine.
type racer struct {
	c       *testserver.RawClient
	welcome chan *pb.Frame // the answer to Auth
	kicked  chan struct{}  // closed on CONNECTED_ELSEWHERE
	pong    chan struct{}  // a Pong arrived
	done    chan struct{}  // the reader ended (the connection is closed)
}

// race authenticates with key once start is closed, then reads every frame until the
// connection ends, sorting what the test waits for into channels. No t.Fatal here: it runs on
// its own goroutine; the test fails on what the channels (do not) report.
func race(c *testserver.RawClient, key ed25519.PrivateKey, start chan struct{}) *racer {
	r := &racer{c: c, welcome: make(chan *pb.Frame, 1), kicked: make(chan struct{}), pong: make(chan struct{}, 1), done: make(chan struct{})}
	dev := pb.DeviceID(key.Public().(ed25519.PublicKey))
	auth, _ := proto.Marshal(&pb.Frame{Id: 1, Body: &pb.Frame_Auth{Auth: &pb.Auth{
		DeviceId: dev, Signature: ed25519.Sign(key, pb.AuthPayload(c.Nonce, dev)),
	}}})
	go func() {
		defer close(r.done)
		<-start
		ctx, cancel := context.WithTimeout(context.Background(), 10*time.Second)
		err := c.WS.Write(ctx, websocket.MessageBinary, auth)
		cancel()
		if err != nil {
			return
		}
		for {
			f, err := c.ReadErr(30 * time.Second)
			if err != nil {
				return
			}
			switch {
			case f.GetId() == 1:
				r.welcome <- f
			case f.GetPong() != nil:
				r.pong <- struct{}{}
			case f.GetError().GetCode() == pb.ErrorCode_ERROR_CODE_CONNECTED_ELSEWHERE:
				close(r.kicked)
			}
		}
	}()
	return r
}

// TestRacingConnectionsOneStays: two connections of one device authenticate at the same moment
// on two different nodes, many times over. Each time exactly one stays: the other is told
// CONNECTED_ELSEWHERE, and the one that stays keeps working.
func TestRacingConnectionsOneStays(t *testing.T) {
	const rounds = 20
	c := testcluster.Start(t, nodes, testcluster.Options{})
	reg := testserver.Dial(t, c.Node(0).URL())
	reg.MustRegister("racer")
	key := reg.AuthKey
	if f := reg.NextPush(); f.GetQueueEmpty() == nil {
		t.Fatalf("want QueueEmpty first, got %v", f)
	}
	reg.WS.CloseNow()
	var prev *racer
	for i := range rounds {
		a, b := c.Node(i%nodes), c.Node((i+1)%nodes)
		start := make(chan struct{})
		r := []*racer{race(testserver.Dial(t, a.URL()), key, start), race(testserver.Dial(t, b.URL()), key, start)}
		close(start)
		for j, x := range r {
			select {
			case w := <-x.welcome:
				if w.GetWelcome() == nil {
					t.Fatalf("round %d: auth on %s: %v", i, []string{a.Name(), b.Name()}[j], w)
				}
			case <-time.After(failoverWait):
				t.Fatalf("round %d: no answer to auth on %s", i, []string{a.Name(), b.Name()}[j])
			}
		}
		var gone, stays *racer
		select {
		case <-r[0].kicked:
			gone, stays = r[0], r[1]
		case <-r[1].kicked:
			gone, stays = r[1], r[0]
		case <-time.After(failoverWait):
			t.Fatalf("round %d: both connections (on %s and %s) stay", i, a.Name(), b.Name())
		}
		select {
		case <-gone.done: // the server closed it
		case <-time.After(failoverWait):
			t.Fatalf("round %d: the connection taken over is not closed", i)
		}
		stays.c.Write(&pb.Frame{Id: 2, Body: &pb.Frame_Ping{Ping: &pb.Ping{}}})
		select {
		case <-stays.pong:
		case <-stays.kicked:
			t.Fatalf("round %d: both connections were taken over", i)
		case <-time.After(failoverWait):
			t.Fatalf("round %d: the connection that stays does not answer", i)
		}
		if prev != nil {
			// The last round's survivor was taken over by this round's connections.
			select {
			case <-prev.kicked:
			case <-time.After(failoverWait):
				t.Fatalf("round %d: the connection of round %d stays", i, i-1)
			}
		}
		prev = stays
	}
	var total float64
	for _, nd := range c.Nodes() {
		total += metric(t, nd.AdminURL(), "petrel_mailbox_takeovers_total")
	}
	if total != 2*rounds-1 {
		t.Fatalf("takeovers counted %v, want %d (one per round, and each round's survivor once)", total, 2*rounds-1)
	}
}

// TestLateAttachDoesNotTakeOverAcrossNodes: of two connections of a device on two nodes, the one
// that authenticated later stays, even when the earlier one's attach comes after it (its handler
// held up between the Welcome and the attach): the claim is taken when a connection
// authenticates, not when it attaches. Fails with claims taken at the attach (A would win).
func TestLateAttachDoesNotTakeOverAcrossNodes(t *testing.T) {
	c := testcluster.Start(t, nodes, testcluster.Options{})
	n1, n2 := c.Node(0), c.Node(1)
	reg := testserver.Dial(t, n1.URL())
	reg.MustRegister("ursa")
	key := reg.AuthKey
	reg.WS.CloseNow()

	// A authenticates on n1 and its handler is held before the attach; B authenticates on n2
	// and is attached; then A attaches.
	a, b := testserver.LateAttach(t, key, n1.URL(), n2.URL())

	// A, the earlier connection, is the one taken over.
	a.WantTakenOver("A")
	// B is still served and was never told it: it heard A's lower claim and answered with its
	// own, which took A over; A, detached, announces nothing more.
	testcluster.WaitFor(t, 10*time.Second, func() error {
		if v := metric(t, n1.AdminURL(), "petrel_mailbox_takeovers_total"); v != 1 {
			return fmt.Errorf("n1 counted %v takeovers, want 1", v)
		}
		return nil
	})
	b.WantStillServed("B, by the late attach of an earlier connection,")
	if v := metric(t, n2.AdminURL(), "petrel_mailbox_takeovers_total"); v != 0 {
		t.Fatalf("n2 counted %v takeovers, want 0", v)
	}
}
