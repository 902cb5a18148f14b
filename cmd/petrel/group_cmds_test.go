// Copyright 2026 The Petrel Authors
// SPDX-License-Identifier: Apache-2.0

package main

import (
	"encoding/json"
	"slices"
	"strings"
	"testing"

	"github.com/petrelchat/petrel/internal/testcluster"
	"github.com/petrelchat/petrel/internal/testserver"
)

// recvLines runs recv --json on home and returns each line as a generic object.
func recvLines(t *testing.T, home string) []map[string]any {
	t.Helper()
	return recvLinesWait(t, home, "200ms")
}

func recvLinesWait(t *testing.T, home, wait string) []map[string]any {
	t.Helper()
	r := petrel(t, home, "", "recv", "--json", "--wait", wait).must(t, 0)
	if r.stderr != "" {
		t.Logf("recv --json stderr: %s", r.stderr)
	}
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

// wantEvent checks that m is a group_event line.
func wantEvent(t *testing.T, m map[string]any, group, actor, action string, targets ...string) {
	t.Helper()
	got := []string{}
	if ts, ok := m["targets"].([]any); ok {
		for _, x := range ts {
			got = append(got, x.(string))
		}
	}
	if m["type"] != "group_event" || m["group"] != group || m["actor"] != actor || m["action"] != action ||
		!slices.Equal(got, targets) || m["group_id"] == "" || m["text"] == "" {
		t.Fatalf("got %v, want %s's %s %v in %s", m, actor, action, targets, group)
	}
}

// wantGroupMessage checks that m is a message line in group from `from`.
func wantGroupMessage(t *testing.T, m map[string]any, group, from, text string) {
	t.Helper()
	if m["group"] != group || m["from"] != from || m["text"] != text || m["direction"] != "in" || m["id"] == "" {
		t.Fatalf("got %v, want %q from %s in %s", m, text, from, group)
	}
	if _, ok := m["to"]; ok {
		t.Fatalf("a group message with a to field: %v", m)
	}
}

// The README's group flow as a script: create, list, send (argument and stdin), recv --json with
// the group field and membership changes, add (the new member learns the name), info, admin,
// remove (the removed member can no longer send), leave, chat --group.
func TestCLIGroups(t *testing.T) {
	fastClients(t)
	srv := testserver.Start(t)
	cliGroupFlow(t, []string{srv.URL()})
}

// The same flow with the members on different nodes of a cluster.
func TestCLIGroupsCluster(t *testing.T) {
	fastClients(t)
	c := testcluster.Start(t, 3, testcluster.Options{})
	var urls []string
	for _, n := range c.Nodes() {
		urls = append(urls, n.URL())
	}
	cliGroupFlow(t, urls)
}

func cliGroupFlow(t *testing.T, urls []string) {
	homes := map[string]string{}
	for i, n := range []string{"alice", "bob", "carol", "dave"} {
		homes[n] = t.TempDir()
		petrel(t, homes[n], "", "register", "--server", urls[i%len(urls)], "--name", n).must(t, 0)
	}
	alice, bob, carol, dave := homes["alice"], homes["bob"], homes["carol"], homes["dave"]

	r := petrel(t, alice, "", "group", "create", "book club", "--members", "bob,carol").must(t, 0)
	if !strings.HasPrefix(r.stdout, "created group book club (id ") || !strings.Contains(r.stdout, "with alice, bob, carol") {
		t.Fatalf("create: %q", r.stdout)
	}
	if r := petrel(t, alice, "", "group", "create", "book club", "--members", "dave"); r.code != 1 || !strings.Contains(r.stderr, "already have a group named") {
		t.Fatalf("create twice: %d %q", r.code, r.stderr)
	}
	r = petrel(t, bob, "", "group", "list").must(t, 0)
	if !strings.Contains(r.stdout, "book club") || !strings.Contains(r.stdout, "member") || !strings.Contains(r.stdout, "3 members") {
		t.Fatalf("bob's list: %q", r.stdout)
	}
	r = petrel(t, alice, "", "send", "--group", "book club", "chapter one").must(t, 0)
	if !idRE.MatchString(strings.TrimSpace(r.stdout)) {
		t.Fatalf("send --group printed %q", r.stdout)
	}
	r = petrel(t, carol, "a line\n\nanother line\n", "send", "--group", "book club", "-").must(t, 0)
	if n := len(strings.Fields(r.stdout)); n != 2 {
		t.Fatalf("send --group - printed %d ids: %q", n, r.stdout)
	}
	lines := recvLines(t, bob)
	if len(lines) != 4 {
		t.Fatalf("bob got %d lines: %v", len(lines), lines)
	}
	wantEvent(t, lines[0], "book club", "alice", "create", "bob", "carol")
	wantGroupMessage(t, lines[1], "book club", "alice", "chapter one")
	wantGroupMessage(t, lines[2], "book club", "carol", "a line")
	wantGroupMessage(t, lines[3], "book club", "carol", "another line")
	if lines := recvLines(t, bob); len(lines) != 0 {
		t.Fatalf("shown twice: %v", lines)
	}

	// Add: dave sees the change and the group's name; members see it too.
	if r := petrel(t, bob, "", "group", "add", "book club", "dave"); r.code != 1 || !strings.Contains(r.stderr, "only an admin") {
		t.Fatalf("bob adds: %d %q", r.code, r.stderr)
	}
	r = petrel(t, alice, "", "group", "add", "book club", "dave").must(t, 0)
	if !strings.Contains(r.stdout, "added dave") {
		t.Fatalf("add: %q", r.stdout)
	}
	// --wait 0: recv shows the change even though dave's device must first fetch the group,
	// which it did not know, from the server.
	lines = recvLinesWait(t, dave, "0s")
	if len(lines) != 1 {
		t.Fatalf("dave got %v", lines)
	}
	wantEvent(t, lines[0], "book club", "alice", "add", "dave")
	r = petrel(t, carol, "", "recv", "--wait", "200ms").must(t, 0)
	if !strings.Contains(r.stdout, "[book club] alice: chapter one") || !strings.Contains(r.stdout, "[book club] alice added dave") {
		t.Fatalf("carol's recv:\n%s", r.stdout)
	}

	// Info: members, admins, devices.
	r = petrel(t, alice, "", "group", "info", "book club", "--json").must(t, 0)
	var info jsonGroup
	if err := json.Unmarshal([]byte(r.stdout), &info); err != nil {
		t.Fatalf("info --json %q: %v", r.stdout, err)
	}
	if info.Name != "book club" || info.Version != 2 || !slices.Equal(info.Members, []string{"alice", "bob", "carol", "dave"}) ||
		!slices.Equal(info.Admins, []string{"alice"}) || info.Devices["dave"] != 1 || info.Left {
		t.Fatalf("info: %+v", info)
	}
	r = petrel(t, dave, "", "group", "info", "book club").must(t, 0)
	if !strings.Contains(r.stdout, "admins:  alice") || !strings.Contains(r.stdout, "members: 4") || !strings.Contains(r.stdout, "1 devices (admin)") {
		t.Fatalf("dave's info:\n%s", r.stdout)
	}

	// Admin, then remove by the new admin: bob is told and can no longer send.
	petrel(t, alice, "", "group", "admin", "book club", "carol").must(t, 0)
	petrel(t, carol, "", "group", "remove", "book club", "bob").must(t, 0)
	lines = recvLines(t, bob)
	if len(lines) != 3 {
		t.Fatalf("bob got %v", lines)
	}
	wantEvent(t, lines[0], "book club", "alice", "add", "dave")
	wantEvent(t, lines[1], "book club", "alice", "promote", "carol")
	wantEvent(t, lines[2], "book club", "carol", "remove", "bob")
	if r := petrel(t, bob, "", "send", "--group", "book club", "hello?"); r.code != 1 || !strings.Contains(r.stderr, "no longer a member") {
		t.Fatalf("bob sends after removal: %d %q", r.code, r.stderr)
	}
	r = petrel(t, bob, "", "group", "list", "--json").must(t, 0)
	var list []jsonGroup
	if err := json.Unmarshal([]byte(r.stdout), &list); err != nil || len(list) != 1 || !list[0].Left {
		t.Fatalf("bob's list --json %q: %v", r.stdout, err)
	}

	// Chat in the group (standard input is a pipe), then carol leaves.
	petrel(t, dave, "hello from dave\n/quit\n", "chat", "--group", "book club").must(t, 0)
	petrel(t, carol, "", "group", "leave", "book club").must(t, 0)
	r = petrel(t, alice, "", "recv", "--wait", "200ms").must(t, 0)
	for _, want := range []string{"[book club] carol: a line", "[book club] carol removed bob", "[book club] dave: hello from dave", "[book club] carol left"} {
		if !strings.Contains(r.stdout, want) {
			t.Fatalf("alice's recv lacks %q:\n%s", want, r.stdout)
		}
	}
	r = petrel(t, alice, "", "group", "list").must(t, 0)
	if !strings.Contains(r.stdout, "admin") || !strings.Contains(r.stdout, "2 members") || !strings.Contains(r.stdout, "v5") {
		t.Fatalf("alice's list: %q", r.stdout)
	}
	if r := petrel(t, alice, "", "group", "frobnicate"); r.code != 2 {
		t.Fatalf("unknown subcommand: %d", r.code)
	}
}
