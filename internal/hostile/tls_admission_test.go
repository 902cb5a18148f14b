// Copyright 2026 The Petrel Authors
// SPDX-License-Identifier: Apache-2.0

package hostile

import (
	"bufio"
	"bytes"
	"crypto/tls"
	"fmt"
	"io"
	"net"
	"net/http"
	"testing"
	"time"

	"github.com/petrelchat/petrel/internal/testserver"
	pb "github.com/petrelchat/petrel/proto/petrel/v1"
)

// Over TLS the frames and requests are decrypted by a drain job instead of the poller: the same
// admission must hold there (admission.go, preupgrade.go).

func tlsServer(t *testing.T) (*testserver.Server, testserver.Cert) {
	t.Helper()
	cert := testserver.SelfSigned(t, testserver.ECDSA)
	return testserver.Start(t, testserver.WithTLS(cert)), cert
}

// An unauthenticated TLS socket floods pings: cut off, RSS bounded, others served.
func TestHostilePingFloodOverTLS(t *testing.T) {
	ts, cert := tlsServer(t)
	good := testserver.DialTLS(t, ts.URL(), cert.Pool)
	good.MustRegister("bystander")
	pingFlood(t, good, admDialTLS(t, ts.URL(), cert.Pool))
}

// Frames pipelined in the same TLS record as the upgrade request go through admission too: an
// unmasked frame right behind the request is answered with close 1002, not handled by the
// WebSocket library's own reader (which it was, before the reader took over in ServeHTTP).
func TestHostileFramesBehindTheUpgradeOverTLS(t *testing.T) {
	ts, cert := tlsServer(t)
	host := admHostPort(t, ts.URL())
	c, err := tls.Dial("tcp", host, &tls.Config{RootCAs: cert.Pool, ServerName: "127.0.0.1"})
	if err != nil {
		t.Fatal(err)
	}
	framesBehindTheUpgrade(t, c, host, true)
}

// The same on a plain socket: request and frame in one segment. nbio's HTTP parser may read the
// frame as the next request and close the socket, before or after the upgrade, without a close
// frame (one run in many on a loaded machine); either way the frame is never handled.
func TestHostileFramesBehindTheUpgrade(t *testing.T) {
	ts := testserver.Start(t)
	host := admHostPort(t, ts.URL())
	c, err := net.Dial("tcp", host)
	if err != nil {
		t.Fatal(err)
	}
	framesBehindTheUpgrade(t, c, host, false)
}

// framesBehindTheUpgrade sends an upgrade request and, in the same write, an unmasked Ping frame
// (id 1). The ping is never answered; after a 101 the server closes with 1002, or (closeFrame
// false: the HTTP parser took the frame) closes without a close frame.
func framesBehindTheUpgrade(t *testing.T, c net.Conn, host string, closeFrame bool) {
	t.Cleanup(func() { c.Close() })
	ping := admBinary(t, &pb.Frame{Id: 1, Body: &pb.Frame_Ping{Ping: &pb.Ping{}}})
	payload := ping[6:]
	for i := range payload {
		payload[i] ^= [4]byte{0x11, 0x22, 0x33, 0x44}[i&3]
	}
	msg := append([]byte(admUpgradeRequest(host)), admFrame(0x2, payload, true)...)
	if _, err := c.Write(msg); err != nil { // one write: one record
		t.Fatal(err)
	}
	_ = c.SetReadDeadline(time.Now().Add(5 * time.Second))
	got, err := io.ReadAll(c) // until the server closes
	if err != nil {
		t.Fatalf("the server did not close the connection: %v (read %q)", err, got)
	}
	if len(got) == 0 {
		return // closed before the upgrade: the client did not wait for it (RFC 6455 4.1)
	}
	_, frames, ok := bytes.Cut(got, []byte("\r\n\r\n")) // the 101 response, then frames
	if !ok || !bytes.HasPrefix(got, []byte("HTTP/1.1 101")) {
		t.Fatalf("no upgrade: %q", got)
	}
	if admAnswered(frames, 1) {
		t.Fatal("the unmasked frame behind the upgrade was handled (its ping answered)")
	}
	if code := admFindClose(frames); code != 1002 && (closeFrame || code != 0) {
		t.Fatalf("unmasked frame behind the upgrade: close code %d, want 1002", code)
	}
}

// admAnswered reports whether the server frames in b hold an answer to request id.
func admAnswered(b []byte, id uint64) bool {
	answered := false
	admEachFrame(b, func(op byte, payload []byte) bool {
		if f, err := pb.DecodeFrame(payload, 1<<20); op == 0x2 && err == nil && f.GetId() == id {
			answered = true
		}
		return !answered
	})
	return answered
}

// A TLS request announcing a 64 MiB body is answered 413 from its headers, inside TLS.
func TestHostileLargeBodyOverTLS(t *testing.T) {
	ts, cert := tlsServer(t)
	host := admHostPort(t, ts.URL())
	c, err := tls.Dial("tcp", host, &tls.Config{RootCAs: cert.Pool, ServerName: "127.0.0.1"})
	if err != nil {
		t.Fatal(err)
	}
	t.Cleanup(func() { c.Close() })
	if _, err := fmt.Fprintf(c, "POST / HTTP/1.1\r\nHost: petrel\r\nContent-Length: %d\r\n\r\n", 64<<20); err != nil {
		t.Fatal(err)
	}
	_ = c.SetReadDeadline(time.Now().Add(5 * time.Second))
	res, err := http.ReadResponse(bufio.NewReader(c), nil)
	if err != nil {
		t.Fatalf("no answer to the headers alone: %v", err)
	}
	res.Body.Close()
	if res.StatusCode != http.StatusRequestEntityTooLarge {
		t.Fatalf("answered %s, want 413", res.Status)
	}
}
