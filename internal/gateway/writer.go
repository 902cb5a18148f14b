// Copyright 2026 The Petrel Authors
// SPDX-License-Identifier: Apache-2.0

package gateway

import (
	"encoding/binary"
	"errors"
	"runtime"
	"sync"

	"google.golang.org/protobuf/encoding/protowire"
)

// Outgoing frames are coalesced: a writer appends the WebSocket frame to the connection's pending
// buffer and, if no flush is scheduled, schedules one on a flusher goroutine. Everything queued by
// the time the flusher gets to the connection goes out in one write. An idle connection holds no
// buffer (it is returned to a pool after each flush).

// maxPendingBytes is the most unsent bytes one connection may queue; beyond it the client is not
// reading and the connection is closed (its envelopes stay stored or are handed back).
const maxPendingBytes = 8 << 20

var errSlowConsumer = errors.New("connection is not reading: closed")

var bufPool = sync.Pool{New: func() any { b := make([]byte, 0, 4096); return &b }}

// appendBinaryFrame appends an unmasked, final, binary WebSocket frame (server to client).
func appendBinaryFrame(b, payload []byte) []byte {
	return append(appendBinaryHeader(b, len(payload)), payload...)
}

// appendBinaryHeader appends the header of an unmasked, final, binary WebSocket frame whose
// payload is n bytes.
func appendBinaryHeader(b []byte, n int) []byte {
	switch {
	case n < 126:
		b = append(b, 0x82, byte(n))
	case n <= 0xffff:
		b = append(b, 0x82, 126)
		b = binary.BigEndian.AppendUint16(b, uint16(n))
	default:
		b = append(b, 0x82, 127)
		b = binary.BigEndian.AppendUint64(b, uint64(n))
	}
	return b
}

// enqueue queues one message for c. It never blocks on the network.
func (c *conn) enqueue(payload []byte) error {
	c.wmu.Lock()
	if err := c.roomLocked(len(payload)); err != nil {
		return err
	}
	*c.wbuf = appendBinaryFrame(*c.wbuf, payload)
	return c.queuedLocked()
}

// enqueueDeliver queues Frame{deliver: Deliver{tag, envelope}} for c, encoded straight into the
// pending buffer (deliverFrame's bytes, without building them apart first: a pushed envelope
// was a fifth of the bytes a relayed message allocated). It never blocks on the network.
func (c *conn) enqueueDeliver(tag uint64, envelope []byte) error {
	inner := deliverInnerLen(tag, envelope)
	n := protowire.SizeTag(fieldDeliver) + protowire.SizeBytes(inner)
	c.wmu.Lock()
	if err := c.roomLocked(n); err != nil {
		return err
	}
	*c.wbuf = appendDeliver(appendBinaryHeader(*c.wbuf, n), tag, envelope, inner)
	return c.queuedLocked()
}

// roomLocked checks, with wmu held, that c may queue n more bytes, and gets its pending buffer.
// On an error wmu has been released (and a slow consumer closed).
func (c *conn) roomLocked(n int) error {
	if c.wclosed {
		c.wmu.Unlock()
		return errors.New("connection closed")
	}
	if c.wbuf == nil {
		c.wbuf = bufPool.Get().(*[]byte)
	}
	if len(*c.wbuf)+n > maxPendingBytes {
		c.wmu.Unlock()
		c.g.metrics.slowConsumers.Inc()
		c.closeNow()
		return errSlowConsumer
	}
	return nil
}

// queuedLocked ends an enqueue: it releases wmu and schedules a flush unless one is.
func (c *conn) queuedLocked() error {
	schedule := !c.wscheduled
	c.wscheduled = true
	c.wmu.Unlock()
	if schedule && !c.g.scheduleFlush(c) {
		c.flush() // flushers saturated or stopped: write from here rather than queue without bound
	}
	return nil
}

// scheduleFlush hands c to a flusher; false if they are saturated or stopped.
func (g *Gateway) scheduleFlush(c *conn) bool {
	g.flushMu.RLock()
	defer g.flushMu.RUnlock()
	if g.flushStopped {
		return false
	}
	select {
	case g.flushq <- c:
		return true
	default:
		return false
	}
}

// flush writes everything pending in one call. Flushes of one connection are serialised (fmu), so
// a buffer taken later is never written before one taken earlier.
func (c *conn) flush() {
	if err := c.flushLocked(); err != nil {
		c.closeNow()
	}
}

func (c *conn) flushLocked() error {
	c.fmu.Lock()
	defer c.fmu.Unlock()
	c.wmu.Lock()
	ws := c.ws
	if ws == nil {
		// Not open yet (a frame answered before onOpen finished): the buffer stays pending, and
		// the Challenge that onOpen writes next flushes it.
		c.wscheduled = false
		c.wmu.Unlock()
		return nil
	}
	buf := c.wbuf
	c.wbuf = nil
	c.wscheduled = false
	c.wmu.Unlock()
	if buf == nil {
		return nil
	}
	var err error
	if len(*buf) > 0 {
		c.g.metrics.flushes.Inc()
		_, err = ws.Conn.Write(*buf)
	}
	if cap(*buf) <= 64<<10 {
		*buf = (*buf)[:0]
		bufPool.Put(buf)
	}
	return err
}

// closeWriter drops what is pending and refuses further frames.
func (c *conn) closeWriter() {
	c.wmu.Lock()
	c.wclosed = true
	buf := c.wbuf
	c.wbuf = nil
	c.wmu.Unlock()
	if buf != nil && cap(*buf) <= 64<<10 {
		*buf = (*buf)[:0]
		bufPool.Put(buf)
	}
}

// startFlushers starts the flusher goroutines; stopFlushers ends them and waits.
func (g *Gateway) startFlushers() {
	g.flushq = make(chan *conn, 1<<16)
	n := max(runtime.GOMAXPROCS(0), 2)
	for range n {
		g.flushWG.Add(1)
		go func() {
			defer g.flushWG.Done()
			for c := range g.flushq {
				c.flush()
			}
		}()
	}
}

func (g *Gateway) stopFlushers() {
	g.flushMu.Lock()
	if g.flushStopped {
		g.flushMu.Unlock()
		return
	}
	g.flushStopped = true
	close(g.flushq)
	g.flushMu.Unlock()
	g.flushWG.Wait()
}
