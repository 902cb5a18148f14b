// Copyright 2026 The Petrel Authors
// SPDX-License-Identifier: Apache-2.0

package main

import (
	"strings"
	"testing"
)

// The composer edits by grapheme cluster: an emoji with a skin tone, a ZWJ family, a flag and
// a letter with a combining accent each go with one Backspace.
func TestComposerGraphemes(t *testing.T) {
	var c composer
	for _, s := range []string{"a", "👍🏽", "👨‍👩‍👧", "🇫🇷", "e\u0301"} {
		c.Insert(s)
	}
	if c.String() != "a👍🏽👨‍👩‍👧🇫🇷e\u0301" || len(c.g) != 5 {
		t.Fatalf("composer holds %q in %d clusters", c.String(), len(c.g))
	}
	// A combining mark typed on its own joins the letter before it.
	c.Insert("\u0308")
	if len(c.g) != 5 {
		t.Fatalf("a combining mark made a cluster of its own: %q", c.g)
	}
	for _, want := range []string{"a👍🏽👨‍👩‍👧🇫🇷", "a👍🏽👨‍👩‍👧", "a👍🏽", "a", ""} {
		c.Backspace()
		if c.String() != want {
			t.Fatalf("after Backspace %q, want %q", c.String(), want)
		}
	}
	c.Insert("hello wörld")
	c.Left()
	c.Left()
	c.Delete()
	c.Home()
	c.Insert(">")
	if c.String() != ">hello wörd" {
		t.Fatalf("editing gave %q", c.String())
	}
	c.End()
	c.DeleteWord()
	if c.String() != ">hello " {
		t.Fatalf("Ctrl-W gave %q", c.String())
	}
	// Control characters never enter the composer; a pasted newline becomes a space.
	c.Reset()
	c.Insert("a\x1b[2Jb\nc")
	if c.String() != "a[2Jb c" {
		t.Fatalf("paste gave %q", c.String())
	}
	view, col := c.View(80)
	if view != "a[2Jb c" || col != 7 {
		t.Fatalf("view %q col %d", view, col)
	}
}

// What the tui lays out from the network is escaped: a forged line stays on one line.
func TestTUIItemLinesEscape(t *testing.T) {
	it := &tuiItem{from: "mallory", text: "hi\nalice: forged\u202eexe\u2066\u200b\x1b[2J"}
	lines := itemLines(it, 200)
	if len(lines) != 1 {
		t.Fatalf("one message became %d lines: %q", len(lines), lines)
	}
	for _, r := range lines[0] {
		if r == '\n' || r == '\u202e' || r == '\u2066' || r == '\u200b' {
			t.Fatalf("raw %U in %q", r, lines[0])
		}
	}
	if !strings.Contains(lines[0], `hi\nalice: forged\u202eexe\u2066\u200b\x1b[2J`) {
		t.Fatalf("line %q", lines[0])
	}
	// Long text wraps within the width.
	it.text = strings.Repeat("word ", 40)
	for _, l := range itemLines(it, 30) {
		if w := width(stripANSI(l)); w > 30 {
			t.Fatalf("line of %d cells: %q", w, l)
		}
	}
}

func stripANSI(s string) string {
	var b strings.Builder
	for i := 0; i < len(s); i++ {
		if s[i] == 0x1b {
			for i < len(s) && s[i] != 'm' {
				i++
			}
			continue
		}
		b.WriteByte(s[i])
	}
	return b.String()
}
