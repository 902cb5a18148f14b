// Copyright 2026 The Petrel Authors
// SPDX-License-Identifier: Apache-2.0

package bench

import (
	"context"
	"fmt"
	"strconv"
	"sync"
	"sync/atomic"
	"time"

	pb "github.com/petrelchat/petrel/proto/petrel/v1"
)

// maxSendAttempts bounds the attempts at one offline message refused with a retryable error.
const maxSendAttempts = 5

// offlineShard stores messages for offline recipients, then drains them. Accounts [0, Senders)
// send, the rest receive. Message j (0 ≤ j < Messages) goes from sender j % S to recipient j % R.
type offlineShard struct {
	*shardBase
	nS, nR, m int
	senders   []*offSender
	sconns    []*wsConn
	rconns    []*wsConn
	recips    []*offRecipient

	rep *report // errors counted by handlers
	cnt counters
	ack *hist

	mu     sync.Mutex // guards stored and recv
	stored bitset     // acked (durably stored) messages
	recv   bitset     // received messages

	qEmpty  atomic.Int64 // recipients that saw QueueEmpty
	barrier atomic.Int64 // recipients whose acks are known processed (Pong after the last ack)
	left    atomic.Int64 // verify: envelopes still stored
}

type offSender struct {
	s   *offlineShard
	idx int
	c   *wsConn

	mu       sync.Mutex // guards the fields below
	next     int        // next message index to send
	retry    []int      // refused messages to send again
	attempts map[int]int
	inflight int
	sentAt   map[int]int64
	broken   bool
	buf      []byte
	payload  []byte
	msgID    []byte
}

type offRecipient struct {
	idx int
	c   *wsConn
	// Used only by the recipient's reader goroutine.
	tags      []uint64
	ackBuf    []byte
	last      map[uint32]int64 // last message index seen per sender
	qe        bool
	pingID    uint64
	barrierOK bool
}

func newOfflineShard(b *shardBase) (*offlineShard, error) {
	nS := b.spec.P.Senders
	nR := len(b.spec.Accounts) - nS
	if nS <= 0 || nR <= 0 {
		return nil, fmt.Errorf("offline shard %d: %d senders, %d recipients", b.spec.Index, nS, nR)
	}
	s := &offlineShard{shardBase: b, nS: nS, nR: nR, m: b.spec.P.Messages, rep: newReport(), ack: newHist()}
	for i := range nS {
		s.senders = append(s.senders, &offSender{s: s, idx: i, next: i, attempts: map[int]int{}, sentAt: map[int]int64{}, payload: newPayload(b.spec.P.Size)})
	}
	for i := range nR {
		s.recips = append(s.recips, &offRecipient{idx: i, last: map[uint32]int64{}})
	}
	return s, nil
}

func (s *offlineShard) step(ctx context.Context, name string, at time.Time) (*report, error) {
	switch name {
	case stepConnect:
		rep := newReport()
		t := time.Now()
		idx := make([]int, s.nS)
		for i := range idx {
			idx[i] = i
		}
		s.sconns = s.connectAll(ctx, idx, rep, s.onSender, func(i int, c *wsConn) {
			c.user = i
			s.senders[i].c = c
		})
		rep.span(t, time.Now())
		return rep, nil
	case stepStore:
		return s.store(ctx, at), nil
	case stepDrain:
		return s.drain(ctx, at), nil
	case stepVerify:
		return s.verify(ctx), nil
	case stepClose:
		s.closeConns(s.sconns, s.rconns)
		s.sconns, s.rconns = nil, nil
		return newReport(), nil
	}
	return nil, fmt.Errorf("offline: unknown step %q", name)
}

func (s *offlineShard) close() {
	s.closeConns(s.sconns, s.rconns)
	s.shutdown()
}

// takeErrors moves the handlers' error counts into rep.
func (s *offlineShard) takeErrors(rep *report) {
	s.rep.mu.Lock()
	for k, v := range s.rep.Errors {
		rep.Errors[k] += v
	}
	clear(s.rep.Errors)
	s.rep.mu.Unlock()
}

func (s *offlineShard) store(ctx context.Context, at time.Time) *report {
	rep := newReport()
	_ = sleepUntil(ctx, at)
	for _, snd := range s.senders {
		if snd.c == nil {
			continue
		}
		snd.mu.Lock()
		snd.pumpLocked()
		snd.mu.Unlock()
	}
	deadline := time.Now().Add(s.spec.P.DrainTimeout)
	lastReclaim := time.Now()
	for ctx.Err() == nil && time.Now().Before(deadline) {
		if time.Since(lastReclaim) >= time.Second {
			lastReclaim = time.Now()
			for _, snd := range s.senders {
				snd.reclaim(lastReclaim.UnixNano())
			}
		}
		busy := false
		for _, snd := range s.senders {
			snd.mu.Lock()
			if snd.c != nil && !snd.broken && (snd.next < s.m || snd.inflight > 0 || len(snd.retry) > 0) {
				busy = true
			}
			snd.mu.Unlock()
		}
		if !busy {
			break
		}
		time.Sleep(10 * time.Millisecond)
	}
	var unsent int64
	for _, snd := range s.senders {
		snd.mu.Lock()
		for j := snd.next; j < s.m; j += s.nS {
			unsent++
		}
		unsent += int64(snd.inflight + len(snd.retry))
		snd.mu.Unlock()
	}
	if unsent > 0 {
		rep.Errors["not_stored"] += unsent
	}
	// Senders are done: close them before the recipients come online.
	s.closeConns(s.sconns)
	s.sconns = nil
	s.takeErrors(rep)
	rep.Sent = s.cnt.sent.Load()
	rep.Acked = s.cnt.acked.Load()
	rep.Ack = s.ack
	rep.Start = at.UnixNano()
	rep.End = max(s.cnt.lastEvent.Load(), rep.Start)
	return rep
}

func (snd *offSender) pumpLocked() {
	s := snd.s
	for !snd.broken && snd.inflight < s.spec.P.Window {
		var j int
		switch {
		case len(snd.retry) > 0:
			j = snd.retry[0]
			snd.retry = snd.retry[1:]
		case snd.next < s.m:
			j = snd.next
			snd.next += s.nS
		default:
			return
		}
		r := j % s.nR
		acct := &s.spec.Accounts[s.nS+r]
		now := time.Now().UnixNano()
		putHeader(snd.payload, uint64(j), now, uint32(r), uint32(snd.idx))
		snd.msgID = strconv.AppendUint(append(snd.msgID[:0], 'o'), uint64(j), 36)
		snd.buf = appendSend(snd.buf[:0], uint64(j)+sendIDBase, snd.msgID, acct.Name, acct.DeviceID, snd.payload)
		if err := snd.c.write(snd.buf); err != nil {
			snd.broken = true
			s.rep.error("write")
			return
		}
		if snd.attempts[j] == 0 {
			s.cnt.sent.Add(1)
		}
		snd.attempts[j]++
		snd.sentAt[j] = now
		snd.inflight++
	}
}

// reclaim resends (same message id: idempotent) the sends unanswered for answerTimeout.
func (snd *offSender) reclaim(now int64) {
	var n int64
	snd.mu.Lock()
	for j, at := range snd.sentAt {
		if now-at <= int64(answerTimeout) {
			continue
		}
		delete(snd.sentAt, j)
		snd.inflight--
		n++
		if snd.attempts[j] < maxSendAttempts {
			snd.retry = append(snd.retry, j)
		} else {
			delete(snd.attempts, j)
		}
	}
	if n > 0 {
		snd.pumpLocked()
	}
	snd.mu.Unlock()
	if n > 0 {
		snd.s.rep.mu.Lock()
		snd.s.rep.Errors["send_unanswered"] += n
		snd.s.rep.mu.Unlock()
	}
}

func (s *offlineShard) onSender(c *wsConn, f frameView) {
	snd := s.senders[c.user]
	switch f.kind {
	case kSendResult:
		// The recipients are offline, so an acked send is a stored one. (SendResult no longer
		// says live or stored: that was a presence oracle.)
		snd.answer(f.id, nil)
	case kError:
		e := parseError(f.body)
		if f.id == 0 {
			s.rep.error("server_" + pb.ErrorCodeName(e.GetCode()))
			return
		}
		snd.answer(f.id, e)
	case kGoAway:
		s.rep.error("goaway")
	case kClosed:
		if !c.closing.Load() {
			s.rep.error("sender_conn_lost")
			snd.mu.Lock()
			snd.broken = true
			snd.mu.Unlock()
		}
	case kMalformed:
		s.rep.error("malformed_frame")
	}
}

func (snd *offSender) answer(id uint64, e *pb.Error) {
	s := snd.s
	now := time.Now().UnixNano()
	j := int(id) - sendIDBase
	snd.mu.Lock()
	at, ok := snd.sentAt[j]
	if !ok {
		snd.mu.Unlock()
		s.rep.error("late_or_unknown_answer")
		return
	}
	delete(snd.sentAt, j)
	snd.inflight--
	if e == nil {
		delete(snd.attempts, j)
		s.mu.Lock()
		dup := s.stored.set(uint64(j))
		s.mu.Unlock()
		if !dup {
			s.cnt.acked.Add(1)
			s.ack.Record(time.Duration(now - at))
			s.cnt.touch(now)
		}
	} else {
		retryable := e.GetCode() == pb.ErrorCode_ERROR_CODE_UNAVAILABLE || e.GetCode() == pb.ErrorCode_ERROR_CODE_RATE_LIMITED
		if retryable && snd.attempts[j] < maxSendAttempts {
			snd.retry = append(snd.retry, j)
		} else {
			delete(snd.attempts, j)
		}
	}
	snd.pumpLocked()
	snd.mu.Unlock()
	if e != nil {
		s.rep.error("send_" + pb.ErrorCodeName(e.GetCode()))
	}
}

func (s *offlineShard) recipientIdx() []int {
	idx := make([]int, s.nR)
	for i := range idx {
		idx[i] = s.nS + i
	}
	return idx
}

func (s *offlineShard) drain(ctx context.Context, at time.Time) *report {
	rep := newReport()
	_ = sleepUntil(ctx, at)
	s.rconns = s.connectAll(ctx, s.recipientIdx(), rep, s.onRecipient, func(i int, c *wsConn) {
		rc := s.recips[i-s.nS]
		c.user = i - s.nS
		rc.c = c
		c.cc.onIdle = rc.flushAcks
	})
	want := awaitCount(ctx, s.rconns, &s.barrier, s.spec.P.DrainTimeout)
	end := s.cnt.lastEvent.Load()
	if n := want - s.qEmpty.Load(); n > 0 {
		rep.Errors["drain_timeout"] += n
	}
	s.closeConns(s.rconns)
	s.rconns = nil
	for _, rc := range s.recips {
		rc.c = nil
	}
	s.takeErrors(rep)
	s.mu.Lock()
	rep.Lost = int64(s.stored.andNotCount(&s.recv))
	s.mu.Unlock()
	rep.Delivered = s.cnt.delivered.Load()
	rep.Duplicates = s.cnt.duplicates.Load()
	rep.OrderViolations = s.cnt.orderViolations.Load()
	rep.Start = at.UnixNano()
	rep.End = max(end, rep.Start)
	return rep
}

func (s *offlineShard) onRecipient(c *wsConn, f frameView) {
	rc := s.recips[c.user]
	switch f.kind {
	case kDeliver:
		tag, ct, ok := parseDeliver(f.body)
		if !ok {
			s.rep.error("malformed_deliver")
			return
		}
		rc.tags = append(rc.tags, tag)
		j, _, stream, sender, ok := readHeader(ct)
		if !ok || int(stream) != rc.idx || j >= uint64(s.m) || int(j)%s.nR != rc.idx {
			s.rep.error("bad_payload")
			return
		}
		now := time.Now().UnixNano()
		s.mu.Lock()
		dup := s.recv.set(j)
		s.mu.Unlock()
		if dup {
			s.cnt.duplicates.Add(1)
		} else {
			s.cnt.delivered.Add(1)
			s.cnt.touch(now)
			if last, seen := rc.last[sender]; seen && int64(j) < last {
				s.cnt.orderViolations.Add(1)
			}
			rc.last[sender] = max(rc.last[sender], int64(j))
		}
		if len(rc.tags) >= 256 {
			rc.flushAcks()
		}
	case kQueueEmpty:
		if rc.qe {
			return
		}
		rc.qe = true
		s.qEmpty.Add(1)
		s.cnt.touch(time.Now().UnixNano())
		// Barrier: frames of one connection are handled in order, so the Pong comes after the
		// server has handled every DeliverAck sent before the Ping.
		rc.flushAcks()
		rc.pingID = c.nextID.Add(1)
		var buf [32]byte
		if err := c.write(appendPing(buf[:0], rc.pingID, time.Now().UnixMilli())); err != nil {
			s.rep.error("ping_write")
		}
	case kPong:
		if rc.pingID != 0 && f.id == rc.pingID && !rc.barrierOK {
			rc.barrierOK = true
			s.barrier.Add(1)
		}
	default:
		onOtherFrame(s.rep, c, f, "recipient_conn_lost")
	}
}

func (rc *offRecipient) flushAcks() {
	if len(rc.tags) == 0 || rc.c == nil {
		return
	}
	rc.ackBuf = appendDeliverAck(rc.ackBuf[:0], rc.tags)
	rc.tags = rc.tags[:0]
	_ = rc.c.write(rc.ackBuf)
}

// verify reconnects every recipient and counts what the server still holds for it.
func (s *offlineShard) verify(ctx context.Context) *report {
	rep := newReport()
	t := time.Now()
	var seen atomic.Int64
	done := make([]atomic.Bool, s.nR)
	h := func(c *wsConn, f frameView) {
		switch f.kind {
		case kQueueEmpty:
			if !done[c.user].Swap(true) {
				s.left.Add(int64(parseUint32Field(f.body)))
				seen.Add(1)
			}
		case kError:
			s.rep.error("verify_server_" + pb.ErrorCodeName(parseError(f.body).GetCode()))
		}
	}
	conns := s.connectAll(ctx, s.recipientIdx(), rep, h, func(i int, c *wsConn) { c.user = i - s.nS })
	want := int64(0)
	for _, c := range conns {
		if c != nil {
			want++
		}
	}
	deadline := time.Now().Add(s.spec.P.ConnectTimeout + 5*time.Second)
	for seen.Load() < want && time.Now().Before(deadline) && ctx.Err() == nil {
		time.Sleep(5 * time.Millisecond)
	}
	if n := want - seen.Load(); n > 0 {
		rep.Errors["verify_no_queue_empty"] += n
	}
	s.closeConns(conns)
	s.takeErrors(rep)
	rep.LeftStored = s.left.Load()
	rep.Conns = 0
	rep.span(t, time.Now())
	return rep
}

// offline is the coordinator of the offline scenario.
func (r *run) offline(ctx context.Context) error {
	cfg := r.cfg
	if cfg.Senders > cfg.Messages {
		cfg.Senders = cfg.Messages
	}
	accts, _, err := r.register(ctx, cfg.Senders+cfg.Recipients, 0, false)
	if err != nil {
		return err
	}
	senders, recips := accts[:cfg.Senders], accts[cfg.Senders:]
	rsizes, ips, err := r.plan(cfg.Recipients, cfg.Senders+cfg.Recipients)
	if err != nil {
		return err
	}
	k := len(rsizes)
	if cfg.Senders < k {
		return fmt.Errorf("offline needs at least one sender per process: %d senders for %d processes", cfg.Senders, k)
	}
	var specs []*shardSpec
	sb, rb, mb := 0, 0, 0
	for i, nr := range rsizes {
		ns := cfg.Senders / k
		if i < cfg.Senders%k {
			ns++
		}
		m := cfg.Messages * (rb + nr) / cfg.Recipients
		p := r.baseParams()
		p.Senders = ns
		p.Messages = m - mb
		as := append(append([]account(nil), senders[sb:sb+ns]...), recips[rb:rb+nr]...)
		specs = append(specs, &shardSpec{Index: i, SourceIP: ips[i], Accounts: as, P: p})
		sb, rb, mb = sb+ns, rb+nr, m
	}
	cl, err := r.startShards(ctx, specs)
	if err != nil {
		return err
	}
	defer cl.close()
	stop := r.progress("connecting", 0, nil)
	conn, err := cl.stepAll(ctx, stepConnect, time.Time{})
	stop()
	if err != nil {
		return err
	}
	r.logf("%d senders connected; storing %d messages for %d offline recipients …", conn.Conns, cfg.Messages, cfg.Recipients)
	store, storeCPU, err := r.timed(ctx, cl, stepStore, 0)
	if err != nil {
		return err
	}
	rss, rssOK := cl.serverRSS()
	r.logf("stored %d in %.1fs; connecting the recipients to drain …", store.Acked, store.elapsed().Seconds())
	drain, drainCPU, err := r.timed(ctx, cl, stepDrain, 0)
	if err != nil {
		return err
	}
	r.logf("drained %d in %.1fs; verifying nothing is left …", drain.Delivered, drain.elapsed().Seconds())
	verify, err := cl.stepAll(ctx, stepVerify, time.Time{})
	if err != nil {
		return err
	}

	res := r.res
	res.set("recipients", int64(cfg.Recipients), "offline devices")
	res.set("senders", int64(cfg.Senders), "")
	res.set("messages", int64(cfg.Messages), "")
	res.set("size", int64(cfg.Size), "payload bytes")
	res.set("window", int64(cfg.Window), "sends in flight per sender (at most)")
	res.set("conns", conn.Conns+drain.Conns, "connections established (senders, recipients)")
	res.set("sent", store.Sent, "")
	res.set("stored", store.Acked, "sends acked (durably stored)")
	res.set("store_s", store.elapsed().Seconds(), "")
	res.set("stored_per_s", perSecond(store.Acked, store.elapsed()), "acked sends per second while storing")
	res.set("ack_p50_ms", ms(store.Ack.Quantile(0.50)), "Send → SendResult (durable)")
	res.set("ack_p99_ms", ms(store.Ack.Quantile(0.99)), "")
	res.set("ack_p999_ms", ms(store.Ack.Quantile(0.999)), "")
	res.set("delivered", drain.Delivered, "unique messages drained")
	res.set("drain_s", drain.elapsed().Seconds(), "recipients connecting included")
	res.set("drained_per_s", perSecond(drain.Delivered, drain.elapsed()), "")
	res.set("lost", drain.Lost, "stored but never delivered")
	res.set("duplicates", drain.Duplicates, "")
	res.set("order_violations", drain.OrderViolations, "per sender → recipient")
	res.set("left_stored", verify.LeftStored, "QueueEmpty.delivered on reconnect, after drain + ack")
	res.set("exactly_once", store.Acked == int64(cfg.Messages) && drain.Delivered == store.Acked && drain.Lost == 0 && drain.Duplicates == 0 && verify.LeftStored == 0, "every message stored, delivered once, nothing left")
	r.addCPU(storeCPU, store.Acked)
	if rssOK {
		res.set("server_rss_bytes", rss, "after storing")
	} else {
		res.set("server_rss_bytes", nil, "needs --server-pid")
	}
	if drainCPU.serverOK && drain.Delivered > 0 {
		res.set("drain_server_cpu_us_per_msg", float64(drainCPU.server.Microseconds())/float64(drain.Delivered), "server CPU µs per drained message")
		res.set("drain_server_cpu_pct", drainCPU.pct(drainCPU.server), "")
	}
	res.set("source_ips", conn.SourceIPs, "")
	r.addErrors(conn, store, drain, verify)
	return nil
}
