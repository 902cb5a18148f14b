// Copyright 2026 The Petrel Authors
// SPDX-License-Identifier: Apache-2.0

package gateway

import (
	"crypto/tls"
	"errors"
	"fmt"
	"log/slog"
	"net"
	"sync"
	"time"

	"github.com/prometheus/client_golang/prometheus"

	"github.com/petrelchat/petrel/third_party/nbio"
	"github.com/petrelchat/petrel/third_party/nbio/nbhttp"
)

// TLS on the public listener is Go's crypto/tls, kept event-driven:
//
//   - An acceptor goroutine accepts TCP connections and hands each socket to nbio's pollers at
//     once. Until its ClientHello has arrived whole the connection costs no goroutine: the poller
//     buffers the bytes, and the handshake deadline (handshake_timeout, counted from accept) closes
//     it if it never comes.
//   - A whole ClientHello starts a goroutine that runs crypto/tls's handshake. The handshake reads
//     from a transport (tlsConn) that serves bytes the poller buffered and, while none are there,
//     waits for the poller without holding a handshake slot: slots (tls_max_handshakes) bound the
//     handshakes computing at once, not the ones waiting for a slow client.
//   - After the handshake the goroutine ends. Bytes from the poller are buffered and one job per
//     connection (nbio's per-connection executor, so in order) decrypts whole records with
//     tls.Conn.Read until the transport reports that nothing more is buffered. That report is a
//     temporary net.Error, which crypto/tls does not make sticky (a partial record or handshake
//     message stays in its buffers until the next read), so a post-handshake message spread over
//     several reads (KeyUpdate, alerts) never blocks a goroutine.
//   - Writes go through tls.Conn.Write to nbio's non-blocking, bounded write buffer.
//
// Policy: TLS 1.3, and TLS 1.2 with ECDHE and AEAD suites only; hybrid post-quantum key exchange
// (X25519MLKEM768) preferred.

// acmeALPNProto is the ALPN protocol of ACME's TLS-ALPN-01 challenge (RFC 8737). A server
// configuration that offers it (automatic certificates) answers the challenge in GetCertificate;
// the connection is closed after the handshake.
const acmeALPNProto = "acme-tls/1"

// DefaultTLSMaxHandshakes is the default of TLS.MaxHandshakes.
const DefaultTLSMaxHandshakes = 32

// maxTLSBuffered is the most received ciphertext one connection may have waiting to be decrypted
// and handled. A client that sends faster than its frames are handled is cut off beyond it rather
// than buffered without bound.
const maxTLSBuffered = 4 << 20

// maxClientHelloBytes bounds what is buffered before a handshake starts (a ClientHello is at most
// a 64 KiB handshake message, carried by 16 KiB records). Beyond it the handshake starts anyway and
// crypto/tls judges what it got.
const maxClientHelloBytes = 64<<10 + 4*(5+256)

// tlsPlaintextBytes is the size of the buffer decrypted records are read into (the largest TLS
// record plaintext).
const tlsPlaintextBytes = 16 << 10

// TLSCipherSuites are the TLS 1.2 suites served: ECDHE key exchange (forward secrecy) with an
// AEAD (AES-GCM, ChaCha20-Poly1305). No static RSA key exchange, no CBC, no 3DES, no RC4. TLS 1.3
// suites are all AEAD and not configurable.
var TLSCipherSuites = []uint16{
	tls.TLS_ECDHE_ECDSA_WITH_AES_128_GCM_SHA256,
	tls.TLS_ECDHE_RSA_WITH_AES_128_GCM_SHA256,
	tls.TLS_ECDHE_ECDSA_WITH_AES_256_GCM_SHA384,
	tls.TLS_ECDHE_RSA_WITH_AES_256_GCM_SHA384,
	tls.TLS_ECDHE_ECDSA_WITH_CHACHA20_POLY1305_SHA256,
	tls.TLS_ECDHE_RSA_WITH_CHACHA20_POLY1305_SHA256,
}

// TLSCurves are the key exchanges offered, most preferred first: the hybrid post-quantum
// X25519MLKEM768 (TLS 1.3 only), then classical ECDHE for clients without it.
var TLSCurves = []tls.CurveID{
	tls.X25519MLKEM768,
	tls.SecP256r1MLKEM768,
	tls.SecP384r1MLKEM1024,
	tls.X25519,
	tls.CurveP256,
	tls.CurveP384,
}

// ServerTLSConfig returns the TLS policy of the public listener for certs.
func ServerTLSConfig(certs []tls.Certificate) *tls.Config {
	return &tls.Config{
		Certificates:     certs,
		MinVersion:       tls.VersionTLS12,
		CipherSuites:     TLSCipherSuites,
		CurvePreferences: TLSCurves,
		NextProtos:       []string{"http/1.1"},
		// Full-size records: fewer records (and write calls) per flush; frames are small, so the
		// latency argument for small first records does not apply.
		DynamicRecordSizingDisabled: true,
	}
}

// LoadTLS loads a certificate chain and key (PEM) and returns the public listener's TLS
// configuration (ServerTLSConfig).
func LoadTLS(certFile, keyFile string) (*tls.Config, error) {
	cert, err := tls.LoadX509KeyPair(certFile, keyFile)
	if err != nil {
		return nil, fmt.Errorf("load TLS certificate: %w", err)
	}
	return ServerTLSConfig([]tls.Certificate{cert}), nil
}

// TLS configures TLS on the public listener.
type TLS struct {
	// Config is the server configuration (see ServerTLSConfig). Required.
	Config *tls.Config
	// MaxHandshakes is the most TLS handshakes computing at once; more wait for a slot. A
	// handshake waiting for its client holds no slot. Default: DefaultTLSMaxHandshakes (32).
	MaxHandshakes int
	// HandshakeTimeout is how long a connection has, from accept, to finish the TLS handshake.
	// Default: 10s.
	HandshakeTimeout time.Duration
	// Gateway is the gateway whose WebSockets the listener serves. Required: its upgrader is told
	// the engine, so that WebSockets over TLS use the engine's buffers and handler pool.
	Gateway *Gateway
	// Logger and Registry: diagnostics and metrics (petrel_gateway_tls_*).
	Logger   *slog.Logger
	Registry prometheus.Registerer
}

// tlsServer accepts TLS connections and runs their handshakes for an nbhttp engine.
type tlsServer struct {
	e        *nbhttp.Engine
	cfg      *tls.Config
	timeout  time.Duration
	network  string
	addr     string
	bound    func(net.Addr)
	log      *slog.Logger
	sem      chan struct{} // handshake slots
	stopping chan struct{} // closed by stop
	onData   func(*nbio.Conn, []byte)
	g        *Gateway

	handshakes *prometheus.CounterVec

	ln net.Listener

	mu      sync.Mutex     // orders wg.Add after stop with wg.Wait
	wg      sync.WaitGroup // the acceptor and handshake goroutines
	stopped bool           // guarded by mu
}

func newTLSServer(e *nbhttp.Engine, network, addr string, bound func(net.Addr), t *TLS) (*tlsServer, error) {
	if t.Config == nil {
		return nil, errors.New("gateway: TLS without a configuration")
	}
	if t.Gateway == nil {
		return nil, errors.New("gateway: TLS without a gateway")
	}
	if t.MaxHandshakes <= 0 {
		t.MaxHandshakes = DefaultTLSMaxHandshakes
	}
	if t.HandshakeTimeout <= 0 {
		t.HandshakeTimeout = 10 * time.Second
	}
	if t.Logger == nil {
		t.Logger = slog.Default()
	}
	s := &tlsServer{
		e:        e,
		cfg:      t.Config,
		timeout:  t.HandshakeTimeout,
		network:  network,
		addr:     addr,
		bound:    bound,
		log:      t.Logger,
		sem:      make(chan struct{}, t.MaxHandshakes),
		stopping: make(chan struct{}),
		g:        t.Gateway,
		handshakes: prometheus.NewCounterVec(prometheus.CounterOpts{
			Name: "petrel_gateway_tls_handshakes_total",
			Help: "TLS handshakes on the public listener, by result (ok, failed, abandoned: closed or timed out before it finished).",
		}, []string{"result"}),
	}
	for _, r := range []string{"ok", "failed", "abandoned"} {
		s.handshakes.WithLabelValues(r)
	}
	if t.Registry != nil {
		if err := t.Registry.Register(s.handshakes); err != nil {
			return nil, fmt.Errorf("gateway: register TLS metrics: %w", err)
		}
	}
	s.onData = s.data
	// WebSockets upgraded on a TLS connection are not on an *nbio.Conn, so nbio's upgrader takes
	// its "other connection" path: it must use this engine (its handler pool, buffers and payload
	// ownership, ReleaseWebsocketPayload off) and write synchronously (the write lands in nbio's
	// non-blocking buffer; no writer goroutine per connection).
	u := t.Gateway.upgrader
	u.Engine = e
	u.BlockingModAsyncWrite = false
	u.BlockingModHandleRead = false
	return s, nil
}

// start listens and accepts. The engine must be running.
func (s *tlsServer) start() error {
	ln, err := listen(s.network, s.addr)
	if err != nil {
		return err
	}
	s.mu.Lock()
	s.ln = ln
	s.mu.Unlock()
	if s.bound != nil {
		s.bound(ln.Addr())
	}
	s.log.Info("serving TLS", "addr", ln.Addr().String())
	s.wg.Add(1)
	go s.accept()
	return nil
}

// stop closes the listener and ends the handshakes in progress. Connections already handed to the
// engine are the engine's to close.
func (s *tlsServer) stop() {
	s.mu.Lock()
	if !s.stopped {
		s.stopped = true
		close(s.stopping)
		if s.ln != nil {
			_ = s.ln.Close()
		}
	}
	s.mu.Unlock()
	s.wg.Wait()
}

// goHandshake starts t's handshake goroutine unless the server is stopping.
func (s *tlsServer) goHandshake(t *tlsConn) {
	s.mu.Lock()
	if s.stopped {
		s.mu.Unlock()
		_ = t.nbc.Close()
		return
	}
	s.wg.Add(1)
	s.mu.Unlock()
	go t.handshake()
}

func (s *tlsServer) accept() {
	defer s.wg.Done()
	backoff := 5 * time.Millisecond
	for {
		c, err := s.ln.Accept()
		if err != nil {
			select {
			case <-s.stopping:
				return
			default:
			}
			if errors.Is(err, net.ErrClosed) {
				return
			}
			// Out of file descriptors or another passing failure: retry after a pause rather
			// than spin.
			s.log.Warn("accept", "err", err, "retry_in", backoff)
			select {
			case <-time.After(backoff):
			case <-s.stopping:
				return
			}
			backoff = min(2*backoff, time.Second)
			continue
		}
		backoff = 5 * time.Millisecond
		s.add(c)
	}
}

// add hands an accepted socket to the pollers; its handshake starts once its ClientHello is in.
func (s *tlsServer) add(c net.Conn) {
	// A pending slot first (preupgrade.go), as for a plain socket: handshakes and requests in
	// progress never take established devices' slots. The engine's OnClose gives it back.
	if !s.g.pre.admit(c.RemoteAddr().String()) {
		_ = c.Close()
		return
	}
	nbc, err := nbio.NBConn(c) // duplicates the descriptor and closes c's
	if err != nil {
		s.g.pre.done(c.RemoteAddr().String())
		_ = c.Close()
		return
	}
	t := &tlsConn{s: s, nbc: nbc, hs: &tlsHandshake{wake: make(chan struct{}, 1), done: make(chan struct{})}}
	nbc.SetSession(t)
	nbc.OnData(s.onData)
	raceHandoff() // the pollers see the session through epoll, which the race detector cannot
	if err := s.e.AddTransferredConn(nbc); err != nil {
		return // closed by the engine (over MaxLoad)
	}
	// The pollers may already have the ClientHello, and the handshake may even be over: the
	// handshake deadline is set only while it is not (the handshake sets the next deadline under
	// mu as it ends), so a late one never lands on an established connection.
	t.mu.Lock()
	if !t.closed && t.state != tlsOpen {
		_ = nbc.SetReadDeadline(time.Now().Add(s.timeout))
	}
	t.mu.Unlock()
}

// acquire takes a handshake slot; false if the connection closed or the server stopped first.
func (s *tlsServer) acquire(hs *tlsHandshake) bool {
	select {
	case s.sem <- struct{}{}:
		hs.holding = true
		return true
	case <-hs.done:
	case <-s.stopping:
	}
	return false
}

func (s *tlsServer) release(hs *tlsHandshake) {
	if hs.holding {
		hs.holding = false
		<-s.sem
	}
}

// data is nbio's data handler for TLS connections (a poller goroutine).
func (s *tlsServer) data(nbc *nbio.Conn, b []byte) {
	t, ok := nbc.Session().(*tlsConn)
	if !ok {
		_ = nbc.Close()
		return
	}
	var start, drain bool
	t.mu.Lock()
	if t.closed {
		t.mu.Unlock()
		return
	}
	if len(t.in)-t.off+len(b) > maxTLSBuffered {
		t.mu.Unlock()
		_ = nbc.CloseWithError(errTLSBacklog)
		return
	}
	if t.off > 0 && t.off == len(t.in) {
		t.in, t.off = t.in[:0], 0
	}
	t.in = append(t.in, b...)
	switch t.state {
	case tlsHello:
		if clientHelloComplete(t.in[t.off:]) {
			t.state = tlsHandshaking
			start = true
		}
	case tlsHandshaking:
		select {
		case t.hs.wake <- struct{}{}:
		default:
		}
	case tlsOpen:
		if !t.draining {
			t.draining = true
			drain = true
		}
	}
	t.mu.Unlock()
	if start {
		s.goHandshake(t)
	}
	if drain {
		nbc.Execute(t.drain)
	}
}

var errTLSBacklog = errors.New("gateway: too much TLS input waiting to be handled")

// errTLSWouldBlock is what the transport returns when the poller has buffered nothing more. It is
// a temporary net.Error: crypto/tls keeps what it has read and does not fail the connection.
var errTLSWouldBlock net.Error = wouldBlock{}

type wouldBlock struct{}

func (wouldBlock) Error() string   { return "gateway: no more TLS input buffered" }
func (wouldBlock) Timeout() bool   { return true }
func (wouldBlock) Temporary() bool { return true }

// clientHelloComplete reports whether b starts with a whole first handshake message (the
// ClientHello) in handshake records, or holds something that is no such thing, or more than
// maxClientHelloBytes: in all those cases crypto/tls has enough to decide.
func clientHelloComplete(b []byte) bool {
	if len(b) > maxClientHelloBytes {
		return true
	}
	var hdr [4]byte
	got, need := 0, -1
	for len(b) >= 5 {
		if b[0] != 22 { // not a handshake record: let crypto/tls refuse it
			return true
		}
		n := int(b[3])<<8 | int(b[4])
		if len(b) < 5+n {
			return false
		}
		for _, c := range b[5 : 5+n] {
			if got < 4 {
				hdr[got] = c
			}
			got++
			if got == 4 {
				need = 4 + (int(hdr[1])<<16 | int(hdr[2])<<8 | int(hdr[3]))
			}
		}
		if need >= 0 && got >= need {
			return true
		}
		b = b[5+n:]
	}
	return len(b) > 0 && b[0] != 22
}

// Connection states.
const (
	tlsHello       = iota // waiting for the ClientHello
	tlsHandshaking        // a goroutine runs the handshake
	tlsOpen               // established: records are decrypted by drain jobs
)

// tlsHandshake is the state a connection needs only until its handshake ends.
type tlsHandshake struct {
	wake    chan struct{} // the poller buffered more input
	done    chan struct{} // closed when the connection closes
	holding bool          // holds a handshake slot (only the handshake goroutine uses it)
}

// tlsConn is one TLS connection of the public listener. It is the transport under crypto/tls's
// tls.Conn (it implements net.Conn over the poller's buffered input and nbio's writes) and the
// nbio session that routes close to the HTTP parser or WebSocket on top.
type tlsConn struct {
	s   *tlsServer
	nbc *nbio.Conn

	mu       sync.Mutex
	in       []byte // ciphertext from the poller not yet read by crypto/tls; nil when none
	off      int    // read position in in
	state    uint8
	draining bool // a drain job is scheduled or running
	closed   bool
	hs       *tlsHandshake // nil once the handshake ended
	tc       *tls.Conn
	parser   *nbhttp.Parser      // until the upgrade
	pc       nbhttp.ParserCloser // the WebSocket, after the upgrade
}

// handshake runs the TLS handshake, then hands the connection to drain jobs.
func (t *tlsConn) handshake() {
	s := t.s
	defer s.wg.Done()
	t.mu.Lock()
	hs := t.hs
	t.mu.Unlock()
	if hs == nil || !s.acquire(hs) {
		return
	}
	tc := tls.Server(t, s.cfg)
	err := tc.Handshake()
	s.release(hs)
	if err != nil {
		t.mu.Lock()
		closed := t.closed
		t.mu.Unlock()
		if closed {
			s.handshakes.WithLabelValues("abandoned").Inc()
		} else {
			s.handshakes.WithLabelValues("failed").Inc()
			s.log.Debug("TLS handshake failed", "remote", t.nbc.RemoteAddr().String(), "err", err)
		}
		_ = t.nbc.CloseWithError(err)
		return
	}
	s.handshakes.WithLabelValues("ok").Inc()
	if tc.ConnectionState().NegotiatedProtocol == acmeALPNProto {
		// An ACME CA's TLS-ALPN-01 validation (RFC 8737): the certificate the handshake showed was
		// the whole answer, and the connection carries nothing else.
		_ = tc.Close()
		return
	}
	releaseTLSReadBuffers(tc)
	hc := &nbhttp.Conn{Conn: tc}
	p := nbhttp.NewParser(hc, s.e, nbhttp.NewServerProcessor(), false, nbhttp.SyncExecutor)
	hc.Parser = p
	t.mu.Lock()
	if t.closed {
		t.mu.Unlock()
		return
	}
	// Until the HTTP request (the upgrade) is in, the same deadline as a plain connection's. Set
	// before the state changes: once open, a drain job may upgrade and clear it.
	_ = t.nbc.SetReadDeadline(time.Now().Add(s.e.KeepaliveTime))
	t.tc, t.parser, t.hs, t.state = tc, p, nil, tlsOpen
	t.draining = true
	t.mu.Unlock()
	// crypto/tls may already hold the first request, read along with the handshake's last flight.
	t.nbc.Execute(t.drain)
}

var plainPool = sync.Pool{New: func() any { b := make([]byte, tlsPlaintextBytes); return &b }}

// drain decrypts what is buffered and feeds it to the HTTP parser (and, after the upgrade, the
// WebSocket), whose handlers run here, in order. It runs as the connection's nbio job.
func (t *tlsConn) drain() {
	t.mu.Lock()
	tc, p, pc := t.tc, t.parser, t.pc
	t.mu.Unlock()
	bp := plainPool.Get().(*[]byte)
	defer plainPool.Put(bp)
	for {
		n, err := tc.Read(*bp)
		if n > 0 {
			var perr error
			if pc != nil {
				perr = pc.Parse((*bp)[:n])
			} else {
				// Before the upgrade the request is checked as a plain one's is (preupgrade.go).
				perr = t.s.g.pre.check(t.nbc, tc, (*bp)[:n])
				if errors.Is(perr, errDiscard) {
					continue
				}
				if perr == nil {
					perr = p.Parse((*bp)[:n])
				}
				if p.ParserCloser != nil {
					// Upgraded: from now on input goes straight to the WebSocket's reader
					// (wsReader, installed by ServeHTTP), and the HTTP parser is let go.
					pc = p.ParserCloser
					t.mu.Lock()
					t.pc, t.parser = pc, nil
					t.mu.Unlock()
				}
			}
			if perr != nil {
				_ = t.nbc.CloseWithError(perr)
				return
			}
		}
		if err == nil {
			continue
		}
		if !errors.Is(err, errTLSWouldBlock) {
			_ = t.nbc.CloseWithError(err) // close_notify (io.EOF), a bad record, an alert
			return
		}
		t.mu.Lock()
		if !t.closed && t.off < len(t.in) {
			t.mu.Unlock()
			continue // more came in while decrypting
		}
		t.draining = false
		t.mu.Unlock()
		releaseTLSReadBuffers(tc) // an idle connection holds no read buffer
		return
	}
}

// Read serves crypto/tls the buffered input. During the handshake it waits (without a handshake
// slot) for the poller; afterwards it reports errTLSWouldBlock when nothing is buffered.
func (t *tlsConn) Read(b []byte) (int, error) {
	for {
		t.mu.Lock()
		if t.off < len(t.in) {
			n := copy(b, t.in[t.off:])
			t.off += n
			if t.off == len(t.in) {
				// Drop the buffer: an idle connection holds none.
				t.in, t.off = nil, 0
			}
			t.mu.Unlock()
			return n, nil
		}
		if t.closed {
			t.mu.Unlock()
			return 0, net.ErrClosed
		}
		hs := t.hs
		t.mu.Unlock()
		if hs == nil {
			return 0, errTLSWouldBlock
		}
		t.s.release(hs)
		select {
		case <-hs.wake:
		case <-hs.done:
		case <-t.s.stopping:
			return 0, net.ErrClosed
		}
		if !t.s.acquire(hs) {
			return 0, net.ErrClosed
		}
	}
}

// Write hands a record to nbio's non-blocking write buffer.
func (t *tlsConn) Write(b []byte) (int, error) { return t.nbc.Write(b) }

// Close closes the socket; nbio then calls CloseAndClean.
func (t *tlsConn) Close() error { return t.nbc.Close() }

// LocalAddr is the socket's local address.
func (t *tlsConn) LocalAddr() net.Addr { return t.nbc.LocalAddr() }

// RemoteAddr is the peer's address.
func (t *tlsConn) RemoteAddr() net.Addr { return t.nbc.RemoteAddr() }

// SetDeadline sets the read deadline only (see SetWriteDeadline).
func (t *tlsConn) SetDeadline(d time.Time) error { return t.SetReadDeadline(d) }

// SetReadDeadline closes the connection if nothing is read by d (nbio's read deadline), as for a
// plain connection: the HTTP parser and the upgrader use it.
func (t *tlsConn) SetReadDeadline(d time.Time) error { return t.nbc.SetReadDeadline(d) }

// SetWriteDeadline does nothing: writes never block (they land in nbio's write buffer, which is
// bounded), and crypto/tls sets one around its close_notify, which should not arm a timer.
func (t *tlsConn) SetWriteDeadline(time.Time) error { return nil }

// UnderlayerConn is the TLS connection (nbhttp.ParserCloser).
func (t *tlsConn) UnderlayerConn() net.Conn {
	t.mu.Lock()
	defer t.mu.Unlock()
	if t.tc == nil {
		return nil
	}
	return t.tc
}

// Parse is not used: input arrives through tlsServer.data (nbhttp.ParserCloser).
func (t *tlsConn) Parse([]byte) error {
	return errors.New("gateway: TLS input goes through the data handler")
}

// CloseAndClean is called by the engine when the socket has closed (nbhttp.ParserCloser): it
// ends a handshake in progress and closes the HTTP parser or WebSocket on top.
func (t *tlsConn) CloseAndClean(err error) {
	t.mu.Lock()
	if t.closed {
		t.mu.Unlock()
		return
	}
	t.closed = true
	hs, p, pc, state := t.hs, t.parser, t.pc, t.state
	t.hs, t.in, t.off = nil, nil, 0
	t.mu.Unlock()
	if pc != nil {
		pc.CloseAndClean(err)
		return
	}
	if hs != nil {
		close(hs.done)
		if state == tlsHello {
			t.s.handshakes.WithLabelValues("abandoned").Inc()
		}
	}
	if p != nil {
		if pc := p.ParserCloser; pc != nil {
			pc.CloseAndClean(err)
		} else {
			p.CloseAndClean(err)
		}
	}
}
