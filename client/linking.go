// Copyright 2026 The Petrel Authors
// SPDX-License-Identifier: Apache-2.0

package client

import (
	"context"
	"fmt"
	"io"
	"time"

	"github.com/petrelchat/petrel/client/store"
	"github.com/petrelchat/petrel/e2ee"
	petrelv1 "github.com/petrelchat/petrel/proto/petrel/v1"
	"google.golang.org/protobuf/proto"
)

// Linking a new device to an account (docs/protocol.md, "Linked devices"):
//
//	new device:  Link → keys (Provision), StartLink(offer + MAC under the code's secret) → code
//	primary:     ApproveLink(code) → GetLinkOffer, check the MAC, sign the list + the new device,
//	             seal the approval to the new device → ApproveLink; then history
//	new device:  LinkApproved → open the approval, verify the list names it → store, done
//
// The secret never reaches the server: a server cannot make an offer the primary accepts for a
// code it did not see, nor read or forge the approval, and a device it adds by itself is not in
// the list the primary signs.

// LinkOptions describes a device to link to an existing account.
type LinkOptions struct {
	// ServerURL and ServerURLs are the account's server (as RegisterOptions).
	ServerURL  string
	ServerURLs []string
	// NoHistory asks the approving device not to send recent history.
	NoHistory bool
	// OnCode is called once the server holds the offer, with the link code to show (type it, or
	// scan it, on the primary device: petrel devices approve CODE) and when it expires.
	OnCode func(code string, expires time.Time)
	// PreKeys is how many one-time prekeys of each kind to upload. Default: 100.
	PreKeys int
	// Timeout bounds connecting and starting the link (not the wait for the approval, which the
	// server ends at the link's expiry). Default: 30s.
	Timeout time.Duration
	// Rand is the randomness source. Default: crypto/rand.
	Rand io.Reader
	// Now is the clock. Default: time.Now.
	Now func() time.Time
}

// Linked describes the account a device was linked to.
type Linked struct {
	Account
	// DeviceName is the name the primary gave this device.
	DeviceName string
}

// linkExpiryGrace is how long Link waits past the announced expiry for the server's answer.
const linkExpiryGrace = 10 * time.Second

// Link makes this store's device a new device of an existing account: it provisions keys, asks
// the server to hold a link offer, reports the code (OnCode) and waits until the account's primary
// device approves it, the link expires (ErrLinkExpired) or ctx ends. The approval is checked end
// to end (sealed with the code's secret; the signed device list must name this device with its
// identity key) before anything is stored. It refuses (ErrAlreadyRegistered) a store that holds a
// registered device. After Link, Open and Run the device like a registered one.
func Link(ctx context.Context, st *store.Store, opts LinkOptions) (Linked, error) {
	onboardDefaults(&opts.PreKeys, &opts.Timeout, &opts.Rand, &opts.Now)
	urls, err := serverURLs(opts.ServerURL, opts.ServerURLs)
	if err != nil {
		return Linked{}, err
	}
	keys, err := Provision(st, ProvisionOptions{PreKeys: opts.PreKeys, Rand: opts.Rand, Now: opts.Now})
	if err != nil {
		return Linked{}, err
	}
	secret, err := e2ee.NewLinkSecret(opts.Rand)
	if err != nil {
		return Linked{}, err
	}
	eph, err := e2ee.GenerateLinkEphemeral(opts.Rand)
	if err != nil {
		return Linked{}, err
	}
	ephPub := eph.PublicKey().Bytes()
	offer := &petrelv1.LinkOffer{AuthKey: keys.AuthKey, Keys: keys.Upload, EphemeralKey: ephPub, NoHistory: opts.NoHistory,
		Mac: e2ee.LinkOfferMAC(secret, keys.AuthKey, keys.Upload.GetIdentityKey(), ephPub)}

	sctx, cancel := context.WithTimeout(ctx, opts.Timeout)
	cn, ch, err := challengeAny(sctx, urls, opts.Timeout)
	if err != nil {
		cancel()
		return Linked{}, err
	}
	defer cn.shutdown(true)
	req := &petrelv1.StartLink{Offer: offer, Signature: keys.SignChallenge(ch.GetNonce())}
	if err := cn.write(sctx, &petrelv1.Frame{Body: &petrelv1.Frame_StartLink{StartLink: req}}); err != nil {
		cancel()
		return Linked{}, err
	}
	f, err := cn.read(sctx)
	cancel()
	if err != nil {
		return Linked{}, err
	}
	if e := f.GetError(); e != nil {
		return Linked{}, errorFromProto(e)
	}
	started := f.GetLinkStarted()
	if started == nil || !e2ee.ValidLinkID(started.GetLinkId()) {
		return Linked{}, fmt.Errorf("%w: expected LinkStarted", ErrProtocol)
	}
	expires := time.UnixMilli(started.GetExpiresMs())
	if opts.OnCode != nil {
		opts.OnCode(e2ee.FormatLinkCode(started.GetLinkId(), secret), expires)
	}

	// Wait for the approval; the server ends the link at its expiry (LINK_EXPIRED).
	wctx, wcancel := context.WithDeadline(ctx, expires.Add(linkExpiryGrace))
	defer wcancel()
	var approved *petrelv1.LinkApproved
	for approved == nil {
		f, err := cn.read(wctx)
		switch {
		case err != nil && ctx.Err() == nil && wctx.Err() != nil:
			return Linked{}, fmt.Errorf("%w: not approved before it expired at %s", ErrLinkExpired, expires.Format(time.TimeOnly))
		case err != nil:
			return Linked{}, err
		case f.GetError() != nil:
			return Linked{}, errorFromProto(f.GetError())
		case f.GetLinkApproved() != nil:
			approved = f.GetLinkApproved()
		}
	}
	pt, err := e2ee.OpenLinkApproval(secret, eph, approved.GetEphemeralKey(), approved.GetSealedApproval())
	if err != nil {
		return Linked{}, fmt.Errorf("%w: the approval does not open with this code's secret: %w", ErrUntrustedDeviceList, err)
	}
	var ap petrelv1.LinkApproval
	if err := proto.Unmarshal(pt, &ap); err != nil {
		return Linked{}, fmt.Errorf("%w: undecodable approval", ErrProtocol)
	}
	list, err := petrelv1.VerifyDeviceList(ap.GetDeviceList(), ap.GetAccount())
	if err != nil {
		return Linked{}, fmt.Errorf("%w: the approval's list: %w", ErrUntrustedDeviceList, err)
	}
	p := list.Primary()
	switch {
	case !list.Contains(keys.DeviceID, keys.Upload.GetIdentityKey()):
		return Linked{}, fmt.Errorf("%w: the approved list does not name this device", ErrUntrustedDeviceList)
	case p.GetDeviceId() != ap.GetPrimaryDeviceId() || !bytesEqual(p.GetIdentityKey(), ap.GetPrimaryIdentityKey()):
		return Linked{}, fmt.Errorf("%w: the approval names another primary device than its list", ErrUntrustedDeviceList)
	case approved.GetName() != ap.GetAccount() || approved.GetDeviceId() != keys.DeviceID:
		return Linked{}, fmt.Errorf("%w: the server's LinkApproved does not match the sealed approval", ErrProtocol)
	}
	sdlRaw, err := proto.Marshal(ap.GetDeviceList())
	if err != nil {
		return Linked{}, err
	}
	now := opts.Now()
	err = st.Update(func(tx *store.Tx) error {
		a, err := tx.Account()
		if err != nil {
			return err
		}
		a.ServerURL, a.Servers, a.Name = urls[0], urls[1:], ap.GetAccount()
		a.Registered, a.RegisteredAt, a.Companion = true, now, true
		a.PrimaryIdentity = p.GetIdentityKey()
		a.DeviceList, a.DeviceListVersion = sdlRaw, list.GetVersion()
		if err := tx.PutAccount(a); err != nil {
			return err
		}
		// This account's other devices, as the list names them (sessions start on first send).
		ct := &store.Contact{Name: a.Name, Devices: map[string]*store.ContactDevice{}, ListVersion: list.GetVersion(),
			PrimaryIdentity: p.GetIdentityKey(), UpdatedAt: now}
		for _, d := range list.GetDevices() {
			if d.GetDeviceId() != keys.DeviceID {
				ct.Devices[d.GetDeviceId()] = &store.ContactDevice{IdentityKey: d.GetIdentityKey(), FirstSeen: now}
			}
		}
		return tx.PutContact(ct)
	})
	if err != nil {
		return Linked{}, fmt.Errorf("the device was linked but storing it failed: %w", err)
	}
	return Linked{Account: Account{Name: ap.GetAccount(), DeviceID: keys.DeviceID, ServerURL: urls[0], Servers: urls,
		Fingerprint: keys.Fingerprint}, DeviceName: ap.GetDeviceName()}, nil
}

// Approved describes a device ApproveLink added to the account.
type Approved struct {
	DeviceID, Name string
	// Fingerprint is the new device's identity key digest (compare it with the new device's
	// petrel whoami to be sure).
	Fingerprint string
	// HistoryChunks is the number of history chunks queued for the new device (0 when it asked
	// for none); Flush waits until the server has them.
	HistoryChunks int
}

// maxDeviceNameLen bounds a device name (ApproveLink.device_name).
const maxDeviceNameLen = 64

// ApproveLink adds the device waiting with code (shown by its Link) to this account, named name.
// Only the primary device may approve (ErrNotPrimary). The offer the server holds for the code
// must carry the code's MAC (ErrLinkMismatch: nothing is sent); an unknown, used or expired code
// is ErrLinkExpired, a full account ErrTooManyDevices. Unless the new device asked for none, the
// last Config.HistoryLimit messages of each chat are queued for it in the outbox. It needs a
// connection (Run).
func (c *Client) ApproveLink(ctx context.Context, code, name string) (*Approved, error) {
	if c.companion {
		return nil, ErrNotPrimary
	}
	linkID, secret, err := e2ee.ParseLinkCode(code)
	if err != nil {
		return nil, err
	}
	if name == "" || len(name) > maxDeviceNameLen || !printable(name) {
		return nil, fmt.Errorf("%w: a device name is 1-%d printable characters", ErrInvalidRequest, maxDeviceNameLen)
	}
	l, err := c.ready(ctx)
	if err != nil {
		return nil, err
	}
	resp, err := l.conn.request(ctx, &petrelv1.Frame{Body: &petrelv1.Frame_GetLinkOffer_{GetLinkOffer_: &petrelv1.GetLinkOffer{LinkId: linkID}}})
	if err != nil {
		return nil, err
	}
	offer := resp.GetLinkOffer()
	if offer == nil {
		return nil, fmt.Errorf("%w: expected LinkOffer", ErrProtocol)
	}
	ident := offer.GetKeys().GetIdentityKey()
	if err := e2ee.VerifyLinkOfferMAC(secret, offer.GetAuthKey(), ident, offer.GetEphemeralKey(), offer.GetMac()); err != nil {
		c.log.Warn("link offer does not match its code", "err", err)
		return nil, ErrLinkMismatch
	}
	newID := petrelv1.DeviceID(offer.GetAuthKey())
	res, err := l.syncOwnDevices(ctx)
	if err != nil {
		return nil, err
	}
	var acct *store.Account
	if err := c.st.View(func(tx *store.Tx) error { acct, err = tx.Account(); return err }); err != nil {
		return nil, &storeError{err}
	}
	cur, err := ownList(acct)
	if err != nil {
		return nil, err
	}
	if cur.Find(newID) != nil {
		return nil, fmt.Errorf("%w: device %s is already linked", ErrInvalidRequest, newID)
	}
	next, _, err := c.signOwnList(acct, cur, nil, "")
	if err != nil {
		return nil, err
	}
	next.Devices = append(next.Devices, &petrelv1.ListedDevice{DeviceId: newID, IdentityKey: ident})
	sdl, err := petrelv1.SignDeviceList(c.identity, next)
	if err != nil {
		return nil, fmt.Errorf("%w: the new device's keys: %w", ErrInvalidKeys, err)
	}
	ap, err := proto.Marshal(&petrelv1.LinkApproval{Account: c.name, PrimaryDeviceId: c.deviceID,
		PrimaryIdentityKey: c.identity.PublicKey().Bytes(), DeviceList: sdl, DeviceName: name})
	if err != nil {
		return nil, err
	}
	eph, sealed, err := e2ee.SealLinkApproval(c.cfg.Rand, secret, offer.GetEphemeralKey(), ap)
	if err != nil {
		return nil, fmt.Errorf("%w: seal the approval: %w", ErrInvalidKeys, err)
	}
	req := &petrelv1.ApproveLink{LinkId: linkID, DeviceName: name, DeviceList: sdl, EphemeralKey: eph, SealedApproval: sealed}
	resp, err = l.conn.request(ctx, &petrelv1.Frame{Body: &petrelv1.Frame_ApproveLink{ApproveLink: req}})
	if err != nil {
		return nil, err
	}
	server := []string{newID}
	for _, d := range res.GetDevices() {
		server = append(server, d.GetDeviceId())
	}
	if r := resp.GetDeviceListResult(); r != nil && len(r.GetDevices()) > 0 {
		server = server[:0]
		for _, d := range r.GetDevices() {
			server = append(server, d.GetDeviceId())
		}
	}
	var ev *DevicesChanged
	err = c.st.Update(func(tx *store.Tx) error {
		var err error
		ev, err = c.acceptOwnList(tx, sdl, next, server)
		return err
	})
	if err != nil {
		return nil, &storeError{err}
	}
	if ev != nil {
		c.emit(ctx, ev)
	}
	out := &Approved{DeviceID: newID, Name: name, Fingerprint: Fingerprint(ident)}
	if !offer.GetNoHistory() {
		if out.HistoryChunks, err = c.queueHistory(newID); err != nil {
			return out, fmt.Errorf("the device was linked but its history could not be queued: %w", err)
		}
	}
	return out, nil
}

// printable reports whether s is valid UTF-8 without control characters.
func printable(s string) bool {
	for _, r := range s {
		if r < 0x20 || r == 0x7f || r == 0xfffd || (r >= 0x80 && r < 0xa0) {
			return false
		}
	}
	return true
}
