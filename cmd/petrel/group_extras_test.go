// Copyright 2026 The Petrel Authors
// SPDX-License-Identifier: Apache-2.0

package main

import (
	"context"
	"io"
	"slices"
	"strings"
	"testing"

	"github.com/petrelchat/petrel/client"
	"github.com/petrelchat/petrel/internal/testserver"
)

// groupHomes registers alice, bob and carol on srv, and alice creates group "club" with the
// other two; each member has received the creation.
func groupHomes(t *testing.T, srv *testserver.Server) (alice, bob, carol string) {
	t.Helper()
	homes := map[string]string{}
	for _, n := range []string{"alice", "bob", "carol"} {
		homes[n] = t.TempDir()
		petrel(t, homes[n], "", "register", "--server", srv.URL(), "--name", n).must(t, 0)
	}
	alice, bob, carol = homes["alice"], homes["bob"], homes["carol"]
	petrel(t, alice, "", "group", "create", "club", "--members", "bob,carol").must(t, 0)
	for _, h := range []string{bob, carol} {
		if evs := linesOf(recvJSON(t, h), "group_event"); len(evs) != 1 {
			t.Fatalf("group events: %v", evs)
		}
	}
	return alice, bob, carol
}

// nextGroupText waits for u's next text message in a group and checks it.
func (u *sdkUser) nextGroupText(t *testing.T, ctx context.Context, from, text string) *client.Message {
	t.Helper()
	for {
		select {
		case ev := <-u.events:
			if m, ok := ev.(*client.Message); ok && m.Group != "" && m.GroupEvent == nil && !m.Timer {
				if m.From != from || m.Text != text {
					t.Fatalf("got %+v, want %s's %q", m, from, text)
				}
				return m
			}
		case <-ctx.Done():
			t.Fatalf("no group message from %s", from)
			return nil
		}
	}
}

// Group marks: recv --json prints a group message's receipts (with its group, no from) once
// every member has it (read: printed it); chat --group shows ✓, then ✓✓ delivered and read
// once every member is.
func TestCLIGroupReceipts(t *testing.T) {
	fastClients(t)
	srv := testserver.Start(t)
	alice, bob, carol := groupHomes(t, srv)

	id := strings.TrimSpace(petrel(t, alice, "", "send", "--group", "club", "hi all").must(t, 0).stdout)
	recvJSON(t, bob) // printed: delivered and read by bob
	for _, r := range linesOf(recvJSON(t, alice), "receipt") {
		if r["id"] == id {
			t.Fatalf("a receipt with one member of two: %v", r)
		}
	}
	recvJSON(t, carol)
	kinds := map[string]bool{}
	for _, r := range linesOf(recvJSON(t, alice), "receipt") {
		if r["id"] != id || r["group"] != "club" {
			t.Fatalf("receipt %v", r)
		}
		if _, ok := r["from"]; ok {
			t.Fatalf("a group receipt with a from field: %v", r)
		}
		kinds[r["receipt"].(string)] = true
	}
	if !kinds["delivered"] || !kinds["read"] {
		t.Fatalf("alice's receipts: %v", kinds)
	}

	// chat --group: marks once both members have (read) the line.
	inR, inW := io.Pipe()
	defer inW.Close()
	out, errb := &testserver.Buffer{}, &testserver.Buffer{}
	done := make(chan int, 1)
	ctx, cancel := context.WithTimeout(context.Background(), 2*cliWait)
	defer cancel()
	go func() {
		e := &env{stdin: inR, stdout: out, stderr: errb, getenv: func(string) string { return "" }}
		done <- run(ctx, []string{"--home", alice, "chat", "--group", "club"}, e)
	}()
	bc, cc := onlineSDK(t, ctx, bob), onlineSDK(t, ctx, carol)
	io.WriteString(inW, "meeting at six\n")
	out.WaitFor(t, "you: meeting at six ✓\n", cliWait)
	bm := bc.nextGroupText(t, ctx, "alice", "meeting at six")
	cm := cc.nextGroupText(t, ctx, "alice", "meeting at six")
	out.WaitFor(t, "[✓✓ delivered: meeting at six]\n", cliWait)
	if err := bc.MarkRead(bm); err != nil {
		t.Fatal(err)
	}
	if err := cc.MarkRead(cm); err != nil {
		t.Fatal(err)
	}
	out.WaitFor(t, "[✓✓ read: meeting at six]\n", cliWait)

	// Typing in the group: shown as "bob is typing…" (a line, not on a terminal).
	if _, err := bc.SendGroup(ctx, "club", "ok"); err != nil { // gives bob's sender key out
		t.Fatal(err)
	}
	out.WaitFor(t, "[club] bob: ok\n", cliWait)
	if err := bc.SendGroupTyping(ctx, "club", true); err != nil {
		t.Fatal(err)
	}
	out.WaitFor(t, "bob is typing…\n", cliWait)
	io.WriteString(inW, "/quit\n")
	if code := <-done; code != 0 {
		t.Fatalf("chat exit %d: %s", code, errb.String())
	}
	if strings.Count(out.String(), "✓✓ delivered") != 1 || strings.Count(out.String(), "✓✓ read") != 1 {
		t.Fatalf("chat output:\n%s", out.String())
	}
}

// disappear --group: the change is shown to every member (recv text and --json with group), and
// later group messages carry the timer.
func TestCLIGroupDisappear(t *testing.T) {
	fastClients(t)
	srv := testserver.Start(t)
	alice, bob, carol := groupHomes(t, srv)

	if r := petrel(t, alice, "", "disappear", "--group", "club", "1d").must(t, 0); r.stdout != "you set disappearing messages to 1 day\n" {
		t.Fatalf("disappear output %q", r.stdout)
	}
	if r := petrel(t, bob, "", "recv", "--wait", "300ms").must(t, 0); r.stdout != "[club] alice set disappearing messages to 1 day\n" {
		t.Fatalf("bob's recv output %q", r.stdout)
	}
	petrel(t, alice, "", "send", "--group", "club", "secret").must(t, 0)
	lines := recvJSON(t, carol)
	timers, msgs := linesOf(lines, "disappearing"), linesOf(lines, "message")
	if len(timers) != 1 || timers[0]["from"] != "alice" || timers[0]["group"] != "club" || timers[0]["expires_in"] != float64(86400) {
		t.Fatalf("carol's timer lines: %v", lines)
	}
	if len(msgs) != 1 || msgs[0]["text"] != "secret" || msgs[0]["group"] != "club" || msgs[0]["expires_in"] != float64(86400) {
		t.Fatalf("carol's messages: %v", lines)
	}
	petrel(t, bob, "", "disappear", "--group", "club", "off").must(t, 0)
	if r := petrel(t, carol, "", "recv", "--wait", "300ms").must(t, 0); r.stdout != "[club] bob turned off disappearing messages\n" {
		t.Fatalf("carol's recv output %q", r.stdout)
	}
	petrel(t, alice, "", "disappear", "--group", "nosuch", "1h").must(t, 1)
}

// A receipt that overtakes the server's ack (a member's device answers before the ack reaches
// the chat loop) is shown after "you: …", quoting the message, not as "message ID" before it.
func TestChatMarkBeforeAckWaitsForTheAck(t *testing.T) {
	var lines []string
	x := newChatExtras(context.Background(), nil, "bob", false, func(l string) { lines = append(lines, l) }, nil)
	x.sendStarted()
	x.event(&client.Delivered{To: "bob", MessageID: "m1"})
	x.event(&client.Read{To: "bob", MessageID: "m1"})
	if len(lines) != 0 {
		t.Fatalf("shown before the ack: %q", lines)
	}
	x.sendDone("m1", "see you")
	want := []string{"you: see you ✓", "[✓✓ delivered: see you]", "[✓✓ read: see you]"}
	if !slices.Equal(lines, want) {
		t.Fatalf("lines %q, want %q", lines, want)
	}
	// Without a send waiting, a mark for an unknown message shows at once.
	x.event(&client.Delivered{To: "bob", MessageID: "m0"})
	if got := lines[len(lines)-1]; got != "[✓✓ delivered: message m0]" {
		t.Fatalf("last line %q", got)
	}
	// A failed send shows the marks it held.
	x.sendStarted()
	x.event(&client.Delivered{To: "bob", MessageID: "m2"})
	x.sendDone("", "")
	if got := lines[len(lines)-1]; got != "[✓✓ delivered: message m2]" {
		t.Fatalf("last line %q", got)
	}
}
