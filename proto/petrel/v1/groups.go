// Copyright 2026 The Petrel Authors
// SPDX-License-Identifier: Apache-2.0

package petrelv1

import (
	"errors"
	"fmt"
	"slices"

	"google.golang.org/protobuf/proto"

	"github.com/petrelchat/petrel/e2ee"
)

// Group membership events (docs/protocol.md, "Groups"). The server checks every event with
// ParseGroupEvent, VerifyGroupEvent and NextGroupState before it stores it; a member applies the
// same three to each GROUP_EVENT envelope it receives, so a server cannot forge membership.

const (
	// GroupEventContext is the signature context of a GroupEvent (e2ee IdentityKeyPair.Sign).
	GroupEventContext = "petrel-group-event-v1"
	// MaxGroupEventBytes is the largest serialised GroupEvent accepted (192 KiB: a creation with
	// 1,024 members of 32-character names is about 70 KiB).
	MaxGroupEventBytes = 192 << 10
	// DefaultMaxGroupMembers is the server's default limit of members per group (config
	// [groups] max_group_members).
	DefaultMaxGroupMembers = 1024
)

// Errors of the group event checks. Callers branch on them with errors.Is; the wrapped message
// says what is wrong (names and versions, never key bytes).
var (
	// ErrInvalidGroupEvent: missing, too large, not canonical, malformed, or its members/admins
	// do not follow from the change.
	ErrInvalidGroupEvent = errors.New("invalid group event")
	// ErrGroupEventSignature: the signature does not verify with the actor device's identity key.
	ErrGroupEventSignature = errors.New("group event signature does not verify")
	// ErrStaleGroupEvent: the version is not the group's current version + 1 (or a CREATE for a
	// group that exists).
	ErrStaleGroupEvent = errors.New("group event version is not current + 1")
	// ErrNotGroupMember: the actor is not a member of the group (or the group does not exist).
	ErrNotGroupMember = errors.New("not a member of the group")
	// ErrNotGroupAdmin: the change is admin-only and the actor is not an admin.
	ErrNotGroupAdmin = errors.New("only an admin may make this change")
	// ErrGroupFull: the change would give the group more than its maximum of members.
	ErrGroupFull = errors.New("group is full")
)

// ValidGroupID reports whether s has the shape of a group id: 32 lowercase hex characters.
func ValidGroupID(s string) bool { return ValidDeviceID(s) }

// GroupState is a group's membership at one version: what the server stores and what a member
// keeps to check the next event.
type GroupState struct {
	GroupID string
	Version uint64
	// Members and Admins are sorted (byte order) and distinct; Admins is a subset of Members.
	Members []string
	Admins  []string
	// Since is, for each of Members (same order), the version of the event that made it a member.
	Since []uint64
}

// IsMember reports whether name is a member.
func (s *GroupState) IsMember(name string) bool {
	_, ok := slices.BinarySearch(s.Members, name)
	return ok
}

// IsAdmin reports whether name is an admin.
func (s *GroupState) IsAdmin(name string) bool {
	_, ok := slices.BinarySearch(s.Admins, name)
	return ok
}

// ParseGroupEvent parses sge.event and checks its shape. It checks, in order: the size bound
// (MaxGroupEventBytes) and a 64-byte signature; that the bytes parse, with no unknown fields, and
// are exactly the deterministic serialisation of what they parse to (proto.MarshalOptions{
// Deterministic: true}); a valid group id (ValidGroupID); version >= 1; a valid actor name and
// actor device id; a known kind; created_ms >= 0; targets valid account names, distinct, at most
// MaxGroupEventBytes/2 of them, none for LEAVE and at least one for ADD, REMOVE and PROMOTE;
// members and admins valid names in strictly increasing order, admins a subset of members. Any
// failure is ErrInvalidGroupEvent. It does not check the signature (VerifyGroupEvent) or the
// change against the group (NextGroupState).
func ParseGroupEvent(sge *SignedGroupEvent) (*GroupEvent, error) {
	bad := func(format string, a ...any) error {
		return fmt.Errorf("%w: "+format, append([]any{ErrInvalidGroupEvent}, a...)...)
	}
	b := sge.GetEvent()
	if len(b) == 0 {
		return nil, bad("missing")
	}
	if len(b) > MaxGroupEventBytes {
		return nil, bad("%d bytes, limit %d", len(b), MaxGroupEventBytes)
	}
	if len(sge.GetSignature()) != e2ee.SignatureSize {
		return nil, bad("signature is not %d bytes", e2ee.SignatureSize)
	}
	ev := &GroupEvent{}
	if err := proto.Unmarshal(b, ev); err != nil {
		return nil, bad("does not parse")
	}
	if len(ev.ProtoReflect().GetUnknown()) > 0 {
		return nil, bad("unknown fields")
	}
	canon, err := proto.MarshalOptions{Deterministic: true}.Marshal(ev)
	if err != nil || string(canon) != string(b) {
		return nil, bad("not the deterministic serialisation")
	}
	if !ValidGroupID(ev.GroupId) {
		return nil, bad("group id is not 32 lowercase hex characters")
	}
	if ev.Version == 0 {
		return nil, bad("version 0 (versions start at 1)")
	}
	if !ValidName(ev.Actor) || !ValidDeviceID(ev.ActorDevice) {
		return nil, bad("actor or actor device is not valid")
	}
	if ev.CreatedMs < 0 {
		return nil, bad("negative created_ms")
	}
	switch ev.Kind {
	case GroupEventKind_GROUP_EVENT_KIND_CREATE:
	case GroupEventKind_GROUP_EVENT_KIND_LEAVE:
		if len(ev.Targets) > 0 {
			return nil, bad("LEAVE has no targets")
		}
	case GroupEventKind_GROUP_EVENT_KIND_ADD, GroupEventKind_GROUP_EVENT_KIND_REMOVE, GroupEventKind_GROUP_EVENT_KIND_PROMOTE:
		if len(ev.Targets) == 0 {
			return nil, bad("%s needs targets", ev.Kind)
		}
	default:
		return nil, bad("unknown kind %d", ev.Kind)
	}
	seen := make(map[string]struct{}, len(ev.Targets))
	for _, t := range ev.Targets {
		if !ValidName(t) {
			return nil, bad("target is not a valid account name")
		}
		if _, dup := seen[t]; dup {
			return nil, bad("target %s named twice", t)
		}
		seen[t] = struct{}{}
	}
	if !strictlySorted(ev.Members) || !strictlySorted(ev.Admins) {
		return nil, bad("members and admins must be valid names, sorted, each once")
	}
	for _, a := range ev.Admins {
		if _, ok := slices.BinarySearch(ev.Members, a); !ok {
			return nil, bad("admin %s is not a member", a)
		}
	}
	return ev, nil
}

// strictlySorted reports whether every name is valid and the list is in strictly increasing order.
func strictlySorted(names []string) bool {
	for i, n := range names {
		if !ValidName(n) || i > 0 && names[i-1] >= n {
			return false
		}
	}
	return true
}

// VerifyGroupEvent checks sge's signature with the actor device's identity key (the e2ee
// IdentityKey encoding: the server takes it from the device's record, a member from the actor
// account's signed device list). ErrGroupEventSignature when it does not verify.
func VerifyGroupEvent(identityKey []byte, sge *SignedGroupEvent) error {
	k, err := e2ee.ParseIdentityKey(identityKey)
	if err != nil {
		return fmt.Errorf("%w: the actor's identity key does not parse", ErrGroupEventSignature)
	}
	if k.Verify(GroupEventContext, sge.GetEvent(), sge.GetSignature()) != nil {
		return ErrGroupEventSignature
	}
	return nil
}

// SignGroupEvent serialises ev deterministically and signs it with k, the actor device's
// identity key pair. It refuses an event that ParseGroupEvent would reject.
func SignGroupEvent(k *e2ee.IdentityKeyPair, ev *GroupEvent) (*SignedGroupEvent, error) {
	if k == nil || ev == nil {
		return nil, fmt.Errorf("%w: missing event or key", ErrInvalidGroupEvent)
	}
	b, err := proto.MarshalOptions{Deterministic: true}.Marshal(ev)
	if err != nil {
		return nil, fmt.Errorf("%w: %v", ErrInvalidGroupEvent, err)
	}
	sig, err := k.Sign(GroupEventContext, b)
	if err != nil {
		return nil, err
	}
	sge := &SignedGroupEvent{Event: b, Signature: sig}
	if _, err := ParseGroupEvent(sge); err != nil {
		return nil, err
	}
	return sge, nil
}

// NextGroupState applies a parsed event to prev (nil: the group does not exist) and returns the
// state after it, or why the event is refused. maxMembers bounds the members (0: no bound; a
// member applies no bound of its own). The checks, in order:
//
//   - CREATE: prev must be nil, else ErrStaleGroupEvent; version 1, else ErrStaleGroupEvent; the
//     actor is not among the targets. Members: the actor and the targets; admins: the actor.
//   - any other kind: prev nil is ErrNotGroupMember; the group id must be prev's; version must
//     be prev.Version + 1, else ErrStaleGroupEvent; the actor must be a member, else
//     ErrNotGroupMember; ADD, REMOVE and PROMOTE need an admin actor, else ErrNotGroupAdmin.
//   - ADD: no target is a member. Members: prev's and the targets; admins unchanged.
//   - REMOVE: every target is a member and none is the actor. Members and admins: prev's
//     without the targets (the actor stays, so an admin is left).
//   - PROMOTE: every target is a member and not an admin. Admins: prev's and the targets.
//   - LEAVE: members and admins: prev's without the actor. If that leaves members but no admin,
//     the member with the smallest Since becomes the admin (ties: the smallest name); if it
//     leaves no member, the group is empty for good (no event can follow: nobody is a member).
//   - more members than maxMembers: ErrGroupFull.
//   - the event's members and admins must be exactly the ones computed, else ErrInvalidGroupEvent.
//
// A member joining with an event gets Since = that event's version (a removed member added
// again starts anew).
func NextGroupState(prev *GroupState, ev *GroupEvent, maxMembers int) (*GroupState, error) {
	bad := func(format string, a ...any) error {
		return fmt.Errorf("%w: "+format, append([]any{ErrInvalidGroupEvent}, a...)...)
	}
	next := &GroupState{GroupID: ev.GroupId, Version: ev.Version}
	if ev.Kind == GroupEventKind_GROUP_EVENT_KIND_CREATE {
		if prev != nil {
			return nil, fmt.Errorf("%w: the group exists (version %d)", ErrStaleGroupEvent, prev.Version)
		}
		if ev.Version != 1 {
			return nil, fmt.Errorf("%w: a creation is version 1, not %d", ErrStaleGroupEvent, ev.Version)
		}
		if slices.Contains(ev.Targets, ev.Actor) {
			return nil, bad("the creator is not a target of its creation")
		}
		next.Members = append(slices.Clone(ev.Targets), ev.Actor)
		slices.Sort(next.Members)
		next.Admins = []string{ev.Actor}
		next.Since = make([]uint64, len(next.Members))
		for i := range next.Since {
			next.Since[i] = 1
		}
	} else {
		if prev == nil {
			return nil, ErrNotGroupMember
		}
		if ev.GroupId != prev.GroupID {
			return nil, bad("the event is for another group")
		}
		if ev.Version != prev.Version+1 {
			return nil, fmt.Errorf("%w: version %d, current %d", ErrStaleGroupEvent, ev.Version, prev.Version)
		}
		if !prev.IsMember(ev.Actor) {
			return nil, ErrNotGroupMember
		}
		if ev.Kind != GroupEventKind_GROUP_EVENT_KIND_LEAVE && !prev.IsAdmin(ev.Actor) {
			return nil, ErrNotGroupAdmin
		}
		var err error
		switch ev.Kind {
		case GroupEventKind_GROUP_EVENT_KIND_ADD:
			err = next.add(prev, ev.Targets, ev.Version)
		case GroupEventKind_GROUP_EVENT_KIND_REMOVE:
			err = next.remove(prev, ev.Targets, ev.Actor)
		case GroupEventKind_GROUP_EVENT_KIND_PROMOTE:
			err = next.promote(prev, ev.Targets)
		case GroupEventKind_GROUP_EVENT_KIND_LEAVE:
			next.leave(prev, ev.Actor)
		default:
			err = bad("unknown kind %d", ev.Kind)
		}
		if err != nil {
			return nil, err
		}
	}
	if maxMembers > 0 && len(next.Members) > maxMembers {
		return nil, fmt.Errorf("%w: %d members, limit %d", ErrGroupFull, len(next.Members), maxMembers)
	}
	if !slices.Equal(ev.Members, next.Members) || !slices.Equal(ev.Admins, next.Admins) {
		return nil, bad("members or admins do not follow from the change")
	}
	return next, nil
}

func (next *GroupState) add(prev *GroupState, targets []string, version uint64) error {
	for _, t := range targets {
		if prev.IsMember(t) {
			return fmt.Errorf("%w: %s is already a member", ErrInvalidGroupEvent, t)
		}
	}
	type m struct {
		name  string
		since uint64
	}
	all := make([]m, 0, len(prev.Members)+len(targets))
	for i, n := range prev.Members {
		all = append(all, m{n, prev.Since[i]})
	}
	for _, t := range targets {
		all = append(all, m{t, version})
	}
	slices.SortFunc(all, func(a, b m) int {
		switch {
		case a.name < b.name:
			return -1
		case a.name > b.name:
			return 1
		}
		return 0
	})
	for _, x := range all {
		next.Members = append(next.Members, x.name)
		next.Since = append(next.Since, x.since)
	}
	next.Admins = slices.Clone(prev.Admins)
	return nil
}

func (next *GroupState) remove(prev *GroupState, targets []string, actor string) error {
	for _, t := range targets {
		if !prev.IsMember(t) {
			return fmt.Errorf("%w: %s is not a member", ErrInvalidGroupEvent, t)
		}
		if t == actor {
			return fmt.Errorf("%w: an admin leaves with LEAVE, not REMOVE", ErrInvalidGroupEvent)
		}
	}
	next.keepBut(prev, func(n string) bool { return slices.Contains(targets, n) })
	return nil
}

func (next *GroupState) promote(prev *GroupState, targets []string) error {
	for _, t := range targets {
		if !prev.IsMember(t) {
			return fmt.Errorf("%w: %s is not a member", ErrInvalidGroupEvent, t)
		}
		if prev.IsAdmin(t) {
			return fmt.Errorf("%w: %s is already an admin", ErrInvalidGroupEvent, t)
		}
	}
	next.Members, next.Since = slices.Clone(prev.Members), slices.Clone(prev.Since)
	next.Admins = append(slices.Clone(prev.Admins), targets...)
	slices.Sort(next.Admins)
	return nil
}

func (next *GroupState) leave(prev *GroupState, actor string) {
	next.keepBut(prev, func(n string) bool { return n == actor })
	if len(next.Admins) > 0 || len(next.Members) == 0 {
		return
	}
	best := 0
	for i := range next.Members { // Members are sorted: the first of equal Since is the smallest name
		if next.Since[i] < next.Since[best] {
			best = i
		}
	}
	next.Admins = []string{next.Members[best]}
}

// keepBut copies prev's members (with Since) and admins except those gone reports.
func (next *GroupState) keepBut(prev *GroupState, gone func(string) bool) {
	for i, n := range prev.Members {
		if !gone(n) {
			next.Members = append(next.Members, n)
			next.Since = append(next.Since, prev.Since[i])
		}
	}
	for _, a := range prev.Admins {
		if !gone(a) {
			next.Admins = append(next.Admins, a)
		}
	}
}

// GroupEventRecipients are the accounts a membership event is delivered to: every member before
// and after it (after's members, plus the removed targets of a REMOVE and the actor of a LEAVE).
func GroupEventRecipients(ev *GroupEvent) []string {
	out := slices.Clone(ev.Members)
	switch ev.Kind {
	case GroupEventKind_GROUP_EVENT_KIND_REMOVE:
		out = append(out, ev.Targets...)
	case GroupEventKind_GROUP_EVENT_KIND_LEAVE:
		out = append(out, ev.Actor)
	}
	slices.Sort(out)
	return slices.Compact(out)
}
