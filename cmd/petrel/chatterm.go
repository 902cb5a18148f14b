// Copyright 2026 The Petrel Authors
// SPDX-License-Identifier: Apache-2.0

package main

import (
	"io"
	"os"

	"golang.org/x/term"
)

// chatTerminal is chat's screen on an interactive terminal: the terminal in raw mode with a line
// editor, so a message that arrives while you type is printed above your half-typed line, which
// is then redrawn as it was. Enter sends the line; Ctrl-D on an empty line, or Ctrl-C, leaves.
type chatTerminal struct {
	fd    int
	state *term.State
	t     *term.Terminal
}

// openChatTerminal puts in (a terminal) into raw mode; Close restores it.
func openChatTerminal(in *os.File, out io.Writer, prompt string) (*chatTerminal, error) {
	fd := int(in.Fd())
	st, err := term.MakeRaw(fd)
	if err != nil {
		return nil, err
	}
	rw := struct {
		io.Reader
		io.Writer
	}{in, out}
	return &chatTerminal{fd: fd, state: st, t: term.NewTerminal(rw, prompt)}, nil
}

// Write prints p above the line being edited (turning "\n" into "\r\n") and redraws the line.
func (c *chatTerminal) Write(p []byte) (int, error) { return c.t.Write(p) }

// ReadLine returns the next line typed; io.EOF when the user leaves (Ctrl-D, Ctrl-C).
func (c *chatTerminal) ReadLine() (string, error) { return c.t.ReadLine() }

// Close restores the terminal's mode.
func (c *chatTerminal) Close() error { return term.Restore(c.fd, c.state) }

// isTerminal reports whether v (standard input or output) is an *os.File open on a terminal.
func isTerminal(v any) bool {
	f, ok := v.(*os.File)
	return ok && term.IsTerminal(int(f.Fd()))
}
