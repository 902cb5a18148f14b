// Copyright 2026 The Petrel Authors
// SPDX-License-Identifier: Apache-2.0

package main

import (
	"context"
	"encoding/json"
	"errors"
	"fmt"
	"slices"
	"strings"

	"github.com/petrelchat/petrel/client"
)

// The group commands (README: "Groups"): group create, add, remove, leave, list, info, admin.
// A group's NAME is local to this device (the creator's name travels to the members end to end;
// a clash with another group of the device gets a suffix); a group id works wherever NAME does.

const groupUsage = "group create NAME --members A,B,... | group add NAME USER... | group remove NAME USER... |\n" +
	"       group leave NAME | group list [--json] | group info NAME [--json] | group admin NAME USER..."

func runGroup(ctx context.Context, e *env, args []string) int {
	if len(args) > 0 {
		switch args[0] {
		case "create":
			return runGroupCreate(ctx, e, args[1:])
		case "add", "remove", "admin":
			return runGroupChange(ctx, e, args[0], args[1:])
		case "leave":
			return runGroupLeave(ctx, e, args[1:])
		case "list":
			return runGroupList(ctx, e, args[1:])
		case "info":
			return runGroupInfo(ctx, e, args[1:])
		}
	}
	const cmd = "group"
	fs := newFlags(e, cmd, groupUsage+"\n\n"+
		"Groups of up to the server's max_group_members accounts, each with all its devices.\n"+
		"  create NAME --members A,B  a new group, with you as its first admin\n"+
		"  add NAME USER...           add members (admins only)\n"+
		"  remove NAME USER...        remove members (admins only)\n"+
		"  leave NAME                 leave the group (the last admin leaving makes the\n"+
		"                             longest-standing member admin)\n"+
		"  list                       your groups\n"+
		"  info NAME                  members, admins and each member's number of devices\n"+
		"  admin NAME USER...         make members admins (admins only)\n"+
		"Send with 'petrel send --group NAME TEXT', chat with 'petrel chat --group NAME'.")
	if code, ok := parseFlags(fs, args); !ok {
		return code
	}
	if fs.NArg() > 0 {
		return usageErr(e, cmd, "unknown subcommand %q (want create, add, remove, leave, list, info or admin)", fs.Arg(0))
	}
	return usageErr(e, cmd, "want a subcommand")
}

// describeGroupErr turns group errors into messages a user can act on ("" if none).
func describeGroupErr(err error) string {
	switch {
	case errors.Is(err, client.ErrNotGroupAdmin):
		return "only an admin of the group can do this (see petrel group info NAME)"
	case errors.Is(err, client.ErrUnknownGroup):
		return err.Error() + " (see petrel group list)"
	case errors.Is(err, client.ErrGroupFull):
		return "the group is full: " + err.Error()
	case errors.Is(err, client.ErrGroupName):
		return err.Error()
	}
	return ""
}

// startSynced starts the client and waits until the group backlog is applied.
func startSynced(ctx context.Context, e *env, cmd string) (*clientSession, context.Context, context.CancelFunc, error) {
	s, err := startClient(ctx, e, nil, func(ev client.Event) { warnEvent(e, cmd, ev) })
	if err != nil {
		return nil, nil, nil, err
	}
	gctx, cancel := context.WithTimeout(ctx, cliTimeout)
	if err := s.c.SyncGroups(gctx); err != nil {
		cancel()
		s.close()
		return nil, nil, nil, err
	}
	return s, gctx, cancel, nil
}

func runGroupCreate(ctx context.Context, e *env, args []string) int {
	const cmd = "group create"
	fs := newFlags(e, cmd, "group create NAME --members A,B,...\n\n"+
		"Creates a group named NAME with you as its first admin and the accounts A, B, ... as\n"+
		"members. NAME (1-64 printable characters) is sent to the members end to end; the server\n"+
		"never sees it.")
	members := fs.String("members", "", "the other members' account names, separated by commas")
	if code, ok := parseFlags(fs, reorderFlags(args, "members")); !ok {
		return code
	}
	if fs.NArg() != 1 {
		return usageErr(e, cmd, "want exactly one NAME (quote a name with spaces)")
	}
	name := fs.Arg(0)
	if !client.ValidGroupName(name) {
		return usageErr(e, cmd, "invalid group name %q (1-64 printable characters, no leading or trailing spaces)", name)
	}
	s, gctx, cancel, err := startSynced(ctx, e, cmd)
	if err != nil {
		return fail(e, cmd, err)
	}
	defer s.close()
	defer cancel()
	g, err := s.c.CreateGroup(gctx, name, splitList(*members))
	if err != nil {
		return fail(e, cmd, err)
	}
	if err := s.c.Flush(gctx); err != nil {
		fmt.Fprintf(e.stderr, "petrel %s: warning: the group's name is not sent to every member yet (it stays in the outbox): %s\n", cmd, describe(err))
	}
	fmt.Fprintf(e.stdout, "created group %s (id %s) with %s\n", sanitize(g.Name), g.ID, strings.Join(g.Members, ", "))
	return 0
}

func runGroupChange(ctx context.Context, e *env, sub string, args []string) int {
	cmd := "group " + sub
	verbs := map[string]string{"add": "adds the accounts USER... to", "remove": "removes the accounts USER... from",
		"admin": "makes the members USER... admins of"}
	fs := newFlags(e, cmd, cmd+" NAME USER...\n\n"+
		"Signs and sends a change that "+verbs[sub]+" group NAME (admins only).\n"+
		"Every member is shown the change.")
	if code, ok := parseFlags(fs, args); !ok {
		return code
	}
	if fs.NArg() < 2 {
		return usageErr(e, cmd, "want NAME and at least one USER")
	}
	group, users := fs.Arg(0), fs.Args()[1:]
	s, gctx, cancel, err := startSynced(ctx, e, cmd)
	if err != nil {
		return fail(e, cmd, err)
	}
	defer s.close()
	defer cancel()
	var done string
	switch sub {
	case "add":
		err, done = s.c.AddToGroup(gctx, group, users...), "added"
	case "remove":
		err, done = s.c.RemoveFromGroup(gctx, group, users...), "removed"
	case "admin":
		err, done = s.c.PromoteInGroup(gctx, group, users...), "made admin:"
	}
	if err != nil {
		return fail(e, cmd, err)
	}
	if err := s.c.Flush(gctx); err != nil {
		fmt.Fprintf(e.stderr, "petrel %s: warning: not everything is sent yet (it stays in the outbox): %s\n", cmd, describe(err))
	}
	fmt.Fprintf(e.stdout, "%s %s (group %s)\n", done, strings.Join(users, ", "), sanitize(group))
	return 0
}

func runGroupLeave(ctx context.Context, e *env, args []string) int {
	const cmd = "group leave"
	fs := newFlags(e, cmd, "group leave NAME\n\n"+
		"Leaves group NAME. If you are its last admin, the longest-standing member becomes admin.")
	if code, ok := parseFlags(fs, args); !ok {
		return code
	}
	if fs.NArg() != 1 {
		return usageErr(e, cmd, "want exactly one NAME")
	}
	s, gctx, cancel, err := startSynced(ctx, e, cmd)
	if err != nil {
		return fail(e, cmd, err)
	}
	defer s.close()
	defer cancel()
	if err := s.c.LeaveGroup(gctx, fs.Arg(0)); err != nil {
		return fail(e, cmd, err)
	}
	fmt.Fprintf(e.stdout, "left group %s\n", sanitize(fs.Arg(0)))
	return 0
}

// jsonGroup is one group in group list --json and group info --json.
type jsonGroup struct {
	Name    string         `json:"name"`
	ID      string         `json:"id"`
	Version uint64         `json:"version"`
	Members []string       `json:"members"`
	Admins  []string       `json:"admins"`
	Left    bool           `json:"left"`
	Devices map[string]int `json:"devices,omitempty"`
}

func toJSONGroup(g client.Group) jsonGroup {
	return jsonGroup{Name: g.Name, ID: g.ID, Version: g.Version, Members: g.Members, Admins: g.Admins, Left: g.Left, Devices: g.Devices}
}

func printJSON(e *env, v any) error {
	b, err := json.Marshal(v)
	if err != nil {
		return err
	}
	_, err = fmt.Fprintf(e.stdout, "%s\n", escapeJSONInvisible(b))
	return err
}

func runGroupList(ctx context.Context, e *env, args []string) int {
	const cmd = "group list"
	fs := newFlags(e, cmd, "group list [--json]\n\n"+
		"Lists your groups (after applying the changes waiting on the server): NAME, role\n"+
		"(admin, member, or left), number of members and version. With --json: a JSON array of\n"+
		"objects with name, id, version, members, admins and left.")
	asJSON := fs.Bool("json", false, "print a JSON array")
	if code, ok := parseFlags(fs, args); !ok {
		return code
	}
	if fs.NArg() > 0 {
		return usageErr(e, cmd, "unexpected argument %q", fs.Arg(0))
	}
	s, _, cancel, err := startSynced(ctx, e, cmd)
	if err != nil {
		return fail(e, cmd, err)
	}
	defer s.close()
	defer cancel()
	gs, err := s.c.Groups()
	if err != nil {
		return fail(e, cmd, err)
	}
	if *asJSON {
		out := make([]jsonGroup, 0, len(gs))
		for _, g := range gs {
			out = append(out, toJSONGroup(g))
		}
		if err := printJSON(e, out); err != nil {
			return fail(e, cmd, err)
		}
		return 0
	}
	me := s.c.Account().Name
	for _, g := range gs {
		role := "member"
		switch {
		case g.Left:
			role = "left"
		case slices.Contains(g.Admins, me):
			role = "admin"
		}
		fmt.Fprintf(e.stdout, "%-24s %-7s %3d members  v%d\n", sanitize(g.Name), role, len(g.Members), g.Version)
	}
	return 0
}

func runGroupInfo(ctx context.Context, e *env, args []string) int {
	const cmd = "group info"
	fs := newFlags(e, cmd, "group info NAME [--json]\n\n"+
		"Shows group NAME as the server holds it now (each change verified): its id, version,\n"+
		"members (admins marked) and each member's number of devices. With --json: an object\n"+
		"with name, id, version, members, admins, left and devices (member -> count).")
	asJSON := fs.Bool("json", false, "print a JSON object")
	if code, ok := parseFlags(fs, reorderFlags(args, "json")); !ok {
		return code
	}
	if fs.NArg() != 1 {
		return usageErr(e, cmd, "want exactly one NAME")
	}
	s, gctx, cancel, err := startSynced(ctx, e, cmd)
	if err != nil {
		return fail(e, cmd, err)
	}
	defer s.close()
	defer cancel()
	g, err := s.c.GroupInfo(gctx, fs.Arg(0))
	if err != nil {
		return fail(e, cmd, err)
	}
	if *asJSON {
		if err := printJSON(e, toJSONGroup(g)); err != nil {
			return fail(e, cmd, err)
		}
		return 0
	}
	fmt.Fprintf(e.stdout, "group:   %s\nid:      %s\nversion: %d\nadmins:  %s\nmembers: %d\n",
		sanitize(g.Name), g.ID, g.Version, strings.Join(g.Admins, ", "), len(g.Members))
	for _, m := range g.Members {
		mark := ""
		if slices.Contains(g.Admins, m) {
			mark = " (admin)"
		}
		fmt.Fprintf(e.stdout, "  %-32s %d devices%s\n", m, g.Devices[m], mark)
	}
	return 0
}

// messageText is the text form of any message: messageLine for 1:1, "[GROUP] NAME: TEXT" for a
// group message and "[GROUP] alice added carol" for a membership change (escaped).
func messageText(c *client.Client, m *client.Message) string {
	if m.Group == "" {
		return messageLine(m)
	}
	name := c.GroupName(m.Group)
	if m.GroupEvent != nil {
		return fmt.Sprintf("[%s] %s", sanitize(name), sanitize(m.GroupEvent.String()))
	}
	if m.Timer {
		return fmt.Sprintf("[%s] %s", sanitize(name), timerLine(m))
	}
	return fmt.Sprintf("[%s] %s: %s", sanitize(name), sanitize(m.From), sanitize(m.Text))
}

// jsonGroupEvent is the recv --json line of a membership change.
type jsonGroupEvent struct {
	Type       string   `json:"type"` // "group_event"
	Group      string   `json:"group"`
	GroupID    string   `json:"group_id"`
	Actor      string   `json:"actor"`
	Action     string   `json:"action"` // create, add, remove, leave, promote
	Targets    []string `json:"targets"`
	Version    uint64   `json:"version"`
	Text       string   `json:"text"`
	ReceivedAt string   `json:"received_at"`
}

func groupEventJSON(c *client.Client, m *client.Message) ([]byte, error) {
	ev := m.GroupEvent
	targets := ev.Targets
	if targets == nil {
		targets = []string{}
	}
	return json.Marshal(jsonGroupEvent{Type: "group_event", Group: c.GroupName(m.Group), GroupID: m.Group, Actor: ev.Actor,
		Action: ev.Kind, Targets: targets, Version: ev.Version, Text: ev.String(), ReceivedAt: formatTime(m.ReceivedAt)})
}
