// Copyright 2026 The Petrel Authors
// SPDX-License-Identifier: Apache-2.0

//go:build unix

package directory_test

import (
	"syscall"
	"time"
)

// cpuTime is the CPU time (user + system) this process has used: the embedded NATS server runs in
// it too, so a benchmark's CPU time covers both sides of every request.
func cpuTime() time.Duration {
	var ru syscall.Rusage
	if syscall.Getrusage(syscall.RUSAGE_SELF, &ru) != nil {
		return 0
	}
	return time.Duration(ru.Utime.Nano() + ru.Stime.Nano())
}
