// Copyright 2026 The Petrel Authors
// SPDX-License-Identifier: Apache-2.0

package admin

import (
	"bytes"
	"context"
	"crypto/ecdsa"
	"crypto/elliptic"
	"crypto/rand"
	"crypto/tls"
	"crypto/x509"
	"crypto/x509/pkix"
	"errors"
	"io"
	"log/slog"
	"math/big"
	"net"
	"net/http"
	"os"
	"path/filepath"
	"strings"
	"sync/atomic"
	"testing"
	"time"

	"github.com/prometheus/client_golang/prometheus"
	"google.golang.org/protobuf/proto"

	pb "github.com/petrelchat/petrel/proto/petrel/v1"
)

const testToken = "0123456789abcdef0123456789abcdef-test"

// fakeDir is a Directory that answers at once or, with block set, once released or when its
// context ends.
type fakeDir struct {
	block   atomic.Bool
	entered chan struct{} // one value per blocked CreateInvite
	release chan struct{} // closed to release them
	bulks   atomic.Int64
}

func (d *fakeDir) CreateInvite(ctx context.Context) (string, error) {
	if d.block.Load() {
		d.entered <- struct{}{}
		select {
		case <-ctx.Done():
			return "", ctx.Err()
		case <-d.release:
		}
	}
	return "invitecode", nil
}

func (d *fakeDir) RegisterBulk(_ context.Context, devs []*pb.BulkDevice) (*pb.BulkRegisterResponse, error) {
	d.bulks.Add(1)
	res := &pb.BulkRegisterResponse{DeviceIds: make([]string, len(devs)), Errors: make([]string, len(devs))}
	for i, dev := range devs {
		res.DeviceIds[i] = dev.GetName()
	}
	return res, nil
}

// refusedCount reads petrel_admin_refused_total{reason} from reg.
func refusedCount(t *testing.T, reg *prometheus.Registry, reason string) float64 {
	t.Helper()
	mfs, err := reg.Gather()
	if err != nil {
		t.Fatal(err)
	}
	for _, mf := range mfs {
		if mf.GetName() != "petrel_admin_refused_total" {
			continue
		}
		for _, m := range mf.GetMetric() {
			for _, l := range m.GetLabel() {
				if l.GetName() == "reason" && l.GetValue() == reason {
					return m.GetCounter().GetValue()
				}
			}
		}
	}
	t.Fatalf("no petrel_admin_refused_total{reason=%q}", reason)
	return 0
}

type fixture struct {
	srv *Server
	url string
	dir *fakeDir
	reg *prometheus.Registry
}

func start(t *testing.T, edit func(*Config)) *fixture {
	t.Helper()
	reg := prometheus.NewRegistry()
	cfg := Config{
		Listen:     "127.0.0.1:0",
		Token:      testToken,
		Gatherer:   reg,
		Registerer: reg,
		AddrFile:   filepath.Join(t.TempDir(), AddrFile),
		Logger:     slog.New(slog.DiscardHandler),
	}
	if edit != nil {
		edit(&cfg)
	}
	dir := &fakeDir{entered: make(chan struct{}, 16), release: make(chan struct{})}
	s, err := New(cfg, dir)
	if err != nil {
		t.Fatal(err)
	}
	if err := s.Start(); err != nil {
		t.Fatal(err)
	}
	t.Cleanup(func() { _ = s.Shutdown(context.Background()) })
	return &fixture{srv: s, url: s.URL(), dir: dir, reg: reg}
}

func (f *fixture) do(t *testing.T, method, path, token string, body []byte) (int, string) {
	t.Helper()
	req, err := http.NewRequest(method, f.url+path, bytes.NewReader(body))
	if err != nil {
		t.Fatal(err)
	}
	if token != "" {
		req.Header.Set("Authorization", "Bearer "+token)
	}
	resp, err := http.DefaultClient.Do(req)
	if err != nil {
		t.Fatalf("%s %s: %v", method, path, err)
	}
	defer resp.Body.Close()
	b, _ := io.ReadAll(io.LimitReader(resp.Body, 1<<20))
	return resp.StatusCode, string(b)
}

func bulkBody(t *testing.T, n int, pad int) []byte {
	t.Helper()
	req := &pb.BulkRegisterRequest{}
	for i := range n {
		req.Devices = append(req.Devices, &pb.BulkDevice{Name: "dev" + string(rune('a'+i%26)), AuthKey: make([]byte, pad)})
	}
	b, err := proto.Marshal(req)
	if err != nil {
		t.Fatal(err)
	}
	return b
}

// Every operator surface needs the token; /metrics only when OpenMetrics is off.
func TestTokenRequired(t *testing.T) {
	for _, open := range []bool{false, true} {
		f := start(t, func(c *Config) { c.OpenMetrics = open })
		cases := []struct {
			method, path string
			body         []byte
		}{
			{"GET", "/debug/pprof/", nil},
			{"GET", "/debug/pprof/heap", nil},
			{"GET", "/debug/pprof/goroutine?debug=1", nil},
			{"GET", "/debug/pprof/cmdline", nil},
			{"GET", "/debug/pprof/profile?seconds=1", nil},
			{"POST", "/debug/pprof/symbol", []byte("0x1")},
			{"POST", InvitesPath, nil},
			{"POST", RegisterBulkPath, bulkBody(t, 2, 32)},
		}
		for _, tc := range cases {
			for _, tok := range []string{"", "wrong-" + testToken, strings.ToUpper(testToken)} {
				if code, _ := f.do(t, tc.method, tc.path, tok, tc.body); code != http.StatusUnauthorized {
					t.Errorf("%s %s with token %q: %d, want 401", tc.method, tc.path, tok, code)
				}
			}
			if tc.path == "/debug/pprof/profile?seconds=1" && testing.Short() {
				continue
			}
			if code, body := f.do(t, tc.method, tc.path, testToken, tc.body); code != http.StatusOK {
				t.Errorf("%s %s with the token: %d %s", tc.method, tc.path, code, body)
			}
		}
		want := http.StatusUnauthorized
		if open {
			want = http.StatusOK
		}
		if code, _ := f.do(t, "GET", MetricsPath, "", nil); code != want {
			t.Errorf("open=%v: /metrics without token: %d, want %d", open, code, want)
		}
		code, body := f.do(t, "GET", MetricsPath, testToken, nil)
		if code != http.StatusOK || !strings.Contains(body, `petrel_admin_refused_total{reason="token"}`) {
			t.Errorf("open=%v: /metrics with token: %d\n%s", open, code, body)
		}
		if f.dir.bulks.Load() != 1 {
			t.Errorf("open=%v: %d bulk registrations reached the directory, want only the one with the token", open, f.dir.bulks.Load())
		}
		if n := refusedCount(t, f.reg, "token"); n < float64(3*len(cases)) {
			t.Errorf("petrel_admin_refused_total{reason=token} = %v", n)
		}
	}
}

// Only bulk registration takes a large body; every other endpoint answers 413 past MaxBodyBytes,
// and bulk registration past BulkMaxBytes, whether the length is declared or not.
func TestBodyLimits(t *testing.T) {
	f := start(t, func(c *Config) { c.BulkMaxBytes = 1 << 20 })
	big := bulkBody(t, 20, 16<<10) // ~320 KiB: over MaxBodyBytes, under BulkMaxBytes
	if len(big) <= DefaultMaxBodyBytes {
		t.Fatalf("test body %d bytes", len(big))
	}
	if code, body := f.do(t, "POST", RegisterBulkPath, testToken, big); code != http.StatusOK {
		t.Fatalf("bulk registration of %d bytes: %d %s", len(big), code, body)
	}
	if code, _ := f.do(t, "POST", InvitesPath, testToken, big); code != http.StatusRequestEntityTooLarge {
		t.Errorf("invite with a %d-byte body: %d, want 413", len(big), code)
	}
	if code, _ := f.do(t, "POST", PprofPath+"symbol", testToken, big); code != http.StatusRequestEntityTooLarge {
		t.Errorf("pprof symbol with a %d-byte body: %d, want 413", len(big), code)
	}
	huge := bulkBody(t, 80, 16<<10) // ~1.3 MiB: over BulkMaxBytes
	if code, _ := f.do(t, "POST", RegisterBulkPath, testToken, huge); code != http.StatusRequestEntityTooLarge {
		t.Errorf("bulk registration of %d bytes: %d, want 413", len(huge), code)
	}
	// Without a declared length (chunked), the body is cut at the limit while it is read.
	req, _ := http.NewRequest("POST", f.url+RegisterBulkPath, io.MultiReader(bytes.NewReader(huge)))
	req.ContentLength = -1
	req.Header.Set("Authorization", "Bearer "+testToken)
	resp, err := http.DefaultClient.Do(req)
	if err != nil {
		t.Fatal(err)
	}
	resp.Body.Close()
	if resp.StatusCode != http.StatusRequestEntityTooLarge {
		t.Errorf("chunked bulk registration of %d bytes: %d, want 413", len(huge), resp.StatusCode)
	}
	if n := f.dir.bulks.Load(); n != 1 {
		t.Errorf("%d bulk registrations reached the directory, want 1", n)
	}
	if n := refusedCount(t, f.reg, "body_too_large"); n != 4 {
		t.Errorf("petrel_admin_refused_total{reason=body_too_large} = %v, want 4", n)
	}
	// A body is never read before the token is checked.
	if code, _ := f.do(t, "POST", RegisterBulkPath, "", huge); code != http.StatusUnauthorized {
		t.Errorf("tokenless oversized bulk registration: %d, want 401", code)
	}
}

// The address file holds the bound URL (port 0 resolved), mode 0600, and goes at Shutdown.
func TestAddrFile(t *testing.T) {
	f := start(t, nil)
	path := f.srv.cfg.AddrFile
	st, err := os.Stat(path)
	if err != nil {
		t.Fatal(err)
	}
	if st.Mode().Perm() != 0o600 {
		t.Errorf("mode %v, want 0600", st.Mode().Perm())
	}
	got, err := ReadAddrFile(path)
	if err != nil {
		t.Fatal(err)
	}
	if got != f.url || strings.HasSuffix(got, ":0") {
		t.Fatalf("admin.addr holds %q, listener is %q", got, f.url)
	}
	if entries, _ := os.ReadDir(filepath.Dir(path)); len(entries) != 1 {
		t.Errorf("temporary files left beside admin.addr: %v", entries)
	}
	if err := f.srv.Shutdown(context.Background()); err != nil {
		t.Fatal(err)
	}
	if _, err := ReadAddrFile(path); !errors.Is(err, ErrNoAddrFile) {
		t.Fatalf("after Shutdown: %v, want ErrNoAddrFile", err)
	}
	if _, err := http.Get(f.url + MetricsPath); err == nil {
		t.Error("the listener still answers after Shutdown")
	}
}

// A listen failure names the way out, and writes no address file.
func TestListenBusy(t *testing.T) {
	f := start(t, nil)
	path := filepath.Join(t.TempDir(), AddrFile)
	s, err := New(Config{Listen: f.srv.Addr().String(), Token: testToken, AddrFile: path, Logger: slog.New(slog.DiscardHandler)}, &fakeDir{})
	if err != nil {
		t.Fatal(err)
	}
	err = s.Start()
	if err == nil || !strings.Contains(err.Error(), "127.0.0.1:0") {
		t.Fatalf("Start on a busy address: %v", err)
	}
	if _, err := os.Stat(path); !errors.Is(err, os.ErrNotExist) {
		t.Fatalf("address file after a failed start: %v", err)
	}
	if err := s.Shutdown(context.Background()); err != nil {
		t.Fatal(err)
	}
}

// Shutdown is bounded: a request that would run for a minute is cancelled, and Shutdown returns
// once it has ended.
func TestShutdownBounded(t *testing.T) {
	f := start(t, nil)
	f.dir.block.Store(true)
	errc := make(chan error, 1)
	go func() {
		req, _ := http.NewRequest("POST", f.url+InvitesPath, nil)
		req.Header.Set("Authorization", "Bearer "+testToken)
		resp, err := http.DefaultClient.Do(req)
		if err == nil {
			resp.Body.Close()
		}
		errc <- err
	}()
	<-f.dir.entered
	ctx, cancel := context.WithTimeout(context.Background(), 100*time.Millisecond)
	defer cancel()
	t0 := time.Now()
	if err := f.srv.Shutdown(ctx); err != nil {
		t.Fatal(err)
	}
	if el := time.Since(t0); el > 3*time.Second {
		t.Fatalf("Shutdown took %s", el)
	}
	<-errc
	if err := f.srv.Shutdown(context.Background()); err != nil { // idempotent
		t.Fatal(err)
	}
}

// Past MaxConns, a connection waits in the accept queue instead of taking a descriptor and a
// goroutine: while one request holds the only slot, a second is not served.
func TestMaxConns(t *testing.T) {
	f := start(t, func(c *Config) { c.MaxConns = 1 })
	f.dir.block.Store(true)
	first := make(chan int, 1)
	go func() {
		req, _ := http.NewRequest("POST", f.url+InvitesPath, nil)
		req.Header.Set("Authorization", "Bearer "+testToken)
		resp, err := (&http.Client{Transport: &http.Transport{DisableKeepAlives: true}}).Do(req)
		if err != nil {
			first <- 0
			return
		}
		resp.Body.Close()
		first <- resp.StatusCode
	}()
	<-f.dir.entered
	get := func(timeout time.Duration) error {
		ctx, cancel := context.WithTimeout(context.Background(), timeout)
		defer cancel()
		tr := &http.Transport{}
		defer tr.CloseIdleConnections()
		req, _ := http.NewRequestWithContext(ctx, "GET", f.url+MetricsPath, nil)
		req.Header.Set("Authorization", "Bearer "+testToken)
		resp, err := (&http.Client{Transport: tr}).Do(req)
		if err == nil {
			resp.Body.Close()
		}
		return err
	}
	if err := get(300 * time.Millisecond); !errors.Is(err, context.DeadlineExceeded) {
		t.Fatalf("second connection while the only slot is held: %v, want a timeout", err)
	}
	close(f.dir.release)
	if code := <-first; code != http.StatusOK {
		t.Fatalf("first request: %d", code)
	}
	// The first connection closes after its answer, and frees the slot.
	if err := get(20 * time.Second); err != nil {
		t.Fatalf("request after the slot freed: %v", err)
	}
}

func TestCheckTokenTransport(t *testing.T) {
	cases := []struct {
		url string
		ok  bool
	}{
		{"http://127.0.0.1:7071", true},
		{"http://127.9.9.9:7071", true},
		{"http://localhost:7071", true},
		{"http://[::1]:7071", true},
		{"https://admin.example:7071", true},
		{"https://10.0.0.1:7071", true},
		{"http://10.0.0.1:7071", false},
		{"http://admin.example:7071", false},
		{"http://0.0.0.0:7071", false},
		{"http://[2001:db8::1]:7071", false},
		{"ftp://127.0.0.1:7071", false},
	}
	for _, tc := range cases {
		err := CheckTokenTransport(tc.url)
		if (err == nil) != tc.ok {
			t.Errorf("%s: %v", tc.url, err)
		}
		if !tc.ok && strings.HasPrefix(tc.url, "http://") && !errors.Is(err, ErrPlainToken) {
			t.Errorf("%s: %v, want ErrPlainToken", tc.url, err)
		}
	}
}

func TestNormalizeURL(t *testing.T) {
	for in, want := range map[string]string{
		"127.0.0.1:7071":          "http://127.0.0.1:7071",
		"http://127.0.0.1:7071/":  "http://127.0.0.1:7071",
		" https://a.example:1 \n": "https://a.example:1",
	} {
		if got, err := NormalizeURL(in); err != nil || got != want {
			t.Errorf("NormalizeURL(%q) = %q, %v; want %q", in, got, err, want)
		}
	}
	for _, bad := range []string{"", "ftp://x:1", "http://"} {
		if _, err := NormalizeURL(bad); err == nil {
			t.Errorf("NormalizeURL(%q) accepted", bad)
		}
	}
}

// With TLS the listener serves HTTPS only, and admin.addr says https.
func TestTLS(t *testing.T) {
	key, err := ecdsa.GenerateKey(elliptic.P256(), rand.Reader)
	if err != nil {
		t.Fatal(err)
	}
	tmpl := &x509.Certificate{
		SerialNumber: big.NewInt(1), Subject: pkix.Name{CommonName: "127.0.0.1"},
		IPAddresses: []net.IP{net.ParseIP("127.0.0.1")},
		NotBefore:   time.Now().Add(-time.Hour), NotAfter: time.Now().Add(time.Hour),
		KeyUsage: x509.KeyUsageDigitalSignature | x509.KeyUsageCertSign, ExtKeyUsage: []x509.ExtKeyUsage{x509.ExtKeyUsageServerAuth},
		IsCA: true, BasicConstraintsValid: true,
	}
	der, err := x509.CreateCertificate(rand.Reader, tmpl, tmpl, &key.PublicKey, key)
	if err != nil {
		t.Fatal(err)
	}
	leaf, _ := x509.ParseCertificate(der)
	pool := x509.NewCertPool()
	pool.AddCert(leaf)
	f := start(t, func(c *Config) {
		c.TLS = &tls.Config{Certificates: []tls.Certificate{{Certificate: [][]byte{der}, PrivateKey: key}}, MinVersion: tls.VersionTLS12}
	})
	if !strings.HasPrefix(f.url, "https://") {
		t.Fatalf("URL %s", f.url)
	}
	if got, _ := ReadAddrFile(f.srv.cfg.AddrFile); got != f.url {
		t.Fatalf("admin.addr %q, want %s", got, f.url)
	}
	hc := &http.Client{Transport: &http.Transport{TLSClientConfig: &tls.Config{RootCAs: pool}}}
	req, _ := http.NewRequest("POST", f.url+InvitesPath, nil)
	req.Header.Set("Authorization", "Bearer "+testToken)
	resp, err := hc.Do(req)
	if err != nil {
		t.Fatal(err)
	}
	resp.Body.Close()
	if resp.StatusCode != http.StatusOK || resp.TLS == nil {
		t.Fatalf("https invite: %d, tls %v", resp.StatusCode, resp.TLS != nil)
	}
	plain, _ := http.NewRequest("POST", strings.Replace(f.url, "https", "http", 1)+InvitesPath, nil)
	plain.Header.Set("Authorization", "Bearer "+testToken)
	if resp, err := http.DefaultClient.Do(plain); err == nil {
		resp.Body.Close()
		if resp.StatusCode == http.StatusOK {
			t.Fatal("plain HTTP served on the TLS admin listener")
		}
	}
}
