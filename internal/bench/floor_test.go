// Copyright 2026 The Petrel Authors
// SPDX-License-Identifier: Apache-2.0

package bench

import (
	"bufio"
	"crypto/ed25519"
	"crypto/rand"
	"errors"
	"io"
	"net"
	"os"
	"sync"
	"testing"
)

// BenchmarkConnectFloor measures what an authenticated connect costs on this machine with no
// server logic at all: both ends in this process on loopback, a goroutine per connection (Go's
// netpoller), each side's bytes written in as few system calls as the protocol allows. It is the
// floor under `petrel bench churn`, which runs the same exchange against a real server:
//
//	tcp:      connect, then close (the server reads to EOF and closes)
//	exchange: the bytes of a Petrel connect: upgrade request → 101 response and Challenge in one
//	          write → Auth → Welcome and QueueEmpty in one write → close frame → close
//	ed25519:  the exchange, and the client signs the nonce and the server verifies it, as the
//	          handshake requires (DESIGN.md: challenge → device signature)
//
// Reported: connects/s with both cores shared by both ends (as in `petrel bench churn`), and the
// process's CPU (user + system, both ends together) per connect. 2 cores at that CPU per connect
// are the ceiling for any server and generator on this machine.
func BenchmarkConnectFloor(b *testing.B) {
	b.Run("tcp", func(b *testing.B) { benchConnectFloor(b, floorTCP) })
	b.Run("exchange", func(b *testing.B) { benchConnectFloor(b, floorExchange) })
	b.Run("ed25519", func(b *testing.B) { benchConnectFloor(b, floorSigned) })
}

type floorMode int

const (
	floorTCP floorMode = iota
	floorExchange
	floorSigned
)

// Sizes of a Petrel connect's messages, as the server and generator send them (device ids of 32
// hex characters, 32-byte nonce, 64-byte signature).
var (
	floorRequest = []byte("GET /v1/ws HTTP/1.1\r\nHost: 127.0.0.1:7301\r\nUpgrade: websocket\r\n" +
		"Connection: Upgrade\r\nSec-WebSocket-Version: 13\r\nSec-WebSocket-Protocol: petrel.v1\r\n" +
		"Sec-WebSocket-Key: dGhlIHNhbXBsZSBub25jZQ==\r\n\r\n")
	floorResponse = []byte("HTTP/1.1 101 Switching Protocols\r\nUpgrade: websocket\r\nConnection: Upgrade\r\n" +
		"Sec-WebSocket-Accept: s3pPLMBiTxaQ9kYGzzhZRbK+xOo=\r\nSec-WebSocket-Protocol: petrel.v1\r\n\r\n")
)

const (
	floorNonce     = 32
	floorChallenge = 2 + 4 + floorNonce  // frame header, protobuf framing, nonce
	floorAuth      = 6 + 4 + 32 + 2 + 64 // masked frame header, framing, device id, signature
	floorWelcome   = 2 + 48 + 2 + 6      // Welcome frame, QueueEmpty frame
	floorClose     = 6 + 2               // masked close frame with a status code
)

func benchConnectFloor(b *testing.B, mode floorMode) {
	ln, err := net.Listen("tcp", "127.0.0.1:0")
	if err != nil {
		b.Fatal(err)
	}
	pub, priv, err := ed25519.GenerateKey(rand.Reader)
	if err != nil {
		b.Fatal(err)
	}
	var serving sync.WaitGroup // the accept loop and every connection it serves
	serving.Add(1)
	go func() {
		defer serving.Done()
		for {
			c, err := ln.Accept()
			if err != nil {
				return
			}
			serving.Add(1)
			go func() {
				defer serving.Done()
				if err := floorServe(c, mode, pub); err != nil && !errors.Is(err, io.EOF) {
					b.Error(err)
				}
			}()
		}
	}()
	defer func() {
		ln.Close()
		serving.Wait() // no b.Error after the benchmark has returned
	}()
	addr := ln.Addr().String()
	b.SetParallelism(32) // × GOMAXPROCS clients, like the churn scenario's concurrent slots
	start, err := procCPU(os.Getpid())
	if err != nil {
		b.Fatal(err)
	}
	b.ResetTimer()
	b.RunParallel(func(pb *testing.PB) {
		for pb.Next() {
			if err := floorConnect(addr, mode, priv); err != nil {
				b.Error(err)
				return
			}
		}
	})
	b.StopTimer()
	b.ReportMetric(float64(b.N)/b.Elapsed().Seconds(), "connects/s")
	end, err := procCPU(os.Getpid())
	if err != nil {
		b.Fatal(err)
	}
	b.ReportMetric(float64((end-start).Microseconds())/float64(b.N), "cpu-µs/connect")
}

// floorConnect is the client side of one connect.
func floorConnect(addr string, mode floorMode, priv ed25519.PrivateKey) error {
	c, err := net.Dial("tcp", addr)
	if err != nil {
		return err
	}
	defer c.Close()
	if mode == floorTCP {
		return nil
	}
	if _, err := c.Write(floorRequest); err != nil {
		return err
	}
	in := make([]byte, len(floorResponse)+floorChallenge)
	if _, err := io.ReadFull(c, in); err != nil {
		return err
	}
	out := make([]byte, floorAuth)
	if mode == floorSigned {
		nonce := in[len(in)-floorNonce:]
		copy(out[len(out)-ed25519.SignatureSize:], ed25519.Sign(priv, nonce))
	}
	if _, err := c.Write(out); err != nil {
		return err
	}
	if _, err := io.ReadFull(c, in[:floorWelcome]); err != nil {
		return err
	}
	_, err = c.Write(make([]byte, floorClose))
	return err
}

// floorServe is the server side of one connect.
func floorServe(c net.Conn, mode floorMode, pub ed25519.PublicKey) error {
	defer c.Close()
	if mode == floorTCP {
		_, err := c.Read(make([]byte, 1))
		return err
	}
	br := bufio.NewReaderSize(c, 1024)
	for { // the request head ends with an empty line
		line, err := br.ReadSlice('\n')
		if err != nil {
			return err
		}
		if len(line) == 2 {
			break
		}
	}
	out := make([]byte, 0, len(floorResponse)+floorChallenge)
	out = append(out, floorResponse...)
	nonce := make([]byte, floorNonce)
	if _, err := rand.Read(nonce); err != nil {
		return err
	}
	out = append(out, make([]byte, floorChallenge-floorNonce)...)
	out = append(out, nonce...)
	if _, err := c.Write(out); err != nil {
		return err
	}
	auth := make([]byte, floorAuth)
	if _, err := io.ReadFull(br, auth); err != nil {
		return err
	}
	if mode == floorSigned && !ed25519.Verify(pub, nonce, auth[len(auth)-ed25519.SignatureSize:]) {
		return errors.New("bad signature")
	}
	if _, err := c.Write(out[:floorWelcome]); err != nil {
		return err
	}
	if _, err := io.ReadFull(br, auth[:floorClose]); err != nil {
		return err
	}
	return nil
}
