// Copyright 2026 The Petrel Authors
// SPDX-License-Identifier: Apache-2.0

package bench

import (
	"encoding/binary"
	"strconv"

	"google.golang.org/protobuf/encoding/protowire"

	pb "github.com/petrelchat/petrel/proto/petrel/v1"
)

// The attack scenario's wire builders: frames and HTTP requests a well-behaved client never sends
// (unmasked frames, ping floods, oversized Auth frames, half request heads, bodies larger than any
// endpoint takes). Each builder writes exactly what goes on the wire, so a test can check it byte
// by byte.

// appendUnmaskedFrame appends a final frame with opcode op that lacks the mask bit, which RFC 6455
// (section 5.1) requires of every client frame: a server must close the connection.
func appendUnmaskedFrame(b []byte, op byte, payload []byte) []byte {
	n := len(payload)
	switch {
	case n < 126:
		b = append(b, 0x80|op, byte(n))
	case n <= 0xffff:
		b = append(b, 0x80|op, 126)
		b = binary.BigEndian.AppendUint16(b, uint16(n))
	default:
		b = append(b, 0x80|op, 127)
		b = binary.BigEndian.AppendUint64(b, uint64(n))
	}
	return append(b, payload...)
}

// appendPingControl appends a masked WebSocket ping control frame with a payload of n bytes
// (0..125). A server answers each with a pong.
func appendPingControl(b []byte, n int, key uint32) []byte {
	var p [maxControlBytes]byte
	for i := range p {
		p[i] = 'p'
	}
	n = max(0, min(n, maxControlBytes))
	return appendClientFrame(b, opPing, p[:n], key)
}

// appendGetBundle encodes Frame{id, GetBundle{name}}.
func appendGetBundle(b []byte, id uint64, name string) []byte {
	body := protowire.SizeTag(1) + protowire.SizeBytes(len(name))
	b = protowire.AppendTag(b, 1, protowire.VarintType)
	b = protowire.AppendVarint(b, id)
	b = protowire.AppendTag(b, 44, protowire.BytesType)
	b = protowire.AppendVarint(b, uint64(body))
	b = protowire.AppendTag(b, 1, protowire.BytesType)
	return protowire.AppendString(b, name)
}

// appendBigAuth encodes Frame{id, Auth{device_id, signature}} whose signature is padded so that
// the encoded frame is size bytes long (or as short as it can be when size is smaller). The
// signature is junk: the server refuses it, after reading and decoding the whole frame.
func appendBigAuth(b []byte, id uint64, deviceID string, size int) []byte {
	fixed := func(sig int) int {
		auth := protowire.SizeTag(1) + protowire.SizeBytes(len(deviceID)) + protowire.SizeTag(2) + protowire.SizeBytes(sig)
		return protowire.SizeTag(1) + protowire.SizeVarint(id) + protowire.SizeTag(41) + protowire.SizeBytes(auth)
	}
	sig := max(0, size-fixed(0))
	for sig > 0 && fixed(sig) > size { // varint lengths grow with the signature
		sig--
	}
	auth := protowire.SizeTag(1) + protowire.SizeBytes(len(deviceID)) + protowire.SizeTag(2) + protowire.SizeBytes(sig)
	b = protowire.AppendTag(b, 1, protowire.VarintType)
	b = protowire.AppendVarint(b, id)
	b = protowire.AppendTag(b, 41, protowire.BytesType)
	b = protowire.AppendVarint(b, uint64(auth))
	b = protowire.AppendTag(b, 1, protowire.BytesType)
	b = protowire.AppendString(b, deviceID)
	b = protowire.AppendTag(b, 2, protowire.BytesType)
	b = protowire.AppendVarint(b, uint64(sig))
	for range sig {
		b = append(b, 's')
	}
	return b
}

// halfHeader is the start of a WebSocket upgrade request that never ends: the request line and
// some header lines, without the blank line that closes the head.
func halfHeader(t *wsTarget) []byte {
	return []byte("GET " + pb.ConnectPath + " HTTP/1.1\r\n" +
		"Host: " + hostOf(t) + "\r\n" +
		"Upgrade: websocket\r\n")
}

// trickleLine is one more header line of a request head that never ends (sent now and then to
// keep the socket from looking idle).
func trickleLine(i int) []byte {
	return []byte("X-Petrel-Slow-" + strconv.Itoa(i) + ": 1\r\n")
}

// postHead is the head of a POST to path whose body is length bytes long.
func postHead(t *wsTarget, path string, length int64) []byte {
	return []byte("POST " + path + " HTTP/1.1\r\n" +
		"Host: " + hostOf(t) + "\r\n" +
		"Content-Type: application/octet-stream\r\n" +
		"Content-Length: " + strconv.FormatInt(length, 10) + "\r\n" +
		"\r\n")
}

// hostOf is the Host header for t (host:port).
func hostOf(t *wsTarget) string { return t.addr }
