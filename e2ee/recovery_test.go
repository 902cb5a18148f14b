// Copyright 2026 The Petrel Authors
// SPDX-License-Identifier: Apache-2.0

package e2ee

import (
	"bytes"
	"crypto/ed25519"
	"errors"
	"fmt"
	"strings"
	"testing"
)

func TestRecoveryKeyRoundTrip(t *testing.T) {
	k, err := NewRecoveryKey(nil)
	if err != nil {
		t.Fatal(err)
	}
	text := k.Text()
	if len(text) != RecoveryKeyLen+RecoveryKeyLen/4-1 || strings.Count(text, "-") != RecoveryKeyLen/4-1 {
		t.Fatalf("text %q: want %d characters in groups of 4", text, RecoveryKeyLen)
	}
	// As people type it: lower case, spaces instead of dashes, O for 0 and I for 1.
	typed := strings.NewReplacer("-", " ", "0", "o", "1", "I").Replace(strings.ToLower(text))
	got, err := ParseRecoveryKey(typed)
	if err != nil || got != k {
		t.Fatalf("parse %q: %v (equal %v)", typed, err, got == k)
	}
	if s := fmt.Sprintf("%v %s %#v %x", k, k, k, k); strings.Contains(s, text[:4]+text[5:9]) {
		t.Fatalf("formatted key shows the key: %s", s)
	}
	v := k.Verifier()
	msg := []byte("challenge")
	if !ed25519.Verify(v, msg, ed25519.Sign(k.SigningKey(), msg)) {
		t.Fatal("signature by the derived key does not verify under the verifier")
	}
	k2, _ := NewRecoveryKey(nil)
	if bytes.Equal(k2.Verifier(), v) || ed25519.Verify(k2.Verifier(), msg, ed25519.Sign(k.SigningKey(), msg)) {
		t.Fatal("two keys share a verifier")
	}
}

func TestParseRecoveryKeyRefusals(t *testing.T) {
	k, _ := NewRecoveryKey(nil)
	text := k.Text()
	for name, in := range map[string]string{
		"short":     text[:len(text)-1],
		"long":      text + "A",
		"bad char":  "U" + text[1:],
		"empty":     "",
		"only dash": "----",
	} {
		t.Run(name, func(t *testing.T) {
			_, err := ParseRecoveryKey(in)
			if !errors.Is(err, ErrInvalidRecoveryKey) {
				t.Fatalf("err %v, want ErrInvalidRecoveryKey", err)
			}
			if len(in) > 8 && strings.Contains(err.Error(), in) {
				t.Fatalf("error repeats the key: %v", err)
			}
		})
	}
}
