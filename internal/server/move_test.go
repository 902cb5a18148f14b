// Copyright 2026 The Petrel Authors
// SPDX-License-Identifier: Apache-2.0

package server

import (
	"errors"
	"fmt"
	"testing"
	"time"

	"github.com/petrelchat/petrel/internal/bus"
)

// TestShouldMove: a node cut off moves its clients at once; any other loss of its own after
// quorumMoveAfter; a failed JetStream API with the node's own state healthy (ErrAPISlow) only
// when most nodes that were serving are no longer routed to (a partition) — not in a reconnect
// storm, where they are slow but routed.
func TestShouldMove(t *testing.T) {
	cutOff := fmt.Errorf("%w: %w: routes to 0 other nodes of 3, needs 1", bus.ErrNoQuorum, bus.ErrCutOff)
	slow := fmt.Errorf("%w: jetstream api did not answer (%w): timeout", bus.ErrNoQuorum, bus.ErrAPISlow)
	down := fmt.Errorf("%w: jetstream api did not answer: %v", bus.ErrNoQuorum, errors.New("nats: connection closed"))
	yes, no := func() bool { return true }, func() bool { return false }
	for _, tc := range []struct {
		name        string
		err         error
		lostFor     time.Duration
		servingLost func() bool
		want        bool
	}{
		{"cut off, at once", cutOff, 0, no, true},
		{"connection down, too soon", down, quorumMoveAfter - time.Millisecond, yes, false},
		{"connection down, after the wait", down, quorumMoveAfter, no, true},
		{"api slow, too soon", slow, quorumMoveAfter - time.Millisecond, yes, false},
		{"api slow, the serving nodes still routed (storm)", slow, time.Minute, no, false},
		{"api slow, the serving nodes not routed (cut off)", slow, quorumMoveAfter, yes, true},
	} {
		if got := shouldMove(tc.err, tc.lostFor, tc.servingLost); got != tc.want {
			t.Errorf("%s: shouldMove = %v, want %v", tc.name, got, tc.want)
		}
	}
}
