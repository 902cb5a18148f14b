// Copyright 2026 The Petrel Authors
// SPDX-License-Identifier: Apache-2.0

package e2ee

import (
	"crypto/ed25519"
	"crypto/hkdf"
	"crypto/sha256"
	"errors"
	"fmt"
	"io"
)

// Account recovery (docs/protocol.md, "Account recovery"). A recovery key is 240 random bits
// the user writes down at registration. The server never sees it: it stores the recovery
// verifier, an Ed25519 public key derived from it, and a device that re-claims the account signs
// the server's challenge with the derived private key:
//
//	seed     = HKDF-SHA-256(salt = none, ikm = key, info = "petrel-recovery-v1", L = 32)
//	verifier = Ed25519 public key of seed

const (
	// RecoveryKeySize is a recovery key's length in bytes (240 bits).
	RecoveryKeySize = 30
	// RecoveryKeyLen is the length of a recovery key's text without dashes: 48 Crockford base32
	// characters (shown in 12 groups of 4).
	RecoveryKeyLen = RecoveryKeySize * 8 / 5

	labelRecovery = "petrel-recovery-v1"
)

// ErrInvalidRecoveryKey reports a recovery key text that does not parse: wrong length or a
// character outside Crockford base32. The wrapped message says which; it never repeats the key.
var ErrInvalidRecoveryKey = errors.New("e2ee: invalid recovery key")

// RecoveryKey is an account's recovery key. It prints redacted with every fmt verb; Text is the
// only way to show it.
type RecoveryKey [RecoveryKeySize]byte

// String returns a redacted description.
func (RecoveryKey) String() string { return "e2ee.RecoveryKey{" + redactedText + "}" }

// GoString returns the same redacted description as String.
func (k RecoveryKey) GoString() string { return k.String() }

// Format writes the redacted description for every verb.
func (k RecoveryKey) Format(f fmt.State, _ rune) { formatRedacted(f, k.String()) }

// NewRecoveryKey reads a fresh recovery key from rand (nil means crypto/rand.Reader).
func NewRecoveryKey(rand io.Reader) (RecoveryKey, error) {
	var k RecoveryKey
	b, err := readRand(rand, RecoveryKeySize)
	if err != nil {
		return k, err
	}
	copy(k[:], b)
	clear(b)
	return k, nil
}

// Text returns the key as people write it down: 48 upper-case Crockford base32 characters in
// groups of 4 joined by '-'.
func (k RecoveryKey) Text() string {
	raw := crockfordEncode(make([]byte, 0, RecoveryKeyLen), k[:])
	out := make([]byte, 0, len(raw)+len(raw)/4)
	for i, c := range raw {
		if i > 0 && i%4 == 0 {
			out = append(out, '-')
		}
		out = append(out, c)
	}
	clear(raw)
	return string(out)
}

// ParseRecoveryKey reads a recovery key as a person may type it: case-insensitive, spaces, tabs,
// line breaks and dashes ignored, I and L read as 1, O as 0.
func ParseRecoveryKey(s string) (RecoveryKey, error) {
	var k RecoveryKey
	var acc uint64
	bits, n, j := 0, 0, 0
	for i := 0; i < len(s); i++ {
		c := s[i]
		switch c {
		case ' ', '\t', '\r', '\n', '-':
			continue
		}
		v := crockfordValue[c]
		if v < 0 {
			return RecoveryKey{}, fmt.Errorf("%w: character %d is not a key character (keys use 0-9 and A-Z without U)", ErrInvalidRecoveryKey, n+1)
		}
		if n == RecoveryKeyLen {
			return RecoveryKey{}, fmt.Errorf("%w: more than %d characters", ErrInvalidRecoveryKey, RecoveryKeyLen)
		}
		n++
		acc = acc<<5 | uint64(v)
		bits += 5
		for bits >= 8 {
			bits -= 8
			k[j] = byte(acc >> bits)
			j++
		}
	}
	if n != RecoveryKeyLen {
		return RecoveryKey{}, fmt.Errorf("%w: %d characters, want %d", ErrInvalidRecoveryKey, n, RecoveryKeyLen)
	}
	return k, nil
}

// SigningKey derives the Ed25519 private key that proves possession of the recovery key.
func (k RecoveryKey) SigningKey() ed25519.PrivateKey {
	seed, err := hkdf.Key(sha256.New, k[:], nil, labelRecovery, ed25519.SeedSize)
	if err != nil {
		panic("e2ee: hkdf: " + err.Error()) // unreachable: fixed sizes
	}
	priv := ed25519.NewKeyFromSeed(seed)
	clear(seed)
	return priv
}

// Verifier returns the recovery verifier the server stores: SigningKey's public half.
func (k RecoveryKey) Verifier() []byte {
	return []byte(k.SigningKey().Public().(ed25519.PublicKey))
}
