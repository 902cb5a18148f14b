// Copyright 2026 The Petrel Authors
// SPDX-License-Identifier: Apache-2.0

package hostile

import (
	"bytes"
	"context"
	"strings"
	"testing"
	"time"

	"github.com/coder/websocket"
	"google.golang.org/protobuf/proto"

	"github.com/petrelchat/petrel/internal/testserver"
	pb "github.com/petrelchat/petrel/proto/petrel/v1"
)

// privRawRequest writes f with id and returns the raw bytes of the answer with that id (pushes
// are skipped), so a test can look at exactly what the server sent.
func privRawRequest(t *testing.T, c *testserver.RawClient, id uint64, f *pb.Frame) []byte {
	t.Helper()
	f.Id = id
	c.Write(f)
	ctx, cancel := context.WithTimeout(context.Background(), 10*time.Second)
	defer cancel()
	for {
		mt, b, err := c.WS.Read(ctx)
		if err != nil {
			t.Fatalf("waiting for the answer to request %d: %v", id, err)
		}
		if mt != websocket.MessageBinary {
			t.Fatalf("non-binary frame")
		}
		var got pb.Frame
		if err := proto.Unmarshal(b, &got); err != nil {
			t.Fatalf("undecodable frame %x: %v", b, err)
		}
		if got.GetId() == id {
			return b
		}
	}
}

func privSend(msgID, to string, devices ...string) *pb.Frame {
	s := &pb.Send{MessageId: msgID, To: to}
	for _, d := range devices {
		s.Envelopes = append(s.Envelopes, &pb.DeviceCiphertext{DeviceId: d, Type: pb.EnvelopeType_ENVELOPE_TYPE_MESSAGE, Ciphertext: []byte("opaque")})
	}
	return &pb.Frame{Body: &pb.Frame_Send{Send: s}}
}

// privWaitConns waits until the server holds n connections (a closed one is detached by then).
func privWaitConns(t *testing.T, s *testserver.Server, n int) {
	t.Helper()
	deadline := time.Now().Add(10 * time.Second)
	for s.Server().Conns() != n {
		if time.Now().After(deadline) {
			t.Fatalf("server holds %d connections, want %d", s.Server().Conns(), n)
		}
		time.Sleep(5 * time.Millisecond) // polling a count the server does not announce
	}
}

// A stranger (no contact of bob's, never in touch before) sends to bob while bob is online and
// acks live, then while bob is offline and the envelope is stored. The two answers are the same
// bytes but for the request id and the message id: a Send does not tell whether its recipient is
// online (the old SendResult said delivered_live=1 or stored=1).
func TestSendResultIsNoPresenceOracle(t *testing.T) {
	s := testserver.Start(t)
	mallory := testserver.Dial(t, s.URL())
	mallory.MustRegister("mallory")
	bob := testserver.Dial(t, s.URL())
	bob.MustRegister("bob")
	if f := bob.NextPush(); f.GetQueueEmpty() == nil {
		t.Fatalf("bob: want QueueEmpty first, got %v", f)
	}

	// Online: bob acks the live delivery.
	acked := make(chan error, 1)
	go func() {
		f, err := bob.ReadErr(10 * time.Second)
		if err == nil {
			bob.Write(&pb.Frame{Body: &pb.Frame_DeliverAck{DeliverAck: &pb.DeliverAck{Tags: []uint64{f.GetDeliver().GetTag()}}}})
		}
		acked <- err
	}()
	online := privRawRequest(t, mallory, 7, privSend("probe-on", "bob", bob.DeviceID))
	if err := <-acked; err != nil {
		t.Fatal(err)
	}

	// Offline: the envelope is stored.
	bob.WS.CloseNow()
	privWaitConns(t, s, 1)
	offline := privRawRequest(t, mallory, 7, privSend("probe-of", "bob", bob.DeviceID))

	for name, b := range map[string][]byte{"online": online, "offline": offline} {
		var f pb.Frame
		if err := proto.Unmarshal(b, &f); err != nil || f.GetSendResult() == nil {
			t.Fatalf("%s: want a SendResult, got %v (%v)", name, &f, err)
		}
	}
	// Same length message ids, same request id: the bytes must be equal but for the id's text.
	normalise := func(b []byte, msgID string) []byte {
		return bytes.Replace(b, []byte(msgID), []byte("probe-xx"), 1)
	}
	if a, b := normalise(online, "probe-on"), normalise(offline, "probe-of"); !bytes.Equal(a, b) {
		t.Fatalf("the answer differs with the recipient's presence:\n online %x\noffline %x", a, b)
	}
}

// An envelope-less Send (or one for a made-up device) is refused with STALE_DEVICES or
// UNKNOWN_DEVICE and nothing else: the recipient's device ids are not in the answer (they were
// listed to any sender; a client refetches them through GetBundle).
func TestSendErrorsListNoDevices(t *testing.T) {
	s := testserver.Start(t)
	mallory := testserver.Dial(t, s.URL())
	mallory.MustRegister("mallory")
	bob := testserver.Dial(t, s.URL())
	bob.MustRegister("bob")

	cases := []struct {
		name string
		send *pb.Frame
		want pb.ErrorCode
	}{
		{"no envelopes", privSend("probe-1", "bob"), pb.ErrorCode_ERROR_CODE_STALE_DEVICES},
		{"made-up device", privSend("probe-2", "bob", "0123456789abcdef0123456789abcdef"), pb.ErrorCode_ERROR_CODE_UNKNOWN_DEVICE},
	}
	for i, tc := range cases {
		t.Run(tc.name, func(t *testing.T) {
			b := privRawRequest(t, mallory, uint64(10+i), tc.send)
			var f pb.Frame
			if err := proto.Unmarshal(b, &f); err != nil {
				t.Fatal(err)
			}
			if f.GetError().GetCode() != tc.want {
				t.Fatalf("want %v, got %v", tc.want, &f)
			}
			if bytes.Contains(b, []byte(bob.DeviceID)) || len(f.GetError().GetDevices()) != 0 {
				t.Fatalf("the answer lists bob's devices: %v", &f)
			}
		})
	}
}

// A send while storage is down is answered UNAVAILABLE with the code's fixed message and an error
// id; the NATS error behind it is in the server's log under that id, never in the answer (it read
// "inbox storage unavailable: nats: ...").
func TestStorageErrorsAreSanitised(t *testing.T) {
	var logs testserver.Buffer
	s := testserver.Start(t, testserver.WithLog(&logs))
	mallory := testserver.Dial(t, s.URL())
	mallory.MustRegister("mallory")
	bob := testserver.Dial(t, s.URL())
	bob.MustRegister("bob")
	bob.WS.CloseNow()
	privWaitConns(t, s, 1)

	// A first send is stored (and leaves bob's account in the directory's cache, so the failure
	// below is the inbox's).
	var ok pb.Frame
	if err := proto.Unmarshal(privRawRequest(t, mallory, 4, privSend("m0", "bob", bob.DeviceID)), &ok); err != nil || ok.GetSendResult() == nil {
		t.Fatalf("want the first send stored, got %v (%v)", &ok, err)
	}
	if err := s.Server().Bus().DisableJetStreamForTest(); err != nil {
		t.Fatal(err)
	}
	b := privRawRequest(t, mallory, 5, privSend("m1", "bob", bob.DeviceID))
	var f pb.Frame
	if err := proto.Unmarshal(b, &f); err != nil {
		t.Fatal(err)
	}
	e := f.GetError()
	if e.GetCode() != pb.ErrorCode_ERROR_CODE_UNAVAILABLE || e.GetRetryAfterMs() == 0 {
		t.Fatalf("want UNAVAILABLE with a retry hint, got %v", &f)
	}
	lower := strings.ToLower(string(b))
	for _, leak := range []string{"nats", "jetstream", "inbox.", "stream", bob.DeviceID} {
		if strings.Contains(lower, strings.ToLower(leak)) {
			t.Errorf("the answer carries %q: %q", leak, e.GetMessage())
		}
	}
	if len(e.GetErrorId()) < 8 {
		t.Fatalf("no error id: %v", e)
	}
	// The log has the id with the full cause.
	logs.WaitFor(t, e.GetErrorId(), 10*time.Second)
	for line := range strings.SplitSeq(logs.String(), "\n") {
		if strings.Contains(line, e.GetErrorId()) {
			if !strings.Contains(line, "nats") || !strings.Contains(line, "code=unavailable") {
				t.Fatalf("the log line lacks the cause: %s", line)
			}
			return
		}
	}
}
