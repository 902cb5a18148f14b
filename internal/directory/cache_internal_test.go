// Copyright 2026 The Petrel Authors
// SPDX-License-Identifier: Apache-2.0

package directory

import (
	"bytes"
	"context"
	"crypto/ed25519"
	"errors"
	"io"
	"log/slog"
	"testing"

	"github.com/petrelchat/petrel/e2ee"
	"github.com/petrelchat/petrel/internal/bus"
	pb "github.com/petrelchat/petrel/proto/petrel/v1"
)

// A deletion the watch saw outranks a read at or below its revision, not a later one; the
// deletions remembered are bounded.
func TestCacheBuried(t *testing.T) {
	c := newCache[string, int](64 * deletedFraction)
	c.put("a", 1, 0, 1)
	c.bury("a", 5)
	if _, _, ok := c.get("a"); ok {
		t.Fatal("a buried entry is still cached")
	}
	for rev, want := range map[uint64]bool{4: true, 5: true, 6: false} {
		if got := c.buried("a", rev); got != want {
			t.Fatalf("buried(a, %d) = %v", rev, got)
		}
	}
	if c.buried("b", 1) {
		t.Fatal("b was never deleted")
	}
	for i := range 1000 {
		c.bury(string(rune('A'+i)), uint64(i))
	}
	if n := len(c.deleted); n > 64 {
		t.Fatalf("%d deletions remembered, bound is 64", n)
	}
	var nilCache *cache[string, int]
	if nilCache.buried("a", 1) {
		t.Fatal("a nil cache buried something")
	}
}

// An update the watch saw keeps a read of an older revision (a replica behind the update) out of
// the cache, where it would stay stale until the next update; a read of that revision or a later
// one is cached. The updates remembered are bounded.
func TestCacheSkipsReadBehindUpdate(t *testing.T) {
	c := newCache[string, int](64 * deletedFraction)
	c.put("a", 1, 0, 1)
	c.renew("a", 5)
	if _, _, ok := c.get("a"); ok {
		t.Fatal("an updated entry is still cached")
	}
	_, gen, _ := c.get("a")
	c.put("a", 2, gen, 4)
	if _, _, ok := c.get("a"); ok {
		t.Fatal("a read of revision 4 was cached after the watch saw revision 5")
	}
	c.put("a", 3, gen, 5)
	if v, _, ok := c.get("a"); !ok || v != 3 {
		t.Fatalf("a read of revision 5: cached %v %v", v, ok)
	}
	for i := range 1000 {
		c.renew(string(rune('A'+i)), uint64(i))
	}
	if n := len(c.updated); n > 64 {
		t.Fatalf("%d updates remembered, bound is 64", n)
	}
	c.bury("a", 6) // a deletion replaces the update's floor
	if _, ok := c.updated["a"]; ok {
		t.Fatal("a deleted key keeps its update revision")
	}
}

// A device read older than a deletion this node's watch saw does not authenticate: what a replica
// behind the removal would answer.
func TestAuthRefusesReadBehindDeletion(t *testing.T) {
	ctx := context.Background()
	quiet := slog.New(slog.NewTextHandler(io.Discard, nil))
	b, err := bus.Open(ctx, bus.Config{DataDir: t.TempDir(), InboxShards: 1, Logger: quiet})
	if err != nil {
		t.Fatal(err)
	}
	defer b.Close()
	d := New(b, Config{Logger: quiet})
	wctx, cancel := context.WithCancel(ctx)
	defer func() { cancel(); d.Wait() }()
	if err := d.Start(wctx); err != nil {
		t.Fatal(err)
	}
	nonce := bytes.Repeat([]byte{1}, 32)
	priv := ed25519.NewKeyFromSeed(bytes.Repeat([]byte{2}, 32))
	pub := priv.Public().(ed25519.PublicKey)
	ik, err := e2ee.GenerateIdentityKeyPair(nil)
	if err != nil {
		t.Fatal(err)
	}
	spk, err := e2ee.GenerateSignedPreKey(nil, 1, ik)
	if err != nil {
		t.Fatal(err)
	}
	lr, err := e2ee.GenerateKEMPreKey(nil, 1, ik, true)
	if err != nil {
		t.Fatal(err)
	}
	up := &pb.KeyBundleUpload{
		IdentityKey:         ik.PublicKey().Bytes(),
		SignedPrekey:        &pb.SignedPreKey{Id: 1, PublicKey: spk.Public().PublicKey, Signature: spk.Public().Signature},
		LastResortKemPrekey: &pb.KEMPreKey{Id: 1, PublicKey: lr.Public().PublicKey, Signature: lr.Public().Signature, LastResort: true},
	}
	dev, err := d.Register(ctx, &pb.Register{Name: "amy", AuthKey: pub, Keys: up,
		Signature: ed25519.Sign(priv, pb.AuthPayload(nonce, pb.DeviceID(pub)))}, nonce)
	if err != nil {
		t.Fatal(err)
	}
	e, err := b.Devices.Get(ctx, dev.ID)
	if err != nil {
		t.Fatal(err)
	}
	k, _ := parseDeviceKey(dev.ID)
	d.auth.bury(k, e.Revision()) // as if the watch had seen a deletion the read does not reflect
	sig := ed25519.Sign(priv, pb.AuthPayload(nonce, dev.ID))
	if _, err := d.Authenticate(ctx, dev.ID, nonce, sig); !errors.Is(err, ErrAuthFailed) {
		t.Fatalf("a read behind a deletion authenticated: %v", err)
	}
	if _, _, ok := d.auth.get(k); ok {
		t.Fatal("a read behind a deletion was cached")
	}
	// The record written again after the deletion (a later revision) is the truth.
	if _, err := b.Devices.Put(ctx, dev.ID, e.Value()); err != nil {
		t.Fatal(err)
	}
	if _, err := d.Authenticate(ctx, dev.ID, nonce, sig); err != nil {
		t.Fatalf("a record newer than the deletion: %v", err)
	}
}
