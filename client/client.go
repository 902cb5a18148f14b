// Copyright 2026 The Petrel Authors
// SPDX-License-Identifier: Apache-2.0

package client

import (
	"context"
	"crypto/ed25519"
	"crypto/rand"
	"crypto/sha256"
	"encoding/base64"
	"encoding/hex"
	"errors"
	"fmt"
	"io"
	"log/slog"
	"maps"
	"slices"
	"strings"
	"sync"
	"sync/atomic"
	"time"

	"github.com/petrelchat/petrel/client/store"
	"github.com/petrelchat/petrel/e2ee"
	petrelv1 "github.com/petrelchat/petrel/proto/petrel/v1"
	"google.golang.org/protobuf/proto"
)

// Config configures a Client. Zero values mean the documented defaults.
type Config struct {
	// Store is the local state; required. The caller opens and closes it.
	Store *store.Store
	// Servers are more server URLs to connect to, tried after those stored at registration (the
	// client also keeps the nodes' URLs the servers tell it). Not stored. Default: none.
	Servers []string
	// Events receives what happens (see Event). The client blocks until each event is taken, so
	// drain it on a goroutine that does not itself wait for Send. nil: no events.
	Events chan<- Event
	// Logger receives diagnostics (ids and counts only). Default: discard.
	Logger *slog.Logger
	// ResendInterval is how long a server-acked message may wait for its delivery receipts before
	// the client asks the server whether it still holds it (and resends it if not). Default: 1h.
	ResendInterval time.Duration
	// ReconnectBase and ReconnectMax bound the reconnect backoff (exponential, full jitter).
	// After a connection fails or ends the client tries another of its server URLs.
	// Defaults: 250ms and 30s.
	ReconnectBase, ReconnectMax time.Duration
	// DialTimeout bounds connecting and authenticating. Default: 10s.
	DialTimeout time.Duration
	// RequestTimeout bounds the wait for the answer to one request. Default: 30s.
	RequestTimeout time.Duration
	// KeepAlive is the interval between Pings on an idle connection. Default: 30s; < 0 disables.
	KeepAlive time.Duration
	// KeepAliveTimeout is how long a Ping may go unanswered, with nothing else arriving either,
	// before the connection counts as dead and the client moves to another server: a node that
	// died without closing its sockets (power loss, a network that drops packets) is noticed
	// within KeepAlive + KeepAliveTimeout instead of RequestTimeout. Default: 10s.
	KeepAliveTimeout time.Duration
	// SignedPreKeyRotation is the age after which the signed prekey (and the last-resort KEM
	// prekey) are replaced. Default: 7 days.
	SignedPreKeyRotation time.Duration
	// SignedPreKeyGrace is how long a replaced prekey's private key is kept so that PreKey
	// messages made with it still decrypt. Default: 30 days.
	SignedPreKeyGrace time.Duration
	// PreKeyBatch is how many one-time prekeys of each kind a device keeps uploaded. Default: 100.
	PreKeyBatch int
	// HistoryLimit is how many of the most recent messages per chat the primary sends a device
	// it links (unless the new device asked for none). Default: 1,000.
	HistoryLimit int
	// SendWindow is how many outbox entries may wait for the server's ack at once, at most one
	// per recipient account (a recipient's messages leave in order, one after the other; see
	// "The send window" in outbox.go). Default: 32 (DefaultSendWindow); at most 64.
	SendWindow int
	// OnlyServer, when set, is the one server URL the client connects to: not those stored at
	// registration, not Servers, and none learned from the servers (a prober pins each probe to
	// the node it measures). Default: empty (every known URL, with failover).
	OnlyServer string
	// NoAutoReport turns off automatic problem reports. By default, after AutoReportAfter without
	// a connection (and at least 3 failed attempts), the client POSTs an anonymous report
	// (category cant-connect; no account, no content, only a random id kept in memory) to the
	// reports endpoint (/v1/reports) of the server it was trying, retried with jittered backoff;
	// at most one report an hour and 3 per Run. Default: false (reports on).
	NoAutoReport bool
	// AutoReportAfter is how long connecting must have failed before a report is sent.
	// Default: 2m.
	AutoReportAfter time.Duration
	// ReportURL is the base URL reports go to (its /v1/reports). Default: the URL of the server
	// the client was trying.
	ReportURL string
	// FailFast makes Run return a connection error when no connection has succeeded yet and every
	// server URL has failed once (for one-shot command-line use). Default: false (retry until ctx
	// ends).
	FailFast bool
	// Rand is the randomness source for keys and ids. Default: crypto/rand.
	Rand io.Reader
	// Now is the clock. Default: time.Now.
	Now func() time.Time
}

func (c *Config) setDefaults() {
	if c.Logger == nil {
		c.Logger = slog.New(slog.DiscardHandler)
	}
	if c.ResendInterval <= 0 {
		c.ResendInterval = time.Hour
	}
	if c.ReconnectBase <= 0 {
		c.ReconnectBase = 250 * time.Millisecond
	}
	if c.ReconnectMax <= 0 {
		c.ReconnectMax = 30 * time.Second
	}
	if c.ReconnectMax < c.ReconnectBase {
		c.ReconnectMax = c.ReconnectBase
	}
	if c.DialTimeout <= 0 {
		c.DialTimeout = 10 * time.Second
	}
	if c.RequestTimeout <= 0 {
		c.RequestTimeout = 30 * time.Second
	}
	if c.KeepAlive == 0 {
		c.KeepAlive = 30 * time.Second
	}
	if c.KeepAliveTimeout <= 0 {
		c.KeepAliveTimeout = 10 * time.Second
	}
	if c.SignedPreKeyRotation <= 0 {
		c.SignedPreKeyRotation = 7 * 24 * time.Hour
	}
	if c.SignedPreKeyGrace <= 0 {
		c.SignedPreKeyGrace = 30 * 24 * time.Hour
	}
	if c.PreKeyBatch <= 0 {
		c.PreKeyBatch = 100
	}
	if c.HistoryLimit <= 0 {
		c.HistoryLimit = 1000
	}
	if c.SendWindow <= 0 {
		c.SendWindow = DefaultSendWindow
	}
	c.SendWindow = min(c.SendWindow, maxSendWindow)
	if c.Rand == nil {
		c.Rand = rand.Reader
	}
	if c.AutoReportAfter <= 0 {
		c.AutoReportAfter = defaultAutoReportAfter
	}
	if c.Now == nil {
		c.Now = time.Now
	}
}

// Account describes this device.
type Account struct {
	Name      string
	DeviceID  string
	ServerURL string
	// Servers are every server URL the device may connect to: ServerURL and the other configured
	// ones first, then those learned from the servers.
	Servers []string
	// Fingerprint is a short hex digest of this device's identity key (see Fingerprint).
	Fingerprint string
	// Primary is set on the account's primary device (the one that registered it); a device
	// linked to the account (Link) is a companion.
	Primary bool
	// RecoveryKey is the account's recovery key, set only in what Register and Recover return
	// (show it to the user once; RecoveryKey reads it from the store later).
	RecoveryKey string
}

// Client is one registered device. It is safe for concurrent use.
type Client struct {
	cfg      Config
	st       *store.Store
	log      *slog.Logger
	name     string
	deviceID string
	server   string // the first configured URL
	servers  *serverList
	authKey  ed25519.PrivateKey
	identity *e2ee.IdentityKeyPair
	// companion is set on a linked device (not the account's primary).
	companion bool
	boff      backoff
	failover  failover // guarded by mu: the connection that ended last, for the next Auth
	// sawGoAway (guarded by mu): the current link was sent away by its server (a GoAway frame),
	// whichever of its loops' errors ended it.
	sawGoAway bool

	kick chan struct{} // capacity 1: the outbox has work

	// sendHighWater is the most outbox sends ever in flight at once (tests read it).
	sendHighWater atomic.Int64
	// ownSyncWanted asks the sender loop to fetch this account's devices (requestOwnSync).
	ownSyncWanted atomic.Bool
	// groups is the in-memory group state (groups.go).
	groups groupRuntime

	// ext is the state of presence, typing and the disappearing-message sweeper (presence.go).
	ext extState

	// rep sends automatic problem reports (report.go); nil with Config.NoAutoReport.
	rep *reporter

	// groupAwaiting is maxGroupAwaiting (tests lower it: export_test.go).
	groupAwaiting int
	// ackHook, set by tests before Run (export_test.go), sees each batch's tags after its commit
	// and before its ack; an error stands for the ack's write failing. Nil outside tests.
	ackHook func(tags []uint64) error

	closeCtx context.Context // cancelled by Close
	closeFn  context.CancelFunc
	runDone  chan struct{} // closed when Run returns

	mu       sync.Mutex // guards the following fields
	state    runState
	cur      *link                 // the ready connection (after QueueEmpty), or nil
	readyCh  chan struct{}         // closed when cur becomes non-nil; replaced when it drops
	flushCh  chan struct{}         // closed after each outbox flush; replaced
	waiters  map[string]chan error // message id → Send waiting for the server's ack
	lastErr  error                 // the last connection error
	runErr   error                 // why Run returned
	maxFrame int                   // the server's frame limit (last Welcome)
}

// failover is the server connection that ended last, told to the next server in Auth
// (failover_ms, failover_reason) when the device moves to another one.
type failover struct {
	from   string // its server URL; "" when none ended since the last connection
	at     time.Time
	reason string // "goaway" or "lost"
}

// stableConn is how long a connection must last for the reconnect backoff to start over.
const stableConn = 10 * time.Second

type runState int

const (
	stateIdle runState = iota
	stateRunning
	stateClosed // Close was called; Run returns at once
)

// Open loads the registered device from cfg.Store (no network I/O). It returns ErrNotRegistered
// if the store holds no registered device.
func Open(cfg Config) (*Client, error) {
	if cfg.Store == nil {
		return nil, errors.New("client: Config.Store is required")
	}
	cfg.setDefaults()
	if cfg.OnlyServer != "" && !validServerURL(normURL(cfg.OnlyServer)) {
		return nil, fmt.Errorf("client: OnlyServer %q: want http://HOST:PORT or https://HOST[:PORT]", cfg.OnlyServer)
	}
	if cfg.ReportURL != "" && !validServerURL(normURL(cfg.ReportURL)) {
		return nil, fmt.Errorf("client: ReportURL %q: want http://HOST:PORT or https://HOST[:PORT]", cfg.ReportURL)
	}
	var acct *store.Account
	err := cfg.Store.View(func(tx *store.Tx) error {
		var err error
		acct, err = tx.Account()
		return err
	})
	if errors.Is(err, store.ErrNotFound) || err == nil && !acct.Registered {
		return nil, ErrNotRegistered
	}
	if err != nil {
		return nil, err
	}
	if len(acct.AuthKey) != ed25519.PrivateKeySize {
		return nil, errors.New("client: stored auth key is malformed")
	}
	id, err := e2ee.UnmarshalIdentityKeyPair(acct.Identity)
	if err != nil {
		return nil, fmt.Errorf("client: stored identity key: %w", err)
	}
	c := &Client{
		cfg:       cfg,
		st:        cfg.Store,
		log:       cfg.Logger.With("device", acct.DeviceID),
		name:      acct.Name,
		deviceID:  acct.DeviceID,
		server:    acct.ServerURL,
		servers:   newServerList(slices.Concat([]string{acct.ServerURL}, acct.Servers, cfg.Servers), acct.LearnedServers),
		authKey:   ed25519.PrivateKey(acct.AuthKey),
		identity:  id,
		companion: acct.Companion,
		boff:      backoff{base: cfg.ReconnectBase, max: cfg.ReconnectMax},
		kick:      make(chan struct{}, 1),
		runDone:   make(chan struct{}),
		readyCh:   make(chan struct{}),
		flushCh:   make(chan struct{}),
		waiters:   map[string]chan error{},
		maxFrame:  int(acct.MaxFrameBytes),

		groupAwaiting: maxGroupAwaiting,
	}
	if cfg.OnlyServer != "" {
		c.servers = newServerList([]string{cfg.OnlyServer}, nil)
		c.servers.pinned = true
	}
	if !cfg.NoAutoReport {
		c.rep = newReporter(newClientID(cfg.Rand), &c.cfg, c.log.Info)
	}
	c.closeCtx, c.closeFn = context.WithCancel(context.Background())
	if c.maxFrame == 0 {
		c.maxFrame = petrelv1.DefaultMaxFrameBytes
	}
	return c, nil
}

// Account returns this device's account.
func (c *Client) Account() Account {
	return Account{Name: c.name, DeviceID: c.deviceID, ServerURL: c.server, Servers: c.servers.urls(),
		Fingerprint: Fingerprint(c.identity.PublicKey().Bytes()), Primary: !c.companion}
}

// Fingerprint returns a short, human-comparable digest of a public identity key: the first
// 16 bytes of its SHA-256 in hex, in groups of four.
func Fingerprint(identityKey []byte) string {
	sum := sha256.Sum256(identityKey)
	h := hex.EncodeToString(sum[:16])
	var b strings.Builder
	for i := 0; i < len(h); i += 4 {
		if i > 0 {
			b.WriteByte(' ')
		}
		b.WriteString(h[i : i+4])
	}
	return b.String()
}

// Run connects and keeps the connection up, reconnecting with exponential backoff and full jitter
// (honouring the server's retry hints), until ctx ends or Close is called (it then returns nil).
// Each reconnect goes to another of the server URLs (configured, then learned from Welcome), so
// a device moves by itself off a node that dies, drains or cannot be reached.
// It returns an error matching ErrConnectedElsewhere when another instance of this device took
// over, ErrAuthFailed when the server no longer accepts this device, and — with Config.FailFast —
// the last connection error once every server URL failed and none ever connected. Run may be
// called once.
func (c *Client) Run(ctx context.Context) (err error) {
	c.mu.Lock()
	switch c.state {
	case stateClosed:
		c.mu.Unlock()
		return ErrClosed
	case stateRunning:
		c.mu.Unlock()
		return errors.New("client: Run called twice")
	}
	c.state = stateRunning
	c.mu.Unlock()
	defer func() {
		c.mu.Lock()
		c.runErr = err
		if c.runErr == nil {
			c.runErr = ErrClosed
		}
		c.mu.Unlock()
		close(c.runDone)
		c.failWaiters(c.runErr)
	}()
	ctx, cancel := context.WithCancel(ctx)
	defer cancel()
	stop := context.AfterFunc(c.closeCtx, cancel)
	defer stop()
	if c.rep != nil {
		var wg sync.WaitGroup
		wg.Add(1)
		go func() {
			defer wg.Done()
			c.rep.run(ctx)
		}()
		defer func() { cancel(); wg.Wait() }()
	}
	stopSweeper := c.startSweeper(ctx) // disappearing messages (disappearing.go)
	defer stopSweeper()

	attempt := 0
	everConnected := false
	tried := map[string]bool{} // with FailFast: the URLs that failed before any connection
	for {
		start := time.Now()
		url := c.servers.current()
		connected, err := c.runLink(ctx, url)
		if ctx.Err() != nil {
			return nil
		}
		// Whatever ended this connection (a dead node, a drain's GoAway, an unreachable one), the
		// next attempt goes to another node, if there is one.
		c.servers.failed(url, time.Now())
		if c.rep != nil {
			if connected {
				c.rep.connected()
			} else {
				c.rep.failed(url, c.cfg.Now())
			}
		}
		if connected {
			// The next connection to another server tells it this is a failover, and since when.
			reason := "lost"
			var g *goAwayError
			c.mu.Lock()
			if errors.As(err, &g) || c.sawGoAway {
				reason = "goaway"
			}
			c.sawGoAway = false
			c.failover = failover{from: url, at: time.Now(), reason: reason}
			c.mu.Unlock()
			everConnected = true
			// Only a connection that stayed up resets the backoff: a server that accepts and
			// drops at once must not be hammered.
			if time.Since(start) >= stableConn {
				attempt = 0
			}
		}
		c.mu.Lock()
		c.lastErr = err
		c.mu.Unlock()
		if isFatal(err) {
			c.log.Warn("connection refused for good", "err", err)
			return err
		}
		if c.cfg.FailFast && !everConnected {
			tried[url] = true
			if len(tried) >= len(c.servers.urls()) {
				return err
			}
		}
		delay := c.boff.withRetryAfter(c.boff.delay(attempt), retryAfter(err))
		attempt++
		c.log.Info("disconnected", "server", url, "err", err, "retry_in", delay, "next", c.servers.current())
		if !c.emit(ctx, &Disconnected{Err: err, RetryIn: delay}) {
			return nil
		}
		t := time.NewTimer(delay)
		select {
		case <-t.C:
		case <-ctx.Done():
			t.Stop()
			return nil
		}
	}
}

// Close stops Run (if running) and waits for it to return. Messages not yet acked stay in the
// outbox for the next run. It does not close the store. Idempotent.
func (c *Client) Close() error {
	c.mu.Lock()
	prev := c.state
	c.state = stateClosed
	c.mu.Unlock()
	c.closeFn()
	if prev == stateRunning {
		<-c.runDone
	}
	c.failWaiters(ErrClosed)
	return nil
}

// LastError returns the last connection error (nil while connected or before any attempt).
func (c *Client) LastError() error {
	c.mu.Lock()
	defer c.mu.Unlock()
	return c.lastErr
}

// emit sends ev on Config.Events; it reports false if ctx ended first.
func (c *Client) emit(ctx context.Context, ev Event) bool {
	if c.cfg.Events == nil {
		return true
	}
	select {
	case c.cfg.Events <- ev:
		return true
	case <-ctx.Done():
		return false
	}
}

func (c *Client) kickOutbox() {
	select {
	case c.kick <- struct{}{}:
	default:
	}
}

// setReady makes l the connection sends go through (l != nil; ctx is l's), or, with l nil, says
// there is none. A link whose context has ended is not made current: its connection is gone, and
// runLink's setReady(nil) may already have run (then nothing would reset readyCh before the next
// link closes it again).
func (c *Client) setReady(ctx context.Context, l *link) {
	c.mu.Lock()
	defer c.mu.Unlock()
	if l != nil {
		if ctx.Err() != nil {
			return
		}
		if c.cur == nil {
			close(c.readyCh)
		}
		c.cur = l
		c.lastErr = nil
		return
	}
	if c.cur != nil {
		c.cur = nil
		c.readyCh = make(chan struct{})
	}
}

// ready waits for a ready connection.
func (c *Client) ready(ctx context.Context) (*link, error) {
	for {
		c.mu.Lock()
		l, ch, runErr := c.cur, c.readyCh, c.runErr
		c.mu.Unlock()
		if l != nil {
			return l, nil
		}
		if runErr != nil {
			return nil, runErr
		}
		select {
		case <-ch:
		case <-c.runDone:
		case <-c.closeCtx.Done():
			return nil, ErrClosed
		case <-ctx.Done():
			return nil, c.notConnected(ctx.Err())
		}
	}
}

// notConnected builds the error for a wait that ended without a connection.
func (c *Client) notConnected(cause error) error {
	if last := c.LastError(); last != nil {
		return fmt.Errorf("%w: %w (last error: %w)", ErrNotConnected, cause, last)
	}
	return fmt.Errorf("%w: %w", ErrNotConnected, cause)
}

func (c *Client) signalFlushed() {
	c.mu.Lock()
	close(c.flushCh)
	c.flushCh = make(chan struct{})
	c.mu.Unlock()
}

// finish hands the outcome of message id to the Send waiting for it; it reports whether one was.
func (c *Client) finish(id string, err error) bool {
	c.mu.Lock()
	w := c.waiters[id]
	delete(c.waiters, id)
	c.mu.Unlock()
	if w != nil {
		w <- err // buffered
	}
	return w != nil
}

// failWaiters ends every waiting Send: their messages stay in the outbox.
func (c *Client) failWaiters(err error) {
	c.mu.Lock()
	ws := c.waiters
	c.waiters = map[string]chan error{}
	c.mu.Unlock()
	for id, w := range ws {
		w <- fmt.Errorf("message %s not acked yet, it stays in the outbox: %w", id, err)
	}
}

// NewMessageID returns a fresh random message id (22 characters of [A-Za-z0-9_-]).
func NewMessageID(rand io.Reader) (string, error) {
	var b [16]byte
	if _, err := io.ReadFull(rand, b[:]); err != nil {
		return "", err
	}
	return base64.RawURLEncoding.EncodeToString(b[:]), nil
}

// Send sends text to every device of account to and returns the message id once the server has
// acked it (every recipient device has it, live or durably stored). The message stays in the
// outbox until every recipient device sent a delivery receipt (see Delivered).
//
// If ctx ends before the server's ack, Send returns the id with an error wrapping ctx's (or the
// connection's) error: the message stays in the outbox and is sent by a later run. Errors
// matching ErrUnknownUser, ErrInvalidName or ErrFrameTooLarge mean the message was refused for
// good and left the outbox.
func (c *Client) Send(ctx context.Context, to, text string) (string, error) {
	done := make(chan error, 1)
	id, err := c.enqueue(to, text, done)
	if err != nil {
		return id, err
	}
	return id, c.awaitAck(ctx, id, done)
}

// awaitAck waits for the server's answer to message id (registered with addWaiter), or for ctx:
// the message then stays in the outbox and its waiter is dropped.
func (c *Client) awaitAck(ctx context.Context, id string, done chan error) error {
	select {
	case err := <-done:
		return err
	case <-ctx.Done():
		c.mu.Lock()
		delete(c.waiters, id)
		c.mu.Unlock()
		return fmt.Errorf("message %s not acked yet, it stays in the outbox: %w", id, c.notConnected(ctx.Err()))
	}
}

// runEnded reports whether Run has returned with an error while the client is not closed: a
// message may still be stored in the outbox for a later run (queuedAfterRun).
func (c *Client) runEnded() bool {
	c.mu.Lock()
	defer c.mu.Unlock()
	return c.runErr != nil && c.state != stateClosed
}

// queuedAfterRun is the error of a message stored in the outbox after Run had ended with err:
// the same words as a send whose run ended while it waited, whichever came first.
func queuedAfterRun(id string, err error) error {
	return fmt.Errorf("message %s not acked yet, it stays in the outbox: %w", id, err)
}

// addWaiter registers done (if not nil) for the answer to message id, unless Run has returned
// (or never will): the message would not leave now.
func (c *Client) addWaiter(id string, done chan error) error {
	c.mu.Lock()
	defer c.mu.Unlock()
	if c.runErr != nil || c.state == stateClosed {
		if c.runErr != nil {
			return c.runErr
		}
		return ErrClosed
	}
	if done != nil {
		c.waiters[id] = done
	}
	return nil
}

// Enqueue stores text for every device of account to in the outbox and returns its message id
// at once, without waiting for the server. The outbox sends queued messages in order per
// recipient, several recipients at a time (Config.SendWindow). A message refused for good is
// reported as a SendFailed event; Flush waits until the server has acked everything queued.
// Errors are those of Send that come before anything is stored (an invalid name, a message over
// the frame limit, a closed client, a store failure).
func (c *Client) Enqueue(to, text string) (string, error) {
	return c.enqueue(to, text, nil)
}

// enqueue checks and stores one text message in the outbox and kicks the sender. done, if not
// nil, is registered to receive the outcome of the server's answer (see finish).
func (c *Client) enqueue(to, text string, done chan error) (string, error) {
	if !petrelv1.ValidName(to) {
		return "", fmt.Errorf("%w: %q", ErrInvalidName, to)
	}
	if to == c.name {
		return "", errors.New("sending to your own account is not supported yet")
	}
	if n := len(text); n > c.frameLimit() {
		return "", frameTooLarge(n, c.frameLimit())
	}
	id, err := NewMessageID(c.cfg.Rand)
	if err != nil {
		return "", err
	}
	now := c.cfg.Now()
	timer, err := c.Disappearing(to) // the chat's disappearing timer (disappearing.go)
	if err != nil {
		return "", err
	}
	content, err := proto.Marshal(&petrelv1.Content{
		MessageId:   id,
		Body:        &petrelv1.Content_Text{Text: &petrelv1.Text{Body: text, SentAtMs: now.UnixMilli()}},
		ExpiresInMs: timer.Milliseconds(),
	})
	if err != nil {
		return "", err
	}
	stopped := c.addWaiter(id, done)
	if stopped != nil && !c.runEnded() {
		return "", stopped
	}
	err = c.st.Update(func(tx *store.Tx) error {
		if err := tx.AddOutbox(&store.OutboxEntry{ID: id, To: to, Kind: store.KindText, Content: content, CreatedAt: now}); err != nil {
			return err
		}
		rec := &store.HistoryRecord{ID: id, Dir: store.Outgoing, Peer: to, Body: text, SentAt: now, Status: store.StatusPending, ExpiresIn: timer}
		if err := tx.AddHistory(rec); err != nil {
			return err
		}
		return c.startSentCountdown(tx, rec)
	})
	if err != nil {
		c.finish(id, nil)
		return "", fmt.Errorf("store message: %w", err)
	}
	if stopped != nil {
		return id, queuedAfterRun(id, stopped)
	}
	c.kickOutbox()
	return id, nil
}

func (c *Client) frameLimit() int {
	c.mu.Lock()
	defer c.mu.Unlock()
	return c.maxFrame
}

// Flush waits until the outbox holds no message that the server has not acked (receipts
// included), or ctx ends.
func (c *Client) Flush(ctx context.Context) error {
	for {
		c.mu.Lock()
		ch := c.flushCh
		c.mu.Unlock()
		var n int
		err := c.st.View(func(tx *store.Tx) error {
			p, err := tx.PendingOutbox(1)
			n = len(p)
			return err
		})
		if err != nil {
			return err
		}
		if n == 0 {
			return nil
		}
		c.kickOutbox()
		select {
		case <-ch:
		case <-ctx.Done():
			return c.notConnected(ctx.Err())
		case <-c.runDone:
			c.mu.Lock()
			err := c.runErr
			c.mu.Unlock()
			return err
		}
	}
}

// Unseen returns up to limit received messages not yet marked seen, oldest first (for example
// messages received while the application was not showing them).
func (c *Client) Unseen(limit int) ([]*Message, error) { return c.UnseenAfter(0, limit) }

// UnseenAfter is Unseen from the message after seq (a Message.Seq) on: a reader that leaves some
// messages unseen pages with the last Seq it read, and so reaches every one.
func (c *Client) UnseenAfter(seq uint64, limit int) ([]*Message, error) {
	var recs []*store.HistoryRecord
	err := c.st.View(func(tx *store.Tx) error {
		var err error
		recs, err = tx.UnseenAfter(seq, limit)
		return err
	})
	if err != nil {
		return nil, err
	}
	out := make([]*Message, 0, len(recs))
	for _, r := range recs {
		out = append(out, c.messageFromRecord(r))
	}
	return out, nil
}

// ClaimSeen records that the message with seq (Message.Seq) is being shown, committed to disk,
// and reports whether it was unseen until this call. An application shows a message only after
// ClaimSeen returned true, so that no crash can show it twice (invariant 2, exactly-once display):
// a crash before the claim leaves it in Unseen, to show next time; one between the claim and the
// display leaves it in the history, seen but not shown. Marking it seen after showing it instead
// (MarkSeen) shows it again after a crash in between.
func (c *Client) ClaimSeen(seq uint64) (bool, error) {
	var claimed bool
	err := c.st.Update(func(tx *store.Tx) error {
		var err error
		if claimed, err = tx.ClaimSeen(seq); err == nil && claimed {
			err = c.startCountdown(tx, seq) // a disappearing message's (disappearing.go)
		}
		return err
	})
	return claimed, err
}

// MarkSeen records that messages (by Message.Seq) have been shown. To show a message exactly once
// across crashes, claim it with ClaimSeen before showing it instead.
func (c *Client) MarkSeen(seqs ...uint64) error {
	return c.st.Update(func(tx *store.Tx) error {
		if err := tx.MarkSeen(seqs...); err != nil {
			return err
		}
		for _, seq := range seqs {
			if err := c.startCountdown(tx, seq); err != nil { // disappearing.go
				return err
			}
		}
		return nil
	})
}

func (c *Client) messageFromRecord(r *store.HistoryRecord) *Message {
	m := &Message{Seq: r.Seq, ID: r.ID, From: r.Peer, FromDevice: r.PeerDevice, Text: r.Body,
		SentAt: r.SentAt, ServerTime: r.ServerTime, ReceivedAt: r.ReceivedAt,
		ExpiresIn: r.ExpiresIn, ExpiresAt: r.ExpiresAt, Timer: r.Timer, TimerSet: r.TimerSet}
	if r.Dir == store.Outgoing {
		m.Outgoing, m.From, m.To = true, c.name, r.Peer
	}
	if r.Group != "" {
		groupFields(m, r)
	}
	return m
}

// History returns up to limit messages of the local history (received, sent from this device or
// another one of the account, or received in a history transfer) with Seq > after, oldest first.
func (c *Client) History(after uint64, limit int) ([]*Message, error) {
	var recs []*store.HistoryRecord
	err := c.st.View(func(tx *store.Tx) error {
		var err error
		recs, err = tx.History(after, limit)
		return err
	})
	if err != nil {
		return nil, err
	}
	out := make([]*Message, 0, len(recs))
	for _, r := range recs {
		if r.Unverified {
			continue
		}
		out = append(out, c.messageFromRecord(r))
	}
	return out, nil
}

// OutboxLen returns how many messages (texts awaiting receipts, receipts awaiting the server) are
// in the outbox.
func (c *Client) OutboxLen() (int, error) {
	var n int
	err := c.st.View(func(tx *store.Tx) error { n = tx.OutboxLen(); return nil })
	return n, err
}

// SafetyNumber returns the 60-digit safety number of this account and name (e2ee.SafetyNumber
// over both sides' device identity keys: every device of each account's signed device list, so
// it changes when either account adds or removes a device). If name's devices are not known yet it fetches them,
// which needs a connection (Run). Compare it with name out of band to rule out a
// man-in-the-middle.
func (c *Client) SafetyNumber(ctx context.Context, name string) (string, error) {
	if !petrelv1.ValidName(name) {
		return "", fmt.Errorf("%w: %q", ErrInvalidName, name)
	}
	keys, ok, err := c.contactKeys(name)
	if err != nil {
		return "", err
	}
	if !ok {
		l, err := c.ready(ctx)
		if err != nil {
			return "", err
		}
		if _, err := l.ensureSessions(ctx, name); err != nil {
			return "", err
		}
		if keys, ok, err = c.contactKeys(name); err != nil {
			return "", err
		}
		if !ok {
			return "", fmt.Errorf("%w: %s has no devices", ErrUnknownUser, name)
		}
	}
	remote := make([]*e2ee.IdentityKey, 0, len(keys))
	for _, k := range keys {
		ik, err := e2ee.ParseIdentityKey(k)
		if err != nil {
			return "", fmt.Errorf("stored identity key of %s: %w", name, err)
		}
		remote = append(remote, ik)
	}
	ownKeys, err := c.ownDeviceKeys()
	if err != nil {
		return "", err
	}
	local := make([]*e2ee.IdentityKey, 0, len(ownKeys))
	for _, k := range ownKeys {
		ik, err := e2ee.ParseIdentityKey(k)
		if err != nil {
			return "", fmt.Errorf("stored identity key of this account: %w", err)
		}
		local = append(local, ik)
	}
	n := e2ee.SafetyNumber(c.name, local, name, remote)
	if n == "" {
		return "", errors.New("safety number unavailable")
	}
	return n, nil
}

// contactKeys returns the identity keys of every known device of name; ok is false unless the
// full device list is known with a key for each device.
func (c *Client) contactKeys(name string) (keys [][]byte, ok bool, err error) {
	err = c.st.View(func(tx *store.Tx) error {
		ct, err := tx.Contact(name)
		if errors.Is(err, store.ErrNotFound) {
			return nil
		}
		if err != nil {
			return err
		}
		if !ct.DevicesKnown || len(ct.Devices) == 0 {
			return nil
		}
		for _, dev := range slices.Sorted(maps.Keys(ct.Devices)) {
			k := ct.Devices[dev].IdentityKey
			if len(k) == 0 {
				return nil
			}
			keys = append(keys, k)
		}
		ok = true
		return nil
	})
	return keys, ok, err
}

// Contact describes what this device trusts of another account.
type Contact struct {
	Name    string
	Devices []ContactDevice
}

// ContactDevice is one device of a contact.
type ContactDevice struct {
	DeviceID    string
	Fingerprint string
	FirstSeen   time.Time
}

// Contact returns what is known locally of name (ok false if nothing).
func (c *Client) Contact(name string) (ct Contact, ok bool, err error) {
	err = c.st.View(func(tx *store.Tx) error {
		sc, err := tx.Contact(name)
		if errors.Is(err, store.ErrNotFound) {
			return nil
		}
		if err != nil {
			return err
		}
		ok = true
		ct.Name = sc.Name
		for _, dev := range slices.Sorted(maps.Keys(sc.Devices)) {
			d := sc.Devices[dev]
			cd := ContactDevice{DeviceID: dev, FirstSeen: d.FirstSeen}
			if len(d.IdentityKey) > 0 {
				cd.Fingerprint = Fingerprint(d.IdentityKey)
			}
			ct.Devices = append(ct.Devices, cd)
		}
		return nil
	})
	return ct, ok, err
}
