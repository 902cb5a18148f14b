// Copyright 2026 The Petrel Authors
// SPDX-License-Identifier: Apache-2.0

package client

import (
	"context"
	"errors"
	"fmt"
	"slices"
	"sync"
	"time"

	"github.com/petrelchat/petrel/client/store"
	"github.com/petrelchat/petrel/e2ee"
	petrelv1 "github.com/petrelchat/petrel/proto/petrel/v1"
)

// Presence and typing.
//
// Presence (who is online, when an account was last seen) is a server fact: SubscribePresence
// asks the server about up to 256 accounts (each connection has one subscription; the client
// sends it again after every reconnect) and PresenceChanged events follow. The server answers
// within each account's privacy setting (SetLastSeen): an account hidden from this one is
// PresenceUnknown.
//
// Typing indicators are end-to-end encrypted contents (Content.typing) sent with Send.ephemeral:
// the server offers them to the devices connected at that moment and never stores them. They are
// not in the outbox and never retried. Each one advances the sessions with the recipient's
// devices, and a device that never gets it skips that message key; so SendTyping sends nothing
// to an account the server says is offline, nor more than maxTypingUnanswered indicators in a row
// without hearing anything from that account (e2ee.MaxSkip is 1,000 per chain). Applications
// rate-limit them further (the CLI: one "typing" every 3 s, "stopped" after 5 s idle).

// maxTypingUnanswered bounds the typing indicators sent to an account without an envelope from it
// in between (see above).
const maxTypingUnanswered = 100

// PresenceState is what the server says of an account.
type PresenceState int

const (
	// PresenceUnknown: hidden by the account's setting, no such account, or not known.
	PresenceUnknown PresenceState = iota
	// PresenceOnline: at least one of its devices is connected.
	PresenceOnline
	// PresenceOffline: none is; LastSeen says since when (zero if the server does not know).
	PresenceOffline
)

func (s PresenceState) String() string {
	switch s {
	case PresenceOnline:
		return "online"
	case PresenceOffline:
		return "offline"
	}
	return "unknown"
}

// Presence is an account's presence. LastSeen is rounded to the minute.
type Presence struct {
	Account  string
	State    PresenceState
	LastSeen time.Time
}

// PresenceChanged reports a change of a subscribed account's presence (SubscribePresence).
type PresenceChanged struct {
	Presence
}

// Typing reports that From started (Typing) or stopped typing in the chat with this account,
// or, with Group set (a group id), in that group's chat.
type Typing struct {
	From   string
	Typing bool
	Group  string
}

func (*PresenceChanged) isEvent() {}
func (*Typing) isEvent()          {}

// extState is the client's state for presence, typing and the disappearing-message sweeper.
type extState struct {
	mu         sync.Mutex // guards the fields below
	want       []string   // the presence subscription, sent again on every connection
	states     map[string]PresenceState
	typingSent map[string]int // typing indicators sent since the account was last heard from
	sweepKick  chan struct{}  // wakes the sweeper (disappearing.go); nil while it is not running
}

func presenceFromProto(p *petrelv1.Presence) Presence {
	out := Presence{Account: p.GetAccount()}
	switch p.GetState() {
	case petrelv1.PresenceState_PRESENCE_STATE_ONLINE:
		out.State = PresenceOnline
	case petrelv1.PresenceState_PRESENCE_STATE_OFFLINE:
		out.State = PresenceOffline
		if ms := p.GetLastSeenMs(); ms > 0 {
			out.LastSeen = time.UnixMilli(ms)
		}
	}
	return out
}

func (c *Client) rememberPresence(p Presence) {
	c.ext.mu.Lock()
	if c.ext.states == nil {
		c.ext.states = map[string]PresenceState{}
	}
	c.ext.states[p.Account] = p.State
	c.ext.mu.Unlock()
}

// SubscribePresence replaces this device's presence subscription with accounts (at most 256,
// valid names, no duplicates) and returns their presence now; PresenceChanged events follow, on
// this connection and the next ones. It needs a connection (Run). No accounts ends the
// subscription.
func (c *Client) SubscribePresence(ctx context.Context, accounts ...string) ([]Presence, error) {
	if len(accounts) > petrelv1.MaxPresenceAccounts {
		return nil, fmt.Errorf("at most %d accounts", petrelv1.MaxPresenceAccounts)
	}
	for i, a := range accounts {
		if !petrelv1.ValidName(a) {
			return nil, fmt.Errorf("%w: %q", ErrInvalidName, a)
		}
		if slices.Contains(accounts[:i], a) {
			return nil, fmt.Errorf("account %q named twice", a)
		}
	}
	c.ext.mu.Lock()
	c.ext.want = slices.Clone(accounts)
	c.ext.mu.Unlock()
	l, err := c.ready(ctx)
	if err != nil {
		return nil, err
	}
	return l.subscribePresence(ctx, accounts)
}

func (l *link) subscribePresence(ctx context.Context, accounts []string) ([]Presence, error) {
	resp, err := l.conn.request(ctx, &petrelv1.Frame{Body: &petrelv1.Frame_SubscribePresence{
		SubscribePresence: &petrelv1.SubscribePresence{Accounts: accounts}}})
	if err != nil {
		return nil, err
	}
	res := resp.GetPresenceResult()
	if res == nil {
		return nil, fmt.Errorf("%w: expected PresenceResult", ErrProtocol)
	}
	out := make([]Presence, 0, len(res.GetPresence()))
	for _, p := range res.GetPresence() {
		pr := presenceFromProto(p)
		l.c.rememberPresence(pr)
		out = append(out, pr)
	}
	return out, nil
}

// presenceLoop sends the presence subscription again on a new connection (once it is ready) and
// reports the answer as PresenceChanged events.
func (l *link) presenceLoop(ctx context.Context) error {
	select {
	case <-l.queueEmpty:
	case <-ctx.Done():
		return nil
	}
	c := l.c
	c.ext.mu.Lock()
	want := slices.Clone(c.ext.want)
	c.ext.mu.Unlock()
	if len(want) == 0 {
		return nil
	}
	res, err := l.subscribePresence(ctx, want)
	if err != nil {
		if ctx.Err() == nil {
			c.log.Info("presence subscription not renewed", "err", err)
		}
		return nil // presence is best effort: the connection goes on
	}
	for _, p := range res {
		c.emitPresence(ctx, p)
	}
	return nil
}

// emitPresence reports p without blocking the reader for long: presence is the first thing shed.
func (c *Client) emitPresence(ctx context.Context, p Presence) {
	c.rememberPresence(p)
	if c.cfg.Events == nil {
		return
	}
	t := time.NewTimer(time.Second)
	defer t.Stop()
	select {
	case c.cfg.Events <- &PresenceChanged{Presence: p}:
	case <-t.C:
		c.log.Debug("presence event dropped: events not taken")
	case <-ctx.Done():
	}
}

// SetLastSeen sets who may see this account's presence: store.LastSeenEveryone, LastSeenContacts
// (the accounts this device has exchanged messages with: their names are sent to the server,
// only in this case) or LastSeenNobody. It needs a connection (Run).
func (c *Client) SetLastSeen(ctx context.Context, who string) error {
	st := &petrelv1.Settings{}
	switch who {
	case store.LastSeenEveryone, "":
		who = store.LastSeenEveryone
	case store.LastSeenContacts:
		st.LastSeen = petrelv1.LastSeenVisibility_LAST_SEEN_VISIBILITY_CONTACTS
		err := c.st.View(func(tx *store.Tx) error {
			var err error
			st.Contacts, err = tx.ContactNames(c.name)
			return err
		})
		if err != nil {
			return err
		}
		if len(st.Contacts) > petrelv1.MaxSettingsContacts {
			st.Contacts = st.Contacts[:petrelv1.MaxSettingsContacts]
		}
	case store.LastSeenNobody:
		st.LastSeen = petrelv1.LastSeenVisibility_LAST_SEEN_VISIBILITY_NOBODY
	default:
		return fmt.Errorf("last seen: want %s, %s or %s", store.LastSeenEveryone, store.LastSeenContacts, store.LastSeenNobody)
	}
	l, err := c.ready(ctx)
	if err != nil {
		return err
	}
	resp, err := l.conn.request(ctx, &petrelv1.Frame{Body: &petrelv1.Frame_PutSettings{PutSettings: &petrelv1.PutSettings{Settings: st}}})
	if err != nil {
		return err
	}
	if resp.GetSettingsResult() == nil {
		return fmt.Errorf("%w: expected SettingsResult", ErrProtocol)
	}
	return c.st.Update(func(tx *store.Tx) error {
		s, err := tx.Settings()
		if err != nil {
			return err
		}
		s.LastSeen = who
		return tx.PutSettings(s)
	})
}

// Settings returns this device's settings.
func (c *Client) Settings() (store.Settings, error) {
	var s store.Settings
	err := c.st.View(func(tx *store.Tx) error {
		st, err := tx.Settings()
		if err == nil {
			s = *st
		}
		return err
	})
	return s, err
}

// ErrTypingSkipped is returned by SendTyping when it sent nothing on purpose: the account is
// offline, or too many indicators went unanswered (see the top of this file).
var ErrTypingSkipped = errors.New("typing indicator not sent")

// SendTyping tells the devices of to that are connected now that this account started (typing)
// or stopped typing in their chat. It is never stored or retried; the server's ack says only that
// it took it. It needs a connection (Run).
func (c *Client) SendTyping(ctx context.Context, to string, typing bool) error {
	if !petrelv1.ValidName(to) {
		return fmt.Errorf("%w: %q", ErrInvalidName, to)
	}
	if to == c.name {
		return errors.New("typing indicators go to another account")
	}
	c.ext.mu.Lock()
	skip := c.ext.states[to] == PresenceOffline || c.ext.typingSent[to] >= maxTypingUnanswered
	c.ext.mu.Unlock()
	if skip {
		return ErrTypingSkipped
	}
	l, err := c.ready(ctx)
	if err != nil {
		return err
	}
	id, err := NewMessageID(c.cfg.Rand)
	if err != nil {
		return err
	}
	pt, err := padded(&petrelv1.Content{MessageId: id, Body: &petrelv1.Content_Typing{Typing: &petrelv1.Typing{Typing: typing}}})
	if err != nil {
		return err
	}
	for round := 0; ; round++ {
		devices, err := l.ensureSessions(ctx, to)
		if err != nil {
			return err
		}
		if len(devices) == 0 {
			return fmt.Errorf("%w: %s has no devices", ErrUnknownDevice, to)
		}
		send := &petrelv1.Send{MessageId: id, To: to, Ephemeral: true}
		err = c.st.Update(func(tx *store.Tx) error {
			var err error
			send.Envelopes, err = encryptFor(tx, to, devices, pt, send.Envelopes[:0])
			return err
		})
		if err != nil {
			return err
		}
		c.ext.mu.Lock()
		if c.ext.typingSent == nil {
			c.ext.typingSent = map[string]int{}
		}
		c.ext.typingSent[to]++
		c.ext.mu.Unlock()
		resp, err := l.conn.request(ctx, &petrelv1.Frame{Body: &petrelv1.Frame_Send{Send: send}})
		var se *Error
		if err != nil && errors.As(err, &se) && round == 0 &&
			(se.Code == petrelv1.ErrorCode_ERROR_CODE_STALE_DEVICES || se.Code == petrelv1.ErrorCode_ERROR_CODE_UNKNOWN_DEVICE) {
			if err := c.forgetDevices(to); err != nil {
				return err
			}
			continue
		}
		if err != nil {
			return err
		}
		if resp.GetSendResult() == nil {
			return fmt.Errorf("%w: expected SendResult", ErrProtocol)
		}
		return nil
	}
}

// SendGroupTyping tells the member devices of group (a local name or id) that are connected now
// that this account started (typing) or stopped typing in the group's chat: one ephemeral group
// send, encrypted with this device's sender key, never stored or retried. It sends nothing
// (ErrTypingSkipped) while this device has no sender key for the group yet, while its key is held
// by an account that is no longer a member (the next message replaces the key first), or after
// maxTypingUnanswered indicators without a group message from this device in between (each one
// advances the sender key, and an offline member skips it). It needs a connection (Run).
func (c *Client) SendGroupTyping(ctx context.Context, group string, typing bool) error {
	l, err := c.ready(ctx)
	if err != nil {
		return err
	}
	id, err := NewMessageID(c.cfg.Rand)
	if err != nil {
		return err
	}
	var send *petrelv1.Send
	err = c.st.Update(func(tx *store.Tx) error {
		g, err := findGroup(tx, group)
		if err != nil {
			return err
		}
		if g.Left {
			return fmt.Errorf("%w: this account is no longer a member of %q", ErrUnknownGroup, g.Name)
		}
		c.ext.mu.Lock()
		sent := c.ext.typingSent[store.GroupKey(g.ID)]
		c.ext.mu.Unlock()
		if g.SenderKey == nil || sent >= maxTypingUnanswered {
			return ErrTypingSkipped
		}
		holders, err := tx.GivenDevices(g.ID, g.SenderKeyID)
		if err != nil {
			return err
		}
		for _, acct := range holders {
			if acct != c.name && !g.IsMember(acct) {
				return ErrTypingSkipped
			}
		}
		sk, err := e2ee.UnmarshalSenderKey(g.SenderKey)
		if err != nil {
			return fmt.Errorf("stored sender key: %w", err)
		}
		pt, err := padded(&petrelv1.Content{MessageId: id, GroupId: g.ID,
			Body: &petrelv1.Content_Typing{Typing: &petrelv1.Typing{Typing: typing}}})
		if err != nil {
			return err
		}
		ct, err := sk.Encrypt(pt)
		if err != nil {
			return err
		}
		if g.SenderKey, err = sk.MarshalBinary(); err != nil { // advanced before it leaves
			return err
		}
		send = &petrelv1.Send{MessageId: id, GroupId: g.ID, GroupCiphertext: ct, Ephemeral: true}
		return tx.PutGroup(g)
	})
	if err != nil {
		if errors.Is(err, ErrTypingSkipped) || errors.Is(err, ErrUnknownGroup) {
			return err
		}
		return storeErr(err)
	}
	c.ext.mu.Lock()
	if c.ext.typingSent == nil {
		c.ext.typingSent = map[string]int{}
	}
	c.ext.typingSent[store.GroupKey(send.GetGroupId())]++
	c.ext.mu.Unlock()
	resp, err := l.conn.request(ctx, &petrelv1.Frame{Body: &petrelv1.Frame_Send{Send: send}})
	if err != nil {
		return err
	}
	if resp.GetSendResult() == nil {
		return fmt.Errorf("%w: expected SendResult", ErrProtocol)
	}
	return nil
}

// heardFrom notes an envelope from account from: its devices' sessions moved on (see above).
func (c *Client) heardFrom(from string) {
	c.ext.mu.Lock()
	delete(c.ext.typingSent, from)
	c.ext.mu.Unlock()
}

// presencePushed takes a PresenceChanged push (on the reader: it must not wait long).
func (l *link) presencePushed(ctx context.Context, p *petrelv1.PresenceChanged) {
	if p.GetPresence() == nil || !petrelv1.ValidName(p.GetPresence().GetAccount()) {
		return
	}
	l.c.emitPresence(ctx, presenceFromProto(p.GetPresence()))
}
