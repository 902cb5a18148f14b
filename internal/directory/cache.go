// Copyright 2026 The Petrel Authors
// SPDX-License-Identifier: Apache-2.0

package directory

import (
	"context"
	"sync"

	"github.com/nats-io/nats.go/jetstream"
)

// accountCache keeps recently used accounts in memory so a send does not read the bucket. It is
// bounded (random eviction) and kept correct by a watch on the bucket: every update drops the
// entry, and a read that raced with an update is not cached (the generation check).
type accountCache struct {
	max int

	mu      sync.Mutex // guards the fields below
	entries map[string]*Account
	gen     uint64 // bumped by every invalidation
}

func newAccountCache(max int) *accountCache {
	return &accountCache{max: max, entries: make(map[string]*Account)}
}

func (c *accountCache) get(name string) (*Account, uint64, bool) {
	c.mu.Lock()
	defer c.mu.Unlock()
	a, ok := c.entries[name]
	return a, c.gen, ok
}

// put caches a read that started at generation gen, unless an invalidation happened since.
func (c *accountCache) put(name string, a *Account, gen uint64) {
	c.mu.Lock()
	defer c.mu.Unlock()
	if c.gen != gen {
		return
	}
	if len(c.entries) >= c.max {
		for k := range c.entries { // map order is random: a cheap random eviction
			delete(c.entries, k)
			break
		}
	}
	c.entries[name] = a
}

func (c *accountCache) invalidate(name string) {
	c.mu.Lock()
	c.gen++
	delete(c.entries, name)
	c.mu.Unlock()
}

func (c *accountCache) invalidateAll() {
	c.mu.Lock()
	c.gen++
	clear(c.entries)
	c.mu.Unlock()
}

// Start watches the accounts bucket to keep the cache correct, until ctx ends or Close.
// Without Start the cache is not used.
func (d *Directory) Start(ctx context.Context) error {
	w, err := d.bus.Accounts.WatchAll(ctx, jetstream.UpdatesOnly())
	if err != nil {
		return err
	}
	d.cache = newAccountCache(d.cfg.AccountCacheSize)
	d.watchDone = make(chan struct{})
	go func() {
		defer close(d.watchDone)
		defer w.Stop()
		for {
			select {
			case <-ctx.Done():
				d.cache.invalidateAll()
				return
			case e, ok := <-w.Updates():
				if !ok {
					// The watch ended (connection lost): stop trusting the cache.
					d.cache.invalidateAll()
					d.cacheOff.Store(true)
					return
				}
				if e != nil {
					d.cache.invalidate(e.Key())
				}
			}
		}
	}()
	return nil
}

// Wait blocks until the watch started by Start has ended.
func (d *Directory) Wait() {
	if d.watchDone != nil {
		<-d.watchDone
	}
}
