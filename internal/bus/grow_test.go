// Copyright 2026 The Petrel Authors
// SPDX-License-Identifier: Apache-2.0

package bus_test

import (
	"context"
	"fmt"
	"os"
	"path/filepath"
	"strings"
	"testing"
	"time"

	natsserver "github.com/nats-io/nats-server/v2/server"
	"github.com/nats-io/nats.go"
	"github.com/nats-io/nats.go/jetstream"

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

// An import interrupted after some copies (here: six of ten committed, the claim open, as after
// a crash) resumes after the last copy the target holds: every message once, in order, with its
// message id; a message id the source holds twice (a resend after its duplicate window) is
// stored once. The target is an external nats-server, the other form a grow can take. The node
// names no shard count, so it takes the single-node store's.
func TestGrowResumesExactly(t *testing.T) {
	dir := t.TempDir()
	ctx := context.Background()
	b, err := bus.Open(ctx, bus.Config{DataDir: dir, InboxShards: 2, Name: "g1", DuplicateWindow: 100 * time.Millisecond})
	if err != nil {
		t.Fatal(err)
	}
	dev := "dev0"
	for i := 1; b.Shard(dev) != 0; i++ {
		dev = fmt.Sprintf("dev%d", i)
	}
	copyOf := func(i int) *nats.Msg {
		m := nats.NewMsg(b.InboxSubject(dev))
		m.Data = []byte(fmt.Sprintf("m%d", i))
		m.Header.Set(jetstream.MsgIDHeader, fmt.Sprintf("sender.m%d.%s", i, dev))
		return m
	}
	for i := 1; i <= 10; i++ {
		if _, err := b.JS().PublishMsg(ctx, copyOf(i)); err != nil {
			t.Fatal(err)
		}
	}
	// m3 again, once the source's 100 ms window has passed (the ack says when).
	for {
		ack, err := b.JS().PublishMsg(ctx, copyOf(3))
		if err != nil {
			t.Fatal(err)
		}
		if !ack.Duplicate {
			break
		}
	}
	b.Close()

	ext, err := natsserver.NewServer(&natsserver.Options{Host: "127.0.0.1", Port: natsserver.RANDOM_PORT, JetStream: true,
		StoreDir: t.TempDir(), SyncAlways: true, NoSigs: true, NoLog: true})
	if err != nil {
		t.Fatal(err)
	}
	ext.Start()
	defer func() { ext.Shutdown(); ext.WaitForShutdown() }()
	if !ext.ReadyForConnections(10 * time.Second) {
		t.Fatal("nats-server not ready")
	}
	nc, err := nats.Connect(ext.ClientURL())
	if err != nil {
		t.Fatal(err)
	}
	defer nc.Close()
	js, _ := jetstream.New(nc)
	// What a first attempt left: its claim, and the first six copies.
	meta, err := js.CreateKeyValue(ctx, jetstream.KeyValueConfig{Bucket: bus.MetaBucket, History: 1})
	if err != nil {
		t.Fatal(err)
	}
	if _, err := meta.Put(ctx, "grow", []byte("g1")); err != nil {
		t.Fatal(err)
	}
	inbox, err := js.CreateStream(ctx, jetstream.StreamConfig{Name: bus.InboxStreamName(0), Subjects: []string{"inbox.00.*"}, Storage: jetstream.FileStorage})
	if err != nil {
		t.Fatal(err)
	}
	for i := 1; i <= 6; i++ {
		m := copyOf(i)
		m.Header.Set(bus.GrowSeqHeader, fmt.Sprint(i))
		if _, err := js.PublishMsg(ctx, m); err != nil {
			t.Fatal(err)
		}
	}

	// No shard count configured: the node adopts the single-node store's.
	b, err = bus.Open(ctx, bus.Config{DataDir: dir, Name: "g1", URLs: []string{ext.ClientURL()}, Replicas: 1})
	if err != nil {
		t.Fatalf("resume: %v", err)
	}
	defer b.Close()
	if n := b.InboxShards(); n != 2 {
		t.Fatalf("after the import the node has %d inbox shards, want the single-node store's 2", n)
	}
	if e, err := meta.Get(ctx, "inbox_shards"); err != nil || string(e.Value()) != "2" {
		t.Fatalf("the deployment's recorded inbox_shards after the import: %v", err)
	}
	cons, err := inbox.OrderedConsumer(ctx, jetstream.OrderedConsumerConfig{})
	if err != nil {
		t.Fatal(err)
	}
	batch, err := cons.Fetch(10, jetstream.FetchMaxWait(5*time.Second))
	if err != nil {
		t.Fatal(err)
	}
	var got []string
	for m := range batch.Messages() {
		got = append(got, fmt.Sprintf("%s/%s/%s", m.Data(), m.Headers().Get(bus.GrowSeqHeader), m.Headers().Get(jetstream.MsgIDHeader)))
	}
	for i, g := range got {
		if want := fmt.Sprintf("m%d/%d/sender.m%d.%s", i+1, i+1, i+1, dev); g != want {
			t.Fatalf("message %d is %s, want %s (all: %v)", i, g, want, got)
		}
	}
	info, err := inbox.Info(ctx)
	if err != nil {
		t.Fatal(err)
	}
	if len(got) != 10 || info.State.Msgs != 10 {
		t.Fatalf("after the resume the inbox holds %d messages (read %d), want 10: %v", info.State.Msgs, len(got), got)
	}
	if _, err := os.Stat(filepath.Join(dir, bus.ImportedDir)); err != nil {
		t.Fatalf("no backup after the resumed import: %v", err)
	}
}
