// Copyright 2026 The Petrel Authors
// SPDX-License-Identifier: Apache-2.0

package main

import (
	"os"
	"path/filepath"
	"regexp"
	"strings"
	"testing"

	"github.com/petrelchat/petrel/internal/testserver"
)

// petrel report works without a home or an account, counts once per home per window, and names
// bad flags in words.
func TestCLIReport(t *testing.T) {
	s := testserver.Start(t)
	home := filepath.Join(t.TempDir(), "no-such-home") // never created
	r := petrel(t, home, "", "report", "--server", s.URL()+"/", "--category", "cant-connect", "--note", "spinner for ever").must(t, 0)
	if !strings.Contains(r.stdout, "report sent: thank you") {
		t.Fatalf("stdout %q", r.stdout)
	}
	if _, err := os.Stat(home); err == nil {
		t.Fatal("report created a home")
	}
	// With a home, its id is kept: the second report in the window is not counted again.
	home2 := t.TempDir()
	petrel(t, home2, "", "report", "--server", s.URL(), "--category", "not-sending").must(t, 0)
	r = petrel(t, home2, "", "report", "--server", s.URL(), "--category", "not-sending").must(t, 0)
	if !strings.Contains(r.stdout, "already reported") {
		t.Fatalf("second report from the same home: %q", r.stdout)
	}
	for _, tc := range []struct {
		name string
		args []string
		want string
	}{
		{"no category", []string{"--server", s.URL()}, "--category is required"},
		{"bad category", []string{"--server", s.URL(), "--category", "fire"}, `unknown --category "fire"`},
		{"no server", []string{"--category", "other"}, "--server is required"},
		{"long note", []string{"--server", s.URL(), "--category", "other", "--note", strings.Repeat("n", 501)}, "at most 500"},
	} {
		t.Run(tc.name, func(t *testing.T) {
			r := petrel(t, home, "", append([]string{"report"}, tc.args...)...).must(t, 2)
			if !strings.Contains(r.stderr, tc.want) {
				t.Fatalf("stderr %q, want %q", r.stderr, tc.want)
			}
		})
	}
}

// petrel admin incident open, update, resolve and list against a running server.
func TestCLIAdminIncident(t *testing.T) {
	s := testserver.Start(t)
	data := []string{"--data", s.DataDir()}
	home := t.TempDir()
	inc := func(args ...string) result {
		return petrel(t, home, "", append([]string{"admin", "incident"}, args...)...)
	}
	r := inc(append(append([]string{"open"}, data...), "Logins fail for some users")...).must(t, 0)
	m := regexp.MustCompile(`^(\S+) open\n$`).FindStringSubmatch(r.stdout)
	if m == nil {
		t.Fatalf("open printed %q", r.stdout)
	}
	id := m[1]
	inc(append(append([]string{"update"}, data...), "Cause found")...).must(t, 0)
	r = inc(append(append([]string{"resolve", "--id", "nope"}, data...), "x")...).must(t, 1)
	if !strings.Contains(r.stderr, "no such incident") {
		t.Fatalf("unknown id: %q", r.stderr)
	}
	inc(append(append([]string{"resolve", "--id", id}, data...), "Fixed")...).must(t, 0)
	r = inc(append([]string{"list"}, data...)...).must(t, 0)
	for _, want := range []string{id, "resolved", "Logins fail for some users", "Cause found", "Fixed"} {
		if !strings.Contains(r.stdout, want) {
			t.Fatalf("list lacks %q:\n%s", want, r.stdout)
		}
	}
	if r := inc(append([]string{"open"}, data...)...).must(t, 2); !strings.Contains(r.stderr, "want one TEXT argument") {
		t.Fatalf("open without text: %q", r.stderr)
	}
}

// petrel admin reports lists report notes, newest first, with terminal escapes defused.
func TestCLIAdminReports(t *testing.T) {
	s := testserver.Start(t)
	home := t.TempDir()
	r := petrel(t, home, "", "admin", "reports", "--data", s.DataDir()).must(t, 0)
	if !strings.Contains(r.stdout, "no report notes") {
		t.Fatalf("empty: %q", r.stdout)
	}
	petrel(t, home, "", "report", "--server", s.URL(), "--category", "not-receiving", "--note", "nothing arrives \x1b[31mred").must(t, 0)
	r = petrel(t, home, "", "admin", "reports", "--data", s.DataDir()).must(t, 0)
	if !strings.Contains(r.stdout, "not-receiving") || !strings.Contains(r.stdout, "nothing arrives") || strings.Contains(r.stdout, "\x1b") {
		t.Fatalf("list: %q", r.stdout)
	}
	r = petrel(t, home, "", "admin", "reports", "--json", "--data", s.DataDir()).must(t, 0)
	if !strings.Contains(r.stdout, `"notes":[{"at":`) || !strings.Contains(r.stdout, `"category":"not-receiving"`) {
		t.Fatalf("json: %q", r.stdout)
	}
	if r := petrel(t, home, "", "admin", "reports", "extra", "--data", s.DataDir()).must(t, 2); !strings.Contains(r.stderr, "unexpected argument") {
		t.Fatalf("extra argument: %q", r.stderr)
	}
}
