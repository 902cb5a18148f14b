// Copyright 2026 The Petrel Authors
// SPDX-License-Identifier: Apache-2.0

package messaging_test

import (
	"bytes"
	"context"
	"encoding/json"
	"errors"
	"fmt"
	"io"
	"log/slog"
	"strings"
	"testing"
	"time"

	"google.golang.org/protobuf/proto"

	"github.com/petrelchat/petrel/internal/bus"
	"github.com/petrelchat/petrel/internal/directory"
	"github.com/petrelchat/petrel/internal/mailbox"
	"github.com/petrelchat/petrel/internal/messaging"
	pb "github.com/petrelchat/petrel/proto/petrel/v1"
)

// dev is a device id for tests: 32 hex digits made of c.
func dev(c byte) string { return strings.Repeat(string(c), 32) }

// fixture is a real directory on an embedded bus, with accounts stored as the directory stores
// them: amy (devices 1, 2, 3: a phone and two linked devices) and bob (devices a, b).
func fixture(t testing.TB) *messaging.Service {
	t.Helper()
	quiet := slog.New(slog.NewTextHandler(io.Discard, nil))
	b, err := bus.Open(context.Background(), bus.Config{DataDir: t.TempDir(), InboxShards: 1, Logger: quiet})
	if err != nil {
		t.Fatal(err)
	}
	t.Cleanup(b.Close)
	d := directory.New(b, directory.Config{Logger: quiet})
	ctx, cancel := context.WithCancel(context.Background())
	t.Cleanup(func() { cancel(); d.Wait() })
	if err := d.Start(ctx); err != nil {
		t.Fatal(err)
	}
	for _, a := range []directory.Account{
		{Name: "amy", Devices: []string{dev('1'), dev('2'), dev('3')}, Created: time.Now().UTC()},
		{Name: "bob", Devices: []string{dev('a'), dev('b')}, Created: time.Now().UTC()},
		{Name: "cat", Devices: []string{dev('c')}, Created: time.Now().UTC()},
	} {
		rec, _ := json.Marshal(a)
		if _, err := b.Accounts.Put(ctx, a.Name, rec); err != nil {
			t.Fatal(err)
		}
	}
	return messaging.New(d)
}

var (
	amy = directory.Principal{ID: dev('1'), Name: "amy"}
	cat = directory.Principal{ID: dev('c'), Name: "cat"}
)

func envs(ids ...string) []pb.CiphertextView {
	out := make([]pb.CiphertextView, len(ids))
	for i, id := range ids {
		out[i] = pb.CiphertextView{DeviceID: []byte(id), Type: pb.EnvelopeType_ENVELOPE_TYPE_MESSAGE, Ciphertext: []byte("ct-" + id)}
	}
	return out
}

func codeOf(err error) pb.ErrorCode {
	var e *messaging.Error
	if errors.As(err, &e) {
		return e.Code
	}
	return -1
}

func TestResolve(t *testing.T) {
	s := fixture(t)
	ctx := context.Background()
	const now = 1_790_000_000_000
	cases := []struct {
		name      string
		from      directory.Principal
		to        string
		envs, own []pb.CiphertextView
		want      []string     // target devices, in order
		code      pb.ErrorCode // when refused
	}{
		{name: "1:1, single-device sender", from: cat, to: "bob", envs: envs(dev('a'), dev('b')), want: []string{dev('a'), dev('b')}},
		{name: "with own envelopes", from: amy, to: "bob", envs: envs(dev('b'), dev('a')), own: envs(dev('3'), dev('2')),
			want: []string{dev('b'), dev('a'), dev('3'), dev('2')}},
		{name: "own list missing", from: amy, to: "bob", envs: envs(dev('a'), dev('b')), code: pb.ErrorCode_ERROR_CODE_STALE_DEVICES},
		{name: "own list short", from: amy, to: "bob", envs: envs(dev('a'), dev('b')), own: envs(dev('2')), code: pb.ErrorCode_ERROR_CODE_STALE_DEVICES},
		{name: "own list names a stranger", from: amy, to: "bob", envs: envs(dev('a'), dev('b')), own: envs(dev('2'), dev('c')), code: pb.ErrorCode_ERROR_CODE_UNKNOWN_DEVICE},
		{name: "own list names the sender", from: amy, to: "bob", envs: envs(dev('a'), dev('b')), own: envs(dev('1'), dev('2'), dev('3')), code: pb.ErrorCode_ERROR_CODE_INVALID_REQUEST},
		{name: "own list for a single-device account", from: cat, to: "bob", envs: envs(dev('a'), dev('b')), own: envs(dev('1')), code: pb.ErrorCode_ERROR_CODE_UNKNOWN_DEVICE},
		{name: "recipient list stale", from: cat, to: "bob", envs: envs(dev('a')), code: pb.ErrorCode_ERROR_CODE_STALE_DEVICES},
		{name: "recipient list empty", from: cat, to: "bob", code: pb.ErrorCode_ERROR_CODE_STALE_DEVICES},
		{name: "recipient device unknown", from: cat, to: "bob", envs: envs(dev('a'), dev('2')), code: pb.ErrorCode_ERROR_CODE_UNKNOWN_DEVICE},
		{name: "device to device", from: amy, to: "amy", envs: envs(dev('3')), want: []string{dev('3')}},
		{name: "device to device, two", from: amy, to: "amy", envs: envs(dev('2'), dev('3')), want: []string{dev('2'), dev('3')}},
		{name: "device to device, to itself", from: amy, to: "amy", envs: envs(dev('1')), code: pb.ErrorCode_ERROR_CODE_INVALID_REQUEST},
		{name: "device to device, a stranger", from: amy, to: "amy", envs: envs(dev('a')), code: pb.ErrorCode_ERROR_CODE_UNKNOWN_DEVICE},
		{name: "device to device, twice", from: amy, to: "amy", envs: envs(dev('2'), dev('2')), code: pb.ErrorCode_ERROR_CODE_INVALID_REQUEST},
		{name: "device to device, none", from: amy, to: "amy", code: pb.ErrorCode_ERROR_CODE_INVALID_REQUEST},
		{name: "device to device with own envelopes", from: amy, to: "amy", envs: envs(dev('2')), own: envs(dev('3')), code: pb.ErrorCode_ERROR_CODE_INVALID_REQUEST},
		{name: "device to device, single-device account", from: cat, to: "cat", envs: envs(dev('c')), code: pb.ErrorCode_ERROR_CODE_INVALID_REQUEST},
	}
	for _, c := range cases {
		t.Run(c.name, func(t *testing.T) {
			v := &pb.SendView{ID: 1, MessageID: []byte("m-1"), To: []byte(c.to), Envelopes: c.envs, OwnEnvelopes: c.own}
			var m messaging.Message
			err := s.Resolve(ctx, c.from, v, now, &m)
			if c.code != 0 {
				if got := codeOf(err); got != c.code {
					t.Fatalf("got %v (%v), want %v", got, err, c.code)
				}
				return
			}
			if err != nil {
				t.Fatal(err)
			}
			if m.ID != "m-1" || len(m.Targets) != len(c.want) {
				t.Fatalf("message %q with %d targets, want %d", m.ID, len(m.Targets), len(c.want))
			}
			for i, tg := range m.Targets {
				if tg.DeviceID != c.want[i] {
					t.Fatalf("target %d is %s, want %s", i, tg.DeviceID, c.want[i])
				}
				if want := mailbox.DedupeID(c.from.ID, "m-1", tg.DeviceID); tg.DedupeID != want {
					t.Fatalf("target %d dedupe id %q, want %q", i, tg.DedupeID, want)
				}
				// Each envelope is what protobuf encodes for it, from the sender account and device.
				want, _ := proto.MarshalOptions{Deterministic: true}.Marshal(&pb.Envelope{
					MessageId: "m-1", From: c.from.Name, FromDevice: c.from.ID, Type: pb.EnvelopeType_ENVELOPE_TYPE_MESSAGE,
					Ciphertext: []byte("ct-" + tg.DeviceID), ServerTimeMs: now,
				})
				if !bytes.Equal(tg.Envelope, want) {
					t.Fatalf("target %d envelope %x, want %x", i, tg.Envelope, want)
				}
				if cap(tg.Envelope) != len(tg.Envelope) {
					t.Fatalf("target %d envelope can be appended to (cap %d, len %d)", i, cap(tg.Envelope), len(tg.Envelope))
				}
			}
		})
	}
}

func TestResolveErrors(t *testing.T) {
	s := fixture(t)
	ctx := context.Background()
	var m messaging.Message
	v := &pb.SendView{ID: 1, MessageID: []byte("m"), To: []byte("nobody"), Envelopes: envs(dev('a'))}
	if err := s.Resolve(ctx, cat, v, 1, &m); !errors.Is(err, directory.ErrUnknownUser) {
		t.Fatalf("unknown recipient: %v", err)
	}
	for _, id := range []string{"", "has space", "dots.are.separators", strings.Repeat("x", 65)} {
		v := &pb.SendView{ID: 1, MessageID: []byte(id), To: []byte("bob"), Envelopes: envs(dev('a'), dev('b'))}
		if err := s.Resolve(ctx, cat, v, 1, &m); codeOf(err) != pb.ErrorCode_ERROR_CODE_INVALID_REQUEST {
			t.Fatalf("message id %q: %v", id, err)
		}
	}
	bad := envs(dev('a'), dev('b'))
	bad[1].Type = 0
	v = &pb.SendView{ID: 1, MessageID: []byte("m"), To: []byte("bob"), Envelopes: bad}
	if err := s.Resolve(ctx, cat, v, 1, &m); codeOf(err) != pb.ErrorCode_ERROR_CODE_INVALID_REQUEST {
		t.Fatalf("envelope without a type: %v", err)
	}
	own := envs(dev('2'), dev('3'))
	own[0].Ciphertext = nil
	v = &pb.SendView{ID: 1, MessageID: []byte("m"), To: []byte("bob"), Envelopes: envs(dev('a'), dev('b')), OwnEnvelopes: own}
	if err := s.Resolve(ctx, amy, v, 1, &m); codeOf(err) != pb.ErrorCode_ERROR_CODE_INVALID_REQUEST {
		t.Fatalf("own envelope without ciphertext: %v", err)
	}
}

// Targets that carry identical bytes share them.
func TestResolveSharesIdenticalEnvelopes(t *testing.T) {
	s := fixture(t)
	same := []byte("one ciphertext for every device")
	v := &pb.SendView{ID: 1, MessageID: []byte("m"), To: []byte("bob"),
		Envelopes:    []pb.CiphertextView{{DeviceID: []byte(dev('a')), Type: 2, Ciphertext: same}, {DeviceID: []byte(dev('b')), Type: 2, Ciphertext: same}},
		OwnEnvelopes: []pb.CiphertextView{{DeviceID: []byte(dev('2')), Type: 2, Ciphertext: same}, {DeviceID: []byte(dev('3')), Type: 1, Ciphertext: same}},
	}
	var m messaging.Message
	if err := s.Resolve(context.Background(), amy, v, 1, &m); err != nil {
		t.Fatal(err)
	}
	first := &m.Targets[0].Envelope[0]
	if &m.Targets[1].Envelope[0] != first || &m.Targets[2].Envelope[0] != first {
		t.Fatal("identical envelopes do not share their bytes")
	}
	if &m.Targets[3].Envelope[0] == first || bytes.Equal(m.Targets[3].Envelope, m.Targets[0].Envelope) {
		t.Fatal("an envelope of another type shares the bytes of the others")
	}
}

// A send costs the same allocations whatever its number of devices: the envelopes share one
// buffer and the dedupe ids one string.
func TestResolveAllocations(t *testing.T) {
	s := fixture(t)
	ctx := context.Background()
	var backing [8]mailbox.Target
	m := messaging.Message{Targets: backing[:0]}
	allocs := func(from directory.Principal, v *pb.SendView) float64 {
		return testing.AllocsPerRun(200, func() {
			if err := s.Resolve(ctx, from, v, 1, &m); err != nil {
				t.Fatal(err)
			}
		})
	}
	one := allocs(cat, &pb.SendView{MessageID: []byte("m"), To: []byte("bob"), Envelopes: envs(dev('a'), dev('b'))})
	four := allocs(amy, &pb.SendView{MessageID: []byte("m"), To: []byte("bob"), Envelopes: envs(dev('a'), dev('b')), OwnEnvelopes: envs(dev('2'), dev('3'))})
	if one != four {
		t.Fatalf("2 devices: %v allocations, 4 devices: %v", one, four)
	}
	// The recipient's name (a string for the account lookup), the envelopes' buffer, the dedupe ids.
	if one > 3 {
		t.Fatalf("%v allocations per send", one)
	}
	t.Logf("%v allocations per send", one)
}

func BenchmarkResolve(b *testing.B) {
	s := fixture(b)
	ctx := context.Background()
	var backing [8]mailbox.Target
	m := messaging.Message{Targets: backing[:0]}
	ct := bytes.Repeat([]byte{7}, 300)
	for _, c := range []struct {
		from directory.Principal
		v    *pb.SendView
	}{
		{cat, &pb.SendView{MessageID: []byte("JTuuTbrhlQembaSSU0kZqQ"), To: []byte("bob"), Envelopes: envs(dev('a'), dev('b'))}},
		{amy, &pb.SendView{MessageID: []byte("JTuuTbrhlQembaSSU0kZqQ"), To: []byte("bob"), Envelopes: envs(dev('a'), dev('b')), OwnEnvelopes: envs(dev('2'), dev('3'))}},
	} {
		for i := range c.v.Envelopes {
			c.v.Envelopes[i].Ciphertext = ct
		}
		b.Run(fmt.Sprintf("devices=%d", len(c.v.Envelopes)+len(c.v.OwnEnvelopes)), func(b *testing.B) {
			b.ReportAllocs()
			for b.Loop() {
				if err := s.Resolve(ctx, c.from, c.v, 1, &m); err != nil {
					b.Fatal(err)
				}
			}
		})
	}
}
