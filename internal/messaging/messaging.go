// Copyright 2026 The Petrel Authors
// SPDX-License-Identifier: Apache-2.0

// Package messaging resolves the recipients of a message: given a Send from an authenticated
// device, it decides which devices get an envelope, checks the sender's device lists against the
// current ones, and builds the mailbox targets. The gateway is the transport: it parses frames,
// asks Resolve for the targets and hands them to the mailbox.
//
// Recipient kinds:
//   - 1:1. Send.envelopes: exactly one per current device of the recipient account; a device the
//     account does not own is UNKNOWN_DEVICE, a missing one STALE_DEVICES (the client refetches
//     the recipient's bundle and encrypts again).
//   - The sender's own other devices. Send.own_envelopes: exactly one per current device of the
//     sender's account except the sending device, with the same codes. They are delivered like
//     the recipient's, from the same sender account and device: a receiving device shows an
//     envelope from its own account as a message it sent from another device.
//   - Groups (group.go). Send.group_id with one group_ciphertext: every device of every member of
//     the group except the sending device, all with the same envelope bytes.
//   - Device to device. A Send whose to is the sender's own account carries envelopes for some of
//     its other devices only (history transfer, control messages): no own_envelopes, no exact list,
//     each named device must be one of the account's and not the sender.
//
// Targets that carry identical bytes share them, and a message costs two allocations whatever its
// number of devices: one buffer for every envelope and one string for every dedupe id.
package messaging

import (
	"bytes"
	"context"
	"strings"

	"github.com/petrelchat/petrel/internal/directory"
	"github.com/petrelchat/petrel/internal/mailbox"
	pb "github.com/petrelchat/petrel/proto/petrel/v1"
)

// Accounts looks accounts up: the directory. Its errors pass through Resolve unchanged
// (directory.ErrUnknownUser, directory.ErrUnavailable). The record it returns is shared and never
// modified. A ctx without a deadline must still be bounded by the implementation (the send path
// passes none, so that a cached lookup costs no timer).
type Accounts interface {
	Account(ctx context.Context, name string) (*directory.Account, error)
}

// Service resolves sends. It holds no state of its own: safe for concurrent use.
type Service struct {
	accounts     Accounts
	groups       Groups           // nil: group sends are UNKNOWN_GROUP
	unknownGroup func(error) bool // which errors of groups mean "no such group"
}

// New returns a service that looks accounts up in accounts.
func New(accounts Accounts, opts ...Option) *Service {
	s := &Service{accounts: accounts}
	for _, o := range opts {
		o(s)
	}
	return s
}

// Error is a send refused by the recipient rules: a wire code and a fixed message for the client
// (no request data, nothing internal). It never lists an account's devices: a Send is open to
// any sender, contact or not, so device ids (and whether a device exists) are given only through
// the bundle path (GetBundle), where the client refetches after STALE_DEVICES or UNKNOWN_DEVICE.
type Error struct {
	Code pb.ErrorCode
	Msg  string
}

func (e *Error) Error() string { return e.Msg }

// The refusals of Resolve.
var (
	errMessageID     = &Error{Code: pb.ErrorCode_ERROR_CODE_INVALID_REQUEST, Msg: "message_id must be 1-64 of A-Z a-z 0-9 _ -"}
	errEnvelopeType  = &Error{Code: pb.ErrorCode_ERROR_CODE_INVALID_REQUEST, Msg: "envelope type must be PREKEY or MESSAGE"}
	errEmptyCT       = &Error{Code: pb.ErrorCode_ERROR_CODE_INVALID_REQUEST, Msg: "empty ciphertext"}
	errDuplicate     = &Error{Code: pb.ErrorCode_ERROR_CODE_INVALID_REQUEST, Msg: "two envelopes for one device"}
	errUnknownDevice = &Error{Code: pb.ErrorCode_ERROR_CODE_UNKNOWN_DEVICE, Msg: "the recipient does not own a device of this send: fetch its devices again (GetBundle)"}
	errStaleDevices  = &Error{Code: pb.ErrorCode_ERROR_CODE_STALE_DEVICES, Msg: "the device list is stale: fetch the recipient's devices again (GetBundle) and encrypt for each"}
	errOwnUnknown    = &Error{Code: pb.ErrorCode_ERROR_CODE_UNKNOWN_DEVICE, Msg: "your account does not own a device of own_envelopes: fetch your own devices again (GetBundle)"}
	errOwnStale      = &Error{Code: pb.ErrorCode_ERROR_CODE_STALE_DEVICES, Msg: "your own device list is stale: fetch your account's devices again (GetBundle) and encrypt for each other device"}
	errOwnSelf       = &Error{Code: pb.ErrorCode_ERROR_CODE_INVALID_REQUEST, Msg: "own_envelopes name the sending device itself"}
	errSelfOwn       = &Error{Code: pb.ErrorCode_ERROR_CODE_INVALID_REQUEST, Msg: "a send to your own account carries envelopes only, no own_envelopes"}
	errSelfEmpty     = &Error{Code: pb.ErrorCode_ERROR_CODE_INVALID_REQUEST, Msg: "a send to your own account needs an envelope for another of your devices"}
	errSelfUnknown   = &Error{Code: pb.ErrorCode_ERROR_CODE_UNKNOWN_DEVICE, Msg: "your account does not own a device of this send: fetch your own devices again (GetBundle)"}
)

// listErrors are the answers of one device-list check.
type listErrors struct{ unknown, stale, self *Error }

var (
	recipientList = listErrors{unknown: errUnknownDevice, stale: errStaleDevices, self: errUnknownDevice}
	ownList       = listErrors{unknown: errOwnUnknown, stale: errOwnStale, self: errOwnSelf}
)

// Message is a resolved send.
type Message struct {
	// ID is the message id. It shares its bytes with the targets' dedupe ids.
	ID string
	// Targets are the devices that get an envelope: the recipient's, then the sender's own.
	Targets []mailbox.Target
}

// Resolve checks the Send v from the device from and fills m with its targets, appended to
// m.Targets[:0] (give it a backing array to spare an allocation). now is the server time stamped
// on the envelopes (Unix milliseconds). Nothing in v is kept: the targets hold copies. A refusal
// is an *Error; the account lookup's errors pass through.
func (s *Service) Resolve(ctx context.Context, from directory.Principal, v *pb.SendView, now int64, m *Message) error {
	m.ID, m.Targets = "", m.Targets[:0]
	if !validMessageID(v.MessageID) {
		return errMessageID
	}
	if err := checkEnvelopes(v.Envelopes); err != nil {
		return err
	}
	if err := checkEnvelopes(v.OwnEnvelopes); err != nil {
		return err
	}
	if string(v.To) == from.Name {
		return s.resolveOwn(ctx, from, v, now, m)
	}
	acc, err := s.accounts.Account(ctx, string(v.To))
	if err != nil {
		return err
	}
	if len(v.Envelopes) == 0 { // a message goes to at least one device of its recipient
		return errStaleDevices
	}
	if err := checkDevices(acc.Devices, "", v.Envelopes, recipientList); err != nil {
		return err
	}
	mine, err := s.accounts.Account(ctx, from.Name)
	if err != nil {
		return err
	}
	if err := checkDevices(mine.Devices, from.ID, v.OwnEnvelopes, ownList); err != nil {
		return err
	}
	build(from, v, now, acc.Devices, mine.Devices, m)
	return nil
}

// resolveOwn resolves a device-to-device send: to is the sender's own account.
func (s *Service) resolveOwn(ctx context.Context, from directory.Principal, v *pb.SendView, now int64, m *Message) error {
	if len(v.OwnEnvelopes) > 0 {
		return errSelfOwn
	}
	if len(v.Envelopes) == 0 {
		return errSelfEmpty
	}
	mine, err := s.accounts.Account(ctx, from.Name)
	if err != nil {
		return err
	}
	for i, e := range v.Envelopes {
		if string(e.DeviceID) == from.ID {
			return errOwnSelf
		}
		if !owns(mine.Devices, e.DeviceID) {
			return errSelfUnknown
		}
		for _, prev := range v.Envelopes[:i] {
			if bytes.Equal(prev.DeviceID, e.DeviceID) {
				return errDuplicate
			}
		}
	}
	build(from, v, now, mine.Devices, nil, m)
	return nil
}

// validMessageID is pb.ValidMessageID on bytes (without converting them to a string).
func validMessageID(id []byte) bool {
	if len(id) == 0 || len(id) > pb.MaxMessageIDLen {
		return false
	}
	for _, c := range id {
		if !(c >= 'a' && c <= 'z' || c >= 'A' && c <= 'Z' || c >= '0' && c <= '9' || c == '_' || c == '-') {
			return false
		}
	}
	return true
}

// checkEnvelopes checks what an envelope must carry whoever it is for.
func checkEnvelopes(envs []pb.CiphertextView) error {
	for _, e := range envs {
		if e.Type != pb.EnvelopeType_ENVELOPE_TYPE_PREKEY && e.Type != pb.EnvelopeType_ENVELOPE_TYPE_MESSAGE {
			return errEnvelopeType
		}
		if len(e.Ciphertext) == 0 {
			return errEmptyCT
		}
	}
	return nil
}

// owns reports whether current lists d (without allocating a string for d).
func owns(current []string, d []byte) bool {
	for _, c := range current {
		if c == string(d) {
			return true
		}
	}
	return false
}

// ownedDevice returns the entry of current equal to d (a string the account record already holds).
func ownedDevice(current []string, d []byte) string {
	for _, c := range current {
		if c == string(d) {
			return c
		}
	}
	return string(d)
}

// checkDevices requires exactly one envelope per device of current except self ("" for none);
// an envelope for self is errs.self.
func checkDevices(current []string, self string, envs []pb.CiphertextView, errs listErrors) error {
	want := len(current)
	for _, c := range current {
		if c == self {
			want--
		}
	}
	if len(envs) == 0 {
		if want == 0 {
			return nil
		}
		return errs.stale
	}
	if len(envs) > 8 || len(current) > 8 {
		return checkDevicesLarge(current, self, want, envs, errs)
	}
	// Device lists are short: linear scans, no maps and no allocation (this runs for every send).
	for i, e := range envs {
		for _, prev := range envs[:i] {
			if bytes.Equal(prev.DeviceID, e.DeviceID) {
				return errDuplicate
			}
		}
		if self != "" && string(e.DeviceID) == self {
			return errs.self
		}
		if !owns(current, e.DeviceID) {
			return errs.unknown
		}
	}
	// Distinct and all owned (self excluded): the lists match when they are as long.
	if len(envs) != want {
		return errs.stale
	}
	return nil
}

// checkDevicesLarge is checkDevices with maps, for long lists (linear, not quadratic).
func checkDevicesLarge(current []string, self string, want int, envs []pb.CiphertextView, errs listErrors) error {
	cur := make(map[string]bool, len(current))
	for _, d := range current {
		cur[d] = true
	}
	seen := make(map[string]bool, len(envs))
	for _, e := range envs {
		d := string(e.DeviceID)
		if seen[d] {
			return errDuplicate
		}
		seen[d] = true
		if self != "" && d == self {
			return errs.self
		}
		if !cur[d] {
			return errs.unknown
		}
	}
	if len(seen) != want {
		return errs.stale
	}
	return nil
}

// build fills m with one target per envelope of v (devices of recipients) and own envelope
// (devices of own). The envelopes share one buffer, identical ones share their bytes, and the
// dedupe ids share one string, as does m.ID.
func build(from directory.Principal, v *pb.SendView, now int64, recipients, own []string, m *Message) {
	n := len(v.Envelopes) + len(v.OwnEnvelopes)
	idLen := len(from.ID) + 1 + len(v.MessageID) + 1
	var ids strings.Builder
	size := 0
	for _, e := range v.Envelopes {
		size += len(e.DeviceID)
	}
	for _, e := range v.OwnEnvelopes {
		size += len(e.DeviceID)
	}
	ids.Grow(n*idLen + size)
	for _, list := range [2][]pb.CiphertextView{v.Envelopes, v.OwnEnvelopes} {
		for _, e := range list {
			ids.WriteString(from.ID)
			ids.WriteByte('.')
			ids.Write(v.MessageID)
			ids.WriteByte('.')
			ids.Write(e.DeviceID)
		}
	}
	all := ids.String()
	msgID := all[len(from.ID)+1 : idLen-1]
	m.ID = msgID

	// One buffer for the distinct envelopes: an envelope is its message id, sender, type,
	// ciphertext and time, so two with the same type and ciphertext are the same bytes.
	size = 0
	for i := range n {
		e := view(v, i)
		if sameAsEarlier(v, i) < 0 {
			size += pb.EnvelopeSize(msgID, from.Name, from.ID, e.Type, len(e.Ciphertext), now)
		}
	}
	buf := make([]byte, 0, size)
	off := 0
	for i := range n {
		e := view(v, i)
		devices := recipients
		if i >= len(v.Envelopes) {
			devices = own
		}
		var env []byte
		if j := sameAsEarlier(v, i); j >= 0 {
			env = m.Targets[j].Envelope
		} else {
			buf = pb.AppendEnvelope(buf, msgID, from.Name, from.ID, e.Type, e.Ciphertext, now)
			env = buf[off:len(buf):len(buf)]
			off = len(buf)
		}
		idEnd := idLen + len(e.DeviceID)
		m.Targets = append(m.Targets, mailbox.Target{
			DeviceID: ownedDevice(devices, e.DeviceID),
			DedupeID: all[:idEnd],
			Envelope: env,
		})
		all = all[idEnd:]
	}
}

// view is the i-th envelope of v, counting the own envelopes after the others.
func view(v *pb.SendView, i int) *pb.CiphertextView {
	if i < len(v.Envelopes) {
		return &v.Envelopes[i]
	}
	return &v.OwnEnvelopes[i-len(v.Envelopes)]
}

// sameAsEarlier is the index of the first earlier envelope of v with the same type and
// ciphertext as the i-th, or -1.
func sameAsEarlier(v *pb.SendView, i int) int {
	e := view(v, i)
	for j := range i {
		p := view(v, j)
		if p.Type == e.Type && bytes.Equal(p.Ciphertext, e.Ciphertext) {
			return j
		}
	}
	return -1
}
