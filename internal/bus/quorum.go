// Copyright 2026 The Petrel Authors
// SPDX-License-Identifier: Apache-2.0

package bus

import (
	"context"
	"errors"
	"fmt"
	"time"

	"github.com/nats-io/nats-server/v2/server"
)

// ErrNoQuorum: this node cannot reach a JetStream majority (no meta leader, or the JetStream API
// does not answer in time), so nothing can be stored or acked through the store path.
var ErrNoQuorum = errors.New("no jetstream quorum")

// ErrAPISlow: the JetStream API did not answer in time, or answered that it is unavailable,
// although this node's connection is up and (embedded) its own view of the meta group is
// healthy. A majority lost elsewhere looks the same from an edge node, but so does a JetStream
// API queue under load (a reconnect storm): the node stops acking, but moving its clients would
// only add to the load. Wraps ErrNoQuorum.
var ErrAPISlow = errors.New("jetstream api slow")

// ErrCutOff: this node's embedded server has routes to too few of the cluster's nodes to make a
// majority with them: it is cut off (a partition, or the others are down), whatever its view of
// the meta group says, which a follower keeps until its election timeout (4–9 s). Unlike a slow
// API, this is the node's own state: its clients are better served by another node. Wraps
// ErrNoQuorum.
var ErrCutOff = errors.New("cut off from the cluster")

// peerFresh is how recently a meta leader must have heard from a peer to count it towards the
// majority. Raft heartbeats go out every second; nats-server itself notices a lost quorum only
// after about 10 s, so a leader cut off from the others would report itself healthy that long.
const peerFresh = 3 * time.Second

// Quorum reports whether this node reaches a JetStream majority: the JetStream API answers within
// ctx (an account-info request, which the meta leader answers), and, for an embedded clustered
// server, its own view of the meta group has a leader and, when this node is that leader, a
// majority of the group was heard from within peerFresh. The error says which check failed; it
// wraps ErrNoQuorum. Cheap enough to call once a second, not per request.
func (b *Bus) Quorum(ctx context.Context) error {
	if err := b.metaView(); err != nil {
		return err
	}
	if _, err := b.js.AccountInfo(ctx); err != nil {
		return apiCheckErr(b.nc.IsConnected(), err)
	}
	return nil
}

// apiCheckErr classifies a failed JetStream API check. While this node's connection is up (and,
// embedded, its own view of the meta group passed), whatever the API answered — no answer in
// time, or 503 "JetStream system temporarily unavailable" while the meta group re-elects under
// load — is the cluster's state, the same from every node: ErrAPISlow, so clients stay. A 200,000
// connection storm on two cores got the 503 on every edge node, and each sent its ~11,000
// clients away. Only a node whose connection is down is the one to leave.
func apiCheckErr(connected bool, err error) error {
	if connected {
		return fmt.Errorf("%w: jetstream api did not answer (%w): %v", ErrNoQuorum, ErrAPISlow, err)
	}
	return fmt.Errorf("%w: jetstream api did not answer: %v", ErrNoQuorum, err)
}

// metaView checks the embedded server's own view of the JetStream meta group (nil when external
// or not clustered: the API check decides alone).
func (b *Bus) metaView() error {
	srv := b.srv
	if srv == nil || !srv.JetStreamIsClustered() {
		return nil
	}
	if !srv.JetStreamEnabled() {
		return fmt.Errorf("%w: jetstream disabled on this node", ErrNoQuorum)
	}
	info, err := srv.Jsz(&server.JSzOptions{Limit: 1})
	if err != nil {
		return fmt.Errorf("%w: jetstream state: %v", ErrNoQuorum, err)
	}
	meta := info.Meta
	if meta == nil {
		return fmt.Errorf("%w: no meta group", ErrNoQuorum)
	}
	need := meta.Size/2 + 1
	if routed, ok := b.RoutedServers(); ok && meta.Size > 1 && routed+1 < need {
		return fmt.Errorf("%w: %w: routes to %d other nodes of %d, needs %d", ErrNoQuorum, ErrCutOff, routed, meta.Size, need-1)
	}
	if meta.Leader == "" {
		return fmt.Errorf("%w: no meta leader", ErrNoQuorum)
	}
	if !srv.JetStreamIsLeader() {
		return nil // a follower's view of its leader is checked by the API round trip
	}
	seen := 1 // this node
	for _, p := range meta.Replicas {
		if p != nil && !p.Offline && p.Active < peerFresh {
			seen++
		}
	}
	if seen < need {
		return fmt.Errorf("%w: meta leader hears from %d of %d nodes, needs %d", ErrNoQuorum, seen, meta.Size, need)
	}
	return nil
}

// CaughtUp reports whether this node's embedded JetStream is current with its cluster: nats-server's
// own health check (its /healthz), which wants the meta group and every stream and consumer
// replica this server holds current (or nearly: within a few entries of the leader), and, for a
// server alone, every stream recovered from disk. Nil with external NATS: this node holds no
// JetStream data. Cheap enough to call a few times a second.
func (b *Bus) CaughtUp() error {
	if b.srv == nil {
		return nil
	}
	h := b.srv.Healthz(&server.HealthzOptions{})
	if h.Status == "ok" && h.Error == "" {
		return nil
	}
	why := h.Error
	if why == "" {
		why = h.Status
	}
	return fmt.Errorf("jetstream not current: %s", why)
}

// InboxReplica is this node's replica of one inbox stream, as its embedded server sees it.
type InboxReplica struct {
	Shard int
	// Applied: every entry of the replica's Raft log has been applied to the stream (none is
	// waiting for the replica to learn that it was committed, and it is not catching up), so the
	// stream holds every write the replica has received. LastSeq is then the stream's last
	// sequence on this replica.
	Applied bool
	LastSeq uint64
	// Size and Quorum are the Raft group's size and the majority it needs.
	Size, Quorum int
}

// InboxReplicas returns this node's replicas of the inbox streams; ok is false when the node
// cannot tell (external NATS, not clustered, JetStream state unreadable).
//
// A write acked by a stream's leader is in the Raft logs of a majority of the replicas. So if
// more than Size-Quorum replicas (enough to meet every majority) report Applied with the same
// LastSeq, every acked write is in each of them, whether or not the stream has a leader now
// (after a leader's node died, its followers elect a new one only after 4–9 s). The mailbox
// uses this to serve a device without waiting for that election.
func (b *Bus) InboxReplicas() (reps []InboxReplica, ok bool) {
	srv := b.srv
	if srv == nil || !srv.JetStreamIsClustered() {
		return nil, false
	}
	acc := srv.GlobalAccount().GetName()
	groups := func() map[string]server.RaftzGroup {
		rz := srv.Raftz(&server.RaftzOptions{AccountFilter: acc})
		if rz == nil {
			return nil
		}
		return (*rz)[acc]
	}
	// The Raft state before and after the streams' state: unchanged and fully applied means
	// the stream state read in between is the state of that log.
	before := groups()
	detail, err := srv.JszAccount(&server.JSzOptions{Account: acc, Streams: true, RaftGroups: true})
	if err != nil || before == nil {
		return nil, false
	}
	after := groups()
	shardOf := make(map[string]int, b.cfg.InboxShards)
	for i := range b.cfg.InboxShards {
		shardOf[InboxStreamName(i)] = i
	}
	for _, sd := range detail.Streams {
		shard, isInbox := shardOf[sd.Name]
		if !isInbox || sd.RaftGroup == "" {
			continue
		}
		g1, ok1 := before[sd.RaftGroup]
		g2, ok2 := after[sd.RaftGroup]
		if !ok1 || !ok2 {
			continue
		}
		applied := g1.PIndex == g1.Applied && !g1.CatchingUp && g1.WALError == nil &&
			g2.PIndex == g1.PIndex && g2.Applied == g1.Applied && g2.Term == g1.Term && !g2.CatchingUp
		reps = append(reps, InboxReplica{Shard: shard, Applied: applied, LastSeq: sd.State.LastSeq, Size: g1.Size, Quorum: g1.QuorumNeeded})
	}
	return reps, true
}
