// Copyright 2026 The Petrel Authors
// SPDX-License-Identifier: Apache-2.0

package main

import (
	"fmt"
	"strings"

	"github.com/petrelchat/petrel/client"
)

// petrel chat shows one conversation only: a message from anyone else stays unseen (for recv,
// another chat or the tui to show) and is counted in a one-line notice such as
// "[2 new messages from carol: petrel chat carol]".

// unseenScan bounds the unseen messages chat reads at once from the store.
const unseenScan = 4096

// isOurs reports whether m belongs to this chat's conversation.
func (x *chatExtras) isOurs(m *client.Message) bool {
	if x.isGroup {
		x.mu.Lock()
		gid := x.group
		x.mu.Unlock()
		if gid == "" {
			// Not resolved yet (chat resolves the group once connected): the store knows it if
			// this device does.
			if g, err := x.c.Group(x.peer); err == nil {
				gid = g.ID
				x.setGroup(gid)
			}
		}
		return m.Group != "" && m.Group == gid
	}
	if m.Group != "" {
		return false
	}
	if m.Outgoing {
		return m.To == x.peer
	}
	return m.From == x.peer
}

// otherConv is the conversation of a message that is not this chat's: its key, and the command
// that opens it.
func otherConv(c *client.Client, m *client.Message) (key, what, open string) {
	if m.Group != "" {
		name := c.GroupName(m.Group)
		if name == "" {
			name = m.Group
		}
		return "#" + m.Group, "in " + name, "petrel chat --group " + shellQuote(name)
	}
	peer := m.From
	if m.Outgoing {
		peer = m.To
	}
	return peer, "from " + peer, "petrel chat " + peer
}

// shellQuote quotes s for a shell command line when it needs it.
func shellQuote(s string) string {
	if s != "" && strings.IndexFunc(s, func(r rune) bool {
		return !(r >= 'a' && r <= 'z' || r >= 'A' && r <= 'Z' || r >= '0' && r <= '9' || strings.ContainsRune("_.-/", r))
	}) < 0 {
		return s
	}
	return "'" + strings.ReplaceAll(s, "'", `'\''`) + "'"
}

// elsewhere counts the messages of other conversations that arrived during this chat.
func (x *chatExtras) elsewhere(m *client.Message) string {
	key, what, open := otherConv(x.c, m)
	x.mu.Lock()
	if x.others == nil {
		x.others = map[string]int{}
	}
	x.others[key]++
	n := x.others[key]
	x.mu.Unlock()
	return otherNotice(n, what, open)
}

func otherNotice(n int, what, open string) string {
	s := "s"
	if n == 1 {
		s = ""
	}
	return fmt.Sprintf("[%d new message%s %s: %s]", n, s, what, open)
}
