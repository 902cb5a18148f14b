// Copyright 2026 The Petrel Authors
// SPDX-License-Identifier: Apache-2.0

package main

import (
	"fmt"
	"strings"
	"time"

	tea "charm.land/bubbletea/v2"
	"charm.land/lipgloss/v2"
	"github.com/rivo/uniseg"

	"github.com/petrelchat/petrel/client/store"
)

// The tui's screen. Every text from the network (names, messages, group names) goes through
// sanitize before it is laid out, so no message can move the cursor, forge a line or reorder
// what is shown.

var (
	styleBold   = lipgloss.NewStyle().Bold(true)
	styleFaint  = lipgloss.NewStyle().Faint(true)
	styleRead   = lipgloss.NewStyle().Foreground(lipgloss.Blue)
	styleFailed = lipgloss.NewStyle().Foreground(lipgloss.Red)
	styleStatus = lipgloss.NewStyle().Reverse(true)
)

// reconnectedShown is how long the status line says "reconnected".
const reconnectedShown = 30 * time.Second

// tuiHelp is the help shown by /help.
var tuiHelp = []string{
	"Keys",
	"  Tab, Ctrl-N, Down      next conversation",
	"  Shift-Tab, Ctrl-P, Up  previous conversation",
	"  PgUp, PgDn             scroll the conversation",
	"  Enter                  send the message",
	"  Left/Right, Home/End   move in the message; Backspace, Delete, Ctrl-W, Ctrl-U edit",
	"  Esc                    close help, clear a search",
	"  Ctrl-C, Ctrl-D         quit",
	"Commands",
	"  /new NAME              open a conversation with account NAME",
	"  /group create NAME USER...   a new group with you as admin",
	"  /group add USER...     add members to the open group (admins)",
	"  /group remove USER...  remove members from the open group (admins)",
	"  /group leave           leave the open group",
	"  /search TEXT           show the open conversation's messages with TEXT",
	"  /help                  this help",
	"  /quit                  leave",
	"  //TEXT                 send a message that starts with /",
	"Marks: … queued, ✓ sent (the server has it), ✓✓ delivered, ✓✓ read (blue).",
}

// width is the number of terminal cells s takes (s holds no escape sequences).
func width(s string) int { return uniseg.StringWidth(s) }

// truncate cuts s to at most w cells, with … when it was cut.
func truncate(s string, w int) string {
	if width(s) <= w {
		return s
	}
	if w <= 1 {
		return strings.Repeat(".", max(w, 0))
	}
	var b strings.Builder
	used := 0
	for _, g := range graphemes(s) {
		gw := width(g)
		if used+gw > w-1 {
			break
		}
		b.WriteString(g)
		used += gw
	}
	return b.String() + "…"
}

// wrap breaks s into lines of at most w cells, at spaces when it can, by grapheme otherwise;
// lines after the first start with indent spaces.
func wrap(s string, w, indent int) []string {
	if w < indent+4 {
		indent = 0
	}
	var lines []string
	var cur strings.Builder
	curW := 0
	limit := w
	flush := func() {
		lines = append(lines, cur.String())
		cur.Reset()
		cur.WriteString(strings.Repeat(" ", indent))
		curW, limit = indent, w
	}
	for _, word := range strings.SplitAfter(s, " ") {
		ww := width(word)
		if curW+width(strings.TrimRight(word, " ")) > limit && curW > indent {
			flush()
		}
		if curW+ww <= limit {
			cur.WriteString(word)
			curW += ww
			continue
		}
		for _, g := range graphemes(word) {
			gw := width(g)
			if curW+gw > limit && curW > indent {
				flush()
			}
			cur.WriteString(g)
			curW += gw
		}
	}
	if cur.Len() > 0 || len(lines) == 0 {
		lines = append(lines, cur.String())
	}
	for i := range lines {
		lines[i] = strings.TrimRight(lines[i], " ")
	}
	return lines
}

// pad fills a (possibly styled) line with spaces to w cells.
func pad(s string, w int) string {
	if n := w - lipgloss.Width(s); n > 0 {
		return s + strings.Repeat(" ", n)
	}
	return s
}

// markOf is an own message's mark, styled.
func markOf(it *tuiItem) string {
	switch it.status {
	case store.StatusPending, "":
		return styleFaint.Render("… queued")
	case store.StatusSent:
		return "✓ sent"
	case store.StatusDelivered:
		return "✓✓ delivered"
	case store.StatusRead:
		return styleRead.Render("✓✓ read")
	case store.StatusFailed:
		return styleFailed.Render("✗ failed: " + sanitize(it.fail))
	}
	return sanitize(string(it.status))
}

// dayName is a day separator's label.
func dayName(t, now time.Time) string {
	y, m, d := t.Date()
	ny, nm, nd := now.Date()
	switch {
	case y == ny && m == nm && d == nd:
		return "Today"
	case now.AddDate(0, 0, -1).Format("2006-01-02") == t.Format("2006-01-02"):
		return "Yesterday"
	}
	return t.Format("Mon 2 Jan 2006")
}

// itemLines lays out one item in w cells.
func itemLines(it *tuiItem, w int) []string {
	ts := it.at.Local().Format("15:04")
	if it.note {
		lines := wrap(ts+" · "+sanitize(it.text), w, 8)
		for i := range lines {
			lines[i] = styleFaint.Render(lines[i])
		}
		return lines
	}
	who := sanitize(it.from)
	if it.own || it.synced {
		who = "you"
	}
	who = truncate(who, 20)
	lines := wrap(ts+" "+who+": "+sanitize(it.text), w, 6)
	// Style the first line's time and name (the wrap keeps them on it: the name is at most 20).
	if first := lines[0]; strings.HasPrefix(first, ts+" "+who+":") {
		lines[0] = styleFaint.Render(ts) + " " + styleBold.Render(who) + first[len(ts)+1+len(who):]
	}
	if it.own {
		mark := markOf(it)
		last := lines[len(lines)-1]
		if lipgloss.Width(last)+1+lipgloss.Width(mark) <= w {
			lines[len(lines)-1] = last + " " + mark
		} else {
			lines = append(lines, "      "+mark)
		}
	}
	return lines
}

// convLines lays out the open conversation: day separators, items (or search results, or help),
// and for each line the item it shows (nil for the others).
func (m *tuiModel) convLines(cv *tuiConv, w int) ([]string, []*tuiItem) {
	if m.help {
		var out []string
		for _, h := range tuiHelp {
			out = append(out, wrap(h, w, 4)...)
		}
		return out, make([]*tuiItem, len(out))
	}
	var out []string
	var owners []*tuiItem
	needle := strings.ToLower(m.search)
	matches := 0
	var lastDay string
	now := time.Now()
	for _, it := range cv.items {
		if needle != "" && !strings.Contains(strings.ToLower(it.text), needle) {
			continue
		}
		matches++
		if day := it.at.Local().Format("2006-01-02"); day != lastDay {
			lastDay = day
			label := " " + dayName(it.at.Local(), now) + " "
			side := max(2, (w-width(label))/2)
			out = append(out, styleFaint.Render(truncate(strings.Repeat("─", side)+label+strings.Repeat("─", side), w)))
			owners = append(owners, nil)
		}
		for _, l := range itemLines(it, w) {
			out = append(out, l)
			owners = append(owners, it)
		}
	}
	if needle != "" {
		head := fmt.Sprintf("search %q: %d match(es) — Esc clears", sanitize(m.search), matches)
		out = append([]string{styleBold.Render(truncate(head, w))}, out...)
		owners = append([]*tuiItem{nil}, owners...)
	} else if len(cv.items) == 0 {
		out = append(out, styleFaint.Render("no messages yet: type one and press Enter"))
		owners = append(owners, nil)
	}
	return out, owners
}

// panes returns the widths of the list and of the open conversation, and the lines of the
// conversation's body (cv may be nil).
func (m *tuiModel) panes(cv *tuiConv) (leftW, rightW, bodyH int) {
	leftW = min(28, m.width/3)
	rightW = m.width - leftW - 1
	bodyH = m.height - 3 // the header, the status line, the composer
	if cv != nil && len(cv.typing) > 0 {
		bodyH--
	}
	return leftW, rightW, bodyH
}

// statusText is the status line in words.
func (m *tuiModel) statusText() string {
	queued := ""
	switch {
	case m.queued == 1:
		queued = "1 message queued"
	case m.queued > 1:
		queued = fmt.Sprintf("%d messages queued", m.queued)
	}
	var s string
	switch m.conn {
	case connConnecting:
		s = "connecting…"
	case connOnline:
		s = "connected as " + m.me
		if !m.reconnected.IsZero() && time.Since(m.reconnected) < reconnectedShown {
			s = "reconnected"
		}
		if queued != "" {
			s += " — sending " + queued
		}
	case connOffline:
		s = "offline"
		if queued != "" {
			s += " — " + queued
		}
		if wait := time.Until(m.retryAt).Round(time.Second); wait > 0 {
			s += fmt.Sprintf(" (retrying in %v)", wait)
		} else {
			s += " (retrying…)"
		}
	case connStopped:
		s = "stopped"
		if m.stopErr != "" {
			s += ": " + m.stopErr
		}
	}
	if m.notice != "" {
		s += " · " + m.notice
	}
	return s
}

// View draws the screen.
func (m *tuiModel) View() tea.View {
	W, H := m.width, m.height
	if W < 20 || H < 6 {
		m.noteDrawn(nil)
		v := tea.NewView("petrel: the window is too small")
		v.AltScreen = true
		return v
	}
	L := min(28, W/3)
	R := W - L - 1
	panelH := H - 2

	// The conversation list: two lines per conversation, the open one kept in view.
	left := []string{styleBold.Render(truncate(" Conversations", L))}
	if len(m.order) == 0 {
		left = append(left, styleFaint.Render(truncate(" none yet: /new NAME", L)))
	}
	perView := max(1, (panelH-1)/2)
	first := 0
	if i := indexOf(m.order, m.open); i >= perView {
		first = i - perView + 1
	}
	for _, k := range m.order[first:min(len(m.order), first+perView)] {
		cv := m.convs[k]
		marker := "  "
		if k == m.open {
			marker = "▸ "
		}
		title := sanitize(cv.title)
		if cv.group != "" {
			title = "# " + title
		}
		if cv.online {
			title += " ●"
		}
		unread := ""
		if cv.unread > 0 {
			unread = fmt.Sprintf(" (%d)", cv.unread)
		}
		line := marker + truncate(title, L-2-width(unread)) + unread
		if k == m.open || cv.unread > 0 {
			line = styleBold.Render(line)
		}
		left = append(left, line, styleFaint.Render("  "+truncate(sanitize(cv.preview), L-2)))
	}

	// The open conversation.
	var right []string
	if cv, ok := m.convs[m.open]; ok {
		head := sanitize(cv.title)
		if cv.group != "" {
			if g, err := m.c.Group(cv.group); err == nil {
				head = fmt.Sprintf("%s — %d members: %s", head, len(g.Members), sanitize(strings.Join(g.Members, ", ")))
				if g.Left {
					head += " (you left)"
				}
			}
		} else if cv.presence != "" {
			head += " — " + sanitize(cv.presence)
		}
		right = append(right, styleBold.Render(truncate(head, R)))
		bodyH := panelH - 1
		var typers []string
		for who := range cv.typing {
			typers = append(typers, sanitize(who))
		}
		if len(typers) > 0 {
			bodyH--
		}
		lines, owners := m.convLines(cv, R)
		end := len(lines) - m.scroll
		if end < min(bodyH, len(lines)) {
			end = min(bodyH, len(lines))
			m.scroll = len(lines) - end
		}
		start := max(0, end-bodyH)
		right = append(right, lines[start:end]...)
		m.noteDrawn(owners[start:end])
		for len(right) < bodyH+1 {
			right = append(right, "")
		}
		if len(typers) > 0 {
			verb := " is typing…"
			if len(typers) > 1 {
				verb = " are typing…"
			}
			right = append(right, styleFaint.Render(truncate(strings.Join(sortedCopy(typers), ", ")+verb, R)))
		}
	} else if m.help {
		m.noteDrawn(nil)
		for _, h := range tuiHelp {
			right = append(right, wrap(h, R, 4)...)
		}
	} else {
		m.noteDrawn(nil)
		right = append(right, "", styleFaint.Render(truncate(" /new NAME opens a conversation; /help lists keys and commands", R)))
	}

	var b strings.Builder
	for i := 0; i < panelH; i++ {
		l, r := "", ""
		if i < len(left) {
			l = left[i]
		}
		if i < len(right) {
			r = right[i]
		}
		b.WriteString(pad(l, L))
		b.WriteString("│")
		b.WriteString(r)
		b.WriteString("\n")
	}
	b.WriteString(styleStatus.Render(pad(truncate(" "+m.statusText(), W), W)))
	b.WriteString("\n")
	view, col := m.input.View(W - 3)
	if m.input.Empty() && m.open == "" {
		view = styleFaint.Render(truncate("/new NAME to start, /help for help", W-3))
	}
	b.WriteString("> " + view)
	v := tea.NewView(b.String())
	v.AltScreen = true
	v.Cursor = tea.NewCursor(2+col, H-1)
	return v
}

func indexOf(list []string, s string) int {
	for i, x := range list {
		if x == s {
			return i
		}
	}
	return -1
}

func sortedCopy(s []string) []string {
	out := append([]string(nil), s...)
	for i := 1; i < len(out); i++ {
		for j := i; j > 0 && out[j] < out[j-1]; j-- {
			out[j], out[j-1] = out[j-1], out[j]
		}
	}
	return out
}
