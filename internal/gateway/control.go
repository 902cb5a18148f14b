// Copyright 2026 The Petrel Authors
// SPDX-License-Identifier: Apache-2.0

package gateway

import (
	"fmt"
	"strings"
	"time"

	"github.com/nats-io/nats.go"

	"github.com/petrelchat/petrel/internal/bus"
	pb "github.com/petrelchat/petrel/proto/petrel/v1"
)

// The control channel carries rare events between nodes over core subjects of the bus. Each node
// subscribes once to each pattern, never once per connection (a node holds hundreds of thousands):
//
//   - bus.LinkSubject(link id): an encoded Frame with LinkApproved, for the node holding the
//     new device's waiting connection (link.go), which writes it and closes the connection.
//   - bus.ControlSubject(device id): a kind byte, then its data, for the node holding the
//     device's connection: ctlDeviceList (+ an encoded Frame with DeviceListChanged, written to
//     it) or ctlRemoved (Error DEVICE_REMOVED, then close).
//
// Every node receives every such message and acts only on the connections it holds. Nothing is
// stored: a device that is not connected fetches its list (GetDevices, GetBundle) when it
// connects, and a removed one can no longer authenticate.

// Kinds of message on bus.ControlSubject: the first byte.
const (
	ctlDeviceList = 'l'
	ctlRemoved    = 'r'
)

// Control-channel subscription limits: the events are rare; a burst past these is dropped by the
// bus (and counted in petrel_bus_slow_consumer_total).
const (
	ctlPendingMsgs  = 64 << 10
	ctlPendingBytes = 64 << 20
)

// Last-seen updates (directory.Seen after Auth) run on a few workers from a bounded queue; an
// update that finds the queue full is dropped and counted: the device's next Auth tries again.
const (
	seenQueue   = 4096
	seenWorkers = 1
	seenTimeout = 5 * time.Second
	// Last-seen updates are written in batches (runSeen): up to seenBatchMax devices that
	// authenticated within seenBatchWait of each other, one replicated write for them all.
	seenBatchWait = 2 * time.Second
	seenBatchMax  = 500
)

// Start subscribes to the control channel and starts the last-seen workers. Call it once, before
// the engine serves; Close undoes it.
func (g *Gateway) Start() error {
	if g.cfg.Bus != nil {
		for _, s := range []struct {
			subject string
			handle  nats.MsgHandler
		}{
			{bus.LinkSubjects, func(m *nats.Msg) { g.onLinkMsg(strings.TrimPrefix(m.Subject, "link."), m.Data) }},
			{bus.ControlSubjects, func(m *nats.Msg) { g.onControlMsg(strings.TrimPrefix(m.Subject, "ctl."), m.Data) }},
		} {
			sub, err := g.cfg.Bus.Subscribe(s.subject, s.handle)
			if err != nil {
				g.stopControl()
				return fmt.Errorf("subscribe to %s: %w", s.subject, err)
			}
			if err := sub.SetPendingLimits(ctlPendingMsgs, ctlPendingBytes); err != nil {
				_ = sub.Unsubscribe()
				g.stopControl()
				return fmt.Errorf("control subscription limits: %w", err)
			}
			g.ctlSubs = append(g.ctlSubs, sub)
		}
	}
	g.seenq = make(chan string, seenQueue)
	for range seenWorkers {
		g.seenWG.Add(1)
		go g.runSeen()
	}
	return nil
}

// stopControl ends the control-channel subscriptions and the last-seen workers. Idempotent.
func (g *Gateway) stopControl() {
	for _, s := range g.ctlSubs {
		_ = s.Unsubscribe()
	}
	g.ctlSubs = nil
	g.seenOnce.Do(func() { close(g.seenStop) })
	g.seenWG.Wait()
}

// publish sends a control message to every node (this one included). Without a bus (a gateway
// alone, in tests) it is handled here.
func (g *Gateway) publish(subject string, data []byte) error {
	if g.cfg.Bus != nil {
		return g.cfg.Bus.Publish(subject, data)
	}
	switch {
	case strings.HasPrefix(subject, "link."):
		g.onLinkMsg(strings.TrimPrefix(subject, "link."), data)
	case strings.HasPrefix(subject, "ctl."):
		g.onControlMsg(strings.TrimPrefix(subject, "ctl."), data)
	}
	return nil
}

// onLinkMsg handles an approval for a link whose connection may be on this node.
func (g *Gateway) onLinkMsg(linkID string, frame []byte) {
	g.deliverApproval(linkID, frame)
}

// onControlMsg handles an event for a device whose connection may be on this node.
func (g *Gateway) onControlMsg(deviceID string, data []byte) {
	if len(data) == 0 || g.mb == nil {
		return
	}
	c, _ := g.mb.Sink(deviceID).(*conn)
	if c == nil || c.state.Load() != stateAuthed {
		return
	}
	switch data[0] {
	case ctlDeviceList:
		g.metrics.control.WithLabelValues("device_list").Inc()
		_ = c.enqueue(data[1:])
	case ctlRemoved:
		g.metrics.control.WithLabelValues("removed").Inc()
		c.write(&pb.Frame{Body: &pb.Frame_Error{Error: &pb.Error{
			Code: pb.ErrorCode_ERROR_CODE_DEVICE_REMOVED, Message: "this device was removed from its account; this connection is closed",
		}}})
		c.close()
	}
}

// seen queues a last-seen update for deviceID (after its Auth), or drops it when the queue is full.
func (g *Gateway) seen(deviceID string) {
	if g.seenq == nil {
		return
	}
	select {
	case g.seenq <- deviceID:
	default:
		g.metrics.seenDropped.Inc()
	}
}

// runSeen writes queued last-seen updates in batches: whatever arrived within seenBatchWait of
// the first, at most seenBatchMax, in one replicated write.
func (g *Gateway) runSeen() {
	defer g.seenWG.Done()
	var batch []string
	timer := time.NewTimer(time.Hour)
	timer.Stop()
	flush := func() {
		if len(batch) == 0 {
			return
		}
		ctx, cancel := seenCtx()
		g.dir.SeenBatch(ctx, batch, time.Now())
		cancel()
		batch = batch[:0]
	}
	for {
		select {
		case id := <-g.seenq:
			if len(batch) == 0 {
				timer.Reset(seenBatchWait)
			}
			batch = append(batch, id)
			if len(batch) >= seenBatchMax {
				timer.Stop()
				flush()
			}
		case <-timer.C:
			flush()
		case <-g.seenStop:
			return
		}
	}
}
