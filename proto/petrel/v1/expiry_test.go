// Copyright 2026 The Petrel Authors
// SPDX-License-Identifier: Apache-2.0

package petrelv1

import (
	"bytes"
	"testing"

	"google.golang.org/protobuf/proto"
)

func TestEnvelopeExpiryMatchesProtobuf(t *testing.T) {
	cases := []*Envelope{
		{MessageId: "m1", From: "alice", FromDevice: "0123456789abcdef0123456789abcdef", Type: EnvelopeType_ENVELOPE_TYPE_MESSAGE,
			Ciphertext: bytes.Repeat([]byte{7}, 300), ServerTimeMs: 1_790_000_000_000, ExpiresAtMs: 1_790_000_360_000},
		{MessageId: "x", Ciphertext: []byte{0}, ExpiresAtMs: 1},
		{MessageId: "y", Ciphertext: bytes.Repeat([]byte{1}, 70_000)},
	}
	for _, e := range cases {
		want, err := proto.MarshalOptions{Deterministic: true}.Marshal(e)
		if err != nil {
			t.Fatal(err)
		}
		got := AppendEnvelope(nil, e.MessageId, e.From, e.FromDevice, e.Type, e.Ciphertext, e.ServerTimeMs)
		got = AppendEnvelopeExpiry(got, e.ExpiresAtMs)
		if !bytes.Equal(got, want) {
			t.Fatalf("%v:\n got %x\nwant %x", e, got, want)
		}
		if exp := EnvelopeExpiry(want); exp != e.ExpiresAtMs {
			t.Fatalf("EnvelopeExpiry = %d, want %d", exp, e.ExpiresAtMs)
		}
		if st := EnvelopeServerTime(want); st != e.ServerTimeMs {
			t.Fatalf("EnvelopeServerTime = %d, want %d", st, e.ServerTimeMs)
		}
	}
	for _, bad := range [][]byte{{0xff}, {0x42, 0x05, 1}, {0x40}} {
		if exp := EnvelopeExpiry(bad); exp != 0 {
			t.Fatalf("EnvelopeExpiry(%x) = %d on malformed bytes", bad, exp)
		}
		if st := EnvelopeServerTime(bad); st != 0 {
			t.Fatalf("EnvelopeServerTime(%x) = %d on malformed bytes", bad, st)
		}
	}
}

func FuzzEnvelopeExpiry(f *testing.F) {
	e, _ := proto.Marshal(&Envelope{MessageId: "m", Ciphertext: []byte{1, 2}, ExpiresAtMs: 99})
	f.Add(e)
	f.Add([]byte{0x40, 0x80})
	f.Fuzz(func(t *testing.T, b []byte) {
		got := EnvelopeExpiry(b)
		var env Envelope
		err := proto.Unmarshal(b, &env)
		if err == nil && got != 0 && got != env.ExpiresAtMs {
			t.Fatalf("EnvelopeExpiry %d, protobuf %d", got, env.ExpiresAtMs)
		}
		if st := EnvelopeServerTime(b); err == nil && st != 0 && st != env.ServerTimeMs {
			t.Fatalf("EnvelopeServerTime %d, protobuf %d", st, env.ServerTimeMs)
		}
	})
}
