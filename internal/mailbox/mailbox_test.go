// Copyright 2026 The Petrel Authors
// SPDX-License-Identifier: Apache-2.0

package mailbox_test

import (
	"context"
	"io"
	"log/slog"
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
