// Copyright 2026 The Petrel Authors
// SPDX-License-Identifier: Apache-2.0

package main

import (
	"context"
	"encoding/json"
	"regexp"
	"strings"
	"testing"
	"time"

	"github.com/petrelchat/petrel/internal/server"
	"github.com/petrelchat/petrel/internal/testserver"
)

// startLinkCmd runs 'petrel link' for home in the background and returns its output buffers and
// exit code channel once it printed the code.
func startLinkCmd(t *testing.T, ctx context.Context, home, url string, extra ...string) (out, errb *testserver.Buffer, code string, done chan int) {
	t.Helper()
	out, errb = &testserver.Buffer{}, &testserver.Buffer{}
	done = make(chan int, 1)
	go func() {
		e := &env{stdin: strings.NewReader(""), stdout: out, stderr: errb, getenv: func(string) string { return "" }}
		done <- run(ctx, append([]string{"--home", home, "link", "--server", url}, extra...), e)
	}()
	out.WaitFor(t, "waiting for approval", cliWait)
	m := regexp.MustCompile(`(?m)^code: ([0-9A-Z]{4}(?:-[0-9A-Z]{4}){5})$`).FindStringSubmatch(out.String())
	if m == nil {
		t.Fatalf("link printed no code line:\n%s", out.String())
	}
	if !strings.Contains(out.String(), "█") {
		t.Fatalf("link drew no QR code:\n%s", out.String())
	}
	return out, errb, m[1], done
}

func waitExit(t *testing.T, done chan int, errb *testserver.Buffer) int {
	t.Helper()
	select {
	case code := <-done:
		return code
	case <-time.After(cliWait):
		t.Fatalf("command did not exit; stderr:\n%s", errb.String())
		return -1
	}
}

// The README's linked-device flow as a script: link, approve (history sent), devices, a
// message sent from the laptop shown on the phone as sent, a companion refused to approve,
// removal, and an expired code.
func TestCLILinkedDevices(t *testing.T) {
	fastClients(t)
	srv := testserver.Start(t)
	phone, bob, laptop := t.TempDir(), t.TempDir(), t.TempDir()
	petrel(t, phone, "", "register", "--server", srv.URL(), "--name", "alice").must(t, 0)
	petrel(t, bob, "", "register", "--server", srv.URL(), "--name", "bob").must(t, 0)
	petrel(t, bob, "", "send", "--to", "alice", "hello before the laptop").must(t, 0)
	petrel(t, phone, "", "recv", "--wait", "100ms").must(t, 0)

	ctx, cancel := context.WithTimeout(context.Background(), 2*cliWait)
	defer cancel()
	out, errb, code, done := startLinkCmd(t, ctx, laptop, srv.URL(), "--wait", "10s")
	r := petrel(t, phone, "", "devices", "approve", code, "--name", "laptop").must(t, 0)
	if !strings.Contains(r.stdout, "approved device ") || !strings.Contains(r.stdout, "sent history: 1 chunks") {
		t.Fatalf("approve output:\n%s", r.stdout)
	}
	if c := waitExit(t, done, errb); c != 0 {
		t.Fatalf("link exit %d\nstdout:\n%s\nstderr:\n%s", c, out.String(), errb.String())
	}
	linked := regexp.MustCompile(`(?m)^linked to alice as device ([0-9a-f]{32}) \(laptop\)$`).FindStringSubmatch(out.String())
	if linked == nil || !strings.Contains(out.String(), "history: done") {
		t.Fatalf("link output:\n%s", out.String())
	}
	laptopID := linked[1]

	// devices --json on the phone: both, the phone marked as this one.
	r = petrel(t, phone, "", "devices", "--json").must(t, 0)
	var devs []jsonDevice
	if err := json.Unmarshal([]byte(r.stdout), &devs); err != nil {
		t.Fatalf("devices --json %q: %v", r.stdout, err)
	}
	if len(devs) != 2 || !devs[0].Primary || !devs[0].This || devs[1].ID != laptopID || devs[1].Name != "laptop" ||
		devs[1].This || devs[1].LinkedAt == "" {
		t.Fatalf("devices: %+v", devs)
	}
	r = petrel(t, laptop, "", "devices").must(t, 0)
	if !strings.Contains(r.stdout, "* "+laptopID) || !strings.Contains(r.stdout, "(primary)") {
		t.Fatalf("devices on the laptop:\n%s", r.stdout)
	}
	// A companion cannot approve.
	_, errb2, code2, done2 := startLinkCmd(t, ctx, t.TempDir(), srv.URL())
	r = petrel(t, laptop, "", "devices", "approve", code2).must(t, 1)
	if !strings.Contains(r.stderr, "approve from your primary device") {
		t.Fatalf("approve on a companion: %q", r.stderr)
	}

	// The laptop sends to bob: bob gets it ("in"); the phone shows it as sent ("out", to bob).
	petrel(t, laptop, "", "send", "--to", "bob", "from the laptop").must(t, 0)
	var bm []jsonMessage
	for _, line := range strings.Split(strings.TrimSpace(petrel(t, bob, "", "recv", "--json", "--wait", "100ms").must(t, 0).stdout), "\n") {
		var m jsonMessage
		if err := json.Unmarshal([]byte(line), &m); err != nil {
			t.Fatalf("recv --json line %q: %v", line, err)
		}
		if m.Type == "message" { // receipts of bob's earlier message come too
			bm = append(bm, m)
		}
	}
	if len(bm) != 1 || bm[0].Direction != "in" || bm[0].From != "alice" || bm[0].FromDevice != laptopID || bm[0].To != "" {
		t.Fatalf("bob's messages: %+v", bm)
	}
	r = petrel(t, phone, "", "recv", "--json", "--wait", "100ms").must(t, 0)
	var pm jsonMessage
	for _, line := range strings.Split(strings.TrimSpace(r.stdout), "\n") {
		var m jsonMessage
		if err := json.Unmarshal([]byte(line), &m); err != nil {
			t.Fatalf("phone recv --json %q: %v", r.stdout, err)
		}
		if m.Type == "message" { // bob's read receipt for it may come too
			pm = m
		}
	}
	if pm.Direction != "out" || pm.To != "bob" || pm.From != "alice" || pm.Text != "from the laptop" || pm.ID != bm[0].ID {
		t.Fatalf("phone's copy: %+v", pm)
	}
	if r := petrel(t, phone, "", "recv", "--wait", "100ms").must(t, 0); strings.Contains(r.stdout, "from the laptop") {
		t.Fatalf("the copy was shown twice:\n%s", r.stdout)
	}

	// Removal: the laptop is refused from then on.
	r = petrel(t, phone, "", "devices", "remove", laptopID).must(t, 0)
	if !strings.Contains(r.stdout, "removed device "+laptopID) {
		t.Fatalf("remove output: %q", r.stdout)
	}
	if r := petrel(t, laptop, "", "recv", "--wait", "100ms"); r.code != 1 || !strings.Contains(r.stderr, "removed") && !strings.Contains(r.stderr, "does not accept this device") {
		t.Fatalf("recv on a removed device: %d %q", r.code, r.stderr)
	}
	cancel() // ends the other device's wait
	waitExit(t, done2, errb2)
}

// An expired code: link exits 1 with a clear error.
func TestCLILinkExpired(t *testing.T) {
	fastClients(t)
	srv := testserver.Start(t, testserver.WithConfig(func(c *server.Config) { c.LinkTTL.Duration = time.Second }))
	ctx, cancel := context.WithTimeout(context.Background(), cliWait)
	defer cancel()
	out, errb, _, done := startLinkCmd(t, ctx, t.TempDir(), srv.URL())
	if c := waitExit(t, done, errb); c != 1 || !strings.Contains(errb.String(), "expired") || !strings.Contains(errb.String(), "petrel link again") {
		t.Fatalf("expired link: exit %d\nstdout:\n%s\nstderr:\n%s", c, out.String(), errb.String())
	}
}

func TestRenderQR(t *testing.T) {
	q, err := renderQR("7K3M-Q9XA-ABCD-EFGH-JKMN-PQRS")
	if err != nil {
		t.Fatal(err)
	}
	lines := strings.Split(strings.TrimSuffix(q, "\n"), "\n")
	// Version 2 (25 modules) plus a quiet zone of 2 on each side: 29 columns, 15 lines.
	if len(lines) < 10 || len([]rune(lines[0])) != len([]rune(lines[len(lines)-1])) {
		t.Fatalf("QR lines %d, widths %d..%d", len(lines), len([]rune(lines[0])), len([]rune(lines[len(lines)-1])))
	}
	if len(lines) != (len([]rune(lines[0]))+1)/2 {
		t.Fatalf("not square: %d lines of %d columns", len(lines), len([]rune(lines[0])))
	}
}
