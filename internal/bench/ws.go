// Copyright 2026 The Petrel Authors
// SPDX-License-Identifier: Apache-2.0

package bench

import (
	"bufio"
	"bytes"
	"crypto/sha1"
	"encoding/base64"
	"encoding/binary"
	"errors"
	"fmt"
	"io"
	"math/rand/v2"
	"net/url"
	"slices"
	"strconv"
	"strings"

	pb "github.com/petrelchat/petrel/proto/petrel/v1"
)

// The generator's WebSocket client: just enough of RFC 6455 for the bench, written for a low CPU
// cost per connection and per frame, since the generator shares the cores with the server it
// measures. It speaks to one server (ours): no extensions, no compression, binary messages only.
//
// Client → server frames are always final and masked:
//
//	byte 0: FIN | opcode     byte 1: MASK | len7 (126: 16-bit length follows, 127: 64-bit)
//	[extended length, big endian] 4B mask key, payload XOR key
//
// Server → client frames are unmasked; data messages may be fragmented, and control frames (ping,
// pong, close; at most 125 bytes, never fragmented) may arrive between the fragments.

// Frame opcodes.
const (
	opContinuation byte = 0x0
	opText         byte = 0x1
	opBinary       byte = 0x2
	opClose        byte = 0x8
	opPing         byte = 0x9
	opPong         byte = 0xA
)

// Close status codes the client sends.
const (
	closeNormal     = 1000
	closeProtocol   = 1002
	closeTooLarge   = 1009
	maxControlBytes = 125
)

// maxClientHeader is the largest header of a client frame: 2 + 8 (length) + 4 (mask key).
const maxClientHeader = 14

// wsGUID is appended to Sec-WebSocket-Key to form Sec-WebSocket-Accept.
const wsGUID = "258EAFA5-E914-47DA-95CA-C5AB0DC85B11"

// maxResponseHead bounds the upgrade response's status line and headers.
const maxResponseHead = 16 << 10

// readBufferSize is the connection's read buffer: a message that fits is handed to the handler
// without a copy, and one read system call takes in every frame that has arrived. It must hold
// the largest control frame (10 + 125 bytes).
const readBufferSize = 4 << 10

var (
	errWSProtocol = errors.New("websocket protocol violation")
	errTooLarge   = errors.New("websocket message exceeds the read limit")
)

// closeError is a close frame received from the server.
type closeError struct {
	code   int // 1005 when the frame carried no status
	reason string
}

func (e *closeError) Error() string {
	return fmt.Sprintf("websocket closed by the server: status %d %q", e.code, e.reason)
}

// appendClientFrame appends a final, masked frame with opcode op and the given payload.
func appendClientFrame(b []byte, op byte, payload []byte, key uint32) []byte {
	n := len(payload)
	switch {
	case n < 126:
		b = append(b, 0x80|op, 0x80|byte(n))
	case n <= 0xffff:
		b = append(b, 0x80|op, 0x80|126)
		b = binary.BigEndian.AppendUint16(b, uint16(n))
	default:
		b = append(b, 0x80|op, 0x80|127)
		b = binary.BigEndian.AppendUint64(b, uint64(n))
	}
	b = binary.LittleEndian.AppendUint32(b, key)
	start := len(b)
	b = append(b, payload...)
	maskBytes(key, b[start:])
	return b
}

// maskBytes XORs b with the mask key (its little-endian bytes are the key's byte order on the
// wire), 8 bytes at a time. b must start at a payload's first byte.
func maskBytes(key uint32, b []byte) {
	k := uint64(key) | uint64(key)<<32
	for len(b) >= 8 {
		binary.LittleEndian.PutUint64(b, binary.LittleEndian.Uint64(b)^k)
		b = b[8:]
	}
	if len(b) >= 4 {
		binary.LittleEndian.PutUint32(b, binary.LittleEndian.Uint32(b)^key)
		b = b[4:]
	}
	for i := range b {
		b[i] ^= byte(key >> (8 * i))
	}
}

// closePayload is the body of a close frame with status code and no reason.
func closePayload(code int) [2]byte {
	return [2]byte{byte(code >> 8), byte(code)}
}

// frameReader reads the frames a server sends and returns whole data messages. Control frames
// are handled on the way: ping goes to onPing (which answers with a pong), pong is ignored, close
// ends the stream with a *closeError.
type frameReader struct {
	br     *bufio.Reader
	limit  int                        // largest data message accepted, in bytes
	onPing func(payload []byte) error // payload valid during the call only

	skip int     // bytes of the returned message still in br, skipped by release
	asm  *[]byte // pooled buffer holding a fragmented or large message, or nil
}

// next returns the next data message (its opcode and payload). The payload stays valid until
// release or the next call to next.
func (r *frameReader) next() (op byte, payload []byte, err error) {
	r.release()
	for {
		h, err := r.br.Peek(2)
		if err != nil {
			return 0, nil, r.eof(err)
		}
		fin, fop := h[0]&0x80 != 0, h[0]&0x0f
		if h[0]&0x70 != 0 || h[1]&0x80 != 0 { // reserved bits (no extension) or a masked frame
			return 0, nil, errWSProtocol
		}
		hl, n := 2, uint64(h[1]&0x7f)
		switch n {
		case 126:
			hl = 4
		case 127:
			hl = 10
		}
		if hl > 2 {
			if h, err = r.br.Peek(hl); err != nil {
				return 0, nil, r.eof(err)
			}
			if hl == 4 {
				n = uint64(binary.BigEndian.Uint16(h[2:]))
			} else {
				n = binary.BigEndian.Uint64(h[2:])
			}
		}
		if fop >= opClose {
			if !fin || n > maxControlBytes || fop > opPong {
				return 0, nil, errWSProtocol
			}
			h, err := r.br.Peek(hl + int(n))
			if err != nil {
				return 0, nil, r.eof(err)
			}
			p := h[hl:]
			switch fop {
			case opClose:
				return 0, nil, parseClose(p)
			case opPing:
				if r.onPing != nil {
					if err := r.onPing(p); err != nil {
						return 0, nil, err
					}
				}
			}
			_, _ = r.br.Discard(hl + int(n))
			continue
		}
		switch {
		case fop == opContinuation && op == 0, fop != opContinuation && op != 0, fop > opBinary:
			return 0, nil, errWSProtocol // continuation outside a message, unfinished message, unknown opcode
		}
		held := 0
		if r.asm != nil {
			held = len(*r.asm)
		}
		if n > uint64(r.limit-held) {
			return 0, nil, errTooLarge
		}
		if op == 0 {
			op = fop
		}
		if fin && r.asm == nil && hl+int(n) <= r.br.Size() {
			// The common case: a whole message that fits the buffer is returned in place.
			h, err := r.br.Peek(hl + int(n))
			if err != nil {
				return 0, nil, r.eof(err)
			}
			r.skip = hl + int(n)
			return op, h[hl:], nil
		}
		if r.asm == nil {
			r.asm = bufPool.Get().(*[]byte)
			*r.asm = (*r.asm)[:0]
		}
		_, _ = r.br.Discard(hl)
		b := slices.Grow(*r.asm, int(n))
		_, err = io.ReadFull(r.br, b[len(b):len(b)+int(n)])
		*r.asm = b[:len(b)+int(n)]
		if err != nil {
			return 0, nil, r.eof(err)
		}
		if fin {
			return op, *r.asm, nil
		}
	}
}

// release gives back the message last returned by next.
func (r *frameReader) release() {
	if r.skip > 0 {
		_, _ = r.br.Discard(r.skip)
		r.skip = 0
	}
	if r.asm != nil {
		if cap(*r.asm) <= readLimit/4 { // keep the pool's buffers small
			*r.asm = (*r.asm)[:0]
			bufPool.Put(r.asm)
		}
		r.asm = nil
	}
}

// eof turns an end of stream inside a frame into io.ErrUnexpectedEOF.
func (r *frameReader) eof(err error) error {
	if err == io.EOF && (r.br.Buffered() > 0 || r.asm != nil) {
		return io.ErrUnexpectedEOF
	}
	return err
}

func parseClose(p []byte) error {
	switch len(p) {
	case 0:
		return &closeError{code: 1005}
	case 1:
		return errWSProtocol
	}
	return &closeError{code: int(binary.BigEndian.Uint16(p)), reason: string(p[2:])}
}

// wsTarget is where a server's WebSocket endpoint is, parsed once per dialer.
type wsTarget struct {
	addr       string // host:port to dial
	serverName string // TLS server name; "" for ws://
	request    []byte // the upgrade request up to (not including) Sec-WebSocket-Key
}

// parseTarget turns a server base URL (http:// or https://, as the bench config requires) into
// its WebSocket endpoint.
func parseTarget(server string) (*wsTarget, error) {
	u, err := url.Parse(strings.TrimRight(server, "/"))
	if err != nil {
		return nil, err
	}
	t := &wsTarget{addr: u.Host}
	port := "80"
	switch u.Scheme {
	case "http", "ws":
	case "https", "wss":
		port, t.serverName = "443", u.Hostname()
	default:
		return nil, fmt.Errorf("server %q: want http:// or https://", server)
	}
	if u.Host == "" {
		return nil, fmt.Errorf("server %q: no host", server)
	}
	if u.Port() == "" {
		t.addr = u.Host + ":" + port
		if strings.Contains(u.Hostname(), ":") { // a bare IPv6 literal
			t.addr = "[" + u.Hostname() + "]:" + port
		}
	}
	t.request = []byte("GET " + u.EscapedPath() + pb.ConnectPath + " HTTP/1.1\r\n" +
		"Host: " + u.Host + "\r\n" +
		"Upgrade: websocket\r\n" +
		"Connection: Upgrade\r\n" +
		"Sec-WebSocket-Version: 13\r\n" +
		"Sec-WebSocket-Protocol: " + pb.Subprotocol + "\r\n")
	return t, nil
}

// newWSKey returns a fresh Sec-WebSocket-Key (16 random bytes, base64) and the
// Sec-WebSocket-Accept the server must answer with.
func newWSKey() (key [24]byte, accept [28]byte) {
	var nonce [16]byte
	binary.LittleEndian.PutUint64(nonce[:8], rand.Uint64())
	binary.LittleEndian.PutUint64(nonce[8:], rand.Uint64())
	base64.StdEncoding.Encode(key[:], nonce[:])
	return key, wsAccept(key[:])
}

// wsAccept is the Sec-WebSocket-Accept for key: base64(SHA-1(key + wsGUID)).
func wsAccept(key []byte) (accept [28]byte) {
	h := sha1.New()
	h.Write(key)
	h.Write([]byte(wsGUID))
	var sum [sha1.Size]byte
	base64.StdEncoding.Encode(accept[:], h.Sum(sum[:0]))
	return accept
}

// appendUpgrade appends t's upgrade request with the given key.
func appendUpgrade(b []byte, t *wsTarget, key []byte) []byte {
	b = append(b, t.request...)
	b = append(b, "Sec-WebSocket-Key: "...)
	b = append(b, key...)
	return append(b, "\r\n\r\n"...)
}

// upgradeResponse is what the client checks in the server's answer to the upgrade request.
type upgradeResponse struct {
	status     int
	retryAfter int // Retry-After in seconds, 0 when absent or not a number
	upgrade    bool
	connection bool
	acceptOK   bool
	protocol   string // Sec-WebSocket-Protocol
	extensions bool   // the server chose an extension (we offered none)
}

// readUpgradeResponse reads the response head from br (at most maxResponseHead bytes) and checks
// it against the expected Sec-WebSocket-Accept. It leaves any bytes after the head (the first
// frames) in br.
func readUpgradeResponse(br *bufio.Reader, accept []byte) (upgradeResponse, error) {
	var resp upgradeResponse
	total := 0
	for first := true; ; first = false {
		line, err := br.ReadSlice('\n')
		total += len(line)
		if err == bufio.ErrBufferFull || total > maxResponseHead {
			return resp, errors.New("upgrade response head too large")
		}
		if err != nil {
			if err == io.EOF {
				err = io.ErrUnexpectedEOF
			}
			return resp, fmt.Errorf("reading the upgrade response: %w", err)
		}
		line = bytes.TrimRight(line, "\r\n")
		if first {
			// HTTP/1.1 101 Switching Protocols
			proto, rest, _ := bytes.Cut(line, []byte(" "))
			code, _, _ := bytes.Cut(rest, []byte(" "))
			if !bytes.HasPrefix(proto, []byte("HTTP/1.")) || len(code) != 3 {
				return resp, fmt.Errorf("malformed status line %q", line)
			}
			c, err := strconv.Atoi(string(code))
			if err != nil || c < 100 {
				return resp, fmt.Errorf("malformed status line %q", line)
			}
			resp.status = c
			continue
		}
		if len(line) == 0 {
			return resp, nil
		}
		name, value, ok := bytes.Cut(line, []byte(":"))
		if !ok {
			return resp, fmt.Errorf("malformed header line %q", line)
		}
		value = bytes.TrimSpace(value)
		switch {
		case asciiEqualFold(name, "Upgrade"):
			resp.upgrade = asciiEqualFold(value, "websocket")
		case asciiEqualFold(name, "Connection"):
			for tok := range bytes.SplitSeq(value, []byte(",")) {
				if asciiEqualFold(bytes.TrimSpace(tok), "upgrade") {
					resp.connection = true
				}
			}
		case asciiEqualFold(name, "Sec-WebSocket-Accept"):
			resp.acceptOK = bytes.Equal(value, accept)
		case asciiEqualFold(name, "Sec-WebSocket-Protocol"):
			resp.protocol = pb.Subprotocol // no allocation for the expected answer
			if string(value) != pb.Subprotocol {
				resp.protocol = string(value)
			}
		case asciiEqualFold(name, "Sec-WebSocket-Extensions"):
			resp.extensions = len(value) > 0
		case asciiEqualFold(name, "Retry-After"):
			if s, err := strconv.Atoi(string(value)); err == nil && s > 0 {
				resp.retryAfter = s
			}
		}
	}
}

// asciiEqualFold reports whether b equals s, ignoring ASCII case.
func asciiEqualFold(b []byte, s string) bool {
	if len(b) != len(s) {
		return false
	}
	for i := range b {
		x, y := b[i], s[i]
		if 'A' <= x && x <= 'Z' {
			x += 'a' - 'A'
		}
		if 'A' <= y && y <= 'Z' {
			y += 'a' - 'A'
		}
		if x != y {
			return false
		}
	}
	return true
}
