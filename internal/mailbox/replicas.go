// Copyright 2026 The Petrel Authors
// SPDX-License-Identifier: Apache-2.0

package mailbox

import (
	"bytes"
	"context"
	"strconv"
	"strings"

	"github.com/nats-io/nats.go"

	"github.com/petrelchat/petrel/internal/bus"
)

// Reads that see every acked write without the stream leader.
//
// A drain on a replicated inbox asks the stream leader (a JetStream message get) before a device
// first goes live, and when a direct get lags behind a wake-up: a direct get may be answered by a
// replica that has not applied an acked write yet. But when a node is killed, the streams it led
// have no leader until the others elect one, 4–9 s later (nats-server's Raft election timeout),
// and every device of those streams would wait that long to be served.
//
// A write the leader acked is in the Raft log of a majority of the stream's replicas. So a
// replica round (a mailbox ping that asks every node for its inbox replicas, bus.InboxReplicas)
// settles the question without the leader when every routed node answers and, for the
// device's stream, more than Size-Quorum replicas (enough to meet every majority) report that
// they applied their whole log and hold the same last sequence, and none reports otherwise:
// every write acked before the round is then readable on each replica that can answer a direct
// get (those of nodes that can be reached all answered), and a direct get after the round reads
// it. Writes acked after the round announce themselves with a wake-up, which reaches the
// attachment: it was in the node's table before the round began, and every node has the node's
// device subscriptions (nodeInterest). A replica with an entry it has not applied (a write in
// flight when the leader died, or one it has not learnt was committed) or a node that does not
// answer makes the drain ask the leader instead, as before.

// replicaHeader carries, in the answer to a mailbox ping that asks for them (wantReplicas), the
// answering node's inbox replicas: "shard:lastseq:size:quorum" for each replica that applied its
// whole log, "shard:-:size:quorum" for one that did not, comma-separated; noReplicas for none.
const (
	replicaHeader = "Petrel-Inbox-Replicas"
	noReplicas    = "none"
)

// wantReplicas is the payload of a mailbox ping that asks for the nodes' inbox replicas.
var wantReplicas = []byte("replicas")

// answerPing answers a mailbox ping with this node's name, and its inbox replicas when asked
// and known.
func (m *Mailbox) answerPing(msg *nats.Msg) {
	if msg.Reply == "" {
		return
	}
	resp := &nats.Msg{Subject: msg.Reply, Data: []byte(m.cfg.Node)}
	if bytes.Equal(msg.Data, wantReplicas) {
		if reps, ok := m.bus.InboxReplicas(); ok {
			resp.Header = nats.Header{}
			resp.Header.Set(replicaHeader, encodeReplicas(reps))
		}
	}
	_ = m.nc.PublishMsg(resp)
}

func encodeReplicas(reps []bus.InboxReplica) string {
	if len(reps) == 0 {
		return noReplicas
	}
	var b strings.Builder
	for i, r := range reps {
		if i > 0 {
			b.WriteByte(',')
		}
		b.WriteString(strconv.Itoa(r.Shard))
		b.WriteByte(':')
		if r.Applied {
			b.WriteString(strconv.FormatUint(r.LastSeq, 10))
		} else {
			b.WriteByte('-')
		}
		b.WriteByte(':')
		b.WriteString(strconv.Itoa(r.Size))
		b.WriteByte(':')
		b.WriteString(strconv.Itoa(r.Quorum))
	}
	return b.String()
}

// decodeReplicas parses a replicaHeader value; ok is false when there is none or it does not
// parse (the node could not tell, or runs an older version).
func decodeReplicas(v string) (reps []bus.InboxReplica, ok bool) {
	if v == "" {
		return nil, false
	}
	if v == noReplicas {
		return nil, true
	}
	for item := range strings.SplitSeq(v, ",") {
		f := strings.Split(item, ":")
		if len(f) != 4 {
			return nil, false
		}
		var r bus.InboxReplica
		var err error
		if r.Shard, err = strconv.Atoi(f[0]); err != nil {
			return nil, false
		}
		if f[1] != "-" {
			if r.LastSeq, err = strconv.ParseUint(f[1], 10, 64); err != nil {
				return nil, false
			}
			r.Applied = true
		}
		if r.Size, err = strconv.Atoi(f[2]); err != nil {
			return nil, false
		}
		if r.Quorum, err = strconv.Atoi(f[3]); err != nil {
			return nil, false
		}
		reps = append(reps, r)
	}
	return reps, true
}

// replicasAgree reports whether the replicas a complete replica round found for shard show that
// every write acked before the round is readable on each of them: more than Size-Quorum of them
// (so they meet every majority), all applied with the same last sequence, none behind.
func replicasAgree(byNode map[string][]bus.InboxReplica, shard int) bool {
	var n, size, quorum int
	var last uint64
	for _, reps := range byNode {
		for _, r := range reps {
			if r.Shard != shard {
				continue
			}
			if !r.Applied {
				return false
			}
			if n > 0 && (r.LastSeq != last || r.Size != size || r.Quorum != quorum) {
				return false
			}
			n, last, size, quorum = n+1, r.LastSeq, r.Size, r.Quorum
		}
	}
	return n > 0 && quorum > 0 && quorum <= size && n > size-quorum
}

// replicasSettled runs a replica round and reports whether, for the device's inbox, its answer
// stands in for the leader's (see replicasAgree).
func (a *Attachment) replicasSettled() bool {
	// A routed node whose mailbox is not running yet (it is starting) cannot answer, and its
	// replica may already answer direct gets: the round could not conclude. Ask the leader.
	routed, ok := a.m.bus.RoutedServers()
	if !ok {
		return false
	}
	if peers, ok := a.m.bus.MailboxPeers(); !ok || peers < routed {
		return false
	}
	r := a.m.pingRound(&a.m.replicaPinger)
	return r != nil && r.ok && replicasAgree(r.replicas, a.m.bus.Shard(a.dev))
}

// firstFrom reads, with a direct get, the device's first stored envelope from sequence from on.
// After replicasSettled it is as good as the leader's answer.
func (a *Attachment) firstFrom(ctx context.Context, from uint64) (seq uint64, data []byte, found bool, err error) {
	// A batch of one: the read ends with the server's end-of-batch answer, so none is left over.
	_, err = a.m.getBatchBounded(ctx, bus.InboxStreamName(a.m.bus.Shard(a.dev)), a.m.bus.InboxSubject(a.dev), from, 1, 0, func(s uint64, d []byte) bool {
		seq, data, found = s, d, true
		return true
	})
	if err != nil {
		return 0, nil, false, err
	}
	return seq, data, found, nil
}
