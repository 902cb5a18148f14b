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
	"github.com/petrelchat/petrel/internal/testserver"
	pb "github.com/petrelchat/petrel/proto/petrel/v1"
)

// recvJSON runs recv --json for home and returns its lines, decoded.
func recvJSON(t *testing.T, home string) []map[string]any {
	t.Helper()
	r := petrel(t, home, "", "recv", "--json", "--wait", "300ms").must(t, 0)
	var out []map[string]any
	for _, line := range strings.Split(strings.TrimSpace(r.stdout), "\n") {
		if line == "" {
			continue
		}
		var m map[string]any
		if err := json.Unmarshal([]byte(line), &m); err != nil {
			t.Fatalf("recv --json line %q: %v", line, err)
		}
		out = append(out, m)
	}
	return out
}

// linesOf returns the lines of type typ.
func linesOf(lines []map[string]any, typ string) []map[string]any {
	var out []map[string]any
	for _, l := range lines {
		if l["type"] == typ {
			out = append(out, l)
		}
	}
	return out
}

// The README's receipts, settings and disappearing flows as a script: recv prints receipts with
// --json (delivered, and read once the peer printed the message); read-receipts off; last-seen
// enforced by the server; disappear shown to both sides and carried by later messages.
func TestCLIReceiptsSettingsDisappear(t *testing.T) {
	fastClients(t)
	srv := testserver.Start(t)
	alice, bob := t.TempDir(), t.TempDir()
	petrel(t, alice, "", "register", "--server", srv.URL(), "--name", "alice").must(t, 0)
	petrel(t, bob, "", "register", "--server", srv.URL(), "--name", "bob").must(t, 0)

	id := strings.TrimSpace(petrel(t, alice, "", "send", "--to", "bob", "hi bob").must(t, 0).stdout)
	msgs := linesOf(recvJSON(t, bob), "message")
	if len(msgs) != 1 || msgs[0]["id"] != id || msgs[0]["text"] != "hi bob" || msgs[0]["direction"] != "in" {
		t.Fatalf("bob's messages: %v", msgs)
	}
	// Bob printed it: alice gets a delivery and a read receipt.
	receipts := linesOf(recvJSON(t, alice), "receipt")
	kinds := map[string]bool{}
	for _, r := range receipts {
		if r["id"] != id || r["from"] != "bob" {
			t.Fatalf("receipt %v", r)
		}
		kinds[r["receipt"].(string)] = true
	}
	if !kinds["delivered"] || !kinds["read"] {
		t.Fatalf("alice's receipts: %v", receipts)
	}

	// Read receipts off on bob: only delivered comes back.
	if r := petrel(t, bob, "", "settings", "read-receipts", "off").must(t, 0); r.stdout != "read receipts: off\n" {
		t.Fatalf("settings output %q", r.stdout)
	}
	if r := petrel(t, bob, "", "settings").must(t, 0); !strings.Contains(r.stdout, "read-receipts: off") || !strings.Contains(r.stdout, "last-seen: everyone") {
		t.Fatalf("settings:\n%s", r.stdout)
	}
	id2 := strings.TrimSpace(petrel(t, alice, "", "send", "--to", "bob", "unread").must(t, 0).stdout)
	recvJSON(t, bob)
	for _, r := range linesOf(recvJSON(t, alice), "receipt") {
		if r["id"] == id2 && r["receipt"] == "read" {
			t.Fatalf("a read receipt with read receipts off: %v", r)
		}
	}

	// Last seen: nobody hides bob from a stranger; everyone shows him again.
	petrel(t, bob, "", "settings", "last-seen", "nobody").must(t, 0)
	mallory := testserver.Dial(t, srv.URL())
	mallory.MustRegister("mallory")
	ask := func() *pb.Presence {
		r := mallory.Request(&pb.Frame{Body: &pb.Frame_SubscribePresence{SubscribePresence: &pb.SubscribePresence{Accounts: []string{"bob"}}}})
		if len(r.GetPresenceResult().GetPresence()) != 1 {
			t.Fatalf("SubscribePresence: %v", r)
		}
		return r.GetPresenceResult().GetPresence()[0]
	}
	if p := ask(); p.GetState() != pb.PresenceState_PRESENCE_STATE_UNKNOWN {
		t.Fatalf("bob under nobody: %v", p)
	}
	petrel(t, bob, "", "settings", "last-seen", "everyone").must(t, 0)
	// The command's connection may not have closed on the server yet: online, then offline.
	p := ask()
	for p.GetState() == pb.PresenceState_PRESENCE_STATE_ONLINE {
		if f := mallory.NextPush(); f.GetPresenceChanged() != nil {
			p = f.GetPresenceChanged().GetPresence()
		}
	}
	if p.GetState() != pb.PresenceState_PRESENCE_STATE_OFFLINE || p.GetLastSeenMs() == 0 {
		t.Fatalf("bob under everyone: %v", p)
	}
	petrel(t, bob, "", "settings", "last-seen", "friends").must(t, 2)
	petrel(t, bob, "", "settings", "read-receipts", "maybe").must(t, 2)

	// Disappearing messages.
	if r := petrel(t, alice, "", "disappear", "bob", "1d").must(t, 0); r.stdout != "you set disappearing messages to 1 day\n" {
		t.Fatalf("disappear output %q", r.stdout)
	}
	petrel(t, alice, "", "disappear", "bob", "2h").must(t, 2)
	petrel(t, alice, "", "send", "--to", "bob", "secret").must(t, 0)
	lines := recvJSON(t, bob)
	timers, msgs := linesOf(lines, "disappearing"), linesOf(lines, "message")
	if len(timers) != 1 || timers[0]["from"] != "alice" || timers[0]["expires_in"] != float64(86400) {
		t.Fatalf("bob's timer lines: %v", lines)
	}
	if len(msgs) != 1 || msgs[0]["text"] != "secret" || msgs[0]["expires_in"] != float64(86400) {
		t.Fatalf("bob's messages: %v", lines)
	}
	petrel(t, alice, "", "disappear", "bob", "off").must(t, 0)
	if r := petrel(t, bob, "", "recv", "--wait", "300ms").must(t, 0); r.stdout != "alice turned off disappearing messages\n" {
		t.Fatalf("recv output %q", r.stdout)
	}
}

// petrel chat shows the peer's presence, a mark per own message (sent, delivered, read), the
// peer's typing, and sends read receipts for what it shows.
func TestCLIChatMarksTypingPresence(t *testing.T) {
	fastClients(t)
	srv := testserver.Start(t)
	alice, bob := t.TempDir(), t.TempDir()
	petrel(t, alice, "", "register", "--server", srv.URL(), "--name", "alice").must(t, 0)
	petrel(t, bob, "", "register", "--server", srv.URL(), "--name", "bob").must(t, 0)

	inR, inW := io.Pipe()
	defer inW.Close()
	out, errb := &testserver.Buffer{}, &testserver.Buffer{}
	done := make(chan int, 1)
	ctx, cancel := context.WithTimeout(context.Background(), 2*cliWait)
	defer cancel()
	go func() {
		e := &env{stdin: inR, stdout: out, stderr: errb, getenv: func(string) string { return "" }}
		done <- run(ctx, []string{"--home", alice, "chat", "bob"}, e)
	}()
	out.WaitFor(t, "[bob was last seen", cliWait) // bob registered, then left
	bc := onlineSDK(t, ctx, bob)
	out.WaitFor(t, "[bob is online]\n", cliWait)

	io.WriteString(inW, "are you there?\n")
	out.WaitFor(t, "you: are you there? ✓\n", cliWait)
	bc.wantMessage(t, ctx, "alice", "are you there?")
	out.WaitFor(t, "[✓✓ delivered: are you there?]\n", cliWait)
	msgs, err := bc.History(0, 10)
	if err != nil || len(msgs) != 1 {
		t.Fatalf("bob's history: %v %v", msgs, err)
	}
	if err := bc.MarkRead(msgs[0]); err != nil {
		t.Fatal(err)
	}
	out.WaitFor(t, "[✓✓ read: are you there?]\n", cliWait)

	// Typing: shown once per start; a message from bob is shown and read-receipted.
	if err := bc.SendTyping(ctx, "alice", true); err != nil {
		t.Fatal(err)
	}
	out.WaitFor(t, "bob is typing…\n", cliWait)
	id, err := bc.Send(ctx, "alice", "yes")
	if err != nil {
		t.Fatal(err)
	}
	out.WaitFor(t, "bob: yes\n", cliWait)
	for {
		select {
		case ev := <-bc.events:
			if rd, ok := ev.(*client.Read); ok && rd.MessageID == id {
				io.WriteString(inW, "/quit\n")
				if code := <-done; code != 0 {
					t.Fatalf("chat exit %d: %s", code, errb.String())
				}
				return
			}
		case <-time.After(cliWait):
			t.Fatalf("bob got no read receipt for the message chat showed; chat output:\n%s", out.String())
		}
	}
}
