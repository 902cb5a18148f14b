// Copyright 2026 The Petrel Authors
// SPDX-License-Identifier: Apache-2.0

package server_test

import (
	"fmt"
	"net/http"
	"net/url"
	"testing"
	"time"

	natsserver "github.com/nats-io/nats-server/v2/server"

	"github.com/petrelchat/petrel/internal/faultproxy"
	"github.com/petrelchat/petrel/internal/freeport"
	"github.com/petrelchat/petrel/internal/server"
	"github.com/petrelchat/petrel/internal/testserver"
	pb "github.com/petrelchat/petrel/proto/petrel/v1"
)

// proxiedNATS starts three external nats-servers whose routes run through fault-injecting proxies
// (one per direction of each pair: proxies[i][j] carries server i's routes to server j), so that
// a test can cut one server off from the other two as a network partition would. Each advertises
// a closed route port, so that no route bypasses the proxies.
func proxiedNATS(t *testing.T) ([]*natsserver.Server, [][]*faultproxy.Proxy) {
	t.Helper()
	const n = 3
	ports, err := freeport.Loopback(n + 1)
	if err != nil {
		t.Fatal(err)
	}
	proxies := make([][]*faultproxy.Proxy, n)
	for i := range n {
		proxies[i] = make([]*faultproxy.Proxy, n)
		for j := range n {
			if i != j {
				p, err := faultproxy.New(fmt.Sprintf("127.0.0.1:%d", ports[j]))
				if err != nil {
					t.Fatal(err)
				}
				t.Cleanup(p.Close)
				proxies[i][j] = p
			}
		}
	}
	i := 0
	srvs := externalNATS(t, n, func(o *natsserver.Options) {
		o.Cluster.Port = ports[i]
		o.Cluster.Advertise = fmt.Sprintf("127.0.0.1:%d", ports[n])
		o.Cluster.NoAdvertise = true // clients learn no other server's address either
		o.Routes = nil
		for j, p := range proxies[i] {
			if j != i {
				o.Routes = append(o.Routes, &url.URL{Scheme: "nats-route", Host: p.Addr()})
			}
		}
		i++
	})
	return srvs, proxies
}

// TestEdgeOnCutOffNATSMovesClients: an edge node (external NATS) whose nats-server is cut off from
// the other two sees only a JetStream API that does not answer, as every node does when the API
// is overwhelmed (where it must keep its clients). It tells them apart by the other nodes' last
// word and their silence since: the edge on the majority side was serving when the partition
// began and is heard no more, so the cut-off edge sends its clients away and refuses new ones,
// while the other edge keeps acking; after the heal the cut-off edge is ready again.
func TestEdgeOnCutOffNATSMovesClients(t *testing.T) {
	ext, proxies := proxiedNATS(t)
	e1 := testserver.Start(t, testserver.WithConfig(func(c *server.Config) { c.NATS, c.Node = []string{ext[0].ClientURL()}, "edge1" }))
	e2 := testserver.Start(t, testserver.WithConfig(func(c *server.Config) { c.NATS, c.Node = []string{ext[1].ClientURL()}, "edge2" }))
	waitUntil(t, 30*time.Second, func() error {
		for _, e := range []*testserver.Server{e1, e2} {
			if code, body := get(t, e.URL()+"/readyz"); code != http.StatusOK {
				return fmt.Errorf("%s /readyz %d %q", e.URL(), code, body)
			}
			if n := len(e.Server().Nodes()); n != 2 {
				return fmt.Errorf("%s knows %d nodes, want 2", e.URL(), n)
			}
		}
		return nil
	})

	alice := testserver.Dial(t, e1.URL())
	alice.MustRegister("alice")
	bob := testserver.Dial(t, e2.URL())
	bob.MustRegister("bob")
	bobKey, bobDev := bob.AuthKey, bob.DeviceID
	bob.WS.CloseNow()
	carol := testserver.Dial(t, e2.URL())
	carol.MustRegister("carol")

	start := time.Now()
	for j := 1; j < 3; j++ {
		proxies[0][j].Cut()
		proxies[j][0].Cut()
	}
	for {
		f, err := alice.ReadErr(60 * time.Second)
		if err != nil {
			t.Fatalf("alice on the cut-off edge: no GoAway %s after the partition: %v", time.Since(start).Round(time.Millisecond), err)
		}
		if g := f.GetGoAway(); g != nil {
			if g.GetReason() != pb.ErrorCode_ERROR_CODE_UNAVAILABLE || g.GetRetryAfterMs() == 0 {
				t.Fatalf("want GoAway UNAVAILABLE with a retry hint, got %v", g)
			}
			t.Logf("GoAway %s after the partition", time.Since(start).Round(time.Millisecond))
			break
		}
	}
	if code, _ := get(t, e1.URL()+"/readyz"); code != http.StatusServiceUnavailable {
		t.Fatalf("cut-off edge /readyz %d, want 503", code)
	}
	if code := testserver.UpgradeStatus(t, e1.URL()); code != http.StatusServiceUnavailable {
		t.Fatalf("connect to the cut-off edge: HTTP %d, want 503", code)
	}

	// The majority side keeps acking (once it has elected leaders for what the cut-off server led).
	waitUntil(t, 45*time.Second, func() error {
		r := carol.Send("c1", "bob", []string{bobDev}, []byte("majority"))
		if r.GetSendResult() == nil {
			return fmt.Errorf("send through edge2: %v", r)
		}
		return nil
	})

	for j := 1; j < 3; j++ {
		proxies[0][j].Heal()
		proxies[j][0].Heal()
	}
	waitUntil(t, 60*time.Second, func() error {
		if code, body := get(t, e1.URL()+"/readyz"); code != http.StatusOK {
			return fmt.Errorf("edge1 /readyz %d %q after the heal", code, body)
		}
		return nil
	})
	bob = testserver.Dial(t, e1.URL())
	if w := bob.Auth(bobKey); w.GetWelcome() == nil {
		t.Fatalf("bob on the healed edge: %v", w)
	}
	if d := mustDeliver(t, bob); string(d.GetEnvelope().GetCiphertext()) != "majority" {
		t.Fatalf("bob got %v", d)
	}
}
