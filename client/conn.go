// Copyright 2026 The Petrel Authors
// SPDX-License-Identifier: Apache-2.0

package client

import (
	"context"
	"errors"
	"fmt"
	"net/url"
	"strings"
	"sync"
	"sync/atomic"
	"time"

	"github.com/coder/websocket"
	petrelv1 "github.com/petrelchat/petrel/proto/petrel/v1"
)

// errConnClosed reports a request cut short because the connection went away.
var errConnClosed = errors.New("connection closed")

// maxPendingRequests bounds the requests in flight on one connection.
const maxPendingRequests = 128

// connectURL derives the WebSocket endpoint from a server base URL:
// http://h:p → ws://h:p/v1/connect, https://h → wss://h/v1/connect (ws:// and wss:// are kept).
func connectURL(server string) (string, error) {
	u, err := url.Parse(server)
	if err != nil {
		return "", fmt.Errorf("server URL %q: %w", server, err)
	}
	switch u.Scheme {
	case "http":
		u.Scheme = "ws"
	case "https":
		u.Scheme = "wss"
	case "ws", "wss":
	default:
		return "", fmt.Errorf("server URL %q: want http://HOST:PORT or https://HOST", server)
	}
	if u.Host == "" {
		return "", fmt.Errorf("server URL %q: no host", server)
	}
	u.Path = strings.TrimSuffix(u.Path, "/") + petrelv1.ConnectPath
	u.RawQuery, u.Fragment, u.User = "", "", nil
	return u.String(), nil
}

// dialServer opens the WebSocket and checks the subprotocol.
func dialServer(ctx context.Context, server string) (*websocket.Conn, error) {
	u, err := connectURL(server)
	if err != nil {
		return nil, err
	}
	ws, err := dialWebSocket(ctx, u)
	if err != nil {
		return nil, &DialError{URL: server, Err: err}
	}
	if ws.Subprotocol() != petrelv1.Subprotocol {
		ws.CloseNow()
		return nil, fmt.Errorf("connect to %s: %w: server did not accept subprotocol %s", server, ErrProtocol, petrelv1.Subprotocol)
	}
	ws.SetReadLimit(readLimit(0))
	return ws, nil
}

// readLimit bounds frames from the server: a Deliver wraps a ciphertext that fitted in a client
// frame, so allow twice the client limit.
func readLimit(maxFrame int) int64 {
	return int64(2 * max(maxFrame, petrelv1.DefaultMaxFrameBytes))
}

// conn is one authenticated-or-authenticating WebSocket: frame encoding, the frame limit, and
// request/response correlation. The reader goroutine (link.readLoop) owns reads after the
// handshake; writes may come from any goroutine.
type conn struct {
	ws         *websocket.Conn
	maxFrame   atomic.Int64 // the server's limit on frames we send
	nextID     atomic.Uint64
	reqTimeout time.Duration
	sem        chan struct{} // bounds pending requests

	mu      sync.Mutex                      // guards the following fields
	pending map[uint64]chan *petrelv1.Frame // request id → response slot
	closed  bool
	done    chan struct{} // closed by shutdown
}

func newConn(ws *websocket.Conn, reqTimeout time.Duration) *conn {
	c := &conn{
		ws:         ws,
		reqTimeout: reqTimeout,
		sem:        make(chan struct{}, maxPendingRequests),
		pending:    map[uint64]chan *petrelv1.Frame{},
		done:       make(chan struct{}),
	}
	c.maxFrame.Store(petrelv1.DefaultMaxFrameBytes)
	return c
}

// write encodes and sends one frame, refusing frames over the server's limit.
func (c *conn) write(ctx context.Context, f *petrelv1.Frame) error {
	b, err := petrelv1.EncodeFrame(f)
	if err != nil {
		return fmt.Errorf("encode frame: %w", err)
	}
	if limit := int(c.maxFrame.Load()); len(b) > limit {
		return frameTooLarge(len(b), limit)
	}
	if err := c.ws.Write(ctx, websocket.MessageBinary, b); err != nil {
		return fmt.Errorf("%w: %w", errConnClosed, err)
	}
	return nil
}

// read reads one frame (only the handshake and the reader goroutine call it).
func (c *conn) read(ctx context.Context) (*petrelv1.Frame, error) {
	typ, b, err := c.ws.Read(ctx)
	if err != nil {
		return nil, fmt.Errorf("%w: %w", errConnClosed, err)
	}
	if typ != websocket.MessageBinary {
		return nil, fmt.Errorf("%w: text WebSocket message", ErrProtocol)
	}
	f, err := petrelv1.DecodeFrame(b, int(readLimit(int(c.maxFrame.Load()))))
	if err != nil {
		return nil, fmt.Errorf("%w: %w", ErrProtocol, err)
	}
	return f, nil
}

// handshake sends one handshake frame (Register, Recover, Auth: before the reader goroutine runs)
// and reads the server's answer: its Welcome (nil if the answer is another frame), or its Error
// as *Error.
func (c *conn) handshake(ctx context.Context, f *petrelv1.Frame) (*petrelv1.Welcome, error) {
	if err := c.write(ctx, f); err != nil {
		return nil, err
	}
	a, err := c.read(ctx)
	if err != nil {
		return nil, err
	}
	if e := a.GetError(); e != nil {
		return nil, errorFromProto(e)
	}
	return a.GetWelcome(), nil
}

// request sends f with a fresh id and waits for the response with the same id. A response
// carrying Error is returned as *Error.
func (c *conn) request(ctx context.Context, f *petrelv1.Frame) (*petrelv1.Frame, error) {
	select {
	case c.sem <- struct{}{}:
	case <-ctx.Done():
		return nil, ctx.Err()
	case <-c.done:
		return nil, errConnClosed
	}
	defer func() { <-c.sem }()

	id := c.nextID.Add(1)
	f.Id = id
	slot := make(chan *petrelv1.Frame, 1)
	c.mu.Lock()
	if c.closed {
		c.mu.Unlock()
		return nil, errConnClosed
	}
	c.pending[id] = slot
	c.mu.Unlock()
	defer func() {
		c.mu.Lock()
		delete(c.pending, id)
		c.mu.Unlock()
	}()

	if err := c.write(ctx, f); err != nil {
		return nil, err
	}
	timer := time.NewTimer(c.reqTimeout)
	defer timer.Stop()
	select {
	case resp := <-slot:
		if e := resp.GetError(); e != nil {
			return nil, errorFromProto(e)
		}
		return resp, nil
	case <-ctx.Done():
		return nil, ctx.Err()
	case <-c.done:
		return nil, errConnClosed
	case <-timer.C:
		return nil, fmt.Errorf("%w: no answer within %v", errConnClosed, c.reqTimeout)
	}
}

// dispatch hands a response to its waiting request; unknown ids (a request that gave up) are
// dropped.
func (c *conn) dispatch(f *petrelv1.Frame) {
	c.mu.Lock()
	slot := c.pending[f.Id]
	c.mu.Unlock()
	if slot != nil {
		select {
		case slot <- f:
		default: // a duplicate answer; the first one wins
		}
	}
}

// shutdown fails every pending request and closes the socket. Idempotent.
func (c *conn) shutdown(graceful bool) {
	c.mu.Lock()
	if c.closed {
		c.mu.Unlock()
		return
	}
	c.closed = true
	close(c.done)
	c.mu.Unlock()
	if graceful {
		// Close waits (bounded by the library, 5s) for the server's close frame.
		_ = c.ws.Close(websocket.StatusNormalClosure, "")
		return
	}
	_ = c.ws.CloseNow()
}
