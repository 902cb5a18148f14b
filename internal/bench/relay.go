// Copyright 2026 The Petrel Authors
// SPDX-License-Identifier: Apache-2.0

package bench

import (
	"context"
	"crypto/rand"
	"encoding/binary"
	"errors"
	"fmt"
	"io"
	"math"
	"math/bits"
	"net"
	"runtime"
	"slices"
	"strconv"
	"sync"
	"sync/atomic"
	"syscall"
	"time"

	pb "github.com/petrelchat/petrel/proto/petrel/v1"
)

// Payload header: every opaque payload starts with these fields, followed by random bytes.
//
//	[0:8]   sequence number (little endian)
//	[8:16]  send timestamp, Unix ns (open loop: the scheduled time)
//	[16:20] stream id (relay: global pair index; offline: recipient index)
//	[20:24] payloadMagic
//	[24:28] sender index (offline); relay: the envelope's target (sink index, 0 with one device
//	        per account), so that every device's copy differs and each device checks it got its own
const (
	payloadHeader = 28
	payloadMagic  = 0x4c525450 // "PTRL"
)

// newPayload returns a payload template of size bytes: random bytes behind the header.
func newPayload(size int) []byte {
	p := make([]byte, size)
	_, _ = rand.Read(p[payloadHeader:])
	binary.LittleEndian.PutUint32(p[20:24], payloadMagic)
	return p
}

func putHeader(p []byte, seq uint64, ts int64, stream, sender uint32) {
	binary.LittleEndian.PutUint64(p[0:8], seq)
	binary.LittleEndian.PutUint64(p[8:16], uint64(ts))
	binary.LittleEndian.PutUint32(p[16:20], stream)
	binary.LittleEndian.PutUint32(p[24:28], sender)
}

func readHeader(p []byte) (seq uint64, ts int64, stream, sender uint32, ok bool) {
	if len(p) < payloadHeader || binary.LittleEndian.Uint32(p[20:24]) != payloadMagic {
		return 0, 0, 0, 0, false
	}
	return binary.LittleEndian.Uint64(p[0:8]), int64(binary.LittleEndian.Uint64(p[8:16])),
		binary.LittleEndian.Uint32(p[16:20]), binary.LittleEndian.Uint32(p[24:28]), true
}

// Request ids: 1 is the Auth; a Send of sequence number seq uses seq + sendIDBase.
const sendIDBase = 2

// relayShard runs pairs: accounts [2k] send to accounts [2k+1]. With several devices per
// account, the sender's primary sends, and every receiver device and every other device of the
// sender's account gets each message (the pair's sinks).
type relayShard struct {
	*shardBase
	pairs []*relayPair
	sinks []*relaySink // every pair's, in order; a receiving connection's user is its index
	recvs []*wsConn
	sends []*wsConn

	devices  int     // per account
	rep      *report // errors while running
	cnt      counters
	lat, ack *hist
	lag      *hist // open loop: actual send time - scheduled time
	window   int
	end      atomic.Int64 // Unix ns at which the measurement window ends
	t0       int64
	interval float64 // open loop: ns between two sends of this shard
	open     bool
	qEmpty   atomic.Int64 // receivers that have seen QueueEmpty
}

// sendTime is when a send was scheduled (ts, also in its payload) and written (at), Unix ns.
type sendTime struct{ ts, at int64 }

// answerTimeout is how long a send may stay unanswered before its window slot is reclaimed (the
// server may drop a request without answering it, e.g. when its per-connection frame limit trips).
const answerTimeout = 10 * time.Second

// relayPair is one sender → receiver stream.
type relayPair struct {
	s      *relayShard
	local  int
	global uint32
	to     string   // receiver account
	devs   []string // its devices: the envelopes
	own    []string // the sender account's other devices: the own envelopes
	sinks  []*relaySink
	sender *wsConn
	active bool

	mu       sync.Mutex // guards the sender side below; taken before a sink's mu
	nextSeq  uint64
	due      uint64              // sequence numbers below due may be sent
	pending  map[uint64]sendTime // sends not answered yet, by sequence number
	acked    bitset
	broken   bool
	buf      []byte
	payloads [][]byte // one per envelope (devs, then own), each marked with its sink index
	msgID    []byte
}

// relaySink is one device that must get a pair's messages: a device of the receiver's account
// (index 0 is its primary, the only one with one device per account), or another device of the
// sender's account (a copy of what it sent).
type relaySink struct {
	p     *relayPair
	index uint32 // its envelope's position in the pair's Send (and the payload's mark)
	dev   *account
	conn  *wsConn

	mu      sync.Mutex // guards recv and maxSeen
	recv    bitset
	maxSeen int64
	// tags, ackBuf and qe are used only by the sink's reader goroutine.
	tags   []uint64
	ackBuf []byte
	qe     bool
}

func newRelayShard(b *shardBase) (*relayShard, error) {
	n := len(b.spec.Accounts) / 2
	s := &relayShard{shardBase: b, window: b.spec.P.Window, rep: newReport(), lat: newHist(), ack: newHist(), lag: newHist(), devices: 1}
	if n > 0 {
		s.devices = 1 + len(b.spec.Accounts[0].Companions)
	}
	for k := range n {
		from, to := &b.spec.Accounts[2*k], &b.spec.Accounts[2*k+1]
		if len(from.Companions) != s.devices-1 || len(to.Companions) != s.devices-1 {
			return nil, fmt.Errorf("relay: pair %d: accounts of %d and %d devices, want %d", k, 1+len(from.Companions), 1+len(to.Companions), s.devices)
		}
		p := &relayPair{
			s: s, local: k, global: uint32(b.spec.P.PairBase + k), to: to.Name,
			pending: make(map[uint64]sendTime, s.window),
		}
		targets := []*account{to}
		for j := range to.Companions {
			targets = append(targets, &to.Companions[j])
		}
		for _, d := range targets {
			p.devs = append(p.devs, d.DeviceID)
		}
		for j := range from.Companions {
			c := &from.Companions[j]
			p.own = append(p.own, c.DeviceID)
			targets = append(targets, c)
		}
		template := newPayload(b.spec.P.Size)
		for j, d := range targets {
			sk := &relaySink{p: p, index: uint32(j), dev: d, maxSeen: -1}
			p.sinks = append(p.sinks, sk)
			s.sinks = append(s.sinks, sk)
			pl := template
			if j > 0 {
				pl = slices.Clone(template)
			}
			p.payloads = append(p.payloads, pl)
		}
		s.pairs = append(s.pairs, p)
	}
	return s, nil
}

func (s *relayShard) step(ctx context.Context, name string, at time.Time) (*report, error) {
	switch name {
	case stepConnect:
		return s.connect(ctx), nil
	case stepRun:
		return s.run(ctx, at), nil
	case stepClose:
		s.closeConns(s.sends, s.recvs)
		s.sends, s.recvs = nil, nil
		return newReport(), nil
	}
	return nil, fmt.Errorf("relay: unknown step %q", name)
}

func (s *relayShard) close() {
	s.closeConns(s.sends, s.recvs)
	s.shutdown()
}

func (s *relayShard) connect(ctx context.Context) *report {
	rep := newReport()
	t := time.Now()
	var si []int
	for k := range s.pairs {
		si = append(si, 2*k)
	}
	devs := make([]*account, len(s.sinks))
	for j, sk := range s.sinks {
		devs[j] = sk.dev
	}
	// Receivers (every sink) first, and attached (QueueEmpty) before any sender starts, so that
	// the first messages take the live path.
	s.recvs = s.connectDevices(ctx, devs, rep, s.onReceiver, func(j int, c *wsConn) {
		sk := s.sinks[j]
		c.user = j
		sk.conn = c
		c.cc.onIdle = sk.flushAcks
	})
	want := awaitCount(ctx, s.recvs, &s.qEmpty, s.spec.P.ConnectTimeout)
	if n := want - s.qEmpty.Load(); n > 0 {
		rep.Errors["no_queue_empty"] += n
	}
	s.sends = s.connectAll(ctx, si, rep, s.onSender, func(i int, c *wsConn) {
		c.user = i / 2
		s.pairs[i/2].sender = c
	})
	for _, p := range s.pairs {
		p.active = p.sender != nil
		for _, sk := range p.sinks {
			p.active = p.active && sk.conn != nil
		}
		if !p.active {
			rep.Errors["pair_incomplete"]++
		}
	}
	rep.span(t, time.Now())
	return rep
}

func (s *relayShard) onSender(c *wsConn, f frameView) {
	p := s.pairs[c.user]
	switch f.kind {
	case kSendResult:
		p.onAnswer(f.id, "")
	case kError:
		e := parseError(f.body)
		if f.id == 0 {
			s.rep.error("server_" + pb.ErrorCodeName(e.GetCode()))
			return
		}
		p.onAnswer(f.id, pb.ErrorCodeName(e.GetCode()))
	case kGoAway:
		s.rep.error("goaway")
	case kClosed:
		if !c.closing.Load() {
			s.rep.error("sender_conn_lost")
			p.mu.Lock()
			p.broken = true
			p.mu.Unlock()
		}
	case kMalformed:
		s.rep.error("malformed_frame")
	}
}

// onAnswer handles the SendResult (errCode "") or Error answering the Send with request id id.
func (p *relayPair) onAnswer(id uint64, errCode string) {
	s := p.s
	now := time.Now().UnixNano()
	seq := id - sendIDBase
	p.mu.Lock()
	st, ok := p.pending[seq]
	if id < sendIDBase || !ok {
		p.mu.Unlock()
		s.rep.error("late_or_unknown_answer")
		return
	}
	delete(p.pending, seq)
	if errCode == "" {
		if p.acked.set(seq) {
			s.rep.error("duplicate_ack")
		} else {
			s.ack.Record(time.Duration(now - st.ts))
			s.cnt.acked.Add(1)
			if now < s.end.Load() {
				s.cnt.ackedInWindow.Add(1)
			}
			s.cnt.touch(now)
		}
	}
	p.pumpLocked(now)
	p.mu.Unlock()
	if errCode != "" {
		s.rep.error("send_" + errCode)
	}
}

// pumpLocked sends what the schedule allows and the window has room for.
func (p *relayPair) pumpLocked(now int64) {
	s := p.s
	for !p.broken && p.nextSeq < p.due && len(p.pending) < s.window {
		seq := p.nextSeq
		ts := now
		if s.open {
			ts = s.scheduled(p, seq)
			s.lag.Record(time.Duration(now - ts))
		}
		for j, pl := range p.payloads {
			putHeader(pl, seq, ts, p.global, uint32(j))
		}
		p.msgID = strconv.AppendUint(append(p.msgID[:0], 's'), seq, 36)
		p.buf = appendFanoutSend(p.buf[:0], seq+sendIDBase, p.msgID, p.to, p.devs, p.own, p.payloads)
		if err := p.sender.write(p.buf); err != nil {
			p.broken = true
			s.rep.error("write")
			return
		}
		p.pending[seq] = sendTime{ts: ts, at: now}
		p.nextSeq++
		s.cnt.sent.Add(1)
	}
}

// reclaim gives up on sends unanswered for answerTimeout and refills the window.
func (p *relayPair) reclaim(now int64) {
	var n int64
	p.mu.Lock()
	for seq, st := range p.pending {
		if now-st.at > int64(answerTimeout) {
			delete(p.pending, seq)
			n++
		}
	}
	if n > 0 {
		p.pumpLocked(now)
	}
	p.mu.Unlock()
	if n > 0 {
		p.s.rep.mu.Lock()
		p.s.rep.Errors["send_unanswered"] += n
		p.s.rep.mu.Unlock()
	}
}

// reclaimLoop runs reclaim on every pair each second until stop is closed.
func (s *relayShard) reclaimLoop(stop <-chan struct{}) {
	t := time.NewTicker(time.Second)
	defer t.Stop()
	for {
		select {
		case <-stop:
			return
		case <-t.C:
			now := time.Now().UnixNano()
			for _, p := range s.pairs {
				p.reclaim(now)
			}
		}
	}
}

// scheduled is the open-loop send time of a pair's message seq: the shard's messages are spaced
// evenly, pairs taking turns.
func (s *relayShard) scheduled(p *relayPair, seq uint64) int64 {
	k := float64(seq)*float64(len(s.pairs)) + float64(p.local)
	return s.t0 + int64(k*s.interval)
}

// onReceiver handles the frames of a sink's connection: duplicates and order are checked per
// device; delivered counts the receiver's primary (sink 0), device deliveries count every sink.
func (s *relayShard) onReceiver(c *wsConn, f frameView) {
	sk := s.sinks[c.user]
	switch f.kind {
	case kDeliver:
		tag, ct, ok := parseDeliver(f.body)
		if !ok {
			s.rep.error("malformed_deliver")
			return
		}
		sk.tags = append(sk.tags, tag)
		seq, ts, stream, mark, ok := readHeader(ct)
		switch {
		case !ok || stream != sk.p.global:
			s.rep.error("bad_payload")
		case mark != sk.index:
			s.rep.error("wrong_device_copy") // another device's envelope
		default:
			now := time.Now().UnixNano()
			sk.mu.Lock()
			dup := sk.recv.set(seq)
			if !dup && int64(seq) < sk.maxSeen {
				s.cnt.orderViolations.Add(1)
			}
			sk.maxSeen = max(sk.maxSeen, int64(seq))
			sk.mu.Unlock()
			if dup {
				s.cnt.duplicates.Add(1)
				break
			}
			s.lat.Record(time.Duration(now - ts))
			inWindow := now < s.end.Load()
			s.cnt.deviceDeliveries.Add(1)
			if inWindow {
				s.cnt.deviceDeliveriesInWindow.Add(1)
			}
			if sk.index == 0 {
				s.cnt.delivered.Add(1)
				if inWindow {
					s.cnt.deliveredInWindow.Add(1)
				}
			}
			s.cnt.touch(now)
		}
		if len(sk.tags) >= 256 {
			sk.flushAcks()
		}
	case kQueueEmpty:
		if !sk.qe {
			sk.qe = true
			s.qEmpty.Add(1)
		}
	default:
		onOtherFrame(s.rep, c, f, "receiver_conn_lost")
	}
}

// flushAcks acks the deliveries read so far in one DeliverAck (on the sink's reader goroutine).
func (sk *relaySink) flushAcks() {
	if len(sk.tags) == 0 {
		return
	}
	sk.ackBuf = appendDeliverAck(sk.ackBuf[:0], sk.tags)
	sk.tags = sk.tags[:0]
	if err := sk.conn.write(sk.ackBuf); err != nil {
		sk.p.s.rep.error("ack_write")
	}
}

// lostLocked counts the acked messages that some sink has not received (p.mu held; it takes
// each sink's mu).
func (p *relayPair) lostLocked() int64 {
	if len(p.sinks) == 1 {
		sk := p.sinks[0]
		sk.mu.Lock()
		defer sk.mu.Unlock()
		return int64(p.acked.andNotCount(&sk.recv))
	}
	for _, sk := range p.sinks {
		sk.mu.Lock()
	}
	var n int64
	for k, w := range p.acked.w {
		all := ^uint64(0)
		for _, sk := range p.sinks {
			if k < len(sk.recv.w) {
				all &= sk.recv.w[k]
			} else {
				all = 0
			}
		}
		n += int64(bits.OnesCount64(w &^ all))
	}
	for _, sk := range p.sinks {
		sk.mu.Unlock()
	}
	return n
}

func (s *relayShard) run(ctx context.Context, at time.Time) *report {
	rep := newReport()
	_ = sleepUntil(ctx, at)
	d := s.spec.P.Duration
	s.t0 = at.UnixNano()
	s.end.Store(at.Add(d).UnixNano())
	var active []*relayPair
	for _, p := range s.pairs {
		if p.active {
			active = append(active, p)
		}
	}
	if s.spec.P.Rate > 0 {
		s.open = true
		s.interval = 1e9 / s.spec.P.Rate
	}
	var sched sync.WaitGroup
	stopReclaim := make(chan struct{})
	sched.Add(1)
	go func() {
		defer sched.Done()
		s.reclaimLoop(stopReclaim)
	}()
	if s.open {
		g := min(len(s.pairs), runtime.GOMAXPROCS(0))
		for i := range g {
			sched.Add(1)
			go func() {
				defer sched.Done()
				s.schedule(ctx, i, g)
			}()
		}
	} else {
		now := time.Now().UnixNano()
		for _, p := range active {
			p.mu.Lock()
			p.due = math.MaxUint64
			p.pumpLocked(now)
			p.mu.Unlock()
		}
	}
	_ = sleepUntil(ctx, at.Add(d))
	close(stopReclaim)
	sched.Wait() // the schedulers stop by themselves at the end of the window
	for _, p := range s.pairs {
		p.mu.Lock()
		p.due = p.nextSeq
		p.mu.Unlock()
	}
	// Drain: wait for the answers to every send and the delivery of every acked message.
	drainEnd := time.Now().Add(s.spec.P.DrainTimeout)
	var inflight, lost int64
	for {
		inflight, lost = 0, 0
		for _, p := range active {
			p.mu.Lock()
			if !p.broken {
				inflight += int64(len(p.pending))
			}
			lost += p.lostLocked()
			p.mu.Unlock()
		}
		if (inflight == 0 && lost == 0) || time.Now().After(drainEnd) || ctx.Err() != nil {
			break
		}
		time.Sleep(20 * time.Millisecond)
	}
	if inflight > 0 {
		rep.Errors["send_unanswered"] += inflight
	}
	// The errors the connections' handlers counted so far.
	s.rep.mu.Lock()
	for k, v := range s.rep.Errors {
		rep.Errors[k] += v
	}
	clear(s.rep.Errors)
	s.rep.mu.Unlock()
	s.cnt.into(rep)
	rep.Lost = lost
	rep.Latency, rep.Ack = s.lat, s.ack
	if s.open {
		rep.Lag = s.lag
	}
	rep.Start, rep.End = s.t0, s.end.Load()
	return rep
}

// schedule is one open-loop scheduler: it owns the pairs local ≡ g (mod n) and releases each of
// their messages at its scheduled time, whether or not earlier ones were answered (a full window
// delays the send, but its latency still counts from the scheduled time).
func (s *relayShard) schedule(ctx context.Context, g, n int) {
	var mine []*relayPair
	for i := g; i < len(s.pairs); i += n {
		if s.pairs[i].active {
			mine = append(mine, s.pairs[i])
		}
	}
	if len(mine) == 0 {
		return
	}
	end := s.end.Load()
	for seq := uint64(0); ; seq++ {
		for _, p := range mine {
			t := s.scheduled(p, seq)
			if t >= end || ctx.Err() != nil {
				return
			}
			now := time.Now().UnixNano()
			if t > now {
				time.Sleep(time.Duration(t - now))
				now = time.Now().UnixNano()
			}
			p.mu.Lock()
			if p.due < seq+1 {
				p.due = seq + 1
			}
			p.pumpLocked(now)
			p.mu.Unlock()
		}
	}
}

// relay is the coordinator of the relay scenario.
func (r *run) relay(ctx context.Context) error {
	cfg := r.cfg
	if cfg.Rate > 0 && cfg.Rate/float64(cfg.Pairs) > 1500 {
		r.logf("warning: %.0f msgs/s per sender; the server rate-limits each connection (conn_frames_per_second, default 2000): use more pairs", cfg.Rate/float64(cfg.Pairs))
	}
	k := cfg.DevicesPerAccount
	accts, _, err := r.registerAccounts(ctx, 2*cfg.Pairs, k-1, 0, false)
	if err != nil {
		return err
	}
	// Every device connects: a pair's sender, and its receiver's K devices and the sender's K-1
	// others.
	sizes, ips, err := r.plan(cfg.Pairs, 2*k*cfg.Pairs)
	if err != nil {
		return err
	}
	var specs []*shardSpec
	base := 0
	for i, n := range sizes {
		p := r.baseParams()
		p.PairBase = base
		p.Rate = cfg.Rate * float64(n) / float64(cfg.Pairs)
		specs = append(specs, &shardSpec{Index: i, SourceIP: ips[i], Accounts: accts[2*base : 2*(base+n)], P: p})
		base += n
	}
	cl, err := r.startShards(ctx, specs)
	if err != nil {
		return err
	}
	defer cl.close()
	if k > 1 {
		r.logf("connecting %d receiving devices (%d per pair: the receiver's %d, the sender's other %d), then %d senders …",
			(2*k-1)*cfg.Pairs, 2*k-1, k, k-1, cfg.Pairs)
	} else {
		r.logf("connecting %d receivers, then %d senders …", cfg.Pairs, cfg.Pairs)
	}
	stop := r.progress("connecting", 0, nil)
	conn, err := cl.stepAll(ctx, stepConnect, time.Time{})
	stop()
	if err != nil {
		return err
	}
	mode := "closed loop, window " + strconv.Itoa(cfg.Window)
	if cfg.Rate > 0 {
		mode = fmt.Sprintf("open loop, %.0f msgs/s offered", cfg.Rate)
	}
	r.logf("%d connections up; relaying for %v (%s)", conn.Conns, cfg.Duration, mode)
	run, cpu, err := r.timed(ctx, cl, stepRun, cfg.Duration)
	if err != nil {
		return err
	}
	rss, rssOK := cl.serverRSS()
	if _, err := cl.stepAll(ctx, stepClose, time.Time{}); err != nil {
		return err
	}
	r.relayResult(conn, run, cpu)
	if rssOK {
		r.res.set("server_rss_bytes", rss, "after the window, all connections open")
	} else {
		r.res.set("server_rss_bytes", nil, "needs --server-pid")
	}
	return nil
}

// timed runs a step that starts at a common moment shortly from now and lasts d, sampling the CPU
// counters at its start and end.
func (r *run) timed(ctx context.Context, cl *cluster, step string, d time.Duration) (*report, cpuUsage, error) {
	defer r.progress(stepLabel(step), d, nil)()
	at := time.Now().Add(300 * time.Millisecond)
	type out struct {
		rep *report
		err error
	}
	done := make(chan out, 1)
	go func() {
		rep, err := cl.stepAll(ctx, step, at)
		done <- out{rep, err}
	}()
	_ = sleepUntil(ctx, at)
	c0 := cl.sampleCPU()
	var c1 cpuSample
	sampled := false
	if d > 0 {
		tm := time.NewTimer(time.Until(at.Add(d)))
		defer tm.Stop()
		select {
		case <-tm.C:
			c1, sampled = cl.sampleCPU(), true
		case o := <-done:
			// Finished early (or failed): sample now.
			c1 = cl.sampleCPU()
			return o.rep, c0.to(c1), o.err
		}
	}
	o := <-done
	if !sampled {
		c1 = cl.sampleCPU()
	}
	return o.rep, c0.to(c1), o.err
}

func (r *run) relayResult(conn, run *report, cpu cpuUsage) {
	cfg, res := r.cfg, r.res
	res.set("pairs", int64(cfg.Pairs), "")
	res.set("devices_per_account", int64(cfg.DevicesPerAccount), "the primary and its companions")
	res.set("conns", conn.Conns, "connections established")
	res.set("size", int64(cfg.Size), "payload bytes")
	res.set("window", int64(cfg.Window), "sends in flight per sender (at most)")
	if cfg.Rate > 0 {
		res.set("rate", cfg.Rate, "offered msgs/s (open loop)")
	} else {
		res.set("rate", nil, "closed loop")
	}
	res.set("e2ee", cfg.E2EE, "")
	res.set("run_s", cfg.Duration.Seconds(), "measurement window")
	res.set("sent", run.Sent, "")
	res.set("acked", run.Acked, "sends acked by the server")
	deliveredNote := "unique messages received"
	if cfg.DevicesPerAccount > 1 {
		deliveredNote = "unique messages received by the receiver's primary"
	}
	res.set("delivered", run.Delivered, deliveredNote)
	res.set("delivered_per_s", perSecond(run.DeliveredInWindow, cfg.Duration), "in the window")
	res.set("device_deliveries", run.DeviceDeliveries, fmt.Sprintf("unique (device, message) deliveries: %d devices per message", 2*cfg.DevicesPerAccount-1))
	res.set("device_deliveries_per_s", perSecond(run.DeviceDeliveriesInWindow, cfg.Duration), "in the window")
	res.set("acks_per_s", perSecond(run.AckedInWindow, cfg.Duration), "sender acks in the window")
	res.set("latency_p50_ms", ms(run.Latency.Quantile(0.50)), "sender timestamp → receiving device")
	res.set("latency_p99_ms", ms(run.Latency.Quantile(0.99)), "")
	res.set("latency_p999_ms", ms(run.Latency.Quantile(0.999)), "")
	res.set("latency_max_ms", ms(run.Latency.Max()), "")
	res.set("ack_p50_ms", ms(run.Ack.Quantile(0.50)), "Send → SendResult")
	res.set("ack_p99_ms", ms(run.Ack.Quantile(0.99)), "")
	if cfg.Rate > 0 && run.Lag != nil {
		res.set("send_lag_p99_ms", ms(run.Lag.Quantile(0.99)), "actual send - scheduled send (generator or window lag)")
	}
	r.addCPU(cpu, run.DeliveredInWindow)
	switch {
	case !cpu.serverOK:
		res.set("server_cpu_us_per_device_msg", nil, "needs --server-pid")
	case run.DeviceDeliveriesInWindow == 0:
		res.set("server_cpu_us_per_device_msg", nil, "no message in the window")
	default:
		res.set("server_cpu_us_per_device_msg", float64(cpu.server.Microseconds())/float64(run.DeviceDeliveriesInWindow), "server CPU µs per device delivery")
	}
	res.set("lost", run.Lost, "acked but never delivered (to some device that should have it)")
	res.set("duplicates", run.Duplicates, "second deliveries to one device")
	res.set("order_violations", run.OrderViolations, "per-pair sequence went backwards (on one device)")
	res.set("source_ips", conn.SourceIPs, "")
	r.addErrors(conn, run)
}

// onOtherFrame counts the frames every scenario's receiving side treats alike: GoAway, an Error
// push, an unexpected close (lostReason) and a malformed frame. Other kinds are ignored.
func onOtherFrame(rep *report, c *wsConn, f frameView, lostReason string) {
	switch f.kind {
	case kGoAway:
		rep.error("goaway")
	case kError:
		rep.error("server_" + pb.ErrorCodeName(parseError(f.body).GetCode()))
	case kClosed:
		if !c.closing.Load() {
			rep.error(lostReason + closeCause(c.err))
		}
	case kMalformed:
		rep.error("malformed_frame")
	}
}

// closeCause names why a connection's reader ended, as a suffix for an error reason: the server's
// close status (":1008") or the kind of read error (":eof", ":reset", ":timeout").
func closeCause(err error) string {
	var ce *closeError
	var ne net.Error
	switch {
	case err == nil:
		return ""
	case errors.As(err, &ce):
		return fmt.Sprintf(":%d", ce.code)
	case errors.Is(err, io.EOF), errors.Is(err, io.ErrUnexpectedEOF):
		return ":eof"
	case errors.Is(err, syscall.ECONNRESET):
		return ":reset"
	case errors.As(err, &ne) && ne.Timeout():
		return ":timeout"
	default:
		return ":other"
	}
}

// awaitCount waits until counter reaches the number of non-nil conns, the timeout passes or ctx
// ends, polling (the counters are bumped by reader goroutines); it returns that number.
func awaitCount(ctx context.Context, conns []*wsConn, counter *atomic.Int64, timeout time.Duration) int64 {
	want := int64(0)
	for _, c := range conns {
		if c != nil {
			want++
		}
	}
	deadline := time.Now().Add(timeout)
	for counter.Load() < want && time.Now().Before(deadline) && ctx.Err() == nil {
		time.Sleep(5 * time.Millisecond)
	}
	return want
}
