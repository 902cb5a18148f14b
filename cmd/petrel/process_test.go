// Copyright 2026 The Petrel Authors
// SPDX-License-Identifier: Apache-2.0

package main

import (
	"bufio"
	"bytes"
	"encoding/json"
	"errors"
	"fmt"
	"io/fs"
	"os"
	"os/exec"
	"path/filepath"
	"regexp"
	"strings"
	"syscall"
	"testing"
	"time"

	"github.com/petrelchat/petrel/client/store"
)

// Process-level tests: the real petrel binary, a real server process on loopback, SIGKILL.

var petrelBin string

func TestMain(m *testing.M) {
	dir, err := os.MkdirTemp("", "petrel-bin-")
	if err != nil {
		fmt.Fprintln(os.Stderr, err)
		os.Exit(1)
	}
	petrelBin = filepath.Join(dir, "petrel")
	build := exec.Command("go", "build", "-o", petrelBin, ".")
	build.Stderr = os.Stderr
	if err := build.Run(); err != nil {
		fmt.Fprintln(os.Stderr, "build petrel:", err)
		os.Exit(1)
	}
	code := m.Run()
	os.RemoveAll(dir)
	os.Exit(code)
}

// serverProc is a `petrel serve` process.
type serverProc struct {
	cmd   *exec.Cmd
	url   string
	admin string // the admin listener's URL
	data  string
	addr  string
}

// startServer runs petrel serve on addr ("127.0.0.1:0" for a random port), with its admin
// listener on a random loopback port, and waits until it serves.
func startServer(t *testing.T, data, addr string, extra ...string) *serverProc {
	t.Helper()
	cmd := exec.Command(petrelBin, append([]string{"serve", "--listen", addr, "--admin-listen", "127.0.0.1:0", "--data", data, "--log-level", "warn"}, extra...)...)
	stdout, err := cmd.StdoutPipe()
	if err != nil {
		t.Fatal(err)
	}
	var stderr bytes.Buffer
	cmd.Stderr = &stderr
	if err := cmd.Start(); err != nil {
		t.Fatal(err)
	}
	lines := make(chan string, 1)
	go func() {
		sc := bufio.NewScanner(stdout)
		for sc.Scan() {
			select {
			case lines <- sc.Text():
			default:
			}
		}
	}()
	p := &serverProc{cmd: cmd, data: data}
	t.Cleanup(func() { p.kill() })
	select {
	case line := <-lines:
		// "petrel VERSION serving on http://127.0.0.1:PORT (data: ..., registration: open, admin: http://127.0.0.1:PORT)"
		if !regexp.MustCompile(`^petrel \S+ serving on http://`).MatchString(line) {
			t.Fatalf("serve's first line %q: want petrel VERSION serving on URL", line)
		}
		i := strings.Index(line, "http://")
		j := strings.Index(line, "admin: http://")
		if i < 0 || j < 0 {
			t.Fatalf("unexpected serve output %q (stderr %s)", line, stderr.String())
		}
		p.url = strings.Fields(line[i:])[0]
		p.addr = strings.TrimPrefix(p.url, "http://")
		p.admin = strings.TrimSuffix(strings.Fields(line[j+len("admin: "):])[0], ")")
	case <-time.After(60 * time.Second):
		t.Fatalf("server did not start; stderr: %s", stderr.String())
	}
	return p
}

// kill sends SIGKILL: no drain, no flush, no deferred code.
func (p *serverProc) kill() {
	if p.cmd.Process != nil && p.cmd.ProcessState == nil {
		_ = p.cmd.Process.Signal(syscall.SIGKILL)
		_ = p.cmd.Wait()
	}
}

// cli runs the petrel client with a home and returns stdout, failing the test on a non-zero exit.
func cli(t *testing.T, home string, args ...string) string {
	t.Helper()
	out, errOut, err := cliErr(home, "", args...)
	if err != nil {
		t.Fatalf("petrel %s: %v\nstdout: %s\nstderr: %s", strings.Join(args, " "), err, out, errOut)
	}
	return out
}

func cliErr(home, stdin string, args ...string) (string, string, error) {
	cmd := exec.Command(petrelBin, append([]string{"--home", home}, args...)...)
	var out, errOut bytes.Buffer
	cmd.Stdout, cmd.Stderr = &out, &errOut
	cmd.Stdin = strings.NewReader(stdin)
	err := cmd.Run()
	return out.String(), errOut.String(), err
}

type jsonMsg struct {
	ID         string `json:"id"`
	From       string `json:"from"`
	Text       string `json:"text"`
	SentAt     string `json:"sent_at"`
	ReceivedAt string `json:"received_at"`
}

func parseJSONLines(t *testing.T, out string) []jsonMsg {
	t.Helper()
	var msgs []jsonMsg
	for _, line := range strings.Split(strings.TrimSpace(out), "\n") {
		if line == "" {
			continue
		}
		var m jsonMsg
		if err := json.Unmarshal([]byte(line), &m); err != nil {
			t.Fatalf("recv --json line %q: %v", line, err)
		}
		msgs = append(msgs, m)
	}
	return msgs
}

// containsFile reports whether any file under dir contains needle.
func containsFile(t *testing.T, dir string, needle []byte) string {
	t.Helper()
	var found string
	_ = filepath.WalkDir(dir, func(path string, d fs.DirEntry, err error) error {
		if err != nil || d.IsDir() || found != "" {
			return nil
		}
		b, err := os.ReadFile(path)
		if err == nil && bytes.Contains(b, needle) {
			found = path
		}
		return nil
	})
	return found
}

// An acked message survives kill -9 of the server while the recipient is offline, is delivered
// exactly once after the restart, and its plaintext never reaches the server's data directory.
func TestProcessKillAfterAckRecipientOffline(t *testing.T) {
	data := t.TempDir()
	srv := startServer(t, data, "127.0.0.1:0")
	alice, bob := t.TempDir(), t.TempDir()
	cli(t, alice, "register", "--server", srv.url, "--name", "alice")
	cli(t, bob, "register", "--server", srv.url, "--name", "bob")

	secret := fmt.Sprintf("plaintext-canary-%d", time.Now().UnixNano())
	out := cli(t, alice, "send", "--to", "bob", secret)
	id := strings.TrimSpace(out)
	if id == "" {
		t.Fatal("send printed no message id")
	}
	srv.kill() // right after the ack

	if f := containsFile(t, data, []byte(secret)); f != "" {
		t.Fatalf("plaintext found in the server's data directory: %s", f)
	}
	srv = startServer(t, data, srv.addr)
	msgs := parseJSONLines(t, cli(t, bob, "recv", "--json", "--wait", "500ms"))
	if len(msgs) != 1 || msgs[0].ID != id || msgs[0].Text != secret || msgs[0].From != "alice" {
		t.Fatalf("want exactly the acked message once, got %+v", msgs)
	}
	if msgs[0].SentAt == "" || msgs[0].ReceivedAt == "" {
		t.Fatalf("timestamps missing: %+v", msgs[0])
	}
	// Nothing is displayed twice.
	if again := parseJSONLines(t, cli(t, bob, "recv", "--json", "--wait", "300ms")); len(again) != 0 {
		t.Fatalf("delivered again: %+v", again)
	}
	if f := containsFile(t, data, []byte(secret)); f != "" {
		t.Fatalf("plaintext found in the server's data directory: %s", f)
	}
}

// The same with the recipient online: the message is delivered live, the server is killed, and
// after the restart the recipient sees nothing twice.
func TestProcessKillAfterAckRecipientOnline(t *testing.T) {
	data := t.TempDir()
	srv := startServer(t, data, "127.0.0.1:0")
	alice, bob := t.TempDir(), t.TempDir()
	cli(t, alice, "register", "--server", srv.url, "--name", "alice")
	cli(t, bob, "register", "--server", srv.url, "--name", "bob")
	// Establish the session both ways first so that the online exchange below is the steady state.
	cli(t, alice, "send", "--to", "bob", "warm-up")
	parseJSONLines(t, cli(t, bob, "recv", "--json", "--wait", "300ms"))

	recv := exec.Command(petrelBin, "--home", bob, "recv", "--json", "--wait", "30s")
	stdout, err := recv.StdoutPipe()
	if err != nil {
		t.Fatal(err)
	}
	var recvErr bytes.Buffer
	recv.Stderr = &recvErr
	if err := recv.Start(); err != nil {
		t.Fatal(err)
	}
	t.Cleanup(func() { _ = recv.Process.Kill(); _ = recv.Wait() })
	got := make(chan jsonMsg, 4)
	go func() {
		sc := bufio.NewScanner(stdout)
		for sc.Scan() {
			var m jsonMsg
			if json.Unmarshal(sc.Bytes(), &m) == nil {
				got <- m
			}
		}
		close(got)
	}()
	// Send until bob's live connection is up: the first send may be stored if bob is still connecting.
	id := strings.TrimSpace(cli(t, alice, "send", "--to", "bob", "live-message"))
	var m jsonMsg
	select {
	case m = <-got:
	case <-time.After(30 * time.Second):
		t.Fatalf("bob did not receive the message; stderr: %s", recvErr.String())
	}
	if m.ID != id || m.Text != "live-message" {
		t.Fatalf("bob got %+v", m)
	}
	srv.kill()
	_ = recv.Process.Kill()
	_ = recv.Wait()

	srv = startServer(t, data, srv.addr)
	again := parseJSONLines(t, cli(t, bob, "recv", "--json", "--wait", "500ms"))
	for _, a := range again {
		if a.ID == id {
			t.Fatalf("message %s displayed twice", id)
		}
	}
	// recv claims a message in the store before printing it, so the kill left it seen, and kept.
	st, err := store.Open(bob, store.Options{})
	if err != nil {
		t.Fatal(err)
	}
	defer st.Close()
	st.View(func(tx *store.Tx) error {
		if r, err := tx.HistoryByID(store.Incoming, "alice", id); err != nil || !r.Seen {
			t.Errorf("message %s in bob's history after the kill: %+v %v", id, r, err)
		}
		return nil
	})
}

// Invite-only registration end to end: the operator prints a code, it works once.
func TestProcessInviteRegistration(t *testing.T) {
	data := t.TempDir()
	cmd := exec.Command(petrelBin, "serve", "--listen", "127.0.0.1:0", "--admin-listen", "127.0.0.1:0", "--data", data, "--registration", "invite", "--log-level", "warn")
	stdout, _ := cmd.StdoutPipe()
	if err := cmd.Start(); err != nil {
		t.Fatal(err)
	}
	p := &serverProc{cmd: cmd, data: data}
	t.Cleanup(p.kill)
	sc := bufio.NewScanner(stdout)
	if !sc.Scan() {
		t.Fatal("no serve output")
	}
	line := sc.Text()
	url := strings.Fields(line[strings.Index(line, "http://"):])[0]
	if !strings.Contains(line, "registration: invite") {
		t.Fatalf("serve output %q", line)
	}

	if _, errOut, err := cliErr(t.TempDir(), "", "register", "--server", url, "--name", "nocode"); err == nil {
		t.Fatal("registration without an invite succeeded")
	} else if !strings.Contains(strings.ToLower(errOut), "invite") {
		t.Fatalf("unclear error: %s", errOut)
	}
	// The admin listener's address comes from data/admin.addr.
	code := strings.TrimSpace(cli(t, t.TempDir(), "admin", "invite", "--data", data))
	if len(code) < 10 {
		t.Fatalf("invite code %q", code)
	}
	cli(t, t.TempDir(), "register", "--server", url, "--name", "carol", "--invite", code)
	if _, _, err := cliErr(t.TempDir(), "", "register", "--server", url, "--name", "dan", "--invite", code); err == nil {
		t.Fatal("an invite code worked twice")
	}
}

// SIGTERM drains and exits 0 quickly; readiness is gone and the data survives.
func TestProcessSIGTERM(t *testing.T) {
	data := t.TempDir()
	srv := startServer(t, data, "127.0.0.1:0")
	alice := t.TempDir()
	cli(t, alice, "register", "--server", srv.url, "--name", "alice")
	start := time.Now()
	if err := srv.cmd.Process.Signal(syscall.SIGTERM); err != nil {
		t.Fatal(err)
	}
	if err := srv.cmd.Wait(); err != nil {
		t.Fatalf("serve exited with %v after SIGTERM", err)
	}
	if el := time.Since(start); el > 15*time.Second {
		t.Fatalf("drain took %s", el)
	}
	srv = startServer(t, data, srv.addr)
	if out := cli(t, alice, "whoami"); !strings.Contains(out, "alice") {
		t.Fatalf("whoami after restart: %s", out)
	}
}

// petrel admin invite finds the admin listener through admin.addr (several servers on one
// machine, each on a random admin port), or --admin; --server is still accepted, with a warning;
// a stale admin.addr, a missing one and a plain-HTTP remote URL give clear errors.
func TestProcessAdminInvite(t *testing.T) {
	dataA, dataB := t.TempDir(), t.TempDir()
	a := startServer(t, dataA, "127.0.0.1:0", "--registration", "invite")
	b := startServer(t, dataB, "127.0.0.1:0", "--registration", "invite")
	if a.admin == b.admin {
		t.Fatalf("two servers, one admin URL %s", a.admin)
	}
	for _, s := range []*serverProc{a, b} {
		addr, err := os.ReadFile(filepath.Join(s.data, "admin.addr"))
		if err != nil || strings.TrimSpace(string(addr)) != s.admin {
			t.Fatalf("%s/admin.addr = %q %v, want %s", s.data, addr, err, s.admin)
		}
		code := strings.TrimSpace(cli(t, t.TempDir(), "admin", "invite", "--data", s.data))
		cli(t, t.TempDir(), "register", "--server", s.url, "--name", "carol", "--invite", code)
	}
	// --admin names the listener explicitly.
	if code := strings.TrimSpace(cli(t, t.TempDir(), "admin", "invite", "--data", dataA, "--admin", a.admin)); len(code) < 10 {
		t.Fatalf("invite code %q", code)
	}
	// The old --server flag is accepted, ignored, and said so.
	out, errOut, err := cliErr(t.TempDir(), "", "admin", "invite", "--data", dataA, "--server", a.url)
	if err != nil || len(strings.TrimSpace(out)) < 10 || !strings.Contains(errOut, "--server is deprecated") {
		t.Fatalf("admin invite --server: %v\nstdout %s\nstderr %s", err, out, errOut)
	}
	// B's token is refused by A's admin listener.
	_, errOut, err = cliErr(t.TempDir(), "", "admin", "invite", "--data", dataB, "--admin", a.admin)
	if err == nil || !strings.Contains(errOut, "401") {
		t.Fatalf("b's token at a: %v %s", err, errOut)
	}
	// --token-file names the token apart from the data directory (a cluster's shared [admin]
	// token_file): A's token works from anywhere, B's is refused.
	if code := strings.TrimSpace(cli(t, t.TempDir(), "admin", "invite", "--data", dataA, "--token-file", filepath.Join(dataA, "admin.token"))); len(code) < 10 {
		t.Fatalf("invite code with --token-file: %q", code)
	}
	_, errOut, err = cliErr(t.TempDir(), "", "admin", "invite", "--data", dataA, "--token-file", filepath.Join(dataB, "admin.token"))
	if err == nil || !strings.Contains(errOut, "401") {
		t.Fatalf("--token-file with b's token at a: %v %s", err, errOut)
	}
	_, errOut, err = cliErr(t.TempDir(), "", "admin", "invite", "--data", dataA, "--token-file", filepath.Join(dataA, "nope"))
	if exitCode(err) != 1 || !strings.Contains(errOut, "is --token-file the server's [admin] token_file?") {
		t.Fatalf("--token-file missing: %v %s", err, errOut)
	}
	// The token never goes over plain HTTP to another machine (refused before dialing).
	_, errOut, err = cliErr(t.TempDir(), "", "admin", "invite", "--data", dataA, "--admin", "http://192.0.2.1:7071")
	if exitCode(err) != 2 || !strings.Contains(errOut, "refusing to send the operator token over plain http") {
		t.Fatalf("plain http to a remote admin: %v %s", err, errOut)
	}
	// kill -9 leaves a stale admin.addr: the error names the address, the file, and the likely cause.
	b.kill()
	_, errOut, err = cliErr(t.TempDir(), "", "admin", "invite", "--data", dataB)
	if exitCode(err) != 1 || !strings.Contains(errOut, "cannot reach the admin listener at "+b.admin) ||
		!strings.Contains(errOut, filepath.Join(dataB, "admin.addr")) || !strings.Contains(errOut, "is the server running?") {
		t.Fatalf("stale admin.addr: %v %s", err, errOut)
	}
	// A data directory without admin.addr.
	empty := t.TempDir()
	os.WriteFile(filepath.Join(empty, "admin.token"), []byte(strings.Repeat("a", 64)), 0o600)
	_, errOut, err = cliErr(t.TempDir(), "", "admin", "invite", "--data", empty)
	if exitCode(err) != 2 || !strings.Contains(errOut, "admin.addr does not exist") || !strings.Contains(errOut, "--admin URL") {
		t.Fatalf("no admin.addr: %v %s", err, errOut)
	}
	// SIGTERM removes admin.addr.
	if err := a.cmd.Process.Signal(syscall.SIGTERM); err != nil {
		t.Fatal(err)
	}
	if err := a.cmd.Wait(); err != nil {
		t.Fatalf("serve after SIGTERM: %v", err)
	}
	if _, err := os.Stat(filepath.Join(dataA, "admin.addr")); !os.IsNotExist(err) {
		t.Fatalf("admin.addr after a clean shutdown: %v", err)
	}
}

func exitCode(err error) int {
	var ee *exec.ExitError
	if errors.As(err, &ee) {
		return ee.ExitCode()
	}
	if err != nil {
		return -1
	}
	return 0
}
