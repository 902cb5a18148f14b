// Copyright 2026 The Petrel Authors
// SPDX-License-Identifier: Apache-2.0

package bench

import (
	"bufio"
	"context"
	"crypto/ed25519"
	"crypto/tls"
	"errors"
	"fmt"
	"io"
	"math/rand/v2"
	"net"
	"os"
	"strconv"
	"sync"
	"sync/atomic"
	"syscall"
	"time"

	"google.golang.org/protobuf/encoding/protowire"
	"google.golang.org/protobuf/proto"

	pb "github.com/petrelchat/petrel/proto/petrel/v1"
)

// Frame body field numbers (petrel.proto) that the generator reads on its hot paths.
const (
	kWelcome    protowire.Number = 11
	kError      protowire.Number = 12
	kDeliver    protowire.Number = 13
	kQueueEmpty protowire.Number = 14
	kGoAway     protowire.Number = 15
	kSendResult protowire.Number = 16
	kPong       protowire.Number = 19
)

// readLimit bounds one frame read from the server (its own default limit is 256 KiB).
const readLimit = 1 << 20

// corkMax bounds the writes gathered during one read burst.
const corkMax = 64 << 10

// corkConn is the connection under one WebSocket, and the WebSocket's writer. Once its reader
// loop runs (burst mode), frames written while the reader handles what it has read are gathered
// and sent in one system call right before the reader waits for more bytes; onIdle runs at that
// moment too (receivers write their batched DeliverAck there). Writes at any other time go
// straight out. Writers may be on any goroutine.
type corkConn struct {
	net.Conn
	burst  atomic.Bool
	onIdle func() // set before the reader loop starts; runs on the reader goroutine

	mu     sync.Mutex // guards corked, buf, werr
	corked bool
	buf    []byte // frames not yet written: gathered (corked) or being written
	werr   error
	// lastWrite is when a write to the socket last completed (Unix ns; 0: none yet): what the
	// idle scenario reports for a connection the server closed (how long it had been silent).
	lastWrite atomic.Int64
}

func (c *corkConn) Read(p []byte) (int, error) {
	burst := c.burst.Load()
	if burst {
		if c.onIdle != nil {
			c.onIdle()
		}
		c.mu.Lock()
		c.corked = false
		err := c.flushLocked()
		c.mu.Unlock()
		if err != nil {
			return 0, err
		}
	}
	n, err := c.Conn.Read(p)
	if burst && n > 0 {
		c.mu.Lock()
		c.corked = true
		c.mu.Unlock()
	}
	return n, err
}

// Write writes p as is (the upgrade request); frames go through writeFrame.
func (c *corkConn) Write(p []byte) (int, error) {
	c.mu.Lock()
	defer c.mu.Unlock()
	if err := c.flushLocked(); err != nil {
		return 0, err
	}
	n, err := c.Conn.Write(p)
	if err != nil {
		c.werr = err
	} else {
		c.lastWrite.Store(time.Now().UnixNano())
	}
	return n, err
}

// writeFrame masks and writes one final frame, or gathers it while corked. flush sends it (and
// what was gathered) now, corked or not.
func (c *corkConn) writeFrame(op byte, payload []byte, flush bool) error {
	c.mu.Lock()
	defer c.mu.Unlock()
	if c.werr != nil {
		return c.werr
	}
	if len(c.buf)+maxClientHeader+len(payload) > corkMax {
		if err := c.flushLocked(); err != nil {
			return err
		}
	}
	c.buf = appendClientFrame(c.buf, op, payload, rand.Uint32())
	if c.corked && !flush && len(c.buf) <= corkMax {
		return nil
	}
	return c.flushLocked()
}

// writeFailed reports whether a write on this connection has failed: nothing more can be sent.
func (c *corkConn) writeFailed() bool {
	c.mu.Lock()
	defer c.mu.Unlock()
	return c.werr != nil
}

func (c *corkConn) flushLocked() error {
	if c.werr != nil || len(c.buf) == 0 {
		return c.werr
	}
	_, err := c.Conn.Write(c.buf)
	if err == nil {
		c.lastWrite.Store(time.Now().UnixNano())
	}
	c.buf = c.buf[:0]
	if cap(c.buf) > corkMax+maxClientHeader { // one large frame: do not keep its buffer
		c.buf = nil
	}
	if err != nil {
		c.werr = err
	}
	return err
}

// dialer opens authenticated device connections from one source address.
type dialer struct {
	nd      *net.Dialer
	retries int
	timeout time.Duration
	targets sync.Map // server base URL → *wsTarget
	// tlsConfig is the base TLS configuration for https:// servers; nil uses the system roots.
	tlsConfig *tls.Config
}

func newDialer(sourceIP string, retries int, timeout time.Duration) *dialer {
	nd := &net.Dialer{Timeout: timeout, KeepAlive: -1}
	if sourceIP != "" {
		nd.LocalAddr = &net.TCPAddr{IP: net.ParseIP(sourceIP)}
		nd.Control = bindNoPort // the port is picked at connect: see bindport_linux.go
	}
	return &dialer{nd: nd, retries: retries, timeout: timeout}
}

// withRetries returns a dialer like d that retries n times.
func (d *dialer) withRetries(n int) *dialer {
	return &dialer{nd: d.nd, retries: n, timeout: d.timeout, tlsConfig: d.tlsConfig}
}

func (d *dialer) target(server string) (*wsTarget, error) {
	if t, ok := d.targets.Load(server); ok {
		return t.(*wsTarget), nil
	}
	t, err := parseTarget(server)
	if err != nil {
		return nil, err
	}
	d.targets.Store(server, t)
	return t, nil
}

// wsConn is one authenticated device connection.
type wsConn struct {
	cc      *corkConn
	r       frameReader // used by the handshake, then by the reader loop only
	acct    *account
	local   string // source IP
	welcome *pb.Welcome
	nextID  atomic.Uint64 // request ids; 1 was the Auth
	// user is the scenario's index for this connection (relay: the pair).
	user int
	// pingSlot is 1 + the index of this connection in a ping sample (0: not sampled).
	pingSlot atomic.Int32

	closing atomic.Bool
	done    chan struct{} // closed when the reader loop ends
	err     error         // why the reader loop ended; read after done
}

// connectError is a failed connection attempt, with a short reason for the report.
type connectError struct {
	reason     string
	retryable  bool
	retryAfter time.Duration
	err        error
}

func (e *connectError) Error() string { return e.reason + ": " + e.err.Error() }
func (e *connectError) Unwrap() error { return e.err }

// connect opens and authenticates a connection for a, retrying refusals that may pass (HTTP 503,
// refused or reset connections, UNAVAILABLE / RATE_LIMITED answers) up to d.retries times with
// jittered exponential backoff. Every failed attempt is counted in rep by reason.
func (d *dialer) connect(ctx context.Context, a *account, server string, rep *report) (*wsConn, error) {
	for attempt := 0; ; attempt++ {
		c, ce := d.connectOnce(ctx, a, server)
		if ce == nil {
			return c, nil
		}
		rep.fail(ce.reason, ce.err)
		if !ce.retryable || attempt >= d.retries || ctx.Err() != nil {
			return nil, ce
		}
		wait := min(2*time.Second, 100*time.Millisecond<<attempt)
		if ce.retryAfter > 0 {
			wait = min(ce.retryAfter, 5*time.Second)
		}
		wait = wait/2 + rand.N(wait/2+1)
		t := time.NewTimer(wait)
		select {
		case <-t.C:
		case <-ctx.Done():
			t.Stop()
			return nil, ce
		}
	}
}

func (d *dialer) connectOnce(ctx context.Context, a *account, server string) (*wsConn, *connectError) {
	t, err := d.target(server)
	if err != nil {
		return nil, &connectError{reason: "bad_url", err: err}
	}
	deadline := time.Now().Add(d.timeout)
	nc, err := d.nd.DialContext(ctx, "tcp", t.addr) // bounded by d.nd.Timeout
	if err != nil {
		if ctx.Err() != nil {
			err = ctx.Err()
		}
		return nil, netError(err)
	}
	// The deadline bounds the upgrade and the handshake; cancelling ctx cuts them short.
	_ = nc.SetDeadline(deadline)
	stop := context.AfterFunc(ctx, func() { _ = nc.SetDeadline(time.Unix(1, 0)) })
	c, ce := d.upgrade(ctx, nc, t, a)
	if !stop() && ce == nil { // the deadline may be in the past now
		ce = netError(ctx.Err())
	}
	if ce != nil {
		if ctx.Err() != nil && ce.reason == "timeout" {
			ce = netError(ctx.Err())
		}
		nc.Close()
		return nil, ce
	}
	_ = nc.SetDeadline(time.Time{})
	return c, nil
}

// upgrade runs the WebSocket upgrade on nc, then the Petrel handshake.
func (d *dialer) upgrade(ctx context.Context, nc net.Conn, t *wsTarget, a *account) (*wsConn, *connectError) {
	conn := nc
	if t.serverName != "" {
		cfg := &tls.Config{}
		if d.tlsConfig != nil {
			cfg = d.tlsConfig.Clone()
		}
		cfg.ServerName, cfg.NextProtos = t.serverName, []string{"http/1.1"}
		tc := tls.Client(nc, cfg)
		if err := tc.HandshakeContext(ctx); err != nil {
			return nil, netError(err)
		}
		conn = tc
	}
	cc := &corkConn{Conn: conn}
	key, accept := newWSKey()
	var req [512]byte
	if _, err := cc.Write(appendUpgrade(req[:0], t, key[:])); err != nil {
		return nil, netError(err)
	}
	br := bufio.NewReaderSize(cc, readBufferSize)
	resp, err := readUpgradeResponse(br, accept[:])
	if err != nil {
		ce := netError(err)
		if ce.reason == "error" {
			ce.reason, ce.retryable = "bad_handshake", false
		}
		return nil, ce
	}
	if resp.status != 101 {
		ce := &connectError{reason: "http_" + strconv.Itoa(resp.status), err: fmt.Errorf("upgrade refused: HTTP %d", resp.status)}
		if resp.status == 503 || resp.status == 429 {
			ce.retryable = true
			ce.retryAfter = time.Duration(resp.retryAfter) * time.Second
		}
		return nil, ce
	}
	switch {
	case !resp.upgrade || !resp.connection || !resp.acceptOK || resp.extensions:
		return nil, &connectError{reason: "bad_handshake", err: fmt.Errorf("invalid upgrade response (upgrade %v, connection %v, accept %v, extensions %v)",
			resp.upgrade, resp.connection, resp.acceptOK, resp.extensions)}
	case resp.protocol != pb.Subprotocol:
		return nil, &connectError{reason: "bad_subprotocol", err: fmt.Errorf("server chose subprotocol %q", resp.protocol)}
	}
	c := &wsConn{cc: cc, acct: a, done: make(chan struct{})}
	c.r = frameReader{br: br, limit: readLimit, onPing: c.pong}
	if la, ok := nc.LocalAddr().(*net.TCPAddr); ok {
		c.local = la.IP.String()
	}
	if ce := c.handshake(); ce != nil {
		return nil, ce
	}
	return c, nil
}

// handshake answers the Challenge with Auth and waits for Welcome.
func (c *wsConn) handshake() *connectError {
	f, ce := c.readProto()
	if ce != nil {
		return ce
	}
	ch := f.GetChallenge()
	if ch == nil || len(ch.GetNonce()) != pb.NonceSize {
		if e := f.GetError(); e != nil {
			return errorFrameFailure(e)
		}
		return &connectError{reason: "protocol", err: errors.New("first frame is not a Challenge")}
	}
	key := c.acct.key()
	auth := &pb.Frame{Id: 1, Body: &pb.Frame_Auth{Auth: &pb.Auth{
		DeviceId:  c.acct.DeviceID,
		Signature: ed25519.Sign(key, pb.AuthPayload(ch.GetNonce(), c.acct.DeviceID)),
	}}}
	b, _ := proto.Marshal(auth)
	if err := c.write(b); err != nil {
		return netError(err)
	}
	c.nextID.Store(1)
	for {
		f, ce := c.readProto()
		if ce != nil {
			return ce
		}
		if f.GetId() != 1 {
			continue
		}
		if w := f.GetWelcome(); w != nil {
			c.welcome = w
			return nil
		}
		if e := f.GetError(); e != nil {
			return errorFrameFailure(e)
		}
		return &connectError{reason: "protocol", err: fmt.Errorf("unexpected answer to Auth: %T", f.GetBody())}
	}
}

func (c *wsConn) readProto() (*pb.Frame, *connectError) {
	_, b, err := c.r.next()
	if err != nil {
		return nil, netError(err)
	}
	f := &pb.Frame{}
	err = proto.Unmarshal(b, f)
	c.r.release()
	if err != nil {
		return nil, &connectError{reason: "malformed_frame", err: err}
	}
	return f, nil
}

func errorFrameFailure(e *pb.Error) *connectError {
	ce := &connectError{reason: pb.ErrorCodeName(e.GetCode()), err: fmt.Errorf("server: %s", e.GetMessage())}
	switch e.GetCode() {
	case pb.ErrorCode_ERROR_CODE_UNAVAILABLE, pb.ErrorCode_ERROR_CODE_RATE_LIMITED, pb.ErrorCode_ERROR_CODE_SHUTTING_DOWN:
		ce.retryable = true
		ce.retryAfter = time.Duration(e.GetRetryAfterMs()) * time.Millisecond
	}
	return ce
}

// netError classifies a dial or read failure.
func netError(err error) *connectError {
	ce := &connectError{err: err, retryable: true}
	var ne net.Error
	switch {
	case errors.Is(err, syscall.ECONNREFUSED):
		ce.reason = "refused"
	case errors.Is(err, syscall.ECONNRESET), errors.Is(err, syscall.EPIPE):
		ce.reason = "reset"
	case errors.Is(err, syscall.EADDRNOTAVAIL):
		ce.reason = "no_source_port"
	case errors.Is(err, syscall.EMFILE), errors.Is(err, syscall.ENFILE):
		ce.reason = "fd_limit"
	case errors.Is(err, context.DeadlineExceeded), errors.Is(err, os.ErrDeadlineExceeded),
		errors.As(err, &ne) && ne.Timeout():
		ce.reason = "timeout"
	case errors.Is(err, context.Canceled):
		ce.reason, ce.retryable = "cancelled", false
	case errors.Is(err, io.EOF), errors.Is(err, io.ErrUnexpectedEOF), errors.As(err, new(*closeError)):
		ce.reason = "closed"
	case errors.Is(err, errWSProtocol), errors.Is(err, errTooLarge):
		ce.reason, ce.retryable = "ws_protocol", false
	default:
		var oe *net.OpError
		if errors.As(err, &oe) && oe.Op == "dial" {
			ce.reason = "dial_error"
		} else {
			ce.reason = "error"
		}
	}
	return ce
}

// frameView is a frame read on a hot path, decoded only as far as the top level.
type frameView struct {
	id   uint64
	kind protowire.Number // field number of the body
	body []byte           // valid only during the handler call
}

var errMalformed = errors.New("malformed frame")

func parseFrame(b []byte) (frameView, error) {
	var f frameView
	for len(b) > 0 {
		num, typ, n := protowire.ConsumeTag(b)
		if n < 0 {
			return f, errMalformed
		}
		b = b[n:]
		switch {
		case num == 1 && typ == protowire.VarintType:
			f.id, n = protowire.ConsumeVarint(b)
		case typ == protowire.BytesType:
			f.body, n = protowire.ConsumeBytes(b)
			f.kind = num
		default:
			n = protowire.ConsumeFieldValue(num, typ, b)
		}
		if n < 0 {
			return f, errMalformed
		}
		b = b[n:]
	}
	return f, nil
}

// parseDeliver extracts the tag and the ciphertext of a Deliver body.
func parseDeliver(b []byte) (tag uint64, ciphertext []byte, ok bool) {
	var env []byte
	for len(b) > 0 {
		num, typ, n := protowire.ConsumeTag(b)
		if n < 0 {
			return 0, nil, false
		}
		b = b[n:]
		switch {
		case num == 1 && typ == protowire.VarintType:
			tag, n = protowire.ConsumeVarint(b)
		case num == 2 && typ == protowire.BytesType:
			env, n = protowire.ConsumeBytes(b)
		default:
			n = protowire.ConsumeFieldValue(num, typ, b)
		}
		if n < 0 {
			return 0, nil, false
		}
		b = b[n:]
	}
	for len(env) > 0 {
		num, typ, n := protowire.ConsumeTag(env)
		if n < 0 {
			return 0, nil, false
		}
		env = env[n:]
		if num == 5 && typ == protowire.BytesType {
			ciphertext, n = protowire.ConsumeBytes(env)
		} else {
			n = protowire.ConsumeFieldValue(num, typ, env)
		}
		if n < 0 {
			return 0, nil, false
		}
		env = env[n:]
	}
	return tag, ciphertext, true
}

// parseUint32Field returns varint field 1 of a small message (QueueEmpty.delivered).
func parseUint32Field(b []byte) uint32 {
	for len(b) > 0 {
		num, typ, n := protowire.ConsumeTag(b)
		if n < 0 {
			return 0
		}
		b = b[n:]
		if num == 1 && typ == protowire.VarintType {
			v, _ := protowire.ConsumeVarint(b)
			return uint32(v)
		}
		n = protowire.ConsumeFieldValue(num, typ, b)
		if n < 0 {
			return 0
		}
		b = b[n:]
	}
	return 0
}

// parseError decodes an Error body (rare: allocation is fine).
func parseError(b []byte) *pb.Error {
	e := &pb.Error{}
	_ = proto.Unmarshal(b, e)
	return e
}

// appendSend encodes Frame{id, Send{message_id, to, [DeviceCiphertext{device, MESSAGE, ciphertext}]}}.
func appendSend(b []byte, id uint64, msgID []byte, to, device string, ciphertext []byte) []byte {
	dc := protowire.SizeTag(1) + protowire.SizeBytes(len(device)) +
		protowire.SizeTag(2) + protowire.SizeVarint(uint64(pb.EnvelopeType_ENVELOPE_TYPE_MESSAGE)) +
		protowire.SizeTag(3) + protowire.SizeBytes(len(ciphertext))
	send := protowire.SizeTag(1) + protowire.SizeBytes(len(msgID)) +
		protowire.SizeTag(2) + protowire.SizeBytes(len(to)) +
		protowire.SizeTag(3) + protowire.SizeBytes(dc)
	b = protowire.AppendTag(b, 1, protowire.VarintType)
	b = protowire.AppendVarint(b, id)
	b = protowire.AppendTag(b, 42, protowire.BytesType)
	b = protowire.AppendVarint(b, uint64(send))
	b = protowire.AppendTag(b, 1, protowire.BytesType)
	b = protowire.AppendBytes(b, msgID)
	b = protowire.AppendTag(b, 2, protowire.BytesType)
	b = protowire.AppendString(b, to)
	b = protowire.AppendTag(b, 3, protowire.BytesType)
	b = protowire.AppendVarint(b, uint64(dc))
	b = protowire.AppendTag(b, 1, protowire.BytesType)
	b = protowire.AppendString(b, device)
	b = protowire.AppendTag(b, 2, protowire.VarintType)
	b = protowire.AppendVarint(b, uint64(pb.EnvelopeType_ENVELOPE_TYPE_MESSAGE))
	b = protowire.AppendTag(b, 3, protowire.BytesType)
	b = protowire.AppendBytes(b, ciphertext)
	return b
}

// appendFanoutSend encodes Frame{id, Send{message_id, to, envelopes, own_envelopes}}: one
// DeviceCiphertext{device, MESSAGE, ciphertext} per entry of devices (the recipient's devices,
// field 3), then one per entry of own (the sender's other devices, field 4); cts holds the
// ciphertexts in the same order (len(devices) + len(own) of them). With one device and no own
// device it writes the same bytes as appendSend.
func appendFanoutSend(b []byte, id uint64, msgID []byte, to string, devices, own []string, cts [][]byte) []byte {
	send := protowire.SizeTag(1) + protowire.SizeBytes(len(msgID)) +
		protowire.SizeTag(2) + protowire.SizeBytes(len(to))
	for i, d := range devices {
		send += protowire.SizeTag(3) + protowire.SizeBytes(sizeDeviceCiphertext(d, cts[i]))
	}
	for i, d := range own {
		send += protowire.SizeTag(4) + protowire.SizeBytes(sizeDeviceCiphertext(d, cts[len(devices)+i]))
	}
	b = protowire.AppendTag(b, 1, protowire.VarintType)
	b = protowire.AppendVarint(b, id)
	b = protowire.AppendTag(b, 42, protowire.BytesType)
	b = protowire.AppendVarint(b, uint64(send))
	b = protowire.AppendTag(b, 1, protowire.BytesType)
	b = protowire.AppendBytes(b, msgID)
	b = protowire.AppendTag(b, 2, protowire.BytesType)
	b = protowire.AppendString(b, to)
	for i, d := range devices {
		b = appendDeviceCiphertext(b, 3, d, cts[i])
	}
	for i, d := range own {
		b = appendDeviceCiphertext(b, 4, d, cts[len(devices)+i])
	}
	return b
}

func sizeDeviceCiphertext(device string, ciphertext []byte) int {
	return protowire.SizeTag(1) + protowire.SizeBytes(len(device)) +
		protowire.SizeTag(2) + protowire.SizeVarint(uint64(pb.EnvelopeType_ENVELOPE_TYPE_MESSAGE)) +
		protowire.SizeTag(3) + protowire.SizeBytes(len(ciphertext))
}

// appendDeviceCiphertext appends field num: DeviceCiphertext{device, MESSAGE, ciphertext}.
func appendDeviceCiphertext(b []byte, num protowire.Number, device string, ciphertext []byte) []byte {
	b = protowire.AppendTag(b, num, protowire.BytesType)
	b = protowire.AppendVarint(b, uint64(sizeDeviceCiphertext(device, ciphertext)))
	b = protowire.AppendTag(b, 1, protowire.BytesType)
	b = protowire.AppendString(b, device)
	b = protowire.AppendTag(b, 2, protowire.VarintType)
	b = protowire.AppendVarint(b, uint64(pb.EnvelopeType_ENVELOPE_TYPE_MESSAGE))
	b = protowire.AppendTag(b, 3, protowire.BytesType)
	return protowire.AppendBytes(b, ciphertext)
}

// appendDeliverAck encodes Frame{DeliverAck{tags}} (packed).
func appendDeliverAck(b []byte, tags []uint64) []byte {
	packed := 0
	for _, t := range tags {
		packed += protowire.SizeVarint(t)
	}
	body := protowire.SizeTag(1) + protowire.SizeBytes(packed)
	b = protowire.AppendTag(b, 43, protowire.BytesType)
	b = protowire.AppendVarint(b, uint64(body))
	b = protowire.AppendTag(b, 1, protowire.BytesType)
	b = protowire.AppendVarint(b, uint64(packed))
	for _, t := range tags {
		b = protowire.AppendVarint(b, t)
	}
	return b
}

// appendPing encodes Frame{id, Ping{client_time_ms}}.
func appendPing(b []byte, id uint64, ms int64) []byte {
	body := protowire.SizeTag(1) + protowire.SizeVarint(uint64(ms))
	b = protowire.AppendTag(b, 1, protowire.VarintType)
	b = protowire.AppendVarint(b, id)
	b = protowire.AppendTag(b, 46, protowire.BytesType)
	b = protowire.AppendVarint(b, uint64(body))
	b = protowire.AppendTag(b, 1, protowire.VarintType)
	b = protowire.AppendVarint(b, uint64(ms))
	return b
}

// write sends one binary message (one frame). It may be called from any goroutine.
func (c *wsConn) write(b []byte) error {
	return c.cc.writeFrame(opBinary, b, false)
}

// pong answers a ping from the server (on the reader goroutine).
func (c *wsConn) pong(payload []byte) error {
	return c.cc.writeFrame(opPong, payload, false)
}

// ping sends a Ping with a fresh request id and returns the id.
func (c *wsConn) ping() (uint64, error) {
	id := c.nextID.Add(1)
	var buf [32]byte
	return id, c.write(appendPing(buf[:0], id, time.Now().UnixMilli()))
}

// closeNow closes the connection without a close frame; the reader loop then ends.
func (c *wsConn) closeNow() {
	c.closing.Store(true)
	c.cc.Close()
}

// close sends a close frame (normal closure) and closes the connection without waiting for the
// server's answer: the server needs nothing more, and waiting would cost the generator a read per
// close. The reader loop then ends. The error is the close frame's write error.
func (c *wsConn) close() error {
	c.closing.Store(true)
	_ = c.cc.SetWriteDeadline(time.Now().Add(closeTimeout))
	p := closePayload(closeNormal)
	err := c.cc.writeFrame(opClose, p[:], true)
	c.cc.Close()
	return err
}

// handler receives the frames of one connection on its reader goroutine. It must not block.
type handler func(c *wsConn, f frameView)

// bufPool holds the buffers of messages that are fragmented or larger than the read buffer: a
// connection holds one only while it reads and handles such a message.
var bufPool = sync.Pool{New: func() any { b := make([]byte, 0, 4<<10); return &b }}

// start runs the reader loop on its own goroutine, owned by wg.
func (c *wsConn) start(wg *sync.WaitGroup, h handler) {
	wg.Add(1)
	go func() {
		defer wg.Done()
		c.readLoop(h)
	}()
}

func (c *wsConn) readLoop(h handler) {
	defer close(c.done)
	defer h(c, frameView{kind: kClosed})
	c.cc.burst.Store(true)
	for {
		_, b, err := c.r.next()
		if err != nil {
			c.err = err
			c.r.release()
			c.fail(err)
			return
		}
		f, err := parseFrame(b)
		if err == nil {
			h(c, f)
		} else {
			h(c, frameView{kind: kMalformed})
		}
		c.r.release()
	}
}

// fail ends the connection after a read error: it answers a close frame or a protocol error with
// a close frame (best effort) and closes the socket.
func (c *wsConn) fail(err error) {
	code := 0
	var ce *closeError
	switch {
	case errors.As(err, &ce):
		code = closeNormal
	case errors.Is(err, errTooLarge):
		code = closeTooLarge
	case errors.Is(err, errWSProtocol):
		code = closeProtocol
	}
	if code != 0 && !c.closing.Load() {
		p := closePayload(code)
		_ = c.cc.SetWriteDeadline(time.Now().Add(closeTimeout))
		_ = c.cc.writeFrame(opClose, p[:], true)
	}
	c.cc.Close()
}
