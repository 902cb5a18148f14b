// Copyright 2026 The Petrel Authors
// SPDX-License-Identifier: Apache-2.0

package server_test

import (
	"strings"
	"testing"

	"github.com/petrelchat/petrel/internal/server"
)

// The inbox quota keys: defaults derived from the device caps, and bad values reported.
func TestInboxQuotaConfig(t *testing.T) {
	var c server.Config
	c.InboxMaxPerDevice = 500
	c.SetDefaults()
	if c.InboxMaxPerSender != 50 || c.InboxMaxBytesPerDevice != 64<<20 || c.InboxMaxBytesPerSender != (64<<20)/10 {
		t.Fatalf("defaults: per sender %d, bytes per device %d, bytes per sender %d", c.InboxMaxPerSender, c.InboxMaxBytesPerDevice, c.InboxMaxBytesPerSender)
	}
	if err := c.Validate(); err != nil {
		t.Fatal(err)
	}
	bad := server.Config{InboxSection: server.InboxSection{InboxMaxPerSender: -5, InboxShards: 16, InboxStreamMaxBytes: 1 << 30, StoreMaxBytes: 1 << 30, QueryQueuedBurst: -1}}
	bad.SetDefaults()
	err := bad.Validate()
	for _, want := range []string{"inbox.max_per_sender", "exceeds inbox.store_max_bytes", "query_queued"} {
		if err == nil || !strings.Contains(err.Error(), want) {
			t.Errorf("Validate() = %v, want it to mention %q", err, want)
		}
	}
}
