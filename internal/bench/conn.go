// Copyright 2026 The Petrel Authors
// SPDX-License-Identifier: Apache-2.0

package bench

import (
	"context"
	"crypto/ed25519"
	"errors"
	"fmt"
	"io"
	"math/rand/v2"
	"net"
	"net/http"
	"net/url"
	"os"
	"strconv"
	"strings"
	"sync"
	"sync/atomic"
	"syscall"
	"time"

	"github.com/coder/websocket"
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

// corkConn is the TCP connection under one WebSocket. Once its reader loop runs (burst mode),
// writes made while the reader handles what it has read are gathered and sent in one system call
// right before the reader waits for more bytes; onIdle runs at that moment too (receivers write
// their batched DeliverAck there). Writes at any other time go straight out.
type corkConn struct {
	net.Conn
	burst  atomic.Bool
	onIdle func() // set before the reader loop starts; runs on the reader goroutine

	mu     sync.Mutex // guards corked, buf, werr
	corked bool
	buf    []byte
	werr   error
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

func (c *corkConn) Write(p []byte) (int, error) {
	c.mu.Lock()
	defer c.mu.Unlock()
	if c.werr != nil {
		return 0, c.werr
	}
	if c.corked && len(c.buf)+len(p) <= corkMax {
		c.buf = append(c.buf, p...)
		return len(p), nil
	}
	if err := c.flushLocked(); err != nil {
		return 0, err
	}
	n, err := c.Conn.Write(p)
	if err != nil {
		c.werr = err
	}
	return n, err
}

func (c *corkConn) flushLocked() error {
	if c.werr != nil || len(c.buf) == 0 {
		return c.werr
	}
	_, err := c.Conn.Write(c.buf)
	c.buf = c.buf[:0]
	if err != nil {
		c.werr = err
	}
	return err
}

// connSlot receives the corkConn that the transport dials for one WebSocket.
type connSlot struct{ cc *corkConn }

type slotKey struct{}

// dialer opens authenticated device connections from one source address.
type dialer struct {
	client  *http.Client
	retries int
	timeout time.Duration
}

func newDialer(sourceIP string, retries int, timeout time.Duration) *dialer {
	nd := &net.Dialer{Timeout: timeout, KeepAlive: -1}
	if sourceIP != "" {
		nd.LocalAddr = &net.TCPAddr{IP: net.ParseIP(sourceIP)}
	}
	tr := &http.Transport{
		DialContext: func(ctx context.Context, network, addr string) (net.Conn, error) {
			c, err := nd.DialContext(ctx, network, addr)
			if err != nil {
				return nil, err
			}
			cc := &corkConn{Conn: c}
			if slot, ok := ctx.Value(slotKey{}).(*connSlot); ok {
				slot.cc = cc
			}
			return cc, nil
		},
		// A fresh TCP connection per WebSocket: upgraded connections are never pooled anyway, and a
		// refused (503) one must not be reused behind our back.
		DisableKeepAlives:      true,
		DisableCompression:     true,
		MaxResponseHeaderBytes: 16 << 10,
		ResponseHeaderTimeout:  timeout,
		ReadBufferSize:         2 << 10,
		WriteBufferSize:        2 << 10,
	}
	return &dialer{client: &http.Client{Transport: tr}, retries: retries, timeout: timeout}
}

func (d *dialer) close() { d.client.CloseIdleConnections() }

// wsURL turns a server base URL into its WebSocket endpoint.
func wsURL(server string) string {
	u := strings.TrimRight(server, "/") + pb.ConnectPath
	switch {
	case strings.HasPrefix(u, "http://"):
		return "ws://" + u[len("http://"):]
	case strings.HasPrefix(u, "https://"):
		return "wss://" + u[len("https://"):]
	}
	return u
}

// wsConn is one authenticated device connection.
type wsConn struct {
	ws      *websocket.Conn
	cc      *corkConn
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
	ctx, cancel := context.WithTimeout(ctx, d.timeout)
	defer cancel()
	slot := &connSlot{}
	ws, resp, err := websocket.Dial(context.WithValue(ctx, slotKey{}, slot), wsURL(server), &websocket.DialOptions{
		HTTPClient:      d.client,
		Subprotocols:    []string{pb.Subprotocol},
		CompressionMode: websocket.CompressionDisabled,
	})
	if resp != nil && resp.Body != nil {
		resp.Body.Close()
	}
	if err != nil {
		if resp != nil && resp.StatusCode != 0 && resp.StatusCode != http.StatusSwitchingProtocols {
			ce := &connectError{reason: "http_" + strconv.Itoa(resp.StatusCode), err: err}
			if resp.StatusCode == http.StatusServiceUnavailable || resp.StatusCode == http.StatusTooManyRequests {
				ce.retryable = true
				if s, err := strconv.Atoi(resp.Header.Get("Retry-After")); err == nil && s > 0 {
					ce.retryAfter = time.Duration(s) * time.Second
				}
			}
			return nil, ce
		}
		return nil, netError(err)
	}
	if ws.Subprotocol() != pb.Subprotocol || slot.cc == nil {
		ws.CloseNow()
		return nil, &connectError{reason: "bad_subprotocol", err: fmt.Errorf("server chose subprotocol %q", ws.Subprotocol())}
	}
	ws.SetReadLimit(readLimit)
	c := &wsConn{ws: ws, cc: slot.cc, acct: a, done: make(chan struct{})}
	if la, ok := slot.cc.LocalAddr().(*net.TCPAddr); ok {
		c.local = la.IP.String()
	}
	if ce := c.handshake(ctx); ce != nil {
		ws.CloseNow()
		return nil, ce
	}
	return c, nil
}

// handshake answers the Challenge with Auth and waits for Welcome.
func (c *wsConn) handshake(ctx context.Context) *connectError {
	f, ce := c.readProto(ctx)
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
	if err := c.ws.Write(ctx, websocket.MessageBinary, b); err != nil {
		return netError(err)
	}
	c.nextID.Store(1)
	for {
		f, ce := c.readProto(ctx)
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

func (c *wsConn) readProto(ctx context.Context) (*pb.Frame, *connectError) {
	_, b, err := c.ws.Read(ctx)
	if err != nil {
		return nil, netError(err)
	}
	f := &pb.Frame{}
	if err := proto.Unmarshal(b, f); err != nil {
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
	case errors.Is(err, io.EOF), errors.Is(err, io.ErrUnexpectedEOF), websocket.CloseStatus(err) != -1:
		ce.reason = "closed"
	default:
		var ue *url.Error
		if errors.As(err, &ue) {
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

// write sends one binary message (one frame).
func (c *wsConn) write(b []byte) error {
	return c.ws.Write(context.Background(), websocket.MessageBinary, b)
}

// ping sends a Ping with a fresh request id and returns the id.
func (c *wsConn) ping() (uint64, error) {
	id := c.nextID.Add(1)
	var buf [32]byte
	return id, c.write(appendPing(buf[:0], id, time.Now().UnixMilli()))
}

// closeNow closes the connection without a close handshake; the reader loop then ends.
func (c *wsConn) closeNow() {
	c.closing.Store(true)
	c.ws.CloseNow()
}

// handler receives the frames of one connection on its reader goroutine. It must not block.
type handler func(c *wsConn, f frameView)

// bufPool holds read buffers: a connection holds one only while it handles a frame.
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
		_, r, err := c.ws.Reader(context.Background())
		if err != nil {
			c.err = err
			return
		}
		bp := bufPool.Get().(*[]byte)
		buf := (*bp)[:0]
		for {
			if len(buf) == cap(buf) {
				buf = append(buf, 0)[:len(buf)]
			}
			n, err := r.Read(buf[len(buf):cap(buf)])
			buf = buf[:len(buf)+n]
			if err == io.EOF {
				break
			}
			if err != nil {
				c.err = err
				*bp = buf
				bufPool.Put(bp)
				return
			}
		}
		f, err := parseFrame(buf)
		if err == nil {
			h(c, f)
		} else {
			h(c, frameView{kind: kMalformed})
		}
		*bp = buf
		bufPool.Put(bp)
	}
}
