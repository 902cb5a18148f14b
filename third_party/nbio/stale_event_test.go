// Copyright 2026 The Petrel Authors. Petrel fork of nbio: see poller_epoll.go.

//go:build linux

package nbio

import (
	"net"
	"syscall"
	"testing"
	"time"
)

// An epoll event fetched for a socket that was then closed, its descriptor number reused by a
// new connection before the poller got to the event, must not act on the new connection: an
// EPOLLRDHUP of the old socket used to close it with EOF.
func TestStaleEventDoesNotCloseTheNextSocket(t *testing.T) {
	g := NewEngine(Config{NPoller: 1})
	closed := make(chan *Conn, 4)
	g.OnClose(func(c *Conn, err error) { closed <- c })
	if err := g.Start(); err != nil {
		t.Fatal(err)
	}
	defer g.Stop()
	ln, err := net.Listen("tcp", "127.0.0.1:0")
	if err != nil {
		t.Fatal(err)
	}
	defer ln.Close()
	accept := func() (net.Conn, *Conn) {
		t.Helper()
		cl, err := net.Dial("tcp", ln.Addr().String())
		if err != nil {
			t.Fatal(err)
		}
		sc, err := ln.Accept()
		if err != nil {
			t.Fatal(err)
		}
		c, err := g.AddConn(sc)
		if err != nil {
			t.Fatal(err)
		}
		return cl, c
	}
	waitClosed := func(want *Conn) {
		t.Helper()
		select {
		case c := <-closed:
			if c != want {
				t.Fatalf("closed %p, want %p", c, want)
			}
		case <-time.After(10 * time.Second):
			t.Fatal("the connection was not closed")
		}
	}

	cl1, c1 := accept()
	gen1 := c1.pollGen
	c1.Close()
	waitClosed(c1)
	cl1.Close()

	cl2, c2 := accept()
	defer cl2.Close()
	if c2.pollGen == gen1 {
		t.Fatalf("two connections with generation %d", gen1)
	}
	// The poller hands over the first socket's last event only now, for c2's descriptor.
	c2.p.handleEvent(syscall.EpollEvent{
		Events: syscall.EPOLLIN | syscall.EPOLLRDHUP | syscall.EPOLLHUP,
		Fd:     int32(c2.fd),
		Pad:    int32(gen1),
	})
	if _, err := c2.Write([]byte("ping")); err != nil {
		t.Fatalf("the new connection after a stale event: %v", err)
	}
	buf := make([]byte, 4)
	cl2.SetReadDeadline(time.Now().Add(10 * time.Second))
	if _, err := cl2.Read(buf); err != nil || string(buf) != "ping" {
		t.Fatalf("read %q, %v", buf, err)
	}
	select {
	case c := <-closed:
		t.Fatalf("closed %p after a stale event", c)
	default:
	}
	// Its own events still work: the peer's close closes it.
	cl2.Close()
	waitClosed(c2)
}
