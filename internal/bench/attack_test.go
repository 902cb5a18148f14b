// Copyright 2026 The Petrel Authors
// SPDX-License-Identifier: Apache-2.0

package bench

import (
	"bufio"
	"bytes"
	"encoding/binary"
	"net/http"
	"os"
	"strings"
	"testing"
	"time"

	"google.golang.org/protobuf/proto"

	"github.com/petrelchat/petrel/internal/server"
	"github.com/petrelchat/petrel/internal/testserver"
	pb "github.com/petrelchat/petrel/proto/petrel/v1"
)

func TestAttackFrameBuilders(t *testing.T) {
	t.Run("ping control frame", func(t *testing.T) {
		for _, n := range []int{0, 1, 125, 500} {
			b := appendPingControl(nil, n, 0x01020304)
			op, payload, rest := decodeClientFrame(t, b)
			want := min(n, 125)
			if op != opPing || len(payload) != want || len(rest) != 0 {
				t.Fatalf("n=%d: op %x, payload %d bytes, %d left over", n, op, len(payload), len(rest))
			}
			if want > 0 && !bytes.Equal(payload, bytes.Repeat([]byte{'p'}, want)) {
				t.Fatalf("payload %q", payload)
			}
		}
	})
	t.Run("unmasked frame", func(t *testing.T) {
		for _, n := range []int{0, 125, 126, 70000} {
			payload := bytes.Repeat([]byte{7}, n)
			b := appendUnmaskedFrame(nil, opBinary, payload)
			if b[0] != 0x80|opBinary || b[1]&0x80 != 0 {
				t.Fatalf("n=%d: header % x: want FIN|binary and no mask bit", n, b[:2])
			}
			// The server-side reference encoder writes exactly these bytes: unmasked frames.
			if !bytes.Equal(b, serverFrame(true, opBinary, payload)) {
				t.Fatalf("n=%d: differs from the reference encoding", n)
			}
		}
	})
	t.Run("get bundle", func(t *testing.T) {
		f := &pb.Frame{}
		if err := proto.Unmarshal(appendGetBundle(nil, 9, "victim-1"), f); err != nil {
			t.Fatal(err)
		}
		if f.GetId() != 9 || f.GetGetBundle().GetName() != "victim-1" {
			t.Fatalf("decoded %v", f)
		}
	})
	t.Run("big auth", func(t *testing.T) {
		for _, size := range []int{10, 127, 128, 200_000, 1 << 20} {
			b := appendBigAuth(nil, 1, "dev", size)
			f := &pb.Frame{}
			if err := proto.Unmarshal(b, f); err != nil {
				t.Fatalf("size %d: %v", size, err)
			}
			if f.GetAuth().GetDeviceId() != "dev" {
				t.Fatalf("size %d: decoded %v", size, f)
			}
			if size >= 20 && len(b) != size {
				t.Fatalf("size %d: encoded %d bytes", size, len(b))
			}
		}
	})
	t.Run("half header", func(t *testing.T) {
		tg, err := parseTarget("http://127.0.0.1:7070")
		if err != nil {
			t.Fatal(err)
		}
		h := halfHeader(tg)
		if !bytes.HasPrefix(h, []byte("GET "+pb.ConnectPath+" HTTP/1.1\r\nHost: 127.0.0.1:7070\r\n")) || bytes.Contains(h, []byte("\r\n\r\n")) {
			t.Fatalf("half header %q: want a request line and headers without the blank line", h)
		}
		if l := trickleLine(3); !bytes.HasSuffix(l, []byte("\r\n")) || bytes.Contains(l, []byte("\r\n\r\n")) || bytes.Count(l, []byte(":")) != 1 {
			t.Fatalf("trickle line %q", l)
		}
		// The head plus any number of trickled lines never parses as a whole request.
		full := append(append(h, trickleLine(1)...), trickleLine(2)...)
		if _, err := readRequestHead(full); err == nil {
			t.Fatalf("%q parsed as a complete request head", full)
		}
	})
	t.Run("post head", func(t *testing.T) {
		tg, _ := parseTarget("http://127.0.0.1:7070")
		h := postHead(tg, "/v1/admin/invites", 64<<20)
		req, err := readRequestHead(h)
		if err != nil {
			t.Fatal(err)
		}
		if req.Method != "POST" || req.URL.Path != "/v1/admin/invites" || req.ContentLength != 64<<20 {
			t.Fatalf("request %s %s, %d bytes", req.Method, req.URL.Path, req.ContentLength)
		}
	})
	t.Run("unmasked chunk", func(t *testing.T) {
		at := &attackRun{a: &AttackConfig{Kind: AttackUnmasked, FrameBytes: 200}}
		at.prepare()
		if len(at.chunk) != at.perChunk*at.frameSize || at.perChunk < 2 {
			t.Fatalf("chunk %d bytes, %d frames of %d", len(at.chunk), at.perChunk, at.frameSize)
		}
		// Every frame in the chunk is an unmasked binary frame whose payload is a Ping frame.
		n := int(binary.BigEndian.Uint16(at.chunk[2:]))
		f := &pb.Frame{}
		if at.chunk[1] != 126 || proto.Unmarshal(at.chunk[4:4+n], f) != nil || f.GetPing() == nil {
			t.Fatalf("first frame % x…: %v", at.chunk[:8], f)
		}
	})
}

func TestParseSize(t *testing.T) {
	for in, want := range map[string]int64{"65536": 65536, "4GiB": 4 << 30, "200KB": 200_000, "64 MiB": 64 << 20, "1g": 1 << 30, "10B": 10} {
		if got, err := ParseSize(in); err != nil || got != want {
			t.Errorf("ParseSize(%q) = %d, %v; want %d", in, got, err, want)
		}
	}
	for _, in := range []string{"", "GiB", "4TiB", "-1", "1.5GiB", "99999999999999999GiB"} {
		if _, err := ParseSize(in); err == nil {
			t.Errorf("ParseSize(%q) succeeded", in)
		}
	}
}

func TestHTTPReason(t *testing.T) {
	for in, want := range map[string]string{"HTTP/1.1 413 Request Entity Too Large\r\n": "http_413", "HTTP/1.0 408 x": "http_408", "garbage": "answer"} {
		if got := httpReason([]byte(in)); got != want {
			t.Errorf("httpReason(%q) = %q, want %q", in, got, want)
		}
	}
}

func readRequestHead(b []byte) (*http.Request, error) {
	return http.ReadRequest(bufio.NewReader(bytes.NewReader(b)))
}

// TestAttackKinds runs every attack kind briefly against an in-process server and checks the
// report's shape (the hostile suite in internal/hostile asserts memory bounds; this does not).
func TestAttackKinds(t *testing.T) {
	srv := testserver.Start(t, testserver.WithConfig(func(c *server.Config) {
		c.HandshakeTimeout.Duration = 2 * time.Second
	}))
	keys := []string{"attack", "conns", "attack_s", "stopped_by", "stopped_at_guard", "guard_tripped_at_s", "opened", "frames_sent", "bytes_sent",
		"ended", "ended_reasons", "open_at_stop", "stalled_at_stop", "open_failures",
		"server_rss_before_bytes", "server_rss_peak_bytes", "server_rss_growth_bytes", "server_rss_after_5s_bytes",
		"server_rss_after_30s_bytes", "server_rss_peak_after_bytes", "server_rss_end_bytes", "server_rss_mib_by_s",
		"server_cpu_pct", "client_cpu_pct", "other_cpu_pct",
		"probe_ping_ok", "probe_ping_failed", "probe_ping_p99_ms", "probe_send_ok", "probe_healthz_ok", "probe_connect_ok",
		"probe_ping_before_p99_ms", "probe_after_ok", "probe_after_failed", "probe_failure_reasons", "errors"}
	for _, kind := range Attacks {
		t.Run(kind, func(t *testing.T) {
			cfg := newConfig(t, srv, ScenarioAttack)
			cfg.Conns, cfg.Duration = 2, 600*time.Millisecond
			cfg.Attack = AttackConfig{Kind: kind, Settle: 300 * time.Millisecond, Baseline: 300 * time.Millisecond,
				Reconnects: 3, BodyBytes: 1 << 20, BodyRate: 1 << 20}
			_, m := runBench(t, cfg)
			wantKeys(t, m, keys...)
			if m["attack"] != kind || m["stopped_by"] != "duration" {
				t.Errorf("attack %v, stopped by %v", m["attack"], m["stopped_by"])
			}
			if num(t, m, "opened") < 1 || num(t, m, "bytes_sent") <= 0 {
				t.Errorf("opened %v sockets, sent %v bytes", m["opened"], m["bytes_sent"])
			}
			if num(t, m, "server_rss_before_bytes") <= 0 || num(t, m, "server_rss_peak_bytes") <= 0 {
				t.Errorf("server RSS not sampled")
			}
			if num(t, m, "probe_ping_ok")+num(t, m, "probe_ping_failed") == 0 {
				t.Errorf("the probe did not run during the attack")
			}
			if m["server_rss_after_5s_bytes"] != nil {
				t.Errorf("server_rss_after_5s_bytes = %v after a 300 ms settle", m["server_rss_after_5s_bytes"])
			}
		})
	}
}

// The guard stops the attack at once when the server's RSS is past it.
func TestAttackGuard(t *testing.T) {
	srv := testserver.Start(t)
	cfg := newConfig(t, srv, ScenarioAttack)
	cfg.Conns, cfg.Duration = 1, time.Minute
	cfg.Attack = AttackConfig{Kind: AttackPingFlood, MaxServerRSS: 1 << 20, Settle: -1, Baseline: 100 * time.Millisecond}
	start := time.Now()
	_, m := runBench(t, cfg)
	if m["stopped_at_guard"] != true || m["stopped_by"] != "guard" {
		t.Fatalf("stopped_at_guard %v, stopped_by %v", m["stopped_at_guard"], m["stopped_by"])
	}
	if el := time.Since(start); el > 30*time.Second {
		t.Fatalf("the guard took %v to stop a 1-minute attack", el)
	}
}

func TestAttackValidate(t *testing.T) {
	base := Config{Scenario: ScenarioAttack, Servers: []string{"http://127.0.0.1:7070"}, Admins: []string{"http://127.0.0.1:7071"}, AdminTokens: []string{"x"}, ServerPIDs: []int{os.Getpid()},
		Attack: AttackConfig{Kind: AttackPipeline}}
	cases := []struct {
		name    string
		edit    func(*Config)
		wantErr string
	}{
		{"ok", func(*Config) {}, ""},
		{"no kind", func(c *Config) { c.Attack.Kind = "" }, "want one of"},
		{"no pid", func(c *Config) { c.ServerPIDs = nil }, "--server-pid"},
		{"two servers", func(c *Config) { c.Servers = append(c.Servers, "http://127.0.0.1:7071") }, "exactly one server"},
		{"too many conns", func(c *Config) { c.Conns = 100_000 }, "at most"},
		{"big ping", func(c *Config) { c.Attack.Kind, c.Attack.FrameBytes = AttackPingFlood, 126 }, "at most 125"},
		{"relative path", func(c *Config) { c.Attack.Kind, c.Attack.Path = AttackBigBody, "admin" }, "absolute path"},
	}
	for _, tc := range cases {
		t.Run(tc.name, func(t *testing.T) {
			c := base
			tc.edit(&c)
			c.setDefaults()
			err := c.Validate()
			switch {
			case tc.wantErr == "" && err != nil:
				t.Fatalf("unexpected error: %v", err)
			case tc.wantErr != "" && (err == nil || !strings.Contains(err.Error(), tc.wantErr)):
				t.Fatalf("error %v, want one containing %q", err, tc.wantErr)
			}
		})
	}
	c := base
	c.setDefaults()
	if c.Conns != 1 || c.Attack.MaxServerRSS != DefaultMaxServerRSS || c.Attack.Settle != 30*time.Second {
		t.Fatalf("defaults: conns %d, guard %d, settle %v", c.Conns, c.Attack.MaxServerRSS, c.Attack.Settle)
	}
}

func TestRSSSamplerAt(t *testing.T) {
	t0 := time.Now()
	s := &rssSampler{samples: []rssSample{{t0, 1}, {t0.Add(time.Second), 2}, {t0.Add(1900 * time.Millisecond), 3}}}
	for _, tc := range []struct {
		at   time.Duration
		want int64
		ok   bool
	}{{0, 1, true}, {1100 * time.Millisecond, 2, true}, {2 * time.Second, 3, true}, {10 * time.Second, 0, false}} {
		if got, ok := s.at(t0.Add(tc.at), 500*time.Millisecond); got != tc.want || ok != tc.ok {
			t.Errorf("at(+%v) = %d, %v; want %d, %v", tc.at, got, ok, tc.want, tc.ok)
		}
	}
	if pk, ok := s.peak(t0, t0.Add(1500*time.Millisecond)); !ok || pk.rss != 2 {
		t.Errorf("peak = %v, %v", pk, ok)
	}
	if got := s.perSecondMiB(t0, t0.Add(3*time.Second)); len(got) != 2 {
		t.Errorf("perSecondMiB = %v", got)
	}
}
