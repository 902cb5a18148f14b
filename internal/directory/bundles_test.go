// Copyright 2026 The Petrel Authors
// SPDX-License-Identifier: Apache-2.0

package directory_test

import (
	"context"
	"errors"
	"fmt"
	"sync"
	"testing"
	"time"

	"github.com/petrelchat/petrel/internal/directory"
	pb "github.com/petrelchat/petrel/proto/petrel/v1"
)

// fakeClock is a clock a test moves by hand. Safe for concurrent use.
type fakeClock struct {
	mu sync.Mutex
	t  time.Time
}

func newFakeClock() *fakeClock { return &fakeClock{t: time.Unix(1_800_000_000, 0)} }

func (c *fakeClock) Now() time.Time {
	c.mu.Lock()
	defer c.mu.Unlock()
	return c.t
}

func (c *fakeClock) Add(d time.Duration) {
	c.mu.Lock()
	c.t = c.t.Add(d)
	c.mu.Unlock()
}

// requester is a made-up requester device id.
func requester(i int) string { return fmt.Sprintf("%032x", 0xabc000+i) }

// otkID is the one-time EC prekey id in the first device's bundle of r, or 0 when there is none.
func otkID(t *testing.T, r *pb.BundleResult) uint32 {
	t.Helper()
	if len(r.GetDevices()) != 1 {
		t.Fatalf("want one device bundle, got %d", len(r.GetDevices()))
	}
	return r.GetDevices()[0].GetOneTimePrekey().GetId()
}

// A list of 500 times the same device claims one key of each kind, once.
func TestBundleDuplicateDeviceIDsClaimOnce(t *testing.T) {
	d, _ := startedDir(t, directory.Config{})
	ctx := context.Background()
	v := register(t, d, "victim", 60, 10)
	p := v.principal(t, d)
	ids := make([]string, 500)
	for i := range ids {
		ids[i] = v.id
	}
	r, err := d.Bundles(ctx, requester(1), "victim", ids)
	if err != nil {
		t.Fatal(err)
	}
	if len(r.GetDevices()) != 1 || r.GetDevices()[0].GetOneTimePrekey() == nil {
		t.Fatalf("want one bundle with a one-time prekey, got %d bundles", len(r.GetDevices()))
	}
	left(t, d, p, 9, 9)
	// A device the account does not own is still refused.
	if _, err := d.Bundles(ctx, requester(1), "victim", []string{v.id, requester(7)}); !errors.Is(err, directory.ErrUnknownDevice) {
		t.Fatalf("foreign device id: %v", err)
	}
}

// A requester that asks again within the window gets the bundle without one-time prekeys and
// claims none; after the window it claims new ones.
func TestBundleRepeatClaimsNothing(t *testing.T) {
	clock := newFakeClock()
	d, _ := startedDir(t, directory.Config{Now: clock.Now, BundleCacheTTL: 10 * time.Minute})
	ctx := context.Background()
	v := register(t, d, "victim", 61, 10)
	p := v.principal(t, d)
	first, err := d.Bundles(ctx, requester(1), "victim", nil)
	if err != nil {
		t.Fatal(err)
	}
	want := otkID(t, first)
	if want == 0 || first.GetDevices()[0].GetKemPrekey().GetLastResort() {
		t.Fatal("the first bundle lacks one-time prekeys")
	}
	for i := range 20 {
		again, err := d.Bundles(ctx, requester(1), "victim", []string{v.id})
		if err != nil {
			t.Fatalf("repeat %d: %v", i, err)
		}
		db := again.GetDevices()[0]
		if db.GetOneTimePrekey() != nil || !db.GetKemPrekey().GetLastResort() || db.GetSignedPrekey() == nil {
			t.Fatalf("repeat %d: want the signed and last-resort KEM prekeys only, got %v", i, db)
		}
		clock.Add(20 * time.Second)
	}
	left(t, d, p, 9, 9)
	// Another requester gets another key.
	if other, _ := d.Bundles(ctx, requester(2), "victim", nil); otkID(t, other) == want || otkID(t, other) == 0 {
		t.Fatalf("another requester got one-time prekey %d", otkID(t, other))
	}
	left(t, d, p, 8, 8)
	clock.Add(10 * time.Minute)
	if later, _ := d.Bundles(ctx, requester(1), "victim", nil); otkID(t, later) == want || otkID(t, later) == 0 {
		t.Fatalf("after the window: one-time prekey %d, want a new one", otkID(t, later))
	}
	left(t, d, p, 7, 7)
}

// One requester cannot claim from one device more than the pair limit, nor from more devices
// than its own limit; refusals are RATE_LIMITED with a retry hint and claim nothing.
func TestBundleRequesterAndPairLimits(t *testing.T) {
	clock := newFakeClock()
	d, _ := startedDir(t, directory.Config{Now: clock.Now, BundleCacheTTL: time.Minute,
		ClaimPairBurst: 2, ClaimPairPerMinute: 0.1, ClaimRequesterBurst: 3, ClaimRequesterPerMinute: 0.01})
	ctx := context.Background()
	v := register(t, d, "victim", 62, 10)
	p := v.principal(t, d)
	for i := range 2 {
		if _, err := d.Bundles(ctx, requester(1), "victim", nil); err != nil {
			t.Fatalf("claim %d within the pair burst: %v", i, err)
		}
		clock.Add(time.Minute) // past the answer cache
	}
	_, err := d.Bundles(ctx, requester(1), "victim", nil)
	var rl *directory.RateLimitError
	if !errors.As(err, &rl) || rl.Limit != "pair" || rl.RetryAfter <= 0 || !errors.Is(err, directory.ErrRateLimited) {
		t.Fatalf("third claim from one device: %v, want the pair limit", err)
	}
	left(t, d, p, 8, 8)
	// The requester limit (burst 3, 2 spent): one more device, then refused.
	w := register(t, d, "w1", 63, 3)
	register(t, d, "w2", 64, 3)
	if _, err := d.Bundles(ctx, requester(1), "w1", nil); err != nil {
		t.Fatal(err)
	}
	if _, err := d.Bundles(ctx, requester(1), "w2", nil); !errors.As(err, &rl) || rl.Limit != "requester" {
		t.Fatalf("over the requester limit: %v", err)
	}
	left(t, d, w.principal(t, d), 2, 2)
	// A repeat is not a claim: still answered, from the cache.
	if _, err := d.Bundles(ctx, requester(1), "w1", nil); err != nil {
		t.Fatalf("a cached repeat was limited: %v", err)
	}
}

// Many requesters together cannot claim more of one device's keys than the target limit; beyond
// it bundles carry no one-time prekey but are still answered.
func TestBundleTargetLimitDegrades(t *testing.T) {
	clock := newFakeClock()
	d, _ := startedDir(t, directory.Config{Now: clock.Now, ClaimTargetBurst: 5, ClaimTargetPerMinute: 1})
	ctx := context.Background()
	v := register(t, d, "victim", 65, 20)
	p := v.principal(t, d)
	with := 0
	for i := range 30 {
		r, err := d.Bundles(ctx, requester(100+i), "victim", nil)
		if err != nil {
			t.Fatalf("requester %d: %v", i, err)
		}
		db := r.GetDevices()[0]
		if db.GetOneTimePrekey() != nil {
			with++
		} else if !db.GetKemPrekey().GetLastResort() || db.GetSignedPrekey() == nil {
			t.Fatalf("a degraded bundle lacks the signed or last-resort KEM prekey: %v", db)
		}
	}
	if with != 5 {
		t.Fatalf("%d of 30 requesters got a one-time prekey, want the burst of 5", with)
	}
	left(t, d, p, 15, 15)
	clock.Add(time.Minute)
	if r, _ := d.Bundles(ctx, requester(200), "victim", nil); otkID(t, r) == 0 {
		t.Fatal("no one-time prekey after the target's bucket refilled")
	}
}

func (r registered) principal(t *testing.T, d *directory.Directory) directory.Principal {
	t.Helper()
	nonce := make([]byte, 32)
	p, err := d.Authenticate(context.Background(), r.id, nonce, r.sign(nonce))
	if err != nil {
		t.Fatal(err)
	}
	return p
}

// left fails t unless p has otk one-time EC and kem one-time KEM prekeys left.
func left(t *testing.T, d *directory.Directory, p directory.Principal, otk, kem uint32) {
	t.Helper()
	st, err := d.Status(context.Background(), p)
	if err != nil {
		t.Fatal(err)
	}
	if st.GetOneTimePrekeysLeft() != otk || st.GetKemPrekeysLeft() != kem {
		t.Fatalf("%s: %d one-time and %d KEM prekeys left, want %d and %d", p.Name, st.GetOneTimePrekeysLeft(), st.GetKemPrekeysLeft(), otk, kem)
	}
}
