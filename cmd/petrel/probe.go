// Copyright 2026 The Petrel Authors
// SPDX-License-Identifier: Apache-2.0

package main

import (
	"context"
	"encoding/json"
	"fmt"
	"log/slog"
	"os"
	"strings"
	"sync"
	"time"

	"github.com/petrelchat/petrel/internal/prober"
	"github.com/petrelchat/petrel/internal/status"
)

const probeUsage = "probe --server URL[,URL...] [--interval 10s] [--json] [--count N] [--report-to URL] [--token-file FILE] [--name NAME] [--invite CODE[,CODE]]"

const probeHelp = `
Black-box prober: two probe accounts (created at the first run, kept in the home as
HOME/probe-a and HOME/probe-b; use a home of their own) connect to each node, A sends B an
end-to-end encrypted message, B receives it. One line per node and round:
  ok   node=URL latency=23ms
  FAIL node=URL error="..."
or, with --json, one object per line: {"node","source","at","ok","latency_ms","error"}.
Runs until interrupted, or --count rounds. Exit code: 0 if every probe of the last round
succeeded, 1 otherwise, 2 on a usage error.
`

// probeTuning lets tests shorten the per-probe deadline and the push retries; zero values mean
// the defaults.
var probeTuning struct {
	timeout   time.Duration
	pushRetry time.Duration
}

func runProbe(ctx context.Context, e *env, args []string) int {
	fs := newFlags(e, "probe", probeUsage)
	servers := fs.String("server", "", "comma-separated node URLs to probe, each through itself (required)")
	interval := fs.Duration("interval", 10*time.Second, "time between the starts of two rounds")
	asJSON := fs.Bool("json", false, "print one JSON object per probe")
	count := fs.Int("count", 0, "stop after N rounds (0: until interrupted)")
	reportTo := fs.String("report-to", "", "push each round's results to this server's "+status.ProbesPath)
	tokenFile := fs.String("token-file", "", "file holding the token for --report-to (default: env PETREL_PROBE_TOKEN)")
	name := fs.String("name", "", "this prober's name in the results (default: the host name)")
	invite := fs.String("invite", "", "invite codes for creating the two probe accounts on an invite-only server: CODE,CODE (one per account)")
	fs.Usage = func() {
		fmt.Fprintf(e.stderr, "usage: petrel %s\n%s\nflags:\n", probeUsage, probeHelp)
		writeFlags(e.stderr, fs, probeUsage)
	}
	if code, ok := parseFlags(fs, args); !ok {
		return code
	}
	fail := func(format string, a ...any) int {
		fmt.Fprintf(e.stderr, "petrel probe: "+format+"\n", a...)
		return 2
	}
	if fs.NArg() > 0 {
		return fail("unexpected argument %q", fs.Arg(0))
	}
	var urls []string
	for _, u := range strings.Split(*servers, ",") {
		if u = strings.TrimSuffix(strings.TrimSpace(u), "/"); u != "" {
			urls = append(urls, u)
		}
	}
	if len(urls) == 0 {
		return fail("--server URL is required (comma-separated for several nodes)")
	}
	for _, u := range urls {
		if !strings.HasPrefix(u, "http://") && !strings.HasPrefix(u, "https://") {
			return fail("--server %q: want http://HOST:PORT or https://HOST[:PORT]", u)
		}
	}
	if *interval <= 0 {
		return fail("--interval must be positive")
	}
	if *count < 0 {
		return fail("--count must be 0 (no limit) or more")
	}
	var codes []string
	for _, c := range strings.Split(*invite, ",") {
		if c = strings.TrimSpace(c); c != "" {
			codes = append(codes, c)
		}
	}
	if len(codes) > 2 {
		return fail("--invite: at most two codes (one per probe account)")
	}
	var pusher *prober.Pusher
	if *reportTo != "" {
		token := strings.TrimSpace(e.getenv("PETREL_PROBE_TOKEN"))
		if *tokenFile != "" {
			b, err := os.ReadFile(*tokenFile)
			if err != nil {
				return fail("--token-file: %v", err)
			}
			token = strings.TrimSpace(string(b))
		}
		var err error
		pusher, err = prober.NewPusher(prober.PusherConfig{URL: *reportTo, Token: token, RetryBase: probeTuning.pushRetry,
			Logger: slog.New(slog.NewTextHandler(e.stderr, &slog.HandlerOptions{Level: slog.LevelWarn}))})
		if err != nil {
			return fail("%v", err)
		}
	}

	var mu sync.Mutex // guards codes
	cfg := prober.Config{Home: e.home, Source: *name, Timeout: probeTuning.timeout}
	if len(codes) > 0 {
		cfg.Invite = func(context.Context) (string, error) {
			mu.Lock()
			defer mu.Unlock()
			if len(codes) == 0 {
				return "", fmt.Errorf("every --invite code is used: this server is invite-only and needs one code per probe account (--invite CODE,CODE)")
			}
			c := codes[0]
			codes = codes[1:]
			return c, nil
		}
	}
	p, err := prober.New(cfg)
	if err != nil {
		return fail("%v", err)
	}
	defer p.Close()

	var wg sync.WaitGroup
	pctx, cancel := context.WithCancel(context.Background())
	if pusher != nil {
		wg.Add(1)
		go func() {
			defer wg.Done()
			pusher.Run(pctx)
		}()
	}
	defer func() {
		if pusher != nil {
			// The last round's results may still be on their way: give them a moment.
			deadline := time.Now().Add(5 * time.Second)
			for !pusher.Idle() && time.Now().Before(deadline) && ctx.Err() == nil {
				time.Sleep(20 * time.Millisecond) // polling with a deadline
			}
		}
		cancel()
		wg.Wait()
	}()

	code := 1 // no round finished yet
	enc := json.NewEncoder(e.stdout)
	for round := 1; ; round++ {
		start := time.Now()
		results := p.Round(ctx, urls)
		if ctx.Err() != nil {
			return code // interrupted mid-round: the last full round decides
		}
		code = 0
		for _, r := range results {
			if !r.OK {
				code = 1
			}
			switch {
			case *asJSON:
				_ = enc.Encode(r)
			case r.OK:
				fmt.Fprintf(e.stdout, "ok   node=%s latency=%s\n", r.Node, fmtLatency(r.LatencyMS))
			default:
				fmt.Fprintf(e.stdout, "FAIL node=%s error=%q\n", r.Node, r.Error)
			}
		}
		if pusher != nil {
			pusher.Push(status.ProbeBatch{Results: results})
		}
		if *count > 0 && round >= *count {
			return code
		}
		t := time.NewTimer(max(0, *interval-time.Since(start)))
		select {
		case <-ctx.Done():
			t.Stop()
			return code
		case <-t.C:
		}
	}
}

// fmtLatency prints milliseconds as 23ms, 0.8ms or 1.25s.
func fmtLatency(ms float64) string {
	switch {
	case ms < 1:
		return fmt.Sprintf("%.1fms", ms)
	case ms < 1000:
		return fmt.Sprintf("%.0fms", ms)
	default:
		return fmt.Sprintf("%.2fs", ms/1000)
	}
}
