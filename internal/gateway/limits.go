// Copyright 2026 The Petrel Authors
// SPDX-License-Identifier: Apache-2.0

package gateway

import (
	"context"
	"errors"
	"math"
	"net"
	"net/netip"
	"time"

	"github.com/prometheus/client_golang/prometheus"

	"github.com/petrelchat/petrel/internal/directory"
	"github.com/petrelchat/petrel/internal/keyrate"
	pb "github.com/petrelchat/petrel/proto/petrel/v1"
)

// retryMs is a retry hint in whole milliseconds, at least 1 (0 would mean "do not retry").
func retryMs(d time.Duration) uint32 {
	return uint32(min(max(d.Milliseconds()+1, 1), math.MaxUint32))
}

// RegistrationLimits guard the handshake against junk and floods. Junk must not spend what real
// users need: a Register is checked in full (syntax, keys, signatures, then the name, device and
// invite reads) before it takes a token of the node-wide registration rate, so only registrations
// that would succeed spend it. Cheap junk is bounded per address and per connection instead.
type RegistrationLimits struct {
	// PerIPPerMinute and PerIPBurst limit Register attempts, valid or not, from one IP address
	// (IPv6: one /64). Defaults: 6 a minute and 20.
	PerIPPerMinute float64
	PerIPBurst     float64
	// LimitLoopback applies the per-IP limit to loopback peers too. Default: false, because a
	// loopback peer is a reverse proxy on the same host (all its users share one address) or the
	// operator's own tools; tests turn it on.
	LimitLoopback bool
	// MaxIPs bounds the addresses the per-IP limit tracks. Default: 100,000.
	MaxIPs int
	// MaxHandshakeFailures closes a connection after this many refused handshake frames
	// (Register or Auth refused for the client's fault, or another frame before either), with
	// close code 1008. Default: 3.
	MaxHandshakeFailures int
}

func (l *RegistrationLimits) setDefaults() {
	if l.PerIPPerMinute == 0 {
		l.PerIPPerMinute = 6
	}
	if l.PerIPBurst == 0 {
		l.PerIPBurst = 20
	}
	if l.MaxIPs == 0 {
		l.MaxIPs = 100_000
	}
	if l.MaxHandshakeFailures == 0 {
		l.MaxHandshakeFailures = 3
	}
}

// regGuard applies RegistrationLimits.
type regGuard struct {
	cfg     RegistrationLimits
	perIP   *keyrate.Limiter[netip.Addr]
	limited *prometheus.CounterVec // by limit: ip, node
	closes  prometheus.Counter
}

func newRegGuard(cfg RegistrationLimits, reg prometheus.Registerer) *regGuard {
	cfg.setDefaults()
	g := &regGuard{
		cfg:   cfg,
		perIP: keyrate.New[netip.Addr](keyrate.Config{Rate: cfg.PerIPPerMinute / 60, Burst: cfg.PerIPBurst, MaxKeys: cfg.MaxIPs}),
		limited: prometheus.NewCounterVec(prometheus.CounterOpts{Name: "petrel_gateway_registrations_limited_total",
			Help: "Register and Recover frames refused RATE_LIMITED, by limit: ip (Register attempts from one address), node (the node-wide rate, spent only by valid registrations), recover_ip (Recover attempts from one address, sharing the ip budget), recover_account (Recover attempts for one account)."}, []string{"limit"}),
		closes: prometheus.NewCounter(prometheus.CounterOpts{Name: "petrel_gateway_handshake_failure_closes_total",
			Help: "Connections closed after too many refused handshake frames."}),
	}
	g.limited.WithLabelValues("ip") // both limits show, at 0, from the start
	g.limited.WithLabelValues("node")
	if reg != nil {
		reg.MustRegister(g.limited, g.closes)
	}
	return g
}

// allowIP takes a registration attempt from addr's budget.
func (r *regGuard) allowIP(addr net.Addr) (bool, time.Duration) {
	ip, ok := peerIP(addr)
	if !ok || (ip.IsLoopback() && !r.cfg.LimitLoopback) {
		return true, 0
	}
	return r.perIP.Take(ip, 1)
}

// peerIP is the limiter key of a peer address: its IP, or its /64 for IPv6.
func peerIP(addr net.Addr) (netip.Addr, bool) {
	var ip netip.Addr
	switch a := addr.(type) {
	case *net.TCPAddr:
		ip, _ = netip.AddrFromSlice(a.IP)
	case nil:
		return ip, false
	default:
		ap, err := netip.ParseAddrPort(a.String())
		if err != nil {
			return ip, false
		}
		ip = ap.Addr()
	}
	ip = ip.Unmap()
	if !ip.IsValid() {
		return ip, false
	}
	if ip.Is6() {
		ip = netip.PrefixFrom(ip, 64).Masked().Addr()
	}
	return ip, true
}

// register runs a Register: the per-IP limit, the directory's checks, then the node-wide rate
// (only a registration that passed every check spends it), then the writes. clientFault is false
// for refusals that are not the client's doing (the node is busy, the store failed).
func (c *conn) register(ctx context.Context, req *pb.Register) (dev *directory.Device, clientFault bool, err error) {
	if ok, retry := c.g.reg.allowIP(c.ws.RemoteAddr()); !ok {
		c.g.reg.limited.WithLabelValues("ip").Inc()
		return nil, true, &codedError{code: pb.ErrorCode_ERROR_CODE_RATE_LIMITED,
			msg: "too many registrations from this address, try later", retry: retryMs(retry)}
	}
	r, err := c.g.dir.CheckRegister(ctx, req, c.nonce())
	if err != nil {
		return nil, !errors.Is(err, directory.ErrUnavailable) && ctx.Err() == nil, err
	}
	if res := c.g.regLimit.Reserve(); !res.OK() || res.Delay() > 0 {
		retry := res.Delay()
		res.Cancel()
		c.g.reg.limited.WithLabelValues("node").Inc()
		return nil, false, &codedError{code: pb.ErrorCode_ERROR_CODE_RATE_LIMITED,
			msg: "too many registrations, try later", retry: retryMs(max(retry, time.Second))}
	}
	dev, err = c.g.dir.CompleteRegister(ctx, r)
	return dev, false, err
}

// handshakeFailed counts a refused handshake frame; at the limit it closes the connection with an
// Error (RATE_LIMITED) and close code 1008 (policy violation).
func (c *conn) handshakeFailed() {
	if c.hs == nil { // authenticated meanwhile: not a handshake frame any more
		return
	}
	c.hs.failures++ // only the connection's frame handler touches it, one frame at a time
	if int(c.hs.failures) < c.g.reg.cfg.MaxHandshakeFailures {
		return
	}
	c.g.reg.closes.Inc()
	c.write(&pb.Frame{Body: &pb.Frame_Error{Error: &pb.Error{
		Code: pb.ErrorCode_ERROR_CODE_RATE_LIMITED, Message: handshakeFailuresReason + ": connection closed", RetryAfterMs: 1000,
	}}})
	c.closeWithCode(closePolicyViolation, handshakeFailuresReason)
}

const handshakeFailuresReason = "too many failed handshakes"

// closeWithCode queues a WebSocket close frame with code and reason (at most 123 bytes) after
// what is pending, then writes everything and closes.
func (c *conn) closeWithCode(code uint16, reason string) {
	c.wmu.Lock()
	if !c.wclosed {
		if c.wbuf == nil {
			c.wbuf = bufPool.Get().(*[]byte)
		}
		reason = reason[:min(len(reason), 123)]
		*c.wbuf = append(*c.wbuf, 0x88, byte(2+len(reason)), byte(code>>8), byte(code))
		*c.wbuf = append(*c.wbuf, reason...)
	}
	c.wmu.Unlock()
	c.close()
}
