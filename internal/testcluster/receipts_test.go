// Copyright 2026 The Petrel Authors
// SPDX-License-Identifier: Apache-2.0

package testcluster_test

import (
	"context"
	"testing"
	"time"

	"github.com/petrelchat/petrel/client/store"
	"github.com/petrelchat/petrel/internal/testcluster"
)

// Receipts across nodes, with the real SDK: alice on n1 sends bob on n2 a message; bob's client
// gets it and sends a delivery receipt (Delivered at alice), then marks it read (Read at alice,
// recorded as read in her history).
func TestReceiptsAcrossNodes(t *testing.T) {
	c := testcluster.Start(t, nodes, testcluster.Options{})
	n1, n2 := c.Node(0), c.Node(1)
	aliceStore := registerSDKDevice(t, "alice", n1.URL())
	alice := runSDKDevice(t, "alice", aliceStore)
	bob := startSDKDevice(t, "bob", n2.URL())
	if u := alice.nextConnected(); u != n1.URL() {
		t.Fatalf("alice connected to %s, want n1 (%s)", u, n1.URL())
	}
	if u := bob.nextConnected(); u != n2.URL() {
		t.Fatalf("bob connected to %s, want n2 (%s)", u, n2.URL())
	}

	ctx, cancel := context.WithTimeout(context.Background(), failoverWait)
	defer cancel()
	id, err := alice.c.Send(ctx, "bob", "across the cluster")
	if err != nil {
		t.Fatal(err)
	}
	msg := waitEvent(t, "bob: the message", bob.msgs)
	if msg.ID != id || msg.From != "alice" || msg.Text != "across the cluster" {
		t.Fatalf("bob got %+v, want %s from alice", msg, id)
	}
	// Delivered comes first: bob has not marked the message read yet.
	if d := waitEvent(t, "alice: Delivered", alice.delivered); d.To != "bob" || d.MessageID != id {
		t.Fatalf("alice's Delivered %+v, want bob/%s", d, id)
	}
	select {
	case r := <-alice.reads:
		t.Fatalf("alice got %+v before bob marked the message read", r)
	default:
	}

	if err := bob.c.MarkRead(msg); err != nil {
		t.Fatal(err)
	}
	if r := waitEvent(t, "alice: Read", alice.reads); r.To != "bob" || r.MessageID != id || r.Group != "" {
		t.Fatalf("alice's Read %+v, want bob/%s", r, id)
	}
	var status store.Status
	if err := aliceStore.View(func(tx *store.Tx) error {
		recs, err := tx.History(0, 100)
		for _, r := range recs {
			if r.ID == id {
				status = r.Status
			}
		}
		return err
	}); err != nil {
		t.Fatal(err)
	}
	if status != store.StatusRead {
		t.Fatalf("alice's history records %s as %q, want read", id, status)
	}
	select {
	case d := <-alice.delivered:
		t.Fatalf("alice got a second Delivered %+v", d)
	default:
	}
}

// waitEvent returns the next event from ch, failing after failoverWait.
func waitEvent[T any](t *testing.T, what string, ch <-chan T) T {
	t.Helper()
	select {
	case ev := <-ch:
		return ev
	case <-time.After(failoverWait):
		t.Fatalf("%s: nothing within %s", what, failoverWait)
		var zero T
		return zero
	}
}
