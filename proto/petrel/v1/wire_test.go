// Copyright 2026 The Petrel Authors
// SPDX-License-Identifier: Apache-2.0

package petrelv1

import (
	"bytes"
	"crypto/ed25519"
	"errors"
	"testing"

	"google.golang.org/protobuf/proto"
)

func seedFrames() []*Frame {
	return []*Frame{
		{Body: &Frame_Challenge{Challenge: &Challenge{Nonce: bytes.Repeat([]byte{1}, NonceSize), ServerTimeMs: 1}}},
		{Id: 1, Body: &Frame_Auth{Auth: &Auth{DeviceId: "0123456789abcdef0123456789abcdef", Signature: make([]byte, 64)}}},
		{Id: 2, Body: &Frame_Send{Send: &Send{MessageId: "m1", To: "bob", Envelopes: []*DeviceCiphertext{{DeviceId: "d", Type: EnvelopeType_ENVELOPE_TYPE_MESSAGE, Ciphertext: []byte("ct")}}}}},
		{Body: &Frame_DeliverAck{DeliverAck: &DeliverAck{Tags: []uint64{1, 2, 1 << 63}}}},
		{Body: &Frame_Deliver{Deliver: &Deliver{Tag: 5, Envelope: &Envelope{MessageId: "m", From: "a", Ciphertext: []byte{1}}}}},
		{Id: 3, Body: &Frame_Error{Error: &Error{Code: ErrorCode_ERROR_CODE_STALE_DEVICES, Devices: []string{"x"}}}},
	}
}

// FuzzDecodeFrame: no input panics the decoder, oversized input is refused before parsing, and
// whatever decodes re-encodes to something that decodes to the same frame.
func FuzzDecodeFrame(f *testing.F) {
	for _, fr := range seedFrames() {
		b, _ := proto.Marshal(fr)
		f.Add(b)
	}
	f.Add([]byte{0xff, 0xff, 0xff})
	f.Add([]byte{})
	f.Fuzz(func(t *testing.T, b []byte) {
		fr, err := DecodeFrame(b, 4096)
		if len(b) > 4096 {
			if !errors.Is(err, ErrFrameTooLarge) {
				t.Fatalf("oversized frame: err %v", err)
			}
			return
		}
		if err != nil {
			if !errors.Is(err, ErrMalformedFrame) {
				t.Fatalf("unexpected error class: %v", err)
			}
			return
		}
		again, err := EncodeFrame(fr)
		if err != nil {
			t.Fatalf("re-encode: %v", err)
		}
		fr2, err := DecodeFrame(again, 1<<20)
		if err != nil || !proto.Equal(fr, fr2) {
			t.Fatalf("round trip changed the frame: %v", err)
		}
	})
}

func TestDecodeFrameLimits(t *testing.T) {
	if _, err := DecodeFrame(make([]byte, DefaultMaxFrameBytes+1), 0); !errors.Is(err, ErrFrameTooLarge) {
		t.Fatalf("want ErrFrameTooLarge, got %v", err)
	}
	if _, err := DecodeFrame([]byte{0x0a}, 0); !errors.Is(err, ErrMalformedFrame) {
		t.Fatalf("want ErrMalformedFrame, got %v", err)
	}
	for _, fr := range seedFrames() {
		b, _ := proto.Marshal(fr)
		got, err := DecodeFrame(b, 0)
		if err != nil || !proto.Equal(got, fr) {
			t.Fatalf("decode %v: %v", fr, err)
		}
	}
}

func TestNamesAndIDs(t *testing.T) {
	for name, want := range map[string]bool{
		"alice": true, "a": true, "a.b-c_d": true, "0day": true,
		"": false, "Alice": false, "-lead": false, "with space": false, "ünï": false,
		"abcdefghijabcdefghijabcdefghij12": true, "abcdefghijabcdefghijabcdefghij123": false,
	} {
		if ValidName(name) != want {
			t.Errorf("ValidName(%q) = %v, want %v", name, !want, want)
		}
	}
	for id, want := range map[string]bool{"m1": true, "A-z_09": true, "": false, "a b": false, "é": false} {
		if ValidMessageID(id) != want {
			t.Errorf("ValidMessageID(%q) = %v, want %v", id, !want, want)
		}
	}
	pub, _, _ := ed25519.GenerateKey(nil)
	if id := DeviceID(pub); !ValidDeviceID(id) {
		t.Fatalf("DeviceID %q is not a valid device id", id)
	}
	if ValidDeviceID("0123456789ABCDEF0123456789abcdef") {
		t.Fatal("upper-case hex must be refused")
	}
	if got := ErrorCodeName(ErrorCode_ERROR_CODE_UNKNOWN_USER); got != "unknown_user" {
		t.Fatalf("ErrorCodeName = %q", got)
	}
}

func TestAuthPayloadBindsNonceAndDevice(t *testing.T) {
	a := AuthPayload([]byte("n1"), "d1")
	if bytes.Equal(a, AuthPayload([]byte("n2"), "d1")) || bytes.Equal(a, AuthPayload([]byte("n1"), "d2")) {
		t.Fatal("payload must change with nonce and device")
	}
	if !bytes.HasPrefix(a, []byte("petrel-auth-v1\x00")) {
		t.Fatalf("payload lacks its context label: %q", a)
	}
}

func benchSendFrame() []byte {
	b, _ := proto.Marshal(&Frame{Id: 42, Body: &Frame_Send{Send: &Send{
		MessageId: "AbCdEfGhIjKlMnOpQrStUv", To: "bob",
		Envelopes: []*DeviceCiphertext{{DeviceId: "0123456789abcdef0123456789abcdef", Type: EnvelopeType_ENVELOPE_TYPE_MESSAGE, Ciphertext: make([]byte, 300)}},
	}}})
	return b
}

// BenchmarkDecodeFrame: one 300-byte Send, the most common client frame.
func BenchmarkDecodeFrame(b *testing.B) {
	raw := benchSendFrame()
	b.ReportAllocs()
	b.SetBytes(int64(len(raw)))
	for b.Loop() {
		if _, err := DecodeFrame(raw, 0); err != nil {
			b.Fatal(err)
		}
	}
}

// BenchmarkEncodeFrame: a SendResult, the most common server answer.
func BenchmarkEncodeFrame(b *testing.B) {
	f := &Frame{Id: 42, Body: &Frame_SendResult{SendResult: &SendResult{MessageId: "AbCdEfGhIjKlMnOpQrStUv"}}}
	b.ReportAllocs()
	for b.Loop() {
		if _, err := EncodeFrame(f); err != nil {
			b.Fatal(err)
		}
	}
}
