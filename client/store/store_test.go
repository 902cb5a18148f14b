// Copyright 2026 The Petrel Authors
// SPDX-License-Identifier: Apache-2.0

package store

import (
	"errors"
	"os"
	"path/filepath"
	"strings"
	"testing"
	"time"
)

func open(t *testing.T, dir string) *Store {
	t.Helper()
	s, err := Open(dir, Options{LockTimeout: 50 * time.Millisecond, NoSync: true})
	if err != nil {
		t.Fatal(err)
	}
	t.Cleanup(func() { s.Close() })
	return s
}

func TestOpenPermissionsAndLock(t *testing.T) {
	dir := filepath.Join(t.TempDir(), "home")
	open(t, dir)
	for path, want := range map[string]os.FileMode{dir: 0o700, filepath.Join(dir, FileName): 0o600} {
		fi, err := os.Stat(path)
		if err != nil {
			t.Fatal(err)
		}
		if got := fi.Mode().Perm(); got != want {
			t.Errorf("%s: mode %v, want %v", path, got, want)
		}
	}
	_, err := Open(dir, Options{LockTimeout: 50 * time.Millisecond})
	if !errors.Is(err, ErrLocked) {
		t.Fatalf("second open: got %v, want ErrLocked", err)
	}
	if want := "another petrel process is using " + dir; err == nil || !strings.Contains(err.Error(), want) {
		t.Fatalf("error %q does not say %q", err, want)
	}
}

func TestAccountRoundTrip(t *testing.T) {
	s := open(t, t.TempDir())
	err := s.View(func(tx *Tx) error {
		_, err := tx.Account()
		return err
	})
	if !errors.Is(err, ErrNotFound) {
		t.Fatalf("empty store: %v", err)
	}
	a := &Account{ServerURL: "http://x", Name: "alice", DeviceID: "d", AuthKey: []byte{1, 2}, Registered: true, NextKEMPreKeyID: 7}
	if err := s.Update(func(tx *Tx) error { return tx.PutAccount(a) }); err != nil {
		t.Fatal(err)
	}
	var got *Account
	s.View(func(tx *Tx) error { got, err = tx.Account(); return err })
	if err != nil || got.Name != "alice" || got.NextKEMPreKeyID != 7 || string(got.AuthKey) != "\x01\x02" {
		t.Fatalf("got %+v, %v", got, err)
	}
}

func TestHistoryIndexesAndUnseen(t *testing.T) {
	s := open(t, t.TempDir())
	err := s.Update(func(tx *Tx) error {
		for _, r := range []*HistoryRecord{
			{ID: "m1", Dir: Incoming, Peer: "bob", Body: "one"},
			{ID: "m1", Dir: Outgoing, Peer: "bob", Body: "mine", Status: StatusPending},
			{ID: "m2", Dir: Incoming, Peer: "carol", Body: "two"},
		} {
			if err := tx.AddHistory(r); err != nil {
				return err
			}
		}
		return nil
	})
	if err != nil {
		t.Fatal(err)
	}
	s.View(func(tx *Tx) error {
		r, err := tx.HistoryByID(Incoming, "bob", "m1")
		if err != nil || r.Body != "one" {
			t.Fatalf("incoming m1: %+v %v", r, err)
		}
		r, err = tx.HistoryByID(Outgoing, "bob", "m1")
		if err != nil || r.Body != "mine" {
			t.Fatalf("outgoing m1: %+v %v", r, err)
		}
		if _, err := tx.HistoryByID(Incoming, "carol", "m1"); !errors.Is(err, ErrNotFound) {
			t.Fatalf("ids are per peer: %v", err)
		}
		u, _ := tx.Unseen(10)
		if len(u) != 2 || u[0].ID != "m1" || u[1].ID != "m2" {
			t.Fatalf("unseen: %+v", u)
		}
		// Paging: after the first record's seq comes the second, after the last nothing.
		if p, _ := tx.UnseenAfter(u[0].Seq, 10); len(p) != 1 || p[0].ID != "m2" {
			t.Fatalf("unseen after %d: %+v", u[0].Seq, p)
		}
		if p, _ := tx.UnseenAfter(u[1].Seq, 10); len(p) != 0 {
			t.Fatalf("unseen after the last: %+v", p)
		}
		return nil
	})
	var first uint64
	s.View(func(tx *Tx) error { u, _ := tx.Unseen(1); first = u[0].Seq; return nil })
	s.Update(func(tx *Tx) error { return tx.MarkSeen(first) })
	s.View(func(tx *Tx) error {
		u, _ := tx.Unseen(10)
		if len(u) != 1 || u[0].ID != "m2" {
			t.Fatalf("unseen after MarkSeen: %+v", u)
		}
		return nil
	})
}

func TestOutboxPendingIndex(t *testing.T) {
	s := open(t, t.TempDir())
	var a, b *OutboxEntry
	s.Update(func(tx *Tx) error {
		a = &OutboxEntry{ID: "a", To: "bob", Kind: KindText}
		b = &OutboxEntry{ID: "b", To: "bob", Kind: KindReceipt}
		if err := tx.AddOutbox(a); err != nil {
			return err
		}
		return tx.AddOutbox(b)
	})
	pending := func() []string {
		var ids []string
		s.View(func(tx *Tx) error {
			p, err := tx.PendingOutbox(10)
			for _, e := range p {
				ids = append(ids, e.ID)
			}
			return err
		})
		return ids
	}
	if got := pending(); len(got) != 2 || got[0] != "a" || got[1] != "b" {
		t.Fatalf("pending in order: %v", got)
	}
	s.View(func(tx *Tx) error {
		if p, err := tx.PendingOutboxAfter(a.Seq, 10); err != nil || len(p) != 1 || p[0].ID != "b" {
			t.Fatalf("pending after a: %+v %v", p, err)
		}
		if p, err := tx.PendingOutboxAfter(b.Seq, 10); err != nil || len(p) != 0 {
			t.Fatalf("pending after b: %+v %v", p, err)
		}
		return nil
	})
	s.Update(func(tx *Tx) error {
		a.ServerAckedAt = time.Now()
		a.Awaiting = []string{"dev"}
		return tx.PutOutbox(a)
	})
	if got := pending(); len(got) != 1 || got[0] != "b" {
		t.Fatalf("after ack: %v", got)
	}
	s.Update(func(tx *Tx) error { return tx.DeleteOutbox(b) })
	s.View(func(tx *Tx) error {
		if n := tx.OutboxLen(); n != 1 {
			t.Fatalf("len %d", n)
		}
		e, err := tx.OutboxByID("bob", "a")
		if err != nil || e.Pending() || len(e.Awaiting) != 1 {
			t.Fatalf("a: %+v %v", e, err)
		}
		if _, err := tx.OutboxByID("bob", "b"); !errors.Is(err, ErrNotFound) {
			t.Fatalf("deleted b: %v", err)
		}
		return nil
	})
}

// Backup copies the committed state of an open store into a database that opens on its own.
func TestBackup(t *testing.T) {
	s := open(t, t.TempDir())
	if err := s.Update(func(tx *Tx) error {
		return tx.AddHistory(&HistoryRecord{ID: "m1", Dir: Incoming, Peer: "bob", Body: "one"})
	}); err != nil {
		t.Fatal(err)
	}
	home := t.TempDir()
	path := filepath.Join(home, FileName)
	if err := s.Backup(path); err != nil {
		t.Fatal(err)
	}
	if fi, err := os.Stat(path); err != nil || fi.Mode().Perm() != 0o600 {
		t.Fatalf("backup file: %v %v", fi, err)
	}
	if err := s.Backup(path); err == nil {
		t.Fatal("Backup overwrote an existing file")
	}
	c := open(t, home)
	c.View(func(tx *Tx) error {
		if r, err := tx.HistoryByID(Incoming, "bob", "m1"); err != nil || r.Body != "one" {
			t.Fatalf("history in the backup: %+v %v", r, err)
		}
		return nil
	})
}

// ClaimSeen marks an unseen incoming record once: only the first claim returns true.
func TestClaimSeen(t *testing.T) {
	s := open(t, t.TempDir())
	var in, out uint64
	s.Update(func(tx *Tx) error {
		a := &HistoryRecord{ID: "m1", Dir: Incoming, Peer: "bob", Body: "one"}
		b := &HistoryRecord{ID: "m2", Dir: Outgoing, Peer: "bob", Body: "mine"}
		if err := tx.AddHistory(a); err != nil {
			return err
		}
		in = a.Seq
		err := tx.AddHistory(b)
		out = b.Seq
		return err
	})
	claim := func(seq uint64) bool {
		var ok bool
		if err := s.Update(func(tx *Tx) error { var err error; ok, err = tx.ClaimSeen(seq); return err }); err != nil {
			t.Fatal(err)
		}
		return ok
	}
	if !claim(in) {
		t.Fatal("first claim of an unseen record failed")
	}
	if claim(in) {
		t.Fatal("a record was claimed twice")
	}
	if claim(out) || claim(out+100) {
		t.Fatal("claimed an outgoing or missing record")
	}
	s.View(func(tx *Tx) error {
		if u, _ := tx.Unseen(10); len(u) != 0 {
			t.Fatalf("unseen after the claim: %+v", u)
		}
		return nil
	})
}

// HistoryBefore pages backwards; a synced sent copy is unseen like an incoming message, an
// unverified one is neither unseen nor claimable until verified; DeleteHistory drops a record
// and its indexes.
func TestHistoryBeforeSyncedAndUnverified(t *testing.T) {
	s := open(t, t.TempDir())
	recs := []*HistoryRecord{
		{ID: "in", Dir: Incoming, Peer: "bob"},
		{ID: "mine", Dir: Outgoing, Peer: "bob"},
		{ID: "synced", Dir: Outgoing, Peer: "bob", Synced: true},
		{ID: "unverified", Dir: Outgoing, Peer: "carol", Synced: true, Unverified: true},
	}
	s.Update(func(tx *Tx) error {
		for _, r := range recs {
			if err := tx.AddHistory(r); err != nil {
				return err
			}
		}
		return nil
	})
	ids := func(rs []*HistoryRecord) (out []string) {
		for _, r := range rs {
			out = append(out, r.ID)
		}
		return out
	}
	s.Update(func(tx *Tx) error {
		all, _ := tx.HistoryBefore(0, 10)
		if got := strings.Join(ids(all), ","); got != "unverified,synced,mine,in" {
			t.Fatalf("HistoryBefore(0): %s", got)
		}
		page, _ := tx.HistoryBefore(recs[2].Seq, 1)
		if got := strings.Join(ids(page), ","); got != "mine" {
			t.Fatalf("HistoryBefore(synced, 1): %s", got)
		}
		if page, _ := tx.HistoryBefore(recs[3].Seq+100, 1); len(page) != 1 || page[0].ID != "unverified" {
			t.Fatalf("HistoryBefore past the end: %v", ids(page))
		}
		u, _ := tx.Unseen(10)
		if got := strings.Join(ids(u), ","); got != "in,synced" {
			t.Fatalf("unseen: %s", got)
		}
		if ok, _ := tx.ClaimSeen(recs[3].Seq); ok {
			t.Fatal("an unverified record was claimable")
		}
		uv, _ := tx.UnverifiedHistory(10)
		if len(uv) != 1 || uv[0].ID != "unverified" {
			t.Fatalf("unverified: %v", ids(uv))
		}
		uv[0].Unverified = false
		if err := tx.PutHistory(uv[0]); err != nil {
			return err
		}
		if uv, _ := tx.UnverifiedHistory(10); len(uv) != 0 {
			t.Fatalf("still unverified: %v", ids(uv))
		}
		if u, _ := tx.Unseen(10); len(u) != 3 {
			t.Fatalf("unseen after verification: %v", ids(u))
		}
		if err := tx.DeleteHistory(recs[0]); err != nil {
			return err
		}
		if _, err := tx.HistoryByID(Incoming, "bob", "in"); !errors.Is(err, ErrNotFound) {
			t.Fatalf("deleted record: %v", err)
		}
		if u, _ := tx.Unseen(10); len(u) != 2 {
			t.Fatalf("unseen after delete: %v", ids(u))
		}
		return nil
	})
}
