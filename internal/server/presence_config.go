// Copyright 2026 The Petrel Authors
// SPDX-License-Identifier: Apache-2.0

package server

import "time"

// PresenceSection is [presence]: who is online and when accounts were last seen (memory and bus
// only, internal/presence).
type PresenceSection struct {
	// PresenceHeartbeat is the interval of each node's presence heartbeat; a node not heard for
	// three of them is taken as gone, and the accounts it had online go offline (100ms..1m).
	// Default: 5s.
	PresenceHeartbeat Duration `toml:"heartbeat"`
	// PresenceMaxLastSeen bounds the last-seen times one node keeps in memory (about 100 bytes
	// each; the oldest are forgotten first, and an account forgotten everywhere is reported
	// offline without a time) (1..100,000,000). Default: 262144.
	PresenceMaxLastSeen int `toml:"max_last_seen"`
}

func (c *PresenceSection) setPresenceDefaults() {
	if c.PresenceHeartbeat.Duration == 0 {
		c.PresenceHeartbeat.Duration = 5 * time.Second
	}
	if c.PresenceMaxLastSeen == 0 {
		c.PresenceMaxLastSeen = 1 << 18
	}
}

func (c *PresenceSection) validatePresence(bad func(format string, a ...any)) {
	if d := c.PresenceHeartbeat.Duration; d < 100*time.Millisecond || d > time.Minute {
		bad("presence.heartbeat %s: want 100ms..1m", d)
	}
	if n := c.PresenceMaxLastSeen; n < 1 || n > 100_000_000 {
		bad("presence.max_last_seen %d: want 1..100000000", n)
	}
}
