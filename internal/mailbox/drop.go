// Copyright 2026 The Petrel Authors
// SPDX-License-Identifier: Apache-2.0

package mailbox

import (
	"context"
	"fmt"

	"github.com/nats-io/nats.go/jetstream"
)

// DropInbox deletes every envelope stored for deviceID (a device removed from its account) and
// forgets its inbox index. The device's connection, if any, is its holder's to close: an
// attachment that is still open delivers nothing more from the store. An envelope whose commit
// was already under way when DropInbox ran may still land in the inbox afterwards (a sender that
// resolved its targets before the removal); it expires with the inbox TTL. Idempotent.
func (m *Mailbox) DropInbox(ctx context.Context, deviceID string) error {
	if m.closed.Load() {
		return ErrClosed
	}
	shard := m.bus.Shard(deviceID)
	if err := m.bus.Inbox(shard).Purge(ctx, jetstream.WithPurgeSubject(m.bus.InboxSubject(deviceID))); err != nil {
		return fmt.Errorf("%w: drop an inbox: %v", ErrStorage, err)
	}
	w := m.writers[shard]
	w.mu.Lock()
	delete(w.unindexed, deviceID)
	if u := w.usage[deviceID]; u != nil {
		// Reservations of a commit in progress stay: record ends them (and indexes what it stored).
		u.releaseTo(^uint64(0))
		if u.empty() {
			delete(w.usage, deviceID)
		}
	}
	w.mu.Unlock()
	m.metrics.inboxesDropped.Inc()
	return nil
}

// Sink returns the sink of deviceID's attachment on this node (its connection), or nil when the
// device is not attached here.
func (m *Mailbox) Sink(deviceID string) Sink {
	if a := m.localAttachment(deviceID); a != nil {
		return a.sink
	}
	return nil
}
