// Copyright 2026 The Petrel Authors
// SPDX-License-Identifier: Apache-2.0

package main

import (
	"fmt"
	"strings"
	"unicode"
	"unicode/utf8"
)

// mustEscape reports whether r is shown as an escape rather than printed: control characters
// (C0 but tab, DEL, C1: they drive the terminal, and \n and \r start a line that could pose as
// another message), the line and paragraph separators U+2028 and U+2029, and invisible format
// characters (category Cf: bidi embeddings, overrides and isolates U+202A–U+202E, U+2066–U+2069,
// marks U+200E, U+200F, U+061C, which reorder what follows; zero-width U+200B–U+200D, U+2060 and
// U+FEFF, which hide text; soft hyphen, tags, ...).
func mustEscape(r rune) bool {
	if r == '\t' {
		return false
	}
	return unicode.In(r, unicode.Cc, unicode.Cf, unicode.Zl, unicode.Zp)
}

// sanitize makes text from the network (message text, names, server error messages) safe to put
// on a terminal line: every rune mustEscape picks is shown as a visible escape (\n, \r, \x1b,
// \u202e, \U000e0041), so a message can neither drive the terminal, nor forge a line such as
// "mallory: ...", nor reorder or hide what is displayed. Everything else, backslashes included,
// is kept, so the escapes are for reading, not for decoding (--json gives the exact text).
// Invalid UTF-8 is shown as U+FFFD.
func sanitize(s string) string {
	i := strings.IndexFunc(s, func(r rune) bool { return mustEscape(r) || r == utf8.RuneError })
	if i < 0 {
		return s
	}
	var b strings.Builder
	b.Grow(len(s) + 16)
	b.WriteString(s[:i])
	for _, r := range s[i:] {
		switch {
		case !mustEscape(r):
			b.WriteRune(r) // utf8.RuneError for invalid bytes: U+FFFD
		case r == '\n':
			b.WriteString(`\n`)
		case r == '\r':
			b.WriteString(`\r`)
		case r < 0x100:
			fmt.Fprintf(&b, `\x%02x`, r)
		case r <= 0xffff:
			fmt.Fprintf(&b, `\u%04x`, r)
		default:
			fmt.Fprintf(&b, `\U%08x`, r)
		}
	}
	return b.String()
}

// escapeJSONInvisible rewrites, in encoding/json output, every rune mustEscape picks as a JSON
// \u escape. The JSON decodes to exactly the same text (encoding/json already escapes control
// characters, U+2028 and U+2029), but printed on a terminal it can no longer be reordered by a
// bidi override or hide text behind zero-width characters. Such runes only occur inside JSON
// strings, where a \u escape is always valid.
func escapeJSONInvisible(js []byte) []byte {
	i := strings.IndexFunc(string(js), mustEscape)
	if i < 0 {
		return js
	}
	out := make([]byte, 0, len(js)+16)
	out = append(out, js[:i]...)
	for _, r := range string(js[i:]) {
		switch {
		case !mustEscape(r):
			out = utf8.AppendRune(out, r)
		case r <= 0xffff:
			out = fmt.Appendf(out, `\u%04x`, r)
		default:
			r -= 0x10000 // a UTF-16 surrogate pair
			out = fmt.Appendf(out, `\u%04x\u%04x`, 0xd800+(r>>10), 0xdc00+(r&0x3ff))
		}
	}
	return out
}
