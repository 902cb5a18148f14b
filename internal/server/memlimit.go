// Copyright 2026 The Petrel Authors
// SPDX-License-Identifier: Apache-2.0

package server

import (
	"bufio"
	"log/slog"
	"os"
	"runtime/debug"
	"strconv"
	"strings"
)

// applyMemoryLimit sets the Go runtime's soft memory limit from memory_limit (see Config): near
// the limit the collector runs more often and the scavenger returns freed memory to the system
// at once, instead of keeping the heap a burst left behind. A GOMEMLIMIT environment variable
// wins (the runtime has applied it already); -1 leaves the runtime alone. The limit is the
// process's: the last server started in a process sets it.
func applyMemoryLimit(limit int64, log *slog.Logger) {
	if limit < 0 || os.Getenv("GOMEMLIMIT") != "" {
		return
	}
	if limit == 0 {
		if limit = derivedMemoryLimit(); limit == 0 {
			return
		}
	}
	debug.SetMemoryLimit(limit)
	log.Info("memory limit", "bytes", limit)
}

// derivedMemoryLimit is 80% of the smaller of the cgroup's memory limit and the machine's memory
// (0 if neither is known): headroom for what the runtime does not count (thread stacks outside
// the heap, the kernel's socket buffers, page cache for the store).
func derivedMemoryLimit() int64 {
	total := memTotal()
	if cg := cgroupMemoryLimit(); cg > 0 && (total == 0 || cg < total) {
		total = cg
	}
	return total / 10 * 8
}

// memTotal reads MemTotal from /proc/meminfo (0 if unknown).
func memTotal() int64 {
	f, err := os.Open("/proc/meminfo")
	if err != nil {
		return 0
	}
	defer f.Close()
	sc := bufio.NewScanner(f)
	for sc.Scan() {
		if v, ok := strings.CutPrefix(sc.Text(), "MemTotal:"); ok {
			kb, err := strconv.ParseInt(strings.TrimSpace(strings.TrimSuffix(strings.TrimSpace(v), "kB")), 10, 64)
			if err != nil {
				return 0
			}
			return kb << 10
		}
	}
	return 0
}

// cgroupMemoryLimit reads the cgroup v2 memory limit (0 if none or unknown).
func cgroupMemoryLimit() int64 {
	b, err := os.ReadFile("/sys/fs/cgroup/memory.max")
	if err != nil {
		return 0
	}
	n, err := strconv.ParseInt(strings.TrimSpace(string(b)), 10, 64)
	if err != nil { // "max"
		return 0
	}
	return n
}
