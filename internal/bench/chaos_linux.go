// Copyright 2026 The Petrel Authors
// SPDX-License-Identifier: Apache-2.0

package bench

import (
	"os/exec"
	"syscall"
)

// setDeathSignal makes the kernel kill a node chaos started if chaos itself dies, so that no
// node outlives a crashed run.
func setDeathSignal(cmd *exec.Cmd) {
	cmd.SysProcAttr = &syscall.SysProcAttr{Pdeathsig: syscall.SIGKILL}
}
