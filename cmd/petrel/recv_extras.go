// Copyright 2026 The Petrel Authors
// SPDX-License-Identifier: Apache-2.0

package main

import (
	"encoding/json"
	"fmt"
	"time"

	"github.com/petrelchat/petrel/client"
)

// The other lines of recv --json: receipts and timer changes.

// jsonReceipt is a receipt line: a device of From has (delivered) or showed (read) message ID,
// which this account sent; for a group message, Group (its local name) instead of From: every
// member has (showed) it.
type jsonReceipt struct {
	Type    string `json:"type"`    // "receipt"
	Receipt string `json:"receipt"` // "delivered" or "read"
	From    string `json:"from,omitempty"`
	Group   string `json:"group,omitempty"`
	ID      string `json:"id"`
}

// jsonTimer is a disappearing-timer change: From set the chat's timer to ExpiresIn seconds (0:
// off); direction "in", or "out" (set from another device of this account, in the chat with To).
type jsonTimer struct {
	Type       string `json:"type"` // "disappearing"
	ID         string `json:"id"`
	From       string `json:"from"`
	FromDevice string `json:"from_device"`
	Direction  string `json:"direction"`
	To         string `json:"to,omitempty"`
	Group      string `json:"group,omitempty"` // a group's timer: the group's local name
	ExpiresIn  int64  `json:"expires_in"`
	ServerTime string `json:"server_time"`
}

func timerJSON(c *client.Client, m *client.Message) jsonTimer {
	j := jsonTimer{Type: "disappearing", ID: m.ID, From: m.From, FromDevice: m.FromDevice, Direction: "in",
		ExpiresIn: int64(m.TimerSet / time.Second), ServerTime: formatTime(m.ServerTime)}
	if m.Outgoing {
		j.Direction, j.To = "out", m.To
	}
	if m.Group != "" {
		j.Group = c.GroupName(m.Group)
	}
	return j
}

// printReceipt prints a receipt line (--json only: text output keeps receipts silent).
func (p *printer) printReceipt(ev client.Event) error {
	if !p.json {
		return nil
	}
	var r jsonReceipt
	switch ev := ev.(type) {
	case *client.Delivered:
		r = jsonReceipt{Type: "receipt", Receipt: "delivered", From: ev.To, ID: ev.MessageID}
		if ev.Group != "" {
			r.From, r.Group = "", p.c.GroupName(ev.Group)
		}
	case *client.Read:
		r = jsonReceipt{Type: "receipt", Receipt: "read", From: ev.To, ID: ev.MessageID}
		if ev.Group != "" {
			r.From, r.Group = "", p.c.GroupName(ev.Group)
		}
	default:
		return nil
	}
	b, err := json.Marshal(r)
	if err != nil {
		return err
	}
	p.mu.Lock()
	defer p.mu.Unlock()
	_, err = fmt.Fprintf(p.e.stdout, "%s\n", escapeJSONInvisible(b))
	return err
}
