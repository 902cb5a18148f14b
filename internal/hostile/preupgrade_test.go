// Copyright 2026 The Petrel Authors
// SPDX-License-Identifier: Apache-2.0

package hostile

import (
	"bufio"
	"fmt"
	"io"
	"net"
	"net/http"
	"strings"
	"sync"
	"testing"
	"time"

	"github.com/petrelchat/petrel/internal/server"
	"github.com/petrelchat/petrel/internal/testserver"
)

// Before the upgrade: sockets that have not (yet) become WebSockets have their own slots, a
// per-address cap, and a deadline on the whole request; request bodies are checked from the
// headers before any of them is read.

// Sockets that send half a request header and stall cannot take the slots of /healthz, of a real
// registration, or of each other's addresses, and are closed once handshake_timeout has passed
// (they held every slot for 120 s before).
func TestHostileSlowlorisBeforeUpgrade(t *testing.T) {
	ts := testserver.Start(t, testserver.WithConfig(func(c *server.Config) {
		c.MaxConns = 4
		c.HandshakeTimeout.Duration = time.Second
	}))
	addr := admHostPort(t, ts.URL())
	// 100 stalled sockets from four addresses, and 50 more from a fifth (past its cap).
	var (
		socks  []net.Conn
		opened = time.Now()
	)
	for i := range 150 {
		src := fmt.Sprintf("127.0.0.%d", 2+min(i/25, 4))
		c, err := admDialTCP(t, addr, src)
		if err != nil {
			t.Fatalf("dial %d: %v", i, err)
		}
		t.Cleanup(func() { c.Close() })
		if _, err := io.WriteString(c, "GET /healthz HTTP/1.1\r\nHost: petrel\r\nX-Slow: "); err == nil {
			socks = append(socks, c)
		}
	}

	hc := &http.Client{Timeout: 5 * time.Second}
	res, err := hc.Get(ts.URL() + "/healthz")
	if err != nil {
		t.Fatalf("/healthz while 150 sockets stall: %v", err)
	}
	res.Body.Close()
	if res.StatusCode != http.StatusOK {
		t.Fatalf("/healthz while 150 sockets stall: %s", res.Status)
	}
	c := testserver.Dial(t, ts.URL())
	c.MustRegister("realuser") // a real registration while they stall

	// Every stalled socket is closed by the server within handshake_timeout (plus slack).
	var wg sync.WaitGroup
	late := make(chan int, len(socks))
	for i, s := range socks {
		wg.Add(1)
		go func() {
			defer wg.Done()
			_ = s.SetReadDeadline(opened.Add(4 * time.Second))
			if _, err := io.Copy(io.Discard, s); err != nil {
				if ne, ok := err.(net.Error); ok && ne.Timeout() {
					late <- i
				}
			}
		}()
	}
	wg.Wait()
	close(late)
	if n := len(late); n > 0 {
		t.Fatalf("%d of %d stalled sockets still open 4s after they connected (handshake_timeout 1s)", n, len(socks))
	}
}

// Unauthenticated POSTs with huge bodies are refused from their headers, before the body is read
// (ten 64 MiB POSTs to /v1/admin/invites took 1.48 GB, and the 401 came only once each body had
// arrived). The connection's memory stays bounded whatever follows.
func TestHostileLargeBodiesRefusedFromHeaders(t *testing.T) {
	ts := testserver.Start(t)
	addr := admHostPort(t, ts.URL())
	peak := &admPeak{t: t, base: admBaseline(t)}
	var (
		wg   sync.WaitGroup
		mu   sync.Mutex
		errs []string
	)
	chunk := make([]byte, 1<<20)
	for i := range 10 {
		path := "/v1/admin/invites"
		if i%2 == 1 {
			path = "/"
		}
		c, err := admDialTCP(t, addr, "")
		if err != nil {
			t.Fatal(err)
		}
		t.Cleanup(func() { c.Close() })
		wg.Add(1)
		go func() {
			defer wg.Done()
			fail := func(format string, a ...any) {
				mu.Lock()
				errs = append(errs, fmt.Sprintf("POST %s: ", path)+fmt.Sprintf(format, a...))
				mu.Unlock()
			}
			if _, err := fmt.Fprintf(c, "POST %s HTTP/1.1\r\nHost: petrel\r\nContent-Length: %d\r\n\r\n", path, 64<<20); err != nil {
				fail("write headers: %v", err)
				return
			}
			// The answer comes before any of the body is sent.
			_ = c.SetReadDeadline(time.Now().Add(5 * time.Second))
			res, err := http.ReadResponse(bufio.NewReader(c), nil)
			if err != nil {
				fail("no answer to the headers alone: %v", err)
				return
			}
			res.Body.Close()
			if res.StatusCode != http.StatusRequestEntityTooLarge {
				fail("answered %s, want 413", res.Status)
			}
			// Whatever of the body comes next is not kept.
			for range 64 {
				_ = c.SetWriteDeadline(time.Now().Add(2 * time.Second))
				if _, err := c.Write(chunk); err != nil {
					return
				}
			}
		}()
	}
	wg.Wait()
	for _, e := range errs {
		t.Error(e)
	}
	if peak.over(connBound); peak.peak > connBound {
		t.Fatalf("ten large POSTs raised RSS by %.0f MiB", peak.mib())
	}
}

// A request whose body trickles in must be complete within handshake_timeout (ten slow POSTs
// held 1.5 GB for 32 s before).
func TestHostileSlowBodyClosedAtDeadline(t *testing.T) {
	ts := testserver.Start(t, testserver.WithConfig(func(c *server.Config) { c.HandshakeTimeout.Duration = time.Second }))
	c, err := admDialTCP(t, admHostPort(t, ts.URL()), "")
	if err != nil {
		t.Fatal(err)
	}
	defer c.Close()
	start := time.Now()
	if _, err := io.WriteString(c, "POST / HTTP/1.1\r\nHost: petrel\r\nContent-Length: 60000\r\n\r\n"); err != nil {
		t.Fatal(err)
	}
	tick := time.NewTicker(50 * time.Millisecond)
	defer tick.Stop()
	body := []byte(strings.Repeat("x", 100))
	for time.Since(start) < 5*time.Second {
		<-tick.C
		_ = c.SetWriteDeadline(time.Now().Add(time.Second))
		if _, err := c.Write(body); err != nil {
			t.Logf("closed after %s", time.Since(start).Round(10*time.Millisecond))
			return
		}
		_ = c.SetReadDeadline(time.Now().Add(time.Millisecond))
		var b [1]byte
		if _, err := c.Read(b[:]); err != nil {
			if ne, ok := err.(net.Error); !ok || !ne.Timeout() {
				t.Logf("closed after %s", time.Since(start).Round(10*time.Millisecond))
				return
			}
		}
	}
	t.Fatal("a request trickling its body was still open after 5s (handshake_timeout 1s)")
}

// One address cannot hold more than max_pending_upgrades_per_ip sockets that have not upgraded:
// the rest are closed at once, and other addresses are served.
func TestHostilePendingPerIPCap(t *testing.T) {
	ts := testserver.Start(t, testserver.WithConfig(func(c *server.Config) { c.MaxPendingUpgradesPerIP = 8 }))
	addr := admHostPort(t, ts.URL())
	var socks []net.Conn
	for range 40 {
		c, err := admDialTCP(t, addr, "127.0.0.2")
		if err != nil {
			t.Fatal(err)
		}
		t.Cleanup(func() { c.Close() })
		_, _ = io.WriteString(c, "GET / HTTP/1.1\r\n")
		socks = append(socks, c)
	}
	// 32 of them are closed long before handshake_timeout (10s); 8 stay.
	closed := 0
	for _, s := range socks {
		_ = s.SetReadDeadline(time.Now().Add(500 * time.Millisecond))
		if _, err := io.Copy(io.Discard, s); err == nil || !isTimeout(err) {
			closed++
		}
	}
	if closed != 32 {
		t.Fatalf("%d of 40 stalled sockets from one address closed at once, want 32 (cap 8)", closed)
	}
	res, err := (&http.Client{Timeout: 5 * time.Second}).Get(ts.URL() + "/healthz")
	if err != nil {
		t.Fatal(err)
	}
	res.Body.Close()
	if res.StatusCode != http.StatusOK {
		t.Fatal(res.Status)
	}
}

func isTimeout(err error) bool {
	ne, ok := err.(net.Error)
	return ok && ne.Timeout()
}
