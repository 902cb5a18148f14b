// Copyright 2026 The Petrel Authors
// SPDX-License-Identifier: Apache-2.0

package bench

import (
	"context"
	"crypto/rand"
	"encoding/hex"
	"errors"
	"fmt"
	"slices"
	"strconv"
	"sync"
	"sync/atomic"
	"time"

	"google.golang.org/protobuf/proto"

	pb "github.com/petrelchat/petrel/proto/petrel/v1"
)

// ScenarioGroup measures group messages: one sender, one ciphertext, fanned out by the server to
// every member device.
const ScenarioGroup = "group"

// GroupConfig shapes the group scenario.
type GroupConfig struct {
	// Members is the number of members per group (one device each, the sender included).
	// Default: 1024.
	Members int
	// Groups is the number of groups. Default: 1.
	Groups int
	// Messages is how many messages the latency phases send to the first group, one at a time
	// (online, then offline). Default: 50.
	Messages int
}

func (c *GroupConfig) setDefaults() {
	if c.Members == 0 {
		c.Members = 1024
	}
	if c.Groups == 0 {
		c.Groups = 1
	}
	if c.Messages == 0 {
		c.Messages = 50
	}
}

func (c *GroupConfig) validate(cfg *Config, bad func(string, ...any)) {
	if c.Members < 2 {
		bad("members must be at least 2 (got %d)", c.Members)
	}
	if c.Groups < 1 || c.Messages < 1 {
		bad("groups and messages must be positive")
	}
	if n := c.Members * c.Groups; n > cfg.MaxConnsPerProcess {
		bad("group runs in one process: members × groups = %d, at most %d", n, cfg.MaxConnsPerProcess)
	}
}

// group phases: which histogram a delivery is recorded in.
const (
	phaseSetup = iota
	phaseOnline
	phaseSustained
	phaseOffline
)

// groupRun is the group scenario's state. Every device is one account; the members of group g
// are devices [g*Members, (g+1)*Members), the first of them its creator and sender.
type groupRun struct {
	r       *run
	base    *shardBase
	keys    []*deviceKeys
	conns   []*wsConn
	devs    []*groupDev
	gids    []string
	members int
	rep     *report
	payload []byte

	phase     atomic.Int32
	sustained *hist // sustained phase: send → each member device's delivery
	online    *hist // online phase: send → each member device's delivery
	qEmpty    atomic.Int64
	delivered [4]atomic.Int64 // deliveries per phase (group messages only)

	// The latency phases send one message at a time to group 0: arrivals counts its deliveries,
	// last holds the latest arrival (Unix ns), full is signalled when every member device has it.
	arrivals atomic.Int64
	last     atomic.Int64
	seq      atomic.Uint64
	full     chan struct{}
}

// groupDev is one device's reader state (used by its reader goroutine only, but for answers).
type groupDev struct {
	g      *groupRun
	c      *wsConn
	tags   []uint64
	ackBuf []byte
	qe     bool

	mu      sync.Mutex
	waiting map[uint64]chan frameView // requests awaiting their answer; body copied
}

func (r *run) group(ctx context.Context) error {
	cfg := r.cfg.Group
	n := cfg.Members * cfg.Groups
	accts, keys, err := r.register(ctx, n, 0, true)
	if err != nil {
		return err
	}
	spec := &shardSpec{Accounts: accts, Servers: r.cfg.Servers, P: r.baseParams()}
	g := &groupRun{r: r, base: newShardBase(spec), keys: keys, members: cfg.Members, rep: newReport(),
		online: newHist(), sustained: newHist(), full: make(chan struct{}, 1), payload: newPayload(r.cfg.Size)}
	defer g.close()

	// Connect every device.
	t := time.Now()
	idx := make([]int, n)
	g.devs = make([]*groupDev, n)
	for i := range idx {
		idx[i] = i
		g.devs[i] = &groupDev{g: g, waiting: map[uint64]chan frameView{}}
	}
	r.logf("connecting %d devices …", n)
	g.conns = g.base.connectAll(ctx, idx, g.rep, g.onFrame, func(i int, c *wsConn) {
		c.user = i
		g.devs[i].c = c
		c.cc.onIdle = g.devs[i].flushAcks
	})
	if g.rep.ConnFailed > 0 {
		return fmt.Errorf("group: %d of %d devices could not connect", g.rep.ConnFailed, n)
	}
	want := awaitCount(ctx, g.conns, &g.qEmpty, r.cfg.ConnectTimeout)
	r.logf("connected %d devices in %.1fs (%d attached)", n, time.Since(t).Seconds(), want)
	r.res.set("devices", int64(n), "one device per member")

	// Create the groups with signed CREATE events, a few at a time.
	t = time.Now()
	if err := g.createGroups(ctx, cfg.Groups); err != nil {
		return err
	}
	r.res.set("create_s", time.Since(t).Seconds(), "creating every group (event delivered to every member device)")
	r.logf("created %d groups of %d in %.1fs", cfg.Groups, cfg.Members, time.Since(t).Seconds())

	if err := g.onlinePhase(ctx, cfg.Messages); err != nil {
		return err
	}
	if r.cfg.Rate > 0 && r.cfg.Duration > 0 {
		if err := g.sustainedPhase(ctx); err != nil {
			return err
		}
	}
	if err := g.offlinePhase(ctx, cfg.Messages); err != nil {
		return err
	}
	r.addErrors(g.rep)
	return nil
}

func (g *groupRun) close() {
	var live []*wsConn
	for _, c := range g.conns {
		if c != nil {
			live = append(live, c)
		}
	}
	g.base.closeConns(live)
	g.base.wg.Wait()
}

// onFrame handles every frame of every device (on the device's reader goroutine).
func (g *groupRun) onFrame(c *wsConn, f frameView) {
	d := g.devs[c.user]
	if f.id != 0 {
		d.mu.Lock()
		ch := d.waiting[f.id]
		delete(d.waiting, f.id)
		d.mu.Unlock()
		if ch != nil {
			ch <- frameView{id: f.id, kind: f.kind, body: slices.Clone(f.body)}
			return
		}
	}
	switch f.kind {
	case kDeliver:
		tag, ct, ok := parseDeliver(f.body)
		if !ok {
			g.rep.error("malformed_deliver")
			return
		}
		d.tags = append(d.tags, tag)
		if seq, ts, _, _, ok := readHeader(ct); ok {
			now := time.Now().UnixNano()
			phase := g.phase.Load()
			g.delivered[phase].Add(1)
			switch phase {
			case phaseSustained:
				g.sustained.Record(time.Duration(now - ts))
			case phaseOnline, phaseOffline:
				if phase == phaseOnline {
					g.online.Record(time.Duration(now - ts))
				}
				if seq == g.seq.Load() {
					for { // last = max(last, now)
						l := g.last.Load()
						if now <= l || g.last.CompareAndSwap(l, now) {
							break
						}
					}
					if g.arrivals.Add(1) == int64(g.members-1) {
						select {
						case g.full <- struct{}{}:
						default:
						}
					}
				}
			}
		}
		if len(d.tags) >= 256 {
			d.flushAcks()
		}
	case kQueueEmpty:
		if !d.qe {
			d.qe = true
			g.qEmpty.Add(1)
		}
	default:
		onOtherFrame(g.rep, c, f, "conn_lost")
	}
}

// flushAcks acks the deliveries read so far (on the device's reader goroutine).
func (d *groupDev) flushAcks() {
	if len(d.tags) == 0 {
		return
	}
	d.ackBuf = appendDeliverAck(d.ackBuf[:0], d.tags)
	d.tags = d.tags[:0]
	if err := d.c.write(d.ackBuf); err != nil {
		d.g.rep.error("ack_write")
	}
}

// request writes f with a fresh id and returns a channel for its answer.
func (d *groupDev) request(f *pb.Frame) (<-chan frameView, error) {
	f.Id = d.c.nextID.Add(1)
	ch := make(chan frameView, 1)
	d.mu.Lock()
	d.waiting[f.Id] = ch
	d.mu.Unlock()
	b, err := proto.Marshal(f)
	if err == nil {
		err = d.c.write(b)
	}
	return ch, err
}

// answer waits for a request's answer; an Error frame is an error.
func answer(ctx context.Context, ch <-chan frameView, timeout time.Duration) error {
	t := time.NewTimer(timeout)
	defer t.Stop()
	select {
	case f := <-ch:
		if f.kind == kError {
			return fmt.Errorf("server: %s", pb.ErrorCodeName(parseError(f.body).GetCode()))
		}
		return nil
	case <-t.C:
		return errors.New("no answer in time")
	case <-ctx.Done():
		return ctx.Err()
	}
}

// createGroups creates every group from its first member's device.
func (g *groupRun) createGroups(ctx context.Context, groups int) error {
	sem := make(chan struct{}, 8)
	errs := make(chan error, groups)
	var wg sync.WaitGroup
	for k := range groups {
		var raw [16]byte
		_, _ = rand.Read(raw[:])
		gid := hex.EncodeToString(raw[:])
		g.gids = append(g.gids, gid)
		first := k * g.members
		var names []string
		for i := first; i < first+g.members; i++ {
			names = append(names, g.base.spec.Accounts[i].Name)
		}
		creator := names[0]
		members := slices.Clone(names)
		slices.Sort(members)
		ev := &pb.GroupEvent{GroupId: gid, Version: 1, Actor: creator, ActorDevice: g.base.spec.Accounts[first].DeviceID,
			Kind: pb.GroupEventKind_GROUP_EVENT_KIND_CREATE, Targets: names[1:], Members: members, Admins: []string{creator},
			CreatedMs: time.Now().UnixMilli()}
		sge, err := pb.SignGroupEvent(g.keys[first].identity, ev)
		if err != nil {
			return err
		}
		sem <- struct{}{}
		wg.Go(func() {
			defer func() { <-sem }()
			ch, err := g.devs[first].request(&pb.Frame{Body: &pb.Frame_CreateGroup{CreateGroup: &pb.CreateGroup{Event: sge}}})
			if err == nil {
				err = answer(ctx, ch, 60*time.Second)
			}
			if err != nil {
				errs <- fmt.Errorf("create group %d: %w", k, err)
			}
		})
	}
	wg.Wait()
	close(errs)
	return <-errs
}

// sendGroup writes one group message of group k with the payload header (seq, now) and returns
// the answer's channel.
func (g *groupRun) sendGroup(k int, seq uint64, buf []byte) (<-chan frameView, error) {
	p := buf[:len(g.payload)]
	copy(p, g.payload)
	putHeader(p, seq, time.Now().UnixNano(), uint32(k), 0)
	return g.devs[k*g.members].request(&pb.Frame{Body: &pb.Frame_Send{Send: &pb.Send{
		MessageId: "g" + strconv.Itoa(k) + "-" + strconv.FormatUint(seq, 10), GroupId: g.gids[k], GroupCiphertext: p,
	}}})
}

// oneAtATime sends n messages to group 0, each after the previous one is acked and (online:
// wait) delivered to every other member device, and records the ack time and the time until the
// last member device has it.
func (g *groupRun) oneAtATime(ctx context.Context, n int, wait bool) (acks, lasts *hist, err error) {
	acks, lasts = newHist(), newHist()
	buf := make([]byte, len(g.payload))
	for i := range n {
		seq := g.seq.Add(1)
		g.arrivals.Store(0)
		g.last.Store(0)
		select { // a late full signal of the previous message
		case <-g.full:
		default:
		}
		start := time.Now()
		ch, err := g.sendGroup(0, seq, buf)
		if err != nil {
			return nil, nil, err
		}
		if err := answer(ctx, ch, 30*time.Second); err != nil {
			return nil, nil, fmt.Errorf("group message %d: %w", i, err)
		}
		acks.Record(time.Since(start))
		if wait && g.members > 1 {
			select {
			case <-g.full:
			case <-time.After(30 * time.Second):
				return nil, nil, fmt.Errorf("group message %d: %d of %d member devices got it in 30s", i, g.arrivals.Load(), g.members-1)
			case <-ctx.Done():
				return nil, nil, ctx.Err()
			}
			lasts.Record(time.Duration(g.last.Load() - start.UnixNano()))
		}
	}
	return acks, lasts, nil
}

// sample reads the CPU counters of this process and the servers.
func (g *groupRun) sample() cpuSample {
	cl := &cluster{cfg: g.r.cfg}
	return cl.sampleCPU()
}

// onlinePhase: every member device connected; one message at a time to the first group.
func (g *groupRun) onlinePhase(ctx context.Context, n int) error {
	g.phase.Store(phaseOnline)
	c0 := g.sample()
	acks, lasts, err := g.oneAtATime(ctx, n, true)
	if err != nil {
		return err
	}
	u := c0.to(g.sample())
	deliveries := int64(n) * int64(g.members-1)
	res := g.r.res
	res.set("online_messages", int64(n), "messages to the first group, one at a time, every member device connected")
	res.set("online_last_p50_ms", ms(lasts.Quantile(0.5)), "send → the last member device has it (the group's slowest delivery)")
	res.set("online_last_p99_ms", ms(lasts.Quantile(0.99)), "")
	res.set("online_last_max_ms", ms(lasts.Max()), "")
	res.set("online_ack_p50_ms", ms(acks.Quantile(0.5)), "send → SendResult (every member device acked it)")
	res.set("online_ack_p99_ms", ms(acks.Quantile(0.99)), "")
	res.set("online_delivery_p50_ms", ms(g.online.Quantile(0.5)), "send → each member device's delivery")
	res.set("online_delivery_p99_ms", ms(g.online.Quantile(0.99)), "")
	g.cpuFields("online", u, deliveries)
	return nil
}

// cpuFields records a phase's CPU: the server's per member delivery, and the generator's.
func (g *groupRun) cpuFields(phase string, u cpuUsage, deliveries int64) {
	res := g.r.res
	res.set("cores", int64(cpuCount()), "CPU cores of this machine (percentages are of one core)")
	if u.serverOK && deliveries > 0 {
		res.set(phase+"_server_cpu_us_per_delivery", float64(u.server.Microseconds())/float64(deliveries), "server CPU µs per member device delivery")
		res.set(phase+"_server_cpu_pct", u.pct(u.server), "server CPU, % of one core")
	} else {
		res.set(phase+"_server_cpu_us_per_delivery", nil, "needs --server-pid")
	}
	res.set(phase+"_client_cpu_pct", u.pct(u.client), "generator CPU, % of one core")
	res.set(phase+"_other_cpu_pct", u.pct(u.other), "other processes (the cores are shared), % of one core")
}

// sustainedPhase: every group's sender sends Rate messages a second for Duration (open loop,
// senders spread evenly over each interval).
func (g *groupRun) sustainedPhase(ctx context.Context) error {
	cfg := g.r.cfg
	groups := len(g.gids)
	interval := time.Duration(float64(time.Second) / cfg.Rate)
	g.phase.Store(phaseSustained)
	c0 := g.sample()
	start := time.Now().Add(50 * time.Millisecond)
	end := start.Add(cfg.Duration)
	var sent, acked, failed atomic.Int64
	var wg sync.WaitGroup
	for k := range groups {
		wg.Go(func() {
			buf := make([]byte, len(g.payload))
			next := start.Add(time.Duration(int64(interval) * int64(k) / int64(groups)))
			var answers sync.WaitGroup
			for seq := uint64(1); next.Before(end); seq++ {
				if err := sleepUntil(ctx, next); err != nil {
					return
				}
				next = next.Add(interval)
				ch, err := g.sendGroup(k, seq, buf)
				if err != nil {
					failed.Add(1)
					continue
				}
				sent.Add(1)
				answers.Go(func() {
					if answer(ctx, ch, 30*time.Second) == nil {
						acked.Add(1)
					} else {
						failed.Add(1)
					}
				})
			}
			answers.Wait()
		})
	}
	wg.Wait()
	u := c0.to(g.sample())
	// Deliveries are counted up to the last answer: each send was acked once every member device
	// acked it.
	want := sent.Load() * int64(g.members-1)
	got := g.delivered[phaseSustained].Load()
	res := g.r.res
	res.set("sustained_groups", int64(groups), "")
	res.set("sustained_rate_per_group", cfg.Rate, "messages a second per group")
	res.set("sustained_sent", sent.Load(), "")
	res.set("sustained_acked", acked.Load(), "")
	res.set("sustained_failed", failed.Load(), "sends refused or unanswered")
	res.set("sustained_deliveries", got, "member device deliveries (want sent × (members - 1))")
	res.set("sustained_lost", max(0, want-got), "")
	res.set("sustained_delivery_p50_ms", ms(g.sustained.Quantile(0.5)), "send → each member device's delivery")
	res.set("sustained_delivery_p99_ms", ms(g.sustained.Quantile(0.99)), "")
	res.set("sustained_delivery_max_ms", ms(g.sustained.Max()), "")
	g.cpuFields("sustained", u, got)
	return nil
}

// offlinePhase: every member of the first group but the sender disconnects; one message at a
// time, the ack says every inbox has it durably.
func (g *groupRun) offlinePhase(ctx context.Context, n int) error {
	g.phase.Store(phaseOffline)
	var off []*wsConn
	for i := 1; i < g.members; i++ {
		if c := g.conns[i]; c != nil {
			c.closing.Store(true)
			off = append(off, c)
		}
	}
	g.base.closeConns(off)
	for _, c := range off {
		<-c.done
	}
	// The server detaches a closed connection as it reads the close: nothing announces it to
	// the sender. A live request to a device whose connection is going is refused and stored,
	// so this pause only keeps the measurement to the store path.
	time.Sleep(time.Second)
	c0 := g.sample()
	acks, _, err := g.oneAtATime(ctx, n, false)
	if err != nil {
		return err
	}
	u := c0.to(g.sample())
	res := g.r.res
	res.set("offline_messages", int64(n), "messages to the first group, one at a time, every other member offline")
	res.set("offline_ack_p50_ms", ms(acks.Quantile(0.5)), "send → SendResult: every member device's inbox has it durably")
	res.set("offline_ack_p99_ms", ms(acks.Quantile(0.99)), "")
	res.set("offline_ack_max_ms", ms(acks.Max()), "")
	g.cpuFields("offline", u, int64(n)*int64(g.members-1))
	return nil
}
