// Copyright 2026 The Petrel Authors
// SPDX-License-Identifier: Apache-2.0

package main

import (
	"bufio"
	"context"
	"encoding/json"
	"errors"
	"fmt"
	"io"
	"net"
	"os"
	"strings"
	"sync"
	"time"

	"github.com/petrelchat/petrel/client"
	"github.com/petrelchat/petrel/client/store"
)

// The client commands: register, send, recv, chat, whoami, safety-number. Each opens the home's
// store (one process at a time), does its work through the client SDK and exits 0 on success,
// 1 on failure and 2 on a usage error. Errors go to stderr as "petrel CMD: message".

// clientTuning lets tests shorten the client's timers; zero values mean the SDK defaults.
var clientTuning client.Config

// storeOpened, when not nil (tests only), sees each store a client command opens, so an
// in-process test can copy it at a chosen point as a kill -9 there would leave it.
var storeOpened func(*store.Store)

// maxLineBytes bounds one line read from standard input.
const maxLineBytes = 1 << 20

func fail(e *env, cmd string, err error) int {
	fmt.Fprintf(e.stderr, "petrel %s: %s\n", cmd, describe(err))
	return 1
}

func usageErr(e *env, cmd, format string, args ...any) int {
	fmt.Fprintf(e.stderr, "petrel %s: %s\n", cmd, fmt.Sprintf(format, args...))
	fmt.Fprintf(e.stderr, "Run 'petrel %s --help' for usage.\n", cmd)
	return 2
}

// describe turns SDK errors into messages a user can act on, escaped for the terminal (an error
// may carry a server's text).
func describe(err error) string { return sanitize(describeErr(err)) }

func describeErr(err error) string {
	if d := describeUserErr(err); d != "" { // errors_cli.go
		return d
	}
	if d := describeDeviceErr(err); d != "" {
		return d
	}
	if d := describeGroupErr(err); d != "" {
		return d
	}
	var netErr *net.OpError
	switch {
	case errors.Is(err, client.ErrNameTaken):
		return "that name is taken; choose another"
	case errors.Is(err, client.ErrInvalidName):
		return err.Error() + " (names are 1-32 of a-z 0-9 _ . -, starting with a letter or digit)"
	case errors.Is(err, client.ErrInvalidInvite):
		return "this server needs a valid invite code (--invite CODE): " + err.Error()
	case errors.Is(err, client.ErrRegistrationClosed):
		return "registration is closed on this server"
	case errors.Is(err, client.ErrNotRegistered):
		return err.Error()
	case errors.Is(err, client.ErrConnectedElsewhere):
		return "this device connected from another petrel process, which took over: " + err.Error()
	case errors.Is(err, client.ErrAuthFailed):
		return "the server does not accept this device any more (it was removed from its account, or the account was recovered on another device): " +
			err.Error() + "; use 'petrel link' on a fresh --home to add this computer again"
	case errors.As(err, &netErr):
		return "server unreachable: " + err.Error()
	}
	return err.Error()
}

// openStore opens the home (creating it only for register); the caller closes it.
func openStore(e *env, create bool) (*store.Store, error) {
	st, err := store.Open(e.home, store.Options{MustExist: !create})
	if errors.Is(err, store.ErrNoHome) {
		return nil, fmt.Errorf("%w: %s", client.ErrNotRegistered, e.home)
	}
	if err == nil && storeOpened != nil {
		storeOpened(st)
	}
	return st, err
}

// clientSession is an open client running in the background; its events go to a handler.
type clientSession struct {
	st     *store.Store
	c      *client.Client
	events chan client.Event
	runErr chan error // Run's result, buffered
	wg     sync.WaitGroup
	// barrier: handed's requests; the event goroutine closes each once it has handled every
	// event queued before the request.
	barrier chan chan struct{}
}

// startClient opens the store and the client, calls before (if not nil) and then starts Run.
// handle receives every event on the event goroutine (it may be nil).
func startClient(ctx context.Context, e *env, before func(*client.Client) error, handle func(client.Event)) (*clientSession, error) {
	st, err := openStore(e, false)
	if err != nil {
		return nil, err
	}
	s := &clientSession{st: st, events: make(chan client.Event, 64), runErr: make(chan error, 1), barrier: make(chan chan struct{})}
	cfg := clientTuning
	cfg.Store = st
	cfg.Events = s.events
	cfg.FailFast = true
	c, err := client.Open(cfg)
	if err != nil {
		st.Close()
		return nil, err
	}
	s.c = c
	e.account = c.Account().Name
	if before != nil {
		if err := before(c); err != nil {
			st.Close()
			return nil, err
		}
	}
	s.wg.Add(2)
	go func() {
		defer s.wg.Done()
		for {
			select {
			case ev, ok := <-s.events:
				if !ok {
					return
				}
				if handle != nil {
					handle(ev)
				}
			case done := <-s.barrier:
				for n := len(s.events); n > 0; n-- {
					if ev, ok := <-s.events; ok && handle != nil {
						handle(ev)
					}
				}
				close(done)
			}
		}
	}()
	go func() {
		defer s.wg.Done()
		s.runErr <- c.Run(ctx)
	}()
	return s, nil
}

// handed waits until every event the client emitted before the call has been handed to the
// handler (events pass through a buffered channel to the event goroutine). The caller must not
// be the one the handler may wait on.
func (s *clientSession) handed(ctx context.Context) {
	done := make(chan struct{})
	select {
	case s.barrier <- done:
	case <-ctx.Done():
		return
	}
	select {
	case <-done:
	case <-ctx.Done():
	}
}

// close stops the client, waits for its goroutines, and closes the store.
func (s *clientSession) close() {
	s.c.Close()
	// Run has returned (Close waits), so nothing emits any more.
	close(s.events)
	s.wg.Wait()
	s.st.Close()
}

// devicesChangedLine describes a change of an account's device list.
func devicesChangedLine(e *env, cmd string, ev *client.DevicesChanged) string {
	var parts []string
	if len(ev.Added) > 0 {
		parts = append(parts, "added "+strings.Join(ev.Added, ", "))
	}
	if len(ev.Removed) > 0 {
		parts = append(parts, "removed "+strings.Join(ev.Removed, ", "))
	}
	what := strings.Join(parts, "; ")
	if ev.Name == e.account {
		return fmt.Sprintf("petrel %s: this account's devices changed (%s); your safety numbers changed", cmd, what)
	}
	return fmt.Sprintf("petrel %s: warning: %s's devices changed (%s); your safety number with %s changed, check it with 'petrel safety-number %s'",
		cmd, ev.Name, what, ev.Name, ev.Name)
}

// warnEvent prints identity changes and dropped messages to stderr (escaped: names, device ids
// and error texts come from the network).
func warnEvent(e *env, cmd string, ev client.Event) {
	var line string
	switch ev := ev.(type) {
	case *client.IdentityChanged:
		if ev.NewDevice {
			line = fmt.Sprintf("petrel %s: warning: %s has a new device %s (fingerprint %s); your safety number with %s changed, check it with 'petrel safety-number %s'",
				cmd, ev.Name, ev.DeviceID, ev.NewFingerprint, ev.Name, ev.Name)
		} else {
			line = fmt.Sprintf("petrel %s: WARNING: the identity key of %s (device %s) CHANGED from %s to %s; your safety number with %s changed, verify it with 'petrel safety-number %s'",
				cmd, ev.Name, ev.DeviceID, ev.OldFingerprint, ev.NewFingerprint, ev.Name, ev.Name)
		}
	case *client.DecryptFailed:
		line = fmt.Sprintf("petrel %s: warning: could not decrypt message %s from %s (device %s): %v",
			cmd, ev.MessageID, ev.From, ev.FromDevice, ev.Err)
	case *client.SendFailed:
		line = fmt.Sprintf("petrel %s: message %s to %s failed: %s", cmd, ev.MessageID, ev.To, describe(ev.Err))
	case *client.DevicesChanged:
		line = devicesChangedLine(e, cmd, ev)
	case *client.HistoryReceived:
		line = fmt.Sprintf("petrel %s: history: chunk %d from device %s, %d messages", cmd, ev.Chunk, ev.FromDevice, ev.Messages)
	default:
		return
	}
	fmt.Fprintln(e.stderr, sanitize(line))
}

func runRegister(ctx context.Context, e *env, args []string) int {
	const cmd = "register"
	fs := newFlags(e, cmd, "register --server URL[,URL...] --name NAME [--invite CODE]\n\n"+
		"Creates this device's keys in the home directory and registers a new account.\n"+
		"URL is http://HOST:PORT or https://HOST[:PORT]; give a cluster's nodes separated by\n"+
		"commas: registration goes to the first that answers, and send, recv and chat use them\n"+
		"all (and the nodes the servers name), moving to another when one fails. A home holds\n"+
		"one registered device: use another --home for another account.")
	server := fs.String("server", "", "server base URL (http://HOST:PORT or https://HOST), or several separated by commas")
	name := fs.String("name", "", "account name: 1-32 of a-z 0-9 _ . -, starting with a letter or digit")
	invite := fs.String("invite", "", "invite code, when the server's registration is invite-only")
	if code, ok := parseFlags(fs, args); !ok {
		return code
	}
	if fs.NArg() > 0 {
		return usageErr(e, cmd, "unexpected argument %q", fs.Arg(0))
	}
	if *server == "" || *name == "" {
		return usageErr(e, cmd, "--server and --name are required")
	}
	urls, code := checkServerURLs(e, cmd, *server) // errors_cli.go
	if code != 0 {
		return code
	}
	n, _ := normalizeName(e, cmd, *name)
	st, err := openStore(e, true)
	if err != nil {
		return fail(e, cmd, err)
	}
	defer st.Close()
	opts := client.RegisterOptions{ServerURL: urls[0], ServerURLs: urls[1:], Name: n, Invite: *invite}
	acct, err := client.Register(ctx, st, opts)
	if err != nil {
		return fail(e, cmd, err)
	}
	fmt.Fprintf(e.stdout, "registered %s on %s\ndevice id:   %s\nfingerprint: %s\n", acct.Name, sanitize(strings.Join(acct.Servers, ", ")), acct.DeviceID, acct.Fingerprint)
	printRecoveryKey(e, acct.RecoveryKey) // recovery_cmds.go
	return 0
}

func runSend(ctx context.Context, e *env, args []string) int {
	const cmd = "send"
	fs := newFlags(e, cmd, "send [--timeout DURATION] --to NAME TEXT... | send --to NAME - | send --group GROUP TEXT... | send --group GROUP -\n\n"+
		"Sends TEXT (the arguments joined by spaces), or with '-' each non-empty line of standard\n"+
		"input as one message, in order, to account NAME or to group GROUP (its local name, see\n"+
		"petrel group list). Prints each message id once the server has acked it.")
	to := fs.String("to", "", "recipient account name")
	group := fs.String("group", "", "recipient group (local name or id)")
	timeout := fs.Duration("timeout", 30*time.Second, "how long to wait for the server's ack of each message")
	if code, ok := parseFlags(fs, args); !ok {
		return code
	}
	if (*to == "") == (*group == "") {
		return usageErr(e, cmd, "give exactly one of --to and --group")
	}
	if *to != "" {
		*to, _ = normalizeName(e, cmd, *to)
	}
	if fs.NArg() == 0 {
		return usageErr(e, cmd, "nothing to send: give TEXT or - for standard input")
	}
	fromStdin := fs.NArg() == 1 && fs.Arg(0) == "-"
	text := strings.Join(fs.Args(), " ")
	if !fromStdin && strings.TrimSpace(text) == "" {
		return usageErr(e, cmd, "empty message")
	}
	s, err := startClient(ctx, e, nil, func(ev client.Event) { warnEvent(e, cmd, ev) })
	if err != nil {
		return fail(e, cmd, err)
	}
	defer s.close()

	if *group != "" {
		gctx, cancel := context.WithTimeout(ctx, *timeout)
		err := s.c.SyncGroups(gctx)
		cancel()
		if err != nil {
			return fail(e, cmd, err)
		}
	}
	send := func(text string) error {
		sctx, cancel := context.WithTimeout(ctx, *timeout)
		defer cancel()
		var id string
		var err error
		if *group != "" {
			id, err = s.c.SendGroup(sctx, *group, text)
		} else {
			id, err = s.c.Send(sctx, *to, text)
		}
		if errors.Is(err, client.ErrUnknownUser) {
			return fmt.Errorf("unknown user %q", *to)
		}
		if err != nil {
			queuedHint(e, cmd, s.st, id, err) // history_cmds.go
			return err
		}
		fmt.Fprintln(e.stdout, id)
		return nil
	}
	if !fromStdin {
		if err := send(text); err != nil {
			return fail(e, cmd, err)
		}
		return 0
	}
	sc := bufio.NewScanner(e.stdin)
	sc.Buffer(make([]byte, 0, 64<<10), maxLineBytes)
	for sc.Scan() {
		line := strings.TrimSuffix(sc.Text(), "\r")
		if strings.TrimSpace(line) == "" {
			continue
		}
		if err := send(line); err != nil {
			return fail(e, cmd, err)
		}
	}
	if err := sc.Err(); err != nil {
		return fail(e, cmd, fmt.Errorf("read standard input: %w", err))
	}
	return 0
}

// jsonMessage is one line of recv --json. Direction is "in" for a received message and "out" for
// one this account sent from another of its devices (From is then this account, To the recipient).
type jsonMessage struct {
	Type       string `json:"type"` // "message" (receipts and timer changes: recv_extras.go)
	ID         string `json:"id"`
	From       string `json:"from"`
	FromDevice string `json:"from_device"`
	Text       string `json:"text"`
	SentAt     string `json:"sent_at"`
	ServerTime string `json:"server_time"`
	ReceivedAt string `json:"received_at"`
	Direction  string `json:"direction"`
	To         string `json:"to,omitempty"`
	// Group is the local name of the group of a group message (group_cmds.go).
	Group string `json:"group,omitempty"`
	// ExpiresIn is a disappearing message's timer in seconds (absent: none).
	ExpiresIn int64 `json:"expires_in,omitempty"`
}

// messageLine is the text form of a message: "NAME: TEXT", or "NAME -> PEER: TEXT" for one this
// account sent from another device (escaped for the terminal).
func messageLine(m *client.Message) string {
	if m.Timer {
		return timerLine(m) // settings_cmds.go
	}
	if m.Outgoing {
		return fmt.Sprintf("%s -> %s: %s", sanitize(m.From), sanitize(m.To), sanitize(m.Text))
	}
	return fmt.Sprintf("%s: %s", sanitize(m.From), sanitize(m.Text))
}

const rfc3339Milli = "2006-01-02T15:04:05.000Z07:00"

func formatTime(t time.Time) string {
	if t.IsZero() {
		return ""
	}
	return t.UTC().Format(rfc3339Milli)
}

// printer writes received messages, as text or JSON lines, each at most once.
type printer struct {
	e    *env
	c    *client.Client
	json bool
	mu   sync.Mutex // serialises output lines
}

// print shows m unless it was shown before. It claims m in the store (a committed transaction)
// before writing it, never after: a kill -9 before the claim leaves m unseen for the next
// command, and one after it leaves m seen, so no kill point makes a message appear twice.
func (p *printer) print(m *client.Message) error {
	p.mu.Lock()
	defer p.mu.Unlock()
	var line string
	if p.json && m.GroupEvent != nil {
		b, err := groupEventJSON(p.c, m)
		if err != nil {
			return err
		}
		line = string(escapeJSONInvisible(b))
	} else if p.json {
		jm := jsonMessage{Type: "message", ID: m.ID, From: m.From, FromDevice: m.FromDevice, Text: m.Text, Direction: "in",
			SentAt: formatTime(m.SentAt), ServerTime: formatTime(m.ServerTime), ReceivedAt: formatTime(m.ReceivedAt),
			ExpiresIn: int64(m.ExpiresIn / time.Second)}
		if m.Outgoing {
			jm.Direction, jm.To = "out", m.To
		}
		if m.Group != "" {
			jm.Group = p.c.GroupName(m.Group)
		}
		var v any = jm
		if m.Timer {
			v = timerJSON(p.c, m) // recv_extras.go
		}
		b, err := json.Marshal(v)
		if err != nil {
			return err
		}
		line = string(escapeJSONInvisible(b))
	} else {
		line = messageText(p.c, m)
	}
	if claimed, err := p.c.ClaimSeen(m.Seq); err != nil || !claimed {
		return err
	}
	if _, err := fmt.Fprintf(p.e.stdout, "%s\n", line); err != nil {
		return err
	}
	return p.c.MarkRead(m) // printed counts as read (a read receipt unless they are off)
}

func runRecv(ctx context.Context, e *env, args []string) int {
	const cmd = "recv"
	fs := newFlags(e, cmd, "recv [--wait DURATION] [--json] [--timeout DURATION]\n\n"+
		"Receives every pending message, then keeps waiting until DURATION passes with nothing\n"+
		"new. Prints 'NAME: TEXT' per message ('ME -> NAME: TEXT' for one this account sent from\n"+
		"another device), or with --json one JSON object per line with id, from, from_device,\n"+
		"text, sent_at, server_time, received_at (RFC 3339, ms), direction (\"in\" or \"out\")\n"+
		"and, for \"out\", to. Group messages print as '[GROUP] NAME: TEXT' (JSON: a group\n"+
		"field, the group's local name); membership changes as '[GROUP] alice added carol'\n"+
		"(JSON: type \"group_event\", group, group_id, actor, action, targets, version, text,\n"+
		"received_at).")
	wait := fs.Duration("wait", 2*time.Second, "how long to wait for more messages after the backlog (restarts at each message)")
	asJSON := fs.Bool("json", false, "print one JSON object per message")
	timeout := fs.Duration("timeout", 30*time.Second, "how long to wait for the server to deliver the backlog")
	if code, ok := parseFlags(fs, args); !ok {
		return code
	}
	if fs.NArg() > 0 {
		return usageErr(e, cmd, "unexpected argument %q", fs.Arg(0))
	}
	if *wait < 0 {
		return usageErr(e, cmd, "--wait must not be negative")
	}
	msgs := make(chan client.Event, 16) // messages and receipts, printed in the order they came
	queueEmpty := make(chan struct{}, 1)
	ctx, cancel := context.WithCancel(ctx)
	defer cancel()
	p := &printer{e: e, json: *asJSON}
	// Messages received earlier (for example by 'petrel send') but never shown, printed before
	// the connection brings new ones.
	showUnseen := func(c *client.Client) error {
		p.c = c
		for {
			unseen, err := c.Unseen(256)
			if err != nil || len(unseen) == 0 {
				return err
			}
			for _, m := range unseen {
				if err := p.print(m); err != nil {
					return err
				}
			}
		}
	}
	s, err := startClient(ctx, e, showUnseen, func(ev client.Event) {
		switch ev := ev.(type) {
		case *client.Message:
			select {
			case msgs <- ev:
			case <-ctx.Done():
			}
		case *client.QueueEmpty:
			select {
			case queueEmpty <- struct{}{}:
			default:
			}
		case *client.Delivered, *client.Read:
			if *asJSON {
				select {
				case msgs <- ev:
				case <-ctx.Done():
				}
			}
		default:
			warnEvent(e, cmd, ev)
		}
	})
	if err != nil {
		return fail(e, cmd, err)
	}
	// Unblock the event handler before closing (it may wait to hand over a message).
	defer func() { cancel(); s.close() }()
	var timer <-chan time.Time
	var t *time.Timer
	restart := func() {
		if t == nil {
			t = time.NewTimer(*wait)
			timer = t.C
			return
		}
		t.Reset(*wait)
	}
	defer func() {
		if t != nil {
			t.Stop()
		}
	}()
	printEvent := func(ev client.Event) error {
		if m, ok := ev.(*client.Message); ok {
			return p.print(m)
		}
		return p.printReceipt(ev) // recv_extras.go
	}
	started := false
	var synced chan error // set while the group changes of the backlog are being applied
	backlog := time.NewTimer(*timeout)
	defer backlog.Stop()
	for {
		select {
		case <-backlog.C:
			if !started {
				err := s.c.LastError()
				if err == nil {
					err = errors.New("the server did not deliver the backlog")
				}
				return fail(e, cmd, fmt.Errorf("no answer within %v: %w", *timeout, err))
			}
		case ev := <-msgs:
			if err := printEvent(ev); err != nil {
				return fail(e, cmd, err)
			}
			if started {
				restart()
			}
		case <-queueEmpty:
			if !started && synced == nil {
				// The backlog is here; group changes in it may still wait for the group's
				// state from the server (a group this device has not seen yet): apply them
				// before the wait starts, so that what was pending is shown now.
				ch := make(chan error, 1)
				synced = ch
				go func() {
					sctx, scancel := context.WithTimeout(ctx, *timeout)
					defer scancel()
					err := s.c.SyncGroups(sctx)
					// What applying them showed must reach msgs before the wait starts: with
					// --wait 0 the loop leaves at once (seen under load: a group change missed).
					s.handed(ctx)
					ch <- err
				}()
			}
		case err := <-synced:
			synced = nil
			if err != nil && ctx.Err() == nil {
				fmt.Fprintf(e.stderr, "petrel %s: warning: some group changes are not applied yet (they will be next time): %s\n", cmd, describe(err))
			}
			if !started {
				started = true
				restart()
			}
		case <-timer:
			// What was handed over already is shown before leaving (select picks the timer
			// at random among ready cases).
			for more := true; more; {
				select {
				case ev := <-msgs:
					if err := printEvent(ev); err != nil {
						return fail(e, cmd, err)
					}
				default:
					more = false
				}
			}
			// Let the delivery receipts (and anything else queued) reach the server.
			fctx, fcancel := context.WithTimeout(ctx, 5*time.Second)
			err := s.c.Flush(fctx)
			fcancel()
			if err != nil {
				fmt.Fprintf(e.stderr, "petrel %s: warning: receipts not sent yet (they will be next time): %s\n", cmd, describe(err))
			}
			return 0
		case err := <-s.runErr:
			if err == nil {
				err = ctx.Err()
			}
			if err == nil {
				err = client.ErrClosed
			}
			return fail(e, cmd, err)
		}
	}
}

func runChat(ctx context.Context, e *env, args []string) int {
	const cmd = "chat"
	fs := newFlags(e, cmd, "chat NAME | chat --group GROUP\n\n"+
		"Interactive chat with NAME (or in group GROUP): each line you type is sent; incoming\n"+
		"messages appear as 'NAME: TEXT' ('[GROUP] NAME: TEXT' in groups) above the line you are\n"+
		"typing. /quit or end of input (Ctrl-D) exits. Works with a pipe as standard input too.")
	group := fs.String("group", "", "chat in this group (local name or id) instead of with one account")
	if code, ok := parseFlags(fs, args); !ok {
		return code
	}
	if *group == "" && fs.NArg() != 1 || *group != "" && fs.NArg() != 0 {
		return usageErr(e, cmd, "want exactly one NAME, or --group GROUP")
	}
	peer := fs.Arg(0)
	if *group != "" {
		peer = *group
	} else {
		peer, _ = normalizeName(e, cmd, peer)
	}
	ctx, cancel := context.WithCancel(ctx)
	defer cancel()

	tty := isTerminal(e.stdin)
	// On an interactive terminal a line editor keeps what you are typing on screen while messages
	// arrive; everything the command prints goes through it.
	var ct *chatTerminal
	screen := e.stdout
	if f, ok := e.stdin.(*os.File); ok && tty && isTerminal(e.stdout) {
		if t, err := openChatTerminal(f, e.stdout, "> "); err == nil {
			ct = t
			defer ct.Close()
			onTerm := *e
			onTerm.stdout, onTerm.stderr = ct, ct
			e = &onTerm
		}
	}
	var outMu sync.Mutex // serialises the screen
	prompt := func() {
		if tty && ct == nil {
			fmt.Fprint(e.stdout, "> ")
		}
	}
	// show prints one line above the prompt (redrawing it on a terminal), escaped (sanitize).
	show := func(line string) {
		outMu.Lock()
		defer outMu.Unlock()
		if tty && ct == nil {
			fmt.Fprint(e.stdout, "\r\033[K")
		}
		fmt.Fprintln(e.stdout, sanitize(line)) // one line, whatever the network sent
		prompt()
	}
	var s *clientSession
	var x *chatExtras      // marks, typing, presence (chat_extras.go)
	var outageState outage // one line per outage, not per retry
	ready := make(chan struct{})
	handle := func(ev client.Event) {
		<-ready
		if x.event(ev) {
			return
		}
		switch ev := ev.(type) {
		case *client.Message:
			if !x.isOurs(ev) {
				show(x.elsewhere(ev)) // left unseen, counted (chat_filter.go)
				return
			}
			// Claimed before it is shown, as in printer.print: never shown twice.
			if claimed, err := s.c.ClaimSeen(ev.Seq); err != nil {
				show(fmt.Sprintf("petrel %s: %s", cmd, describe(err)))
			} else if claimed {
				show(messageText(s.c, ev))
				x.shown(ev)
			}
		case *client.IdentityChanged, *client.DecryptFailed, *client.SendFailed, *client.DevicesChanged:
			outMu.Lock()
			warnEvent(e, cmd, ev)
			outMu.Unlock()
		case *client.Disconnected, *client.Connected:
			if line := outageState.line(ev); line != "" { // errors_cli.go
				show(line)
			}
		}
	}
	showUnseen := func(c *client.Client) error {
		// Only this conversation's; the others stay unseen and are counted once each.
		pick := &chatExtras{c: c, peer: peer, isGroup: *group != ""}
		var order []string
		counts := map[string]int{}
		notes := map[string][2]string{}
		defer func() {
			for _, k := range order {
				show(otherNotice(counts[k], notes[k][0], notes[k][1]))
			}
		}()
		// Paged by seq: the others' messages stay unseen, so a page full of them must not hide
		// this conversation's older ones behind it.
		var after uint64
		for {
			unseen, err := c.UnseenAfter(after, unseenScan)
			if err != nil || len(unseen) == 0 {
				return err
			}
			for _, m := range unseen {
				after = m.Seq
				if !pick.isOurs(m) {
					key, what, open := otherConv(c, m)
					if counts[key] == 0 {
						order = append(order, key)
						notes[key] = [2]string{what, open}
					}
					counts[key]++
					continue
				}
				if claimed, err := c.ClaimSeen(m.Seq); err != nil {
					return err
				} else if claimed {
					show(messageText(c, m))
					if err := c.MarkRead(m); err != nil {
						return err
					}
				}
			}
			if len(unseen) < unseenScan {
				return nil
			}
		}
	}
	s, err := startClient(ctx, e, showUnseen, handle)
	if err != nil {
		return fail(e, cmd, err)
	}
	x = newChatExtras(ctx, s.c, peer, *group != "", show, ct)
	if *group == "" {
		x.start() // presence: of the peer (none in a group chat)
	}
	close(ready)
	defer s.close()
	if *group != "" {
		gctx, gcancel := context.WithTimeout(ctx, 30*time.Second)
		err := s.c.SyncGroups(gctx)
		gcancel()
		var g client.Group
		if err == nil {
			g, err = s.c.Group(*group)
		}
		if err != nil {
			return fail(e, cmd, err)
		}
		x.setGroup(g.ID)
	}
	if tty {
		show(fmt.Sprintf("[chat with %s: type a message and press Enter; /quit to leave]", peer))
	}

	lines := make(chan string)
	readErr := make(chan error, 1)
	// The reader goroutine blocks in stdin; it exits when stdin ends. The command does not wait for
	// it (an interactive read cannot be interrupted), which is why it only touches channels.
	go func() {
		if ct != nil {
			for {
				line, err := ct.ReadLine()
				if err != nil {
					if err == io.EOF {
						err = nil
					}
					readErr <- err
					return
				}
				select {
				case lines <- line:
				case <-ctx.Done():
					return
				}
			}
		}
		sc := bufio.NewScanner(e.stdin)
		sc.Buffer(make([]byte, 0, 64<<10), maxLineBytes)
		for sc.Scan() {
			select {
			case lines <- strings.TrimSuffix(sc.Text(), "\r"):
			case <-ctx.Done():
				return
			}
		}
		readErr <- sc.Err()
	}()
	code := 0
loop:
	for {
		select {
		case line := <-lines:
			switch strings.TrimSpace(line) {
			case "":
				outMu.Lock()
				prompt()
				outMu.Unlock()
				continue
			case "/quit":
				break loop
			}
			sctx, scancel := context.WithTimeout(ctx, 30*time.Second)
			var id string
			var err error
			x.sendStarted()
			if *group != "" {
				id, err = s.c.SendGroup(sctx, *group, line)
			} else {
				id, err = s.c.Send(sctx, peer, line)
			}
			scancel()
			if err != nil {
				x.sendDone("", "")
				if errors.Is(err, client.ErrUnknownUser) {
					fmt.Fprintf(e.stderr, "petrel %s: unknown user %q\n", cmd, peer)
					code = 1
					break loop
				}
				if errors.Is(err, client.ErrInvalidName) || errors.Is(err, client.ErrUnknownGroup) ||
					errors.Is(err, client.ErrConnectedElsewhere) || errors.Is(err, client.ErrAuthFailed) {
					fmt.Fprintf(e.stderr, "petrel %s: %s\n", cmd, describe(err))
					code = 1
					break loop
				}
				show(fmt.Sprintf("[not sent yet, kept in the outbox: %s]", describe(err)))
				continue
			}
			x.sendDone(id, line)
		case err := <-readErr:
			if err != nil {
				fmt.Fprintf(e.stderr, "petrel %s: read standard input: %v\n", cmd, err)
				code = 1
			}
			break loop
		case err := <-s.runErr:
			if err == nil {
				err = client.ErrClosed
			}
			return fail(e, cmd, err)
		case <-ctx.Done():
			break loop
		}
	}
	fctx, fcancel := context.WithTimeout(context.WithoutCancel(ctx), 5*time.Second)
	defer fcancel()
	if err := s.c.Flush(fctx); err != nil {
		fmt.Fprintf(e.stderr, "petrel %s: warning: some messages are not sent yet (they stay in the outbox): %s\n", cmd, describe(err))
	}
	switch {
	case ct != nil:
		outMu.Lock()
		fmt.Fprint(screen, "\r\033[K") // the prompt the line editor left
		outMu.Unlock()
	case tty:
		fmt.Fprintln(e.stdout)
	}
	return code
}

func runWhoami(ctx context.Context, e *env, args []string) int {
	const cmd = "whoami"
	fs := newFlags(e, cmd, "whoami\n\nPrints this device's account name, device id, server, every server URL it may\n"+
		"connect to (configured, then learned from the servers) and identity fingerprint.")
	if code, ok := parseFlags(fs, args); !ok {
		return code
	}
	if fs.NArg() > 0 {
		return usageErr(e, cmd, "unexpected argument %q", fs.Arg(0))
	}
	st, err := openStore(e, false)
	if err != nil {
		return fail(e, cmd, err)
	}
	defer st.Close()
	c, err := client.Open(client.Config{Store: st})
	if err != nil {
		return fail(e, cmd, err)
	}
	a := c.Account()
	role := "primary"
	if !a.Primary {
		role = "companion (linked)"
	}
	fmt.Fprintf(e.stdout, "name:        %s\ndevice id:   %s\nrole:        %s\nserver:      %s\nservers:     %s\nfingerprint: %s\n",
		a.Name, a.DeviceID, role, a.ServerURL, sanitize(strings.Join(a.Servers, ", ")), a.Fingerprint)
	return 0
}

func runSafetyNumber(ctx context.Context, e *env, args []string) int {
	const cmd = "safety-number"
	fs := newFlags(e, cmd, "safety-number NAME\n\n"+
		"Prints the 60-digit safety number of your account and NAME, in 12 groups of 5 digits.\n"+
		"Compare it with NAME in person or over another channel: if it matches, nobody is in\n"+
		"the middle. NAME's device keys are fetched from the server if not known yet.")
	if code, ok := parseFlags(fs, args); !ok {
		return code
	}
	if fs.NArg() != 1 {
		return usageErr(e, cmd, "want exactly one NAME")
	}
	s, err := startClient(ctx, e, nil, func(ev client.Event) { warnEvent(e, cmd, ev) })
	if err != nil {
		return fail(e, cmd, err)
	}
	defer s.close()
	sctx, cancel := context.WithTimeout(ctx, 30*time.Second)
	defer cancel()
	n, err := s.c.SafetyNumber(sctx, fs.Arg(0))
	if errors.Is(err, client.ErrUnknownUser) {
		return fail(e, cmd, fmt.Errorf("unknown user %q", fs.Arg(0)))
	}
	if err != nil {
		return fail(e, cmd, err)
	}
	fmt.Fprint(e.stdout, formatSafetyNumber(n))
	return 0
}

// formatSafetyNumber lays out digits like Signal: groups of 5, four groups per line.
func formatSafetyNumber(n string) string {
	digits := strings.Map(func(r rune) rune {
		if r >= '0' && r <= '9' {
			return r
		}
		return -1
	}, n)
	var b strings.Builder
	for i := 0; i < len(digits); i += 5 {
		end := min(i+5, len(digits))
		b.WriteString(digits[i:end])
		switch {
		case end == len(digits) || (i/5)%4 == 3:
			b.WriteByte('\n')
		default:
			b.WriteByte(' ')
		}
	}
	return b.String()
}
