// Copyright 2026 The Petrel Authors
// SPDX-License-Identifier: Apache-2.0

package gateway

import (
	"net"
	"testing"
	"time"

	"github.com/petrelchat/petrel/third_party/nbio"
)

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

// TestUpgradeBeforeNbioDeadline: nbio's accept goroutine registers a socket with a poller and only
// then sets its read deadline (handshake_timeout), so a fast client's request can be read and
// upgraded first, and the deadline set afterwards would close the upgraded connection
// handshake_timeout after it connected. The pending listener clears it once nbio is done with the
// socket (its next Accept). The same order here with a real nbio engine: upgrade, then nbio's
// deadline, then the next Accept; a control socket's later deadline must fire first.
func TestUpgradeBeforeNbioDeadline(t *testing.T) {
	e := nbio.NewEngine(nbio.Config{})
	closed := make(chan *nbio.Conn, 4)
	e.OnClose(func(c *nbio.Conn, _ error) { closed <- c })
	if err := e.Start(); err != nil {
		t.Fatal(err)
	}
	defer e.Stop()
	ln, err := net.Listen("tcp", "127.0.0.1:0")
	if err != nil {
		t.Fatal(err)
	}
	defer ln.Close()
	p := newPreUpgrade(Config{MaxPendingUpgrades: 8, MaxPendingUpgradesPerIP: 8})
	l := &pendingListener{Listener: ln, pre: p}
	accept := func() *nbio.Conn {
		t.Helper()
		cl, err := net.Dial("tcp", ln.Addr().String())
		if err != nil {
			t.Fatal(err)
		}
		t.Cleanup(func() { cl.Close() })
		c, err := l.Accept()
		if err != nil {
			t.Fatal(err)
		}
		nc, err := e.AddConn(c)
		if err != nil {
			t.Fatal(err)
		}
		return nc
	}

	early := accept()
	p.upgraded(early.RemoteAddr().String(), early)                   // the upgrade clears the deadline…
	_ = early.SetReadDeadline(time.Now().Add(50 * time.Millisecond)) // …before nbio sets it
	control := accept()                                              // nbio's next Accept: early is settled
	_ = control.SetReadDeadline(time.Now().Add(300 * time.Millisecond))
	if c := <-closed; c != control {
		t.Fatal("the upgraded socket was closed by the read deadline nbio set after its upgrade")
	}
	p.mu.Lock()
	defer p.mu.Unlock()
	if len(p.early) != 0 {
		t.Fatalf("%d early upgrades left after they settled", len(p.early))
	}
}
