// Copyright 2026 The Petrel Authors
// SPDX-License-Identifier: Apache-2.0

package prober

import (
	"bytes"
	"context"
	"encoding/json"
	"errors"
	"fmt"
	"io"
	"log/slog"
	"math/rand/v2"
	"net/http"
	"net/url"
	"strings"
	"sync"
	"time"

	"github.com/petrelchat/petrel/internal/status"
)

// Pusher defaults and bounds.
const (
	// PushQueue bounds the batches waiting to be pushed; when it is full the oldest is dropped.
	PushQueue = 32
	// PushTries bounds the POSTs of one batch.
	PushTries = 5
	// pushRetryBase and pushRetryMax bound the jittered backoff between tries.
	pushRetryBase = time.Second
	pushRetryMax  = 30 * time.Second
	pushTimeout   = 10 * time.Second
	maxPushAnswer = 4 << 10
)

// PusherConfig configures a Pusher.
type PusherConfig struct {
	// URL is the server's base URL; batches go to URL + status.ProbesPath. Required.
	URL string
	// Token is sent as "Authorization: Bearer TOKEN" (the operator token or the probe token).
	// Required.
	Token string
	// Client makes the requests. Default: an http.Client with a 10s timeout.
	Client *http.Client
	// RetryBase is the first retry delay (doubled per try, jittered, at most 30s). Default: 1s.
	RetryBase time.Duration
	// Logger receives failures (never the token). Default: discard.
	Logger *slog.Logger
}

// Pusher sends probe results to a server's ProbesPath from its own goroutine, so that pushing
// never holds up probing: Push queues a batch (bounded; the oldest is dropped when full), Run
// sends them in order, each with bounded, jittered retries.
type Pusher struct {
	cfg PusherConfig
	u   string
	log *slog.Logger

	wake chan struct{} // capacity 1

	mu      sync.Mutex // guards the following fields
	queue   []status.ProbeBatch
	sending bool // Run is sending a batch taken off queue
	dropped int  // batches dropped: queue full, or every try failed
	sent    int
}

// NewPusher checks cfg and returns a pusher (no I/O).
func NewPusher(cfg PusherConfig) (*Pusher, error) {
	u, err := url.Parse(cfg.URL)
	if err != nil || (u.Scheme != "http" && u.Scheme != "https") || u.Host == "" || u.User != nil {
		return nil, fmt.Errorf("--report-to %q: want http://HOST:PORT or https://HOST[:PORT]", cfg.URL)
	}
	if cfg.Token == "" {
		return nil, errors.New("no token to push probe results with: give --token-file FILE or set PETREL_PROBE_TOKEN (the operator token or the probe token)")
	}
	if cfg.Client == nil {
		cfg.Client = &http.Client{Timeout: pushTimeout}
	}
	if cfg.RetryBase <= 0 {
		cfg.RetryBase = pushRetryBase
	}
	if cfg.Logger == nil {
		cfg.Logger = slog.New(slog.DiscardHandler)
	}
	return &Pusher{cfg: cfg, u: strings.TrimSuffix(cfg.URL, "/") + status.ProbesPath, log: cfg.Logger, wake: make(chan struct{}, 1)}, nil
}

// Push queues a batch; it never blocks.
func (p *Pusher) Push(b status.ProbeBatch) {
	p.mu.Lock()
	if len(p.queue) >= PushQueue {
		p.queue = p.queue[1:]
		p.dropped++
	}
	p.queue = append(p.queue, b)
	p.mu.Unlock()
	select {
	case p.wake <- struct{}{}:
	default:
	}
}

// Stats returns how many batches were sent and dropped so far.
func (p *Pusher) Stats() (sent, dropped int) {
	p.mu.Lock()
	defer p.mu.Unlock()
	return p.sent, p.dropped
}

// Pending returns how many batches wait to be sent (not counting one being sent).
func (p *Pusher) Pending() int {
	p.mu.Lock()
	defer p.mu.Unlock()
	return len(p.queue)
}

// Idle reports whether no batch waits and none is being sent: a caller that waits for it before
// cancelling Run does not cut a push in flight.
func (p *Pusher) Idle() bool {
	p.mu.Lock()
	defer p.mu.Unlock()
	return len(p.queue) == 0 && !p.sending
}

// Run sends queued batches until ctx ends.
func (p *Pusher) Run(ctx context.Context) {
	for {
		p.mu.Lock()
		var b *status.ProbeBatch
		if len(p.queue) > 0 {
			v := p.queue[0]
			b = &v
			p.queue = p.queue[1:]
			p.sending = true
		}
		p.mu.Unlock()
		if b == nil {
			select {
			case <-ctx.Done():
				return
			case <-p.wake:
				continue
			}
		}
		ok := p.send(ctx, b)
		p.mu.Lock()
		p.sending = false
		if ok {
			p.sent++
		} else {
			p.dropped++
		}
		p.mu.Unlock()
		if ctx.Err() != nil {
			return
		}
	}
}

// send pushes one batch, retrying with jittered backoff; it reports whether the server took it.
func (p *Pusher) send(ctx context.Context, b *status.ProbeBatch) bool {
	body, err := json.Marshal(b)
	if err != nil {
		return false
	}
	wait := p.cfg.RetryBase
	for try := 1; ; try++ {
		retry, err := p.post(ctx, body)
		if err == nil {
			return true
		}
		if !retry || try >= PushTries {
			p.log.Warn("probe results not pushed", "url", p.u, "tries", try, "err", err)
			return false
		}
		d := wait/2 + time.Duration(rand.Int64N(int64(wait/2)+1))
		wait = min(2*wait, pushRetryMax)
		t := time.NewTimer(d)
		select {
		case <-ctx.Done():
			t.Stop()
			return false
		case <-t.C:
		}
	}
}

// post makes one attempt; retry says whether another may succeed.
func (p *Pusher) post(ctx context.Context, body []byte) (retry bool, err error) {
	ctx, cancel := context.WithTimeout(ctx, pushTimeout)
	defer cancel()
	req, err := http.NewRequestWithContext(ctx, http.MethodPost, p.u, bytes.NewReader(body))
	if err != nil {
		return false, err
	}
	req.Header.Set("Content-Type", "application/json")
	req.Header.Set("Authorization", "Bearer "+p.cfg.Token)
	resp, err := p.cfg.Client.Do(req)
	if err != nil {
		return true, err
	}
	defer resp.Body.Close()
	_, _ = io.Copy(io.Discard, io.LimitReader(resp.Body, maxPushAnswer))
	switch {
	case resp.StatusCode >= 200 && resp.StatusCode < 300:
		return false, nil
	case resp.StatusCode == http.StatusUnauthorized || resp.StatusCode == http.StatusForbidden:
		return false, fmt.Errorf("server answered %s: is the token the operator token or the probe token?", resp.Status)
	case resp.StatusCode == http.StatusTooManyRequests || resp.StatusCode >= 500:
		return true, fmt.Errorf("server answered %s", resp.Status)
	default:
		return false, fmt.Errorf("server answered %s", resp.Status)
	}
}
