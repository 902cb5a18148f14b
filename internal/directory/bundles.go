// Copyright 2026 The Petrel Authors
// SPDX-License-Identifier: Apache-2.0

package directory

import (
	"context"
	"errors"
	"fmt"
	"sync"
	"time"

	"github.com/nats-io/nats.go/jetstream"
	"google.golang.org/protobuf/proto"

	"github.com/petrelchat/petrel/internal/bus"
	"github.com/petrelchat/petrel/internal/keyrate"
	pb "github.com/petrelchat/petrel/proto/petrel/v1"
)

// Fetching a bundle claims one-time prekeys, which the target device has a limited supply of, so
// claims are limited three ways, as Signal-Server limits prekey fetches per requester device and
// target device (its "prekeys" limiter, keyed by requester account and device and target account
// and device: a bucket of 6 regaining one every 10 minutes):
//
//   - per requester device: how many devices' keys one device may claim (refused beyond it);
//   - per requester and target device: how often one device may claim from one device (refused);
//   - per target device: how many of its keys everybody together may claim. Beyond it the bundle
//     is still answered, with the signed prekey and the last-resort ML-KEM prekey only — what a
//     device that has run out of one-time prekeys answers — so a flood against a target cannot
//     make it unreachable, only cost its new sessions their one-time keys for a while.
//
// And a repeat is not a claim: a requester that asks again for a device's bundle within
// BundleCacheTTL gets it without one-time prekeys, and claims none. (Not the keys it got the first
// time: a client asks again when it has lost its session — a reset, a restored store, a changed
// identity — and the target may already have used and deleted those keys, so a session built on
// them could never be decrypted. A bundle without one-time keys always can.)
//
// The limiters and the answer cache live in this process: in a cluster each node keeps its own,
// so a requester that moves between nodes can claim up to once per node and limit.

// Defaults of the claim limits (Config).
const (
	DefaultBundleCacheTTL                                 = 10 * time.Minute
	DefaultBundleCacheSize                                = 200_000
	DefaultClaimRequesterBurst                            = 100
	DefaultClaimRequesterPerMinute                        = 10
	DefaultClaimPairBurst                                 = 6
	DefaultClaimPairPerMinute                             = 0.1
	DefaultClaimTargetBurst                               = 20
	DefaultClaimTargetPerMinute                           = 1
	DefaultClaimLimiterKeys                               = 100_000
	bundleCacheEvictFraction                              = 4 // a full cache frees a quarter at once
	claimLimitRequester, claimLimitPair, claimLimitTarget = "requester", "pair", "target"
)

// ErrRateLimited is the condition of a *RateLimitError.
var ErrRateLimited = errors.New("rate limited")

// RateLimitError refuses a request over a limit; retrying after RetryAfter may succeed.
type RateLimitError struct {
	// Limit names the limit: "requester" or "pair".
	Limit      string
	RetryAfter time.Duration
}

func (e *RateLimitError) Error() string {
	return fmt.Sprintf("too many prekey claims (%s limit), retry in %s", e.Limit, e.RetryAfter.Round(time.Second))
}

// Is makes errors.Is(err, ErrRateLimited) true.
func (e *RateLimitError) Is(target error) bool { return target == ErrRateLimited }

// pairKey is a requester device and a target device.
type pairKey struct{ from, to deviceKey }

// claimLimits are the three limiters of prekey claims.
type claimLimits struct {
	requester *keyrate.Limiter[deviceKey]
	pair      *keyrate.Limiter[pairKey]
	target    *keyrate.Limiter[deviceKey]
}

func newClaimLimits(cfg *Config) *claimLimits {
	lim := func(perMinute, burst float64) keyrate.Config {
		return keyrate.Config{Rate: perMinute / 60, Burst: burst, MaxKeys: cfg.ClaimLimiterKeys, Now: cfg.Now}
	}
	return &claimLimits{
		requester: keyrate.New[deviceKey](lim(cfg.ClaimRequesterPerMinute, cfg.ClaimRequesterBurst)),
		pair:      keyrate.New[pairKey](lim(cfg.ClaimPairPerMinute, cfg.ClaimPairBurst)),
		target:    keyrate.New[deviceKey](lim(cfg.ClaimTargetPerMinute, cfg.ClaimTargetBurst)),
	}
}

// claimedKeys are the one-time prekeys claimed for one device: their encoded protos, nil when
// none.
type claimedKeys struct{ otk, kem []byte }

// answerCache remembers, per requester and target device, that the requester claimed the
// target's one-time prekeys, for BundleCacheTTL. It is bounded: a full cache drops expired
// entries, then random ones. An entry is a 32-byte key and an 8-byte expiry (in the map about
// 64 bytes: 200,000 entries are about 13 MB).
type answerCache struct {
	ttl time.Duration
	max int

	mu sync.Mutex        // guards m
	m  map[pairKey]int64 // expiry, Unix nanoseconds
}

// seen reports whether k claimed within the TTL before now.
func (c *answerCache) seen(k pairKey, now time.Time) bool {
	c.mu.Lock()
	defer c.mu.Unlock()
	exp, ok := c.m[k]
	if ok && now.UnixNano() >= exp {
		delete(c.m, k)
		return false
	}
	return ok
}

// put records a claim of k at now.
func (c *answerCache) put(k pairKey, now time.Time) {
	c.mu.Lock()
	defer c.mu.Unlock()
	if _, ok := c.m[k]; !ok && len(c.m) >= c.max {
		for old, exp := range c.m {
			if now.UnixNano() >= exp {
				delete(c.m, old)
			}
		}
		for old := range c.m { // map order is random
			if len(c.m) <= c.max-c.max/bundleCacheEvictFraction-1 {
				break
			}
			delete(c.m, old)
		}
	}
	c.m[k] = now.Add(c.ttl).UnixNano()
}

func (c *answerCache) len() int {
	c.mu.Lock()
	defer c.mu.Unlock()
	return len(c.m)
}

// Bundles returns a prekey bundle for each requested device of name (all when deviceIDs is empty;
// repeats are ignored), with the account's signed device list when it has one, claiming for each
// device one one-time EC prekey and one one-time KEM prekey when any are left, within the claim
// limits. requester is the asking device: a repeat
// within BundleCacheTTL is answered without one-time prekeys and claims none. Over the requester
// or pair limit the whole request is refused with a *RateLimitError and nothing is claimed.
func (d *Directory) Bundles(ctx context.Context, requester, name string, deviceIDs []string) (*pb.BundleResult, error) {
	from, ok := parseDeviceKey(requester)
	if !ok {
		return nil, fmt.Errorf("%w: malformed requester device id", ErrInvalidRequest)
	}
	acc, err := d.Account(ctx, name)
	if err != nil {
		return nil, err
	}
	want := acc.Devices
	if len(deviceIDs) > 0 {
		// At most one entry per device of the account: a list of 500 times the same device
		// claims one key, once.
		owned := make(map[string]bool, len(acc.Devices))
		for _, id := range acc.Devices {
			owned[id] = true
		}
		want = make([]string, 0, min(len(deviceIDs), len(acc.Devices)))
		for _, id := range deviceIDs {
			unseen, mine := owned[id]
			if !mine {
				return nil, fmt.Errorf("%w: %s has no device %q", ErrUnknownDevice, name, id)
			}
			if unseen {
				owned[id] = false
				want = append(want, id)
			}
		}
	}
	now := d.cfg.Now()
	keys := make([]claimedKeys, len(want))
	targets := make([]deviceKey, len(want))
	var fresh []int // indexes into want without a cached answer
	for i, id := range want {
		to, ok := parseDeviceKey(id)
		if !ok {
			return nil, fmt.Errorf("%w: account %s lists malformed device %q", ErrUnavailable, name, id)
		}
		targets[i] = to
		if d.answers.seen(pairKey{from, to}, now) {
			d.metrics.bundleCached.Inc()
		} else {
			fresh = append(fresh, i)
		}
	}
	withOTK, err := d.admitClaims(from, targets, fresh)
	if err != nil {
		return nil, err
	}
	// The signed device list lets the requester check which devices the primary vouches for.
	res := &pb.BundleResult{Name: name, DeviceList: acc.SignedDeviceList()}
	for i, id := range want {
		dev, _, err := d.device(ctx, id)
		if err != nil {
			return nil, err
		}
		if withOTK[i] {
			if keys[i].kem, err = d.claim(ctx, bus.KEMPreKeySubject(id)); err != nil {
				return nil, err
			}
			if keys[i].otk, err = d.claim(ctx, bus.OneTimePreKeySubject(id)); err != nil {
				return nil, err
			}
			d.metrics.claimed(keys[i])
		}
		res.Devices = append(res.Devices, bundleOf(dev, keys[i]))
	}
	for _, i := range fresh {
		d.answers.put(pairKey{from, targets[i]}, now)
	}
	return res, nil
}

// admitClaims applies the claim limits to the devices targets[fresh...] that from is about to
// claim keys of. It returns, per index of targets, whether one-time prekeys may be claimed: false
// for cached answers and for targets over their limit. Over the requester or pair limit it takes
// nothing and returns a *RateLimitError.
func (d *Directory) admitClaims(from deviceKey, targets []deviceKey, fresh []int) ([]bool, error) {
	withOTK := make([]bool, len(targets))
	if len(fresh) == 0 {
		return withOTK, nil
	}
	n := float64(len(fresh))
	if ok, retry := d.limits.requester.Take(from, n); !ok {
		d.metrics.claimLimited.WithLabelValues(claimLimitRequester).Inc()
		return nil, &RateLimitError{Limit: claimLimitRequester, RetryAfter: retry}
	}
	for j, i := range fresh {
		if ok, retry := d.limits.pair.Take(pairKey{from, targets[i]}, 1); !ok {
			d.limits.requester.Give(from, n)
			for _, k := range fresh[:j] {
				d.limits.pair.Give(pairKey{from, targets[k]}, 1)
			}
			d.metrics.claimLimited.WithLabelValues(claimLimitPair).Inc()
			return nil, &RateLimitError{Limit: claimLimitPair, RetryAfter: retry}
		}
	}
	for _, i := range fresh {
		if ok, _ := d.limits.target.Take(targets[i], 1); ok {
			withOTK[i] = true
		} else {
			d.metrics.claimLimited.WithLabelValues(claimLimitTarget).Inc()
		}
	}
	return withOTK, nil
}

// bundleOf is dev's bundle with the one-time prekeys in k (the last-resort KEM prekey when there
// is no one-time one).
func bundleOf(dev *Device, k claimedKeys) *pb.DeviceBundle {
	db := &pb.DeviceBundle{
		DeviceId:     dev.ID,
		IdentityKey:  dev.IdentityKey,
		SignedPrekey: &pb.SignedPreKey{Id: dev.SignedPreKey.ID, PublicKey: dev.SignedPreKey.PublicKey, Signature: dev.SignedPreKey.Signature},
		KemPrekey:    &pb.KEMPreKey{Id: dev.LastResortKEM.ID, PublicKey: dev.LastResortKEM.PublicKey, Signature: dev.LastResortKEM.Signature, LastResort: true},
	}
	if k.kem != nil {
		kem := &pb.KEMPreKey{}
		if proto.Unmarshal(k.kem, kem) == nil {
			db.KemPrekey = kem
		}
	}
	if k.otk != nil {
		otk := &pb.OneTimePreKey{}
		if proto.Unmarshal(k.otk, otk) == nil {
			db.OneTimePrekey = otk
		}
	}
	return db
}

// claim takes the oldest unclaimed prekey on subject: get it, then delete it; whoever deletes it
// owns it. It returns nil when none are left.
func (d *Directory) claim(ctx context.Context, subject string) ([]byte, error) {
	seq := uint64(1)
	for range maxClaimAttempts {
		m, err := d.bus.PreKeys.GetMsg(ctx, seq, jetstream.WithGetMsgSubject(subject))
		if errors.Is(err, jetstream.ErrMsgNotFound) {
			return nil, nil
		}
		if err != nil {
			return nil, fmt.Errorf("%w: read prekey: %v", ErrUnavailable, err)
		}
		if err := d.bus.PreKeys.DeleteMsg(ctx, m.Sequence); err != nil {
			// Somebody else claimed it (or it expired): take the next one.
			seq = m.Sequence + 1
			continue
		}
		return m.Data, nil
	}
	return nil, fmt.Errorf("%w: prekey claim contended %d times", ErrUnavailable, maxClaimAttempts)
}
