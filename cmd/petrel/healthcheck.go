// Copyright 2026 The Petrel Authors
// SPDX-License-Identifier: Apache-2.0

package main

import (
	"context"
	"crypto/tls"
	"fmt"
	"io"
	"net/http"
	"net/url"
	"strings"
	"time"
)

const healthcheckUsage = "healthcheck [--url URL] [--timeout DURATION] [--insecure-skip-verify]"

// defaultHealthURL is what a container's HEALTHCHECK asks: the public listener's /healthz.
const defaultHealthURL = "http://127.0.0.1:7070/healthz"

// runHealthcheck asks a server's /healthz once: exit 0 when it answers 200, 1 otherwise. It needs
// no shell or curl, so a distroless image can run it as its HEALTHCHECK.
func runHealthcheck(ctx context.Context, e *env, args []string) int {
	fs := newFlags(e, "healthcheck", healthcheckUsage)
	rawURL := fs.String("url", defaultHealthURL, "the URL to ask; 200 means healthy")
	timeout := fs.Duration("timeout", 5*time.Second, "how long to wait for the answer")
	skipVerify := fs.Bool("insecure-skip-verify", false, "accept any TLS certificate (for an https URL on loopback, whose name the certificate does not carry)")
	if code, ok := parseFlags(fs, args); !ok {
		return code
	}
	if fs.NArg() > 0 {
		fmt.Fprintf(e.stderr, "petrel healthcheck: unexpected argument %q\n", fs.Arg(0))
		return 2
	}
	u, err := url.Parse(*rawURL)
	if err != nil || (u.Scheme != "http" && u.Scheme != "https") || u.Host == "" {
		fmt.Fprintf(e.stderr, "petrel healthcheck: --url %q: want http://HOST:PORT/healthz or https://…\n", *rawURL)
		return 2
	}
	if *timeout <= 0 {
		fmt.Fprintf(e.stderr, "petrel healthcheck: --timeout %s: want more than 0\n", *timeout)
		return 2
	}
	ctx, cancel := context.WithTimeout(ctx, *timeout)
	defer cancel()
	tr := &http.Transport{
		Proxy:             nil, // a health check asks the address it is given, never a proxy
		DisableKeepAlives: true,
		TLSClientConfig:   &tls.Config{MinVersion: tls.VersionTLS12, InsecureSkipVerify: *skipVerify}, //nolint:gosec // opt-in, loopback checks
	}
	req, err := http.NewRequestWithContext(ctx, http.MethodGet, u.String(), nil)
	if err != nil {
		fmt.Fprintf(e.stderr, "petrel healthcheck: %v\n", err)
		return 2
	}
	resp, err := (&http.Client{Transport: tr}).Do(req)
	if err != nil {
		fmt.Fprintf(e.stderr, "petrel healthcheck: unhealthy: %s did not answer (%v): is `petrel serve` running there?\n", u.Redacted(), err)
		return 1
	}
	defer resp.Body.Close()
	body, _ := io.ReadAll(io.LimitReader(resp.Body, 512))
	text := strings.TrimSpace(string(body))
	if resp.StatusCode != http.StatusOK {
		fmt.Fprintf(e.stderr, "petrel healthcheck: unhealthy: %s answered %s: %s\n", u.Redacted(), resp.Status, sanitize(text))
		return 1
	}
	fmt.Fprintf(e.stdout, "healthy: %s\n", sanitize(text))
	return 0
}
