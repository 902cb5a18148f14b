// Copyright 2026 The Petrel Authors
// SPDX-License-Identifier: Apache-2.0

package gateway

import (
	"bufio"
	"bytes"
	"crypto/ecdsa"
	"crypto/elliptic"
	"crypto/rand"
	"crypto/tls"
	"crypto/x509"
	"crypto/x509/pkix"
	"io"
	"math/big"
	"net"
	"net/http"
	"strings"
	"testing"
	"time"
)

// The offsets of crypto/tls's read buffers are found in this Go release; if not, idle TLS
// connections keep ~4 KiB of buffers each (see tlsbuf.go).
func TestTLSReadBuffersFound(t *testing.T) {
	if !tlsReadBuffers.ok {
		t.Fatal("crypto/tls.Conn has no rawInput/input/hand fields of the expected types: releaseTLSReadBuffers does nothing")
	}
}

func TestClientHelloComplete(t *testing.T) {
	rec := func(typ byte, body []byte) []byte {
		return append([]byte{typ, 3, 1, byte(len(body) >> 8), byte(len(body))}, body...)
	}
	hello := append([]byte{1, 0, 0, 10}, bytes.Repeat([]byte{7}, 10)...) // a 14-byte handshake message
	for _, c := range []struct {
		name string
		in   []byte
		want bool
	}{
		{"empty", nil, false},
		{"partial header", []byte{22, 3, 1}, false},
		{"partial record", rec(22, hello)[:10], false},
		{"whole", rec(22, hello), true},
		{"split over two records", append(rec(22, hello[:3]), rec(22, hello[3:])...), true},
		{"first of two records", rec(22, hello[:3]), false},
		{"not a handshake record", rec(23, hello), true},
		{"plain HTTP", []byte("GET / HTTP/1.1\r\n"), true},
	} {
		if got := clientHelloComplete(c.in); got != c.want {
			t.Errorf("%s: got %v, want %v", c.name, got, c.want)
		}
	}
}

func testTLSConfig(t *testing.T) (*tls.Config, *x509.CertPool) {
	t.Helper()
	key, err := ecdsa.GenerateKey(elliptic.P256(), rand.Reader)
	if err != nil {
		t.Fatal(err)
	}
	tmpl := &x509.Certificate{
		SerialNumber: big.NewInt(1), Subject: pkix.Name{CommonName: "127.0.0.1"},
		IPAddresses: []net.IP{net.ParseIP("127.0.0.1")},
		NotBefore:   time.Now().Add(-time.Hour), NotAfter: time.Now().Add(time.Hour),
		KeyUsage: x509.KeyUsageDigitalSignature | x509.KeyUsageCertSign, IsCA: true, BasicConstraintsValid: true,
	}
	der, err := x509.CreateCertificate(rand.Reader, tmpl, tmpl, &key.PublicKey, key)
	if err != nil {
		t.Fatal(err)
	}
	cert, _ := x509.ParseCertificate(der)
	pool := x509.NewCertPool()
	pool.AddCert(cert)
	return ServerTLSConfig([]tls.Certificate{{Certificate: [][]byte{der}, PrivateKey: key}}), pool
}

// startTLSEngine serves handler over TLS on a loopback port.
func startTLSEngine(t *testing.T, handler http.Handler) (addr string, pool *x509.CertPool) {
	t.Helper()
	cfg, pool := testTLSConfig(t)
	g := New(nil, nil, nil, Config{MaxConns: 100})
	t.Cleanup(g.Close)
	var bound net.Addr
	e, err := NewEngine("test", "127.0.0.1:0", &TLS{Config: cfg, Gateway: g, HandshakeTimeout: 10 * time.Second}, 100, handler, func(a net.Addr) { bound = a })
	if err != nil {
		t.Fatal(err)
	}
	if err := e.Start(); err != nil {
		t.Fatal(err)
	}
	t.Cleanup(e.Stop)
	return bound.String(), pool
}

// trickleConn writes one byte per write: every TLS record (and the ClientHello) reaches the
// server in pieces, across many poller reads.
type trickleConn struct{ net.Conn }

func (c trickleConn) Write(b []byte) (int, error) {
	for i := range b {
		if _, err := c.Conn.Write(b[i : i+1]); err != nil {
			return i, err
		}
	}
	return len(b), nil
}

// Records that arrive a byte at a time, and several requests in one write, are decrypted and
// answered in order.
func TestTLSFragmentedAndPipelined(t *testing.T) {
	body := strings.Repeat("y", 40_000) // an answer of several records
	mux := http.NewServeMux()
	mux.HandleFunc("GET /a", func(w http.ResponseWriter, r *http.Request) { io.WriteString(w, "a:"+r.URL.Query().Get("n")) })
	mux.HandleFunc("GET /big", func(w http.ResponseWriter, r *http.Request) { io.WriteString(w, body) })
	addr, pool := startTLSEngine(t, mux)

	raw, err := net.Dial("tcp", addr)
	if err != nil {
		t.Fatal(err)
	}
	defer raw.Close()
	raw.(*net.TCPConn).SetNoDelay(true)
	tc := tls.Client(trickleConn{raw}, &tls.Config{RootCAs: pool, ServerName: "127.0.0.1"})
	_ = tc.SetDeadline(time.Now().Add(20 * time.Second))
	if err := tc.Handshake(); err != nil {
		t.Fatal(err)
	}
	if st := tc.ConnectionState(); st.CurveID != tls.X25519MLKEM768 {
		t.Fatalf("key exchange %v", st.CurveID)
	}
	var req bytes.Buffer
	for i := range 20 {
		req.WriteString("GET /a?n=" + string(rune('a'+i)) + " HTTP/1.1\r\nHost: x\r\n\r\n")
	}
	req.WriteString("GET /big HTTP/1.1\r\nHost: x\r\n\r\n")
	if _, err := tc.Write(req.Bytes()); err != nil {
		t.Fatal(err)
	}
	br := bufio.NewReader(tc)
	for i := range 21 {
		resp, err := http.ReadResponse(br, nil)
		if err != nil {
			t.Fatalf("response %d: %v", i, err)
		}
		b, err := io.ReadAll(resp.Body)
		resp.Body.Close()
		if err != nil {
			t.Fatal(err)
		}
		want := "a:" + string(rune('a'+i))
		if i == 20 {
			want = body
		}
		if string(b) != want {
			t.Fatalf("response %d: %.40q, want %.40q", i, b, want)
		}
	}
}
