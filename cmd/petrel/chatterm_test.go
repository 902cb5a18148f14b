// Copyright 2026 The Petrel Authors
// SPDX-License-Identifier: Apache-2.0

package main

import (
	"context"
	"fmt"
	"io"
	"os"
	"strings"
	"syscall"
	"testing"
	"time"

	"golang.org/x/sys/unix"

	"github.com/petrelchat/petrel/internal/testserver"
)

// openPTY returns a new pseudo-terminal: the master (the test's keyboard and screen) and the
// terminal a program uses. It skips the test where the system has no pseudo-terminals.
func openPTY(t *testing.T) (master, tty *os.File) {
	t.Helper()
	m, err := os.OpenFile("/dev/ptmx", os.O_RDWR|syscall.O_NOCTTY|syscall.O_CLOEXEC, 0)
	if err != nil {
		t.Skipf("no pseudo-terminals on this system: %v", err)
	}
	t.Cleanup(func() { m.Close() })
	if err := unix.IoctlSetPointerInt(int(m.Fd()), unix.TIOCSPTLCK, 0); err != nil {
		t.Fatal(err)
	}
	n, err := unix.IoctlGetUint32(int(m.Fd()), unix.TIOCGPTN)
	if err != nil {
		t.Fatal(err)
	}
	s, err := os.OpenFile(fmt.Sprintf("/dev/pts/%d", n), os.O_RDWR|syscall.O_NOCTTY|syscall.O_CLOEXEC, 0)
	if err != nil {
		t.Fatal(err)
	}
	t.Cleanup(func() { s.Close() })
	return m, s
}

// On a terminal, a message that arrives while you type is shown above your line, and what you
// had typed is drawn again after it and still sent on Enter; leaving restores the terminal.
func TestCLIChatTerminalKeepsTypedLine(t *testing.T) {
	fastClients(t)
	master, tty := openPTY(t)
	srv := testserver.Start(t)
	alice, bob := t.TempDir(), t.TempDir()
	petrel(t, alice, "", "register", "--server", srv.URL(), "--name", "alice").must(t, 0)
	petrel(t, bob, "", "register", "--server", srv.URL(), "--name", "bob").must(t, 0)

	screen := &testserver.Buffer{}
	go io.Copy(screen, master) // ends when the test closes the master
	ctx, cancel := context.WithTimeout(context.Background(), cliWait)
	defer cancel()
	errb := &testserver.Buffer{}
	done := make(chan int, 1)
	go func() {
		e := &env{stdin: tty, stdout: tty, stderr: errb, getenv: func(string) string { return "" }}
		done <- run(ctx, []string{"--home", alice, "chat", "bob"}, e)
	}()
	screen.WaitFor(t, "[chat with bob", cliWait)

	bc := onlineSDK(t, ctx, bob)
	io.WriteString(master, "half-typ") // no Enter yet
	screen.WaitFor(t, "> half-typ", cliWait)
	if _, err := bc.Send(ctx, "alice", "a message meanwhile"); err != nil {
		t.Fatal(err)
	}
	screen.WaitFor(t, "bob: a message meanwhile\r\n", cliWait)
	out := screen.String()
	if after := out[strings.LastIndex(out, "bob: a message meanwhile"):]; !strings.Contains(after, "> half-typ") {
		t.Fatalf("the half-typed line was not drawn again after the incoming message; screen:\n%q", out)
	}
	io.WriteString(master, "ed line\r")
	bc.wantMessage(t, ctx, "alice", "half-typed line")
	io.WriteString(master, "\x04") // Ctrl-D on an empty line leaves
	select {
	case code := <-done:
		if code != 0 {
			t.Fatalf("chat exit code %d; stderr:\n%s", code, errb.String())
		}
	case <-time.After(cliWait):
		t.Fatal("chat did not exit on Ctrl-D")
	}
	tio, err := unix.IoctlGetTermios(int(tty.Fd()), unix.TCGETS)
	if err != nil {
		t.Fatal(err)
	}
	if tio.Lflag&unix.ICANON == 0 || tio.Lflag&unix.ECHO == 0 {
		t.Fatalf("terminal left in raw mode (lflag %#x)", tio.Lflag)
	}
}
