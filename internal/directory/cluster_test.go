// Copyright 2026 The Petrel Authors
// SPDX-License-Identifier: Apache-2.0

package directory_test

import (
	"bytes"
	"context"
	"crypto/ed25519"
	"errors"
	"fmt"
	"io"
	"log/slog"
	"sync"
	"testing"
	"time"

	"github.com/petrelchat/petrel/internal/bus"
	"github.com/petrelchat/petrel/internal/directory"
	"github.com/petrelchat/petrel/internal/freeport"
	pb "github.com/petrelchat/petrel/proto/petrel/v1"
)

// openCluster opens n clustered buses (embedded NATS servers routed over loopback, streams with
// 3 replicas) and a started directory on each. Everything closes with the test.
func openCluster(t *testing.T, n int) []*directory.Directory {
	t.Helper()
	addrs := make([]string, n)
	ports, err := freeport.Loopback(n)
	if err != nil {
		t.Fatal(err)
	}
	for i, p := range ports {
		addrs[i] = fmt.Sprintf("127.0.0.1:%d", p)
	}
	quiet := slog.New(slog.NewTextHandler(io.Discard, nil))
	ctx, cancel := context.WithTimeout(context.Background(), 90*time.Second)
	defer cancel()
	buses := make([]*bus.Bus, n)
	errs := make([]error, n)
	var wg sync.WaitGroup
	for i := range buses {
		wg.Go(func() {
			buses[i], errs[i] = bus.Open(ctx, bus.Config{
				DataDir: t.TempDir(), InboxShards: 1, Name: fmt.Sprintf("d%d", i+1),
				ClusterListen: addrs[i], ClusterPeers: addrs, ClusterName: "directory-test",
				Logger: quiet,
			})
		})
	}
	wg.Wait()
	for i, b := range buses {
		if b != nil {
			t.Cleanup(b.Close)
		}
		if errs[i] != nil {
			t.Fatalf("node %d: %v", i+1, errs[i])
		}
	}
	dirs := make([]*directory.Directory, n)
	for i, b := range buses {
		if b.Replicas() != 3 {
			t.Fatalf("node %d: %d replicas, want 3", i+1, b.Replicas())
		}
		d := directory.New(b, directory.Config{Logger: quiet})
		wctx, wcancel := context.WithCancel(context.Background())
		t.Cleanup(func() { wcancel(); d.Wait() })
		if err := d.Start(wctx); err != nil {
			t.Fatal(err)
		}
		dirs[i] = d
	}
	return dirs
}

// On a 3-node cluster: a link started on one node is approved on another, the new device
// authenticates on every node, and once removed it authenticates on none (each node's auth cache
// follows the devices bucket).
func TestLinkAndRemoveOnCluster(t *testing.T) {
	if testing.Short() {
		t.Skip("starts a 3-node cluster")
	}
	ctx := context.Background()
	dirs := openCluster(t, 3)
	amy := newAccount(t, dirs[0], "amy", 1)
	n := startLinking(t, dirs[1], 2, 2)
	if _, err := dirs[2].LinkOffer(ctx, amy.p, n.linkID); err != nil {
		t.Fatalf("offer on another node: %v", err)
	}
	if _, err := amy.approve(t, dirs[2], n, "laptop"); err != nil {
		t.Fatalf("approve on a third node: %v", err)
	}
	nonce := bytes.Repeat([]byte{0x31}, 32)
	sig := ed25519.Sign(n.priv, pb.AuthPayload(nonce, n.id))
	for i, d := range dirs {
		if _, err := d.Authenticate(ctx, n.id, nonce, sig); err != nil {
			t.Fatalf("node %d: the linked device does not authenticate: %v", i+1, err)
		}
		if !d.AuthCachedForTest(n.id) {
			t.Fatalf("node %d: not cached", i+1)
		}
	}
	// The bundles on every node carry the new list, once the account caches heard of it.
	for i, d := range dirs {
		waitFor(t, fmt.Sprintf("node %d: the bundle's list", i+1), func() bool {
			b, err := d.Bundles(ctx, fmt.Sprintf("%032x", 100+i), "amy", []string{amy.primary.id})
			return err == nil && bytes.Equal(b.GetDeviceList().GetList(), amy.last.GetList())
		})
	}

	amy.comps = nil
	if err := dirs[1].RemoveDevice(ctx, amy.p, n.id, amy.list(t, amy.version+1)); err != nil {
		t.Fatal(err)
	}
	// The removing node refuses it at once; the others as soon as their watch sees the purge.
	if _, err := dirs[1].Authenticate(ctx, n.id, nonce, sig); !errors.Is(err, directory.ErrAuthFailed) {
		t.Fatalf("removing node: %v", err)
	}
	for i, d := range dirs {
		waitFor(t, fmt.Sprintf("node %d: the removed device stops authenticating", i+1), func() bool {
			_, err := d.Authenticate(ctx, n.id, nonce, sig)
			return errors.Is(err, directory.ErrAuthFailed)
		})
		if d.AuthCachedForTest(n.id) {
			t.Fatalf("node %d: the removed device is cached", i+1)
		}
	}
}

// waitFor polls cond until it holds (a watch delivers asynchronously), for at most 10s.
func waitFor(t *testing.T, what string, cond func() bool) {
	t.Helper()
	deadline := time.Now().Add(10 * time.Second)
	for !cond() {
		if time.Now().After(deadline) {
			t.Fatalf("%s: not within 10s", what)
		}
		time.Sleep(2 * time.Millisecond)
	}
}
