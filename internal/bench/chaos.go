// Copyright 2026 The Petrel Authors
// SPDX-License-Identifier: Apache-2.0

package bench

import (
	"context"
	"errors"
	"fmt"
	"io"
	"math/rand/v2"
	"net"
	"os"
	"os/exec"
	"path/filepath"
	"regexp"
	"slices"
	"strconv"
	"strings"
	"sync"
	"sync/atomic"
	"syscall"
	"time"

	"github.com/petrelchat/petrel/client"
	"github.com/petrelchat/petrel/client/store"
	pb "github.com/petrelchat/petrel/proto/petrel/v1"
)

// ScenarioChaos is the chaos scenario: SDK devices send to each other through a cluster while
// nodes are killed, stopped, restarted and partitioned; then every acked message is accounted for.
const ScenarioChaos = "chaos"

// Fault kinds of the chaos scenario.
const (
	// FaultKill is kill -9 of one node, which comes back after a while on the same data.
	FaultKill = "kill"
	// FaultTerm is SIGTERM (a graceful drain) of one node, which comes back after a while.
	FaultTerm = "term"
	// FaultPartition cuts one node's cluster routes both ways for a while (managed nodes only).
	FaultPartition = "partition"
)

// FaultKinds lists the fault kinds.
var FaultKinds = []string{FaultKill, FaultTerm, FaultPartition}

// Self-test modes of the chaos scenario: they falsify the tally on purpose so that a test can see
// the run fail.
const (
	// SelfTestLoss leaves the first message delivered on stream 0 out of the tally.
	SelfTestLoss = "loss"
	// SelfTestDuplicate counts the first message delivered on stream 0 twice.
	SelfTestDuplicate = "duplicate"
)

// Span is a duration picked at random, uniformly in [Min, Max].
type Span struct{ Min, Max time.Duration }

// ParseSpan parses "30s-90s" (a range) or "5s" (a fixed duration).
func ParseSpan(s string) (Span, error) {
	lo, hi, ok := strings.Cut(s, "-")
	if !ok {
		hi = lo
	}
	a, err1 := time.ParseDuration(strings.TrimSpace(lo))
	b, err2 := time.ParseDuration(strings.TrimSpace(hi))
	if err := errors.Join(err1, err2); err != nil {
		return Span{}, fmt.Errorf("want DURATION or MIN-MAX (e.g. 30s-90s): %w", err)
	}
	if a < 0 || b < a {
		return Span{}, fmt.Errorf("%q: want 0 <= MIN <= MAX", s)
	}
	return Span{a, b}, nil
}

func (s Span) String() string {
	if s.Min == s.Max {
		return s.Min.String()
	}
	return s.Min.String() + "-" + s.Max.String()
}

func (s Span) pick(rnd *rand.Rand) time.Duration {
	if s.Max <= s.Min {
		return s.Min
	}
	return s.Min + time.Duration(rnd.Int64N(int64(s.Max-s.Min)+1))
}

// ChaosConfig shapes the chaos scenario. Zero values mean the documented defaults.
type ChaosConfig struct {
	// Nodes is how many node processes chaos starts itself, clustered on loopback, when
	// Config.Servers is empty. Default: 3.
	Nodes int
	// NodeCommand returns the command that runs the petrel binary with argv (e.g. "serve", …).
	// Required when chaos starts the nodes.
	NodeCommand func(argv []string) *exec.Cmd
	// Devices is the number of SDK devices: half send, each to its own receiver. Default: 40.
	Devices int
	// OfflineShare is the share of receivers that go offline and come back in turns, so that
	// their messages take the store-and-forward path. Default: 0.25; < 0: none.
	OfflineShare float64
	// Online and Offline are how long such a receiver stays connected, then away. Defaults:
	// 3s-10s and 2s-8s.
	Online, Offline Span
	// FaultEvery is the time from one fault's end (every node up and ready again) to the next
	// fault. Default: 30s-90s.
	FaultEvery Span
	// Down is how long a killed or stopped node stays down, or a partition lasts. Default: 2s-10s.
	Down Span
	// Faults are the fault kinds injected, picked at random with equal weight. Default: kill,
	// term, partition (kill, term with external nodes, which have no proxies).
	Faults []string
	// Seed seeds the fault schedule (times, nodes, kinds) and the offline turns; 0 picks one. The
	// seed is reported, so a run's schedule can be replayed.
	Seed uint64
	// SendTimeout bounds one Send; a send that times out stays in the SDK's outbox and counts
	// as acked if the server acks it before the end. Default: 30s.
	SendTimeout time.Duration
	// Dir holds the nodes' data directories and logs and the devices' homes. Default: a fresh
	// temporary directory, removed at the end unless the run failed or Keep.
	Dir string
	// Keep keeps Dir.
	Keep bool
	// NodeLogLevel is the nodes' --log-level. Default: info.
	NodeLogLevel string
	// SelfTest falsifies the tally on purpose (SelfTestLoss, SelfTestDuplicate): the run must
	// then fail. Default: none.
	SelfTest string
}

func (c *ChaosConfig) setDefaults(managed bool) {
	if c.Nodes == 0 {
		c.Nodes = 3
	}
	if c.Devices == 0 {
		c.Devices = 40
	}
	if c.OfflineShare == 0 {
		c.OfflineShare = 0.25
	}
	if c.Online == (Span{}) {
		c.Online = Span{3 * time.Second, 10 * time.Second}
	}
	if c.Offline == (Span{}) {
		c.Offline = Span{2 * time.Second, 8 * time.Second}
	}
	if c.FaultEvery == (Span{}) {
		c.FaultEvery = Span{30 * time.Second, 90 * time.Second}
	}
	if c.Down == (Span{}) {
		c.Down = Span{2 * time.Second, 10 * time.Second}
	}
	if len(c.Faults) == 0 {
		c.Faults = []string{FaultKill, FaultTerm}
		if managed {
			c.Faults = append(c.Faults, FaultPartition)
		}
	}
	for c.Seed == 0 {
		c.Seed = rand.Uint64()
	}
	if c.SendTimeout == 0 {
		c.SendTimeout = 30 * time.Second
	}
	if c.NodeLogLevel == "" {
		c.NodeLogLevel = "info"
	}
}

func (c *ChaosConfig) validate(cfg *Config, bad func(string, ...any)) {
	managed := len(cfg.Servers) == 0
	if managed {
		if c.Nodes < 1 || c.Nodes > 9 {
			bad("nodes %d: want 1 to 9", c.Nodes)
		}
		if c.NodeCommand == nil {
			bad("chaos starts the nodes itself but has no node command")
		}
	} else if len(cfg.ServerPIDs) != len(cfg.Servers) && (slices.Contains(c.Faults, FaultKill) || slices.Contains(c.Faults, FaultTerm)) {
		bad("chaos against given servers needs one --server-pid per --server (%d for %d) to kill and restart them", len(cfg.ServerPIDs), len(cfg.Servers))
	}
	if c.Devices < 2 || c.Devices > 2000 {
		bad("devices %d: want 2 to 2000 (SDK clients in this process)", c.Devices)
	}
	for _, f := range c.Faults {
		switch f {
		case FaultKill, FaultTerm:
		case FaultPartition:
			if !managed {
				bad("fault %q needs nodes chaos started itself (their routes run through its proxies)", f)
			}
		case "none":
			if len(c.Faults) > 1 {
				bad("fault \"none\" excludes the others")
			}
		default:
			bad("fault %q: want %s or none", f, strings.Join(FaultKinds, ", "))
		}
	}
	if c.OfflineShare > 1 {
		bad("offline share %v: want at most 1", c.OfflineShare)
	}
	if c.FaultEvery.Max <= 0 {
		bad("fault interval must be positive")
	}
	if c.SendTimeout <= 0 {
		bad("send timeout must be positive")
	}
	switch c.SelfTest {
	case "", SelfTestLoss, SelfTestDuplicate:
	default:
		bad("self-test %q: want %s or %s", c.SelfTest, SelfTestLoss, SelfTestDuplicate)
	}
	if cfg.Rate <= 0 {
		bad("chaos needs a positive rate")
	}
}

// chaosDevice is one SDK device of a chaos run. Its client is replaced when it comes back from
// an offline turn; one goroutine reads its events for the whole run.
type chaosDevice struct {
	idx    int
	acct   *account
	st     *store.Store
	events chan client.Event
	cycles bool // goes offline in turns (receivers only)

	mu          sync.Mutex // guards the following fields
	c           *client.Client
	runDone     chan struct{}
	online      bool
	server      string    // the URL of the current connection ("" none)
	outage      time.Time // when the current outage began (zero: none)
	reconnected bool      // connected again since outage
	outageFrom  string    // the URL the device was connected to when the outage began
	attempts    int       // connection attempts that failed during the outage
	connectedAt time.Time // the last Connected during the outage
	ready       bool      // had its first QueueEmpty
	// shown holds the ids of messages shown, and how: 1 a Message event, 2 Unseen (what an
	// application shows when it starts: messages persisted while it was not listening).
	shown map[string]byte
}

// chaosStream is sender → receiver; every message carries its stream and sequence number.
type chaosStream struct {
	idx      int
	from, to *chaosDevice
	next     atomic.Uint64
	inflight atomic.Int64

	mu      sync.Mutex // guards the following fields
	acked   bitset
	got     bitset
	pending map[uint64]string // sequence → message id, of sends that ended without the server's ack
	tested  bool              // the self-test was applied
}

// chaosRun is the state of one chaos run.
type chaosRun struct {
	*run
	cc      *ChaosConfig
	nodes   *chaosNodes
	managed bool
	devices []*chaosDevice
	streams []*chaosStream
	start   time.Time // when traffic began; set before measuring
	// measuring is set when traffic begins: outages end into the failover histogram only then.
	measuring atomic.Bool
	wg        sync.WaitGroup

	failover, latency, ack *hist
	sent, acked            atomic.Int64
	delivered, dups        atomic.Int64
	skipped                atomic.Int64
	censored               atomic.Int64
	kills, terms, parts    atomic.Int64
	restarts               atomic.Int64
	crashRestarts          atomic.Int64
	fromUnseen             atomic.Int64

	mu       sync.Mutex // guards the following fields
	errs     map[string]int64
	examples map[string]bool
}

// chaos runs the chaos scenario (see ChaosConfig).
func (r *run) chaos(ctx context.Context) (err error) {
	cfg := r.cfg
	cc := &cfg.Chaos
	cr := &chaosRun{run: r, cc: cc, managed: len(cfg.Servers) == 0, nodes: newChaosNodes(),
		failover: newHist(), latency: newHist(), ack: newHist(), errs: map[string]int64{}, examples: map[string]bool{}}
	dir := cc.Dir
	if dir == "" {
		if dir, err = os.MkdirTemp("", "petrel-chaos-"); err != nil {
			return err
		}
	} else if err := os.MkdirAll(dir, 0o700); err != nil {
		return err
	}
	keep := cc.Keep
	defer func() {
		if keep || err != nil {
			r.logf("chaos: nodes' data and logs, devices' homes: %s", dir)
			return
		}
		os.RemoveAll(dir)
	}()
	r.logf("chaos: seed %d; faults %s every %v, down %v; %d devices, %.0f msgs/s", cc.Seed, strings.Join(cc.Faults, ","), cc.FaultEvery, cc.Down, cc.Devices, cfg.Rate)
	r.res.set("seed", strconv.FormatUint(cc.Seed, 10), "--seed to replay the fault schedule")

	runCtx, cancelRun := context.WithCancel(ctx)
	defer func() {
		cancelRun()
		cr.closeDevices()
		cr.wg.Wait()
		cr.nodes.stop(cr.managed, 10*time.Second)
	}()
	if cr.managed {
		r.logf("chaos: starting %d nodes (data and logs in %s) …", cc.Nodes, dir)
		if err := cr.nodes.startManaged(cc.Nodes, dir, cc.NodeLogLevel, cc.NodeCommand); err != nil {
			return err
		}
		cfg.Servers = cr.nodes.urls()
		cfg.Admins = nil
		for _, nd := range cr.nodes.nodes {
			cfg.Admins = append(cfg.Admins, nd.admin)
		}
		cfg.AdminTokens = []string{cr.nodes.token}
	} else if len(cfg.ServerPIDs) == len(cfg.Servers) {
		if err := cr.nodes.adoptExternal(cfg.Servers, cfg.ServerPIDs, dir); err != nil {
			return err
		}
	} else {
		for i, u := range cfg.Servers {
			cr.nodes.nodes = append(cr.nodes.nodes, &chaosNode{name: fmt.Sprintf("n%d", i+1), url: u, done: make(chan struct{})})
		}
	}
	if err := cr.nodes.waitReady(runCtx, 2*time.Minute); err != nil {
		return err
	}
	for _, nd := range cr.nodes.nodes {
		nd.onExit = func(nd *chaosNode, err error) { cr.crashed(runCtx, nd, err) }
	}
	r.logf("chaos: %d nodes ready: %s", len(cr.nodes.nodes), strings.Join(cfg.Servers, " "))
	r.res.set("nodes", int64(len(cr.nodes.nodes)), map[bool]string{true: "started by chaos", false: "given with --server"}[cr.managed])

	accts, keys, err := r.register(runCtx, cc.Devices, e2eeOneTime, true)
	if err != nil {
		return err
	}
	if err := cr.openDevices(runCtx, dir, accts, keys); err != nil {
		return err
	}
	if n := cr.errCount(); n > 0 {
		r.logf("chaos: %d errors while connecting (not counted)", n)
	}
	cr.mu.Lock()
	cr.errs = map[string]int64{}
	cr.mu.Unlock()
	cr.start = time.Now()
	cr.measuring.Store(true)

	// Traffic, offline turns and faults, for Duration.
	trafficEnd := cr.start.Add(cfg.Duration)
	c0 := cr.sampleCPU()
	stopProgress := r.progress("chaos", cfg.Duration, func() string {
		return fmt.Sprintf("acked %d, delivered %d, faults %d (kill %d, term %d, partition %d)",
			cr.acked.Load(), cr.delivered.Load(), cr.kills.Load()+cr.terms.Load()+cr.parts.Load(), cr.kills.Load(), cr.terms.Load(), cr.parts.Load())
	})
	trafficCtx, stopTraffic := context.WithDeadline(runCtx, trafficEnd)
	defer stopTraffic()
	var traffic, faults sync.WaitGroup
	for _, s := range cr.streams {
		traffic.Go(func() { cr.sendLoop(trafficCtx, runCtx, s, trafficEnd) })
		if s.to.cycles {
			traffic.Go(func() { cr.cycle(trafficCtx, runCtx, s.to) })
		}
	}
	if cc.Faults[0] != "none" {
		faults.Go(func() { cr.faultLoop(trafficCtx, runCtx) })
	}
	<-trafficCtx.Done()
	c1 := cr.sampleCPU()
	stopProgress()
	if ctx.Err() != nil {
		return context.Cause(ctx)
	}
	r.logf("chaos: traffic stopped after %v; healing, restarting, waiting for in-flight sends …", cfg.Duration)
	faults.Wait()
	traffic.Wait()
	if err := cr.nodes.waitReady(runCtx, 2*time.Minute); err != nil {
		cr.error("end", "node_not_ready", err)
		r.logf("chaos: %v", err)
	}
	for _, d := range cr.devices {
		if err := cr.startDevice(runCtx, d); err != nil {
			return err
		}
	}
	lost := cr.drain(runCtx)
	if lost > 0 {
		// What an application shows when it comes to the foreground: messages the SDK persisted
		// while their events did not reach it.
		for _, d := range cr.devices {
			d.mu.Lock()
			c := d.c
			d.mu.Unlock()
			cr.showUnseen(d, c)
		}
		lost = cr.lost()
		cr.logf("chaos: after showing unseen messages: %d acked messages not shown", lost)
	}
	cr.logLost(10)

	// The verdict.
	unacked := cr.sent.Load() - cr.acked.Load()
	var deliveredUnacked int64
	for _, s := range cr.streams {
		s.mu.Lock()
		deliveredUnacked += int64(s.got.andNotCount(&s.acked))
		s.mu.Unlock()
	}
	unfinished := cr.unfinishedOutages()
	res := r.res
	res.set("devices", int64(len(cr.devices)), "SDK clients (E2EE) in this process")
	res.set("streams", int64(len(cr.streams)), "sender → receiver pairs")
	offline := int64(0)
	for _, d := range cr.devices {
		if d.cycles {
			offline++
		}
	}
	res.set("offline_receivers", offline, "receivers that went offline and came back in turns ("+cc.Offline.String()+" away, "+cc.Online.String()+" back)")
	res.set("duration_traffic_s", cfg.Duration.Seconds(), "")
	res.set("rate", cfg.Rate, "offered msgs/s")
	res.set("kills", cr.kills.Load(), "kill -9 of a node")
	res.set("sigterms", cr.terms.Load(), "SIGTERM (graceful drain) of a node")
	res.set("partitions", cr.parts.Load(), "a node's cluster routes cut both ways")
	res.set("restarts", cr.restarts.Load(), "nodes started again (after a kill, a SIGTERM, or exiting by themselves)")
	cr.mu.Lock()
	exits := cr.errs["node:exited"]
	cr.mu.Unlock()
	res.set("node_exits", exits, "node processes that exited by themselves (a bug: each is logged with its last words, and started again)")
	res.set("sent", cr.sent.Load(), "Send calls")
	res.set("acked", cr.acked.Load(), "sends the server acked (late acks of timed-out sends included)")
	res.set("unacked", unacked, "sends never acked by the end (still in the sender's outbox, or refused)")
	res.set("delivered", cr.delivered.Load(), "unique messages shown to the receiving application")
	res.set("delivered_unacked", deliveredUnacked, "delivered although the sender never saw the ack (not a loss)")
	res.set("lost", lost, "acked but never shown: must be 0")
	res.set("shown_from_unseen", cr.fromUnseen.Load(), "shown only through Client.Unseen (persisted while no event reached the application)")
	res.set("duplicates", cr.dups.Load(), "shown twice (after the SDK's dedup): must be 0")
	res.set("skipped", cr.skipped.Load(), "scheduled sends not made: the sender had --window sends in flight")
	res.set("failovers", int64(cr.failover.Count()), "a client's connection broke (or its node was killed or cut off) and it was served again")
	res.set("failover_p50_ms", ms(cr.failover.Quantile(0.5)), "from the break to connected and served again on any node")
	res.set("failover_p99_ms", ms(cr.failover.Quantile(0.99)), "")
	res.set("failover_max_ms", ms(cr.failover.Max()), "")
	res.set("failovers_unfinished", unfinished, "outages still open at the end")
	res.set("failovers_censored", cr.censored.Load(), "outages cut short by an offline turn (not counted)")
	res.set("ack_p50_ms", ms(cr.ack.Quantile(0.5)), "Send → server ack, chaos included")
	res.set("ack_p99_ms", ms(cr.ack.Quantile(0.99)), "")
	res.set("latency_p50_ms", ms(cr.latency.Quantile(0.5)), "Send → shown to the receiver, chaos included")
	res.set("latency_p99_ms", ms(cr.latency.Quantile(0.99)), "")
	cr.mu.Lock()
	errs := make(map[string]int64, len(cr.errs))
	for k, v := range cr.errs {
		errs[k] = v
	}
	cr.mu.Unlock()
	res.set("errors", sumMap(errs), "during traffic and drain (expected under chaos; they are what clients saw)")
	res.set("errors_by_kind", errs, "")
	cpu := c0.to(c1)
	res.set("cores", int64(cpuCount()), "CPU cores of this machine (percentages are of one core)")
	if cpu.serverOK {
		res.set("node_cpu_pct", cpu.pct(cpu.server), "all node processes together, restarts included, during traffic")
	} else {
		res.set("node_cpu_pct", nil, "needs the nodes' process ids")
	}
	res.set("client_cpu_pct", cpu.pct(cpu.client), "this process: the SDK clients (E2EE, local stores) and the fault injector")
	res.set("other_cpu_pct", cpu.pct(cpu.other), "other processes, % of one core")
	var rss int64
	for _, nd := range cr.nodes.nodes {
		rss += nd.rss()
	}
	res.set("node_rss_bytes", rss, "all node processes at the end")
	verdict := "ok"
	var why []string
	if lost > 0 {
		why = append(why, fmt.Sprintf("%d acked messages lost", lost))
	}
	if d := cr.dups.Load(); d > 0 {
		why = append(why, fmt.Sprintf("%d messages shown twice", d))
	}
	if cr.acked.Load() == 0 {
		why = append(why, "no message was acked")
	}
	if len(why) > 0 {
		verdict = "FAILED: " + strings.Join(why, "; ")
		keep = true
	}
	if verdict == "ok" && exits > 0 {
		verdict = fmt.Sprintf("ok (no loss, no duplicate), but %d node exits", exits)
	}
	res.set("verdict", verdict, "")
	if len(why) > 0 {
		res.failure = strings.Join(why, "; ")
	}
	return nil
}

// sampleCPU reads the CPU counters: the nodes (all their processes), this process, the machine.
func (cr *chaosRun) sampleCPU() cpuSample {
	s := cpuSample{at: time.Now(), serverOK: cr.managed || len(cr.cfg.ServerPIDs) == len(cr.cfg.Servers)}
	if s.serverOK {
		s.server = cr.nodes.cpu()
	}
	s.client, _ = procCPU(os.Getpid())
	s.busy, _ = machineBusy()
	return s
}

// openDevices sets up every device's home and starts them all; it waits until each has had its
// first QueueEmpty.
func (cr *chaosRun) openDevices(ctx context.Context, dir string, accts []account, keys []*deviceKeys) error {
	cc := cr.cc
	rnd := rand.New(rand.NewPCG(cc.Seed, 1))
	nStreams := len(accts) / 2
	nCycling := 0
	if cc.OfflineShare > 0 {
		nCycling = int(float64(nStreams)*cc.OfflineShare + 0.5)
	}
	cycling := map[int]bool{}
	for _, i := range rnd.Perm(nStreams)[:nCycling] {
		cycling[i] = true
	}
	for i := range 2 * nStreams {
		st, err := newDeviceStore(filepath.Join(dir, "devices", strconv.Itoa(i)), cr.cfg.Servers[accts[i].Server], &accts[i], keys[i])
		if err != nil {
			return fmt.Errorf("device %d: %w", i, err)
		}
		d := &chaosDevice{idx: i, acct: &accts[i], st: st, events: make(chan client.Event, 64), cycles: i%2 == 1 && cycling[i/2]}
		cr.devices = append(cr.devices, d)
	}
	for i := range nStreams {
		cr.streams = append(cr.streams, &chaosStream{idx: i, from: cr.devices[2*i], to: cr.devices[2*i+1], pending: map[uint64]string{}})
	}
	for _, d := range cr.devices {
		cr.wg.Go(func() { cr.eventLoop(ctx, d) })
		if err := cr.startDevice(ctx, d); err != nil {
			return err
		}
	}
	cr.logf("chaos: %d SDK devices connecting (%d streams, %d receivers go offline in turns) …", len(cr.devices), nStreams, nCycling)
	end := time.Now().Add(3 * cr.cfg.ConnectTimeout)
	for {
		n := 0
		for _, d := range cr.devices {
			d.mu.Lock()
			if d.ready {
				n++
			}
			d.mu.Unlock()
		}
		if n == len(cr.devices) {
			return nil
		}
		if time.Now().After(end) {
			return fmt.Errorf("chaos: only %d of %d devices connected within %v", n, len(cr.devices), 3*cr.cfg.ConnectTimeout)
		}
		if err := sleepCtx(ctx, 20*time.Millisecond); err != nil {
			return err
		}
	}
}

func sleepCtx(ctx context.Context, d time.Duration) error {
	t := time.NewTimer(d)
	defer t.Stop()
	select {
	case <-t.C:
		return nil
	case <-ctx.Done():
		return ctx.Err()
	}
}

// startDevice opens a client on the device's store and runs it (no-op if it runs).
func (cr *chaosRun) startDevice(ctx context.Context, d *chaosDevice) error {
	d.mu.Lock()
	defer d.mu.Unlock()
	if d.online {
		return nil
	}
	c, err := client.Open(client.Config{
		Store: d.st, Events: d.events, PreKeyBatch: e2eeOneTime, Servers: cr.cfg.Servers,
		NoAutoReport: true, // a load generator files no problem reports of its own
		// The SDK's end-to-end repair (ask the server about old unreceipted messages, resend
		// those it lost) would hide a server's loss: it waits beyond the run.
		ResendInterval: 24*time.Hour + 4*cr.cfg.Duration,
	})
	if err != nil {
		return fmt.Errorf("device %d: %w", d.idx, err)
	}
	d.mu.Unlock()
	cr.showUnseen(d, c)
	d.mu.Lock()
	done := make(chan struct{})
	d.c, d.runDone, d.online, d.server, d.outage, d.reconnected = c, done, true, "", time.Time{}, false
	cr.wg.Go(func() {
		defer close(done)
		if err := c.Run(ctx); err != nil && ctx.Err() == nil && !errors.Is(err, client.ErrClosed) {
			cr.error("run", chaosErrKind(err), err)
		}
	})
	return nil
}

// stopDevice closes the device's client (an offline turn): its messages are stored meanwhile.
func (cr *chaosRun) stopDevice(d *chaosDevice) {
	d.mu.Lock()
	c, done := d.c, d.runDone
	if !d.online {
		d.mu.Unlock()
		return
	}
	d.online, d.server = false, ""
	if !d.outage.IsZero() {
		cr.censored.Add(1)
		d.outage = time.Time{}
	}
	d.mu.Unlock()
	c.Close()
	<-done
}

func (cr *chaosRun) closeDevices() {
	for _, d := range cr.devices {
		cr.stopDevice(d)
	}
	for _, d := range cr.devices {
		d.st.Close()
	}
}

// served ends the device's outage, if one is open and the device has been served since: it
// reconnected, or what served it (a send's call, a message's acceptance by the server) began
// after the outage did.
func (cr *chaosRun) served(d *chaosDevice, began, now time.Time) {
	d.mu.Lock()
	defer d.mu.Unlock()
	if d.outage.IsZero() || !d.reconnected && !began.After(d.outage) {
		return
	}
	took := now.Sub(d.outage)
	if !cr.measuring.Load() {
		d.outage, d.reconnected, d.attempts = time.Time{}, false, 0
		return
	}
	cr.failover.Record(took)
	if took >= slowFailover {
		conn := "no reconnect"
		if d.reconnected {
			conn = fmt.Sprintf("connected %.1fs in", d.connectedAt.Sub(d.outage).Seconds())
		}
		cr.logf("chaos: %s device %d (%s) served again on %s %.1fs after its outage began (at +%.1fs, on %s; %d failed attempts, %s)", cr.at(), d.idx,
			d.acct.DeviceID, cr.nodeName(d.server), took.Seconds(), d.outage.Sub(cr.start).Seconds(), cr.nodeName(d.outageFrom), d.attempts, conn)
	}
	d.outage, d.reconnected, d.attempts = time.Time{}, false, 0
}

// slowFailover is the failover time past which each one is logged.
const slowFailover = 2 * time.Second

func (cr *chaosRun) nodeName(url string) string {
	if nd := cr.nodes.byURL(url); nd != nil {
		return nd.name
	}
	if url == "" {
		return "-"
	}
	return url
}

// eventLoop reads one device's events for the whole run.
func (cr *chaosRun) eventLoop(ctx context.Context, d *chaosDevice) {
	for {
		var ev client.Event
		select {
		case ev = <-d.events:
		case <-ctx.Done():
			return
		}
		now := time.Now()
		switch e := ev.(type) {
		case *client.Connected:
			d.mu.Lock()
			d.server = e.Server
			if !d.outage.IsZero() {
				d.reconnected, d.connectedAt = true, now
			}
			d.mu.Unlock()
		case *client.QueueEmpty:
			d.mu.Lock()
			d.ready = true
			d.mu.Unlock()
			cr.served(d, now, now)
		case *client.Disconnected:
			cr.error("disconnect", chaosErrKind(e.Err), e.Err)
			d.mu.Lock()
			if d.outage.IsZero() {
				d.outage, d.outageFrom = now, d.server
			} else if d.server == "" {
				d.attempts++
			}
			d.server = ""
			d.reconnected = false
			d.mu.Unlock()
		case *client.Message:
			cr.received(d, e, now, viaEvent)
			d.mu.Lock()
			c := d.c
			d.mu.Unlock()
			if err := c.MarkSeen(e.Seq); err != nil {
				cr.error("receive", "mark_seen", err)
			}
		case *client.DecryptFailed:
			cr.error("receive", "decrypt_failed", e.Err)
		case *client.SendFailed:
			cr.error("send", "refused_for_good", e.Err)
		}
	}
}

// How a message reached the application.
const (
	viaEvent  byte = 1 // a client.Message event
	viaUnseen byte = 2 // Client.Unseen, when the device starts and at the end
)

// showUnseen shows what an application shows when it starts: the received messages not marked
// seen (persisted by the SDK while no event reached the application), and marks them seen.
func (cr *chaosRun) showUnseen(d *chaosDevice, c *client.Client) {
	for range 1000 {
		msgs, err := c.Unseen(256)
		if err != nil {
			cr.error("receive", "unseen", err)
			return
		}
		if len(msgs) == 0 {
			return
		}
		seqs := make([]uint64, 0, len(msgs))
		for _, m := range msgs {
			cr.received(d, m, time.Now(), viaUnseen)
			seqs = append(seqs, m.Seq)
		}
		if err := c.MarkSeen(seqs...); err != nil {
			cr.error("receive", "mark_seen", err)
			return
		}
	}
}

// received tallies a message shown to the application.
func (cr *chaosRun) received(d *chaosDevice, m *client.Message, now time.Time, via byte) {
	d.mu.Lock()
	if d.shown == nil {
		d.shown = map[string]byte{}
	}
	prev := d.shown[m.ID]
	if prev == 0 {
		d.shown[m.ID] = via
	}
	d.mu.Unlock()
	if prev != 0 && prev != via {
		// Shown once through each path (its event was in flight while Unseen listed it): one
		// display. The same path twice is the SDK's duplicate, counted below.
		return
	}
	if via == viaUnseen {
		cr.fromUnseen.Add(1)
	}
	seq, ts, si, ok := parseE2EEText(m.Text)
	if !ok || si < 0 || si >= len(cr.streams) || cr.streams[si].to != d || m.From != cr.streams[si].from.acct.Name {
		cr.error("receive", "bad_payload", nil)
		return
	}
	s := cr.streams[si]
	s.mu.Lock()
	if seq >= s.next.Load() {
		s.mu.Unlock()
		cr.error("receive", "never_sent", nil)
		return
	}
	selfTest := ""
	if si == 0 && !s.tested && cr.cc.SelfTest != "" {
		s.tested, selfTest = true, cr.cc.SelfTest
	}
	dup := false
	switch selfTest {
	case SelfTestLoss:
		// Left out of the tally on purpose.
	case SelfTestDuplicate:
		s.got.set(seq)
		dup = true
		cr.delivered.Add(1)
	default:
		dup = s.got.set(seq)
		if !dup {
			cr.delivered.Add(1)
		}
	}
	s.mu.Unlock()
	if dup {
		cr.dups.Add(1)
		cr.logf("chaos: message %d of stream %d shown twice (id %s)", seq, si, m.ID)
		return
	}
	cr.latency.Record(now.Sub(time.Unix(0, ts)))
	cr.served(d, m.ServerTime, now)
}

// sendLoop offers the stream's share of the rate until trafficCtx ends; each send runs on its
// own goroutine (at most --window at once) bounded by runCtx and the send timeout.
func (cr *chaosRun) sendLoop(trafficCtx, runCtx context.Context, s *chaosStream, end time.Time) {
	interval := time.Duration(float64(len(cr.streams)) / cr.cfg.Rate * float64(time.Second))
	rnd := rand.New(rand.NewPCG(cr.cc.Seed, uint64(2+s.idx)))
	next := time.Now().Add(time.Duration(rnd.Int64N(int64(interval) + 1)))
	var sends sync.WaitGroup
	defer sends.Wait()
	for next.Before(end) {
		if sleepUntil(trafficCtx, next) != nil {
			return
		}
		next = next.Add(interval)
		if s.inflight.Load() >= int64(cr.cfg.Window) {
			cr.skipped.Add(1)
			continue
		}
		s.inflight.Add(1)
		sends.Go(func() {
			defer s.inflight.Add(-1)
			cr.send(runCtx, s)
		})
	}
}

func (cr *chaosRun) send(ctx context.Context, s *chaosStream) {
	d := s.from
	d.mu.Lock()
	c := d.c
	d.mu.Unlock()
	s.mu.Lock()
	seq := s.next.Add(1) - 1
	s.mu.Unlock()
	cr.sent.Add(1)
	began := time.Now()
	sctx, cancel := context.WithTimeout(ctx, cr.cc.SendTimeout)
	id, err := c.Send(sctx, s.to.acct.Name, e2eeText(seq, began.UnixNano(), s.idx, cr.cfg.Size))
	cancel()
	now := time.Now()
	if err != nil {
		if id != "" {
			s.mu.Lock()
			s.pending[seq] = id
			s.mu.Unlock()
		}
		if ctx.Err() == nil {
			cr.error("send", chaosErrKind(err), err)
		}
		return
	}
	s.mu.Lock()
	s.acked.set(seq)
	s.mu.Unlock()
	cr.acked.Add(1)
	cr.ack.Record(now.Sub(began))
	cr.served(d, began, now)
}

// cycle takes a receiver offline and back in turns until trafficCtx ends; it leaves it online.
func (cr *chaosRun) cycle(trafficCtx, runCtx context.Context, d *chaosDevice) {
	rnd := rand.New(rand.NewPCG(cr.cc.Seed, uint64(1_000_000+d.idx)))
	for {
		if sleepCtx(trafficCtx, cr.cc.Online.pick(rnd)) != nil {
			return
		}
		cr.stopDevice(d)
		err := sleepCtx(trafficCtx, cr.cc.Offline.pick(rnd))
		if err := cr.startDevice(runCtx, d); err != nil {
			cr.error("offline_turn", "reopen", err)
			return
		}
		if err != nil {
			return
		}
	}
}

// faultLoop injects one fault at a time until trafficCtx ends: it waits FaultEvery, picks a node
// and a kind, injects, waits Down, undoes (restart, heal), and waits until every node is ready.
func (cr *chaosRun) faultLoop(trafficCtx, runCtx context.Context) {
	rnd := rand.New(rand.NewPCG(cr.cc.Seed, 0))
	for {
		wait := cr.cc.FaultEvery.pick(rnd)
		nd := cr.nodes.nodes[rnd.IntN(len(cr.nodes.nodes))]
		kind := cr.cc.Faults[rnd.IntN(len(cr.cc.Faults))]
		down := cr.cc.Down.pick(rnd)
		if sleepCtx(trafficCtx, wait) != nil {
			return
		}
		cr.fault(trafficCtx, runCtx, nd, kind, down)
		// The next fault waits for a whole cluster: two nodes down at once is not a fault a
		// 3-node cluster is built to survive.
		if err := cr.nodes.waitReady(trafficCtx, time.Until(cr.start.Add(cr.cfg.Duration))+time.Second); err != nil {
			if trafficCtx.Err() == nil {
				cr.error("fault", "node_not_ready", err)
				cr.logf("chaos: %v", err)
			}
			return
		}
	}
}

func (cr *chaosRun) at() string {
	return fmt.Sprintf("+%.1fs", time.Since(cr.start).Seconds())
}

// fault injects one fault on nd and undoes it after down (or at once when trafficCtx ends).
func (cr *chaosRun) fault(trafficCtx, runCtx context.Context, nd *chaosNode, kind string, down time.Duration) {
	t := time.Now()
	pid, _ := nd.running()
	switch kind {
	case FaultKill:
		cr.markOutage(nd.url, t)
		if err := nd.signal(syscall.SIGKILL, 10*time.Second); err != nil {
			cr.error("fault", "kill", err)
			return
		}
		cr.kills.Add(1)
		cr.logf("chaos: %s kill -9 %s (pid %d), down for %v", cr.at(), nd.name, pid, down)
	case FaultTerm:
		cr.logf("chaos: %s SIGTERM %s (pid %d), down for %v after it exits", cr.at(), nd.name, pid, down)
		if err := nd.signal(syscall.SIGTERM, time.Minute); err != nil {
			cr.error("fault", "term_timeout", err)
			cr.markOutage(nd.url, time.Now())
			_ = nd.signal(syscall.SIGKILL, 10*time.Second)
		}
		cr.terms.Add(1)
		cr.logf("chaos: %s %s exited %.1fs after SIGTERM", cr.at(), nd.name, time.Since(t).Seconds())
	case FaultPartition:
		cr.markOutage(nd.url, t)
		nd.setCut(true)
		cr.parts.Add(1)
		cr.logf("chaos: %s partition %s (its routes cut both ways) for %v", cr.at(), nd.name, down)
	}
	_ = sleepCtx(trafficCtx, down)
	switch kind {
	case FaultKill, FaultTerm:
		if err := nd.launch(&cr.nodes.wg); err != nil {
			cr.error("fault", "restart", err)
			cr.logf("chaos: %s restart %s: %v", cr.at(), nd.name, err)
			return
		}
		cr.restarts.Add(1)
		newPID, _ := nd.running()
		cr.logf("chaos: %s restarted %s (pid %d)", cr.at(), nd.name, newPID)
	case FaultPartition:
		nd.setCut(false)
		cr.logf("chaos: %s healed %s", cr.at(), nd.name)
	}
	start := time.Now()
	if err := cr.nodes.waitReady(runCtx, 2*time.Minute); err == nil {
		cr.logf("chaos: %s every node ready again (%.1fs)", cr.at(), time.Since(start).Seconds())
	}
}

// maxCrashRestarts bounds the restarts of nodes that exited by themselves, per run.
const maxCrashRestarts = 20

// crashed handles a node process that exited without chaos signalling it: a bug (a node must
// survive any fault chaos injects). It is counted and logged with the node's last words, and the
// node is started again after a second, as a supervisor (systemd's Restart=on-failure) would.
func (cr *chaosRun) crashed(ctx context.Context, nd *chaosNode, err error) {
	at := ""
	if cr.measuring.Load() {
		at = cr.at() + " "
	}
	cr.logf("chaos: %s%s EXITED BY ITSELF (%v); its last log line: %s", at, nd.name, err, nd.lastLogLine())
	cr.error("node", "exited", err)
	if cr.crashRestarts.Add(1) > maxCrashRestarts || sleepCtx(ctx, time.Second) != nil {
		return
	}
	if err := nd.launch(&cr.nodes.wg); err != nil {
		cr.error("node", "restart", err)
		return
	}
	cr.restarts.Add(1)
	pid, _ := nd.running()
	cr.logf("chaos: %s%s started again after it exited (pid %d)", at, nd.name, pid)
}

// markOutage opens an outage at t for every online device connected to the node at url.
func (cr *chaosRun) markOutage(url string, t time.Time) {
	for _, d := range cr.devices {
		d.mu.Lock()
		if d.online && d.server == url && d.outage.IsZero() {
			d.outage, d.reconnected, d.outageFrom = t, false, url
		}
		d.mu.Unlock()
	}
}

func (cr *chaosRun) unfinishedOutages() int64 {
	var n int64
	for _, d := range cr.devices {
		d.mu.Lock()
		if !d.outage.IsZero() {
			n++
		}
		d.mu.Unlock()
	}
	return n
}

// logLost names up to n acked messages not shown (stream, sequence, receiving device).
func (cr *chaosRun) logLost(n int) {
	for _, st := range cr.streams {
		st.mu.Lock()
		for k, w := range st.acked.w {
			if k < len(st.got.w) {
				w &^= st.got.w[k]
			}
			for b := range 64 {
				if w&(1<<b) != 0 && n > 0 {
					n--
					cr.logf("chaos: lost: stream %d sequence %d (device %d → device %d, %s)", st.idx, uint64(k)*64+uint64(b), st.from.idx, st.to.idx, st.to.acct.DeviceID)
				}
			}
		}
		st.mu.Unlock()
	}
}

// lost counts acked messages not (yet) shown.
func (cr *chaosRun) lost() int64 {
	var n int64
	for _, s := range cr.streams {
		s.mu.Lock()
		n += int64(s.acked.andNotCount(&s.got))
		s.mu.Unlock()
	}
	return n
}

// applyLateAcks moves sends that timed out but were acked later (the sender's history says
// sent or delivered) into the acked set.
func (cr *chaosRun) applyLateAcks() {
	for _, s := range cr.streams {
		s.mu.Lock()
		pending := make(map[uint64]string, len(s.pending))
		for k, v := range s.pending {
			pending[k] = v
		}
		s.mu.Unlock()
		for seq, id := range pending {
			var status store.Status
			err := s.from.st.View(func(tx *store.Tx) error {
				h, err := tx.HistoryByID(store.Outgoing, s.to.acct.Name, id)
				if err == nil {
					status = h.Status
				}
				return err
			})
			if err != nil || status != store.StatusSent && status != store.StatusDelivered {
				continue
			}
			s.mu.Lock()
			delete(s.pending, seq)
			s.acked.set(seq)
			s.mu.Unlock()
			cr.acked.Add(1)
		}
	}
}

// drain waits until every acked message has been shown (late acks included) or DrainTimeout.
func (cr *chaosRun) drain(ctx context.Context) int64 {
	start := time.Now()
	end := start.Add(cr.cfg.DrainTimeout)
	for {
		cr.applyLateAcks()
		lost := cr.lost()
		if lost == 0 || time.Now().After(end) || ctx.Err() != nil {
			cr.logf("chaos: drain: %d acked messages not shown after %.1fs", lost, time.Since(start).Seconds())
			return lost
		}
		if sleepCtx(ctx, 100*time.Millisecond) != nil {
			return lost
		}
	}
}

func (cr *chaosRun) errCount() int64 {
	cr.mu.Lock()
	defer cr.mu.Unlock()
	return sumMap(cr.errs)
}

// error counts an error by where it happened and its kind, and logs the first of each.
func (cr *chaosRun) error(where, kind string, err error) {
	key := where + ":" + kind
	cr.mu.Lock()
	cr.errs[key]++
	first := !cr.examples[key]
	cr.examples[key] = true
	cr.mu.Unlock()
	if first && err != nil {
		at := ""
		if cr.measuring.Load() {
			at = cr.at() + " "
		}
		cr.logf("chaos: %sfirst %s, e.g.: %v", at, key, err)
	}
}

// httpStatusRE finds the HTTP status of a refused WebSocket upgrade in the SDK's dial error.
var httpStatusRE = regexp.MustCompile(`status code 101 but got (\d{3})`)

// chaosErrKind names an error for the tally: the server's code, "goaway_" + the code of a GoAway,
// "http_" + the status of a refused upgrade, or what happened to the connection.
func chaosErrKind(err error) string {
	var ce *client.Error
	if errors.As(err, &ce) {
		return pb.ErrorCodeName(ce.Code)
	}
	var ne net.Error
	switch {
	case strings.HasPrefix(err.Error(), "server asked to reconnect"):
		for code := range pb.ErrorCode_name {
			if s := client.Sentinel(pb.ErrorCode(code)); s != nil && errors.Is(err, s) {
				return "goaway_" + pb.ErrorCodeName(pb.ErrorCode(code))
			}
		}
		return "goaway"
	case errors.Is(err, syscall.ECONNREFUSED):
		return "connection_refused"
	case httpStatusRE.MatchString(err.Error()):
		// A refused WebSocket upgrade: "… status code 101 but got 503".
		return "http_" + httpStatusRE.FindStringSubmatch(err.Error())[1]
	case errors.Is(err, syscall.ECONNRESET), errors.Is(err, syscall.EPIPE):
		return "connection_reset"
	case errors.Is(err, context.DeadlineExceeded), errors.As(err, &ne) && ne.Timeout():
		return "timeout"
	case errors.Is(err, io.EOF), errors.Is(err, io.ErrUnexpectedEOF), errors.Is(err, net.ErrClosed),
		strings.Contains(err.Error(), "connection closed"), strings.Contains(err.Error(), "StatusCode"):
		return "connection_closed"
	case errors.Is(err, client.ErrClosed):
		return "client_closed"
	}
	return "other"
}
