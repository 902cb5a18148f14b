// Copyright 2026 The Petrel Authors
// SPDX-License-Identifier: Apache-2.0

package bench

import (
	"bufio"
	"context"
	"encoding/json"
	"errors"
	"fmt"
	"io"
	"log/slog"
	"os"
	"os/exec"
	"path/filepath"
	"slices"
	"strings"
	"testing"
	"time"

	"google.golang.org/protobuf/proto"

	"github.com/petrelchat/petrel/internal/server"
	"github.com/petrelchat/petrel/internal/testserver"
	pb "github.com/petrelchat/petrel/proto/petrel/v1"
)

// workerEnv makes the test binary act as a bench worker (see TestMain), so that the worker path
// runs in real separate processes.
const workerEnv = "PETREL_BENCH_TEST_WORKER"

// serverEnv makes the test binary act as a server process holding its data in the named
// directory: it prints its URL, and stops when its standard input closes.
const serverEnv = "PETREL_BENCH_TEST_SERVER"

func TestMain(m *testing.M) {
	if os.Getenv(workerEnv) == "1" {
		os.Exit(RunWorker(context.Background(), os.Stdin, os.Stdout, os.Stderr))
	}
	if dir := os.Getenv(serverEnv); dir != "" {
		os.Exit(serveForTest(dir))
	}
	os.Exit(m.Run())
}

func serveForTest(dir string) int {
	cfg := server.Config{Listen: "127.0.0.1:0", Data: dir, Node: "test"}
	cfg.AdminListen, cfg.InboxShards = "127.0.0.1:0", 4
	srv, err := server.New(cfg, slog.New(slog.DiscardHandler))
	if err != nil {
		fmt.Fprintln(os.Stderr, err)
		return 1
	}
	ctx, cancel := context.WithCancel(context.Background())
	defer cancel()
	errc := make(chan error, 1)
	go func() { errc <- srv.Run(ctx) }()
	select {
	case <-srv.Ready():
	case err := <-errc:
		fmt.Fprintln(os.Stderr, err)
		return 1
	}
	fmt.Println(srv.URL(), srv.AdminURL())
	_, _ = io.Copy(io.Discard, os.Stdin)
	cancel()
	<-errc
	return 0
}

// serverProcess runs a server in a separate process (this test binary, see TestMain). The worker
// test needs one: the gateway's sockets are not close-on-exec (nbio dup()s them), so workers
// forked from a process that also hosts the server would inherit its client connections.
type serverProcess struct {
	url, admin, dir string
	pid             int
}

func startServerProcess(t *testing.T) *serverProcess {
	t.Helper()
	dir := t.TempDir()
	cmd := exec.Command(os.Args[0])
	cmd.Env = append(os.Environ(), serverEnv+"="+dir)
	stdin, err := cmd.StdinPipe()
	if err != nil {
		t.Fatal(err)
	}
	stdout, err := cmd.StdoutPipe()
	if err != nil {
		t.Fatal(err)
	}
	cmd.Stderr = os.Stderr
	if err := cmd.Start(); err != nil {
		t.Fatal(err)
	}
	t.Cleanup(func() {
		stdin.Close()
		done := make(chan struct{})
		go func() { _ = cmd.Wait(); close(done) }()
		select {
		case <-done:
		case <-time.After(20 * time.Second):
			_ = cmd.Process.Kill()
			<-done
		}
	})
	line, err := bufio.NewReader(stdout).ReadString('\n')
	if err != nil {
		t.Fatalf("server process: %v", err)
	}
	f := strings.Fields(line)
	if len(f) != 2 {
		t.Fatalf("server process printed %q, want URL ADMIN-URL", line)
	}
	return &serverProcess{url: f[0], admin: f[1], dir: dir, pid: cmd.Process.Pid}
}

// testWriter sends progress lines to the test log.
type testWriter struct{ t *testing.T }

func (w testWriter) Write(p []byte) (int, error) {
	w.t.Helper()
	w.t.Log(strings.TrimRight(string(p), "\n"))
	return len(p), nil
}

func newConfig(t *testing.T, srv *testserver.Server, scenario string) Config {
	t.Helper()
	// The server runs in the test process.
	return configFor(t, srv.URL(), srv.AdminURL(), srv.DataDir(), os.Getpid(), scenario)
}

func configFor(t *testing.T, url, adminURL, dataDir string, pid int, scenario string) Config {
	t.Helper()
	tok, err := os.ReadFile(filepath.Join(dataDir, "admin.token"))
	if err != nil {
		t.Fatal(err)
	}
	return Config{
		Scenario:    scenario,
		Servers:     []string{url},
		Admins:      []string{adminURL},
		AdminTokens: []string{strings.TrimSpace(string(tok))},
		ServerPIDs:  []int{pid},
		Log:         testWriter{t},
	}
}

func runBench(t *testing.T, cfg Config) (*Result, map[string]any) {
	t.Helper()
	ctx, cancel := context.WithTimeout(context.Background(), 2*time.Minute)
	defer cancel()
	res, err := Run(ctx, cfg)
	if err != nil {
		t.Fatalf("Run: %v", err)
	}
	var table strings.Builder
	_ = res.WriteTable(&table)
	t.Logf("result:\n%s", table.String())
	b, err := json.Marshal(res)
	if err != nil {
		t.Fatal(err)
	}
	var m map[string]any
	if err := json.Unmarshal(b, &m); err != nil {
		t.Fatalf("result JSON %s: %v", b, err)
	}
	return res, m
}

func num(t *testing.T, m map[string]any, key string) float64 {
	t.Helper()
	v, ok := m[key]
	if !ok {
		t.Fatalf("result has no %q", key)
	}
	f, ok := v.(float64)
	if !ok {
		t.Fatalf("%s = %v (%T), want a number", key, v, v)
	}
	return f
}

func wantKeys(t *testing.T, m map[string]any, keys ...string) {
	t.Helper()
	for _, k := range keys {
		if _, ok := m[k]; !ok {
			t.Errorf("result JSON has no %q", k)
		}
	}
}

func wantEq(t *testing.T, m map[string]any, key string, want float64) {
	t.Helper()
	if got := num(t, m, key); got != want {
		t.Errorf("%s = %v, want %v", key, got, want)
	}
}

var cpuKeys = []string{"server_cpu_pct", "client_cpu_pct", "other_cpu_pct", "errors", "scenario", "duration_s"}

func TestIdle(t *testing.T) {
	srv := testserver.Start(t)
	cfg := newConfig(t, srv, ScenarioIdle)
	cfg.Conns, cfg.Hold, cfg.PingSample, cfg.PreKeys = 30, time.Second, 10, 2
	_, m := runBench(t, cfg)
	wantKeys(t, m, append(cpuKeys, "conns", "connects_per_s", "server_rss_bytes", "rss_per_conn_bytes", "ping_p99_ms", "connect_p99_ms")...)
	wantEq(t, m, "prekeys_per_kind", 2)
	wantEq(t, m, "connected", 30)
	wantEq(t, m, "held", 30)
	wantEq(t, m, "dropped", 0)
	wantEq(t, m, "errors", 0)
	wantEq(t, m, "ping_samples", 10*pingRounds)
	if num(t, m, "server_rss_bytes") <= 0 || num(t, m, "connects_per_s") <= 0 || num(t, m, "ping_p99_ms") <= 0 {
		t.Errorf("implausible figures: %v", m)
	}
	num(t, m, "rss_per_conn_bytes")
	num(t, m, "rss_settled_per_conn_bytes")
	if m["workers"].(float64) != 0 {
		t.Errorf("workers = %v, want 0", m["workers"])
	}
}

// TestIdleDroppedSilence: connections the server closes as idle (here after 300 ms, long before
// the generator's 50 s keepalive) count as dropped, each with how long the generator had not
// written to it; none had been silent for over 100 s, so none counts as dropped_silent.
func TestIdleDroppedSilence(t *testing.T) {
	srv := testserver.Start(t, testserver.WithConfig(func(c *server.Config) {
		c.IdleTimeout.Duration = 300 * time.Millisecond
	}))
	cfg := newConfig(t, srv, ScenarioIdle)
	const n = 10
	cfg.Conns, cfg.Hold, cfg.PingSample = n, 3*time.Second, -1
	_, m := runBench(t, cfg)
	wantEq(t, m, "connected", n)
	wantEq(t, m, "dropped", n)
	wantEq(t, m, "held", 0)
	wantEq(t, m, "dropped_silent", 0)
	if p50, most := num(t, m, "dropped_silence_p50_s"), num(t, m, "dropped_silence_max_s"); p50 < 0.3 || most > 3 || p50 > most {
		t.Errorf("dropped_silence_p50_s = %v, dropped_silence_max_s = %v: want 0.3 s ≤ p50 ≤ max ≤ the 3 s hold", p50, most)
	}
	if first := num(t, m, "drop_at_first_s"); first < 0.3 {
		t.Errorf("drop_at_first_s = %v, want at least the 300 ms idle timeout", first)
	}
	by, _ := m["dropped_by_source"].(map[string]any)
	var sum float64
	for _, v := range by {
		sum += v.(float64)
	}
	if sum != n {
		t.Errorf("dropped_by_source = %v, want %d in all", m["dropped_by_source"], n)
	}
}

// TestIdleConnectRate: --connect-rate paces the connect phase (device j no earlier than j/rate
// after the start), so the connects a second cannot exceed it.
func TestIdleConnectRate(t *testing.T) {
	srv := testserver.Start(t)
	cfg := newConfig(t, srv, ScenarioIdle)
	const n, rate = 30, 60.0
	cfg.Conns, cfg.Hold, cfg.PingSample, cfg.ConnectRate = n, 200*time.Millisecond, -1, rate
	_, m := runBench(t, cfg)
	wantEq(t, m, "connected", n)
	wantEq(t, m, "errors", 0)
	// n connections spread over at least (n-1)/rate seconds.
	if got, most := num(t, m, "connects_per_s"), rate*n/(n-1); got > most {
		t.Errorf("connects_per_s = %.1f with --connect-rate %v: want at most %.1f", got, rate, most)
	}
}

func TestAccounts(t *testing.T) {
	srv := testserver.Start(t)
	cfg := newConfig(t, srv, ScenarioAccounts)
	cfg.Accounts = AccountsConfig{Accounts: 40, PreKeys: 2, Existing: 10, Settle: -1}
	_, m := runBench(t, cfg)
	wantKeys(t, m, "scenario", "accounts", "registered", "prekeys_per_kind", "server_rss_before_bytes", "server_rss_registered_bytes",
		"server_rss_settled_bytes", "server_rss_baseline_bytes", "rss_per_account_bytes", "register_server_cpu_us_per_account", "heap_inuse_bytes")
	wantEq(t, m, "registered", 40)
	wantEq(t, m, "accounts", 50)
	wantEq(t, m, "prekeys_per_kind", 2)
	if num(t, m, "server_rss_settled_bytes") <= 0 || num(t, m, "heap_inuse_bytes") <= 0 {
		t.Errorf("implausible figures: %v", m)
	}
}

func TestRelayClosedLoop(t *testing.T) {
	// A closed loop runs as fast as the machine: on a fast one 16 pairs pass the per-connection
	// frame limit (2000/s by default), which is not what this test is about.
	srv := testserver.Start(t, testserver.WithConfig(func(c *server.Config) { c.ConnFramesPerSecond, c.ConnFrameBurst = 1e6, 1e6 }))
	cfg := newConfig(t, srv, ScenarioRelay)
	cfg.Pairs, cfg.Duration, cfg.Window, cfg.Size = 16, time.Second, 4, 100
	_, m := runBench(t, cfg)
	wantKeys(t, m, append(cpuKeys, "delivered", "delivered_per_s", "latency_p50_ms", "latency_p99_ms", "latency_p999_ms",
		"server_cpu_us_per_msg", "lost", "duplicates", "order_violations", "acks_per_s")...)
	sent := num(t, m, "sent")
	if sent < 10 {
		t.Fatalf("only %v messages sent", sent)
	}
	wantEq(t, m, "acked", sent)
	wantEq(t, m, "delivered", sent)
	wantEq(t, m, "lost", 0)
	wantEq(t, m, "duplicates", 0)
	wantEq(t, m, "order_violations", 0)
	wantEq(t, m, "errors", 0)
	if num(t, m, "latency_p50_ms") <= 0 || num(t, m, "latency_p999_ms") < num(t, m, "latency_p50_ms") {
		t.Errorf("implausible latencies: %v", m)
	}
	num(t, m, "server_cpu_us_per_msg")
	// One device per account: every delivery is a device delivery.
	wantEq(t, m, "devices_per_account", 1)
	wantEq(t, m, "device_deliveries", sent)
	wantEq(t, m, "device_deliveries_per_s", num(t, m, "delivered_per_s"))
	wantEq(t, m, "server_cpu_us_per_device_msg", num(t, m, "server_cpu_us_per_msg"))
}

// TestRelayDevicesPerAccount runs relay with 3 devices per account: the sender's primary sends
// to the receiver's 3 devices and its own 2 others, and all 5 get every message exactly once.
func TestRelayDevicesPerAccount(t *testing.T) {
	srv := testserver.Start(t, testserver.WithConfig(func(c *server.Config) { c.ConnFramesPerSecond, c.ConnFrameBurst = 1e6, 1e6 }))
	cfg := newConfig(t, srv, ScenarioRelay)
	cfg.Pairs, cfg.Duration, cfg.Window, cfg.Size, cfg.DevicesPerAccount = 8, time.Second, 4, 100, 3
	_, m := runBench(t, cfg)
	wantKeys(t, m, "devices_per_account", "device_deliveries", "device_deliveries_per_s", "server_cpu_us_per_device_msg")
	wantEq(t, m, "devices_per_account", 3)
	wantEq(t, m, "registered", 2*8*3)
	wantEq(t, m, "conns", 2*8*3)
	sent := num(t, m, "sent")
	if sent < 10 {
		t.Fatalf("only %v messages sent", sent)
	}
	wantEq(t, m, "acked", sent)
	wantEq(t, m, "delivered", sent)
	wantEq(t, m, "device_deliveries", 5*sent)
	wantEq(t, m, "lost", 0)
	wantEq(t, m, "duplicates", 0)
	wantEq(t, m, "order_violations", 0)
	wantEq(t, m, "errors", 0)
	// In the window too (messages straddling its end may count for some devices only).
	if r := num(t, m, "device_deliveries_per_s") / num(t, m, "delivered_per_s"); r < 4.5 || r > 5.5 {
		t.Errorf("device_deliveries_per_s / delivered_per_s = %.2f, want about 5", r)
	}
	if c := num(t, m, "server_cpu_us_per_device_msg"); c <= 0 || c >= num(t, m, "server_cpu_us_per_msg") {
		t.Errorf("server_cpu_us_per_device_msg = %v (per message %v)", c, m["server_cpu_us_per_msg"])
	}
}

func TestRelayOpenLoop(t *testing.T) {
	srv := testserver.Start(t)
	cfg := newConfig(t, srv, ScenarioRelay)
	cfg.Pairs, cfg.Duration, cfg.Rate = 4, time.Second, 300
	_, m := runBench(t, cfg)
	// The schedule is fixed in advance: exactly rate × duration messages.
	wantEq(t, m, "sent", 300)
	wantEq(t, m, "acked", 300)
	wantEq(t, m, "delivered", 300)
	wantEq(t, m, "lost", 0)
	wantEq(t, m, "duplicates", 0)
	wantEq(t, m, "order_violations", 0)
	wantEq(t, m, "rate", 300)
	num(t, m, "send_lag_p99_ms")
}

func TestRelayE2EE(t *testing.T) {
	srv := testserver.Start(t)
	cfg := newConfig(t, srv, ScenarioRelay)
	cfg.Pairs, cfg.Duration, cfg.E2EE = 2, time.Second, true
	_, m := runBench(t, cfg)
	sent := num(t, m, "acked")
	if sent < 2 {
		t.Fatalf("only %v messages acked", sent)
	}
	wantEq(t, m, "delivered", sent)
	wantEq(t, m, "lost", 0)
	wantEq(t, m, "duplicates", 0)
	wantEq(t, m, "order_violations", 0)
	wantEq(t, m, "errors", 0)
	if m["e2ee"] != true {
		t.Errorf("e2ee = %v", m["e2ee"])
	}
}

func TestOffline(t *testing.T) {
	srv := testserver.Start(t)
	cfg := newConfig(t, srv, ScenarioOffline)
	cfg.Recipients, cfg.Messages, cfg.Senders, cfg.Window = 5, 300, 3, 16
	_, m := runBench(t, cfg)
	wantKeys(t, m, append(cpuKeys, "stored_per_s", "drained_per_s", "lost", "duplicates", "server_cpu_us_per_msg", "left_stored")...)
	wantEq(t, m, "stored", 300)
	wantEq(t, m, "delivered", 300)
	wantEq(t, m, "lost", 0)
	wantEq(t, m, "duplicates", 0)
	wantEq(t, m, "left_stored", 0)
	wantEq(t, m, "order_violations", 0)
	wantEq(t, m, "errors", 0)
	if m["exactly_once"] != true {
		t.Errorf("exactly_once = %v", m["exactly_once"])
	}
	if num(t, m, "stored_per_s") <= 0 || num(t, m, "drained_per_s") <= 0 {
		t.Errorf("implausible rates: %v", m)
	}
}

func TestChurn(t *testing.T) {
	srv := testserver.Start(t)
	cfg := newConfig(t, srv, ScenarioChurn)
	cfg.Conns, cfg.Rate, cfg.Duration = 5, 40, time.Second
	_, m := runBench(t, cfg)
	wantKeys(t, m, append(cpuKeys, "connects_per_s", "connected", "failures", "connect_p99_ms")...)
	wantEq(t, m, "attempts", 40)
	// A reconnect right after a close may rarely meet the old connection's TIME_WAIT: allow one.
	if c := num(t, m, "connected"); c < 39 {
		t.Errorf("connected = %v of 40", c)
	}
	if num(t, m, "connects_per_s") <= 0 {
		t.Errorf("connects_per_s = %v", m["connects_per_s"])
	}
}

// TestWorkers forces the worker path: 2 worker processes (this test binary, see TestMain) of 20
// connections each, dialing from 127.0.0.2 and 127.0.0.3, against a server process.
func TestWorkers(t *testing.T) {
	srv := startServerProcess(t)
	workerCmd := func(ctx context.Context) *exec.Cmd {
		cmd := exec.CommandContext(ctx, os.Args[0])
		cmd.Env = append(os.Environ(), workerEnv+"=1")
		return cmd
	}
	check := func(t *testing.T, m map[string]any) {
		t.Helper()
		wantEq(t, m, "workers", 2)
		var pids []int
		for _, p := range m["worker_pids"].([]any) {
			pids = append(pids, int(p.(float64)))
		}
		if len(pids) != 2 || pids[0] == pids[1] || slices.Contains(pids, os.Getpid()) {
			t.Errorf("worker_pids = %v (this process %d)", pids, os.Getpid())
		}
		var ips []string
		for _, ip := range m["source_ips"].([]any) {
			ips = append(ips, ip.(string))
		}
		slices.Sort(ips)
		if !slices.Equal(ips, []string{"127.0.0.2", "127.0.0.3"}) {
			t.Errorf("source_ips = %v", ips)
		}
	}
	t.Run("idle", func(t *testing.T) {
		cfg := configFor(t, srv.url, srv.admin, srv.dir, srv.pid, ScenarioIdle)
		cfg.Conns, cfg.Hold, cfg.PingSample, cfg.MaxConnsPerProcess, cfg.WorkerCommand = 40, time.Second, 20, 20, workerCmd
		_, m := runBench(t, cfg)
		check(t, m)
		num(t, m, "rss_per_conn_bytes")
		wantEq(t, m, "connected", 40)
		wantEq(t, m, "held", 40)
		wantEq(t, m, "ping_samples", 20*pingRounds)
		wantEq(t, m, "errors", 0)
	})
	t.Run("relay", func(t *testing.T) {
		cfg := configFor(t, srv.url, srv.admin, srv.dir, srv.pid, ScenarioRelay)
		cfg.Pairs, cfg.Duration, cfg.Window, cfg.MaxConnsPerProcess, cfg.WorkerCommand = 20, time.Second, 4, 20, workerCmd
		_, m := runBench(t, cfg)
		check(t, m)
		sent := num(t, m, "sent")
		wantEq(t, m, "delivered", sent)
		wantEq(t, m, "lost", 0)
		wantEq(t, m, "duplicates", 0)
		wantEq(t, m, "order_violations", 0)
		wantEq(t, m, "errors", 0)
	})
	// The accounts' companions travel to the workers, and every device counts against the
	// per-process cap: 10 pairs of 2-device accounts are 40 connections, 2 workers of 20.
	t.Run("relay, 2 devices per account", func(t *testing.T) {
		cfg := configFor(t, srv.url, srv.admin, srv.dir, srv.pid, ScenarioRelay)
		cfg.Pairs, cfg.Duration, cfg.Window, cfg.MaxConnsPerProcess, cfg.WorkerCommand = 10, time.Second, 4, 20, workerCmd
		cfg.DevicesPerAccount = 2
		_, m := runBench(t, cfg)
		check(t, m)
		wantEq(t, m, "conns", 40)
		sent := num(t, m, "sent")
		wantEq(t, m, "delivered", sent)
		wantEq(t, m, "device_deliveries", 3*sent)
		wantEq(t, m, "lost", 0)
		wantEq(t, m, "duplicates", 0)
		wantEq(t, m, "order_violations", 0)
		wantEq(t, m, "errors", 0)
	})
}

func TestOperatorTokenRequired(t *testing.T) {
	srv := testserver.Start(t)
	cfg := newConfig(t, srv, ScenarioIdle)
	cfg.AdminTokens = []string{"not-the-token"}
	cfg.Conns = 1
	_, err := Run(context.Background(), cfg)
	if !errors.Is(err, ErrOperatorToken) {
		t.Fatalf("Run with a wrong token: %v, want ErrOperatorToken", err)
	}
}

func TestValidate(t *testing.T) {
	base := Config{Scenario: ScenarioIdle, Servers: []string{"http://127.0.0.1:7070"}, Admins: []string{"http://127.0.0.1:7071"}, AdminTokens: []string{"x"}}
	cases := []struct {
		name    string
		edit    func(*Config)
		wantErr string
	}{
		{"ok", func(*Config) {}, ""},
		{"localhost", func(c *Config) { c.Servers = []string{"http://localhost:7070"} }, ""},
		{"other loopback", func(c *Config) { c.Servers = []string{"http://127.9.8.7:7070"} }, ""},
		{"ipv6 loopback", func(c *Config) { c.Servers = []string{"http://[::1]:7070"} }, ""},
		{"private address", func(c *Config) { c.Servers = []string{"http://10.0.0.1:7070"} }, "not a loopback"},
		{"host name", func(c *Config) { c.Servers = []string{"http://127.0.0.1:1", "https://chat.example"} }, "not a loopback"},
		{"no token", func(c *Config) { c.AdminTokens = nil }, "operator token"},
		{"no admin listener", func(c *Config) { c.Admins = nil }, "no admin listener"},
		{"admin listener off this machine", func(c *Config) { c.Admins = []string{"http://10.0.0.1:7071"} }, "not a loopback"},
		{"admin listener not a URL", func(c *Config) { c.Admins = []string{"127.0.0.1:7071"} }, "want http://"},
		{"admins per server", func(c *Config) {
			c.Servers = []string{"http://127.0.0.1:1", "http://127.0.0.1:2"}
			c.Admins = []string{"http://127.0.0.1:3", "http://127.0.0.1:4"}
		}, ""},
		{"admin count", func(c *Config) {
			c.Servers = []string{"http://127.0.0.1:1", "http://127.0.0.1:2", "http://127.0.0.1:3"}
			c.Admins = []string{"http://127.0.0.1:4", "http://127.0.0.1:5"}
		}, "admin listeners for 3 servers"},
		{"tokens per server", func(c *Config) {
			c.Servers = []string{"http://127.0.0.1:1", "http://127.0.0.1:2"}
			c.AdminTokens = []string{"a", "b"}
		}, ""},
		{"token count", func(c *Config) {
			c.Servers = []string{"http://127.0.0.1:1", "http://127.0.0.1:2", "http://127.0.0.1:3"}
			c.AdminTokens = []string{"a", "b"}
		}, "operator tokens for 3 servers"},
		{"bad scenario", func(c *Config) { c.Scenario = "soak" }, "unknown scenario"},
		{"tiny payload", func(c *Config) { c.Size = 8 }, "size"},
		{"e2ee idle", func(c *Config) { c.E2EE = true }, "relay only"},
		{"5 devices per account", func(c *Config) { c.Scenario, c.DevicesPerAccount = ScenarioRelay, 5 }, ""},
		{"6 devices per account", func(c *Config) { c.Scenario, c.DevicesPerAccount = ScenarioRelay, 6 }, "devices-per-account 6: want 1 to 5"},
		{"negative devices per account", func(c *Config) { c.Scenario, c.DevicesPerAccount = ScenarioRelay, -1 }, "want 1 to 5"},
		{"devices per account, idle", func(c *Config) { c.DevicesPerAccount = 2 }, "relay only"},
		{"devices per account, e2ee", func(c *Config) { c.Scenario, c.DevicesPerAccount, c.E2EE = ScenarioRelay, 2, true }, "no --e2ee"},
		{"devices per account, big payload", func(c *Config) { c.Scenario, c.DevicesPerAccount, c.Size = ScenarioRelay, 3, 50<<10 }, "a Send carries 5 copies"},
		{"churn without rate", func(c *Config) { c.Scenario = ScenarioChurn; c.Rate = -1 }, "rate"},
		{"accounts", func(c *Config) { c.Scenario = ScenarioAccounts; c.ServerPIDs = []int{os.Getpid()} }, ""},
		{"accounts without pid", func(c *Config) { c.Scenario = ScenarioAccounts }, "--server-pid"},
		{"accounts: nothing to measure", func(c *Config) {
			c.Scenario, c.ServerPIDs, c.Accounts.Accounts = ScenarioAccounts, []int{os.Getpid()}, -1
		}, "no accounts"},
		{"idle: too many prekeys", func(c *Config) { c.PreKeys = 201 }, "prekeys"},
		{"churn: negative prekeys", func(c *Config) { c.Scenario, c.PreKeys = ScenarioChurn, -1 }, "prekeys"},
		{"accounts: too many prekeys", func(c *Config) {
			c.Scenario, c.ServerPIDs, c.Accounts.PreKeys = ScenarioAccounts, []int{os.Getpid()}, 201
		}, "prekeys"},
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
	// Every problem is reported at once.
	c := Config{Scenario: "x", Servers: []string{"http://10.1.1.1"}, Size: 1}
	c.setDefaults()
	err := c.Validate()
	for _, want := range []string{"unknown scenario", "not a loopback", "operator token", "size"} {
		if err == nil || !strings.Contains(err.Error(), want) {
			t.Errorf("error %v lacks %q", err, want)
		}
	}
}

// TestTwoServers spreads devices over two independent servers, each with its own operator token.
func TestTwoServers(t *testing.T) {
	a, b := testserver.Start(t), testserver.Start(t)
	cfg := newConfig(t, a, ScenarioIdle)
	cb := newConfig(t, b, ScenarioIdle)
	cfg.Servers = append(cfg.Servers, cb.Servers...)
	cfg.AdminTokens = append(cfg.AdminTokens, cb.AdminTokens...)
	cfg.Admins = append(cfg.Admins, cb.Admins...)
	cfg.Conns, cfg.Hold, cfg.PingSample = 20, 500*time.Millisecond, 4
	_, m := runBench(t, cfg)
	wantEq(t, m, "connected", 20)
	wantEq(t, m, "held", 20)
	// Each device is registered on the server it connects to: a device sent to the other server
	// would fail to authenticate there.
	wantEq(t, m, "errors", 0)
}

// A long phase writes progress lines while it runs.
func TestProgressLines(t *testing.T) {
	srv := testserver.Start(t)
	cfg := newConfig(t, srv, ScenarioRelay)
	cfg.Pairs, cfg.Duration, cfg.Rate = 4, time.Second, 200
	var log testserver.Buffer
	cfg.Log, cfg.ProgressEvery = &log, 300*time.Millisecond
	runBench(t, cfg)
	out := log.String()
	t.Logf("log:\n%s", out)
	if !strings.Contains(out, "… running: 0s of 1s") && !strings.Contains(out, "… running: 1s of 1s") {
		t.Fatalf("no progress line for the timed phase")
	}
	// 1 s of load, the start delay and the wait for the last acks: a few lines, not a stream.
	if n := strings.Count(out, "… running"); n > 8 {
		t.Fatalf("%d progress lines for a phase of about 1.5 s", n)
	}
}

// deviceBytes bounds what one device takes in a bulk registration, so that requests stay under
// the server's body limit whatever the prekey count.
func TestDeviceBytes(t *testing.T) {
	for _, oneTime := range []int{0, 1, 10, 100} {
		_, dev, _, err := generate("sizecheck", oneTime)
		if err != nil {
			t.Fatal(err)
		}
		req := &pb.BulkRegisterRequest{Devices: []*pb.BulkDevice{dev}}
		if got := proto.Size(req); got > deviceBytes(oneTime) {
			t.Errorf("%d one-time prekeys: a device encodes to %d bytes, deviceBytes says %d", oneTime, got, deviceBytes(oneTime))
		}
	}
}
