// Copyright 2026 The Petrel Authors
// SPDX-License-Identifier: Apache-2.0

// Package nodes lets the nodes of a cluster learn each other's public URLs over the bus, so that
// the gateway can tell clients where else they may connect (Welcome.nodes) and clients fail over
// by themselves.
//
// Protocol, on the core subject bus.NodesSubject (nothing is stored):
//   - every node publishes an announcement, JSON {"node": NAME, "url": URL}, when it starts,
//     every Interval, and once in answer to an announcement from a node it did not know (so a
//     node that starts learns the others within a round trip, not an interval);
//   - a node that cannot serve (no JetStream quorum: SetReady(false)) adds "unready": true, and
//     announces at once whenever that changes; the others remember each node's last word on
//     it for readyTTL, longer than the URL;
//   - every node answers requests on its own probe subject (ProbeSubject), so that another can
//     ask whether NATS still routes to it (ServingPeersUnreachable);
//   - a node that leaves gracefully publishes {"node": NAME, "bye": true}, and the others forget
//     it at once;
//   - an entry not refreshed within 3×Interval is dropped (a killed node), and at most MaxNodes
//     entries are kept (announcements from further names are ignored until one expires).
//
// A node with no public URL (Start with "") listens and tells clients the others' URLs, but announces
// nothing.
package nodes

import (
	"context"
	"encoding/json"
	"errors"
	"hash/fnv"
	"log/slog"
	"net/url"
	"slices"
	"strconv"
	"sync"
	"sync/atomic"
	"time"

	"github.com/nats-io/nats.go"
)

const (
	// MaxNodes bounds the nodes remembered (and so the URLs in a Welcome).
	MaxNodes = 16
	// maxURLLen bounds one announced URL; longer announcements are ignored.
	maxURLLen = 256
	// maxAnnouncement bounds an announcement's size; larger ones are ignored unparsed.
	maxAnnouncement = 1024
	// readyTTL, in Intervals, is how long a node's last word on its readiness counts.
	readyTTL = 12
)

// Config configures a Registry.
type Config struct {
	// Subject is the core NATS subject of announcements (bus.NodesSubject).
	Subject string
	// Node is this node's name.
	Node string
	// Interval is the time between announcements; entries expire after 3 of them. Default: 5s.
	Interval time.Duration
	Logger   *slog.Logger
	// Now is the clock. Default: time.Now.
	Now func() time.Time
}

type announcement struct {
	Node    string `json:"node"`
	URL     string `json:"url,omitempty"`
	Bye     bool   `json:"bye,omitempty"`
	Unready bool   `json:"unready,omitempty"` // absent from nodes that predate it: ready
}

type entry struct {
	url  string
	seen time.Time
}

// readiness is a node's last word on whether it can serve.
type readiness struct {
	ready bool
	seen  time.Time
}

// Registry holds the public URLs of the nodes that announced themselves recently.
type Registry struct {
	nc  *nats.Conn
	cfg Config

	mu    sync.Mutex // guards the following fields
	url   string     // this node's public URL ("": not announced); set by Start
	ready bool       // this node's readiness (SetReady); true until told otherwise
	peers map[string]entry
	// said holds the other nodes' last word on their readiness, kept readyTTL Intervals (an
	// entry in peers expires sooner); at most MaxNodes.
	said  map[string]readiness
	sub   *nats.Subscription
	probe *nats.Subscription // answers ProbeSubject
	stop  chan struct{}      // closed by Close
	done  chan struct{}      // closed when the announcer goroutine returns
	left  bool
}

// New returns a registry. It does no I/O.
func New(nc *nats.Conn, cfg Config) *Registry {
	if cfg.Interval <= 0 {
		cfg.Interval = 5 * time.Second
	}
	if cfg.Logger == nil {
		cfg.Logger = slog.Default()
	}
	if cfg.Now == nil {
		cfg.Now = time.Now
	}
	return &Registry{nc: nc, cfg: cfg, ready: true, peers: map[string]entry{}, said: map[string]readiness{},
		stop: make(chan struct{}), done: make(chan struct{})}
}

// Start subscribes to announcements, announces this node at url ("" announces nothing) and keeps
// announcing it until Close.
func (r *Registry) Start(url string) error {
	r.mu.Lock()
	r.url = url
	r.mu.Unlock()
	sub, err := r.nc.Subscribe(r.cfg.Subject, r.handle)
	if err != nil {
		return err
	}
	probe, err := r.nc.Subscribe(ProbeSubject(r.cfg.Subject, r.cfg.Node), func(m *nats.Msg) { _ = m.Respond(nil) })
	if err != nil {
		_ = sub.Unsubscribe()
		return err
	}
	r.mu.Lock()
	r.sub, r.probe = sub, probe
	r.mu.Unlock()
	r.announce()
	go r.loop()
	return nil
}

func (r *Registry) loop() {
	defer close(r.done)
	t := time.NewTicker(r.cfg.Interval)
	defer t.Stop()
	for {
		select {
		case <-t.C:
			r.announce()
			r.expire()
		case <-r.stop:
			return
		}
	}
}

// Close stops announcing; with bye it first tells the other nodes this node is going (a graceful
// stop; a crash says nothing and the others let the entry expire). Idempotent; a registry that
// was never started only marks itself closed.
func (r *Registry) Close(bye bool) {
	r.mu.Lock()
	if r.left {
		r.mu.Unlock()
		return
	}
	r.left = true
	sub := r.sub
	r.mu.Unlock()
	if sub == nil {
		return
	}
	close(r.stop)
	<-r.done
	_ = sub.Unsubscribe()
	r.mu.Lock()
	probe := r.probe
	r.mu.Unlock()
	_ = probe.Unsubscribe()
	if bye && r.selfURL() != "" {
		r.publish(announcement{Node: r.cfg.Node, Bye: true})
		_ = r.nc.FlushTimeout(time.Second)
	}
}

// URLs returns the known public URLs: this node's first (when it has one), then the others'
// sorted; at most MaxNodes.
func (r *Registry) URLs() []string {
	now := r.cfg.Now()
	r.mu.Lock()
	self := r.url
	out := make([]string, 0, len(r.peers)+1)
	for _, e := range r.peers {
		if now.Sub(e.seen) <= r.ttl() && e.url != self {
			out = append(out, e.url)
		}
	}
	r.mu.Unlock()
	slices.Sort(out)
	out = slices.Compact(out)
	if self != "" {
		out = append([]string{self}, out...)
	}
	if len(out) > MaxNodes {
		out = out[:MaxNodes]
	}
	return out
}

func (r *Registry) ttl() time.Duration { return 3 * r.cfg.Interval }

func (r *Registry) selfURL() string {
	r.mu.Lock()
	defer r.mu.Unlock()
	return r.url
}

// SetReady records whether this node can serve (it reaches a JetStream quorum) and, when that
// changed, announces it at once.
func (r *Registry) SetReady(ready bool) {
	r.mu.Lock()
	changed := r.ready != ready
	r.ready = ready
	started := r.sub != nil && !r.left
	r.mu.Unlock()
	if changed && started {
		r.announce()
	}
}

// ProbeSubject is the core subject on which the node named node answers (with an empty reply):
// the announcement subject, ".probe.", and a hash of the name (any name is a valid token).
func ProbeSubject(subject, node string) string {
	h := fnv.New64a()
	h.Write([]byte(node))
	return subject + ".probe." + strconv.FormatUint(h.Sum64(), 16)
}

// probeTimeout bounds one probe request. Only "no responders" counts as unreachable: a probe
// that times out reached a node too slow to answer, which is not what a partition looks like.
const probeTimeout = time.Second

// ServingPeersUnreachable reports whether most of the nodes whose last word (within readyTTL
// Intervals) was that they serve are not routed to any more: a request to each one's probe
// subject is answered "no responders" at once by this node's NATS server, which knows no
// subscriber for it. That is what a node whose NATS server is cut off from the others sees (the
// routes are gone, and their subscriptions with them); a reconnect storm that makes every
// JetStream API slow leaves the routes and subscriptions in place, so a probe there is slow or
// answered, never "no responders". (Judged by silence instead, a 200,000-connection storm made
// every edge node send its clients away: announcements stopped arriving there too.) A NATS
// server that has not noticed a silent partition yet still routes, and so still looks reachable.
func (r *Registry) ServingPeersUnreachable(ctx context.Context) bool {
	now := r.cfg.Now()
	r.mu.Lock()
	var serving []string
	for name, s := range r.said {
		if s.ready && now.Sub(s.seen) <= readyTTL*r.cfg.Interval {
			serving = append(serving, name)
		}
	}
	r.mu.Unlock()
	if len(serving) == 0 {
		return false
	}
	var unreachable atomic.Int32
	var wg sync.WaitGroup
	for _, name := range serving {
		wg.Go(func() {
			pctx, cancel := context.WithTimeout(ctx, probeTimeout)
			defer cancel()
			if _, err := r.nc.RequestWithContext(pctx, ProbeSubject(r.cfg.Subject, name), nil); errors.Is(err, nats.ErrNoResponders) {
				unreachable.Add(1)
			}
		})
	}
	wg.Wait()
	return 2*int(unreachable.Load()) > len(serving)
}

func (r *Registry) announce() {
	r.mu.Lock()
	u, ready := r.url, r.ready
	r.mu.Unlock()
	if u != "" {
		r.publish(announcement{Node: r.cfg.Node, URL: u, Unready: !ready})
	}
}

func (r *Registry) publish(a announcement) {
	raw, err := json.Marshal(a)
	if err != nil {
		return
	}
	if err := r.nc.Publish(r.cfg.Subject, raw); err != nil {
		r.cfg.Logger.Debug("announce node", "err", err)
	}
}

// handle runs on the subscription's goroutine (owned by the NATS connection).
func (r *Registry) handle(m *nats.Msg) {
	if len(m.Data) > maxAnnouncement {
		return
	}
	var a announcement
	if json.Unmarshal(m.Data, &a) != nil || a.Node == "" || a.Node == r.cfg.Node {
		return
	}
	if a.Bye {
		r.mu.Lock()
		delete(r.peers, a.Node)
		delete(r.said, a.Node)
		r.mu.Unlock()
		return
	}
	if !ValidURL(a.URL) {
		return
	}
	now := r.cfg.Now()
	r.mu.Lock()
	old, known := r.peers[a.Node]
	if !known && len(r.peers) >= MaxNodes {
		r.mu.Unlock()
		return
	}
	r.peers[a.Node] = entry{url: a.URL, seen: now}
	if _, ok := r.said[a.Node]; ok || len(r.said) < MaxNodes {
		r.said[a.Node] = readiness{ready: !a.Unready, seen: now}
	}
	r.mu.Unlock()
	if !known || old.url != a.URL {
		r.cfg.Logger.Info("node announced", "node", a.Node, "url", a.URL)
		if !known {
			r.announce() // so that a node that just started learns this one at once
		}
	}
}

func (r *Registry) expire() {
	now := r.cfg.Now()
	r.mu.Lock()
	defer r.mu.Unlock()
	for name, e := range r.peers {
		if now.Sub(e.seen) > r.ttl() {
			delete(r.peers, name)
			r.cfg.Logger.Info("node expired", "node", name, "url", e.url)
		}
	}
	for name, s := range r.said {
		if now.Sub(s.seen) > readyTTL*r.cfg.Interval {
			delete(r.said, name)
		}
	}
}

// ValidURL reports whether s is a public base URL: http or https, a host, no path beyond "/",
// no query, fragment or user info, at most 256 bytes.
func ValidURL(s string) bool {
	if s == "" || len(s) > maxURLLen {
		return false
	}
	u, err := url.Parse(s)
	if err != nil || (u.Scheme != "http" && u.Scheme != "https") || u.Host == "" || u.Hostname() == "" {
		return false
	}
	return (u.Path == "" || u.Path == "/") && u.RawQuery == "" && u.Fragment == "" && u.User == nil && !u.ForceQuery
}
