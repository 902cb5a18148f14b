// Copyright 2026 The Petrel Authors
// SPDX-License-Identifier: Apache-2.0

package hostile

import (
	"bytes"
	"net"
	"strings"
	"testing"
	"time"

	"github.com/petrelchat/petrel/internal/testserver"
	pb "github.com/petrelchat/petrel/proto/petrel/v1"
)

// Admission before work: every inbound frame, data or control, authenticated or not, is counted
// against the connection's budget before it is queued, so no single socket can make the server
// hold more than a bounded amount of memory for it, whatever it sends.

// connBound is the most one hostile connection may raise the process's RSS by. The server's own
// bounds are far lower (16 MiB queued per authenticated connection, one frame per unauthenticated
// one); this leaves room for the race detector and the test's own buffers. Before admission
// control the floods below passed it within a second.
const connBound = 64 << 20

// flood writes batch to c again and again until the server closes or stops reading c, the RSS
// growth passes bound, maxBatches are written, or d passes. It returns how many batches went out
// and whether the server refused more (closed the socket or stopped reading it).
func flood(t *testing.T, c net.Conn, batch []byte, maxBatches int, d time.Duration, peak *admPeak, bound int64) (sent int, refused bool) {
	t.Helper()
	end := time.Now().Add(d)
	for sent < maxBatches && time.Now().Before(end) {
		_ = c.SetWriteDeadline(time.Now().Add(2 * time.Second))
		if _, err := c.Write(batch); err != nil {
			return sent, true
		}
		sent++
		if peak.over(bound) {
			return sent, false
		}
	}
	return sent, false
}

// cutOff checks that the server cut a flooding socket off while the flood went on (refused: a
// write failed) and closed it. Before admission control it read and queued all of it, and closed
// the socket only at the handshake or idle timeout.
func cutOff(t *testing.T, c net.Conn, refused bool, what string) {
	t.Helper()
	if !refused {
		t.Fatalf("%s was not cut off during the flood", what)
	}
	if _, closed := admWaitClosed(c, 2*time.Second); !closed {
		t.Fatalf("%s was not closed", what)
	}
}

// wellBehaved registers a user that keeps being served during an attack.
func wellBehaved(t *testing.T, ts *testserver.Server, name string) *testserver.RawClient {
	t.Helper()
	c := testserver.Dial(t, ts.URL())
	c.MustRegister(name)
	return c
}

// An authenticated socket pipelines GetBundle frames and never reads: the server must not queue
// them without bound (it held 2.4 GB for 1.6M frames before).
func TestHostilePipelinedGetBundleFlood(t *testing.T) {
	ts := testserver.Start(t)
	good := wellBehaved(t, ts, "victim")
	w := admDial(t, ts.URL(), "")
	w.register("mallory")

	one := admBinary(t, &pb.Frame{Id: 7, Body: &pb.Frame_GetBundle{GetBundle: &pb.GetBundle{Name: "victim"}}})
	batch := bytes.Repeat(one, (64<<10)/len(one))
	perBatch := (64 << 10) / len(one)

	peak := &admPeak{t: t, base: admBaseline(t)}
	sent, refused := flood(t, w.c, batch, 2_000_000/perBatch, 10*time.Second, peak, connBound)
	t.Logf("GetBundle flood: %d frames sent, peak RSS growth %.1f MiB, refused=%v", sent*perBatch, peak.mib(), refused)
	if peak.peak > connBound {
		t.Fatalf("one pipelining socket raised RSS by %.0f MiB (bound %d MiB)", peak.mib(), connBound>>20)
	}
	cutOff(t, w.c, refused, "the flooding socket")
	if err := admServed(t, good); err != nil {
		t.Fatal(err)
	}
}

// A socket that never authenticates and never reads floods WebSocket pings: each one used to be
// queued (3.3 GB for 3.6M pings) before anything counted it.
func TestHostilePingFloodUnauthenticated(t *testing.T) {
	ts := testserver.Start(t)
	pingFlood(t, wellBehaved(t, ts, "bystander"), admDial(t, ts.URL(), ""))
}

// pingFlood floods pings on w (which never authenticates or reads) and checks that the server
// cut it off within the bound while good was served.
func pingFlood(t *testing.T, good *testserver.RawClient, w *admWS) {
	t.Helper()
	one := admFrame(0x9, nil, false)
	perBatch := (1 << 20) / len(one)
	batch := bytes.Repeat(one, perBatch)

	peak := &admPeak{t: t, base: admBaseline(t)}
	sent, refused := flood(t, w.c, batch, 4_000_000/perBatch, 3*time.Second, peak, connBound)
	t.Logf("ping flood: %d pings sent, peak RSS growth %.1f MiB, refused=%v", sent*perBatch, peak.mib(), refused)
	if peak.peak > connBound {
		t.Fatalf("one unauthenticated ping flood raised RSS by %.0f MiB (bound %d MiB)", peak.mib(), connBound>>20)
	}
	cutOff(t, w.c, refused, "the ping-flooding socket")
	if err := admServed(t, good); err != nil {
		t.Fatal(err)
	}
}

// An unauthenticated socket pipelines 200 KB Auth frames: it may have one frame in hand, not
// hundreds (521 MB before the handshake timeout, before).
func TestHostileLargeAuthFlood(t *testing.T) {
	ts := testserver.Start(t)
	good := wellBehaved(t, ts, "bystander")
	w := admDial(t, ts.URL(), "")

	one := admBinary(t, &pb.Frame{Id: 1, Body: &pb.Frame_Auth{Auth: &pb.Auth{DeviceId: strings.Repeat("a", 200_000)}}})
	peak := &admPeak{t: t, base: admBaseline(t)}
	sent, refused := flood(t, w.c, one, 3000, 3*time.Second, peak, connBound)
	t.Logf("auth flood: %d frames of %d B sent, peak RSS growth %.1f MiB, refused=%v", sent, len(one), peak.mib(), refused)
	if peak.peak > connBound {
		t.Fatalf("one unauthenticated socket raised RSS by %.0f MiB with Auth frames (bound %d MiB)", peak.mib(), connBound>>20)
	}
	cutOff(t, w.c, refused, "the Auth-flooding socket")
	if err := admServed(t, good); err != nil {
		t.Fatal(err)
	}
}

// RFC 6455 5.1: a server must close the connection when a client frame is not masked.
func TestHostileUnmaskedFrameIsClosed(t *testing.T) {
	ts := testserver.Start(t)
	w := admDial(t, ts.URL(), "")
	b := admBinary(t, &pb.Frame{Id: 1, Body: &pb.Frame_Ping{Ping: &pb.Ping{}}})
	payload := b[6:] // drop the masked header: rebuild it unmasked
	for i := range payload {
		payload[i] ^= [4]byte{0x11, 0x22, 0x33, 0x44}[i&3]
	}
	if _, err := w.c.Write(admFrame(0x2, payload, true)); err != nil {
		t.Fatal(err)
	}
	code, closed := admWaitClosed(w.c, 5*time.Second)
	if !closed {
		t.Fatal("an unmasked client frame did not close the connection")
	}
	if code != 1002 {
		t.Fatalf("close code %d, want 1002 (protocol error)", code)
	}
}
