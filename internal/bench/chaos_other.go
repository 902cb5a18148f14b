// Copyright 2026 The Petrel Authors
// SPDX-License-Identifier: Apache-2.0

//go:build !linux

package bench

import "os/exec"

// setDeathSignal is a no-op where the kernel has no parent-death signal: stop the nodes by hand
// if chaos itself dies.
func setDeathSignal(*exec.Cmd) {}
