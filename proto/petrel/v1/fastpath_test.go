// Copyright 2026 The Petrel Authors
// SPDX-License-Identifier: Apache-2.0

package petrelv1

import (
	"bytes"
	"testing"

	"google.golang.org/protobuf/proto"
)

func TestAppendEnvelopeMatchesProtobuf(t *testing.T) {
	cases := []*Envelope{
		{},
		{MessageId: "m1", From: "alice", FromDevice: "0123456789abcdef0123456789abcdef", Type: EnvelopeType_ENVELOPE_TYPE_MESSAGE, Ciphertext: bytes.Repeat([]byte{7}, 300), ServerTimeMs: 1_790_000_000_000},
		{MessageId: "x", Type: EnvelopeType_ENVELOPE_TYPE_PREKEY, Ciphertext: []byte{0}},
		{From: "b", ServerTimeMs: -1},
		{Ciphertext: bytes.Repeat([]byte{1}, 70_000)},
	}
	for _, e := range cases {
		want, err := proto.MarshalOptions{Deterministic: true}.Marshal(e)
		if err != nil {
			t.Fatal(err)
		}
		got := AppendEnvelope(nil, e.MessageId, e.From, e.FromDevice, e.Type, e.Ciphertext, e.ServerTimeMs)
		if !bytes.Equal(got, want) {
			t.Fatalf("%v:\n got %x\nwant %x", e, got, want)
		}
		if n := EnvelopeSize(e.MessageId, e.From, e.FromDevice, e.Type, len(e.Ciphertext), e.ServerTimeMs); n != len(want) {
			t.Fatalf("%v: EnvelopeSize %d, encoding has %d bytes", e, n, len(want))
		}
		if got := AppendEnvelope([]byte{9}, e.MessageId, e.From, e.FromDevice, e.Type, e.Ciphertext, e.ServerTimeMs); !bytes.Equal(got[1:], want) || got[0] != 9 {
			t.Fatalf("%v: appending to a prefix broke it", e)
		}
	}
}

func TestAppendSendResultFrameMatchesProtobuf(t *testing.T) {
	cases := []struct {
		id    uint64
		msgID string
	}{
		{0, ""},
		{1, "m1"},
		{1 << 40, "a-64-character-id-aaaaaaaaaaaaaaaaaaaaaaaaaaaaaaaaaaaaaaaaaaaaaa"},
		{7, ""},
	}
	for _, c := range cases {
		f := &Frame{Id: c.id, Body: &Frame_SendResult{SendResult: &SendResult{MessageId: c.msgID}}}
		want, err := proto.MarshalOptions{Deterministic: true}.Marshal(f)
		if err != nil {
			t.Fatal(err)
		}
		if got := AppendSendResultFrame(nil, c.id, c.msgID); !bytes.Equal(got, want) {
			t.Fatalf("%+v:\n got %x\nwant %x", c, got, want)
		}
		if got := AppendSendResultFrame([]byte{9}, c.id, c.msgID); !bytes.Equal(got[1:], want) || got[0] != 9 {
			t.Fatalf("%+v: appending to a prefix broke it", c)
		}
	}
}

func BenchmarkAppendEnvelope(b *testing.B) {
	ct := bytes.Repeat([]byte{7}, 300)
	b.ReportAllocs()
	for b.Loop() {
		_ = AppendEnvelope(nil, "JTuuTbrhlQembaSSU0kZqQ", "alice", "0123456789abcdef0123456789abcdef", EnvelopeType_ENVELOPE_TYPE_MESSAGE, ct, 1_790_000_000_000)
	}
}

func BenchmarkMarshalEnvelope(b *testing.B) {
	ct := bytes.Repeat([]byte{7}, 300)
	b.ReportAllocs()
	for b.Loop() {
		_, _ = proto.Marshal(&Envelope{MessageId: "JTuuTbrhlQembaSSU0kZqQ", From: "alice", FromDevice: "0123456789abcdef0123456789abcdef", Type: EnvelopeType_ENVELOPE_TYPE_MESSAGE, Ciphertext: ct, ServerTimeMs: 1_790_000_000_000})
	}
}
