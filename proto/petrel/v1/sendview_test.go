// Copyright 2026 The Petrel Authors
// SPDX-License-Identifier: Apache-2.0

package petrelv1

import (
	"bytes"
	"testing"

	"google.golang.org/protobuf/encoding/protowire"
	"google.golang.org/protobuf/proto"
)

// sameAsDecode checks that when ParseSendFrame accepts b, DecodeFrame accepts it too and finds the
// same Send.
func sameAsDecode(t *testing.T, b []byte) bool {
	var v SendView
	if !ParseSendFrame(b, &v) {
		return false
	}
	f, err := DecodeFrame(b, len(b)+1)
	if err != nil {
		t.Fatalf("ParseSendFrame accepted what DecodeFrame refuses (%v): %x", err, b)
	}
	s := f.GetSend()
	if s == nil || f.GetId() != v.ID || s.GetMessageId() != string(v.MessageID) || s.GetTo() != string(v.To) ||
		len(s.GetEnvelopes()) != len(v.Envelopes) || len(s.GetOwnEnvelopes()) != len(v.OwnEnvelopes) {
		t.Fatalf("ParseSendFrame disagrees with DecodeFrame on %x: %+v vs %v", b, v, f)
	}
	same := func(kind string, want []*DeviceCiphertext, got []CiphertextView) {
		for i, e := range want {
			c := got[i]
			if e.GetDeviceId() != string(c.DeviceID) || e.GetType() != c.Type || !bytes.Equal(e.GetCiphertext(), c.Ciphertext) {
				t.Fatalf("%s %d differs: %v vs %+v", kind, i, e, c)
			}
		}
	}
	same("envelope", s.GetEnvelopes(), v.Envelopes)
	same("own envelope", s.GetOwnEnvelopes(), v.OwnEnvelopes)
	return true
}

func TestParseSendFrame(t *testing.T) {
	send := func(f *Frame) []byte {
		b, err := proto.Marshal(f)
		if err != nil {
			t.Fatal(err)
		}
		return b
	}
	ok := []*Frame{
		{Id: 7, Body: &Frame_Send{Send: &Send{MessageId: "m1", To: "bob", Envelopes: []*DeviceCiphertext{
			{DeviceId: "0123456789abcdef0123456789abcdef", Type: EnvelopeType_ENVELOPE_TYPE_MESSAGE, Ciphertext: bytes.Repeat([]byte{1}, 300)},
			{DeviceId: "fedcba9876543210fedcba9876543210", Type: EnvelopeType_ENVELOPE_TYPE_PREKEY, Ciphertext: []byte{2}},
		}}}},
		{Body: &Frame_Send{Send: &Send{}}},
		{Id: 1 << 60, Body: &Frame_Send{Send: &Send{To: "x", Envelopes: []*DeviceCiphertext{{}}}}},
		{Id: 9, Body: &Frame_Send{Send: &Send{MessageId: "m2", To: "bob", Envelopes: []*DeviceCiphertext{
			{DeviceId: "0123456789abcdef0123456789abcdef", Type: EnvelopeType_ENVELOPE_TYPE_MESSAGE, Ciphertext: []byte{3}},
		}, OwnEnvelopes: []*DeviceCiphertext{
			{DeviceId: "aaaaaaaaaaaaaaaaaaaaaaaaaaaaaaaa", Type: EnvelopeType_ENVELOPE_TYPE_PREKEY, Ciphertext: []byte{4, 5}},
			{DeviceId: "bbbbbbbbbbbbbbbbbbbbbbbbbbbbbbbb", Type: EnvelopeType_ENVELOPE_TYPE_MESSAGE, Ciphertext: []byte{6}},
		}}}},
		{Id: 10, Body: &Frame_Send{Send: &Send{To: "amy", OwnEnvelopes: []*DeviceCiphertext{{DeviceId: "x"}}}}},
	}
	for _, f := range ok {
		if !sameAsDecode(t, send(f)) {
			t.Fatalf("refused a plain Send: %v", f)
		}
	}
	notSend := [][]byte{
		send(&Frame{Id: 1, Body: &Frame_Ping{Ping: &Ping{}}}),
		send(&Frame{Id: 1}),
		{},
		{0xff},
		append(send(ok[0]), 0x08, 0x01),     // id twice
		append(send(ok[0]), send(ok[1])...), // two bodies
	}
	for _, b := range notSend {
		var v SendView
		if ParseSendFrame(b, &v) {
			t.Fatalf("accepted %x", b)
		}
	}
	// Envelopes and own envelopes interleaved on the wire (legal protobuf): each list keeps its
	// own order.
	mixed := []byte{0x08, 0x05, 0xd2, 0x02} // id 5; field 42 (Send), length below
	var body []byte
	for i, num := range []byte{3, 4, 3, 4} {
		ct := []byte{0x0a, 0x01, 'a' + byte(i)} // DeviceCiphertext{device_id: "a"+i}
		body = append(body, num<<3|2, byte(len(ct)))
		body = append(body, ct...)
	}
	mixed = append(append(mixed, byte(len(body))), body...)
	if !sameAsDecode(t, mixed) {
		t.Fatal("refused interleaved envelopes")
	}
	// With backing arrays, parsing allocates nothing (the server's hot path).
	var env, own [4]CiphertextView
	v := SendView{Envelopes: env[:0], OwnEnvelopes: own[:0]}
	frame := send(ok[3])
	if allocs := testing.AllocsPerRun(100, func() {
		if !ParseSendFrame(frame, &v) {
			t.Fatal("refused")
		}
	}); allocs != 0 {
		t.Fatalf("ParseSendFrame allocates %v times", allocs)
	}
	if len(v.Envelopes) != 1 || len(v.OwnEnvelopes) != 2 {
		t.Fatalf("parsed %d envelopes and %d own envelopes", len(v.Envelopes), len(v.OwnEnvelopes))
	}
	// Invalid UTF-8 in a string field: protobuf refuses it, so must we.
	bad := send(&Frame{Id: 3, Body: &Frame_Send{Send: &Send{To: "bob"}}})
	bad[len(bad)-1] = 0xff
	if sameAsDecode(t, bad) {
		t.Fatal("accepted invalid UTF-8")
	}
}

func FuzzParseSendFrame(f *testing.F) {
	seed, _ := proto.Marshal(&Frame{Id: 7, Body: &Frame_Send{Send: &Send{MessageId: "m1", To: "bob", Envelopes: []*DeviceCiphertext{
		{DeviceId: "0123456789abcdef0123456789abcdef", Type: EnvelopeType_ENVELOPE_TYPE_MESSAGE, Ciphertext: []byte("ct")},
	}}}})
	f.Add(seed)
	own, _ := proto.Marshal(&Frame{Id: 8, Body: &Frame_Send{Send: &Send{MessageId: "m2", To: "amy", OwnEnvelopes: []*DeviceCiphertext{
		{DeviceId: "fedcba9876543210fedcba9876543210", Type: EnvelopeType_ENVELOPE_TYPE_PREKEY, Ciphertext: []byte("own")},
	}}}})
	f.Add(own)
	f.Add([]byte{})
	f.Fuzz(func(t *testing.T, b []byte) {
		sameAsDecode(t, b)
	})
}

func BenchmarkParseSendFrame(b *testing.B) {
	frame, _ := proto.Marshal(&Frame{Id: 7, Body: &Frame_Send{Send: &Send{MessageId: "JTuuTbrhlQembaSSU0kZqQ", To: "bob", Envelopes: []*DeviceCiphertext{
		{DeviceId: "0123456789abcdef0123456789abcdef", Type: EnvelopeType_ENVELOPE_TYPE_MESSAGE, Ciphertext: bytes.Repeat([]byte{1}, 300)},
	}}}})
	var backing [4]CiphertextView
	v := SendView{Envelopes: backing[:0]}
	b.ReportAllocs()
	for b.Loop() {
		if !ParseSendFrame(frame, &v) {
			b.Fatal("refused")
		}
	}
}

// ParseDeliverAckFrame accepts exactly what DecodeFrame reads as a DeliverAck with no request id,
// with the same tags; what it refuses DecodeFrame still decides.
func ackSameAsDecode(t *testing.T, b []byte) bool {
	t.Helper()
	tags, ok := ParseDeliverAckFrame(b, nil)
	if !ok {
		return false
	}
	f, err := DecodeFrame(b, 1<<20)
	if err != nil {
		t.Fatalf("accepted %x, which DecodeFrame refuses: %v", b, err)
	}
	want := f.GetDeliverAck().GetTags()
	if f.GetId() != 0 || f.GetDeliverAck() == nil || len(tags) != len(want) {
		t.Fatalf("accepted %x as tags %v; DecodeFrame: %v", b, tags, f)
	}
	for i := range want {
		if tags[i] != want[i] {
			t.Fatalf("accepted %x as tags %v; DecodeFrame: %v", b, tags, want)
		}
	}
	return true
}

func TestParseDeliverAckFrame(t *testing.T) {
	packed, _ := proto.Marshal(&Frame{Body: &Frame_DeliverAck{DeliverAck: &DeliverAck{Tags: []uint64{1, 1 << 63, 300}}}})
	if !ackSameAsDecode(t, packed) {
		t.Fatal("refused a packed DeliverAck")
	}
	empty, _ := proto.Marshal(&Frame{Body: &Frame_DeliverAck{DeliverAck: &DeliverAck{}}})
	if !ackSameAsDecode(t, empty) {
		t.Fatal("refused an empty DeliverAck")
	}
	// Unpacked tags (field 1 as varints) are valid protobuf too.
	var inner []byte
	for _, x := range []uint64{5, 6} {
		inner = protowire.AppendTag(inner, 1, protowire.VarintType)
		inner = protowire.AppendVarint(inner, x)
	}
	unpacked := protowire.AppendBytes(protowire.AppendTag(nil, 43, protowire.BytesType), inner)
	if !ackSameAsDecode(t, unpacked) {
		t.Fatal("refused unpacked tags")
	}
	withID, _ := proto.Marshal(&Frame{Id: 9, Body: &Frame_DeliverAck{DeliverAck: &DeliverAck{Tags: []uint64{1}}}})
	twice := append(append([]byte(nil), packed...), packed...)
	send, _ := proto.Marshal(&Frame{Id: 1, Body: &Frame_Send{Send: &Send{To: "bob"}}})
	for _, b := range [][]byte{withID, twice, send, packed[:len(packed)-1], {}} {
		if ackSameAsDecode(t, b) {
			t.Fatalf("accepted %x", b)
		}
	}
}

func FuzzParseDeliverAckFrame(f *testing.F) {
	seed, _ := proto.Marshal(&Frame{Body: &Frame_DeliverAck{DeliverAck: &DeliverAck{Tags: []uint64{1, 2, 1 << 63}}}})
	f.Add(seed)
	f.Add([]byte{})
	f.Fuzz(func(t *testing.T, b []byte) {
		ackSameAsDecode(t, b)
	})
}

func BenchmarkParseDeliverAckFrame(b *testing.B) {
	frame, _ := proto.Marshal(&Frame{Body: &Frame_DeliverAck{DeliverAck: &DeliverAck{Tags: []uint64{1 << 62, 1<<62 + 1}}}})
	var backing [64]uint64
	b.ReportAllocs()
	for b.Loop() {
		if _, ok := ParseDeliverAckFrame(frame, backing[:0]); !ok {
			b.Fatal("refused")
		}
	}
}
