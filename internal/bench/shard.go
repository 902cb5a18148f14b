// Copyright 2026 The Petrel Authors
// SPDX-License-Identifier: Apache-2.0

package bench

import (
	"context"
	"fmt"
	"math/bits"
	"net"
	"net/url"
	"sync"
	"time"
)

// A scenario runs on one or more shards. A shard holds some of the connections; it runs in this
// process, or in a worker process (past MaxConnsPerProcess connections) that dials from its own
// loopback source address. The coordinator drives every shard through the same named steps at
// the same moments and merges their reports.

// Step names.
const (
	stepConnect = "connect" // open the shard's connections (relay: receivers, then senders)
	stepPing    = "ping"    // idle: ping a sample of the held connections
	stepRun     = "run"     // relay, churn: the timed load
	stepStore   = "store"   // offline: senders store messages for offline recipients
	stepDrain   = "drain"   // offline: recipients connect and drain
	stepVerify  = "verify"  // offline: recipients reconnect; nothing may be left stored
	stepClose   = "close"   // close every connection
)

// stepLabel names a step in progress lines.
func stepLabel(step string) string {
	switch step {
	case stepRun:
		return "running"
	case stepStore:
		return "storing"
	case stepDrain:
		return "draining"
	}
	return step
}

// shardSpec is everything one shard needs to play its part.
type shardSpec struct {
	Scenario string   `json:"scenario"`
	Index    int      `json:"index"`
	Servers  []string `json:"servers"`
	// ConnBase is the global index of this shard's first account: connection i of the run goes
	// to Servers[i % len(Servers)].
	ConnBase int         `json:"conn_base"`
	SourceIP string      `json:"source_ip,omitempty"`
	Accounts []account   `json:"accounts"`
	P        shardParams `json:"params"`
	Deadline time.Time   `json:"deadline"`
}

// shardParams are the scenario's parameters, with rates and counts scaled to this shard.
type shardParams struct {
	Size           int           `json:"size"`
	Window         int           `json:"window"`
	Rate           float64       `json:"rate,omitempty"` // this shard's share
	Duration       time.Duration `json:"duration,omitempty"`
	PingSample     int           `json:"ping_sample,omitempty"` // this shard's share
	Concurrency    int           `json:"concurrency"`
	ConnectRate    float64       `json:"connect_rate,omitempty"` // this shard's share, new connections a second
	Retries        int           `json:"retries"`
	ConnectTimeout time.Duration `json:"connect_timeout"`
	DrainTimeout   time.Duration `json:"drain_timeout"`
	PairBase       int           `json:"pair_base,omitempty"` // relay: global index of the first pair
	Senders        int           `json:"senders,omitempty"`   // offline: the first Senders accounts send
	Messages       int           `json:"messages,omitempty"`  // offline: messages this shard stores
}

// server is the server account i is registered on.
func (s *shardSpec) server(i int) string { return s.Servers[s.Accounts[i].Server] }

// serverOf is the server a device is registered on.
func (s *shardSpec) serverOf(a *account) string { return s.Servers[a.Server] }

// runner is a scenario's shard-side logic.
type runner interface {
	step(ctx context.Context, name string, at time.Time) (*report, error)
	close()
}

func newRunner(spec *shardSpec) (runner, error) {
	if len(spec.Servers) == 0 {
		return nil, fmt.Errorf("no server")
	}
	base := newShardBase(spec)
	switch spec.Scenario {
	case ScenarioIdle:
		return &idleShard{shardBase: base}, nil
	case ScenarioRelay:
		return newRelayShard(base)
	case ScenarioOffline:
		return newOfflineShard(base)
	case ScenarioChurn:
		return &churnShard{shardBase: base}, nil
	}
	return nil, fmt.Errorf("unknown scenario %q", spec.Scenario)
}

// shardBase is what every scenario's shard shares: its spec, its dialer and its goroutines.
type shardBase struct {
	spec *shardSpec
	d    *dialer
	wg   sync.WaitGroup // reader loops and helpers
}

func newShardBase(spec *shardSpec) *shardBase {
	return &shardBase{spec: spec, d: newDialer(spec.SourceIP, spec.P.Retries, spec.P.ConnectTimeout)}
}

// connectAll connects the accounts idx (indexes into spec.Accounts) with spec.P.Concurrency
// dials in flight, starts each connection's reader with h, and returns the connections in the
// order of idx (nil where it failed). setup runs on each connection before its reader starts.
func (b *shardBase) connectAll(ctx context.Context, idx []int, rep *report, h handler, setup func(i int, c *wsConn)) []*wsConn {
	devs := make([]*account, len(idx))
	for j, i := range idx {
		devs[j] = &b.spec.Accounts[i]
	}
	var set func(int, *wsConn)
	if setup != nil {
		set = func(j int, c *wsConn) { setup(idx[j], c) }
	}
	return b.connectDevices(ctx, devs, rep, h, set)
}

// connectDevices connects the devices devs (primaries or companions of spec.Accounts) as
// connectAll does; setup gets the index into devs.
func (b *shardBase) connectDevices(ctx context.Context, devs []*account, rep *report, h handler, setup func(j int, c *wsConn)) []*wsConn {
	conns := make([]*wsConn, len(devs))
	if rep.Connect == nil {
		rep.Connect = newHist()
	}
	work := make(chan int)
	var wg sync.WaitGroup
	var mu sync.Mutex
	for range min(max(1, b.spec.P.Concurrency), len(devs)) {
		wg.Add(1)
		go func() {
			defer wg.Done()
			for j := range work {
				a := devs[j]
				t := time.Now()
				c, err := b.d.connect(ctx, a, b.spec.serverOf(a), rep)
				if err != nil {
					mu.Lock()
					rep.ConnFailed++
					mu.Unlock()
					continue
				}
				rep.Connect.Record(time.Since(t))
				if setup != nil {
					setup(j, c)
				}
				c.start(&b.wg, h)
				conns[j] = c
				mu.Lock()
				rep.Conns++
				if c.local != "" && !containsString(rep.SourceIPs, c.local) {
					rep.SourceIPs = append(rep.SourceIPs, c.local)
				}
				mu.Unlock()
			}
		}()
	}
	// Paced (ConnectRate): device j is handed out no earlier than j/rate after the start.
	var interval time.Duration
	if r := b.spec.P.ConnectRate; r > 0 {
		interval = time.Duration(float64(time.Second) / r)
	}
	start := time.Now()
feed:
	for j := range devs {
		if interval > 0 && j > 0 {
			if sleepUntil(ctx, start.Add(time.Duration(j)*interval)) != nil {
				break feed
			}
		}
		select {
		case work <- j:
		case <-ctx.Done():
			break feed
		}
	}
	close(work)
	wg.Wait()
	return conns
}

func containsString(s []string, v string) bool {
	for _, x := range s {
		if x == v {
			return true
		}
	}
	return false
}

// closeConns closes connections (a close frame, bounded by closeTimeout, then the socket; 256 at a
// time), then waits for their readers.
func (b *shardBase) closeConns(conns ...[]*wsConn) {
	work := make(chan *wsConn)
	var wg sync.WaitGroup
	for range 256 {
		wg.Add(1)
		go func() {
			defer wg.Done()
			for c := range work {
				_ = c.close()
			}
		}()
	}
	for _, cs := range conns {
		for _, c := range cs {
			if c != nil {
				work <- c
			}
		}
	}
	close(work)
	wg.Wait()
	for _, cs := range conns {
		for _, c := range cs {
			if c != nil {
				<-c.done
			}
		}
	}
}

// closeTimeout bounds the write of a close frame.
const closeTimeout = 3 * time.Second

func (b *shardBase) shutdown() {
	b.wg.Wait()
}

// sleepUntil waits until t or ctx ends.
func sleepUntil(ctx context.Context, t time.Time) error {
	d := time.Until(t)
	if d <= 0 {
		return ctx.Err()
	}
	tm := time.NewTimer(d)
	defer tm.Stop()
	select {
	case <-tm.C:
		return nil
	case <-ctx.Done():
		return ctx.Err()
	}
}

// bitset is a growable set of small integers (message sequence numbers).
type bitset struct{ w []uint64 }

// set adds i and reports whether it was already there.
func (b *bitset) set(i uint64) bool {
	k := int(i / 64)
	if k >= len(b.w) {
		b.w = append(b.w, make([]uint64, k+1-len(b.w)+len(b.w)/2)...)
	}
	m := uint64(1) << (i % 64)
	was := b.w[k]&m != 0
	b.w[k] |= m
	return was
}

func (b *bitset) count() int {
	n := 0
	for _, w := range b.w {
		n += bits.OnesCount64(w)
	}
	return n
}

// andNotCount counts the members of a that are not in o.
func (b *bitset) andNotCount(o *bitset) int {
	n := 0
	for k, w := range b.w {
		if k < len(o.w) {
			w &^= o.w[k]
		}
		n += bits.OnesCount64(w)
	}
	return n
}

// IsLoopback reports whether a server URL's host is a loopback address (127.0.0.0/8, ::1 or
// localhost): the only targets the load generator accepts.
func IsLoopback(server string) bool {
	u, err := url.Parse(server)
	if err != nil {
		return false
	}
	h := u.Hostname()
	if h == "localhost" {
		return true
	}
	ip := net.ParseIP(h)
	return ip != nil && ip.IsLoopback()
}

// ipv4Servers reports whether every server is reached over IPv4 (so that workers can dial from
// 127.0.0.x source addresses).
func ipv4Servers(servers []string) bool {
	for _, s := range servers {
		u, err := url.Parse(s)
		if err != nil {
			return false
		}
		h := u.Hostname()
		if h == "localhost" {
			continue
		}
		ip := net.ParseIP(h)
		if ip == nil || ip.To4() == nil {
			return false
		}
	}
	return true
}
