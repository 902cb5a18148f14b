// Copyright 2026 The Petrel Authors
// SPDX-License-Identifier: Apache-2.0

//go:build !unix

package directory_test

import "time"

// cpuTime is not measured here: benchmarks then report no cpu-ns/op.
func cpuTime() time.Duration { return 0 }
