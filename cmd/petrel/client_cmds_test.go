// Copyright 2026 The Petrel Authors
// SPDX-License-Identifier: Apache-2.0

package main

import (
	"bytes"
	"context"
	"encoding/json"
	"errors"
	"io"
	"os"
	"path/filepath"
	"regexp"
	"strings"
	"testing"
	"time"

	"github.com/petrelchat/petrel/client"
	"github.com/petrelchat/petrel/client/store"
	"github.com/petrelchat/petrel/internal/testserver"
)

const cliWait = 20 * time.Second

type result struct {
	code           int
	stdout, stderr string
}

// petrel runs one command in-process with home as its --home.
func petrel(t *testing.T, home, stdin string, args ...string) result {
	t.Helper()
	var out, errb bytes.Buffer
	ctx, cancel := context.WithTimeout(context.Background(), cliWait)
	defer cancel()
	e := &env{stdin: strings.NewReader(stdin), stdout: &out, stderr: &errb, getenv: func(string) string { return "" }}
	code := run(ctx, append([]string{"--home", home}, args...), e)
	return result{code, out.String(), errb.String()}
}

func (r result) must(t *testing.T, want int) result {
	t.Helper()
	if r.code != want {
		t.Fatalf("exit code %d, want %d\nstdout:\n%s\nstderr:\n%s", r.code, want, r.stdout, r.stderr)
	}
	return r
}

func fastClients(t *testing.T) {
	old := clientTuning
	clientTuning = client.Config{ReconnectBase: 5 * time.Millisecond, ReconnectMax: 100 * time.Millisecond}
	t.Cleanup(func() { clientTuning = old })
}

var idRE = regexp.MustCompile(`^[A-Za-z0-9_-]{22}$`)

func TestCLIUsage(t *testing.T) {
	home := t.TempDir()
	for _, cmd := range []string{"register", "send", "recv", "chat", "whoami", "safety-number"} {
		t.Run(cmd, func(t *testing.T) {
			r := petrel(t, home, "", cmd, "--help").must(t, 0)
			if !strings.Contains(r.stderr, "usage: petrel "+cmd) {
				t.Fatalf("--help output:\n%s", r.stderr)
			}
			petrel(t, home, "", cmd, "--no-such-flag").must(t, 2)
		})
	}
	cases := []struct {
		name string
		args []string
	}{
		{"register without name", []string{"register", "--server", "http://127.0.0.1:1"}},
		{"register without server", []string{"register", "--name", "x"}},
		{"send without to", []string{"send", "hi"}},
		{"send without text", []string{"send", "--to", "bob"}},
		{"recv with argument", []string{"recv", "x"}},
		{"chat without name", []string{"chat"}},
		{"safety-number without name", []string{"safety-number"}},
	}
	for _, tc := range cases {
		t.Run(tc.name, func(t *testing.T) {
			r := petrel(t, home, "", tc.args...).must(t, 2)
			if !strings.HasPrefix(r.stderr, "petrel "+tc.args[0]+": ") {
				t.Fatalf("stderr: %q", r.stderr)
			}
		})
	}
}

func TestCLINotRegistered(t *testing.T) {
	home := filepath.Join(t.TempDir(), "nohome")
	for _, args := range [][]string{{"whoami"}, {"recv"}, {"send", "--to", "bob", "hi"}, {"safety-number", "bob"}} {
		r := petrel(t, home, "", args...).must(t, 1)
		if !strings.HasPrefix(r.stderr, "petrel "+args[0]+": no registered device") {
			t.Fatalf("stderr: %q", r.stderr)
		}
	}
	if _, err := os.Stat(home); !errors.Is(err, os.ErrNotExist) {
		t.Fatalf("a command other than register created the home: %v", err)
	}
}

func TestCLIServerUnreachable(t *testing.T) {
	r := petrel(t, t.TempDir(), "", "register", "--server", "http://127.0.0.1:1", "--name", "alice").must(t, 1)
	if !strings.Contains(r.stderr, "petrel register: nothing answers at http://127.0.0.1:1 (connection refused): is 'petrel serve' running") {
		t.Fatalf("stderr: %q", r.stderr)
	}
}

func TestCLIHomeLocked(t *testing.T) {
	home := t.TempDir()
	st, err := store.Open(home, store.Options{})
	if err != nil {
		t.Fatal(err)
	}
	defer st.Close()
	r := petrel(t, home, "", "whoami").must(t, 1)
	if !strings.Contains(r.stderr, "another petrel process is using "+home) {
		t.Fatalf("stderr: %q", r.stderr)
	}
}

func TestCLIEndToEnd(t *testing.T) {
	fastClients(t)
	srv := testserver.Start(t)
	alice, bob := t.TempDir(), t.TempDir()

	r := petrel(t, alice, "", "register", "--server", srv.URL(), "--name", "alice").must(t, 0)
	if !strings.Contains(r.stdout, "registered alice on "+srv.URL()) || !strings.Contains(r.stdout, "device id:") {
		t.Fatalf("register output:\n%s", r.stdout)
	}
	petrel(t, bob, "", "register", "--server", srv.URL(), "--name", "bob").must(t, 0)

	// Registration errors.
	r = petrel(t, t.TempDir(), "", "register", "--server", srv.URL(), "--name", "bob").must(t, 1)
	if !strings.Contains(r.stderr, "petrel register: that name is taken") {
		t.Fatalf("name taken: %q", r.stderr)
	}
	r = petrel(t, t.TempDir(), "", "register", "--server", srv.URL(), "--name", "-bad").must(t, 1)
	if !strings.Contains(r.stderr, "invalid name") {
		t.Fatalf("invalid name: %q", r.stderr)
	}
	r = petrel(t, alice, "", "register", "--server", srv.URL(), "--name", "alice2").must(t, 1)
	if !strings.Contains(r.stderr, "already holds a registered device") {
		t.Fatalf("second registration: %q", r.stderr)
	}

	// whoami
	r = petrel(t, alice, "", "whoami").must(t, 0)
	for _, want := range []string{"name:        alice", "server:      " + srv.URL(), "device id:", "fingerprint:"} {
		if !strings.Contains(r.stdout, want) {
			t.Fatalf("whoami output lacks %q:\n%s", want, r.stdout)
		}
	}

	// send: one message from arguments, then lines of stdin.
	r = petrel(t, alice, "", "send", "--to", "bob", "hello", "bob").must(t, 0)
	id1 := strings.TrimSpace(r.stdout)
	if !idRE.MatchString(id1) {
		t.Fatalf("send printed %q, want a message id", r.stdout)
	}
	r = petrel(t, alice, "line one\n\nline two\n", "send", "--to", "bob", "-").must(t, 0)
	ids := strings.Fields(r.stdout)
	if len(ids) != 2 {
		t.Fatalf("send - printed %q, want two ids", r.stdout)
	}
	r = petrel(t, alice, "", "send", "--to", "nobody", "hi").must(t, 1)
	if r.stderr != "petrel send: unknown user \"nobody\"\n" {
		t.Fatalf("unknown user: %q", r.stderr)
	}

	// recv prints each message once.
	r = petrel(t, bob, "", "recv", "--wait", "100ms").must(t, 0)
	if r.stdout != "alice: hello bob\nalice: line one\nalice: line two\n" {
		t.Fatalf("recv output:\n%s\nstderr:\n%s", r.stdout, r.stderr)
	}
	r = petrel(t, bob, "", "recv", "--wait", "100ms").must(t, 0)
	if r.stdout != "" {
		t.Fatalf("second recv printed again:\n%s", r.stdout)
	}

	// --json
	r = petrel(t, alice, "", "send", "--to", "bob", "in json").must(t, 0)
	id4 := strings.TrimSpace(r.stdout)
	r = petrel(t, bob, "", "recv", "--json", "--wait", "100ms").must(t, 0)
	var m map[string]string
	if err := json.Unmarshal([]byte(r.stdout), &m); err != nil {
		t.Fatalf("recv --json output %q: %v", r.stdout, err)
	}
	if m["id"] != id4 || m["from"] != "alice" || m["text"] != "in json" {
		t.Fatalf("json: %v", m)
	}
	for _, k := range []string{"sent_at", "received_at"} {
		if _, err := time.Parse(time.RFC3339, m[k]); err != nil || !strings.Contains(m[k], ".") {
			t.Fatalf("%s = %q: want RFC 3339 with milliseconds (%v)", k, m[k], err)
		}
	}

	// Alice receives Bob's receipts silently; her outbox empties.
	r = petrel(t, alice, "", "recv", "--wait", "100ms").must(t, 0)
	if r.stdout != "" {
		t.Fatalf("receipts were printed:\n%s", r.stdout)
	}
	if n := outboxLen(t, alice); n != 0 {
		t.Fatalf("alice's outbox holds %d entries after the receipts", n)
	}

	// Safety numbers agree and are laid out as 3 lines of 4 groups of 5 digits.
	sa := petrel(t, alice, "", "safety-number", "bob").must(t, 0).stdout
	sb := petrel(t, bob, "", "safety-number", "alice").must(t, 0).stdout
	if sa != sb {
		t.Fatalf("safety numbers differ:\n%s\n%s", sa, sb)
	}
	if !regexp.MustCompile(`^(\d{5} \d{5} \d{5} \d{5}\n){3}$`).MatchString(sa) {
		t.Fatalf("safety number layout:\n%s", sa)
	}
	r = petrel(t, alice, "", "safety-number", "nobody").must(t, 1)
	if r.stderr != "petrel safety-number: unknown user \"nobody\"\n" {
		t.Fatalf("safety-number of an unknown user: %q", r.stderr)
	}

	// With the server down, commands fail clearly instead of waiting.
	srv.Stop()
	r = petrel(t, bob, "", "recv", "--wait", "100ms").must(t, 1)
	if !strings.Contains(r.stderr, "petrel recv: nothing answers at "+srv.URL()) {
		t.Fatalf("recv with the server down: %q", r.stderr)
	}
	r = petrel(t, alice, "", "send", "--to", "bob", "hello?").must(t, 1)
	if !strings.Contains(r.stderr, "petrel send: nothing answers at "+srv.URL()) || !strings.Contains(r.stderr, "stays in the outbox") {
		t.Fatalf("send with the server down: %q", r.stderr)
	}
}

func outboxLen(t *testing.T, home string) int {
	t.Helper()
	st, err := store.Open(home, store.Options{})
	if err != nil {
		t.Fatal(err)
	}
	defer st.Close()
	var n int
	st.View(func(tx *store.Tx) error { n = tx.OutboxLen(); return nil })
	return n
}

// sdkUser is a CLI home's account running through the SDK until the test ends, so a test can
// send as it and wait for what it receives.
type sdkUser struct {
	*client.Client
	events chan client.Event
}

func onlineSDK(t *testing.T, ctx context.Context, home string) *sdkUser {
	t.Helper()
	st, err := store.Open(home, store.Options{})
	if err != nil {
		t.Fatal(err)
	}
	u := &sdkUser{events: make(chan client.Event, 100)}
	if u.Client, err = client.Open(client.Config{Store: st, Events: u.events}); err != nil {
		st.Close()
		t.Fatal(err)
	}
	runDone := make(chan error, 1)
	go func() { runDone <- u.Run(ctx) }()
	t.Cleanup(func() { u.Close(); <-runDone; st.Close() })
	return u
}

// wantMessage waits for the next message u receives and checks who sent it and what it says.
func (u *sdkUser) wantMessage(t *testing.T, ctx context.Context, from, text string) {
	t.Helper()
	for {
		select {
		case ev := <-u.events:
			if m, ok := ev.(*client.Message); ok {
				if m.From != from || m.Text != text {
					t.Fatalf("got %+v, want %s's %q", m, from, text)
				}
				return
			}
		case <-ctx.Done():
			t.Fatalf("no message from %s", from)
		}
	}
}

func TestCLIChat(t *testing.T) {
	fastClients(t)
	srv := testserver.Start(t)
	alice, bob := t.TempDir(), t.TempDir()
	petrel(t, alice, "", "register", "--server", srv.URL(), "--name", "alice").must(t, 0)
	petrel(t, bob, "", "register", "--server", srv.URL(), "--name", "bob").must(t, 0)
	petrel(t, bob, "", "send", "--to", "alice", "before the chat").must(t, 0)

	inR, inW := io.Pipe()
	out, errb := &testserver.Buffer{}, &testserver.Buffer{}
	done := make(chan int, 1)
	ctx, cancel := context.WithTimeout(context.Background(), cliWait)
	defer cancel()
	go func() {
		e := &env{stdin: inR, stdout: out, stderr: errb, getenv: func(string) string { return "" }}
		done <- run(ctx, []string{"--home", alice, "chat", "bob"}, e)
	}()
	// Pending messages show first; then lines typed are sent; incoming ones appear meanwhile.
	out.WaitFor(t, "bob: before the chat\n", cliWait)

	// Bob is online through the SDK, so the test can wait for what he receives.
	bc := onlineSDK(t, ctx, bob)
	io.WriteString(inW, "hello from chat\n")
	bc.wantMessage(t, ctx, "alice", "hello from chat")
	if _, err := bc.Send(ctx, "alice", "live reply"); err != nil {
		t.Fatal(err)
	}
	out.WaitFor(t, "bob: live reply\n", cliWait)
	io.WriteString(inW, "/quit\n")
	select {
	case code := <-done:
		if code != 0 {
			t.Fatalf("chat exit code %d; stderr:\n%s", code, errb.String())
		}
	case <-time.After(cliWait):
		t.Fatal("chat did not exit on /quit")
	}
	inW.Close()
	if strings.Count(out.String(), "bob: live reply") != 1 {
		t.Fatalf("chat output:\n%s", out.String())
	}
}

func TestFormatSafetyNumber(t *testing.T) {
	n := strings.Repeat("0123456789", 6)
	want := "01234 56789 01234 56789\n01234 56789 01234 56789\n01234 56789 01234 56789\n"
	if got := formatSafetyNumber(n); got != want {
		t.Fatalf("got %q", got)
	}
	if got := formatSafetyNumber("01234 56789"); got != "01234 56789\n" {
		t.Fatalf("grouped input: %q", got)
	}
}

// TestCLISeveralServers: register takes a comma-separated list and goes to the first URL that
// answers; whoami lists them all; send and recv move past the unreachable one by themselves.
func TestCLISeveralServers(t *testing.T) {
	fastClients(t)
	srv := testserver.Start(t)
	const dead = "http://127.0.0.1:1"
	alice, bob := t.TempDir(), t.TempDir()
	r := petrel(t, alice, "", "register", "--server", dead+", "+srv.URL()+",", "--name", "alice").must(t, 0)
	if !strings.Contains(r.stdout, "registered alice on "+dead+", "+srv.URL()) {
		t.Fatalf("register output:\n%s", r.stdout)
	}
	petrel(t, bob, "", "register", "--server", srv.URL()+","+dead, "--name", "bob").must(t, 0)
	r = petrel(t, alice, "", "whoami").must(t, 0)
	if !strings.Contains(r.stdout, "servers:     "+dead+", "+srv.URL()+"\n") {
		t.Fatalf("whoami output:\n%s", r.stdout)
	}
	petrel(t, alice, "", "send", "--to", "bob", "via the second URL").must(t, 0)
	r = petrel(t, bob, "", "recv", "--wait", "100ms").must(t, 0)
	if r.stdout != "alice: via the second URL\n" {
		t.Fatalf("recv output:\n%s\nstderr:\n%s", r.stdout, r.stderr)
	}
	r = petrel(t, t.TempDir(), "", "register", "--server", " , ", "--name", "carol").must(t, 2)
	if !strings.Contains(r.stderr, "at least one URL") {
		t.Fatalf("empty --server: %q", r.stderr)
	}
}
