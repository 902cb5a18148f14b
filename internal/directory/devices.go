// Copyright 2026 The Petrel Authors
// SPDX-License-Identifier: Apache-2.0

package directory

import (
	"context"
	"encoding/json"
	"errors"
	"fmt"
	"github.com/nats-io/nats.go"
	"github.com/synadia-io/orbit.go/jetstreamext"
	"maps"
	"slices"
	"strconv"
	"time"

	"github.com/nats-io/nats.go/jetstream"

	"github.com/petrelchat/petrel/internal/bus"
	pb "github.com/petrelchat/petrel/proto/petrel/v1"
)

// An account's devices: one primary (the device that registered it) and up to MaxDevices-1
// linked companions, and the device list the primary signed. Every change of them is a
// read-check-update of the account record: read it through the stream leader with its revision,
// check the change against it, write it only if the revision is still the latest; on a conflict
// read again and check again (a concurrent change may have made the request stale). So two
// changes never both apply to the same state (two approvals, an approval and a removal).

// errConflict: the account record changed between the read and the update. It is wrapped with
// ErrUnavailable when it reaches a caller (the change kept losing: retry).
var errConflict = errors.New("the account record changed meanwhile")

// withReadTimeout bounds a read for a caller whose ctx has no deadline.
func withReadTimeout(ctx context.Context) (context.Context, context.CancelFunc) {
	if _, ok := ctx.Deadline(); ok {
		return ctx, func() {}
	}
	return context.WithTimeout(ctx, readTimeout)
}

// accountLatest reads an account record and its revision through the stream leader.
func (d *Directory) accountLatest(ctx context.Context, name string) (*Account, uint64, error) {
	if !pb.ValidName(name) {
		return nil, 0, ErrUnknownUser
	}
	ctx, cancel := withReadTimeout(ctx)
	defer cancel()
	v, rev, ok, err := d.bus.KVLatest(ctx, bus.AccountsBucket, name)
	if err != nil {
		return nil, 0, fmt.Errorf("%w: read account: %v", ErrUnavailable, err)
	}
	if !ok {
		return nil, 0, ErrUnknownUser
	}
	acc := &Account{}
	if err := json.Unmarshal(v, acc); err != nil {
		return nil, 0, fmt.Errorf("%w: account record %s: %v", ErrUnavailable, name, err)
	}
	return acc, rev, nil
}

// deviceLatest reads a device record and its revision through the stream leader.
func (d *Directory) deviceLatest(ctx context.Context, id string) (*Device, uint64, error) {
	if !pb.ValidDeviceID(id) {
		return nil, 0, ErrUnknownDevice
	}
	ctx, cancel := withReadTimeout(ctx)
	defer cancel()
	v, rev, ok, err := d.bus.KVLatest(ctx, bus.DevicesBucket, id)
	if err != nil {
		return nil, 0, fmt.Errorf("%w: read device: %v", ErrUnavailable, err)
	}
	if !ok {
		return nil, 0, ErrUnknownDevice
	}
	dev := &Device{}
	if err := json.Unmarshal(v, dev); err != nil {
		return nil, 0, fmt.Errorf("%w: device record %s: %v", ErrUnavailable, id, err)
	}
	return dev, rev, nil
}

// updateAccount writes acc if the record's latest revision is still rev. A lost race is an error
// wrapping both errConflict and ErrUnavailable. This node's account cache forgets the account at
// once (the watch does it on every node, a moment later).
func (d *Directory) updateAccount(ctx context.Context, acc *Account, rev uint64) error {
	b, err := json.Marshal(acc)
	if err != nil {
		return fmt.Errorf("%w: account record: %v", ErrUnavailable, err)
	}
	if _, err := d.bus.Accounts.Update(ctx, acc.Name, b, rev); err != nil {
		if isConflict(err) {
			return fmt.Errorf("%w: %w", ErrUnavailable, errConflict)
		}
		return fmt.Errorf("%w: update account: %v", ErrUnavailable, err)
	}
	if d.accounts != nil {
		d.accounts.invalidate(acc.Name)
	}
	return nil
}

// clone copies an account record so that a change of the copy leaves a shared (cached) record
// alone. Details is never nil in the copy.
func (a *Account) clone() *Account {
	c := *a
	c.Devices = slices.Clone(a.Devices)
	c.Details = make(map[string]DeviceDetails, len(a.Details)+1)
	maps.Copy(c.Details, a.Details)
	return &c
}

// Info returns what GetDevices shows of device id of the account. A device of a record from
// before linked devices counts as linked when the account was created.
func (a *Account) Info(id string) *pb.DeviceInfo {
	det := a.Details[id]
	primary := id == a.Primary()
	linked := det.LinkedMS
	if linked == 0 && primary {
		linked = a.Created.UnixMilli()
	}
	return &pb.DeviceInfo{DeviceId: id, Name: det.Name, LinkedMs: linked, LastSeenMs: det.LastSeenMS, Primary: primary}
}

// devicesResult is the answer to GetDevices for acc: its devices in order, the primary first.
func devicesResult(acc *Account) *pb.DeviceListResult {
	res := &pb.DeviceListResult{DeviceList: acc.SignedDeviceList()}
	for _, id := range acc.Devices {
		res.Devices = append(res.Devices, acc.Info(id))
	}
	return res
}

// Devices returns the devices of p's account and its signed list, as stored now (read through the
// stream leader, not the cache). A device no longer on the account gets ErrUnknownDevice.
func (d *Directory) Devices(ctx context.Context, p Principal) (*pb.DeviceListResult, error) {
	acc, _, err := d.accountLatest(ctx, p.Name)
	if err != nil {
		return nil, err
	}
	if !acc.HasDevice(p.ID) {
		return nil, fmt.Errorf("%w: this device is not on account %s any more", ErrUnknownDevice, p.Name)
	}
	res := devicesResult(acc)
	d.fillLastSeen(ctx, res)
	return res, nil
}

// PutDeviceList stores a new signed device list for p's account: from the primary only
// (ErrPermissionDenied); it must verify and list exactly the account's devices with their identity
// keys (ErrInvalidDeviceList, or ErrStaleDeviceList for another set of devices), at a version
// above the stored one (else ErrStaleDeviceList). Old accounts publish their first list this way,
// and the primary re-signs with it after a companion removed itself.
func (d *Directory) PutDeviceList(ctx context.Context, p Principal, sdl *pb.SignedDeviceList) error {
	list, err := verifyDeviceList(sdl, p.Name)
	if err != nil {
		return err
	}
	stored := &StoredList{List: sdl.GetList(), Signature: sdl.GetSignature(), Version: list.GetVersion()}
	for attempt := 1; ; attempt++ {
		acc, rev, err := d.accountLatest(ctx, p.Name)
		if err != nil {
			return err
		}
		if acc.Primary() != p.ID {
			return fmt.Errorf("%w: sign the device list on your primary device", ErrPermissionDenied)
		}
		if err := checkVersion(list.GetVersion(), acc.listVersion(), false); err != nil {
			return err
		}
		want, err := d.identities(ctx, acc)
		if err == nil {
			if err := matchList(list, want, acc.Primary()); err != nil {
				return err
			}
			next := acc.clone()
			next.PrimaryID = acc.Primary()
			next.DeviceList = stored
			err = d.updateAccount(ctx, next, rev)
		}
		if err == nil || !errors.Is(err, errConflict) || attempt == maxUpdateAttempts {
			return err
		}
	}
}

// RemoveDevice unlinks deviceID from p's account: the primary removing a companion (sdl is then
// required: the stored list without it, at version stored+1), or a companion removing itself (sdl
// absent: the primary re-signs later with PutDeviceList). The primary cannot be removed
// (ErrPermissionDenied); a device the account does not have is ErrUnknownDevice. The device's
// record and its one-time prekeys are deleted: it cannot authenticate any more, on any node (each
// node's auth cache follows the devices bucket). Its inbox is the mailbox's to drop.
func (d *Directory) RemoveDevice(ctx context.Context, p Principal, deviceID string, sdl *pb.SignedDeviceList) error {
	if !pb.ValidDeviceID(deviceID) {
		return fmt.Errorf("%w: malformed device id", ErrInvalidRequest)
	}
	self := deviceID == p.ID
	hasList := len(sdl.GetList()) > 0 || len(sdl.GetSignature()) > 0
	for attempt := 1; ; attempt++ {
		acc, rev, err := d.accountLatest(ctx, p.Name)
		if err != nil {
			return err
		}
		primary := acc.Primary()
		if !acc.HasDevice(deviceID) {
			return d.finishRemoval(ctx, p, acc, deviceID)
		}
		if deviceID == primary {
			return fmt.Errorf("%w: the primary device cannot be removed", ErrPermissionDenied)
		}
		var list *pb.DeviceList
		switch {
		case self && hasList:
			return fmt.Errorf("%w: a device that removes itself sends no device list", ErrInvalidRequest)
		case self:
		case p.ID != primary:
			return fmt.Errorf("%w: remove other devices from your primary device", ErrPermissionDenied)
		case !hasList:
			return fmt.Errorf("%w: removing another device needs the signed device list without it", ErrInvalidRequest)
		default:
			if list, err = d.checkRemovalList(ctx, acc, deviceID, sdl); err != nil && !errors.Is(err, errConflict) {
				return err
			}
		}
		if err == nil {
			next := acc.clone()
			next.PrimaryID = primary
			next.Devices = slices.DeleteFunc(next.Devices, func(id string) bool { return id == deviceID })
			delete(next.Details, deviceID)
			if list != nil {
				next.DeviceList = &StoredList{List: sdl.GetList(), Signature: sdl.GetSignature(), Version: list.GetVersion()}
			}
			if err = d.updateAccount(ctx, next, rev); err == nil {
				break
			}
		}
		if !errors.Is(err, errConflict) || attempt == maxUpdateAttempts {
			return err
		}
	}
	// The account no longer lists the device: nobody can send to it or fetch its bundle. Now
	// its record and prekeys go; if that fails, the caller's retry finishes it (finishRemoval).
	if err := d.dropDevice(ctx, deviceID); err != nil {
		return err
	}
	d.metrics.removed(self)
	return nil
}

// checkRemovalList checks the list a primary sends to remove deviceID from acc: it verifies, and
// lists acc's devices but deviceID, at version stored+1.
func (d *Directory) checkRemovalList(ctx context.Context, acc *Account, deviceID string, sdl *pb.SignedDeviceList) (*pb.DeviceList, error) {
	list, err := verifyDeviceList(sdl, acc.Name)
	if err != nil {
		return nil, err
	}
	if err := checkVersion(list.GetVersion(), acc.listVersion(), true); err != nil {
		return nil, err
	}
	want, err := d.identities(ctx, acc)
	if err != nil {
		return nil, err
	}
	delete(want, deviceID)
	if err := matchList(list, want, acc.Primary()); err != nil {
		return nil, err
	}
	return list, nil
}

// finishRemoval handles a removal of a device that acc does not list: a removal whose record or
// prekeys could not be deleted (the account was updated first) is finished when retried by the
// device itself or the primary; anything else is ErrUnknownDevice.
func (d *Directory) finishRemoval(ctx context.Context, p Principal, acc *Account, deviceID string) error {
	if deviceID != p.ID && p.ID != acc.Primary() {
		return fmt.Errorf("%w: %s has no device %s", ErrUnknownDevice, acc.Name, deviceID)
	}
	dev, _, err := d.deviceLatest(ctx, deviceID)
	if err != nil || dev.Name != acc.Name {
		return fmt.Errorf("%w: %s has no device %s", ErrUnknownDevice, acc.Name, deviceID)
	}
	if err := d.dropDevice(ctx, deviceID); err != nil {
		return err
	}
	d.metrics.removed(deviceID == p.ID)
	return nil
}

// dropDevice deletes a removed device's record and one-time prekeys. This node's auth cache
// forgets the device at once; the others do when their watch of the devices bucket sees the
// purge.
func (d *Directory) dropDevice(ctx context.Context, deviceID string) error {
	if err := d.bus.Devices.Purge(ctx, deviceID); err != nil {
		return fmt.Errorf("%w: delete device record: %v", ErrUnavailable, err)
	}
	if d.auth != nil {
		if k, ok := parseDeviceKey(deviceID); ok {
			d.auth.invalidate(k)
		}
	}
	for _, subject := range []string{bus.OneTimePreKeySubject(deviceID), bus.KEMPreKeySubject(deviceID)} {
		if err := d.bus.PreKeys.Purge(ctx, jetstream.WithPurgeSubject(subject)); err != nil {
			return fmt.Errorf("%w: delete prekeys: %v", ErrUnavailable, err)
		}
	}
	return nil
}

// Seen records that deviceID authenticated at now (SeenBatch of one).
func (d *Directory) Seen(ctx context.Context, deviceID string, now time.Time) {
	d.SeenBatch(ctx, []string{deviceID}, now)
}

// SeenBatch records that the devices authenticated at now, in the last-seen bucket, at most once
// an hour per device as far as this node knows (after a restart, once more), all in one atomic
// batch: one replicated write for many devices. Unknown devices are skipped. The account record
// is not touched: it is read on every send, and a write to it would drop it from every node's
// cache.
func (d *Directory) SeenBatch(ctx context.Context, deviceIDs []string, now time.Time) {
	ms := now.UnixMilli()
	val := strconv.AppendInt(nil, ms, 10)
	var msgs []*nats.Msg
	var ids []string
	for _, id := range deviceIDs {
		k, ok := parseDeviceKey(id)
		if !ok || slices.Contains(ids, id) {
			continue
		}
		d.seenMu.Lock()
		last := d.seenWritten[id]
		d.seenMu.Unlock()
		if ms-last < seenInterval.Milliseconds() {
			continue
		}
		if _, err := d.authEntry(ctx, id, k, confirmed); err != nil {
			continue // unknown or removed
		}
		m := nats.NewMsg("$KV." + bus.LastSeenBucket + "." + id)
		m.Data = val
		msgs, ids = append(msgs, m), append(ids, id)
	}
	if len(msgs) == 0 {
		return
	}
	ctx, cancel := withReadTimeout(ctx)
	defer cancel()
	if _, err := jetstreamext.PublishMsgBatch(ctx, d.bus.JS(), msgs); err != nil {
		d.log.Debug("record last seen", "devices", len(ids), "err", err)
		return
	}
	for _, id := range ids {
		d.rememberSeen(id, ms)
	}
	d.metrics.seenWrites.Add(float64(len(ids)))
}

// maxSeenRemembered bounds the devices whose last write this node remembers (~80 B each).
const maxSeenRemembered = 1 << 20

func (d *Directory) rememberSeen(deviceID string, ms int64) {
	d.seenMu.Lock()
	defer d.seenMu.Unlock()
	if d.seenWritten == nil || len(d.seenWritten) >= maxSeenRemembered {
		d.seenWritten = make(map[string]int64)
	}
	d.seenWritten[deviceID] = ms
}

// lastSeen reads deviceID's stored last-seen time (0 when none or unreadable).
func (d *Directory) lastSeen(ctx context.Context, deviceID string) int64 {
	e, err := d.bus.LastSeen.Get(ctx, deviceID)
	if err != nil {
		return 0
	}
	ms, _ := strconv.ParseInt(string(e.Value()), 10, 64)
	return ms
}

// fillLastSeen sets each device's last-seen time in res from the last-seen bucket (a record from
// before the bucket may carry a later one in its details).
func (d *Directory) fillLastSeen(ctx context.Context, res *pb.DeviceListResult) {
	for _, i := range res.GetDevices() {
		if ms := d.lastSeen(ctx, i.GetDeviceId()); ms > i.GetLastSeenMs() {
			i.LastSeenMs = ms
		}
	}
}
