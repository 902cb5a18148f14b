// Copyright 2026 The Petrel Authors
// SPDX-License-Identifier: Apache-2.0

package gateway

import (
	"bytes"
	"testing"

	"google.golang.org/protobuf/encoding/protowire"
	"google.golang.org/protobuf/proto"

	pb "github.com/petrelchat/petrel/proto/petrel/v1"
)

// deliverFrame is Frame{deliver: Deliver{tag, envelope}} on its own (Push encodes it straight into
// the pending buffer: enqueueDeliver).
func deliverFrame(tag uint64, envelope []byte) []byte {
	inner := deliverInnerLen(tag, envelope)
	return appendDeliver(nil, tag, envelope, inner)
}

// The hand-built Deliver frame must be exactly what protobuf would encode.
func TestDeliverFrameMatchesProtobuf(t *testing.T) {
	env, _ := proto.Marshal(&pb.Envelope{MessageId: "m1", From: "alice", Ciphertext: bytes.Repeat([]byte{7}, 300)})
	got := deliverFrame(1<<63|5, env)
	f := &pb.Frame{}
	if err := proto.Unmarshal(got, f); err != nil {
		t.Fatal(err)
	}
	if f.GetDeliver().GetTag() != 1<<63|5 || f.GetDeliver().GetEnvelope().GetMessageId() != "m1" || len(f.GetDeliver().GetEnvelope().GetCiphertext()) != 300 {
		t.Fatalf("decoded %v", f)
	}
}

// A Deliver frame encoded straight into the pending buffer (enqueueDeliver) is byte for byte the
// WebSocket frame around deliverFrame's bytes, for every length encoding of the header.
func TestDeliverEncodedInPlace(t *testing.T) {
	for _, n := range []int{0, 50, 120, 300, 70000} {
		env, _ := proto.Marshal(&pb.Envelope{MessageId: "m1", Ciphertext: bytes.Repeat([]byte{9}, n)})
		for _, tag := range []uint64{1, 1<<63 | 5} {
			inner := deliverInnerLen(tag, env)
			size := protowire.SizeTag(fieldDeliver) + protowire.SizeBytes(inner)
			prefix := []byte("pending")
			got := appendDeliver(appendBinaryHeader(prefix, size), tag, env, inner)
			want := appendBinaryFrame([]byte("pending"), deliverFrame(tag, env))
			if !bytes.Equal(got, want) {
				t.Fatalf("envelope %d B, tag %d: in place %d bytes, apart %d bytes, differ", len(env), tag, len(got), len(want))
			}
		}
	}
}

func TestAppendBinaryFrameLengths(t *testing.T) {
	for _, n := range []int{0, 125, 126, 65535, 65536} {
		b := appendBinaryFrame(nil, make([]byte, n))
		hdr := len(b) - n
		want := map[bool]int{true: 2}[n < 126]
		if n >= 126 && n <= 0xffff {
			want = 4
		} else if n > 0xffff {
			want = 10
		}
		if b[0] != 0x82 || hdr != want {
			t.Fatalf("n=%d: first byte %#x, header %d bytes, want %d", n, b[0], hdr, want)
		}
	}
}

// BenchmarkDeliverFrame: building one pushed Deliver frame and its WebSocket framing.
func BenchmarkDeliverFrame(b *testing.B) {
	env, _ := proto.Marshal(&pb.Envelope{MessageId: "AbCdEfGhIjKlMnOpQrStUv", From: "alice", FromDevice: "0123456789abcdef0123456789abcdef", Ciphertext: make([]byte, 300), ServerTimeMs: 1})
	buf := make([]byte, 0, 4096)
	b.ReportAllocs()
	for b.Loop() {
		inner := deliverInnerLen(7, env)
		buf = appendDeliver(appendBinaryHeader(buf[:0], protowire.SizeTag(fieldDeliver)+protowire.SizeBytes(inner)), 7, env, inner)
	}
}
