// Copyright 2026 The Petrel Authors
// SPDX-License-Identifier: Apache-2.0

package bench

import (
	"bufio"
	"context"
	"fmt"
	"io"
	"net/http"
	"strconv"
	"strings"
	"time"
)

// ScenarioAccounts measures what registered accounts that are not connected cost a server: it
// registers accounts (one device each, with one-time prekeys like a real client's), lets the
// server settle (block caches expire, a forced collection, the scavenger returns freed heap) and
// reports the server's RSS growth per account. The operator may restart the server and run it
// again with --accounts 0 --existing N --baseline-rss SIZE to measure the cost after a restart.
const ScenarioAccounts = "accounts"

// AccountsConfig shapes the accounts scenario.
type AccountsConfig struct {
	// Accounts is how many accounts to register now (0: none, measure only). Default: 10,000.
	Accounts int
	// PreKeys is how many one-time prekeys of each kind (EC and ML-KEM) each device uploads at
	// registration. Default: 10 (a real client uploads 100; each ML-KEM prekey is ~1.2 KB on disk).
	PreKeys int
	// Existing is how many accounts the server held before this run, counted in the per-account
	// figure (after a restart: all of them, with Accounts 0). Default: 0.
	Existing int
	// BaselineRSS is the RSS of the same server with no accounts (a fresh node), in bytes: the
	// per-account figure is the growth from it. Default: the RSS measured before registering.
	BaselineRSS int64
	// Settle is how long to wait, after registering and a forced collection, before the final
	// RSS sample. Default: 30s.
	Settle time.Duration
}

func (a *AccountsConfig) setDefaults() {
	if a.Accounts == 0 {
		a.Accounts = 10_000
	}
	if a.Accounts < 0 {
		a.Accounts = 0
	}
	if a.PreKeys == 0 {
		a.PreKeys = 10
	}
	if a.PreKeys < 0 {
		a.PreKeys = 0
	}
	if a.Settle == 0 {
		a.Settle = 30 * time.Second
	}
	if a.Settle < 0 {
		a.Settle = 0
	}
}

func (a *AccountsConfig) validate(c *Config, bad func(string, ...any)) {
	if len(c.ServerPIDs) != 1 || len(c.Servers) != 1 {
		bad("accounts measures one server: give one --server and its --server-pid")
	}
	if a.PreKeys > 200 {
		bad("prekeys %d: at most 200 per kind in one upload", a.PreKeys)
	}
	if a.Existing < 0 || a.BaselineRSS < 0 {
		bad("existing and baseline-rss must not be negative")
	}
	if a.Accounts+a.Existing == 0 {
		bad("no accounts to measure: register some (--accounts) or count those there (--existing)")
	}
}

// accounts is the coordinator of the accounts scenario.
func (r *run) accounts(ctx context.Context) error {
	cfg, a := r.cfg, &r.cfg.Accounts
	pid := cfg.ServerPIDs[0]
	rss := func() int64 {
		v, err := procRSS(pid)
		if err != nil {
			r.logf("server pid %d: %v", pid, err)
		}
		return v
	}
	before := rss()
	cpu0, _ := procCPU(pid)
	res := r.res
	res.set("server_rss_before_bytes", before, "before registering")
	if a.Accounts > 0 {
		if _, _, err := r.register(ctx, a.Accounts, a.PreKeys, false); err != nil {
			return err
		}
		cpu1, _ := procCPU(pid)
		res.set("register_server_cpu_us_per_account", float64((cpu1-cpu0).Microseconds())/float64(a.Accounts), "server CPU per account registered (keys verified and stored)")
		res.set("server_rss_registered_bytes", rss(), "right after registering")
	}
	res.set("prekeys_per_kind", int64(a.PreKeys), "one-time EC and ML-KEM prekeys uploaded per device")
	if err := r.forceGC(ctx); err != nil {
		r.logf("forced collection: %v (settling without it)", err)
	}
	if a.Settle > 0 {
		r.logf("settling for %v (block caches expire, the scavenger returns freed heap) …", a.Settle)
		stop := r.progress("settling", a.Settle, func() string { return fmt.Sprintf("server RSS %s", formatBytes(rss())) })
		err := sleepUntil(ctx, time.Now().Add(a.Settle))
		stop()
		if err != nil {
			return err
		}
		_ = r.forceGC(ctx)
	}
	settled := rss()
	base := before
	if a.BaselineRSS > 0 {
		base = a.BaselineRSS
	}
	n := a.Accounts + a.Existing
	res.set("accounts", int64(n), "accounts on the server, none connected")
	res.set("server_rss_settled_bytes", settled, "after the settle and a forced collection")
	res.set("server_rss_baseline_bytes", base, "the RSS the growth is counted from")
	res.set("rss_per_account_bytes", float64(settled-base)/float64(n), "(settled - baseline) / accounts")
	if m, err := r.goMemStats(ctx); err != nil {
		r.logf("heap statistics from /metrics: %v", err)
	} else {
		for _, k := range []string{"go_memstats_heap_inuse_bytes", "go_memstats_heap_idle_bytes", "go_memstats_heap_released_bytes", "go_memstats_sys_bytes"} {
			if v, ok := m[k]; ok {
				res.set(strings.TrimPrefix(k, "go_memstats_"), int64(v), "server Go runtime, from /metrics")
			}
		}
	}
	return nil
}

// adminGet sends an operator GET to the (first) server's admin listener and returns the body.
func (r *run) adminGet(ctx context.Context, path string) ([]byte, error) {
	adm := strings.TrimRight(r.cfg.Admins[0], "/")
	if !IsLoopback(adm) {
		return nil, fmt.Errorf("admin listener %s: %w", adm, ErrNotLoopback)
	}
	ctx, cancel := context.WithTimeout(ctx, time.Minute)
	defer cancel()
	req, err := http.NewRequestWithContext(ctx, http.MethodGet, adm+path, nil)
	if err != nil {
		return nil, err
	}
	req.Header.Set("Authorization", "Bearer "+r.cfg.AdminTokens[0])
	cl := &http.Client{CheckRedirect: func(*http.Request, []*http.Request) error { return http.ErrUseLastResponse }}
	resp, err := cl.Do(req)
	if err != nil {
		return nil, err
	}
	defer resp.Body.Close()
	b, err := io.ReadAll(io.LimitReader(resp.Body, 64<<20))
	if err != nil {
		return nil, err
	}
	if resp.StatusCode != http.StatusOK {
		return nil, fmt.Errorf("GET %s: %s", path, resp.Status)
	}
	return b, nil
}

// forceGC makes the server collect its heap (the heap profile endpoint with gc=1).
func (r *run) forceGC(ctx context.Context) error {
	_, err := r.adminGet(ctx, "/debug/pprof/heap?gc=1")
	return err
}

// goMemStats reads the server's go_memstats_* gauges from /metrics.
func (r *run) goMemStats(ctx context.Context) (map[string]float64, error) {
	b, err := r.adminGet(ctx, "/metrics")
	if err != nil {
		return nil, err
	}
	out := map[string]float64{}
	sc := bufio.NewScanner(strings.NewReader(string(b)))
	sc.Buffer(make([]byte, 64<<10), 1<<20)
	for sc.Scan() {
		line := sc.Text()
		if !strings.HasPrefix(line, "go_memstats_") {
			continue
		}
		k, v, ok := strings.Cut(line, " ")
		if !ok {
			continue
		}
		if f, err := strconv.ParseFloat(strings.TrimSpace(v), 64); err == nil {
			out[k] = f
		}
	}
	return out, sc.Err()
}

// formatBytes is n in MiB with one decimal.
func formatBytes(n int64) string { return fmt.Sprintf("%.1f MiB", float64(n)/(1<<20)) }
