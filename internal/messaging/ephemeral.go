// Copyright 2026 The Petrel Authors
// SPDX-License-Identifier: Apache-2.0

package messaging

import (
	"context"

	"github.com/petrelchat/petrel/internal/directory"
	pb "github.com/petrelchat/petrel/proto/petrel/v1"
)

// errEphemeralOwn refuses own_envelopes on an ephemeral send: a typing indicator is for the
// other account only (an own device that is offline would have its session's chain skip keys
// for nothing).
var errEphemeralOwn = &Error{Code: pb.ErrorCode_ERROR_CODE_INVALID_REQUEST, Msg: "an ephemeral send carries envelopes for the recipient's devices only, no own_envelopes"}

// errEphemeralSelf refuses an ephemeral send to the sender's own account.
var errEphemeralSelf = &Error{Code: pb.ErrorCode_ERROR_CODE_INVALID_REQUEST, Msg: "an ephemeral send goes to another account"}

// ResolveEphemeral is Resolve for an ephemeral 1:1 send (Send.ephemeral, a typing indicator):
// exactly one envelope per current device of the recipient, as for any 1:1 send, and no
// own_envelopes (unlike Resolve, which requires one per other device of the sender). The
// targets are built as Resolve builds them; the caller delivers them live only.
func (s *Service) ResolveEphemeral(ctx context.Context, from directory.Principal, v *pb.SendView, now int64, m *Message) error {
	m.ID, m.Targets = "", m.Targets[:0]
	if !validMessageID(v.MessageID) {
		return errMessageID
	}
	if len(v.OwnEnvelopes) > 0 {
		return errEphemeralOwn
	}
	if string(v.To) == from.Name {
		return errEphemeralSelf
	}
	if err := checkEnvelopes(v.Envelopes); err != nil {
		return err
	}
	acc, err := s.accounts.Account(ctx, string(v.To))
	if err != nil {
		return err
	}
	if len(v.Envelopes) == 0 {
		return errStaleDevices
	}
	if err := checkDevices(acc.Devices, "", v.Envelopes, recipientList); err != nil {
		return err
	}
	build(from, v, now, acc.Devices, nil, m)
	return nil
}
