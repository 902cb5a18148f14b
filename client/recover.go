// Copyright 2026 The Petrel Authors
// SPDX-License-Identifier: Apache-2.0

package client

import (
	"context"
	"crypto/ed25519"
	"errors"
	"fmt"
	"io"
	"time"

	"github.com/petrelchat/petrel/client/store"
	"github.com/petrelchat/petrel/e2ee"
	petrelv1 "github.com/petrelchat/petrel/proto/petrel/v1"
)

// Account recovery (docs/protocol.md, "Account recovery"). Register creates a recovery key and
// sends the server only its verifier; the key stays in the home (RecoveryKey) and is shown to the
// user once. Recover, on a new home, proves possession of the key and makes the new device the
// account's only device and its primary: the old devices are removed, and contacts see a new
// identity key (a changed safety number).

var (
	// ErrWrongRecoveryKey: the server refused the recovery key (it does not match the account,
	// or the account was registered without one).
	ErrWrongRecoveryKey = errors.New("the recovery key does not match this account")
	// ErrInvalidRecoveryKey: the recovery key text does not parse (see e2ee.ParseRecoveryKey).
	ErrInvalidRecoveryKey = e2ee.ErrInvalidRecoveryKey
	// ErrNoRecoveryKey: this home keeps no recovery key (a linked companion, or an account
	// registered before recovery keys).
	ErrNoRecoveryKey = errors.New("this home keeps no recovery key (only the primary device that registered or recovered the account does)")
)

// RecoverOptions describes an account to re-claim.
type RecoverOptions struct {
	// ServerURL and ServerURLs are the server's base URLs, as in RegisterOptions.
	ServerURL  string
	ServerURLs []string
	// Name is the account to re-claim.
	Name string
	// RecoveryKey is the key Register returned, as written down (case, spaces and dashes do not
	// matter).
	RecoveryKey string
	// PreKeys, Timeout, Rand and Now: as in RegisterOptions.
	PreKeys int
	Timeout time.Duration
	Rand    io.Reader
	Now     func() time.Time
}

// Recover creates this device's keys in st (which must not hold a registered device) and
// re-claims account opts.Name with its recovery key: the server removes the account's other
// devices (a connected one gets DEVICE_REMOVED) and this device becomes its primary, with a
// device list naming only itself. The same recovery key stays valid and is kept in st. A wrong
// key is ErrWrongRecoveryKey; too many attempts ErrRateLimited.
func Recover(ctx context.Context, st *store.Store, opts RecoverOptions) (Account, error) {
	onboardDefaults(&opts.PreKeys, &opts.Timeout, &opts.Rand, &opts.Now)
	if !petrelv1.ValidName(opts.Name) {
		return Account{}, fmt.Errorf("%w: %q (want 1-32 of a-z 0-9 _ . -, starting with a letter or digit)", ErrInvalidName, opts.Name)
	}
	rk, err := e2ee.ParseRecoveryKey(opts.RecoveryKey)
	if err != nil {
		return Account{}, err
	}
	urls, err := serverURLs(opts.ServerURL, opts.ServerURLs)
	if err != nil {
		return Account{}, err
	}
	now := opts.Now()
	keys, err := Provision(st, ProvisionOptions{PreKeys: opts.PreKeys, Rand: opts.Rand, Now: opts.Now})
	if err != nil {
		return Account{}, err
	}
	if err := storeOnboarding(st, urls, opts.Name, rk); err != nil {
		return Account{}, err
	}
	// The new list: this device alone, primary. Its version must be above the stored list's,
	// which this device cannot read before it is authenticated: Unix milliseconds are (lists
	// count up by one per change from 1).
	list := &petrelv1.DeviceList{Account: opts.Name, Version: uint64(max(now.UnixMilli(), 1)), CreatedMs: now.UnixMilli(),
		Devices: []*petrelv1.ListedDevice{{DeviceId: keys.DeviceID, IdentityKey: keys.identity.PublicKey().Bytes(), Primary: true}}}
	sdl, err := petrelv1.SignDeviceList(keys.identity, list)
	if err != nil {
		return Account{}, err
	}

	ctx, cancel := context.WithTimeout(ctx, opts.Timeout)
	defer cancel()
	cn, ch, err := challengeAny(ctx, urls, opts.Timeout)
	if err != nil {
		return Account{}, err
	}
	defer cn.shutdown(true)
	req := &petrelv1.Recover{
		Name:              opts.Name,
		AuthKey:           keys.AuthKey,
		Signature:         keys.SignChallenge(ch.GetNonce()),
		Keys:              keys.Upload,
		RecoverySignature: ed25519.Sign(rk.SigningKey(), petrelv1.RecoverPayload(ch.GetNonce(), opts.Name, keys.AuthKey)),
		DeviceList:        sdl,
	}
	w, err := cn.handshake(ctx, &petrelv1.Frame{Body: &petrelv1.Frame_Recover{Recover: req}})
	if errors.Is(err, ErrAuthFailed) {
		return Account{}, fmt.Errorf("%w: %w", ErrWrongRecoveryKey, err)
	}
	if err != nil {
		return Account{}, err
	}
	if err := checkWelcome(w, keys.DeviceID, opts.Name); err != nil {
		return Account{}, err
	}
	if err := storeWelcome(st, w, urls, now); err != nil {
		return Account{}, fmt.Errorf("the account was recovered but storing it failed: %w", err)
	}
	return Account{Name: opts.Name, DeviceID: keys.DeviceID, ServerURL: urls[0], Servers: urls,
		Fingerprint: keys.Fingerprint, Primary: true, RecoveryKey: rk.Text()}, nil
}

// RecoveryKey returns the recovery key kept in st, or ErrNoRecoveryKey. It needs no connection.
func RecoveryKey(st *store.Store) (string, error) {
	var key string
	err := st.View(func(tx *store.Tx) error {
		a, err := tx.Account()
		if errors.Is(err, store.ErrNotFound) {
			return ErrNotRegistered
		}
		if err != nil {
			return err
		}
		if !a.Registered {
			return ErrNotRegistered
		}
		key = a.RecoveryKey
		return nil
	})
	if err != nil {
		return "", err
	}
	if key == "" {
		return "", ErrNoRecoveryKey
	}
	return key, nil
}
