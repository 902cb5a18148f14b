// Copyright 2026 The Petrel Authors
// SPDX-License-Identifier: Apache-2.0

package hostile

import (
	"fmt"
	"testing"

	"google.golang.org/protobuf/proto"

	"github.com/petrelchat/petrel/internal/testserver"
	pb "github.com/petrelchat/petrel/proto/petrel/v1"
)

// prekeysLeft is what the device of c has left, as UploadPrekeys (with nothing to add) reports.
func prekeysLeft(t *testing.T, c *testserver.RawClient) (otk, kem uint32) {
	t.Helper()
	r := c.Request(&pb.Frame{Body: &pb.Frame_UploadPrekeys{UploadPrekeys: &pb.UploadPreKeys{Keys: &pb.KeyBundleUpload{}}}})
	st := r.GetPrekeyStatus()
	if st == nil {
		t.Fatalf("prekey status: %v", r)
	}
	return st.GetOneTimePrekeysLeft(), st.GetKemPrekeysLeft()
}

// getBundle asks for name's bundle (device ids optional).
func getBundle(c *testserver.RawClient, name string, ids ...string) *pb.Frame {
	return c.Request(&pb.Frame{Body: &pb.Frame_GetBundle{GetBundle: &pb.GetBundle{Name: name, DeviceIds: ids}}})
}

// One GetBundle listing the victim's device 500 times claims one key of each kind, not 500.
func TestHostileBundleDuplicateDeviceIDs(t *testing.T) {
	s := testserver.Start(t)
	victim := testserver.Dial(t, s.URL())
	if r, _ := victim.Register("victim", 100); r.GetWelcome() == nil {
		t.Fatal(r)
	}
	attacker := testserver.Dial(t, s.URL())
	attacker.MustRegister("attacker")
	ids := make([]string, 500)
	for i := range ids {
		ids[i] = victim.DeviceID
	}
	r := getBundle(attacker, "victim", ids...)
	if r.GetBundleResult() == nil {
		t.Fatalf("the request is still answered: %v", r)
	}
	if n := len(r.GetBundleResult().GetDevices()); n > 1 {
		t.Fatalf("%d bundles for one device", n)
	}
	if otk, kem := prekeysLeft(t, victim); otk != 99 || kem != 99 {
		t.Fatalf("victim has %d EC and %d KEM one-time prekeys left after one request, want 99 and 99", otk, kem)
	}
}

// A requester that asks again — here 500 pipelined GetBundle frames — claims one key of each
// kind with the first; the others are answered without one-time prekeys.
func TestHostileBundleRepeatClaimsNothing(t *testing.T) {
	s := testserver.Start(t)
	victim := testserver.Dial(t, s.URL())
	victim.Register("victim", 100)
	attacker := testserver.Dial(t, s.URL())
	attacker.MustRegister("attacker")
	const n = 500
	for i := range n {
		b, _ := proto.Marshal(&pb.Frame{Id: uint64(1000 + i), Body: &pb.Frame_GetBundle{GetBundle: &pb.GetBundle{Name: "victim"}}})
		attacker.WriteRaw(b)
	}
	withKeys := 0
	for got := 0; got < n; {
		f := attacker.Read()
		if f.GetId() < 1000 {
			continue
		}
		got++
		db := f.GetBundleResult().GetDevices()
		if len(db) != 1 {
			t.Fatalf("answer %d: %v", f.GetId(), f.GetError())
		}
		if db[0].GetOneTimePrekey() != nil || !db[0].GetKemPrekey().GetLastResort() {
			withKeys++
		}
	}
	if withKeys != 1 {
		t.Fatalf("%d of %d repeated requests got one-time prekeys, want only the first", withKeys, n)
	}
	if otk, kem := prekeysLeft(t, victim); otk != 99 || kem != 99 {
		t.Fatalf("victim has %d and %d one-time prekeys left, want 99 and 99", otk, kem)
	}
}

// Many requesters together cannot drain one device's one-time prekeys beyond the per-target
// limit; every request is still answered (without one-time prekeys past the limit), and another
// user's keys are untouched and handed out as usual.
func TestHostileBundleFloodFromManyRequesters(t *testing.T) {
	s := testserver.Start(t)
	victim := testserver.Dial(t, s.URL())
	victim.Register("victim", 100)
	bystander := testserver.Dial(t, s.URL())
	bystander.Register("bystander", 10)
	const attackers, perAttacker = 40, 5
	for i := range attackers {
		a := testserver.Dial(t, s.URL())
		a.MustRegister(fmt.Sprintf("sybil%d", i))
		for j := range perAttacker {
			r := getBundle(a, "victim")
			if len(r.GetBundleResult().GetDevices()) != 1 {
				t.Fatalf("sybil %d request %d not answered with a bundle: %v", i, j, r.GetError())
			}
		}
		a.WS.CloseNow()
	}
	otk, kem := prekeysLeft(t, victim)
	// Default per-target limit: a burst of 20, then one a minute (the test runs well within one).
	if otk < 100-22 || kem < 100-22 {
		t.Fatalf("%d requesters drained the victim to %d EC and %d KEM one-time prekeys; the per-target limit allows about 20", attackers, otk, kem)
	}
	friend := testserver.Dial(t, s.URL())
	friend.MustRegister("friend")
	if r := getBundle(friend, "bystander"); r.GetBundleResult().GetDevices()[0].GetOneTimePrekey() == nil {
		t.Fatalf("a bystander's bundle lacks a one-time prekey during the flood: %v", r)
	}
}
