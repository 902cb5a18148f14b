// Copyright 2026 The Petrel Authors
// SPDX-License-Identifier: Apache-2.0

package mailbox

import (
	"testing"
	"unsafe"
)

// TestAttachmentSize: an attachment is held per connected device, idle or not; it stays within
// the allocator's 256-byte size class (the next is 288). What a device that was pushed stored
// envelopes needs lives in storedPushes, made on the first push.
func TestAttachmentSize(t *testing.T) {
	if n := unsafe.Sizeof(Attachment{}); n > 256 {
		t.Fatalf("Attachment is %d bytes, over 256: keep fields used only by some attachments out of it", n)
	}
}
