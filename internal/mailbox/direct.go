// Copyright 2026 The Petrel Authors
// SPDX-License-Identifier: Apache-2.0

package mailbox

import (
	"context"
	"encoding/json"
	"errors"
	"fmt"
	"strconv"
	"sync"
	"time"

	"github.com/nats-io/nats.go"

	"github.com/petrelchat/petrel/internal/bus"
)

// errBadDirectGet is a direct-get answer we cannot use (a missing header, an unknown status).
var errBadDirectGet = errors.New("unexpected direct-get response")

// errBatchGap: an answer of a batched read is missing (the reply subscription dropped it: a slow
// consumer). The read stops before the gap; the caller reads again from there.
var errBatchGap = errors.New("batched read lost an answer")

// lastSeqHeader is, in each answer of a batched direct get and in its end-of-batch marker, the
// sequence of the answer sent before it (0 for the first): a mismatch is a lost answer.
const lastSeqHeader = "Nats-Last-Sequence"

// checkLastSeq reports errBatchGap when msg says the answer before it was not prev (0: none).
// Servers that do not send the header are trusted.
func checkLastSeq(msg *nats.Msg, prev uint64) error {
	v := msg.Header.Get(lastSeqHeader)
	if v == "" {
		return nil
	}
	last, err := strconv.ParseUint(v, 10, 64)
	if err != nil {
		return fmt.Errorf("%w: %s header: %v", errBadDirectGet, lastSeqHeader, err)
	}
	if last != prev {
		return fmt.Errorf("%w: after sequence %d the server sent %d", errBatchGap, prev, last)
	}
	return nil
}

// getBatch reads up to max messages of subject from stream, starting at sequence from, with one
// batched direct get whose answers come back through the node's reply subscription (no
// subscription per read). With maxBytes > 0 the server stops after the message that brings the
// batch to maxBytes. each is called in order; returning false stops early. It returns how many
// messages each saw; an empty subject is (0, nil). An answer lost on the way (the reply
// subscription was a slow consumer) ends the read with errBatchGap before the gap, so a caller
// reading on from its last sequence never skips a message.
func (m *Mailbox) getBatch(ctx context.Context, stream, subject string, from uint64, max, maxBytes int, each func(seq uint64, data []byte) bool) (int, error) {
	return m.getBatchMsgs(ctx, stream, subject, from, max, maxBytes, func(seq uint64, msg *nats.Msg) bool { return each(seq, msg.Data) })
}

// getBatchBounded is getBatch for a drain: it first waits for one of the node's maxInboxReads
// read slots (within ctx), so a reconnect storm's drains queue here, not on the servers. The store
// path's own reads (quota.go) do not wait behind drains.
func (m *Mailbox) getBatchBounded(ctx context.Context, stream, subject string, from uint64, max, maxBytes int, each func(seq uint64, data []byte) bool) (int, error) {
	release, err := m.takeSlot(ctx, m.inboxReads)
	if err != nil {
		return 0, err
	}
	defer release()
	return m.getBatch(ctx, stream, subject, from, max, maxBytes, each)
}

// takeSlot waits for a slot of slots (a node-wide bound on reads towards the store) within ctx
// and returns the function that gives it back.
func (m *Mailbox) takeSlot(ctx context.Context, slots chan struct{}) (release func(), err error) {
	select {
	case slots <- struct{}{}:
		return func() { <-slots }, nil
	case <-ctx.Done():
		return nil, ctx.Err()
	case <-m.stop:
		return nil, ErrClosed
	}
}

// getBatchMsgs is getBatch handing each the whole message (headers too).
func (m *Mailbox) getBatchMsgs(ctx context.Context, stream, subject string, from uint64, max, maxBytes int, each func(seq uint64, msg *nats.Msg) bool) (int, error) {
	if max <= 0 {
		return 0, nil
	}
	tok := m.nextToken.Add(1)
	// At most max messages and one end-of-batch marker come back; the buffer never blocks the
	// reply subscription.
	ch := make(chan *nats.Msg, max+1)
	m.pendingMu.Lock()
	m.reads[tok] = ch
	m.pendingMu.Unlock()
	defer func() {
		m.pendingMu.Lock()
		delete(m.reads, tok)
		m.pendingMu.Unlock()
	}()
	req := make([]byte, 0, 64+len(subject))
	req = append(req, `{"seq":`...)
	req = strconv.AppendUint(req, from, 10)
	req = append(req, `,"batch":`...)
	req = strconv.AppendInt(req, int64(max), 10)
	if maxBytes > 0 {
		req = append(req, `,"max_bytes":`...)
		req = strconv.AppendInt(req, int64(maxBytes), 10)
	}
	req = append(req, `,"next_by_subj":"`...)
	req = append(req, subject...) // subjects are [A-Za-z0-9._-]: nothing to escape
	req = append(req, `"}`...)
	if err := m.nc.PublishMsg(&nats.Msg{
		Subject: bus.DirectGetSubject(stream),
		Reply:   m.replyPrefix + strconv.FormatUint(tok, 36),
		Data:    req,
	}); err != nil {
		return 0, err
	}
	n := 0
	var prev uint64 // the sequence of the last answer seen
	for {
		select {
		case msg := <-ch:
			if status := msg.Header.Get("Status"); status != "" && len(msg.Data) == 0 {
				switch status {
				case "404", "204": // no (more) messages; end of batch
					return n, checkLastSeq(msg, prev)
				default:
					return n, fmt.Errorf("direct get from %s: %s %s", stream, status, msg.Header.Get("Description"))
				}
			}
			seq, err := strconv.ParseUint(msg.Header.Get("Nats-Sequence"), 10, 64)
			if err != nil {
				return n, fmt.Errorf("%w: sequence header: %v", errBadDirectGet, err)
			}
			if err := checkLastSeq(msg, prev); err != nil {
				return n, err
			}
			prev = seq
			n++
			if !each(seq, msg) {
				return n, nil
			}
			if n > max {
				return n, fmt.Errorf("%w: more messages than asked for", errBadDirectGet)
			}
		case <-ctx.Done():
			return n, ctx.Err()
		case <-m.stop:
			return n, ErrClosed
		}
	}
}

// leaderAttempt bounds one unanswered leader read request before it is sent again (within the
// caller's budget, StoreTimeout).
const leaderAttempt = 2 * time.Second

// leaderGet reads the first message of subject at or after sequence from through the stream
// leader (a JetStream API message get, not a direct get): it sees every write the leader acked,
// where a direct get may be answered by a replica that has not applied them yet. found is false
// when the leader has no such message.
func (m *Mailbox) leaderGet(ctx context.Context, stream, subject string, from uint64) (seq uint64, data []byte, found bool, err error) {
	req := make([]byte, 0, 48+len(subject))
	req = append(req, `{"seq":`...)
	req = strconv.AppendUint(req, from, 10)
	req = append(req, `,"next_by_subj":"`...)
	req = append(req, subject...) // subjects are [A-Za-z0-9._-]: nothing to escape
	req = append(req, `"}`...)
	// Bounded per node: in a reconnect storm every attachment asks once, and the JetStream API
	// queue that answers is shared by the whole cluster.
	release, err := m.takeSlot(ctx, m.leaderReads)
	if err != nil {
		return 0, nil, false, err
	}
	defer release()
	// While the stream has no leader (its node was just killed and an election runs) the request
	// is not answered at all: ask again after leaderAttempt rather than wait out the whole
	// budget, so a device is served about as soon as the new leader is elected. An API that is
	// only slow (a reconnect storm) does not answer either: each attempt waits twice as long as
	// the one before, so the asking does not multiply the load it waits on.
	var msg *nats.Msg
	for attempt := leaderAttempt; ; attempt *= 2 {
		actx, cancel := context.WithTimeout(ctx, attempt)
		msg, err = m.request(actx, bus.MsgGetSubject(stream), req)
		cancel()
		if err == nil || ctx.Err() != nil || !errors.Is(err, context.DeadlineExceeded) {
			break
		}
		m.metrics.leaderReadRetries.Inc()
	}
	if err != nil {
		return 0, nil, false, fmt.Errorf("message get from %s: %w", stream, err)
	}
	var resp struct {
		Error *struct {
			Code    int    `json:"code"`
			ErrCode int    `json:"err_code"`
			Desc    string `json:"description"`
		} `json:"error"`
		Message *struct {
			Sequence uint64 `json:"seq"`
			Data     []byte `json:"data"`
		} `json:"message"`
	}
	if err := json.Unmarshal(msg.Data, &resp); err != nil {
		return 0, nil, false, fmt.Errorf("%w: message get: %v", errBadDirectGet, err)
	}
	switch {
	case resp.Error != nil && resp.Error.ErrCode == 10037: // no message found
		return 0, nil, false, nil
	case resp.Error != nil:
		return 0, nil, false, fmt.Errorf("message get from %s: %d %s", stream, resp.Error.Code, resp.Error.Desc)
	case resp.Message == nil || resp.Message.Sequence < from:
		return 0, nil, false, fmt.Errorf("%w: message get from %s: no message in the answer", errBadDirectGet, stream)
	}
	return resp.Message.Sequence, resp.Message.Data, true, nil
}

// interestTimeout bounds confirmInterest: a node that is routed but does not answer (stopping,
// overloaded) holds a connecting device's first QueueEmpty at most this long.
const interestTimeout = 2 * time.Second

// pinger coalesces pings: at most one ping of a kind is in flight per node, and every call that
// arrives meanwhile joins the next one (published after the call, so it covers the caller's
// subscriptions too). A reconnect storm costs a ping per round trip, not per device.
type pinger struct {
	// replicas: this pinger's pings ask every node for its inbox replicas (replicaRound).
	replicas bool

	mu      sync.Mutex
	running bool       // a goroutine runs rounds
	next    *pingRound // the round calls join; published when the one in flight ends
}

// pingRound is one ping and the calls waiting for it.
type pingRound struct {
	done chan struct{}
	ok   bool // set before done is closed: every node answered
	// replicas: each answering node's inbox replicas, by node (a replica round that is ok only).
	replicas map[string][]bus.InboxReplica
}

// confirmInterest returns once every NATS server this node's embedded server routes to has
// applied the subscriptions made on m.nc before the call, or after interestTimeout (false): a
// ping to every node's mailbox is published on m.nc after the call and each must answer (see
// bus.MailboxPingSubject). With external NATS it cannot tell how many to wait for: false at once.
func (m *Mailbox) confirmInterest() bool {
	r := m.pingRound(&m.pinger)
	return r != nil && r.ok
}

// nodeInterest reports whether every routed node has this node's device subscriptions: a ping
// round (confirmInterest) after they were made was answered by every routed node. Once one was,
// it is remembered: the subscriptions stay, and a route made again carries them again (a wake-up
// lost meanwhile is made good by a resync: resync.go).
func (m *Mailbox) nodeInterest() bool {
	if m.interestOK.Load() {
		return true
	}
	ok := m.confirmInterest()
	if ok {
		m.interestOK.Store(true)
	}
	return ok
}

// pingRound joins p's next round and waits for it; nil with external NATS or once the mailbox
// closes.
func (m *Mailbox) pingRound(p *pinger) *pingRound {
	if _, ok := m.bus.RoutedServers(); !ok || m.closed.Load() {
		return nil
	}
	p.mu.Lock()
	if p.next == nil {
		p.next = &pingRound{done: make(chan struct{})}
	}
	r := p.next
	if !p.running {
		p.running = true
		p.next = nil
		m.wg.Add(1)
		go func() {
			defer m.wg.Done()
			m.runPings(p, r)
		}()
	}
	p.mu.Unlock()
	select {
	case <-r.done:
		return r
	case <-m.stop:
		return nil
	}
}

// runPings runs round r, then the rounds calls joined meanwhile, until none is waiting.
func (m *Mailbox) runPings(p *pinger, r *pingRound) {
	for r != nil {
		r.ok, r.replicas = m.ping(p.replicas)
		close(r.done)
		p.mu.Lock()
		r, p.next = p.next, nil
		if r == nil {
			p.running = false
		}
		p.mu.Unlock()
	}
}

// ping publishes one mailbox ping and waits until the node's mailbox and every routed server's
// have answered, or interestTimeout. With replicas it asks each for its inbox replicas too, and
// returns them when every node answered with them.
func (m *Mailbox) ping(replicas bool) (bool, map[string][]bus.InboxReplica) {
	routed, ok := m.bus.RoutedServers()
	if !ok {
		return false, nil
	}
	tok := m.nextToken.Add(1)
	ch := make(chan *nats.Msg, 64)
	m.pendingMu.Lock()
	m.reads[tok] = ch
	m.pendingMu.Unlock()
	defer func() {
		m.pendingMu.Lock()
		delete(m.reads, tok)
		m.pendingMu.Unlock()
	}()
	ping := &nats.Msg{Subject: bus.MailboxPingSubject, Reply: m.replyPrefix + strconv.FormatUint(tok, 36)}
	if replicas {
		ping.Data = wantReplicas
	}
	if err := m.nc.PublishMsg(ping); err != nil {
		return false, nil
	}
	t := time.NewTimer(interestTimeout)
	defer t.Stop()
	want := routed + 1 // every routed server's node, and this one
	if !replicas {
		// To confirm subscriptions, only nodes whose mailbox runs need to answer: a node still
		// starting has no senders yet, and waiting for it held every connecting device's first
		// QueueEmpty for interestTimeout per round while a restarted node caught up. A replica
		// round waits for every routed node: a starting node's replica may answer direct gets.
		if peers, ok := m.bus.MailboxPeers(); ok {
			want = min(want, peers+1)
		}
	}
	seen := make(map[string][]bus.InboxReplica, want)
	told := true // every answer so far carried its replicas
	for len(seen) < want {
		select {
		case msg := <-ch:
			reps, ok := decodeReplicas(msg.Header.Get(replicaHeader))
			told = told && ok
			seen[string(msg.Data)] = reps
		case <-t.C:
			m.log.Debug("mailbox ping: not answered by every node", "answered", len(seen), "want", want, "replicas", replicas)
			return false, nil
		case <-m.stop:
			return false, nil
		}
	}
	if !replicas || !told {
		return true, nil
	}
	return true, seen
}

// request publishes data on subject and returns the first answer, which comes back through the
// node's reply subscription (no subscription per request), or an error when ctx ends or the
// mailbox closes.
func (m *Mailbox) request(ctx context.Context, subject string, data []byte) (*nats.Msg, error) {
	tok := m.nextToken.Add(1)
	ch := make(chan *nats.Msg, 1)
	m.pendingMu.Lock()
	m.reads[tok] = ch
	m.pendingMu.Unlock()
	defer func() {
		m.pendingMu.Lock()
		delete(m.reads, tok)
		m.pendingMu.Unlock()
	}()
	if err := m.nc.PublishMsg(&nats.Msg{Subject: subject, Reply: m.replyPrefix + strconv.FormatUint(tok, 36), Data: data}); err != nil {
		return nil, err
	}
	select {
	case msg := <-ch:
		if status := msg.Header.Get("Status"); status == "503" && len(msg.Data) == 0 {
			return nil, nats.ErrNoResponders
		}
		return msg, nil
	case <-ctx.Done():
		return nil, ctx.Err()
	case <-m.stop:
		return nil, ErrClosed
	}
}
