// Copyright 2026 The Petrel Authors
// SPDX-License-Identifier: Apache-2.0

package gateway

import (
	"encoding/binary"
	"errors"
	"fmt"
	"math/bits"
	"net"
	"sync"

	"google.golang.org/protobuf/encoding/protowire"

	pb "github.com/petrelchat/petrel/proto/petrel/v1"
	"github.com/petrelchat/petrel/third_party/nbio/nbhttp/websocket"
)

// The gateway reads its clients' WebSocket frames itself instead of through nbio's parser: nbio
// parses on the poller goroutine and queues every message, data or control, for the connection's
// executor without any bound, and only the queued job could count or refuse it. wsReader runs
// on the poller goroutine too, but it decides about each frame before anything is buffered or
// queued for it (admission.go): the declared size is charged against the connection's and the
// node's budget when the frame header arrives, the rate limit is applied when the frame is
// complete, and a frame past a budget closes the connection with a WebSocket close code instead
// of being queued. It also refuses what RFC 6455 requires a server to refuse (unmasked client
// frames, reserved bits and opcodes, fragmented or oversized control frames), which nbio accepts.

// WebSocket opcodes (RFC 6455 section 5.2).
const (
	opContinuation = 0x0
	opText         = 0x1
	opBinary       = 0x2
	opClose        = 0x8
	opPing         = 0x9
	opPong         = 0xa
)

// WebSocket close codes the reader sends (RFC 6455 section 7.4.1).
const (
	closeNormal          = 1000
	closeProtocolError   = 1002
	closePolicyViolation = 1008
	closeTooBig          = 1009
	closeTryAgainLater   = 1013
)

// frameOverhead is charged for every frame on top of its payload: the job, its closure and the
// bookkeeping of a queued frame, so that empty frames (pings) are not free.
const frameOverhead = 128

// maxHeaderLen is the longest client frame header: 2 bytes, a 64-bit length and the mask key.
const maxHeaderLen = 14

// wsReader parses one connection's client frames. Its fields belong to the poller goroutine that
// reads the connection: Parse is only ever called from there, one chunk at a time.
type wsReader struct {
	c   *conn
	wsc *websocket.Conn

	hdr  [maxHeaderLen]byte
	hdrN uint8 // header bytes read so far (at most maxHeaderLen)
	in   bool  // reading a frame's payload (else a header)

	op   byte
	fin  bool
	skip bool // the current frame is over max_frame_bytes: its payload is dropped
	dead bool // closed by the reader: everything after is discarded
	key  [4]byte

	left   int    // payload bytes of the current frame still to come
	off    int    // payload bytes of the current frame read so far (the mask phase)
	charge int64  // bytes charged for the current frame
	ctl    []byte // payload of the control frame being read

	msg       []byte // the data message being assembled (nil when none)
	msgCharge int64  // bytes charged for it so far
	msgOp     byte   // its opcode (text or binary)
}

// errReaderClosed ends parsing of a connection the reader has closed.
var errReaderClosed = errors.New("websocket: connection closed by the gateway")

// UnderlayerConn, Parse and CloseAndClean make wsReader the nbio session of an upgraded
// connection (nbhttp.ParserCloser), so nbio's own data handlers (TLS included) feed it plaintext.

// UnderlayerConn is the hijacked connection beneath the WebSocket.
func (r *wsReader) UnderlayerConn() net.Conn { return r.wsc.UnderlayerConn() }

// CloseAndClean runs when nbio closes the connection: it gives back every byte the connection
// still holds of the node's budget, then lets the WebSocket close (which calls onClose).
func (r *wsReader) CloseAndClean(err error) {
	r.c.releaseAll()
	r.wsc.CloseAndClean(err)
}

// Parse consumes one chunk of the connection's plaintext.
func (r *wsReader) Parse(data []byte) error {
	for len(data) > 0 {
		if r.dead {
			return errReaderClosed
		}
		if !r.in {
			n, ok := r.readHeader(data)
			data = data[n:]
			if !ok {
				continue // the header is incomplete (data is used up), or the connection closed
			}
			if r.left == 0 {
				r.frameDone()
			}
			continue
		}
		n := min(r.left, len(data))
		chunk := data[:n]
		data = data[n:]
		if r.skip {
			// an oversized message: dropped as it comes
		} else if r.op >= opClose {
			start := len(r.ctl)
			r.ctl = append(r.ctl, chunk...)
			unmask(r.ctl[start:], r.key, r.off)
		} else {
			start := len(r.msg)
			r.msg = append(r.msg, chunk...)
			unmask(r.msg[start:], r.key, r.off)
		}
		r.off += n
		r.left -= n
		if r.left == 0 {
			r.frameDone()
		}
	}
	if r.dead {
		return errReaderClosed
	}
	return nil
}

// readHeader takes header bytes from data. It returns how many it used and whether a whole,
// valid, admitted header is now read (r.in is then set, unless the payload is empty).
func (r *wsReader) readHeader(data []byte) (int, bool) {
	used := 0
	for {
		want := 2
		if r.hdrN >= 2 {
			if r.hdr[1]&0x80 == 0 {
				r.fail(closeProtocolError, "client frames must be masked", "unmasked")
				return used, false
			}
			switch r.hdr[1] & 0x7f {
			case 126:
				want = 8
			case 127:
				want = 14
			default:
				want = 6
			}
		}
		if int(r.hdrN) == want {
			break
		}
		if used == len(data) {
			return used, false
		}
		n := copy(r.hdr[r.hdrN:want], data[used:])
		r.hdrN += uint8(n) // n <= want-hdrN <= maxHeaderLen
		used += n
	}
	h := r.hdr[:r.hdrN]
	r.hdrN = 0
	fin, rsv, op := h[0]&0x80 != 0, h[0]&0x70, h[0]&0x0f
	var length uint64
	switch h[1] & 0x7f {
	case 126:
		length = uint64(binary.BigEndian.Uint16(h[2:4]))
	case 127:
		length = binary.BigEndian.Uint64(h[2:10])
	default:
		length = uint64(h[1] & 0x7f)
	}
	copy(r.key[:], h[len(h)-4:])
	switch {
	case rsv != 0:
		r.fail(closeProtocolError, "reserved bits set (no extension was negotiated)", "protocol")
		return used, false
	case op >= opClose && op <= opPong:
		if !fin || length > 125 {
			r.fail(closeProtocolError, "control frames must be final and at most 125 bytes", "protocol")
			return used, false
		}
	case op == opContinuation:
		if r.msg == nil {
			r.fail(closeProtocolError, "continuation frame without a message", "protocol")
			return used, false
		}
	case op == opText || op == opBinary:
		if r.msg != nil {
			r.fail(closeProtocolError, "new message before the last one was finished", "protocol")
			return used, false
		}
	default:
		r.fail(closeProtocolError, "reserved opcode", "protocol")
		return used, false
	}
	limit := uint64(r.c.g.cfg.MaxFrameBytes)
	if op < opClose && (length > limit || uint64(len(r.msg))+length > limit) {
		if op == opContinuation || !fin || length > 2*limit {
			r.fail(closeTooBig, "frame larger than max_frame_bytes", "too_large")
			return used, false
		}
		// A whole message a little over the limit is skipped, not buffered, and answered
		// FRAME_TOO_LARGE; the connection stays.
		r.op, r.fin, r.left, r.off, r.charge, r.skip = op, fin, int(length), 0, 0, true
		r.in = true
		return used, true
	}
	charge := int64(length)
	if op == opText || op == opBinary {
		// A message's first frame gets its buffer from a pool (msgBufCap): charged as allocated.
		charge = int64(msgBufCap(int(length))) + frameOverhead
	} else if op != opContinuation {
		charge += frameOverhead
	}
	if reason := r.c.charge(charge); reason != "" {
		r.refuse(reason)
		return used, false
	}
	r.op, r.fin, r.left, r.off, r.charge = op, fin, int(length), 0, charge
	switch {
	case op >= opClose:
		r.ctl = r.ctl[:0]
	case op == opContinuation:
		r.msgCharge += charge
	default:
		r.msgOp, r.msgCharge = op, charge
		r.msg = getMsgBuf(int(length)) // non-nil: a message is open, even if empty
	}
	r.in = r.left > 0
	return used, true
}

// frameDone acts on a frame whose payload is complete.
func (r *wsReader) frameDone() {
	r.in = false
	c := r.c
	if c.state.Load() == stateAuthed {
		// The client is alive: its idle deadline moves on as the frame is read, not when it is
		// handled. A frame may wait behind its connection's earlier one (nbio runs them in order,
		// and one may wait on the store), and a node slowed by its own dependencies must not
		// close, as idle, clients that keep talking to it.
		c.deadline.Store(c.g.clock() + int64(c.g.cfg.IdleTimeout))
	}
	switch r.op {
	case opClose:
		c.release(r.charge)
		code := closeNormal
		if len(r.ctl) >= 2 {
			code = int(binary.BigEndian.Uint16(r.ctl))
		}
		_ = r.wsc.WriteClose(code, "")
		r.dead = true
		_ = r.wsc.Close()
	case opPing, opPong:
		c.release(r.charge)
		if !c.allow() {
			c.g.metrics.rateLimited.WithLabelValues("control").Inc()
			r.checkDebt()
			return
		}
		if r.op == opPing {
			_ = r.wsc.WriteMessage(websocket.PongMessage, r.ctl)
		}
	default:
		if r.skip {
			r.skip = false
			r.dispatchTooLarge()
			return
		}
		if !r.fin {
			return // more fragments to come
		}
		msg, op, charge := r.msg, r.msgOp, r.msgCharge
		r.msg, r.msgOp, r.msgCharge = nil, 0, 0
		r.dispatch(op, msg, charge)
	}
}

// dispatch queues a complete data message for the connection's executor, unless a budget or the
// rate limit refuses it.
func (r *wsReader) dispatch(op byte, msg []byte, charge int64) {
	c := r.c
	authed := c.state.Load() == stateAuthed
	limit := c.g.cfg.PreauthQueuedFrames
	if authed {
		limit = c.g.cfg.QueuedFrames
	}
	if c.queued.Add(1) > int32(limit) {
		c.queued.Add(-1)
		c.release(charge)
		r.refuse("conn_frames")
		return
	}
	if !c.allow() {
		id, field := peekFrame(msg)
		if !(authed && field == fieldDeliverAck) { // acks free the server's storage: never dropped
			c.release(charge)
			c.g.metrics.rateLimited.WithLabelValues("data").Inc()
			if r.checkDebt() {
				c.queued.Add(-1)
				return
			}
			if !r.wsc.Execute(func() { defer c.queued.Add(-1); c.rateLimited(id) }) {
				c.queued.Add(-1)
			}
			return
		}
	}
	mt := websocket.BinaryMessage
	if op == opText {
		mt = websocket.TextMessage
	}
	if !r.wsc.Execute(func() {
		if !c.handle(mt, msg, charge) {
			c.finished(charge)
		}
		putMsgBuf(msg) // handle keeps nothing of it (see msgPools)
	}) {
		c.finished(charge)
		putMsgBuf(msg)
	}
}

// Message buffers. A data message is read into a buffer from the pool of its size class and given
// back once handle has returned: handle keeps nothing of the bytes (the Send fast path's views end
// with the send's resolution, which copies what it keeps into the envelopes it builds; every
// other frame is decoded, which copies). Reading each message into a new buffer was a fifth of
// the bytes a relayed message allocated, and collections are what make the slowest messages wait.
// A message is charged its buffer's capacity (admission.go), so the pools hold no memory the
// budgets do not count; a message larger than the largest class, or assembled from fragments,
// gets a buffer of its own.
var msgClasses = [...]int{128, 512, 2048, 8192}

var msgPools [len(msgClasses)]sync.Pool

// msgBufCap is the capacity of the buffer getMsgBuf gives for a message of n bytes.
func msgBufCap(n int) int {
	for _, c := range msgClasses {
		if n <= c {
			return c
		}
	}
	return n
}

// getMsgBuf returns an empty buffer of capacity msgBufCap(n).
func getMsgBuf(n int) []byte {
	for i, c := range msgClasses {
		if n <= c {
			if p, ok := msgPools[i].Get().(*[]byte); ok {
				return (*p)[:0]
			}
			return make([]byte, 0, c)
		}
	}
	return make([]byte, 0, n)
}

// putMsgBuf gives b back to its pool (a buffer of no class's capacity is left to the collector).
// Race builds (every test run) overwrite it first, so that a view of a message kept past its
// handling reads garbage and fails its test instead of passing by luck.
func putMsgBuf(b []byte) {
	for i, c := range msgClasses {
		if cap(b) == c {
			if poisonPooled {
				p := b[:c]
				for j := range p {
					p[j] = 0xa5
				}
			}
			b = b[:0]
			msgPools[i].Put(&b)
			return
		}
	}
}

// dispatchTooLarge answers a skipped oversized message (the answer is queued like a frame, and
// rate-limited like one).
func (r *wsReader) dispatchTooLarge() {
	c := r.c
	limit := c.g.cfg.PreauthQueuedFrames
	if c.state.Load() == stateAuthed {
		limit = c.g.cfg.QueuedFrames
	}
	if c.queued.Add(1) > int32(limit) {
		c.queued.Add(-1)
		r.refuse("conn_frames")
		return
	}
	if !c.allow() {
		c.g.metrics.rateLimited.WithLabelValues("data").Inc()
		c.queued.Add(-1)
		r.checkDebt()
		return
	}
	if !r.wsc.Execute(func() {
		defer c.queued.Add(-1)
		if c.state.Load() != stateClosed {
			c.fail(0, pb.ErrorCode_ERROR_CODE_FRAME_TOO_LARGE, fmt.Sprintf("frame larger than %d bytes", c.g.cfg.MaxFrameBytes))
		}
	}) {
		c.queued.Add(-1)
	}
}

// checkDebt closes a connection that has gone on sending far past its rate; true if it did.
func (r *wsReader) checkDebt() bool {
	if r.c.tokens >= -float64(max(r.c.g.cfg.FrameBurst, minRateDebt)) {
		return false
	}
	r.fail(closePolicyViolation, "rate limit exceeded", "rate")
	return true
}

// refuse closes the connection for a budget it went over.
func (r *wsReader) refuse(reason string) {
	switch reason {
	case "closed":
		r.dead = true
	case "node_bytes":
		r.fail(closeTryAgainLater, "server busy: try again later", reason)
	case "conn_bytes", "conn_frames":
		r.fail(closePolicyViolation, "too much unprocessed input: slow down", reason)
	default:
		r.fail(closePolicyViolation, reason, reason)
	}
}

// fail closes the connection with a close frame, counting reason. What the connection holds of
// the budgets is given back when nbio reports the close (CloseAndClean).
func (r *wsReader) fail(code int, text, reason string) {
	if r.dead {
		return
	}
	r.dead = true
	r.msg, r.ctl = nil, nil
	r.c.g.metrics.inboundClosed.WithLabelValues(reason).Inc()
	_ = r.wsc.WriteClose(code, text)
	_ = r.wsc.Close()
}

// fieldDeliverAck is the Frame field number of DeliverAck.
const fieldDeliverAck = 43

// peekFrame reads a Frame's id and the field number of its body without decoding it (for frames
// refused by the rate limit: the answer carries the request's id). Zeroes if it cannot tell.
func peekFrame(b []byte) (id uint64, body protowire.Number) {
	for len(b) > 0 {
		num, typ, n := protowire.ConsumeTag(b)
		if n < 0 {
			return id, 0
		}
		b = b[n:]
		if num == 1 && typ == protowire.VarintType {
			v, m := protowire.ConsumeVarint(b)
			if m < 0 {
				return id, 0
			}
			id, b = v, b[m:]
			continue
		}
		if typ == protowire.BytesType && num >= 2 {
			body = num
		}
		m := protowire.ConsumeFieldValue(num, typ, b)
		if m < 0 {
			return id, body
		}
		b = b[m:]
	}
	return id, body
}

// rateLimited answers a request refused by the rate limit with its own id, so the client's
// request completes and can be retried.
func (c *conn) rateLimited(id uint64) {
	if c.state.Load() == stateClosed {
		return
	}
	c.g.metrics.rejected.WithLabelValues("rate_limited").Inc()
	c.write(&pb.Frame{Id: id, Body: &pb.Frame_Error{Error: &pb.Error{
		Code: pb.ErrorCode_ERROR_CODE_RATE_LIMITED, Message: "too many frames", RetryAfterMs: 1000,
	}}})
}

// unmask XORs b with the mask key, b starting at offset off of the frame's payload.
func unmask(b []byte, key [4]byte, off int) {
	k := binary.LittleEndian.Uint32(key[:])
	k = bits.RotateLeft32(k, -8*(off&3))
	k64 := uint64(k) | uint64(k)<<32
	for len(b) >= 8 {
		binary.LittleEndian.PutUint64(b, binary.LittleEndian.Uint64(b)^k64)
		b = b[8:]
	}
	for i := range b {
		b[i] ^= byte(k >> (8 * (i & 3)))
	}
}
