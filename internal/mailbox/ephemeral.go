// Copyright 2026 The Petrel Authors
// SPDX-License-Identifier: Apache-2.0

package mailbox

import (
	"github.com/nats-io/nats.go"

	"github.com/petrelchat/petrel/internal/bus"
)

// Ephemeral delivery (Send.ephemeral: typing indicators). An ephemeral envelope goes only to the
// devices connected at that moment: to an attachment on this node directly, to one on another
// node as a kindEphemeral message (no reply, no ack awaited) to that node when this node knows
// where the device is (location.go), else to every node (its device subject). It is never
// stored and never retried, and it is the first thing dropped: an attachment that is draining
// its inbox or has a full window drops it, and so does a connection that says it is loaded
// (EphemeralSink). Nothing about it reaches the sender: its ack says only that the server took
// the envelope. The device acks it like any live delivery; the ack is ignored.

// EphemeralSink is implemented by a Sink that can tell it is loaded (a slow connection, a busy
// node): ephemeral envelopes for it are then dropped rather than queued.
type EphemeralSink interface {
	// ShedEphemeral reports whether an ephemeral envelope should be dropped now.
	ShedEphemeral() bool
}

// SendEphemeral offers each target's envelope to its device if it is connected now, on this
// node or another, and returns at once. It never stores and never blocks.
func (m *Mailbox) SendEphemeral(targets []Target) {
	if m.closed.Load() {
		return
	}
	for _, t := range targets {
		if a := m.localAttachment(t.DeviceID); a != nil {
			a.pushEphemeral(t.Envelope)
			continue
		}
		payload := make([]byte, 0, 1+len(t.Envelope))
		payload = append(append(payload, kindEphemeral), t.Envelope...)
		subj := bus.DeviceSubject(t.DeviceID)
		if node, ok := m.locs.get(t.DeviceID); ok {
			subj = bus.NodeDeviceSubject(node, t.DeviceID)
		}
		if err := m.nc.PublishMsg(&nats.Msg{Subject: subj, Data: payload}); err == nil {
			m.ext.ephemeral.WithLabelValues(ephemeralRelayed).Inc()
		}
	}
}

// pushEphemeral pushes one ephemeral envelope to the device unless it is busy or loaded.
func (a *Attachment) pushEphemeral(env []byte) {
	a.mu.Lock()
	if a.closed {
		a.mu.Unlock()
		return
	}
	if a.draining || len(a.live)+a.outstandingLocked() >= a.m.cfg.Window {
		a.mu.Unlock()
		a.m.ext.ephemeral.WithLabelValues(ephemeralBusy).Inc()
		return
	}
	a.nextLive++
	tag := liveTagBit | a.nextLive // not in a.live: the device's ack of it is ignored
	a.mu.Unlock()
	if s, ok := a.sink.(EphemeralSink); ok && s.ShedEphemeral() {
		a.m.ext.ephemeral.WithLabelValues(ephemeralShed).Inc()
		return
	}
	if a.sink.Push(tag, env) == nil {
		a.m.ext.ephemeral.WithLabelValues(ephemeralPushed).Inc()
	}
}
