// Copyright 2026 The Petrel Authors
// SPDX-License-Identifier: Apache-2.0

package client

import (
	"crypto/ed25519"
	"crypto/rand"
	"errors"
	"fmt"
	"io"
	"time"

	"github.com/petrelchat/petrel/client/store"
	"github.com/petrelchat/petrel/e2ee"
	petrelv1 "github.com/petrelchat/petrel/proto/petrel/v1"
)

// ProvisionOptions tunes Provision.
type ProvisionOptions struct {
	// PreKeys is how many one-time prekeys of each kind (X25519 and ML-KEM) to create. Default: 100.
	PreKeys int
	// Rand is the randomness source. Default: crypto/rand.
	Rand io.Reader
	// Now is the clock (prekey creation times). Default: time.Now.
	Now func() time.Time
}

// DeviceKeys is a provisioned device: the public half of the keys Provision stored, as a
// registration (Register), a link offer (StartLink) or a bulk registration upload them, and the
// auth key to answer the server's challenge with. The private keys stay in the store.
type DeviceKeys struct {
	// DeviceID is petrelv1.DeviceID(AuthKey).
	DeviceID string
	// AuthKey is the Ed25519 public key the device authenticates with.
	AuthKey ed25519.PublicKey
	// Upload carries the identity key, the signed prekey, the last-resort ML-KEM prekey and the
	// one-time prekeys (the Register.keys / LinkOffer.keys field).
	Upload *petrelv1.KeyBundleUpload
	// Fingerprint is the short digest of the identity key (see Fingerprint).
	Fingerprint string

	authPriv ed25519.PrivateKey
	identity *e2ee.IdentityKeyPair
}

// SignChallenge signs the server's Challenge nonce with the device's auth key: the signature a
// Register, StartLink or Auth carries.
func (k *DeviceKeys) SignChallenge(nonce []byte) []byte {
	return ed25519.Sign(k.authPriv, petrelv1.AuthPayload(nonce, k.DeviceID))
}

// Provision creates a new device's keys in st — Ed25519 auth key, E2EE identity key, signed
// prekey, last-resort ML-KEM prekey, opts.PreKeys one-time X25519 and ML-KEM prekeys — and returns
// their public halves. Everything private is committed to st before Provision returns, so a
// registration or link whose answer is lost never loses the keys the server may have accepted.
//
// The store then holds an unregistered device (no account name yet): Register and Link finish
// it, and Open refuses it until they do. Provision replaces the keys of an earlier unfinished
// provisioning; it refuses (ErrAlreadyRegistered) a store that holds a registered device.
func Provision(st *store.Store, opts ProvisionOptions) (*DeviceKeys, error) {
	if opts.PreKeys <= 0 {
		opts.PreKeys = 100
	}
	if opts.Rand == nil {
		opts.Rand = rand.Reader
	}
	if opts.Now == nil {
		opts.Now = time.Now
	}
	now := opts.Now()
	pub, priv, err := ed25519.GenerateKey(opts.Rand)
	if err != nil {
		return nil, err
	}
	identity, err := e2ee.GenerateIdentityKeyPair(opts.Rand)
	if err != nil {
		return nil, fmt.Errorf("generate identity key: %w", err)
	}
	idRaw, err := identity.MarshalBinary()
	if err != nil {
		return nil, err
	}
	acct := &store.Account{DeviceID: petrelv1.DeviceID(pub), AuthKey: priv, Identity: idRaw}
	var up *petrelv1.KeyBundleUpload
	err = st.Update(func(tx *store.Tx) error {
		old, err := tx.Account()
		switch {
		case err == nil && old.Registered:
			return fmt.Errorf("%w (%s as %s); use another --home for another account", ErrAlreadyRegistered, old.Name, old.ServerURL)
		case err != nil && !errors.Is(err, store.ErrNotFound):
			return err
		}
		if err := tx.ResetKeys(); err != nil {
			return err
		}
		g := &keyGen{rand: opts.Rand, now: now, identity: identity, acct: acct}
		if err := g.signedPreKey(tx); err != nil {
			return err
		}
		if err := g.lastResortKEM(tx); err != nil {
			return err
		}
		if err := g.oneTimeECs(tx, opts.PreKeys); err != nil {
			return err
		}
		if err := g.oneTimeKEMs(tx, opts.PreKeys); err != nil {
			return err
		}
		up = g.upload()
		up.IdentityKey = identity.PublicKey().Bytes()
		return tx.PutAccount(acct)
	})
	if err != nil {
		return nil, err
	}
	return &DeviceKeys{DeviceID: acct.DeviceID, AuthKey: pub, Upload: up,
		Fingerprint: Fingerprint(identity.PublicKey().Bytes()), authPriv: priv, identity: identity}, nil
}
