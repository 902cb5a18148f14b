// Copyright 2026 The Petrel Authors
// SPDX-License-Identifier: Apache-2.0

package main

import (
	"context"
	"encoding/json"
	"errors"
	"flag"
	"fmt"
	"os"
	"os/exec"
	"path/filepath"
	"runtime/pprof"
	"strconv"
	"strings"
	"time"

	"github.com/petrelchat/petrel/internal/admin"
	"github.com/petrelchat/petrel/internal/bench"
)

const benchUsage = "bench SCENARIO --server URL[,URL...] [--admin URL[,URL...]] [--json FILE] [--server-pid PID[,PID...]] [scenario flags]"

const benchHelp = `scenarios:
  idle     --conns N --hold D [--ping-sample N] [--settle D] [--prekeys K]
                                                                N authenticated connections held open
  relay    --pairs P --duration D [--size B] [--window W] [--rate R] [--e2ee]
           [--devices-per-account K]                            online senders → receivers (K devices
                                                                per account: fan-out to every device)
  offline  --recipients R --messages M [--senders S] [--size B] [--window W]
                                                                store for offline devices, then drain
  churn    --conns N --rate R --duration D [--prekeys K]        connect, authenticate, close
  group    --members M --groups G [--rate R] [--duration D] [--messages N] [--size B]
                                                                group messages fanned out by the
                                                                server: time to the last member
                                                                device online, to every inbox
                                                                offline, sustained p99 at R msgs/s
                                                                per group, server CPU per delivery
  attack   --attack KIND --server-pid PID [--conns N] [--duration D] [--max-server-rss SIZE]
                                                                hostile sockets against one server:
                                                                its RSS before/peak/after, and a probe
           kinds: pipeline, pingflood, bigauth, slowloris, bigbody, slowbody, unmasked
  accounts --server-pid PID [--accounts N] [--prekeys K] [--settle D] [--existing N] [--baseline-rss SIZE]
                                                                registered accounts, none connected:
                                                                the server's RSS per account
  chaos    [--nodes N] --duration D [--fault-interval MIN-MAX] [--faults kill,term,partition]
           [--devices N] [--rate R] [--seed S] [--json FILE]
                                                                SDK devices (E2EE) send through a
                                                                cluster while nodes are killed -9,
                                                                SIGTERMed, restarted, partitioned;
                                                                then acked, delivered, lost, shown
                                                                twice, failover p50/p99, errors by
                                                                kind; exit 1 if anything acked was
                                                                lost or shown twice. Without
                                                                --server it starts the nodes itself
                                                                on loopback (routes through its own
                                                                fault-injecting proxies); with
                                                                --server and --server-pid it kills
                                                                and restarts the given ones

Synthetic accounts are registered (chaos without --server: on the nodes it started) with the operator token (--admin-token-file, or env
PETREL_ADMIN_TOKEN) on the servers' admin listeners (--admin, or the admin.addr beside each
token file). Only loopback servers are accepted. See README.md ("petrel bench").
`

// benchDefaultTokenFile is where petrel serve keeps the operator token by default.
var benchDefaultTokenFile = filepath.Join("petrel-data", "admin.token")

func runBench(ctx context.Context, e *env, args []string) int {
	if len(args) == 0 || strings.HasPrefix(args[0], "-") {
		if len(args) > 0 && (args[0] == "-h" || args[0] == "--help" || args[0] == "-help") {
			fmt.Fprintf(e.stderr, "usage: petrel %s\n\n%s", benchUsage, benchHelp)
			return 0
		}
		fmt.Fprintf(e.stderr, "petrel bench: name a scenario (%s)\n\nusage: petrel %s\n\n%s", strings.Join(bench.Scenarios, ", "), benchUsage, benchHelp)
		return 2
	}
	scenario := args[0]
	known := false
	for _, s := range bench.Scenarios {
		known = known || s == scenario
	}
	if !known {
		fmt.Fprintf(e.stderr, "petrel bench: unknown scenario %q (want one of %s)\n", scenario, strings.Join(bench.Scenarios, ", "))
		return 2
	}
	cfg := bench.Config{Scenario: scenario, Log: e.stderr}
	fs := newFlags(e, "bench "+scenario, benchUsage)
	servers := fs.String("server", "http://127.0.0.1:7070", "server base URL(s), comma-separated; loopback only")
	jsonOut := fs.String("json", "", "also write the result as one JSON object to `FILE` (- for standard output)")
	pids := fs.String("server-pid", "", "server process id(s), comma-separated: report their RSS and CPU")
	cpuProfile := fs.String("cpuprofile", "", "write the generator's own CPU profile (this process, not workers) to `FILE`")
	tokenFile := fs.String("admin-token-file", benchDefaultTokenFile, "the operator token: the server's <data>/admin.token (comma-separated: one per server); env PETREL_ADMIN_TOKEN when not given")
	admins := fs.String("admin", "", "admin listener URL(s), comma-separated: one for all servers or one per server; loopback only (default: the admin.addr beside each --admin-token-file)")
	fs.IntVar(&cfg.Concurrency, "concurrency", 200, "connection attempts in flight per process")
	fs.Float64Var(&cfg.ConnectRate, "connect-rate", 0, "at most this many new connections a second over all processes, as a fleet reconnecting with backoff arrives (0: as fast as the servers accept)")
	fs.IntVar(&cfg.Retries, "retries", 3, "retries of a refused connection attempt (HTTP 503, UNAVAILABLE), jittered backoff")
	fs.DurationVar(&cfg.ConnectTimeout, "connect-timeout", 10*time.Second, "bound on one connection attempt (dial + auth)")
	fs.IntVar(&cfg.MaxConnsPerProcess, "max-conns-per-process", bench.DefaultMaxConnsPerProcess, "beyond this many connections, use worker processes (each on its own 127.0.0.x source address)")
	switch scenario {
	case bench.ScenarioIdle:
		fs.IntVar(&cfg.Conns, "conns", 1000, "connections to hold")
		fs.DurationVar(&cfg.Hold, "hold", 10*time.Second, "how long to hold them once all are open")
		fs.IntVar(&cfg.PingSample, "ping-sample", 200, "held connections to ping (5 pings each) for the round-trip percentiles")
		fs.DurationVar(&cfg.Settle, "settle", 0, "wait this long after registering before measuring the server's RSS and connecting")
		fs.IntVar(&cfg.PreKeys, "prekeys", 0, "one-time prekeys of each kind (EC, ML-KEM) each device uploads at registration, as real clients do (~100); at most 200")
	case bench.ScenarioRelay:
		fs.IntVar(&cfg.Pairs, "pairs", 100, "sender/receiver pairs")
		fs.DurationVar(&cfg.Duration, "duration", 10*time.Second, "measurement window")
		fs.IntVar(&cfg.Size, "size", 300, "payload bytes (opaque random bytes)")
		fs.IntVar(&cfg.Window, "window", 0, "unacked sends per sender (default 32; 1 with --e2ee)")
		fs.Float64Var(&cfg.Rate, "rate", 0, "offered msgs/s across all pairs, open loop (default: closed loop)")
		fs.BoolVar(&cfg.E2EE, "e2ee", false, "real Signal sessions through the SDK instead of opaque payloads")
		cfg.DevicesPerAccount = 1
		fs.Func("devices-per-account", fmt.Sprintf("`K` devices per account, 1 to %d: the primary and K-1 linked companions; the sender's primary sends one envelope per receiver device and one per its own other device, and all 2K-1 get every message (default 1)", bench.MaxDevicesPerAccount), func(v string) error {
			n, err := strconv.Atoi(v)
			if err != nil || n < 1 || n > bench.MaxDevicesPerAccount {
				return fmt.Errorf("want 1 to %d (the primary and up to %d companions)", bench.MaxDevicesPerAccount, bench.MaxDevicesPerAccount-1)
			}
			cfg.DevicesPerAccount = n
			return nil
		})
		fs.DurationVar(&cfg.DrainTimeout, "drain-timeout", 15*time.Second, "bound on waiting for outstanding acks and deliveries after the window")
	case bench.ScenarioOffline:
		fs.IntVar(&cfg.Recipients, "recipients", 100, "offline devices")
		fs.IntVar(&cfg.Messages, "messages", 10000, "messages in total")
		fs.IntVar(&cfg.Senders, "senders", 0, "connected sender devices (default min(recipients, 32))")
		fs.IntVar(&cfg.Size, "size", 300, "payload bytes (opaque random bytes)")
		fs.IntVar(&cfg.Window, "window", 32, "unacked sends per sender")
		fs.DurationVar(&cfg.DrainTimeout, "drain-timeout", 0, "bound on the store phase and on the drain (default 60s + 2ms per message)")
	case bench.ScenarioGroup:
		g := &cfg.Group
		fs.IntVar(&g.Members, "members", 1024, "members per group (one device each, the sender included)")
		fs.IntVar(&g.Groups, "groups", 1, "groups")
		fs.IntVar(&g.Messages, "messages", 50, "messages of the online and the offline latency phases (to the first group, one at a time)")
		fs.Float64Var(&cfg.Rate, "rate", 0, "sustained phase: messages a second per group, open loop (0: no sustained phase)")
		fs.DurationVar(&cfg.Duration, "duration", 10*time.Second, "sustained phase: how long every group sends")
		fs.IntVar(&cfg.Size, "size", 300, "payload bytes (opaque random bytes: the group ciphertext)")
	case bench.ScenarioChurn:
		fs.IntVar(&cfg.Conns, "conns", 100, "devices, and the most connections in flight at once")
		fs.Float64Var(&cfg.Rate, "rate", 500, "connects/s offered")
		fs.DurationVar(&cfg.Duration, "duration", 10*time.Second, "how long to churn")
		fs.IntVar(&cfg.PreKeys, "prekeys", 0, "one-time prekeys of each kind (EC, ML-KEM) each device uploads at registration, as real clients do (~100); at most 200")
	case bench.ScenarioAccounts:
		a := &cfg.Accounts
		fs.IntVar(&a.Accounts, "accounts", 10000, "accounts to register now (one device each); 0: none, measure only")
		fs.IntVar(&a.PreKeys, "prekeys", 10, "one-time prekeys of each kind (EC, ML-KEM) per device")
		fs.IntVar(&a.Existing, "existing", 0, "accounts already on the server, counted in the per-account figure (after a restart)")
		fs.DurationVar(&a.Settle, "settle", 30*time.Second, "wait after registering and a forced collection before the final RSS sample")
		fs.Func("baseline-rss", "count the growth from `SIZE` (a fresh node's RSS, e.g. 40MiB) instead of the RSS before registering", func(v string) error {
			n, err := bench.ParseSize(v)
			a.BaselineRSS = n
			return err
		})
	case bench.ScenarioChaos:
		c := &cfg.Chaos
		fs.IntVar(&c.Nodes, "nodes", 3, "node processes to start, clustered on loopback (without --server)")
		fs.DurationVar(&cfg.Duration, "duration", time.Minute, "how long traffic and faults run")
		fs.IntVar(&c.Devices, "devices", 40, "SDK devices (E2EE, in this process): half send, each to its own receiver")
		fs.Float64Var(&cfg.Rate, "rate", 100, "offered msgs/s across all senders")
		fs.IntVar(&cfg.Window, "window", 32, "Send calls in flight per sender; a scheduled send past it is skipped (counted)")
		fs.IntVar(&cfg.Size, "size", 300, "message text bytes (before E2EE)")
		fs.DurationVar(&cfg.DrainTimeout, "drain-timeout", time.Minute, "bound on waiting, after the faults stop and every node is back, for every acked message to be shown")
		fs.DurationVar(&c.SendTimeout, "send-timeout", 30*time.Second, "bound on one Send; the message stays in the SDK's outbox and counts as acked if acked later")
		spanFlag := func(dst *bench.Span, name, def, usage string) {
			*dst, _ = bench.ParseSpan(def)
			fs.Func(name, usage+" (`MIN-MAX` or one duration; default "+def+")", func(v string) error {
				sp, err := bench.ParseSpan(v)
				*dst = sp
				return err
			})
		}
		spanFlag(&c.FaultEvery, "fault-interval", "30s-90s", "time from one fault's end (every node ready again) to the next, picked at random")
		spanFlag(&c.Down, "down", "2s-10s", "how long a killed or SIGTERMed node stays down, or a partition lasts")
		spanFlag(&c.Online, "online", "3s-10s", "how long an offline-cycling receiver stays connected")
		spanFlag(&c.Offline, "offline", "2s-8s", "how long an offline-cycling receiver stays away")
		fs.Func("faults", "fault kinds, comma-separated: kill, term, partition, or none (default kill,term,partition; kill,term with --server)", func(v string) error {
			c.Faults = splitComma(v)
			return nil
		})
		fs.Float64Var(&c.OfflineShare, "offline-share", 0.25, "share of receivers that go offline and come back in turns (their messages are stored and drained); 0 for none")
		fs.Uint64Var(&c.Seed, "seed", 0, "seed of the fault schedule and offline turns (default: random, printed)")
		fs.StringVar(&c.Dir, "dir", "", "directory for the nodes' data and logs and the devices' homes (default: a temporary one, removed unless the run fails)")
		fs.BoolVar(&c.Keep, "keep", false, "keep --dir after a successful run")
		fs.StringVar(&c.NodeLogLevel, "node-log-level", "info", "the nodes' --log-level (their logs go to DIR/nN.log)")
		fs.StringVar(&c.SelfTest, "self-test", "", "falsify the tally on purpose to check the verdict: loss (leave one delivered message out) or duplicate (count one twice); the run must then fail")
	case bench.ScenarioAttack:
		a := &cfg.Attack
		fs.StringVar(&a.Kind, "attack", "", "attack kind: "+strings.Join(bench.Attacks, ", "))
		fs.IntVar(&cfg.Conns, "conns", 1, "attacking sockets (1: the per-connection bound; 100: the node bound)")
		fs.DurationVar(&cfg.Duration, "duration", 10*time.Second, "how long to attack (less if the guard trips)")
		fs.DurationVar(&a.Settle, "settle", 30*time.Second, "how long to keep sampling and probing the server after the attack stopped")
		a.MaxServerRSS = bench.DefaultMaxServerRSS
		fs.Func("max-server-rss", "stop the attack as soon as the server's RSS crosses `SIZE` (e.g. 4GiB, 512MiB)", func(v string) error {
			n, err := bench.ParseSize(v)
			if err == nil && n <= 0 {
				err = errors.New("must be positive")
			}
			a.MaxServerRSS = n
			return err
		})
		fs.IntVar(&a.Reconnects, "reconnects", 200, "times each attacking socket is opened again after the server ended or refused it (0: never)")
		fs.IntVar(&a.FrameBytes, "frame-bytes", 0, "pingflood: ping payload (default 125, at most 125); bigauth: Auth frame size (default 200000); unmasked: payload (default 125)")
		fs.Func("body-bytes", "bigbody, slowbody: the declared body length, `SIZE` (default 64MiB)", func(v string) error {
			n, err := bench.ParseSize(v)
			a.BodyBytes = n
			return err
		})
		fs.Func("body-rate", "slowbody: body bytes per second per socket, `SIZE` (default 2MiB)", func(v string) error {
			n, err := bench.ParseSize(v)
			a.BodyRate = n
			return err
		})
		fs.StringVar(&a.Path, "path", "", "bigbody, slowbody: the POST target (default /v1/admin/invites for bigbody, / for slowbody)")
		fs.BoolVar(&a.Linger, "linger", false, "keep the attacking sockets open, silent and unread, while settling (default: close them when the attack stops)")
	}
	fs.Usage = func() {
		fmt.Fprintf(e.stderr, "usage: petrel %s\n\n%s\nflags for %s:\n", benchUsage, benchHelp, scenario)
		writeFlags(e.stderr, fs, benchUsage)
	}
	if code, ok := parseFlags(fs, args[1:]); !ok {
		return code
	}
	if fs.NArg() > 0 {
		fmt.Fprintf(e.stderr, "petrel bench: unexpected argument %q\n", fs.Arg(0))
		return 2
	}
	// In Config, zero means "the default": an explicit 0 here means none.
	if cfg.Retries == 0 {
		cfg.Retries = -1
	}
	if cfg.PingSample == 0 {
		cfg.PingSample = -1
	}
	if cfg.Attack.Reconnects == 0 {
		cfg.Attack.Reconnects = -1
	}
	if cfg.Attack.Settle == 0 {
		cfg.Attack.Settle = -1
	}
	if cfg.Accounts.Accounts == 0 {
		cfg.Accounts.Accounts = -1
	}
	if cfg.Accounts.PreKeys == 0 {
		cfg.Accounts.PreKeys = -1
	}
	if cfg.Accounts.Settle == 0 {
		cfg.Accounts.Settle = -1
	}
	if cfg.Chaos.OfflineShare == 0 {
		cfg.Chaos.OfflineShare = -1
	}
	set := map[string]bool{}
	fs.Visit(func(f *flag.Flag) { set[f.Name] = true })
	// chaos without --server starts its own nodes.
	managed := scenario == bench.ScenarioChaos && !set["server"]
	for _, s := range strings.Split(*servers, ",") {
		if s = strings.TrimSpace(s); s != "" && !managed {
			cfg.Servers = append(cfg.Servers, strings.TrimRight(s, "/"))
		}
	}
	for _, s := range strings.Split(*pids, ",") {
		if s = strings.TrimSpace(s); s == "" {
			continue
		}
		p, err := strconv.Atoi(s)
		if err != nil || p <= 0 {
			fmt.Fprintf(e.stderr, "petrel bench: --server-pid %q is not a process id\n", s)
			return 2
		}
		cfg.ServerPIDs = append(cfg.ServerPIDs, p)
	}
	for _, s := range cfg.Servers {
		if !bench.IsLoopback(s) {
			fmt.Fprintf(e.stderr, "petrel bench: --server %s: %v\n", s, bench.ErrNotLoopback)
			return 2
		}
	}
	if !managed {
		toks, err := benchTokens(e, *tokenFile, set["admin-token-file"])
		if err != nil {
			fmt.Fprintf(e.stderr, "petrel bench: %v\n", err)
			return 1
		}
		cfg.AdminTokens = toks
		cfg.Admins, err = benchAdmins(e, *admins, *tokenFile)
		if err != nil {
			fmt.Fprintf(e.stderr, "petrel bench: %v\n", err)
			return 2
		}
	}
	cfg.Chaos.NodeCommand = func(argv []string) *exec.Cmd {
		exe, err := os.Executable()
		if err != nil {
			exe = os.Args[0]
		}
		return exec.Command(exe, argv...)
	}
	cfg.WorkerCommand = func(ctx context.Context) *exec.Cmd {
		exe, err := os.Executable()
		if err != nil {
			exe = os.Args[0]
		}
		return exec.CommandContext(ctx, exe, "bench-worker")
	}
	if *cpuProfile != "" {
		f, err := os.Create(*cpuProfile)
		if err != nil {
			fmt.Fprintf(e.stderr, "petrel bench: %v\n", err)
			return 1
		}
		defer f.Close()
		if err := pprof.StartCPUProfile(f); err != nil {
			fmt.Fprintf(e.stderr, "petrel bench: cpu profile: %v\n", err)
			return 1
		}
		defer pprof.StopCPUProfile()
	}
	res, err := bench.Run(ctx, cfg)
	if err != nil {
		fmt.Fprintf(e.stderr, "petrel bench %s: %v\n", scenario, err)
		return 1
	}
	fmt.Fprintf(e.stdout, "petrel bench %s\n", scenario)
	_ = res.WriteTable(e.stdout)
	if *jsonOut != "" {
		b, err := json.Marshal(res)
		if err != nil {
			fmt.Fprintf(e.stderr, "petrel bench: %v\n", err)
			return 1
		}
		b = append(b, '\n')
		if *jsonOut == "-" {
			_, err = e.stdout.Write(b)
		} else {
			err = os.WriteFile(*jsonOut, b, 0o644)
		}
		if err != nil {
			fmt.Fprintf(e.stderr, "petrel bench: write %s: %v\n", *jsonOut, err)
			return 1
		}
	}
	if f := res.Failure(); f != "" {
		fmt.Fprintf(e.stderr, "petrel bench %s: FAILED: %s\n", scenario, f)
		return 1
	}
	return 0
}

func splitComma(s string) []string {
	var out []string
	for _, p := range strings.Split(s, ",") {
		if p = strings.TrimSpace(p); p != "" {
			out = append(out, p)
		}
	}
	return out
}

// benchTokens reads the operator tokens (one for every server, or one per server):
// --admin-token-file when given, else PETREL_ADMIN_TOKEN, else the default file.
func benchTokens(e *env, files string, fileSet bool) ([]string, error) {
	var toks []string
	if !fileSet {
		for _, t := range strings.Split(e.getenv("PETREL_ADMIN_TOKEN"), ",") {
			if t = strings.TrimSpace(t); t != "" {
				toks = append(toks, t)
			}
		}
		if len(toks) > 0 {
			return toks, nil
		}
	}
	for _, file := range strings.Split(files, ",") {
		b, err := os.ReadFile(strings.TrimSpace(file))
		if err != nil {
			if errors.Is(err, os.ErrNotExist) {
				return nil, fmt.Errorf("no operator token: %s does not exist (pass the server's <data>/admin.token with --admin-token-file, or set PETREL_ADMIN_TOKEN)", file)
			}
			return nil, fmt.Errorf("read operator token: %w", err)
		}
		t := strings.TrimSpace(string(b))
		if t == "" {
			return nil, fmt.Errorf("operator token file %s is empty", file)
		}
		toks = append(toks, t)
	}
	return toks, nil
}

// benchAdmins returns the admin listeners' base URLs: --admin when given, else the admin.addr
// beside each token file (given or default). They must be on loopback, like the servers (which
// also keeps the operator token off the network).
func benchAdmins(e *env, flagValue, tokenFiles string) ([]string, error) {
	var out []string
	if flagValue != "" {
		for _, a := range strings.Split(flagValue, ",") {
			if a = strings.TrimSpace(a); a == "" {
				continue
			}
			u, err := admin.NormalizeURL(a)
			if err != nil {
				return nil, fmt.Errorf("--admin: %w", err)
			}
			out = append(out, u)
		}
	} else {
		for _, file := range strings.Split(tokenFiles, ",") {
			file = strings.TrimSpace(file)
			addrFile := filepath.Join(filepath.Dir(file), admin.AddrFile)
			u, err := admin.ReadAddrFile(addrFile)
			if err != nil {
				return nil, err
			}
			fmt.Fprintf(e.stderr, "petrel bench: admin listener %s (from %s)\n", u, addrFile)
			out = append(out, u)
		}
	}
	for _, u := range out {
		if !bench.IsLoopback(u) {
			return nil, fmt.Errorf("--admin %s: %w (and the operator token never leaves this machine)", u, bench.ErrNotLoopback)
		}
		if err := admin.CheckTokenTransport(u); err != nil {
			return nil, err
		}
	}
	return out, nil
}

// runBenchWorker is the hidden worker process of petrel bench (spec on stdin, results on stdout).
func runBenchWorker(ctx context.Context, e *env, _ []string) int {
	var in = e.stdin
	if e.stdin == nil {
		in = os.Stdin
	}
	return bench.RunWorker(ctx, in, e.stdout, e.stderr)
}
