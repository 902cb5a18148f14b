// Copyright 2026 The Petrel Authors
// SPDX-License-Identifier: Apache-2.0

package gateway

import (
	"testing"
	"unsafe"
)

// TestConnSize: a conn is held per open connection, idle or not; it stays within the allocator's
// 384-byte size class (the next is 416; it was 440 bytes, in the 448 class). What only the
// handshake needs lives in handshake, dropped at the Welcome.
func TestConnSize(t *testing.T) {
	if n := unsafe.Sizeof(wsReader{}); n > 128 {
		t.Errorf("wsReader is %d bytes, over 128: group its small fields", n)
	}
	if n := unsafe.Sizeof(conn{}); n > 384 {
		t.Fatalf("conn is %d bytes, over 384: keep fields used only by some connections out of it", n)
	}
}
