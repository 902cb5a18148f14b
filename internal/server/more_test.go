// Copyright 2026 The Petrel Authors
// SPDX-License-Identifier: Apache-2.0

package server_test

import (
	"crypto/ecdsa"
	"crypto/elliptic"
	"crypto/rand"
	"crypto/tls"
	"crypto/x509"
	"crypto/x509/pkix"
	"encoding/pem"
	"fmt"
	"math/big"
	"net"
	"net/http"
	"os"
	"path/filepath"
	"runtime"
	"strings"
	"sync"
	"sync/atomic"
	"testing"
	"time"

	"github.com/petrelchat/petrel/internal/gateway"
	"github.com/petrelchat/petrel/internal/server"
	"github.com/petrelchat/petrel/internal/testserver"
	pb "github.com/petrelchat/petrel/proto/petrel/v1"
)

// The drain pushes at most a window of unacked envelopes (delivery_window); acks open the window
// again.
func TestDeliveryWindowIsBounded(t *testing.T) {
	const n, window = 150, 100 // after the first window is acked, the rest fits in one
	s := testserver.Start(t, testserver.WithConfig(func(c *server.Config) { c.DeliveryWindow = window }))
	alice, bobKey, bobDev := offlinePair(t, s)
	pipelineSends(t, alice, "bob", bobDev, "w%d", n, nil)
	bob := testserver.Dial(t, s.URL())
	bob.Auth(bobKey)
	var tags []uint64
	for len(tags) < window {
		d := mustDeliver(t, bob)
		tags = append(tags, d.GetTag())
	}
	// A ping round trip: anything pushed before the pong would be a window overrun. The drain has
	// had the whole time the first deliveries took to overrun, so this is a real check.
	if p := bob.Request(&pb.Frame{Body: &pb.Frame_Ping{Ping: &pb.Ping{}}}); p.GetPong() == nil {
		t.Fatal(p)
	}
	for _, f := range bob.Pushes {
		if f.GetDeliver() != nil {
			t.Fatalf("more than %d unacked deliveries pushed", window)
		}
	}
	bob.Pushes = nil
	bob.Write(&pb.Frame{Body: &pb.Frame_DeliverAck{DeliverAck: &pb.DeliverAck{Tags: tags}}})
	rest := 0
	for {
		f := bob.NextPush()
		if f.GetDeliver() != nil {
			rest++
			continue
		}
		if qe := f.GetQueueEmpty(); qe != nil {
			if rest != n-window || qe.GetDelivered() != n {
				t.Fatalf("after the acks: %d more deliveries, QueueEmpty %v", rest, qe)
			}
			return
		}
	}
}

func TestTLS(t *testing.T) {
	dir := t.TempDir()
	certFile, keyFile, pool := selfSigned(t, dir)
	s := testserver.Start(t, testserver.WithConfig(func(c *server.Config) {
		c.TLSCert, c.TLSKey = certFile, keyFile
	}))
	if !strings.HasPrefix(s.URL(), "https://") {
		t.Fatalf("URL %s", s.URL())
	}
	hc := &http.Client{Transport: &http.Transport{TLSClientConfig: &tls.Config{RootCAs: pool}}, Timeout: 10 * time.Second}
	resp, err := hc.Get(s.URL() + "/healthz")
	if err != nil {
		t.Fatal(err)
	}
	resp.Body.Close()
	if resp.StatusCode != 200 || resp.TLS == nil {
		t.Fatalf("status %d, tls %v", resp.StatusCode, resp.TLS != nil)
	}
	// Plain HTTP on the TLS port fails.
	if _, err := http.Get(strings.Replace(s.URL(), "https", "http", 1) + "/healthz"); err == nil {
		t.Fatal("plain HTTP accepted on the TLS listener")
	}
}

func selfSigned(t *testing.T, dir string) (certFile, keyFile string, pool *x509.CertPool) {
	t.Helper()
	key, err := ecdsa.GenerateKey(elliptic.P256(), rand.Reader)
	if err != nil {
		t.Fatal(err)
	}
	tmpl := &x509.Certificate{
		SerialNumber: big.NewInt(1),
		Subject:      pkix.Name{CommonName: "127.0.0.1"},
		IPAddresses:  []net.IP{net.ParseIP("127.0.0.1")},
		NotBefore:    time.Now().Add(-time.Hour),
		NotAfter:     time.Now().Add(time.Hour),
		KeyUsage:     x509.KeyUsageDigitalSignature | x509.KeyUsageCertSign,
		ExtKeyUsage:  []x509.ExtKeyUsage{x509.ExtKeyUsageServerAuth},
		IsCA:         true, BasicConstraintsValid: true,
	}
	der, err := x509.CreateCertificate(rand.Reader, tmpl, tmpl, &key.PublicKey, key)
	if err != nil {
		t.Fatal(err)
	}
	kb, _ := x509.MarshalECPrivateKey(key)
	certFile, keyFile = filepath.Join(dir, "cert.pem"), filepath.Join(dir, "key.pem")
	os.WriteFile(certFile, pem.EncodeToMemory(&pem.Block{Type: "CERTIFICATE", Bytes: der}), 0o600)
	os.WriteFile(keyFile, pem.EncodeToMemory(&pem.Block{Type: "EC PRIVATE KEY", Bytes: kb}), 0o600)
	cert, _ := x509.ParseCertificate(der)
	pool = x509.NewCertPool()
	pool.AddCert(cert)
	return certFile, keyFile, pool
}

func TestConfigValidateReportsEveryProblem(t *testing.T) {
	c := server.Config{Listen: "0.0.0.0:7070", Registration: "sometimes", LogLevel: "loud"}
	c.MaxFrameBytes, c.InboxShards, c.DeviceCacheSize, c.DeliveryWindow = 10, 999, -1, -1
	c.SetDefaults()
	c.HandshakeTimeout.Duration = time.Millisecond
	c.DrainRate = -1
	err := c.Validate()
	if err == nil {
		t.Fatal("invalid config accepted")
	}
	for _, want := range []string{"not a loopback address", "registration", "limits.max_frame_bytes", "inbox.shards", "log_level", "cache.devices", "limits.handshake_timeout", "inbox.delivery_window", "drain_rate"} {
		if !strings.Contains(err.Error(), want) {
			t.Errorf("error does not mention %s: %v", want, err)
		}
	}
	ok := server.Config{}
	ok.SetDefaults()
	if err := ok.Validate(); err != nil {
		t.Fatalf("defaults invalid: %v", err)
	}
	if ok.Registration != "open" || ok.Listen != "127.0.0.1:7070" || ok.Data != "./petrel-data" {
		t.Fatalf("defaults: %+v", ok)
	}
	remote := server.Config{Listen: "0.0.0.0:7070", Insecure: true}
	remote.SetDefaults()
	if remote.Registration != "invite" || remote.Validate() != nil {
		t.Fatalf("non-loopback defaults: %+v %v", remote, remote.Validate())
	}
}

func TestLoadConfigRejectsUnknownKeys(t *testing.T) {
	p := filepath.Join(t.TempDir(), "petrel.toml")
	os.WriteFile(p, []byte("listen = \"127.0.0.1:9\"\nlisten_adress = \"typo\"\ninbox_ttl = \"48h\"\n"), 0o600)
	if _, err := server.LoadConfig(p); err == nil || !strings.Contains(err.Error(), "listen_adress") {
		t.Fatalf("want unknown key error, got %v", err)
	}
	os.WriteFile(p, []byte("listen = \"127.0.0.1:9\"\n[inbox]\nttl = \"48h\"\nmax_ttl = 3\n"), 0o600)
	if _, err := server.LoadConfig(p); err == nil || !strings.Contains(err.Error(), "inbox.max_ttl") {
		t.Fatalf("want unknown key error for a key in a section, got %v", err)
	}
}

// Keys live in sections; the flat keys of the previous release still work, with a warning each.
func TestLoadConfigSectionsAndLegacyKeys(t *testing.T) {
	p := filepath.Join(t.TempDir(), "petrel.toml")
	os.WriteFile(p, []byte(`listen = "127.0.0.1:9"
nats = ["nats://127.0.0.1:4222"]
[tls]
cert = "c.pem"
key = "k.pem"
max_handshakes = 7
[admin]
listen = "127.0.0.1:0"
[inbox]
ttl = "48h"
max_per_sender = 12
[limits]
max_frame_bytes = 65536
handshake_timeout = "3s"
inbound_bytes = 1073741824
[prekeys]
claim_pair_per_minute = 0.5
[cache]
devices = 99
`), 0o600)
	c, err := server.LoadConfig(p)
	if err != nil {
		t.Fatal(err)
	}
	if c.TLSCert != "c.pem" || c.TLSKey != "k.pem" || c.TLSMaxHandshakes != 7 || c.AdminListen != "127.0.0.1:0" ||
		c.InboxTTL.Duration != 48*time.Hour || c.InboxMaxPerSender != 12 || c.MaxFrameBytes != 65536 ||
		c.HandshakeTimeout.Duration != 3*time.Second || c.InboundBytes != 1<<30 || c.PrekeyClaimPairPerMinute != 0.5 ||
		c.DeviceCacheSize != 99 || len(c.NATS) != 1 || len(c.Warnings) != 0 {
		t.Fatalf("sections not read: %+v", c)
	}

	os.WriteFile(p, []byte(`tls_cert = "c.pem"
tls_key = "k.pem"
inbox_ttl = "48h"
max_conns = 100
account_cache_size = 5
admin_listen = "127.0.0.1:0"
[limits]
idle_timeout = "1m"
`), 0o600)
	c, err = server.LoadConfig(p)
	if err != nil {
		t.Fatal(err)
	}
	if c.TLSCert != "c.pem" || c.TLSKey != "k.pem" || c.InboxTTL.Duration != 48*time.Hour || c.MaxConns != 100 ||
		c.AccountCacheSize != 5 || c.AdminListen != "127.0.0.1:0" || c.IdleTimeout.Duration != time.Minute {
		t.Fatalf("legacy keys not read: %+v", c)
	}
	if len(c.Warnings) != 5 { // admin_listen is the same key, not a deprecated one
		t.Fatalf("want 5 warnings, got %q", c.Warnings)
	}
	for _, w := range []string{"tls_cert is deprecated", "write it as cert in [tls]", "max_conns is deprecated", "write it as accounts in [cache]"} {
		if !strings.Contains(strings.Join(c.Warnings, "\n"), w) {
			t.Errorf("warnings %q do not say %q", c.Warnings, w)
		}
	}

	os.WriteFile(p, []byte("max_conns = 100\n[limits]\nmax_conns = 200\n"), 0o600)
	if _, err := server.LoadConfig(p); err == nil || !strings.Contains(err.Error(), "give it once") {
		t.Fatalf("a key given flat and in its section: %v", err)
	}
}

// A rate-limited request is answered with its own id (so the client's request completes), and
// the connection keeps working. The configured limit (limits.conn_frame_burst,
// limits.conn_frames_per_second) is the gateway's, to the frame.
func TestRateLimitedRequestsAreAnswered(t *testing.T) {
	const burst = 5
	s := testserver.Start(t, testserver.WithConfig(func(c *server.Config) {
		c.ConnFramesPerSecond, c.ConnFrameBurst = 1, burst
	}))
	start := time.Now()
	c := testserver.Dial(t, s.URL())
	c.MustRegister("rita") // uses one frame of the burst
	limited, pongs := 0, 0
	for range 10 {
		r := c.Request(&pb.Frame{Body: &pb.Frame_Ping{Ping: &pb.Ping{}}})
		switch {
		case r.GetPong() != nil:
			pongs++
		case r.GetError().GetCode() == pb.ErrorCode_ERROR_CODE_RATE_LIMITED && r.GetError().GetRetryAfterMs() > 0:
			limited++
		default:
			t.Fatalf("unexpected answer %v", r)
		}
	}
	if limited == 0 {
		t.Fatal("no request was rate-limited")
	}
	// The burst less the registration's frame, plus one a second for the time the test took.
	if refill := int(time.Since(start).Seconds()); pongs < burst-1 || pongs > burst-1+refill {
		t.Fatalf("%d requests allowed in %v; burst %d at 1 frame/s allows %d to %d", pongs+1, time.Since(start), burst, burst, burst+refill)
	}
}

// Concurrent upgrades cannot overshoot max_conns.
func TestMaxConnsIsExact(t *testing.T) {
	s := testserver.Start(t, testserver.WithConfig(func(c *server.Config) { c.MaxConns = 3 }))
	results := make(chan bool, 12)
	for range 12 {
		go func() {
			resp, err := http.DefaultTransport.RoundTrip(testserver.UpgradeRequest(s.URL()))
			if err != nil {
				results <- false
				return
			}
			if resp.StatusCode == http.StatusSwitchingProtocols {
				results <- true // keep the connection open: do not close the body
				return
			}
			if resp.StatusCode != http.StatusServiceUnavailable || resp.Header.Get("Retry-After") == "" {
				t.Errorf("refusal: status %d, Retry-After %q", resp.StatusCode, resp.Header.Get("Retry-After"))
			}
			resp.Body.Close()
			results <- false
		}()
	}
	accepted := 0
	for range 12 {
		if <-results {
			accepted++
		}
	}
	if accepted != 3 {
		t.Fatalf("accepted %d connections with max_conns 3", accepted)
	}
}

// A live delivery the device does not ack within live_ack_timeout is stored instead: the sender
// is acked as stored, and the device gets the envelope again from its inbox on its next connect.
func TestUnackedLiveDeliveryIsStored(t *testing.T) {
	s := testserver.Start(t, testserver.WithConfig(func(c *server.Config) {
		c.LiveAckTimeout.Duration = 100 * time.Millisecond
	}))
	alice, bob := onlinePair(t, s)
	r := alice.Send("m1", "bob", []string{bob.DeviceID}, []byte("never-acked"))
	if r.GetSendResult() == nil {
		t.Fatalf("want SendResult (stored) after the ack timeout, got %v", r)
	}
	if d := bob.NextPush().GetDeliver(); d.GetEnvelope().GetMessageId() != "m1" {
		t.Fatalf("bob: want the live delivery of m1 first, got %v", d)
	}
	bob.WS.CloseNow()
	bob2 := testserver.Dial(t, s.URL())
	bob2.Auth(bob.AuthKey)
	if d := mustDeliver(t, bob2); d.GetEnvelope().GetMessageId() != "m1" || string(d.GetEnvelope().GetCiphertext()) != "never-acked" {
		t.Fatalf("after reconnecting, want m1 from the inbox, got %v", d)
	}
}

// A connection that does not authenticate within handshake_timeout, or sends nothing for
// idle_timeout, is closed; one that keeps pinging stays open.
func TestHandshakeAndIdleTimeouts(t *testing.T) {
	s := testserver.Start(t, testserver.WithConfig(func(c *server.Config) {
		// Long enough for a registration (its keys are made after the connect) on a busy machine.
		c.HandshakeTimeout.Duration = time.Second
		c.IdleTimeout.Duration = 1500 * time.Millisecond
	}))
	silent := testserver.Dial(t, s.URL()) // gets its Challenge, never authenticates
	idle := testserver.Dial(t, s.URL())
	// The idle timer starts when the server has read idle's last frame, after idleSince.
	idleSince := time.Now()
	idle.MustRegister("idle")
	busy := testserver.Dial(t, s.URL())
	busy.MustRegister("busy")
	start := time.Now()
	closed := func(c *testserver.RawClient, since time.Time) time.Duration {
		t.Helper()
		for {
			f, err := c.ReadErr(5 * time.Second)
			if err != nil {
				return time.Since(since)
			}
			if f.GetQueueEmpty() == nil {
				t.Fatalf("unexpected frame %v", f)
			}
		}
	}
	// The busy client pings every 50 ms for longer than both timeouts, from its own goroutine.
	busyErr := make(chan error, 1)
	go func() {
		for i := range 70 {
			busy.Write(&pb.Frame{Id: uint64(100 + i), Body: &pb.Frame_Ping{Ping: &pb.Ping{}}})
			for {
				f, err := busy.ReadErr(5 * time.Second)
				if err != nil {
					busyErr <- fmt.Errorf("ping %d: %w", i, err)
					return
				}
				if f.GetPong() != nil {
					break
				}
			}
			time.Sleep(50 * time.Millisecond) // pacing of the client, not synchronisation
		}
		busyErr <- nil
	}()
	if d := closed(silent, start); d > 4*time.Second {
		t.Fatalf("unauthenticated connection closed after %s", d)
	}
	if d := closed(idle, idleSince); d < 1400*time.Millisecond || d > 5*time.Second {
		t.Fatalf("idle connection closed after %s, want about 1.5s", d)
	}
	if err := <-busyErr; err != nil {
		t.Fatalf("a pinging connection was closed: %v", err)
	}
}

// idle_timeout is about the client: a connection whose frames keep coming is not closed as idle
// while the server has not handled them yet. Here one frame's handling is held (as a read of the
// store can be, on a loaded cluster) for more than twice the idle timeout; the pings queued behind
// it are read but not handled. The connection stays, and every ping is answered once the frame is
// let go.
func TestSlowHandlingIsNotIdle(t *testing.T) {
	_, c := idleSecondServer(t, "patient")
	held, release := make(chan struct{}), make(chan struct{})
	defer gateway.SetFrameHookForTest(func(f *pb.Frame) {
		if f.GetPing().GetClientTimeMs() == 777 {
			close(held)
			<-release
		}
	})()
	c.Write(&pb.Frame{Id: 1, Body: &pb.Frame_Ping{Ping: &pb.Ping{ClientTimeMs: 777}}})
	<-held
	pingThroughIdleTimeouts(c, 2)
	close(release)
	expectPongs(t, c, 1, idlePings+1)
}

// idleSecondServer starts a server with a 1 s idle_timeout and registers one client, name.
func idleSecondServer(t *testing.T, name string) (*testserver.Server, *testserver.RawClient) {
	t.Helper()
	s := testserver.Start(t, testserver.WithConfig(func(c *server.Config) {
		c.IdleTimeout.Duration = time.Second
	}))
	c := testserver.Dial(t, s.URL())
	c.MustRegister(name)
	return s, c
}

// holdGate holds, once armed, the first goroutine that calls hold (a test hook's), until let.
type holdGate struct {
	armed   atomic.Bool
	held    chan struct{} // closed when a goroutine is held
	release chan struct{}
	once    sync.Once
}

func newHoldGate() *holdGate {
	return &holdGate{held: make(chan struct{}), release: make(chan struct{})}
}

func (g *holdGate) arm() { g.armed.Store(true) }

// hold holds the caller until let if the gate is armed (once), and reports whether it did.
func (g *holdGate) hold() bool {
	if !g.armed.CompareAndSwap(true, false) {
		return false
	}
	close(g.held)
	<-g.release
	return true
}

// let releases the held goroutine (and any later one); idempotent.
func (g *holdGate) let() { g.once.Do(func() { close(g.release) }) }

// idlePings is how many pings pingThroughIdleTimeouts sends.
const idlePings = 15

// pingThroughIdleTimeouts sends idlePings pings (ids from first on), one every 200 ms: 3 s of a
// client talking, three idle timeouts of 1 s.
func pingThroughIdleTimeouts(c *testserver.RawClient, first uint64) {
	for i := range uint64(idlePings) {
		time.Sleep(200 * time.Millisecond) // the client's pace, not synchronisation
		c.Write(&pb.Frame{Id: first + i, Body: &pb.Frame_Ping{Ping: &pb.Ping{ClientTimeMs: 1}}})
	}
}

// expectPongs reads the pongs of requests first … first+n-1, in order (QueueEmpty frames
// skipped): the connection was not closed meanwhile.
func expectPongs(t *testing.T, c *testserver.RawClient, first uint64, n int) {
	t.Helper()
	for want := first; want < first+uint64(n); want++ {
		f, err := c.ReadErr(5 * time.Second)
		for err == nil && f.GetQueueEmpty() != nil {
			f, err = c.ReadErr(5 * time.Second)
		}
		if err != nil {
			t.Fatalf("waiting for pong %d: %v (closed as idle while it kept pinging?)", want, err)
		}
		if f.GetPong() == nil || f.Id != want {
			t.Fatalf("want pong %d, got %v", want, f)
		}
	}
}

// A client whose frames wait unread in its socket (the node's poller, one for every socket on a
// small machine, is held, as a starved one falls behind) is not closed as idle: the bytes in the
// socket show it sent them. Every ping is answered once the poller reads again.
func TestUnreadSocketIsNotIdle(t *testing.T) {
	if runtime.GOOS != "linux" {
		t.Skip("reads the socket's receive queue (SIOCINQ)")
	}
	if runtime.NumCPU()/4 > 1 {
		t.Skip("needs the single nbio poller of a machine with fewer than 8 CPUs")
	}
	s, holder := idleSecondServer(t, "holder")
	c := testserver.Dial(t, s.URL())
	c.MustRegister("patient")
	g := newHoldGate()
	defer gateway.SetPollerHookForTest(func() { g.hold() })()
	defer g.let() // a failed write must not leave the poller held (the server could not stop)
	g.arm()
	holder.Write(&pb.Frame{Id: 1, Body: &pb.Frame_Ping{Ping: &pb.Ping{}}}) // its chunk holds the poller
	<-g.held
	pingThroughIdleTimeouts(c, 1)
	g.let()
	expectPongs(t, c, 1, idlePings)
	if n := value(t, scrape(t, s.AdminURL()), "petrel_gateway_idle_unread_total"); n < 1 {
		t.Errorf("petrel_gateway_idle_unread_total = %v, want at least 1", n)
	}
}

// A sweep held up (its closes detach devices, which can wait on a loaded bus) must not turn into a
// mass close when it comes back: deadlines are set from the clock, not from the time the sweep
// last saw. Here the sweep is held for three idle timeouts while a client keeps pinging.
func TestHeldSweepClosesNoTalkingClient(t *testing.T) {
	_, c := idleSecondServer(t, "pinger")
	g := newHoldGate()
	ticks := make(chan struct{}, 1)
	defer gateway.SetSweepHookForTest(func() {
		if g.hold() {
			return
		}
		select {
		case ticks <- struct{}{}:
		default:
		}
	})()
	defer g.let()
	g.arm()
	<-g.held
	pingThroughIdleTimeouts(c, 1)
	g.let()
	// Two more sweep ticks after the held one came back: every deadline has been checked again.
	<-ticks
	<-ticks
	expectPongs(t, c, 1, idlePings)
	if p := c.Request(&pb.Frame{Body: &pb.Frame_Ping{Ping: &pb.Ping{ClientTimeMs: 2}}}); p.GetPong().GetClientTimeMs() != 2 {
		t.Fatalf("the connection was closed after the sweep came back: %v", p)
	}
}
