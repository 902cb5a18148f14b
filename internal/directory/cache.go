// Copyright 2026 The Petrel Authors
// SPDX-License-Identifier: Apache-2.0

package directory

import (
	"context"
	"sync"
	"sync/atomic"

	"github.com/nats-io/nats.go/jetstream"
)

// cache keeps recently used records of a bucket in memory so a hot path does not read the bucket.
// It is bounded (random eviction) and kept correct by a watch on the bucket (see Start): every
// update drops the entry, and a read that raced with an update is not cached (the generation
// check). Two caches use it: accounts (send path) and device auth keys (connect path).
type cache[K comparable, V any] struct {
	max int
	off atomic.Bool // set when the watch ended: the cache may be stale, do not use it

	mu      sync.Mutex // guards the fields below
	entries map[K]V
	gen     uint64 // bumped by every invalidation
	// deleted remembers, for keys the watch saw deleted, the revision of the deletion, so that a
	// read answered by a replica that has not applied it yet (a direct get may be answered by any
	// replica) is not taken for the truth after the watch already dropped the entry. Bounded by
	// max/deletedFraction (random eviction): a replica lags by moments, not by many deletions.
	deleted map[K]uint64
	// updated remembers, for keys the watch saw updated, the revision of the update, so that a
	// read answered by a replica that has not applied it yet is not cached: it would stay in the
	// cache, stale, until the key changed again. Bounded like deleted.
	updated map[K]uint64
}

// deletedFraction: a cache remembers up to max/deletedFraction deletions (at least 64).
const deletedFraction = 16

func newCache[K comparable, V any](max int) *cache[K, V] {
	return &cache[K, V]{max: max, entries: make(map[K]V), deleted: make(map[K]uint64), updated: make(map[K]uint64)}
}

// remember records rev for k in m, evicting a random entry when m is full.
func (c *cache[K, V]) remember(m map[K]uint64, k K, rev uint64) {
	if _, ok := m[k]; !ok && len(m) >= max(64, c.max/deletedFraction) {
		for old := range m { // map order is random: a cheap random eviction
			delete(m, old)
			break
		}
	}
	m[k] = rev
}

// bury drops k's entry and remembers that k was deleted at revision rev.
func (c *cache[K, V]) bury(k K, rev uint64) {
	c.mu.Lock()
	defer c.mu.Unlock()
	c.gen++
	delete(c.entries, k)
	delete(c.updated, k)
	c.remember(c.deleted, k, rev)
}

// renew drops k's entry and remembers that k was updated at revision rev: a read of an older
// revision is not cached.
func (c *cache[K, V]) renew(k K, rev uint64) {
	c.mu.Lock()
	defer c.mu.Unlock()
	c.gen++
	delete(c.entries, k)
	c.remember(c.updated, k, rev)
}

// buried reports whether a read of k at revision rev is older than a deletion of k the watch
// saw: the read came from a replica behind the deletion.
func (c *cache[K, V]) buried(k K, rev uint64) bool {
	if c == nil {
		return false
	}
	c.mu.Lock()
	defer c.mu.Unlock()
	del, ok := c.deleted[k]
	return ok && rev <= del
}

// usable reports whether the cache may be read: it exists (Start ran) and its watch is alive.
func (c *cache[K, V]) usable() bool { return c != nil && !c.off.Load() }

// get returns the entry of k, and the generation a read of the bucket starts at when it misses.
func (c *cache[K, V]) get(k K) (V, uint64, bool) {
	c.mu.Lock()
	defer c.mu.Unlock()
	v, ok := c.entries[k]
	return v, c.gen, ok
}

// put caches a read of revision rev that started at generation gen, unless an invalidation
// happened since or the watch saw a later revision of k.
func (c *cache[K, V]) put(k K, v V, gen, rev uint64) {
	c.mu.Lock()
	defer c.mu.Unlock()
	if c.gen != gen || rev < c.updated[k] {
		return
	}
	if _, ok := c.entries[k]; !ok && len(c.entries) >= c.max {
		for old := range c.entries { // map order is random: a cheap random eviction
			delete(c.entries, old)
			break
		}
	}
	c.entries[k] = v
}

// load returns k's entry from the cache, or reads it (read: the value and its revision) and
// caches it when the read succeeds. Without a usable cache it just reads.
func (c *cache[K, V]) load(k K, read func() (V, uint64, error)) (V, error) {
	if !c.usable() {
		v, _, err := read()
		return v, err
	}
	v, gen, ok := c.get(k)
	if ok {
		return v, nil
	}
	v, rev, err := read()
	if err == nil {
		c.put(k, v, gen, rev)
	}
	return v, err
}

func (c *cache[K, V]) invalidate(k K) {
	c.mu.Lock()
	c.gen++
	delete(c.entries, k)
	c.mu.Unlock()
}

func (c *cache[K, V]) invalidateAll() {
	c.mu.Lock()
	c.gen++
	clear(c.entries)
	clear(c.deleted)
	clear(c.updated)
	c.mu.Unlock()
}

func (c *cache[K, V]) len() int {
	c.mu.Lock()
	defer c.mu.Unlock()
	return len(c.entries)
}

// Start watches the accounts and devices buckets to keep the account and auth caches correct,
// until ctx ends. Without Start the caches are not used. Wait waits for both watches.
func (d *Directory) Start(ctx context.Context) error {
	accW, err := d.bus.Accounts.WatchAll(ctx, jetstream.UpdatesOnly())
	if err != nil {
		return err
	}
	devW, err := d.bus.Devices.WatchAll(ctx, jetstream.UpdatesOnly())
	if err != nil {
		_ = accW.Stop()
		return err
	}
	accounts := newCache[string, *Account](d.cfg.AccountCacheSize)
	auth := newCache[deviceKey, authEntry](d.cfg.DeviceCacheSize)
	d.watches.Go(func() { follow(ctx, accW, accounts, func(k string) (string, bool) { return k, true }) })
	d.watches.Go(func() { follow(ctx, devW, auth, parseDeviceKey) })
	d.accounts, d.auth = accounts, auth
	return nil
}

// follow drops the cache entry of every key the watch reports (remembering deletions: see
// cache.deleted), until ctx ends or the watch ends;
// then the cache is switched off (nothing keeps it correct any more). key maps a bucket key to a
// cache key; keys that cannot be cached are ignored.
func follow[K comparable, V any](ctx context.Context, w jetstream.KeyWatcher, c *cache[K, V], key func(string) (K, bool)) {
	defer func() { _ = w.Stop() }()
	for {
		select {
		case <-ctx.Done():
			c.off.Store(true)
			c.invalidateAll()
			return
		case e, ok := <-w.Updates():
			if !ok {
				// The watch ended (connection lost): stop trusting the cache.
				c.off.Store(true)
				c.invalidateAll()
				return
			}
			if e == nil {
				continue
			}
			if k, ok := key(e.Key()); ok {
				switch e.Operation() {
				case jetstream.KeyValueDelete, jetstream.KeyValuePurge:
					c.bury(k, e.Revision())
				default:
					c.renew(k, e.Revision())
				}
			}
		}
	}
}

// Wait blocks until the watches started by Start have ended.
func (d *Directory) Wait() { d.watches.Wait() }
