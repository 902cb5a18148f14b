// Copyright 2026 The Petrel Authors
// SPDX-License-Identifier: Apache-2.0

package faultproxy_test

import (
	"bufio"
	"io"
	"net"
	"testing"
	"time"

	"github.com/petrelchat/petrel/internal/faultproxy"
)

// TestProxyCutAndHeal: the proxy forwards both ways; Cut closes the connections it carries and
// refuses new ones; Heal lets new ones through again.
func TestProxyCutAndHeal(t *testing.T) {
	ln, err := net.Listen("tcp", "127.0.0.1:0")
	if err != nil {
		t.Fatal(err)
	}
	defer ln.Close()
	go func() { // an echo server; ends when ln closes
		for {
			c, err := ln.Accept()
			if err != nil {
				return
			}
			go func() { io.Copy(c, c); c.Close() }()
		}
	}()
	p, err := faultproxy.New(ln.Addr().String())
	if err != nil {
		t.Fatal(err)
	}
	defer p.Close()

	echo := func(c net.Conn) error {
		c.SetDeadline(time.Now().Add(5 * time.Second))
		if _, err := c.Write([]byte("ping\n")); err != nil {
			return err
		}
		_, err := bufio.NewReader(c).ReadString('\n')
		return err
	}
	c1, err := net.Dial("tcp", p.Addr())
	if err != nil {
		t.Fatal(err)
	}
	defer c1.Close()
	if err := echo(c1); err != nil {
		t.Fatalf("through the proxy: %v", err)
	}

	p.Cut()
	c1.SetReadDeadline(time.Now().Add(5 * time.Second))
	if _, err := c1.Read(make([]byte, 1)); err == nil || isTimeout(err) {
		t.Fatalf("a connection survived Cut: %v", err)
	}
	c2, err := net.Dial("tcp", p.Addr())
	if err != nil {
		t.Fatal(err) // accepted, then closed at once
	}
	defer c2.Close()
	if err := echo(c2); err == nil || isTimeout(err) {
		t.Fatalf("a new connection went through a cut proxy: %v", err)
	}

	p.Heal()
	c3, err := net.Dial("tcp", p.Addr())
	if err != nil {
		t.Fatal(err)
	}
	defer c3.Close()
	if err := echo(c3); err != nil {
		t.Fatalf("after Heal: %v", err)
	}
}

func isTimeout(err error) bool {
	ne, ok := err.(net.Error)
	return ok && ne.Timeout()
}

// TestProxyFreezeAndThaw: Freeze holds the bytes but keeps the connection open (a reader sees
// neither data nor an end); Thaw forwards what was held; Cut still ends a frozen connection.
func TestProxyFreezeAndThaw(t *testing.T) {
	ln, err := net.Listen("tcp", "127.0.0.1:0")
	if err != nil {
		t.Fatal(err)
	}
	defer ln.Close()
	go func() { // an echo server; ends when ln closes
		for {
			c, err := ln.Accept()
			if err != nil {
				return
			}
			go func() { io.Copy(c, c); c.Close() }()
		}
	}()
	p, err := faultproxy.New(ln.Addr().String())
	if err != nil {
		t.Fatal(err)
	}
	defer p.Close()
	c, err := net.Dial("tcp", p.Addr())
	if err != nil {
		t.Fatal(err)
	}
	defer c.Close()
	r := bufio.NewReader(c)
	if _, err := c.Write([]byte("one\n")); err != nil {
		t.Fatal(err)
	}
	c.SetReadDeadline(time.Now().Add(5 * time.Second))
	if l, err := r.ReadString('\n'); err != nil || l != "one\n" {
		t.Fatalf("before Freeze: %q %v", l, err)
	}

	p.Freeze()
	if _, err := c.Write([]byte("two\n")); err != nil {
		t.Fatal(err)
	}
	c.SetReadDeadline(time.Now().Add(300 * time.Millisecond))
	if l, err := r.ReadString('\n'); !isTimeout(err) {
		t.Fatalf("while frozen: read %q %v, want a timeout (no data, no end)", l, err)
	}
	p.Thaw()
	c.SetReadDeadline(time.Now().Add(5 * time.Second))
	if l, err := r.ReadString('\n'); err != nil || l != "two\n" {
		t.Fatalf("after Thaw: %q %v, want the held line", l, err)
	}

	p.Freeze()
	p.Cut()
	c.SetReadDeadline(time.Now().Add(5 * time.Second))
	if _, err := r.ReadString('\n'); err == nil || isTimeout(err) {
		t.Fatalf("a frozen connection survived Cut: %v", err)
	}
}
