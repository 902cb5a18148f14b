// Copyright 2026 The Petrel Authors
// SPDX-License-Identifier: Apache-2.0

// Package testcluster starts N real Petrel nodes (internal/server) in one test process, their
// embedded NATS servers clustered over loopback routes with JetStream clustered, each node with
// its own data directory, a public listener and an admin listener on random loopback ports.
// Nothing in it is a mock. Nodes can be stopped gracefully, killed, restarted on the same data
// directory and ports, or wiped (a lost disk).
//
// Cluster ports are picked before the start (each node must know the others' addresses): a
// free port is found by binding 127.0.0.1:0 and closing it, so another process could take it in
// between; on a test machine that is rare enough.
//
// With Options.Proxies every cluster route runs through a fault-injecting TCP proxy
// (internal/faultproxy), one per direction of each pair of nodes, and Partition/Heal cut a node
// off and back. With Options.SecureRoutes the routes are authenticated by a shared secret and run
// mutual TLS, as a deployment off loopback must.
package testcluster

import (
	"context"
	"crypto/rand"
	"encoding/hex"
	"fmt"
	"io"
	"log/slog"
	"os"
	"path/filepath"
	"sync"
	"testing"
	"time"

	"github.com/petrelchat/petrel/internal/faultproxy"
	"github.com/petrelchat/petrel/internal/freeport"
	"github.com/petrelchat/petrel/internal/server"
	"github.com/petrelchat/petrel/internal/testcerts"
	"github.com/petrelchat/petrel/internal/testserver"
)

// Options adjust a cluster before start.
type Options struct {
	// Config, if set, changes node i's config before its first start.
	Config func(i int, c *server.Config)
	// Proxies routes every cluster route through a fault-injecting proxy (internal/faultproxy), one per direction of
	// each pair of nodes (node i dials node j through its own proxy), so that Partition can cut a
	// node off. Each node advertises a closed port, so no route learnt by gossip bypasses them.
	Proxies bool
	// SecureRoutes gives every node the same cluster_token_file (a random secret) and a route
	// certificate signed by a CA made for the cluster (cluster_tls_cert, cluster_tls_key,
	// cluster_tls_ca), before Config runs. Cluster.RouteCA and Cluster.TokenFile give them.
	SecureRoutes bool
	// Log, if set, receives every node's log at debug level (each line carries node=NAME). The
	// environment variable PETREL_TEST_LOG sends it to stderr instead.
	Log io.Writer
}

// Cluster is a running set of nodes.
type Cluster struct {
	opts  Options
	base  *slog.Logger
	nodes []*Node
	// proxies[i][j] carries node i's routes to node j (nil without Options.Proxies, and for i == j).
	proxies [][]*faultproxy.Proxy
	// routeCA and tokenFile secure the routes (Options.SecureRoutes); nil and "" otherwise.
	routeCA   *testcerts.CA
	tokenFile string
}

// Node is one Petrel node of a cluster.
type Node struct {
	cfg    server.Config
	log    *slog.Logger
	srv    *server.Server
	cancel context.CancelFunc // nil while the node is down
	errc   chan error
}

// startTimeout bounds a node's start (in a cluster: until a JetStream meta leader exists and
// migrations ran).
const startTimeout = 60 * time.Second

// Start starts n clustered nodes, named n1..nN, and stops them when the test ends. Each node's
// peers list holds every node's cluster address, its own included.
func Start(t testing.TB, n int, opts Options) *Cluster {
	t.Helper()
	addrs := freeAddrs(t, n+1) // the last one stays closed: the advertised address with Proxies
	peers := addrs[:n]
	c := &Cluster{opts: opts, base: baseLogger(opts)}
	base := c.base
	c.prepareSecureRoutes(t)
	if opts.Proxies {
		c.proxies = make([][]*faultproxy.Proxy, n)
		for i := range n {
			c.proxies[i] = make([]*faultproxy.Proxy, n)
			for j := range n {
				if i != j {
					p, err := faultproxy.New(peers[j])
					if err != nil {
						t.Fatalf("testcluster: %v", err)
					}
					t.Cleanup(p.Close)
					c.proxies[i][j] = p
				}
			}
		}
	}
	for i := range n {
		listen, admin := nodeAddrs(t)
		cfg := server.Config{
			Listen:         listen,
			AdminSection:   server.AdminSection{AdminListen: admin},
			InboxSection:   server.InboxSection{InboxShards: 4},
			Data:           t.TempDir(),
			Node:           fmt.Sprintf("n%d", i+1),
			ClusterSection: server.ClusterSection{ClusterListen: peers[i], Peers: peers, ClusterName: "petrel-test"},
		}
		if opts.Proxies {
			cfg.Peers = nil
			for j, p := range c.proxies[i] {
				if j != i {
					cfg.Peers = append(cfg.Peers, p.Addr())
				}
			}
			cfg.ClusterAdvertise = addrs[n]
		}
		c.secureRoutes(t, &cfg)
		if opts.Config != nil {
			opts.Config(i, &cfg)
		}
		c.nodes = append(c.nodes, &Node{cfg: cfg, log: base.With("node", cfg.Node)})
	}
	t.Cleanup(c.Stop)
	// Every node must be launched before any is waited for: none is ready until a majority is up.
	for _, nd := range c.nodes {
		nd.launch(t)
	}
	for _, nd := range c.nodes {
		nd.wait(t)
	}
	return c
}

func baseLogger(opts Options) *slog.Logger {
	var out io.Writer = io.Discard
	level := slog.LevelInfo
	switch {
	case opts.Log != nil:
		out, level = opts.Log, slog.LevelDebug
	case os.Getenv("PETREL_TEST_LOG") != "":
		out, level = os.Stderr, slog.LevelDebug
	}
	return slog.New(slog.NewTextHandler(out, &slog.HandlerOptions{Level: level}))
}

// StartSingle starts one node, n1, without cluster settings: a single-node deployment, as
// `petrel serve --data DIR` runs it. Grow turns it into a cluster. Options.Proxies is not
// supported here.
func StartSingle(t testing.TB, opts Options) *Cluster {
	t.Helper()
	if opts.Proxies {
		t.Fatal("testcluster: StartSingle does not support Options.Proxies")
	}
	c := &Cluster{opts: opts, base: baseLogger(opts)}
	listen, admin := nodeAddrs(t)
	cfg := server.Config{
		Listen:       listen,
		AdminSection: server.AdminSection{AdminListen: admin},
		InboxSection: server.InboxSection{InboxShards: 4},
		Data:         t.TempDir(),
		Node:         "n1",
	}
	if opts.Config != nil {
		opts.Config(0, &cfg)
	}
	c.nodes = []*Node{{cfg: cfg, log: c.base.With("node", cfg.Node)}}
	t.Cleanup(c.Stop)
	c.nodes[0].launch(t)
	c.nodes[0].wait(t)
	return c
}

// Grow follows the README's procedure for growing a single node into an n-node cluster: it stops
// the single node (gracefully), restarts it on its data directory and ports with cluster
// settings (cluster_listen, peers, cluster_name), starts n-1 fresh nodes with the same settings,
// and waits until every node serves. The grown node imports its store before any node serves.
func (c *Cluster) Grow(t testing.TB, n int) {
	t.Helper()
	if len(c.nodes) != 1 || c.proxies != nil {
		t.Fatal("testcluster: Grow needs a cluster from StartSingle")
	}
	peers := freeAddrs(t, n)
	first := c.nodes[0]
	first.Stop()
	first.cfg.ClusterSection = server.ClusterSection{ClusterListen: peers[0], Peers: peers, ClusterName: "petrel-test"}
	c.prepareSecureRoutes(t)
	c.secureRoutes(t, &first.cfg)
	for i := 1; i < n; i++ {
		listen, admin := nodeAddrs(t)
		cfg := server.Config{
			Listen:         listen,
			AdminSection:   server.AdminSection{AdminListen: admin},
			InboxSection:   server.InboxSection{InboxShards: first.cfg.InboxShards},
			Data:           t.TempDir(),
			Node:           fmt.Sprintf("n%d", i+1),
			ClusterSection: server.ClusterSection{ClusterListen: peers[i], Peers: peers, ClusterName: "petrel-test"},
		}
		c.secureRoutes(t, &cfg)
		if c.opts.Config != nil {
			c.opts.Config(i, &cfg)
		}
		c.nodes = append(c.nodes, &Node{cfg: cfg, log: c.base.With("node", cfg.Node)})
	}
	for _, nd := range c.nodes {
		nd.launch(t)
	}
	for _, nd := range c.nodes {
		nd.wait(t)
	}
}

// prepareSecureRoutes makes the cluster's route CA and secret file (Options.SecureRoutes).
func (c *Cluster) prepareSecureRoutes(t testing.TB) {
	t.Helper()
	if !c.opts.SecureRoutes || c.routeCA != nil {
		return
	}
	c.routeCA = testcerts.NewCA(t, "petrel-test cluster CA")
	c.tokenFile = WriteSecret(t)
}

// secureRoutes gives a node's config the cluster secret and a route certificate of its own.
func (c *Cluster) secureRoutes(t testing.TB, cfg *server.Config) {
	t.Helper()
	if c.routeCA == nil {
		return
	}
	f := c.routeCA.Issue(t, cfg.Node)
	cfg.ClusterTokenFile = c.tokenFile
	cfg.ClusterTLSCert, cfg.ClusterTLSKey, cfg.ClusterTLSCA = f.CertFile, f.KeyFile, c.routeCA.CertFile
}

// WriteSecret writes a new random cluster secret (64 hex digits, as openssl rand -hex 32) to a
// file in a temporary directory, readable by the owner only, and returns its path.
func WriteSecret(t testing.TB) string {
	t.Helper()
	var b [32]byte
	if _, err := rand.Read(b[:]); err != nil {
		t.Fatal(err)
	}
	path := filepath.Join(t.TempDir(), "cluster.token")
	if err := os.WriteFile(path, []byte(hex.EncodeToString(b[:])+"\n"), 0o600); err != nil {
		t.Fatal(err)
	}
	return path
}

// RouteCA is the CA that signed the nodes' route certificates (Options.SecureRoutes), nil
// without it.
func (c *Cluster) RouteCA() *testcerts.CA { return c.routeCA }

// TokenFile is the nodes' cluster_token_file (Options.SecureRoutes), "" without it.
func (c *Cluster) TokenFile() string { return c.tokenFile }

// freeAddrs finds n free loopback addresses, on ports below the kernel's ephemeral range so that
// no port 0 bind (another node's NATS client listener, a proxy) and no outgoing connection takes
// one before its node binds it.
func freeAddrs(t testing.TB, n int) []string {
	t.Helper()
	addrs, err := freeport.LoopbackAddrs(n)
	if err != nil {
		t.Fatalf("testcluster: %v", err)
	}
	return addrs
}

// nodeAddrs returns a node's public and admin listen addresses, from freeAddrs. A node keeps its
// ports across restarts (wait pins them); a port 0 bind at its first start came from the
// ephemeral range, where, while the node was down, any process's outgoing connection could take
// it (seen: a RestartAll's admin listener found its port in use).
func nodeAddrs(t testing.TB) (listen, admin string) {
	t.Helper()
	a := freeAddrs(t, 2)
	return a[0], a[1]
}

// Nodes returns the nodes, in start order.
func (c *Cluster) Nodes() []*Node { return c.nodes }

// Node returns node i (0-based: Node(0) is n1).
func (c *Cluster) Node(i int) *Node { return c.nodes[i] }

// Stop stops every running node gracefully, in parallel, and waits. Idempotent.
func (c *Cluster) Stop() {
	var wg sync.WaitGroup
	for _, nd := range c.nodes {
		wg.Go(nd.Stop)
	}
	wg.Wait()
}

// RestartAll stops every node gracefully, then starts them all again together (none is ready
// until a majority is up) and waits until each serves: a change of settings that every node
// must take at once.
func (c *Cluster) RestartAll(t testing.TB) {
	t.Helper()
	c.Stop()
	for _, nd := range c.nodes {
		nd.launch(t)
	}
	for _, nd := range c.nodes {
		nd.wait(t)
	}
}

// Partition cuts node i (0-based) off from every other node: the proxies of its routes, both
// ways, close their connections and refuse new ones. Needs Options.Proxies.
func (c *Cluster) Partition(t testing.TB, i int) {
	t.Helper()
	c.eachProxyOf(t, i, (*faultproxy.Proxy).Cut)
}

// Heal undoes Partition(i): the nodes' routes reconnect by themselves within seconds.
func (c *Cluster) Heal(t testing.TB, i int) {
	t.Helper()
	c.eachProxyOf(t, i, (*faultproxy.Proxy).Heal)
}

// CutRoute cuts the routes between nodes i and j (0-based) only, both ways: each keeps its routes
// to the others, so a 3-node cluster keeps its majorities. Needs Options.Proxies.
func (c *Cluster) CutRoute(t testing.TB, i, j int) {
	t.Helper()
	c.pairProxies(t, i, j, (*faultproxy.Proxy).Cut)
}

// HealRoute undoes CutRoute(i, j).
func (c *Cluster) HealRoute(t testing.TB, i, j int) {
	t.Helper()
	c.pairProxies(t, i, j, (*faultproxy.Proxy).Heal)
}

func (c *Cluster) pairProxies(t testing.TB, i, j int, f func(*faultproxy.Proxy)) {
	t.Helper()
	if c.proxies == nil || i == j {
		t.Fatal("testcluster: cutting a route needs Options.Proxies and two nodes")
	}
	f(c.proxies[i][j])
	f(c.proxies[j][i])
}

func (c *Cluster) eachProxyOf(t testing.TB, i int, f func(*faultproxy.Proxy)) {
	t.Helper()
	if c.proxies == nil {
		t.Fatal("testcluster: partitions need Options.Proxies")
	}
	for j := range c.nodes {
		if j != i {
			f(c.proxies[i][j])
			f(c.proxies[j][i])
		}
	}
}

// launch starts the node's server without waiting for it.
func (nd *Node) launch(t testing.TB) {
	t.Helper()
	srv, err := server.New(nd.cfg, nd.log)
	if err != nil {
		t.Fatalf("testcluster: %s: %v", nd.cfg.Node, err)
	}
	ctx, cancel := context.WithCancel(context.Background())
	nd.srv, nd.cancel, nd.errc = srv, cancel, make(chan error, 1)
	go func() { nd.errc <- srv.Run(ctx) }()
}

// wait waits until the launched server serves, then pins its ports so that a restart comes back
// at the same URLs.
func (nd *Node) wait(t testing.TB) {
	t.Helper()
	select {
	case <-nd.srv.Ready():
	case err := <-nd.errc:
		nd.cancel()
		nd.cancel = nil
		t.Fatalf("testcluster: %s: start: %v", nd.cfg.Node, err)
	case <-time.After(startTimeout):
		t.Fatalf("testcluster: %s: not ready within %s", nd.cfg.Node, startTimeout)
	}
	testserver.ProbePollers(t, nd.srv.URL())
	nd.cfg.Listen = nd.srv.Addr().String()
	if a := nd.srv.AdminAddr(); a != nil {
		nd.cfg.AdminListen = a.String()
	}
}

// Configure changes the node's settings for its next start (Restart, RestartAll).
func (nd *Node) Configure(f func(*server.Config)) { f(&nd.cfg) }

// Name is the node's name (its NATS server name).
func (nd *Node) Name() string { return nd.cfg.Node }

// URL is the node's base URL (http://127.0.0.1:PORT) for clients.
func (nd *Node) URL() string { return nd.srv.URL() }

// AdminURL is the node's admin listener (/metrics needs no token on loopback).
func (nd *Node) AdminURL() string { return nd.srv.AdminURL() }

// ClusterAddr is the node's cluster route address.
func (nd *Node) ClusterAddr() string { return nd.cfg.ClusterListen }

// DataDir is the node's data directory.
func (nd *Node) DataDir() string { return nd.cfg.Data }

// Server is the node's running server (the last one started).
func (nd *Node) Server() *server.Server { return nd.srv }

// Running reports whether the node is up (started and neither stopped nor killed).
func (nd *Node) Running() bool { return nd.cancel != nil }

// Stop shuts the node down gracefully (lame-duck drain) and waits. Idempotent.
func (nd *Node) Stop() {
	if nd.cancel == nil {
		return
	}
	nd.cancel()
	<-nd.errc
	nd.cancel = nil
}

// Kill stops the node abruptly (server.Server.Kill: no drain, sockets cut, embedded NATS shut
// down) and waits. Idempotent.
func (nd *Node) Kill() {
	if nd.cancel == nil {
		return
	}
	nd.srv.Kill()
	nd.cancel()
	<-nd.errc
	nd.cancel = nil
}

// Restart starts a stopped or killed node again on the same data directory and ports (a running
// node is stopped first) and waits until it serves.
func (nd *Node) Restart(t testing.TB) {
	t.Helper()
	nd.Stop()
	nd.launch(t)
	nd.wait(t)
}

// Wipe kills the node if it runs, deletes its data directory (a lost disk), and starts it
// again: it rejoins the cluster empty, under the same name, and catches up from the others.
func (nd *Node) Wipe(t testing.TB) {
	t.Helper()
	nd.Kill()
	if err := os.RemoveAll(nd.cfg.Data); err != nil {
		t.Fatalf("testcluster: wipe %s: %v", nd.cfg.Node, err)
	}
	nd.launch(t)
	nd.wait(t)
}

// Launch starts a stopped node without waiting until it serves: for a node that must not get
// into the cluster. Stop ends it.
func (nd *Node) Launch(t testing.TB) {
	t.Helper()
	nd.launch(t)
}

// StartErr starts a stopped node and returns its start error, nil once it serves: for starts
// that must be refused.
func (nd *Node) StartErr(t testing.TB) error {
	t.Helper()
	nd.launch(t)
	select {
	case <-nd.srv.Ready():
		nd.wait(t)
		return nil
	case err := <-nd.errc:
		nd.cancel()
		nd.cancel = nil
		return err
	case <-time.After(startTimeout):
		t.Fatalf("testcluster: %s: neither ready nor failed within %s", nd.cfg.Node, startTimeout)
		return nil
	}
}

// WaitLeaders waits up to d until every stream and bucket, asked through node nd, has a leader:
// after a node stops or restarts, JetStream elects new ones within seconds, and until then
// requests touching those streams are answered UNAVAILABLE.
func (nd *Node) WaitLeaders(t testing.TB, d time.Duration) {
	t.Helper()
	js := nd.srv.Bus().JS()
	WaitFor(t, d, func() error {
		ctx, cancel := context.WithTimeout(context.Background(), 2*time.Second)
		defer cancel()
		names := js.StreamNames(ctx)
		var all []string
		for n := range names.Name() {
			all = append(all, n)
		}
		if err := names.Err(); err != nil {
			return fmt.Errorf("list streams via %s: %w", nd.cfg.Node, err)
		}
		if len(all) == 0 {
			return fmt.Errorf("no streams listed via %s", nd.cfg.Node)
		}
		for _, n := range all {
			s, err := js.Stream(ctx, n)
			if err != nil {
				return fmt.Errorf("stream %s via %s: %w", n, nd.cfg.Node, err)
			}
			if ci := s.CachedInfo().Cluster; ci == nil || ci.Leader == "" {
				return fmt.Errorf("stream %s has no leader", n)
			}
		}
		return nil
	})
}

// WaitFor polls cond every 20ms until it returns nil, failing the test with cond's last error
// after d. For conditions no event announces (cluster state seen from one node).
func WaitFor(t testing.TB, d time.Duration, cond func() error) {
	t.Helper()
	deadline := time.Now().Add(d)
	for {
		err := cond()
		if err == nil {
			return
		}
		if time.Now().After(deadline) {
			t.Fatalf("testcluster: condition not met within %s: %v", d, err)
		}
		time.Sleep(20 * time.Millisecond) // polling: no event announces cluster state
	}
}
