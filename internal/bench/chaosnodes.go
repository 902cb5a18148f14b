// Copyright 2026 The Petrel Authors
// SPDX-License-Identifier: Apache-2.0

package bench

import (
	"bytes"
	"context"
	"crypto/rand"
	"encoding/hex"
	"errors"
	"fmt"
	"net/http"
	"os"
	"os/exec"
	"path/filepath"
	"strconv"
	"strings"
	"sync"
	"syscall"
	"time"

	"github.com/petrelchat/petrel/internal/faultproxy"
	"github.com/petrelchat/petrel/internal/freeport"
)

// chaosNode is one node process that chaos may kill, stop, restart and partition. A managed node
// was started by chaos (its routes run through chaos's proxies); an external one was given with
// --server and --server-pid, and is restarted from its own command line (/proc/PID/cmdline).
type chaosNode struct {
	name  string // n1, n2, …
	url   string // public base URL
	admin string // admin listener base URL ("" for external nodes: not needed after registration)
	argv  []string
	dir   string   // working directory of a restart
	env   []string // environment of a restart (nil: this process's)
	logs  string   // file receiving the node's stdout and stderr
	// proxies carry this node's cluster routes, both ways (managed nodes only).
	proxies []*faultproxy.Proxy
	command func(argv []string) *exec.Cmd
	// detach starts the process in its own session, outliving chaos (restarts of external nodes).
	detach bool

	// onExit, if set, is called (on the goroutine that waited) when a process exits that chaos
	// did not signal: a crash.
	onExit func(n *chaosNode, err error)

	mu       sync.Mutex // guards the following fields
	pid      int
	done     chan struct{} // closed when the current process has exited
	signaled bool          // chaos signalled the current process
	cpuDead  time.Duration // CPU time of the node's processes that have exited
	cpuLast  time.Duration // last CPU reading of the running process
	starts   int
	cut      bool
}

// launch starts the node's process (again); wg owns the goroutine that waits for it.
func (n *chaosNode) launch(wg *sync.WaitGroup) error {
	cmd := n.command(n.argv)
	cmd.Dir, cmd.Env = n.dir, n.env
	f, err := os.OpenFile(n.logs, os.O_CREATE|os.O_WRONLY|os.O_APPEND, 0o644)
	if err != nil {
		return err
	}
	fmt.Fprintf(f, "=== chaos: %s start %d at %s\n", n.name, n.starts+1, time.Now().UTC().Format(time.RFC3339Nano))
	cmd.Stdout, cmd.Stderr = f, f
	if n.detach {
		cmd.SysProcAttr = &syscall.SysProcAttr{Setsid: true}
	} else {
		setDeathSignal(cmd)
	}
	if err := cmd.Start(); err != nil {
		f.Close()
		return fmt.Errorf("%s: start: %w", n.name, err)
	}
	done := make(chan struct{})
	n.mu.Lock()
	n.pid, n.done, n.signaled = cmd.Process.Pid, done, false
	n.starts++
	n.mu.Unlock()
	wg.Go(func() {
		err := cmd.Wait()
		f.Close()
		n.mu.Lock()
		if st := cmd.ProcessState; st != nil {
			n.cpuDead += st.UserTime() + st.SystemTime()
		}
		n.cpuLast = 0
		crashed := !n.signaled
		n.mu.Unlock()
		close(done)
		if crashed && n.onExit != nil {
			if err == nil {
				err = errors.New("exit status 0")
			}
			n.onExit(n, err)
		}
	})
	return nil
}

// lastLogLine returns the last non-empty line of the node's log (its last words when it exits).
func (n *chaosNode) lastLogLine() string {
	f, err := os.Open(n.logs)
	if err != nil {
		return ""
	}
	defer f.Close()
	st, err := f.Stat()
	if err != nil {
		return ""
	}
	off := max(0, st.Size()-1024)
	b := make([]byte, st.Size()-off)
	if _, err := f.ReadAt(b, off); err != nil {
		return ""
	}
	lines := strings.Split(strings.TrimSpace(string(b)), "\n")
	return lines[len(lines)-1]
}

// adopt watches an external process (not our child): done closes when /proc/PID vanishes.
func (n *chaosNode) adopt(ctx context.Context, wg *sync.WaitGroup, pid int) {
	done := make(chan struct{})
	n.mu.Lock()
	n.pid, n.done = pid, done
	n.starts++
	n.mu.Unlock()
	wg.Go(func() {
		defer close(done)
		t := time.NewTicker(50 * time.Millisecond)
		defer t.Stop()
		for {
			cpu, err := procCPU(pid)
			n.mu.Lock()
			if err != nil {
				n.cpuDead += n.cpuLast // the last reading: the process's end is not seen
				n.cpuLast = 0
				n.mu.Unlock()
				return
			}
			n.cpuLast = cpu
			n.mu.Unlock()
			select {
			case <-t.C:
			case <-ctx.Done():
				return
			}
		}
	})
}

// running returns the current process's id and its exit channel.
func (n *chaosNode) running() (int, chan struct{}) {
	n.mu.Lock()
	defer n.mu.Unlock()
	return n.pid, n.done
}

func (n *chaosNode) isUp() bool {
	_, done := n.running()
	select {
	case <-done:
		return false
	default:
		return true
	}
}

// signal sends sig to the running process and waits up to bound for it to exit.
func (n *chaosNode) signal(sig syscall.Signal, bound time.Duration) error {
	pid, done := n.running()
	select {
	case <-done:
		return nil
	default:
	}
	n.mu.Lock()
	n.signaled = true
	n.mu.Unlock()
	if err := syscall.Kill(pid, sig); err != nil && !errors.Is(err, syscall.ESRCH) {
		return fmt.Errorf("%s: kill -%d %d: %w", n.name, sig, pid, err)
	}
	t := time.NewTimer(bound)
	defer t.Stop()
	select {
	case <-done:
		return nil
	case <-t.C:
		return fmt.Errorf("%s: pid %d still running %v after signal %d", n.name, pid, bound, sig)
	}
}

// cpu returns the CPU time all the node's processes have used so far.
func (n *chaosNode) cpu() time.Duration {
	n.mu.Lock()
	pid, done, dead := n.pid, n.done, n.cpuDead
	n.mu.Unlock()
	select {
	case <-done:
		return dead
	default:
	}
	c, err := procCPU(pid)
	if err != nil {
		return dead
	}
	n.mu.Lock()
	n.cpuLast = c
	n.mu.Unlock()
	return dead + c
}

func (n *chaosNode) rss() int64 {
	pid, done := n.running()
	select {
	case <-done:
		return 0
	default:
	}
	v, _ := procRSS(pid)
	return v
}

// setCut cuts (or heals) every route of the node.
func (n *chaosNode) setCut(cut bool) {
	n.mu.Lock()
	n.cut = cut
	n.mu.Unlock()
	for _, p := range n.proxies {
		if cut {
			p.Cut()
		} else {
			p.Heal()
		}
	}
}

func (n *chaosNode) isCut() bool {
	n.mu.Lock()
	defer n.mu.Unlock()
	return n.cut
}

// ready reports whether the node answers /readyz with 200.
func (n *chaosNode) ready(ctx context.Context, hc *http.Client) bool {
	ctx, cancel := context.WithTimeout(ctx, 2*time.Second)
	defer cancel()
	req, err := http.NewRequestWithContext(ctx, http.MethodGet, n.url+"/readyz", nil)
	if err != nil {
		return false
	}
	resp, err := hc.Do(req)
	if err != nil {
		return false
	}
	resp.Body.Close()
	return resp.StatusCode == http.StatusOK
}

// chaosNodes is the set of nodes of a chaos run.
type chaosNodes struct {
	nodes []*chaosNode
	hc    *http.Client
	wg    sync.WaitGroup // owns the goroutines waiting for node processes
	// stopWatch ends the watchers of external processes.
	stopWatch context.CancelFunc
	watchCtx  context.Context
	proxies   []*faultproxy.Proxy
	dir       string
	token     string
}

func newChaosNodes() *chaosNodes {
	ctx, cancel := context.WithCancel(context.Background())
	return &chaosNodes{hc: &http.Client{Timeout: 5 * time.Second}, watchCtx: ctx, stopWatch: cancel}
}

// startManaged starts n clustered nodes on loopback: fresh data directories under dir, one
// operator token for all, every cluster route through a fault-injecting proxy (node i dials node
// j through its own proxy), and a closed port advertised so that no route learnt by gossip
// bypasses them.
func (cn *chaosNodes) startManaged(n int, dir, logLevel string, command func([]string) *exec.Cmd) error {
	cn.dir = dir
	var tok [32]byte
	_, _ = rand.Read(tok[:])
	cn.token = hex.EncodeToString(tok[:])
	tokenFile := filepath.Join(dir, "admin.token")
	if err := os.WriteFile(tokenFile, []byte(cn.token+"\n"), 0o600); err != nil {
		return err
	}
	conf := filepath.Join(dir, "petrel.toml")
	if err := os.WriteFile(conf, fmt.Appendf(nil, "[admin]\ntoken_file = %q\n", tokenFile), 0o600); err != nil {
		return err
	}
	// Below the ephemeral range: no port 0 bind (a node's NATS client listener, a proxy) takes
	// one before its node binds it.
	ports, err := freeport.Loopback(3*n + 1)
	if err != nil {
		return err
	}
	addr := func(p int) string { return "127.0.0.1:" + strconv.Itoa(p) }
	advertise := addr(ports[3*n]) // stays closed
	proxies := make([][]*faultproxy.Proxy, n)
	for i := range n {
		proxies[i] = make([]*faultproxy.Proxy, n)
		for j := range n {
			if i == j {
				continue
			}
			p, err := faultproxy.New(addr(ports[3*j+2]))
			if err != nil {
				return err
			}
			proxies[i][j] = p
			cn.proxies = append(cn.proxies, p)
		}
	}
	for i := range n {
		nd := &chaosNode{
			name:    fmt.Sprintf("n%d", i+1),
			url:     "http://" + addr(ports[3*i]),
			admin:   "http://" + addr(ports[3*i+1]),
			logs:    filepath.Join(dir, fmt.Sprintf("n%d.log", i+1)),
			command: command,
		}
		var peers []string
		for j := range n {
			if j != i {
				peers = append(peers, proxies[i][j].Addr())
				nd.proxies = append(nd.proxies, proxies[i][j], proxies[j][i])
			}
		}
		nd.argv = []string{"serve", "--config", conf, "--data", filepath.Join(dir, nd.name),
			"--listen", addr(ports[3*i]), "--admin-listen", addr(ports[3*i+1]),
			"--cluster-listen", addr(ports[3*i+2]), "--peers", strings.Join(peers, ","),
			"--cluster-advertise", advertise, "--log-level", logLevel}
		cn.nodes = append(cn.nodes, nd)
	}
	// Every node is launched before any is waited for: none is ready until a majority is up.
	for _, nd := range cn.nodes {
		if err := nd.launch(&cn.wg); err != nil {
			return err
		}
	}
	return nil
}

// adoptExternal takes nodes given as URLs and process ids; their command lines, working
// directories and environments are read now so that a killed node can be started again.
func (cn *chaosNodes) adoptExternal(urls []string, pids []int, dir string) error {
	cn.dir = dir
	for i, u := range urls {
		pid := pids[i]
		argv, err := readNulList(fmt.Sprintf("/proc/%d/cmdline", pid))
		if err != nil || len(argv) == 0 {
			return fmt.Errorf("server pid %d: read its command line: %v", pid, err)
		}
		cwd, err := os.Readlink(fmt.Sprintf("/proc/%d/cwd", pid))
		if err != nil {
			return fmt.Errorf("server pid %d: %w", pid, err)
		}
		env, err := readNulList(fmt.Sprintf("/proc/%d/environ", pid))
		if err != nil {
			return fmt.Errorf("server pid %d: %w", pid, err)
		}
		exe := argv[0]
		if !filepath.IsAbs(exe) && strings.ContainsRune(exe, '/') {
			exe = filepath.Join(cwd, exe)
		}
		nd := &chaosNode{
			name: fmt.Sprintf("n%d", i+1), url: u, argv: argv[1:], dir: cwd, env: env,
			logs:   filepath.Join(dir, fmt.Sprintf("n%d.log", i+1)),
			detach: true,
			command: func(args []string) *exec.Cmd {
				return exec.Command(exe, args...)
			},
		}
		nd.adopt(cn.watchCtx, &cn.wg, pid)
		cn.nodes = append(cn.nodes, nd)
	}
	return nil
}

func readNulList(path string) ([]string, error) {
	b, err := os.ReadFile(path)
	if err != nil {
		return nil, err
	}
	var out []string
	for _, s := range bytes.Split(bytes.TrimRight(b, "\x00"), []byte{0}) {
		out = append(out, string(s))
	}
	return out, nil
}

// waitReady waits until every node that is up and not cut answers /readyz (and every node is
// up and not cut, unless partial), or the bound passes.
func (cn *chaosNodes) waitReady(ctx context.Context, bound time.Duration) error {
	end := time.Now().Add(bound)
	for {
		var notReady []string
		for _, nd := range cn.nodes {
			if !nd.isUp() || !nd.ready(ctx, cn.hc) {
				notReady = append(notReady, nd.name)
			}
		}
		if len(notReady) == 0 {
			return nil
		}
		if time.Now().After(end) {
			return fmt.Errorf("nodes %s not ready within %v (logs in %s)", strings.Join(notReady, ", "), bound, cn.dir)
		}
		t := time.NewTimer(100 * time.Millisecond)
		select {
		case <-t.C:
		case <-ctx.Done():
			t.Stop()
			return ctx.Err()
		}
	}
}

func (cn *chaosNodes) urls() []string {
	out := make([]string, len(cn.nodes))
	for i, nd := range cn.nodes {
		out[i] = nd.url
	}
	return out
}

func (cn *chaosNodes) byURL(u string) *chaosNode {
	for _, nd := range cn.nodes {
		if nd.url == u {
			return nd
		}
	}
	return nil
}

// cpu sums the CPU time of every node process so far.
func (cn *chaosNodes) cpu() time.Duration {
	var d time.Duration
	for _, nd := range cn.nodes {
		d += nd.cpu()
	}
	return d
}

// stop heals every route and kills the nodes chaos started (kill -9: the run is over and their
// state on disk is consistent anyway, as the run just showed) and waits for them. External nodes are left running, restarted ones too (in their own
// session); the goroutines waiting for those end when they exit or this process does.
func (cn *chaosNodes) stop(managed bool, bound time.Duration) {
	for _, nd := range cn.nodes {
		nd.setCut(false)
	}
	if managed {
		for _, nd := range cn.nodes {
			_ = nd.signal(syscall.SIGKILL, bound)
		}
	}
	cn.stopWatch()
	for _, p := range cn.proxies {
		p.Close()
	}
	if managed {
		cn.wg.Wait()
	}
}
