// Copyright 2026 The Petrel Authors
// SPDX-License-Identifier: Apache-2.0

package bus

import (
	"context"
	"strings"
	"testing"
	"time"
)

func TestRedactURL(t *testing.T) {
	for _, c := range []struct{ in, want string }{
		{"nats://127.0.0.1:4222", "nats://127.0.0.1:4222"},
		{"nats://user:secret@127.0.0.1:4222", "nats://user:xxxxx@127.0.0.1:4222"},
		{"nats://s3cr3t-token@host:4222", "nats://xxxxx@host:4222"},
		{"tls://user:p%40ss@host", "tls://user:xxxxx@host"},
		{"nats://user:pa/ss@host:4222", "nats://user:xxxxx@host:4222"},  // unescaped '/' in the password
		{"nats://user:p@ss@host:4222", "nats://user:xxxxx@host:4222"},   // unescaped '@' in the password
		{"user:secret@host:4222", "user:xxxxx@host:4222"},               // no scheme
		{"nats://user:@host", "nats://user:xxxxx@host"},                 // empty password
		{"nats://host:4222/path?x=1", "nats://host:4222/path?x=1"},      // nothing to hide
		{"ws://user:secret@host:443/ws", "ws://user:xxxxx@host:443/ws"}, // websocket form
		{"", ""},
	} {
		if got := RedactURL(c.in); got != c.want {
			t.Errorf("RedactURL(%q) = %q, want %q", c.in, got, c.want)
		}
	}
}

// A failed connection to an external NATS names the servers without their credentials, whether
// the NATS client fails to dial or fails to parse the URL (url.Error quotes the URL whole).
func TestConnectErrorHidesCredentials(t *testing.T) {
	for _, urls := range [][]string{
		{"nats://u:secret-pass@127.0.0.1:1"},
		{"nats://secret-token@127.0.0.1:1", "nats://u:secret-pass@127.0.0.1:2"},
		{"nats://u:secret-pass@127.0.0.1:bad-port"},
	} {
		ctx, cancel := context.WithTimeout(context.Background(), 10*time.Second)
		b, err := Open(ctx, Config{URLs: urls})
		cancel()
		if err == nil {
			b.Close()
			t.Fatalf("%v: connected", urls)
		}
		if strings.Contains(err.Error(), "secret") || !strings.Contains(err.Error(), "127.0.0.1") {
			t.Errorf("%v: error %q", urls, err)
		}
	}
}
