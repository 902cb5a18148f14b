// Copyright 2026 The Petrel Authors
// SPDX-License-Identifier: Apache-2.0

package petrelv1

import (
	"errors"
	"fmt"

	"github.com/petrelchat/petrel/e2ee"
	"google.golang.org/protobuf/proto"
)

// Bounds of a signed device list (docs/protocol.md, "Linked devices").
const (
	// MaxListedDevices is the most devices one DeviceList may name.
	MaxListedDevices = 16
	// MaxDeviceListBytes is the largest serialised DeviceList
	// (SignedDeviceList.list) accepted (16 KiB).
	MaxDeviceListBytes = 16 << 10
)

// Errors of VerifyDeviceList and SignDeviceList. Callers branch on them with errors.Is; the wrapped
// message says what is wrong (device indexes and ids, never key bytes).
var (
	// ErrInvalidDeviceList reports a device list that is missing, too large, does not parse, or
	// breaks a rule: 1-16 devices, valid unique device ids, valid unique identity keys, exactly one
	// primary, a valid account name, version >= 1, created_ms >= 0.
	ErrInvalidDeviceList = errors.New("invalid device list")
	// ErrDeviceListAccount reports a well-formed list that names another account than expected.
	ErrDeviceListAccount = errors.New("device list is for another account")
	// ErrDeviceListSignature reports a well-formed list whose signature does not verify with the
	// identity key of the device it names as primary.
	ErrDeviceListSignature = errors.New("device list signature does not verify")
	// ErrDeviceListRollback reports a list older than one already seen for the account
	// (CheckDeviceListVersion).
	ErrDeviceListRollback = errors.New("device list is older than one already seen")
)

// VerifyDeviceList checks a signed device list for account and returns the parsed list. It checks,
// in order: the size bound (MaxDeviceListBytes), that the bytes parse, the list's shape (1 to
// MaxListedDevices devices; every device id 32 lowercase hex characters and unique; every identity
// key parses with e2ee.ParseIdentityKey and is unique; exactly one primary; a valid account name;
// version >= 1; created_ms >= 0) — ErrInvalidDeviceList; that the list names account —
// ErrDeviceListAccount; and that the signature verifies with the primary entry's identity key under
// the context "petrel-device-list-v1" — ErrDeviceListSignature.
//
// It does not check the version against one seen before (see CheckDeviceListVersion) nor that the
// primary is the account's expected primary: the server checks that on upload, and a client
// compares the primary's identity key with the one it trusts for the account (a changed primary
// identity is treated like a changed identity key).
func VerifyDeviceList(sdl *SignedDeviceList, account string) (*DeviceList, error) {
	if sdl == nil || len(sdl.GetList()) == 0 {
		return nil, fmt.Errorf("%w: missing", ErrInvalidDeviceList)
	}
	if len(sdl.List) > MaxDeviceListBytes {
		return nil, fmt.Errorf("%w: %d bytes, limit %d", ErrInvalidDeviceList, len(sdl.List), MaxDeviceListBytes)
	}
	l := &DeviceList{}
	if err := proto.Unmarshal(sdl.List, l); err != nil {
		return nil, fmt.Errorf("%w: does not parse", ErrInvalidDeviceList)
	}
	primary, err := checkDeviceList(l)
	if err != nil {
		return nil, err
	}
	if l.Account != account {
		return nil, ErrDeviceListAccount
	}
	if err := e2ee.VerifyDeviceListSignature(primary, sdl.List, sdl.Signature); err != nil {
		return nil, ErrDeviceListSignature
	}
	return l, nil
}

// checkDeviceList checks the shape of a parsed list and returns the primary's identity key.
func checkDeviceList(l *DeviceList) (*e2ee.IdentityKey, error) {
	bad := func(format string, a ...any) error {
		return fmt.Errorf("%w: "+format, append([]any{ErrInvalidDeviceList}, a...)...)
	}
	if !ValidName(l.Account) {
		return nil, bad("account name is not valid")
	}
	if l.Version == 0 {
		return nil, bad("version 0 (versions start at 1)")
	}
	if l.CreatedMs < 0 {
		return nil, bad("negative created_ms")
	}
	if len(l.Devices) == 0 {
		return nil, bad("no devices")
	}
	if len(l.Devices) > MaxListedDevices {
		return nil, bad("%d devices, limit %d", len(l.Devices), MaxListedDevices)
	}
	var primary *e2ee.IdentityKey
	keys := make([]*e2ee.IdentityKey, 0, len(l.Devices))
	for i, d := range l.Devices {
		if d == nil || !ValidDeviceID(d.DeviceId) {
			return nil, bad("device %d: device id is not 32 lowercase hex characters", i)
		}
		for _, e := range l.Devices[:i] {
			if e.DeviceId == d.DeviceId {
				return nil, bad("device %d: device id %s listed twice", i, d.DeviceId)
			}
		}
		k, err := e2ee.ParseIdentityKey(d.IdentityKey)
		if err != nil {
			return nil, bad("device %s: identity key does not parse", d.DeviceId)
		}
		for _, o := range keys {
			if o.Equal(k) {
				return nil, bad("device %s: identity key listed twice", d.DeviceId)
			}
		}
		keys = append(keys, k)
		if d.Primary {
			if primary != nil {
				return nil, bad("more than one primary device")
			}
			primary = k
		}
	}
	if primary == nil {
		return nil, bad("no primary device")
	}
	return primary, nil
}

// SignDeviceList serialises l deterministically (proto.MarshalOptions{Deterministic: true}) and
// signs it with k, the primary device's identity key pair. It refuses (with the errors of
// VerifyDeviceList) a list that VerifyDeviceList would reject, including one whose primary entry
// does not carry k's public key.
func SignDeviceList(k *e2ee.IdentityKeyPair, l *DeviceList) (*SignedDeviceList, error) {
	if k == nil || l == nil {
		return nil, fmt.Errorf("%w: missing list or key", ErrInvalidDeviceList)
	}
	b, err := proto.MarshalOptions{Deterministic: true}.Marshal(l)
	if err != nil {
		return nil, fmt.Errorf("%w: %v", ErrInvalidDeviceList, err)
	}
	sig, err := e2ee.SignDeviceList(k, b)
	if err != nil {
		return nil, err
	}
	sdl := &SignedDeviceList{List: b, Signature: sig}
	if _, err := VerifyDeviceList(sdl, l.Account); err != nil {
		return nil, err
	}
	return sdl, nil
}

// CheckDeviceListVersion returns ErrDeviceListRollback when l is older than highestSeen, the
// highest version a client has accepted for the account (0 when none). An equal version is not a
// rollback (the same list fetched again).
func CheckDeviceListVersion(highestSeen uint64, l *DeviceList) error {
	if l.GetVersion() < highestSeen {
		return fmt.Errorf("%w: version %d, already saw %d", ErrDeviceListRollback, l.GetVersion(), highestSeen)
	}
	return nil
}

// Primary returns the list's primary entry, or nil if it has none (a list that VerifyDeviceList
// accepted has exactly one).
func (l *DeviceList) Primary() *ListedDevice {
	for _, d := range l.GetDevices() {
		if d.GetPrimary() {
			return d
		}
	}
	return nil
}

// Find returns the entry for deviceID, or nil if the list does not name it.
func (l *DeviceList) Find(deviceID string) *ListedDevice {
	for _, d := range l.GetDevices() {
		if d.GetDeviceId() == deviceID {
			return d
		}
	}
	return nil
}

// Contains reports whether the list names deviceID with exactly this (non-empty) identity key
// encoding: the test a sender applies to every device of a bundle before encrypting to it.
func (l *DeviceList) Contains(deviceID string, identityKey []byte) bool {
	d := l.Find(deviceID)
	return d != nil && len(identityKey) > 0 && string(d.IdentityKey) == string(identityKey)
}
