// Copyright 2026 The Petrel Authors
// SPDX-License-Identifier: Apache-2.0

package gateway

import "testing"

// A client may reuse the port of a socket that has closed before the close is reported. The new
// socket keeps a slot of its own: the late close of the old one must not take the new one's
// entry (its request would then be refused as "not ours": an EOF for the client).
func TestPendingSlotSurvivesPortReuse(t *testing.T) {
	p := newPreUpgrade(Config{MaxPendingUpgrades: 8, MaxPendingUpgradesPerIP: 8})
	const remote = "127.0.0.1:40000"
	if !p.admit(remote) {
		t.Fatal("first socket not admitted")
	}
	if !p.admit(remote) { // the same address and port, before the first one's close is reported
		t.Fatal("second socket not admitted")
	}
	if !p.done(remote) { // the first socket's close
		t.Fatal("the first socket's close found no slot")
	}
	if p.pending() != 1 { // the old socket's slot is back
		t.Fatalf("%d pending after the old socket's close, want 1 (the new socket)", p.pending())
	}
	key, _ := sockKey(remote)
	p.mu.Lock()
	s := p.socks[key]
	p.mu.Unlock()
	if s == nil {
		t.Fatal("the new socket lost its entry to the old one's close")
	}
	if !p.done(remote) {
		t.Fatal("the new socket's close found no slot")
	}
	p.mu.Lock()
	defer p.mu.Unlock()
	if len(p.socks) != 0 || len(p.perIP) != 0 || len(p.stale) != 0 || p.n != 0 {
		t.Fatalf("slots left after both closes: socks %d, per IP %v, stale %v", len(p.socks), p.perIP, p.stale)
	}
}
