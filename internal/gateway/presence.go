// Copyright 2026 The Petrel Authors
// SPDX-License-Identifier: Apache-2.0

package gateway

import (
	"context"
	"errors"
	"fmt"
	"time"

	"github.com/prometheus/client_golang/prometheus"

	"github.com/petrelchat/petrel/internal/directory"
	"github.com/petrelchat/petrel/internal/keyrate"
	"github.com/petrelchat/petrel/internal/messaging"
	"github.com/petrelchat/petrel/internal/presence"
	pb "github.com/petrelchat/petrel/proto/petrel/v1"
)

// Presence, settings, ephemeral and disappearing sends: the frames and hooks of issue 21 that
// are not groups. The services decide (internal/presence, mailbox.SendEphemeral, the mailbox's
// expiry); the gateway parses, rate-limits, sheds and answers.
//
// Frames: SubscribePresence → PresenceResult, then PresenceChanged pushes while the connection
// lasts; PutSettings → SettingsResult. Both are rate-limited per device (presenceOpsBurst, then
// presenceOpsPerMinute), like device changes: RATE_LIMITED with a retry hint past it.
//
// Send.ephemeral (typing): resolved like a 1:1 send without own copies
// (messaging.ResolveEphemeral), offered to the devices connected now, never stored, and acked at
// once ("the server took it"). Rate-limited per device (ephemeralBurst, then ephemeralPerSecond):
// past it the send is answered RATE_LIMITED (nothing is dropped silently: a client that sees it
// simply sends its next indicator later). Shed first under load: while the node is loaded
// (overloaded) it is acked and dropped, and a connection whose unsent bytes pass shedPendingBytes
// drops ephemeral envelopes and presence pushes meant for it.
//
// Send.expires_at_ms: checked (not more than pb.MaxExpiresInMs ahead), stamped on every envelope
// (Envelope.expires_at_ms) and target; the mailbox deletes stored copies at that time.

const (
	presenceOpsBurst     = 20
	presenceOpsPerMinute = 20
	ephemeralBurst       = 10
	ephemeralPerSecond   = 5
	// shedPendingBytes: a connection with more unsent bytes than this gets no ephemeral frames.
	shedPendingBytes = 256 << 10
)

// extras is the gateway's state for the frames above.
type extras struct {
	presence     *presence.Service // nil: presence frames are refused UNAVAILABLE
	presenceOps  *keyrate.Limiter[string]
	ephemeralOps *keyrate.Limiter[string]
	shed         *prometheus.CounterVec
}

func newExtras(cfg Config) *extras {
	x := &extras{
		presence:     cfg.Presence,
		presenceOps:  keyrate.New[string](keyrate.Config{Rate: presenceOpsPerMinute / 60.0, Burst: presenceOpsBurst, MaxKeys: 100_000}),
		ephemeralOps: keyrate.New[string](keyrate.Config{Rate: ephemeralPerSecond, Burst: ephemeralBurst, MaxKeys: 100_000}),
		shed: prometheus.NewCounterVec(prometheus.CounterOpts{Name: "petrel_gateway_ephemeral_dropped_total",
			Help: "Ephemeral frames dropped by the gateway, shed first under load: kind typing (an ephemeral send taken while the node was loaded, or for a loaded connection) or presence (a PresenceChanged push for a loaded connection)."}, []string{"kind"}),
	}
	x.shed.WithLabelValues("typing")
	x.shed.WithLabelValues("presence")
	if cfg.Registry != nil {
		cfg.Registry.MustRegister(x.shed)
	}
	return x
}

// overloaded reports whether the node is loaded enough to shed ephemeral work: half of its
// inbound byte budget is held by frames not yet handled.
func (g *Gateway) overloaded() bool {
	return g.inbound.Load() > g.cfg.InboundBytes/2
}

// ShedEphemeral implements mailbox.EphemeralSink: a loaded node, or a connection that is behind
// with its writes, drops ephemeral envelopes.
func (c *conn) ShedEphemeral() bool {
	if c.g.overloaded() {
		return true
	}
	c.wmu.Lock()
	behind := c.wbuf != nil && len(*c.wbuf) > shedPendingBytes
	c.wmu.Unlock()
	return behind
}

// PresenceChanged implements presence.Watcher: the push is dropped when the connection is loaded.
func (c *conn) PresenceChanged(p *pb.Presence) {
	if c.state.Load() != stateAuthed {
		return
	}
	if c.ShedEphemeral() {
		c.g.ext.shed.WithLabelValues("presence").Inc()
		return
	}
	c.write(&pb.Frame{Body: &pb.Frame_PresenceChanged{PresenceChanged: &pb.PresenceChanged{Presence: p}}})
}

// presenceOnline is called once a device is authenticated and attached: its account is online.
func (c *conn) presenceOnline(dev directory.Principal) {
	if c.g.ext.presence == nil {
		return
	}
	// Counted under c.mu, as presenceOffline uncounts it: the two cannot cross (lock order: conn
	// mu, then the presence service's).
	c.mu.Lock()
	defer c.mu.Unlock()
	if c.state.Load() == stateClosed || c.presenceOn {
		return
	}
	c.presenceOn = true
	c.g.ext.presence.Connected(dev.Name)
}

// presenceOffline is called when the connection closes: its subscription ends and, if it was
// counted online, its account loses a device.
func (c *conn) presenceOffline() {
	p := c.g.ext.presence
	if p == nil {
		return
	}
	p.Unsubscribe(c)
	c.mu.Lock()
	defer c.mu.Unlock()
	if c.presenceOn {
		c.presenceOn = false
		p.Disconnected(c.dev.Name)
	}
}

// allowPresenceOp takes one presence or settings frame from the device's budget.
func (c *conn) allowPresenceOp(id uint64, dev directory.Principal) bool {
	ok, wait := c.g.ext.presenceOps.Take(dev.ID, 1)
	if !ok {
		c.g.limitHit(limitPresence, true)
		c.writeError(id, &codedError{code: pb.ErrorCode_ERROR_CODE_RATE_LIMITED, msg: "too many presence requests: try again later", retry: retryMs(wait)})
	}
	return ok
}

var errNoPresence = &codedError{code: pb.ErrorCode_ERROR_CODE_UNAVAILABLE, msg: "presence is not available on this node", retry: 1000}

// onSubscribePresence replaces the connection's presence subscription.
func (c *conn) onSubscribePresence(f *pb.Frame) {
	dev := c.principal()
	if !c.allowPresenceOp(f.Id, dev) {
		return
	}
	p := c.g.ext.presence
	if p == nil {
		c.writeError(f.Id, errNoPresence)
		return
	}
	accounts := f.GetSubscribePresence().GetAccounts()
	if len(accounts) > pb.MaxPresenceAccounts {
		c.fail(f.Id, pb.ErrorCode_ERROR_CODE_INVALID_REQUEST, fmt.Sprintf("at most %d accounts", pb.MaxPresenceAccounts))
		return
	}
	seen := make(map[string]struct{}, len(accounts))
	for _, a := range accounts {
		if !pb.ValidName(a) {
			c.fail(f.Id, pb.ErrorCode_ERROR_CODE_INVALID_REQUEST, "an account name is not valid")
			return
		}
		if _, dup := seen[a]; dup {
			c.fail(f.Id, pb.ErrorCode_ERROR_CODE_INVALID_REQUEST, "an account is named twice")
			return
		}
		seen[a] = struct{}{}
	}
	ctx, cancel := c.ctx()
	defer cancel()
	res, err := p.Subscribe(ctx, c, dev.Name, accounts)
	if err != nil {
		c.writeError(f.Id, err)
		return
	}
	if c.state.Load() == stateClosed { // closed meanwhile: presenceOffline may have run before
		p.Unsubscribe(c)
		return
	}
	c.write(&pb.Frame{Id: f.Id, Body: &pb.Frame_PresenceResult{PresenceResult: &pb.PresenceResult{Presence: res}}})
}

// onPutSettings stores the account's settings.
func (c *conn) onPutSettings(f *pb.Frame) {
	dev := c.principal()
	if !c.allowPresenceOp(f.Id, dev) {
		return
	}
	p := c.g.ext.presence
	if p == nil {
		c.writeError(f.Id, errNoPresence)
		return
	}
	ctx, cancel := c.ctx()
	defer cancel()
	st, err := p.PutSettings(ctx, dev.Name, f.GetPutSettings().GetSettings())
	if errors.Is(err, presence.ErrInvalidSettings) {
		c.fail(f.Id, pb.ErrorCode_ERROR_CODE_INVALID_REQUEST, err.Error())
		return
	}
	if err != nil {
		c.writeError(f.Id, err)
		return
	}
	c.write(&pb.Frame{Id: f.Id, Body: &pb.Frame_SettingsResult{SettingsResult: &pb.SettingsResult{Settings: st}}})
}

// sendEphemeral handles a Send with ephemeral set (see the top of this file).
func (c *conn) sendEphemeral(v *pb.SendView, m *messaging.Message) {
	id := v.ID
	c.mu.Lock()
	dev := c.dev
	c.mu.Unlock()
	if ok, wait := c.g.ext.ephemeralOps.Take(dev.ID, 1); !ok {
		c.g.limitHit(limitEphemeral, true)
		c.writeError(id, &codedError{code: pb.ErrorCode_ERROR_CODE_RATE_LIMITED, msg: "too many ephemeral sends: try again later", retry: retryMs(wait)})
		return
	}
	if err := c.g.msg.ResolveEphemeral(context.Background(), dev, v, time.Now().UnixMilli(), m); err != nil {
		c.writeError(id, err)
		return
	}
	if c.g.overloaded() {
		c.g.ext.shed.WithLabelValues("typing").Inc()
	} else {
		c.g.mb.SendEphemeral(m.Targets)
	}
	_ = c.enqueue(pb.AppendSendResultFrame(nil, id, m.ID))
}

// checkExpiry refuses an expires_at_ms too far ahead (a negative one too).
func checkExpiry(expiresAtMs int64) error {
	if expiresAtMs < 0 || expiresAtMs > time.Now().UnixMilli()+pb.MaxExpiresInMs+24*3600*1000 {
		return &codedError{code: pb.ErrorCode_ERROR_CODE_INVALID_REQUEST, msg: "expires_at_ms must be at most a year ahead"}
	}
	return nil
}

// stampExpiry sets a disappearing message's expiry on every target and its envelope
// (Envelope.expires_at_ms). Targets that shared envelope bytes share the new ones.
func stampExpiry(m *messaging.Message, expiresAtMs int64) {
	type pair struct{ old, new []byte }
	var done []pair
	for i := range m.Targets {
		t := &m.Targets[i]
		t.ExpiresAtMs = expiresAtMs
		var env []byte
		for _, p := range done {
			if len(p.old) > 0 && len(t.Envelope) > 0 && &p.old[0] == &t.Envelope[0] && len(p.old) == len(t.Envelope) {
				env = p.new
				break
			}
		}
		if env == nil {
			env = make([]byte, 0, len(t.Envelope)+11)
			env = pb.AppendEnvelopeExpiry(append(env, t.Envelope...), expiresAtMs)
			done = append(done, pair{t.Envelope, env})
		}
		t.Envelope = env
	}
}
