// Copyright 2026 The Petrel Authors
// SPDX-License-Identifier: Apache-2.0

package hostile

import (
	"bufio"
	"crypto/ed25519"
	"crypto/rand"
	"crypto/tls"
	"crypto/x509"
	"encoding/binary"
	"errors"
	"fmt"
	"io"
	"net"
	"net/http"
	"net/url"
	"os"
	"runtime"
	"runtime/debug"
	"strconv"
	"strings"
	"testing"
	"time"

	"google.golang.org/protobuf/proto"

	"github.com/petrelchat/petrel/internal/testserver"
	pb "github.com/petrelchat/petrel/proto/petrel/v1"
)

// The attacker-level client of the admission tests: a raw TCP socket, a hand-written upgrade
// request and hand-built WebSocket frames, so a test can do what no real client library does
// (pipeline without reading, leave frames unmasked, stop half-way through a header).

// admWS is a raw WebSocket connection after the upgrade.
type admWS struct {
	t     testing.TB
	c     net.Conn
	r     *bufio.Reader
	nonce []byte
	next  uint64
}

// admHostPort returns the host:port of a test server's base URL.
func admHostPort(t testing.TB, base string) string {
	t.Helper()
	u, err := url.Parse(base)
	if err != nil {
		t.Fatal(err)
	}
	return u.Host
}

// admDialTCP opens a TCP connection to addr from the loopback address src ("" for the default).
func admDialTCP(t testing.TB, addr, src string) (net.Conn, error) {
	t.Helper()
	d := net.Dialer{Timeout: 5 * time.Second}
	if src != "" {
		d.LocalAddr = &net.TCPAddr{IP: net.ParseIP(src)}
	}
	return d.Dial("tcp", addr)
}

// admUpgradeRequest is a complete WebSocket upgrade request for /v1/connect.
func admUpgradeRequest(host string) string {
	return "GET " + pb.ConnectPath + " HTTP/1.1\r\nHost: " + host + "\r\nUpgrade: websocket\r\nConnection: Upgrade\r\n" +
		"Sec-WebSocket-Key: dGhlIHNhbXBsZSBub25jZQ==\r\nSec-WebSocket-Version: 13\r\nSec-WebSocket-Protocol: " + pb.Subprotocol + "\r\n\r\n"
}

// admDial upgrades a raw connection from src and reads the Challenge.
func admDial(t testing.TB, base, src string) *admWS {
	t.Helper()
	host := admHostPort(t, base)
	c, err := admDialTCP(t, host, src)
	if err != nil {
		t.Fatalf("dial: %v", err)
	}
	return admUpgrade(t, c, host)
}

// admDialTLS is admDial over TLS (the server's certificate from pool).
func admDialTLS(t testing.TB, base string, pool *x509.CertPool) *admWS {
	t.Helper()
	host := admHostPort(t, base)
	c, err := tls.DialWithDialer(&net.Dialer{Timeout: 5 * time.Second}, "tcp", host, &tls.Config{RootCAs: pool, ServerName: "127.0.0.1"})
	if err != nil {
		t.Fatalf("dial: %v", err)
	}
	return admUpgrade(t, c, host)
}

// admUpgrade upgrades c to a WebSocket and reads the Challenge.
func admUpgrade(t testing.TB, c net.Conn, host string) *admWS {
	t.Helper()
	t.Cleanup(func() { c.Close() })
	w := &admWS{t: t, c: c, r: bufio.NewReaderSize(c, 64<<10)}
	_ = c.SetDeadline(time.Now().Add(10 * time.Second))
	if _, err := io.WriteString(c, admUpgradeRequest(host)); err != nil {
		t.Fatalf("write upgrade: %v", err)
	}
	res, err := http.ReadResponse(w.r, nil)
	if err != nil {
		t.Fatalf("read upgrade response: %v", err)
	}
	res.Body.Close()
	if res.StatusCode != http.StatusSwitchingProtocols {
		t.Fatalf("upgrade: %s", res.Status)
	}
	f, err := w.readFrame()
	if err != nil || f.GetChallenge() == nil {
		t.Fatalf("first frame: %v %v", f, err)
	}
	w.nonce = f.GetChallenge().GetNonce()
	_ = c.SetDeadline(time.Time{})
	return w
}

// admFrame builds one client WebSocket frame (final) with opcode op, masked unless unmasked.
func admFrame(op byte, payload []byte, unmasked bool) []byte {
	b := []byte{0x80 | op}
	maskBit := byte(0x80)
	if unmasked {
		maskBit = 0
	}
	n := len(payload)
	switch {
	case n < 126:
		b = append(b, maskBit|byte(n))
	case n <= 0xffff:
		b = append(b, maskBit|126)
		b = binary.BigEndian.AppendUint16(b, uint16(n))
	default:
		b = append(b, maskBit|127)
		b = binary.BigEndian.AppendUint64(b, uint64(n))
	}
	if unmasked {
		return append(b, payload...)
	}
	key := [4]byte{0x11, 0x22, 0x33, 0x44}
	b = append(b, key[:]...)
	for i, c := range payload {
		b = append(b, c^key[i&3])
	}
	return b
}

// admBinary is a masked binary frame carrying f.
func admBinary(t testing.TB, f *pb.Frame) []byte {
	t.Helper()
	b, err := proto.Marshal(f)
	if err != nil {
		t.Fatal(err)
	}
	return admFrame(0x2, b, false)
}

// admServerFrame is one frame from the server.
type admServerFrame struct {
	op      byte
	payload []byte
}

// readRaw reads one server frame (servers do not mask).
func (w *admWS) readRaw() (admServerFrame, error) {
	var h [2]byte
	if _, err := io.ReadFull(w.r, h[:]); err != nil {
		return admServerFrame{}, err
	}
	n := uint64(h[1] & 0x7f)
	switch n {
	case 126:
		var e [2]byte
		if _, err := io.ReadFull(w.r, e[:]); err != nil {
			return admServerFrame{}, err
		}
		n = uint64(binary.BigEndian.Uint16(e[:]))
	case 127:
		var e [8]byte
		if _, err := io.ReadFull(w.r, e[:]); err != nil {
			return admServerFrame{}, err
		}
		n = binary.BigEndian.Uint64(e[:])
	}
	if n > 64<<20 {
		return admServerFrame{}, fmt.Errorf("server frame of %d bytes", n)
	}
	p := make([]byte, n)
	if _, err := io.ReadFull(w.r, p); err != nil {
		return admServerFrame{}, err
	}
	return admServerFrame{op: h[0] & 0x0f, payload: p}, nil
}

// readFrame reads the next binary frame and decodes it.
func (w *admWS) readFrame() (*pb.Frame, error) {
	for {
		f, err := w.readRaw()
		if err != nil {
			return nil, err
		}
		switch f.op {
		case 0x2:
			m := &pb.Frame{}
			if err := proto.Unmarshal(f.payload, m); err != nil {
				return nil, err
			}
			return m, nil
		case 0x8:
			return nil, &admClosed{payload: f.payload}
		}
	}
}

// admClosed is a close frame from the server.
type admClosed struct{ payload []byte }

func (e *admClosed) code() int {
	if len(e.payload) < 2 {
		return 1005
	}
	return int(binary.BigEndian.Uint16(e.payload))
}

func (e *admClosed) Error() string {
	return fmt.Sprintf("close frame %d %q", e.code(), e.payload[min(2, len(e.payload)):])
}

// register registers a fresh account on this connection (the handshake) and returns its name.
func (w *admWS) register(name string) {
	w.t.Helper()
	_, priv, err := ed25519.GenerateKey(rand.Reader)
	if err != nil {
		w.t.Fatal(err)
	}
	_, up := testserver.NewKeys(w.t, 2)
	dev := pb.DeviceID(priv.Public().(ed25519.PublicKey))
	w.next++
	f := &pb.Frame{Id: w.next, Body: &pb.Frame_Register{Register: &pb.Register{
		Name:      name,
		AuthKey:   priv.Public().(ed25519.PublicKey),
		Signature: ed25519.Sign(priv, pb.AuthPayload(w.nonce, dev)),
		Keys:      up,
	}}}
	_ = w.c.SetDeadline(time.Now().Add(15 * time.Second))
	defer w.c.SetDeadline(time.Time{})
	if _, err := w.c.Write(admBinary(w.t, f)); err != nil {
		w.t.Fatalf("write register: %v", err)
	}
	for {
		r, err := w.readFrame()
		if err != nil {
			w.t.Fatalf("register %s: %v", name, err)
		}
		if r.GetId() == f.Id {
			if r.GetWelcome() == nil {
				w.t.Fatalf("register %s: %v", name, r)
			}
			return
		}
	}
}

// admRSS is the process's resident set size in bytes (the test and the server share the process).
func admRSS(t testing.TB) int64 {
	t.Helper()
	b, err := os.ReadFile("/proc/self/status")
	if err != nil {
		t.Skip("reads /proc/self/status:", err)
	}
	for line := range strings.SplitSeq(string(b), "\n") {
		if v, ok := strings.CutPrefix(line, "VmRSS:"); ok {
			kb, err := strconv.ParseInt(strings.TrimSpace(strings.TrimSuffix(strings.TrimSpace(v), "kB")), 10, 64)
			if err != nil {
				t.Fatal(err)
			}
			return kb << 10
		}
	}
	t.Fatal("no VmRSS in /proc/self/status")
	return 0
}

// admBaseline settles the heap and returns the RSS to measure growth from.
func admBaseline(t testing.TB) int64 {
	t.Helper()
	if runtime.GOOS != "linux" {
		t.Skip("measures /proc/self/status")
	}
	runtime.GC()
	debug.FreeOSMemory()
	return admRSS(t)
}

// admPeak tracks the largest RSS growth seen during an attack.
type admPeak struct {
	t    testing.TB
	base int64
	peak int64
}

// over samples RSS and reports whether growth has passed bound (the attack should stop: the
// server is not holding memory down).
func (p *admPeak) over(bound int64) bool {
	g := admRSS(p.t) - p.base
	p.peak = max(p.peak, g)
	return g > bound
}

func (p *admPeak) mib() float64 { return float64(p.peak) / (1 << 20) }

// admServed checks that a well-behaved, registered user is answered: a Ping round trip within
// 5 s.
func admServed(t testing.TB, c *testserver.RawClient) error {
	t.Helper()
	c.Write(&pb.Frame{Id: 1 << 40, Body: &pb.Frame_Ping{Ping: &pb.Ping{ClientTimeMs: time.Now().UnixMilli()}}})
	deadline := time.Now().Add(5 * time.Second)
	for time.Now().Before(deadline) {
		f, err := c.ReadErr(time.Until(deadline))
		if err != nil {
			return fmt.Errorf("well-behaved user not served: %w", err)
		}
		if f.GetId() == 1<<40 {
			if f.GetPong() == nil {
				return fmt.Errorf("well-behaved user's ping answered with %v", f)
			}
			return nil
		}
	}
	return errors.New("well-behaved user's ping not answered within 5s")
}

// admWaitClosed reads (and discards) until the server closes c or within passes. It returns the
// close frame's code if one came (0 if none), and whether the connection ended.
func admWaitClosed(c net.Conn, within time.Duration) (code int, closed bool) {
	_ = c.SetReadDeadline(time.Now().Add(within))
	r := bufio.NewReader(c)
	var hdr []byte
	buf := make([]byte, 64<<10)
	for {
		n, err := r.Read(buf)
		if n > 0 && code == 0 {
			hdr = append(hdr, buf[:n]...)
			code = admFindClose(hdr)
			if len(hdr) > 1<<20 {
				hdr = hdr[len(hdr)-(1<<20):]
			}
		}
		if err != nil {
			var ne net.Error
			if errors.As(err, &ne) && ne.Timeout() {
				return code, false
			}
			return code, true
		}
	}
}

// admFindClose scans a server byte stream for a close frame and returns its code (0 if none).
func admFindClose(b []byte) int {
	code := 0
	admEachFrame(b, func(op byte, payload []byte) bool {
		if op != 0x8 {
			return true
		}
		code = 1005
		if len(payload) >= 2 {
			code = int(binary.BigEndian.Uint16(payload))
		}
		return false
	})
	return code
}

// admEachFrame calls f with each whole server frame in b (opcode, payload) until f returns false.
func admEachFrame(b []byte, f func(op byte, payload []byte) bool) {
	for len(b) >= 2 {
		op, n, h := b[0]&0x0f, int(b[1]&0x7f), 2
		switch n {
		case 126:
			if len(b) < 4 {
				return
			}
			n, h = int(binary.BigEndian.Uint16(b[2:4])), 4
		case 127:
			if len(b) < 10 {
				return
			}
			n, h = int(binary.BigEndian.Uint64(b[2:10])), 10
		}
		if len(b) < h+n || !f(op, b[h:h+n]) {
			return
		}
		b = b[h+n:]
	}
}
