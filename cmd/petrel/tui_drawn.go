// Copyright 2026 The Petrel Authors
// SPDX-License-Identifier: Apache-2.0

package main

import (
	"cmp"
	"os"
	"slices"
	"sync/atomic"
	"time"

	"github.com/petrelchat/petrel/client"
)

// The tui marks a received message seen, and sends its read receipt, only once it has been on the
// screen: View records the unseen messages inside the open conversation's window, and a message
// that stayed there for tuiDrawSettle (many frames: Bubble Tea writes a changed view within one
// frame, 1/60 s) while the terminal takes output is marked at the next update. A crash before
// that leaves it unseen (shown again, unread, next time); no receipt ever goes for a message that
// scrolled past above the window, or that a stalled terminal never showed.

// tuiDrawSettle is how long a message stays in the window before it counts as read.
const tuiDrawSettle = 250 * time.Millisecond

// drawOutput is the terminal the tui writes to; it tells whether a write is in progress (a
// stalled terminal: what the last views hold may not be on the screen yet). It keeps the
// *os.File methods (Fd, Read, Close) Bubble Tea uses to handle the terminal.
type drawOutput struct {
	*os.File
	writing atomic.Int32
}

func (d *drawOutput) Write(p []byte) (int, error) {
	d.writing.Add(1)
	defer d.writing.Add(-1)
	return d.File.Write(p)
}

func (d *drawOutput) WriteString(s string) (int, error) { return d.Write([]byte(s)) }

// stalled reports whether a write to the terminal is in progress.
func (d *drawOutput) stalled() bool { return d != nil && d.writing.Load() > 0 }

// noteDrawn records the unseen items of the open conversation that the view being drawn holds
// (and forgets those it no longer holds: an item counts only while it stays in the window).
func (m *tuiModel) noteDrawn(visible []*tuiItem) {
	now := m.clock()
	next := make(map[*tuiItem]time.Time, len(visible))
	for _, it := range visible {
		if it == nil || !it.unseen {
			continue
		}
		if since, ok := m.drawn[it]; ok {
			next[it] = since
		} else {
			next[it] = now
		}
	}
	m.drawn = next
}

func (m *tuiModel) clock() time.Time {
	if m.now != nil {
		return m.now()
	}
	return time.Now()
}

// markDrawn marks seen the items that have been in the window for tuiDrawSettle, and queues read
// receipts for the received ones among them.
func (m *tuiModel) markDrawn() {
	cv, ok := m.convs[m.open]
	if !ok || len(m.drawn) == 0 || m.out.stalled() {
		return
	}
	now := m.clock()
	var items []*tuiItem
	for it, since := range m.drawn {
		if it.unseen && now.Sub(since) >= tuiDrawSettle {
			items = append(items, it)
		}
	}
	if len(items) == 0 {
		return
	}
	slices.SortFunc(items, func(a, b *tuiItem) int { return cmp.Compare(a.seq, b.seq) })
	var seqs []uint64
	var msgs []*client.Message
	for _, it := range items {
		delete(m.drawn, it)
		if it.seq == 0 {
			it.unseen = false
			continue
		}
		seqs = append(seqs, it.seq)
		if !it.note && !it.own && !it.synced {
			msgs = append(msgs, &client.Message{Seq: it.seq, ID: it.id, From: it.from, Group: it.group})
		}
	}
	if len(seqs) > 0 {
		if err := m.c.MarkSeen(seqs...); err != nil {
			m.notice = "could not mark messages seen: " + describe(err)
			return // still unseen: tried again at the next update
		}
	}
	for _, it := range items {
		it.unseen = false
	}
	if err := m.c.MarkRead(msgs...); err != nil {
		m.notice = describe(err)
	}
	cv.unread = max(0, cv.unread-len(msgs))
	if !slices.ContainsFunc(cv.items, func(it *tuiItem) bool { return it.unseen && !it.note && !it.own && !it.synced }) {
		cv.unread = 0 // older unseen ones beyond what the tui holds are left for recv
	}
}
