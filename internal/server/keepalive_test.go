// Copyright 2026 The Petrel Authors
// SPDX-License-Identifier: Apache-2.0

package server_test

import (
	"bufio"
	"net"
	"os"
	"runtime"
	"strconv"
	"strings"
	"testing"

	"github.com/petrelchat/petrel/internal/testserver"
)

// A running server's accepted sockets carry no TCP keepalive (liveness is the clients' pings and
// idle_timeout). The kernel arms a keepalive timer on a socket with SO_KEEPALIVE as soon as it is
// idle, and /proc/net/tcp shows it (timer 2), so the server's side of a live connection is
// checked from outside the process, as an operator would see it.
func TestServerSocketsHaveNoKeepalive(t *testing.T) {
	if runtime.GOOS != "linux" {
		t.Skip("reads /proc/net/tcp")
	}
	ts := testserver.Start(t)
	c := testserver.Dial(t, ts.URL())
	c.MustRegister("ann") // a full handshake: the connection is established and served

	_, port, err := net.SplitHostPort(ts.Server().Addr().String())
	if err != nil {
		t.Fatal(err)
	}
	p, _ := strconv.Atoi(port)
	rows := serverSockets(t, p)
	if len(rows) == 0 {
		t.Fatalf("no established socket on port %d in /proc/net/tcp", p)
	}
	for _, timer := range rows {
		if timer == "02" {
			t.Errorf("an accepted socket on port %d has a keepalive timer armed (SO_KEEPALIVE is on)", p)
		}
	}
}

// serverSockets returns the timer field (tr) of every established TCP socket whose local port is
// port.
func serverSockets(t *testing.T, port int) []string {
	t.Helper()
	f, err := os.Open("/proc/net/tcp")
	if err != nil {
		t.Skip(err)
	}
	defer f.Close()
	var timers []string
	sc := bufio.NewScanner(f)
	sc.Scan() // header
	for sc.Scan() {
		fs := strings.Fields(sc.Text())
		if len(fs) < 6 || fs[3] != "01" { // 01: ESTABLISHED
			continue
		}
		_, lport, ok := strings.Cut(fs[1], ":")
		if !ok {
			continue
		}
		if n, err := strconv.ParseUint(lport, 16, 16); err != nil || int(n) != port {
			continue
		}
		tr, _, _ := strings.Cut(fs[5], ":")
		timers = append(timers, tr)
	}
	if err := sc.Err(); err != nil {
		t.Fatal(err)
	}
	return timers
}
