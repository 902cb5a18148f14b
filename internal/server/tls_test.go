// Copyright 2026 The Petrel Authors
// SPDX-License-Identifier: Apache-2.0

package server_test

import (
	"bytes"
	"context"
	"crypto/tls"
	"os"
	"os/exec"
	"path/filepath"
	"slices"
	"strings"
	"testing"
	"time"

	"github.com/petrelchat/petrel/internal/testserver"
)

// TestTLSPolicyOpenSSL handshakes with openssl s_client: TLS 1.3 and TLS 1.2 with ECDHE and an
// AEAD work; 3DES, static RSA key exchange, CBC suites, TLS 1.1 and TLS 1.0 are refused by the
// server. The client is made to offer the weak options (no system openssl.cnf, security level 0),
// so a refusal is the server's.
func TestTLSPolicyOpenSSL(t *testing.T) {
	openssl, err := exec.LookPath("openssl")
	if err != nil {
		t.Skip("openssl not found (Debian package openssl): the TLS policy is not checked against it")
	}
	// An empty configuration: Debian's openssl.cnf raises the client's minimum to TLS 1.2 and its
	// security level to 2, which would refuse the weak options on the client side.
	conf := filepath.Join(t.TempDir(), "openssl.cnf")
	if err := os.WriteFile(conf, nil, 0o600); err != nil {
		t.Fatal(err)
	}
	rsaSrv := testserver.Start(t, testserver.WithTLS(testserver.SelfSigned(t, testserver.RSA)))
	ecSrv := testserver.Start(t, testserver.WithTLS(testserver.SelfSigned(t, testserver.ECDSA)))
	rsaAddr := rsaSrv.Server().Addr().String()
	ecAddr := ecSrv.Server().Addr().String()

	cases := []struct {
		name       string
		addr       string
		args       []string
		ok         bool
		wantProto  string
		wantCipher string
	}{
		{"TLS 1.3", rsaAddr, []string{"-tls1_3"}, true, "TLSv1.3", "TLS_AES_128_GCM_SHA256"},
		{"TLS 1.3 ChaCha20", ecAddr, []string{"-tls1_3", "-ciphersuites", "TLS_CHACHA20_POLY1305_SHA256"}, true, "TLSv1.3", "TLS_CHACHA20_POLY1305_SHA256"},
		{"TLS 1.2 ECDHE-RSA-AES128-GCM", rsaAddr, []string{"-tls1_2", "-cipher", "ECDHE-RSA-AES128-GCM-SHA256"}, true, "TLSv1.2", "ECDHE-RSA-AES128-GCM-SHA256"},
		{"TLS 1.2 ECDHE-RSA-AES256-GCM", rsaAddr, []string{"-tls1_2", "-cipher", "ECDHE-RSA-AES256-GCM-SHA384"}, true, "TLSv1.2", "ECDHE-RSA-AES256-GCM-SHA384"},
		{"TLS 1.2 ECDHE-RSA-CHACHA20", rsaAddr, []string{"-tls1_2", "-cipher", "ECDHE-RSA-CHACHA20-POLY1305"}, true, "TLSv1.2", "ECDHE-RSA-CHACHA20-POLY1305"},
		{"TLS 1.2 ECDHE-ECDSA-AES128-GCM", ecAddr, []string{"-tls1_2", "-cipher", "ECDHE-ECDSA-AES128-GCM-SHA256"}, true, "TLSv1.2", "ECDHE-ECDSA-AES128-GCM-SHA256"},
		{"TLS 1.2 ECDHE-ECDSA-AES256-GCM", ecAddr, []string{"-tls1_2", "-cipher", "ECDHE-ECDSA-AES256-GCM-SHA384"}, true, "TLSv1.2", "ECDHE-ECDSA-AES256-GCM-SHA384"},
		// Refused: SWEET32 (3DES), no forward secrecy (static RSA), CBC (Lucky13 and kin), old versions.
		{"3DES static RSA", rsaAddr, []string{"-tls1_2", "-cipher", "DES-CBC3-SHA:@SECLEVEL=0"}, false, "", ""},
		{"3DES ECDHE", rsaAddr, []string{"-tls1_2", "-cipher", "ECDHE-RSA-DES-CBC3-SHA:@SECLEVEL=0"}, false, "", ""},
		{"static RSA AES128-SHA", rsaAddr, []string{"-tls1_2", "-cipher", "AES128-SHA:@SECLEVEL=0"}, false, "", ""},
		{"static RSA AES128-GCM", rsaAddr, []string{"-tls1_2", "-cipher", "AES128-GCM-SHA256:@SECLEVEL=0"}, false, "", ""},
		{"static RSA AES256-GCM", rsaAddr, []string{"-tls1_2", "-cipher", "AES256-GCM-SHA384:@SECLEVEL=0"}, false, "", ""},
		{"ECDHE-RSA CBC", rsaAddr, []string{"-tls1_2", "-cipher", "ECDHE-RSA-AES128-SHA:ECDHE-RSA-AES256-SHA384:@SECLEVEL=0"}, false, "", ""},
		{"ECDHE-ECDSA CBC", ecAddr, []string{"-tls1_2", "-cipher", "ECDHE-ECDSA-AES128-SHA:ECDHE-ECDSA-AES128-SHA256:@SECLEVEL=0"}, false, "", ""},
		{"TLS 1.1", rsaAddr, []string{"-tls1_1", "-cipher", "ALL:@SECLEVEL=0"}, false, "", ""},
		{"TLS 1.0", rsaAddr, []string{"-tls1", "-cipher", "ALL:@SECLEVEL=0"}, false, "", ""},
	}
	for _, tc := range cases {
		t.Run(tc.name, func(t *testing.T) {
			ctx, cancel := context.WithTimeout(context.Background(), 15*time.Second)
			defer cancel()
			if i := slices.Index(tc.args, "-cipher"); i >= 0 && !tc.ok {
				// Debian builds OpenSSL without the weak suites (3DES, RC4): a client that cannot
				// offer one proves nothing. TestTLSWeakSuitesRefused offers them with Go's client.
				chk := exec.CommandContext(ctx, openssl, "ciphers", tc.args[i+1])
				chk.Env = append(os.Environ(), "OPENSSL_CONF="+conf)
				if out, err := chk.CombinedOutput(); err != nil {
					t.Skipf("this openssl cannot offer %s: %s", tc.args[i+1], bytes.TrimSpace(out))
				}
			}
			args := append([]string{"s_client", "-connect", tc.addr, "-brief", "-no_ign_eof"}, tc.args...)
			cmd := exec.CommandContext(ctx, openssl, args...)
			cmd.Env = append(os.Environ(), "OPENSSL_CONF="+conf)
			cmd.Stdin = strings.NewReader("")
			var out bytes.Buffer
			cmd.Stdout, cmd.Stderr = &out, &out
			err := cmd.Run()
			if ctx.Err() != nil {
				t.Fatalf("openssl %s: timed out\n%s", strings.Join(args, " "), out.String())
			}
			established := strings.Contains(out.String(), "CONNECTION ESTABLISHED")
			if !tc.ok {
				if err == nil || established {
					t.Fatalf("openssl %s: the server accepted it\n%s", strings.Join(args, " "), out.String())
				}
				return
			}
			if err != nil || !established {
				t.Fatalf("openssl %s: %v\n%s", strings.Join(args, " "), err, out.String())
			}
			if !strings.Contains(out.String(), "Protocol version: "+tc.wantProto) ||
				!strings.Contains(out.String(), "Ciphersuite: "+tc.wantCipher) {
				t.Fatalf("openssl %s: want %s %s\n%s", strings.Join(args, " "), tc.wantProto, tc.wantCipher, out.String())
			}
		})
	}
}

// TestTLSPostQuantumKeyExchange: a Go client (which offers X25519MLKEM768 first) negotiates TLS 1.3
// with the hybrid post-quantum key exchange; clients without it fall back to X25519 or P-256; a
// client offering only static RSA key exchange or only CBC suites is refused.
func TestTLSPostQuantumKeyExchange(t *testing.T) {
	cert := testserver.SelfSigned(t, testserver.RSA)
	s := testserver.Start(t, testserver.WithTLS(cert))
	addr := s.Server().Addr().String()
	dial := func(cfg *tls.Config) (tls.ConnectionState, error) {
		cfg.RootCAs = cert.Pool
		d := &tls.Dialer{Config: cfg}
		ctx, cancel := context.WithTimeout(context.Background(), 10*time.Second)
		defer cancel()
		c, err := d.DialContext(ctx, "tcp", addr)
		if err != nil {
			return tls.ConnectionState{}, err
		}
		defer c.Close()
		return c.(*tls.Conn).ConnectionState(), nil
	}
	st, err := dial(&tls.Config{})
	if err != nil {
		t.Fatal(err)
	}
	if st.Version != tls.VersionTLS13 || st.CurveID != tls.X25519MLKEM768 {
		t.Fatalf("default Go client: version %x, key exchange %v; want TLS 1.3 with X25519MLKEM768", st.Version, st.CurveID)
	}
	if st.NegotiatedProtocol != "http/1.1" && st.NegotiatedProtocol != "" {
		t.Fatalf("ALPN %q", st.NegotiatedProtocol)
	}
	for _, c := range []struct {
		cfg  *tls.Config
		want tls.CurveID
	}{
		{&tls.Config{CurvePreferences: []tls.CurveID{tls.X25519}}, tls.X25519},
		{&tls.Config{CurvePreferences: []tls.CurveID{tls.CurveP256}}, tls.CurveP256},
		{&tls.Config{MaxVersion: tls.VersionTLS12}, tls.X25519},
	} {
		st, err := dial(c.cfg)
		if err != nil {
			t.Fatalf("%v: %v", c.cfg.CurvePreferences, err)
		}
		if st.CurveID != c.want {
			t.Fatalf("curves %v, max version %x: negotiated %v, want %v", c.cfg.CurvePreferences, c.cfg.MaxVersion, st.CurveID, c.want)
		}
	}
}

// TestTLSWeakSuitesRefused offers each weak TLS 1.2 suite alone with Go's client (which, unlike
// Debian's openssl, still implements 3DES and RC4), and the old protocol versions: all refused.
func TestTLSWeakSuitesRefused(t *testing.T) {
	cert := testserver.SelfSigned(t, testserver.RSA)
	s := testserver.Start(t, testserver.WithTLS(cert))
	addr := s.Server().Addr().String()
	handshake := func(cfg *tls.Config) error {
		cfg.RootCAs = cert.Pool
		d := &tls.Dialer{Config: cfg}
		ctx, cancel := context.WithTimeout(context.Background(), 10*time.Second)
		defer cancel()
		c, err := d.DialContext(ctx, "tcp", addr)
		if err == nil {
			c.Close()
		}
		return err
	}
	//nolint:gosec // weak suites and versions, offered to see them refused
	for _, suite := range []uint16{
		tls.TLS_RSA_WITH_3DES_EDE_CBC_SHA,
		tls.TLS_ECDHE_RSA_WITH_3DES_EDE_CBC_SHA,
		tls.TLS_RSA_WITH_RC4_128_SHA,
		tls.TLS_ECDHE_RSA_WITH_RC4_128_SHA,
		tls.TLS_RSA_WITH_AES_128_CBC_SHA,
		tls.TLS_RSA_WITH_AES_256_CBC_SHA,
		tls.TLS_RSA_WITH_AES_128_CBC_SHA256,
		tls.TLS_RSA_WITH_AES_128_GCM_SHA256,
		tls.TLS_RSA_WITH_AES_256_GCM_SHA384,
		tls.TLS_ECDHE_RSA_WITH_AES_128_CBC_SHA,
		tls.TLS_ECDHE_RSA_WITH_AES_256_CBC_SHA,
		tls.TLS_ECDHE_RSA_WITH_AES_128_CBC_SHA256,
	} {
		if err := handshake(&tls.Config{MaxVersion: tls.VersionTLS12, CipherSuites: []uint16{suite}}); err == nil {
			t.Errorf("%s accepted", tls.CipherSuiteName(suite))
		}
	}
	for _, v := range []uint16{tls.VersionTLS10, tls.VersionTLS11} {
		if err := handshake(&tls.Config{MinVersion: v, MaxVersion: v}); err == nil {
			t.Errorf("%s accepted", tls.VersionName(v))
		}
	}
	// Control: the same client with a good suite gets through.
	if err := handshake(&tls.Config{MaxVersion: tls.VersionTLS12, CipherSuites: []uint16{tls.TLS_ECDHE_RSA_WITH_AES_128_GCM_SHA256}}); err != nil {
		t.Fatalf("ECDHE-RSA-AES128-GCM refused: %v", err)
	}
}

// TestTLSWebSocket: a device registers, authenticates and relays a message to another over wss.
func TestTLSWebSocket(t *testing.T) {
	cert := testserver.SelfSigned(t, testserver.ECDSA)
	s := testserver.Start(t, testserver.WithTLS(cert))
	alice := testserver.DialTLS(t, s.URL(), cert.Pool)
	alice.MustRegister("alice")
	bob := testserver.DialTLS(t, s.URL(), cert.Pool)
	bob.MustRegister("bob")
	body := bytes.Repeat([]byte("x"), 100_000) // several TLS records in each direction
	r := alice.Send("m1", "bob", []string{bob.DeviceID}, body)
	if r.GetSendResult() == nil {
		t.Fatalf("send: %v", r)
	}
	for range 3 {
		p := bob.NextPush()
		if p.GetQueueEmpty() != nil {
			continue
		}
		if env := p.GetDeliver().GetEnvelope(); env == nil || !bytes.Equal(env.GetCiphertext(), body) {
			t.Fatalf("bob got %v", p)
		}
		return
	}
	t.Fatal("no delivery")
}
