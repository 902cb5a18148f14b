// Copyright 2026 The Petrel Authors
// SPDX-License-Identifier: Apache-2.0

package gateway

import (
	"golang.org/x/sys/unix"

	"github.com/petrelchat/petrel/third_party/nbio"
)

// socketUnread returns how many bytes wait in the socket's receive queue, read by no one yet
// (SIOCINQ); 0 when unknown.
func socketUnread(nc *nbio.Conn) int {
	if nc == nil {
		return 0
	}
	rc, err := nc.SyscallConn()
	if err != nil {
		return 0
	}
	n := 0
	_ = rc.Control(func(fd uintptr) {
		if v, err := unix.IoctlGetInt(int(fd), unix.SIOCINQ); err == nil {
			n = v
		}
	})
	return n
}
