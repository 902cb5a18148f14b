// Copyright 2026 The Petrel Authors
// SPDX-License-Identifier: Apache-2.0

package main

import (
	"context"
	"fmt"
	"strings"
	"time"

	"github.com/petrelchat/petrel/client"
	"github.com/petrelchat/petrel/client/store"
)

// The settings and disappear commands, and the lines chat and recv print for timer changes.

const settingsUsage = "settings | settings read-receipts on|off | settings last-seen everyone|contacts|nobody"

func runSettings(ctx context.Context, e *env, args []string) int {
	const cmd = "settings"
	fs := newFlags(e, cmd, settingsUsage+"\n\n"+
		"Without arguments, prints this device's settings. read-receipts off: send no read\n"+
		"receipts, and hide those others send (as WhatsApp). last-seen: who may see when this\n"+
		"account is online or was last seen: everyone, contacts (the accounts this device has\n"+
		"exchanged messages with; their names are sent to the server only for this choice) or\n"+
		"nobody. The server enforces it.")
	if code, ok := parseFlags(fs, args); !ok {
		return code
	}
	switch {
	case fs.NArg() == 0:
		return showSettings(ctx, e, cmd)
	case fs.NArg() != 2:
		return usageErr(e, cmd, "want a setting and a value")
	}
	key, val := fs.Arg(0), strings.ToLower(fs.Arg(1))
	switch key {
	case "read-receipts":
		if val != "on" && val != "off" {
			return usageErr(e, cmd, "read-receipts: want on or off, not %q", val)
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
		if err := c.SetReadReceipts(val == "on"); err != nil {
			return fail(e, cmd, err)
		}
		fmt.Fprintf(e.stdout, "read receipts: %s\n", val)
		return 0
	case "last-seen":
		if val != store.LastSeenEveryone && val != store.LastSeenContacts && val != store.LastSeenNobody {
			return usageErr(e, cmd, "last-seen: want everyone, contacts or nobody, not %q", val)
		}
		s, err := startClient(ctx, e, nil, func(ev client.Event) { warnEvent(e, cmd, ev) })
		if err != nil {
			return fail(e, cmd, err)
		}
		defer s.close()
		sctx, cancel := context.WithTimeout(ctx, cliTimeout)
		defer cancel()
		if err := s.c.SetLastSeen(sctx, val); err != nil {
			return fail(e, cmd, err)
		}
		fmt.Fprintf(e.stdout, "last seen: %s\n", val)
		return 0
	}
	return usageErr(e, cmd, "unknown setting %q (want read-receipts or last-seen)", key)
}

func showSettings(_ context.Context, e *env, cmd string) int {
	st, err := openStore(e, false)
	if err != nil {
		return fail(e, cmd, err)
	}
	defer st.Close()
	c, err := client.Open(client.Config{Store: st})
	if err != nil {
		return fail(e, cmd, err)
	}
	s, err := c.Settings()
	if err != nil {
		return fail(e, cmd, err)
	}
	rr, ls := "on", s.LastSeen
	if s.ReadReceiptsOff {
		rr = "off"
	}
	if ls == "" {
		ls = store.LastSeenEveryone
	}
	fmt.Fprintf(e.stdout, "read-receipts: %s\nlast-seen: %s\n", rr, ls)
	return 0
}

// disappearTimers are the timers petrel disappear offers.
var disappearTimers = map[string]time.Duration{
	"off": 0, "1h": time.Hour, "1d": 24 * time.Hour, "7d": 7 * 24 * time.Hour, "90d": 90 * 24 * time.Hour,
}

const disappearUsage = "disappear NAME 1h|1d|7d|90d|off | disappear --group NAME 1h|1d|7d|90d|off"

func runDisappear(ctx context.Context, e *env, args []string) int {
	const cmd = "disappear"
	fs := newFlags(e, cmd, disappearUsage+"\n\n"+
		"Sets the chat's disappearing-message timer; both sides see the change. Messages sent\n"+
		"afterwards are deleted from every history that long after they were sent (received ones:\n"+
		"after they were shown), and from the server's store for devices that were offline.")
	group := fs.String("group", "", "a group chat (by name)")
	if code, ok := parseFlags(fs, reorderFlags(args, "group")); !ok {
		return code
	}
	var peer, val string
	switch {
	case *group != "" && fs.NArg() == 1:
		val = fs.Arg(0)
	case *group == "" && fs.NArg() == 2:
		peer, val = fs.Arg(0), fs.Arg(1)
	default:
		return usageErr(e, cmd, "want NAME (or --group NAME) and a timer")
	}
	d, ok := disappearTimers[strings.ToLower(val)]
	if !ok {
		return usageErr(e, cmd, "timer %q: want 1h, 1d, 7d, 90d or off", val)
	}
	s, err := startClient(ctx, e, nil, func(ev client.Event) { warnEvent(e, cmd, ev) })
	if err != nil {
		return fail(e, cmd, err)
	}
	defer s.close()
	if *group != "" {
		gctx, gcancel := context.WithTimeout(ctx, cliTimeout)
		err = s.c.SyncGroups(gctx) // a group this device learns of only now
		gcancel()
		if err == nil {
			_, err = s.c.SetGroupDisappearing(*group, d)
		}
	} else {
		_, err = s.c.SetDisappearing(peer, d)
	}
	if err != nil {
		return fail(e, cmd, err)
	}
	fctx, cancel := context.WithTimeout(ctx, cliTimeout)
	defer cancel()
	if err := s.c.Flush(fctx); err != nil {
		return fail(e, cmd, fmt.Errorf("the change is kept and sent next time: %w", err))
	}
	fmt.Fprintln(e.stdout, timerText("you", d))
	return 0
}

// timerText is how a timer change reads: "NAME set disappearing messages to 1 day", or
// "NAME turned off disappearing messages".
func timerText(who string, d time.Duration) string {
	if d == 0 {
		return who + " turned off disappearing messages"
	}
	return who + " set disappearing messages to " + timerName(d)
}

func timerName(d time.Duration) string {
	switch {
	case d%(24*time.Hour) == 0:
		n := int(d / (24 * time.Hour))
		if n == 1 {
			return "1 day"
		}
		return fmt.Sprintf("%d days", n)
	case d%time.Hour == 0:
		n := int(d / time.Hour)
		if n == 1 {
			return "1 hour"
		}
		return fmt.Sprintf("%d hours", n)
	}
	return d.String()
}

// timerLine is the text line of a timer change message (escaped for the terminal).
func timerLine(m *client.Message) string {
	who := m.From
	if m.Outgoing {
		who = "you"
	}
	return sanitize(timerText(who, m.TimerSet))
}
