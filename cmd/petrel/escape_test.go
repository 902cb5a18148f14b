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

	"github.com/petrelchat/petrel/internal/testserver"
)

func TestSanitize(t *testing.T) {
	for _, c := range []struct{ in, want string }{
		{"plain text, ünïcödé, 日本語, emoji 🐦", "plain text, ünïcödé, 日本語, emoji 🐦"},
		{"tab\tkept", "tab\tkept"},
		{`back\slash kept`, `back\slash kept`},
		{"a\x1b[2Jb", `a\x1b[2Jb`},
		{"line\nalice: forged", `line\nalice: forged`},
		{"cr\rover", `cr\rover`},
		{"c1\u009bdel\x7f", `c1\x9bdel\x7f`},
		{"sep\u2028para\u2029", `sep\u2028para\u2029`},
		{"rlo\u202egnp.exe", `rlo\u202egnp.exe`},
		{"fsi\u2068x\u2069 lre\u202a pdf\u202c lrm\u200e rlm\u200f alm\u061c", `fsi\u2068x\u2069 lre\u202a pdf\u202c lrm\u200e rlm\u200f alm\u061c`},
		{"zw\u200bsp\u200cnj\u200dj\u2060wj\ufeffbom", `zw\u200bsp\u200cnj\u200dj\u2060wj\ufeffbom`},
		{"tag\U000E0041", `tag\U000e0041`},
		{"bad\xffutf8", "bad\uFFFDutf8"},
	} {
		if got := sanitize(c.in); got != c.want {
			t.Errorf("sanitize(%q) = %q, want %q", c.in, got, c.want)
		}
		if got := sanitize(sanitize(c.in)); got != c.want {
			t.Errorf("sanitize is not idempotent on %q: %q", c.in, got)
		}
	}
}

// --json keeps the exact text (it decodes to what was sent) yet prints no invisible or
// reordering character raw.
func TestEscapeJSONInvisible(t *testing.T) {
	text := "a\u202eb\u2028c\u200dd\U000E0041e\nf\x1b ü 🐦"
	b, err := json.Marshal(map[string]string{"text": text})
	if err != nil {
		t.Fatal(err)
	}
	out := escapeJSONInvisible(b)
	for _, r := range string(out) {
		if mustEscape(r) {
			t.Fatalf("raw %U in %s", r, out)
		}
	}
	var m map[string]string
	if err := json.Unmarshal(out, &m); err != nil || m["text"] != text {
		t.Fatalf("decodes to %q (%v), want %q", m["text"], err, text)
	}
	if plain := []byte(`{"text":"nothing to do"}`); string(escapeJSONInvisible(plain)) != string(plain) {
		t.Fatal("changed plain JSON")
	}
}

// The text a sender forges (a newline followed by a fake "alice: ..." line, a right-to-left
// override, a line separator, a zero-width joiner, an escape sequence) is printed by recv on one
// line, with each of them escaped.
func TestCLIRecvEscapesForgedLines(t *testing.T) {
	fastClients(t)
	srv := testserver.Start(t)
	mallory, bob := t.TempDir(), t.TempDir()
	petrel(t, mallory, "", "register", "--server", srv.URL(), "--name", "mallory").must(t, 0)
	petrel(t, bob, "", "register", "--server", srv.URL(), "--name", "bob").must(t, 0)
	const forged = "hi\nalice: send me your code\u202eexe.txt\u2028\u200d\x1b[2J"
	const shown = `mallory: hi\nalice: send me your code\u202eexe.txt\u2028\u200d\x1b[2J` + "\n"
	petrel(t, mallory, "", "send", "--to", "bob", forged).must(t, 0)
	r := petrel(t, bob, "", "recv", "--wait", "100ms").must(t, 0)
	if r.stdout != shown {
		t.Fatalf("recv printed %q, want %q", r.stdout, shown)
	}
	petrel(t, mallory, "", "send", "--to", "bob", forged).must(t, 0)
	r = petrel(t, bob, "", "recv", "--json", "--wait", "100ms").must(t, 0)
	var m map[string]string
	if err := json.Unmarshal([]byte(r.stdout), &m); err != nil || m["text"] != forged {
		t.Fatalf("recv --json printed %q (%v): want the exact text back", r.stdout, err)
	}
	if strings.ContainsAny(r.stdout, "\u202e\u2028\u200d\x1b") || strings.Count(r.stdout, "\n") != 1 {
		t.Fatalf("recv --json printed a raw control or format character: %q", r.stdout)
	}
}

// chat shows a forged message on one line, escaped, like recv.
func TestCLIChatEscapesForgedLines(t *testing.T) {
	fastClients(t)
	srv := testserver.Start(t)
	alice, mallory := t.TempDir(), t.TempDir()
	petrel(t, alice, "", "register", "--server", srv.URL(), "--name", "alice").must(t, 0)
	petrel(t, mallory, "", "register", "--server", srv.URL(), "--name", "mallory").must(t, 0)
	petrel(t, mallory, "", "send", "--to", "alice", "pending\nbob: forged\u2068").must(t, 0)

	inR, inW := io.Pipe()
	defer inW.Close()
	out, errb := &testserver.Buffer{}, &testserver.Buffer{}
	done := make(chan int, 1)
	ctx, cancel := context.WithTimeout(context.Background(), cliWait)
	defer cancel()
	go func() {
		e := &env{stdin: inR, stdout: out, stderr: errb, getenv: func(string) string { return "" }}
		done <- run(ctx, []string{"--home", alice, "chat", "mallory"}, e)
	}()
	out.WaitFor(t, `mallory: pending\nbob: forged\u2068`+"\n", cliWait)

	mc := onlineSDK(t, ctx, mallory)
	if _, err := mc.Send(ctx, "alice", "live\r\nbob: also forged\u202e!"); err != nil {
		t.Fatal(err)
	}
	out.WaitFor(t, `mallory: live\r\nbob: also forged\u202e!`+"\n", cliWait)
	io.WriteString(inW, "/quit\n")
	select {
	case code := <-done:
		if code != 0 {
			t.Fatalf("chat exit code %d; stderr:\n%s", code, errb.String())
		}
	case <-time.After(cliWait):
		t.Fatal("chat did not exit on /quit")
	}
	for line := range strings.SplitSeq(out.String(), "\n") {
		if strings.HasPrefix(line, "bob:") || strings.ContainsAny(line, "\r\u202e\u2068") {
			t.Fatalf("chat printed a forged or raw line %q; output:\n%s", line, out.String())
		}
	}
}
