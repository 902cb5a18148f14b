// Copyright 2026 The Petrel Authors
// SPDX-License-Identifier: Apache-2.0

package bench

import (
	"bufio"
	"bytes"
	"context"
	"crypto/tls"
	"crypto/x509"
	"encoding/binary"
	"errors"
	"fmt"
	"io"
	"math/rand/v2"
	"net"
	"net/http"
	"net/http/httptest"
	"slices"
	"strings"
	"testing"
	"time"

	"google.golang.org/protobuf/proto"

	pb "github.com/petrelchat/petrel/proto/petrel/v1"
)

// serverFrame encodes an unmasked server frame (the reference for the reader).
func serverFrame(fin bool, op byte, payload []byte) []byte {
	b0 := op
	if fin {
		b0 |= 0x80
	}
	b := []byte{b0}
	switch n := len(payload); {
	case n < 126:
		b = append(b, byte(n))
	case n <= 0xffff:
		b = append(b, 126)
		b = binary.BigEndian.AppendUint16(b, uint16(n))
	default:
		b = append(b, 127)
		b = binary.BigEndian.AppendUint64(b, uint64(n))
	}
	return append(b, payload...)
}

// decodeClientFrame is a byte-at-a-time reference decoder for one masked client frame.
func decodeClientFrame(t *testing.T, b []byte) (op byte, payload []byte, rest []byte) {
	t.Helper()
	if b[0]&0xf0 != 0x80 || b[1]&0x80 == 0 {
		t.Fatalf("client frame: FIN %v, RSV %x, MASK %v", b[0]&0x80 != 0, b[0]&0x70, b[1]&0x80 != 0)
	}
	op = b[0] & 0x0f
	n, i := int(b[1]&0x7f), 2
	switch n {
	case 126:
		n, i = int(binary.BigEndian.Uint16(b[2:])), 4
		if n < 126 {
			t.Fatalf("non-minimal 16-bit length %d", n)
		}
	case 127:
		n, i = int(binary.BigEndian.Uint64(b[2:])), 10
		if n <= 0xffff {
			t.Fatalf("non-minimal 64-bit length %d", n)
		}
	}
	key := b[i : i+4]
	payload = make([]byte, n)
	for j := range n {
		payload[j] = b[i+4+j] ^ key[j%4]
	}
	return op, payload, b[i+4+n:]
}

func TestMaskRoundTrip(t *testing.T) {
	for _, n := range []int{0, 1, 3, 4, 5, 7, 8, 9, 15, 16, 17, 31, 125, 126, 127, 1000, 0xffff, 0x10000, 70001} {
		payload := make([]byte, n)
		for i := range payload {
			payload[i] = byte(rand.Uint32())
		}
		key := rand.Uint32()
		// maskBytes against the byte-at-a-time definition, and twice is the identity.
		got := slices.Clone(payload)
		maskBytes(key, got)
		var k [4]byte
		binary.LittleEndian.PutUint32(k[:], key)
		for i := range got {
			if got[i] != payload[i]^k[i%4] {
				t.Fatalf("n=%d: byte %d masked to %#x, want %#x", n, i, got[i], payload[i]^k[i%4])
			}
		}
		maskBytes(key, got)
		if !bytes.Equal(got, payload) {
			t.Fatalf("n=%d: masking twice is not the identity", n)
		}
		// A whole frame, appended after other bytes, decoded by the reference; the caller's payload
		// is left alone.
		before := slices.Clone(payload)
		frame := appendClientFrame([]byte("prefix"), opBinary, payload, key)
		if !bytes.Equal(payload, before) {
			t.Fatalf("n=%d: appendClientFrame changed its input", n)
		}
		op, dec, rest := decodeClientFrame(t, frame[len("prefix"):])
		if op != opBinary || !bytes.Equal(dec, payload) || len(rest) != 0 {
			t.Fatalf("n=%d: decoded op %d, %d bytes (equal %v), %d left", n, op, len(dec), bytes.Equal(dec, payload), len(rest))
		}
	}
}

func TestWSAccept(t *testing.T) {
	// RFC 6455 section 1.3.
	if got := wsAccept([]byte("dGhlIHNhbXBsZSBub25jZQ==")); string(got[:]) != "s3pPLMBiTxaQ9kYGzzhZRbK+xOo=" {
		t.Errorf("accept %s", got)
	}
	k1, _ := newWSKey()
	k2, _ := newWSKey()
	if k1 == k2 {
		t.Error("two equal keys")
	}
}

// readAll reads messages from stream until an error, answering pings into pings.
func readAll(stream []byte, bufSize, limit int) (msgs [][]byte, pings [][]byte, err error) {
	r := frameReader{br: bufio.NewReaderSize(bytes.NewReader(stream), bufSize), limit: limit}
	r.onPing = func(p []byte) error { pings = append(pings, slices.Clone(p)); return nil }
	for {
		op, p, err := r.next()
		if err != nil {
			r.release()
			return msgs, pings, err
		}
		if op != opBinary && op != opText {
			return msgs, pings, fmt.Errorf("opcode %d returned", op)
		}
		msgs = append(msgs, slices.Clone(p))
	}
}

func TestFrameReader(t *testing.T) {
	big := bytes.Repeat([]byte("0123456789abcdef"), 600) // larger than the read buffer
	cat := func(parts ...[]byte) []byte { return bytes.Join(parts, nil) }
	type tc struct {
		name    string
		stream  []byte
		limit   int
		msgs    []string
		pings   []string
		wantErr func(error) bool
	}
	isErr := func(target error) func(error) bool { return func(err error) bool { return errors.Is(err, target) } }
	closed := func(code int) func(error) bool {
		return func(err error) bool { var ce *closeError; return errors.As(err, &ce) && ce.code == code }
	}
	for _, c := range []tc{
		{name: "single frames", stream: cat(serverFrame(true, opBinary, []byte("one")), serverFrame(true, opBinary, nil), serverFrame(true, opBinary, []byte("three"))),
			msgs: []string{"one", "", "three"}, wantErr: isErr(io.EOF)},
		{name: "fragmented with control frames between", stream: cat(
			serverFrame(false, opBinary, []byte("he")),
			serverFrame(true, opPing, []byte("p1")),
			serverFrame(false, opContinuation, []byte("ll")),
			serverFrame(true, opPong, []byte("ignored")),
			serverFrame(false, opContinuation, nil),
			serverFrame(true, opPing, nil),
			serverFrame(true, opContinuation, []byte("o")),
			serverFrame(true, opBinary, []byte("next")),
		), msgs: []string{"hello", "next"}, pings: []string{"p1", ""}, wantErr: isErr(io.EOF)},
		{name: "large single frame", stream: serverFrame(true, opBinary, big), msgs: []string{string(big)}, wantErr: isErr(io.EOF)},
		{name: "large fragmented", stream: cat(serverFrame(false, opBinary, big[:5000]), serverFrame(true, opContinuation, big[5000:])),
			msgs: []string{string(big)}, wantErr: isErr(io.EOF)},
		{name: "close with status", stream: cat(serverFrame(true, opBinary, []byte("a")), serverFrame(true, opClose, []byte{0x03, 0xe9, 'b', 'y', 'e'}), serverFrame(true, opBinary, []byte("after"))),
			msgs: []string{"a"}, wantErr: closed(1001)},
		{name: "close without status", stream: serverFrame(true, opClose, nil), wantErr: closed(1005)},
		{name: "close inside a fragmented message", stream: cat(serverFrame(false, opBinary, []byte("x")), serverFrame(true, opClose, []byte{0x03, 0xe8})), wantErr: closed(1000)},
		{name: "at the limit", stream: serverFrame(true, opBinary, make([]byte, 100)), limit: 100, msgs: []string{string(make([]byte, 100))}, wantErr: isErr(io.EOF)},
		{name: "oversize frame", stream: serverFrame(true, opBinary, make([]byte, 101)), limit: 100, wantErr: isErr(errTooLarge)},
		{name: "oversize 64-bit length", stream: []byte{0x82, 127, 0x80, 0, 0, 0, 0, 0, 0, 0}, wantErr: isErr(errTooLarge)},
		{name: "oversize across fragments", stream: cat(serverFrame(false, opBinary, make([]byte, 60)), serverFrame(true, opContinuation, make([]byte, 41))), limit: 100, wantErr: isErr(errTooLarge)},
		{name: "masked server frame", stream: []byte{0x82, 0x81, 1, 2, 3, 4, 5}, wantErr: isErr(errWSProtocol)},
		{name: "reserved bit", stream: []byte{0xc2, 0}, wantErr: isErr(errWSProtocol)},
		{name: "unknown data opcode", stream: serverFrame(true, 0x3, nil), wantErr: isErr(errWSProtocol)},
		{name: "unknown control opcode", stream: serverFrame(true, 0xb, nil), wantErr: isErr(errWSProtocol)},
		{name: "fragmented control frame", stream: serverFrame(false, opPing, nil), wantErr: isErr(errWSProtocol)},
		{name: "long control frame", stream: serverFrame(true, opPing, make([]byte, 126)), wantErr: isErr(errWSProtocol)},
		{name: "close with one byte", stream: serverFrame(true, opClose, []byte{3}), wantErr: isErr(errWSProtocol)},
		{name: "continuation first", stream: serverFrame(true, opContinuation, []byte("x")), wantErr: isErr(errWSProtocol)},
		{name: "new message inside a fragmented one", stream: cat(serverFrame(false, opBinary, []byte("x")), serverFrame(true, opBinary, []byte("y"))), wantErr: isErr(errWSProtocol)},
		{name: "truncated header", stream: []byte{0x82}, wantErr: isErr(io.ErrUnexpectedEOF)},
		{name: "truncated length", stream: []byte{0x82, 126, 1}, wantErr: isErr(io.ErrUnexpectedEOF)},
		{name: "truncated payload", stream: serverFrame(true, opBinary, []byte("hello"))[:5], wantErr: isErr(io.ErrUnexpectedEOF)},
		{name: "truncated large payload", stream: serverFrame(true, opBinary, big)[:6000], wantErr: isErr(io.ErrUnexpectedEOF)},
		{name: "end inside a fragmented message", stream: serverFrame(false, opBinary, []byte("x")), wantErr: isErr(io.ErrUnexpectedEOF)},
	} {
		t.Run(c.name, func(t *testing.T) {
			if c.limit == 0 {
				c.limit = readLimit
			}
			for _, size := range []int{160, readBufferSize} {
				msgs, pings, err := readAll(c.stream, size, c.limit)
				var gotMsgs, gotPings []string
				for _, m := range msgs {
					gotMsgs = append(gotMsgs, string(m))
				}
				for _, p := range pings {
					gotPings = append(gotPings, string(p))
				}
				if !slices.Equal(gotMsgs, c.msgs) || !slices.Equal(gotPings, c.pings) || !c.wantErr(err) {
					t.Errorf("buffer %d: %d messages, pings %q, err %v; want %d messages, pings %q", size, len(gotMsgs), gotPings, err, len(c.msgs), c.pings)
				}
			}
		})
	}
}

// discardConn is a net.Conn whose writes go to w.
type discardConn struct {
	net.Conn
	w io.Writer
}

func (c discardConn) Write(p []byte) (int, error) { return c.w.Write(p) }

// TestFramePathsDoNotAllocate pins the per-frame cost: reading a message that fits the buffer,
// and writing one.
func TestFramePathsDoNotAllocate(t *testing.T) {
	frame := serverFrame(true, opBinary, make([]byte, 300))
	src := bytes.NewReader(nil)
	r := frameReader{br: bufio.NewReaderSize(src, readBufferSize), limit: readLimit}
	allocs := testing.AllocsPerRun(200, func() {
		src.Reset(frame)
		if _, p, err := r.next(); err != nil || len(p) != 300 {
			t.Fatalf("next: %d bytes, %v", len(p), err)
		}
		r.release()
	})
	if allocs != 0 {
		t.Errorf("reading a frame: %v allocations", allocs)
	}
	cc := &corkConn{Conn: discardConn{w: io.Discard}}
	payload := make([]byte, 300)
	_ = cc.writeFrame(opBinary, payload, false) // the first write sizes the buffer
	allocs = testing.AllocsPerRun(200, func() {
		if err := cc.writeFrame(opBinary, payload, false); err != nil {
			t.Fatal(err)
		}
	})
	if allocs != 0 {
		t.Errorf("writing a frame: %v allocations", allocs)
	}
}

// TestCorkedWrites checks that frames written during a read burst go out in one write, in order,
// when the reader next waits, and that a flushing write (close) goes out at once.
func TestCorkedWrites(t *testing.T) {
	var out bytes.Buffer
	writes := 0
	w := writerFunc(func(p []byte) (int, error) { writes++; return out.Write(p) })
	cc := &corkConn{Conn: discardConn{w: w}}
	cc.corked = true
	for _, m := range []string{"a", "bb", "ccc"} {
		if err := cc.writeFrame(opBinary, []byte(m), false); err != nil {
			t.Fatal(err)
		}
	}
	if writes != 0 {
		t.Fatalf("%d writes while corked", writes)
	}
	cl := closePayload(closeNormal)
	if err := cc.writeFrame(opClose, cl[:], true); err != nil {
		t.Fatal(err)
	}
	if writes != 1 {
		t.Fatalf("%d writes, want 1", writes)
	}
	b := out.Bytes()
	for _, want := range []string{"a", "bb", "ccc", "\x03\xe8"} {
		var p []byte
		_, p, b = decodeClientFrame(t, b)
		if string(p) != want {
			t.Fatalf("frame %q, want %q", p, want)
		}
	}
}

type writerFunc func([]byte) (int, error)

func (f writerFunc) Write(p []byte) (int, error) { return f(p) }

// fakeUpgradeServer accepts one connection, checks the upgrade request and answers with respond.
func fakeUpgradeServer(t *testing.T, respond func(req *http.Request) []byte) string {
	t.Helper()
	ln, err := net.Listen("tcp", "127.0.0.1:0")
	if err != nil {
		t.Fatal(err)
	}
	done := make(chan struct{})
	t.Cleanup(func() { ln.Close(); <-done })
	go func() {
		defer close(done)
		c, err := ln.Accept()
		if err != nil {
			return
		}
		defer c.Close()
		req, err := http.ReadRequest(bufio.NewReader(c))
		if err != nil {
			t.Errorf("reading the upgrade request: %v", err)
			return
		}
		h := req.Header
		if req.Method != http.MethodGet || req.URL.Path != "/base"+pb.ConnectPath || !strings.EqualFold(h.Get("Upgrade"), "websocket") ||
			!strings.EqualFold(h.Get("Connection"), "upgrade") || h.Get("Sec-WebSocket-Version") != "13" ||
			h.Get("Sec-WebSocket-Protocol") != pb.Subprotocol || len(h.Get("Sec-WebSocket-Key")) != 24 || req.Host != ln.Addr().String() {
			t.Errorf("upgrade request: %s %s host %s %v", req.Method, req.URL, req.Host, h)
		}
		resp := respond(req)
		if len(resp) == 0 {
			return
		}
		_, _ = c.Write(resp)
		_, _ = io.Copy(io.Discard, c) // until the client closes
	}()
	return "http://" + ln.Addr().String() + "/base/"
}

func TestUpgrade(t *testing.T) {
	accept := func(req *http.Request) string {
		a := wsAccept([]byte(req.Header.Get("Sec-WebSocket-Key")))
		return string(a[:])
	}
	unavailable, _ := proto.Marshal(&pb.Frame{Body: &pb.Frame_Error{Error: &pb.Error{
		Code: pb.ErrorCode_ERROR_CODE_UNAVAILABLE, Message: "busy", RetryAfterMs: 1500,
	}}})
	for _, c := range []struct {
		name       string
		respond    func(req *http.Request) []byte
		reason     string
		retryable  bool
		retryAfter time.Duration
	}{
		{name: "503 with Retry-After", respond: func(*http.Request) []byte {
			return []byte("HTTP/1.1 503 Service Unavailable\r\nRetry-After: 3\r\nContent-Length: 4\r\n\r\nfull")
		}, reason: "http_503", retryable: true, retryAfter: 3 * time.Second},
		{name: "400", respond: func(*http.Request) []byte {
			return []byte("HTTP/1.1 400 Bad Request\r\n\r\n")
		}, reason: "http_400"},
		{name: "wrong accept", respond: func(*http.Request) []byte {
			return []byte("HTTP/1.1 101 Switching Protocols\r\nUpgrade: websocket\r\nConnection: Upgrade\r\nSec-WebSocket-Accept: s3pPLMBiTxaQ9kYGzzhZRbK+xOo=\r\nSec-WebSocket-Protocol: petrel.v1\r\n\r\n")
		}, reason: "bad_handshake"},
		{name: "no subprotocol", respond: func(req *http.Request) []byte {
			return []byte("HTTP/1.1 101 Switching Protocols\r\nUpgrade: websocket\r\nConnection: Upgrade\r\nSec-WebSocket-Accept: " + accept(req) + "\r\n\r\n")
		}, reason: "bad_subprotocol"},
		{name: "head too large", respond: func(*http.Request) []byte {
			return []byte("HTTP/1.1 101 Switching Protocols\r\n" + strings.Repeat("X-Pad: "+strings.Repeat("x", 1000)+"\r\n", 20) + "\r\n")
		}, reason: "bad_handshake"},
		{name: "closed before answering", respond: func(*http.Request) []byte { return nil }, reason: "closed", retryable: true},
		{name: "first frame right after the head", respond: func(req *http.Request) []byte {
			// Switching protocols, then an Error frame in the same write: the frame must not be lost
			// between the head's reader and the frame reader.
			head := "HTTP/1.1 101 Switching Protocols\r\nupgrade: WebSocket\r\nconnection: keep-alive, Upgrade\r\nsec-websocket-accept: " +
				accept(req) + "\r\nsec-websocket-protocol: petrel.v1\r\n\r\n"
			return append([]byte(head), serverFrame(true, opBinary, unavailable)...)
		}, reason: pb.ErrorCodeName(pb.ErrorCode_ERROR_CODE_UNAVAILABLE), retryable: true, retryAfter: 1500 * time.Millisecond},
	} {
		t.Run(c.name, func(t *testing.T) {
			server := fakeUpgradeServer(t, c.respond)
			d := newDialer("127.0.0.1", 0, 5*time.Second)
			conn, ce := d.connectOnce(context.Background(), &account{DeviceID: "d"}, server)
			if ce == nil {
				conn.closeNow()
				t.Fatal("connected")
			}
			if ce.reason != c.reason || ce.retryable != c.retryable || ce.retryAfter != c.retryAfter {
				t.Errorf("got %q retryable %v after %v (%v); want %q %v %v", ce.reason, ce.retryable, ce.retryAfter, ce.err, c.reason, c.retryable, c.retryAfter)
			}
		})
	}
}

// TestUpgradeTLS checks that an https:// server is reached over TLS, and that the frame the
// server writes right after the upgrade response is read.
func TestUpgradeTLS(t *testing.T) {
	unavailable, _ := proto.Marshal(&pb.Frame{Body: &pb.Frame_Error{Error: &pb.Error{Code: pb.ErrorCode_ERROR_CODE_UNAVAILABLE}}})
	srv := httptest.NewTLSServer(http.HandlerFunc(func(w http.ResponseWriter, r *http.Request) {
		if r.URL.Path != pb.ConnectPath || r.TLS == nil {
			http.Error(w, "unexpected", http.StatusBadRequest)
			return
		}
		c, rw, err := http.NewResponseController(w).Hijack()
		if err != nil {
			t.Error(err)
			return
		}
		defer c.Close()
		accept := wsAccept([]byte(r.Header.Get("Sec-WebSocket-Key")))
		_, _ = rw.WriteString("HTTP/1.1 101 Switching Protocols\r\nUpgrade: websocket\r\nConnection: Upgrade\r\nSec-WebSocket-Accept: " +
			string(accept[:]) + "\r\nSec-WebSocket-Protocol: petrel.v1\r\n\r\n")
		_, _ = rw.Write(serverFrame(true, opBinary, unavailable))
		_ = rw.Flush()
		_, _ = io.Copy(io.Discard, rw)
	}))
	defer srv.Close()
	roots := x509.NewCertPool()
	roots.AddCert(srv.Certificate())
	d := newDialer("", 0, 5*time.Second)
	d.tlsConfig = &tls.Config{RootCAs: roots}
	_, ce := d.connectOnce(context.Background(), &account{}, srv.URL)
	if ce == nil || ce.reason != pb.ErrorCodeName(pb.ErrorCode_ERROR_CODE_UNAVAILABLE) {
		t.Fatalf("got %v", ce)
	}
	// Without the test root, the certificate is refused.
	_, ce = newDialer("", 0, 5*time.Second).connectOnce(context.Background(), &account{}, srv.URL)
	if ce == nil || !strings.Contains(ce.err.Error(), "certificate") {
		t.Fatalf("untrusted certificate: got %v", ce)
	}
}

func TestUpgradeCancelled(t *testing.T) {
	// A server that accepts but never answers: cancelling ctx ends the attempt as "cancelled".
	ln, err := net.Listen("tcp", "127.0.0.1:0")
	if err != nil {
		t.Fatal(err)
	}
	defer ln.Close()
	go func() {
		c, err := ln.Accept()
		if err == nil {
			_, _ = io.Copy(io.Discard, c)
			c.Close()
		}
	}()
	ctx, cancel := context.WithCancel(context.Background())
	time.AfterFunc(50*time.Millisecond, cancel)
	d := newDialer("", 0, time.Minute)
	_, ce := d.connectOnce(ctx, &account{}, "http://"+ln.Addr().String())
	if ce == nil || ce.reason != "cancelled" {
		t.Fatalf("got %v", ce)
	}
}

// FuzzFrameReader feeds arbitrary server byte streams to the frame reader, with a small buffer
// (so that messages take the reassembly path too) and the real one, and checks both against a
// straightforward decoder of the whole stream.
func FuzzFrameReader(f *testing.F) {
	challenge, _ := proto.Marshal(&pb.Frame{Body: &pb.Frame_Challenge{Challenge: &pb.Challenge{Nonce: make([]byte, pb.NonceSize), ServerTimeMs: 1}}})
	f.Add(serverFrame(true, opBinary, challenge))
	f.Add(bytes.Join([][]byte{serverFrame(false, opBinary, challenge[:5]), serverFrame(true, opPing, []byte("p")),
		serverFrame(true, opContinuation, challenge[5:])}, nil))
	f.Add(serverFrame(true, opBinary, make([]byte, 300)))
	f.Add(serverFrame(true, opClose, []byte{0x03, 0xe8}))
	f.Add([]byte{0x82, 127, 0, 0, 0, 0, 0, 0, 1, 0})
	f.Add([]byte{0x02, 126, 0, 200})
	f.Fuzz(func(t *testing.T, stream []byte) {
		const limit = 1000
		want, wantPings, wantErr := refDecode(stream, limit)
		for _, size := range []int{160, readBufferSize} {
			msgs, pings, err := readAll(stream, size, limit)
			if len(msgs) != len(want) || len(pings) != len(wantPings) || errKind(err) != wantErr {
				t.Fatalf("buffer %d: %d messages, %d pings, %v; reference: %d, %d, %s", size, len(msgs), len(pings), err, len(want), len(wantPings), wantErr)
			}
			for i := range msgs {
				if !bytes.Equal(msgs[i], want[i]) {
					t.Fatalf("buffer %d: message %d differs", size, i)
				}
			}
			for i := range pings {
				if !bytes.Equal(pings[i], wantPings[i]) {
					t.Fatalf("buffer %d: ping %d differs", size, i)
				}
			}
		}
	})
}

func errKind(err error) string {
	var ce *closeError
	switch {
	case err == io.EOF:
		return "eof"
	case errors.Is(err, io.ErrUnexpectedEOF):
		return "unexpected_eof"
	case errors.Is(err, errWSProtocol):
		return "protocol"
	case errors.Is(err, errTooLarge):
		return "too_large"
	case errors.As(err, &ce):
		return fmt.Sprintf("close_%d", ce.code)
	}
	return fmt.Sprintf("other: %v", err)
}

// refDecode decodes a whole server stream the plain way: messages, ping payloads, and how it ends.
func refDecode(b []byte, limit int) (msgs, pings [][]byte, end string) {
	var msg []byte
	inMsg := false
	for {
		if len(b) == 0 {
			if inMsg {
				return msgs, pings, "unexpected_eof"
			}
			return msgs, pings, "eof"
		}
		if len(b) < 2 {
			return msgs, pings, "unexpected_eof"
		}
		fin, op := b[0]&0x80 != 0, b[0]&0x0f
		if b[0]&0x70 != 0 || b[1]&0x80 != 0 {
			return msgs, pings, "protocol"
		}
		n, hl := uint64(b[1]&0x7f), 2
		if n == 126 {
			if len(b) < 4 {
				return msgs, pings, "unexpected_eof"
			}
			n, hl = uint64(binary.BigEndian.Uint16(b[2:])), 4
		} else if n == 127 {
			if len(b) < 10 {
				return msgs, pings, "unexpected_eof"
			}
			n, hl = binary.BigEndian.Uint64(b[2:]), 10
		}
		if op >= 8 {
			if !fin || n > 125 || op > 0xa {
				return msgs, pings, "protocol"
			}
			if uint64(len(b)-hl) < n {
				return msgs, pings, "unexpected_eof"
			}
			p := b[hl : hl+int(n)]
			switch op {
			case 0x8:
				switch len(p) {
				case 0:
					return msgs, pings, "close_1005"
				case 1:
					return msgs, pings, "protocol"
				}
				return msgs, pings, fmt.Sprintf("close_%d", binary.BigEndian.Uint16(p))
			case 0x9:
				pings = append(pings, p)
			}
			b = b[hl+int(n):]
			continue
		}
		if (op == 0 && !inMsg) || (op != 0 && inMsg) || op > 2 {
			return msgs, pings, "protocol"
		}
		if n > uint64(limit-len(msg)) {
			return msgs, pings, "too_large"
		}
		if uint64(len(b)-hl) < n {
			return msgs, pings, "unexpected_eof"
		}
		inMsg = true
		msg = append(msg, b[hl:hl+int(n)]...)
		b = b[hl+int(n):]
		if fin {
			msgs = append(msgs, msg)
			msg, inMsg = nil, false
		}
	}
}
