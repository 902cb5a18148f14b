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

	pb "github.com/petrelchat/petrel/proto/petrel/v1"
)

// Account recovery (docs/protocol.md, "Account recovery"): a new device proves possession of the
// account's recovery key (a signature over the connection's nonce, the name and its auth key,
// checked with the stored verifier) and becomes the account's only device and its primary. The
// old devices are removed as by RemoveDevice: their records and prekeys go, so they can no
// longer authenticate; the caller drops their inboxes and closes their connections.

// ErrRecoveryRefused: the recovery proof does not verify under the account's verifier, or the
// account has no verifier. The gateway answers it AUTH_FAILED, like a bad connection signature.
var ErrRecoveryRefused = fmt.Errorf("%w: the recovery key does not match this account", ErrAuthFailed)

// Recovered is the result of a recovery: the new device, and the account's devices it replaced.
type Recovered struct {
	Device  *Device
	Removed []string
	// DeviceList is the new signed list (this device alone), for the caller to push.
	DeviceList *pb.SignedDeviceList
}

// Recover re-claims account req.Name for the device that signed nonce. It checks, cheapest first,
// the name, the keys, the auth signature, the new device list (it verifies, names only this
// device with its identity key as primary), then reading the account: the recovery proof under
// its verifier and the list's version (above the stored one). Then it writes the device record
// and, in one conditional update, the account record: this device alone, primary, the new list,
// and the new verifier when req carries one. Last it deletes the old devices' records and
// prekeys (a failure there is logged: the account no longer lists them, so they receive nothing,
// and their auth entries fail once the records go).
func (d *Directory) Recover(ctx context.Context, req *pb.Recover, nonce []byte) (*Recovered, error) {
	r, err := d.recover(ctx, req, nonce)
	result := "recovered"
	if err != nil {
		if errors.Is(err, ErrUnavailable) {
			return nil, err
		}
		result = "refused"
	}
	d.metrics.recoveries.WithLabelValues(result).Inc()
	return r, err
}

func (d *Directory) recover(ctx context.Context, req *pb.Recover, nonce []byte) (*Recovered, error) {
	name := req.GetName()
	if !pb.ValidName(name) {
		return nil, fmt.Errorf("%w: use 1-32 of a-z 0-9 _ . - starting with a letter or digit", ErrInvalidName)
	}
	authKey := req.GetAuthKey()
	if len(authKey) != ed25519.PublicKeySize {
		return nil, fmt.Errorf("%w: auth key must be %d bytes", ErrInvalidKeys, ed25519.PublicKeySize)
	}
	if v := req.GetRecoveryVerifier(); len(v) != 0 && len(v) != ed25519.PublicKeySize {
		return nil, fmt.Errorf("%w: recovery verifier must be %d bytes", ErrInvalidKeys, ed25519.PublicKeySize)
	}
	deviceID := pb.DeviceID(authKey)
	if !ed25519.Verify(authKey, pb.AuthPayload(nonce, deviceID), req.GetSignature()) {
		return nil, fmt.Errorf("%w: signature does not verify", ErrAuthFailed)
	}
	now := time.Now().UTC()
	dev, err := newDevice(name, authKey, req.GetKeys(), now)
	if err != nil {
		return nil, err
	}
	sdl := req.GetDeviceList()
	list, err := verifyDeviceList(sdl, name)
	if err != nil {
		return nil, err
	}
	if matchList(list, map[string][]byte{dev.ID: dev.IdentityKey}, dev.ID) != nil {
		return nil, fmt.Errorf("%w: a recovery's list names only the recovering device, as primary", ErrInvalidDeviceList)
	}
	stored := &StoredList{List: sdl.GetList(), Signature: sdl.GetSignature(), Version: list.GetVersion()}

	created := false
	var old []string
	for attempt := 1; ; attempt++ {
		acc, rev, err := d.accountLatest(ctx, name)
		if err != nil {
			d.undoRecoverDevice(ctx, created, dev.ID)
			return nil, err
		}
		verifier := acc.RecoveryVerifier
		if len(verifier) != ed25519.PublicKeySize ||
			!ed25519.Verify(verifier, pb.RecoverPayload(nonce, name, authKey), req.GetRecoverySignature()) {
			d.undoRecoverDevice(ctx, created, dev.ID)
			return nil, ErrRecoveryRefused
		}
		if acc.HasDevice(dev.ID) {
			return nil, ErrDeviceExists
		}
		if err := checkVersion(list.GetVersion(), acc.listVersion(), false); err != nil {
			d.undoRecoverDevice(ctx, created, dev.ID)
			return nil, err
		}
		if !created {
			devJSON, _ := json.Marshal(dev)
			if _, err := d.bus.Devices.Create(ctx, dev.ID, devJSON); err != nil {
				if errors.Is(err, jetstream.ErrKeyExists) {
					return nil, ErrDeviceExists
				}
				return nil, fmt.Errorf("%w: create device: %v", ErrUnavailable, err)
			}
			created = true
		}
		next := acc.clone()
		old = next.Devices
		next.Devices = []string{dev.ID}
		next.PrimaryID = dev.ID
		next.DeviceList = stored
		next.Details = map[string]DeviceDetails{dev.ID: {LinkedMS: now.UnixMilli()}}
		if v := req.GetRecoveryVerifier(); len(v) != 0 {
			next.RecoveryVerifier = v
		}
		err = d.updateAccount(ctx, next, rev)
		if err == nil {
			break
		}
		if !errors.Is(err, errConflict) || attempt == maxUpdateAttempts {
			d.undoRecoverDevice(ctx, created, dev.ID)
			return nil, err
		}
	}
	d.addInitialPreKeys(ctx, dev, req.GetKeys())
	for _, id := range old {
		if err := d.dropDevice(ctx, id); err != nil {
			d.log.Warn("delete a device replaced by recovery", "device", id, "err", err)
		}
	}
	return &Recovered{Device: dev, Removed: old, DeviceList: sdl}, nil
}

// undoRecoverDevice deletes the device record a failed recovery created (created false: none).
func (d *Directory) undoRecoverDevice(ctx context.Context, created bool, deviceID string) {
	if created {
		d.undoDevice(ctx, deviceID)
	}
}
