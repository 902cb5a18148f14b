// Copyright 2026 The Petrel Authors
// SPDX-License-Identifier: Apache-2.0

package gateway

import (
	"bytes"
	"errors"
	"io"
	"net"
	"net/netip"
	"strconv"
	"sync"
	"syscall"
	"time"

	"github.com/petrelchat/petrel/third_party/nbio"
	"github.com/petrelchat/petrel/third_party/nbio/nbhttp"
)

// Before the upgrade. A socket of the public listener that has not upgraded to a WebSocket (an
// HTTP request in progress, a keep-alive connection, a client that stalls half-way through its
// headers) is pending. Pending sockets:
//
//   - have their own slots (MaxPendingUpgrades, and MaxPendingUpgradesPerIP per client address),
//     taken when the socket is accepted and given back when it upgrades or closes, so stalled
//     sockets can never take the slots of established devices (MaxConns), and one address cannot
//     take them all from /healthz and real clients;
//   - must send each whole request, headers and body, within HandshakeTimeout (nbio's read
//     deadline, which the upgrade clears), so a stalled socket gives its slot back in time;
//   - are checked from the headers, before any of a body is read: a request's line and headers
//     may take MaxHeaderBytes, its body MaxBodyBytes, and a chunked body (whose length the
//     headers do not say) is refused. nbio's parser would buffer a whole body before any handler
//     runs. Operator requests (bulk registration) go to the admin listener, not here.

// preUpgrade tracks the pending sockets of one listener.
type preUpgrade struct {
	max, maxPerIP int
	maxHeader     int
	maxBody       int
	refused       func(reason string) // counts a refusal (set by Protect)
	timedOut      func()              // counts a pending socket closed by the deadline
	mu            sync.Mutex          // guards the fields below
	socks         map[netip.AddrPort]*pendingSock
	perIP         map[netip.Prefix]int
	// stale counts, per address, the closes still to come of sockets whose entry a newer socket
	// from the same address and port took over (see admit).
	stale             map[netip.AddrPort]int
	n                 int // pending sockets (entries plus stale ones)
	discardAfterClose time.Duration
	// early holds the sockets that upgraded before nbio's accept goroutine was done adding them
	// (see pendingListener.Accept); settled clears their read deadline.
	early map[netip.AddrPort]*nbio.Conn
}

// pendingSock is one pending socket. Its HTTP check state belongs to the poller goroutine.
type pendingSock struct {
	ip      netip.Prefix
	hdr     []byte // the current request's line and headers so far
	body    int    // bytes of the current request's body still to come
	refused bool   // answered with an error: the rest is discarded until it closes
	added   bool   // nbio is done adding it (its read deadline is set): see settled
}

func newPreUpgrade(cfg Config) *preUpgrade {
	return &preUpgrade{
		max:               cfg.MaxPendingUpgrades,
		maxPerIP:          cfg.MaxPendingUpgradesPerIP,
		maxHeader:         cfg.MaxHeaderBytes,
		maxBody:           cfg.MaxBodyBytes,
		refused:           func(string) {},
		timedOut:          func() {},
		socks:             map[netip.AddrPort]*pendingSock{},
		perIP:             map[netip.Prefix]int{},
		stale:             map[netip.AddrPort]int{},
		early:             map[netip.AddrPort]*nbio.Conn{},
		discardAfterClose: time.Second,
	}
}

// sockKey is a socket's remote address in one form (IPv4-mapped IPv6 addresses as IPv4), the
// key of its pending slot.
func sockKey(remote string) (netip.AddrPort, bool) {
	ap, err := netip.ParseAddrPort(remote)
	if err != nil {
		return netip.AddrPort{}, false
	}
	return netip.AddrPortFrom(ap.Addr().Unmap(), ap.Port()), true
}

// ipKey is the address a per-IP cap counts: the IPv4 address, or the IPv6 /64.
func ipKey(a netip.Addr) netip.Prefix {
	bitsN := 32
	if a.Is6() {
		bitsN = 64
	}
	p, _ := a.Prefix(bitsN)
	return p
}

// admit takes a pending slot for a socket just accepted; false (and counted) if none is free.
func (p *preUpgrade) admit(remote string) bool {
	key, ok := sockKey(remote)
	if !ok {
		p.refused("malformed")
		return false
	}
	ip := ipKey(key.Addr())
	p.mu.Lock()
	defer p.mu.Unlock()
	switch {
	case p.n >= p.max:
		p.refused("pending_full")
		return false
	case p.perIP[ip] >= p.maxPerIP:
		p.refused("pending_per_ip")
		return false
	}
	if _, taken := p.socks[key]; taken {
		// The client reused the port of a socket that has closed but whose close has not been
		// reported yet (done): the next done for this address is that socket's. The new socket
		// gets a fresh entry; the old one's slot is given back by that done.
		p.stale[key]++
	}
	p.socks[key] = &pendingSock{ip: ip}
	p.perIP[ip]++
	p.n++
	return true
}

// done gives a socket's slot back (it upgraded or closed); false if it held none.
func (p *preUpgrade) done(remote string) bool {
	key, ok := sockKey(remote)
	if !ok {
		return false
	}
	p.mu.Lock()
	defer p.mu.Unlock()
	s, ok := p.socks[key]
	if !ok {
		return false
	}
	if p.stale[key] > 0 {
		// An older socket's close: its slot goes back, the entry stays the newer socket's.
		if p.stale[key]--; p.stale[key] == 0 {
			delete(p.stale, key)
		}
	} else {
		delete(p.socks, key)
	}
	if p.perIP[s.ip]--; p.perIP[s.ip] <= 0 {
		delete(p.perIP, s.ip)
	}
	p.n--
	return true
}

// upgraded gives the slot of a socket that became a WebSocket back. The upgrade cleared the
// socket's read deadline (handshake_timeout); if nbio has not yet set it (settled has not seen the
// socket), settled clears it again once nbio has. nc is nil for a TLS socket, whose deadline the
// gateway sets itself before it can upgrade (tls.go).
func (p *preUpgrade) upgraded(remote string, nc *nbio.Conn) {
	if key, ok := sockKey(remote); ok && nc != nil {
		p.mu.Lock()
		if s := p.socks[key]; s != nil && !s.added {
			p.early[key] = nc
		}
		p.mu.Unlock()
	}
	p.done(remote)
}

// settled is told that nbio has added the socket from key to a poller and set its read deadline
// (handshake_timeout). nbio does that after it registers the socket, so a fast client's request
// can be read and upgraded before: the upgrade's clearing of the deadline then comes first, and
// the connection, authenticated and busy, would be closed handshake_timeout after it connected
// ("read timeout": 18 of 20,000 connections in a loaded idle benchmark). Such a socket's deadline
// is cleared here.
func (p *preUpgrade) settled(key netip.AddrPort) {
	p.mu.Lock()
	nc := p.early[key]
	delete(p.early, key)
	if s := p.socks[key]; s != nil {
		s.added = true
	}
	p.mu.Unlock()
	if nc != nil {
		_ = nc.SetReadDeadline(time.Time{})
	}
}

// pending is the number of pending sockets.
func (p *preUpgrade) pending() int {
	p.mu.Lock()
	defer p.mu.Unlock()
	return p.n
}

// errRefused ends a socket whose request was refused before the upgrade.
var errRefused = errors.New("gateway: request refused before the upgrade")

// check looks at a pending socket's next plaintext before nbio's HTTP parser does. On a refusal
// it answers the client itself, stops writing, discards what follows and closes the socket
// shortly after (so the client can read the answer), and tells the caller not to parse.
// w is where the answer goes: the socket, or the TLS connection on it.
func (p *preUpgrade) check(nc *nbio.Conn, w io.Writer, data []byte) error {
	key, _ := sockKey(nc.RemoteAddr().String())
	p.mu.Lock()
	s := p.socks[key]
	p.mu.Unlock()
	if s == nil {
		return errRefused // accepted by no pending listener: not ours to serve
	}
	if s.refused {
		return errDiscard
	}
	status, reason := s.scan(data, p)
	if status == 0 {
		return nil
	}
	s.refused = true
	p.refused(reason)
	_, _ = w.Write([]byte("HTTP/1.1 " + strconv.Itoa(status) + " " + reasonText(status) + "\r\nContent-Type: text/plain; charset=utf-8\r\n" +
		"Connection: close\r\nContent-Length: " + strconv.Itoa(len(reason)+1) + "\r\n\r\n" + reason + "\n"))
	if fd := nc.Hash(); fd > 0 {
		_ = syscall.Shutdown(fd, syscall.SHUT_WR)
	}
	time.AfterFunc(p.discardAfterClose, func() { _ = nc.Close() })
	return errDiscard
}

// errDiscard: the chunk is dropped, the socket stays open for now (see check).
var errDiscard = errors.New("gateway: discarded")

func reasonText(status int) string {
	switch status {
	case 400:
		return "Bad Request"
	case 411:
		return "Length Required"
	case 413:
		return "Content Too Large"
	case 431:
		return "Request Header Fields Too Large"
	}
	return "Error"
}

// scan follows the requests in data: it skips bodies and, at the end of each request's headers,
// checks them. It returns 0 to go on, or the HTTP status and reason of a refusal.
func (s *pendingSock) scan(data []byte, p *preUpgrade) (int, string) {
	for len(data) > 0 {
		if s.body > 0 {
			n := min(s.body, len(data))
			s.body -= n
			data = data[n:]
			continue
		}
		prev := len(s.hdr)
		room := p.maxHeader - prev
		take := data[:min(len(data), room)]
		s.hdr = append(s.hdr, take...)
		end := bytes.Index(s.hdr[max(0, prev-3):], []byte("\r\n\r\n"))
		if end < 0 {
			if len(take) < len(data) || len(s.hdr) >= p.maxHeader {
				return 431, "header_too_large"
			}
			return 0, ""
		}
		end += max(0, prev-3) + 4
		data = data[end-prev:]
		status, reason := s.request(s.hdr[:end], p)
		s.hdr = nil
		if status != 0 {
			return status, reason
		}
	}
	return 0, ""
}

// request checks one request's line and headers (ending in the empty line) and sets up the skip
// of its body.
func (s *pendingSock) request(h []byte, p *preUpgrade) (int, string) {
	var (
		length  = -1
		chunked bool
	)
	lines := bytes.Split(h[:len(h)-4], []byte("\r\n"))
	if len(lines) == 0 || len(lines[0]) == 0 {
		return 400, "malformed"
	}
	for _, l := range lines[1:] {
		name, value, ok := bytes.Cut(l, []byte(":"))
		if !ok || len(name) == 0 || name[0] == ' ' || name[0] == '\t' {
			return 400, "malformed" // no obsolete line folding, no nameless headers
		}
		value = bytes.Trim(value, " \t")
		switch {
		case asciiEqualFold(name, "Content-Length"):
			if length >= 0 {
				return 400, "malformed"
			}
			n, err := strconv.Atoi(string(value))
			if err != nil || n < 0 || len(value) == 0 || value[0] < '0' || value[0] > '9' {
				return 400, "malformed"
			}
			length = n
		case asciiEqualFold(name, "Transfer-Encoding"):
			chunked = true
		}
	}
	switch {
	case chunked && length >= 0:
		return 400, "malformed"
	case chunked:
		return 411, "chunked"
	case length > p.maxBody:
		return 413, "body_too_large"
	}
	s.body = max(length, 0)
	return 0, ""
}

func asciiEqualFold(b []byte, s string) bool {
	if len(b) != len(s) {
		return false
	}
	for i := range b {
		c := b[i]
		if 'A' <= c && c <= 'Z' {
			c += 'a' - 'A'
		}
		d := s[i]
		if 'A' <= d && d <= 'Z' {
			d += 'a' - 'A'
		}
		if c != d {
			return false
		}
	}
	return true
}

// pendingListener takes a pending slot for every socket it accepts, and closes at once the
// sockets for which there is none.
type pendingListener struct {
	net.Listener
	pre  *preUpgrade
	last netip.AddrPort // the socket the previous Accept returned (the accept goroutine's own)
	has  bool
}

// Accept returns the next socket that got a pending slot. nbio's accept goroutine calls it again
// only once it is done adding the previous socket (AddConnNonTLSNonBlocking: the poller, then the
// read deadline), so that socket is settled now.
func (l *pendingListener) Accept() (net.Conn, error) {
	if l.has {
		l.pre.settled(l.last)
		l.has = false
	}
	for {
		c, err := l.Listener.Accept()
		if err != nil {
			return nil, err
		}
		remote := c.RemoteAddr().String()
		if l.pre.admit(remote) {
			l.last, l.has = sockKey(remote)
			return c, nil
		}
		_ = c.Close()
	}
}

// Protect installs the gateway's defences on the engine that serves it: admission of every
// inbound frame (admission.go), and the limits on sockets before the upgrade (this file). Call it
// before the engine starts.
func (g *Gateway) Protect(e *nbhttp.Engine) {
	g.pre.refused = func(reason string) { g.metrics.httpRefused.WithLabelValues(reason).Inc() }
	g.pre.timedOut = func() { g.metrics.timeouts.WithLabelValues("upgrade").Inc() }
	// nbio's read deadline before the upgrade: the whole request within handshake_timeout.
	e.KeepaliveTime = g.cfg.HandshakeTimeout
	// nbio's own cap never binds first: device and pending sockets have their own.
	e.MaxLoad = g.cfg.MaxConns + g.cfg.MaxPendingUpgrades + 64
	e.MaxHTTPBodySize = max(g.cfg.MaxBodyBytes, 1)
	listen := e.Listen
	e.Listen = func(network, addr string) (net.Listener, error) {
		ln, err := listen(network, addr)
		if err != nil {
			return nil, err
		}
		return &pendingListener{Listener: ln, pre: g.pre}, nil
	}
	e.Engine.OnData(g.onData)
	e.OnClose(func(c net.Conn, err error) {
		if g.pre.done(c.RemoteAddr().String()) && errors.Is(err, nbio.ErrReadTimeout) {
			g.pre.timedOut()
		}
	})
}
