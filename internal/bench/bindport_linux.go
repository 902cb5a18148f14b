// Copyright 2026 The Petrel Authors
// SPDX-License-Identifier: Apache-2.0

package bench

import (
	"syscall"

	"golang.org/x/sys/unix"
)

// bindNoPort lets the kernel pick a connection's source port at connect, not at bind. A worker
// dials from its own source address, so each socket is bound to that address before it
// connects; bound with port 0, the kernel picks a port no other socket bound to that address
// holds, scanning its half of the ephemeral range (28,232 ports here, half of them preferred for
// bind): past ~14,000 connections from one address every connect scanned thousands of taken
// ports under the bind-table locks (a quarter of the machine's CPU in inet_bhash2_conflict and
// inet_bind2_bucket_find at 165,000 connections over 12 addresses), and the machine collapsed.
// IP_BIND_ADDRESS_NO_PORT defers the choice to connect, where only the whole 4-tuple must be
// unique: each address reaches every server address with the whole range.
func bindNoPort(_, _ string, c syscall.RawConn) error {
	var serr error
	if err := c.Control(func(fd uintptr) {
		serr = unix.SetsockoptInt(int(fd), unix.IPPROTO_IP, unix.IP_BIND_ADDRESS_NO_PORT, 1)
	}); err != nil {
		return err
	}
	return serr
}
