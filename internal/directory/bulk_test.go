// Copyright 2026 The Petrel Authors
// SPDX-License-Identifier: Apache-2.0

package directory_test

import (
	"context"
	"crypto/ed25519"
	"errors"
	"fmt"
	"log/slog"
	"strings"
	"testing"

	"github.com/petrelchat/petrel/internal/bus"
	"github.com/petrelchat/petrel/internal/directory"
	"github.com/petrelchat/petrel/internal/testserver"
	pb "github.com/petrelchat/petrel/proto/petrel/v1"
)

// bulkDevice builds a valid bulk registration entry whose auth key comes from seed.
func bulkDevice(t *testing.T, name string, seed int, oneTime int) *pb.BulkDevice {
	t.Helper()
	var s [32]byte
	copy(s[:], fmt.Sprintf("bulk-seed-%022d", seed))
	pub := ed25519.NewKeyFromSeed(s[:]).Public().(ed25519.PublicKey)
	_, up := testserver.NewKeys(t, oneTime)
	return &pb.BulkDevice{Name: name, AuthKey: pub, Keys: up}
}

// A bulk registration writes its valid devices in atomic batches; a conflict anywhere (a name
// taken before or earlier in the request, a device already registered) is reported for that
// device alone, the others are registered, and nothing is left half-made.
func TestRegisterBulk(t *testing.T) {
	ctx := context.Background()
	b, _ := openBus(t, 1)
	var logs testserver.Buffer // shows which path each chunk took
	d := directory.New(b, directory.Config{Logger: slog.New(slog.NewTextHandler(&logs, &slog.HandlerOptions{Level: slog.LevelDebug}))})
	wctx, cancel := context.WithCancel(ctx)
	t.Cleanup(func() { cancel(); d.Wait() })
	if err := d.Start(wctx); err != nil {
		t.Fatal(err)
	}
	for _, bucket := range []string{bus.AccountsBucket, bus.DevicesBucket} {
		s, err := b.JS().Stream(ctx, "KV_"+bucket)
		if err != nil {
			t.Fatal(err)
		}
		if !s.CachedInfo().Config.AllowAtomicPublish {
			t.Fatalf("bucket %s does not allow atomic batches", bucket)
		}
	}

	// All valid: every device and account exists, and prekeys are stored.
	var devs []*pb.BulkDevice
	for i := range 600 { // more than one chunk
		devs = append(devs, bulkDevice(t, fmt.Sprintf("bulk%d", i), i, 0))
	}
	// Devices with prekeys in one chunk: their prekeys share atomic batches, each on its
	// device's subjects; one device's prekeys that do not verify cost it only its prekeys.
	devs[7] = bulkDevice(t, "withprekeys", 7, 3)
	devs[8] = bulkDevice(t, "withprekeys2", 8, 150) // 150 ML-KEM prekeys: several batches by bytes
	devs[9] = bulkDevice(t, "badprekeys", 9, 2)
	devs[9].Keys.KemPrekeys[1].Signature[0] ^= 1
	res, err := d.RegisterBulk(ctx, devs)
	if err != nil {
		t.Fatal(err)
	}
	for i, bd := range devs {
		if res.Errors[i] != "" || res.DeviceIds[i] != pb.DeviceID(bd.GetAuthKey()) {
			t.Fatalf("device %d: id %q error %q", i, res.DeviceIds[i], res.Errors[i])
		}
	}
	if strings.Contains(logs.String(), "one by one") {
		t.Fatalf("a request without conflicts was not written in batches:\n%s", logs.String())
	}
	for _, i := range []int{0, 7, 599} {
		acc, err := d.Account(ctx, devs[i].GetName())
		if err != nil || len(acc.Devices) != 1 || acc.Devices[0] != res.DeviceIds[i] {
			t.Fatalf("account %s: %+v, %v", devs[i].GetName(), acc, err)
		}
		if _, err := d.Device(ctx, res.DeviceIds[i]); err != nil {
			t.Fatalf("device %d: %v", i, err)
		}
	}
	for i, want := range map[int]uint32{7: 3, 8: 150, 9: 0, 10: 0} {
		if st, err := d.Status(ctx, directory.Principal{ID: res.DeviceIds[i]}); err != nil || st.GetOneTimePrekeysLeft() != want || st.GetKemPrekeysLeft() != want {
			t.Fatalf("prekeys of bulk device %d: %v, %v (want %d of each)", i, st, err, want)
		}
	}

	// Conflicts, each in a different chunk position.
	bad := bulkDevice(t, "badkeys", 1000, 0)
	bad.Keys.SignedPrekey.Signature[0] ^= 1
	mixed := []*pb.BulkDevice{
		bulkDevice(t, "fresh1", 1001, 0),
		bulkDevice(t, "bulk3", 1002, 0), // name taken by the first request
		bulkDevice(t, "newname", 5, 0),  // device (auth key) registered by the first request
		bulkDevice(t, "fresh2", 1003, 0),
		bulkDevice(t, "fresh2", 1004, 0),     // name repeated within this request
		bad,                                  // keys that do not verify
		bulkDevice(t, "Not Valid!", 1005, 0), // bad name
		bulkDevice(t, "fresh3", 1006, 0),
	}
	res, err = d.RegisterBulk(ctx, mixed)
	if err != nil {
		t.Fatal(err)
	}
	if !strings.Contains(logs.String(), "one by one") {
		t.Fatal("a request with conflicts was written in batches")
	}
	want := []error{nil, directory.ErrNameTaken, directory.ErrDeviceExists, nil, directory.ErrNameTaken, directory.ErrInvalidKeys, directory.ErrInvalidName, nil}
	for i, w := range want {
		switch {
		case w == nil && (res.Errors[i] != "" || res.DeviceIds[i] == ""):
			t.Errorf("device %d (%s): error %q", i, mixed[i].GetName(), res.Errors[i])
		case w != nil && (res.DeviceIds[i] != "" || !strings.Contains(res.Errors[i], errText(w))):
			t.Errorf("device %d (%s): id %q error %q, want %v", i, mixed[i].GetName(), res.DeviceIds[i], res.Errors[i], w)
		}
	}
	// The refused ones left nothing behind: the device whose name was taken can register again.
	if _, err := d.Device(ctx, pb.DeviceID(mixed[1].GetAuthKey())); !errors.Is(err, directory.ErrUnknownDevice) {
		t.Fatalf("a refused device exists: %v", err)
	}
	again, err := d.RegisterBulk(ctx, []*pb.BulkDevice{bulkDevice(t, "renamed", 1002, 0), bulkDevice(t, "renamed2", 1004, 0)})
	if err != nil || again.Errors[0] != "" || again.Errors[1] != "" {
		t.Fatalf("registering refused devices again under new names: %v %v", again, err)
	}
}

// errText is the message of a sentinel error, as it appears in a bulk answer.
func errText(err error) string {
	return strings.SplitN(err.Error(), ":", 2)[0]
}

// Companions registered in bulk (load generators' multi-device accounts) join their account as
// linked devices: the account lists them after the primary, each can authenticate, and a taken
// name sends the chunk the slow way, which still registers the others with their companions.
func TestRegisterBulkCompanions(t *testing.T) {
	ctx := context.Background()
	b, _ := openBus(t, 1)
	d := directory.New(b, directory.Config{MaxDevices: 3})
	wctx, cancel := context.WithCancel(ctx)
	t.Cleanup(func() { cancel(); d.Wait() })
	if err := d.Start(wctx); err != nil {
		t.Fatal(err)
	}
	if _, err := d.RegisterBulk(ctx, []*pb.BulkDevice{bulkDevice(t, "taken", 1000, 0)}); err != nil {
		t.Fatal(err)
	}
	withComps := func(name string, seed, n int) *pb.BulkDevice {
		bd := bulkDevice(t, name, seed, 0)
		for j := range n {
			bd.Companions = append(bd.Companions, bulkDevice(t, "", seed*10+j+1, 2))
		}
		return bd
	}
	for _, round := range []struct {
		name string
		devs []*pb.BulkDevice
	}{
		{"batched", []*pb.BulkDevice{withComps("multi1", 1, 2), withComps("multi2", 2, 1), bulkDevice(t, "single1", 3, 0)}},
		{"one by one", []*pb.BulkDevice{withComps("multi3", 4, 2), withComps("taken", 5, 1)}},
	} {
		res, err := d.RegisterBulk(ctx, round.devs)
		if err != nil {
			t.Fatal(err)
		}
		for i, bd := range round.devs {
			if bd.GetName() == "taken" {
				if res.Errors[i] == "" {
					t.Fatalf("%s: a taken name was registered", round.name)
				}
				continue
			}
			if res.Errors[i] != "" {
				t.Fatalf("%s: %s: %s", round.name, bd.GetName(), res.Errors[i])
			}
			acc, err := d.Account(ctx, bd.GetName())
			if err != nil {
				t.Fatal(err)
			}
			want := []string{pb.DeviceID(bd.GetAuthKey())}
			for _, c := range bd.GetCompanions() {
				want = append(want, pb.DeviceID(c.GetAuthKey()))
			}
			if fmt.Sprint(acc.Devices) != fmt.Sprint(want) || acc.Primary() != want[0] {
				t.Fatalf("%s: account %s lists %v (primary %s), want %v", round.name, bd.GetName(), acc.Devices, acc.Primary(), want)
			}
			if len(bd.GetCompanions()) > 0 && fmt.Sprint(res.CompanionIds[i].GetDeviceIds()) != fmt.Sprint(want[1:]) {
				t.Fatalf("%s: companion ids %v, want %v", round.name, res.CompanionIds[i].GetDeviceIds(), want[1:])
			}
			for _, id := range want[1:] {
				dev, err := d.Device(ctx, id)
				if err != nil || dev.Name != bd.GetName() {
					t.Fatalf("%s: companion %s: %+v, %v", round.name, id, dev, err)
				}
			}
		}
	}
	// More companions than max_devices allows: refused, nothing registered.
	res, err := d.RegisterBulk(ctx, []*pb.BulkDevice{withComps("toomany", 9, 3)})
	if err != nil {
		t.Fatal(err)
	}
	if !strings.Contains(res.Errors[0], "max_devices") {
		t.Fatalf("4 devices with max_devices 3: error %q", res.Errors[0])
	}
	if _, err := d.Account(ctx, "toomany"); !errors.Is(err, directory.ErrUnknownUser) {
		t.Fatalf("refused account exists: %v", err)
	}
}
