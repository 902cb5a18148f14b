// Copyright 2026 The Petrel Authors
// SPDX-License-Identifier: Apache-2.0

package client_test

import (
	"crypto/ed25519"
	"errors"
	"testing"

	"github.com/petrelchat/petrel/client"
	"github.com/petrelchat/petrel/client/store"
	"github.com/petrelchat/petrel/e2ee"
	"github.com/petrelchat/petrel/internal/testserver"
	petrelv1 "github.com/petrelchat/petrel/proto/petrel/v1"
)

// Provision stores every private key before returning the public halves; what it returns
// verifies as a bundle, signs challenges for its device id, and a second provisioning of an
// unfinished device replaces the keys. A registered home is refused.
func TestProvision(t *testing.T) {
	st, err := store.Open(t.TempDir(), store.Options{NoSync: true})
	if err != nil {
		t.Fatal(err)
	}
	defer st.Close()
	k, err := client.Provision(st, client.ProvisionOptions{PreKeys: 3})
	if err != nil {
		t.Fatal(err)
	}
	up := k.Upload
	if k.DeviceID != petrelv1.DeviceID(k.AuthKey) || len(up.OneTimePrekeys) != 3 || len(up.KemPrekeys) != 3 ||
		up.SignedPrekey == nil || up.LastResortKemPrekey == nil || !up.LastResortKemPrekey.LastResort {
		t.Fatalf("provisioned %s: %d one-time, %d KEM", k.DeviceID, len(up.OneTimePrekeys), len(up.KemPrekeys))
	}
	b := e2ee.PreKeyBundle{Identity: up.IdentityKey,
		SignedPreKey: e2ee.SignedPreKey{ID: up.SignedPrekey.Id, PublicKey: up.SignedPrekey.PublicKey, Signature: up.SignedPrekey.Signature},
		KEMPreKey:    e2ee.KEMPreKey{ID: up.KemPrekeys[0].Id, PublicKey: up.KemPrekeys[0].PublicKey, Signature: up.KemPrekeys[0].Signature}}
	if err := b.Verify(); err != nil {
		t.Fatalf("the provisioned keys do not verify as a bundle: %v", err)
	}
	nonce := make([]byte, petrelv1.NonceSize)
	if !ed25519.Verify(k.AuthKey, petrelv1.AuthPayload(nonce, k.DeviceID), k.SignChallenge(nonce)) {
		t.Fatal("SignChallenge does not verify with the auth key")
	}
	err = st.View(func(tx *store.Tx) error {
		a, err := tx.Account()
		if err != nil {
			return err
		}
		if a.DeviceID != k.DeviceID || a.Registered || a.Name != "" {
			t.Errorf("stored account %s registered=%v name=%q", a.DeviceID, a.Registered, a.Name)
		}
		for _, otk := range up.OneTimePrekeys {
			if _, err := tx.OneTimePreKey(otk.Id); err != nil {
				t.Errorf("one-time prekey %d not stored: %v", otk.Id, err)
			}
		}
		for _, kem := range append(up.KemPrekeys, up.LastResortKemPrekey) {
			if _, err := tx.KEMPreKey(kem.Id); err != nil {
				t.Errorf("KEM prekey %d not stored: %v", kem.Id, err)
			}
		}
		if _, err := tx.SignedPreKey(up.SignedPrekey.Id); err != nil {
			t.Errorf("signed prekey not stored: %v", err)
		}
		return nil
	})
	if err != nil {
		t.Fatal(err)
	}
	if _, err := client.Open(client.Config{Store: st}); !errors.Is(err, client.ErrNotRegistered) {
		t.Fatalf("Open of a provisioned, unregistered device: %v", err)
	}
	k2, err := client.Provision(st, client.ProvisionOptions{PreKeys: 1})
	if err != nil || k2.DeviceID == k.DeviceID {
		t.Fatalf("second provisioning: %v (same device id: %v)", err, k2 != nil && k2.DeviceID == k.DeviceID)
	}
	st.View(func(tx *store.Tx) error {
		if n := tx.CountOneTimePreKeys(); n != 1 {
			t.Errorf("%d one-time prekeys after re-provisioning, want 1 (the old ones dropped)", n)
		}
		return nil
	})

	srv := testserver.Start(t)
	d := register(t, srv, "alice", devOpts{preKeys: 1})
	st2, err := store.Open(d.home, store.Options{NoSync: true})
	if err != nil {
		t.Fatal(err)
	}
	defer st2.Close()
	if _, err := client.Provision(st2, client.ProvisionOptions{PreKeys: 1}); !errors.Is(err, client.ErrAlreadyRegistered) {
		t.Fatalf("provisioning a registered home: %v", err)
	}
}
