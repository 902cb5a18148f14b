// Copyright 2026 The Petrel Authors
// SPDX-License-Identifier: Apache-2.0

package bus

import "strings"

// redacted replaces credentials in printed NATS URLs.
const redacted = "xxxxx"

// RedactURL returns u with its credentials replaced, for errors, logs and startup lines:
// nats://user:pass@host becomes nats://user:xxxxx@host, and nats://token@host (a user part
// without a password is a token to NATS) becomes nats://xxxxx@host. A URL without credentials is
// returned as is. It does not need u to parse: a malformed URL is redacted too (everything before
// the last '@' of the authority is user information).
func RedactURL(u string) string {
	prefix, rest := "", u
	if i := strings.Index(u, "://"); i >= 0 {
		prefix, rest = u[:i+3], u[i+3:]
	}
	// The last '@' anywhere: a password with an unescaped '/' or '?' must not end the user
	// information early (NATS URLs have no '@' in their paths).
	at := strings.LastIndex(rest, "@")
	if at < 0 {
		return u
	}
	user := rest[:at]
	if i := strings.Index(user, ":"); i >= 0 {
		user = user[:i] + ":" + redacted
	} else {
		user = redacted
	}
	return prefix + user + rest[at:]
}

// RedactURLs is RedactURL for each of urls.
func RedactURLs(urls []string) []string {
	out := make([]string, len(urls))
	for i, u := range urls {
		out[i] = RedactURL(u)
	}
	return out
}

// redactSecrets removes the credentials of urls from s (an error text from the NATS client or
// from URL parsing, which may quote a URL whole).
func redactSecrets(s string, urls []string) string {
	for _, u := range urls {
		s = strings.ReplaceAll(s, u, RedactURL(u))
		rest := u
		if i := strings.Index(u, "://"); i >= 0 {
			rest = u[i+3:]
		}
		at := strings.LastIndex(rest, "@")
		if at <= 0 {
			continue
		}
		user := rest[:at]
		if i := strings.Index(user, ":"); i >= 0 {
			if pass := user[i+1:]; pass != "" {
				s = strings.ReplaceAll(s, pass, redacted)
			}
			continue
		}
		s = strings.ReplaceAll(s, user, redacted) // a token
	}
	return s
}

// credentialError is an error whose text has had NATS credentials removed; Unwrap still gives
// the original (for errors.Is), so never print what Unwrap returns.
type credentialError struct {
	msg string
	err error
}

func (e *credentialError) Error() string { return e.msg }
func (e *credentialError) Unwrap() error { return e.err }
