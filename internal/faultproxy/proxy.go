// Copyright 2026 The Petrel Authors
// SPDX-License-Identifier: Apache-2.0

// Package faultproxy is a fault-injecting TCP proxy on loopback, used to partition Petrel nodes
// without firewall rules: the test harness (internal/testcluster) and `petrel bench chaos` put
// one in front of each direction of each pair of nodes' cluster routes, and cut and heal them.
package faultproxy

import (
	"fmt"
	"io"
	"net"
	"sync"
)

// Proxy forwards every connection it accepts to a target address until Cut, which closes the
// connections it carries and refuses new ones (they are accepted and closed at once) until Heal.
type Proxy struct {
	ln     net.Listener
	target string
	wg     sync.WaitGroup

	mu     sync.Mutex // guards the following fields
	cut    bool
	closed bool
	conns  map[net.Conn]struct{}
}

// New listens on a random loopback port and forwards to target until Close.
func New(target string) (*Proxy, error) {
	return Listen("127.0.0.1:0", target)
}

// Listen listens on addr (host:port) and forwards to target until Close.
func Listen(addr, target string) (*Proxy, error) {
	ln, err := net.Listen("tcp", addr)
	if err != nil {
		return nil, fmt.Errorf("faultproxy: listen: %w", err)
	}
	p := &Proxy{ln: ln, target: target, conns: map[net.Conn]struct{}{}}
	p.wg.Go(p.accept)
	return p, nil
}

// Addr is the proxy's listening address (host:port).
func (p *Proxy) Addr() string { return p.ln.Addr().String() }

// Cut closes every connection through the proxy and refuses new ones until Heal.
func (p *Proxy) Cut() {
	p.mu.Lock()
	p.cut = true
	conns := p.conns
	p.conns = map[net.Conn]struct{}{}
	p.mu.Unlock()
	for c := range conns {
		c.Close()
	}
}

// Heal lets new connections through again.
func (p *Proxy) Heal() {
	p.mu.Lock()
	p.cut = false
	p.mu.Unlock()
}

// Close stops the proxy, closes its connections and waits for its goroutines. Idempotent.
func (p *Proxy) Close() {
	p.mu.Lock()
	if p.closed {
		p.mu.Unlock()
		return
	}
	p.closed = true
	p.mu.Unlock()
	p.ln.Close()
	p.Cut()
	p.wg.Wait()
}

// track registers c unless the proxy is cut or closed (then it closes c and reports false).
func (p *Proxy) track(cs ...net.Conn) bool {
	p.mu.Lock()
	defer p.mu.Unlock()
	if p.cut || p.closed {
		for _, c := range cs {
			c.Close()
		}
		return false
	}
	for _, c := range cs {
		p.conns[c] = struct{}{}
	}
	return true
}

func (p *Proxy) untrack(cs ...net.Conn) {
	p.mu.Lock()
	for _, c := range cs {
		delete(p.conns, c)
	}
	p.mu.Unlock()
}

func (p *Proxy) accept() {
	for {
		in, err := p.ln.Accept()
		if err != nil {
			return // closed
		}
		if !p.track(in) {
			continue
		}
		p.wg.Go(func() { p.serve(in) })
	}
}

// serve dials the target and copies both ways until either side ends (or Cut closes them).
func (p *Proxy) serve(in net.Conn) {
	out, err := net.Dial("tcp", p.target)
	if err != nil {
		p.untrack(in)
		in.Close()
		return
	}
	if !p.track(out) {
		p.untrack(in)
		in.Close()
		return
	}
	done := make(chan struct{})
	go func() { // owned by serve: it waits on done
		io.Copy(out, in)
		out.Close()
		in.Close()
		close(done)
	}()
	io.Copy(in, out)
	in.Close()
	out.Close()
	<-done
	p.untrack(in, out)
}
