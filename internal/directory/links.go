// Copyright 2026 The Petrel Authors
// SPDX-License-Identifier: Apache-2.0

package directory

import (
	"context"
	"crypto/ed25519"
	"encoding/json"
	"errors"
	"fmt"
	"time"

	"github.com/nats-io/nats.go/jetstream"
	"google.golang.org/protobuf/proto"

	"github.com/petrelchat/petrel/e2ee"
	"github.com/petrelchat/petrel/internal/bus"
	pb "github.com/petrelchat/petrel/proto/petrel/v1"
)

// Linking a new device to an account (docs/protocol.md, "Linked devices"):
//
//   - StartLink stores the new device's offer in the links bucket under a fresh link id, with a
//     TTL (Config.LinkTTL). The new device shows the id, with a secret, as its link code.
//   - LinkOffer hands the offer to the account's primary device, which checks it against the code.
//   - ApproveLink spends the link (a purge with the revision read: of two approvals of one link
//     exactly one gets past it), creates the device record and adds the device, with the new
//     signed list, to the account record (an update with the revision read, retried while only
//     unrelated fields changed). A step that fails undoes the ones before it.
//
// Link entries carry their own expiry besides the bucket's TTL, which JetStream applies a moment
// late: a link is expired from its expiry on, whether or not the entry is gone yet.

// linkRecord is a pending link as stored in the links bucket.
type linkRecord struct {
	// Offer is the new device's pb.LinkOffer with link_id set, encoded.
	Offer     []byte `json:"offer"`
	DeviceID  string `json:"device_id"`
	ExpiresMS int64  `json:"expires_ms"`
}

// Link results (metric labels of petrel_directory_links_total).
const (
	linkStarted  = "started"
	linkApproved = "approved"
	linkExpired  = "expired"
	linkRefused  = "refused"
)

// StartLink checks a new device's link offer as Register checks a registration (the keys parse
// and their signatures verify, req.signature proves possession of the auth key over nonce, sizes
// are bounded, the device is not registered yet) and stores it for Config.LinkTTL under a fresh
// link id, which it returns with the expiry.
func (d *Directory) StartLink(ctx context.Context, nonce []byte, req *pb.StartLink) (string, time.Time, error) {
	id, exp, err := d.startLink(ctx, nonce, req)
	if err != nil {
		d.metrics.links.WithLabelValues(linkRefused).Inc()
		return "", time.Time{}, err
	}
	d.metrics.links.WithLabelValues(linkStarted).Inc()
	return id, exp, nil
}

func (d *Directory) startLink(ctx context.Context, nonce []byte, req *pb.StartLink) (string, time.Time, error) {
	offer := req.GetOffer()
	if offer == nil {
		return "", time.Time{}, fmt.Errorf("%w: the link offer is missing", ErrInvalidRequest)
	}
	if n := proto.Size(offer); n > maxOfferBytes {
		return "", time.Time{}, fmt.Errorf("%w: the link offer has %d bytes, at most %d", ErrInvalidRequest, n, maxOfferBytes)
	}
	authKey := offer.GetAuthKey()
	if len(authKey) != ed25519.PublicKeySize {
		return "", time.Time{}, fmt.Errorf("%w: auth key must be %d bytes", ErrInvalidKeys, ed25519.PublicKeySize)
	}
	if len(offer.GetEphemeralKey()) != e2ee.LinkEphemeralKeySize {
		return "", time.Time{}, fmt.Errorf("%w: the ephemeral key must be %d bytes", ErrInvalidRequest, e2ee.LinkEphemeralKeySize)
	}
	if len(offer.GetMac()) != e2ee.LinkMACSize {
		return "", time.Time{}, fmt.Errorf("%w: the offer's MAC must be %d bytes", ErrInvalidRequest, e2ee.LinkMACSize)
	}
	deviceID := pb.DeviceID(authKey)
	if !ed25519.Verify(authKey, pb.AuthPayload(nonce, deviceID), req.GetSignature()) {
		return "", time.Time{}, fmt.Errorf("%w: signature does not verify", ErrAuthFailed)
	}
	dev, err := verifyInitialKeys(offer.GetKeys())
	if err != nil {
		return "", time.Time{}, err
	}
	dev.ID = deviceID
	if _, _, err := preKeyMsgs(dev, offer.GetKeys()); err != nil {
		return "", time.Time{}, err
	}
	k, _ := parseDeviceKey(deviceID)
	switch _, err := d.authEntry(ctx, deviceID, k, precheck); { // ApproveLink creates the device
	case err == nil:
		return "", time.Time{}, ErrDeviceExists
	case !errors.Is(err, ErrUnknownDevice):
		return "", time.Time{}, err
	}
	expires := d.cfg.Now().Add(d.cfg.LinkTTL)
	stored := proto.Clone(offer).(*pb.LinkOffer)
	for range 4 { // 40 random bits: a taken id is rare, four in a row is a broken generator
		id, err := newLinkID()
		if err != nil {
			return "", time.Time{}, fmt.Errorf("%w: link id: %v", ErrUnavailable, err)
		}
		stored.LinkId = id
		b, err := proto.MarshalOptions{Deterministic: true}.Marshal(stored)
		if err != nil {
			return "", time.Time{}, fmt.Errorf("%w: link offer: %v", ErrInvalidRequest, err)
		}
		rec, _ := json.Marshal(linkRecord{Offer: b, DeviceID: deviceID, ExpiresMS: expires.UnixMilli()})
		_, err = d.bus.Links.Create(ctx, id, rec, jetstream.KeyTTL(d.cfg.LinkTTL))
		if err == nil {
			return id, expires, nil
		}
		if !errors.Is(err, jetstream.ErrKeyExists) {
			return "", time.Time{}, fmt.Errorf("%w: store link: %v", ErrUnavailable, err)
		}
	}
	return "", time.Time{}, fmt.Errorf("%w: no free link id", ErrUnavailable)
}

// LinkOffer returns the offer stored for linkID, to the account's primary device only (another
// device gets ErrPermissionDenied). An unknown, used or expired link is ErrLinkExpired.
func (d *Directory) LinkOffer(ctx context.Context, p Principal, linkID string) (*pb.LinkOffer, error) {
	acc, err := d.Account(ctx, p.Name) // the cache will do: the primary never changes
	if err != nil {
		return nil, err
	}
	if acc.Primary() != p.ID {
		return nil, fmt.Errorf("%w: approve from your primary device", ErrPermissionDenied)
	}
	rec, _, err := d.readLink(ctx, linkID)
	if err != nil {
		if errors.Is(err, ErrLinkExpired) {
			d.metrics.links.WithLabelValues(linkExpired).Inc()
		}
		return nil, err
	}
	offer := &pb.LinkOffer{}
	if err := proto.Unmarshal(rec.Offer, offer); err != nil {
		return nil, fmt.Errorf("%w: link record: %v", ErrUnavailable, err)
	}
	return offer, nil
}

// readLink reads a pending link through the stream leader, with its revision: ErrLinkExpired when
// the id is malformed or has no entry, or the entry's expiry has passed.
func (d *Directory) readLink(ctx context.Context, linkID string) (*linkRecord, uint64, error) {
	// Only canonical ids (docs/protocol.md §9.2: the SDK's code parser makes them).
	id := linkID
	if !e2ee.ValidLinkID(id) {
		return nil, 0, fmt.Errorf("%w: malformed link id", ErrLinkExpired)
	}
	ctx, cancel := withReadTimeout(ctx)
	defer cancel()
	v, rev, ok, err := d.bus.KVLatest(ctx, bus.LinksBucket, id)
	if err != nil {
		return nil, 0, fmt.Errorf("%w: read link: %v", ErrUnavailable, err)
	}
	if !ok {
		return nil, 0, ErrLinkExpired
	}
	rec := &linkRecord{}
	if err := json.Unmarshal(v, rec); err != nil {
		return nil, 0, fmt.Errorf("%w: link record %s: %v", ErrUnavailable, id, err)
	}
	if d.cfg.Now().UnixMilli() >= rec.ExpiresMS {
		return nil, 0, ErrLinkExpired
	}
	return rec, rev, nil
}

// Approved is the result of an approval.
type Approved struct {
	// LinkID is the approved link's id (the waiting device's node listens on bus.LinkSubject of
	// it).
	LinkID string
	// NewDeviceID is the linked device's id.
	NewDeviceID string
	// Name is the account's name.
	Name string
	// DeviceList is the signed list now stored (the one the approval carried).
	DeviceList *pb.SignedDeviceList
	// Info is the account's devices after the approval (the answer to the primary).
	Info *pb.DeviceListResult
}

// ApproveLink adds the device of a pending link to p's account. Only the primary may approve
// (ErrPermissionDenied). req.device_list must verify and list exactly the account's devices plus
// the new one, with its offered identity key, the primary as signer, at version stored+1 (1 when
// none is stored): otherwise ErrInvalidDeviceList, or ErrStaleDeviceList when the account changed
// meanwhile. An account at Config.MaxDevices gets ErrTooManyDevices. A link approves once: a used,
// unknown or expired one is ErrLinkExpired. A refused approval leaves the link usable.
func (d *Directory) ApproveLink(ctx context.Context, p Principal, req *pb.ApproveLink) (*Approved, error) {
	a, err := d.approveLink(ctx, p, req)
	switch {
	case err == nil:
		d.metrics.links.WithLabelValues(linkApproved).Inc()
	case errors.Is(err, ErrLinkExpired):
		d.metrics.links.WithLabelValues(linkExpired).Inc()
	default:
		d.metrics.links.WithLabelValues(linkRefused).Inc()
	}
	return a, err
}

func (d *Directory) approveLink(ctx context.Context, p Principal, req *pb.ApproveLink) (*Approved, error) {
	if !validDeviceName(req.GetDeviceName()) {
		return nil, fmt.Errorf("%w: the device name must be 1-%d printable characters", ErrInvalidRequest, MaxDeviceNameRunes)
	}
	if len(req.GetEphemeralKey()) != e2ee.LinkEphemeralKeySize {
		return nil, fmt.Errorf("%w: the ephemeral key must be %d bytes", ErrInvalidRequest, e2ee.LinkEphemeralKeySize)
	}
	if n := len(req.GetSealedApproval()); n == 0 || n > maxSealedApproval {
		return nil, fmt.Errorf("%w: the sealed approval must be 1-%d bytes", ErrInvalidRequest, maxSealedApproval)
	}
	list, err := verifyDeviceList(req.GetDeviceList(), p.Name)
	if err != nil {
		return nil, err
	}
	acc, accRev, err := d.accountLatest(ctx, p.Name)
	if err != nil {
		return nil, err
	}
	if acc.Primary() != p.ID {
		return nil, fmt.Errorf("%w: approve from your primary device", ErrPermissionDenied)
	}
	linkID := req.GetLinkId()
	rec, linkRev, err := d.readLink(ctx, req.GetLinkId())
	if err != nil {
		return nil, err
	}
	offer := &pb.LinkOffer{}
	if err := proto.Unmarshal(rec.Offer, offer); err != nil {
		return nil, fmt.Errorf("%w: link record: %v", ErrUnavailable, err)
	}
	now := d.cfg.Now().UTC()
	dev, err := newDevice(acc.Name, offer.GetAuthKey(), offer.GetKeys(), now)
	if err != nil {
		return nil, err // checked at StartLink: only a changed verifier gets here
	}
	check := func(acc *Account) error {
		if len(acc.Devices) >= d.cfg.MaxDevices {
			return fmt.Errorf("%w (%d)", ErrTooManyDevices, d.cfg.MaxDevices)
		}
		if acc.HasDevice(dev.ID) {
			return ErrDeviceExists
		}
		if err := checkVersion(list.GetVersion(), acc.listVersion(), true); err != nil {
			return err
		}
		want, err := d.identities(ctx, acc)
		if err != nil {
			return err
		}
		want[dev.ID] = dev.IdentityKey
		return matchList(list, want, acc.Primary())
	}
	stored := &StoredList{List: req.GetDeviceList().GetList(), Signature: req.GetDeviceList().GetSignature(), Version: list.GetVersion()}
	spent := false // the link is purged and the device record created: undo both on failure
	fail := func(err error) (*Approved, error) {
		if spent {
			d.undoLink(ctx, dev.ID, linkID, rec)
		} else if !errors.Is(err, ErrLinkExpired) {
			// A concurrent approval of this link that won changed the account too: tell it
			// apart from a list that was stale or wrong to begin with.
			if _, _, lerr := d.readLink(ctx, linkID); errors.Is(lerr, ErrLinkExpired) {
				return nil, ErrLinkExpired
			}
		}
		return nil, err
	}
	for attempt := 1; ; attempt++ {
		err := check(acc)
		if err == nil {
			if !spent {
				if err := d.spendLink(ctx, linkID, linkRev, rec, dev); err != nil {
					return nil, err
				}
				spent = true
			}
			next := acc.clone()
			next.PrimaryID = acc.Primary()
			next.Devices = append(next.Devices, dev.ID)
			next.DeviceList = stored
			next.Details[dev.ID] = DeviceDetails{Name: req.GetDeviceName(), LinkedMS: now.UnixMilli()}
			if err = d.updateAccount(ctx, next, accRev); err == nil {
				acc = next
				break
			}
		}
		if !errors.Is(err, errConflict) || attempt == maxUpdateAttempts {
			return fail(err)
		}
		// Somebody else changed the account: check again against what is there now.
		if acc, accRev, err = d.accountLatest(ctx, p.Name); err != nil {
			return fail(err)
		}
	}
	d.addInitialPreKeys(ctx, dev, offer.GetKeys())
	info := devicesResult(acc)
	d.fillLastSeen(ctx, info)
	return &Approved{LinkID: linkID, NewDeviceID: dev.ID, Name: acc.Name, DeviceList: acc.SignedDeviceList(), Info: info}, nil
}

// spendLink purges the link entry at the revision read (of concurrent approvals exactly one
// succeeds: the others get ErrLinkExpired), then creates the new device's record.
func (d *Directory) spendLink(ctx context.Context, linkID string, linkRev uint64, rec *linkRecord, dev *Device) error {
	if err := d.bus.Links.Purge(ctx, linkID, jetstream.LastRevision(linkRev)); err != nil {
		if isConflict(err) {
			return ErrLinkExpired
		}
		return fmt.Errorf("%w: spend link: %v", ErrUnavailable, err)
	}
	devJSON, _ := json.Marshal(dev)
	if _, err := d.bus.Devices.Create(ctx, dev.ID, devJSON); err != nil {
		if errors.Is(err, jetstream.ErrKeyExists) {
			return ErrDeviceExists // registered or linked meanwhile: this link is of no use now
		}
		d.returnLink(ctx, linkID, rec)
		return fmt.Errorf("%w: create device: %v", ErrUnavailable, err)
	}
	return nil
}

// undoLink undoes a spent link whose device could not join the account: it removes the device
// record and gives the link back, so the primary can approve it again.
func (d *Directory) undoLink(ctx context.Context, deviceID, linkID string, rec *linkRecord) {
	if err := d.bus.Devices.Purge(ctx, deviceID); err != nil {
		d.log.Warn("undo device after a failed link approval", "device", deviceID, "err", err)
	}
	d.returnLink(ctx, linkID, rec)
}

// returnLink stores a spent link again, until its original expiry.
func (d *Directory) returnLink(ctx context.Context, linkID string, rec *linkRecord) {
	left := time.UnixMilli(rec.ExpiresMS).Sub(d.cfg.Now())
	if left < time.Second {
		return // about to expire anyway (the TTL has a 1s granularity)
	}
	b, _ := json.Marshal(rec)
	if _, err := d.bus.Links.Create(ctx, linkID, b, jetstream.KeyTTL(left)); err != nil {
		d.log.Warn("give back a link after a failed approval", "err", err)
	}
}

// isConflict reports whether err is JetStream's answer to a write whose expected revision
// (last sequence of the subject) was not the latest.
func isConflict(err error) bool {
	var apiErr *jetstream.APIError
	if !errors.As(err, &apiErr) {
		return false
	}
	return apiErr.ErrorCode == jetstream.JSErrCodeStreamWrongLastSequence ||
		apiErr.ErrorCode == jetstream.JSErrCodeStreamWrongLastSequenceConstant
}
