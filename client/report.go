// Copyright 2026 The Petrel Authors
// SPDX-License-Identifier: Apache-2.0

package client

import (
	"bytes"
	"context"
	"encoding/hex"
	"encoding/json"
	"fmt"
	"io"
	"math/rand/v2"
	"net/http"
	"sync"
	"time"
)

// Automatic problem reports. When a client cannot connect for a while (Config.AutoReportAfter,
// with at least autoReportMinFails failed attempts in a row), it tells the service so: it POSTs
// an anonymous report (category "cant-connect", no note, no account, no content; only a random
// id the client keeps in memory, so that the server counts it once per window) to the reports
// endpoint of the server it was trying (or Config.ReportURL). Since that server is likely the one
// that cannot be reached, the POST is retried with jittered backoff. Bounds: one report begun per
// client per autoReportEvery, at most autoReportMaxPerRun per Run, at most reportTries POSTs per
// report. Config.NoAutoReport turns it off.
const (
	// reportsPath is where a server takes problem reports (the server's status.ReportsPath: a
	// test keeps the two equal; the SDK imports nothing of the server).
	reportsPath = "/v1/reports"
	// reportCantConnect is the report category sent (status.CategoryCantConnect).
	reportCantConnect = "cant-connect"

	defaultAutoReportAfter = 2 * time.Minute
	autoReportMinFails     = 3
	autoReportEvery        = time.Hour
	autoReportMaxPerRun    = 3
	reportTries            = 6
	defaultReportRetry     = 30 * time.Second
	reportRetryMax         = 10 * time.Minute
	reportTimeout          = 10 * time.Second
	maxReportAnswer        = 4 << 10
)

// reportBody is the JSON of a problem report (the server's status.ReportRequest).
type reportBody struct {
	Category string `json:"category"`
	Client   string `json:"client,omitempty"`
}

// reporter decides when a report is due and sends it from its own goroutine (owned by Run).
type reporter struct {
	id    string // random, in memory only
	after time.Duration
	// retryBase is the first retry delay of a POST that failed (doubled, jittered, at most
	// reportRetryMax); tests lower it.
	retryBase time.Duration
	url       string // Config.ReportURL: a base URL; "" means the server being tried
	hc        *http.Client
	log       func(msg string, args ...any)

	due chan string // capacity 1: a report to send, to this base URL

	mu           sync.Mutex // guards the following fields
	failingSince time.Time  // the first failed attempt since the last connection; zero if none
	fails        int        // failed attempts in a row
	begun        int        // reports begun in this run
	lastBegun    time.Time
	busy         bool // a report is being sent
	sent         int  // reports the server took (tests read it)
}

func newReporter(id string, cfg *Config, log func(string, ...any)) *reporter {
	return &reporter{id: id, after: cfg.AutoReportAfter, retryBase: defaultReportRetry, url: cfg.ReportURL,
		hc: &http.Client{Timeout: reportTimeout}, log: log, due: make(chan string, 1)}
}

// connected records a successful connection: the failure streak ends.
func (r *reporter) connected() {
	r.mu.Lock()
	r.failingSince, r.fails = time.Time{}, 0
	r.mu.Unlock()
}

// failed records a failed connection attempt to server at now, and hands the worker a report
// when one is due.
func (r *reporter) failed(server string, now time.Time) {
	r.mu.Lock()
	defer r.mu.Unlock()
	if r.failingSince.IsZero() {
		r.failingSince = now
	}
	r.fails++
	if !r.dueLocked(now) {
		return
	}
	base := r.url
	if base == "" {
		base = server
	}
	select {
	case r.due <- base:
		r.busy, r.begun, r.lastBegun = true, r.begun+1, now
	default:
	}
}

// dueLocked reports whether a report should begin at now.
func (r *reporter) dueLocked(now time.Time) bool {
	return !r.busy && r.fails >= autoReportMinFails && !r.failingSince.IsZero() &&
		now.Sub(r.failingSince) >= r.after && r.begun < autoReportMaxPerRun &&
		(r.lastBegun.IsZero() || now.Sub(r.lastBegun) >= autoReportEvery)
}

// run sends the reports handed to it until ctx ends.
func (r *reporter) run(ctx context.Context) {
	for {
		select {
		case <-ctx.Done():
			return
		case base := <-r.due:
			ok := r.send(ctx, base)
			r.mu.Lock()
			r.busy = false
			if ok {
				r.sent++
			}
			r.mu.Unlock()
		}
	}
}

// send POSTs one report, retrying with jittered backoff; it reports whether the server took it.
func (r *reporter) send(ctx context.Context, base string) bool {
	body, _ := json.Marshal(reportBody{Category: reportCantConnect, Client: r.id})
	u := normURL(base) + reportsPath
	wait := r.retryBase
	for try := 1; try <= reportTries; try++ {
		done, err := r.post(ctx, u, body)
		if done {
			if err != nil {
				r.log("problem report refused", "url", u, "err", err)
				return false
			}
			r.log("problem report sent", "url", u)
			return true
		}
		if try == reportTries {
			r.log("problem report not sent", "url", u, "tries", try, "err", err)
			return false
		}
		// Full jitter over [wait/2, wait]: clients that failed together do not retry together.
		d := wait/2 + time.Duration(rand.Int64N(int64(wait/2)+1))
		wait = min(2*wait, reportRetryMax)
		t := time.NewTimer(d)
		select {
		case <-ctx.Done():
			t.Stop()
			return false
		case <-t.C:
		}
	}
	return false
}

// post makes one attempt. done is false when a later attempt may succeed (the server could not be
// reached, or answered 5xx); err says why an attempt did not succeed.
func (r *reporter) post(ctx context.Context, u string, body []byte) (done bool, err error) {
	ctx, cancel := context.WithTimeout(ctx, reportTimeout)
	defer cancel()
	req, err := http.NewRequestWithContext(ctx, http.MethodPost, u, bytes.NewReader(body))
	if err != nil {
		return true, err
	}
	req.Header.Set("Content-Type", "application/json")
	resp, err := r.hc.Do(req)
	if err != nil {
		return false, err
	}
	defer resp.Body.Close()
	_, _ = io.Copy(io.Discard, io.LimitReader(resp.Body, maxReportAnswer))
	switch {
	case resp.StatusCode >= 200 && resp.StatusCode < 300:
		return true, nil
	case resp.StatusCode >= 500:
		return false, fmt.Errorf("server answered %s", resp.Status)
	default: // 4xx, 429 included: the server does not want it (again); never insist.
		return true, fmt.Errorf("server answered %s", resp.Status)
	}
}

// newClientID returns a random report id (16 bytes, hex).
func newClientID(rnd io.Reader) string {
	var b [16]byte
	if _, err := io.ReadFull(rnd, b[:]); err != nil {
		return ""
	}
	return hex.EncodeToString(b[:])
}
