// Copyright 2026 The Petrel Authors
// SPDX-License-Identifier: Apache-2.0

package main

import (
	"strings"
	"unicode"

	"github.com/rivo/uniseg"
)

// composer is the tui's input line. It edits by grapheme cluster (what a reader sees as one
// character: an emoji with its modifiers and joiners, a letter with its combining marks), so
// Backspace, Delete and the arrows never split one.
type composer struct {
	g   []string // the grapheme clusters typed
	pos int      // the cursor: before g[pos]
}

// maxComposerBytes bounds the text of the composer (the server's frame limit is lower anyway).
const maxComposerBytes = 64 << 10

func graphemes(s string) []string {
	var out []string
	state := -1
	for len(s) > 0 {
		var c string
		c, s, _, state = uniseg.FirstGraphemeClusterInString(s, state)
		out = append(out, c)
	}
	return out
}

// String returns the text typed.
func (c *composer) String() string { return strings.Join(c.g, "") }

// Empty reports whether nothing is typed.
func (c *composer) Empty() bool { return len(c.g) == 0 }

// Reset clears the composer.
func (c *composer) Reset() { c.g, c.pos = nil, 0 }

// Insert types s at the cursor (a paste may be many clusters; control characters other than
// tab are dropped, a newline becomes a space). Clusters that join with their neighbours (an
// emoji modifier typed after an emoji) are merged by re-segmenting.
func (c *composer) Insert(s string) {
	s = strings.Map(func(r rune) rune {
		switch {
		case r == '\n' || r == '\r':
			return ' '
		case r == '\t':
			return r
		case unicode.IsControl(r):
			return -1
		}
		return r
	}, s)
	if s == "" || len(c.String())+len(s) > maxComposerBytes {
		return
	}
	before := strings.Join(c.g[:c.pos], "") + s
	after := strings.Join(c.g[c.pos:], "")
	c.g = graphemes(before + after)
	c.pos = len(graphemes(before))
	if c.pos > len(c.g) {
		c.pos = len(c.g)
	}
}

// Backspace deletes the cluster before the cursor.
func (c *composer) Backspace() {
	if c.pos == 0 {
		return
	}
	c.g = append(c.g[:c.pos-1], c.g[c.pos:]...)
	c.pos--
}

// Delete deletes the cluster at the cursor.
func (c *composer) Delete() {
	if c.pos < len(c.g) {
		c.g = append(c.g[:c.pos], c.g[c.pos+1:]...)
	}
}

// Left and Right move the cursor by one cluster; Home and End to the ends.
func (c *composer) Left() {
	if c.pos > 0 {
		c.pos--
	}
}
func (c *composer) Right() {
	if c.pos < len(c.g) {
		c.pos++
	}
}
func (c *composer) Home() { c.pos = 0 }
func (c *composer) End()  { c.pos = len(c.g) }

// DeleteWord deletes back to the start of the word before the cursor (Ctrl-W).
func (c *composer) DeleteWord() {
	i := c.pos
	for i > 0 && strings.TrimSpace(c.g[i-1]) == "" {
		i--
	}
	for i > 0 && strings.TrimSpace(c.g[i-1]) != "" {
		i--
	}
	c.g = append(c.g[:i], c.g[c.pos:]...)
	c.pos = i
}

// KillToStart deletes everything before the cursor (Ctrl-U).
func (c *composer) KillToStart() {
	c.g = c.g[c.pos:]
	c.pos = 0
}

// View returns the part of the text that fits width cells, escaped for the terminal, and the
// cursor's column in it.
func (c *composer) View(width int) (string, int) {
	if width < 2 {
		width = 2
	}
	// The window: the cursor stays visible, as much text before it as fits.
	start, w := c.pos, 0
	for start > 0 {
		cw := uniseg.StringWidth(sanitize(c.g[start-1]))
		if w+cw > width-1 {
			break
		}
		w += cw
		start--
	}
	var b strings.Builder
	col, total := 0, 0
	for i := start; i < len(c.g); i++ {
		s := sanitize(c.g[i])
		cw := uniseg.StringWidth(s)
		if total+cw > width {
			break
		}
		if i == c.pos {
			col = total
		}
		b.WriteString(s)
		total += cw
	}
	if c.pos >= len(c.g) {
		col = total
	}
	return b.String(), col
}
