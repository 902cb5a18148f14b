// Copyright 2026 The Petrel Authors
// SPDX-License-Identifier: Apache-2.0

package server

import (
	"context"
	stdtls "crypto/tls"
	"errors"
	"fmt"
	"log/slog"
	"math/rand/v2"
	"net"
	"net/http"
	"net/url"
	"path/filepath"
	"strings"
	"sync"
	"time"

	"golang.org/x/crypto/acme"
	"golang.org/x/crypto/acme/autocert"
	"golang.org/x/time/rate"

	"github.com/petrelchat/petrel/internal/gateway"
)

// Automatic TLS (ACME, RFC 8555): with [tls] acme_domain set, the public listener's certificates
// come from an ACME CA (Let's Encrypt unless acme_directory names another) through
// golang.org/x/crypto/acme/autocert. The CA checks that this node answers for each name with the
// TLS-ALPN-01 challenge on the public listener (which must therefore be what the name's port 443
// reaches), and with HTTP-01 on acme_http_listen when that is set (the name's port 80).
// Certificates and the account key are kept in <data>/acme (mode 0700) and renewed 30 days
// before they expire. The first certificate is asked for as the server starts, so that the first
// client does not wait for the CA and a misconfiguration shows in the log at once.

// ACMECacheDir is the directory under the data directory holding ACME account keys and
// certificates.
const ACMECacheDir = "acme"

// acmeRetryMin and acmeRetryMax bound the jittered backoff between attempts to obtain the first
// certificates (a CA's rate limits are per hour and per week: never hammer it).
const (
	acmeRetryMin = 5 * time.Second
	acmeRetryMax = 30 * time.Minute
)

// acmeHTTPRate and acmeHTTPBurst limit the HTTP-01 listener's requests (challenges and
// redirects to https) node-wide.
const (
	acmeHTTPRate  = 50
	acmeHTTPBurst = 100
)

// validateACME reports problems in the [tls] acme_* keys.
func (c *Config) validateACME(bad func(format string, a ...any)) {
	if len(c.ACMEDomain) == 0 {
		if c.ACMEEmail != "" || c.ACMEHTTPListen != "" {
			bad("tls.acme_email and tls.acme_http_listen need tls.acme_domain (--acme-domain)")
		}
		return
	}
	if c.TLSCert != "" || c.TLSKey != "" {
		bad("tls.acme_domain and tls.cert/tls.key are two ways to get the listener's certificate: give one")
	}
	seen := map[string]bool{}
	for _, d := range c.ACMEDomain {
		if err := checkACMEDomain(d); err != nil {
			bad("tls.acme_domain %q: %v", d, err)
		}
		if seen[d] {
			bad("tls.acme_domain %q is listed twice", d)
		}
		seen[d] = true
	}
	if c.ACMEEmail != "" && (!strings.Contains(c.ACMEEmail, "@") || strings.ContainsAny(c.ACMEEmail, " \t\r\n<>,")) {
		bad("tls.acme_email %q: want one address, e.g. ops@example.org", c.ACMEEmail)
	}
	if u, err := url.Parse(c.ACMEDirectory); err != nil || u.Scheme != "https" || u.Host == "" {
		bad("tls.acme_directory %q: want the CA's https:// directory URL", c.ACMEDirectory)
	}
	if c.ACMEHTTPListen != "" {
		if _, _, err := net.SplitHostPort(c.ACMEHTTPListen); err != nil {
			bad("tls.acme_http_listen %q: %v (want HOST:PORT, e.g. :80)", c.ACMEHTTPListen, err)
		}
	}
}

// checkACMEDomain accepts a lower-case DNS name of at least two labels (no wildcard: the
// TLS-ALPN-01 and HTTP-01 challenges cannot prove one; no IP address).
func checkACMEDomain(d string) error {
	switch {
	case d == "":
		return errors.New("empty name")
	case d != strings.ToLower(d):
		return errors.New("write the name in lower case")
	case strings.HasPrefix(d, "*."):
		return errors.New("wildcard names need the DNS-01 challenge, which Petrel does not do: list each name")
	case net.ParseIP(d) != nil:
		return errors.New("an IP address: ACME here issues for DNS names only")
	case len(d) > 253 || !strings.Contains(strings.Trim(d, "."), "."):
		return errors.New("want a DNS name with at least two labels, e.g. chat.example.org")
	}
	for _, label := range strings.Split(strings.TrimSuffix(d, "."), ".") {
		if label == "" || len(label) > 63 || label[0] == '-' || label[len(label)-1] == '-' {
			return fmt.Errorf("label %q: want 1..63 letters, digits or hyphens, not starting or ending with a hyphen", label)
		}
		for _, r := range label {
			if !(r >= 'a' && r <= 'z' || r >= '0' && r <= '9' || r == '-') {
				return fmt.Errorf("label %q: want letters, digits or hyphens (write other names in punycode)", label)
			}
		}
	}
	return nil
}

// acmeTLS obtains and renews the public listener's certificates.
type acmeTLS struct {
	m       *autocert.Manager
	domains []string
	log     *slog.Logger

	httpSrv *http.Server // the HTTP-01 listener; nil without acme_http_listen
	httpLn  net.Listener

	stop chan struct{}
	wg   sync.WaitGroup // the first-certificate loop and the HTTP-01 server
}

// newACME builds the certificate manager. It does no I/O.
func newACME(c Config, log *slog.Logger) *acmeTLS {
	m := &autocert.Manager{
		Prompt:     autocert.AcceptTOS, // configuring acme_domain accepts the CA's terms (README)
		Cache:      autocert.DirCache(filepath.Join(c.Data, ACMECacheDir)),
		HostPolicy: autocert.HostWhitelist(c.ACMEDomain...),
		Email:      c.ACMEEmail,
		Client:     &acme.Client{DirectoryURL: c.ACMEDirectory, UserAgent: "petrel"},
	}
	return &acmeTLS{m: m, domains: c.ACMEDomain, log: log, stop: make(chan struct{})}
}

// serverTLS is the public listener's TLS configuration: Petrel's policy (gateway.ServerTLSConfig)
// with certificates from the CA, and the TLS-ALPN-01 challenge protocol.
func (a *acmeTLS) serverTLS() *stdtls.Config {
	cfg := gateway.ServerTLSConfig(nil)
	cfg.GetCertificate = a.m.GetCertificate
	cfg.NextProtos = append(cfg.NextProtos, acme.ALPNProto)
	return cfg
}

// start serves HTTP-01 on listen (if not empty) and starts asking for the first certificates.
func (a *acmeTLS) start(listen string) error {
	if listen != "" {
		ln, err := net.Listen("tcp", listen)
		if err != nil {
			return fmt.Errorf("tls.acme_http_listen %s: %w", listen, err)
		}
		lim := rate.NewLimiter(acmeHTTPRate, acmeHTTPBurst)
		h := a.m.HTTPHandler(nil) // challenges; everything else is redirected to https
		a.httpLn = ln
		a.httpSrv = &http.Server{
			Handler: http.HandlerFunc(func(w http.ResponseWriter, r *http.Request) {
				if !lim.Allow() {
					w.Header().Set("Retry-After", "1")
					http.Error(w, "too many requests", http.StatusTooManyRequests)
					return
				}
				// autocert checks the Host header against acme_domain as it is; a port in it (a
				// CA reaching a listener on another port than 80) is not part of the name.
				if host, _, err := net.SplitHostPort(r.Host); err == nil {
					r.Host = host
				}
				h.ServeHTTP(w, r)
			}),
			ReadHeaderTimeout: 5 * time.Second,
			ReadTimeout:       10 * time.Second,
			WriteTimeout:      10 * time.Second,
			IdleTimeout:       30 * time.Second,
			MaxHeaderBytes:    8 << 10,
			ErrorLog:          slog.NewLogLogger(a.log.Handler(), slog.LevelDebug),
		}
		a.wg.Add(1)
		go func() {
			defer a.wg.Done()
			if err := a.httpSrv.Serve(ln); err != nil && !errors.Is(err, http.ErrServerClosed) {
				a.log.Error("ACME HTTP-01 listener stopped", "err", err)
			}
		}()
		a.log.Info("ACME HTTP-01 listener", "addr", ln.Addr().String())
	}
	a.wg.Add(1)
	go a.obtain()
	return nil
}

// obtain asks for each domain's certificate (from the cache or the CA) until it has them all,
// with jittered exponential backoff between rounds. autocert renews them afterwards by itself.
func (a *acmeTLS) obtain() {
	defer a.wg.Done()
	pending := append([]string(nil), a.domains...)
	wait := acmeRetryMin
	for {
		var failed []string
		for _, d := range pending {
			select {
			case <-a.stop:
				return
			default:
			}
			// An ECDSA-capable hello, as every current client sends: the certificate clients get.
			hello := &stdtls.ClientHelloInfo{
				ServerName:        d,
				CipherSuites:      []uint16{stdtls.TLS_ECDHE_ECDSA_WITH_AES_128_GCM_SHA256},
				SignatureSchemes:  []stdtls.SignatureScheme{stdtls.ECDSAWithP256AndSHA256},
				SupportedCurves:   []stdtls.CurveID{stdtls.CurveP256},
				SupportedVersions: []uint16{stdtls.VersionTLS13, stdtls.VersionTLS12},
			}
			cert, err := a.m.GetCertificate(hello)
			if err != nil {
				failed = append(failed, d)
				a.log.Warn("ACME: no certificate yet", "domain", d, "err", err, "retry_in", wait.Round(time.Second))
				continue
			}
			exp := ""
			if cert.Leaf != nil {
				exp = cert.Leaf.NotAfter.UTC().Format(time.RFC3339)
			}
			a.log.Info("ACME: certificate ready", "domain", d, "expires", exp)
		}
		if len(failed) == 0 {
			return
		}
		pending = failed
		jittered := wait/2 + rand.N(wait/2+1)
		select {
		case <-a.stop:
			return
		case <-time.After(jittered):
		}
		wait = min(2*wait, acmeRetryMax)
	}
}

// shutdown stops the HTTP-01 listener and the first-certificate loop, waiting for them within
// ctx. A request to the CA in flight cannot be cancelled (autocert gives it its own deadline):
// past ctx it is abandoned to the process's exit.
func (a *acmeTLS) shutdown(ctx context.Context) error {
	select {
	case <-a.stop:
	default:
		close(a.stop)
	}
	var err error
	if a.httpSrv != nil {
		err = a.httpSrv.Shutdown(ctx)
	}
	done := make(chan struct{})
	go func() { a.wg.Wait(); close(done) }()
	select {
	case <-done:
	case <-ctx.Done():
		err = errors.Join(err, fmt.Errorf("ACME: %w", context.Cause(ctx)))
	}
	return err
}
