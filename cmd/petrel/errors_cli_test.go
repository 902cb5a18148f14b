// Copyright 2026 The Petrel Authors
// SPDX-License-Identifier: Apache-2.0

package main

import (
	"errors"
	"fmt"
	"net"
	"strings"
	"syscall"
	"testing"
	"time"

	"github.com/petrelchat/petrel/client"
	"github.com/petrelchat/petrel/internal/freeport"
	"github.com/petrelchat/petrel/internal/server"
	"github.com/petrelchat/petrel/internal/testserver"
)

// The errors a user meets, tried as a user would, each naming the cause and the next step.
func TestCLIErrorMessages(t *testing.T) {
	fastClients(t)
	srv := testserver.Start(t)
	inviteOnly := testserver.Start(t, testserver.WithConfig(func(c *server.Config) { c.Registration = "invite" }))
	down := deadURL(t) // nothing listens there

	sender := t.TempDir()
	petrel(t, sender, "", "register", "--server", srv.URL(), "--name", "sender").must(t, 0)
	petrel(t, t.TempDir(), "", "register", "--server", srv.URL(), "--name", "bob").must(t, 0)
	big := strings.Repeat("a", 300<<10) + "\n"

	cases := []struct {
		name  string
		home  string // "" for a fresh one
		stdin string
		args  []string
		code  int
		want  []string // in stderr
	}{
		{"URL without a scheme", "", "", []string{"register", "--server", strings.TrimPrefix(srv.URL(), "http://"), "--name", "x"}, 2,
			[]string{"has no scheme", "use http://HOST:PORT or https://HOST"}},
		{"server down", "", "", []string{"register", "--server", down, "--name", "x"}, 1,
			[]string{"connection refused", "is 'petrel serve' running at " + down}},
		{"admin port as the server", "", "", []string{"register", "--server", srv.AdminURL(), "--name", "x"}, 1,
			[]string{"not a Petrel server's public address", "the admin port is not the public one"}},
		{"public port for admin", "", "", []string{"admin", "invite", "--data", srv.DataDir(), "--admin", srv.URL()}, 1,
			[]string{"is the server's public address, not its admin listener", "admin.addr"}},
		{"name with capitals", "", "", []string{"register", "--server", srv.URL(), "--name", "Carol"}, 0,
			[]string{`account names are lower case: using "carol"`}},
		{"missing invite", "", "", []string{"register", "--server", inviteOnly.URL(), "--name", "dave"}, 1,
			[]string{"this server needs an invite", "petrel admin invite", "--invite CODE"}},
		{"message over the frame limit", sender, big, []string{"send", "--to", "bob", "-"}, 1,
			[]string{"messages are limited to 256 KiB on this server", "send a shorter message"}},
		{"recipient with capitals", sender, "", []string{"send", "--to", "Bob", "hi"}, 0,
			[]string{`using "bob"`}},
	}
	for _, tc := range cases {
		t.Run(tc.name, func(t *testing.T) {
			home := tc.home
			if home == "" {
				home = t.TempDir()
			}
			r := petrel(t, home, tc.stdin, tc.args...).must(t, tc.code)
			for _, w := range tc.want {
				if !strings.Contains(r.stderr, w) {
					t.Errorf("stderr lacks %q:\n%s", w, r.stderr)
				}
			}
			for _, raw := range []string{"failed to WebSocket dial", "dial tcp", "parse \""} {
				if strings.Contains(r.stderr, raw) {
					t.Errorf("stderr shows a raw Go error (%q):\n%s", raw, r.stderr)
				}
			}
		})
	}
}

// A server outage while chatting is one line in words, not a line per retry; the return is one
// more.
func TestOutageLines(t *testing.T) {
	var o outage
	refused := &client.DialError{URL: "http://127.0.0.1:7070", Err: &net.OpError{Op: "dial", Net: "tcp", Err: syscall.ECONNREFUSED}}
	if l := o.line(&client.Connected{}); l != "" {
		t.Fatalf("first connection printed %q", l)
	}
	first := o.line(&client.Disconnected{Err: refused, RetryIn: time.Second})
	if !strings.Contains(first, "offline") || !strings.Contains(first, "is 'petrel serve' running at http://127.0.0.1:7070") ||
		strings.Contains(first, "dial") {
		t.Fatalf("outage line %q", first)
	}
	for range 5 {
		if l := o.line(&client.Disconnected{Err: refused, RetryIn: 2 * time.Second}); l != "" {
			t.Fatalf("a retry printed %q", l)
		}
	}
	if l := o.line(&client.Connected{}); !strings.HasPrefix(l, "[reconnected") {
		t.Fatalf("reconnect line %q", l)
	}
	if l := o.line(&client.Disconnected{Err: errors.New("x")}); l == "" {
		t.Fatal("a second outage printed nothing")
	}
}

func TestSizeText(t *testing.T) {
	for n, want := range map[int]string{262144: "256 KiB", 300000: "293.0 KiB", 900: "900 bytes", 4 << 30: "4096 MiB", 1536 << 10: "1.5 MiB"} {
		if got := sizeText(n); got != want {
			t.Errorf("sizeText(%d) = %q, want %q", n, got, want)
		}
	}
}

// deadPort returns a loopback port nothing listens on, below the kernel's ephemeral range so that
// no other socket is given it meanwhile.
func deadPort(t *testing.T) int {
	t.Helper()
	ports, err := freeport.Loopback(1)
	if err != nil {
		t.Fatal(err)
	}
	return ports[0]
}

// deadURL is deadPort's http:// base URL.
func deadURL(t *testing.T) string {
	return fmt.Sprintf("http://127.0.0.1:%d", deadPort(t))
}
