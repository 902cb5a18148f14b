// Copyright 2026 The Petrel Authors
// SPDX-License-Identifier: Apache-2.0

package client

import (
	"context"
	"encoding/hex"
	"errors"
	"fmt"
	"io"
	"slices"
	"strings"
	"sync"
	"sync/atomic"
	"time"
	"unicode"
	"unicode/utf8"

	"github.com/petrelchat/petrel/client/store"
	petrelv1 "github.com/petrelchat/petrel/proto/petrel/v1"
	"google.golang.org/protobuf/proto"
)

// Groups (docs/protocol.md, "Groups"). The server keeps each group's membership and fans a group
// message out to every member device; everything else is end to end:
//
//   - Membership changes are GroupEvents signed by the acting device (petrelv1.SignGroupEvent).
//     Every member checks each event it receives against its own previous state with the rules
//     the server applies (petrelv1.ParseGroupEvent, VerifyGroupEvent, NextGroupState), the
//     signature with the actor device's identity key as the actor account's verified device list
//     names it. An event whose actor's list is not known yet, or that skips versions, waits in the
//     store for the sender loop (syncGroups), which fetches what is missing.
//   - Group messages are encrypted once with this device's sender key (e2ee.SenderKey) for the
//     group and sent as one group Send. The sender key is given to every member device over the
//     pairwise sessions (Content.sender_key) before the first message that needs it, and replaced
//     (rotated) before the next message once a device that holds it is no longer a member device.
//   - A receiver that gets a message under a sender key it does not have keeps it (bounded) and
//     asks the sender device for the key (Content.sender_key_request); it decrypts once the key
//     arrives. The answer is the distribution that device was given (or is owed now), never an
//     earlier one, so a member added later cannot read earlier messages.
//   - A group's name travels end to end (Content.group_meta); each device keeps a local name per
//     group, unique on the device.

const (
	// maxGroupNameBytes bounds a group's name.
	maxGroupNameBytes = 64
	// maxHeldItems bounds the group contents kept waiting for a key or a group (oldest dropped).
	maxHeldItems = 1024
	// heldTTL: held items older than this are dropped.
	heldTTL = 7 * 24 * time.Hour
	// maxPendingGroupEvents bounds the membership events kept waiting (more are dropped).
	maxPendingGroupEvents = 1024
	// maxReceiversPerDevice bounds the sender keys kept per member device (oldest dropped).
	maxReceiversPerDevice = 4
	// maxOldKeys bounds the replaced sender keys of this device whose distributions may still be
	// asked for.
	maxOldKeys = 2
	// maxGroupAwaiting: a group message sent to more member devices than this leaves the outbox
	// at the server's ack instead of waiting for every device's receipt.
	maxGroupAwaiting = 256
	// maxGroupSends bounds the sends of one group message whose receipts stay missing.
	maxGroupSends = 3
	// groupChangeRetries bounds the re-signs of a change refused as stale.
	groupChangeRetries = 3
	// groupFetchConcurrency bounds the member accounts fetched or sent to at once.
	groupFetchConcurrency = 16
	// skRequestInterval is the least time between two requests (or two answers) for one sender
	// key of one device.
	skRequestInterval = 30 * time.Second
	// maxRateEntries bounds the request/answer rate-limit tables.
	maxRateEntries = 4096
)

// Errors of the group operations.
var (
	// ErrGroupName reports a group name that is not 1-64 bytes of printable UTF-8 without
	// leading or trailing spaces, or one already used on this device.
	ErrGroupName = errors.New("invalid group name")
	// ErrNotGroupAdmin reports a change only an admin may make.
	ErrNotGroupAdmin = errors.New("only a group admin can do this")
	// ErrGroupEventRefused reports a membership event that does not verify or break the rules.
	ErrGroupEventRefused = errors.New("group event refused")
)

// Group is a group this account is (or was) a member of, as this device verified it.
type Group struct {
	ID string
	// Name is the group's local name on this device.
	Name    string
	Version uint64
	// Members and Admins are sorted.
	Members, Admins []string
	// Left is set once this account is no longer a member.
	Left bool
	// Devices is set by GroupInfo: each member's number of devices, as the server counts them.
	Devices map[string]int
}

// GroupEvent is a membership change, shown in the group's chat (Message.GroupEvent).
type GroupEvent struct {
	// Kind is "create", "add", "remove", "leave" or "promote".
	Kind    string
	Actor   string
	Targets []string
	Version uint64
}

// String describes the change: "alice added carol, dave".
func (e *GroupEvent) String() string {
	t := strings.Join(e.Targets, ", ")
	switch e.Kind {
	case "create":
		if t == "" {
			return e.Actor + " created the group"
		}
		return e.Actor + " created the group with " + t
	case "add":
		return e.Actor + " added " + t
	case "remove":
		return e.Actor + " removed " + t
	case "leave":
		return e.Actor + " left"
	case "promote":
		return e.Actor + " made " + t + " admin"
	}
	return e.Actor + " changed the group"
}

// groupRuntime is the client's in-memory group state.
type groupRuntime struct {
	// syncWanted asks the sender loop to run syncGroups.
	syncWanted atomic.Bool
	// syncMu serialises syncGroups runs (the sender loop's and SyncGroups).
	syncMu sync.Mutex

	mu sync.Mutex // guards the following fields
	// requested and answered rate-limit sender-key requests and answers per device and key.
	requested map[string]time.Time
	answered  map[string]time.Time
}

// allow reports whether key may act now (at most once per skRequestInterval) and records it.
func (r *groupRuntime) allow(table *map[string]time.Time, key string, now time.Time) bool {
	r.mu.Lock()
	defer r.mu.Unlock()
	if *table == nil || len(*table) >= maxRateEntries {
		*table = map[string]time.Time{}
	}
	if last, ok := (*table)[key]; ok && now.Sub(last) < skRequestInterval {
		return false
	}
	(*table)[key] = now
	return true
}

// requestGroupSync asks the sender loop to process pending group events and held contents.
func (c *Client) requestGroupSync() {
	c.groups.syncWanted.Store(true)
	c.kickOutbox()
}

var kindNames = map[petrelv1.GroupEventKind]string{
	petrelv1.GroupEventKind_GROUP_EVENT_KIND_CREATE:  "create",
	petrelv1.GroupEventKind_GROUP_EVENT_KIND_ADD:     "add",
	petrelv1.GroupEventKind_GROUP_EVENT_KIND_REMOVE:  "remove",
	petrelv1.GroupEventKind_GROUP_EVENT_KIND_LEAVE:   "leave",
	petrelv1.GroupEventKind_GROUP_EVENT_KIND_PROMOTE: "promote",
}

func groupFromStore(g *store.Group) Group {
	return Group{ID: g.ID, Name: g.Name, Version: g.Version, Members: slices.Clone(g.Members),
		Admins: slices.Clone(g.Admins), Left: g.Left}
}

// ValidGroupName reports whether name may name a group: 1-64 bytes of printable UTF-8, without
// leading or trailing spaces.
func ValidGroupName(name string) bool {
	if name == "" || len(name) > maxGroupNameBytes || !utf8.ValidString(name) || strings.TrimSpace(name) != name {
		return false
	}
	for _, r := range name {
		if !unicode.IsPrint(r) {
			return false
		}
	}
	return true
}

// uniqueGroupName returns name, or name with a suffix "-2", "-3"... if another group of this
// device has it.
func uniqueGroupName(tx *store.Tx, name, id string) string {
	if !tx.GroupNameTaken(name, id) {
		return name
	}
	for i := 2; ; i++ {
		suffix := fmt.Sprintf("-%d", i)
		base := name
		for len(base)+len(suffix) > maxGroupNameBytes {
			_, n := utf8.DecodeLastRuneInString(base)
			base = base[:len(base)-n]
		}
		if cand := base + suffix; !tx.GroupNameTaken(cand, id) {
			return cand
		}
	}
}

// placeholderName names a group whose name this device has not been told.
func placeholderName(id string) string { return "group-" + id[:8] }

// findGroup resolves a local name or a group id.
func findGroup(tx *store.Tx, group string) (*store.Group, error) {
	g, err := tx.GroupByName(group)
	if errors.Is(err, store.ErrNotFound) && petrelv1.ValidGroupID(group) {
		g, err = tx.Group(group)
	}
	if errors.Is(err, store.ErrNotFound) {
		return nil, fmt.Errorf("%w: no group %q on this device", ErrUnknownGroup, group)
	}
	return g, err
}

// Groups returns this device's groups (left ones included), in name order.
func (c *Client) Groups() ([]Group, error) {
	var out []Group
	err := c.st.View(func(tx *store.Tx) error {
		gs, err := tx.Groups()
		for _, g := range gs {
			out = append(out, groupFromStore(g))
		}
		return err
	})
	return out, err
}

// Group returns a group by local name or id, as stored on this device.
func (c *Client) Group(group string) (Group, error) {
	var out Group
	err := c.st.View(func(tx *store.Tx) error {
		g, err := findGroup(tx, group)
		if err == nil {
			out = groupFromStore(g)
		}
		return err
	})
	return out, err
}

// GroupName returns the local name of group id ("" if unknown).
func (c *Client) GroupName(id string) string {
	var name string
	c.st.View(func(tx *store.Tx) error {
		if g, err := tx.Group(id); err == nil {
			name = g.Name
		}
		return nil
	})
	return name
}

// newGroupID returns 16 random bytes in lowercase hex.
func newGroupID(rand io.Reader) (string, error) {
	var b [16]byte
	if _, err := io.ReadFull(rand, b[:]); err != nil {
		return "", err
	}
	return hex.EncodeToString(b[:]), nil
}

// checkTargets validates account names for a change: valid, distinct.
func checkTargets(users []string) ([]string, error) {
	var out []string
	for _, u := range users {
		if !petrelv1.ValidName(u) {
			return nil, fmt.Errorf("%w: %q", ErrInvalidName, u)
		}
		if !slices.Contains(out, u) {
			out = append(out, u)
		}
	}
	slices.Sort(out)
	return out, nil
}

// CreateGroup creates a group named name (this device's local name, also sent to the members
// end to end) with this account as its first admin and members as the other members. It needs a
// connection (Run).
func (c *Client) CreateGroup(ctx context.Context, name string, members []string) (Group, error) {
	if !ValidGroupName(name) {
		return Group{}, fmt.Errorf("%w: %q (1-%d printable characters, no leading or trailing spaces)", ErrGroupName, name, maxGroupNameBytes)
	}
	targets, err := checkTargets(members)
	if err != nil {
		return Group{}, err
	}
	targets = slices.DeleteFunc(targets, func(u string) bool { return u == c.name })
	err = c.st.View(func(tx *store.Tx) error {
		if tx.GroupNameTaken(name, "") {
			return fmt.Errorf("%w: you already have a group named %q", ErrGroupName, name)
		}
		return nil
	})
	if err != nil {
		return Group{}, err
	}
	l, err := c.ready(ctx)
	if err != nil {
		return Group{}, err
	}
	id, err := newGroupID(c.cfg.Rand)
	if err != nil {
		return Group{}, err
	}
	all := append(slices.Clone(targets), c.name)
	slices.Sort(all)
	ev := &petrelv1.GroupEvent{GroupId: id, Version: 1, Actor: c.name, ActorDevice: c.deviceID,
		Kind: petrelv1.GroupEventKind_GROUP_EVENT_KIND_CREATE, Targets: targets, Members: all,
		Admins: []string{c.name}, CreatedMs: c.cfg.Now().UnixMilli()}
	next, err := petrelv1.NextGroupState(nil, ev, 0)
	if err != nil {
		return Group{}, fmt.Errorf("%w: %w", ErrInvalidRequest, err)
	}
	sge, err := petrelv1.SignGroupEvent(c.identity, ev)
	if err != nil {
		return Group{}, err
	}
	resp, err := l.conn.request(ctx, &petrelv1.Frame{Body: &petrelv1.Frame_CreateGroup{CreateGroup: &petrelv1.CreateGroup{Event: sge}}})
	if err != nil {
		return Group{}, err
	}
	if resp.GetGroupResult() == nil {
		return Group{}, fmt.Errorf("%w: expected GroupResult", ErrProtocol)
	}
	var out Group
	err = c.st.Update(func(tx *store.Tx) error {
		g := &store.Group{ID: id, Name: name, NameSet: true, CreatedAt: c.cfg.Now()}
		if _, err := c.applyState(tx, g, sge, ev, next); err != nil {
			return err
		}
		out = groupFromStore(g)
		return c.queueGroupMeta(tx, g, targets)
	})
	if err != nil {
		return Group{}, storeErr(err)
	}
	c.kickOutbox()
	return out, nil
}

// AddToGroup adds users to group (a local name or id). Only admins may.
func (c *Client) AddToGroup(ctx context.Context, group string, users ...string) error {
	return c.changeGroup(ctx, group, petrelv1.GroupEventKind_GROUP_EVENT_KIND_ADD, users)
}

// RemoveFromGroup removes users from group. Only admins may; an admin leaves with LeaveGroup.
func (c *Client) RemoveFromGroup(ctx context.Context, group string, users ...string) error {
	return c.changeGroup(ctx, group, petrelv1.GroupEventKind_GROUP_EVENT_KIND_REMOVE, users)
}

// PromoteInGroup makes members of group admins. Only admins may.
func (c *Client) PromoteInGroup(ctx context.Context, group string, users ...string) error {
	return c.changeGroup(ctx, group, petrelv1.GroupEventKind_GROUP_EVENT_KIND_PROMOTE, users)
}

// LeaveGroup makes this account leave group. If it was the last admin, the longest-standing
// member becomes admin.
func (c *Client) LeaveGroup(ctx context.Context, group string) error {
	return c.changeGroup(ctx, group, petrelv1.GroupEventKind_GROUP_EVENT_KIND_LEAVE, nil)
}

// stateOf returns g's state for petrelv1.NextGroupState.
func stateOf(g *store.Group) *petrelv1.GroupState {
	since := slices.Clone(g.Since)
	for len(since) < len(g.Members) {
		since = append(since, 0)
	}
	return &petrelv1.GroupState{GroupID: g.ID, Version: g.Version, Members: slices.Clone(g.Members),
		Admins: slices.Clone(g.Admins), Since: since[:len(g.Members)]}
}

// proposeEvent builds the event for a change of prev by this device (members and admins after it
// computed as petrelv1.NextGroupState does) and checks it.
func (c *Client) proposeEvent(prev *petrelv1.GroupState, kind petrelv1.GroupEventKind, targets []string) (*petrelv1.GroupEvent, *petrelv1.GroupState, error) {
	members, admins := slices.Clone(prev.Members), slices.Clone(prev.Admins)
	without := func(list []string, gone ...string) []string {
		return slices.DeleteFunc(list, func(s string) bool { return slices.Contains(gone, s) })
	}
	switch kind {
	case petrelv1.GroupEventKind_GROUP_EVENT_KIND_ADD:
		members = append(members, targets...)
	case petrelv1.GroupEventKind_GROUP_EVENT_KIND_REMOVE:
		members, admins = without(members, targets...), without(admins, targets...)
	case petrelv1.GroupEventKind_GROUP_EVENT_KIND_PROMOTE:
		admins = append(admins, targets...)
	case petrelv1.GroupEventKind_GROUP_EVENT_KIND_LEAVE:
		targets = nil
		members, admins = without(members, c.name), without(admins, c.name)
		if len(admins) == 0 && len(members) > 0 {
			best, bestSince := "", uint64(0)
			for i, m := range prev.Members {
				if m != c.name && (best == "" || prev.Since[i] < bestSince) {
					best, bestSince = m, prev.Since[i]
				}
			}
			admins = []string{best}
		}
	}
	slices.Sort(members)
	members = slices.Compact(members)
	slices.Sort(admins)
	admins = slices.Compact(admins)
	ev := &petrelv1.GroupEvent{GroupId: prev.GroupID, Version: prev.Version + 1, Actor: c.name, ActorDevice: c.deviceID,
		Kind: kind, Targets: targets, Members: members, Admins: admins, CreatedMs: c.cfg.Now().UnixMilli()}
	next, err := petrelv1.NextGroupState(prev, ev, 0)
	switch {
	case errors.Is(err, petrelv1.ErrNotGroupAdmin):
		return nil, nil, ErrNotGroupAdmin
	case errors.Is(err, petrelv1.ErrNotGroupMember):
		return nil, nil, fmt.Errorf("%w: this account is not a member", ErrUnknownGroup)
	case err != nil:
		return nil, nil, fmt.Errorf("%w: %w", ErrInvalidRequest, err)
	}
	return ev, next, nil
}

// changeGroup signs and sends one change of group, re-signing on a stale version (the group is
// fetched and verified again first).
func (c *Client) changeGroup(ctx context.Context, group string, kind petrelv1.GroupEventKind, users []string) error {
	targets, err := checkTargets(users)
	if err != nil {
		return err
	}
	if kind != petrelv1.GroupEventKind_GROUP_EVENT_KIND_LEAVE && len(targets) == 0 {
		return fmt.Errorf("%w: name at least one account", ErrInvalidRequest)
	}
	l, err := c.ready(ctx)
	if err != nil {
		return err
	}
	for attempt := 0; ; attempt++ {
		var g *store.Group
		err := c.st.View(func(tx *store.Tx) error {
			var err error
			g, err = findGroup(tx, group)
			return err
		})
		if err != nil {
			return err
		}
		if g.Left {
			return fmt.Errorf("%w: this account left %q", ErrUnknownGroup, g.Name)
		}
		ev, next, err := c.proposeEvent(stateOf(g), kind, targets)
		if err != nil {
			return err
		}
		sge, err := petrelv1.SignGroupEvent(c.identity, ev)
		if err != nil {
			return err
		}
		resp, err := l.conn.request(ctx, &petrelv1.Frame{Body: &petrelv1.Frame_UpdateGroup{UpdateGroup: &petrelv1.UpdateGroup{Event: sge}}})
		if errors.Is(err, ErrStaleGroup) && attempt < groupChangeRetries {
			c.log.Info("group changed meanwhile, fetching it again", "group", g.ID)
			if _, err := l.refreshGroup(ctx, g.ID); err != nil {
				return err
			}
			continue
		}
		if err != nil {
			return err
		}
		if resp.GetGroupResult() == nil {
			return fmt.Errorf("%w: expected GroupResult", ErrProtocol)
		}
		var events []Event
		err = c.st.Update(func(tx *store.Tx) error {
			cur, err := tx.Group(g.ID)
			if err != nil {
				return err
			}
			if cur.Version >= ev.Version {
				return nil // the event came back through the inbox first
			}
			if events, err = c.applyState(tx, cur, sge, ev, next); err != nil {
				return err
			}
			if kind == petrelv1.GroupEventKind_GROUP_EVENT_KIND_ADD {
				return c.queueGroupMeta(tx, cur, targets)
			}
			return nil
		})
		if err != nil {
			return storeErr(err)
		}
		c.kickOutbox()
		for _, ev := range events {
			c.emit(ctx, ev)
		}
		return nil
	}
}

// storeErr wraps an error from a store transaction unless it is already classified.
func storeErr(err error) error {
	if err == nil || isStoreErr(err) {
		return err
	}
	return &storeError{err}
}

// applyState makes next (reached by event ev, signed as sge) g's state and records the change in
// the history. g may be new (not stored yet). It returns the events to report.
func (c *Client) applyState(tx *store.Tx, g *store.Group, sge *petrelv1.SignedGroupEvent, ev *petrelv1.GroupEvent, next *petrelv1.GroupState) ([]Event, error) {
	raw, err := proto.Marshal(sge)
	if err != nil {
		return nil, err
	}
	now := c.cfg.Now()
	old := g.Members
	g.Version, g.Members, g.Admins, g.Since = next.Version, next.Members, next.Admins, next.Since
	g.LastEvent, g.UpdatedAt = raw, now
	if g.Name == "" {
		g.Name = uniqueGroupName(tx, placeholderName(g.ID), g.ID)
	}
	if g.CreatedAt.IsZero() {
		g.CreatedAt = now
	}
	// A member that left can no longer send in the group: forget its sender keys.
	for _, m := range old {
		if !slices.Contains(g.Members, m) {
			if err := tx.DeleteSenderKeyReceivers(g.ID, m); err != nil {
				return nil, err
			}
		}
	}
	wasLeft := g.Left
	g.Left = !slices.Contains(g.Members, c.name)
	if g.Left && !wasLeft {
		// Removed, or left: drop every key of the group.
		for _, m := range old {
			if err := tx.DeleteSenderKeyReceivers(g.ID, m); err != nil {
				return nil, err
			}
		}
		for _, k := range append(slices.Clone(g.OldKeyIDs), g.SenderKeyID) {
			if err := tx.DeleteGiven(g.ID, k); err != nil {
				return nil, err
			}
		}
		g.SenderKey, g.SenderKeyID, g.OldKeyIDs = nil, 0, nil
	}
	if err := tx.PutGroup(g); err != nil {
		return nil, err
	}
	rec := &store.HistoryRecord{ID: fmt.Sprintf("v%d", ev.GetVersion()), Dir: store.Incoming, Peer: store.GroupKey(g.ID),
		PeerDevice: ev.GetActorDevice(), Group: g.ID, SentAt: time.UnixMilli(ev.GetCreatedMs()), ReceivedAt: now,
		GroupEvent: &store.GroupEventRecord{Kind: kindNames[ev.GetKind()], Actor: ev.GetActor(),
			Targets: slices.Clone(ev.GetTargets()), Version: ev.GetVersion()}}
	rec.Seen = ev.GetActorDevice() == c.deviceID // this device made it: not news here
	if _, err := tx.HistoryByID(store.Incoming, rec.Peer, rec.ID); err == nil {
		return nil, nil
	} else if !errors.Is(err, store.ErrNotFound) {
		return nil, err
	}
	rec.Body = (&GroupEvent{Kind: rec.GroupEvent.Kind, Actor: rec.GroupEvent.Actor, Targets: rec.GroupEvent.Targets}).String()
	if err := tx.AddHistory(rec); err != nil {
		return nil, err
	}
	var events []Event
	if !rec.Seen {
		events = append(events, c.messageFromRecord(rec))
	}
	return events, nil
}

// groupFields fills a Message's group fields from its history record.
func groupFields(m *Message, r *store.HistoryRecord) {
	m.Group = r.Group
	if r.Dir == store.Outgoing {
		m.To = ""
	}
	if e := r.GroupEvent; e != nil {
		m.GroupEvent = &GroupEvent{Kind: e.Kind, Actor: e.Actor, Targets: slices.Clone(e.Targets), Version: e.Version}
		m.From = e.Actor
	}
}

// queueGroupMeta queues the group's name for the accounts to (pairwise, end to end).
func (c *Client) queueGroupMeta(tx *store.Tx, g *store.Group, to []string) error {
	for _, a := range to {
		if a == c.name {
			continue
		}
		if err := c.queueControl(tx, a, "", &petrelv1.Content{GroupId: g.ID,
			Body: &petrelv1.Content_GroupMeta{GroupMeta: &petrelv1.GroupMeta{Name: g.Name}}}); err != nil {
			return err
		}
	}
	return nil
}

// queueControl adds a pairwise control message to the outbox: for account to, or (to = this
// account) for its one other device dev.
func (c *Client) queueControl(tx *store.Tx, to, dev string, content *petrelv1.Content) error {
	id, err := NewMessageID(c.cfg.Rand)
	if err != nil {
		return err
	}
	content.MessageId = id
	raw, err := proto.Marshal(content)
	if err != nil {
		return err
	}
	e := &store.OutboxEntry{ID: id, To: to, Kind: store.KindControl, Content: raw, CreatedAt: c.cfg.Now()}
	if to == c.name {
		e.Kind, e.Device = store.KindDevice, dev
	}
	return tx.AddOutbox(e)
}

// GroupInfo fetches group from the server (verifying any change it did not see yet) and returns
// it with each member's number of devices. It needs a connection (Run).
func (c *Client) GroupInfo(ctx context.Context, group string) (Group, error) {
	g, err := c.Group(group)
	if err != nil {
		return Group{}, err
	}
	l, err := c.ready(ctx)
	if err != nil {
		return Group{}, err
	}
	res, err := l.refreshGroup(ctx, g.ID)
	if err != nil {
		return Group{}, err
	}
	if g, err = c.Group(g.ID); err != nil {
		return Group{}, err
	}
	g.Devices = map[string]int{}
	for i, m := range res.GetMembers() {
		if i < len(res.GetMemberDevices()) && slices.Contains(g.Members, m) {
			g.Devices[m] = int(res.GetMemberDevices()[i])
		}
	}
	return g, nil
}

// refreshGroup fetches the group from the server and, if it is ahead of this device, verifies
// and applies its last event (see jumpTo). It returns the server's answer.
func (l *link) refreshGroup(ctx context.Context, id string) (*petrelv1.GroupResult, error) {
	c := l.c
	resp, err := l.conn.request(ctx, &petrelv1.Frame{Body: &petrelv1.Frame_GetGroup{GetGroup: &petrelv1.GetGroup{GroupId: id}}})
	if err != nil {
		return nil, err
	}
	res := resp.GetGroupResult()
	if res == nil || res.GetGroupId() != id {
		return nil, fmt.Errorf("%w: expected GroupResult", ErrProtocol)
	}
	sge := res.GetLastEvent()
	ev, err := petrelv1.ParseGroupEvent(sge)
	if err != nil {
		return nil, fmt.Errorf("%w: the server's last event: %w", ErrGroupEventRefused, err)
	}
	if ev.GetGroupId() != id || ev.GetVersion() != res.GetVersion() || !slices.Equal(ev.GetMembers(), res.GetMembers()) ||
		!slices.Equal(ev.GetAdmins(), res.GetAdmins()) {
		return nil, fmt.Errorf("%w: the server's group does not match its last event", ErrGroupEventRefused)
	}
	var cur uint64
	err = c.st.View(func(tx *store.Tx) error {
		g, err := tx.Group(id)
		if err == nil {
			cur = g.Version
		}
		if errors.Is(err, store.ErrNotFound) {
			return nil
		}
		return err
	})
	if err != nil {
		return nil, storeErr(err)
	}
	if ev.GetVersion() <= cur {
		return res, nil
	}
	key, err := l.actorIdentity(ctx, ev.GetActor(), ev.GetActorDevice())
	if err != nil {
		return nil, err
	}
	var events []Event
	err = c.st.Update(func(tx *store.Tx) error {
		var err error
		if events, err = c.jumpTo(tx, sge, ev, key, res.GetMemberSince()); err != nil {
			return err
		}
		// What waited for the group (its name, sender keys, messages) before anything is shown.
		more, err := c.retryHeld(tx, id, func(*store.HeldGroupItem) bool { return true })
		events = append(events, more...)
		return storeErr(err)
	})
	if err != nil {
		return nil, err
	}
	c.kickOutbox() // receipts for held messages now decrypted
	for _, e := range events {
		c.emit(l.runCtx, e)
	}
	return res, nil
}

// jumpTo applies event ev (version > the local one) taken from the server's record of the group.
// When it follows the local state it is checked like any event (applyEvent). When versions are
// missing in between (this device was offline from the group, or was just added, or is a device
// linked since), the chain cannot be checked: the device then trusts the event itself — signed by
// a device its actor's verified list names, for a group this account is a member of, with an
// actor that holds the right it used in the resulting state (an admin for ADD, REMOVE and
// PROMOTE; no longer a member after a LEAVE; the creator of a version-1 CREATE) — and takes its
// members and admins. since is the server's member_since (used only for the last-admin rule).
func (c *Client) jumpTo(tx *store.Tx, sge *petrelv1.SignedGroupEvent, ev *petrelv1.GroupEvent, key []byte, since []uint64) ([]Event, error) {
	g, err := tx.Group(ev.GetGroupId())
	if errors.Is(err, store.ErrNotFound) {
		g = nil
	} else if err != nil {
		return nil, &storeError{err}
	}
	if g != nil && ev.GetVersion() <= g.Version {
		return nil, nil
	}
	if g != nil && ev.GetVersion() == g.Version+1 {
		return c.applyEvent(tx, g, sge, ev, key)
	}
	if err := petrelv1.VerifyGroupEvent(key, sge); err != nil {
		return nil, fmt.Errorf("%w: %w", ErrGroupEventRefused, err)
	}
	if err := plausible(ev, c.name); err != nil {
		return nil, err
	}
	if len(since) != len(ev.GetMembers()) {
		since = make([]uint64, len(ev.GetMembers()))
	}
	next := &petrelv1.GroupState{GroupID: ev.GetGroupId(), Version: ev.GetVersion(), Members: slices.Clone(ev.GetMembers()),
		Admins: slices.Clone(ev.GetAdmins()), Since: slices.Clone(since)}
	if g == nil {
		g = &store.Group{ID: ev.GetGroupId()}
	}
	evs, err := c.applyState(tx, g, sge, ev, next)
	if err != nil {
		return nil, &storeError{err}
	}
	return evs, nil
}

// plausible checks an event that cannot be checked against the previous state (see jumpTo).
func plausible(ev *petrelv1.GroupEvent, me string) error {
	refuse := func(why string) error { return fmt.Errorf("%w: %s", ErrGroupEventRefused, why) }
	if !slices.Contains(ev.GetMembers(), me) {
		return refuse("this account is not a member after it")
	}
	switch ev.GetKind() {
	case petrelv1.GroupEventKind_GROUP_EVENT_KIND_CREATE:
		if _, err := petrelv1.NextGroupState(nil, ev, 0); err != nil {
			return fmt.Errorf("%w: %w", ErrGroupEventRefused, err)
		}
	case petrelv1.GroupEventKind_GROUP_EVENT_KIND_LEAVE:
		if slices.Contains(ev.GetMembers(), ev.GetActor()) {
			return refuse("the actor of a LEAVE is still a member")
		}
	default:
		if !slices.Contains(ev.GetAdmins(), ev.GetActor()) {
			return refuse("the actor is not an admin")
		}
		if ev.GetKind() == petrelv1.GroupEventKind_GROUP_EVENT_KIND_ADD || ev.GetKind() == petrelv1.GroupEventKind_GROUP_EVENT_KIND_PROMOTE {
			for _, t := range ev.GetTargets() {
				if !slices.Contains(ev.GetMembers(), t) {
					return refuse("a target is not a member after it")
				}
			}
		}
		if ev.GetKind() == petrelv1.GroupEventKind_GROUP_EVENT_KIND_REMOVE {
			for _, t := range ev.GetTargets() {
				if slices.Contains(ev.GetMembers(), t) {
					return refuse("a removed target is still a member")
				}
			}
		}
	}
	return nil
}

// applyEvent checks event ev (signed as sge, by the device whose identity key is key) against g's
// state and applies it. A refused event is an error wrapping ErrGroupEventRefused.
func (c *Client) applyEvent(tx *store.Tx, g *store.Group, sge *petrelv1.SignedGroupEvent, ev *petrelv1.GroupEvent, key []byte) ([]Event, error) {
	if err := petrelv1.VerifyGroupEvent(key, sge); err != nil {
		return nil, fmt.Errorf("%w: %w", ErrGroupEventRefused, err)
	}
	next, err := petrelv1.NextGroupState(stateOf(g), ev, 0)
	if err != nil {
		return nil, fmt.Errorf("%w: %w", ErrGroupEventRefused, err)
	}
	evs, err := c.applyState(tx, g, sge, ev, next)
	if err != nil {
		return nil, &storeError{err}
	}
	return evs, nil
}

// actorKey returns the identity key that the verified device list of account actor gives device
// dev (ok false when the list is not known or does not name dev).
func (c *Client) actorKey(tx *store.Tx, actor, dev string) ([]byte, bool, error) {
	var raw []byte
	if actor == c.name {
		if dev == c.deviceID {
			return c.identity.PublicKey().Bytes(), true, nil
		}
		acct, err := tx.Account()
		if err != nil {
			return nil, false, err
		}
		raw = acct.DeviceList
	} else {
		ct, err := tx.Contact(actor)
		if errors.Is(err, store.ErrNotFound) {
			return nil, false, nil
		}
		if err != nil {
			return nil, false, err
		}
		raw = ct.DeviceList
	}
	if len(raw) == 0 {
		return nil, false, nil
	}
	var sdl petrelv1.SignedDeviceList
	if err := proto.Unmarshal(raw, &sdl); err != nil {
		return nil, false, fmt.Errorf("stored device list of %s: %w", actor, err)
	}
	var l petrelv1.DeviceList
	if err := proto.Unmarshal(sdl.GetList(), &l); err != nil {
		return nil, false, fmt.Errorf("stored device list of %s: %w", actor, err)
	}
	d := l.Find(dev)
	if d == nil {
		return nil, false, nil
	}
	return d.GetIdentityKey(), true, nil
}

// errUnlistedActor reports an event whose actor device its account's verified list does not name.
var errUnlistedActor = fmt.Errorf("%w: the acting device is not in its account's signed device list", ErrGroupEventRefused)

// actorIdentity is actorKey, fetching the actor's devices (their signed list) once if needed.
func (l *link) actorIdentity(ctx context.Context, actor, dev string) ([]byte, error) {
	c := l.c
	get := func() ([]byte, bool, error) {
		var key []byte
		var ok bool
		err := c.st.View(func(tx *store.Tx) error {
			var err error
			key, ok, err = c.actorKey(tx, actor, dev)
			return err
		})
		return key, ok, storeErr(err)
	}
	key, ok, err := get()
	if err != nil || ok {
		return key, err
	}
	if actor == c.name {
		_, err = l.syncOwnDevices(ctx)
	} else {
		if err = c.forgetDevices(actor); err == nil {
			_, err = l.ensureSessions(ctx, actor)
		}
	}
	if err != nil {
		return nil, err
	}
	if key, ok, err = get(); err != nil {
		return nil, err
	}
	if !ok {
		return nil, errUnlistedActor
	}
	return key, nil
}
