// Copyright 2026 The Petrel Authors
// SPDX-License-Identifier: Apache-2.0

package bench

import (
	"context"
	"errors"
	"fmt"
	"maps"
	"os"
	"sync"
	"sync/atomic"
	"time"

	"google.golang.org/protobuf/encoding/protowire"

	pb "github.com/petrelchat/petrel/proto/petrel/v1"
)

// Pseudo frame kinds passed to handlers.
const (
	kMalformed protowire.Number = -1
	kClosed    protowire.Number = -2 // the reader loop ended
)

const (
	pingRounds = 5
	// keepAliveEvery is the interval between pings on each held connection (the server closes a
	// connection silent for 120s).
	keepAliveEvery = 50 * time.Second
)

// idleShard holds connections open.
type idleShard struct {
	*shardBase
	conns   []*wsConn
	pings   atomic.Pointer[[]idlePing] // by sample slot
	hold    *report                    // errors while holding
	dropped atomic.Int64
	diag    *keepaliveDiag // where the keepalive's pings went, and each drop
	ping    *hist
	stopKA  chan struct{}
	kaDone  chan struct{}
}

type idlePing struct {
	id atomic.Uint64
	at atomic.Int64 // Unix ns the outstanding ping was sent; 0: none outstanding
}

func (s *idleShard) handle(c *wsConn, f frameView) {
	switch f.kind {
	case kPong:
		if p := s.pingOf(c); p != nil && f.id == p.id.Load() {
			if at := p.at.Swap(0); at != 0 {
				s.ping.Record(time.Duration(time.Now().UnixNano() - at))
			}
		}
	case kQueueEmpty, kWelcome:
	case kGoAway:
		s.hold.error("goaway")
	case kError:
		s.hold.error("server_" + pb.ErrorCodeName(parseError(f.body).GetCode()))
	case kClosed:
		if !c.closing.Load() {
			s.dropped.Add(1)
			s.hold.error("dropped" + closeCause(c.err))
			s.diag.dropped(c)
		}
	case kMalformed:
		s.hold.error("malformed_frame")
	}
}

// pingOf returns the ping state of a sampled connection (nil for the others).
func (s *idleShard) pingOf(c *wsConn) *idlePing {
	k := int(c.pingSlot.Load()) - 1
	pings := s.pings.Load()
	if k < 0 || pings == nil || k >= len(*pings) {
		return nil
	}
	return &(*pings)[k]
}

func (s *idleShard) step(ctx context.Context, name string, at time.Time) (*report, error) {
	switch name {
	case stepConnect:
		s.hold = newReport()
		s.ping = newHist()
		s.diag = newKeepaliveDiag()
		rep := newReport()
		idx := make([]int, len(s.spec.Accounts))
		for i := range idx {
			idx[i] = i
		}
		t := time.Now()
		// Connections made early in a long connect phase (minutes, at 200,000) must not reach the
		// server's idle timeout before the keepalive below starts: ping them meanwhile.
		early := &earlyPings{}
		stopEarly, earlyDone := make(chan struct{}), make(chan struct{})
		early.diag = s.diag
		go early.run(stopEarly, earlyDone)
		s.conns = s.connectAll(ctx, idx, rep, s.handle, func(_ int, c *wsConn) { early.add(c) })
		close(stopEarly)
		<-earlyDone
		rep.span(t, time.Now())
		s.stopKA, s.kaDone = make(chan struct{}), make(chan struct{})
		go s.keepAlive()
		return rep, nil
	case stepPing:
		return s.pingSample(ctx), nil
	case stepClose:
		rep := s.hold
		if rep == nil {
			rep = newReport()
		}
		if s.stopKA != nil {
			close(s.stopKA)
			<-s.kaDone
			s.stopKA = nil
		}
		var live int64
		for _, c := range s.conns {
			if c != nil {
				live++
			}
		}
		s.closeConns(s.conns)
		rep.Dropped = s.dropped.Load()
		s.diag.report(rep)
		rep.Conns = live - rep.Dropped
		s.conns = nil
		return rep, nil
	}
	return nil, fmt.Errorf("idle: unknown step %q", name)
}

// pingSample pings a sample of the held connections, pingRounds times each, spread over time.
func (s *idleShard) pingSample(ctx context.Context) *report {
	rep := newReport()
	var sample []*wsConn
	live := 0
	for _, c := range s.conns {
		if c != nil {
			live++
		}
	}
	n := min(s.spec.P.PingSample, live)
	if n == 0 {
		return rep
	}
	stride := float64(live) / float64(n)
	ps := make([]idlePing, n)
	s.pings.Store(&ps)
	k := 0
	for _, c := range s.conns {
		if c == nil {
			continue
		}
		if len(sample) < n && float64(k) >= float64(len(sample))*stride {
			c.pingSlot.Store(int32(len(sample) + 1))
			sample = append(sample, c)
		}
		k++
	}
	t := time.Now()
	gap := 200 * time.Millisecond / time.Duration(n)
	for range pingRounds {
		for i, c := range sample {
			if ctx.Err() != nil {
				return rep
			}
			p := &ps[i]
			if p.at.Load() != 0 {
				rep.error("ping_timeout") // the previous round's ping is still unanswered
			}
			id := c.nextID.Add(1)
			p.id.Store(id)
			p.at.Store(time.Now().UnixNano())
			var buf [32]byte
			if err := c.write(appendPing(buf[:0], id, time.Now().UnixMilli())); err != nil {
				p.at.Store(0)
				rep.error("ping_write")
			}
			time.Sleep(gap)
		}
	}
	deadline := time.Now().Add(3 * time.Second)
	for time.Now().Before(deadline) {
		waiting := 0
		for i := range ps {
			if ps[i].at.Load() != 0 {
				waiting++
			}
		}
		if waiting == 0 {
			break
		}
		time.Sleep(10 * time.Millisecond)
	}
	for i := range ps {
		if ps[i].at.Swap(0) != 0 {
			rep.error("ping_timeout")
		}
	}
	rep.span(t, time.Now())
	rep.Ping = s.ping // the ping step runs once
	return rep
}

// keepAlive pings every held connection once per keepAliveEvery, spread evenly, until stopped.
func (s *idleShard) keepAlive() {
	defer close(s.kaDone)
	n := len(s.conns)
	if n == 0 {
		<-s.stopKA
		return
	}
	// Ping k (of connection k mod n) is due at start + k×keepAliveEvery/n, by the clock, not by
	// a timer reset after each ping: on a loaded machine (two cores, 200,000 connections) each
	// wake-up comes late, and a per-ping timer fell so far behind that connections passed the
	// server's idle timeout (30,969 of 197,586 dropped in one run). Every tick sends all the pings
	// due by then. The first round starts at once: early ones were pinged up to keepAliveEvery ago.
	t := time.NewTicker(keepAliveTick)
	defer t.Stop()
	start := time.Now()
	last := start
	for sent := int64(0); ; {
		now := time.Now()
		s.diag.pingerGap.Record(now.Sub(last))
		last = now
		due := int64(now.Sub(start))*int64(n)/int64(keepAliveEvery) + 1
		for ; sent < due; sent++ {
			if c := s.conns[sent%int64(n)]; c != nil {
				s.diag.ping(c)
			}
		}
		select {
		case <-s.stopKA:
			return
		case <-t.C:
		}
	}
}

// keepaliveDiag records where a shard's keepalive pings went and, for each connection the server
// closed, how long this side had not written to it (see report.Silence and after).
type keepaliveDiag struct {
	start                                              int64 // Unix ns the connect step began
	silence, dropAt, silentSince, pingWrite, pingerGap *hist
	silent                                             atomic.Int64 // drops after more than 2×keepAliveEvery without a write
	missed                                             atomic.Int64 // ping writes past pingWriteTimeout
	mu                                                 sync.Mutex
	bySource                                           map[string]int64
}

func newKeepaliveDiag() *keepaliveDiag {
	return &keepaliveDiag{start: time.Now().UnixNano(), silence: newHist(), dropAt: newHist(), silentSince: newHist(),
		pingWrite: newHist(), pingerGap: newHist(), bySource: map[string]int64{}}
}

// dropped records a connection the server closed.
func (d *keepaliveDiag) dropped(c *wsConn) {
	now := time.Now().UnixNano()
	d.dropAt.Record(time.Duration(now - d.start))
	if last := c.cc.lastWrite.Load(); last != 0 {
		quiet := time.Duration(now - last)
		d.silence.Record(quiet)
		if quiet > 2*keepAliveEvery {
			d.silent.Add(1)
			d.silentSince.Record(time.Duration(last - d.start))
		}
	}
	d.mu.Lock()
	d.bySource[c.local]++
	d.mu.Unlock()
}

// ping sends a keepalive ping on c, timing the write. The write has a deadline: one socket that
// takes no more bytes (its server not reading it) must not stall the pings of every other
// connection of the shard, which are sent one after another (a client pings each connection on
// its own). A write past it leaves that connection unusable (counted as keepalive_write); a
// connection whose writes failed before (that, or the server closed it) is not pinged again.
func (d *keepaliveDiag) ping(c *wsConn) {
	if c.cc.writeFailed() {
		return
	}
	var buf [32]byte
	t := time.Now()
	_ = c.cc.SetWriteDeadline(t.Add(pingWriteTimeout))
	err := c.write(appendPing(buf[:0], c.nextID.Add(1), t.UnixMilli()))
	_ = c.cc.SetWriteDeadline(time.Time{})
	d.pingWrite.Record(time.Since(t))
	if errors.Is(err, os.ErrDeadlineExceeded) {
		d.missed.Add(1)
	}
}

// pingWriteTimeout bounds one keepalive ping's write.
const pingWriteTimeout = 2 * time.Second

func (d *keepaliveDiag) report(rep *report) {
	rep.DroppedSilent = d.silent.Load()
	for _, p := range []struct {
		dst **hist
		h   *hist
	}{{&rep.Silence, d.silence}, {&rep.DropAt, d.dropAt}, {&rep.SilentSince, d.silentSince}, {&rep.PingWrite, d.pingWrite}, {&rep.PingerGap, d.pingerGap}} {
		if p.h != nil && p.h.Count() > 0 {
			*p.dst = p.h
		}
	}
	if n := d.missed.Load(); n > 0 {
		rep.mu.Lock()
		rep.Errors["keepalive_write"] += n
		rep.mu.Unlock()
	}
	d.mu.Lock()
	if len(d.bySource) > 0 {
		rep.DroppedBySource = maps.Clone(d.bySource)
	}
	d.mu.Unlock()
}

// keepAliveTick is how often keepAlive sends the pings that came due.
const keepAliveTick = 10 * time.Millisecond

// earlyPings pings, while a shard is still connecting, each connection made keepAliveEvery ago or
// more and not pinged since.
type earlyPings struct {
	mu    sync.Mutex
	conns []*wsConn
	last  []time.Time
	diag  *keepaliveDiag
}

func (e *earlyPings) add(c *wsConn) {
	e.mu.Lock()
	e.conns = append(e.conns, c)
	e.last = append(e.last, time.Now())
	e.mu.Unlock()
}

func (e *earlyPings) run(stop <-chan struct{}, done chan<- struct{}) {
	defer close(done)
	t := time.NewTicker(time.Second)
	defer t.Stop()
	last := time.Now()
	for {
		select {
		case <-stop:
			return
		case <-t.C:
		}
		now := time.Now()
		e.diag.pingerGap.Record(now.Sub(last))
		last = now
		e.mu.Lock()
		for i, c := range e.conns {
			if now.Sub(e.last[i]) >= keepAliveEvery {
				e.diag.ping(c)
				e.last[i] = now
			}
		}
		e.mu.Unlock()
	}
}

func (s *idleShard) close() {
	if s.stopKA != nil {
		close(s.stopKA)
		<-s.kaDone
		s.stopKA = nil
	}
	s.closeConns(s.conns)
	s.shutdown()
}

// idle is the coordinator of the idle scenario.
func (r *run) idle(ctx context.Context) error {
	cfg := r.cfg
	accts, _, err := r.register(ctx, cfg.Conns, cfg.PreKeys, false)
	if err != nil {
		return err
	}
	sizes, ips, err := r.plan(cfg.Conns, cfg.Conns)
	if err != nil {
		return err
	}
	var specs []*shardSpec
	base := 0
	for i, n := range sizes {
		p := r.baseParams()
		p.PingSample = (max(0, cfg.PingSample)*n + cfg.Conns - 1) / cfg.Conns
		specs = append(specs, &shardSpec{Index: i, SourceIP: ips[i], Accounts: accts[base : base+n], P: p})
		base += n
	}
	cl, err := r.startShards(ctx, specs)
	if err != nil {
		return err
	}
	defer cl.close()

	if cfg.Settle > 0 {
		r.logf("settling for %s after registration …", cfg.Settle)
		select {
		case <-time.After(cfg.Settle):
		case <-ctx.Done():
			return ctx.Err()
		}
	}
	rssBefore, rssOK := cl.serverRSS()
	cpu0 := cl.sampleCPU()
	r.logf("connecting %d devices …", cfg.Conns)
	stop := r.progress("connecting", 0, nil)
	conn, err := cl.stepAll(ctx, stepConnect, time.Time{})
	stop()
	if err != nil {
		return err
	}
	cpu1 := cl.sampleCPU()
	holdStart := time.Now()
	r.logf("%d connected (%d given up) in %.1fs; holding for %v", conn.Conns, conn.ConnFailed, conn.elapsed().Seconds(), cfg.Hold)
	stopHold := r.progress("holding", cfg.Hold, nil)
	defer stopHold()
	_ = sleepUntil(ctx, holdStart.Add(min(time.Second, cfg.Hold/2)))
	rssHeld, _ := cl.serverRSS()
	clientRSS := cl.clientRSS()
	var ping *report
	if cfg.PingSample > 0 {
		if ping, err = cl.stepAll(ctx, stepPing, time.Time{}); err != nil {
			return err
		}
	}
	_ = sleepUntil(ctx, holdStart.Add(cfg.Hold))
	stopHold()
	cpu2 := cl.sampleCPU()
	rssEnd, _ := cl.serverRSS()
	closed, err := cl.stepAll(ctx, stepClose, time.Time{})
	if err != nil {
		return err
	}

	res := r.res
	res.set("conns", int64(cfg.Conns), "connections asked for")
	res.set("prekeys_per_kind", int64(cfg.PreKeys), "one-time EC and ML-KEM prekeys uploaded per device")
	res.set("connected", conn.Conns, "connections established")
	res.set("held", closed.Conns, "connections still open at the end of the hold")
	res.set("dropped", closed.Dropped, "held connections the server closed")
	res.set("dropped_silent", closed.DroppedSilent, "of those, ones this side had not written to for over 100 s (its keepalive fell behind)")
	if h := closed.Silence; h != nil && h.Count() > 0 {
		res.set("dropped_silence_p50_s", h.Quantile(0.50).Seconds(), "time since this side's last write, per dropped connection")
		res.set("dropped_silence_max_s", h.Max().Seconds(), "")
	}
	// Where the keepalive's pings went (times since the connect step began).
	if h := closed.DropAt; h != nil && h.Count() > 0 {
		res.set("drop_at_first_s", h.Quantile(0).Seconds(), "when the first drop was seen")
		res.set("drop_at_p50_s", h.Quantile(0.50).Seconds(), "")
	}
	if h := closed.SilentSince; h != nil && h.Count() > 0 {
		res.set("silent_since_p01_s", h.Quantile(0.01).Seconds(), "when this side last wrote to the connections dropped silent")
		res.set("silent_since_p50_s", h.Quantile(0.50).Seconds(), "")
		res.set("silent_since_p99_s", h.Quantile(0.99).Seconds(), "")
	}
	if h := closed.PingWrite; h != nil && h.Count() > 0 {
		res.set("ping_write_p999_ms", ms(h.Quantile(0.999)), "one keepalive ping's write")
		res.set("ping_write_max_ms", ms(h.Max()), "")
	}
	if h := closed.PingerGap; h != nil && h.Count() > 0 {
		res.set("pinger_gap_max_s", h.Max().Seconds(), "the longest gap between two passes of a shard's keepalive")
	}
	if len(closed.DroppedBySource) > 0 {
		res.set("dropped_by_source", closed.DroppedBySource, "dropped connections by source address (one per worker)")
	}
	res.set("hold_s", cfg.Hold.Seconds(), "")
	res.set("connects_per_s", perSecond(conn.Conns, conn.elapsed()), "connections established per second")
	res.set("connect_p50_ms", ms(conn.Connect.Quantile(0.50)), "dial + auth")
	res.set("connect_p99_ms", ms(conn.Connect.Quantile(0.99)), "dial + auth")
	if ping != nil && ping.Ping != nil {
		res.set("ping_samples", int64(ping.Ping.Count()), "pings answered, on a sample of held connections")
		res.set("ping_p50_ms", ms(ping.Ping.Quantile(0.50)), "Ping → Pong while all are held")
		res.set("ping_p99_ms", ms(ping.Ping.Quantile(0.99)), "Ping → Pong while all are held")
	}
	if rssOK {
		res.set("server_rss_before_bytes", rssBefore, "before connecting")
		res.set("server_rss_bytes", max(rssHeld, rssEnd), "while all are held")
		res.set("server_rss_end_bytes", rssEnd, "at the end of the hold")
		if conn.Conns > 0 {
			res.set("rss_per_conn_bytes", float64(max(rssHeld, rssEnd)-rssBefore)/float64(conn.Conns), "server RSS growth / connections")
		}
		if closed.Conns > 0 {
			res.set("rss_settled_per_conn_bytes", float64(rssEnd-rssBefore)/float64(closed.Conns), "growth at the end of the hold / connections held then: what idle connections cost once the connect burst is over")
		}
	} else {
		res.set("server_rss_bytes", nil, "needs --server-pid")
		res.set("rss_per_conn_bytes", nil, "needs --server-pid")
		res.set("rss_settled_per_conn_bytes", nil, "needs --server-pid")
	}
	res.set("client_rss_bytes", clientRSS, "the generator's RSS (all its processes) while all are held")
	connCPU := cpu0.to(cpu1)
	if connCPU.serverOK && conn.Conns > 0 {
		res.set("connect_server_cpu_us_per_conn", float64(connCPU.server.Microseconds())/float64(conn.Conns), "server CPU per connection established")
	}
	r.addCPU(cpu1.to(cpu2), -1)
	res.set("source_ips", conn.SourceIPs, "")
	r.addErrors(conn, ping, closed)
	return nil
}
