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

// defaultReplenishBelow is used when the server's Welcome does not say.
const defaultReplenishBelow = 20

// keyGen generates prekeys, stores their private halves in tx (before anything is uploaded) and
// collects the public halves into an upload.
type keyGen struct {
	rand     io.Reader
	now      time.Time
	identity *e2ee.IdentityKeyPair
	acct     *store.Account
	up       *petrelv1.KeyBundleUpload
}

func (g *keyGen) upload() *petrelv1.KeyBundleUpload {
	if g.up == nil {
		g.up = &petrelv1.KeyBundleUpload{}
	}
	return g.up
}

// signedPreKey generates a new signed prekey and retires the current ones.
func (g *keyGen) signedPreKey(tx *store.Tx) error {
	g.acct.NextSignedPreKeyID++
	id := g.acct.NextSignedPreKeyID
	p, err := e2ee.GenerateSignedPreKey(g.rand, id, g.identity)
	if err != nil {
		return fmt.Errorf("generate signed prekey: %w", err)
	}
	raw, err := p.MarshalBinary()
	if err != nil {
		return err
	}
	old, err := tx.SignedPreKeys()
	if err != nil {
		return err
	}
	for _, k := range old {
		if k.RetiredAt.IsZero() {
			k.RetiredAt = g.now
			if err := tx.PutSignedPreKey(k); err != nil {
				return err
			}
		}
	}
	if err := tx.PutSignedPreKey(&store.SignedPreKey{ID: id, Pair: raw, CreatedAt: g.now}); err != nil {
		return err
	}
	pub := p.Public()
	g.upload().SignedPrekey = &petrelv1.SignedPreKey{Id: pub.ID, PublicKey: pub.PublicKey, Signature: pub.Signature}
	return nil
}

// lastResortKEM generates a new last-resort ML-KEM prekey and retires the current ones.
func (g *keyGen) lastResortKEM(tx *store.Tx) error {
	old, err := tx.LastResortKEMPreKeys()
	if err != nil {
		return err
	}
	for _, k := range old {
		if k.RetiredAt.IsZero() {
			k.RetiredAt = g.now
			if err := tx.PutKEMPreKey(k); err != nil {
				return err
			}
		}
	}
	k, err := g.kem(tx, true)
	if err != nil {
		return err
	}
	g.upload().LastResortKemPrekey = k
	return nil
}

func (g *keyGen) kem(tx *store.Tx, lastResort bool) (*petrelv1.KEMPreKey, error) {
	g.acct.NextKEMPreKeyID++
	id := g.acct.NextKEMPreKeyID
	p, err := e2ee.GenerateKEMPreKey(g.rand, id, g.identity, lastResort)
	if err != nil {
		return nil, fmt.Errorf("generate KEM prekey: %w", err)
	}
	raw, err := p.MarshalBinary()
	if err != nil {
		return nil, err
	}
	if err := tx.PutKEMPreKey(&store.KEMPreKey{ID: id, Pair: raw, LastResort: lastResort, CreatedAt: g.now}); err != nil {
		return nil, err
	}
	pub := p.Public()
	return &petrelv1.KEMPreKey{Id: pub.ID, PublicKey: pub.PublicKey, Signature: pub.Signature, LastResort: pub.LastResort}, nil
}

// oneTimeKEMs generates n one-time ML-KEM prekeys.
func (g *keyGen) oneTimeKEMs(tx *store.Tx, n int) error {
	for range n {
		k, err := g.kem(tx, false)
		if err != nil {
			return err
		}
		g.upload().KemPrekeys = append(g.upload().KemPrekeys, k)
	}
	return nil
}

// oneTimeECs generates n one-time X25519 prekeys.
func (g *keyGen) oneTimeECs(tx *store.Tx, n int) error {
	if n <= 0 {
		return nil
	}
	first := g.acct.NextOneTimePreKeyID + 1
	ps, err := e2ee.GenerateOneTimePreKeys(g.rand, first, n)
	if err != nil {
		return fmt.Errorf("generate one-time prekeys: %w", err)
	}
	g.acct.NextOneTimePreKeyID += uint32(n)
	for _, p := range ps {
		raw, err := p.MarshalBinary()
		if err != nil {
			return err
		}
		if err := tx.PutOneTimePreKey(p.ID, raw); err != nil {
			return err
		}
		pub := p.Public()
		g.upload().OneTimePrekeys = append(g.upload().OneTimePrekeys, &petrelv1.OneTimePreKey{Id: pub.ID, PublicKey: pub.PublicKey})
	}
	return nil
}

// maintainPreKeys keeps this device's prekeys in shape: replenish one-time prekeys below the server's
// threshold, rotate the signed (and last-resort KEM) prekey when too old, and forget retired
// private prekeys after the grace period. New private keys are stored before the upload.
//
// It runs after each Welcome and then periodically (for rotation on long-lived connections); the
// one-time prekey counts are those of the Welcome or of the last PreKeyStatus.
func (l *link) maintainPreKeys(ctx context.Context) error {
	c := l.c
	w := l.welcome
	below := w.GetReplenishBelow()
	if below == 0 {
		below = defaultReplenishBelow
	}
	otkLeft, kemLeft := l.otkLeft, l.kemLeft
	batch := uint32(c.cfg.PreKeyBatch)
	now := c.cfg.Now()
	var up *petrelv1.KeyBundleUpload
	err := c.st.Update(func(tx *store.Tx) error {
		acct, err := tx.Account()
		if err != nil {
			return err
		}
		g := &keyGen{rand: c.cfg.Rand, now: now, identity: c.identity, acct: acct}
		if left := otkLeft; left < below && left < batch {
			if err := g.oneTimeECs(tx, int(batch-left)); err != nil {
				return err
			}
		}
		if left := kemLeft; left < below && left < batch {
			if err := g.oneTimeKEMs(tx, int(batch-left)); err != nil {
				return err
			}
		}
		spks, err := tx.SignedPreKeys()
		if err != nil {
			return err
		}
		var newest time.Time
		for _, k := range spks {
			if k.RetiredAt.IsZero() && k.CreatedAt.After(newest) {
				newest = k.CreatedAt
			}
			if !k.RetiredAt.IsZero() && now.Sub(k.RetiredAt) > c.cfg.SignedPreKeyGrace {
				if err := tx.DeleteSignedPreKey(k.ID); err != nil {
					return err
				}
			}
		}
		if now.Sub(newest) >= c.cfg.SignedPreKeyRotation {
			if err := g.signedPreKey(tx); err != nil {
				return err
			}
			if err := g.lastResortKEM(tx); err != nil {
				return err
			}
		}
		lrs, err := tx.LastResortKEMPreKeys()
		if err != nil {
			return err
		}
		for _, k := range lrs {
			if !k.RetiredAt.IsZero() && now.Sub(k.RetiredAt) > c.cfg.SignedPreKeyGrace {
				if err := tx.DeleteKEMPreKey(k.ID); err != nil {
					return err
				}
			}
		}
		up = g.up
		if up == nil {
			return nil
		}
		return tx.PutAccount(acct)
	})
	if err != nil {
		return &storeError{err}
	}
	if up == nil {
		return nil
	}
	c.log.Info("uploading prekeys", "one_time", len(up.OneTimePrekeys), "kem", len(up.KemPrekeys),
		"rotated", up.SignedPrekey != nil)
	for _, part := range splitUpload(up, int(l.conn.maxFrame.Load())) {
		resp, err := l.conn.request(ctx, &petrelv1.Frame{Body: &petrelv1.Frame_UploadPrekeys{UploadPrekeys: &petrelv1.UploadPreKeys{Keys: part}}})
		if err != nil {
			return fmt.Errorf("upload prekeys: %w", err)
		}
		st := resp.GetPrekeyStatus()
		if st == nil {
			return fmt.Errorf("%w: expected PreKeyStatus", ErrProtocol)
		}
		l.otkLeft, l.kemLeft = st.GetOneTimePrekeysLeft(), st.GetKemPrekeysLeft()
	}
	c.emit(ctx, &PreKeysUploaded{OneTime: len(up.OneTimePrekeys), KEM: len(up.KemPrekeys), Rotated: up.SignedPrekey != nil})
	return nil
}

// frameOverhead is room left in a frame for the envelope around an upload.
const frameOverhead = 64

// splitUpload splits an upload into parts that each fit in a frame of limit bytes: the signed and
// last-resort prekeys go in the first, one-time prekeys fill the parts in order.
func splitUpload(up *petrelv1.KeyBundleUpload, limit int) []*petrelv1.KeyBundleUpload {
	if proto.Size(up)+frameOverhead <= limit {
		return []*petrelv1.KeyBundleUpload{up}
	}
	cur := &petrelv1.KeyBundleUpload{IdentityKey: up.IdentityKey, SignedPrekey: up.SignedPrekey,
		LastResortKemPrekey: up.LastResortKemPrekey}
	parts := []*petrelv1.KeyBundleUpload{cur}
	size := proto.Size(cur)
	// Each repeated element costs its own size plus a tag and a length (at most 4 bytes here).
	fits := func(n int) bool { return size+n+4+frameOverhead <= limit }
	next := func() {
		cur = &petrelv1.KeyBundleUpload{}
		parts = append(parts, cur)
		size = 0
	}
	for _, k := range up.KemPrekeys {
		n := proto.Size(k)
		if !fits(n) && size > 0 {
			next()
		}
		cur.KemPrekeys = append(cur.KemPrekeys, k)
		size += n + 4
	}
	for _, k := range up.OneTimePrekeys {
		n := proto.Size(k)
		if !fits(n) && size > 0 {
			next()
		}
		cur.OneTimePrekeys = append(cur.OneTimePrekeys, k)
		size += n + 4
	}
	return parts
}
