// Copyright 2026 The Petrel Authors
// SPDX-License-Identifier: Apache-2.0

package main

import (
	"context"
	"fmt"
	"maps"
	"slices"
	"strings"
	"sync"
	"time"
	"unicode/utf8"

	"github.com/petrelchat/petrel/client"
)

// What petrel chat shows besides messages: a mark per own message (sent ✓ when the server acked
// it, delivered ✓✓ when a device of the peer has it, read when one showed it, in blue on a
// terminal; read marks only while read receipts are on), the peer's typing ("bob is typing…": in
// the prompt on a terminal, a line otherwise) and presence ("bob is online", "bob was last seen
// at 14:05"), and timer changes. It sends read receipts for the messages it shows, and typing
// indicators while you type on a terminal (at most one every typingEvery, "stopped" after
// typingIdle without a key).

const (
	typingEvery = 3 * time.Second
	typingIdle  = 5 * time.Second
	// typingShown is how long a peer's "typing" shows without being renewed.
	typingShown = 2 * typingEvery
	// markTextLen is how much of a message a mark line quotes.
	markTextLen = 40
)

// chatExtras is one chat's marks, typing and presence.
type chatExtras struct {
	ctx  context.Context
	c    *client.Client
	peer string
	show func(string)
	ct   *chatTerminal // nil: not on a terminal
	tn   *typingNotifier
	// isGroup: a group chat (peer is then the group as the user named it).
	isGroup bool

	mu    sync.Mutex // guards the fields below
	group string     // the group id of a group chat (set once it is known)
	sent  map[string]string
	// sending: a send is waiting for the server's ack. A receipt can overtake that ack (a
	// member's device answers before the ack reaches this goroutine): marks for unknown
	// messages wait in early until the send is done, so that "you: …" comes first.
	sending   bool
	early     []earlyMark
	typing    map[string]int // who is typing → the generation of their last "typing"
	typingGen int            // invalidates the timer of an earlier "typing"
	// others counts, per other conversation, the messages left unseen (chat_filter.go).
	others map[string]int
}

func newChatExtras(ctx context.Context, c *client.Client, peer string, isGroup bool, show func(string), ct *chatTerminal) *chatExtras {
	x := &chatExtras{ctx: ctx, c: c, peer: peer, isGroup: isGroup, show: show, ct: ct, sent: map[string]string{}, typing: map[string]int{}}
	if ct != nil {
		x.tn = newTypingNotifier(ctx, func(ctx context.Context, typing bool) {
			tctx, cancel := context.WithTimeout(ctx, 5*time.Second)
			defer cancel()
			x.mu.Lock()
			group := x.group
			x.mu.Unlock()
			// Best effort: never stored, never retried.
			if group != "" {
				_ = c.SendGroupTyping(tctx, group, typing)
			} else if !x.isGroup {
				_ = c.SendTyping(tctx, peer, typing)
			}
		})
		ct.t.AutoCompleteCallback = func(_ string, _ int, key rune) (string, int, bool) {
			if key != '\r' && key != '\n' {
				x.tn.keystroke()
			}
			return "", 0, false
		}
	}
	return x
}

// start asks for the peer's presence (once connected) and shows it.
func (x *chatExtras) start() {
	go func() {
		res, err := x.c.SubscribePresence(x.ctx, x.peer)
		if err != nil || len(res) != 1 {
			return
		}
		if line := presenceLine(res[0]); line != "" {
			x.show(line)
		}
	}()
}

// presenceLine is how a presence reads ("" for unknown: hidden or no such account).
func presenceLine(p client.Presence) string {
	switch p.State {
	case client.PresenceOnline:
		return fmt.Sprintf("[%s is online]", p.Account)
	case client.PresenceOffline:
		if p.LastSeen.IsZero() {
			return fmt.Sprintf("[%s is offline]", p.Account)
		}
		t := p.LastSeen.Local()
		if y, m, d := time.Now().Date(); t.Year() == y && t.Month() == m && t.Day() == d {
			return fmt.Sprintf("[%s was last seen at %s]", p.Account, t.Format("15:04"))
		}
		return fmt.Sprintf("[%s was last seen %s]", p.Account, t.Format("2006-01-02 15:04"))
	}
	return ""
}

// quote is the start of a message, for a mark line.
func quote(text string) string {
	if utf8.RuneCountInString(text) <= markTextLen {
		return text
	}
	r := []rune(text)
	return string(r[:markTextLen]) + "…"
}

// earlyMark is a receipt for a message not known yet, held while a send waits for its ack.
type earlyMark struct {
	read bool
	id   string
}

// maxEarlyMarks bounds the marks held while a send waits (more are shown at once).
const maxEarlyMarks = 64

// sendStarted is called before a send: marks for unknown messages wait until sendDone.
func (x *chatExtras) sendStarted() {
	x.mu.Lock()
	x.sending = true
	x.mu.Unlock()
}

// sendDone ends a send: id is the message's id ("" if it failed) and text what it said. An
// acked message is shown ("you: … ✓"), then the marks that came before its ack.
func (x *chatExtras) sendDone(id, text string) {
	x.mu.Lock()
	if id != "" {
		x.sent[id] = quote(text)
	}
	early := x.early
	x.sending, x.early = false, nil
	x.mu.Unlock()
	if id != "" {
		if x.tn != nil {
			x.tn.stopped()
		}
		x.show(fmt.Sprintf("you: %s ✓", text))
	}
	for _, m := range early {
		x.show(x.markLine(m.read, m.id))
	}
}

// mark shows a delivered or read mark, or holds it while a send waits for its ack and the
// message is not known yet.
func (x *chatExtras) mark(read bool, id string) {
	x.mu.Lock()
	if _, known := x.sent[id]; !known && x.sending && len(x.early) < maxEarlyMarks {
		x.early = append(x.early, earlyMark{read: read, id: id})
		x.mu.Unlock()
		return
	}
	x.mu.Unlock()
	x.show(x.markLine(read, id))
}

// markLine is how a mark reads.
func (x *chatExtras) markLine(read bool, id string) string {
	if !read {
		return fmt.Sprintf("[✓✓ delivered: %s]", x.quoteOf(id))
	}
	mark := "✓✓ read"
	if x.ct != nil {
		mark = "\033[1;34m✓✓ read\033[0m"
	}
	return fmt.Sprintf("[%s: %s]", mark, x.quoteOf(id))
}

// shown is called for each message shown: a read receipt for the peer's, and the peer's (a
// member's) typing ends with its message.
func (x *chatExtras) shown(m *client.Message) {
	if m.Outgoing || m.Timer {
		return
	}
	_ = x.c.MarkRead(m)
	if x.ours(m.From, m.Group) {
		x.setTyping(m.From, false)
	}
}

// event handles the events of this file; false for the others.
func (x *chatExtras) event(ev client.Event) bool {
	switch ev := ev.(type) {
	case *client.Delivered:
		if x.ours(ev.To, ev.Group) {
			x.mark(false, ev.MessageID)
		}
	case *client.Read:
		if x.ours(ev.To, ev.Group) {
			x.mark(true, ev.MessageID)
		}
	case *client.Typing:
		if x.ours(ev.From, ev.Group) {
			x.setTyping(ev.From, ev.Typing)
		}
	case *client.PresenceChanged:
		if ev.Account == x.peer {
			if line := presenceLine(ev.Presence); line != "" {
				x.show(line)
			}
		}
	default:
		return false
	}
	return true
}

// setGroup makes this a group chat's extras: marks are those of group id's messages.
func (x *chatExtras) setGroup(id string) {
	x.mu.Lock()
	x.group = id
	x.mu.Unlock()
}

// ours reports whether a mark for a message to account to (or group), or a typing indicator
// from account to (in group), belongs to this chat.
func (x *chatExtras) ours(to, group string) bool {
	x.mu.Lock()
	defer x.mu.Unlock()
	if x.group != "" || group != "" {
		return group != "" && group == x.group
	}
	return to == x.peer
}

func (x *chatExtras) quoteOf(id string) string {
	x.mu.Lock()
	defer x.mu.Unlock()
	if q, ok := x.sent[id]; ok {
		return q
	}
	return "message " + id
}

// setTyping shows or clears who's "typing…" (the peer, or a member of the group); a "typing"
// not renewed within typingShown clears itself.
func (x *chatExtras) setTyping(who string, on bool) {
	x.mu.Lock()
	_, was := x.typing[who]
	x.typingGen++
	gen := x.typingGen
	if on {
		x.typing[who] = gen
	} else {
		delete(x.typing, who)
	}
	typers := slices.Sorted(maps.Keys(x.typing))
	x.mu.Unlock()
	if on {
		time.AfterFunc(typingShown, func() {
			x.mu.Lock()
			expired := x.typing[who] == gen
			x.mu.Unlock()
			if expired {
				x.setTyping(who, false)
			}
		})
	}
	if on == was {
		return
	}
	if x.ct != nil {
		prompt := "> "
		switch len(typers) {
		case 0:
		case 1:
			prompt = fmt.Sprintf("[%s is typing…] > ", typers[0])
		default:
			prompt = fmt.Sprintf("[%s are typing…] > ", strings.Join(typers, ", "))
		}
		x.ct.t.SetPrompt(prompt)
		_, _ = x.ct.Write(nil) // redraws the line with the new prompt
		return
	}
	if on {
		x.show(fmt.Sprintf("%s is typing…", who))
	}
}

// typingNotifier turns keystrokes into typing indicators: "typing" at the first key and again at
// most every typingEvery while keys come, "stopped" after typingIdle without one (a sent line
// stops it without a message: the peer clears it when the line arrives).
type typingNotifier struct {
	out chan bool // indicators to send, in order; bounded (a full queue drops the new one)

	mu       sync.Mutex // guards the fields below
	typing   bool
	lastSent time.Time
	idle     *time.Timer
}

func newTypingNotifier(ctx context.Context, send func(context.Context, bool)) *typingNotifier {
	n := &typingNotifier{out: make(chan bool, 4)}
	go func() {
		for {
			select {
			case on := <-n.out:
				send(ctx, on)
			case <-ctx.Done():
				return
			}
		}
	}()
	return n
}

func (n *typingNotifier) emit(on bool) {
	select {
	case n.out <- on:
	default:
	}
}

// keystroke is called for each key typed (not Enter).
func (n *typingNotifier) keystroke() {
	n.mu.Lock()
	defer n.mu.Unlock()
	now := time.Now()
	if !n.typing || now.Sub(n.lastSent) >= typingEvery {
		n.typing, n.lastSent = true, now
		n.emit(true)
	}
	if n.idle == nil {
		n.idle = time.AfterFunc(typingIdle, n.idleFired)
	} else {
		n.idle.Reset(typingIdle)
	}
}

func (n *typingNotifier) idleFired() {
	n.mu.Lock()
	defer n.mu.Unlock()
	if n.typing {
		n.typing = false
		n.emit(false)
	}
}

// stopped is called when a line was sent.
func (n *typingNotifier) stopped() {
	n.mu.Lock()
	defer n.mu.Unlock()
	n.typing = false
	if n.idle != nil {
		n.idle.Stop()
	}
}
