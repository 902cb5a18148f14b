// Copyright 2026 The Petrel Authors
// SPDX-License-Identifier: Apache-2.0

package directory

import (
	"context"
	"crypto/rand"
	"errors"
	"fmt"
	"strings"
	"time"
	"unicode"
	"unicode/utf8"

	"google.golang.org/protobuf/proto"

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
	MaxListedDevices = 16
	// MaxDeviceNameRunes bounds the name a primary gives a linked device.
	MaxDeviceNameRunes = 64

	// deviceListContext is the signature context of a signed device list.
	deviceListContext = "petrel-device-list-v1"
	// maxDeviceListBytes bounds an encoded device list (16 entries are about 2.8 KB).
	maxDeviceListBytes = 8 << 10
	// maxSealedApproval bounds ApproveLink.sealed_approval (a LinkApproval: the signed list, the
	// account and the primary's identity: a few KB).
	maxSealedApproval = 16 << 10
	// maxOfferBytes bounds a stored link offer (keys and up to MaxPreKeysPerUpload prekeys of
	// each kind; the frame limit usually bounds it first).
	maxOfferBytes = 512 << 10
	// seenInterval is how stale a device's stored last-seen time may get before Seen writes it.
	seenInterval = time.Hour
	// maxUpdateAttempts bounds the read-check-update rounds of one account change that keeps
	// losing to concurrent changes (last-seen writes, other approvals).
	maxUpdateAttempts = 8
)

// verifyDeviceList checks a signed device list on its own: it parses, names account, holds 1 to
// MaxListedDevices entries with well-formed, distinct device ids, exactly one of them primary, and
// the signature verifies under the primary entry's identity key. Whether it matches the account's
// devices is matchList's job.
//
// TODO(md-crypto): switch to petrelv1.VerifyDeviceList once it is on main (the same checks,
// shared with the SDK).
func verifyDeviceList(sdl *pb.SignedDeviceList, account string) (*pb.DeviceList, error) {
	if sdl == nil || len(sdl.GetList()) == 0 {
		return nil, fmt.Errorf("%w: the signed device list is missing", ErrInvalidDeviceList)
	}
	if len(sdl.GetList()) > maxDeviceListBytes {
		return nil, fmt.Errorf("%w: %d bytes, at most %d", ErrInvalidDeviceList, len(sdl.GetList()), maxDeviceListBytes)
	}
	list := &pb.DeviceList{}
	if err := proto.Unmarshal(sdl.GetList(), list); err != nil {
		return nil, fmt.Errorf("%w: does not parse: %v", ErrInvalidDeviceList, err)
	}
	if list.GetAccount() != account {
		return nil, fmt.Errorf("%w: it names account %q, not %q", ErrInvalidDeviceList, list.GetAccount(), account)
	}
	if list.GetVersion() == 0 {
		return nil, fmt.Errorf("%w: version 0 (versions start at 1)", ErrInvalidDeviceList)
	}
	n := len(list.GetDevices())
	if n == 0 || n > MaxListedDevices {
		return nil, fmt.Errorf("%w: %d devices, want 1..%d", ErrInvalidDeviceList, n, MaxListedDevices)
	}
	seen := make(map[string]bool, n)
	var primary *pb.ListedDevice
	for _, e := range list.GetDevices() {
		if !pb.ValidDeviceID(e.GetDeviceId()) {
			return nil, fmt.Errorf("%w: malformed device id %q", ErrInvalidDeviceList, e.GetDeviceId())
		}
		if seen[e.GetDeviceId()] {
			return nil, fmt.Errorf("%w: device %s is listed twice", ErrInvalidDeviceList, e.GetDeviceId())
		}
		seen[e.GetDeviceId()] = true
		if e.GetPrimary() {
			if primary != nil {
				return nil, fmt.Errorf("%w: more than one primary device", ErrInvalidDeviceList)
			}
			primary = e
		}
	}
	if primary == nil {
		return nil, fmt.Errorf("%w: no primary device", ErrInvalidDeviceList)
	}
	ik, err := e2ee.ParseIdentityKey(primary.GetIdentityKey())
	if err != nil {
		return nil, fmt.Errorf("%w: the primary's identity key: %v", ErrInvalidDeviceList, err)
	}
	if err := ik.Verify(deviceListContext, sdl.GetList(), sdl.GetSignature()); err != nil {
		return nil, fmt.Errorf("%w: the signature does not verify under the primary's identity key", ErrInvalidDeviceList)
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

// crockford is Crockford's base32 alphabet (no I, L, O, U).
const crockford = "0123456789ABCDEFGHJKMNPQRSTVWXYZ"

// linkIDLen is the length of a link id: 8 characters, 40 random bits.
const linkIDLen = 8

// newLinkID returns a fresh link id: 8 upper-case Crockford base32 characters of 40 random bits.
//
// TODO(md-crypto): switch to e2ee.NewLinkID once it is on main.
func newLinkID() (string, error) {
	var b [5]byte
	if _, err := rand.Read(b[:]); err != nil {
		return "", err
	}
	v := uint64(b[0])<<32 | uint64(b[1])<<24 | uint64(b[2])<<16 | uint64(b[3])<<8 | uint64(b[4])
	out := make([]byte, linkIDLen)
	for i := linkIDLen - 1; i >= 0; i-- {
		out[i] = crockford[v&31]
		v >>= 5
	}
	return string(out), nil
}

// canonicalLinkID returns id in the form newLinkID makes (upper case), and whether it is a
// well-formed link id.
//
// TODO(md-crypto): switch to e2ee.ValidLinkID once it is on main.
func canonicalLinkID(id string) (string, bool) {
	if len(id) != linkIDLen {
		return "", false
	}
	id = strings.ToUpper(id)
	for i := 0; i < len(id); i++ {
		if strings.IndexByte(crockford, id[i]) < 0 {
			return "", false
		}
	}
	return id, true
}
