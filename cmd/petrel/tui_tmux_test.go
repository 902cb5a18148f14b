// Copyright 2026 The Petrel Authors
// SPDX-License-Identifier: Apache-2.0

package main

import (
	"context"
	"fmt"
	"os/exec"
	"strings"
	"testing"
	"time"

	"github.com/petrelchat/petrel/client"
)

// The tui tested as a person uses it: the built binary in a tmux pane (120×40), keys sent with
// send-keys, the screen read with capture-pane, against a petrel serve process; bob and carol
// are SDK clients in the test.

const tmuxWait = 60 * time.Second

type tmuxPane struct {
	t    *testing.T
	sock string
}

func startTmux(t *testing.T, command string) *tmuxPane {
	t.Helper()
	if _, err := exec.LookPath("tmux"); err != nil {
		t.Skip("tmux is not installed (.ci/run installs it)")
	}
	p := &tmuxPane{t: t, sock: fmt.Sprintf("petrel-test-%d", time.Now().UnixNano())}
	p.tmux("new-session", "-d", "-x", "120", "-y", "40", "-s", "petrel", command)
	t.Cleanup(func() { _ = exec.Command("tmux", "-L", p.sock, "kill-server").Run() })
	return p
}

func (p *tmuxPane) tmux(args ...string) string {
	p.t.Helper()
	out, err := exec.Command("tmux", append([]string{"-L", p.sock}, args...)...).CombinedOutput()
	if err != nil {
		p.t.Fatalf("tmux %s: %v: %s", strings.Join(args, " "), err, out)
	}
	return string(out)
}

// typeText types text literally; key sends named keys (Enter, Tab, BTab).
func (p *tmuxPane) typeText(text string) {
	p.t.Helper()
	p.tmux("send-keys", "-t", "petrel", "-l", text)
}
func (p *tmuxPane) key(keys ...string) {
	p.t.Helper()
	p.tmux(append([]string{"send-keys", "-t", "petrel"}, keys...)...)
}

func (p *tmuxPane) screen() string { p.t.Helper(); return p.tmux("capture-pane", "-p", "-t", "petrel") }

// right is the open conversation's panel: what follows the first │ of each line.
func right(screen string) string {
	var b strings.Builder
	for _, l := range strings.Split(screen, "\n") {
		if i := strings.Index(l, "│"); i >= 0 {
			b.WriteString(l[i+len("│"):])
		}
		b.WriteString("\n")
	}
	return b.String()
}

// left is the conversation list.
func left(screen string) string {
	var b strings.Builder
	for _, l := range strings.Split(screen, "\n") {
		if i := strings.Index(l, "│"); i >= 0 {
			b.WriteString(l[:i])
		}
		b.WriteString("\n")
	}
	return b.String()
}

// waitFor polls the screen until ok says yes, or fails after tmuxWait with the last screen.
func (p *tmuxPane) waitFor(what string, ok func(screen string) bool) string {
	p.t.Helper()
	deadline := time.Now().Add(tmuxWait)
	for {
		s := p.screen()
		if ok(s) {
			return s
		}
		if time.Now().After(deadline) {
			p.t.Fatalf("waiting for %s; the screen:\n%s", what, s)
		}
		time.Sleep(50 * time.Millisecond) // polling the screen, not synchronising
	}
}

func (p *tmuxPane) waitRight(text string) string {
	p.t.Helper()
	return p.waitFor(fmt.Sprintf("%q in the conversation", text), func(s string) bool { return strings.Contains(right(s), text) })
}

func (p *tmuxPane) waitStatus(text string) string {
	p.t.Helper()
	return p.waitFor(fmt.Sprintf("%q in the status line", text), func(s string) bool {
		lines := strings.Split(strings.TrimRight(s, "\n"), "\n")
		return len(lines) >= 2 && strings.Contains(lines[len(lines)-2], text)
	})
}

// readMessage waits for u's next message with text, and reads it (a read receipt goes back).
func (u *sdkUser) readMessage(t *testing.T, ctx context.Context, text string) {
	t.Helper()
	for {
		select {
		case ev := <-u.events:
			if m, ok := ev.(*client.Message); ok {
				if m.Text != text {
					t.Fatalf("got %q from %s, want %q", m.Text, m.From, text)
				}
				if err := u.MarkRead(m); err != nil {
					t.Fatal(err)
				}
				return
			}
		case <-ctx.Done():
			t.Fatalf("no message %q", text)
		}
	}
}

// groupEvent waits for u's next membership change, and returns its group id.
func (u *sdkUser) groupEvent(t *testing.T, ctx context.Context) string {
	t.Helper()
	for {
		select {
		case ev := <-u.events:
			if m, ok := ev.(*client.Message); ok && m.GroupEvent != nil {
				return m.Group
			}
		case <-ctx.Done():
			t.Fatal("no group event")
		}
	}
}

// groupMessage waits for alice's message text in group gid (skipping other events and members).
func (u *sdkUser) groupMessage(t *testing.T, ctx context.Context, gid, text string) *client.Message {
	t.Helper()
	for {
		select {
		case ev := <-u.events:
			if m, ok := ev.(*client.Message); ok && m.Group == gid && m.GroupEvent == nil && m.From == "alice" {
				if m.Text != text {
					t.Fatalf("got %q from alice in the group, want %q", m.Text, text)
				}
				return m
			}
		case <-ctx.Done():
			t.Fatalf("no group message %q", text)
		}
	}
}

func TestTUIInTmux(t *testing.T) {
	ctx, cancel := context.WithTimeout(context.Background(), 4*time.Minute)
	defer cancel()
	srv := startServer(t, t.TempDir(), "127.0.0.1:0")
	alice, bob, carol := t.TempDir(), t.TempDir(), t.TempDir()
	for _, u := range []struct{ home, name string }{{alice, "alice"}, {bob, "bob"}, {carol, "carol"}} {
		cli(t, u.home, "register", "--server", srv.url, "--name", u.name)
	}
	bu, cu := onlineSDK(t, ctx, bob), onlineSDK(t, ctx, carol)
	if _, err := bu.Send(ctx, "alice", "hello from bob"); err != nil {
		t.Fatal(err)
	}

	// 'petrel' alone on a terminal opens the tui; the only conversation opens by itself.
	p := startTmux(t, fmt.Sprintf("%s --home %s", petrelBin, alice))
	p.waitStatus("connected as alice")
	p.waitRight("hello from bob")
	s := p.screen()
	if !strings.Contains(right(s), "Today") || !strings.Contains(right(s), "bob: hello from bob") {
		t.Fatalf("no day separator or sender:\n%s", s)
	}

	// A message in another conversation: unread count, not shown in the open one.
	if _, err := cu.Send(ctx, "alice", "hi from carol"); err != nil {
		t.Fatal(err)
	}
	p.waitFor("carol (1) in the list", func(s string) bool { return strings.Contains(left(s), "carol (1)") })
	if strings.Contains(right(p.screen()), "hi from carol") {
		t.Fatal("carol's message shows in bob's conversation")
	}
	// Switch with Tab, and back with Shift-Tab.
	p.key("Tab")
	p.waitRight("carol: hi from carol")
	p.waitFor("carol read", func(s string) bool { return !strings.Contains(left(s), "carol (1)") })
	p.key("BTab")
	p.waitRight("bob: hello from bob")

	// Send; ticks go ✓ sent → ✓✓ delivered → ✓✓ read as bob's device receives and reads it.
	p.typeText("hi bob")
	p.key("Enter")
	p.waitRight("you: hi bob")
	bu.readMessage(t, ctx, "hi bob")
	p.waitRight("you: hi bob ✓✓ read")
	// A reply from bob.
	if _, err := bu.Send(ctx, "alice", "reply from bob"); err != nil {
		t.Fatal(err)
	}
	p.waitRight("bob: reply from bob")

	// A hostile message cannot forge a line or reorder the screen: it shows escaped.
	if _, err := bu.Send(ctx, "alice", "x\nalice: forged\u202eabc\u200b\x1b[2J"); err != nil {
		t.Fatal(err)
	}
	s = p.waitRight(`bob: x\nalice: forged\u202eabc\u200b\x1b[2J`)
	for _, l := range strings.Split(right(s), "\n") {
		if strings.HasPrefix(strings.TrimSpace(l), "alice: forged") || strings.ContainsAny(l, "\u202e\u200b\x1b") {
			t.Fatalf("a forged line or a raw control character on the screen:\n%s", s)
		}
	}

	// Commands: an unknown one is never sent; // sends a literal slash; /search filters.
	p.typeText("/bogus")
	p.key("Enter")
	p.waitStatus("unknown command /bogus")
	p.typeText("//slash")
	p.key("Enter")
	bu.readMessage(t, ctx, "/slash")
	p.typeText("/search reply")
	p.key("Enter")
	s = p.waitRight(`search "reply": 1 match(es)`)
	if strings.Contains(right(s), "hello from bob") {
		t.Fatalf("search shows a message without the text:\n%s", s)
	}
	p.key("Escape")
	p.waitRight("hello from bob")

	// Offline and back: the status line says so in words, the message waits queued and leaves
	// when the server is back.
	srv.kill()
	p.waitStatus("offline")
	p.typeText("while offline")
	p.key("Enter")
	p.waitStatus("offline — 1 message queued")
	p.waitRight("you: while offline … queued")
	startServer(t, srv.data, srv.addr)
	p.waitStatus("reconnected")
	bu.readMessage(t, ctx, "while offline")
	p.waitRight("you: while offline ✓✓ read")

	// A group: it is listed and opened at once with its membership line; a member's message shows
	// with their name; a reply reaches both, and is delivered (read) once every member has it.
	p.typeText("/group create club bob,carol")
	p.key("Enter")
	p.waitStatus("created group club with alice, bob, carol")
	p.waitFor("# club in the list", func(s string) bool { return strings.Contains(left(s), "▸ # club") })
	p.waitRight("alice created the group with bob, carol")
	gid := bu.groupEvent(t, ctx)
	cu.groupEvent(t, ctx)
	if _, err := bu.SendGroup(ctx, gid, "hi club from bob"); err != nil {
		t.Fatal(err)
	}
	p.waitRight("bob: hi club from bob")
	p.typeText("hello club")
	p.key("Enter")
	mb, mc := bu.groupMessage(t, ctx, gid, "hello club"), cu.groupMessage(t, ctx, gid, "hello club")
	p.waitRight("you: hello club ✓✓ delivered")
	// bob's read alone is not enough: his next message comes after his receipt.
	if err := bu.MarkRead(mb); err != nil {
		t.Fatal(err)
	}
	if _, err := bu.SendGroup(ctx, gid, "read it"); err != nil {
		t.Fatal(err)
	}
	s = p.waitRight("bob: read it")
	if !strings.Contains(right(s), "you: hello club ✓✓ delivered") {
		t.Fatalf("read before every member read it:\n%s", s)
	}
	if err := cu.MarkRead(mc); err != nil {
		t.Fatal(err)
	}
	p.waitRight("you: hello club ✓✓ read")

	// /quit leaves and restores the terminal.
	p.typeText("/quit")
	p.key("Enter")
	deadline := time.Now().Add(tmuxWait)
	for exec.Command("tmux", "-L", p.sock, "has-session", "-t", "petrel").Run() == nil {
		if time.Now().After(deadline) {
			t.Fatalf("the tui did not quit on /quit:\n%s", p.screen())
		}
		time.Sleep(50 * time.Millisecond)
	}
}
