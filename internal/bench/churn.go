// Copyright 2026 The Petrel Authors
// SPDX-License-Identifier: Apache-2.0

package bench

import (
	"context"
	"fmt"
	"sync"
	"sync/atomic"
	"time"
)

// churnShard connects, authenticates and closes at a fixed rate. Each of its accounts is one slot:
// at most len(Accounts) attempts are in flight, and a device never has two connections at once.
type churnShard struct {
	*shardBase
}

func (s *churnShard) step(ctx context.Context, name string, at time.Time) (*report, error) {
	switch name {
	case stepRun:
		return s.run(ctx, at), nil
	case stepClose:
		return newReport(), nil
	}
	return nil, fmt.Errorf("churn: unknown step %q", name)
}

func (s *churnShard) close() { s.shutdown() }

func (s *churnShard) run(ctx context.Context, at time.Time) *report {
	rep := newReport()
	rep.Connect = newHist()
	n := len(s.spec.Accounts)
	rate := s.spec.P.Rate
	d := s.spec.P.Duration
	total := int(rate * d.Seconds())
	work := make(chan int64, n) // scheduled times, Unix ns
	var (
		wg             sync.WaitGroup
		ok, okInWindow atomic.Int64
		failed         atomic.Int64
		lastOK         atomic.Int64
		mu             sync.Mutex
		end            = at.Add(d).UnixNano()
	)
	// No retries: a refused attempt is a result here, not an obstacle.
	dl := s.d.withRetries(0)
	for i := range n {
		wg.Add(1)
		go func() {
			defer wg.Done()
			a := &s.spec.Accounts[i]
			server := s.spec.server(i)
			for sched := range work {
				c, err := dl.connect(ctx, a, server, rep)
				if err != nil {
					failed.Add(1)
					continue
				}
				now := time.Now().UnixNano()
				rep.Connect.Record(time.Duration(now - sched))
				ok.Add(1)
				if now < end {
					okInWindow.Add(1)
				}
				for {
					v := lastOK.Load()
					if now <= v || lastOK.CompareAndSwap(v, now) {
						break
					}
				}
				if c.local != "" {
					mu.Lock()
					if !containsString(rep.SourceIPs, c.local) {
						rep.SourceIPs = append(rep.SourceIPs, c.local)
					}
					mu.Unlock()
				}
				// A close frame, then the socket, without waiting for the server's answer.
				if err := c.close(); err != nil {
					rep.error("close")
				}
			}
		}()
	}
	_ = sleepUntil(ctx, at)
	interval := d.Seconds() / float64(max(total, 1))
	var skipped int64
	for k := range total {
		t := at.Add(time.Duration(float64(k) * interval * float64(time.Second)))
		if err := sleepUntil(ctx, t); err != nil {
			break
		}
		select {
		case work <- t.UnixNano():
		default:
			skipped++ // every slot is busy and the queue is full
		}
	}
	close(work)
	wg.Wait()
	rep.Conns = ok.Load()
	rep.Acked = okInWindow.Load() // successful connects within the window
	rep.ConnFailed = failed.Load()
	rep.Skipped = skipped
	rep.Start = at.UnixNano()
	rep.End = max(lastOK.Load(), rep.Start)
	return rep
}

// churn is the coordinator of the churn scenario.
func (r *run) churn(ctx context.Context) error {
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
		p.Rate = cfg.Rate * float64(n) / float64(cfg.Conns)
		specs = append(specs, &shardSpec{Index: i, SourceIP: ips[i], Accounts: accts[base : base+n], P: p})
		base += n
	}
	cl, err := r.startShards(ctx, specs)
	if err != nil {
		return err
	}
	defer cl.close()
	r.logf("churning: %.0f connects/s for %v, at most %d at once …", cfg.Rate, cfg.Duration, cfg.Conns)
	run, cpu, err := r.timed(ctx, cl, stepRun, cfg.Duration)
	if err != nil {
		return err
	}
	res := r.res
	res.set("conns", int64(cfg.Conns), "devices; most connections in flight at once")
	res.set("prekeys_per_kind", int64(cfg.PreKeys), "one-time EC and ML-KEM prekeys uploaded per device")
	res.set("rate", cfg.Rate, "offered connects/s")
	res.set("run_s", cfg.Duration.Seconds(), "")
	res.set("attempts", run.Conns+run.ConnFailed, "")
	res.set("connected", run.Conns, "authenticated, then closed")
	res.set("connects_per_s", perSecond(run.Acked, cfg.Duration), "successful connects per second (in the window)")
	res.set("connect_p50_ms", ms(run.Connect.Quantile(0.50)), "scheduled time → Welcome")
	res.set("connect_p99_ms", ms(run.Connect.Quantile(0.99)), "")
	res.set("connect_p999_ms", ms(run.Connect.Quantile(0.999)), "")
	res.set("skipped", run.Skipped, "scheduled attempts dropped: all slots busy")
	r.addCPU(cpu, -1)
	r.addServerRSS(cl, "after the run")
	if cpu.serverOK && run.Conns > 0 {
		res.set("server_cpu_us_per_conn", float64(cpu.server.Microseconds())/float64(run.Conns), "")
	}
	res.set("source_ips", run.SourceIPs, "")
	r.addErrors(run)
	return nil
}
