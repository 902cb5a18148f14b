// Copyright 2026 The Petrel Authors
// SPDX-License-Identifier: Apache-2.0

package client

import (
	"context"
	"errors"
	"fmt"
	"maps"
	"slices"
	"time"

	"github.com/petrelchat/petrel/client/store"
	petrelv1 "github.com/petrelchat/petrel/proto/petrel/v1"
	"google.golang.org/protobuf/proto"
)

// Linked devices (docs/protocol.md, "Linked devices"). An account has one primary device (the
// one that registered it) and up to four companions (petrel link). The primary signs the
// account's device list; every device and every contact encrypts only to devices that list
// names with the same identity key, and refuses a list older than one it has seen.
//
// This device's own list lives in the account record (store.Account.DeviceList); the own
// account is also a contact (its other devices, with sessions, under the account's own name), so
// that a message goes to each other own device like to each recipient device.

// Errors of the linked-device operations.
var (
	// ErrNotPrimary reports an operation only the account's primary device may do (approving a
	// link, removing another device).
	ErrNotPrimary = errors.New("only the primary device can do this: approve links and remove other devices from your primary device")
	// ErrLinkMismatch reports a link code that does not match the offer the server holds for it:
	// mistyped, or a forged offer. Nothing was sent.
	ErrLinkMismatch = errors.New("this code does not match the device that is waiting (mistyped, or a forged offer)")
	// ErrUntrustedDeviceList reports a device list that does not verify, is older than one seen
	// before (a rollback), or is signed by another primary than the one trusted.
	ErrUntrustedDeviceList = errors.New("device list does not verify")
)

// Device describes one device of this account (Client.Devices).
type Device struct {
	ID   string
	Name string
	// LinkedAt is when the device joined the account; LastSeen when it last connected (rounded
	// by the server to the hour; zero when never seen).
	LinkedAt, LastSeen time.Time
	Primary            bool
	// This is set on the device the client runs as.
	This bool
}

// ownListLocked parses this account's stored signed device list (nil when none yet).
func ownList(acct *store.Account) (*petrelv1.DeviceList, error) {
	if len(acct.DeviceList) == 0 {
		return nil, nil
	}
	var sdl petrelv1.SignedDeviceList
	if err := proto.Unmarshal(acct.DeviceList, &sdl); err != nil {
		return nil, fmt.Errorf("stored device list: %w", err)
	}
	l := &petrelv1.DeviceList{}
	if err := proto.Unmarshal(sdl.GetList(), l); err != nil {
		return nil, fmt.Errorf("stored device list: %w", err)
	}
	return l, nil
}

// verifyOwnList checks a signed list of this account: it verifies, is signed by the trusted
// primary (this device when it is the primary), is not older than the stored one, and names this
// device with its identity key (ErrDeviceRemoved when it does not).
func (c *Client) verifyOwnList(acct *store.Account, sdl *petrelv1.SignedDeviceList) (*petrelv1.DeviceList, error) {
	l, err := petrelv1.VerifyDeviceList(sdl, c.name)
	if err != nil {
		return nil, fmt.Errorf("%w: this account's list: %w", ErrUntrustedDeviceList, err)
	}
	p := l.Primary()
	switch {
	case !c.companion && (p.GetDeviceId() != c.deviceID || !bytesEqual(p.GetIdentityKey(), c.identity.PublicKey().Bytes())):
		return nil, fmt.Errorf("%w: this account's list names another primary device", ErrUntrustedDeviceList)
	case c.companion && !bytesEqual(p.GetIdentityKey(), acct.PrimaryIdentity):
		return nil, fmt.Errorf("%w: this account's list is signed by another primary device than the one that linked this one", ErrUntrustedDeviceList)
	}
	if err := petrelv1.CheckDeviceListVersion(acct.DeviceListVersion, l); err != nil {
		return nil, fmt.Errorf("%w: %w", ErrUntrustedDeviceList, err)
	}
	if !l.Contains(c.deviceID, c.identity.PublicKey().Bytes()) {
		return nil, fmt.Errorf("%w: the account's device list no longer names it", ErrDeviceRemoved)
	}
	return l, nil
}

// acceptOwnList stores a verified list of this account (version >= the stored one) and makes the
// own contact's devices those of the list other than this one — and, when serverDevices is not
// nil (a GetDevices answer), only those the server has too. Sessions with devices no longer
// there are deleted. It returns the change, nil if none.
func (c *Client) acceptOwnList(tx *store.Tx, sdl *petrelv1.SignedDeviceList, l *petrelv1.DeviceList, serverDevices []string) (*DevicesChanged, error) {
	acct, err := tx.Account()
	if err != nil {
		return nil, err
	}
	old, err := ownList(acct)
	if err != nil {
		return nil, err
	}
	raw, err := proto.Marshal(sdl)
	if err != nil {
		return nil, err
	}
	acct.DeviceList, acct.DeviceListVersion = raw, l.GetVersion()
	if err := tx.PutAccount(acct); err != nil {
		return nil, err
	}
	ct, err := tx.Contact(c.name)
	if errors.Is(err, store.ErrNotFound) {
		ct = &store.Contact{Name: c.name, Devices: map[string]*store.ContactDevice{}}
	} else if err != nil {
		return nil, err
	}
	want := map[string][]byte{}
	for _, d := range l.GetDevices() {
		if d.GetDeviceId() == c.deviceID || serverDevices != nil && !slices.Contains(serverDevices, d.GetDeviceId()) {
			continue
		}
		want[d.GetDeviceId()] = d.GetIdentityKey()
	}
	now := c.cfg.Now()
	for dev, d := range ct.Devices {
		if k, ok := want[dev]; !ok || !bytesEqual(k, d.IdentityKey) {
			delete(ct.Devices, dev)
			if err := tx.DeleteSessionRecord(c.name, dev); err != nil {
				return nil, err
			}
		}
	}
	for dev, k := range want {
		if _, ok := ct.Devices[dev]; !ok {
			ct.Devices[dev] = &store.ContactDevice{IdentityKey: append([]byte(nil), k...), FirstSeen: now}
		}
	}
	ct.DevicesKnown = serverDevices != nil
	ct.ListVersion = l.GetVersion()
	ct.PrimaryIdentity = l.Primary().GetIdentityKey()
	ct.UpdatedAt = now
	if err := tx.PutContact(ct); err != nil {
		return nil, err
	}
	return listChange(c.name, old, l), nil
}

// listChange compares two lists (old may be nil) and returns the change, nil if the same devices.
func listChange(name string, old, cur *petrelv1.DeviceList) *DevicesChanged {
	if old == nil {
		return nil
	}
	ev := &DevicesChanged{Name: name, Version: cur.GetVersion()}
	for _, d := range cur.GetDevices() {
		if !old.Contains(d.GetDeviceId(), d.GetIdentityKey()) {
			ev.Added = append(ev.Added, d.GetDeviceId())
		}
	}
	for _, d := range old.GetDevices() {
		if !cur.Contains(d.GetDeviceId(), d.GetIdentityKey()) {
			ev.Removed = append(ev.Removed, d.GetDeviceId())
		}
	}
	if len(ev.Added) == 0 && len(ev.Removed) == 0 {
		return nil
	}
	return ev
}

// syncOwnDevices asks the server for this account's devices and accepts the signed list. The
// primary first publishes a list when the account has none (version 1: an account registered
// before linked devices) or when the server's devices differ from the list (a companion removed
// itself): the listed devices the server still has, version + 1.
func (l *link) syncOwnDevices(ctx context.Context) (*petrelv1.DeviceListResult, error) {
	c := l.c
	resp, err := l.conn.request(ctx, &petrelv1.Frame{Body: &petrelv1.Frame_GetDevices{GetDevices: &petrelv1.GetDevices{}}})
	if err != nil {
		return nil, fmt.Errorf("get devices: %w", err)
	}
	res := resp.GetDeviceListResult()
	if res == nil {
		return nil, fmt.Errorf("%w: expected DeviceListResult", ErrProtocol)
	}
	var server []string
	for _, d := range res.GetDevices() {
		server = append(server, d.GetDeviceId())
	}
	var acct *store.Account
	if err := c.st.View(func(tx *store.Tx) error { acct, err = tx.Account(); return err }); err != nil {
		return nil, &storeError{err}
	}
	sdl := res.GetDeviceList()
	var list *petrelv1.DeviceList
	if sdl != nil {
		if list, err = c.verifyOwnList(acct, sdl); err != nil {
			return nil, err
		}
	}
	if !c.companion && (list == nil || !sameDevices(list, server)) {
		next, nsdl, err := c.signOwnList(acct, list, server, "")
		if err != nil {
			return nil, err
		}
		c.log.Info("publishing this account's device list", "version", next.GetVersion(), "devices", len(next.GetDevices()))
		put := &petrelv1.PutDeviceList{DeviceList: nsdl}
		resp, err := l.conn.request(ctx, &petrelv1.Frame{Body: &petrelv1.Frame_PutDeviceList{PutDeviceList: put}})
		if err != nil {
			return nil, fmt.Errorf("publish the device list: %w", err)
		}
		if r := resp.GetDeviceListResult(); r != nil {
			res = r
		}
		list, sdl = next, nsdl
	}
	if list == nil {
		return nil, fmt.Errorf("%w: this account has no signed device list", ErrUntrustedDeviceList)
	}
	var ev *DevicesChanged
	err = c.st.Update(func(tx *store.Tx) error {
		ev, err = c.acceptOwnList(tx, sdl, list, server)
		return err
	})
	if err != nil {
		return nil, &storeError{err}
	}
	if ev != nil {
		c.emit(ctx, ev)
	}
	return res, nil
}

// sameDevices reports whether the list names exactly the server's devices.
func sameDevices(l *petrelv1.DeviceList, server []string) bool {
	if len(l.GetDevices()) != len(server) {
		return false
	}
	for _, d := range l.GetDevices() {
		if !slices.Contains(server, d.GetDeviceId()) {
			return false
		}
	}
	return true
}

// signOwnList builds and signs (as the primary) the next version of this account's list: the
// devices of cur (nil: this device alone) that are in keep (nil: all of them), minus drop. A kept
// device the primary never listed (so never approved) is left out.
func (c *Client) signOwnList(acct *store.Account, cur *petrelv1.DeviceList, keep []string, drop string) (*petrelv1.DeviceList, *petrelv1.SignedDeviceList, error) {
	if c.companion {
		return nil, nil, ErrNotPrimary
	}
	next := &petrelv1.DeviceList{Account: c.name, Version: max(acct.DeviceListVersion, cur.GetVersion()) + 1,
		CreatedMs: c.cfg.Now().UnixMilli()}
	next.Devices = append(next.Devices, &petrelv1.ListedDevice{DeviceId: c.deviceID, IdentityKey: c.identity.PublicKey().Bytes(), Primary: true})
	for _, d := range cur.GetDevices() {
		id := d.GetDeviceId()
		if id == c.deviceID || id == drop || keep != nil && !slices.Contains(keep, id) {
			continue
		}
		next.Devices = append(next.Devices, &petrelv1.ListedDevice{DeviceId: id, IdentityKey: d.GetIdentityKey()})
	}
	for _, id := range keep {
		if next.Find(id) == nil {
			c.log.Warn("the server lists a device this primary never approved; leaving it out", "peer_device", id)
		}
	}
	sdl, err := petrelv1.SignDeviceList(c.identity, next)
	if err != nil {
		return nil, nil, err
	}
	return next, sdl, nil
}

// Devices returns this account's devices as the server knows them (and refreshes the signed
// list). It needs a connection (Run).
func (c *Client) Devices(ctx context.Context) ([]Device, error) {
	l, err := c.ready(ctx)
	if err != nil {
		return nil, err
	}
	res, err := l.syncOwnDevices(ctx)
	if err != nil {
		return nil, err
	}
	var out []Device
	for _, d := range res.GetDevices() {
		dev := Device{ID: d.GetDeviceId(), Name: d.GetName(), Primary: d.GetPrimary(), This: d.GetDeviceId() == c.deviceID}
		if ms := d.GetLinkedMs(); ms > 0 {
			dev.LinkedAt = time.UnixMilli(ms)
		}
		if ms := d.GetLastSeenMs(); ms > 0 {
			dev.LastSeen = time.UnixMilli(ms)
		}
		out = append(out, dev)
	}
	slices.SortStableFunc(out, func(a, b Device) int {
		switch {
		case a.Primary != b.Primary:
			if a.Primary {
				return -1
			}
			return 1
		case !a.LinkedAt.Equal(b.LinkedAt):
			return a.LinkedAt.Compare(b.LinkedAt)
		}
		return 0
	})
	return out, nil
}

// RemoveDevice unlinks device id from this account. The primary removes any companion (it signs
// the list without it); a companion may remove only itself (the primary re-signs the list when it
// next connects). The server stops delivering to the device at once and drops its inbox. The
// primary cannot be removed.
func (c *Client) RemoveDevice(ctx context.Context, id string) error {
	if !petrelv1.ValidDeviceID(id) {
		return fmt.Errorf("%w: %q is not a device id (32 hex characters, see petrel devices)", ErrInvalidRequest, id)
	}
	if c.companion && id != c.deviceID {
		return ErrNotPrimary
	}
	if !c.companion && id == c.deviceID {
		return fmt.Errorf("%w: the primary device cannot be removed", ErrPermissionDenied)
	}
	l, err := c.ready(ctx)
	if err != nil {
		return err
	}
	req := &petrelv1.RemoveDevice{DeviceId: id}
	var (
		next *petrelv1.DeviceList
		sdl  *petrelv1.SignedDeviceList
	)
	if !c.companion {
		res, err := l.syncOwnDevices(ctx)
		if err != nil {
			return err
		}
		found := false
		for _, d := range res.GetDevices() {
			found = found || d.GetDeviceId() == id
		}
		if !found {
			return fmt.Errorf("%w: this account has no device %s", ErrUnknownDevice, id)
		}
		var acct *store.Account
		if err := c.st.View(func(tx *store.Tx) error { acct, err = tx.Account(); return err }); err != nil {
			return &storeError{err}
		}
		cur, err := ownList(acct)
		if err != nil {
			return err
		}
		if next, sdl, err = c.signOwnList(acct, cur, nil, id); err != nil {
			return err
		}
		req.DeviceList = sdl
	}
	resp, err := l.conn.request(ctx, &petrelv1.Frame{Body: &petrelv1.Frame_RemoveDevice{RemoveDevice: req}})
	if c.companion {
		// This device is gone: the server closes the connection (DEVICE_REMOVED), which may
		// come before the answer.
		if errors.Is(err, errConnClosed) {
			// Closed before the answer: Run ends once the server refuses this device.
			select {
			case <-c.runDone:
				c.mu.Lock()
				err = c.runErr
				c.mu.Unlock()
			case <-ctx.Done():
				return fmt.Errorf("the connection closed before the server answered: see petrel devices on another device (%w)", ctx.Err())
			}
		}
		if errors.Is(err, ErrDeviceRemoved) || errors.Is(err, ErrAuthFailed) {
			return nil
		}
		return err
	}
	if err != nil {
		return err
	}
	var ev *DevicesChanged
	err = c.st.Update(func(tx *store.Tx) error {
		var server []string
		for _, d := range resp.GetDeviceListResult().GetDevices() {
			server = append(server, d.GetDeviceId())
		}
		if server == nil {
			for _, d := range next.GetDevices() {
				server = append(server, d.GetDeviceId())
			}
		}
		var err error
		ev, err = c.acceptOwnList(tx, sdl, next, server)
		return err
	})
	if err != nil {
		return &storeError{err}
	}
	if ev != nil {
		c.emit(ctx, ev)
	}
	return nil
}

// acceptContactList verifies name's signed device list (from a BundleResult) against what ct
// trusts: no rollback, and a change of primary identity is reported like a changed identity key.
// It returns the list, nil for an account without one (accepted as before linked devices existed,
// unless a list was seen before: then the server withheld it).
func (c *Client) acceptContactList(ct *store.Contact, sdl *petrelv1.SignedDeviceList) (*petrelv1.DeviceList, *IdentityChanged, error) {
	if sdl == nil {
		if ct.ListVersion > 0 {
			return nil, nil, fmt.Errorf("%w: %s's bundle came without the signed device list seen before", ErrUntrustedDeviceList, ct.Name)
		}
		return nil, nil, nil
	}
	l, err := petrelv1.VerifyDeviceList(sdl, ct.Name)
	if err != nil {
		return nil, nil, fmt.Errorf("%w: %s: %w", ErrUntrustedDeviceList, ct.Name, err)
	}
	if err := petrelv1.CheckDeviceListVersion(ct.ListVersion, l); err != nil {
		return nil, nil, fmt.Errorf("%w: %s: %w", ErrUntrustedDeviceList, ct.Name, err)
	}
	var ev *IdentityChanged
	p := l.Primary()
	if len(ct.PrimaryIdentity) > 0 && !bytesEqual(ct.PrimaryIdentity, p.GetIdentityKey()) {
		ev = &IdentityChanged{Name: ct.Name, DeviceID: p.GetDeviceId(),
			OldFingerprint: Fingerprint(ct.PrimaryIdentity), NewFingerprint: Fingerprint(p.GetIdentityKey())}
		c.log.Warn("primary identity key changed", "name", ct.Name, "peer_device", p.GetDeviceId())
	}
	ct.ListVersion = l.GetVersion()
	ct.PrimaryIdentity = p.GetIdentityKey()
	if ct.DeviceList, err = proto.Marshal(sdl); err != nil {
		return nil, nil, err
	}
	return l, ev, nil
}

// devicesGone forgets devices that left to's device list: their sessions, and their place in the
// receipts the outbox waits for (an entry every remaining device receipted is complete).
func (c *Client) devicesGone(tx *store.Tx, to string, gone []string) ([]Event, error) {
	if len(gone) == 0 {
		return nil, nil
	}
	for _, dev := range gone {
		if err := tx.DeleteSessionRecord(to, dev); err != nil {
			return nil, err
		}
	}
	var events []Event
	var after uint64
	for scanned := 0; scanned < maxCheckScan; {
		page, err := tx.Outbox(after, 256)
		if err != nil {
			return nil, err
		}
		if len(page) == 0 {
			break
		}
		for _, e := range page {
			after = e.Seq
			scanned++
			if e.To != to || e.Kind != store.KindText || e.Pending() || len(e.Awaiting) == 0 {
				continue
			}
			n := len(e.Awaiting)
			e.Awaiting = slices.DeleteFunc(e.Awaiting, func(d string) bool { return slices.Contains(gone, d) })
			if len(e.Awaiting) == n {
				continue
			}
			if len(e.Awaiting) > 0 {
				if err := tx.PutOutbox(e); err != nil {
					return nil, err
				}
				continue
			}
			ev, err := c.completeOutbox(tx, e)
			if err != nil {
				return nil, err
			}
			if ev != nil {
				events = append(events, ev)
			}
		}
	}
	return events, nil
}

// ownDeviceKeys returns the identity keys of every device of this account's list, this one
// included (only this one's before the first list).
func (c *Client) ownDeviceKeys() ([][]byte, error) {
	var keys [][]byte
	err := c.st.View(func(tx *store.Tx) error {
		acct, err := tx.Account()
		if err != nil {
			return err
		}
		l, err := ownList(acct)
		if err != nil {
			return err
		}
		byID := map[string][]byte{c.deviceID: c.identity.PublicKey().Bytes()}
		for _, d := range l.GetDevices() {
			byID[d.GetDeviceId()] = d.GetIdentityKey()
		}
		for _, id := range slices.Sorted(maps.Keys(byID)) {
			keys = append(keys, byID[id])
		}
		return nil
	})
	return keys, err
}
