// Copyright 2026 The Petrel Authors
// SPDX-License-Identifier: Apache-2.0

package main

import (
	"context"
	"io"
	"os"
	"path/filepath"
	"regexp"
	"strings"
	"testing"
	"time"

	"github.com/petrelchat/petrel/internal/testserver"
)

var recoveryKeyRE = regexp.MustCompile(`(?m)^recovery key: ([0-9A-Z]{4}(?:-[0-9A-Z]{4}){11})$`)

// The whole recovery flow as a user runs it: the key printed at registration and by
// recovery-key show, recover on a new home, the old device refused, a contact who sees the
// safety number change and can still message the account, a wrong key, the rate limit.
func TestCLIRecover(t *testing.T) {
	fastClients(t)
	srv := testserver.Start(t)
	alice, bob, alice2, thief := t.TempDir(), t.TempDir(), t.TempDir(), t.TempDir()

	r := petrel(t, alice, "", "register", "--server", srv.URL(), "--name", "alice").must(t, 0)
	m := recoveryKeyRE.FindStringSubmatch(r.stdout)
	if m == nil || !strings.Contains(r.stdout, "Write it down") {
		t.Fatalf("register printed no labelled recovery key:\n%s", r.stdout)
	}
	key := m[1]
	if s := petrel(t, alice, "", "recovery-key", "show").must(t, 0); s.stdout != "recovery key: "+key+"\n" {
		t.Fatalf("recovery-key show: %q, want the key register printed", s.stdout)
	}
	petrel(t, bob, "", "register", "--server", srv.URL(), "--name", "bob").must(t, 0)
	petrel(t, bob, "", "send", "--to", "alice", "before").must(t, 0)
	if r := petrel(t, alice, "", "recv", "--wait", "200ms").must(t, 0); !strings.Contains(r.stdout, "bob: before") {
		t.Fatalf("recv: %q", r.stdout)
	}
	before := petrel(t, bob, "", "safety-number", "alice").must(t, 0).stdout

	// A wrong key: refused in words, nothing taken over.
	wrong := "0000" + key[4:]
	if wrong == key {
		wrong = "1111" + key[4:]
	}
	r = petrel(t, thief, "", "recover", "--server", srv.URL(), "--name", "alice", "--recovery-key", wrong).must(t, 1)
	if !strings.Contains(r.stderr, "the recovery key does not match this account") {
		t.Fatalf("wrong key: %q", r.stderr)
	}
	r = petrel(t, thief, "", "recover", "--server", srv.URL(), "--name", "alice", "--recovery-key", "not-a-key").must(t, 1)
	if !strings.Contains(r.stderr, "48 characters") {
		t.Fatalf("malformed key: %q", r.stderr)
	}

	// The right key, typed in lower case with spaces, and the name with a capital.
	typed := strings.ToLower(strings.ReplaceAll(key, "-", " "))
	r = petrel(t, alice2, "", "recover", "--server", srv.URL(), "--name", "Alice", "--recovery-key", typed).must(t, 0)
	if !strings.Contains(r.stdout, "recovered alice on "+srv.URL()) || !strings.Contains(r.stderr, `using "alice"`) {
		t.Fatalf("recover: stdout %q stderr %q", r.stdout, r.stderr)
	}
	if w := petrel(t, alice2, "", "whoami").must(t, 0); !strings.Contains(w.stdout, "role:        primary") {
		t.Fatalf("whoami after recover:\n%s", w.stdout)
	}
	if s := petrel(t, alice2, "", "recovery-key", "show").must(t, 0); s.stdout != "recovery key: "+key+"\n" {
		t.Fatalf("recovered home keeps the key: %q", s.stdout)
	}

	// The old device is refused, in words.
	r = petrel(t, alice, "", "recv", "--wait", "200ms").must(t, 1)
	if !strings.Contains(r.stderr, "the account was recovered on another device") {
		t.Fatalf("old device: %q", r.stderr)
	}

	// Bob sees the change and can still message alice, who now lives in alice2.
	r = petrel(t, bob, "", "send", "--to", "alice", "after").must(t, 0)
	if !strings.Contains(r.stderr, "your safety number with alice changed") {
		t.Fatalf("bob was not told the safety number changed: %q", r.stderr)
	}
	if after := petrel(t, bob, "", "safety-number", "alice").must(t, 0).stdout; after == before {
		t.Fatalf("safety number unchanged after recovery: %q", after)
	}
	if r := petrel(t, alice2, "", "recv", "--wait", "300ms").must(t, 0); !strings.Contains(r.stdout, "bob: after") || strings.Contains(r.stdout, "before") {
		t.Fatalf("recovered device recv: %q", r.stdout)
	}
	petrel(t, alice2, "", "send", "--to", "bob", "it is me").must(t, 0)
	if r := petrel(t, bob, "", "recv", "--wait", "300ms").must(t, 0); !strings.Contains(r.stdout, "alice: it is me") {
		t.Fatalf("bob recv: %q", r.stdout)
	}

	// Rate limit: a handful of tries per account, then RATE_LIMITED, even with the right key.
	limited := false
	for i := 0; i < recoverAttemptsBeforeLimit+2 && !limited; i++ {
		r = petrel(t, t.TempDir(), "", "recover", "--server", srv.URL(), "--name", "alice", "--recovery-key", wrong)
		limited = strings.Contains(r.stderr, "too many recovery attempts")
	}
	if !limited {
		t.Fatalf("no rate limit after %d wrong keys; last: %q", recoverAttemptsBeforeLimit+2, r.stderr)
	}
	r = petrel(t, t.TempDir(), "", "recover", "--server", srv.URL(), "--name", "alice", "--recovery-key", key).must(t, 1)
	if !strings.Contains(r.stderr, "too many recovery attempts") {
		t.Fatalf("right key while limited: %q", r.stderr)
	}
}

// A petrel chat running on the old device when the account is recovered on another home: the
// server closes its connection (DEVICE_REMOVED) and chat exits 1, saying why in words and what
// to do.
func TestCLIRecoverStopsRunningChat(t *testing.T) {
	fastClients(t)
	srv := testserver.Start(t)
	alice, bob, alice2 := t.TempDir(), t.TempDir(), t.TempDir()
	r := petrel(t, alice, "", "register", "--server", srv.URL(), "--name", "alice").must(t, 0)
	m := recoveryKeyRE.FindStringSubmatch(r.stdout)
	if m == nil {
		t.Fatalf("register printed no recovery key:\n%s", r.stdout)
	}
	petrel(t, bob, "", "register", "--server", srv.URL(), "--name", "bob").must(t, 0)
	petrel(t, bob, "", "send", "--to", "alice", "are you there").must(t, 0)

	inR, inW := io.Pipe()
	defer inW.Close()
	out, errb := &testserver.Buffer{}, &testserver.Buffer{}
	done := make(chan int, 1)
	ctx, cancel := context.WithTimeout(context.Background(), cliWait)
	defer cancel()
	go func() {
		e := &env{stdin: inR, stdout: out, stderr: errb, getenv: func(string) string { return "" }}
		done <- run(ctx, []string{"--home", alice, "chat", "bob"}, e)
	}()
	out.WaitFor(t, "bob: are you there\n", cliWait) // connected: the stored message came through

	petrel(t, alice2, "", "recover", "--server", srv.URL(), "--name", "alice", "--recovery-key", m[1]).must(t, 0)
	select {
	case code := <-done:
		if code != 1 {
			t.Fatalf("chat exit code %d after the recovery, want 1; stderr:\n%s", code, errb.String())
		}
	case <-time.After(cliWait):
		t.Fatalf("chat kept running after the account was recovered on another home; stderr:\n%s", errb.String())
	}
	msg := errb.String()
	for _, want := range []string{"petrel chat: ", "this device was removed from its account", "recovered on another device"} {
		if !strings.Contains(msg, want) {
			t.Errorf("chat's error does not say %q:\n%s", want, msg)
		}
	}
}

// recoverAttemptsBeforeLimit is the gateway's per-account burst (recoverBurst).
const recoverAttemptsBeforeLimit = 5

func TestCLIRecoveryKeyShowRefusals(t *testing.T) {
	home := t.TempDir()
	r := petrel(t, home, "", "recovery-key", "show").must(t, 1)
	if !strings.Contains(r.stderr, "petrel recovery-key:") {
		t.Fatalf("no home: %q", r.stderr)
	}
	petrel(t, home, "", "recovery-key").must(t, 2)
	petrel(t, home, "", "recover", "--server", "http://127.0.0.1:1", "--name", "a").must(t, 2)
}

// Backup: export with a passphrase file, import into an empty home that then works (receives),
// a wrong passphrase and a non-empty home refused (and left as they were), --force replaces.
func TestCLIBackup(t *testing.T) {
	fastClients(t)
	old := backupKDF
	backupKDF.time, backupKDF.memoryKiB, backupKDF.threads = 1, 64, 1 // fast; the format carries them
	t.Cleanup(func() { backupKDF = old })
	srv := testserver.Start(t)
	alice, bob, restored, other := t.TempDir(), t.TempDir(), t.TempDir(), t.TempDir()
	petrel(t, alice, "", "register", "--server", srv.URL(), "--name", "alice").must(t, 0)
	petrel(t, bob, "", "register", "--server", srv.URL(), "--name", "bob").must(t, 0)
	petrel(t, bob, "", "send", "--to", "alice", "one").must(t, 0)
	petrel(t, alice, "", "recv", "--wait", "200ms").must(t, 0)

	dir := t.TempDir()
	pf, wrong := filepath.Join(dir, "pass"), filepath.Join(dir, "wrong")
	os.WriteFile(pf, []byte("correct horse battery\n"), 0o600)
	os.WriteFile(wrong, []byte("incorrect horse\n"), 0o600)
	short := filepath.Join(dir, "short")
	os.WriteFile(short, []byte("abc\n"), 0o600)
	file := filepath.Join(dir, "alice.petrelbackup")

	r := petrel(t, alice, "", "backup", "export", file, "--passphrase-file", short).must(t, 1)
	if !strings.Contains(r.stderr, "too short") {
		t.Fatalf("short passphrase: %q", r.stderr)
	}
	r = petrel(t, alice, "", "backup", "export", file).must(t, 1)
	if !strings.Contains(r.stderr, "--passphrase-file") {
		t.Fatalf("no terminal, no file: %q", r.stderr)
	}
	petrel(t, alice, "", "backup", "export", file, "--passphrase-file", pf).must(t, 0)
	b, err := os.ReadFile(file)
	if err != nil || !strings.HasPrefix(string(b), backupMagic) || strings.Contains(string(b), "alice") {
		t.Fatalf("backup file: err %v, plaintext name visible or no header", err)
	}
	if fi, _ := os.Stat(file); fi.Mode().Perm() != 0o600 {
		t.Fatalf("backup mode %v", fi.Mode().Perm())
	}
	petrel(t, alice, "", "backup", "export", file, "--passphrase-file", pf).must(t, 1) // never overwrites

	r = petrel(t, restored, "", "backup", "import", file, "--passphrase-file", wrong).must(t, 1)
	if !strings.Contains(r.stderr, "the passphrase is wrong") {
		t.Fatalf("wrong passphrase: %q", r.stderr)
	}
	if _, err := os.Stat(filepath.Join(restored, "petrel.db")); err == nil {
		t.Fatal("a refused import left a store behind")
	}
	petrel(t, other, "", "register", "--server", srv.URL(), "--name", "carol").must(t, 0)
	r = petrel(t, other, "", "backup", "import", file, "--passphrase-file", pf).must(t, 1)
	if !strings.Contains(r.stderr, "--force") {
		t.Fatalf("non-empty home: %q", r.stderr)
	}
	if w := petrel(t, other, "", "whoami").must(t, 0); !strings.Contains(w.stdout, "carol") {
		t.Fatalf("refused import changed the home:\n%s", w.stdout)
	}

	// The restored home is alice's device: the same id, its sessions work, it receives. (The
	// original stops being used here, as README says it must.)
	r = petrel(t, restored, "", "backup", "import", file, "--passphrase-file", pf).must(t, 0)
	if !strings.Contains(r.stdout, "restored alice") {
		t.Fatalf("import: %q", r.stdout)
	}
	want := petrel(t, alice, "", "whoami").must(t, 0).stdout
	if got := petrel(t, restored, "", "whoami").must(t, 0).stdout; got != want {
		t.Fatalf("whoami differs:\n%s\nwant\n%s", got, want)
	}
	petrel(t, bob, "", "send", "--to", "alice", "two").must(t, 0)
	if r := petrel(t, restored, "", "recv", "--wait", "300ms").must(t, 0); !strings.Contains(r.stdout, "bob: two") {
		t.Fatalf("restored recv: %q", r.stdout)
	}
	petrel(t, restored, "", "send", "--to", "bob", "three").must(t, 0)
	if r := petrel(t, bob, "", "recv", "--wait", "300ms").must(t, 0); !strings.Contains(r.stdout, "alice: three") {
		t.Fatalf("bob recv: %q", r.stdout)
	}
	petrel(t, other, "", "backup", "import", file, "--passphrase-file", pf, "--force").must(t, 0)
	if w := petrel(t, other, "", "whoami").must(t, 0); !strings.Contains(w.stdout, "alice") {
		t.Fatalf("--force import:\n%s", w.stdout)
	}
}
