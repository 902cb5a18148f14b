// Copyright 2026 The Petrel Authors
// SPDX-License-Identifier: Apache-2.0

// Package faultproxy is a fault-injecting TCP proxy on loopback, used to partition Petrel nodes
// without firewall rules: the test harness (internal/testcluster) and `petrel bench chaos` put
// one in front of each direction of each pair of nodes' cluster routes, and cut and heal them.
package faultproxy

import (
	"fmt"
	"net"
	"sync"
	"time"
)

// Proxy forwards every connection it accepts to a target address until Cut, which closes the
// connections it carries and refuses new ones (they are accepted and closed at once) until Heal.
// Freeze stops forwarding bytes but keeps the connections open (a peer that went silent: a
// machine that died without closing its sockets, a black-holing network) until Thaw.
type Proxy struct {
	ln     net.Listener
	target string
	wg     sync.WaitGroup

	mu     sync.Mutex // guards the following fields
	cut    bool
	closed bool
	conns  map[net.Conn]struct{}
	// thawed is closed while bytes flow; Freeze replaces it with an open one.
	thawed chan struct{}
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
	p := &Proxy{ln: ln, target: target, conns: map[net.Conn]struct{}{}, thawed: make(chan struct{})}
	close(p.thawed)
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

// Freeze stops forwarding: bytes already read are held, and the connections stay open, until
// Thaw (or Cut or Close, which close them).
func (p *Proxy) Freeze() {
	p.mu.Lock()
	select {
	case <-p.thawed:
		p.thawed = make(chan struct{})
	default: // frozen already
	}
	p.mu.Unlock()
}

// Thaw undoes Freeze: held bytes are forwarded, then everything else.
func (p *Proxy) Thaw() {
	p.mu.Lock()
	select {
	case <-p.thawed:
	default:
		close(p.thawed)
	}
	p.mu.Unlock()
}

// waitThawed waits until the proxy is not frozen; false if c was closed meanwhile (Cut, Close).
func (p *Proxy) waitThawed(c net.Conn) bool {
	for {
		p.mu.Lock()
		thawed := p.thawed
		_, open := p.conns[c]
		p.mu.Unlock()
		if !open {
			return false
		}
		select {
		case <-thawed:
			return true
		default:
		}
		t := time.NewTimer(10 * time.Millisecond) // polling: Cut does not signal frozen copies
		select {
		case <-thawed:
			t.Stop()
			return true
		case <-t.C:
		}
	}
}

// copy forwards src to dst until either ends, holding bytes while the proxy is frozen.
func (p *Proxy) copy(dst, src net.Conn) {
	buf := make([]byte, 32<<10)
	for {
		n, err := src.Read(buf)
		if n > 0 {
			if !p.waitThawed(dst) {
				return
			}
			if _, werr := dst.Write(buf[:n]); werr != nil {
				return
			}
		}
		if err != nil {
			return
		}
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
		p.copy(out, in)
		out.Close()
		in.Close()
		close(done)
	}()
	p.copy(in, out)
	in.Close()
	out.Close()
	<-done
	p.untrack(in, out)
}
