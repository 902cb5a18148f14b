// Copyright 2026 The Petrel Authors
// SPDX-License-Identifier: Apache-2.0

package mailbox

import (
	"context"
	"fmt"
	"sync"
	"testing"
	"time"

	"github.com/prometheus/client_golang/prometheus"
)

// tagSink records the tags pushed to it.
type tagSink struct {
	mu    sync.Mutex
	tags  []uint64
	empty chan struct{}
	n     int // QueueEmpty's count
}

func (s *tagSink) Push(tag uint64, _ []byte) error {
	s.mu.Lock()
	s.tags = append(s.tags, tag)
	s.mu.Unlock()
	return nil
}
func (s *tagSink) QueueEmpty(n int) { s.n = n; close(s.empty) }
func (s *tagSink) Kicked()          {}

func (s *tagSink) pushed() []uint64 {
	s.mu.Lock()
	defer s.mu.Unlock()
	return append([]uint64(nil), s.tags...)
}

// Many devices ack their stored envelopes one by one, more at once than the node runs purges:
// the purges queue, every acked envelope is purged in the end (the index too), and a device that
// reconnects at once waits for its queued purge, so nothing acked is delivered again.
func TestPurgesQueue(t *testing.T) {
	reg := prometheus.NewRegistry()
	_, m := openInternal(t, Config{Registry: reg})
	const devices, each = 3 * maxPurges, 5
	devs := make([]string, devices)
	done := make(chan error, devices*each)
	for d := range devs {
		devs[d] = fmt.Sprintf("%032x", d+1)
		for i := range each {
			m.Store(devs[d], fmt.Sprintf("%d-%d", d, i), make([]byte, 100), func(err error) { done <- err })
		}
	}
	for range devices * each {
		if err := <-done; err != nil {
			t.Fatal(err)
		}
	}
	for _, dev := range devs {
		sink := &tagSink{empty: make(chan struct{})}
		a, err := m.Attach(dev, "c1", sink)
		if err != nil {
			t.Fatal(err)
		}
		<-sink.empty
		tags := sink.pushed()
		if len(tags) != each {
			t.Fatalf("%s: %d pushed, want %d", dev, len(tags), each)
		}
		for _, tag := range tags {
			a.Ack([]uint64{tag})
		}
		a.Detach()
	}
	// Reconnect every device at once: each drain waits for its device's purge.
	for _, dev := range devs {
		sink := &tagSink{empty: make(chan struct{})}
		a, err := m.Attach(dev, "c2", sink)
		if err != nil {
			t.Fatal(err)
		}
		select {
		case <-sink.empty:
		case <-time.After(10 * time.Second):
			t.Fatalf("%s: no QueueEmpty", dev)
		}
		if sink.n != 0 {
			t.Fatalf("%s: %d acked envelopes delivered again", dev, sink.n)
		}
		a.Detach()
	}
	if got := counterValue(t, reg, "petrel_mailbox_purged_total", "", ""); got != devices*each {
		t.Fatalf("purged %v, want %d", got, devices*each)
	}
	if got := counterValue(t, reg, "petrel_mailbox_purges_total", "", ""); got < devices || got > devices*each {
		t.Fatalf("%v purges for %d devices and %d acks", got, devices, devices*each)
	}
	for _, dev := range devs {
		left, err := m.QueryQueued(context.Background(), dev, "", []string{"x"})
		if err != nil || len(left) != 0 {
			t.Fatalf("%s: index still holds %v (%v)", dev, left, err)
		}
		if _, ok := m.purges.Load(dev); ok {
			t.Fatalf("%s: a purge is still registered", dev)
		}
	}
}
