// Copyright 2026 The Petrel Authors
// SPDX-License-Identifier: Apache-2.0

package server

import (
	"context"
	"errors"
	"path/filepath"
	"sync"
	"time"

	"github.com/petrelchat/petrel/internal/directory"
	"github.com/petrelchat/petrel/internal/prober"
	"github.com/petrelchat/petrel/internal/status"
)

// The self-prober (config probe_interval): every interval the node runs the black-box prober
// (internal/prober, the public SDK only) against its own public URL, with two probe accounts
// named probe-<node>-a and probe-<node>-b kept in <data>/probe. They are created through the
// registration path; under invite-only registration the node mints its own invites (one per
// account, once). Results go to the server's probe sink (source "self").

// ProbeDir is the self-prober's home in the data directory.
const ProbeDir = "probe"

// noProbeSink drops probe results: the default until the status aggregates take them.
type noProbeSink struct{}

func (noProbeSink) RecordProbe(status.ProbeResult) {}

// teeSink records to each sink.
type teeSink []status.ProbeSink

func (t teeSink) RecordProbe(r status.ProbeResult) {
	for _, s := range t {
		s.RecordProbe(r)
	}
}

// selfProbe is the running self-prober.
type selfProbe struct {
	cancel context.CancelFunc
	wg     sync.WaitGroup
}

// stop ends the self-prober and waits for it. Idempotent; nil-safe.
func (sp *selfProbe) stop() {
	if sp == nil {
		return
	}
	sp.cancel()
	sp.wg.Wait()
}

// startSelfProbe starts the self-prober when probe_interval is set (after the listener is bound).
func (s *Server) startSelfProbe() error {
	if s.cfg.ProbeInterval.Duration <= 0 {
		return nil
	}
	url := s.publicURL()
	if url == "" {
		url = s.URL()
	}
	cfg := prober.Config{
		Home:    filepath.Join(s.cfg.Data, ProbeDir),
		Name:    "probe-" + s.cfg.Node,
		Source:  "self",
		Timeout: min(prober.DefaultTimeout, s.cfg.ProbeInterval.Duration),
		Logger:  s.log.With("component", "selfprobe"),
	}
	if s.cfg.Registration == directory.PolicyInvite {
		cfg.Invite = s.dir.CreateInvite
	}
	p, err := prober.New(cfg)
	if err != nil {
		return err
	}
	ctx, cancel := context.WithCancel(context.Background())
	sp := &selfProbe{cancel: cancel}
	sp.wg.Add(1)
	go func() {
		defer sp.wg.Done()
		defer p.Close()
		s.runSelfProbe(ctx, p, url)
	}()
	s.selfProbe = sp
	s.log.Info("self-prober", "url", url, "interval", s.cfg.ProbeInterval.Duration)
	return nil
}

// runSelfProbe probes url every probe_interval until ctx ends.
func (s *Server) runSelfProbe(ctx context.Context, p *prober.Prober, url string) {
	log := s.log.With("component", "selfprobe")
	t := time.NewTicker(s.cfg.ProbeInterval.Duration)
	defer t.Stop()
	lastSetupErr := ""
	for {
		err := p.Setup(ctx, url, nil)
		switch {
		case ctx.Err() != nil:
			return
		case errors.Is(err, prober.ErrSetup):
			// A configuration matter (registration closed), not the node's health: said once
			// per change, not recorded as a failed probe.
			if err.Error() != lastSetupErr {
				log.Warn("self-prober cannot create its accounts", "err", err)
				lastSetupErr = err.Error()
			}
		default:
			lastSetupErr = ""
			r := p.Probe(ctx, url, nil)
			if ctx.Err() != nil {
				return
			}
			if !r.OK {
				log.Warn("self-probe failed", "err", r.Error)
			}
			s.probeSink.RecordProbe(r)
		}
		select {
		case <-ctx.Done():
			return
		case <-t.C:
		}
	}
}
