// Copyright 2026 The Petrel Authors
// SPDX-License-Identifier: Apache-2.0

package client_test

import (
	"context"
	"fmt"
	"testing"
	"time"

	"github.com/petrelchat/petrel/client"
	"github.com/petrelchat/petrel/internal/testserver"
)

// A burst to several recipients through a real server: with a send window, several sends are in
// flight at once, every recipient gets its messages exactly once and in the order they were
// queued, and the burst (to offline recipients, so stored by the server) is faster than one send at a time (the figures are logged).
func TestSendWindowKeepsPerRecipientOrder(t *testing.T) {
	srv := testserver.Start(t)
	const perRecipient = 150
	names := []string{"bob", "carol", "dave", "erin"}
	var recips []*device
	for _, n := range names {
		recips = append(recips, register(t, srv, n, devOpts{}).start())
	}
	for _, r := range recips {
		r.waitQueueEmpty()
	}
	rates := map[int]float64{}
	for _, window := range []int{1, 32} {
		sender := register(t, srv, fmt.Sprintf("alice%d", window), devOpts{cfg: client.Config{SendWindow: window}}).start()
		sender.waitQueueEmpty()
		// Sessions first, so that the burst measures the steady state.
		for _, n := range names {
			sender.send(n, "warm-up")
		}
		for _, r := range recips {
			r.nextMessage()
		}
		// The recipients are offline: every envelope is stored durably by the server before it
		// acks, which is where one send at a time waits longest.
		for _, r := range recips {
			r.stop()
		}
		want := map[string][]string{}
		start := time.Now()
		for i := range perRecipient {
			for _, n := range names {
				id, err := sender.c.Enqueue(n, fmt.Sprintf("%d", i))
				if err != nil {
					t.Fatal(err)
				}
				want[n] = append(want[n], id)
			}
		}
		ctx, cancel := context.WithTimeout(context.Background(), waitFor)
		if err := sender.c.Flush(ctx); err != nil {
			t.Fatalf("window %d: flush: %v", window, err)
		}
		cancel()
		el := time.Since(start)
		rates[window] = float64(perRecipient*len(names)) / el.Seconds()
		for ri, r := range recips {
			r.start()
			for i, id := range want[names[ri]] {
				m := r.nextMessage()
				if m.ID != id || m.Text != fmt.Sprint(i) || m.From != sender.name {
					t.Fatalf("window %d: %s's message %d: got %s %q from %s, want %s %q", window, names[ri], i, m.ID, m.Text, m.From, id, fmt.Sprint(i))
				}
			}
			r.noMoreMessages()
		}
		hw := sender.c.SendHighWaterForTest()
		if window == 1 && hw != 1 || window > 1 && hw < 2 {
			t.Fatalf("window %d: at most %d sends were in flight at once", window, hw)
		}
		if hw > window || hw > len(names) {
			t.Fatalf("window %d: %d sends in flight at once, over the window or one recipient's lane", window, hw)
		}
		sender.stop()
	}
	t.Logf("burst of %d messages to %d recipients: %.0f msgs/s with a window of 1, %.0f msgs/s with 32 (%.1fx)",
		perRecipient*len(names), len(names), rates[1], rates[32], rates[32]/rates[1])
}
