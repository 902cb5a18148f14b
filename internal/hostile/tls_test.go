// Copyright 2026 The Petrel Authors
// SPDX-License-Identifier: Apache-2.0

package hostile

import (
	"context"
	"crypto/tls"
	"errors"
	"io"
	"net"
	"os"
	"sync"
	"testing"
	"time"

	"github.com/petrelchat/petrel/internal/server"
	"github.com/petrelchat/petrel/internal/testserver"
)

// stallConn sends what its TLS client writes but never delivers what the server answers: the
// client sends its ClientHello and then waits forever.
type stallConn struct {
	net.Conn
	stop <-chan struct{}
}

func (c stallConn) Read([]byte) (int, error) {
	<-c.stop
	return 0, io.EOF
}

// TestHostileTLSHandshakeStall attacks the TLS handshake with sockets that open TCP and send
// nothing, sockets that send half a ClientHello, and clients that send a whole ClientHello and
// then never answer the server. With only two handshake slots, honest clients still complete
// their handshakes at once (a connection takes a slot only while its handshake computes), and
// every attacking socket is closed by the server at handshake_timeout.
func TestHostileTLSHandshakeStall(t *testing.T) {
	const (
		perKind = 100
		timeout = 3 * time.Second
	)
	cert := testserver.SelfSigned(t, testserver.ECDSA)
	s := testserver.Start(t, testserver.WithTLS(cert), testserver.WithConfig(func(c *server.Config) {
		c.TLSMaxHandshakes = 2
		c.HandshakeTimeout = server.Duration{Duration: timeout}
		// All 300 attacking sockets come from 127.0.0.1, as the honest ones do: the per-IP cap on
		// pending sockets (TestHostilePendingPerIPCap) would refuse the honest ones, which is not
		// what this test is about.
		c.MaxPendingUpgradesPerIP = 1024
	}))
	addr := s.Server().Addr().String()
	stop := make(chan struct{})

	start := time.Now()
	var raws []net.Conn
	dial := func() net.Conn {
		c, err := net.Dial("tcp", addr)
		if err != nil {
			t.Fatal(err)
		}
		t.Cleanup(func() { c.Close() })
		raws = append(raws, c)
		return c
	}
	for range perKind {
		dial() // silent
	}
	for range perKind {
		// A handshake record announcing 512 bytes, of which a ClientHello header arrives.
		if _, err := dial().Write([]byte{22, 3, 1, 2, 0, 1, 0, 1, 252, 3, 3}); err != nil {
			t.Fatal(err)
		}
	}
	var hellos sync.WaitGroup
	for range perKind {
		c := dial()
		hellos.Add(1)
		go func() {
			defer hellos.Done()
			tc := tls.Client(stallConn{c, stop}, &tls.Config{RootCAs: cert.Pool, ServerName: "127.0.0.1"})
			_ = tc.Handshake() // returns once the test ends
		}()
	}
	t.Cleanup(func() { close(stop); hellos.Wait() })

	// Honest clients meanwhile: each handshake completes well within the attackers' deadline.
	for i := range 5 {
		t0 := time.Now()
		ctx, cancel := context.WithTimeout(context.Background(), timeout)
		c, err := (&tls.Dialer{Config: &tls.Config{RootCAs: cert.Pool}}).DialContext(ctx, "tcp", addr)
		cancel()
		if err != nil {
			t.Fatalf("honest handshake %d under attack: %v", i, err)
		}
		c.Close()
		if d := time.Since(t0); d > timeout/2 {
			t.Fatalf("honest handshake %d took %v under attack (handshake_timeout %v)", i, d, timeout)
		}
	}
	honest := testserver.DialTLS(t, s.URL(), cert.Pool)
	honest.MustRegister("honest")

	// Every attacking socket is closed by the server: reading it ends (EOF or reset) instead of
	// reaching a deadline well past handshake_timeout.
	deadline := start.Add(timeout + 5*time.Second)
	var wg sync.WaitGroup
	errs := make(chan error, len(raws))
	for _, c := range raws {
		wg.Add(1)
		go func() {
			defer wg.Done()
			_ = c.SetReadDeadline(deadline)
			_, err := io.Copy(io.Discard, c)
			if errors.Is(err, os.ErrDeadlineExceeded) {
				errs <- err
			}
		}()
	}
	wg.Wait()
	close(errs)
	if n := len(errs); n > 0 {
		t.Fatalf("%d of %d stalled TLS handshakes still open %v after they started (handshake_timeout %v)",
			n, len(raws), time.Since(start).Round(time.Millisecond), timeout)
	}
}
