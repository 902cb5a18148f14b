// Copyright 2026 The Petrel Authors
// SPDX-License-Identifier: Apache-2.0

// Package bench is Petrel's load generator, behind `petrel bench`. It registers synthetic
// accounts through the operator bulk endpoint, speaks the wire protocol directly (or, with
// E2EE, runs real Signal sessions through the SDK), and runs one bounded scenario:
//
//   - idle: N authenticated connections held open; connect rate, server RSS per connection, ping
//     round trips while all are held.
//   - relay: online sender/receiver pairs; delivered messages/s, end-to-end latency, server CPU
//     per message, order and loss checks. Closed loop (a window per sender) or open loop (--rate,
//     latency measured from the scheduled send time, so without coordinated omission).
//   - offline: messages stored for offline devices, then drained; store and drain rates, and a
//     check that every message arrived exactly once and nothing is left stored.
//   - churn: connect, authenticate, close, at a fixed rate.
//   - accounts: registered accounts that never connect; the server's RSS per account after it
//     settles (see accountmem.go).
//   - attack: hostile sockets (floods, pipelines, oversized frames and bodies, half requests)
//     against one server process; its RSS before, at the peak and after, its CPU, and whether a
//     well-behaved probe client kept being served (see attack.go).
//   - chaos: SDK devices send through a cluster (nodes it starts itself, or given ones) while
//     nodes are killed, SIGTERMed, restarted and partitioned; acked, delivered, lost, shown
//     twice, failover times, errors by kind (see chaos.go).
//
// Only loopback servers are accepted. Past MaxConnsPerProcess connections the generator spreads
// itself over worker processes (see RunWorker), each dialing from its own loopback source address,
// and merges their results (histograms bucket by bucket).
package bench

import (
	"bytes"
	"context"
	"encoding/json"
	"errors"
	"fmt"
	"io"
	"maps"
	"math"
	"net/http"
	"os"
	"os/exec"
	"slices"
	"strconv"
	"strings"
	"sync"
	"text/tabwriter"
	"time"
)

// Scenario names.
const (
	ScenarioIdle    = "idle"
	ScenarioRelay   = "relay"
	ScenarioOffline = "offline"
	ScenarioChurn   = "churn"
)

// Scenarios lists the scenario names.
var Scenarios = []string{ScenarioIdle, ScenarioRelay, ScenarioOffline, ScenarioChurn, ScenarioAttack, ScenarioAccounts, ScenarioChaos, ScenarioGroup}

// MaxDevicesPerAccount is the most devices per account relay runs with (the server's default
// max_devices).
const MaxDevicesPerAccount = 5

// DefaultMaxConnsPerProcess is the connection count past which the generator uses worker
// processes (RLIMIT_NOFILE is 20,000 on the development machines).
const DefaultMaxConnsPerProcess = 18000

// Config describes one run. Zero values mean the documented defaults.
type Config struct {
	// Scenario is idle, relay, offline, churn or attack. Required.
	Scenario string
	// Servers are the servers' base URLs (http://127.0.0.1:7070). Devices are spread over them
	// round-robin: device i is registered on, and connects to, Servers[i % len(Servers)]. Only
	// loopback hosts. Required.
	Servers []string
	// AdminTokens are the operator tokens (the content of <data>/admin.token): one for every
	// server, or one per server in the order of Servers. Required.
	AdminTokens []string
	// Admins are the servers' admin listeners' base URLs (http://127.0.0.1:7071, the content of
	// <data>/admin.addr), where the bulk registration goes: one for every server, or one per
	// server in the order of Servers. Only loopback hosts. Required.
	Admins []string
	// ServerPIDs are the server processes whose RSS and CPU time are reported. Optional.
	ServerPIDs []int

	// Size is the payload size in bytes (opaque random bytes; at least 32). Default: 300.
	Size int
	// E2EE runs real Signal sessions through the SDK instead of opaque payloads (relay only).
	E2EE bool

	// Conns is the number of connections (idle: held; churn: devices, and the most connections
	// in flight at once). Default: 1000 (idle), 100 (churn).
	Conns int
	// Hold is how long idle holds the connections once all are open. Default: 10s.
	Hold time.Duration
	// PingSample is how many held connections idle pings (5 pings each). Default: 200; < 0: none.
	PingSample int
	// Settle is how long idle waits after registering before it measures the server's RSS and
	// connects, so that what registration costs (JetStream writes and caches) is not counted per
	// connection. Default: 0.
	Settle time.Duration
	// PreKeys is how many one-time prekeys of each kind (EC and ML-KEM) each idle or churn device
	// uploads at registration, as a real client does (~100), so that a connect counts them in a
	// PREKEYS stream of real size. Default: 0 (none; 200 at most).
	PreKeys int

	// Pairs is the number of sender/receiver pairs for relay. Default: 100.
	Pairs int
	// Duration is how long relay and churn offer load. Default: 10s.
	Duration time.Duration
	// Window is the number of unacked sends per sender (relay, offline). Default: 32 (relay
	// --e2ee: 1, the SDK sends one message at a time anyway).
	Window int
	// Rate is the offered load: relay messages/s across all pairs (0: closed loop, each sender
	// keeps Window sends in flight); churn connections/s. Default: 0 (relay), 500 (churn).
	Rate float64

	// DevicesPerAccount is the number of devices of every account of a relay run: the primary
	// plus DevicesPerAccount-1 companions (linked devices, registered with it). The sender's
	// primary sends one envelope per receiver device and one per its own other device; every
	// one of them is connected and must get every message. 1 to 5. Default: 1.
	DevicesPerAccount int

	// Recipients, Messages and Senders shape offline: Messages in total for Recipients offline
	// devices, sent by Senders connected devices. Defaults: 100, 10000, min(Recipients, 32).
	Recipients, Messages, Senders int

	// Concurrency is the number of connection attempts in flight per process. Default: 200.
	Concurrency int
	// ConnectRate paces the connection phase: at most this many new connections a second over
	// all processes (each its share), the way a fleet reconnecting with jittered backoff
	// arrives, instead of as fast as the servers accept them. 0: unpaced.
	ConnectRate float64
	// Retries is how often a refused connection attempt (HTTP 503, UNAVAILABLE, …) is retried,
	// with jittered backoff. Default: 3; < 0: never.
	Retries int
	// ConnectTimeout bounds one connection attempt (dial + auth). Default: 10s.
	ConnectTimeout time.Duration
	// DrainTimeout bounds the wait for outstanding acks and deliveries after the load stops
	// (relay), and the drain (offline). Default: 15s (relay), 60s + 2ms per message (offline).
	DrainTimeout time.Duration
	// MaxConnsPerProcess is the most connections one process holds; beyond it, worker processes
	// are used. Default: DefaultMaxConnsPerProcess.
	MaxConnsPerProcess int
	// WorkerCommand returns the command that starts a worker (which must call RunWorker). Needed
	// only when workers are used.
	WorkerCommand func(ctx context.Context) *exec.Cmd
	// Log receives progress lines. Default: discard.
	Log io.Writer
	// ProgressEvery is how often a long phase writes a progress line to Log. Default: 5s.
	ProgressEvery time.Duration

	// Attack shapes the attack scenario.
	Attack AttackConfig
	// Accounts shapes the accounts scenario.
	Accounts AccountsConfig
	// Chaos shapes the chaos scenario.
	Chaos ChaosConfig
	// Group shapes the group scenario (Rate: messages a second per group in its sustained phase;
	// 0 skips that phase).
	Group GroupConfig
}

func (c *Config) setDefaults() {
	if c.Size == 0 {
		c.Size = 300
	}
	if c.Conns == 0 {
		c.Conns = 1000
		switch c.Scenario {
		case ScenarioChurn:
			c.Conns = 100
		case ScenarioAttack:
			c.Conns = 1
		}
	}
	if c.Hold == 0 {
		c.Hold = 10 * time.Second
	}
	if c.PingSample == 0 {
		c.PingSample = 200
	}
	if c.Pairs == 0 {
		c.Pairs = 100
	}
	if c.Duration == 0 {
		c.Duration = 10 * time.Second
		if c.Scenario == ScenarioChaos {
			c.Duration = time.Minute
		}
	}
	if c.Window == 0 {
		c.Window = 32
		if c.E2EE {
			c.Window = 1
		}
	}
	if c.Rate == 0 && c.Scenario == ScenarioChurn {
		c.Rate = 500
	}
	if c.Rate == 0 && c.Scenario == ScenarioChaos {
		c.Rate = 100
	}
	if c.DevicesPerAccount == 0 {
		c.DevicesPerAccount = 1
	}
	if c.Recipients == 0 {
		c.Recipients = 100
	}
	if c.Messages == 0 {
		c.Messages = 10000
	}
	if c.Senders == 0 {
		c.Senders = min(c.Recipients, 32)
	}
	if c.Concurrency == 0 {
		c.Concurrency = 200
	}
	if c.Retries == 0 {
		c.Retries = 3
	}
	if c.ConnectTimeout == 0 {
		c.ConnectTimeout = 10 * time.Second
	}
	if c.DrainTimeout == 0 {
		c.DrainTimeout = 15 * time.Second
		switch c.Scenario {
		case ScenarioOffline:
			c.DrainTimeout = 60*time.Second + time.Duration(c.Messages)*2*time.Millisecond
		case ScenarioChaos:
			c.DrainTimeout = time.Minute
		}
	}
	if c.MaxConnsPerProcess == 0 {
		c.MaxConnsPerProcess = DefaultMaxConnsPerProcess
	}
	if c.ProgressEvery <= 0 {
		c.ProgressEvery = 5 * time.Second
	}
	if c.Log == nil {
		c.Log = io.Discard
	}
	if c.Scenario == ScenarioAttack {
		c.Attack.setDefaults()
	}
	if c.Scenario == ScenarioAccounts {
		c.Accounts.setDefaults()
	}
	if c.Scenario == ScenarioChaos {
		c.Chaos.setDefaults(len(c.Servers) == 0)
	}
	if c.Scenario == ScenarioGroup {
		c.Group.setDefaults()
	}
}

// ErrNotLoopback reports a --server that is not on this machine.
var ErrNotLoopback = errors.New("not a loopback address: the load generator only targets 127.0.0.0/8, ::1 or localhost")

// Validate reports every problem with the config at once (after defaults).
func (c *Config) Validate() error {
	var errs []error
	bad := func(format string, args ...any) { errs = append(errs, fmt.Errorf(format, args...)) }
	switch c.Scenario {
	case ScenarioIdle, ScenarioRelay, ScenarioOffline, ScenarioChurn:
	case ScenarioAttack:
		c.Attack.validate(c, bad)
	case ScenarioAccounts:
		c.Accounts.validate(c, bad)
	case ScenarioChaos:
		c.Chaos.validate(c, bad)
	case ScenarioGroup:
		c.Group.validate(c, bad)
	default:
		bad("unknown scenario %q (want one of %s)", c.Scenario, strings.Join(Scenarios, ", "))
	}
	// chaos without servers starts its own nodes (and knows their admin listeners and token).
	managed := c.Scenario == ScenarioChaos && len(c.Servers) == 0
	if len(c.Servers) == 0 && !managed {
		bad("no server")
	}
	for _, s := range c.Servers {
		if !strings.HasPrefix(s, "http://") && !strings.HasPrefix(s, "https://") {
			bad("server %q: want http://HOST:PORT", s)
			continue
		}
		if !IsLoopback(s) {
			bad("server %q: %w", s, ErrNotLoopback)
		}
	}
	switch {
	case managed:
	case len(c.Admins) == 0:
		bad("no admin listener: the bulk registration goes to the server's admin listener (<data>/admin.addr)")
	case len(c.Admins) != 1 && len(c.Admins) != len(c.Servers):
		bad("%d admin listeners for %d servers: give one for all, or one per server", len(c.Admins), len(c.Servers))
	}
	for _, s := range c.Admins {
		if !strings.HasPrefix(s, "http://") && !strings.HasPrefix(s, "https://") {
			bad("admin listener %q: want http://HOST:PORT", s)
			continue
		}
		if !IsLoopback(s) {
			bad("admin listener %q: %w", s, ErrNotLoopback)
		}
	}
	switch {
	case managed:
	case len(c.AdminTokens) == 0 || slices.Contains(c.AdminTokens, ""):
		bad("no operator token: the bulk registration needs the server's <data>/admin.token")
	case len(c.AdminTokens) != 1 && len(c.AdminTokens) != len(c.Servers):
		bad("%d operator tokens for %d servers: give one for all, or one per server", len(c.AdminTokens), len(c.Servers))
	}
	if c.Size < 32 || c.Size > 200<<10 {
		bad("size %d: want 32 to %d bytes", c.Size, 200<<10)
	}
	positive := func(name string, v int) {
		if v <= 0 {
			bad("%s must be positive (got %d)", name, v)
		}
	}
	positive("conns", c.Conns)
	positive("pairs", c.Pairs)
	positive("window", c.Window)
	positive("recipients", c.Recipients)
	positive("messages", c.Messages)
	positive("senders", c.Senders)
	positive("concurrency", c.Concurrency)
	positive("max-conns-per-process", c.MaxConnsPerProcess)
	for name, d := range map[string]time.Duration{"hold": c.Hold, "duration": c.Duration, "connect-timeout": c.ConnectTimeout, "drain-timeout": c.DrainTimeout} {
		if d <= 0 {
			bad("%s must be positive (got %v)", name, d)
		}
	}
	if c.PreKeys < 0 || c.PreKeys > 200 {
		bad("prekeys %d: want 0 to 200 of each kind (one upload)", c.PreKeys)
	}
	if c.Rate < 0 || math.IsNaN(c.Rate) || math.IsInf(c.Rate, 0) {
		bad("rate must be a positive number")
	}
	if c.ConnectRate < 0 || math.IsNaN(c.ConnectRate) || math.IsInf(c.ConnectRate, 0) {
		bad("connect-rate must be a positive number (0: unpaced)")
	}
	if c.Scenario == ScenarioChurn && c.Rate <= 0 {
		bad("churn needs a positive rate")
	}
	if c.DevicesPerAccount < 1 || c.DevicesPerAccount > MaxDevicesPerAccount {
		bad("devices-per-account %d: want 1 to %d (the primary and up to %d companions)", c.DevicesPerAccount, MaxDevicesPerAccount, MaxDevicesPerAccount-1)
	} else if c.DevicesPerAccount > 1 {
		if c.Scenario != ScenarioRelay {
			bad("--devices-per-account is supported by relay only")
		}
		if c.E2EE {
			bad("--devices-per-account runs with opaque payloads only (no --e2ee)")
		}
		if k := 2*c.DevicesPerAccount - 1; c.Size >= 32 && c.Size*k > 200<<10 {
			bad("size %d with %d devices per account: a Send carries %d copies, at most %d bytes in all", c.Size, c.DevicesPerAccount, k, 200<<10)
		}
	}
	if c.E2EE {
		if c.Scenario != ScenarioRelay {
			bad("--e2ee is supported by relay only")
		}
		if c.Rate > 0 {
			bad("--e2ee runs closed loop only (no --rate)")
		}
		if 2*c.Pairs > c.MaxConnsPerProcess || c.Pairs > 2000 {
			bad("--e2ee runs in one process: at most %d pairs", min(2000, c.MaxConnsPerProcess/2))
		}
	}
	for _, p := range c.ServerPIDs {
		if _, err := procRSS(p); err != nil {
			bad("server pid %d: %v", p, err)
		}
	}
	return errors.Join(errs...)
}

// bound is a safety deadline for the whole run, far beyond its expected length.
func (c *Config) bound() time.Duration {
	n := c.Conns
	switch c.Scenario {
	case ScenarioRelay:
		n = 2 * c.Pairs * max(1, c.DevicesPerAccount)
	case ScenarioOffline:
		n = c.Recipients + c.Senders + c.Messages/10
	case ScenarioAccounts:
		n = c.Accounts.Accounts * (1 + c.Accounts.PreKeys/10)
	case ScenarioIdle, ScenarioChurn:
		n = c.Conns * (1 + c.PreKeys/10)
	case ScenarioGroup:
		n = c.Group.Members*c.Group.Groups + 2*c.Group.Messages*c.Group.Members/100
	}
	return 10*time.Minute + time.Duration(n)*10*time.Millisecond + 2*(c.Hold+c.Duration+c.DrainTimeout+c.Attack.Settle+c.Attack.Baseline)
}

// Run runs the configured scenario and returns its result.
func Run(ctx context.Context, cfg Config) (*Result, error) {
	cfg.setDefaults()
	if err := cfg.Validate(); err != nil {
		return nil, err
	}
	soft, hard := NoFileLimit()
	logf(&cfg, "petrel bench %s: RLIMIT_NOFILE soft=%d hard=%d; at most %d connections per process", cfg.Scenario, soft, hard, cfg.MaxConnsPerProcess)
	ctx, cancel := context.WithTimeoutCause(ctx, cfg.bound(), errors.New("petrel bench: run exceeded its safety bound"))
	defer cancel()
	r := &run{cfg: &cfg, res: newResult(), start: time.Now(), deadline: time.Now().Add(cfg.bound())}
	r.res.set("scenario", cfg.Scenario, "")
	r.res.set("nofile_limit", int64(soft), "this process's RLIMIT_NOFILE")
	var err error
	switch cfg.Scenario {
	case ScenarioIdle:
		err = r.idle(ctx)
	case ScenarioRelay:
		if cfg.E2EE {
			err = r.relayE2EE(ctx)
		} else {
			err = r.relay(ctx)
		}
	case ScenarioOffline:
		err = r.offline(ctx)
	case ScenarioChurn:
		err = r.churn(ctx)
	case ScenarioAttack:
		err = r.attack(ctx)
	case ScenarioAccounts:
		err = r.accounts(ctx)
	case ScenarioChaos:
		err = r.chaos(ctx)
	case ScenarioGroup:
		err = r.group(ctx)
	}
	if err != nil {
		return nil, err
	}
	r.res.set("duration_s", time.Since(r.start).Seconds(), "whole run, registration included")
	return r.res, nil
}

func logf(cfg *Config, format string, args ...any) {
	fmt.Fprintf(cfg.Log, format+"\n", args...)
}

// run is the coordinator's state for one run.
type run struct {
	cfg      *Config
	res      *Result
	start    time.Time
	deadline time.Time
}

func (r *run) logf(format string, args ...any) { logf(r.cfg, format, args...) }

// progress prints a line for a phase every cfg.ProgressEvery until the returned stop is called, so a
// long phase shows it is alive: "… label: 10s" (of total, when total > 0), and what more tells,
// if set. A phase shorter than ProgressEvery prints nothing. stop may be called more than once.
func (r *run) progress(label string, total time.Duration, more func() string) (stop func()) {
	done := make(chan struct{})
	finished := make(chan struct{})
	go func() {
		defer close(finished)
		t := time.NewTicker(r.cfg.ProgressEvery)
		defer t.Stop()
		start := time.Now()
		for {
			select {
			case <-t.C:
				line := fmt.Sprintf("… %s: %.0fs", label, time.Since(start).Seconds())
				if total > 0 {
					line += " of " + total.String()
				}
				if more != nil {
					line += ", " + more()
				}
				r.logf("%s", line)
			case <-done:
				return
			}
		}
	}()
	var once sync.Once
	return func() { once.Do(func() { close(done); <-finished }) }
}

// register creates n synthetic devices (one-device accounts), spread over the servers.
func (r *run) register(ctx context.Context, n, oneTime int, keep bool) ([]account, []*deviceKeys, error) {
	return r.registerAccounts(ctx, n, 0, oneTime, keep)
}

// registerAccounts creates n synthetic accounts of 1 + companions devices each, spread over the
// servers (an account's devices on one server).
func (r *run) registerAccounts(ctx context.Context, n, companions, oneTime int, keep bool) ([]account, []*deviceKeys, error) {
	tokens := r.cfg.AdminTokens
	for len(tokens) < len(r.cfg.Servers) {
		tokens = append(tokens, r.cfg.AdminTokens[0])
	}
	admins := r.cfg.Admins
	for len(admins) < len(r.cfg.Servers) {
		admins = append(admins, r.cfg.Admins[0])
	}
	reg := &registrar{servers: r.cfg.Servers, admins: admins, tokens: tokens, client: &http.Client{
		// A redirect could carry the operator token elsewhere.
		CheckRedirect: func(*http.Request, []*http.Request) error { return http.ErrUseLastResponse },
	}}
	defer reg.client.CloseIdleConnections()
	t := time.Now()
	devices := n * (1 + companions)
	if companions > 0 {
		r.logf("registering %d synthetic devices (%d accounts of %d devices) on %s …", devices, n, 1+companions, strings.Join(r.cfg.Servers, ", "))
	} else {
		r.logf("registering %d synthetic devices on %s …", n, strings.Join(r.cfg.Servers, ", "))
	}
	stop := r.progress("registering", 0, func() string { return fmt.Sprintf("%d of %d registered", reg.registered.Load(), devices) })
	accts, keys, err := reg.register(ctx, newRunPrefix(), n, companions, oneTime, keep)
	stop()
	if err != nil {
		return nil, nil, err
	}
	el := time.Since(t)
	r.logf("registered %d devices in %.1fs", devices, el.Seconds())
	r.res.set("registered", int64(devices), "synthetic devices registered")
	r.res.set("register_per_s", float64(devices)/el.Seconds(), "devices registered per second (keys generated meanwhile)")
	return accts, keys, nil
}

// plan splits units (accounts, pairs, recipients) over shards so that no shard holds more than
// MaxConnsPerProcess of the run's conns connections.
func (r *run) plan(units, conns int) ([]int, []string, error) {
	k := 1
	if conns > r.cfg.MaxConnsPerProcess {
		k = (conns + r.cfg.MaxConnsPerProcess - 1) / r.cfg.MaxConnsPerProcess
		if r.cfg.WorkerCommand == nil {
			return nil, nil, fmt.Errorf("%d connections need %d worker processes, but no worker command is configured", conns, k)
		}
		if k > 250 {
			return nil, nil, fmt.Errorf("%d connections need %d worker processes; at most 250", conns, k)
		}
	}
	if k > units {
		k = units
	}
	sizes := make([]int, k)
	for i := range sizes {
		sizes[i] = units / k
		if i < units%k {
			sizes[i]++
		}
	}
	ips := make([]string, k)
	if k > 1 && ipv4Servers(r.cfg.Servers) {
		for i := range ips {
			ips[i] = "127.0.0." + strconv.Itoa(2+i)
		}
	}
	if k > 1 {
		r.logf("spreading %d connections over %d worker processes (%s …)", conns, k, ips[0])
	}
	return sizes, ips, nil
}

func (r *run) baseParams() shardParams {
	return shardParams{
		Size:           r.cfg.Size,
		Window:         r.cfg.Window,
		Duration:       r.cfg.Duration,
		Concurrency:    r.cfg.Concurrency,
		ConnectRate:    r.cfg.ConnectRate,
		Retries:        max(0, r.cfg.Retries),
		ConnectTimeout: r.cfg.ConnectTimeout,
		DrainTimeout:   r.cfg.DrainTimeout,
	}
}

// start starts the shards and records the worker layout in the result.
func (r *run) startShards(ctx context.Context, specs []*shardSpec) (*cluster, error) {
	total := 0
	for _, s := range specs {
		total += len(s.Accounts)
	}
	for _, s := range specs {
		s.Scenario, s.Servers, s.Deadline = r.cfg.Scenario, r.cfg.Servers, r.deadline
		if s.P.ConnectRate > 0 && total > 0 { // each process its share
			s.P.ConnectRate = r.cfg.ConnectRate * float64(len(s.Accounts)) / float64(total)
		}
	}
	cl, err := startShards(ctx, r.cfg, specs)
	if err != nil {
		return nil, err
	}
	workers := int64(0)
	if len(specs) > 1 {
		workers = int64(len(specs))
		pids := make([]int64, 0, len(specs))
		for _, p := range cl.pids() {
			pids = append(pids, int64(p))
		}
		r.res.set("worker_pids", pids, "")
	}
	r.res.set("workers", workers, "worker processes (0: all in this process)")
	return cl, nil
}

// addCPU adds the CPU fields of a measurement window; msgs >= 0 adds server_cpu_us_per_msg
// (messages handled in the window).
func (r *run) addCPU(u cpuUsage, msgs int64) {
	r.res.set("cores", int64(cpuCount()), "CPU cores of this machine (percentages are of one core)")
	if u.serverOK {
		r.res.set("server_cpu_pct", u.pct(u.server), "server CPU, % of one core")
		switch {
		case msgs > 0:
			r.res.set("server_cpu_us_per_msg", float64(u.server.Microseconds())/float64(msgs), "server CPU µs per message")
		case msgs == 0:
			r.res.set("server_cpu_us_per_msg", nil, "no message in the window")
		}
	} else {
		r.res.set("server_cpu_pct", nil, "needs --server-pid")
		if msgs >= 0 {
			r.res.set("server_cpu_us_per_msg", nil, "needs --server-pid")
		}
	}
	r.res.set("client_cpu_pct", u.pct(u.client), "generator CPU (all its processes), % of one core")
	note := "other processes, % of one core"
	if !u.serverOK {
		note = "other processes (the server included), % of one core"
	}
	r.res.set("other_cpu_pct", u.pct(u.other), note)
}

// addServerRSS records the servers' RSS now.
func (r *run) addServerRSS(cl *cluster, note string) {
	if rss, ok := cl.serverRSS(); ok {
		r.res.set("server_rss_bytes", rss, note)
	} else {
		r.res.set("server_rss_bytes", nil, "needs --server-pid")
	}
}

func (r *run) addErrors(reps ...*report) {
	fails := map[string]int64{}
	errs := map[string]int64{}
	var connFailed int64
	for _, rep := range reps {
		if rep == nil {
			continue
		}
		for k, v := range rep.Failures {
			fails[k] += v
		}
		for k, v := range rep.Errors {
			errs[k] += v
		}
		connFailed += rep.ConnFailed
		for _, k := range slices.Sorted(maps.Keys(rep.Examples)) {
			r.logf("connection failure %s, e.g.: %s", k, rep.Examples[k])
		}
	}
	r.res.set("failures", sumMap(fails), "failed connection attempts (retried ones included)")
	r.res.set("failure_reasons", fails, "")
	errs["connect_failed"] += connFailed
	if errs["connect_failed"] == 0 {
		delete(errs, "connect_failed")
	}
	r.res.set("errors", sumMap(errs), "connections given up, refused sends, protocol errors")
	r.res.set("error_reasons", errs, "")
}

func ms(d time.Duration) float64 { return float64(d) / float64(time.Millisecond) }

func perSecond(n int64, d time.Duration) float64 {
	if d <= 0 {
		return 0
	}
	return float64(n) / d.Seconds()
}

// Result is a scenario's outcome: named values in a stable order. Its JSON form is one object.
type Result struct {
	keys  []string
	vals  map[string]any
	notes map[string]string
	// failure says why the run failed its own check (chaos: loss or duplicates); "" if it did not.
	failure string
}

// Failure says why the run failed its own check (chaos: acked messages lost, or shown twice),
// or "" if it passed or the scenario has no such check.
func (r *Result) Failure() string { return r.failure }

func newResult() *Result { return &Result{vals: map[string]any{}, notes: map[string]string{}} }

func (r *Result) set(key string, v any, note string) {
	if _, ok := r.vals[key]; !ok {
		r.keys = append(r.keys, key)
	}
	if f, ok := v.(float64); ok {
		if math.IsNaN(f) || math.IsInf(f, 0) {
			v = nil
		} else {
			v = math.Round(f*1000) / 1000
		}
	}
	r.vals[key] = v
	if note != "" {
		r.notes[key] = note
	}
}

// Get returns one value (int64, float64, string, nil, map[string]int64 or a slice).
func (r *Result) Get(key string) (any, bool) {
	v, ok := r.vals[key]
	return v, ok
}

// Keys returns the keys in order.
func (r *Result) Keys() []string { return append([]string(nil), r.keys...) }

// MarshalJSON writes the values as one object, keys in order.
func (r *Result) MarshalJSON() ([]byte, error) {
	var b bytes.Buffer
	b.WriteByte('{')
	for i, k := range r.keys {
		if i > 0 {
			b.WriteByte(',')
		}
		kb, _ := json.Marshal(k)
		vb, err := json.Marshal(r.vals[k])
		if err != nil {
			return nil, err
		}
		b.Write(kb)
		b.WriteByte(':')
		b.Write(vb)
	}
	b.WriteByte('}')
	return b.Bytes(), nil
}

// WriteTable prints the result for people: one row per value, with what it means.
func (r *Result) WriteTable(w io.Writer) error {
	var buf bytes.Buffer
	tw := tabwriter.NewWriter(&buf, 0, 0, 2, ' ', 0)
	for _, k := range r.keys {
		fmt.Fprintf(tw, "%s\t%s\t%s\n", k, formatValue(r.vals[k]), r.notes[k])
	}
	if err := tw.Flush(); err != nil {
		return err
	}
	var out strings.Builder
	for _, line := range strings.SplitAfter(buf.String(), "\n") {
		if line != "" {
			out.WriteString(strings.TrimRight(line, " \n") + "\n")
		}
	}
	_, err := io.WriteString(w, out.String())
	return err
}

func formatValue(v any) string {
	switch x := v.(type) {
	case nil:
		return "-"
	case float64:
		switch {
		case x == math.Trunc(x) && math.Abs(x) < 1e15:
			return groupDigits(strconv.FormatInt(int64(x), 10))
		case math.Abs(x) >= 100:
			return groupDigits(strconv.FormatFloat(x, 'f', 1, 64))
		default:
			return strconv.FormatFloat(x, 'f', 3, 64)
		}
	case int64:
		return groupDigits(strconv.FormatInt(x, 10))
	case map[string]int64:
		if len(x) == 0 {
			return "-"
		}
		var parts []string
		for _, k := range sortedKeys(x) {
			parts = append(parts, fmt.Sprintf("%s=%d", k, x[k]))
		}
		return strings.Join(parts, " ")
	case []string:
		if len(x) == 0 {
			return "-"
		}
		return strings.Join(x, " ")
	case []int64:
		var parts []string
		for _, p := range x {
			parts = append(parts, strconv.FormatInt(p, 10))
		}
		return strings.Join(parts, " ")
	}
	return fmt.Sprint(v)
}

// groupDigits puts thousands separators into the integer part of a decimal number.
func groupDigits(s string) string {
	intPart, frac, _ := strings.Cut(s, ".")
	neg := strings.HasPrefix(intPart, "-")
	intPart = strings.TrimPrefix(intPart, "-")
	var b strings.Builder
	for i, c := range intPart {
		if i > 0 && (len(intPart)-i)%3 == 0 {
			b.WriteByte(',')
		}
		b.WriteRune(c)
	}
	out := b.String()
	if neg {
		out = "-" + out
	}
	if frac != "" {
		out += "." + frac
	}
	return out
}

func cpuCount() int {
	b, err := os.ReadFile("/proc/stat")
	if err != nil {
		return 0
	}
	n := 0
	for _, line := range strings.Split(string(b), "\n") {
		if strings.HasPrefix(line, "cpu") && len(line) > 3 && line[3] >= '0' && line[3] <= '9' {
			n++
		}
	}
	return n
}
