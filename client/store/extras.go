// Copyright 2026 The Petrel Authors
// SPDX-License-Identifier: Apache-2.0

package store

import (
	"bytes"
	"encoding/binary"
	"slices"
	"time"
)

// Receipts, presence and disappearing messages. Buckets (besides those in store.go):
//
//	expiring: expires-at Unix ms (8) || seq (8) → empty (history records to delete at that time)
//	chats:    peer → ChatSettings (a chat's disappearing timer)
//	meta:     "settings" → Settings
var (
	bExpiring = []byte("expiring")
	bChats    = []byte("chats")
	kSettings = []byte("settings")
)

func init() { allBuckets = append(allBuckets, bExpiring, bChats) }

// Last-seen visibility values of Settings.LastSeen.
const (
	LastSeenEveryone = "everyone"
	LastSeenContacts = "contacts"
	LastSeenNobody   = "nobody"
)

// Settings are this device's preferences.
type Settings struct {
	// ReadReceiptsOff: send no read receipts, and ignore those received (as in WhatsApp).
	ReadReceiptsOff bool `json:"read_receipts_off,omitempty"`
	// LastSeen is who may see the account's presence (LastSeen*; "" is everyone), as last set
	// from this device.
	LastSeen string `json:"last_seen,omitempty"`
}

// Settings returns this device's settings (zero values when none were stored).
func (t *Tx) Settings() (*Settings, error) {
	s := &Settings{}
	if _, err := getJSON(t.b(bMeta), kSettings, s); err != nil {
		return nil, err
	}
	return s, nil
}

// PutSettings stores this device's settings.
func (t *Tx) PutSettings(s *Settings) error { return putJSON(t.b(bMeta), kSettings, s) }

// ChatSettings are one chat's settings.
type ChatSettings struct {
	Peer string `json:"peer"`
	// ExpiresIn is the chat's disappearing timer (0: off), set by SetBy at SetAt.
	ExpiresIn time.Duration `json:"expires_in,omitempty"`
	SetBy     string        `json:"set_by,omitempty"`
	SetAt     time.Time     `json:"set_at,omitzero"`
}

// ChatSettings returns peer's chat settings (zero values when none were stored).
func (t *Tx) ChatSettings(peer string) (*ChatSettings, error) {
	cs := &ChatSettings{Peer: peer}
	if _, err := getJSON(t.b(bChats), []byte(peer), cs); err != nil {
		return nil, err
	}
	return cs, nil
}

// PutChatSettings stores a chat's settings.
func (t *Tx) PutChatSettings(cs *ChatSettings) error {
	return putJSON(t.b(bChats), []byte(cs.Peer), cs)
}

func expiringKey(at time.Time, seq uint64) []byte {
	k := binary.BigEndian.AppendUint64(nil, uint64(max(at.UnixMilli(), 0)))
	return binary.BigEndian.AppendUint64(k, seq)
}

// SetHistoryExpiry starts r's countdown: it is deleted at at (see SweepExpired). r must be stored.
func (t *Tx) SetHistoryExpiry(r *HistoryRecord, at time.Time) error {
	if !r.ExpiresAt.IsZero() {
		if err := t.b(bExpiring).Delete(expiringKey(r.ExpiresAt, r.Seq)); err != nil {
			return err
		}
	}
	r.ExpiresAt = at
	if err := t.b(bExpiring).Put(expiringKey(at, r.Seq), nil); err != nil {
		return err
	}
	return t.PutHistory(r)
}

// SweepExpired deletes up to limit history records whose expiry is at or before now, and returns
// them.
func (t *Tx) SweepExpired(now time.Time, limit int) ([]*HistoryRecord, error) {
	var out []*HistoryRecord
	var keys [][]byte
	end := binary.BigEndian.AppendUint64(nil, uint64(max(now.UnixMilli(), 0)))
	c := t.b(bExpiring).Cursor()
	for k, _ := c.First(); k != nil && len(k) == 16 && bytes.Compare(k[:8], end) <= 0 && len(keys) < limit; k, _ = c.Next() {
		keys = append(keys, slices.Clone(k))
		var r HistoryRecord
		ok, err := getJSON(t.b(bHistory), k[8:], &r)
		if err != nil {
			return nil, err
		}
		if ok && !r.ExpiresAt.IsZero() && r.ExpiresAt.UnixMilli() == int64(binary.BigEndian.Uint64(k[:8])) {
			out = append(out, &r)
		}
	}
	for _, k := range keys {
		if err := t.b(bExpiring).Delete(k); err != nil {
			return nil, err
		}
	}
	for _, r := range out {
		if err := t.DeleteHistory(r); err != nil {
			return nil, err
		}
	}
	return out, nil
}

// NextExpiry returns the earliest pending expiry (ok false when none).
func (t *Tx) NextExpiry() (time.Time, bool) {
	k, _ := t.b(bExpiring).Cursor().First()
	if len(k) != 16 {
		return time.Time{}, false
	}
	return time.UnixMilli(int64(binary.BigEndian.Uint64(k[:8]))), true
}

// ContactNames returns the names of every account this device knows (has exchanged messages or
// keys with), sorted, without except.
func (t *Tx) ContactNames(except string) ([]string, error) {
	var out []string
	err := t.b(bContacts).ForEach(func(k, _ []byte) error {
		if string(k) != except {
			out = append(out, string(k))
		}
		return nil
	})
	return out, err
}
