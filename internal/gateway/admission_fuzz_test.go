// Copyright 2026 The Petrel Authors
// SPDX-License-Identifier: Apache-2.0

package gateway

import (
	"bytes"
	"encoding/binary"
	"net"
	"testing"
	"time"

	"github.com/petrelchat/petrel/third_party/nbio/nbhttp"
	"github.com/petrelchat/petrel/third_party/nbio/nbhttp/websocket"
)

// The decoders reachable before authentication that are the gateway's own: the WebSocket frame
// reader (wsread.go) and the pre-upgrade HTTP check (preupgrade.go). The protobuf frame decoders
// behind them are fuzzed in proto/petrel/v1.

// sink is a connection that takes every write and remembers it.
type sink struct {
	net.Conn
	out    bytes.Buffer
	closed bool
}

func (s *sink) Write(b []byte) (int, error) { s.out.Write(b); return len(b), nil }
func (s *sink) Close() error                { s.closed = true; return nil }

// fuzzEngine is an nbio HTTP engine that is never started (buffers and limits only).
var fuzzEngine = nbhttp.NewEngine(nbhttp.Config{})

// testReader returns a reader on a fake socket, for the budgets given. Its jobs run at once; the
// connection is in the closed state, so a job is accounted for but handles nothing.
func testReader(cfg Config) (*wsReader, *sink, *int) {
	cfg.MaxConns = 1
	cfg.setDefaults()
	g := &Gateway{cfg: cfg, metrics: newMetrics(nil), clockBase: time.Now()}
	c := &conn{g: g}
	c.tokens = float64(cfg.FrameBurst)
	c.state.Store(stateClosed)
	s := &sink{}
	wsc := websocket.NewServerConn(websocket.NewUpgrader(), s, "", false, false)
	wsc.Engine = fuzzEngine
	jobs := new(int)
	wsc.Execute = func(f func()) bool { *jobs++; f(); return true }
	c.rd.c, c.rd.wsc = c, wsc
	return &c.rd, s, jobs
}

// clientFrame is a masked client frame.
func clientFrame(fin bool, op byte, payload []byte) []byte {
	b := []byte{op}
	if fin {
		b[0] |= 0x80
	}
	switch n := len(payload); {
	case n < 126:
		b = append(b, 0x80|byte(n))
	case n <= 0xffff:
		b = append(b, 0x80|126)
		b = binary.BigEndian.AppendUint16(b, uint16(n))
	default:
		b = append(b, 0x80|127)
		b = binary.BigEndian.AppendUint64(b, uint64(n))
	}
	key := []byte{1, 2, 3, 4}
	b = append(b, key...)
	for i, c := range payload {
		b = append(b, c^key[i&3])
	}
	return b
}

// FuzzReadFrames feeds arbitrary client byte streams to the frame reader, whole and cut into
// pieces: nothing panics, the reader answers and closes the same way however the stream is cut,
// and its accounting holds (what a connection holds never passes its budget, the node's count is
// the connection's, and closing gives everything back).
func FuzzReadFrames(f *testing.F) {
	f.Add(clientFrame(true, opBinary, []byte("\x08\x01\xf2\x02\x00")), []byte{3})
	f.Add(append(clientFrame(false, opBinary, []byte("ab")), append(clientFrame(true, opPing, []byte("p")), clientFrame(true, opContinuation, []byte("cd"))...)...), []byte{1, 5, 2})
	f.Add(bytes.Repeat(clientFrame(true, opPing, nil), 20), []byte{7})
	f.Add([]byte{0x82, 0x05, 'h', 'e', 'l', 'l', 'o'}, []byte{1}) // unmasked
	f.Add(clientFrame(true, opClose, []byte{0x03, 0xe8}), []byte{2})
	f.Add(clientFrame(true, opBinary, make([]byte, 5000)), []byte{200, 9})
	f.Add([]byte{0x82, 0xff, 0x7f, 0xff, 0xff, 0xff, 0xff, 0xff, 0xff, 0xff, 1, 2, 3, 4}, []byte{4})
	f.Fuzz(func(t *testing.T, stream, cuts []byte) {
		cfg := Config{MaxFrameBytes: 4096, FrameBurst: 1 << 30, FramesPerSecond: 1, PreauthQueuedFrames: 4, PreauthQueuedBytes: 4096 + 128 + 300}
		whole, wout, wjobs := testReader(cfg)
		_ = whole.Parse(stream)
		check(t, whole)

		cut, cout, cjobs := testReader(cfg)
		rest := stream
		for i := 0; len(rest) > 0; i++ {
			n := len(rest)
			if len(cuts) > 0 {
				n = min(n, 1+int(cuts[i%len(cuts)]))
			}
			if cut.Parse(rest[:n]) != nil {
				break
			}
			rest = rest[n:]
			check(t, cut)
		}
		if whole.dead != cut.dead || *wjobs != *cjobs || !bytes.Equal(wout.out.Bytes(), cout.out.Bytes()) {
			t.Fatalf("cutting the stream changed the outcome: dead %v/%v, jobs %d/%d, written %x / %x",
				whole.dead, cut.dead, *wjobs, *cjobs, wout.out.Bytes(), cout.out.Bytes())
		}
		for _, r := range []*wsReader{whole, cut} {
			r.c.releaseAll()
			if n := r.c.g.inbound.Load(); n != 0 {
				t.Fatalf("after close the node still counts %d bytes", n)
			}
		}
	})
}

// check verifies a reader's accounting between chunks.
func check(t *testing.T, r *wsReader) {
	t.Helper()
	c := r.c
	held, node := c.held.Load(), c.g.inbound.Load()
	if held != node {
		t.Fatalf("connection holds %d bytes, node counts %d", held, node)
	}
	if held > c.g.cfg.PreauthQueuedBytes {
		t.Fatalf("connection holds %d bytes, over its budget %d", held, c.g.cfg.PreauthQueuedBytes)
	}
	if q := c.queued.Load(); q != 0 {
		t.Fatalf("%d frames still queued after their jobs ran", q)
	}
	if r.dead {
		return
	}
	want := r.msgCharge
	if r.in && r.op >= opClose {
		want += r.charge
	}
	if r.msg == nil && r.msgCharge != 0 {
		t.Fatalf("no message open, but %d bytes charged for one", r.msgCharge)
	}
	if held != want {
		t.Fatalf("connection holds %d bytes, its open frames account for %d", held, want)
	}
}

// recorder is an nbio HTTP processor that checks what nbio's parser would hand the server.
type recorder struct {
	t       *testing.T
	maxBody int
	body    int
}

func (p *recorder) OnMethod(*nbhttp.Parser, string)                {}
func (p *recorder) OnURL(*nbhttp.Parser, string) error             { return nil }
func (p *recorder) OnProto(*nbhttp.Parser, string) error           { return nil }
func (p *recorder) OnStatus(*nbhttp.Parser, int, string)           {}
func (p *recorder) OnHeader(*nbhttp.Parser, string, string)        {}
func (p *recorder) OnTrailerHeader(*nbhttp.Parser, string, string) {}
func (p *recorder) Close(*nbhttp.Parser, error)                    {}
func (p *recorder) Clean(*nbhttp.Parser)                           {}

// OnContentLength comes at the end of the headers, before the check has seen their last byte; a
// body is what nbio would buffer, and OnBody checks it.
func (p *recorder) OnContentLength(*nbhttp.Parser, int) {}
func (p *recorder) OnBody(_ *nbhttp.Parser, b []byte) error {
	p.body += len(b)
	if p.body > p.maxBody {
		p.t.Fatalf("nbio's parser was let through %d bytes of one body (limit %d)", p.body, p.maxBody)
	}
	return nil
}
func (p *recorder) OnComplete(*nbhttp.Parser) { p.body = 0 }

// FuzzPreUpgradeHTTP feeds arbitrary request streams, cut into pieces, through the pre-upgrade
// check and then, as the engine does, to nbio's HTTP parser: nothing panics, and no request the
// check lets through makes nbio's parser read a body over the limit (it buffers a body whole
// before any handler runs).
func FuzzPreUpgradeHTTP(f *testing.F) {
	f.Add([]byte("GET /healthz HTTP/1.1\r\nHost: a\r\n\r\n"), []byte{5})
	f.Add([]byte("POST /v1/admin/invites HTTP/1.1\r\nHost: a\r\nContent-Length: 5\r\n\r\nhelloGET / HTTP/1.1\r\n\r\n"), []byte{3, 40})
	f.Add([]byte("POST / HTTP/1.1\r\nContent-Length: 99999999\r\n\r\n"), []byte{255})
	f.Add([]byte("POST / HTTP/1.1\r\nTransfer-Encoding: chunked\r\n\r\n5\r\nhello\r\n0\r\n\r\n"), []byte{1})
	f.Add([]byte("POST / HTTP/1.1\r\nContent-Length: 3\r\nContent-Length: 300\r\n\r\nabc"), []byte{9})
	f.Add([]byte("GET / HTTP/1.1\r\nAuthorization: Bearer op\r\nContent-Length: 2000\r\n\r\n"), []byte{9})
	f.Fuzz(func(t *testing.T, stream, cuts []byte) {
		const maxBody = 1000
		p := newPreUpgrade(Config{MaxPendingUpgrades: 1, MaxPendingUpgradesPerIP: 1, MaxHeaderBytes: 2048, MaxBodyBytes: maxBody})
		s := &pendingSock{}
		rec := &recorder{t: t, maxBody: maxBody}
		parser := nbhttp.NewParser(nil, fuzzEngine, rec, false, nil)
		rest := stream
		for i := 0; len(rest) > 0; i++ {
			n := len(rest)
			if len(cuts) > 0 {
				n = min(n, 1+int(cuts[i%len(cuts)]))
			}
			if status, _ := s.scan(rest[:n], p); status != 0 {
				if status < 400 || status > 499 {
					t.Fatalf("refused with status %d", status)
				}
				return
			}
			if len(s.hdr) > p.maxHeader {
				t.Fatalf("the check holds %d header bytes (limit %d)", len(s.hdr), p.maxHeader)
			}
			if parser.Parse(rest[:n]) != nil {
				return
			}
			rest = rest[n:]
		}
	})
}
