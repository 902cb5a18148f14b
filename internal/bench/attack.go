// Copyright 2026 The Petrel Authors
// SPDX-License-Identifier: Apache-2.0

package bench

import (
	"bufio"
	"bytes"
	"context"
	"errors"
	"fmt"
	"io"
	"maps"
	"math/rand/v2"
	"net"
	"slices"
	"strconv"
	"strings"
	"sync"
	"sync/atomic"
	"time"
)

// ScenarioAttack is the hostile-client scenario: sockets that lie, flood, stall or never finish,
// against one server process whose memory is watched.
const ScenarioAttack = "attack"

// Attack kinds.
const (
	// AttackPipeline: authenticated sockets pipeline GetBundle requests (for a synthetic victim)
	// as fast as they can and never read an answer.
	AttackPipeline = "pipeline"
	// AttackPingFlood: WebSocket ping control frames on sockets that never authenticate and
	// never read (every ping asks for a pong).
	AttackPingFlood = "pingflood"
	// AttackBigAuth: large Auth frames (200 KB by default) on unauthenticated sockets.
	AttackBigAuth = "bigauth"
	// AttackSlowloris: sockets that send half an HTTP request head and hold it, adding a header
	// line now and then.
	AttackSlowloris = "slowloris"
	// AttackBigBody: unauthenticated POSTs with large bodies (64 MiB by default), sent as fast
	// as the server reads them, to /v1/admin/invites.
	AttackBigBody = "bigbody"
	// AttackSlowBody: unauthenticated POSTs to / whose large body trickles in (2 MiB/s per
	// socket by default).
	AttackSlowBody = "slowbody"
	// AttackUnmasked: client frames without the mask bit (RFC 6455 requires a close), pipelined
	// and unread.
	AttackUnmasked = "unmasked"
)

// Attacks lists the attack kinds.
var Attacks = []string{AttackPipeline, AttackPingFlood, AttackBigAuth, AttackSlowloris, AttackBigBody, AttackSlowBody, AttackUnmasked}

// Defaults and bounds of the attack scenario.
const (
	DefaultMaxServerRSS = 4 << 30 // stop the attack past 4 GiB of server RSS
	maxAttackConns      = 5000
	maxAttackDuration   = 10 * time.Minute
	rssEvery            = 100 * time.Millisecond
	trickleEvery        = 2 * time.Second // slowloris: a header line this often
	attackChunk         = 64 << 10        // bytes per write
)

// AttackConfig shapes the attack scenario (Config.Scenario "attack"). Conns is Config.Conns
// (default 1) and the attack lasts Config.Duration (default 10s). Zero values mean the defaults.
type AttackConfig struct {
	// Kind is one of Attacks. Required.
	Kind string
	// MaxServerRSS stops the attack as soon as the server's RSS crosses it, in bytes. Default:
	// DefaultMaxServerRSS (4 GiB).
	MaxServerRSS int64
	// Settle is how long the server is still sampled and probed after the attack stopped (RSS
	// is reported 5s and 30s after the stop). Default: 30s; < 0: none.
	Settle time.Duration
	// Baseline is how long the probe runs before the attack starts. Default: 2s.
	Baseline time.Duration
	// Reconnects is how often each attacking socket is opened again after the server closed it
	// or refused it (keeping the pressure on). Default: 200; < 0: never.
	Reconnects int
	// FrameBytes is the size of the attacking frames: the ping payload (pingflood, at most 125;
	// default 125), the encoded Auth frame (bigauth; default 200,000), the payload of each
	// unmasked frame (unmasked; default 125). Unused by the other kinds.
	FrameBytes int
	// BodyBytes is the declared body length of bigbody and slowbody POSTs. Default: 64 MiB.
	BodyBytes int64
	// BodyRate is slowbody's pace, bytes/s per socket. Default: 2 MiB/s.
	BodyRate int64
	// Path is the target of bigbody (default /v1/admin/invites) and slowbody (default /).
	Path string
	// Linger keeps the attacking sockets open, silent and unread, during Settle, instead of
	// closing them when the attack stops.
	Linger bool
	// ProbeTimeout bounds each probe operation. Default: 2s.
	ProbeTimeout time.Duration
}

func (a *AttackConfig) setDefaults() {
	if a.MaxServerRSS == 0 {
		a.MaxServerRSS = DefaultMaxServerRSS
	}
	if a.Settle == 0 {
		a.Settle = 30 * time.Second
	}
	if a.Baseline == 0 {
		a.Baseline = 2 * time.Second
	}
	if a.Reconnects == 0 {
		a.Reconnects = 200
	}
	if a.FrameBytes == 0 {
		a.FrameBytes = maxControlBytes
		if a.Kind == AttackBigAuth {
			a.FrameBytes = 200_000
		}
	}
	if a.BodyBytes == 0 {
		a.BodyBytes = 64 << 20
	}
	if a.BodyRate == 0 {
		a.BodyRate = 2 << 20
	}
	if a.Path == "" {
		a.Path = "/v1/admin/invites"
		if a.Kind == AttackSlowBody {
			a.Path = "/"
		}
	}
	if a.ProbeTimeout == 0 {
		a.ProbeTimeout = 2 * time.Second
	}
}

// validate reports the attack's problems (after defaults).
func (a *AttackConfig) validate(c *Config, bad func(format string, args ...any)) {
	if !slices.Contains(Attacks, a.Kind) {
		bad("attack %q: want one of %s", a.Kind, strings.Join(Attacks, ", "))
	}
	if len(c.Servers) != 1 {
		bad("attack targets exactly one server (got %d)", len(c.Servers))
	}
	if len(c.ServerPIDs) != 1 {
		bad("attack needs the server's process id (--server-pid): its RSS is the result, and the guard")
	}
	if c.Conns > min(maxAttackConns, c.MaxConnsPerProcess) {
		bad("attack conns %d: at most %d", c.Conns, min(maxAttackConns, c.MaxConnsPerProcess))
	}
	if c.Duration > maxAttackDuration {
		bad("attack duration %v: at most %v", c.Duration, maxAttackDuration)
	}
	if a.Settle > maxAttackDuration || a.Baseline > time.Minute {
		bad("settle %v (at most %v), baseline %v (at most 1m)", a.Settle, maxAttackDuration, a.Baseline)
	}
	if a.MaxServerRSS <= 0 {
		bad("max-server-rss must be positive")
	}
	if a.Reconnects > 100_000 {
		bad("reconnects %d: at most 100000", a.Reconnects)
	}
	switch {
	case a.FrameBytes <= 0 || a.FrameBytes > 16<<20:
		bad("frame-bytes %d: want 1 to %d", a.FrameBytes, 16<<20)
	case a.Kind == AttackPingFlood && a.FrameBytes > maxControlBytes:
		bad("frame-bytes %d: a ping carries at most %d bytes", a.FrameBytes, maxControlBytes)
	}
	if a.BodyBytes <= 0 || a.BodyBytes > 1<<30 {
		bad("body-bytes %d: want 1 to 1 GiB", a.BodyBytes)
	}
	if a.BodyRate <= 0 {
		bad("body-rate must be positive")
	}
	if !strings.HasPrefix(a.Path, "/") {
		bad("path %q: want an absolute path", a.Path)
	}
	if a.ProbeTimeout <= 0 {
		bad("probe timeout must be positive")
	}
}

// ParseSize parses a byte count: a number with an optional unit (B, KB, MB, GB: powers of 1000;
// KiB, MiB, GiB: powers of 1024), e.g. "4GiB", "200KB", "65536".
func ParseSize(s string) (int64, error) {
	s = strings.TrimSpace(s)
	i := len(s)
	for i > 0 && (s[i-1] < '0' || s[i-1] > '9') {
		i--
	}
	num, unit := s[:i], strings.ToLower(strings.TrimSpace(s[i:]))
	mult := map[string]int64{"": 1, "b": 1, "k": 1 << 10, "kb": 1000, "kib": 1 << 10, "m": 1 << 20, "mb": 1000 * 1000,
		"mib": 1 << 20, "g": 1 << 30, "gb": 1000 * 1000 * 1000, "gib": 1 << 30}[unit]
	n, err := strconv.ParseInt(num, 10, 64)
	if err != nil || mult == 0 || n < 0 || n > (1<<62)/mult {
		return 0, fmt.Errorf("size %q: want a number of bytes, e.g. 4GiB, 200KB or 65536", s)
	}
	return n * mult, nil
}

// attackRun is one attack: its sockets, counters and the reasons they ended.
type attackRun struct {
	r      *run
	a      *AttackConfig
	server string
	target *wsTarget
	d      *dialer
	nd     *net.Dialer
	accts  []account // pipeline: one authenticated device per socket
	victim string    // pipeline: the account whose bundle is requested

	chunk     []byte // ws kinds: the frames written again and again
	perChunk  int    // frames in chunk
	frameSize int    // bytes per frame in chunk

	opened, frames, bytes atomic.Int64

	mu       sync.Mutex // guards ended, failed, examples, socks, lingering
	ended    map[string]int64
	failed   map[string]int64
	examples map[string]string
	socks    map[*attackSock]struct{}
	lingered []net.Conn

	wg sync.WaitGroup
}

// attackSock is one open attacking socket.
type attackSock struct {
	conn     net.Conn
	progress atomic.Int64 // Unix ns of the last completed write
	writer   bool         // it attacks by writing (so it can stall on back-pressure)
}

// end counts why a socket ended.
func (at *attackRun) end(reason string) {
	at.mu.Lock()
	at.ended[reason]++
	at.mu.Unlock()
}

// fail counts a failed attempt to open an attacking socket.
func (at *attackRun) fail(reason string, err error) {
	at.mu.Lock()
	at.failed[reason]++
	if _, ok := at.examples[reason]; !ok && err != nil {
		at.examples[reason] = err.Error()
	}
	at.mu.Unlock()
}

func (at *attackRun) track(s *attackSock, on bool) {
	at.mu.Lock()
	if on {
		at.socks[s] = struct{}{}
	} else {
		delete(at.socks, s)
	}
	at.mu.Unlock()
}

// stalled counts open writing sockets whose last write completed before t (the server stopped
// reading them: TCP back-pressure).
func (at *attackRun) stalled(t time.Time) (open, stalled int64) {
	at.mu.Lock()
	defer at.mu.Unlock()
	for s := range at.socks {
		open++
		if s.writer && s.progress.Load() < t.UnixNano() {
			stalled++
		}
	}
	return open, stalled
}

// attacker runs socket i of the attack: open, attack until the server ends it, open again (up to
// Reconnects times) until ctx ends.
func (at *attackRun) attacker(ctx context.Context, i int) {
	defer at.wg.Done()
	fails := 0
	for try := 0; ctx.Err() == nil; try++ {
		if try > 0 && (at.a.Reconnects < 0 || try > at.a.Reconnects) {
			return
		}
		reason, opened := at.once(ctx, i)
		if ctx.Err() != nil {
			return
		}
		if !opened {
			// The server refused the socket: back off a little before the next attempt.
			fails++
			wait := min(time.Second, 20*time.Millisecond<<min(fails, 6))
			_ = sleepUntil(ctx, time.Now().Add(wait/2+rand.N(wait/2+1)))
			continue
		}
		fails = 0
		at.end(reason)
	}
}

// once opens one attacking socket and attacks until the server ends it (reason) or ctx ends
// (reason ""). opened is false when the socket could not be opened (counted in failed).
func (at *attackRun) once(ctx context.Context, i int) (reason string, opened bool) {
	switch at.a.Kind {
	case AttackPipeline:
		c, err := at.d.connect(ctx, &at.accts[i], at.server, newReport())
		if err != nil {
			var ce *connectError
			if errors.As(err, &ce) {
				at.fail(ce.reason, ce.err)
			} else {
				at.fail("error", err)
			}
			return "", false
		}
		at.opened.Add(1)
		return at.flood(ctx, c.cc.Conn, c.r.br), true
	case AttackPingFlood, AttackBigAuth, AttackUnmasked:
		conn, br, ok := at.upgrade(ctx)
		if !ok {
			return "", false
		}
		at.opened.Add(1)
		return at.flood(ctx, conn, br), true
	case AttackSlowloris:
		conn, ok := at.dial(ctx)
		if !ok {
			return "", false
		}
		at.opened.Add(1)
		return at.slowloris(ctx, conn), true
	case AttackBigBody, AttackSlowBody:
		conn, ok := at.dial(ctx)
		if !ok {
			return "", false
		}
		at.opened.Add(1)
		return at.body(ctx, conn), true
	}
	return "", false
}

// dial opens a TCP connection to the server.
func (at *attackRun) dial(ctx context.Context) (net.Conn, bool) {
	conn, err := at.nd.DialContext(ctx, "tcp", at.target.addr)
	if err != nil {
		if ctx.Err() == nil {
			at.fail(netError(err).reason, err)
		}
		return nil, false
	}
	return conn, true
}

// upgrade opens a WebSocket without authenticating: the Challenge is left unread.
func (at *attackRun) upgrade(ctx context.Context) (net.Conn, *bufio.Reader, bool) {
	conn, ok := at.dial(ctx)
	if !ok {
		return nil, nil, false
	}
	_ = conn.SetDeadline(time.Now().Add(at.r.cfg.ConnectTimeout))
	stop := context.AfterFunc(ctx, func() { _ = conn.SetDeadline(time.Unix(1, 0)) })
	defer stop()
	key, accept := newWSKey()
	if _, err := conn.Write(appendUpgrade(nil, at.target, key[:])); err != nil {
		conn.Close()
		if ctx.Err() == nil {
			at.fail(netError(err).reason, err)
		}
		return nil, nil, false
	}
	br := bufio.NewReaderSize(conn, readBufferSize)
	resp, err := readUpgradeResponse(br, accept[:])
	switch {
	case err != nil:
		conn.Close()
		if ctx.Err() == nil {
			at.fail(netError(err).reason, err)
		}
		return nil, nil, false
	case resp.status != 101:
		conn.Close()
		at.fail("http_"+strconv.Itoa(resp.status), fmt.Errorf("upgrade refused: HTTP %d", resp.status))
		return nil, nil, false
	}
	_ = conn.SetDeadline(time.Time{})
	return conn, br, true
}

// flood writes the attack's chunk of frames again and again, never reading, until a write fails
// (the server closed the socket) or ctx ends.
func (at *attackRun) flood(ctx context.Context, conn net.Conn, br *bufio.Reader) string {
	s := &attackSock{conn: conn, writer: true}
	s.progress.Store(time.Now().UnixNano())
	at.track(s, true)
	defer at.track(s, false)
	stop := context.AfterFunc(ctx, func() { _ = conn.SetWriteDeadline(time.Unix(1, 0)) })
	defer stop()
	var written int64 // bytes on this socket; frames are counted as whole frames written
	for {
		for off := 0; off < len(at.chunk); {
			n, err := conn.Write(at.chunk[off:min(len(at.chunk), off+attackChunk)])
			off += n
			before := written / int64(at.frameSize)
			written += int64(n)
			at.bytes.Add(int64(n))
			at.frames.Add(written/int64(at.frameSize) - before)
			if n > 0 {
				s.progress.Store(time.Now().UnixNano())
			}
			if err != nil {
				return at.finish(ctx, conn, br, err)
			}
		}
	}
}

// finish closes an attacking socket (or keeps it, with Linger, when the attack ended) and says
// why it ended: "" when ctx ended, else the close code the server sent, if it can be read
// quickly, or the write error.
func (at *attackRun) finish(ctx context.Context, conn net.Conn, br *bufio.Reader, werr error) string {
	if ctx.Err() != nil {
		at.keepOrClose(conn)
		return ""
	}
	defer conn.Close()
	reason := "write_" + netError(werr).reason
	if br == nil {
		return reason
	}
	// Look for a close frame behind whatever the server queued (bounded in time and frames).
	_ = conn.SetReadDeadline(time.Now().Add(250 * time.Millisecond))
	fr := frameReader{br: br, limit: readLimit}
	for range 100_000 {
		_, _, err := fr.next()
		fr.release()
		var ce *closeError
		if errors.As(err, &ce) {
			return "ws_close_" + strconv.Itoa(ce.code)
		}
		if err != nil {
			break
		}
	}
	return reason
}

// keepOrClose closes a socket at the end of the attack, or keeps it open (Linger) until Settle
// ends.
func (at *attackRun) keepOrClose(conn net.Conn) {
	if !at.a.Linger {
		conn.Close()
		return
	}
	at.mu.Lock()
	at.lingered = append(at.lingered, conn)
	at.mu.Unlock()
}

// closeLingering closes the sockets kept open by Linger.
func (at *attackRun) closeLingering() {
	at.mu.Lock()
	l := at.lingered
	at.lingered = nil
	at.mu.Unlock()
	for _, c := range l {
		c.Close()
	}
}

// slowloris sends half a request head and adds a header line every trickleEvery, reading what
// the server answers; it ends when the server answers or closes.
func (at *attackRun) slowloris(ctx context.Context, conn net.Conn) string {
	s := &attackSock{conn: conn}
	at.track(s, true)
	defer at.track(s, false)
	stop := context.AfterFunc(ctx, func() { _ = conn.SetDeadline(time.Unix(1, 0)) })
	defer stop()
	head := halfHeader(at.target)
	if _, err := conn.Write(head); err != nil {
		return at.finish(ctx, conn, nil, err)
	}
	at.bytes.Add(int64(len(head)))
	at.frames.Add(1)
	var buf [512]byte
	for line := 0; ; line++ {
		_ = conn.SetReadDeadline(time.Now().Add(trickleEvery))
		n, err := conn.Read(buf[:])
		if ctx.Err() != nil {
			at.keepOrClose(conn)
			return ""
		}
		if n > 0 {
			conn.Close()
			return httpReason(buf[:n])
		}
		var ne net.Error
		if !errors.As(err, &ne) || !ne.Timeout() {
			conn.Close()
			return "read_" + netError(err).reason
		}
		l := trickleLine(line)
		if _, err := conn.Write(l); err != nil {
			return at.finish(ctx, conn, nil, err)
		}
		at.bytes.Add(int64(len(l)))
		at.frames.Add(1)
	}
}

// httpReason names an HTTP answer by its status ("http_413"), or "answer" when it is not one.
func httpReason(b []byte) string {
	if rest, ok := bytes.CutPrefix(b, []byte("HTTP/1.")); ok && len(rest) >= 5 && rest[1] == ' ' {
		if code, err := strconv.Atoi(string(rest[2:5])); err == nil {
			return "http_" + strconv.Itoa(code)
		}
	}
	return "answer"
}

// body POSTs one request with a BodyBytes body to Path (bigbody: as fast as the server reads;
// slowbody: at BodyRate), and reads the answer. It ends when the server answers or closes.
func (at *attackRun) body(ctx context.Context, conn net.Conn) string {
	s := &attackSock{conn: conn, writer: true}
	s.progress.Store(time.Now().UnixNano())
	at.track(s, true)
	defer at.track(s, false)
	stop := context.AfterFunc(ctx, func() { _ = conn.SetDeadline(time.Unix(1, 0)) })
	defer stop()
	// The answer may come before the body is complete (a limit, or an early 401): a reader
	// watches for it, and the writer stops when it has come.
	answer := make(chan string, 1)
	var readers sync.WaitGroup
	readers.Add(1)
	go func() {
		defer readers.Done()
		var buf [512]byte
		n, err := io.ReadAtLeast(conn, buf[:], 12)
		switch {
		case n > 0:
			answer <- httpReason(buf[:n])
		default:
			answer <- "read_" + netError(err).reason
		}
	}()
	defer readers.Wait()
	head := postHead(at.target, at.a.Path, at.a.BodyBytes)
	if _, err := conn.Write(head); err != nil {
		return at.bodyEnd(ctx, conn, answer, err)
	}
	at.bytes.Add(int64(len(head)))
	start := time.Now()
	chunk := at.chunk
	if at.a.Kind == AttackSlowBody {
		chunk = chunk[:min(len(chunk), max(1, int(at.a.BodyRate/20)))] // ~20 writes a second
	}
	for sent := int64(0); sent < at.a.BodyBytes; {
		select {
		case why := <-answer:
			answer <- why
			return at.bodyEnd(ctx, conn, answer, nil)
		default:
		}
		if at.a.Kind == AttackSlowBody {
			due := start.Add(time.Duration(float64(sent) / float64(at.a.BodyRate) * float64(time.Second)))
			if err := sleepUntil(ctx, due); err != nil {
				return at.bodyEnd(ctx, conn, answer, err)
			}
		}
		n, err := conn.Write(chunk[:min(int64(len(chunk)), at.a.BodyBytes-sent)])
		sent += int64(n)
		at.bytes.Add(int64(n))
		if n > 0 {
			s.progress.Store(time.Now().UnixNano())
		}
		if err != nil {
			return at.bodyEnd(ctx, conn, answer, err)
		}
	}
	at.frames.Add(1) // a whole body
	return at.bodyEnd(ctx, conn, answer, nil)
}

// bodyEnd waits (briefly after a write error, else until ctx ends) for the server's answer,
// then closes the socket or keeps it (Linger).
func (at *attackRun) bodyEnd(ctx context.Context, conn net.Conn, answer chan string, werr error) string {
	wait := 24 * time.Hour // bounded by ctx
	if werr != nil {
		wait = 250 * time.Millisecond
	}
	t := time.NewTimer(wait)
	defer t.Stop()
	select {
	case why := <-answer:
		if ctx.Err() != nil {
			conn.Close()
			return ""
		}
		conn.Close()
		return why
	case <-t.C:
		conn.Close()
		return "write_" + netError(werr).reason
	case <-ctx.Done():
		// The reader must end before the socket is kept: stop it, and close unless lingering.
		if at.a.Linger {
			_ = conn.SetReadDeadline(time.Unix(1, 0))
			<-answer
			_ = conn.SetReadDeadline(time.Time{})
			at.keepOrClose(conn)
		} else {
			conn.Close()
		}
		return ""
	}
}

// prepare builds the chunk of frames (or body bytes) the sockets write.
func (at *attackRun) prepare() {
	key := rand.Uint32()
	one := func(f []byte) {
		at.frameSize = len(f)
		at.perChunk = max(1, attackChunk/len(f))
		at.chunk = make([]byte, 0, at.perChunk*len(f))
		for range at.perChunk {
			at.chunk = append(at.chunk, f...)
		}
	}
	switch at.a.Kind {
	case AttackPipeline:
		one(appendClientFrame(nil, opBinary, appendGetBundle(nil, 2, at.victim), key))
	case AttackPingFlood:
		one(appendPingControl(nil, at.a.FrameBytes, key))
	case AttackBigAuth:
		one(appendClientFrame(nil, opBinary, appendBigAuth(nil, 1, "AAAAAAAAAAAAAAAAAAAAAAAAAAAAAAAAAAAAAAAAAAA", at.a.FrameBytes), key))
	case AttackUnmasked:
		p := appendPing(nil, 2, 0)
		for len(p) < at.a.FrameBytes { // pad with an unknown field the decoder skips
			p = append(p, 0xf8, 0x07, 0x00) // field 127, varint 0
		}
		one(appendUnmaskedFrame(nil, opBinary, p))
	case AttackBigBody, AttackSlowBody:
		at.chunk = bytes.Repeat([]byte{'b'}, attackChunk)
		at.frameSize, at.perChunk = attackChunk, 1
	case AttackSlowloris:
		at.frameSize, at.perChunk = 1, 1
	}
}

// attack is the coordinator of the attack scenario: register the probe's devices (and the
// attacking ones), probe a baseline, attack for Duration (or until the guard trips), stop, and
// keep sampling and probing for Settle.
func (r *run) attack(ctx context.Context) error {
	cfg := r.cfg
	a := &cfg.Attack
	server := cfg.Servers[0]
	pid := cfg.ServerPIDs[0]
	target, err := parseTarget(server)
	if err != nil {
		return err
	}
	n := 3 // the probe: A sends to B, C connects now and then
	if a.Kind == AttackPipeline {
		n += 1 + cfg.Conns // a victim, and one device per attacking socket
	}
	accts, _, err := r.register(ctx, n, 0, false)
	if err != nil {
		return err
	}
	at := &attackRun{
		r: r, a: a, server: server, target: target,
		d:     newDialer("", 0, cfg.ConnectTimeout),
		nd:    &net.Dialer{Timeout: cfg.ConnectTimeout, KeepAlive: -1},
		ended: map[string]int64{}, failed: map[string]int64{}, examples: map[string]string{},
		socks: map[*attackSock]struct{}{},
	}
	if a.Kind == AttackPipeline {
		at.victim = accts[3].Name
		at.accts = accts[4:]
	}
	at.prepare()

	attackCtx, stopAttack := context.WithCancel(ctx)
	defer stopAttack()
	tripped := make(chan struct{})
	var tripOnce sync.Once
	sampler := newRSSSampler(pid, rssEvery, a.MaxServerRSS, func(reason string) {
		tripOnce.Do(func() {
			r.logf("server RSS guard: %s — stopping the attack", reason)
			close(tripped)
			stopAttack()
			at.closeLingering()
		})
	})
	sampler.start()
	samplerClosed := false
	defer func() {
		if !samplerClosed {
			sampler.close()
		}
	}()
	pr := newProbe(server, newDialer("", 0, a.ProbeTimeout), a.ProbeTimeout, &accts[0], &accts[1], &accts[2])
	pr.start(ctx)
	probeStopped := false
	defer func() {
		if !probeStopped {
			pr.stop()
		}
		at.closeLingering()
	}()
	r.logf("probing a baseline for %v …", a.Baseline)
	if err := sleepUntil(ctx, time.Now().Add(a.Baseline)); err != nil {
		return err
	}

	cl := &cluster{cfg: cfg}
	rssBefore := sampler.sample()
	start := time.Now()
	c0 := cl.sampleCPU()
	pr.phase.Store(phaseDuring)
	r.logf("attack %s: %d sockets for %v against %s (pid %d, RSS %s; guard %s) …",
		a.Kind, cfg.Conns, cfg.Duration, server, pid, fmtBytes(rssBefore), fmtBytes(a.MaxServerRSS))
	stopProgress := r.progress("attacking", cfg.Duration, func() string {
		open, _ := at.stalled(time.Now())
		return fmt.Sprintf("server RSS %s, %s frames (%s) sent, %d sockets open, %d opened, %s",
			fmtBytes(sampler.last()), groupDigits(strconv.FormatInt(at.frames.Load(), 10)), fmtBytes(at.bytes.Load()),
			open, at.opened.Load(), pr.line(phaseDuring))
	})
	for i := range cfg.Conns {
		at.wg.Add(1)
		go at.attacker(attackCtx, i)
	}
	tm := time.NewTimer(cfg.Duration)
	stoppedBy := "duration"
	select {
	case <-tm.C:
	case <-tripped:
		stoppedBy = "guard"
		if _, why, _ := sampler.trip(); why == "server_gone" {
			stoppedBy = "server_gone"
		}
	case <-ctx.Done():
		stoppedBy = "cancelled"
	}
	tm.Stop()
	stop := time.Now()
	open, stalled := at.stalled(stop.Add(-time.Second))
	stopAttack()
	at.wg.Wait()
	stopProgress()
	c1 := cl.sampleCPU()
	pr.phase.Store(phaseAfter)
	r.logf("attack stopped (%s) after %.1fs: server RSS %s; settling for %v …", stoppedBy, time.Since(start).Seconds(), fmtBytes(sampler.last()), a.Settle)
	if a.Settle > 0 {
		stopSettle := r.progress("settling", a.Settle, func() string {
			return fmt.Sprintf("server RSS %s, %s", fmtBytes(sampler.last()), pr.line(phaseAfter))
		})
		_ = sleepUntil(ctx, stop.Add(a.Settle))
		stopSettle()
	}
	end := time.Now()
	at.closeLingering()
	pr.stop()
	probeStopped = true
	sampler.close()
	samplerClosed = true
	if err := ctx.Err(); err != nil {
		return err
	}

	res := r.res
	res.set("attack", a.Kind, "")
	res.set("conns", int64(cfg.Conns), "attacking sockets")
	res.set("attack_s", stop.Sub(start).Seconds(), fmt.Sprintf("planned %v", cfg.Duration))
	res.set("stopped_by", stoppedBy, "duration, guard (server RSS past max_server_rss), server_gone or cancelled")
	res.set("stopped_at_guard", stoppedBy == "guard", "")
	res.set("max_server_rss_bytes", a.MaxServerRSS, "the guard")
	if tr, why, when := sampler.trip(); tr {
		res.set("guard_tripped_at_s", when.Sub(start).Seconds(), why+", from the start of the attack (after attack_s: while settling, sockets closed)")
	} else {
		res.set("guard_tripped_at_s", nil, "never")
	}
	res.set("opened", at.opened.Load(), "attacking sockets opened (reconnects included)")
	unit := "frames written whole"
	switch a.Kind {
	case AttackSlowloris:
		unit = "request-head pieces written (the first half, then a header line each)"
	case AttackBigBody, AttackSlowBody:
		unit = "bodies written whole"
	}
	res.set("frames_sent", at.frames.Load(), unit)
	res.set("bytes_sent", at.bytes.Load(), "")
	res.set("frame_bytes", int64(at.frameSize), "bytes per frame (ws kinds) or per write")
	at.mu.Lock()
	ended := maps.Clone(at.ended)
	failed := maps.Clone(at.failed)
	examples := at.examples
	at.mu.Unlock()
	res.set("ended", sumMap(ended), "attacking sockets the server ended (answered, closed, reset) during the attack")
	res.set("ended_reasons", ended, "ws_close_CODE: close frame; http_STATUS: an answer; write_/read_: the socket failed")
	res.set("open_at_stop", open, "attacking sockets open when the attack stopped")
	if a.Kind == AttackSlowloris {
		res.set("stalled_at_stop", nil, "slowloris writes rarely by design")
	} else {
		res.set("stalled_at_stop", stalled, "of those, sockets with no write completed in the last second (the server stopped reading)")
	}
	res.set("open_failures", sumMap(failed), "attempts to open an attacking socket that failed")
	res.set("open_failure_reasons", failed, "")
	for _, k := range sortedKeys(failed) {
		r.logf("attacking socket refused %s, e.g.: %s", k, examples[k])
	}

	res.set("server_rss_before_bytes", rssBefore, "right before the attack")
	if pk, ok := sampler.peak(start, stop.Add(rssEvery)); ok {
		res.set("server_rss_peak_bytes", pk.rss, "highest reading during the attack (every 100 ms)")
		res.set("server_rss_peak_at_s", pk.at.Sub(start).Seconds(), "when, from the start of the attack")
		res.set("server_rss_growth_bytes", pk.rss-rssBefore, "peak - before")
		res.set("server_rss_growth_per_conn_bytes", (pk.rss-rssBefore)/int64(cfg.Conns), "")
	} else {
		for _, k := range []string{"server_rss_peak_bytes", "server_rss_peak_at_s", "server_rss_growth_bytes", "server_rss_growth_per_conn_bytes"} {
			res.set(k, nil, "no reading")
		}
	}
	for _, after := range []time.Duration{5 * time.Second, 30 * time.Second} {
		key := fmt.Sprintf("server_rss_after_%ds_bytes", int(after.Seconds()))
		if v, ok := sampler.at(stop.Add(after), time.Second); ok {
			res.set(key, v, fmt.Sprintf("%v after the attack stopped", after))
		} else {
			res.set(key, nil, "settle shorter than that")
		}
	}
	if pk, ok := sampler.peak(stop.Add(rssEvery), end.Add(time.Second)); ok {
		res.set("server_rss_peak_after_bytes", pk.rss, "highest reading after the attack stopped (still climbing?)")
	} else {
		res.set("server_rss_peak_after_bytes", nil, "no settle")
	}
	res.set("server_rss_end_bytes", sampler.last(), "at the end of the settle")
	res.set("server_rss_mib_by_s", sampler.perSecondMiB(start.Add(-a.Baseline), end), "highest reading of each second, MiB, from the baseline on")

	r.addCPU(c0.to(c1), -1)

	for op := range opProbeCount {
		s := &pr.stats[phaseDuring][op]
		name := probeOpNames[op]
		res.set("probe_"+name+"_ok", s.ok.Load(), "during the attack")
		res.set("probe_"+name+"_failed", s.failed.Load(), "")
		res.set("probe_"+name+"_p99_ms", msOrNil(s.lat, 0.99), "")
		res.set("probe_"+name+"_max_ms", msOrNil(s.lat, 1), "")
		res.set("probe_"+name+"_before_p99_ms", msOrNil(pr.stats[phaseBefore][op].lat, 0.99), "baseline, before the attack")
	}
	var afterOK, afterFailed int64
	for op := range opProbeCount {
		afterOK += pr.stats[phaseAfter][op].ok.Load()
		afterFailed += pr.stats[phaseAfter][op].failed.Load()
	}
	res.set("probe_after_ok", afterOK, "every probe operation during the settle")
	res.set("probe_after_failed", afterFailed, "")
	res.set("probe_failure_reasons", pr.failureReasons(), "all phases, by operation and reason")
	errs := map[string]int64{}
	if stoppedBy == "server_gone" {
		errs["server_gone"] = 1
	}
	res.set("errors", sumMap(errs), "the bench's own trouble (attacking sockets the server refused are open_failures)")
	res.set("error_reasons", errs, "")
	return nil
}

// line is the probe's progress for a phase: successes and failures of each operation.
func (p *probe) line(phase int) string {
	var parts []string
	for op := range opProbeCount {
		s := &p.stats[phase][op]
		parts = append(parts, fmt.Sprintf("%s %d/%d", probeOpNames[op], s.ok.Load(), s.ok.Load()+s.failed.Load()))
	}
	return "probe ok " + strings.Join(parts, " ")
}

func msOrNil(h *hist, q float64) any {
	if h.Count() == 0 {
		return nil
	}
	return ms(h.Quantile(q))
}

// fmtBytes prints a byte count for people (MiB or GiB, one decimal).
func fmtBytes(n int64) string {
	switch {
	case n >= 1<<30:
		return strconv.FormatFloat(float64(n)/(1<<30), 'f', 2, 64) + " GiB"
	case n >= 1<<20:
		return strconv.FormatFloat(float64(n)/(1<<20), 'f', 1, 64) + " MiB"
	case n >= 1<<10:
		return strconv.FormatFloat(float64(n)/(1<<10), 'f', 1, 64) + " KiB"
	}
	return strconv.FormatInt(n, 10) + " B"
}
