// Copyright 2026 The Petrel Authors
// SPDX-License-Identifier: Apache-2.0

package main

import (
	"bufio"
	"bytes"
	"crypto/tls"
	"crypto/x509"
	"encoding/pem"
	"io"
	"log"
	"net"
	"net/http"
	"net/http/httptest"
	"os"
	"os/exec"
	"path/filepath"
	"regexp"
	"strconv"
	"strings"
	"sync"
	"sync/atomic"
	"testing"
	"time"

	"github.com/letsencrypt/pebble/v2/ca"
	"github.com/letsencrypt/pebble/v2/db"
	"github.com/letsencrypt/pebble/v2/va"
	"github.com/letsencrypt/pebble/v2/wfe"
	"github.com/miekg/dns"
)

// acmeTestDomain is a name under .localhost, which never leaves the machine; the test's DNS
// server answers 127.0.0.1 for it (autocert needs a name of two labels or more).
const acmeTestDomain = "petrel.localhost"

// TestServeACME runs `petrel serve --acme-domain` against a real ACME CA on loopback: Let's
// Encrypt's pebble (its CA, validation authority and web front end, in-process), whose validation
// authority really connects to the petrel listener for the TLS-ALPN-01 challenge (no "always
// valid" shortcut). A client handshake must then see a certificate for the name, issued by
// pebble's root, and a restarted server must serve it from <data>/acme without the CA.
func TestServeACME(t *testing.T) {
	acmeCA := newTestACME(t)
	data := t.TempDir()
	args := []string{"serve", "--listen", "127.0.0.1:0", "--admin-listen", "127.0.0.1:0", "--data", data,
		"--acme-domain", acmeTestDomain, "--acme-email", "ops@petrel.localhost", "--acme-directory", acmeCA.directory}
	srv := startACMEServer(t, acmeCA.env, args)
	if !strings.HasPrefix(srv.url, "https://127.0.0.1:") {
		t.Fatalf("server URL %q: want https on loopback", srv.url)
	}
	_, portStr, _ := net.SplitHostPort(strings.TrimPrefix(srv.url, "https://"))
	port, _ := strconv.Atoi(portStr)
	roots := acmeCA.start(port, 0)

	addr := strings.TrimPrefix(srv.url, "https://")
	leaf := waitACMECert(t, addr, roots, 60*time.Second)
	if len(leaf.DNSNames) != 1 || leaf.DNSNames[0] != acmeTestDomain {
		t.Fatalf("certificate names %v: want [%s]", leaf.DNSNames, acmeTestDomain)
	}
	checkHealthzOverTLS(t, addr, roots)
	if _, err := os.Stat(filepath.Join(data, "acme", acmeTestDomain)); err != nil {
		t.Fatalf("certificate not cached under the data directory: %v", err)
	}
	if !strings.Contains(srv.log(), "ACME: certificate ready") {
		t.Errorf("server log does not say the certificate is ready:\n%s", srv.log())
	}

	// A restart serves the cached certificate without asking the CA.
	srv.stop(t)
	acmeCA.front.Store(nil)
	srv2 := startACMEServer(t, acmeCA.env, args)
	leaf2 := waitACMECert(t, strings.TrimPrefix(srv2.url, "https://"), roots, 20*time.Second)
	if !bytes.Equal(leaf2.Raw, leaf.Raw) {
		t.Fatal("after a restart the server shows another certificate: want the cached one")
	}
}

// testACME is pebble in-process behind an HTTPS test server, with a DNS server that resolves
// every name to 127.0.0.1 for its validation authority.
type testACME struct {
	t         *testing.T
	front     atomic.Pointer[http.Handler]
	directory string   // the ACME directory URL
	env       []string // the server's environment: SSL_CERT_FILE trusts the test directory
	dns       string
}

func newTestACME(t *testing.T) *testACME {
	t.Helper()
	t.Setenv("PEBBLE_VA_NOSLEEP", "1")      // no pause between validation attempts
	t.Setenv("PEBBLE_WFE_NONCEREJECT", "0") // no nonces refused at random: a deterministic run
	a := &testACME{t: t, dns: startTestDNS(t)}
	// The directory's handler is set by start, once petrel's ports are known (pebble's validation
	// authority is built with the ports it connects to); until then it answers 503, and petrel
	// retries.
	ts := httptest.NewUnstartedServer(http.HandlerFunc(func(w http.ResponseWriter, r *http.Request) {
		h := a.front.Load()
		if h == nil {
			http.Error(w, "not yet", http.StatusServiceUnavailable)
			return
		}
		(*h).ServeHTTP(w, r)
	}))
	ts.StartTLS()
	t.Cleanup(ts.Close)
	caFile := filepath.Join(t.TempDir(), "acme-directory-ca.pem")
	if err := os.WriteFile(caFile, pem.EncodeToMemory(&pem.Block{Type: "CERTIFICATE", Bytes: ts.Certificate().Raw}), 0o600); err != nil {
		t.Fatal(err)
	}
	a.directory = ts.URL + wfe.DirectoryPath
	a.env = append(os.Environ(), "SSL_CERT_FILE="+caFile)
	return a
}

// start runs pebble with its validation authority connecting to tlsPort for TLS-ALPN-01 and
// httpPort for HTTP-01, and returns its root.
func (a *testACME) start(tlsPort, httpPort int) *x509.CertPool {
	logger := log.New(testLogWriter{a.t}, "pebble ", 0)
	store := db.NewMemoryStore()
	authority := ca.New(logger, store, "", "ecdsa", 0, 1, map[string]ca.Profile{"default": {Description: "default"}})
	validator := va.New(logger, httpPort, tlsPort, false, a.dns, store)
	web := wfe.New(logger, store, validator, authority, []string{"pebble.letsencrypt.org"}, false, false, 0, 0)
	h := web.Handler()
	a.front.Store(&h)
	roots := x509.NewCertPool()
	roots.AddCert(authority.GetRootCert(0).Cert)
	return roots
}

// HTTP-01 on --acme-http-listen: pebble's TLS-ALPN-01 connects to a closed port and fails, so
// the certificate comes through the plain HTTP listener; that listener sends other requests to
// https.
func TestServeACMEHTTP01(t *testing.T) {
	a := newTestACME(t)
	closedPort := deadPort(t)
	args := []string{"serve", "--listen", "127.0.0.1:0", "--admin-listen", "127.0.0.1:0", "--data", t.TempDir(),
		"--acme-domain", acmeTestDomain, "--acme-directory", a.directory, "--acme-http-listen", "127.0.0.1:0"}
	srv := startACMEServer(t, a.env, args)
	var httpAddr string
	deadline := time.Now().Add(10 * time.Second)
	re := regexp.MustCompile(`msg="ACME HTTP-01 listener" component=acme addr=(\S+)`)
	for httpAddr == "" && time.Now().Before(deadline) {
		if m := re.FindStringSubmatch(srv.log()); m != nil {
			httpAddr = m[1]
		} else {
			time.Sleep(50 * time.Millisecond) // the log of another process: no event to await
		}
	}
	if httpAddr == "" {
		t.Fatalf("no ACME HTTP-01 listener in the log:\n%s", srv.log())
	}
	_, hp, _ := net.SplitHostPort(httpAddr)
	httpPort, _ := strconv.Atoi(hp)
	roots := a.start(closedPort, httpPort)

	leaf := waitACMECert(t, strings.TrimPrefix(srv.url, "https://"), roots, 60*time.Second)
	if len(leaf.DNSNames) != 1 || leaf.DNSNames[0] != acmeTestDomain {
		t.Fatalf("certificate names %v: want [%s]", leaf.DNSNames, acmeTestDomain)
	}

	cl := &http.Client{Timeout: 5 * time.Second, CheckRedirect: func(*http.Request, []*http.Request) error { return http.ErrUseLastResponse }}
	req, _ := http.NewRequest(http.MethodGet, "http://"+httpAddr+"/healthz", nil)
	req.Host = acmeTestDomain
	resp, err := cl.Do(req)
	if err != nil {
		t.Fatal(err)
	}
	resp.Body.Close()
	if loc := resp.Header.Get("Location"); resp.StatusCode != http.StatusFound || loc != "https://"+acmeTestDomain+"/healthz" {
		t.Fatalf("plain HTTP request: %s, Location %q: want a redirect to https", resp.Status, loc)
	}
}

// waitACMECert handshakes with addr as acmeTestDomain, verifying against roots, until it
// succeeds (the first certificate is being issued meanwhile) or within is over.
func waitACMECert(t *testing.T, addr string, roots *x509.CertPool, within time.Duration) *x509.Certificate {
	t.Helper()
	deadline := time.Now().Add(within)
	var lastErr error
	for time.Now().Before(deadline) {
		d := &net.Dialer{Timeout: 5 * time.Second}
		c, err := tls.DialWithDialer(d, "tcp", addr, &tls.Config{ServerName: acmeTestDomain, RootCAs: roots, MinVersion: tls.VersionTLS12})
		if err == nil {
			st := c.ConnectionState()
			c.Close()
			if st.Version != tls.VersionTLS13 || st.CurveID != tls.X25519MLKEM768 {
				t.Fatalf("handshake: version %x, key exchange %v: want TLS 1.3 with X25519MLKEM768", st.Version, st.CurveID)
			}
			return st.PeerCertificates[0]
		}
		lastErr = err
		time.Sleep(200 * time.Millisecond) // polling a process from outside: no event to await
	}
	t.Fatalf("no verified TLS handshake with %s as %s within %s: %v", addr, acmeTestDomain, within, lastErr)
	return nil
}

// checkHealthzOverTLS asks /healthz over a verified TLS connection.
func checkHealthzOverTLS(t *testing.T, addr string, roots *x509.CertPool) {
	t.Helper()
	cl := &http.Client{Timeout: 10 * time.Second, Transport: &http.Transport{
		TLSClientConfig: &tls.Config{ServerName: acmeTestDomain, RootCAs: roots},
	}}
	resp, err := cl.Get("https://" + addr + "/healthz")
	if err != nil {
		t.Fatal(err)
	}
	defer resp.Body.Close()
	body, _ := io.ReadAll(resp.Body)
	if resp.StatusCode != http.StatusOK {
		t.Fatalf("/healthz over ACME TLS: %s %s", resp.Status, body)
	}
}

// startTestDNS serves DNS over TCP (what pebble's validation authority asks a custom resolver
// with) on a random loopback port, answering 127.0.0.1 for every A
// question and nothing for others: pebble's validation authority resolves the domain with it.
func startTestDNS(t *testing.T) string {
	t.Helper()
	ln, err := net.Listen("tcp", "127.0.0.1:0")
	if err != nil {
		t.Fatal(err)
	}
	srv := &dns.Server{Listener: ln, Handler: dns.HandlerFunc(func(w dns.ResponseWriter, r *dns.Msg) {
		m := new(dns.Msg)
		m.SetReply(r)
		for _, q := range r.Question {
			if q.Qtype == dns.TypeA {
				m.Answer = append(m.Answer, &dns.A{Hdr: dns.RR_Header{Name: q.Name, Rrtype: dns.TypeA, Class: dns.ClassINET, Ttl: 60}, A: net.IPv4(127, 0, 0, 1)})
			}
		}
		_ = w.WriteMsg(m)
	})}
	started := make(chan struct{})
	srv.NotifyStartedFunc = func() { close(started) }
	done := make(chan struct{})
	go func() { defer close(done); _ = srv.ActivateAndServe() }()
	<-started
	t.Cleanup(func() { _ = srv.Shutdown(); <-done })
	return ln.Addr().String()
}

// acmeServer is a `petrel serve` process with its output kept for the test's messages.
type acmeServer struct {
	cmd  *exec.Cmd
	url  string
	mu   sync.Mutex
	out  bytes.Buffer // stderr (the log)
	done chan struct{}
}

func (s *acmeServer) log() string {
	s.mu.Lock()
	defer s.mu.Unlock()
	return s.out.String()
}

func (s *acmeServer) Write(b []byte) (int, error) {
	s.mu.Lock()
	defer s.mu.Unlock()
	return s.out.Write(b)
}

// stop ends the server with SIGTERM (a graceful drain) and waits for it.
func (s *acmeServer) stop(t *testing.T) {
	t.Helper()
	_ = s.cmd.Process.Signal(os.Interrupt)
	select {
	case <-s.done:
	case <-time.After(30 * time.Second):
		_ = s.cmd.Process.Kill()
		<-s.done
		t.Fatalf("server did not stop within 30s:\n%s", s.log())
	}
}

var servingRE = regexp.MustCompile(`serving on (\S+)`)

// startACMEServer runs petrel with args and env and waits for its "serving on" line.
func startACMEServer(t *testing.T, env, args []string) *acmeServer {
	t.Helper()
	s := &acmeServer{done: make(chan struct{})}
	s.cmd = exec.Command(petrelBin, args...)
	s.cmd.Env = env
	s.cmd.Stderr = s
	stdout, err := s.cmd.StdoutPipe()
	if err != nil {
		t.Fatal(err)
	}
	if err := s.cmd.Start(); err != nil {
		t.Fatal(err)
	}
	urls := make(chan string, 1)
	go func() {
		sc := bufio.NewScanner(stdout)
		for sc.Scan() {
			if m := servingRE.FindStringSubmatch(sc.Text()); m != nil {
				select {
				case urls <- m[1]:
				default:
				}
			}
		}
		_ = s.cmd.Wait()
		close(s.done)
	}()
	t.Cleanup(func() {
		select {
		case <-s.done:
		default:
			_ = s.cmd.Process.Kill()
			<-s.done
		}
		if t.Failed() {
			t.Logf("server log:\n%s", s.log())
		}
	})
	select {
	case s.url = <-urls:
	case <-s.done:
		t.Fatalf("server exited before serving:\n%s", s.log())
	case <-time.After(60 * time.Second):
		t.Fatalf("server not serving within 60s:\n%s", s.log())
	}
	return s
}

// testLogWriter sends pebble's log to the test's.
type testLogWriter struct{ t *testing.T }

func (w testLogWriter) Write(b []byte) (int, error) {
	w.t.Log(strings.TrimRight(string(b), "\n"))
	return len(b), nil
}
