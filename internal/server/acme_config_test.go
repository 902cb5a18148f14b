// Copyright 2026 The Petrel Authors
// SPDX-License-Identifier: Apache-2.0

package server_test

import (
	"os"
	"path/filepath"
	"strings"
	"testing"

	"github.com/petrelchat/petrel/internal/server"
)

// The [tls] acme_* keys load from the file, default to Let's Encrypt, count as TLS for a public
// listen address, and are refused with the cause in words when wrong.
func TestACMEConfig(t *testing.T) {
	path := filepath.Join(t.TempDir(), "petrel.toml")
	file := `listen = "0.0.0.0:443"
[tls]
acme_domain = ["chat.example.org", "chat2.example.org"]
acme_email = "ops@example.org"
acme_http_listen = ":80"
`
	if err := os.WriteFile(path, []byte(file), 0o600); err != nil {
		t.Fatal(err)
	}
	c, err := server.LoadConfig(path)
	if err != nil {
		t.Fatal(err)
	}
	c.SetDefaults()
	if err := c.Validate(); err != nil {
		t.Fatalf("valid ACME config on a public address refused: %v", err)
	}
	if len(c.ACMEDomain) != 2 || c.ACMEEmail != "ops@example.org" || c.ACMEHTTPListen != ":80" {
		t.Fatalf("loaded %+v", c.TLSSection)
	}
	if c.ACMEDirectory != "https://acme-v02.api.letsencrypt.org/directory" {
		t.Fatalf("default acme_directory %q: want Let's Encrypt's", c.ACMEDirectory)
	}

	for _, tc := range []struct {
		name string
		tls  server.TLSSection
		want string
	}{
		{"with cert files", server.TLSSection{ACMEDomain: []string{"chat.example.org"}, TLSCert: "c.pem", TLSKey: "k.pem"}, "give one"},
		{"one label", server.TLSSection{ACMEDomain: []string{"localhost"}}, "at least two labels"},
		{"upper case", server.TLSSection{ACMEDomain: []string{"Chat.example.org"}}, "lower case"},
		{"wildcard", server.TLSSection{ACMEDomain: []string{"*.example.org"}}, "DNS-01"},
		{"IP address", server.TLSSection{ACMEDomain: []string{"192.0.2.1"}}, "IP address"},
		{"bad label", server.TLSSection{ACMEDomain: []string{"-chat.example.org"}}, `label "-chat"`},
		{"twice", server.TLSSection{ACMEDomain: []string{"a.example.org", "a.example.org"}}, "listed twice"},
		{"bad email", server.TLSSection{ACMEDomain: []string{"a.example.org"}, ACMEEmail: "ops"}, "tls.acme_email"},
		{"http directory", server.TLSSection{ACMEDomain: []string{"a.example.org"}, ACMEDirectory: "http://ca.example/dir"}, "https:// directory URL"},
		{"bad http listen", server.TLSSection{ACMEDomain: []string{"a.example.org"}, ACMEHTTPListen: "80"}, "tls.acme_http_listen"},
		{"email alone", server.TLSSection{ACMEEmail: "ops@example.org"}, "need tls.acme_domain"},
	} {
		t.Run(tc.name, func(t *testing.T) {
			c := server.Config{TLSSection: tc.tls}
			c.SetDefaults()
			err := c.Validate()
			if err == nil || !strings.Contains(err.Error(), tc.want) {
				t.Fatalf("Validate() = %v: want an error with %q", err, tc.want)
			}
		})
	}
}
