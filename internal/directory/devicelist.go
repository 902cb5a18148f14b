// Copyright 2026 The Petrel Authors
// SPDX-License-Identifier: Apache-2.0

package directory

import (
	"context"
	"errors"
	"fmt"
	"time"
	"unicode"
	"unicode/utf8"

	"github.com/petrelchat/petrel/e2ee"
	pb "github.com/petrelchat/petrel/proto/petrel/v1"
)

// Linked devices: defaults and bounds.
const (
	// DefaultMaxDevices is Config.MaxDevices's default.
	DefaultMaxDevices = 5
	// DefaultLinkTTL is Config.LinkTTL's default.
	DefaultLinkTTL = 5 * time.Minute
	// MaxListedDevices is the most devices a signed device list may hold, so the highest
	// MaxDevices.
	MaxListedDevices = pb.MaxListedDevices
	// MaxDeviceNameRunes bounds the name a primary gives a linked device.
	MaxDeviceNameRunes = 64

	// maxSealedApproval bounds ApproveLink.sealed_approval: the largest approval SealLinkApproval
	// seals, plus its AES-GCM tag.
	maxSealedApproval = e2ee.MaxLinkApprovalSize + 16
	// maxOfferBytes bounds a stored link offer (keys and up to MaxPreKeysPerUpload prekeys of
	// each kind; the frame limit usually bounds it first).
	maxOfferBytes = 512 << 10
	// seenInterval is how stale a device's stored last-seen time may get before Seen writes it.
	seenInterval = time.Hour
	// maxUpdateAttempts bounds the read-check-update rounds of one account change that keeps
	// losing to concurrent changes (last-seen writes, other approvals).
	maxUpdateAttempts = 8
)

// verifyDeviceList checks a signed device list on its own with pb.VerifyDeviceList (it parses,
// names account, holds 1 to MaxListedDevices well-formed, distinct devices, exactly one of them
// primary, and the signature verifies under the primary entry's identity key); every refusal is
// ErrInvalidDeviceList. Whether it matches the account's devices is matchList's job.
func verifyDeviceList(sdl *pb.SignedDeviceList, account string) (*pb.DeviceList, error) {
	list, err := pb.VerifyDeviceList(sdl, account)
	if err != nil {
		return nil, fmt.Errorf("%w: %w", ErrInvalidDeviceList, err)
	}
	return list, nil
}

// matchList checks that a verified list names exactly the devices of want (device id → identity
// key), each with its identity key, and primary as its primary. A device too many or missing is
// ErrStaleDeviceList (the signer may have seen another state of the account: it refetches and
// signs again); a wrong identity key or primary is ErrInvalidDeviceList (identity keys and the
// primary never change).
func matchList(list *pb.DeviceList, want map[string][]byte, primary string) error {
	for _, e := range list.GetDevices() {
		ik, ok := want[e.GetDeviceId()]
		if !ok {
			return fmt.Errorf("%w: it lists device %s, which the account does not have", ErrStaleDeviceList, e.GetDeviceId())
		}
		if string(ik) != string(e.GetIdentityKey()) {
			return fmt.Errorf("%w: device %s is listed with another identity key", ErrInvalidDeviceList, e.GetDeviceId())
		}
		if e.GetPrimary() != (e.GetDeviceId() == primary) {
			return fmt.Errorf("%w: the primary device is %s, not the signer", ErrInvalidDeviceList, primary)
		}
	}
	if len(list.GetDevices()) != len(want) {
		return fmt.Errorf("%w: it lists %d devices, the account has %d", ErrStaleDeviceList, len(list.GetDevices()), len(want))
	}
	return nil
}

// checkVersion checks a new list's version against the stored one: exactly stored+1 when exact,
// else above it. A version at or below the stored one means another list was stored meanwhile
// (stale); one beyond stored+1 when exact is invalid.
func checkVersion(got, stored uint64, exact bool) error {
	switch {
	case got <= stored:
		return fmt.Errorf("%w: version %d, the stored list has version %d", ErrStaleDeviceList, got, stored)
	case exact && got != stored+1:
		return fmt.Errorf("%w: version %d, want %d", ErrInvalidDeviceList, got, stored+1)
	}
	return nil
}

// identities returns the identity key of each of acc's devices, read from their records through
// the stream leader (a device just linked elsewhere is there). A device without a record is an
// error wrapping errConflict: acc is older than a removal.
func (d *Directory) identities(ctx context.Context, acc *Account) (map[string][]byte, error) {
	ids := make(map[string][]byte, len(acc.Devices)+1)
	for _, id := range acc.Devices {
		dev, _, err := d.deviceLatest(ctx, id)
		if errors.Is(err, ErrUnknownDevice) {
			// Removed since acc was read (the record goes after the account update): read the
			// account again.
			return nil, fmt.Errorf("%w: %w: account %s lists device %s, which has no record", ErrUnavailable, errConflict, acc.Name, id)
		}
		if err != nil {
			return nil, err
		}
		ids[id] = dev.IdentityKey
	}
	return ids, nil
}

// validDeviceName reports whether s is 1 to MaxDeviceNameRunes printable characters.
func validDeviceName(s string) bool {
	if s == "" || !utf8.ValidString(s) || utf8.RuneCountInString(s) > MaxDeviceNameRunes {
		return false
	}
	for _, r := range s {
		if !unicode.IsPrint(r) {
			return false
		}
	}
	return true
}

// newLinkID returns a fresh link id (e2ee.NewLinkID: 8 upper-case Crockford base32 characters of
// 40 random bits).
func newLinkID() (string, error) { return e2ee.NewLinkID(nil) }
