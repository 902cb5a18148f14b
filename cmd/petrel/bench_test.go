// Copyright 2026 The Petrel Authors
// SPDX-License-Identifier: Apache-2.0

package main

import (
	"bytes"
	"encoding/json"
	"os"
	"os/exec"
	"path/filepath"
	"strconv"
	"strings"
	"testing"
)

func TestBenchUsage(t *testing.T) {
	home := t.TempDir()
	tokenOnly := filepath.Join(t.TempDir(), "admin.token") // a data directory without admin.addr
	if err := os.WriteFile(tokenOnly, []byte("t0ken\n"), 0o600); err != nil {
		t.Fatal(err)
	}
	cases := []struct {
		name string
		args []string
		code int
		want string
	}{
		{"no scenario", []string{"bench"}, 2, "name a scenario"},
		{"unknown scenario", []string{"bench", "soak"}, 2, "unknown scenario"},
		{"help", []string{"bench", "idle", "--help"}, 0, "--conns"},
		{"flag of another scenario", []string{"bench", "relay", "--conns", "5"}, 2, "not defined"},
		{"not loopback", []string{"bench", "idle", "--server", "http://10.0.0.1:7070"}, 2, "not a loopback address"},
		{"not loopback among several", []string{"bench", "relay", "--server", "http://127.0.0.1:7070,http://chat.example:7070"}, 2, "not a loopback address"},
		{"bad pid", []string{"bench", "idle", "--server-pid", "x"}, 2, "not a process id"},
		{"no token", []string{"bench", "idle", "--server", "http://127.0.0.1:1", "--admin-token-file", filepath.Join(home, "nope")}, 1, "no operator token"},
		{"no admin.addr beside the token", []string{"bench", "idle", "--server", "http://127.0.0.1:1", "--admin-token-file", tokenOnly}, 2, filepath.Join(filepath.Dir(tokenOnly), "admin.addr") + " does not exist"},
		{"admin not loopback", []string{"bench", "idle", "--server", "http://127.0.0.1:1", "--admin-token-file", tokenOnly, "--admin", "http://192.0.2.1:7071"}, 2, "not a loopback address"},
		{"admin not a URL", []string{"bench", "idle", "--server", "http://127.0.0.1:1", "--admin-token-file", tokenOnly, "--admin", "ftp://127.0.0.1:1"}, 2, "want http://"},
		{"attack help", []string{"bench", "attack", "--help"}, 0, "--max-server-rss"},
		{"attack bad size", []string{"bench", "attack", "--attack", "pingflood", "--max-server-rss", "lots"}, 2, "want a number of bytes"},
		{"attack flag of another scenario", []string{"bench", "attack", "--pairs", "5"}, 2, "not defined"},
		{"no devices per account", []string{"bench", "relay", "--devices-per-account", "0"}, 2, "want 1 to 5 (the primary and up to 4 companions)"},
		{"too many devices per account", []string{"bench", "relay", "--devices-per-account", "6"}, 2, "want 1 to 5"},
		{"devices per account not a number", []string{"bench", "relay", "--devices-per-account", "two"}, 2, "want 1 to 5"},
		{"devices per account with e2ee", []string{"bench", "relay", "--devices-per-account", "3", "--e2ee", "--server", "http://127.0.0.1:1", "--admin-token-file", tokenOnly, "--admin", "http://127.0.0.1:1"}, 1, "no --e2ee"},
		{"devices per account of another scenario", []string{"bench", "idle", "--devices-per-account", "2"}, 2, "not defined"},
	}
	for _, tc := range cases {
		t.Run(tc.name, func(t *testing.T) {
			r := petrel(t, home, "", tc.args...).must(t, tc.code)
			if !strings.Contains(r.stderr, tc.want) {
				t.Fatalf("stderr lacks %q:\n%s", tc.want, r.stderr)
			}
		})
	}
	r := petrel(t, home, "", "help").must(t, 0)
	if !strings.Contains(r.stdout, "bench") || strings.Contains(r.stdout, "bench-worker") {
		t.Fatalf("usage should list bench and hide bench-worker:\n%s", r.stdout)
	}
}

// TestProcessBench runs petrel bench against a petrel serve process: relay in one process, and
// idle spread over two bench-worker processes dialing from 127.0.0.2 and 127.0.0.3.
func TestProcessBench(t *testing.T) {
	data := t.TempDir()
	// 8 closed-loop pairs send far more than a user may (conn_frames_per_second, 2,000 by
	// default): lift the per-connection limit so the run measures the relay, not the limiter.
	cfg := filepath.Join(t.TempDir(), "petrel.toml")
	if err := os.WriteFile(cfg, []byte("conn_frames_per_second = 1000000\nconn_frame_burst = 1000000\n"), 0o600); err != nil {
		t.Fatal(err)
	}
	srv := startServer(t, data, "127.0.0.1:0", "--config", cfg)
	pid := strconv.Itoa(srv.cmd.Process.Pid)
	bench := func(t *testing.T, env []string, args ...string) map[string]any {
		t.Helper()
		out := filepath.Join(t.TempDir(), "result.json")
		cmd := exec.Command(petrelBin, append([]string{"bench"}, append(args, "--server", srv.url, "--server-pid", pid, "--json", out)...)...)
		cmd.Dir = t.TempDir() // no ./petrel-data here
		cmd.Env = append(os.Environ(), env...)
		var stdout, stderr bytes.Buffer
		cmd.Stdout, cmd.Stderr = &stdout, &stderr
		if err := cmd.Run(); err != nil {
			t.Fatalf("petrel bench %v: %v\nstdout:\n%s\nstderr:\n%s", args, err, stdout.String(), stderr.String())
		}
		if !strings.Contains(stdout.String(), "petrel bench "+args[0]) || !strings.Contains(stderr.String(), "RLIMIT_NOFILE") {
			t.Errorf("stdout:\n%s\nstderr:\n%s", stdout.String(), stderr.String())
		}
		b, err := os.ReadFile(out)
		if err != nil {
			t.Fatal(err)
		}
		var m map[string]any
		if err := json.Unmarshal(b, &m); err != nil {
			t.Fatalf("%s: %v", b, err)
		}
		return m
	}
	wantNum := func(t *testing.T, m map[string]any, key string) float64 {
		t.Helper()
		v, ok := m[key].(float64)
		if !ok {
			t.Fatalf("%s = %v (%T), want a number; result %v", key, m[key], m[key], m)
		}
		return v
	}
	t.Run("relay", func(t *testing.T) {
		// The admin listener's address comes from the admin.addr beside the token file.
		m := bench(t, nil, "relay", "--admin-token-file", filepath.Join(data, "admin.token"), "--pairs", "8", "--duration", "1s")
		sent := wantNum(t, m, "sent")
		if sent == 0 || wantNum(t, m, "delivered") != sent || wantNum(t, m, "lost") != 0 ||
			wantNum(t, m, "duplicates") != 0 || wantNum(t, m, "order_violations") != 0 || wantNum(t, m, "errors") != 0 {
			t.Errorf("result: %v", m)
		}
		for _, k := range []string{"delivered_per_s", "latency_p50_ms", "latency_p99_ms", "latency_p999_ms", "server_cpu_us_per_msg", "server_cpu_pct", "client_cpu_pct", "other_cpu_pct"} {
			wantNum(t, m, k)
		}
	})
	t.Run("idle with workers", func(t *testing.T) {
		tok, err := os.ReadFile(filepath.Join(data, "admin.token"))
		if err != nil {
			t.Fatal(err)
		}
		// With the token from the environment, --admin names the admin listener.
		m := bench(t, []string{"PETREL_ADMIN_TOKEN=" + strings.TrimSpace(string(tok))},
			"idle", "--admin", srv.admin, "--conns", "40", "--hold", "1s", "--max-conns-per-process", "20")
		if wantNum(t, m, "workers") != 2 || wantNum(t, m, "connected") != 40 || wantNum(t, m, "errors") != 0 {
			t.Errorf("result: %v", m)
		}
		wantNum(t, m, "server_rss_bytes")
		wantNum(t, m, "rss_per_conn_bytes")
		wantNum(t, m, "ping_p99_ms")
		ips, _ := m["source_ips"].([]any)
		if len(ips) != 2 || ips[0] == ips[1] {
			t.Errorf("source_ips = %v", m["source_ips"])
		}
	})
}

// TestProcessBenchChaos runs petrel bench chaos with three node processes it starts itself: one
// kill -9 (at least) under traffic loses nothing and shows nothing twice; and a run whose tally
// is falsified on purpose (--self-test) fails with a non-zero exit.
func TestProcessBenchChaos(t *testing.T) {
	chaos := func(t *testing.T, args ...string) (map[string]any, int, string) {
		t.Helper()
		out := filepath.Join(t.TempDir(), "result.json")
		cmd := exec.Command(petrelBin, append([]string{"bench", "chaos", "--nodes", "3", "--devices", "8", "--rate", "40",
			"--node-log-level", "warn", "--dir", t.TempDir(), "--json", out}, args...)...)
		cmd.Dir = t.TempDir()
		var stdout, stderr bytes.Buffer
		cmd.Stdout, cmd.Stderr = &stdout, &stderr
		err := cmd.Run()
		code := exitCode(err)
		b, rerr := os.ReadFile(out)
		if rerr != nil {
			t.Fatalf("petrel bench chaos %v: exit %d, no result: %v\nstdout:\n%s\nstderr:\n%s", args, code, rerr, stdout.String(), stderr.String())
		}
		var m map[string]any
		if err := json.Unmarshal(b, &m); err != nil {
			t.Fatalf("%s: %v", b, err)
		}
		return m, code, stdout.String() + stderr.String()
	}
	num := func(t *testing.T, m map[string]any, key string) float64 {
		t.Helper()
		v, ok := m[key].(float64)
		if !ok {
			t.Fatalf("%s = %v (%T), want a number; result %v", key, m[key], m[key], m)
		}
		return v
	}
	t.Run("kill", func(t *testing.T) {
		// The first fault comes 1s into the 4s of traffic: at least one kill -9 is certain.
		m, code, out := chaos(t, "--duration", "4s", "--faults", "kill", "--fault-interval", "1s", "--down", "300ms",
			"--drain-timeout", "30s", "--seed", "7")
		if code != 0 {
			t.Fatalf("exit %d:\n%s", code, out)
		}
		for _, k := range []string{"acked", "delivered", "lost", "duplicates", "failover_p50_ms", "failover_p99_ms", "kills", "restarts", "node_cpu_pct"} {
			num(t, m, k)
		}
		if num(t, m, "kills") < 1 || num(t, m, "restarts") < 1 || num(t, m, "acked") == 0 ||
			num(t, m, "lost") != 0 || num(t, m, "duplicates") != 0 || m["verdict"] != "ok" || m["seed"] != "7" {
			t.Errorf("result: %v\n%s", m, out)
		}
		if _, ok := m["errors_by_kind"].(map[string]any); !ok {
			t.Errorf("errors_by_kind = %v", m["errors_by_kind"])
		}
	})
	for _, mode := range []string{"loss", "duplicate"} {
		t.Run("self-test "+mode, func(t *testing.T) {
			t.Parallel()
			m, code, out := chaos(t, "--duration", "1s", "--faults", "none", "--offline-share", "0", "--drain-timeout", "3s", "--self-test", mode)
			if code != 1 || !strings.Contains(out, "FAILED") {
				t.Fatalf("exit %d, want 1 with FAILED:\n%s", code, out)
			}
			key := map[string]string{"loss": "lost", "duplicate": "duplicates"}[mode]
			if num(t, m, key) != 1 || !strings.HasPrefix(m["verdict"].(string), "FAILED") {
				t.Errorf("result: %v", m)
			}
		})
	}
}
