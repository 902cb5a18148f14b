// Copyright 2026 The Petrel Authors
// SPDX-License-Identifier: Apache-2.0

//go:build !linux

package bench

import "syscall"

// bindNoPort is Linux only (IP_BIND_ADDRESS_NO_PORT); elsewhere the port is picked at bind.
func bindNoPort(_, _ string, _ syscall.RawConn) error { return nil }
