// Copyright 2026 The Petrel Authors
// SPDX-License-Identifier: Apache-2.0

package bench

import (
	"context"
	"encoding/json"
	"errors"
	"fmt"
	"io"
	"os"
	"os/exec"
	"sync"
	"time"
)

// Worker protocol: the coordinator starts a worker (WorkerCommand: by default this binary's
// hidden `bench-worker` subcommand) and speaks JSON lines over its standard input and output.
//
//	coordinator → worker: {"spec": shardSpec}           worker → coordinator: {"ready": true, "pid": …}
//	coordinator → worker: {"step": "connect", "at": …}  worker → coordinator: {"report": …} or {"error": "…"}
//	… one answer per step …
//	coordinator closes the worker's standard input      worker closes its connections and exits 0
//
// The worker's standard error carries its log lines. A worker also stops by itself at the spec's
// deadline.

type workerMsg struct {
	Spec *shardSpec `json:"spec,omitempty"`
	Step string     `json:"step,omitempty"`
	At   time.Time  `json:"at,omitzero"`
}

type workerReply struct {
	Ready  bool    `json:"ready,omitempty"`
	PID    int     `json:"pid,omitempty"`
	NoFile uint64  `json:"nofile,omitempty"`
	Report *report `json:"report,omitempty"`
	Error  string  `json:"error,omitempty"`
}

// RunWorker is the worker process's main: it reads a shard spec and steps from stdin and writes
// one reply per message to stdout. It returns the process exit code.
func RunWorker(ctx context.Context, stdin io.Reader, stdout, stderr io.Writer) int {
	dec := json.NewDecoder(stdin)
	enc := json.NewEncoder(stdout)
	var m workerMsg
	if err := dec.Decode(&m); err != nil || m.Spec == nil {
		fmt.Fprintf(stderr, "petrel bench-worker: expected a spec on standard input (%v); this command is started by petrel bench\n", err)
		return 2
	}
	spec := m.Spec
	ctx, cancel := context.WithDeadline(ctx, spec.Deadline)
	defer cancel()
	// Stop waiting for the coordinator at the deadline.
	if c, ok := stdin.(io.Closer); ok {
		stop := context.AfterFunc(ctx, func() { c.Close() })
		defer stop()
	}
	r, err := newRunner(spec)
	if err != nil {
		_ = enc.Encode(workerReply{Error: err.Error()})
		return 1
	}
	defer r.close()
	soft, _ := NoFileLimit()
	if err := enc.Encode(workerReply{Ready: true, PID: os.Getpid(), NoFile: soft}); err != nil {
		return 1
	}
	for {
		var m workerMsg
		if err := dec.Decode(&m); err != nil {
			if errors.Is(err, io.EOF) || ctx.Err() == nil {
				return 0
			}
			fmt.Fprintf(stderr, "petrel bench-worker %d: %v\n", spec.Index, context.Cause(ctx))
			return 1
		}
		rep, err := r.step(ctx, m.Step, m.At)
		reply := workerReply{Report: rep}
		if err != nil {
			reply.Error = err.Error()
		}
		if err := enc.Encode(reply); err != nil {
			return 1
		}
	}
}

// shardHandle is the coordinator's side of one shard.
type shardHandle interface {
	step(ctx context.Context, name string, at time.Time) (*report, error)
	pid() int // the process holding the shard's connections
	close()
}

// localShard runs in this process.
type localShard struct{ r runner }

func (l *localShard) step(ctx context.Context, name string, at time.Time) (*report, error) {
	return l.r.step(ctx, name, at)
}
func (l *localShard) pid() int { return os.Getpid() }
func (l *localShard) close()   { l.r.close() }

// workerShard is a worker process.
type workerShard struct {
	cmd   *exec.Cmd
	stdin io.WriteCloser
	enc   *json.Encoder
	dec   *json.Decoder
	wpid  int
	index int
}

func startWorker(ctx context.Context, newCmd func(context.Context) *exec.Cmd, stderr io.Writer, spec *shardSpec) (*workerShard, error) {
	cmd := newCmd(ctx)
	cmd.Stderr = stderr
	stdin, err := cmd.StdinPipe()
	if err != nil {
		return nil, err
	}
	stdout, err := cmd.StdoutPipe()
	if err != nil {
		return nil, err
	}
	if err := cmd.Start(); err != nil {
		return nil, fmt.Errorf("start worker: %w", err)
	}
	w := &workerShard{cmd: cmd, stdin: stdin, enc: json.NewEncoder(stdin), dec: json.NewDecoder(stdout), index: spec.Index}
	fail := func(err error) (*workerShard, error) {
		w.kill()
		return nil, fmt.Errorf("worker %d: %w", spec.Index, err)
	}
	if err := w.enc.Encode(workerMsg{Spec: spec}); err != nil {
		return fail(err)
	}
	var r workerReply
	if err := w.dec.Decode(&r); err != nil {
		return fail(fmt.Errorf("no answer (%v)", err))
	}
	if !r.Ready {
		return fail(errors.New(r.Error))
	}
	w.wpid = r.PID
	return w, nil
}

func (w *workerShard) step(ctx context.Context, name string, at time.Time) (*report, error) {
	if err := w.enc.Encode(workerMsg{Step: name, At: at}); err != nil {
		return nil, fmt.Errorf("worker %d: %w", w.index, err)
	}
	var r workerReply
	if err := w.dec.Decode(&r); err != nil {
		return nil, fmt.Errorf("worker %d: no report for %s: %w", w.index, name, err)
	}
	if r.Error != "" {
		return r.Report, fmt.Errorf("worker %d: %s", w.index, r.Error)
	}
	if r.Report == nil {
		return nil, fmt.Errorf("worker %d: empty report for %s", w.index, name)
	}
	return r.Report, nil
}

func (w *workerShard) pid() int { return w.wpid }

// close ends the worker: EOF on its input, then (after a grace period) SIGKILL to this child.
func (w *workerShard) close() {
	w.stdin.Close()
	done := make(chan struct{})
	go func() { _ = w.cmd.Wait(); close(done) }()
	select {
	case <-done:
	case <-time.After(30 * time.Second):
		_ = w.cmd.Process.Kill()
		<-done
	}
}

func (w *workerShard) kill() {
	w.stdin.Close()
	_ = w.cmd.Process.Kill()
	_ = w.cmd.Wait()
}

// cluster is the coordinator's set of shards for one run.
type cluster struct {
	cfg    *Config
	shards []shardHandle
}

// startShards starts one shard per spec: in this process when there is one spec, otherwise one
// worker process each.
func startShards(ctx context.Context, cfg *Config, specs []*shardSpec) (*cluster, error) {
	cl := &cluster{cfg: cfg}
	if len(specs) == 1 {
		r, err := newRunner(specs[0])
		if err != nil {
			return nil, err
		}
		cl.shards = []shardHandle{&localShard{r: r}}
		return cl, nil
	}
	type res struct {
		i int
		w *workerShard
		e error
	}
	out := make(chan res, len(specs))
	for i, s := range specs {
		go func() {
			w, err := startWorker(ctx, cfg.WorkerCommand, cfg.Log, s)
			out <- res{i, w, err}
		}()
	}
	cl.shards = make([]shardHandle, len(specs))
	var errs []error
	for range specs {
		r := <-out
		if r.e != nil {
			errs = append(errs, r.e)
			continue
		}
		cl.shards[r.i] = r.w
	}
	if len(errs) > 0 {
		for _, s := range cl.shards {
			if s != nil {
				s.close()
			}
		}
		return nil, errors.Join(errs...)
	}
	return cl, nil
}

// stepAll runs a step on every shard at once and merges the reports.
func (cl *cluster) stepAll(ctx context.Context, name string, at time.Time) (*report, error) {
	reps := make([]*report, len(cl.shards))
	errs := make([]error, len(cl.shards))
	var wg sync.WaitGroup
	for i, s := range cl.shards {
		wg.Add(1)
		go func() {
			defer wg.Done()
			reps[i], errs[i] = s.step(ctx, name, at)
		}()
	}
	wg.Wait()
	total := newReport()
	for _, r := range reps {
		if r != nil {
			total.merge(r)
		}
	}
	return total, errors.Join(errs...)
}

// pids are the processes holding connections (this one, or the workers).
func (cl *cluster) pids() []int {
	var p []int
	for _, s := range cl.shards {
		p = append(p, s.pid())
	}
	return p
}

func (cl *cluster) close() {
	var wg sync.WaitGroup
	for _, s := range cl.shards {
		wg.Add(1)
		go func() { defer wg.Done(); s.close() }()
	}
	wg.Wait()
}

// sampleCPU reads the CPU counters: the server's, ours (this process and the workers) and the
// machine's.
func (cl *cluster) sampleCPU() cpuSample {
	s := cpuSample{at: time.Now()}
	if self, err := procCPU(os.Getpid()); err == nil {
		s.client = self
	}
	for _, p := range cl.pids() {
		if p == os.Getpid() {
			continue
		}
		if c, err := procCPU(p); err == nil {
			s.client += c
		}
	}
	if len(cl.cfg.ServerPIDs) > 0 {
		s.serverOK = true
		for _, p := range cl.cfg.ServerPIDs {
			c, err := procCPU(p)
			if err != nil {
				s.serverOK = false
				break
			}
			s.server += c
		}
	}
	s.busy, _ = machineBusy()
	return s
}

// clientRSS sums the resident memory of this process and the workers.
func (cl *cluster) clientRSS() int64 {
	total, _ := procRSS(os.Getpid())
	for _, p := range cl.pids() {
		if p != os.Getpid() {
			r, _ := procRSS(p)
			total += r
		}
	}
	return total
}

// serverRSS sums the servers' resident memory.
func (cl *cluster) serverRSS() (int64, bool) {
	if len(cl.cfg.ServerPIDs) == 0 {
		return 0, false
	}
	var total int64
	for _, p := range cl.cfg.ServerPIDs {
		r, err := procRSS(p)
		if err != nil {
			return 0, false
		}
		total += r
	}
	return total, true
}
