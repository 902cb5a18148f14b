// Copyright 2026 The Petrel Authors
// SPDX-License-Identifier: Apache-2.0

package testcluster_test

import (
	"context"
	"fmt"
	"net/http"
	"strconv"
	"strings"
	"sync"
	"testing"
	"time"

	"github.com/prometheus/client_golang/prometheus"

	"github.com/petrelchat/petrel/client"
	"github.com/petrelchat/petrel/internal/metricstest"
	"github.com/petrelchat/petrel/internal/server"
	"github.com/petrelchat/petrel/internal/testcluster"
)

// rollingWait bounds each wait of the rolling-restart test.
const rollingWait = 30 * time.Second

// fleet follows the SDK devices of a test: where each is connected, when it (re)connected, and
// what it received.
type fleet struct {
	mu       sync.Mutex
	server   map[string]string            // device → URL of its current connection
	connects map[string][]time.Time       // device → the time of each Connected
	got      map[string][]*client.Message // device → messages received, in order
	changed  chan struct{}                // signalled on every event
}

func newFleet() *fleet {
	return &fleet{server: map[string]string{}, connects: map[string][]time.Time{},
		got: map[string][]*client.Message{}, changed: make(chan struct{}, 1)}
}

// follow reads d's events until quit is closed.
func (f *fleet) follow(name string, d *sdkDevice, quit chan struct{}, wg *sync.WaitGroup) {
	wg.Go(func() {
		for {
			select {
			case ev := <-d.connected:
				f.mu.Lock()
				f.server[name] = ev.Server
				f.connects[name] = append(f.connects[name], time.Now())
				f.mu.Unlock()
			case m := <-d.msgs:
				f.mu.Lock()
				f.got[name] = append(f.got[name], m)
				f.mu.Unlock()
			case <-d.delivered:
				continue
			case <-quit:
				return
			}
			select {
			case f.changed <- struct{}{}:
			default:
			}
		}
	})
}

// waitUntil waits until cond (called with f.mu held) returns nil, re-checking on every event.
func (f *fleet) waitUntil(t *testing.T, d time.Duration, cond func() error) {
	t.Helper()
	deadline := time.NewTimer(d)
	defer deadline.Stop()
	recheck := time.NewTicker(100 * time.Millisecond) // besides events: a lost signal costs 100 ms
	defer recheck.Stop()
	for {
		f.mu.Lock()
		err := cond()
		f.mu.Unlock()
		if err == nil {
			return
		}
		select {
		case <-f.changed:
		case <-recheck.C:
		case <-deadline.C:
			t.Fatalf("not within %s: %v", d, err)
		}
	}
}

// sent is one message a sender's Send returned for.
type sent struct {
	id, from, to string
	seq          int
	acked        bool
}

// waitReady waits until url's /readyz answers 200.
func waitReady(t *testing.T, url string) {
	t.Helper()
	testcluster.WaitFor(t, rollingWait, func() error {
		resp, err := http.Get(url + "/readyz")
		if err != nil {
			return err
		}
		resp.Body.Close()
		if resp.StatusCode != http.StatusOK {
			return fmt.Errorf("%s/readyz: %d", url, resp.StatusCode)
		}
		return nil
	})
}

// counterValue reads a counter with one label from a gatherer (0 when it has none).
func counterValue(t *testing.T, g prometheus.Gatherer, name, label, value string) float64 {
	t.Helper()
	v, _, err := metricstest.Counter(g, name, label, value)
	if err != nil {
		t.Fatal(err)
	}
	return v
}

// TestRollingRestartUnderLoad follows README "Cluster", "Rolling restart and upgrade", on three
// nodes while SDK devices spread over all of them send to each other (live) and to a device that
// stays offline until the end (stored). Each node in turn: every node ready, SIGTERM (Stop: the
// lame-duck drain), wait for it to exit, start it again on its data directory, wait until it is
// ready (which includes caught up with the cluster). Then: every acked message delivered exactly
// once, in per-sender order; every device moved to another node when its node drained, and a
// node's devices moved spread over its drain, not all at once.
func TestRollingRestartUnderLoad(t *testing.T) {
	const (
		perNode = 3
		// drainRate is low so that a node's few devices are sent away over more than a second:
		// spread enough to measure.
		drainRate = 2.0
	)
	c := testcluster.Start(t, nodes, testcluster.Options{Config: func(_ int, cfg *server.Config) { cfg.DrainRate = drainRate }})
	var urls []string
	for i, nd := range c.Nodes() {
		urls = append(urls, nd.URL())
		waitNodesKnown(t, c, i)
	}
	f := newFleet()
	quit := make(chan struct{})
	var followers sync.WaitGroup
	n := nodes * perNode
	names := make([]string, n)
	devs := make([]*sdkDevice, n)
	for i := range n {
		names[i] = fmt.Sprintf("u%d", i)
		k := i % nodes // registered with, and first connected to, node k
		devs[i] = startSDKDevice(t, names[i], append(append([]string(nil), urls[k:]...), urls[:k]...)...)
		f.follow(names[i], devs[i], quit, &followers)
	}
	oliveStore := registerSDKDevice(t, "olive", urls...) // offline until the end: her messages are stored
	f.waitUntil(t, rollingWait, func() error {
		if len(f.server) < n {
			return fmt.Errorf("%d of %d devices connected", len(f.server), n)
		}
		return nil
	})

	// Sustained load: every device sends every 100 ms, one message in flight, round the others
	// and every fifth message to olive.
	var sentMu sync.Mutex
	var all []sent
	stopSend := make(chan struct{})
	var senders sync.WaitGroup
	for i := range n {
		senders.Go(func() {
			tick := time.NewTicker(100 * time.Millisecond)
			defer tick.Stop()
			for seq := 1; ; seq++ {
				select {
				case <-stopSend:
					return
				case <-tick.C:
				}
				to := names[(i+1+seq%(n-1))%n]
				if seq%5 == 0 {
					to = "olive"
				}
				ctx, cancel := context.WithTimeout(context.Background(), rollingWait)
				id, err := devs[i].c.Send(ctx, to, fmt.Sprintf("%s %d", names[i], seq))
				cancel()
				if id != "" {
					sentMu.Lock()
					all = append(all, sent{id: id, from: names[i], to: to, seq: seq, acked: err == nil})
					sentMu.Unlock()
				}
			}
		})
	}

	for _, nd := range c.Nodes() {
		// 1. Every node ready.
		for _, x := range c.Nodes() {
			waitReady(t, x.URL())
		}
		f.mu.Lock()
		var on []string
		before := map[string]int{}
		for _, name := range names {
			before[name] = len(f.connects[name])
			if f.server[name] == nd.URL() {
				on = append(on, name)
			}
		}
		f.mu.Unlock()
		// 2. SIGTERM, and wait until the node has exited.
		start := time.Now()
		nd.Stop()
		stopped := time.Since(start)
		// Its devices reconnect to the other nodes.
		f.waitUntil(t, rollingWait, func() error {
			for _, name := range on {
				if len(f.connects[name]) == before[name] {
					return fmt.Errorf("%s has not reconnected since %s drained", name, nd.Name())
				}
				if f.server[name] == nd.URL() {
					return fmt.Errorf("%s reconnected to %s, which is down", name, nd.Name())
				}
			}
			return nil
		})
		var first, last time.Time
		for i, name := range on {
			at := f.connects[name][before[name]]
			if i == 0 || at.Before(first) {
				first = at
			}
			if at.After(last) {
				last = at
			}
		}
		window := time.Duration(float64(len(on)) / drainRate * float64(time.Second))
		t.Logf("%s: stopped (drain and shutdown) in %s, %d devices moved over %s (drain window %s)", nd.Name(),
			stopped.Round(time.Millisecond), len(on), last.Sub(first).Round(time.Millisecond), window)
		if len(on) >= 3 && last.Sub(first) < window/3 {
			t.Fatalf("%s: its %d devices reconnected within %s of each other: a storm, not spread over the %s drain window",
				nd.Name(), len(on), last.Sub(first), window)
		}
		if got := counterValue(t, nd.Server().Metrics(), "petrel_gateway_sent_away_total", "reason", "drain"); got != float64(len(on)) {
			t.Fatalf("%s counted %v connections sent away, want %d", nd.Name(), got, len(on))
		}
		// 3. The new binary would go in here. 4. Start it on its data directory, and wait until
		// it is ready: serving, and caught up with the cluster.
		nd.Restart(t)
		waitReady(t, nd.URL())
	}

	close(stopSend)
	senders.Wait()
	olive := runSDKDevice(t, "olive", oliveStore)
	f.follow("olive", olive, quit, &followers)

	sentMu.Lock()
	msgs := append([]sent(nil), all...)
	sentMu.Unlock()
	acked := 0
	for _, s := range msgs {
		if s.acked {
			acked++
		}
	}
	f.waitUntil(t, rollingWait, func() error {
		have := map[string]bool{}
		for _, ms := range f.got {
			for _, m := range ms {
				have[m.ID] = true
			}
		}
		missing := 0
		for _, s := range msgs {
			if s.acked && !have[s.id] {
				missing++
			}
		}
		if missing > 0 {
			return fmt.Errorf("%d of %d acked messages not delivered", missing, acked)
		}
		return nil
	})
	// Every message that was sent, acked or not, must not be shown twice; the acked ones exactly
	// once; and each sender's messages in the order sent.
	for _, d := range append(devs, olive) {
		d.stop()
	}
	close(quit)
	followers.Wait()
	for to, ms := range f.got {
		seen := map[string]bool{}
		lastSeq := map[string]int{}
		for _, m := range ms {
			if seen[m.ID] {
				t.Fatalf("%s shown %s (%q from %s) twice", to, m.ID, m.Text, m.From)
			}
			seen[m.ID] = true
			from, seqText, _ := strings.Cut(m.Text, " ")
			seq, err := strconv.Atoi(seqText)
			if err != nil || from != m.From {
				t.Fatalf("%s got %q from %s", to, m.Text, m.From)
			}
			if seq <= lastSeq[from] {
				t.Fatalf("%s got %s's message %d after %d: per-sender order broken", to, from, seq, lastSeq[from])
			}
			lastSeq[from] = seq
		}
	}
	for _, name := range names {
		if len(f.connects[name]) < 2 {
			t.Fatalf("%s never reconnected, though every node drained", name)
		}
	}
	t.Logf("%d messages acked (%d sent), all delivered exactly once, in order", acked, len(msgs))
}
