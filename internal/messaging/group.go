// Copyright 2026 The Petrel Authors
// SPDX-License-Identifier: Apache-2.0

package messaging

import (
	"context"
	"errors"
	"strings"

	"google.golang.org/protobuf/proto"

	"github.com/petrelchat/petrel/internal/directory"
	"github.com/petrelchat/petrel/internal/mailbox"
	pb "github.com/petrelchat/petrel/proto/petrel/v1"
)

// Groups looks group membership up: the groups service. Members returns a shared state (never
// modified), or an error wrapping ErrNoGroup's condition that the caller maps (see WithGroups).
type Groups interface {
	Members(ctx context.Context, groupID string) (*pb.GroupState, error)
}

// Option configures a Service.
type Option func(*Service)

// WithGroups resolves group sends with g; isUnknown tells which of g's errors mean "no such
// group" (answered UNKNOWN_GROUP, like a sender that is not a member). Without it a group send is
// UNKNOWN_GROUP.
func WithGroups(g Groups, isUnknown func(error) bool) Option {
	return func(s *Service) { s.groups, s.unknownGroup = g, isUnknown }
}

// The refusals of group sends.
var (
	errUnknownGroup = &Error{Code: pb.ErrorCode_ERROR_CODE_UNKNOWN_GROUP, Msg: "unknown group, or you are not a member of it"}
	errGroupFields  = &Error{Code: pb.ErrorCode_ERROR_CODE_INVALID_REQUEST, Msg: "a group send carries group_id and group_ciphertext only: no to, envelopes or own_envelopes"}
	errGroupID      = &Error{Code: pb.ErrorCode_ERROR_CODE_INVALID_REQUEST, Msg: "group_id must be 32 lowercase hex characters"}
)

// GroupSend is a group send's fields (Send with group_id set).
type GroupSend struct {
	MessageID  string
	GroupID    string
	Ciphertext []byte
	// Other is true when the Send also carries to, envelopes or own_envelopes (refused).
	Other bool
}

// ResolveGroup checks the group send v from the device from and fills m with its targets: every
// device of every member of the group except the sending device, all with the same envelope
// (type GROUP, group_id set). The sender must be a member (UNKNOWN_GROUP otherwise, as for a
// group that does not exist). now is the server time stamped on the envelope.
func (s *Service) ResolveGroup(ctx context.Context, from directory.Principal, v *GroupSend, now int64, m *Message) error {
	m.ID, m.Targets = "", m.Targets[:0]
	if !pb.ValidMessageID(v.MessageID) {
		return errMessageID
	}
	if v.Other {
		return errGroupFields
	}
	if !pb.ValidGroupID(v.GroupID) {
		return errGroupID
	}
	if len(v.Ciphertext) == 0 {
		return errEmptyCT
	}
	if s.groups == nil {
		return errUnknownGroup
	}
	st, err := s.groups.Members(ctx, v.GroupID)
	if err != nil {
		if s.unknownGroup != nil && s.unknownGroup(err) {
			return errUnknownGroup
		}
		return err
	}
	if !st.IsMember(from.Name) {
		return errUnknownGroup
	}
	return s.FanOut(ctx, from, v.MessageID, v.GroupID, pb.EnvelopeType_ENVELOPE_TYPE_GROUP, v.Ciphertext, st.Members, now, m)
}

// FanOut fills m with one target for every device of each of accounts except the device from,
// all sharing one envelope {message_id, from, from_device, typ, payload, now, group_id}. An
// account that no longer exists is skipped. It costs a fixed number of allocations whatever the
// number of devices: the envelope, the dedupe ids (one string), and the targets (when m's backing
// array is too small).
func (s *Service) FanOut(ctx context.Context, from directory.Principal, msgID, groupID string, typ pb.EnvelopeType, payload []byte, accounts []string, now int64, m *Message) error {
	m.ID, m.Targets = "", m.Targets[:0]
	// Look every account up first: the count sizes the targets and the ids exactly.
	accs := make([]*directory.Account, len(accounts))
	n := 0
	for i, name := range accounts {
		acc, err := s.accounts.Account(ctx, name)
		if errors.Is(err, directory.ErrUnknownUser) {
			continue
		}
		if err != nil {
			return err
		}
		accs[i] = acc
		for _, d := range acc.Devices {
			if d != from.ID {
				n++
			}
		}
	}
	env, err := proto.Marshal(&pb.Envelope{MessageId: msgID, From: from.Name, FromDevice: from.ID, Type: typ,
		Ciphertext: payload, ServerTimeMs: now, GroupId: groupID})
	if err != nil {
		return err
	}
	env = env[:len(env):len(env)]
	// Dedupe ids: <sending device>.<message id>.<device>, all in one string, in target order.
	prefix := len(from.ID) + 1 + len(msgID) + 1
	if cap(m.Targets) < n {
		m.Targets = make([]mailbox.Target, 0, n)
	}
	size := 0
	for _, acc := range accs {
		if acc == nil {
			continue
		}
		for _, d := range acc.Devices {
			if d != from.ID {
				size += prefix + len(d)
				m.Targets = append(m.Targets, mailbox.Target{DeviceID: d, Envelope: env})
			}
		}
	}
	var ids strings.Builder
	ids.Grow(size)
	for _, t := range m.Targets {
		ids.WriteString(from.ID)
		ids.WriteByte('.')
		ids.WriteString(msgID)
		ids.WriteByte('.')
		ids.WriteString(t.DeviceID)
	}
	all := ids.String()
	off := 0
	for i := range m.Targets {
		end := off + prefix + len(m.Targets[i].DeviceID)
		m.Targets[i].DedupeID = all[off:end]
		off = end
	}
	m.ID = msgID
	return nil
}
