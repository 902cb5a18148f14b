// Copyright 2026 The Petrel Authors
// SPDX-License-Identifier: Apache-2.0

package bus_test

import (
	"bytes"
	"context"
	"log/slog"
	"strings"
	"testing"

	"github.com/nats-io/nats.go/jetstream"

	"github.com/petrelchat/petrel/internal/bus"
)

// Buckets written by the previous release (through the KV API, then atomic publish switched on)
// are accepted as they are by the create-or-check migrations: a restart rewrites nothing.
func TestMigrationsAcceptPreviousBuckets(t *testing.T) {
	dir := t.TempDir()
	ctx := context.Background()
	b, err := bus.Open(ctx, bus.Config{DataDir: dir, InboxShards: 2, Name: "m1"})
	if err != nil {
		t.Fatal(err)
	}
	js := b.JS()
	for _, c := range []struct {
		cfg    jetstream.KeyValueConfig
		atomic bool
	}{
		{jetstream.KeyValueConfig{Bucket: bus.MetaBucket, Description: "petrel deployment facts", History: 1}, false},
		{jetstream.KeyValueConfig{Bucket: bus.AccountsBucket, Description: "account name → account", History: 1}, true},
		{jetstream.KeyValueConfig{Bucket: bus.DevicesBucket, Description: "device id → device keys", History: 1}, true},
		{jetstream.KeyValueConfig{Bucket: bus.InvitesBucket, Description: "one-time invite codes", History: 1, TTL: bus.InviteTTL}, false},
	} {
		c.cfg.Replicas, c.cfg.Storage = 1, jetstream.FileStorage
		if _, err := js.CreateOrUpdateKeyValue(ctx, c.cfg); err != nil {
			t.Fatalf("%s: %v", c.cfg.Bucket, err)
		}
		if c.atomic {
			s, err := js.Stream(ctx, "KV_"+c.cfg.Bucket)
			if err != nil {
				t.Fatal(err)
			}
			sc := s.CachedInfo().Config
			sc.AllowAtomicPublish = true
			if _, err := js.UpdateStream(ctx, sc); err != nil {
				t.Fatal(err)
			}
		}
	}
	b.Close()

	var log bytes.Buffer
	b, err = bus.Open(ctx, bus.Config{DataDir: dir, InboxShards: 2, Name: "m1", Logger: slog.New(slog.NewTextHandler(&log, nil))})
	if err != nil {
		t.Fatalf("reopen: %v", err)
	}
	defer b.Close()
	if strings.Contains(log.String(), "updating") {
		t.Fatalf("a restart rewrote streams:\n%s", log.String())
	}
	s, err := b.JS().Stream(ctx, "KV_"+bus.AccountsBucket)
	if err != nil || !s.CachedInfo().Config.AllowAtomicPublish {
		t.Fatalf("accounts bucket: atomic publish lost (%v)", err)
	}
}
