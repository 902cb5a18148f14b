// Copyright 2026 The Petrel Authors
// SPDX-License-Identifier: Apache-2.0

package bus_test

import (
	"context"
	"os"
	"path/filepath"
	"strings"
	"testing"

	"github.com/petrelchat/petrel/internal/bus"
)

// A single node refuses to start while an import of its store into a cluster is unfinished:
// it would serve an empty store.
func TestSingleRefusesUnfinishedGrow(t *testing.T) {
	dir := t.TempDir()
	if err := os.Mkdir(filepath.Join(dir, bus.SingleNodeDir), 0o700); err != nil {
		t.Fatal(err)
	}
	_, err := bus.Open(context.Background(), bus.Config{DataDir: dir, InboxShards: 2, Name: "g1"})
	if err == nil || !strings.Contains(err.Error(), "has not finished") || !strings.Contains(err.Error(), "cluster settings") {
		t.Fatalf("want a refusal that says how to finish, got %v", err)
	}
}

// A single-node store whose shard count differs from the node's cluster settings is refused
// before anything changes: the store stays where it was and still opens as a single node.
func TestGrowRefusesOtherShardCount(t *testing.T) {
	dir := t.TempDir()
	ctx := context.Background()
	b, err := bus.Open(ctx, bus.Config{DataDir: dir, InboxShards: 2, Name: "g1"})
	if err != nil {
		t.Fatal(err)
	}
	if _, err := b.Accounts.Put(ctx, "alice", []byte("record")); err != nil {
		t.Fatal(err)
	}
	b.Close()

	_, err = bus.Open(ctx, bus.Config{DataDir: dir, InboxShards: 4, Name: "g1",
		ClusterListen: "127.0.0.1:0", ClusterPeers: []string{"127.0.0.1:1", "127.0.0.1:2"}})
	if err == nil || !strings.Contains(err.Error(), "inbox_shards 2") || !strings.Contains(err.Error(), "set inbox_shards = 2") {
		t.Fatalf("want a refusal naming the shard count, got %v", err)
	}
	if _, err := os.Stat(filepath.Join(dir, bus.SingleNodeDir)); !os.IsNotExist(err) {
		t.Fatalf("the single-node store was not moved back (%v)", err)
	}
	b, err = bus.Open(ctx, bus.Config{DataDir: dir, InboxShards: 2, Name: "g1"})
	if err != nil {
		t.Fatalf("the single node no longer opens: %v", err)
	}
	defer b.Close()
	if e, err := b.Accounts.Get(ctx, "alice"); err != nil || string(e.Value()) != "record" {
		t.Fatalf("alice after the refusal: %v", err)
	}
}
