// Copyright 2026 The Petrel Authors
// SPDX-License-Identifier: Apache-2.0

package mailbox

import (
	"fmt"
	"runtime"
	"slices"
	"sync"
	"testing"
)

// TestDevTable: the operations the mailbox uses, as sync.Map had them, across shards.
func TestDevTable(t *testing.T) {
	tb := newDevTable[string, *int]()
	vals := make([]int, 1000)
	for i := range vals {
		vals[i] = i
		tb.Store(fmt.Sprint(i), &vals[i])
	}
	if n := tb.Len(); n != len(vals) {
		t.Fatalf("Len %d, want %d", n, len(vals))
	}
	if v, ok := tb.Load("7"); !ok || v != &vals[7] {
		t.Fatal("Load did not find what was stored")
	}
	other := -1
	prev, loaded := tb.Swap("7", &other)
	if !loaded || prev != &vals[7] {
		t.Fatal("Swap must return the replaced value")
	}
	if _, loaded := tb.Swap("new", &other); loaded {
		t.Fatal("Swap of a new key reports nothing replaced")
	}
	if tb.CompareAndDelete("7", &vals[7]) {
		t.Fatal("CompareAndDelete deleted a value that had been replaced")
	}
	if !tb.CompareAndDelete("7", &other) {
		t.Fatal("CompareAndDelete did not delete the current value")
	}
	if _, ok := tb.Load("7"); ok {
		t.Fatal("deleted key still there")
	}
	tb.Delete("8")
	tb.Delete("new")
	got := tb.Values()
	if len(got) != len(vals)-2 {
		t.Fatalf("Values: %d, want %d", len(got), len(vals)-2)
	}
	sum := 0
	for _, v := range got {
		sum += *v
	}
	if want := 999*1000/2 - 7 - 8; sum != want {
		t.Fatalf("Values sum %d, want %d", sum, want)
	}
	if slices.Contains(got, &other) {
		t.Fatal("a deleted value is listed")
	}
}

// BenchmarkTableMemory reports what an entry costs (key excluded) in the devTable and in the
// sync.Map it replaced, for 100,000 device ids.
func BenchmarkTableMemory(b *testing.B) {
	const n = 100_000
	keys := make([]string, n)
	for i := range keys {
		keys[i] = fmt.Sprintf("%032x", i)
	}
	v := new(int)
	measure := func(b *testing.B, fill func() any) {
		var keep any
		for range b.N {
			var before, after runtime.MemStats
			runtime.GC()
			runtime.ReadMemStats(&before)
			keep = fill()
			runtime.GC()
			runtime.ReadMemStats(&after)
			b.ReportMetric(float64(after.HeapAlloc-before.HeapAlloc)/n, "B/entry")
		}
		runtime.KeepAlive(keep)
	}
	b.Run("devTable", func(b *testing.B) {
		measure(b, func() any {
			t := newDevTable[string, *int]()
			for _, k := range keys {
				t.Store(k, v)
			}
			return t
		})
	})
	b.Run("sync.Map", func(b *testing.B) {
		measure(b, func() any {
			var m sync.Map
			for _, k := range keys {
				m.Store(k, v)
			}
			return &m
		})
	})
}

// SwapUnless keeps the value its keep function asks for and replaces any other.
func TestDevTableSwapUnless(t *testing.T) {
	tb := newDevTable[string, int]()
	higher := func(v int) func(int) bool { return func(prev int) bool { return prev > v } }
	if prev, loaded, set := tb.SwapUnless("d", 5, higher(5)); loaded || !set || prev != 0 {
		t.Fatalf("into an empty table: %v %v %v", prev, loaded, set)
	}
	if prev, loaded, set := tb.SwapUnless("d", 3, higher(3)); !loaded || set || prev != 5 {
		t.Fatalf("a lower value over 5: %v %v %v", prev, loaded, set)
	}
	if v, _ := tb.Load("d"); v != 5 {
		t.Fatalf("after a refused swap the table holds %d, want 5", v)
	}
	if prev, loaded, set := tb.SwapUnless("d", 7, higher(7)); !loaded || !set || prev != 5 {
		t.Fatalf("a higher value over 5: %v %v %v", prev, loaded, set)
	}
	if v, _ := tb.Load("d"); v != 7 {
		t.Fatalf("after a swap the table holds %d, want 7", v)
	}
}
