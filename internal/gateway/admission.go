// Copyright 2026 The Petrel Authors
// SPDX-License-Identifier: Apache-2.0

package gateway

import (
	"errors"
	"fmt"
	"net"
	"runtime/debug"
	"time"

	"github.com/petrelchat/petrel/third_party/nbio"
	"github.com/petrelchat/petrel/third_party/nbio/nbhttp"
	"github.com/petrelchat/petrel/third_party/nbio/nbhttp/websocket"
)

// Admission before work. Every inbound frame, data or control, authenticated or not, is counted
// on the poller goroutine before it is buffered or queued for the connection's executor:
//
//   - bytes: a frame's declared payload (plus frameOverhead) is charged when its header arrives
//     and given back when its message has been handled; a data message's first frame is charged
//     the capacity of the pooled buffer it is read into (wsread.go, msgBufCap), at least its
//     payload. A connection may hold QueuedBytes
//     (PreauthQueuedBytes before it authenticates); the node InboundBytes in all, of which
//     unauthenticated connections together may use half.
//   - frames: a connection may have QueuedFrames messages queued and not yet handled
//     (PreauthQueuedFrames before it authenticates).
//   - rate: every frame takes a token of the connection's bucket (FramesPerSecond, FrameBurst).
//     A data frame over the rate is answered RATE_LIMITED with its id and not handled (a
//     DeliverAck is handled all the same: acks free the server's storage); a ping over the rate
//     gets no pong. A connection that goes on sending past its rate by a further burst (at least
//     minRateDebt frames) is closed.
//
// Past a budget the connection is closed with a WebSocket close code (1008 policy violation for
// its own budgets and the rate, 1009 for a frame over max_frame_bytes, 1013 try again later for
// the node's budget, 1002 for a protocol violation such as an unmasked frame), and the reason is
// counted in petrel_gateway_inbound_closed_total. nbio offers no way to stop reading one socket
// (TCP back-pressure), so closing is the bound.

// minRateDebt is the least number of frames past its rate a connection may send before it is
// closed (a client that backs off on RATE_LIMITED never comes near it).
const minRateDebt = 1024

// allow takes a token for one frame; false means the connection is over its rate. A refused
// frame still takes its token: the debt is what checkDebt measures. Poller goroutine only.
func (c *conn) allow() bool {
	now := time.Since(c.g.clockBase)
	c.tokens = min(c.tokens+(now-c.tokensTime).Seconds()*c.g.cfg.FramesPerSecond, float64(c.g.cfg.FrameBurst))
	c.tokensTime = now
	c.tokens--
	return c.tokens >= 0
}

// charge takes n bytes of the connection's and the node's inbound budgets. It returns "" when
// they allow it, else why not: "node_bytes", "conn_bytes", or "closed".
func (c *conn) charge(n int64) string {
	g := c.g
	authed := c.state.Load() == stateAuthed
	connLimit, nodeLimit := g.cfg.PreauthQueuedBytes, g.cfg.InboundBytes/2
	if authed {
		connLimit, nodeLimit = g.cfg.QueuedBytes, g.cfg.InboundBytes
	}
	// The node's count goes first, so that a concurrent releaseAll never gives back bytes the
	// node was not given.
	if g.inbound.Add(n) > nodeLimit {
		g.inbound.Add(-n)
		return "node_bytes"
	}
	for {
		h := c.held.Load()
		if h < 0 {
			g.inbound.Add(-n)
			return "closed"
		}
		if h+n > connLimit {
			g.inbound.Add(-n)
			return "conn_bytes"
		}
		if c.held.CompareAndSwap(h, h+n) {
			return ""
		}
	}
}

// release gives back n charged bytes (a no-op once the connection has released everything).
func (c *conn) release(n int64) {
	for {
		h := c.held.Load()
		if h < 0 {
			return
		}
		if c.held.CompareAndSwap(h, h-n) {
			c.g.inbound.Add(-n)
			return
		}
	}
}

// releaseAll gives back everything the connection holds, for good: it is closing.
func (c *conn) releaseAll() {
	if h := c.held.Swap(-1); h > 0 {
		c.g.inbound.Add(-h)
	}
}

// finished is called when a queued message has been handled.
func (c *conn) finished(charge int64) {
	c.queued.Add(-1)
	c.release(charge)
}

// errNoSession: a connection's nbio session is of no kind the gateway serves.
var errNoSession = errors.New("gateway: connection has no parser")

// onData is the nbio engine's data callback (installed by Protect): on the poller goroutine, it
// takes every chunk read from every plain socket of the public listener and hands it to the
// connection's current parser: the pre-upgrade guard and nbio's HTTP parser, or the connection's
// wsReader once it has upgraded. (TLS sockets: tlsConn.drain does the same with the plaintext.)
func (g *Gateway) onData(nc *nbio.Conn, data []byte) {
	defer func() {
		if r := recover(); r != nil {
			g.metrics.panics.Inc()
			g.log.Error("panic reading a connection", "panic", fmt.Sprint(r), "stack", string(debug.Stack()))
			_ = nc.Close()
		}
	}()
	if h := pollerHook.Load(); h != nil {
		(*h)()
	}
	if t, ok := nc.Session().(*tlsConn); ok {
		t.s.data(nc, data) // buffered for the handshake or a drain job (tls.go)
		return
	}
	if _, ok := nc.Session().(nbhttp.ParserCloser); !ok {
		_ = nc.Close()
		return
	}
	if err := g.feed(nc, data); err != nil {
		_ = nc.CloseWithError(err)
	}
}

// feed gives plaintext to the connection's parser.
func (g *Gateway) feed(nc *nbio.Conn, data []byte) error {
	switch s := nc.Session().(type) {
	case *wsReader:
		return s.Parse(data)
	case *websocket.Conn:
		// The first bytes after the upgrade: install the connection's reader before anything is
		// parsed, so that no frame ever reaches nbio's own WebSocket parser.
		v, ok := g.upgrading.LoadAndDelete(nc)
		if !ok {
			return errNoSession
		}
		c := v.(*conn)
		c.rd.c, c.rd.wsc = c, s
		nc.SetSession(&c.rd)
		return c.rd.Parse(data)
	case *nbhttp.Parser:
		if err := g.pre.check(nc, nc, data); err != nil {
			if errors.Is(err, errDiscard) {
				return nil
			}
			return err
		}
		return s.Parse(data)
	case nbhttp.ParserCloser:
		return s.Parse(data)
	}
	return errNoSession
}

// nbioConn finds the nbio socket beneath a connection (plain, TLS, or nbhttp's wrapper).
func nbioConn(c any) *nbio.Conn {
	for range 4 {
		switch v := c.(type) {
		case *nbio.Conn:
			return v
		case *nbhttp.Conn:
			c = v.Conn
		case *tlsConn:
			return v.nbc
		case interface{ NetConn() net.Conn }: // crypto/tls
			c = v.NetConn()
		case interface{ Conn() net.Conn }:
			c = v.Conn()
		default:
			return nil
		}
	}
	return nil
}
