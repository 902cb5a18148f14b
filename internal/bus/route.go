// Copyright 2026 The Petrel Authors
// SPDX-License-Identifier: Apache-2.0

package bus

import (
	"crypto/subtle"
	"crypto/tls"
	"crypto/x509"
	"errors"
	"fmt"
	"log/slog"
	"net/url"
	"os"
	"strings"
	"sync"
	"sync/atomic"
	"time"

	"github.com/nats-io/nats-server/v2/server"
	"github.com/prometheus/client_golang/prometheus"
)

// Cluster routes between the nodes' embedded NATS servers carry every bus message, so a node
// accepts a route only from a node that proves it knows the cluster secret, and with ClusterTLS
// every route is mutual TLS 1.3 against the cluster's own CA.
//
// The secret travels as the password of the route's CONNECT (user routeUser), which nats-server
// sends after the TLS handshake. The check is ours (routeAuth, nats-server's
// CustomRouterAuthentication) so that a refusal is logged with its reason, and it is symmetric: a
// node without a secret refuses a route that carries one, so a node whose secret is missing can
// join neither by dialling nor by being dialled.

// routeUser is the user name of every cluster route's credentials.
const routeUser = "petrel-route"

// Reasons of petrel_cluster_route_refusals_total.
const (
	refusedAuth       = "auth"         // this node refused a peer's route: wrong or missing secret
	refusedAuthByPeer = "auth_by_peer" // a peer refused this node's route
	refusedTLS        = "tls"          // a route's TLS handshake failed (either end)
)

// routeLogInterval is the least time between two log lines about refused routes of one reason
// (routes are retried every second); the rest are counted and the next line says how many.
const routeLogInterval = 10 * time.Second

// routeGuard authenticates inbound routes, turns nats-server's log lines about routes into
// Petrel's (with the secret removed), counts refusals and remembers the last one for the
// "waiting for jetstream" warning.
type routeGuard struct {
	secret   string
	accepted []string // further secrets accepted on inbound routes (a rotation's previous one)
	log      *slog.Logger
	refusals *prometheus.CounterVec
	last     atomic.Pointer[string] // the last refusal, for waitJetStream's warning

	mu         sync.Mutex // guards the fields below
	logged     map[string]time.Time
	suppressed map[string]int
}

func newRouteGuard(secret string, accepted []string, log *slog.Logger, reg prometheus.Registerer) *routeGuard {
	if secret == "" {
		accepted = nil
	}
	g := &routeGuard{
		secret:   secret,
		accepted: accepted,
		log:      log,
		refusals: prometheus.NewCounterVec(prometheus.CounterOpts{
			Name: "petrel_cluster_route_refusals_total",
			Help: "Cluster routes that failed to form, by reason: auth (this node refused a peer without the cluster secret), auth_by_peer (a peer refused this node's secret), tls (a route's TLS handshake failed).",
		}, []string{"reason"}),
		logged:     map[string]time.Time{},
		suppressed: map[string]int{},
	}
	for _, r := range []string{refusedAuth, refusedAuthByPeer, refusedTLS} {
		g.refusals.WithLabelValues(r)
	}
	if reg != nil {
		reg.MustRegister(g.refusals)
	}
	return g
}

// options sets the route credentials on o: the user and secret nats-server presents on the
// routes it dials (the configured ones here, the ones it learns by gossip itself), and the check
// of inbound routes.
func (g *routeGuard) options(o *server.Options) {
	o.CustomRouterAuthentication = g
	if g.secret != "" {
		o.Cluster.Username, o.Cluster.Password = routeUser, g.secret // also makes the route INFO say auth_required
	}
}

// routeURL is the URL of a configured route to a peer, with the credentials if any.
func (g *routeGuard) routeURL(hostPort string) *url.URL {
	u := &url.URL{Scheme: "nats-route", Host: hostPort}
	if g.secret != "" {
		u.User = url.UserPassword(routeUser, g.secret)
	}
	return u
}

// Check implements server.Authentication for inbound routes: the peer's password must be this
// node's secret or one of the accepted ones (empty matches only empty, whatever the user, so that
// nodes without a secret still route with each other and with older releases).
func (g *routeGuard) Check(c server.ClientAuthentication) bool {
	o := c.GetOpts()
	user, pass := "", ""
	if o != nil {
		user, pass = o.Username, o.Password
	}
	match := subtle.ConstantTimeCompare([]byte(pass), []byte(g.secret))
	for _, a := range g.accepted {
		match |= subtle.ConstantTimeCompare([]byte(pass), []byte(a)) // every one compared: no early exit
	}
	if match == 1 && (g.secret == "" || user == routeUser) {
		return true
	}
	peer := "unknown"
	if a := c.RemoteAddress(); a != nil {
		peer = a.String()
	}
	why := "it presented a wrong cluster secret"
	switch {
	case g.secret == "":
		why = "it presented a cluster secret and this node has none (set cluster_token_file)"
	case pass == "":
		why = "it presented no cluster secret (set the same cluster_token_file on every node)"
	}
	g.refused(refusedAuth, "cluster route refused for authentication: "+why, "peer", peer)
	return false
}

// refused counts a refusal and logs it, at most once per routeLogInterval per reason.
func (g *routeGuard) refused(reason, msg string, args ...any) {
	g.refusals.WithLabelValues(reason).Inc()
	text := msg
	g.last.Store(&text)
	now := time.Now()
	g.mu.Lock()
	if t, ok := g.logged[reason]; ok && now.Sub(t) < routeLogInterval {
		g.suppressed[reason]++
		g.mu.Unlock()
		return
	}
	g.logged[reason] = now
	n := g.suppressed[reason]
	g.suppressed[reason] = 0
	g.mu.Unlock()
	if n > 0 {
		args = append(args, "suppressed", n)
	}
	g.log.Warn(msg, args...)
}

// lastRefusal is the last refusal's message, "" if none.
func (g *routeGuard) lastRefusal() string {
	if p := g.last.Load(); p != nil {
		return *p
	}
	return ""
}

// redact removes the secrets, raw or escaped in a URL, from s.
func (g *routeGuard) redact(s string) string {
	if g.secret == "" {
		return s
	}
	for _, secret := range append([]string{g.secret}, g.accepted...) {
		s = strings.ReplaceAll(s, secret, redacted)
		if esc := url.UserPassword(routeUser, secret).String(); esc != routeUser+":"+secret {
			s = strings.ReplaceAll(s, strings.TrimPrefix(esc, routeUser+":"), redacted)
		}
	}
	return s
}

// natsLogger is the embedded nats-server's logger: route refusals become Petrel warnings (the
// inbound authentication refusal is logged by Check), everything else goes to debug level, and
// nothing carries the secret.
type natsLogger struct{ g *routeGuard }

func (l natsLogger) line(format string, v []any) string {
	return l.g.redact(fmt.Sprintf(format, v...))
}

// Errorf sorts nats-server's errors. Its texts are matched: a newer nats-server that words them
// differently shows up in TestRouteAuthRefused and TestRouteTLSRefused.
func (l natsLogger) Errorf(format string, v ...any) {
	s := l.line(format, v)
	switch {
	case strings.Contains(s, "Route Error") && strings.Contains(s, "Authorization Violation"):
		l.g.refused(refusedAuthByPeer, "cluster route refused by the peer for authentication: every node needs the same cluster_token_file", "detail", s)
	case strings.Contains(s, "TLS route handshake error"):
		l.g.refused(refusedTLS, "cluster route TLS handshake failed: every node needs a certificate signed by the cluster_tls_ca, valid for the address the others dial, and the same CA", "detail", s)
	default:
		l.g.log.Debug("nats", "level", "error", "msg", s)
	}
}

func (l natsLogger) Warnf(format string, v ...any) {
	l.g.log.Debug("nats", "level", "warn", "msg", l.line(format, v))
}

func (l natsLogger) Fatalf(format string, v ...any) {
	l.g.log.Error("nats fatal", "msg", l.line(format, v))
}

func (l natsLogger) Noticef(string, ...any) {}
func (l natsLogger) Debugf(string, ...any)  {}
func (l natsLogger) Tracef(string, ...any)  {}

// RouteTLS builds the mutual TLS configuration of cluster routes from PEM files: this node's
// certificate and key, and the CA that signed every node's certificate. Each node presents its
// certificate on the routes it accepts and on the ones it dials, and verifies the peer's against
// the CA (the dialled address must be among the certificate's names). TLS 1.3 only, hybrid
// post-quantum key exchange first. The certificate must chain to the CA and be valid for both
// server and client authentication.
func RouteTLS(certFile, keyFile, caFile string) (*tls.Config, error) {
	cert, err := tls.LoadX509KeyPair(certFile, keyFile)
	if err != nil {
		return nil, fmt.Errorf("load certificate %s and key %s: %w", certFile, keyFile, err)
	}
	pem, err := os.ReadFile(caFile)
	if err != nil {
		return nil, fmt.Errorf("read CA: %w", err)
	}
	pool := x509.NewCertPool()
	if !pool.AppendCertsFromPEM(pem) {
		return nil, fmt.Errorf("CA %s: no PEM certificate in it", caFile)
	}
	leaf := cert.Leaf
	if leaf == nil {
		if leaf, err = x509.ParseCertificate(cert.Certificate[0]); err != nil {
			return nil, fmt.Errorf("certificate %s: %w", certFile, err)
		}
	}
	inter := x509.NewCertPool()
	for _, der := range cert.Certificate[1:] {
		if c, err := x509.ParseCertificate(der); err == nil {
			inter.AddCert(c)
		}
	}
	for _, u := range []struct {
		usage x509.ExtKeyUsage
		name  string
	}{{x509.ExtKeyUsageServerAuth, "serverAuth"}, {x509.ExtKeyUsageClientAuth, "clientAuth"}} {
		_, err := leaf.Verify(x509.VerifyOptions{Roots: pool, Intermediates: inter, KeyUsages: []x509.ExtKeyUsage{u.usage}})
		var inv x509.CertificateInvalidError
		switch {
		case errors.As(err, &inv) && inv.Reason == x509.IncompatibleUsage:
			return nil, fmt.Errorf("certificate %s is not valid for TLS %s (a route needs extendedKeyUsage serverAuth and clientAuth)", certFile, u.name)
		case err != nil:
			return nil, fmt.Errorf("certificate %s is not signed by the CA %s: %w", certFile, caFile, err)
		}
	}
	return &tls.Config{
		Certificates:     []tls.Certificate{cert},
		RootCAs:          pool,
		ClientCAs:        pool,
		ClientAuth:       tls.RequireAndVerifyClientCert,
		MinVersion:       tls.VersionTLS13,
		CurvePreferences: []tls.CurveID{tls.X25519MLKEM768, tls.X25519},
	}, nil
}
