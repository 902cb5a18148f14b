// Copyright 2026 The Petrel Authors
// SPDX-License-Identifier: Apache-2.0

package gateway

import (
	"net"
	"syscall"
	"testing"
)

// Accepted connections carry no TCP keepalive (liveness is the application's pings and
// idle_timeout) and keep TCP_NODELAY.
func TestListenNoKeepalive(t *testing.T) {
	ln, err := listen("tcp", "127.0.0.1:0")
	if err != nil {
		t.Fatal(err)
	}
	defer ln.Close()
	cc, err := net.Dial("tcp", ln.Addr().String())
	if err != nil {
		t.Fatal(err)
	}
	defer cc.Close()
	c, err := ln.Accept()
	if err != nil {
		t.Fatal(err)
	}
	defer c.Close()
	rc, err := c.(*net.TCPConn).SyscallConn()
	if err != nil {
		t.Fatal(err)
	}
	var keepalive, nodelay int
	var kerr, nerr error
	if err := rc.Control(func(fd uintptr) {
		keepalive, kerr = syscall.GetsockoptInt(int(fd), syscall.SOL_SOCKET, syscall.SO_KEEPALIVE)
		nodelay, nerr = syscall.GetsockoptInt(int(fd), syscall.IPPROTO_TCP, syscall.TCP_NODELAY)
	}); err != nil {
		t.Fatal(err)
	}
	if kerr != nil || nerr != nil {
		t.Fatal(kerr, nerr)
	}
	if keepalive != 0 {
		t.Errorf("SO_KEEPALIVE = %d on an accepted connection, want 0", keepalive)
	}
	if nodelay == 0 {
		t.Error("TCP_NODELAY is off on an accepted connection")
	}
}
