// Copyright 2026 The Petrel Authors
// SPDX-License-Identifier: Apache-2.0

// Package freeport finds loopback TCP ports for processes that are told their addresses before
// they bind them (cluster nodes that must know each other's routes; a node started by chaos).
//
// A port found by binding port 0 and closing it again is in the kernel's ephemeral range, and the
// kernel may hand it to the very next bind of port 0, or to an outgoing connection, anywhere on
// the machine (an embedded NATS server's client listener, a proxy, another test's socket) before
// the process it was meant for binds it. So these ports are chosen at random below the ephemeral
// range (/proc/sys/net/ipv4/ip_local_port_range), where the kernel never assigns one by itself,
// and are checked free by binding them. A port is handed out once per process.
package freeport

import (
	"errors"
	"fmt"
	"math/rand/v2"
	"net"
	"os"
	"strconv"
	"strings"
	"sync"
)

// lowest is the lowest port chosen: below it sit many well-known services' ports.
const lowest = 10000

// minSpan is the fewest ports below the ephemeral range worth choosing from; with fewer (an
// unusual ip_local_port_range) ports come from port 0 binds instead.
const minSpan = 2000

var (
	mu     sync.Mutex
	issued = map[int]bool{}
)

// Loopback returns n distinct TCP ports free on 127.0.0.1 when checked, none returned before by
// this process.
func Loopback(n int) ([]int, error) {
	mu.Lock()
	defer mu.Unlock()
	hi := ephemeralLow() - 1
	if hi-lowest < minSpan {
		return ephemeral(n)
	}
	ports := make([]int, 0, n)
	lns := make([]net.Listener, 0, n)
	defer func() {
		for _, ln := range lns {
			ln.Close()
		}
	}()
	for tries := 0; len(ports) < n; tries++ {
		if tries > 100*n+1000 {
			return nil, fmt.Errorf("freeport: no free loopback port in %d–%d after %d tries", lowest, hi, tries)
		}
		p := lowest + rand.IntN(hi-lowest+1)
		if issued[p] {
			continue
		}
		ln, err := net.Listen("tcp", net.JoinHostPort("127.0.0.1", strconv.Itoa(p)))
		if err != nil {
			continue // taken
		}
		lns = append(lns, ln)
		ports = append(ports, p)
	}
	for _, p := range ports {
		issued[p] = true
	}
	return ports, nil
}

// LoopbackAddrs is Loopback as 127.0.0.1:PORT addresses.
func LoopbackAddrs(n int) ([]string, error) {
	ports, err := Loopback(n)
	if err != nil {
		return nil, err
	}
	addrs := make([]string, len(ports))
	for i, p := range ports {
		addrs[i] = net.JoinHostPort("127.0.0.1", strconv.Itoa(p))
	}
	return addrs, nil
}

// ephemeralLow is the low end of the kernel's ephemeral port range (32768 if it cannot be read).
func ephemeralLow() int {
	b, err := os.ReadFile("/proc/sys/net/ipv4/ip_local_port_range")
	if err != nil {
		return 32768
	}
	f := strings.Fields(string(b))
	if len(f) != 2 {
		return 32768
	}
	lo, err := strconv.Atoi(f[0])
	if err != nil {
		return 32768
	}
	return lo
}

// ephemeral finds n ports by binding port 0 (held open together, so they differ).
func ephemeral(n int) ([]int, error) {
	ports := make([]int, n)
	lns := make([]net.Listener, 0, n)
	defer func() {
		for _, ln := range lns {
			ln.Close()
		}
	}()
	for i := range n {
		ln, err := net.Listen("tcp", "127.0.0.1:0")
		if err != nil {
			return nil, errors.Join(errors.New("freeport: bind a loopback port"), err)
		}
		lns = append(lns, ln)
		ports[i] = ln.Addr().(*net.TCPAddr).Port
	}
	return ports, nil
}
