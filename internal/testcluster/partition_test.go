// Copyright 2026 The Petrel Authors
// SPDX-License-Identifier: Apache-2.0

package testcluster_test

import (
	"bytes"
	"fmt"
	"io"
	"net/http"
	"strings"
	"sync"
	"testing"
	"time"

	"github.com/petrelchat/petrel/internal/testcluster"
	"github.com/petrelchat/petrel/internal/testserver"
	pb "github.com/petrelchat/petrel/proto/petrel/v1"
)

// partitionBound bounds how long a partitioned node takes to notice (quorum watch: 2 failed
// checks a second apart, each up to 2 s; a cut-off meta leader is caught by its peers' silence
// after 3 s) and to move its clients (5 s later), with room for -race on two shared cores.
const partitionBound = 30 * time.Second

// cutOffMoveBound bounds the time from a partition to the GoAway of the cut-off node's clients:
// a quorum check (once a second), a second one 250 ms later, then the move.
const cutOffMoveBound = 3 * time.Second

// TestPartitionedNodeStopsAckingAndRecovers: n1 cut off from n2 and n3 turns not ready, refuses
// a send to an offline device with a retryable UNAVAILABLE (no ack), sends its client a GoAway
// and refuses new connections, while n2 keeps acking; once healed, n1 is ready and acks again.
func TestPartitionedNodeStopsAckingAndRecovers(t *testing.T) {
	logs := &syncBuffer{}
	c := testcluster.Start(t, nodes, testcluster.Options{Proxies: true, Log: logs})
	n1, n2 := c.Node(0), c.Node(1)

	bob := testserver.Dial(t, n2.URL())
	bob.MustRegister("bob")
	bobDev := bob.DeviceID
	bob.WS.CloseNow()
	testcluster.WaitFor(t, 10*time.Second, func() error {
		if attached, _ := n2.Server().Mailbox().Attached(bobDev); attached {
			return fmt.Errorf("bob still attached on n2")
		}
		return nil
	})
	alice := testserver.Dial(t, n1.URL())
	alice.MustRegister("alice")
	carol := testserver.Dial(t, n2.URL())
	carol.MustRegister("carol")
	if r := alice.Send("m0", "bob", []string{bobDev}, []byte("before")); r.GetSendResult() == nil {
		t.Fatalf("send through n1 before the partition: %v", r)
	}

	// Every node ready first (caught up since its start, see the catch-up gate): afterwards only
	// the partition can make n1 unready.
	for _, nd := range c.Nodes() {
		testcluster.WaitFor(t, 30*time.Second, func() error {
			if code, body := readyz(t, nd.URL()); code != http.StatusOK {
				return fmt.Errorf("%s /readyz %d %q", nd.Name(), code, body)
			}
			return nil
		})
	}
	start := time.Now()
	c.Partition(t, 0)
	testcluster.WaitFor(t, partitionBound, func() error {
		if code, body := readyz(t, n1.URL()); code != http.StatusServiceUnavailable {
			return fmt.Errorf("n1 /readyz %d %q", code, body)
		}
		return nil
	})
	t.Logf("n1 not ready %s after the partition", time.Since(start).Round(time.Millisecond))
	// The reason depends on which check failed first: no meta leader, the leader hears no
	// majority, or the API did not answer.
	if _, body := readyz(t, n1.URL()); !strings.HasPrefix(body, "not ready: no jetstream quorum: ") {
		t.Fatalf("n1 /readyz body %q, want the reason", body)
	}
	if v := metric(t, n1.AdminURL(), "petrel_cluster_quorum"); v != 0 {
		t.Fatalf("n1 petrel_cluster_quorum = %v, want 0", v)
	}

	// A send through n1 to an offline device cannot be stored: it is answered UNAVAILABLE with
	// a retry hint, or, if n1 sends its clients away first, its connection ends after the GoAway
	// without an answer. Never an ack.
	alice.Write(&pb.Frame{Id: 100, Body: &pb.Frame_Send{Send: &pb.Send{MessageId: "m1", To: "bob",
		Envelopes: []*pb.DeviceCiphertext{{DeviceId: bobDev, Type: pb.EnvelopeType_ENVELOPE_TYPE_MESSAGE, Ciphertext: []byte("cut")}}}}})
	var answered, goAway bool
	for {
		f, err := alice.ReadErr(partitionBound)
		if err != nil {
			if !goAway {
				t.Fatalf("alice on n1: answered=%v goaway=%v: %v", answered, goAway, err)
			}
			break // n1 closed the moved connection
		}
		switch {
		case f.GetId() == 100:
			if f.GetSendResult() != nil {
				t.Fatalf("n1 acked a send it cannot store: %v", f)
			}
			if e := f.GetError(); e.GetCode() != pb.ErrorCode_ERROR_CODE_UNAVAILABLE || e.GetRetryAfterMs() == 0 {
				t.Fatalf("want UNAVAILABLE with a retry hint, got %v", f)
			}
			answered = true
		case f.GetGoAway() != nil:
			if g := f.GetGoAway(); g.GetReason() != pb.ErrorCode_ERROR_CODE_UNAVAILABLE || g.GetRetryAfterMs() == 0 {
				t.Fatalf("want GoAway UNAVAILABLE with a retry hint, got %v", g)
			}
			goAway = true
			took := time.Since(start)
			t.Logf("GoAway %s after the partition (the send answered before: %v)", took.Round(time.Millisecond), answered)
			// n1 has no route to a majority: it is cut off, and moves its clients as soon as it
			// counts its quorum lost, not quorumMoveAfter (5 s) later.
			if took > cutOffMoveBound {
				t.Fatalf("GoAway %s after the partition, want within %s", took, cutOffMoveBound)
			}
		}
	}
	// New connections to n1 are refused while it is cut off.
	if code := testserver.UpgradeStatus(t, n1.URL()); code != http.StatusServiceUnavailable {
		t.Fatalf("connect to n1 while cut off: HTTP %d, want 503", code)
	}

	// n2 and n3 keep a majority: a send through n2 to the offline device is acked. If n1 led the
	// meta group or the stream, n2 and n3 answer UNAVAILABLE (retryable) until they have elected
	// another leader (4-9 s), which n1's clients no longer wait for: send again, as a client does
	// (the same message id is stored once).
	n2.WaitLeaders(t, partitionBound)
	testcluster.WaitFor(t, partitionBound, func() error {
		r := carol.Send("c1", "bob", []string{bobDev}, []byte("majority"))
		if r.GetSendResult() != nil {
			return nil
		}
		if e := r.GetError(); e.GetCode() != pb.ErrorCode_ERROR_CODE_UNAVAILABLE {
			t.Fatalf("send through n2 during the partition: %v", r)
		}
		return fmt.Errorf("send through n2 during the partition: %v", r)
	})

	healed := time.Now()
	c.Heal(t, 0)
	testcluster.WaitFor(t, 2*partitionBound, func() error {
		if code, body := readyz(t, n1.URL()); code != http.StatusOK {
			return fmt.Errorf("n1 /readyz %d %q", code, body)
		}
		return nil
	})
	t.Logf("n1 ready %s after the heal", time.Since(healed).Round(time.Millisecond))
	if v := metric(t, n1.AdminURL(), "petrel_cluster_quorum"); v != 1 {
		t.Fatalf("n1 petrel_cluster_quorum = %v after the heal, want 1", v)
	}
	if v := metric(t, n1.AdminURL(), "petrel_cluster_quorum_lost_total"); v != 1 {
		t.Fatalf("n1 petrel_cluster_quorum_lost_total = %v, want 1", v)
	}
	// The log says it once on loss and once on recovery, not per check or per request.
	for _, msg := range []string{"jetstream quorum lost", "jetstream quorum recovered", "jetstream quorum still lost"} {
		if n := logs.count(`msg="`+msg, "node=n1"); n != 1 {
			t.Errorf("n1 logged %q %d times, want once", msg, n)
		}
	}
	n1.WaitLeaders(t, partitionBound)
	again := authRetry(t, n1.URL(), alice.AuthKey)
	if r := again.Send("m2", "bob", []string{bobDev}, []byte("healed")); r.GetSendResult() == nil {
		t.Fatalf("send through n1 after the heal: %v", r)
	}

	// Bob gets what was acked (m0, c1, m2), and never m1.
	waitReady(t, n2.URL()) // the heal may have cost n2 its quorum for a moment too
	bob = authRetry(t, n2.URL(), bob.AuthKey)
	got := map[string]bool{}
	for len(got) < 3 {
		f := bob.NextPush()
		if f.GetQueueEmpty() != nil {
			break
		}
		d := f.GetDeliver()
		if d == nil {
			continue
		}
		got[d.GetEnvelope().GetMessageId()] = true
		bob.Write(&pb.Frame{Body: &pb.Frame_DeliverAck{DeliverAck: &pb.DeliverAck{Tags: []uint64{d.GetTag()}}}})
	}
	for _, id := range []string{"m0", "c1", "m2"} {
		if !got[id] {
			t.Errorf("bob did not get %s (got %v)", id, got)
		}
	}
	if got["m1"] {
		t.Error("bob got m1, which was refused")
	}
}

// syncBuffer collects the nodes' logs (written from many goroutines).
type syncBuffer struct {
	mu  sync.Mutex
	buf bytes.Buffer
}

func (b *syncBuffer) Write(p []byte) (int, error) {
	b.mu.Lock()
	defer b.mu.Unlock()
	return b.buf.Write(p)
}

// count is the number of lines that contain every one of subs.
func (b *syncBuffer) count(subs ...string) int {
	b.mu.Lock()
	defer b.mu.Unlock()
	n := 0
	for line := range strings.SplitSeq(b.buf.String(), "\n") {
		all := true
		for _, s := range subs {
			all = all && strings.Contains(line, s)
		}
		if all {
			n++
		}
	}
	return n
}

func readyz(t *testing.T, url string) (int, string) {
	t.Helper()
	resp, err := http.Get(url + "/readyz")
	if err != nil {
		t.Fatal(err)
	}
	defer resp.Body.Close()
	b, _ := io.ReadAll(resp.Body)
	return resp.StatusCode, string(b)
}
