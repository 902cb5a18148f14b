// Copyright 2026 The Petrel Authors
// SPDX-License-Identifier: Apache-2.0

package testcluster_test

import (
	"bufio"
	"context"
	"crypto/ed25519"
	"fmt"
	"net/http"
	"os"
	"path/filepath"
	"strconv"
	"strings"
	"testing"
	"time"

	"github.com/petrelchat/petrel/internal/bus"
	"github.com/petrelchat/petrel/internal/server"
	"github.com/petrelchat/petrel/internal/testcluster"
	"github.com/petrelchat/petrel/internal/testserver"
	pb "github.com/petrelchat/petrel/proto/petrel/v1"
)

// The cluster tests share one shape: three nodes, n1..n3, on loopback.
const nodes = 3

// TestClusterFormsWithR3 checks that three nodes form one JetStream cluster and that every
// stream and bucket is replicated on all three.
func TestClusterFormsWithR3(t *testing.T) {
	c := testcluster.Start(t, nodes, testcluster.Options{})
	names := []string{bus.PreKeysStream, "KV_" + bus.AccountsBucket, "KV_" + bus.DevicesBucket,
		"KV_" + bus.InvitesBucket, "KV_" + bus.MetaBucket}
	for i := range 4 {
		names = append(names, bus.InboxStreamName(i))
	}
	for _, nd := range c.Nodes() {
		js := nd.Server().Bus().JS()
		for _, name := range names {
			testcluster.WaitFor(t, 20*time.Second, func() error {
				ctx, cancel := context.WithTimeout(context.Background(), 5*time.Second)
				defer cancel()
				s, err := js.Stream(ctx, name)
				if err != nil {
					return fmt.Errorf("%s from %s: %w", name, nd.Name(), err)
				}
				info, err := s.Info(ctx)
				if err != nil {
					return fmt.Errorf("%s info from %s: %w", name, nd.Name(), err)
				}
				if info.Config.Replicas != 3 {
					t.Fatalf("%s: %d replicas, want 3", name, info.Config.Replicas)
				}
				if info.Cluster == nil || info.Cluster.Name != "petrel-test" || info.Cluster.Leader == "" || len(info.Cluster.Replicas) != 2 {
					return fmt.Errorf("%s seen from %s: cluster %+v, want a leader and 2 replicas", name, nd.Name(), info.Cluster)
				}
				seen := map[string]bool{info.Cluster.Leader: true}
				for _, p := range info.Cluster.Replicas {
					seen[p.Name] = true
				}
				for _, want := range c.Nodes() {
					if !seen[want.Name()] {
						return fmt.Errorf("%s: node %s holds no replica (%+v)", name, want.Name(), info.Cluster)
					}
				}
				if want := name == "KV_"+bus.AccountsBucket || name == "KV_"+bus.DevicesBucket; want && !info.Config.AllowAtomicPublish {
					t.Fatalf("%s: atomic publish off after concurrent migrations", name)
				}
				return nil
			})
		}
	}
}

// TestLiveAcrossNodes: a device connected to n1 receives live what a device connected to n3
// sends, and the send is acked only after that.
func TestLiveAcrossNodes(t *testing.T) {
	c := testcluster.Start(t, nodes, testcluster.Options{})
	a, cNode := c.Node(0), c.Node(2)
	bob := testserver.Dial(t, a.URL())
	bob.MustRegister("bob")
	if f := bob.NextPush(); f.GetQueueEmpty() == nil {
		t.Fatalf("bob: want QueueEmpty first, got %v", f)
	}
	alice := testserver.Dial(t, cNode.URL())
	alice.MustRegister("alice")
	// n3 learns where bob is from his connection's claim (no subscription per device).
	locate(t, c, cNode, bob, "bob")
	unlocated := metric(t, cNode.AdminURL(), "petrel_mailbox_unlocated_total")
	before := metric(t, cNode.AdminURL(), "petrel_mailbox_delivered_live_total")
	crossBefore := metric(t, cNode.AdminURL(), "petrel_mailbox_cross_node_deliveries_total")

	got := make(chan *pb.Deliver, 1)
	go func() {
		f, err := bob.ReadErr(10 * time.Second)
		if err != nil {
			got <- nil
			return
		}
		d := f.GetDeliver()
		if d != nil {
			bob.Write(&pb.Frame{Body: &pb.Frame_DeliverAck{DeliverAck: &pb.DeliverAck{Tags: []uint64{d.GetTag()}}}})
		}
		got <- d
	}()
	r := alice.Send("m1", "bob", []string{bob.DeviceID}, []byte("across"))
	if r.GetSendResult().GetMessageId() != "m1" {
		t.Fatalf("want SendResult, got %v", r)
	}
	d := <-got
	if d == nil || d.GetEnvelope().GetMessageId() != "m1" || string(d.GetEnvelope().GetCiphertext()) != "across" || d.GetEnvelope().GetFrom() != "alice" {
		t.Fatalf("bob got %v", d)
	}
	if after := metric(t, cNode.AdminURL(), "petrel_mailbox_delivered_live_total"); after != before+1 {
		t.Fatalf("n3 counted %v live deliveries, want %v: the envelope did not go live", after, before+1)
	}
	if after := metric(t, cNode.AdminURL(), "petrel_mailbox_cross_node_deliveries_total"); after != crossBefore+1 {
		t.Fatalf("n3 counted %v cross-node deliveries, want %v", after, crossBefore+1)
	}
	if got := metric(t, cNode.AdminURL(), "petrel_mailbox_unlocated_total"); got != unlocated {
		t.Fatalf("n3 counted %v unlocated sends, want %v", got, unlocated)
	}
}

// locate waits until from knows the node recipient's device is attached on (every node hears a
// new connection's claim, which names its node) and the recipient's attachment there is live
// (its drain ended), so that the next send from there goes live.
func locate(t *testing.T, c *testcluster.Cluster, from *testcluster.Node, recipient *testserver.RawClient, name string) {
	t.Helper()
	testcluster.WaitFor(t, 10*time.Second, func() error {
		node, ok := from.Server().Mailbox().Located(recipient.DeviceID)
		if !ok {
			return fmt.Errorf("%s does not know where %s is", from.Name(), name)
		}
		for _, nd := range c.Nodes() {
			if nd.Server().Mailbox().Node() != node {
				continue
			}
			if _, live := nd.Server().Mailbox().Attached(recipient.DeviceID); !live {
				return fmt.Errorf("%s is not live on %s yet", name, nd.Name())
			}
			return nil
		}
		return fmt.Errorf("%s is located on %s, which is no node of the cluster", name, node)
	})
}

// TestStoredSurvivesKill: an envelope stored through n2 for an offline device (R3) is delivered
// exactly once through n3 after n2 is killed.
func TestStoredSurvivesKill(t *testing.T) {
	c := testcluster.Start(t, nodes, testcluster.Options{})
	a, b, cNode := c.Node(0), c.Node(1), c.Node(2)
	bob := testserver.Dial(t, a.URL())
	bob.MustRegister("bob")
	bobKey, bobDev := bob.AuthKey, bob.DeviceID
	bob.WS.CloseNow()

	alice := testserver.Dial(t, b.URL())
	alice.MustRegister("alice")
	r := alice.Send("m1", "bob", []string{bobDev}, []byte("stored"))
	if r.GetSendResult().GetMessageId() != "m1" {
		t.Fatalf("want SendResult, got %v", r)
	}
	b.Kill()

	// Until the streams n2 led have new leaders, n3 may answer UNAVAILABLE with a retry hint, as
	// it would to any client.
	bob = authRetry(t, cNode.URL(), bobKey)
	var got []*pb.Deliver
	for {
		f, err := bob.ReadErr(30 * time.Second)
		if err != nil {
			t.Fatalf("bob on n3: %v (got %d deliveries)", err, len(got))
		}
		if d := f.GetDeliver(); d != nil {
			got = append(got, d)
			continue
		}
		if qe := f.GetQueueEmpty(); qe != nil {
			if qe.GetDelivered() != 1 {
				t.Fatalf("QueueEmpty reports %d delivered, want 1", qe.GetDelivered())
			}
			break
		}
		t.Fatalf("bob on n3: unexpected %v", f)
	}
	if len(got) != 1 || got[0].GetEnvelope().GetMessageId() != "m1" || string(got[0].GetEnvelope().GetCiphertext()) != "stored" {
		t.Fatalf("want m1 exactly once, got %v", got)
	}
}

// TestConnectedElsewhereAcrossNodes: the same device connecting on n1 then on n2 closes the
// connection on n1 with CONNECTED_ELSEWHERE.
func TestConnectedElsewhereAcrossNodes(t *testing.T) {
	c := testcluster.Start(t, nodes, testcluster.Options{})
	first := testserver.Dial(t, c.Node(0).URL())
	first.MustRegister("ivan")
	if f := first.NextPush(); f.GetQueueEmpty() == nil {
		t.Fatalf("want QueueEmpty first, got %v", f)
	}
	second := testserver.Dial(t, c.Node(1).URL())
	if w := second.Auth(first.AuthKey); w.GetWelcome() == nil {
		t.Fatalf("auth on n2: %v", w)
	}
	for {
		f, err := first.ReadErr(10 * time.Second)
		if err != nil {
			t.Fatalf("n1 connection ended without CONNECTED_ELSEWHERE: %v", err)
		}
		if f.GetError().GetCode() == pb.ErrorCode_ERROR_CODE_CONNECTED_ELSEWHERE {
			break
		}
	}
	if _, err := first.ReadErr(5 * time.Second); err == nil {
		t.Fatal("the n1 connection should be closed")
	}
	if n := metric(t, c.Node(0).AdminURL(), "petrel_mailbox_takeovers_total"); n != 1 {
		t.Fatalf("n1 counted %v takeovers, want 1", n)
	}
	if n := metric(t, c.Node(1).AdminURL(), "petrel_mailbox_takeovers_total"); n != 0 {
		t.Fatalf("n2 counted %v takeovers, want 0 (it took over, it was not taken over)", n)
	}
	// The new connection works.
	if p := second.Request(&pb.Frame{Body: &pb.Frame_Ping{Ping: &pb.Ping{}}}); p.GetPong() == nil {
		t.Fatalf("ping on n2: %v", p)
	}
}

// authRetry connects and authenticates with key, as a client does: on UNAVAILABLE it waits the
// hinted retry_after and tries again, for up to 20s.
func authRetry(t *testing.T, url string, key ed25519.PrivateKey) *testserver.RawClient {
	t.Helper()
	deadline := time.Now().Add(20 * time.Second)
	for {
		c := testserver.Dial(t, url)
		w := c.Auth(key)
		if w.GetWelcome() != nil {
			return c
		}
		e := w.GetError()
		if e.GetCode() != pb.ErrorCode_ERROR_CODE_UNAVAILABLE || time.Now().After(deadline) {
			t.Fatalf("auth on %s: %v", url, w)
		}
		c.WS.CloseNow()
		time.Sleep(time.Duration(e.GetRetryAfterMs()) * time.Millisecond) // the server's retry hint
	}
}

// metricOr0 is metric, with 0 for a series not exported yet (a labelled counter never counted).
func metricOr0(t *testing.T, adminURL, name string) float64 {
	t.Helper()
	v, ok := readMetric(t, adminURL, name)
	if !ok {
		return 0
	}
	return v
}

// metric reads one unlabelled counter or gauge from a node's /metrics.
func metric(t *testing.T, adminURL, name string) float64 {
	t.Helper()
	v, ok := readMetric(t, adminURL, name)
	if !ok {
		t.Fatalf("metric %s not found at %s", name, adminURL)
	}
	return v
}

func readMetric(t *testing.T, adminURL, name string) (float64, bool) {
	t.Helper()
	resp, err := http.Get(adminURL + "/metrics")
	if err != nil {
		t.Fatal(err)
	}
	defer resp.Body.Close()
	sc := bufio.NewScanner(resp.Body)
	sc.Buffer(make([]byte, 1<<20), 1<<20)
	for sc.Scan() {
		if v, ok := strings.CutPrefix(sc.Text(), name+" "); ok {
			f, err := strconv.ParseFloat(v, 64)
			if err != nil {
				t.Fatalf("metric %s: %v", name, err)
			}
			return f, true
		}
	}
	return 0, false
}

// TestRestartAndWipe: a node restarted on its data directory, and a node whose data directory was
// wiped, both rejoin and serve what the cluster stored meanwhile.
func TestRestartAndWipe(t *testing.T) {
	c := testcluster.Start(t, nodes, testcluster.Options{})
	b, cNode := c.Node(1), c.Node(2)
	b.Stop()
	cNode.Kill()
	// One node of three is not a majority: bring n2 back first, then register while n3 is down.
	b.Restart(t)
	b.WaitLeaders(t, 20*time.Second)
	dave := testserver.Dial(t, b.URL())
	dave.MustRegister("dave")
	cNode.Wipe(t)
	if _, err := os.Stat(filepath.Join(cNode.DataDir(), server.AdminTokenFile)); err != nil {
		t.Fatalf("wiped node has no new operator token: %v", err)
	}
	// dave's device record reaches the wiped node by catch-up (the KV is R3).
	authRetry(t, cNode.URL(), dave.AuthKey)
}
