// Copyright 2026 The Petrel Authors
// SPDX-License-Identifier: Apache-2.0

package main

import (
	"context"
	"regexp"
	"slices"
	"testing"
	"time"

	tea "charm.land/bubbletea/v2"
	"google.golang.org/protobuf/proto"

	"github.com/petrelchat/petrel/client"
	"github.com/petrelchat/petrel/client/store"
	"github.com/petrelchat/petrel/internal/testserver"
	petrelv1 "github.com/petrelchat/petrel/proto/petrel/v1"
)

// The tui marks read only what it drew: of 60 unseen messages from bob it opens at the first,
// marks nothing before the window held a message for tuiDrawSettle (a crash then sends no
// receipt), then exactly the messages on the screen, and the others as they are scrolled into
// view and stay there; one scrolled past quickly stays unseen.
func TestTUIMarksReadOnlyWhatWasDrawn(t *testing.T) {
	fastClients(t)
	srv := testserver.Start(t)
	alice := t.TempDir()
	petrel(t, alice, "", "register", "--server", srv.URL(), "--name", "alice").must(t, 0)
	const total = 60
	fillUnseen(t, alice, "bob", "bob", total)

	st, err := store.Open(alice, store.Options{})
	if err != nil {
		t.Fatal(err)
	}
	defer st.Close()
	c, err := client.Open(client.Config{Store: st}) // never connected: receipts wait in the outbox
	if err != nil {
		t.Fatal(err)
	}
	defer c.Close()
	m := newTUIModel(context.Background(), c, st, false, false)
	now := time.Now()
	m.now = func() time.Time { return now }
	if err := m.load(); err != nil {
		t.Fatal(err)
	}
	m.Update(tea.WindowSizeMsg{Width: 120, Height: 40})

	onScreen := regexp.MustCompile(`bob: bob (\d+)`)
	draw := func() []string {
		var ids []string
		for _, g := range onScreen.FindAllStringSubmatch(right(stripANSI(m.View().Content)), -1) {
			ids = append(ids, "bob-"+leftPad(g[1]))
		}
		return ids
	}
	// seenAndRead returns the ids marked seen in the store and those with a read receipt queued.
	seenAndRead := func() (seen, read []string) {
		_ = st.View(func(tx *store.Tx) error {
			recs, err := tx.History(0, 1000)
			for _, r := range recs {
				if r.Seen {
					seen = append(seen, r.ID)
				}
			}
			out, err2 := tx.PendingOutbox(1000)
			for _, e := range out {
				var ct petrelv1.Content
				if e.Kind == store.KindReceipt && proto.Unmarshal(e.Content, &ct) == nil {
					read = append(read, ct.GetReceipt().GetMessageIds()...)
				}
			}
			if err == nil {
				err = err2
			}
			if err != nil {
				t.Fatal(err)
			}
			return nil
		})
		slices.Sort(seen)
		slices.Sort(read)
		return seen, read
	}

	shown := draw()
	if len(shown) == 0 || shown[0] != "bob-00000" || len(shown) == total {
		t.Fatalf("the conversation did not open at its first unseen message, with more below: %v", shown)
	}
	m.Update(tuiTickMsg{})
	if seen, read := seenAndRead(); len(seen)+len(read) != 0 {
		t.Fatalf("marked before the screen held them for %v: seen %v, read %v", tuiDrawSettle, seen, read)
	}
	now = now.Add(tuiDrawSettle)
	m.Update(tuiTickMsg{})
	seen, read := seenAndRead()
	if !slices.Equal(seen, shown) || !slices.Equal(read, shown) {
		t.Fatalf("drawn %v\nseen %v\nread %v", shown, seen, read)
	}
	if u := m.convs["bob"].unread; u != total-len(shown) {
		t.Fatalf("unread count %d, want %d", u, total-len(shown))
	}

	// Scrolled down and back before the settle time: what passed by stays unseen.
	m.Update(tea.KeyPressMsg{Code: tea.KeyPgDown})
	passing := draw()
	m.Update(tea.KeyPressMsg{Code: tea.KeyPgUp})
	draw()
	now = now.Add(tuiDrawSettle)
	m.Update(tuiTickMsg{})
	if seen, _ := seenAndRead(); !slices.Equal(seen, shown) || slices.Equal(passing, shown) {
		t.Fatalf("messages that passed by (%v) were marked: seen %v", passing, seen)
	}

	// Scrolled to the end and left there: every message drawn, every one read once.
	for range 5 {
		m.Update(tea.KeyPressMsg{Code: tea.KeyPgDown})
		draw()
		now = now.Add(tuiDrawSettle)
		m.Update(tuiTickMsg{})
	}
	seen, read = seenAndRead()
	if len(seen) != total || len(read) != total || len(slices.Compact(slices.Clone(read))) != total {
		t.Fatalf("after scrolling through: %d seen, %d read receipts", len(seen), len(read))
	}
	if u := m.convs["bob"].unread; u != 0 {
		t.Fatalf("unread count %d after reading everything", u)
	}
}

func leftPad(n string) string {
	for len(n) < 5 {
		n = "0" + n
	}
	return n
}
