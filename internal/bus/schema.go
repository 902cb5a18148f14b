// Copyright 2026 The Petrel Authors
// SPDX-License-Identifier: Apache-2.0

package bus

import (
	"context"
	"errors"
	"fmt"
	"hash/fnv"
	"time"

	"github.com/nats-io/nats.go/jetstream"
)

// Stream, bucket and subject names. These are a storage format: never rename one in place.
const (
	AccountsBucket = "accounts"
	DevicesBucket  = "devices"
	InvitesBucket  = "invites"
	MetaBucket     = "petrel_meta"
	PreKeysStream  = "PREKEYS"
	inboxStreamFmt = "INBOX_%02d"

	// InviteTTL is how long an unused invite code stays valid.
	InviteTTL = 7 * 24 * time.Hour
)

// InboxStreamName is the stream of a shard.
func InboxStreamName(shard int) string { return fmt.Sprintf(inboxStreamFmt, shard) }

// Shard maps a device id to its inbox shard.
func (b *Bus) Shard(deviceID string) int {
	h := fnv.New32a()
	h.Write([]byte(deviceID))
	return int(h.Sum32() % uint32(b.cfg.InboxShards))
}

// InboxSubject is the subject of a device's inbox: inbox.<shard>.<device>.
func (b *Bus) InboxSubject(deviceID string) string {
	return fmt.Sprintf("inbox.%02d.%s", b.Shard(deviceID), deviceID)
}

// DeviceSubject carries live deliveries, wake-ups and takeovers for a connected device.
func DeviceSubject(deviceID string) string { return "dev." + deviceID }

// OneTimePreKeySubject and KEMPreKeySubject hold a device's unclaimed one-time prekeys.
func OneTimePreKeySubject(deviceID string) string { return "prekeys.otk." + deviceID }

// KEMPreKeySubject holds a device's unclaimed one-time ML-KEM prekeys.
func KEMPreKeySubject(deviceID string) string { return "prekeys.kem." + deviceID }

// migrate creates what is missing and updates what may be updated. It never deletes a stream or
// bucket, and it refuses a change of the inbox shard count.
func (b *Bus) migrate(ctx context.Context) error {
	ctx, cancel := context.WithTimeout(ctx, 60*time.Second)
	defer cancel()
	r := b.cfg.Replicas

	kv := func(cfg jetstream.KeyValueConfig) (jetstream.KeyValue, error) {
		cfg.Replicas = r
		cfg.Storage = jetstream.FileStorage
		s, err := b.js.CreateOrUpdateKeyValue(ctx, cfg)
		if err != nil {
			return nil, fmt.Errorf("bucket %s: %w", cfg.Bucket, err)
		}
		return s, nil
	}
	meta, err := kv(jetstream.KeyValueConfig{Bucket: MetaBucket, Description: "petrel deployment facts", History: 1})
	if err != nil {
		return err
	}
	if err := b.checkShards(ctx, meta); err != nil {
		return err
	}
	if b.Accounts, err = kv(jetstream.KeyValueConfig{Bucket: AccountsBucket, Description: "account name → account", History: 1}); err != nil {
		return err
	}
	if b.Devices, err = kv(jetstream.KeyValueConfig{Bucket: DevicesBucket, Description: "device id → device keys", History: 1}); err != nil {
		return err
	}
	// Bulk registration writes many records of these two buckets as one atomic batch.
	for _, bucket := range []string{AccountsBucket, DevicesBucket} {
		if err := b.allowAtomicPublish(ctx, "KV_"+bucket); err != nil {
			return err
		}
	}
	if b.Invites, err = kv(jetstream.KeyValueConfig{Bucket: InvitesBucket, Description: "one-time invite codes", History: 1, TTL: InviteTTL}); err != nil {
		return err
	}
	b.PreKeys, err = b.js.CreateOrUpdateStream(ctx, jetstream.StreamConfig{
		Name:                 PreKeysStream,
		Description:          "unclaimed one-time prekeys, claimed by get-then-delete",
		Subjects:             []string{"prekeys.otk.*", "prekeys.kem.*"},
		Storage:              jetstream.FileStorage,
		Replicas:             r,
		MaxMsgsPerSubject:    1000,
		Discard:              jetstream.DiscardNew,
		DiscardNewPerSubject: true,
		AllowDirect:          true,
		AllowAtomicPublish:   true,
	})
	if err != nil {
		return fmt.Errorf("stream %s: %w", PreKeysStream, err)
	}
	b.inboxes = make([]jetstream.Stream, b.cfg.InboxShards)
	maxBytes := b.cfg.InboxStreamMaxBytes
	if maxBytes <= 0 {
		maxBytes = -1 // no cap of the stream's own
	}
	for i := range b.inboxes {
		name := InboxStreamName(i)
		s, err := b.js.CreateOrUpdateStream(ctx, jetstream.StreamConfig{
			Name:                 name,
			Description:          "device inboxes (store-and-forward), subject inbox.<shard>.<device>",
			Subjects:             []string{fmt.Sprintf("inbox.%02d.*", i)},
			Storage:              jetstream.FileStorage,
			Replicas:             r,
			MaxAge:               b.cfg.InboxMaxAge,
			MaxMsgsPerSubject:    b.cfg.InboxMaxPerDevice,
			MaxBytes:             maxBytes,
			Discard:              jetstream.DiscardNew,
			DiscardNewPerSubject: true,
			Duplicates:           b.cfg.DuplicateWindow,
			AllowDirect:          true,
			AllowAtomicPublish:   true,
		})
		if err != nil {
			return fmt.Errorf("stream %s: %w", name, err)
		}
		b.inboxes[i] = s
	}
	return nil
}

// allowAtomicPublish turns on atomic batch publishing for stream (a KV bucket's stream, whose
// config the KV API writes without it).
func (b *Bus) allowAtomicPublish(ctx context.Context, stream string) error {
	s, err := b.js.Stream(ctx, stream)
	if err != nil {
		return fmt.Errorf("stream %s: %w", stream, err)
	}
	cfg := s.CachedInfo().Config
	if cfg.AllowAtomicPublish {
		return nil
	}
	cfg.AllowAtomicPublish = true
	if _, err := b.js.UpdateStream(ctx, cfg); err != nil {
		return fmt.Errorf("stream %s: allow atomic publish: %w", stream, err)
	}
	return nil
}

// checkShards records the shard count on first start and refuses a different one later.
func (b *Bus) checkShards(ctx context.Context, meta jetstream.KeyValue) error {
	want := fmt.Sprint(b.cfg.InboxShards)
	e, err := meta.Get(ctx, "inbox_shards")
	switch {
	case errors.Is(err, jetstream.ErrKeyNotFound):
		_, err = meta.Create(ctx, "inbox_shards", []byte(want))
		if err != nil && !errors.Is(err, jetstream.ErrKeyExists) {
			return fmt.Errorf("record inbox shard count: %w", err)
		}
		if errors.Is(err, jetstream.ErrKeyExists) {
			return b.checkShards(ctx, meta)
		}
		return nil
	case err != nil:
		return fmt.Errorf("read inbox shard count: %w", err)
	case string(e.Value()) != want:
		return fmt.Errorf("inbox_shards is %s but this deployment was created with %s: changing it would orphan stored messages", want, e.Value())
	}
	return nil
}
