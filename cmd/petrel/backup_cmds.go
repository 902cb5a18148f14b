// Copyright 2026 The Petrel Authors
// SPDX-License-Identifier: Apache-2.0

package main

import (
	"bytes"
	"context"
	"crypto/aes"
	"crypto/cipher"
	"crypto/rand"
	"encoding/binary"
	"errors"
	"flag"
	"fmt"
	"io"
	"os"
	"path/filepath"
	"strings"

	"golang.org/x/crypto/argon2"
	"golang.org/x/term"

	"github.com/petrelchat/petrel/client/store"
)

// petrel backup export FILE / petrel backup import FILE: the home's whole state (the store file:
// keys, sessions, contacts, groups, history, outbox) encrypted with a passphrase.
//
// File format, version 1 (all integers big-endian):
//
//	magic "PETRELBK" (8) | version 1 (1) | Argon2id time (4) | memory in KiB (4) | threads (1)
//	| salt (16) | nonce (12) | AES-256-GCM(key, nonce, store file, additional data = the header)
//
// key = Argon2id(passphrase, salt, time, memory, threads, 32 bytes). The header is the 46 bytes
// before the ciphertext; it is authenticated, so a changed parameter fails like a wrong
// passphrase.

const backupUsage = "backup export FILE [--passphrase-file F] | backup import FILE [--passphrase-file F] [--force]"

const (
	backupMagic     = "PETRELBK"
	backupVersion   = 1
	backupHeaderLen = 8 + 1 + 4 + 4 + 1 + 16 + 12
	// maxBackupBytes bounds a backup (and the store it holds) read into memory.
	maxBackupBytes = 4 << 30
	// minPassphrase is the shortest passphrase export accepts, in characters.
	minPassphrase = 8
	// maxPassphraseBytes bounds a passphrase read from a file or the terminal.
	maxPassphraseBytes = 4096
)

// backupKDF are the Argon2id parameters export writes (import reads them from the file, within
// sane bounds). Tests lower them.
var backupKDF = struct {
	time, memoryKiB uint32
	threads         uint8
}{time: 3, memoryKiB: 64 << 10, threads: 4}

// errWrongPassphrase: the backup does not decrypt (a wrong passphrase, or a damaged file).
var errWrongPassphrase = errors.New("the passphrase is wrong, or the backup file is damaged: nothing was changed")

func runBackup(ctx context.Context, e *env, args []string) int {
	if len(args) == 0 || args[0] == "-h" || args[0] == "--help" || args[0] == "help" {
		fmt.Fprintln(e.stderr, "usage: petrel "+backupUsage+"\n\n"+
			"  export FILE   write this home's whole state, encrypted with a passphrase, to FILE\n"+
			"  import FILE   restore a backup into this home (an empty one, or --force)\n\n"+
			"The passphrase is asked on the terminal (twice for export), or read from the first line\n"+
			"of --passphrase-file F. Run 'petrel backup export --help' for the flags.")
		if len(args) == 0 {
			return 2
		}
		return 0
	}
	switch args[0] {
	case "export":
		return runBackupExport(ctx, e, args[1:])
	case "import":
		return runBackupImport(ctx, e, args[1:])
	}
	fmt.Fprintf(e.stderr, "petrel backup: unknown subcommand %q (want: export, import)\n", args[0])
	return 2
}

func runBackupExport(_ context.Context, e *env, args []string) int {
	const cmd = "backup export"
	fs := newFlags(e, cmd, "backup export FILE [--passphrase-file F]\n\n"+
		"Writes this home's whole state (keys, sessions, contacts, groups, history, outbox) to FILE\n"+
		"(mode 0600), encrypted with a passphrase (Argon2id, AES-256-GCM). FILE must not exist.\n"+
		"Keep FILE and the passphrase apart: together they are this device.")
	pfile := fs.String("passphrase-file", "", "read the passphrase from the first line of this file instead of the terminal")
	pos, code, ok := parseInterleaved(fs, args)
	if !ok {
		return code
	}
	if len(pos) != 1 {
		return usageErr(e, cmd, "want exactly one FILE")
	}
	out := pos[0]
	if _, err := os.Stat(out); err == nil {
		return fail(e, cmd, fmt.Errorf("%s exists: choose another file name (a backup never overwrites a file)", out))
	}
	pass, err := readPassphrase(e, *pfile, true)
	if err != nil {
		return fail(e, cmd, err)
	}
	st, err := openStore(e, false)
	if err != nil {
		return fail(e, cmd, err)
	}
	tmpDir, err := os.MkdirTemp(filepath.Dir(out), ".petrel-backup-*")
	if err != nil {
		st.Close()
		return fail(e, cmd, err)
	}
	defer os.RemoveAll(tmpDir)
	plain := filepath.Join(tmpDir, "store")
	err = st.Backup(plain)
	st.Close()
	if err != nil {
		return fail(e, cmd, err)
	}
	db, err := readBounded(plain)
	if err != nil {
		return fail(e, cmd, err)
	}
	sealed, err := sealBackup(pass, db)
	clear(db)
	if err != nil {
		return fail(e, cmd, err)
	}
	if err := writeNewFile(out, sealed); err != nil {
		return fail(e, cmd, err)
	}
	fmt.Fprintf(e.stdout, "backup written to %s (%s); restore it with 'petrel backup import %s'\n", out, sizeText(len(sealed)), out)
	return 0
}

func runBackupImport(_ context.Context, e *env, args []string) int {
	const cmd = "backup import"
	fs := newFlags(e, cmd, "backup import FILE [--passphrase-file F] [--force]\n\n"+
		"Restores a backup made by 'petrel backup export' into this home. A home that already\n"+
		"holds state is refused unless --force (which replaces it). Do not keep running the device\n"+
		"the backup came from: two copies of one device take each other's connection. For a\n"+
		"second device use 'petrel link'; for a lost one 'petrel recover'.")
	pfile := fs.String("passphrase-file", "", "read the passphrase from the first line of this file instead of the terminal")
	force := fs.Bool("force", false, "replace the state this home holds")
	pos, code, ok := parseInterleaved(fs, args)
	if !ok {
		return code
	}
	if len(pos) != 1 {
		return usageErr(e, cmd, "want exactly one FILE")
	}
	dbPath := filepath.Join(e.home, store.FileName)
	if _, err := os.Stat(dbPath); err == nil && !*force {
		return fail(e, cmd, fmt.Errorf("%s already holds petrel state: use an empty --home, or --force to replace it", e.home))
	}
	sealed, err := readBounded(pos[0])
	if err != nil {
		return fail(e, cmd, err)
	}
	pass, err := readPassphrase(e, *pfile, false)
	if err != nil {
		return fail(e, cmd, err)
	}
	db, err := openBackup(pass, sealed)
	if err != nil {
		return fail(e, cmd, err)
	}
	if err := os.MkdirAll(e.home, 0o700); err != nil {
		return fail(e, cmd, err)
	}
	// Checked in a directory of its own first: a backup that does not open as a registered home
	// replaces nothing.
	tmpDir, err := os.MkdirTemp(e.home, ".import-*")
	if err != nil {
		return fail(e, cmd, err)
	}
	defer os.RemoveAll(tmpDir)
	if err := writeNewFile(filepath.Join(tmpDir, store.FileName), db); err != nil {
		return fail(e, cmd, err)
	}
	clear(db)
	name, err := checkRestored(tmpDir)
	if err != nil {
		return fail(e, cmd, fmt.Errorf("the backup decrypted but does not hold a usable home: %w", err))
	}
	// Hold the home's lock (no other petrel process may be using it) while the file is replaced.
	if _, err := os.Stat(dbPath); err == nil {
		cur, err := store.Open(e.home, store.Options{MustExist: true})
		if err != nil {
			return fail(e, cmd, err)
		}
		defer cur.Close()
	}
	if err := os.Rename(filepath.Join(tmpDir, store.FileName), dbPath); err != nil {
		return fail(e, cmd, err)
	}
	fmt.Fprintf(e.stdout, "restored %s into %s; do not run the device this backup came from any more\n", name, e.home)
	return 0
}

// parseInterleaved parses flags that may come before or after the positional arguments
// (backup export FILE --passphrase-file F) and returns the positional ones.
func parseInterleaved(fs *flag.FlagSet, args []string) (pos []string, code int, ok bool) {
	for {
		if code, ok := parseFlags(fs, args); !ok {
			return nil, code, false
		}
		if fs.NArg() == 0 {
			return pos, 0, true
		}
		pos = append(pos, fs.Arg(0))
		args = fs.Args()[1:]
	}
}

// checkRestored opens a restored store and returns its account name.
func checkRestored(dir string) (string, error) {
	st, err := store.Open(dir, store.Options{MustExist: true})
	if err != nil {
		return "", err
	}
	defer st.Close()
	var name string
	err = st.View(func(tx *store.Tx) error {
		a, err := tx.Account()
		if err != nil {
			return err
		}
		if !a.Registered {
			return errors.New("its device was never registered")
		}
		name = a.Name
		return nil
	})
	return name, err
}

// sealBackup encrypts a store file with a key derived from pass.
func sealBackup(pass, db []byte) ([]byte, error) {
	hdr := make([]byte, 0, backupHeaderLen)
	hdr = append(hdr, backupMagic...)
	hdr = append(hdr, backupVersion)
	hdr = binary.BigEndian.AppendUint32(hdr, backupKDF.time)
	hdr = binary.BigEndian.AppendUint32(hdr, backupKDF.memoryKiB)
	hdr = append(hdr, backupKDF.threads)
	salt := make([]byte, 16+12)
	if _, err := rand.Read(salt); err != nil {
		return nil, err
	}
	hdr = append(hdr, salt...)
	aead, err := backupAEAD(pass, hdr)
	if err != nil {
		return nil, err
	}
	return aead.Seal(hdr, hdr[backupHeaderLen-12:], db, hdr), nil
}

// openBackup decrypts a backup file.
func openBackup(pass, sealed []byte) ([]byte, error) {
	if len(sealed) < backupHeaderLen+16 || !bytes.HasPrefix(sealed, []byte(backupMagic)) {
		return nil, errors.New("not a petrel backup file (made by 'petrel backup export')")
	}
	if v := sealed[8]; v != backupVersion {
		return nil, fmt.Errorf("backup format version %d: this petrel reads version %d (upgrade petrel)", v, backupVersion)
	}
	hdr := sealed[:backupHeaderLen]
	aead, err := backupAEAD(pass, hdr)
	if err != nil {
		return nil, err
	}
	db, err := aead.Open(nil, hdr[backupHeaderLen-12:], sealed[backupHeaderLen:], hdr)
	if err != nil {
		return nil, errWrongPassphrase
	}
	return db, nil
}

// backupAEAD derives the key of a header's parameters and returns its AES-256-GCM.
func backupAEAD(pass, hdr []byte) (cipher.AEAD, error) {
	t := binary.BigEndian.Uint32(hdr[9:])
	mem := binary.BigEndian.Uint32(hdr[13:])
	threads := hdr[17]
	// Bounds on what a file may ask for: at most 16 passes, 4 GiB of memory.
	if t == 0 || t > 16 || mem < 8 || mem > 4<<20 || threads == 0 {
		return nil, errors.New("the backup's key-derivation parameters are out of range: the file is damaged")
	}
	key := argon2.IDKey(pass, hdr[18:34], t, mem, threads, 32)
	defer clear(key)
	block, err := aes.NewCipher(key)
	if err != nil {
		return nil, err
	}
	return cipher.NewGCM(block)
}

// readPassphrase reads the passphrase from file (its first line) or, without one, from the
// terminal without echo (twice when confirm).
func readPassphrase(e *env, file string, confirm bool) ([]byte, error) {
	var pass []byte
	if file != "" {
		b, err := readBoundedN(file, maxPassphraseBytes)
		if err != nil {
			return nil, fmt.Errorf("read --passphrase-file: %w", err)
		}
		line, _, _ := strings.Cut(string(b), "\n")
		pass = []byte(strings.TrimSuffix(line, "\r"))
	} else {
		f, ok := e.stdin.(*os.File)
		if !ok || !isTerminal(f) {
			return nil, errors.New("no terminal to ask for the passphrase: give --passphrase-file FILE")
		}
		fmt.Fprint(e.stderr, "passphrase: ")
		b, err := term.ReadPassword(int(f.Fd()))
		fmt.Fprintln(e.stderr)
		if err != nil {
			return nil, fmt.Errorf("read the passphrase: %w", err)
		}
		if confirm {
			fmt.Fprint(e.stderr, "passphrase again: ")
			again, err := term.ReadPassword(int(f.Fd()))
			fmt.Fprintln(e.stderr)
			if err != nil {
				return nil, fmt.Errorf("read the passphrase: %w", err)
			}
			if !bytes.Equal(b, again) {
				return nil, errors.New("the two passphrases differ: run the command again")
			}
		}
		pass = b
	}
	if confirm && len([]rune(string(pass))) < minPassphrase {
		return nil, fmt.Errorf("the passphrase is too short: use at least %d characters", minPassphrase)
	}
	if len(pass) == 0 {
		return nil, errors.New("empty passphrase")
	}
	return pass, nil
}

func readBounded(path string) ([]byte, error) { return readBoundedN(path, maxBackupBytes) }

// readBoundedN reads a file of at most limit bytes.
func readBoundedN(path string, limit int64) ([]byte, error) {
	f, err := os.Open(path)
	if err != nil {
		return nil, err
	}
	defer f.Close()
	b, err := io.ReadAll(io.LimitReader(f, limit+1))
	if err != nil {
		return nil, err
	}
	if int64(len(b)) > limit {
		return nil, fmt.Errorf("%s is larger than %s", path, sizeText(int(limit)))
	}
	return b, nil
}

// writeNewFile writes data to a new file (mode 0600) and syncs it.
func writeNewFile(path string, data []byte) error {
	f, err := os.OpenFile(path, os.O_WRONLY|os.O_CREATE|os.O_EXCL, 0o600)
	if err != nil {
		return err
	}
	_, err = f.Write(data)
	if err == nil {
		err = f.Sync()
	}
	if cerr := f.Close(); err == nil {
		err = cerr
	}
	if err != nil {
		os.Remove(path)
	}
	return err
}
