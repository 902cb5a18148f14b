// Copyright 2026 The Petrel Authors
// SPDX-License-Identifier: Apache-2.0

package server_test

import (
	"context"
	"fmt"
	"io"
	"log/slog"
	"net/url"
	"strings"
	"testing"
	"time"

	natsserver "github.com/nats-io/nats-server/v2/server"
	"github.com/nats-io/nats.go"
	"github.com/nats-io/nats.go/jetstream"

	"github.com/petrelchat/petrel/internal/bus"
	"github.com/petrelchat/petrel/internal/freeport"
	"github.com/petrelchat/petrel/internal/server"
	"github.com/petrelchat/petrel/internal/testserver"
	pb "github.com/petrelchat/petrel/proto/petrel/v1"
)

// externalNATS starts n nats-servers on loopback as an operator would run them for Petrel (README:
// External NATS): JetStream with sync_interval always, clustered when n > 1. They stop when the
// test ends. change, if set, adjusts each server's options.
func externalNATS(t *testing.T, n int, change func(*natsserver.Options)) []*natsserver.Server {
	t.Helper()
	routes := make([]*url.URL, n)
	ports, err := freeport.Loopback(n)
	if err != nil {
		t.Fatal(err)
	}
	for i, p := range ports {
		routes[i] = &url.URL{Scheme: "nats-route", Host: fmt.Sprintf("127.0.0.1:%d", p)}
	}
	var srvs []*natsserver.Server
	for i := range n {
		o := &natsserver.Options{
			ServerName: fmt.Sprintf("ext%d", i+1),
			Host:       "127.0.0.1",
			Port:       natsserver.RANDOM_PORT,
			JetStream:  true,
			StoreDir:   t.TempDir(),
			SyncAlways: true,
			NoSigs:     true,
			NoLog:      true,
		}
		if n > 1 {
			o.Cluster = natsserver.ClusterOpts{Name: "ext", Host: "127.0.0.1", Port: ports[i]}
			o.Routes = routes
		}
		if change != nil {
			change(o)
		}
		s, err := natsserver.NewServer(o)
		if err != nil {
			t.Fatal(err)
		}
		s.Start()
		t.Cleanup(func() { s.Shutdown(); s.WaitForShutdown() })
		srvs = append(srvs, s)
	}
	for _, s := range srvs {
		if !s.ReadyForConnections(10 * time.Second) {
			t.Fatalf("nats-server %s not ready", s.Name())
		}
	}
	return srvs
}

func clientURLs(srvs []*natsserver.Server) []string {
	var urls []string
	for _, s := range srvs {
		urls = append(urls, s.ClientURL())
	}
	return urls
}

// TestExternalNATSCluster: two edge nodes on a 3-server external JetStream cluster (the default
// replicas, 3): every stream is R3 on file storage, and an envelope stored through one edge node
// is delivered through the other after the server that led its inbox is shut down.
func TestExternalNATSCluster(t *testing.T) {
	ext := externalNATS(t, 3, nil)
	urls := clientURLs(ext)
	a := testserver.Start(t, testserver.WithConfig(func(c *server.Config) { c.NATS, c.Node = urls, "edge1" }))
	b := testserver.Start(t, testserver.WithConfig(func(c *server.Config) { c.NATS, c.Node = urls, "edge2" }))

	nc, err := nats.Connect(strings.Join(urls, ","))
	if err != nil {
		t.Fatal(err)
	}
	defer nc.Close()
	js, _ := jetstream.New(nc)
	ctx, cancel := context.WithTimeout(context.Background(), 20*time.Second)
	defer cancel()
	for _, name := range []string{bus.PreKeysStream, "KV_" + bus.AccountsBucket, "KV_" + bus.DevicesBucket, bus.InboxStreamName(0)} {
		s, err := js.Stream(ctx, name)
		if err != nil {
			t.Fatalf("%s: %v", name, err)
		}
		cfg := s.CachedInfo().Config
		if cfg.Replicas != 3 || cfg.Storage != jetstream.FileStorage {
			t.Fatalf("%s: R%d %s, want R3 on file storage", name, cfg.Replicas, cfg.Storage)
		}
	}

	alice, bobKey, bobDev := offlinePair(t, a)
	if r := alice.Send("m1", "bob", []string{bobDev}, []byte("via edge1")); r.GetSendResult() == nil {
		t.Fatalf("send: %v", r)
	}
	inbox, err := js.Stream(ctx, bus.InboxStreamName(a.Server().Bus().Shard(bobDev)))
	if err != nil {
		t.Fatal(err)
	}
	leader := inbox.CachedInfo().Cluster.Leader
	for _, s := range ext {
		if s.Name() == leader {
			s.Shutdown()
			s.WaitForShutdown()
		}
	}
	// Until the inbox has a new leader the edge node may answer UNAVAILABLE with a retry hint.
	deadline := time.Now().Add(30 * time.Second)
	for {
		bob := testserver.Dial(t, b.URL())
		w := bob.Auth(bobKey)
		if w.GetWelcome() != nil {
			if d := mustDeliver(t, bob); d.GetEnvelope().GetMessageId() != "m1" || string(d.GetEnvelope().GetCiphertext()) != "via edge1" {
				t.Fatalf("bob on edge2 got %v", d)
			}
			return
		}
		if code(w) != pb.ErrorCode_ERROR_CODE_UNAVAILABLE || time.Now().After(deadline) {
			t.Fatalf("bob on edge2 after %s stopped: %v", leader, w)
		}
		bob.WS.CloseNow()
		time.Sleep(time.Duration(w.GetError().GetRetryAfterMs()) * time.Millisecond) // the server's retry hint
	}
}

// TestExternalNATSRefusals: what an external NATS setup would lose acknowledged messages with is
// refused at start with an error that says what to change.
func TestExternalNATSRefusals(t *testing.T) {
	for _, tc := range []struct {
		name     string
		change   func(*natsserver.Options)
		prepare  func(t *testing.T, js jetstream.JetStream)
		replicas int
		want     []string
	}{
		{
			name: "jetstream off",
			change: func(o *natsserver.Options) {
				o.JetStream = false
			},
			replicas: 1,
			want:     []string{"do not run JetStream", "sync_interval: always"},
		},
		{
			name:     "replicas on a lone server",
			want:     []string{"runs alone", "set replicas = 1"},
			replicas: 0, // auto: 3 with external NATS
		},
		{
			name: "memory storage",
			prepare: func(t *testing.T, js jetstream.JetStream) {
				ctx, cancel := context.WithTimeout(context.Background(), 10*time.Second)
				defer cancel()
				if _, err := js.CreateStream(ctx, jetstream.StreamConfig{Name: bus.InboxStreamName(0), Subjects: []string{"inbox.00.*"}, Storage: jetstream.MemoryStorage}); err != nil {
					t.Fatal(err)
				}
			},
			replicas: 1,
			want:     []string{"stream INBOX_00 uses Memory storage", "nats stream rm INBOX_00"},
		},
		{
			name: "asynchronous persistence",
			prepare: func(t *testing.T, js jetstream.JetStream) {
				ctx, cancel := context.WithTimeout(context.Background(), 10*time.Second)
				defer cancel()
				if _, err := js.CreateStream(ctx, jetstream.StreamConfig{Name: bus.PreKeysStream, Subjects: []string{"prekeys.otk.*", "prekeys.kem.*"},
					Storage: jetstream.FileStorage, PersistMode: jetstream.AsyncPersistMode}); err != nil {
					t.Fatal(err)
				}
			},
			replicas: 1,
			want:     []string{"stream PREKEYS uses persist_mode async"},
		},
	} {
		t.Run(tc.name, func(t *testing.T) {
			ext := externalNATS(t, 1, tc.change)
			if tc.prepare != nil {
				nc, err := nats.Connect(ext[0].ClientURL())
				if err != nil {
					t.Fatal(err)
				}
				js, _ := jetstream.New(nc)
				tc.prepare(t, js)
				nc.Close()
			}
			srv, err := server.New(server.Config{
				Listen:         "127.0.0.1:0",
				AdminSection:   server.AdminSection{AdminListen: "127.0.0.1:0"},
				InboxSection:   server.InboxSection{InboxShards: 4},
				Data:           t.TempDir(),
				Node:           "edge",
				NATS:           []string{ext[0].ClientURL()},
				ClusterSection: server.ClusterSection{Replicas: tc.replicas},
			}, slog.New(slog.NewTextHandler(io.Discard, nil)))
			if err != nil {
				t.Fatal(err)
			}
			ctx, cancel := context.WithTimeout(context.Background(), 30*time.Second)
			defer cancel()
			err = srv.Run(ctx)
			if err == nil || ctx.Err() != nil {
				t.Fatalf("want a refusal at start, got %v (ctx: %v)", err, ctx.Err())
			}
			t.Log(err)
			for _, w := range tc.want {
				if !strings.Contains(err.Error(), w) {
					t.Fatalf("error %q does not say %q", err, w)
				}
			}
		})
	}
}

// TestGrowIntoExternalNATS: a single node's data directory, restarted with nats (external), is
// imported into the external JetStream; its stored envelopes are delivered there.
func TestGrowIntoExternalNATS(t *testing.T) {
	s := testserver.Start(t)
	alice, bobKey, bobDev := offlinePair(t, s)
	for i := range 3 {
		if r := alice.Send(fmt.Sprintf("m%d", i), "bob", []string{bobDev}, []byte{byte(i)}); r.GetSendResult() == nil {
			t.Fatalf("send %d: %v", i, r)
		}
	}
	alice.WS.CloseNow()
	s.Stop()

	ext := externalNATS(t, 1, nil)
	edge := testserver.Start(t, testserver.WithConfig(func(c *server.Config) {
		c.Data = s.DataDir()
		c.NATS = []string{ext[0].ClientURL()}
		c.Replicas = 1
	}))
	bob := testserver.Dial(t, edge.URL())
	if w := bob.Auth(bobKey); w.GetWelcome() == nil {
		t.Fatalf("bob on the edge node: %v", w)
	}
	for i := range 3 {
		if d := mustDeliver(t, bob); d.GetEnvelope().GetMessageId() != fmt.Sprintf("m%d", i) {
			t.Fatalf("delivery %d: %v", i, d)
		}
	}
	if f := bob.NextPush(); f.GetQueueEmpty().GetDelivered() != 3 {
		t.Fatalf("want QueueEmpty{3}, got %v", f)
	}
}
