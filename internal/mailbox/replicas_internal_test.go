// Copyright 2026 The Petrel Authors
// SPDX-License-Identifier: Apache-2.0

package mailbox

import (
	"reflect"
	"testing"

	"github.com/petrelchat/petrel/internal/bus"
)

func TestReplicasAgree(t *testing.T) {
	ok := func(shard int, last uint64) bus.InboxReplica {
		return bus.InboxReplica{Shard: shard, Applied: true, LastSeq: last, Size: 3, Quorum: 2}
	}
	behind := bus.InboxReplica{Shard: 1, Size: 3, Quorum: 2}
	cases := []struct {
		name   string
		byNode map[string][]bus.InboxReplica
		want   bool
	}{
		{"two of three agree (the leader's node is gone)", map[string][]bus.InboxReplica{"n2": {ok(1, 7), ok(2, 9)}, "n3": {ok(1, 7)}}, true},
		{"all three agree", map[string][]bus.InboxReplica{"n1": {ok(1, 7)}, "n2": {ok(1, 7)}, "n3": {ok(1, 7)}}, true},
		{"one replica cannot meet every majority", map[string][]bus.InboxReplica{"n2": {ok(1, 7)}, "n3": {ok(2, 7)}}, false},
		{"different last sequences", map[string][]bus.InboxReplica{"n2": {ok(1, 7)}, "n3": {ok(1, 8)}}, false},
		{"a replica with entries not applied", map[string][]bus.InboxReplica{"n1": {ok(1, 7)}, "n2": {ok(1, 7)}, "n3": {behind}}, false},
		{"a different group size", map[string][]bus.InboxReplica{"n2": {ok(1, 7)}, "n3": {{Shard: 1, Applied: true, LastSeq: 7, Size: 5, Quorum: 3}}}, false},
		{"three of five cannot tell", map[string][]bus.InboxReplica{
			"n1": {{Shard: 1, Applied: true, LastSeq: 7, Size: 5, Quorum: 3}},
			"n2": {{Shard: 1, Applied: true, LastSeq: 7, Size: 5, Quorum: 3}},
		}, false},
		{"no replica of the shard", map[string][]bus.InboxReplica{"n2": nil, "n3": {ok(2, 1)}}, false},
		{"nothing known", nil, false},
	}
	for _, tc := range cases {
		t.Run(tc.name, func(t *testing.T) {
			if got := replicasAgree(tc.byNode, 1); got != tc.want {
				t.Fatalf("replicasAgree = %v, want %v", got, tc.want)
			}
		})
	}
}

func TestReplicaHeaderRoundTrip(t *testing.T) {
	reps := []bus.InboxReplica{
		{Shard: 0, Applied: true, LastSeq: 0, Size: 3, Quorum: 2},
		{Shard: 15, Applied: true, LastSeq: 1 << 40, Size: 3, Quorum: 2},
		{Shard: 3, Applied: false, Size: 5, Quorum: 3},
	}
	got, ok := decodeReplicas(encodeReplicas(reps))
	if !ok || !reflect.DeepEqual(got, reps) {
		t.Fatalf("round trip: %v %v, want %v", got, ok, reps)
	}
	if got, ok := decodeReplicas(encodeReplicas(nil)); !ok || got != nil {
		t.Fatalf("no replicas: %v %v", got, ok)
	}
	for _, bad := range []string{"", "1:2:3", "x:1:3:2", "1:y:3:2", "1:1:z:2", "1:1:3:q", "1:1:3:2,"} {
		if _, ok := decodeReplicas(bad); ok {
			t.Errorf("decodeReplicas(%q) accepted", bad)
		}
	}
}
