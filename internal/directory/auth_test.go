// Copyright 2026 The Petrel Authors
// SPDX-License-Identifier: Apache-2.0

package directory_test

import (
	"bytes"
	"context"
	"crypto/ed25519"
	"encoding/json"
	"errors"
	"fmt"
	"io"
	"log/slog"
	"testing"
	"time"

	"github.com/prometheus/client_golang/prometheus"

	"github.com/petrelchat/petrel/e2ee"
	"github.com/petrelchat/petrel/internal/bus"
	"github.com/petrelchat/petrel/internal/directory"
	"github.com/petrelchat/petrel/internal/metricstest"
	"github.com/petrelchat/petrel/internal/testserver"
	pb "github.com/petrelchat/petrel/proto/petrel/v1"
)

// openBus opens a fresh bus with one inbox shard per test; it closes with the test.
func openBus(t testing.TB, shards int) (*bus.Bus, *slog.Logger) {
	t.Helper()
	quiet := slog.New(slog.NewTextHandler(io.Discard, nil))
	b, err := bus.Open(context.Background(), bus.Config{DataDir: t.TempDir(), InboxShards: shards, Logger: quiet})
	if err != nil {
		t.Fatal(err)
	}
	t.Cleanup(b.Close)
	return b, quiet
}

// startedDir opens a directory on a fresh bus and starts its watches; they end with the test.
func startedDir(t testing.TB, cfg directory.Config) (*directory.Directory, *bus.Bus) {
	t.Helper()
	b, quiet := openBus(t, 1)
	cfg.Logger = quiet
	d := directory.New(b, cfg)
	ctx, cancel := context.WithCancel(context.Background())
	t.Cleanup(func() { cancel(); d.Wait() })
	if err := d.Start(ctx); err != nil {
		t.Fatal(err)
	}
	return d, b
}

// registered is a device registered in a test, with its keys.
type registered struct {
	id   string
	priv ed25519.PrivateKey
	keys *testserver.Keys
}

// register registers name with n one-time prekeys of each kind.
func register(t *testing.T, d *directory.Directory, name string, seed byte, n int) registered {
	t.Helper()
	nonce := bytes.Repeat([]byte{seed}, 32)
	priv := ed25519.NewKeyFromSeed(bytes.Repeat([]byte{seed}, 32))
	pub := priv.Public().(ed25519.PublicKey)
	keys, up := testserver.NewKeys(t, n)
	dev, err := d.Register(context.Background(), &pb.Register{
		Name: name, AuthKey: pub, Keys: up,
		Signature: ed25519.Sign(priv, pb.AuthPayload(nonce, pb.DeviceID(pub))),
	}, nonce)
	if err != nil {
		t.Fatal(err)
	}
	return registered{id: dev.ID, priv: priv, keys: keys}
}

func (r registered) sign(nonce []byte) []byte {
	return ed25519.Sign(r.priv, pb.AuthPayload(nonce, r.id))
}

// waitUncached waits until the watch has dropped id from the auth cache.
func waitUncached(t *testing.T, d *directory.Directory, id string) {
	t.Helper()
	tick := time.NewTicker(time.Millisecond)
	defer tick.Stop()
	deadline := time.After(10 * time.Second)
	for d.AuthCachedForTest(id) {
		select {
		case <-tick.C:
		case <-deadline:
			t.Fatalf("device %s is still cached", id)
		}
	}
}

// wantPrincipal checks p against the stored device record.
func wantPrincipal(t *testing.T, d *directory.Directory, p directory.Principal, id string) {
	t.Helper()
	dev, err := d.Device(context.Background(), id)
	if err != nil {
		t.Fatal(err)
	}
	want := dev.Principal()
	if p.ID != want.ID || p.Name != want.Name || !p.SignedPreKeyCreated.Equal(want.SignedPreKeyCreated) {
		t.Fatalf("principal %+v, want %+v", p, want)
	}
}

func TestAuthenticateCache(t *testing.T) {
	ctx := context.Background()
	d, b := startedDir(t, directory.Config{})
	nonce := bytes.Repeat([]byte{0x5a}, 32)
	amy := register(t, d, "amy", 11, 1)

	t.Run("miss then hit", func(t *testing.T) {
		if d.AuthCachedForTest(amy.id) {
			t.Fatal("cached before the first authentication")
		}
		p, err := d.Authenticate(ctx, amy.id, nonce, amy.sign(nonce))
		if err != nil {
			t.Fatalf("miss: %v", err)
		}
		wantPrincipal(t, d, p, amy.id)
		if !d.AuthCachedForTest(amy.id) {
			t.Fatal("not cached after a miss")
		}
		p, err = d.Authenticate(ctx, amy.id, nonce, amy.sign(nonce))
		if err != nil {
			t.Fatalf("hit: %v", err)
		}
		wantPrincipal(t, d, p, amy.id)
	})

	t.Run("refusals", func(t *testing.T) {
		if !d.AuthCachedForTest(amy.id) {
			t.Fatal("these refusals must be tested on a cache hit")
		}
		bad := amy.sign(nonce)
		bad[0] ^= 1
		other := bytes.Repeat([]byte{0x5b}, 32)
		_, otherPriv, _ := ed25519.GenerateKey(nil)
		for _, tc := range []struct {
			name  string
			id    string
			nonce []byte
			sig   []byte
		}{
			{name: "flipped signature", id: amy.id, nonce: nonce, sig: bad},
			{name: "signature over another nonce", id: amy.id, nonce: nonce, sig: amy.sign(other)},
			{name: "signature by another key", id: amy.id, nonce: nonce, sig: ed25519.Sign(otherPriv, pb.AuthPayload(nonce, amy.id))},
			{name: "no signature", id: amy.id, nonce: nonce},
			{name: "unknown device", id: "0123456789abcdef0123456789abcdef", nonce: nonce, sig: amy.sign(nonce)},
			{name: "malformed device id", id: "AMY", nonce: nonce, sig: amy.sign(nonce)},
			{name: "upper-case device id", id: string(bytes.ToUpper([]byte(amy.id))), nonce: nonce, sig: amy.sign(nonce)},
		} {
			t.Run(tc.name, func(t *testing.T) {
				if _, err := d.Authenticate(ctx, tc.id, tc.nonce, tc.sig); !errors.Is(err, directory.ErrAuthFailed) {
					t.Fatalf("got %v, want ErrAuthFailed", err)
				}
			})
		}
		if d.AuthCachedForTest("0123456789abcdef0123456789abcdef") {
			t.Fatal("an unknown device was cached")
		}
	})

	t.Run("signed prekey rotation invalidates", func(t *testing.T) {
		before, err := d.Authenticate(ctx, amy.id, nonce, amy.sign(nonce))
		if err != nil {
			t.Fatal(err)
		}
		spk, err := e2ee.GenerateSignedPreKey(nil, 2, amy.keys.Identity)
		if err != nil {
			t.Fatal(err)
		}
		pub := spk.Public()
		if _, err := d.UploadPreKeys(ctx, amy.id, &pb.KeyBundleUpload{SignedPrekey: &pb.SignedPreKey{Id: pub.ID, PublicKey: pub.PublicKey, Signature: pub.Signature}}); err != nil {
			t.Fatal(err)
		}
		waitUncached(t, d, amy.id)
		after, err := d.Authenticate(ctx, amy.id, nonce, amy.sign(nonce))
		if err != nil {
			t.Fatal(err)
		}
		wantPrincipal(t, d, after, amy.id)
		if !after.SignedPreKeyCreated.After(before.SignedPreKeyCreated) {
			t.Fatalf("signed prekey created %v, was %v", after.SignedPreKeyCreated, before.SignedPreKeyCreated)
		}
	})

	t.Run("auth key replaced elsewhere", func(t *testing.T) {
		// Another node rewrites the record with a new auth key: the old key must stop working.
		if _, err := d.Authenticate(ctx, amy.id, nonce, amy.sign(nonce)); err != nil || !d.AuthCachedForTest(amy.id) {
			t.Fatalf("not cached: %v", err)
		}
		e, err := b.Devices.Get(ctx, amy.id)
		if err != nil {
			t.Fatal(err)
		}
		var rec map[string]any
		if err := json.Unmarshal(e.Value(), &rec); err != nil {
			t.Fatal(err)
		}
		newPriv := ed25519.NewKeyFromSeed(bytes.Repeat([]byte{99}, 32))
		rec["auth_key"] = []byte(newPriv.Public().(ed25519.PublicKey))
		raw, _ := json.Marshal(rec)
		if _, err := b.Devices.Put(ctx, amy.id, raw); err != nil {
			t.Fatal(err)
		}
		waitUncached(t, d, amy.id)
		if _, err := d.Authenticate(ctx, amy.id, nonce, amy.sign(nonce)); !errors.Is(err, directory.ErrAuthFailed) {
			t.Fatalf("old key after replacement: %v", err)
		}
		if _, err := d.Authenticate(ctx, amy.id, nonce, ed25519.Sign(newPriv, pb.AuthPayload(nonce, amy.id))); err != nil {
			t.Fatalf("new key: %v", err)
		}
	})

	t.Run("device deleted elsewhere", func(t *testing.T) {
		if _, err := d.Authenticate(ctx, amy.id, nonce, ed25519.Sign(ed25519.NewKeyFromSeed(bytes.Repeat([]byte{99}, 32)), pb.AuthPayload(nonce, amy.id))); err != nil || !d.AuthCachedForTest(amy.id) {
			t.Fatalf("not cached: %v", err)
		}
		if err := b.Devices.Delete(ctx, amy.id); err != nil {
			t.Fatal(err)
		}
		waitUncached(t, d, amy.id)
		if _, err := d.Authenticate(ctx, amy.id, nonce, amy.sign(nonce)); !errors.Is(err, directory.ErrAuthFailed) {
			t.Fatalf("deleted device: %v", err)
		}
	})
}

// The auth cache holds at most DeviceCacheSize devices, and evicted ones still authenticate.
func TestAuthCacheBounded(t *testing.T) {
	ctx := context.Background()
	d, _ := startedDir(t, directory.Config{DeviceCacheSize: 2})
	nonce := bytes.Repeat([]byte{0x33}, 32)
	var devs []registered
	for i := range 5 {
		devs = append(devs, register(t, d, fmt.Sprintf("dev%d", i), byte(20+i), 0))
	}
	for range 2 {
		for _, r := range devs {
			p, err := d.Authenticate(ctx, r.id, nonce, r.sign(nonce))
			if err != nil {
				t.Fatal(err)
			}
			wantPrincipal(t, d, p, r.id)
			if n := d.AuthCacheLenForTest(); n > 2 {
				t.Fatalf("%d devices cached, bound is 2", n)
			}
		}
	}
	if !d.AuthCachedForTest(devs[len(devs)-1].id) {
		t.Fatal("the last device authenticated is not cached")
	}
}

// Once the watches end, nothing keeps the caches correct: they are not used any more.
func TestAuthCacheOffWhenWatchEnds(t *testing.T) {
	b, quiet := openBus(t, 1)
	d := directory.New(b, directory.Config{Logger: quiet})
	ctx, cancel := context.WithCancel(context.Background())
	if err := d.Start(ctx); err != nil {
		t.Fatal(err)
	}
	nonce := bytes.Repeat([]byte{0x44}, 32)
	r := register(t, d, "ivy", 40, 0)
	// An authentication whose read raced with the watch's event of the registration is not
	// cached (the generation check): authenticate until one is.
	deadline := time.Now().Add(10 * time.Second)
	for !d.AuthCachedForTest(r.id) {
		if _, err := d.Authenticate(context.Background(), r.id, nonce, r.sign(nonce)); err != nil || time.Now().After(deadline) {
			t.Fatalf("not cached: %v", err)
		}
	}
	cancel()
	d.Wait()
	if n := d.AuthCacheLenForTest(); n != 0 {
		t.Fatalf("%d devices cached after the watch ended", n)
	}
	if err := b.Devices.Delete(context.Background(), r.id); err != nil {
		t.Fatal(err)
	}
	if _, err := d.Authenticate(context.Background(), r.id, nonce, r.sign(nonce)); !errors.Is(err, directory.ErrAuthFailed) {
		t.Fatalf("a deleted device authenticated after the watch ended: %v", err)
	}
}

// Status counts exactly what is left of each kind, through uploads and claims, next to other
// devices' keys: from the stream's subject index (stream info), and the same with direct gets,
// its fallback when the stream's leader does not answer (here: an API subject that answers an
// error, and one nobody answers), which is counted and then used for a while without asking.
func TestStatusCounts(t *testing.T) {
	ctx := context.Background()
	d, _ := startedDir(t, directory.Config{})
	nonce := bytes.Repeat([]byte{0x66}, 32)
	other := register(t, d, "other", 50, 4) // keys before and after ours in the stream
	bo := register(t, d, "bo", 51, 0)
	p, err := d.Authenticate(ctx, bo.id, nonce, bo.sign(nonce))
	if err != nil {
		t.Fatal(err)
	}
	checks := 0
	check := func(t *testing.T, p directory.Principal, otk, kem uint32) {
		t.Helper()
		checks++
		direct := d.PreKeyCountsDirectForTest()
		for _, how := range []string{"stream info", "direct gets after an error answer", "direct gets in the backoff", "direct gets after no answer"} {
			switch how {
			case "direct gets after an error answer":
				d.SetPreKeyTotalsSubjectForTest(t, "$JS.API.STREAM.INFO.NO_SUCH_STREAM")
			case "direct gets after no answer":
				d.SetPreKeyTotalsSubjectForTest(t, "petrel.test.nobody")
			}
			st, err := d.Status(ctx, p)
			if err != nil {
				t.Fatalf("%s: %v", how, err)
			}
			if st.GetOneTimePrekeysLeft() != otk || st.GetKemPrekeysLeft() != kem {
				t.Fatalf("%s: %s: %d one-time and %d KEM prekeys left, want %d and %d", how, p.Name, st.GetOneTimePrekeysLeft(), st.GetKemPrekeysLeft(), otk, kem)
			}
			if st.GetSignedPrekeyCreatedMs() != p.SignedPreKeyCreated.UnixMilli() {
				t.Fatalf("%s: signed prekey created %d, want %d", how, st.GetSignedPrekeyCreatedMs(), p.SignedPreKeyCreated.UnixMilli())
			}
		}
		d.SetPreKeyTotalsSubjectForTest(t, "")
		if got := d.PreKeyCountsDirectForTest() - direct; got != 3 {
			t.Fatalf("%v counts by direct gets, want 3 (all but the stream info's)", got)
		}
	}
	check(t, p, 0, 0)

	// Upload 7 one-time and 5 KEM prekeys, in two uploads.
	upload := func(firstID uint32, otk, kem int) *pb.PreKeyStatus {
		t.Helper()
		st, err := uploadPreKeys(t, d, bo, firstID, otk, kem)
		if err != nil {
			t.Fatal(err)
		}
		return st
	}
	if st := upload(10, 4, 2); st.GetOneTimePrekeysLeft() != 4 || st.GetKemPrekeysLeft() != 2 {
		t.Fatalf("after the first upload: %v", st)
	}
	register(t, d, "later", 52, 3) // more keys of another device after ours
	if st := upload(20, 3, 3); st.GetOneTimePrekeysLeft() != 7 || st.GetKemPrekeysLeft() != 5 {
		t.Fatalf("after the second upload: %v", st)
	}
	check(t, p, 7, 5)

	// Each bundle fetch claims one of each kind; the KEM prekeys run out first.
	for i := 1; i <= 8; i++ {
		if _, err := d.Bundles(ctx, fmt.Sprintf("%032x", i), "bo", nil); err != nil { // a new requester each time
			t.Fatal(err)
		}
		check(t, p, uint32(max(7-i, 0)), uint32(max(5-i, 0)))
	}
	// Claiming the other device's keys leaves ours alone, and the other device counts right.
	if _, err := d.Bundles(ctx, fmt.Sprintf("%032x", 99), "other", nil); err != nil {
		t.Fatal(err)
	}
	op, err := d.Authenticate(ctx, other.id, nonce, other.sign(nonce))
	if err != nil {
		t.Fatal(err)
	}
	check(t, op, 3, 3)
	check(t, p, 0, 0)
}

// uploadPreKeys uploads otk one-time and kem KEM prekeys of dev, with ids from firstID.
func uploadPreKeys(t *testing.T, d *directory.Directory, dev registered, firstID uint32, otk, kem int) (*pb.PreKeyStatus, error) {
	t.Helper()
	up := &pb.KeyBundleUpload{}
	ots, err := e2ee.GenerateOneTimePreKeys(nil, firstID, otk)
	if err != nil {
		t.Fatal(err)
	}
	for _, o := range ots {
		up.OneTimePrekeys = append(up.OneTimePrekeys, &pb.OneTimePreKey{Id: o.Public().ID, PublicKey: o.Public().PublicKey})
	}
	for i := range kem {
		k, err := e2ee.GenerateKEMPreKey(nil, firstID+uint32(i), dev.keys.Identity, false)
		if err != nil {
			t.Fatal(err)
		}
		pk := k.Public()
		up.KemPrekeys = append(up.KemPrekeys, &pb.KEMPreKey{Id: pk.ID, PublicKey: pk.PublicKey, Signature: pk.Signature})
	}
	return d.UploadPreKeys(context.Background(), dev.id, up)
}

// An upload past the cap of stored prekeys (of either kind) is refused whole: neither kind is
// stored, so a client that retries with fewer keys does not end with a half upload.
func TestUploadPreKeysCap(t *testing.T) {
	ctx := context.Background()
	d, _ := startedDir(t, directory.Config{})
	cy := register(t, d, "cy", 53, 0)
	nonce := bytes.Repeat([]byte{0x67}, 32)
	p, err := d.Authenticate(ctx, cy.id, nonce, cy.sign(nonce))
	if err != nil {
		t.Fatal(err)
	}
	for i := range directory.MaxPreKeysStored / directory.MaxPreKeysPerUpload {
		if _, err := uploadPreKeys(t, d, cy, uint32(1+i*directory.MaxPreKeysPerUpload), 0, directory.MaxPreKeysPerUpload); err != nil {
			t.Fatal(err)
		}
	}
	_, err = uploadPreKeys(t, d, cy, 5000, 3, 1)
	if !errors.Is(err, directory.ErrTooManyPreKeys) {
		t.Fatalf("one KEM prekey past the cap: %v, want ErrTooManyPreKeys", err)
	}
	st, err := d.Status(ctx, p)
	if err != nil {
		t.Fatal(err)
	}
	if st.GetOneTimePrekeysLeft() != 0 || st.GetKemPrekeysLeft() != directory.MaxPreKeysStored {
		t.Fatalf("after the refused upload: %d one-time and %d KEM prekeys, want 0 and %d", st.GetOneTimePrekeysLeft(), st.GetKemPrekeysLeft(), directory.MaxPreKeysStored)
	}
	if st, err := uploadPreKeys(t, d, cy, 6000, 3, 0); err != nil || st.GetOneTimePrekeysLeft() != 3 {
		t.Fatalf("one-time prekeys alone: %v, %v", st, err)
	}
}

// A replica that cannot serve a direct get answers it "not found" (nats-server does so for any
// error loading the message, e.g. its store closing on a node being stopped): the directory
// confirms a missing device or account record with the bucket stream's leader before it refuses
// a device or a user as unknown. Seen in CI: a device moving off a draining node was refused as
// unknown (auth_failed) by another node, and its client gave up. A device or user that does not
// exist is still refused, each confirmed read is counted, and a registration's prechecks (a
// create follows) are not confirmed.
func TestReadsConfirmNotFoundWithLeader(t *testing.T) {
	ctx := context.Background()
	d0, b := startedDir(t, directory.Config{})
	amy := register(t, d0, "amy", 12, 1)
	// A second directory on the same bus, as another node's: nothing of amy cached.
	reg := prometheus.NewRegistry()
	d := directory.New(b, directory.Config{Registry: reg, Logger: slog.New(slog.NewTextHandler(io.Discard, nil))})
	ctx2, cancel := context.WithCancel(ctx)
	t.Cleanup(func() { cancel(); d.Wait() })
	if err := d.Start(ctx2); err != nil {
		t.Fatal(err)
	}
	if d.AuthCachedForTest(amy.id) || d.AccountCachedForTest("amy") {
		t.Fatal("amy is cached on a directory that never read her")
	}
	nonce := bytes.Repeat([]byte{0x5b}, 32)
	directory.SetDirectNotFoundForTest(t, func(key string) bool { return key == amy.id || key == "amy" })

	p, err := d.Authenticate(ctx, amy.id, nonce, amy.sign(nonce))
	if err != nil {
		t.Fatalf("a registered device whose direct get answered not found: %v", err)
	}
	if p.ID != amy.id || p.Name != "amy" {
		t.Fatalf("principal %+v", p)
	}
	if dev, err := d.Device(ctx, amy.id); err != nil || dev.ID != amy.id {
		t.Fatalf("Device of a registered device whose direct get answered not found: %v, %v", dev, err)
	}
	// A registration's prechecks do not ask the leader: the create that follows refuses the
	// taken name itself.
	priv := ed25519.NewKeyFromSeed(bytes.Repeat([]byte{13}, 32))
	pub := priv.Public().(ed25519.PublicKey)
	_, up := testserver.NewKeys(t, 1)
	if _, err := d.Register(ctx, &pb.Register{Name: "amy", AuthKey: pub, Keys: up,
		Signature: ed25519.Sign(priv, pb.AuthPayload(nonce, pb.DeviceID(pub)))}, nonce); !errors.Is(err, directory.ErrNameTaken) {
		t.Fatalf("registering the taken name amy: %v, want ErrNameTaken", err)
	}
	if n := counterValue(t, reg, "petrel_directory_reads_confirmed_total", "accounts"); n != 0 {
		t.Fatalf("a registration's precheck asked the leader (%v confirmed reads in accounts)", n)
	}
	if acc, err := d.Account(ctx, "amy"); err != nil || acc.Name != "amy" {
		t.Fatalf("an account whose direct get answered not found: %v, %v", acc, err)
	}
	if _, err := d.Authenticate(ctx, "0123456789abcdef0123456789abcdef", nonce, amy.sign(nonce)); !errors.Is(err, directory.ErrAuthFailed) {
		t.Fatalf("an unknown device: %v, want ErrAuthFailed", err)
	}
	if _, err := d.Account(ctx, "nobody"); !errors.Is(err, directory.ErrUnknownUser) {
		t.Fatalf("an unknown user: %v, want ErrUnknownUser", err)
	}
	if n := counterValue(t, reg, "petrel_directory_reads_confirmed_total", "devices"); n != 2 {
		t.Fatalf("reads confirmed in devices: %v, want 2 (Authenticate, Device)", n)
	}
	if n := counterValue(t, reg, "petrel_directory_reads_confirmed_total", "accounts"); n != 1 {
		t.Fatalf("reads confirmed in accounts: %v, want 1", n)
	}
}

// counterValue is the value of the counter name{bucket=bucket} in reg.
func counterValue(t *testing.T, reg *prometheus.Registry, name, bucket string) float64 {
	t.Helper()
	v, ok, err := metricstest.Counter(reg, name, "bucket", bucket)
	if err != nil || !ok {
		t.Fatalf("counter %s{bucket=%q}: found %v, %v", name, bucket, ok, err)
	}
	return v
}
