// Copyright 2026 The Petrel Authors
// SPDX-License-Identifier: Apache-2.0

package directory_test

import (
	"bytes"
	"context"
	"crypto/ed25519"
	"encoding/json"
	"errors"
	"testing"
	"time"

	"google.golang.org/protobuf/proto"

	"github.com/petrelchat/petrel/internal/directory"
	"github.com/petrelchat/petrel/internal/testserver"
	pb "github.com/petrelchat/petrel/proto/petrel/v1"
)

func openDir(t testing.TB, policy string) *directory.Directory {
	t.Helper()
	b, quiet := openBus(t, 2)
	return directory.New(b, directory.Config{Policy: policy, Logger: quiet})
}

// registration builds a valid Register for nonce.
func registration(t testing.TB, name string, nonce []byte, seed byte) (*pb.Register, ed25519.PrivateKey) {
	t.Helper()
	priv := ed25519.NewKeyFromSeed(bytes.Repeat([]byte{seed}, 32))
	pub := priv.Public().(ed25519.PublicKey)
	_, up := testserver.NewKeys(t, 3)
	return &pb.Register{
		Name:      name,
		AuthKey:   pub,
		Signature: ed25519.Sign(priv, pb.AuthPayload(nonce, pb.DeviceID(pub))),
		Keys:      up,
	}, priv
}

func TestRegisterPolicies(t *testing.T) {
	ctx := context.Background()
	nonce := bytes.Repeat([]byte{7}, 32)

	closed := openDir(t, directory.PolicyClosed)
	reg, _ := registration(t, "amy", nonce, 1)
	if _, err := closed.Register(ctx, reg, nonce); !errors.Is(err, directory.ErrRegistrationClosed) {
		t.Fatalf("closed: %v", err)
	}

	inv := openDir(t, directory.PolicyInvite)
	if _, err := inv.Register(ctx, reg, nonce); !errors.Is(err, directory.ErrInvalidInvite) {
		t.Fatalf("invite without code: %v", err)
	}
	code, err := inv.CreateInvite(ctx)
	if err != nil {
		t.Fatal(err)
	}
	reg.Invite = code
	if _, err := inv.Register(ctx, reg, nonce); err != nil {
		t.Fatalf("invite with code: %v", err)
	}
	reg2, _ := registration(t, "ben", nonce, 2)
	reg2.Invite = code
	if _, err := inv.Register(ctx, reg2, nonce); !errors.Is(err, directory.ErrInvalidInvite) {
		t.Fatalf("an invite code must work once: %v", err)
	}
}

func TestRegisterRejectsBadKeys(t *testing.T) {
	ctx := context.Background()
	d := openDir(t, directory.PolicyOpen)
	nonce := bytes.Repeat([]byte{9}, 32)
	reg, _ := registration(t, "cat", nonce, 3)
	reg.Keys.SignedPrekey.Signature[0] ^= 1
	if _, err := d.Register(ctx, reg, nonce); !errors.Is(err, directory.ErrInvalidKeys) {
		t.Fatalf("forged signed prekey: %v", err)
	}
	reg, _ = registration(t, "cat", nonce, 3)
	reg.Signature[0] ^= 1
	if _, err := d.Register(ctx, reg, nonce); !errors.Is(err, directory.ErrAuthFailed) {
		t.Fatalf("bad proof of possession: %v", err)
	}
	reg, _ = registration(t, "cat", nonce, 3)
	if _, err := d.Register(ctx, reg, nonce); err != nil {
		t.Fatalf("valid registration after refusals: %v", err)
	}
}

// FuzzHandshake feeds arbitrary first frames to the real registration and authentication code on a
// real embedded bus: nothing panics, and only a correct signature over this nonce authenticates.
func FuzzHandshake(f *testing.F) {
	nonce := bytes.Repeat([]byte{42}, 32)
	d := openDir(f, directory.PolicyOpen)
	ctx := context.Background()
	reg, priv := registration(f, "fuzz", nonce, 5)
	dev, err := d.Register(ctx, reg, nonce)
	if err != nil {
		f.Fatal(err)
	}
	good, _ := proto.Marshal(&pb.Frame{Id: 1, Body: &pb.Frame_Auth{Auth: &pb.Auth{DeviceId: dev.ID, Signature: ed25519.Sign(priv, pb.AuthPayload(nonce, dev.ID))}}})
	f.Add(good)
	other, _ := registration(f, "fuzz2", nonce, 6)
	regFrame, _ := proto.Marshal(&pb.Frame{Id: 1, Body: &pb.Frame_Register{Register: other}})
	f.Add(regFrame)
	f.Add([]byte{})
	f.Fuzz(func(t *testing.T, b []byte) {
		fr, err := pb.DecodeFrame(b, pb.DefaultMaxFrameBytes)
		if err != nil {
			return
		}
		switch body := fr.Body.(type) {
		case *pb.Frame_Auth:
			got, err := d.Authenticate(ctx, body.Auth.GetDeviceId(), nonce, body.Auth.GetSignature())
			if err == nil && (got.ID != dev.ID || !ed25519.Verify(priv.Public().(ed25519.PublicKey), pb.AuthPayload(nonce, dev.ID), body.Auth.GetSignature())) {
				t.Fatalf("authenticated without a valid signature: %v", got.ID)
			}
		case *pb.Frame_Register:
			_, _ = d.Register(ctx, body.Register, nonce)
		}
	})
}

// The account cache follows updates of the bucket (a device added elsewhere must show up).
func TestAccountCacheFollowsUpdates(t *testing.T) {
	d, b := startedDir(t, directory.Config{})
	ctx := context.Background()
	nonce := bytes.Repeat([]byte{1}, 32)
	reg, _ := registration(t, "gus", nonce, 8)
	if _, err := d.Register(ctx, reg, nonce); err != nil {
		t.Fatal(err)
	}
	acc, err := d.Account(ctx, "gus") // now cached
	if err != nil || len(acc.Devices) != 1 {
		t.Fatalf("%+v %v", acc, err)
	}
	// Another node adds a device: it writes the bucket directly.
	updated, _ := json.Marshal(directory.Account{Name: "gus", Devices: []string{acc.Devices[0], "ffffffffffffffffffffffffffffffff"}})
	if _, err := b.Accounts.Put(ctx, "gus", updated); err != nil {
		t.Fatal(err)
	}
	deadline := time.Now().Add(10 * time.Second)
	for {
		acc, err := d.Account(ctx, "gus")
		if err == nil && len(acc.Devices) == 2 {
			return
		}
		if time.Now().After(deadline) {
			t.Fatalf("cache still serves %+v", acc)
		}
		time.Sleep(5 * time.Millisecond) // the watch delivers asynchronously
	}
}
