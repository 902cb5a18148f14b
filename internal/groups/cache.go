// Copyright 2026 The Petrel Authors
// SPDX-License-Identifier: Apache-2.0

package groups

import (
	"context"
	"strings"
	"sync"
	"sync/atomic"

	"github.com/nats-io/nats.go/jetstream"

	pb "github.com/petrelchat/petrel/proto/petrel/v1"
)

// cache holds memberships for the send path, so that a group send does not read the bucket. It
// is bounded by the member names it holds (random eviction), and kept correct by a watch on the
// records (Start): every change drops the entry, and a read that raced with a change is not
// cached (the generation check). A miss reads through the stream leader (Service.latest), so
// nothing older than the last change the watch reported can be cached.
type cache struct {
	max int
	off atomic.Bool // set when the watch ended: do not use the cache

	mu      sync.Mutex // guards the fields below
	entries map[string]*pb.GroupState
	names   int    // member names held by entries
	gen     uint64 // bumped by every drop
}

func newCache(max int) *cache {
	return &cache{max: max, entries: make(map[string]*pb.GroupState)}
}

// get returns gid's state (nil when not cached) and the generation a read starts at.
func (c *cache) get(gid string) (*pb.GroupState, uint64) {
	if c.off.Load() {
		return nil, 0
	}
	c.mu.Lock()
	defer c.mu.Unlock()
	return c.entries[gid], c.gen
}

// put caches a read that started at generation gen, unless a drop happened since.
func (c *cache) put(gid string, st *pb.GroupState, gen uint64) {
	if c.off.Load() || len(st.Members) > c.max {
		return
	}
	c.mu.Lock()
	defer c.mu.Unlock()
	if c.gen != gen {
		return
	}
	if old, ok := c.entries[gid]; ok {
		c.names -= len(old.Members)
	}
	for c.names+len(st.Members) > c.max && len(c.entries) > 0 {
		for k, old := range c.entries { // map order is random: a cheap random eviction
			delete(c.entries, k)
			c.names -= len(old.Members)
			break
		}
	}
	c.entries[gid] = st
	c.names += len(st.Members)
}

func (c *cache) drop(gid string) {
	c.mu.Lock()
	c.gen++
	if old, ok := c.entries[gid]; ok {
		c.names -= len(old.Members)
		delete(c.entries, gid)
	}
	c.mu.Unlock()
}

func (c *cache) dropAll() {
	c.mu.Lock()
	c.gen++
	clear(c.entries)
	c.names = 0
	c.mu.Unlock()
}

// Start watches the group records to keep the send path's cache correct, until ctx ends. Without
// Start every group send reads the record. Wait waits for the watch.
func (s *Service) Start(ctx context.Context) error {
	w, err := s.kv.Watch(ctx, recordKey("*"), jetstream.UpdatesOnly(), jetstream.MetaOnly())
	if err != nil {
		return err
	}
	c := newCache(s.cfg.CacheMembers)
	s.watches.Go(func() { s.follow(ctx, w, c) })
	s.cache = c
	return nil
}

// Wait blocks until the watch started by Start has ended.
func (s *Service) Wait() { s.watches.Wait() }

// follow drops the cache entry of every record the watch reports, until ctx or the watch ends;
// then the cache is switched off.
func (s *Service) follow(ctx context.Context, w jetstream.KeyWatcher, c *cache) {
	defer func() { _ = w.Stop() }()
	for {
		select {
		case <-ctx.Done():
			c.off.Store(true)
			c.dropAll()
			return
		case e, ok := <-w.Updates():
			if !ok {
				c.off.Store(true)
				c.dropAll()
				s.log.Warn("group watch ended: group sends read the bucket")
				return
			}
			if e != nil {
				c.drop(strings.TrimPrefix(e.Key(), "g."))
			}
		}
	}
}
