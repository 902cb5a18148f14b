// Copyright 2026 The Petrel Authors
// SPDX-License-Identifier: Apache-2.0

package mailbox

import (
	"encoding/binary"
	"strings"
	"sync"

	"github.com/nats-io/nats.go"

	"github.com/petrelchat/petrel/internal/bus"
)

// Routing between nodes without a subscription per device.
//
// Each node's mailbox subscribes to three patterns, once, at start, all delivering into one
// bounded channel (ingress) in the order the bus connection received them:
//   - pn.<node>.* (bus.NodeDeviceSubject): live requests and ephemeral envelopes for devices
//     attached here; a request for a device that is not (any more) answers "not here";
//   - dev.* (bus.DeviceSubject): every device's takeover claims, ticket releases and ephemeral
//     envelopes whose sender does not know the node;
//   - mbw.* (bus.WakeSubject): each inbox commit's wake-ups, one message per commit.
//
// One goroutine reads ingress and hands each device's messages to the device's dispatcher (a
// device always maps to the same one), so a device's messages keep the order they were sent in:
// a commit's wake-up, published before its senders are acked, reaches the attachment before any
// live request sent after the ack.
//
// A sender learns where a device is from the node holding it: when a commit's wake-up finds the
// device attached, that node answers the committing node with a hint (bus.HintSubject); and every
// node hears each new connection's claim (takeover.go), which names its node (claimNodeHeader).
// The sender's node keeps the device's node in a bounded cache (locations) and sends later live
// requests there: a device that reconnected to another node after its node died is reached live
// at once, even while its inbox stream elects a leader. Without a known node a live request is
// not sent: the envelope is stored (as when nobody answered), and the commit's wake-up brings the
// hint. A "not here" answer or no responders (the node is gone) drops the cached node. So a
// device costs the bus nothing while it is idle, and the first envelope a node sends to a device
// after it moved goes through its inbox: stored, then delivered by the drain.

// replyNotHere answers a live request sent to a node that does not hold the device.
var replyNotHere = []byte("nh")

// maxLocations bounds the devices' nodes a node remembers (about 90 bytes each); past it an
// eighth are forgotten (a forgotten device's next envelope is stored, and its wake-up brings the
// hint again). The claims of every connection fill it: it keeps the most recent ones.
const maxLocations = 1 << 15

// claimNodeHeader names, in a claim announcement, the node of the claiming attachment.
const claimNodeHeader = "Petrel-Node"

// locations is a node's cache of where devices it sends to are attached.
type locations struct {
	mu    sync.RWMutex
	nodes map[string]string // device → node
	names map[string]string // interned node names, so entries share them
}

func (l *locations) get(dev string) (string, bool) {
	l.mu.RLock()
	n, ok := l.nodes[dev]
	l.mu.RUnlock()
	return n, ok
}

func (l *locations) put(dev, node string) {
	l.mu.Lock()
	defer l.mu.Unlock()
	if l.nodes == nil {
		l.nodes, l.names = make(map[string]string), make(map[string]string)
	}
	if n, ok := l.names[node]; ok {
		node = n
	} else {
		if len(l.names) >= 1024 {
			clear(l.names)
		}
		l.names[node] = node
	}
	if _, ok := l.nodes[dev]; !ok && len(l.nodes) >= maxLocations {
		n := 0
		for d := range l.nodes { // map order is random: an eighth, at random
			delete(l.nodes, d)
			if n++; n >= maxLocations/8 {
				break
			}
		}
	}
	l.nodes[dev] = node
}

// forget drops dev's node if it is still node.
func (l *locations) forget(dev, node string) {
	l.mu.Lock()
	if l.nodes[dev] == node {
		delete(l.nodes, dev)
	}
	l.mu.Unlock()
}

func (l *locations) len() int {
	l.mu.RLock()
	defer l.mu.RUnlock()
	return len(l.nodes)
}

// subscribeDevices makes the node's three device subscriptions and its hint subscription.
func (m *Mailbox) subscribeDevices() error {
	for _, subj := range []string{bus.NodeDevices(m.cfg.Node), bus.DeviceSubjects, bus.WakeSubjects} {
		sub, err := m.nc.ChanSubscribe(subj, m.ingress)
		if err != nil {
			return err
		}
		m.ingressSubs = append(m.ingressSubs, sub)
	}
	sub, err := m.nc.Subscribe(bus.HintSubject(m.cfg.Node), m.onHint)
	if err != nil {
		return err
	}
	if err := sub.SetPendingLimits(1<<16, 64<<20); err != nil {
		return err
	}
	m.hintSub = sub
	// The server has the subscriptions before the first device attaches (its routes pass them on
	// at once; settle confirms that they reached every routed node).
	return m.nc.Flush()
}

// ingressDropped is how many messages the bus dropped for the device subscriptions so far.
func (m *Mailbox) ingressDropped() int {
	n := 0
	for _, sub := range m.ingressSubs {
		if d, err := sub.Dropped(); err == nil {
			n += d
		}
	}
	return n
}

// runIngress hands each message of the device subscriptions to its device's dispatcher.
func (m *Mailbox) runIngress() {
	for {
		select {
		case msg := <-m.ingress:
			m.route(msg)
		case <-m.stop:
			return
		}
	}
}

func (m *Mailbox) route(msg *nats.Msg) {
	subj := msg.Subject
	if strings.HasPrefix(subj, "mbw.") {
		m.onWakes(subj[len("mbw."):], msg.Data)
		return
	}
	dev := subjectDevice(subj)
	if len(msg.Data) > 0 && msg.Data[0] == kindClaim {
		if node := msg.Header.Get(claimNodeHeader); node != "" && node != m.cfg.Node {
			m.locs.put(dev, node)
		}
	}
	if _, ok := m.local.Load(dev); !ok {
		m.notHere(msg)
		return
	}
	m.toDispatcher(dev, msg)
}

// notHere answers a live request sent to this node for a device not attached here. Requests on
// dev.<device> (from nodes of an older version) are left to the node that holds the device.
func (m *Mailbox) notHere(msg *nats.Msg) {
	if msg.Reply != "" && strings.HasPrefix(msg.Subject, "pn.") {
		_ = m.nc.Publish(msg.Reply, replyNotHere)
	}
}

// subjectDevice is the device a subject of pn.<node>.* or dev.* is for: its last token.
func subjectDevice(subj string) string { return subj[strings.LastIndexByte(subj, '.')+1:] }

// toDispatcher queues msg (its subject's last token is dev) on dev's dispatcher; it waits for
// room (so ingress fills, and the bus reports a slow consumer, rather than a message being lost
// here).
func (m *Mailbox) toDispatcher(dev string, msg *nats.Msg) {
	select {
	case m.dispatcherFor(dev) <- msg:
	case <-m.stop:
	}
}

// encodeWakes appends one wake-up to a commit's wake-up message (WakeSubject): the device id's
// length (1 byte), the device id, the 8-byte big-endian sequence, the ticket's length (1 byte) and
// the ticket. ok is false for ids or tickets too long to encode (never made by Petrel).
func encodeWakes(b []byte, dev string, seq uint64, ticket string) ([]byte, bool) {
	if len(dev) > 255 || len(ticket) > 255 {
		return b, false
	}
	b = append(b, byte(len(dev)))
	b = append(b, dev...)
	b = binary.BigEndian.AppendUint64(b, seq)
	b = append(b, byte(len(ticket)))
	return append(b, ticket...), true
}

// onWakes handles a commit's wake-ups from node origin: each device attached here is woken (on
// its dispatcher, in order with its other messages), and origin is told where they are.
func (m *Mailbox) onWakes(origin string, b []byte) {
	if origin == m.cfg.Node {
		return // the writer woke this node's attachments itself
	}
	var hint []byte
	for len(b) > 0 {
		n := int(b[0])
		if len(b) < 1+n+9 {
			return
		}
		dev := string(b[1 : 1+n])
		seq := binary.BigEndian.Uint64(b[1+n:])
		t := int(b[1+n+8])
		if len(b) < 1+n+9+t {
			return
		}
		ticket := string(b[1+n+9 : 1+n+9+t])
		b = b[1+n+9+t:]
		if _, ok := m.local.Load(dev); !ok {
			continue
		}
		m.toDispatcher(dev, &nats.Msg{Subject: bus.DeviceSubject(dev), Data: encodeWake(seq, ticket)})
		if hint == nil {
			hint = append(append(hint, byte(len(m.cfg.Node))), m.cfg.Node...)
		}
		hint = append(append(hint, byte(len(dev))), dev...)
	}
	if hint != nil {
		_ = m.nc.Publish(bus.HintSubject(origin), hint)
	}
}

// onHint records where the devices a hint names are attached: the node's name's length (1 byte),
// its name, then each device id's length (1 byte) and id.
func (m *Mailbox) onHint(msg *nats.Msg) {
	b := msg.Data
	if len(b) < 1 || len(b) < 1+int(b[0]) || b[0] == 0 {
		return
	}
	node := string(b[1 : 1+b[0]])
	b = b[1+b[0]:]
	for len(b) > 0 {
		n := int(b[0])
		if n == 0 || len(b) < 1+n {
			return
		}
		m.locs.put(string(b[1:1+n]), node)
		m.metrics.hints.Inc()
		b = b[1+n:]
	}
}

// Node is the name this node's mailbox goes by on the bus (Config.Node).
func (m *Mailbox) Node() string { return m.cfg.Node }

// Located reports the node this node would send a live delivery for dev to, if it knows one.
func (m *Mailbox) Located(dev string) (node string, ok bool) { return m.locs.get(dev) }

// Attached reports whether dev is attached on this node, and whether its attachment delivers
// live (it is not draining its inbox).
func (m *Mailbox) Attached(dev string) (attached, live bool) {
	a, ok := m.local.Load(dev)
	if !ok {
		return false, false
	}
	a.mu.Lock()
	defer a.mu.Unlock()
	return true, !a.draining
}
