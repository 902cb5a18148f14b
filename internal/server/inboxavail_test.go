// Copyright 2026 The Petrel Authors
// SPDX-License-Identifier: Apache-2.0

package server_test

import (
	"context"
	"strings"
	"testing"
	"time"

	"github.com/petrelchat/petrel/internal/bus"
	"github.com/petrelchat/petrel/internal/testserver"
)

// TestInboxStreamsUnavailable: an inbox stream whose info goes unanswered — here one deleted,
// which the leaderless stream of a five-node cluster looks like to the sampler (its request
// fails) — is counted in petrel_mailbox_inbox_streams_unavailable and named in the error, and
// the depth gauges keep their last full sample.
func TestInboxStreamsUnavailable(t *testing.T) {
	s := testserver.Start(t)
	if err := s.Server().SampleInboxDepthForTest(); err != nil {
		t.Fatal(err)
	}
	mfs := scrape(t, s.AdminURL())
	if v := value(t, mfs, "petrel_mailbox_inbox_streams_unavailable"); v != 0 {
		t.Fatalf("petrel_mailbox_inbox_streams_unavailable = %v with every stream serving, want 0", v)
	}
	ctx, cancel := context.WithTimeout(context.Background(), 10*time.Second)
	defer cancel()
	gone := bus.InboxStreamName(1)
	if err := s.Server().Bus().JS().DeleteStream(ctx, gone); err != nil {
		t.Fatal(err)
	}
	err := s.Server().SampleInboxDepthForTest()
	if err == nil || !strings.Contains(err.Error(), gone) {
		t.Fatalf("sample with %s gone: %v, want an error naming it", gone, err)
	}
	mfs = scrape(t, s.AdminURL())
	if v := value(t, mfs, "petrel_mailbox_inbox_streams_unavailable"); v != 1 {
		t.Fatalf("petrel_mailbox_inbox_streams_unavailable = %v with %s gone, want 1", v, gone)
	}
}
