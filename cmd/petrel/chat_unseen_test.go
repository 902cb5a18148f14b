// Copyright 2026 The Petrel Authors
// SPDX-License-Identifier: Apache-2.0

package main

import (
	"context"
	"fmt"
	"io"
	"strings"
	"testing"
	"time"

	"github.com/petrelchat/petrel/client/store"
	"github.com/petrelchat/petrel/internal/testserver"
)

// fillUnseen adds n unseen received messages from peer to the store of home, in one transaction,
// and returns the seq of the last.
func fillUnseen(t *testing.T, home, peer, prefix string, n int) uint64 {
	t.Helper()
	st, err := store.Open(home, store.Options{})
	if err != nil {
		t.Fatal(err)
	}
	defer st.Close()
	var last uint64
	now := time.Now()
	err = st.Update(func(tx *store.Tx) error {
		for i := range n {
			r := &store.HistoryRecord{ID: fmt.Sprintf("%s-%05d", prefix, i), Dir: store.Incoming, Peer: peer,
				Body: fmt.Sprintf("%s %d", prefix, i), SentAt: now, ServerTime: now, ReceivedAt: now}
			if err := tx.AddHistory(r); err != nil {
				return err
			}
			last = r.Seq
		}
		return nil
	})
	if err != nil {
		t.Fatal(err)
	}
	return last
}

// petrel chat bob shows bob's unseen messages even behind more than one page (unseenScan) of
// unseen messages from others, which stay unseen and are counted once.
func TestCLIChatUnseenBehindOthers(t *testing.T) {
	fastClients(t)
	srv := testserver.Start(t)
	alice := t.TempDir()
	petrel(t, alice, "", "register", "--server", srv.URL(), "--name", "alice").must(t, 0)
	others := unseenScan + 904
	fillUnseen(t, alice, "carol", "carol", others)
	fillUnseen(t, alice, "bob", "bob old", 2)

	inR, inW := io.Pipe()
	defer inW.Close()
	out, errb := &testserver.Buffer{}, &testserver.Buffer{}
	done := make(chan int, 1)
	ctx, cancel := context.WithTimeout(context.Background(), cliWait)
	defer cancel()
	go func() {
		e := &env{stdin: inR, stdout: out, stderr: errb, getenv: func(string) string { return "" }}
		done <- run(ctx, []string{"--home", alice, "chat", "bob"}, e)
	}()
	out.WaitFor(t, "bob: bob old 0\nbob: bob old 1\n", cliWait)
	out.WaitFor(t, fmt.Sprintf("[%d new messages from carol: petrel chat carol]\n", others), cliWait)
	io.WriteString(inW, "/quit\n")
	if code := <-done; code != 0 {
		t.Fatalf("chat exit code %d; stderr:\n%s", code, errb.String())
	}
	if n := strings.Count(out.String(), "new messages from carol"); n != 1 {
		t.Fatalf("carol's messages counted %d times:\n%s", n, out.String())
	}
	st, err := store.Open(alice, store.Options{})
	if err != nil {
		t.Fatal(err)
	}
	defer st.Close()
	_ = st.View(func(tx *store.Tx) error {
		u, err := tx.Unseen(others + 10)
		if err != nil {
			t.Fatal(err)
		}
		if len(u) != others {
			t.Errorf("%d unseen after the chat, want carol's %d", len(u), others)
		}
		for _, r := range u {
			if r.Peer != "carol" {
				t.Fatalf("a message from %s is still unseen", r.Peer)
			}
		}
		return nil
	})
}
