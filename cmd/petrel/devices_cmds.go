// Copyright 2026 The Petrel Authors
// SPDX-License-Identifier: Apache-2.0

package main

import (
	"context"
	"encoding/json"
	"errors"
	"fmt"
	"io"
	"strings"
	"time"

	"rsc.io/qr"

	"github.com/petrelchat/petrel/client"
)

// The linked-device commands: link (on the new device), devices, devices approve, devices
// remove (README: "Linked devices").

func runLink(ctx context.Context, e *env, args []string) int {
	const cmd = "link"
	fs := newFlags(e, cmd, "link --server URL[,URL...] [--no-history] [--wait DURATION]\n\n"+
		"Makes this home a new device of an existing account. Prints 'code: CODE' and the same\n"+
		"code as a QR code, and waits: on a device of the account (its primary), run\n"+
		"'petrel devices approve CODE'. The code works once and expires (default 5 minutes).\n"+
		"Once approved, prints 'linked to NAME as device ID', receives the recent history the\n"+
		"primary sends (unless --no-history) and exits 0.")
	server := fs.String("server", "", "the account's server base URL (http://HOST:PORT or https://HOST), or several separated by commas")
	noHistory := fs.Bool("no-history", false, "ask the approving device not to send recent history")
	wait := fs.Duration("wait", 30*time.Second, "after linking, how long to wait for the next history chunk")
	if code, ok := parseFlags(fs, args); !ok {
		return code
	}
	if fs.NArg() > 0 {
		return usageErr(e, cmd, "unexpected argument %q", fs.Arg(0))
	}
	if *server == "" {
		return usageErr(e, cmd, "--server is required")
	}
	urls := splitList(*server)
	if len(urls) == 0 {
		return usageErr(e, cmd, "--server needs at least one URL")
	}
	st, err := openStore(e, true)
	if err != nil {
		return fail(e, cmd, err)
	}
	opts := client.LinkOptions{ServerURL: urls[0], ServerURLs: urls[1:], NoHistory: *noHistory,
		OnCode: func(code string, expires time.Time) {
			fmt.Fprintf(e.stdout, "code: %s\n", code)
			if q, err := renderQR(code); err == nil {
				io.WriteString(e.stdout, q)
			}
			fmt.Fprintf(e.stdout, "On your primary device run: petrel devices approve %s\nwaiting for approval (the code expires at %s)...\n",
				code, expires.Local().Format(time.TimeOnly))
		}}
	linked, err := client.Link(ctx, st, opts)
	st.Close()
	if err != nil {
		return fail(e, cmd, err)
	}
	// Authenticate as the new device, then take the history the primary sends.
	var (
		connected = make(chan struct{}, 1)
		queueDone = make(chan struct{}, 1)
		chunks    = make(chan *client.HistoryReceived, 16)
	)
	s, err := startClient(ctx, e, nil, func(ev client.Event) {
		switch ev := ev.(type) {
		case *client.Connected:
			select {
			case connected <- struct{}{}:
			default:
			}
		case *client.QueueEmpty:
			select {
			case queueDone <- struct{}{}:
			default:
			}
		case *client.HistoryReceived:
			select {
			case chunks <- ev:
			case <-ctx.Done():
			}
		case *client.Message:
			// Messages that arrive meanwhile stay unseen for recv.
		default:
			warnEvent(e, cmd, ev)
		}
	})
	if err != nil {
		return fail(e, cmd, err)
	}
	defer s.close()
	timeout := time.NewTimer(cliTimeout)
	defer timeout.Stop()
	select {
	case <-connected:
	case err := <-s.runErr:
		return fail(e, cmd, fmt.Errorf("the device was linked but could not connect: %w", err))
	case <-timeout.C:
		return fail(e, cmd, fmt.Errorf("the device was linked but could not connect: %w", s.c.LastError()))
	}
	fmt.Fprintf(e.stdout, "linked to %s as device %s (%s)\nfingerprint: %s\n", linked.Name, linked.DeviceID,
		sanitize(linked.DeviceName), linked.Fingerprint)
	if *noHistory {
		return 0
	}
	total, n := 0, 0
	idle := time.NewTimer(*wait)
	defer idle.Stop()
	for {
		select {
		case h := <-chunks:
			n++
			total += h.Messages
			fmt.Fprintf(e.stdout, "history: %d chunks, %d messages\n", n, total)
			if h.Last {
				fmt.Fprintf(e.stdout, "history: done\n")
				return 0
			}
			idle.Reset(*wait)
		case <-queueDone:
		case <-idle.C:
			fmt.Fprintf(e.stderr, "petrel %s: no history arrived within %v; what arrives later is kept (petrel recv)\n", cmd, *wait)
			return 0
		case err := <-s.runErr:
			if err == nil {
				err = client.ErrClosed
			}
			return fail(e, cmd, err)
		}
	}
}

// cliTimeout bounds waits for the server in the device commands.
const cliTimeout = 30 * time.Second

// renderQR draws text as a QR code with Unicode half blocks: two rows of modules per line, light
// modules drawn (for a terminal with a dark background), with a quiet zone of 2 modules.
func renderQR(text string) (string, error) {
	c, err := qr.Encode(text, qr.M)
	if err != nil {
		return "", err
	}
	const quiet = 2
	light := func(x, y int) bool { return !c.Black(x, y) } // outside the code: light (quiet zone)
	var b strings.Builder
	for y := -quiet; y < c.Size+quiet; y += 2 {
		for x := -quiet; x < c.Size+quiet; x++ {
			top, bottom := light(x, y), y+1 < c.Size+quiet && light(x, y+1)
			switch {
			case top && bottom:
				b.WriteRune('█')
			case top:
				b.WriteRune('▀')
			case bottom:
				b.WriteRune('▄')
			default:
				b.WriteByte(' ')
			}
		}
		b.WriteByte('\n')
	}
	return b.String(), nil
}

// jsonDevice is one element of devices --json.
type jsonDevice struct {
	ID       string `json:"id"`
	Name     string `json:"name"`
	Primary  bool   `json:"primary"`
	This     bool   `json:"this"`
	LinkedAt string `json:"linked_at"`
	LastSeen string `json:"last_seen"`
}

func runDevices(ctx context.Context, e *env, args []string) int {
	if len(args) > 0 {
		switch args[0] {
		case "approve":
			return runDevicesApprove(ctx, e, args[1:])
		case "remove":
			return runDevicesRemove(ctx, e, args[1:])
		}
	}
	const cmd = "devices"
	fs := newFlags(e, cmd, "devices [--json] | devices approve CODE [--name NAME] | devices remove ID\n\n"+
		"Lists this account's devices: id, name, when linked, when last seen (to the hour);\n"+
		"'*' marks this device. With --json: one JSON array of objects with id, name, primary,\n"+
		"this, linked_at and last_seen (RFC 3339, ms; \"\" when unknown).\n"+
		"  approve CODE  add the device showing CODE (petrel link) to this account (primary only)\n"+
		"  remove ID     unlink device ID (from the primary; a companion may remove itself)")
	asJSON := fs.Bool("json", false, "print a JSON array")
	if code, ok := parseFlags(fs, args); !ok {
		return code
	}
	if fs.NArg() > 0 {
		return usageErr(e, cmd, "unknown subcommand %q (want approve or remove)", fs.Arg(0))
	}
	s, err := startClient(ctx, e, nil, func(ev client.Event) { warnEvent(e, cmd, ev) })
	if err != nil {
		return fail(e, cmd, err)
	}
	defer s.close()
	dctx, cancel := context.WithTimeout(ctx, cliTimeout)
	defer cancel()
	devs, err := s.c.Devices(dctx)
	if err != nil {
		return fail(e, cmd, err)
	}
	if *asJSON {
		out := make([]jsonDevice, 0, len(devs))
		for _, d := range devs {
			out = append(out, jsonDevice{ID: d.ID, Name: d.Name, Primary: d.Primary, This: d.This,
				LinkedAt: formatTime(d.LinkedAt), LastSeen: formatTime(d.LastSeen)})
		}
		b, err := json.Marshal(out)
		if err != nil {
			return fail(e, cmd, err)
		}
		fmt.Fprintf(e.stdout, "%s\n", escapeJSONInvisible(b))
		return 0
	}
	fmt.Fprintf(e.stdout, "  %-32s  %-20s  %-16s  %-16s\n", "ID", "NAME", "LINKED", "LAST SEEN")
	for _, d := range devs {
		mark := " "
		if d.This {
			mark = "*"
		}
		name := d.Name
		if d.Primary {
			name += " (primary)"
		}
		fmt.Fprintf(e.stdout, "%s %-32s  %-20s  %-16s  %-16s\n", mark, d.ID, sanitize(name), shortTime(d.LinkedAt), shortTime(d.LastSeen))
	}
	return 0
}

func shortTime(t time.Time) string {
	if t.IsZero() {
		return "-"
	}
	return t.Local().Format("2006-01-02 15:04")
}

func runDevicesApprove(ctx context.Context, e *env, args []string) int {
	const cmd = "devices approve"
	fs := newFlags(e, cmd, "devices approve CODE [--name NAME]\n\n"+
		"Adds the device that shows CODE (petrel link) to this account, named NAME, and sends it\n"+
		"the recent history unless it asked for none. Run it on the account's primary device.")
	name := fs.String("name", "", "the new device's name, shown by petrel devices (default: device-N)")
	if code, ok := parseFlags(fs, reorderFlags(args, "name")); !ok {
		return code
	}
	if fs.NArg() == 0 {
		return usageErr(e, cmd, "want the CODE the new device shows")
	}
	code := strings.Join(fs.Args(), "")
	s, err := startClient(ctx, e, nil, func(ev client.Event) { warnEvent(e, cmd, ev) })
	if err != nil {
		return fail(e, cmd, err)
	}
	defer s.close()
	if !s.c.Account().Primary {
		return fail(e, cmd, client.ErrNotPrimary)
	}
	actx, cancel := context.WithTimeout(ctx, cliTimeout)
	defer cancel()
	devName := *name
	if devName == "" {
		devs, err := s.c.Devices(actx)
		if err != nil {
			return fail(e, cmd, err)
		}
		devName = fmt.Sprintf("device-%d", len(devs)+1)
	}
	ap, err := s.c.ApproveLink(actx, code, devName)
	if err != nil {
		return fail(e, cmd, err)
	}
	fmt.Fprintf(e.stdout, "approved device %s (%s)\nfingerprint: %s\n", ap.DeviceID, sanitize(ap.Name), ap.Fingerprint)
	if ap.HistoryChunks > 0 {
		if err := s.c.Flush(actx); err != nil {
			return fail(e, cmd, fmt.Errorf("the device was linked; its history is not sent yet (it stays in the outbox): %w", err))
		}
		fmt.Fprintf(e.stdout, "sent history: %d chunks\n", ap.HistoryChunks)
	}
	return 0
}

func runDevicesRemove(ctx context.Context, e *env, args []string) int {
	const cmd = "devices remove"
	fs := newFlags(e, cmd, "devices remove ID\n\n"+
		"Unlinks device ID (see petrel devices) from this account: the server stops delivering to\n"+
		"it and drops its inbox, and contacts stop encrypting to it. From the primary any other\n"+
		"device; from a companion only itself.")
	if code, ok := parseFlags(fs, args); !ok {
		return code
	}
	if fs.NArg() != 1 {
		return usageErr(e, cmd, "want exactly one device ID")
	}
	id := strings.ToLower(fs.Arg(0))
	s, err := startClient(ctx, e, nil, func(ev client.Event) { warnEvent(e, cmd, ev) })
	if err != nil {
		return fail(e, cmd, err)
	}
	defer s.close()
	rctx, cancel := context.WithTimeout(ctx, cliTimeout)
	defer cancel()
	if err := s.c.RemoveDevice(rctx, id); err != nil {
		return fail(e, cmd, err)
	}
	if id == s.c.Account().DeviceID {
		fmt.Fprintf(e.stdout, "removed this device from %s\n", s.c.Account().Name)
		return 0
	}
	fmt.Fprintf(e.stdout, "removed device %s\n", id)
	return 0
}

// reorderFlags moves "--NAME VALUE" (and --NAME=VALUE) pairs for the given flag names in front
// of the positional arguments, so that "approve CODE --name X" parses like "approve --name X CODE".
func reorderFlags(args []string, names ...string) []string {
	var flags, rest []string
	for i := 0; i < len(args); i++ {
		a := args[i]
		matched := false
		for _, n := range names {
			switch {
			case a == "-"+n || a == "--"+n:
				flags = append(flags, a)
				if i+1 < len(args) {
					flags = append(flags, args[i+1])
					i++
				}
				matched = true
			case strings.HasPrefix(a, "-"+n+"=") || strings.HasPrefix(a, "--"+n+"="):
				flags = append(flags, a)
				matched = true
			}
		}
		if !matched {
			rest = append(rest, a)
		}
	}
	return append(flags, rest...)
}

// describeDeviceErr turns linked-device errors into messages a user can act on ("" if none).
func describeDeviceErr(err error) string {
	switch {
	case errors.Is(err, client.ErrLinkExpired):
		return "the link code is unknown, already used or expired: run petrel link again for a new code (" + err.Error() + ")"
	case errors.Is(err, client.ErrTooManyDevices):
		return err.Error() + " (see petrel devices, then petrel devices remove ID)"
	case errors.Is(err, client.ErrNotPrimary):
		return "approve from your primary device: " + err.Error()
	case errors.Is(err, client.ErrPermissionDenied):
		return "not allowed from this device (approve links and remove other devices from your primary device): " + err.Error()
	case errors.Is(err, client.ErrDeviceRemoved):
		return "this device was removed from its account (by its primary device, or because the account was recovered on another device): " +
			"link it again with petrel link in a new --home, or recover the account there with petrel recover (" + err.Error() + ")"
	case errors.Is(err, client.ErrUntrustedDeviceList):
		return "refusing a device list that does not verify: " + err.Error()
	}
	return ""
}
