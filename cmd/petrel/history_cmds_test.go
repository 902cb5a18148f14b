// Copyright 2026 The Petrel Authors
// SPDX-License-Identifier: Apache-2.0

package main

import (
	"context"
	"encoding/json"
	"io"
	"strings"
	"testing"
	"time"

	"github.com/petrelchat/petrel/client"
	"github.com/petrelchat/petrel/client/store"
	"github.com/petrelchat/petrel/internal/testserver"
)

// petrel chat NAME shows NAME's messages only: carol's, waiting before the chat and arriving
// during it, are counted in a notice and stay unseen for recv.
func TestCLIChatShowsOnlyItsConversation(t *testing.T) {
	fastClients(t)
	srv := testserver.Start(t)
	alice, bob, carol := t.TempDir(), t.TempDir(), t.TempDir()
	for _, u := range []struct{ home, name string }{{alice, "alice"}, {bob, "bob"}, {carol, "carol"}} {
		petrel(t, u.home, "", "register", "--server", srv.URL(), "--name", u.name).must(t, 0)
	}
	petrel(t, carol, "", "send", "--to", "alice", "carol before").must(t, 0)
	petrel(t, bob, "", "send", "--to", "alice", "bob before").must(t, 0)

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
	out.WaitFor(t, "bob: bob before\n", cliWait)
	out.WaitFor(t, "[1 new message from carol: petrel chat carol]\n", cliWait)
	petrel(t, carol, "", "send", "--to", "alice", "carol during").must(t, 0)
	out.WaitFor(t, "[2 new messages from carol: petrel chat carol]\n", cliWait)
	io.WriteString(inW, "/quit\n")
	if code := <-done; code != 0 {
		t.Fatalf("chat exit code %d; stderr:\n%s", code, errb.String())
	}
	if strings.Contains(out.String(), "carol before") || strings.Contains(out.String(), "carol during") {
		t.Fatalf("chat with bob showed carol's messages:\n%s", out.String())
	}
	r := petrel(t, alice, "", "recv", "--wait", "100ms").must(t, 0)
	if r.stdout != "carol: carol before\ncarol: carol during\n" {
		t.Fatalf("recv after the chat printed %q", r.stdout)
	}
}

// history prints the stored conversation with local times and marks, and --json the same keys
// as recv --json plus status; outbox lists what is queued while the server is away.
func TestCLIHistoryAndOutbox(t *testing.T) {
	fastClients(t)
	srv := testserver.Start(t)
	alice, bob := t.TempDir(), t.TempDir()
	petrel(t, alice, "", "register", "--server", srv.URL(), "--name", "alice").must(t, 0)
	petrel(t, bob, "", "register", "--server", srv.URL(), "--name", "bob").must(t, 0)
	petrel(t, alice, "", "send", "--to", "bob", "one").must(t, 0)
	petrel(t, bob, "", "recv", "--wait", "100ms").must(t, 0)
	petrel(t, bob, "", "send", "--to", "alice", "two\u202e\nforged").must(t, 0)
	petrel(t, alice, "", "recv", "--wait", "500ms").must(t, 0) // the receipts for "one" too

	r := petrel(t, alice, "", "history", "bob").must(t, 0)
	lines := strings.Split(strings.TrimSpace(r.stdout), "\n")
	if len(lines) != 2 || !strings.HasSuffix(lines[0], "] you: one ✓✓ read") ||
		!strings.HasSuffix(lines[1], `] bob: two\u202e\nforged`) || !strings.HasPrefix(lines[0], "["+time.Now().Format("2006-01-02")) {
		t.Fatalf("history:\n%s", r.stdout)
	}
	r = petrel(t, alice, "", "history", "bob", "--limit", "1", "--json").must(t, 0)
	var j map[string]any
	if err := json.Unmarshal([]byte(r.stdout), &j); err != nil {
		t.Fatalf("history --json: %v\n%s", err, r.stdout)
	}
	if j["type"] != "message" || j["from"] != "bob" || j["text"] != "two\u202e\nforged" || j["direction"] != "in" || j["received_at"] == "" {
		t.Fatalf("history --json: %s", r.stdout)
	}
	if strings.ContainsRune(r.stdout, '\u202e') {
		t.Fatalf("history --json printed a raw bidi override: %q", r.stdout)
	}
	r = petrel(t, alice, "", "history", "bob", "--json").must(t, 0)
	if !strings.Contains(r.stdout, `"direction":"out","status":"read"`) {
		t.Fatalf("history --json of an own message has no status read:\n%s", r.stdout)
	}
	r = petrel(t, alice, "", "outbox").must(t, 0)
	if !strings.Contains(r.stdout, "the outbox is empty") {
		t.Fatalf("outbox after delivery:\n%s", r.stdout)
	}

	// A message the server has not acked (queued through the SDK without a connection): send's
	// hint names what delivers it, outbox lists it and why, history marks it queued.
	srv.Stop()
	st, err := store.Open(alice, store.Options{})
	if err != nil {
		t.Fatal(err)
	}
	c, err := client.Open(client.Config{Store: st})
	if err != nil {
		t.Fatal(err)
	}
	id, err := c.Enqueue("bob", "three")
	if err != nil {
		t.Fatal(err)
	}
	var hint strings.Builder
	queuedHint(&env{stderr: &hint}, "send", st, id, context.DeadlineExceeded)
	c.Close()
	st.Close()
	if !strings.Contains(hint.String(), "message "+id+" is queued in this home; the next 'petrel send', 'recv' or 'chat' delivers it") {
		t.Fatalf("send's hint: %q", hint.String())
	}
	r = petrel(t, alice, "", "outbox").must(t, 0)
	if !strings.Contains(r.stdout, "queued  to bob: three — not acked by the server yet") {
		t.Fatalf("outbox:\n%s", r.stdout)
	}
	r = petrel(t, alice, "", "outbox", "--json").must(t, 0)
	if err := json.Unmarshal([]byte(strings.TrimSpace(r.stdout)), &j); err != nil || j["state"] != "queued" || j["to"] != "bob" || j["text"] != "three" {
		t.Fatalf("outbox --json: %v\n%s", err, r.stdout)
	}
	r = petrel(t, alice, "", "history", "bob", "--limit", "1").must(t, 0)
	if !strings.HasSuffix(strings.TrimSpace(r.stdout), "you: three … queued") {
		t.Fatalf("history of a queued message:\n%s", r.stdout)
	}
	petrel(t, alice, "", "history", "--group", "nope").must(t, 1)
	petrel(t, alice, "", "history", "bob", "--limit", "0").must(t, 2)
}
