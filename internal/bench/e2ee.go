// Copyright 2026 The Petrel Authors
// SPDX-License-Identifier: Apache-2.0

package bench

import (
	"context"
	"crypto/ed25519"
	"errors"
	"fmt"
	"os"
	"path/filepath"
	"strconv"
	"strings"
	"sync"
	"sync/atomic"
	"time"

	"github.com/petrelchat/petrel/client"
	"github.com/petrelchat/petrel/client/store"
	pb "github.com/petrelchat/petrel/proto/petrel/v1"
)

// e2eeOneTime is how many one-time prekeys of each kind an --e2ee device registers (and keeps:
// the SDK's PreKeyBatch), enough for the one session each pair opens.
const e2eeOneTime = 2

// e2eeDevice is one SDK client with its own temporary home.
type e2eeDevice struct {
	acct   *account
	st     *store.Store
	c      *client.Client
	events chan client.Event
}

// openE2EEDevice writes a bulk-registered device's keys into a fresh store, as client.Register
// would have, and opens an SDK client on it.
func openE2EEDevice(dir, server string, a *account, k *deviceKeys) (*e2eeDevice, error) {
	st, err := newDeviceStore(dir, server, a, k)
	if err != nil {
		return nil, err
	}
	events := make(chan client.Event, 256)
	// A load generator files no problem reports of its own.
	c, err := client.Open(client.Config{Store: st, Events: events, PreKeyBatch: e2eeOneTime, NoAutoReport: true})
	if err != nil {
		st.Close()
		return nil, err
	}
	return &e2eeDevice{acct: a, st: st, c: c, events: events}, nil
}

// newDeviceStore writes a bulk-registered device's keys into a fresh store (no fsync), as
// client.Register would have.
func newDeviceStore(dir, server string, a *account, k *deviceKeys) (*store.Store, error) {
	st, err := store.Open(dir, store.Options{NoSync: true})
	if err != nil {
		return nil, err
	}
	now := time.Now()
	err = st.Update(func(tx *store.Tx) error {
		idRaw, err := k.identity.MarshalBinary()
		if err != nil {
			return err
		}
		spRaw, err := k.signed.MarshalBinary()
		if err != nil {
			return err
		}
		if err := tx.PutSignedPreKey(&store.SignedPreKey{ID: k.signed.Public().ID, Pair: spRaw, CreatedAt: now}); err != nil {
			return err
		}
		lrRaw, err := k.kemLast.MarshalBinary()
		if err != nil {
			return err
		}
		if err := tx.PutKEMPreKey(&store.KEMPreKey{ID: k.kemLast.Public().ID, Pair: lrRaw, LastResort: true, CreatedAt: now}); err != nil {
			return err
		}
		for _, kp := range k.kem {
			raw, err := kp.MarshalBinary()
			if err != nil {
				return err
			}
			if err := tx.PutKEMPreKey(&store.KEMPreKey{ID: kp.Public().ID, Pair: raw, CreatedAt: now}); err != nil {
				return err
			}
		}
		for _, o := range k.oneTime {
			raw, err := o.MarshalBinary()
			if err != nil {
				return err
			}
			if err := tx.PutOneTimePreKey(o.Public().ID, raw); err != nil {
				return err
			}
		}
		return tx.PutAccount(&store.Account{
			ServerURL: server, Name: a.Name, DeviceID: a.DeviceID,
			AuthKey: []byte(ed25519.NewKeyFromSeed(a.Seed)), Identity: idRaw,
			Registered: true, RegisteredAt: now,
			NextSignedPreKeyID:  k.signed.Public().ID,
			NextOneTimePreKeyID: uint32(len(k.oneTime)),
			NextKEMPreKeyID:     uint32(1 + len(k.kem)),
		})
	})
	if err != nil {
		st.Close()
		return nil, err
	}
	return st, nil
}

// e2eePair is one SDK sender → receiver stream.
type e2eePair struct {
	idx          int
	sender, recv *e2eeDevice
	next         atomic.Uint64

	mu      sync.Mutex // guards the fields below
	acked   bitset
	got     bitset
	maxSeen int64
}

func e2eeText(seq uint64, ts int64, pair, size int) string {
	s := fmt.Sprintf("%d %d %d ", seq, ts, pair)
	if len(s) < size {
		s += strings.Repeat("x", size-len(s))
	}
	return s
}

func parseE2EEText(t string) (seq uint64, ts int64, pair int, ok bool) {
	f := strings.SplitN(t, " ", 4)
	if len(f) < 3 {
		return 0, 0, 0, false
	}
	var e1, e2, e3 error
	seq, e1 = strconv.ParseUint(f[0], 10, 64)
	ts, e2 = strconv.ParseInt(f[1], 10, 64)
	pair, e3 = strconv.Atoi(f[2])
	return seq, ts, pair, e1 == nil && e2 == nil && e3 == nil
}

// relayE2EE is relay with real Signal sessions through the SDK (client/ + client/store) in
// temporary homes, in this process. Each SDK client sends one message at a time; Window is the
// number of Send callers per pair.
func (r *run) relayE2EE(ctx context.Context) error {
	cfg := r.cfg
	accts, keys, err := r.register(ctx, 2*cfg.Pairs, e2eeOneTime, true)
	if err != nil {
		return err
	}
	dir, err := os.MkdirTemp("", "petrel-bench-e2ee-")
	if err != nil {
		return err
	}
	defer os.RemoveAll(dir)
	runCtx, stop := context.WithCancel(ctx)
	defer stop()

	rep := newReport()
	lat, ackH := newHist(), newHist()
	var (
		wg                        sync.WaitGroup
		delivered, deliveredInWin atomic.Int64
		dups, order               atomic.Int64
		connected                 atomic.Int64
		end                       atomic.Int64
	)
	pairs := make([]*e2eePair, cfg.Pairs)
	var devices []*e2eeDevice
	defer func() {
		stop()
		for _, d := range devices {
			d.c.Close()
		}
		wg.Wait()
		for _, d := range devices {
			d.st.Close()
		}
	}()
	pairOf := map[*e2eeDevice]*e2eePair{}
	for i := range pairs {
		p := &e2eePair{idx: i, maxSeen: -1}
		for role := range 2 {
			j := 2*i + role
			d, err := openE2EEDevice(filepath.Join(dir, strconv.Itoa(j)), cfg.Servers[accts[j].Server], &accts[j], keys[j])
			if err != nil {
				return fmt.Errorf("e2ee device %d: %w", j, err)
			}
			devices = append(devices, d)
			if role == 0 {
				p.sender = d
			} else {
				p.recv = d
			}
			pairOf[d] = p
		}
		pairs[i] = p
	}
	for _, d := range devices {
		p := pairOf[d]
		isRecv := d == p.recv
		wg.Add(2)
		go func() {
			defer wg.Done()
			_ = d.c.Run(runCtx)
		}()
		go func() {
			defer wg.Done()
			for {
				var ev client.Event
				select {
				case ev = <-d.events:
				case <-runCtx.Done():
					return
				}
				switch e := ev.(type) {
				case *client.Connected:
					if !isRecv {
						connected.Add(1)
					}
				case *client.QueueEmpty:
					if isRecv {
						connected.Add(1)
					}
				case *client.Message:
					now := time.Now().UnixNano()
					seq, ts, pi, ok := parseE2EEText(e.Text)
					if !ok || pi != p.idx || e.From != p.sender.acct.Name {
						rep.error("bad_payload")
						continue
					}
					p.mu.Lock()
					dup := p.got.set(seq)
					if !dup && int64(seq) < p.maxSeen {
						order.Add(1)
					}
					p.maxSeen = max(p.maxSeen, int64(seq))
					p.mu.Unlock()
					if dup {
						dups.Add(1)
						continue
					}
					lat.Record(time.Duration(now - ts))
					delivered.Add(1)
					if now < end.Load() {
						deliveredInWin.Add(1)
					}
				case *client.DecryptFailed:
					rep.error("decrypt_failed")
				case *client.SendFailed:
					rep.error("send_failed")
				case *client.Disconnected:
					if runCtx.Err() == nil {
						rep.error("disconnected")
					}
				}
			}
		}()
	}
	r.logf("e2ee: %d SDK clients connecting …", len(devices))
	t := time.Now()
	for connected.Load() < int64(len(devices)) && time.Since(t) < cfg.ConnectTimeout*2 && ctx.Err() == nil {
		time.Sleep(10 * time.Millisecond)
	}
	conns := connected.Load()
	if conns < int64(len(devices)) {
		return fmt.Errorf("e2ee: only %d of %d clients connected within %v", conns, len(devices), cfg.ConnectTimeout*2)
	}
	conn := newReport()
	conn.Conns = conns
	conn.span(t, time.Now())

	at := time.Now().Add(100 * time.Millisecond)
	end.Store(at.Add(cfg.Duration).UnixNano())
	cl := &cluster{cfg: cfg, shards: []shardHandle{&localShard{}}}
	var sent, acked, ackedInWin atomic.Int64
	var senders sync.WaitGroup
	for _, p := range pairs {
		for range cfg.Window {
			senders.Add(1)
			go func() {
				defer senders.Done()
				_ = sleepUntil(runCtx, at)
				for time.Now().UnixNano() < end.Load() && runCtx.Err() == nil {
					seq := p.next.Add(1) - 1
					ts := time.Now()
					sent.Add(1)
					sctx, cancel := context.WithTimeout(runCtx, 30*time.Second)
					_, err := p.sender.c.Send(sctx, p.recv.acct.Name, e2eeText(seq, ts.UnixNano(), p.idx, cfg.Size))
					cancel()
					now := time.Now()
					if err != nil {
						var ce *client.Error
						if errors.As(err, &ce) {
							rep.error("send_" + pb.ErrorCodeName(ce.Code))
						} else {
							rep.error("send_error")
						}
						continue
					}
					ackH.Record(now.Sub(ts))
					acked.Add(1)
					if now.UnixNano() < end.Load() {
						ackedInWin.Add(1)
					}
					p.mu.Lock()
					p.acked.set(seq)
					p.mu.Unlock()
				}
			}()
		}
	}
	_ = sleepUntil(ctx, at)
	c0 := cl.sampleCPU()
	_ = sleepUntil(ctx, at.Add(cfg.Duration))
	c1 := cl.sampleCPU()
	senders.Wait()
	drainEnd := time.Now().Add(cfg.DrainTimeout)
	var lost int64
	for {
		lost = 0
		for _, p := range pairs {
			p.mu.Lock()
			lost += int64(p.acked.andNotCount(&p.got))
			p.mu.Unlock()
		}
		if lost == 0 || time.Now().After(drainEnd) || ctx.Err() != nil {
			break
		}
		time.Sleep(20 * time.Millisecond)
	}
	run := newReport()
	run.Sent, run.Acked, run.AckedInWindow = sent.Load(), acked.Load(), ackedInWin.Load()
	run.Delivered, run.DeliveredInWindow = delivered.Load(), deliveredInWin.Load()
	// One device per account (Validate): every delivery is a device delivery.
	run.DeviceDeliveries, run.DeviceDeliveriesInWindow = run.Delivered, run.DeliveredInWindow
	run.Duplicates, run.Lost = dups.Load(), lost
	run.OrderViolations = order.Load()
	run.Latency, run.Ack = lat, ackH
	rep.mu.Lock()
	for k, v := range rep.Errors {
		run.Errors[k] += v
	}
	rep.mu.Unlock()
	r.res.set("workers", int64(0), "")
	r.relayResult(conn, run, c0.to(c1))
	r.addServerRSS(cl, "after the window, all connections open")
	if cfg.Window > 1 {
		r.res.set("order_violations", nil, "not checked: several Send callers per pair race into the SDK's outbox")
	}
	r.res.set("e2ee", true, "SDK clients: each message encrypted, persisted on both sides, and answered by an encrypted delivery receipt (a second message through the server)")
	return nil
}
