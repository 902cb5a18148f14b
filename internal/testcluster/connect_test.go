// Copyright 2026 The Petrel Authors
// SPDX-License-Identifier: Apache-2.0

package testcluster_test

import (
	"context"
	"fmt"
	"strconv"
	"strings"
	"sync"
	"sync/atomic"
	"testing"
	"time"

	"github.com/coder/websocket"
	"google.golang.org/protobuf/proto"

	"github.com/petrelchat/petrel/internal/testcluster"
	"github.com/petrelchat/petrel/internal/testserver"
	pb "github.com/petrelchat/petrel/proto/petrel/v1"
)

// TestSendsWhileConnectingAcrossNodes: devices connect to n1 while senders on n2 and n3 keep
// sending to them. Each send is stored (device offline, or its subscription not yet known on the
// sender's node), delivered live, or stored while the device drains; whichever, every acked
// message reaches its device exactly once and in per-sender order, without a reconnect. This is
// where a drain that reads a lagging replica after a wake-up (the envelope is acked but not yet
// applied there), or a wake-up published before the device's subscription reached the sender's
// node, would leave an envelope unread.
func TestSendsWhileConnectingAcrossNodes(t *testing.T) {
	logs := &testserver.Buffer{}
	c := testcluster.Start(t, nodes, testcluster.Options{Log: logs})
	n1 := c.Node(0)
	const recipients, perSender = 4, 60

	// The recipients register on n1 and go offline.
	type recipient struct {
		name, dev string
		key       []byte
	}
	var rs []recipient
	for i := range recipients {
		name := fmt.Sprintf("rcpt%d", i)
		r := testserver.Dial(t, n1.URL())
		r.MustRegister(name)
		if f := r.NextPush(); f.GetQueueEmpty() == nil {
			t.Fatalf("%s: want QueueEmpty first, got %v", name, f)
		}
		rs = append(rs, recipient{name: name, dev: r.DeviceID, key: r.AuthKey})
		r.WS.Close(websocket.StatusNormalClosure, "")
	}

	// Two senders on n2 and two on n3 send to every recipient in turn, one send at a time.
	type sender struct {
		name string
		c    *testserver.RawClient
	}
	var ss []sender
	for i := range 4 {
		nd := c.Node(1 + i%2)
		name := fmt.Sprintf("snd%d", i)
		s := testserver.Dial(t, nd.URL())
		s.MustRegister(name)
		ss = append(ss, sender{name: name, c: s})
	}
	var ackMu sync.Mutex
	acked := map[string][]string{} // recipient device → message ids acked, in send order per sender
	started := make(chan struct{}, len(ss))
	errc := make(chan error, len(ss))
	var sendWG sync.WaitGroup
	for _, s := range ss {
		sendWG.Go(func() {
			for i := range perSender {
				for _, r := range rs {
					id := fmt.Sprintf("%s_%04d_%s", s.name, i, r.name)
					res, err := rawSend(s.c, id, r.name, r.dev)
					if err != nil {
						errc <- fmt.Errorf("%s: %w", id, err)
						return
					}
					if res.GetSendResult() == nil {
						errc <- fmt.Errorf("%s: not acked: %v", id, res)
						return
					}
					ackMu.Lock()
					acked[r.dev] = append(acked[r.dev], id)
					ackMu.Unlock()
				}
				if i == 3 {
					started <- struct{}{}
				}
			}
			errc <- nil
		})
	}
	for range ss {
		select {
		case <-started:
		case err := <-errc:
			t.Fatalf("sender: %v", err)
		}
	}

	// The recipients connect to n1, one after another, while the sends go on; each acks what
	// it gets at once and records it.
	type inbox struct {
		mu  sync.Mutex
		got []string
	}
	boxes := make([]*inbox, len(rs))
	stop := make(chan struct{})
	var recvWG sync.WaitGroup
	recvErr := make(chan error, len(rs))
	var conns []*testserver.RawClient
	for i, r := range rs {
		cl := testserver.Dial(t, n1.URL())
		conns = append(conns, cl)
		if f := cl.Auth(r.key); f.GetError() != nil {
			t.Fatalf("%s: auth: %v", r.name, f)
		}
		box := &inbox{}
		boxes[i] = box
		recvWG.Go(func() {
			for {
				// A read whose context ends closes the connection (coder/websocket): read
				// without a short deadline; the test closes the connection when it is done.
				f, err := cl.ReadErr(time.Minute)
				if err != nil {
					select {
					case <-stop:
					default:
						recvErr <- fmt.Errorf("%s: read: %w (disconnected)", r.name, err)
					}
					return
				}
				if f.GetGoAway() != nil {
					recvErr <- fmt.Errorf("%s: told to reconnect: %v", r.name, f)
					return
				}
				d := f.GetDeliver()
				if d == nil {
					continue
				}
				box.mu.Lock()
				box.got = append(box.got, d.GetEnvelope().GetMessageId())
				box.mu.Unlock()
				b, _ := proto.Marshal(&pb.Frame{Body: &pb.Frame_DeliverAck{DeliverAck: &pb.DeliverAck{Tags: []uint64{d.GetTag()}}}})
				ctx, cancel := context.WithTimeout(context.Background(), 5*time.Second)
				err = cl.WS.Write(ctx, websocket.MessageBinary, b)
				cancel()
				if err != nil {
					recvErr <- fmt.Errorf("%s: ack: %w", r.name, err)
					return
				}
			}
		})
	}
	t.Cleanup(func() {
		close(stop)
		for _, cl := range conns {
			cl.WS.CloseNow()
		}
		recvWG.Wait()
	})
	sendWG.Wait()
	for range ss {
		if err := <-errc; err != nil {
			t.Fatalf("sender: %v", err)
		}
	}

	// Every acked message arrives; the wait ends early only when a receiver fails.
	deadline := time.Now().Add(30 * time.Second)
	for i, r := range rs {
		want := acked[r.dev]
		testcluster.WaitFor(t, time.Until(deadline), func() error {
			select {
			case err := <-recvErr:
				t.Fatal(err)
			default:
			}
			boxes[i].mu.Lock()
			got := append([]string(nil), boxes[i].got...)
			boxes[i].mu.Unlock()
			if missing := missingFrom(got, want); len(missing) > 0 {
				return fmt.Errorf("%s: %d of %d acked messages not delivered, e.g. %s", r.name, len(missing), len(want), missing[0])
			}
			return nil
		})
	}
	// Exactly once, in per-sender order.
	for i, r := range rs {
		boxes[i].mu.Lock()
		got := append([]string(nil), boxes[i].got...)
		boxes[i].mu.Unlock()
		seen := map[string]bool{}
		last := map[string]int{}
		for _, id := range got {
			if seen[id] {
				t.Errorf("%s: %s delivered twice", r.name, id)
			}
			seen[id] = true
			parts := strings.Split(id, "_")
			n, _ := strconv.Atoi(parts[1])
			if prev, ok := last[parts[0]]; ok && n <= prev {
				t.Errorf("%s: %s delivered after %s_%04d (per-sender order)", r.name, id, parts[0], prev)
			}
			last[parts[0]] = n
		}
		if len(acked[r.dev]) != perSender*len(ss) {
			t.Errorf("%s: %d of %d sends acked", r.name, len(acked[r.dev]), perSender*len(ss))
		}
	}
	// Each connecting device's first drain confirmed its subscription on every node (rather
	// than giving up after the timeout): the window in which a wake-up could be lost is closed.
	if strings.Contains(logs.String(), "subscription not confirmed") {
		t.Error("a drain could not confirm its subscription on every node")
	}
}

// rawSend sends one envelope to dev (of account to) and waits for the response with its id,
// skipping pushes. It reports errors instead of failing the test (it runs off the test goroutine).
func rawSend(c *testserver.RawClient, msgID, to, dev string) (*pb.Frame, error) {
	id := nextSendID.Add(1)
	f := &pb.Frame{Id: id, Body: &pb.Frame_Send{Send: &pb.Send{MessageId: msgID, To: to, Envelopes: []*pb.DeviceCiphertext{
		{DeviceId: dev, Type: pb.EnvelopeType_ENVELOPE_TYPE_MESSAGE, Ciphertext: []byte(msgID)},
	}}}}
	b, err := proto.Marshal(f)
	if err != nil {
		return nil, err
	}
	ctx, cancel := context.WithTimeout(context.Background(), 10*time.Second)
	defer cancel()
	if err := c.WS.Write(ctx, websocket.MessageBinary, b); err != nil {
		return nil, err
	}
	for {
		r, err := c.ReadErr(20 * time.Second)
		if err != nil {
			return nil, err
		}
		if r.GetId() == id {
			return r, nil
		}
	}
}

// missingFrom returns the ids of want that are not in got.
func missingFrom(got, want []string) []string {
	have := make(map[string]bool, len(got))
	for _, id := range got {
		have[id] = true
	}
	var missing []string
	for _, id := range want {
		if !have[id] {
			missing = append(missing, id)
		}
	}
	return missing
}

// nextSendID numbers the requests rawSend writes (unique on each connection).
var nextSendID atomic.Uint64
