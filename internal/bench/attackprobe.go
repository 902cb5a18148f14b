// Copyright 2026 The Petrel Authors
// SPDX-License-Identifier: Apache-2.0

package bench

import (
	"context"
	"crypto/rand"
	"encoding/hex"
	"errors"
	"fmt"
	"io"
	"maps"
	"net"
	"net/http"
	"strconv"
	"sync"
	"sync/atomic"
	"time"

	"google.golang.org/protobuf/encoding/protowire"

	pb "github.com/petrelchat/petrel/proto/petrel/v1"
)

// rssSample is one reading of the server's resident memory.
type rssSample struct {
	at  time.Time
	rss int64
}

// rssSampler reads the server's VmRSS every interval until stopped, keeps every reading, and trips
// a guard (calls onTrip once) when the RSS crosses a limit or the process is gone.
type rssSampler struct {
	pid    int
	every  time.Duration
	guard  int64
	onTrip func(reason string)

	mu        sync.Mutex // guards samples, tripped, reason
	samples   []rssSample
	tripped   bool
	reason    string // "guard" or "server_gone"
	trippedAt time.Time

	stop chan struct{}
	done chan struct{}
}

func newRSSSampler(pid int, every time.Duration, guard int64, onTrip func(reason string)) *rssSampler {
	return &rssSampler{pid: pid, every: every, guard: guard, onTrip: onTrip, stop: make(chan struct{}), done: make(chan struct{})}
}

// start takes the first reading now, then one every interval on its own goroutine (owned by close).
func (s *rssSampler) start() {
	s.sample()
	go func() {
		defer close(s.done)
		t := time.NewTicker(s.every)
		defer t.Stop()
		for {
			select {
			case <-t.C:
				s.sample()
			case <-s.stop:
				return
			}
		}
	}()
}

// close stops sampling and waits for the sampler to end. Call once.
func (s *rssSampler) close() {
	close(s.stop)
	<-s.done
}

func (s *rssSampler) sample() int64 {
	rss, err := procRSS(s.pid)
	now := time.Now()
	s.mu.Lock()
	trip := ""
	if err != nil {
		if !s.tripped {
			trip = "server_gone"
		}
	} else {
		s.samples = append(s.samples, rssSample{at: now, rss: rss})
		if rss > s.guard && !s.tripped {
			trip = "guard"
		}
	}
	if trip != "" {
		s.tripped, s.reason, s.trippedAt = true, trip, now
	}
	s.mu.Unlock()
	if trip != "" && s.onTrip != nil {
		s.onTrip(trip)
	}
	return rss
}

// trip reports whether the guard tripped, why and when.
func (s *rssSampler) trip() (bool, string, time.Time) {
	s.mu.Lock()
	defer s.mu.Unlock()
	return s.tripped, s.reason, s.trippedAt
}

// last is the latest reading (0 when none).
func (s *rssSampler) last() int64 {
	s.mu.Lock()
	defer s.mu.Unlock()
	if len(s.samples) == 0 {
		return 0
	}
	return s.samples[len(s.samples)-1].rss
}

// peak is the highest reading in [from, to) and when it was taken; ok is false when there is none.
func (s *rssSampler) peak(from, to time.Time) (rssSample, bool) {
	s.mu.Lock()
	defer s.mu.Unlock()
	var best rssSample
	ok := false
	for _, x := range s.samples {
		if x.at.Before(from) || !x.at.Before(to) {
			continue
		}
		if !ok || x.rss > best.rss {
			best, ok = x, true
		}
	}
	return best, ok
}

// at is the reading taken nearest to t, if one is within slack of it.
func (s *rssSampler) at(t time.Time, slack time.Duration) (int64, bool) {
	s.mu.Lock()
	defer s.mu.Unlock()
	best, ok := time.Duration(0), false
	var rss int64
	for _, x := range s.samples {
		d := x.at.Sub(t)
		if d < 0 {
			d = -d
		}
		if d <= slack && (!ok || d < best) {
			best, ok, rss = d, true, x.rss
		}
	}
	return rss, ok
}

// perSecondMiB is the highest reading of each second from start (MiB), up to end.
func (s *rssSampler) perSecondMiB(start, end time.Time) []int64 {
	s.mu.Lock()
	defer s.mu.Unlock()
	var out []int64
	for _, x := range s.samples {
		if x.at.Before(start) || x.at.After(end) {
			continue
		}
		i := int(x.at.Sub(start) / time.Second)
		for len(out) <= i {
			out = append(out, -1)
		}
		out[i] = max(out[i], x.rss>>20)
	}
	for i := range out { // a second without a reading (a stalled sampler) repeats the last one
		if out[i] < 0 && i > 0 {
			out[i] = out[i-1]
		}
	}
	return out
}

// Probe phases: each probe operation counts in the phase it started in.
const (
	phaseBefore = iota
	phaseDuring
	phaseAfter
	phaseCount
)

// Probe operations.
const (
	opPingProbe = iota
	opSendProbe
	opHealthzProbe
	opConnectProbe
	opProbeCount
)

var probeOpNames = [opProbeCount]string{"ping", "send", "healthz", "connect"}

// probeOpEvery is how often each probe operation runs (one at a time per kind: a slow answer
// delays the next attempt).
var probeOpEvery = [opProbeCount]time.Duration{100 * time.Millisecond, 100 * time.Millisecond, 200 * time.Millisecond, time.Second}

// opStats counts one probe operation in one phase.
type opStats struct {
	ok, failed atomic.Int64
	lat        *hist
}

// probeAnswer is what the probe's sender connection got back for one request.
type probeAnswer struct {
	kind protowire.Number
	code string // error code name, for kError
}

// probe is a well-behaved user while the attack runs: device A pings and sends to device B (which
// acks what it receives), GET /healthz on a fresh connection each time, and device C connects,
// authenticates and leaves. Each kind of operation runs in a loop of its own, with a timeout, and
// counts successes, failures (by reason) and latency per phase.
type probe struct {
	server  string
	d       *dialer
	timeout time.Duration
	a, b, c *account
	hc      *http.Client

	phase atomic.Int32
	stats [phaseCount][opProbeCount]opStats

	fmu      sync.Mutex // guards failures
	failures map[string]int64

	dialMu  sync.Mutex // held while (re)connecting A or B: a second connection of a device would replace the first
	mu      sync.Mutex // guards ca, cb, pending
	ca, cb  *wsConn
	pending map[uint64]chan probeAnswer
	nextID  atomic.Uint64

	wg      sync.WaitGroup // the operation loops and the connections' readers
	readers sync.WaitGroup
	cancel  context.CancelFunc
}

func newProbe(server string, d *dialer, timeout time.Duration, a, b, c *account) *probe {
	p := &probe{server: server, d: d, timeout: timeout, a: a, b: b, c: c,
		failures: map[string]int64{}, pending: map[uint64]chan probeAnswer{}}
	for i := range p.stats {
		for j := range p.stats[i] {
			p.stats[i][j].lat = newHist()
		}
	}
	nd := &net.Dialer{Timeout: timeout, KeepAlive: -1}
	p.hc = &http.Client{Timeout: timeout, Transport: &http.Transport{DialContext: nd.DialContext, DisableKeepAlives: true}}
	p.nextID.Store(1000)
	return p
}

// start runs the operation loops until stop.
func (p *probe) start(ctx context.Context) {
	ctx, p.cancel = context.WithCancel(ctx)
	for op := range opProbeCount {
		p.wg.Add(1)
		go func() {
			defer p.wg.Done()
			t := time.NewTicker(probeOpEvery[op])
			defer t.Stop()
			for {
				ph := int(p.phase.Load())
				st := time.Now()
				reason := p.do(ctx, op)
				if ctx.Err() != nil {
					return
				}
				s := &p.stats[ph][op]
				if reason == "" {
					s.ok.Add(1)
					s.lat.Record(time.Since(st))
				} else {
					s.failed.Add(1)
					p.fmu.Lock()
					p.failures[probeOpNames[op]+"_"+reason]++
					p.fmu.Unlock()
				}
				select {
				case <-t.C:
				case <-ctx.Done():
					return
				}
			}
		}()
	}
}

// stop ends the loops and closes the probe's connections.
func (p *probe) stop() {
	if p.cancel != nil {
		p.cancel()
	}
	p.wg.Wait()
	p.mu.Lock()
	for _, c := range []*wsConn{p.ca, p.cb} {
		if c != nil {
			_ = c.close()
		}
	}
	p.mu.Unlock()
	p.readers.Wait()
	p.hc.CloseIdleConnections()
}

// do runs one operation and returns "" on success or a short failure reason.
func (p *probe) do(ctx context.Context, op int) string {
	ctx, cancel := context.WithTimeout(ctx, p.timeout)
	defer cancel()
	switch op {
	case opPingProbe:
		return p.request(ctx, kPong, func(b []byte, id uint64) []byte { return appendPing(b, id, time.Now().UnixMilli()) })
	case opSendProbe:
		if _, err := p.conn(ctx, &p.cb, p.b, p.handleB); err != "" {
			return "receiver_" + err
		}
		var nonce [12]byte
		_, _ = rand.Read(nonce[:])
		msgID := hex.AppendEncode(nil, nonce[:]) // message ids are 1-64 of A-Z a-z 0-9 _ -
		var ct [32]byte
		return p.request(ctx, kSendResult, func(b []byte, id uint64) []byte {
			return appendSend(b, id, msgID, p.b.Name, p.b.DeviceID, ct[:])
		})
	case opHealthzProbe:
		req, err := http.NewRequestWithContext(ctx, http.MethodGet, p.server+"/healthz", nil)
		if err != nil {
			return "error"
		}
		resp, err := p.hc.Do(req)
		if err != nil {
			return netError(err).reason
		}
		_, _ = io.Copy(io.Discard, io.LimitReader(resp.Body, 4<<10))
		resp.Body.Close()
		if resp.StatusCode != http.StatusOK {
			return "http_" + strconv.Itoa(resp.StatusCode)
		}
		return ""
	case opConnectProbe:
		rep := newReport()
		c, err := p.d.connect(ctx, p.c, p.server, rep)
		if err != nil {
			var ce *connectError
			if errors.As(err, &ce) {
				return ce.reason
			}
			return "error"
		}
		_ = c.close()
		return ""
	}
	return "unknown_op"
}

// request sends one request on A and waits for the answer of kind want.
func (p *probe) request(ctx context.Context, want protowire.Number, build func(b []byte, id uint64) []byte) string {
	c, reason := p.conn(ctx, &p.ca, p.a, p.handleA)
	if reason != "" {
		return reason
	}
	id := p.nextID.Add(1)
	ch := make(chan probeAnswer, 1)
	p.mu.Lock()
	p.pending[id] = ch
	p.mu.Unlock()
	defer func() {
		p.mu.Lock()
		delete(p.pending, id)
		p.mu.Unlock()
	}()
	if err := c.cc.writeFrame(opBinary, build(nil, id), true); err != nil {
		return "write_" + netError(err).reason
	}
	select {
	case a := <-ch:
		switch {
		case a.kind == want:
			return ""
		case a.kind == kError:
			return "server_" + a.code
		case a.kind == kClosed:
			return "closed"
		}
		return fmt.Sprintf("unexpected_%d", a.kind)
	case <-ctx.Done():
		return "timeout"
	}
}

// conn returns the live connection in *slot, connecting acct again when it has ended.
func (p *probe) conn(ctx context.Context, slot **wsConn, acct *account, h handler) (*wsConn, string) {
	live := func() *wsConn {
		p.mu.Lock()
		c := *slot
		p.mu.Unlock()
		if c != nil {
			select {
			case <-c.done:
			default:
				return c
			}
		}
		return nil
	}
	if c := live(); c != nil {
		return c, ""
	}
	p.dialMu.Lock()
	defer p.dialMu.Unlock()
	if c := live(); c != nil { // another loop reconnected meanwhile
		return c, ""
	}
	rep := newReport()
	nc, err := p.d.connect(ctx, acct, p.server, rep)
	if err != nil {
		var ce *connectError
		if errors.As(err, &ce) {
			return nil, "connect_" + ce.reason
		}
		return nil, "connect_error"
	}
	p.mu.Lock()
	*slot = nc
	nc.start(&p.readers, h)
	p.mu.Unlock()
	return nc, ""
}

// handleA passes answers to the waiting requests.
func (p *probe) handleA(c *wsConn, f frameView) {
	a := probeAnswer{kind: f.kind}
	if f.kind == kError {
		a.code = pb.ErrorCodeName(parseError(f.body).GetCode())
	}
	p.mu.Lock()
	defer p.mu.Unlock()
	if f.kind == kClosed || (f.kind == kError && f.id == 0) { // fail every outstanding request
		for id, ch := range p.pending {
			select {
			case ch <- a:
			default:
			}
			delete(p.pending, id)
		}
		return
	}
	if ch, ok := p.pending[f.id]; ok && f.id != 0 {
		select {
		case ch <- a:
		default:
		}
		delete(p.pending, f.id)
	}
}

// handleB acks every delivery at once.
func (p *probe) handleB(c *wsConn, f frameView) {
	if f.kind != kDeliver {
		return
	}
	if tag, _, ok := parseDeliver(f.body); ok {
		var buf [32]byte
		_ = c.cc.writeFrame(opBinary, appendDeliverAck(buf[:0], []uint64{tag}), false)
	}
}

// failureReasons returns a copy of the failures by reason.
func (p *probe) failureReasons() map[string]int64 {
	p.fmu.Lock()
	defer p.fmu.Unlock()
	return maps.Clone(p.failures)
}
