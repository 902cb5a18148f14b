// Copyright 2026 The Petrel Authors
// SPDX-License-Identifier: Apache-2.0

package bench

import (
	"bytes"
	"encoding/json"
	"math"
	"math/rand/v2"
	"slices"
	"testing"
	"time"

	"google.golang.org/protobuf/proto"

	pb "github.com/petrelchat/petrel/proto/petrel/v1"
)

func TestEncodersMatchProto(t *testing.T) {
	payload := newPayload(64)
	putHeader(payload, 7, 123, 3, 1)
	f := &pb.Frame{}
	if err := proto.Unmarshal(appendSend(nil, 9, []byte("s7"), "bob", "dev1", payload), f); err != nil {
		t.Fatal(err)
	}
	want := &pb.Frame{Id: 9, Body: &pb.Frame_Send{Send: &pb.Send{MessageId: "s7", To: "bob", Envelopes: []*pb.DeviceCiphertext{{
		DeviceId: "dev1", Type: pb.EnvelopeType_ENVELOPE_TYPE_MESSAGE, Ciphertext: payload,
	}}}}}
	if !proto.Equal(f, want) {
		t.Errorf("send frame: got %v, want %v", f, want)
	}

	// With one device and no own device, the fan-out encoder writes today's frame byte for byte.
	single := appendSend(nil, 9, []byte("s7"), "bob", "dev1", payload)
	if got := appendFanoutSend(nil, 9, []byte("s7"), "bob", []string{"dev1"}, nil, [][]byte{payload}); !bytes.Equal(got, single) {
		t.Errorf("fan-out send of one device:\n%x\nwant\n%x", got, single)
	}
	// Three receiver devices and two own devices, each with its own ciphertext.
	var cts [][]byte
	for j := range 5 {
		c := slices.Clone(payload)
		putHeader(c, 7, 123, 3, uint32(j))
		cts = append(cts, c)
	}
	f = &pb.Frame{}
	if err := proto.Unmarshal(appendFanoutSend(nil, 1<<40, []byte("sZ"), "carol", []string{"r0", "r1", "r2"}, []string{"o1", "o2"}, cts), f); err != nil {
		t.Fatal(err)
	}
	dc := func(d string, ct []byte) *pb.DeviceCiphertext {
		return &pb.DeviceCiphertext{DeviceId: d, Type: pb.EnvelopeType_ENVELOPE_TYPE_MESSAGE, Ciphertext: ct}
	}
	want = &pb.Frame{Id: 1 << 40, Body: &pb.Frame_Send{Send: &pb.Send{MessageId: "sZ", To: "carol",
		Envelopes:    []*pb.DeviceCiphertext{dc("r0", cts[0]), dc("r1", cts[1]), dc("r2", cts[2])},
		OwnEnvelopes: []*pb.DeviceCiphertext{dc("o1", cts[3]), dc("o2", cts[4])},
	}}}
	if !proto.Equal(f, want) {
		t.Errorf("fan-out send frame: got %v, want %v", f, want)
	}

	tags := []uint64{1, 300, 1 << 63, 5}
	f = &pb.Frame{}
	if err := proto.Unmarshal(appendDeliverAck(nil, tags), f); err != nil {
		t.Fatal(err)
	}
	if got := f.GetDeliverAck().GetTags(); !slices.Equal(got, tags) || f.GetId() != 0 {
		t.Errorf("deliver ack: %v", f)
	}

	f = &pb.Frame{}
	if err := proto.Unmarshal(appendPing(nil, 42, 1700000000000), f); err != nil {
		t.Fatal(err)
	}
	if f.GetId() != 42 || f.GetPing().GetClientTimeMs() != 1700000000000 {
		t.Errorf("ping: %v", f)
	}
}

func TestParsersMatchProto(t *testing.T) {
	payload := newPayload(40)
	putHeader(payload, 1<<40, -5, 77, 9)
	// The server builds Deliver around the stored envelope bytes; proto.Marshal gives the same.
	frame, _ := proto.Marshal(&pb.Frame{Body: &pb.Frame_Deliver{Deliver: &pb.Deliver{Tag: 1<<63 | 12, Envelope: &pb.Envelope{
		MessageId: "m", From: "a", FromDevice: "d", Type: pb.EnvelopeType_ENVELOPE_TYPE_MESSAGE, Ciphertext: payload, ServerTimeMs: 5,
	}}}})
	fv, err := parseFrame(frame)
	if err != nil || fv.kind != kDeliver || fv.id != 0 {
		t.Fatalf("parseFrame: %+v %v", fv, err)
	}
	tag, ct, ok := parseDeliver(fv.body)
	if !ok || tag != 1<<63|12 || string(ct) != string(payload) {
		t.Fatalf("parseDeliver: %d %x %v", tag, ct, ok)
	}
	seq, ts, stream, sender, ok := readHeader(ct)
	if !ok || seq != 1<<40 || ts != -5 || stream != 77 || sender != 9 {
		t.Fatalf("readHeader: %d %d %d %d %v", seq, ts, stream, sender, ok)
	}
	if _, _, _, _, ok := readHeader(ct[:10]); ok {
		t.Error("short payload accepted")
	}

	frame = pb.AppendSendResultFrame(nil, 77, "x")
	fv, err = parseFrame(frame)
	if err != nil || fv.kind != kSendResult || fv.id != 77 {
		t.Fatalf("send result: %+v %v", fv, err)
	}
	frame, _ = proto.Marshal(&pb.Frame{Body: &pb.Frame_QueueEmpty{QueueEmpty: &pb.QueueEmpty{Delivered: 12345}}})
	fv, _ = parseFrame(frame)
	if fv.kind != kQueueEmpty || parseUint32Field(fv.body) != 12345 {
		t.Fatalf("queue empty: %+v", fv)
	}
	frame, _ = proto.Marshal(&pb.Frame{Id: 3, Body: &pb.Frame_Error{Error: &pb.Error{Code: pb.ErrorCode_ERROR_CODE_RATE_LIMITED, RetryAfterMs: 100}}})
	fv, _ = parseFrame(frame)
	if e := parseError(fv.body); fv.kind != kError || e.GetCode() != pb.ErrorCode_ERROR_CODE_RATE_LIMITED || e.GetRetryAfterMs() != 100 {
		t.Fatalf("error: %+v", fv)
	}
	if _, err := parseFrame([]byte{0xff, 0xff, 0xff}); err == nil {
		t.Error("garbage parsed")
	}
}

func TestHistQuantiles(t *testing.T) {
	h := newHist()
	var vals []time.Duration
	r := rand.New(rand.NewPCG(1, 2))
	for range 100000 {
		// Log-uniform from 1µs to 10s.
		v := time.Duration(float64(time.Microsecond) * math.Pow(10, r.Float64()*7))
		vals = append(vals, v)
		h.Record(v)
	}
	slices.Sort(vals)
	for _, q := range []float64{0.5, 0.9, 0.99, 0.999, 1} {
		exact := vals[int(q*float64(len(vals)-1))]
		got := h.Quantile(q)
		if rel := float64(got-exact) / float64(exact); rel < -0.01 || rel > 0.01 {
			t.Errorf("q%v: got %v, exact %v (%.2f%%)", q, got, exact, 100*rel)
		}
	}
	if h.Max() != vals[len(vals)-1] {
		t.Errorf("max %v, want %v", h.Max(), vals[len(vals)-1])
	}
}

// Merging histograms (as the coordinator does with the workers') gives the same percentiles as
// recording everything in one, including through the JSON wire form.
func TestHistMerge(t *testing.T) {
	all, a, b := newHist(), newHist(), newHist()
	r := rand.New(rand.NewPCG(3, 4))
	for i := range 50000 {
		v := time.Duration(r.ExpFloat64() * float64(time.Millisecond))
		if i%10 == 0 {
			v *= 100 // a slow tail in one of the shards only
			b.Record(v)
		} else {
			a.Record(v)
		}
		all.Record(v)
	}
	merged := newHist()
	for _, h := range []*hist{a, b} {
		js, err := json.Marshal(h)
		if err != nil {
			t.Fatal(err)
		}
		back := newHist()
		if err := json.Unmarshal(js, back); err != nil {
			t.Fatal(err)
		}
		merged.Merge(back)
	}
	for _, q := range []float64{0.5, 0.99, 0.999} {
		if merged.Quantile(q) != all.Quantile(q) {
			t.Errorf("q%v: merged %v, all %v", q, merged.Quantile(q), all.Quantile(q))
		}
	}
	if merged.Count() != all.Count() || merged.Max() != all.Max() || merged.Mean() != all.Mean() {
		t.Errorf("merged count/max/mean %d/%v/%v, all %d/%v/%v", merged.Count(), merged.Max(), merged.Mean(), all.Count(), all.Max(), all.Mean())
	}
}

func TestBuckets(t *testing.T) {
	prev := -1
	for v := int64(0); v < 1<<20; v += 1 + v/97 {
		b := bucketOf(v)
		if b < prev {
			t.Fatalf("bucketOf not monotonic at %d", v)
		}
		if bucketHigh(b) < v || (b > 0 && bucketHigh(b-1) >= v) {
			t.Fatalf("value %d not within bucket %d (high %d, previous high %d)", v, b, bucketHigh(b), bucketHigh(b-1))
		}
		prev = b
	}
	if bucketOf(1<<62) != nBuckets-1 {
		t.Error("huge values must land in the last bucket")
	}
}

// A message counts as lost when it was acked and any device that should have it lacks it, once
// however many devices lack it.
func TestRelayLostPerDevice(t *testing.T) {
	p := &relayPair{}
	for range 3 {
		p.sinks = append(p.sinks, &relaySink{p: p})
	}
	for seq := range uint64(130) {
		p.acked.set(seq)
		p.sinks[0].recv.set(seq)
		if seq != 2 && seq != 129 {
			p.sinks[1].recv.set(seq)
		}
		if seq != 2 && seq < 100 {
			p.sinks[2].recv.set(seq) // its bitset is one word shorter
		}
	}
	if got := p.lostLocked(); got != 31 { // 2, and 100..129
		t.Errorf("lost = %d, want 31", got)
	}
	one := &relayPair{}
	one.sinks = []*relaySink{{p: one}}
	one.acked.set(5)
	one.acked.set(6)
	one.sinks[0].recv.set(6)
	if got := one.lostLocked(); got != 1 {
		t.Errorf("one device: lost = %d, want 1", got)
	}
}
