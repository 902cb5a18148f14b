// Copyright 2026 The Petrel Authors
// SPDX-License-Identifier: Apache-2.0

// Package prober is Petrel's black-box prober: two probe accounts that connect, encrypt, send,
// receive and ack through a node's public path exactly as users do, through the public Go SDK
// (client/) only, never through server internals. One probe measures one node: both accounts
// connect to that node alone (client.Config.OnlyServer), A sends B a unique text, and the probe
// succeeds when B has received it within the deadline; its latency runs from A's send to B's
// receipt. `petrel probe` runs it from outside, and each node can run it against itself
// (server config probe_interval).
//
// The accounts are created on first use (registration, with an invite code when the server
// needs one) and kept in the prober's home: HOME/probe-a and HOME/probe-b are ordinary client
// homes. Their chat has a disappearing timer (DisappearAfter), so that the probe messages leave
// both histories and the server's inboxes: a prober that runs for months keeps a bounded state.
//
// A Prober probes one node at a time (a device holds one connection); it is safe for concurrent
// use, but concurrent probes wait for each other.
package prober

import (
	"context"
	"crypto/rand"
	"encoding/hex"
	"errors"
	"fmt"
	"log/slog"
	"os"
	"path/filepath"
	"strings"
	"sync"
	"time"

	"github.com/petrelchat/petrel/client"
	"github.com/petrelchat/petrel/client/store"
	"github.com/petrelchat/petrel/internal/status"
)

const (
	// DefaultTimeout bounds one probe: connecting both accounts, the send and the receipt.
	DefaultTimeout = 10 * time.Second
	// DisappearAfter is the disappearing timer of the probe accounts' chat.
	DisappearAfter = time.Minute
	// registerTimeout bounds the registration of one probe account.
	registerTimeout = 30 * time.Second
	// nameTries bounds the names tried when a probe account's name is taken.
	nameTries = 3
	// maxErrorLen bounds a result's error text.
	maxErrorLen = 300
)

// Config configures a Prober. Zero values mean the documented defaults.
type Config struct {
	// Home is the directory of the probe accounts (HOME/probe-a, HOME/probe-b); created if
	// missing. Required.
	Home string
	// Name is the base of the probe account names, "<Name>-a" and "<Name>-b" (cut to fit 32
	// characters; when a name is taken, a random suffix is added). Default: "probe-" and 8
	// random hex digits.
	Name string
	// Invite returns an invite code for registering one probe account, when the server's
	// registration is invite-only; it is called once per account registered. nil: no invite.
	Invite func(ctx context.Context) (string, error)
	// Source is ProbeResult.Source: "self" for a node's own prober, else the prober's name.
	// Default: the host name.
	Source string
	// Timeout bounds one probe. Default: DefaultTimeout.
	Timeout time.Duration
	// Logger receives diagnostics (names and counts only). Default: discard.
	Logger *slog.Logger
	// NoSync skips fsync in the probe homes (tests). Default: false.
	NoSync bool
}

// Prober probes nodes. New does no I/O; the homes are opened by the first probe and closed by
// Close.
type Prober struct {
	cfg Config
	log *slog.Logger

	mu     sync.Mutex // held through a probe; guards the following fields
	acct   [2]*account
	closed bool
}

// account is one probe account: its home, open for the prober's lifetime.
type account struct {
	role string // "a" or "b"
	home string
	st   *store.Store
	name string // once registered
}

// New returns a prober.
func New(cfg Config) (*Prober, error) {
	if cfg.Home == "" {
		return nil, errors.New("prober: Config.Home is required")
	}
	if cfg.Timeout <= 0 {
		cfg.Timeout = DefaultTimeout
	}
	if cfg.Logger == nil {
		cfg.Logger = slog.New(slog.DiscardHandler)
	}
	if cfg.Source == "" {
		h, err := os.Hostname()
		if err != nil || h == "" {
			h = "prober"
		}
		cfg.Source = h
	}
	if cfg.Name == "" {
		cfg.Name = "probe-" + randHex(4)
	}
	cfg.Name = SanitizeName(cfg.Name)
	p := &Prober{cfg: cfg, log: cfg.Logger}
	for i, role := range []string{"a", "b"} {
		p.acct[i] = &account{role: role, home: filepath.Join(cfg.Home, "probe-"+role)}
	}
	return p, nil
}

// SanitizeName turns s into a valid account name base: lower case, characters outside
// [a-z0-9_.-] replaced by '-', at most 25 characters (room for a suffix and "-a"), starting with
// a letter or digit.
func SanitizeName(s string) string {
	var b strings.Builder
	for _, r := range strings.ToLower(s) {
		switch {
		case r >= 'a' && r <= 'z', r >= '0' && r <= '9', r == '_', r == '.', r == '-':
			b.WriteRune(r)
		default:
			b.WriteByte('-')
		}
	}
	out := strings.TrimLeft(b.String(), "-_.")
	if len(out) > 25 {
		out = out[len(out)-25:] // the end: a node name's random id is there
		out = strings.TrimLeft(out, "-_.")
	}
	if out == "" {
		out = "probe"
	}
	return out
}

// Names returns the probe accounts' names once both are registered ("" before).
func (p *Prober) Names() (a, b string) {
	p.mu.Lock()
	defer p.mu.Unlock()
	return p.acct[0].name, p.acct[1].name
}

// Close closes the probe homes. Idempotent; a probe after Close fails.
func (p *Prober) Close() error {
	p.mu.Lock()
	defer p.mu.Unlock()
	p.closed = true
	var errs []error
	for _, a := range p.acct {
		if a.st != nil {
			errs = append(errs, a.st.Close())
			a.st = nil
		}
	}
	return errors.Join(errs...)
}

// Round probes each node in turn and returns one result per node, in order.
func (p *Prober) Round(ctx context.Context, nodes []string) []status.ProbeResult {
	out := make([]status.ProbeResult, 0, len(nodes))
	for _, n := range nodes {
		out = append(out, p.Probe(ctx, n, nodes))
	}
	return out
}

// Probe measures node: both accounts connect to it alone, A sends B a unique text, B receives it.
// The accounts are registered first if they are not yet, through the first of node and others
// that answers (in a cluster the accounts exist on every node). Errors are in the result, in
// words.
func (p *Prober) Probe(ctx context.Context, node string, others []string) status.ProbeResult {
	p.mu.Lock()
	defer p.mu.Unlock()
	res := status.ProbeResult{Node: node, Source: p.cfg.Source, At: time.Now().UTC()}
	if p.closed {
		res.Error = "prober closed"
		return res
	}
	if err := p.setupLocked(ctx, node, others); err != nil {
		res.Error = clip(err.Error())
		return res
	}
	lat, err := p.probeLocked(ctx, node)
	if err != nil {
		res.Error = clip(err.Error())
		return res
	}
	res.OK, res.LatencyMS = true, float64(lat.Microseconds())/1000
	return res
}

// Setup opens the homes and registers the probe accounts that are not registered yet, through the
// first of node and others that answers; Probe does it too. An error matching ErrSetup means the
// accounts cannot be created as configured (registration closed, no invite), which says nothing
// of the node's health.
func (p *Prober) Setup(ctx context.Context, node string, others []string) error {
	p.mu.Lock()
	defer p.mu.Unlock()
	if p.closed {
		return errors.New("prober closed")
	}
	return p.setupLocked(ctx, node, others)
}

// ErrSetup marks a failure to create the probe accounts (not a failure of the node's messaging
// path): for example registration closed, or no invite.
var ErrSetup = errors.New("probe accounts cannot be created")

// setupLocked opens the homes and registers the accounts that are not registered yet.
func (p *Prober) setupLocked(ctx context.Context, node string, others []string) error {
	if err := p.setupAccountsLocked(ctx, node, others); err != nil {
		return fmt.Errorf("probe accounts: %w", err)
	}
	return nil
}

func (p *Prober) setupAccountsLocked(ctx context.Context, node string, others []string) error {
	if err := os.MkdirAll(p.cfg.Home, 0o700); err != nil {
		return err
	}
	urls := []string{node}
	for _, u := range others {
		if u != node {
			urls = append(urls, u)
		}
	}
	for _, a := range p.acct {
		if a.st == nil {
			st, err := store.Open(a.home, store.Options{NoSync: p.cfg.NoSync})
			if err != nil {
				return err
			}
			a.st = st
		}
		if a.name != "" {
			continue
		}
		var acct *store.Account
		err := a.st.View(func(tx *store.Tx) error {
			var err error
			acct, err = tx.Account()
			return err
		})
		if err == nil && acct.Registered {
			a.name = acct.Name
			continue
		}
		if err != nil && !errors.Is(err, store.ErrNotFound) {
			return err
		}
		if err := p.registerLocked(ctx, a, urls); err != nil {
			return err
		}
	}
	return nil
}

// registerLocked creates account a, with another name if its name is taken (bounded).
func (p *Prober) registerLocked(ctx context.Context, a *account, urls []string) error {
	base := p.cfg.Name
	for try := 1; ; try++ {
		name := base + "-" + a.role
		invite := ""
		if p.cfg.Invite != nil {
			var err error
			if invite, err = p.cfg.Invite(ctx); err != nil {
				return fmt.Errorf("%w: invite for %s: %w", ErrSetup, name, err)
			}
		}
		rctx, cancel := context.WithTimeout(ctx, registerTimeout)
		_, err := client.Register(rctx, a.st, client.RegisterOptions{ServerURL: urls[0], ServerURLs: urls[1:],
			Name: name, Invite: invite, PreKeys: 20, Timeout: registerTimeout})
		cancel()
		switch {
		case err == nil:
			a.name = name
			p.log.Info("probe account registered", "name", name)
			return nil
		case errors.Is(err, client.ErrNameTaken) && try < nameTries:
			base = SanitizeName(p.cfg.Name[:min(len(p.cfg.Name), 20)] + "-" + randHex(2))
		case errors.Is(err, client.ErrRegistrationClosed), errors.Is(err, client.ErrInvalidInvite):
			return fmt.Errorf("%w: register %s: %w (give the prober invite codes, or open registration)", ErrSetup, name, err)
		default:
			return fmt.Errorf("register %s: %w", name, err)
		}
	}
}

// probeLocked runs one probe through node and returns its latency.
func (p *Prober) probeLocked(ctx context.Context, node string) (time.Duration, error) {
	ctx, cancel := context.WithTimeout(ctx, p.cfg.Timeout)
	defer cancel()
	a, err := p.startSession(ctx, p.acct[0], node)
	if err != nil {
		return 0, err
	}
	defer a.stop()
	b, err := p.startSession(ctx, p.acct[1], node)
	if err != nil {
		return 0, err
	}
	defer b.stop()
	// Both connected, and B has taken what waited for it (earlier probes' late messages).
	if err := a.waitReady(ctx, "A"); err != nil {
		return 0, err
	}
	if err := b.waitReady(ctx, "B"); err != nil {
		return 0, err
	}
	bName := p.acct[1].name
	if d, err := a.c.Disappearing(bName); err == nil && d != DisappearAfter {
		if _, err := a.c.SetDisappearing(bName, DisappearAfter); err != nil {
			return 0, fmt.Errorf("set the probe chat's disappearing timer: %w", err)
		}
	}
	text := "probe " + randHex(8)
	start := time.Now()
	if _, err := a.c.Send(ctx, bName, text); err != nil {
		return 0, fmt.Errorf("send (A to B): %w", deadlineWords(ctx, err))
	}
	for {
		select {
		case m := <-b.msgs:
			if m.From == p.acct[0].name && m.Text == text {
				return time.Since(start), nil
			}
		case <-b.runDone:
			return 0, fmt.Errorf("B's connection ended before the message arrived: %w", b.err)
		case <-ctx.Done():
			return 0, fmt.Errorf("B did not receive the message within %s of the probe's start (sent and acked by the server %s ago)",
				p.cfg.Timeout, time.Since(start).Round(time.Millisecond))
		}
	}
}

// session is one probe account's client, running against one node for one probe.
type session struct {
	c         *client.Client
	cancel    context.CancelFunc
	events    chan client.Event
	runDone   chan struct{} // closed when Run returned, with err
	err       error
	ready     chan struct{} // closed at the first QueueEmpty
	msgs      chan *client.Message
	collected chan struct{}
	node      string
}

func (p *Prober) startSession(ctx context.Context, a *account, node string) (*session, error) {
	s := &session{events: make(chan client.Event, 16), runDone: make(chan struct{}), ready: make(chan struct{}),
		msgs: make(chan *client.Message, 64), collected: make(chan struct{}), node: node}
	c, err := client.Open(client.Config{Store: a.st, Events: s.events, OnlyServer: node, FailFast: true,
		NoAutoReport: true, DialTimeout: p.cfg.Timeout, RequestTimeout: p.cfg.Timeout, Logger: p.log})
	if err != nil {
		return nil, err
	}
	s.c = c
	rctx, cancel := context.WithCancel(ctx)
	s.cancel = cancel
	go s.collect()
	go func() {
		s.err = c.Run(rctx)
		if s.err == nil {
			s.err = errors.New("the client stopped")
		}
		close(s.runDone)
	}()
	return s, nil
}

// collect takes the client's events: received messages are claimed seen (so that their
// disappearing countdown starts) and handed to the probe, never blocking the client.
func (s *session) collect() {
	defer close(s.collected)
	ready := false
	for ev := range s.events {
		switch ev := ev.(type) {
		case *client.QueueEmpty:
			if !ready {
				ready = true
				close(s.ready)
			}
		case *client.Message:
			_ = s.c.MarkSeen(ev.Seq)
			select {
			case s.msgs <- ev:
			default: // a backlog of old probe messages: the one awaited is never among them
			}
		}
	}
}

func (s *session) waitReady(ctx context.Context, who string) error {
	select {
	case <-s.ready:
		return nil
	case <-s.runDone:
		return fmt.Errorf("%s could not connect to %s: %w", who, s.node, s.err)
	case <-ctx.Done():
		err := s.c.LastError()
		if err == nil {
			return fmt.Errorf("%s did not connect to %s within the probe's deadline", who, s.node)
		}
		return fmt.Errorf("%s did not connect to %s within the probe's deadline: %w", who, s.node, err)
	}
}

func (s *session) stop() {
	s.cancel()
	s.c.Close()
	<-s.runDone
	close(s.events)
	<-s.collected
}

// deadlineWords makes a deadline error say which deadline.
func deadlineWords(ctx context.Context, err error) error {
	if errors.Is(ctx.Err(), context.DeadlineExceeded) {
		return fmt.Errorf("no ack from the server within the probe's deadline: %w", err)
	}
	return err
}

func clip(s string) string {
	if len(s) > maxErrorLen {
		return s[:maxErrorLen] + "…"
	}
	return s
}

func randHex(n int) string {
	b := make([]byte, n)
	_, _ = rand.Read(b)
	return hex.EncodeToString(b)
}
