// Copyright 2026 The Petrel Authors
// SPDX-License-Identifier: Apache-2.0

package bench

import (
	"context"
	"net"
	"testing"
	"time"

	"golang.org/x/sys/unix"
)

// A worker's connections from its own source address leave the port choice to connect
// (IP_BIND_ADDRESS_NO_PORT): bound with port 0, each connect past ~14,000 from one address
// scanned the bind table and the machine collapsed (bindport_linux.go).
func TestDialFromSourceDefersPort(t *testing.T) {
	ln, err := net.Listen("tcp", "127.0.0.1:0")
	if err != nil {
		t.Fatal(err)
	}
	defer ln.Close()
	go func() {
		for {
			c, err := ln.Accept()
			if err != nil {
				return
			}
			defer c.Close()
		}
	}()
	ctx, cancel := context.WithTimeout(context.Background(), 10*time.Second)
	defer cancel()
	for _, src := range []string{"127.0.0.2", ""} {
		c, err := newDialer(src, 0, 5*time.Second).nd.DialContext(ctx, "tcp", ln.Addr().String())
		if err != nil {
			t.Fatal(err)
		}
		rc, err := c.(*net.TCPConn).SyscallConn()
		if err != nil {
			t.Fatal(err)
		}
		var v int
		var gerr error
		if err := rc.Control(func(fd uintptr) {
			v, gerr = unix.GetsockoptInt(int(fd), unix.IPPROTO_IP, unix.IP_BIND_ADDRESS_NO_PORT)
		}); err != nil || gerr != nil {
			t.Fatal(err, gerr)
		}
		if want := src != ""; (v == 1) != want {
			t.Fatalf("source %q: IP_BIND_ADDRESS_NO_PORT = %d", src, v)
		}
		if src != "" {
			if got := c.LocalAddr().(*net.TCPAddr).IP.String(); got != src {
				t.Fatalf("dialed from %s, want %s", got, src)
			}
		}
		c.Close()
	}
}
