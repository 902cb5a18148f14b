// Copyright 2026 The Petrel Authors
// SPDX-License-Identifier: Apache-2.0

package directory_test

import (
	"context"
	"crypto/ed25519"
	"fmt"
	"testing"

	"github.com/petrelchat/petrel/e2ee"
	"github.com/petrelchat/petrel/internal/bus"
	"github.com/petrelchat/petrel/internal/directory"
	pb "github.com/petrelchat/petrel/proto/petrel/v1"
)

// subjectsPerAccount is what a registered account with one device and one-time prekeys costs in
// nats-server's per-subject indexes: $KV.accounts.<name>, $KV.devices.<id>, prekeys.otk.<id> and
// prekeys.kem.<id>. Each subject is an entry in its stream's subject tree (about 100 bytes of heap,
// kept for as long as the subject holds a message), which is most of the memory an account that
// is not connected costs a node (BENCHMARKS.md, "Registered accounts"). Adding a subject per
// account or device adds that much for every account: change this number only with a measurement.
const subjectsPerAccount = 4

// footprintDevices builds n bulk registration entries with one one-time prekey of each kind. The
// E2EE keys are shared (the server checks signatures, not uniqueness); auth keys and names differ.
func footprintDevices(t *testing.T, n int) []*pb.BulkDevice {
	t.Helper()
	ik, err := e2ee.GenerateIdentityKeyPair(nil)
	if err != nil {
		t.Fatal(err)
	}
	spk, err := e2ee.GenerateSignedPreKey(nil, 1, ik)
	if err != nil {
		t.Fatal(err)
	}
	lr, err := e2ee.GenerateKEMPreKey(nil, 1, ik, true)
	if err != nil {
		t.Fatal(err)
	}
	kem, err := e2ee.GenerateKEMPreKey(nil, 2, ik, false)
	if err != nil {
		t.Fatal(err)
	}
	otk, err := e2ee.GenerateOneTimePreKeys(nil, 1, 1)
	if err != nil {
		t.Fatal(err)
	}
	sp, lp, kp, op := spk.Public(), lr.Public(), kem.Public(), otk[0].Public()
	keys := &pb.KeyBundleUpload{
		IdentityKey:         ik.PublicKey().Bytes(),
		SignedPrekey:        &pb.SignedPreKey{Id: sp.ID, PublicKey: sp.PublicKey, Signature: sp.Signature},
		LastResortKemPrekey: &pb.KEMPreKey{Id: lp.ID, PublicKey: lp.PublicKey, Signature: lp.Signature, LastResort: true},
		OneTimePrekeys:      []*pb.OneTimePreKey{{Id: op.ID, PublicKey: op.PublicKey}},
		KemPrekeys:          []*pb.KEMPreKey{{Id: kp.ID, PublicKey: kp.PublicKey, Signature: kp.Signature}},
	}
	devs := make([]*pb.BulkDevice, n)
	for i := range devs {
		var seed [ed25519.SeedSize]byte
		copy(seed[:], fmt.Sprintf("footprint-%021d", i))
		pub := ed25519.NewKeyFromSeed(seed[:]).Public().(ed25519.PublicKey)
		devs[i] = &pb.BulkDevice{Name: fmt.Sprintf("fp%d", i), AuthKey: pub, Keys: keys}
	}
	return devs
}

// A registered account that is not connected costs a node mostly the entries its subjects take
// in the streams' per-subject indexes (measured with petrel bench accounts: about 850 bytes of RSS
// per account after a restart, of which about 400 are those indexes and most of the rest is the
// Go collector's headroom over them). This pins the count: exactly subjectsPerAccount subjects.
func TestSubjectsPerAccount(t *testing.T) {
	const n = 600
	ctx := context.Background()
	b, quiet := openBus(t, 1)
	d := directory.New(b, directory.Config{Logger: quiet})
	res, err := d.RegisterBulk(ctx, footprintDevices(t, n))
	if err != nil {
		t.Fatal(err)
	}
	for k, e := range res.GetErrors() {
		if e != "" {
			t.Fatalf("device %d: %s", k, e)
		}
	}
	subjects := 0
	for _, name := range []string{"KV_" + bus.AccountsBucket, "KV_" + bus.DevicesBucket, bus.PreKeysStream} {
		s, err := b.JS().Stream(ctx, name)
		if err != nil {
			t.Fatal(err)
		}
		subjects += int(s.CachedInfo().State.NumSubjects)
	}
	if subjects != subjectsPerAccount*n {
		t.Errorf("%d accounts hold %d subjects in the accounts, devices and prekeys streams: %.2f per account, want %d (see subjectsPerAccount)", n, subjects, float64(subjects)/n, subjectsPerAccount)
	}
}
