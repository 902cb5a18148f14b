// Copyright 2026 The Petrel Authors
// SPDX-License-Identifier: Apache-2.0

package server

import (
	"io"
	"log/slog"
	"math"
	"runtime/debug"
	"testing"
)

// memory_limit: a byte count is applied, -1 leaves the runtime's limit, 0 derives one below the
// machine's memory.
func TestMemoryLimit(t *testing.T) {
	old := debug.SetMemoryLimit(-1)
	t.Cleanup(func() { debug.SetMemoryLimit(old) })
	t.Setenv("GOMEMLIMIT", "")
	log := slog.New(slog.NewTextHandler(io.Discard, nil))

	debug.SetMemoryLimit(math.MaxInt64)
	applyMemoryLimit(-1, log)
	if got := debug.SetMemoryLimit(-1); got != math.MaxInt64 {
		t.Fatalf("-1 changed the limit to %d", got)
	}
	applyMemoryLimit(3<<30, log)
	if got := debug.SetMemoryLimit(-1); got != 3<<30 {
		t.Fatalf("limit %d, want %d", got, 3<<30)
	}
	if d := derivedMemoryLimit(); d > 0 {
		debug.SetMemoryLimit(math.MaxInt64)
		applyMemoryLimit(0, log)
		if got := debug.SetMemoryLimit(-1); got != d || d >= memTotal() {
			t.Fatalf("derived limit %d (machine %d), applied %d", d, memTotal(), got)
		}
	}
}
