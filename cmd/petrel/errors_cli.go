// Copyright 2026 The Petrel Authors
// SPDX-License-Identifier: Apache-2.0

package main

import (
	"context"
	"errors"
	"fmt"
	"net"
	"net/http"
	"net/url"
	"strings"
	"syscall"
	"time"

	"github.com/petrelchat/petrel/client"
	petrelv1 "github.com/petrelchat/petrel/proto/petrel/v1"
)

// Errors that say what to do: every error a user can meet names the cause in words and the next
// step. describeErr (client_cmds.go) calls describeUserErr first.

// checkServerURLs splits a --server list and checks each URL's form before anything is stored or
// dialled; a URL without a scheme (127.0.0.1:7070) is a usage error that shows the right form.
func checkServerURLs(e *env, cmd, list string) ([]string, int) {
	urls := splitList(list)
	if len(urls) == 0 {
		return nil, usageErr(e, cmd, "--server needs at least one URL")
	}
	for _, u := range urls {
		if msg := badServerURL(u); msg != "" {
			return nil, usageErr(e, cmd, "%s", msg)
		}
	}
	return urls, 0
}

// badServerURL says what is wrong with a server URL ("" when nothing is).
func badServerURL(raw string) string {
	want := "use http://HOST:PORT or https://HOST[:PORT], e.g. http://127.0.0.1:7070"
	if !strings.Contains(raw, "://") {
		return fmt.Sprintf("server URL %q has no scheme: %s", sanitize(raw), want)
	}
	u, err := url.Parse(raw)
	if err != nil {
		return fmt.Sprintf("server URL %q does not parse: %s", sanitize(raw), want)
	}
	switch u.Scheme {
	case "http", "https", "ws", "wss":
	default:
		return fmt.Sprintf("server URL %q has scheme %q: %s", sanitize(raw), sanitize(u.Scheme), want)
	}
	if u.Host == "" {
		return fmt.Sprintf("server URL %q has no host: %s", sanitize(raw), want)
	}
	return ""
}

// normalizeName accepts an account name typed with capitals: names are lower case, so it
// lower-cases it and says so once, on stderr. A name that is invalid either way is returned as
// typed (the server's refusal explains the rules).
func normalizeName(e *env, cmd, name string) (string, int) {
	lower := strings.ToLower(name)
	if lower != name && petrelv1.ValidName(lower) {
		fmt.Fprintf(e.stderr, "petrel %s: account names are lower case: using %q\n", cmd, lower)
		return lower, 0
	}
	return name, 0
}

// describeUserErr describes the errors of this file's kinds ("" for others): a server that
// cannot be reached, a URL that is not a Petrel server's public listener, a missing invite, a
// message over the frame limit.
func describeUserErr(err error) string {
	if d := describeRecoveryErr(err); d != "" {
		return d
	}
	var fe *client.FrameTooLargeError
	if errors.As(err, &fe) {
		return fmt.Sprintf("messages are limited to %s on this server (this one is %s encrypted): send a shorter message, or split it",
			sizeText(fe.Limit), sizeText(fe.Size))
	}
	if errors.Is(err, client.ErrFrameTooLarge) {
		return "the message is larger than this server takes (its frame limit, 256 KiB by default): send a shorter message, or split it"
	}
	if errors.Is(err, client.ErrInvalidInvite) {
		return "this server needs an invite: ask its operator for one ('petrel admin invite' on the server), then register with --invite CODE"
	}
	var de *client.DialError
	if errors.As(err, &de) {
		d := describeDialErr(de)
		if strings.Contains(err.Error(), "it stays in the outbox") {
			d += "; the message stays in the outbox: the next send, recv or chat delivers it"
		}
		return d
	}
	return ""
}

// describeDialErr says why a server could not be reached, and what to check.
func describeDialErr(de *client.DialError) string {
	u := sanitize(de.URL)
	var dnsErr *net.DNSError
	var status *client.HandshakeStatusError
	switch {
	case errors.Is(de.Err, syscall.ECONNREFUSED):
		return fmt.Sprintf("nothing answers at %s (connection refused): is 'petrel serve' running at %s? Check the host and port", u, u)
	case errors.As(de.Err, &dnsErr):
		return fmt.Sprintf("cannot find host %q (%s): check the server URL %s", sanitize(dnsErr.Name), dnsText(dnsErr), u)
	case errors.As(de.Err, &status) && status.Code == http.StatusNotFound:
		return fmt.Sprintf("%s answered, but is not a Petrel server's public address (HTTP 404): check the port (the admin port is not the public one; 'petrel serve' prints 'serving on URL')", u)
	case errors.As(de.Err, &status):
		return fmt.Sprintf("%s answered HTTP %d instead of a Petrel connection: is this a Petrel server, and is a proxy in front of it passing WebSockets?", u, status.Code)
	case errors.Is(de.Err, context.DeadlineExceeded), isTimeout(de.Err):
		return fmt.Sprintf("no answer from %s in time: is 'petrel serve' running there, and can this machine reach it (firewall, network)?", u)
	case errors.Is(de.Err, syscall.ECONNRESET), errors.Is(de.Err, syscall.EHOSTUNREACH), errors.Is(de.Err, syscall.ENETUNREACH):
		return fmt.Sprintf("cannot reach %s (%s): check the network and that 'petrel serve' is running there", u, shortNetErr(de.Err))
	}
	return fmt.Sprintf("cannot connect to %s (%s): is 'petrel serve' running there?", u, shortNetErr(de.Err))
}

func isTimeout(err error) bool {
	var ne net.Error
	return errors.As(err, &ne) && ne.Timeout()
}

func dnsText(e *net.DNSError) string {
	if e.IsNotFound {
		return "no such host"
	}
	return "name lookup failed"
}

// shortNetErr is the innermost part of a network error: "connection reset by peer", not the
// whole chain of wrappers.
func shortNetErr(err error) string {
	for {
		next := errors.Unwrap(err)
		if next == nil {
			return sanitize(err.Error())
		}
		err = next
	}
}

// sizeText writes a byte count for people: "256 KiB", "1.5 MiB", "900 bytes".
func sizeText(n int) string {
	switch {
	case n >= 1<<20 && n%(1<<20) == 0:
		return fmt.Sprintf("%d MiB", n>>20)
	case n >= 1<<20:
		return fmt.Sprintf("%.1f MiB", float64(n)/(1<<20))
	case n >= 1<<10 && n%(1<<10) == 0:
		return fmt.Sprintf("%d KiB", n>>10)
	case n >= 1<<10:
		return fmt.Sprintf("%.1f KiB", float64(n)/(1<<10))
	}
	return fmt.Sprintf("%d bytes", n)
}

// outage turns the client's connection events into one line per change, in words: the first
// Disconnected of an outage prints what is wrong and that messages wait in the outbox, later
// retries print nothing, and the next Connected prints that the connection is back.
type outage struct {
	down  bool
	since time.Time
}

// line returns what to show for ev ("" for nothing).
func (o *outage) line(ev client.Event) string {
	switch ev := ev.(type) {
	case *client.Disconnected:
		if o.down {
			return ""
		}
		o.down, o.since = true, time.Now()
		why := describe(ev.Err)
		return fmt.Sprintf("[offline: %s; reconnecting by itself — what you send meanwhile waits in the outbox]", why)
	case *client.Connected:
		if !o.down {
			return ""
		}
		o.down = false
		return fmt.Sprintf("[reconnected after %v]", time.Since(o.since).Round(time.Second))
	}
	return ""
}

// isPublicListener reports whether base answers like a Petrel server's public listener: its
// WebSocket path answers a plain GET with 400 (an upgrade is required), where an admin listener
// answers 404. It sends no credentials.
func isPublicListener(ctx context.Context, base string) bool {
	ctx, cancel := context.WithTimeout(ctx, 5*time.Second)
	defer cancel()
	req, err := http.NewRequestWithContext(ctx, http.MethodGet, strings.TrimSuffix(base, "/")+petrelv1.ConnectPath, nil)
	if err != nil {
		return false
	}
	resp, err := adminHTTPClient.Do(req)
	if err != nil {
		return false
	}
	resp.Body.Close()
	return resp.StatusCode == http.StatusBadRequest || resp.StatusCode == http.StatusUpgradeRequired
}
