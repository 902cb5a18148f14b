// Copyright 2026 The Petrel Authors
// SPDX-License-Identifier: Apache-2.0

package main

import (
	"bytes"
	"context"
	"strings"
	"testing"
)

// petrel serve with an external NATS that cannot be reached fails, and names the server without
// the password or token in its URL (on stdout, stderr, or in the log).
func TestServeHidesNATSCredentials(t *testing.T) {
	for _, url := range []string{
		"nats://u:secret-pass@127.0.0.1:1",
		"nats://secret-token@127.0.0.1:1",
		"nats://u:secret-pass@127.0.0.1:bad-port",
	} {
		var out, errb bytes.Buffer
		ctx, cancel := context.WithTimeout(context.Background(), cliWait)
		e := &env{stdin: strings.NewReader(""), stdout: &out, stderr: &errb, getenv: func(string) string { return "" }}
		code := run(ctx, []string{"serve", "--listen", "127.0.0.1:0", "--data", t.TempDir(), "--log-level", "debug", "--nats", url}, e)
		cancel()
		if code != 1 {
			t.Fatalf("%s: exit code %d, want 1\nstdout:\n%s\nstderr:\n%s", url, code, out.String(), errb.String())
		}
		all := out.String() + errb.String()
		if strings.Contains(all, "secret") || !strings.Contains(all, "127.0.0.1") {
			t.Errorf("%s: output:\n%s", url, all)
		}
	}
}

// petrel serve refuses cluster flags that cannot work, before it starts anything.
func TestServeClusterFlags(t *testing.T) {
	for _, tc := range []struct {
		args []string
		want string
	}{
		{[]string{"--peers", "127.0.0.1:6223"}, "peers given without cluster_listen"},
		{[]string{"--cluster-listen", "127.0.0.1:6222", "--peers", "127.0.0.1:6223", "--replicas", "3"}, "replicas 3 exceeds the cluster's 2 node(s)"},
		{[]string{"--public-url", "chat.example:7443"}, `public_url "chat.example:7443": want http(s)://HOST[:PORT]`},
		{[]string{"--public-url", "https://chat.example/petrel"}, `public_url "https://chat.example/petrel"`},
		{[]string{"--cluster-listen", "10.0.0.1:6222", "--peers", "10.0.0.2:6222"}, "authenticate the cluster routes with cluster_token_file (--cluster-token-file"},
		{[]string{"--cluster-listen", "10.0.0.1:6222", "--peers", "10.0.0.2:6222"}, "encrypt the cluster routes with cluster_tls_cert, cluster_tls_key and cluster_tls_ca"},
		{[]string{"--cluster-listen", "127.0.0.1:6222", "--cluster-token-file", "/nonexistent/cluster.token"}, "cluster_token_file: /nonexistent/cluster.token does not exist"},
		{[]string{"--cluster-listen", "127.0.0.1:6222", "--cluster-tls-cert", "a.crt"}, "must be given together"},
	} {
		var out, errb bytes.Buffer
		e := &env{stdin: strings.NewReader(""), stdout: &out, stderr: &errb, getenv: func(string) string { return "" }}
		code := run(context.Background(), append([]string{"serve", "--listen", "127.0.0.1:0", "--data", t.TempDir()}, tc.args...), e)
		if code != 1 || !strings.Contains(errb.String(), tc.want) {
			t.Errorf("%v: exit %d, stderr:\n%s\nwant exit 1 and %q", tc.args, code, errb.String(), tc.want)
		}
	}
}
