// Copyright 2026 The Petrel Authors
// SPDX-License-Identifier: Apache-2.0

package mailbox_test

import (
	"context"
	"io"
	"log/slog"
	"strings"
	"testing"
	"time"

	"github.com/nats-io/nats.go/jetstream"

	"github.com/petrelchat/petrel/internal/bus"
	"github.com/petrelchat/petrel/internal/mailbox"
)

func open(t *testing.T, cfg bus.Config) (*bus.Bus, *mailbox.Mailbox) { return openB(t, cfg) }

func openB(t testing.TB, cfg bus.Config, mcfg ...mailbox.Config) (*bus.Bus, *mailbox.Mailbox) {
	t.Helper()
	quiet := slog.New(slog.NewTextHandler(io.Discard, nil))
	cfg.DataDir, cfg.Logger = t.TempDir(), quiet
	b, err := bus.Open(context.Background(), cfg)
	if err != nil {
		t.Fatal(err)
	}
	mc := mailbox.Config{}
	if len(mcfg) > 0 {
		mc = mcfg[0]
	}
	mc.Logger = quiet
	m := mailbox.New(b, mc)
	if err := m.Start(); err != nil {
		t.Fatal(err)
	}
	t.Cleanup(func() { m.Close(); b.Close() })
	return b, m
}

func store(t *testing.T, m *mailbox.Mailbox, dev, id string) {
	t.Helper()
	done := make(chan error, 1)
	m.Store(dev, id, []byte("envelope "+id), func(err error) { done <- err })
	if err := <-done; err != nil {
		t.Fatalf("store %s: %v", id, err)
	}
}

func pending(t *testing.T, b *bus.Bus, dev string) uint64 {
	t.Helper()
	info, err := b.Inbox(b.Shard(dev)).Info(context.Background(), jetstream.WithSubjectFilter(b.InboxSubject(dev)))
	if err != nil {
		t.Fatal(err)
	}
	return info.State.Subjects[b.InboxSubject(dev)]
}

// Undelivered envelopes expire after the inbox TTL.
func TestInboxExpiry(t *testing.T) {
	b, m := open(t, bus.Config{InboxShards: 1, InboxMaxAge: time.Second})
	dev := "0123456789abcdef0123456789abcdef"
	store(t, m, dev, "a")
	if n := pending(t, b, dev); n != 1 {
		t.Fatalf("stored %d, want 1", n)
	}
	deadline := time.Now().Add(20 * time.Second)
	for pending(t, b, dev) != 0 {
		if time.Now().After(deadline) {
			t.Fatal("envelope did not expire")
		}
		time.Sleep(50 * time.Millisecond) // polling the store for an expiry it does not announce
	}
}

// A second append with the same dedupe id is acked but stored once, also inside one batch.
func TestStoreDeduplicates(t *testing.T) {
	b, m := open(t, bus.Config{InboxShards: 1})
	dev := "0123456789abcdef0123456789abcdef"
	store(t, m, dev, "same")
	store(t, m, dev, "same")
	done := make(chan error, 3)
	for range 3 {
		m.Store(dev, "burst", []byte("x"), func(err error) { done <- err })
	}
	for range 3 {
		if err := <-done; err != nil {
			t.Fatal(err)
		}
	}
	if n := pending(t, b, dev); n != 2 {
		t.Fatalf("stored %d envelopes, want 2", n)
	}
}

// A full inbox refuses appends with an error (never a silent drop).
func TestFullInboxRefuses(t *testing.T) {
	_, m := open(t, bus.Config{InboxShards: 1, InboxMaxPerDevice: 2})
	dev := "0123456789abcdef0123456789abcdef"
	store(t, m, dev, "1")
	store(t, m, dev, "2")
	done := make(chan error, 1)
	m.Store(dev, "3", []byte("x"), func(err error) { done <- err })
	if err := <-done; err == nil {
		t.Fatal("append to a full inbox was acked")
	}
}

// Changing the shard count of an existing deployment is refused.
func TestShardCountIsFixed(t *testing.T) {
	dir := t.TempDir()
	quiet := slog.New(slog.NewTextHandler(io.Discard, nil))
	b, err := bus.Open(context.Background(), bus.Config{DataDir: dir, InboxShards: 4, Logger: quiet})
	if err != nil {
		t.Fatal(err)
	}
	b.Close()
	if b2, err := bus.Open(context.Background(), bus.Config{DataDir: dir, InboxShards: 8, Logger: quiet}); err == nil {
		b2.Close()
		t.Fatal("shard count change accepted")
	}
	b3, err := bus.Open(context.Background(), bus.Config{DataDir: dir, InboxShards: 4, Logger: quiet})
	if err != nil {
		t.Fatalf("reopen with the same shard count: %v", err)
	}
	b3.Close()
}

// A node whose configuration names no shard count creates a new deployment with the default for
// its replication (32 on a single node) and adopts an existing deployment's count; a named count
// must match it.
func TestShardCountDefault(t *testing.T) {
	quiet := slog.New(slog.NewTextHandler(io.Discard, nil))
	ctx := context.Background()
	fresh := t.TempDir()
	b, err := bus.Open(ctx, bus.Config{DataDir: fresh, Logger: quiet})
	if err != nil {
		t.Fatal(err)
	}
	if n, want := b.InboxShards(), bus.DefaultInboxShards(1); n != want || want != 32 {
		t.Fatalf("a new single node has %d inbox shards, want %d (32)", n, want)
	}
	if _, err := b.JS().Stream(ctx, bus.InboxStreamName(31)); err != nil {
		t.Fatalf("stream of shard 31: %v", err)
	}
	b.Close()
	if b, err = bus.Open(ctx, bus.Config{DataDir: fresh, Logger: quiet}); err != nil || b.InboxShards() != 32 {
		t.Fatalf("reopen without a count: %v", err)
	}
	b.Close()
	if b2, err := bus.Open(ctx, bus.Config{DataDir: fresh, InboxShards: 16, Logger: quiet}); err == nil {
		b2.Close()
		t.Fatal("a named count of 16 accepted on a deployment of 32")
	} else if !strings.Contains(err.Error(), "set inbox_shards = 32") {
		t.Fatalf("the refusal does not say what to set: %v", err)
	}

	// A deployment created with 4 (an older default, or a named count): a node that names
	// none keeps 4, and a device's inbox subject is the one it was stored under.
	old := t.TempDir()
	b, err = bus.Open(ctx, bus.Config{DataDir: old, InboxShards: 4, Logger: quiet})
	if err != nil {
		t.Fatal(err)
	}
	subject := b.InboxSubject("0123456789abcdef0123456789abcdef")
	b.Close()
	b, err = bus.Open(ctx, bus.Config{DataDir: old, Logger: quiet})
	if err != nil {
		t.Fatal(err)
	}
	if n := b.InboxShards(); n != 4 {
		t.Fatalf("reopened without a count: %d inbox shards, want the deployment's 4", n)
	}
	if got := b.InboxSubject("0123456789abcdef0123456789abcdef"); got != subject {
		t.Fatalf("inbox subject %s, was %s", got, subject)
	}
	if _, err := b.JS().Stream(ctx, bus.InboxStreamName(4)); err == nil {
		t.Fatal("a fifth inbox stream was created")
	}

	// The count a node ends with is checked against the byte caps the store must reserve for
	// every shard: 4 × 16 MiB fit a 64 MiB store, 32 × 4 MiB do not.
	b.Close()
	b3, err := bus.Open(ctx, bus.Config{DataDir: old, InboxStreamMaxBytes: 16 << 20, StoreMaxBytes: 64 << 20, Logger: quiet})
	if err != nil {
		t.Fatalf("4 shards × 16 MiB in a 64 MiB store: %v", err)
	}
	b3.Close()
	if _, err := bus.Open(ctx, bus.Config{DataDir: fresh, InboxStreamMaxBytes: 4 << 20, StoreMaxBytes: 64 << 20, Logger: quiet}); err == nil || !strings.Contains(err.Error(), "inbox_shards 32") {
		t.Fatalf("32 shards × 4 MiB in a 64 MiB store: want a refusal, got %v", err)
	}
}

// Appends without a dedupe id are never merged with each other (regression: a batch of them was
// acked but only one stored).
func TestStoreWithoutDedupeIDKeepsEveryEnvelope(t *testing.T) {
	b, m := open(t, bus.Config{InboxShards: 1})
	dev := "0123456789abcdef0123456789abcdef"
	const n = 50
	done := make(chan error, n)
	for range n {
		m.Store(dev, "", []byte("x"), func(err error) { done <- err })
	}
	for range n {
		if err := <-done; err != nil {
			t.Fatal(err)
		}
	}
	if got := pending(t, b, dev); got != n {
		t.Fatalf("stored %d envelopes, want %d", got, n)
	}
}
