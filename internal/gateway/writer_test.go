// Copyright 2026 The Petrel Authors
// SPDX-License-Identifier: Apache-2.0

package gateway

import (
	"bytes"
	"testing"

	"google.golang.org/protobuf/proto"

	pb "github.com/petrelchat/petrel/proto/petrel/v1"
)

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
		buf = appendBinaryFrame(buf[:0], deliverFrame(7, env))
	}
}
