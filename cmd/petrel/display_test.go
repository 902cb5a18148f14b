// Copyright 2026 The Petrel Authors
// SPDX-License-Identifier: Apache-2.0

package main

import (
	"context"
	"io"
	"path/filepath"
	"strings"
	"sync"
	"sync/atomic"
	"testing"

	"github.com/petrelchat/petrel/client"
	"github.com/petrelchat/petrel/client/store"
	"github.com/petrelchat/petrel/internal/testserver"
)

// crashWriter is a command's standard output that, on the first write containing needle, copies
// the command's home as a kill -9 right after that write would leave it: the line has reached
// the reader and nothing after the write has run. The command itself then carries on.
type crashWriter struct {
	testserver.Buffer
	needle string
	st     *atomic.Pointer[store.Store] // the store the command opened
	home   string                       // where the copy goes
	once   sync.Once
	copied chan error // the copy's result, buffered
}

func (w *crashWriter) Write(p []byte) (int, error) {
	n, err := w.Buffer.Write(p)
	if strings.Contains(string(p), w.needle) {
		w.once.Do(func() { w.copied <- w.st.Load().Backup(filepath.Join(w.home, store.FileName)) })
	}
	return n, err
}

// receiveWithSDK runs home's client through the SDK until it has received text from from, and
// closes it without showing it: the message is stored (and acked) but not yet seen, as after a
// kill -9 of a command between the SDK's commit and the display.
func receiveWithSDK(t *testing.T, ctx context.Context, home, from, text string) {
	t.Helper()
	st, err := store.Open(home, store.Options{})
	if err != nil {
		t.Fatal(err)
	}
	defer st.Close()
	events := make(chan client.Event, 100)
	c, err := client.Open(client.Config{Store: st, Events: events})
	if err != nil {
		t.Fatal(err)
	}
	runDone := make(chan error, 1)
	go func() { runDone <- c.Run(ctx) }()
	defer func() { c.Close(); <-runDone }()
	(&sdkUser{Client: c, events: events}).wantMessage(t, ctx, from, text)
}

// A kill -9 of recv or chat around the display of a message never shows it twice. The kill
// points: after the SDK stored (and acked) the message but before any display (the unseen cases
// start there: the command shows it once, from the store), and right after the line was written
// (each case copies the home there; the next command must not show it again, and it stays in the
// history). With the old order, print then MarkSeen, every case showed the message again.
func TestCLIKillAfterDisplayShowsNothingTwice(t *testing.T) {
	cases := []struct {
		name string
		cmd  string
		// unseen: the message was received earlier (stored, acked, not shown), so the command
		// shows it from the store before connecting; otherwise it arrives on the connection.
		unseen bool
	}{
		{"recv/live", "recv", false},
		{"recv/unseen", "recv", true},
		{"chat/live", "chat", false},
		{"chat/unseen", "chat", true},
	}
	var opened atomic.Pointer[store.Store]
	storeOpened = opened.Store
	t.Cleanup(func() { storeOpened = nil })
	for _, tc := range cases {
		t.Run(tc.name, func(t *testing.T) {
			fastClients(t)
			ctx, cancel := context.WithTimeout(context.Background(), cliWait)
			defer cancel()
			srv := testserver.Start(t)
			alice, bob := t.TempDir(), t.TempDir()
			petrel(t, alice, "", "register", "--server", srv.URL(), "--name", "alice").must(t, 0)
			petrel(t, bob, "", "register", "--server", srv.URL(), "--name", "bob").must(t, 0)
			text := "shown once: " + tc.name
			id := strings.TrimSpace(petrel(t, alice, "", "send", "--to", "bob", text).must(t, 0).stdout)
			if tc.unseen {
				receiveWithSDK(t, ctx, bob, "alice", text)
			}
			line := "alice: " + text + "\n"
			out := &crashWriter{needle: line, st: &opened, home: t.TempDir(), copied: make(chan error, 1)}
			var errb testserver.Buffer
			stdin, closeStdin := io.Reader(strings.NewReader("")), func() {}
			if tc.cmd == "chat" && !tc.unseen {
				// Live: chat runs until the message has been shown.
				r, w := io.Pipe()
				stdin, closeStdin = r, func() { w.Close() }
			}
			args := []string{"--home", bob, "recv", "--wait", "100ms"}
			if tc.cmd == "chat" {
				args = []string{"--home", bob, "chat", "alice"}
			}
			done := make(chan int, 1)
			go func() {
				done <- run(ctx, args, &env{stdin: stdin, stdout: out, stderr: &errb, getenv: func(string) string { return "" }})
			}()
			out.WaitFor(t, line, cliWait)
			closeStdin()
			if code := <-done; code != 0 {
				t.Fatalf("%s: exit code %d; stderr:\n%s", tc.cmd, code, errb.String())
			}
			if n := strings.Count(out.String(), line); n != 1 {
				t.Fatalf("%s showed the message %d times:\n%s", tc.cmd, n, out.String())
			}
			if err := <-out.copied; err != nil {
				t.Fatal(err)
			}

			// Restart from the kill -9 copy: the message is not shown again, and it is kept.
			r := petrel(t, out.home, "", "recv", "--wait", "100ms").must(t, 0)
			if strings.Contains(r.stdout, text) {
				t.Fatalf("after a kill -9 right after %s showed it, recv showed the message again:\n%s", tc.cmd, r.stdout)
			}
			st, err := store.Open(out.home, store.Options{})
			if err != nil {
				t.Fatal(err)
			}
			defer st.Close()
			st.View(func(tx *store.Tx) error {
				if _, err := tx.HistoryByID(store.Incoming, "alice", id); err != nil {
					t.Errorf("message %s is not in the history after the restart: %v", id, err)
				}
				return nil
			})
		})
	}
}
