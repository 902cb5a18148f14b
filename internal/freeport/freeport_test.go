// Copyright 2026 The Petrel Authors
// SPDX-License-Identifier: Apache-2.0

package freeport

import (
	"net"
	"strconv"
	"testing"
)

// Ports are distinct, bindable, below the ephemeral range, and never handed out twice.
func TestLoopback(t *testing.T) {
	seen := map[int]bool{}
	hi := ephemeralLow()
	for range 20 {
		ports, err := Loopback(5)
		if err != nil {
			t.Fatal(err)
		}
		if len(ports) != 5 {
			t.Fatalf("got %d ports, want 5", len(ports))
		}
		for _, p := range ports {
			if seen[p] {
				t.Fatalf("port %d handed out twice", p)
			}
			seen[p] = true
			if hi-1-lowest >= minSpan && (p < lowest || p >= hi) {
				t.Fatalf("port %d outside %d–%d", p, lowest, hi-1)
			}
			ln, err := net.Listen("tcp", net.JoinHostPort("127.0.0.1", strconv.Itoa(p)))
			if err != nil {
				t.Fatalf("port %d: %v", p, err)
			}
			ln.Close()
		}
	}
}

// A port taken by another listener is not handed out.
func TestLoopbackSkipsTaken(t *testing.T) {
	if ephemeralLow()-1-lowest < minSpan {
		t.Skip("no port range below the ephemeral one")
	}
	ports, err := Loopback(1)
	if err != nil {
		t.Fatal(err)
	}
	// Forget it, hold it, and ask for every other port's worth of tries: the held one never comes back.
	mu.Lock()
	delete(issued, ports[0])
	mu.Unlock()
	ln, err := net.Listen("tcp", net.JoinHostPort("127.0.0.1", strconv.Itoa(ports[0])))
	if err != nil {
		t.Fatal(err)
	}
	defer ln.Close()
	for range 50 {
		got, err := Loopback(20)
		if err != nil {
			t.Fatal(err)
		}
		for _, p := range got {
			if p == ports[0] {
				t.Fatalf("port %d handed out while held", p)
			}
		}
	}
}
