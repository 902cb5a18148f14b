// Copyright 2026 The Petrel Authors
// SPDX-License-Identifier: Apache-2.0

package gateway

import (
	"math"
	"time"
)

// retryMs is a retry hint in whole milliseconds, at least 1 (0 would mean "do not retry").
func retryMs(d time.Duration) uint32 {
	return uint32(min(max(d.Milliseconds()+1, 1), math.MaxUint32))
}
