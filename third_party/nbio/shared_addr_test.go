// Copyright 2026 The Petrel Authors. Petrel fork of nbio: see net_unix.go (sharedLocalAddr).

//go:build linux || darwin || netbsd || freebsd || openbsd || dragonfly

package nbio

import (
	"net"
	"testing"
)

// TestSharedLocalAddr: equal local addresses share one value; a different one replaces it; other
// kinds of address pass through.
func TestSharedLocalAddr(t *testing.T) {
	a := sharedLocalAddr(&net.TCPAddr{IP: net.IPv4(127, 0, 0, 1), Port: 7600})
	b := sharedLocalAddr(&net.TCPAddr{IP: net.ParseIP("127.0.0.1"), Port: 7600})
	if a != b {
		t.Fatal("equal local addresses not shared")
	}
	c := sharedLocalAddr(&net.TCPAddr{IP: net.IPv4(127, 0, 0, 2), Port: 7600})
	if c == a || c.String() != "127.0.0.2:7600" {
		t.Fatalf("a different address came back as %v", c)
	}
	d := sharedLocalAddr(&net.TCPAddr{IP: net.IPv4(127, 0, 0, 2), Port: 7601})
	if d == c || d.String() != "127.0.0.2:7601" {
		t.Fatalf("another port came back as %v", d)
	}
	u := &net.UnixAddr{Name: "/tmp/x", Net: "unix"}
	if sharedLocalAddr(u) != net.Addr(u) {
		t.Fatal("a unix address must pass through")
	}
}
