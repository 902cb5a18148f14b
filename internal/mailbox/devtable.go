// Copyright 2026 The Petrel Authors
// SPDX-License-Identifier: Apache-2.0

package mailbox

import (
	"hash/maphash"
	"sync"
)

// devTableShards is the number of locks a devTable spreads its keys over.
const devTableShards = 64

// devTable is a map split over shards, each under its own lock, for the node's tables with an
// entry per attached device. It stands in for sync.Map there: a sync.Map entry costs over a
// hundred bytes beside its key (an entry node, the key boxed in an interface, a share of the
// trie's inner nodes), a map slot a few dozen, and an edge holding idle connections keeps one
// entry per connection in each of two tables (BENCHMARKS.md, idle memory). Make it with
// newDevTable.
type devTable[K comparable, V comparable] struct {
	seed   maphash.Seed
	shards [devTableShards]devShard[K, V]
}

type devShard[K comparable, V comparable] struct {
	mu sync.RWMutex
	m  map[K]V
}

func newDevTable[K comparable, V comparable]() *devTable[K, V] {
	t := &devTable[K, V]{seed: maphash.MakeSeed()}
	for i := range t.shards {
		t.shards[i].m = make(map[K]V)
	}
	return t
}

func (t *devTable[K, V]) shard(k K) *devShard[K, V] {
	return &t.shards[maphash.Comparable(t.seed, k)%devTableShards]
}

// Load returns the value stored for k.
func (t *devTable[K, V]) Load(k K) (V, bool) {
	s := t.shard(k)
	s.mu.RLock()
	v, ok := s.m[k]
	s.mu.RUnlock()
	return v, ok
}

// Store sets the value for k.
func (t *devTable[K, V]) Store(k K, v V) {
	s := t.shard(k)
	s.mu.Lock()
	s.m[k] = v
	s.mu.Unlock()
}

// Swap sets the value for k and returns the one it replaced, if any.
func (t *devTable[K, V]) Swap(k K, v V) (prev V, loaded bool) {
	s := t.shard(k)
	s.mu.Lock()
	prev, loaded = s.m[k]
	s.m[k] = v
	s.mu.Unlock()
	return prev, loaded
}

// SwapUnless sets the value for k to v unless keep says the value there stays; it returns the
// value it found, if any, and whether v was set.
func (t *devTable[K, V]) SwapUnless(k K, v V, keep func(prev V) bool) (prev V, loaded, set bool) {
	s := t.shard(k)
	s.mu.Lock()
	defer s.mu.Unlock()
	prev, loaded = s.m[k]
	if loaded && keep(prev) {
		return prev, true, false
	}
	s.m[k] = v
	return prev, loaded, true
}

// CompareAndDelete deletes k if its value is v, and reports whether it did.
func (t *devTable[K, V]) CompareAndDelete(k K, v V) bool {
	s := t.shard(k)
	s.mu.Lock()
	defer s.mu.Unlock()
	if cur, ok := s.m[k]; ok && cur == v {
		delete(s.m, k)
		return true
	}
	return false
}

// Delete deletes k.
func (t *devTable[K, V]) Delete(k K) {
	s := t.shard(k)
	s.mu.Lock()
	delete(s.m, k)
	s.mu.Unlock()
}

// Values returns the values, one shard locked at a time (like sync.Map.Range, not a snapshot of
// one moment).
func (t *devTable[K, V]) Values() []V {
	var vs []V
	for i := range t.shards {
		s := &t.shards[i]
		s.mu.RLock()
		for _, v := range s.m {
			vs = append(vs, v)
		}
		s.mu.RUnlock()
	}
	return vs
}

// Len is the number of entries.
func (t *devTable[K, V]) Len() int {
	n := 0
	for i := range t.shards {
		s := &t.shards[i]
		s.mu.RLock()
		n += len(s.m)
		s.mu.RUnlock()
	}
	return n
}
