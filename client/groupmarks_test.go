// Copyright 2026 The Petrel Authors
// SPDX-License-Identifier: Apache-2.0

package client

import (
	"encoding/json"
	"fmt"
	"slices"
	"testing"

	"github.com/petrelchat/petrel/client/store"
)

// bigMembers returns n sorted member names.
func bigMembers(n int) []string {
	out := make([]string, n)
	for i := range out {
		out[i] = fmt.Sprintf("member%04d", i)
	}
	slices.Sort(out)
	return out
}

// The marks of a message to 1,024 members: two bits per member, delivered and read only once
// every member is, receipts from others or repeated ones change nothing.
func TestMemberMarksAt1024(t *testing.T) {
	members := bigMembers(1024)
	m := &memberMarks{members: members}
	if m.allDelivered() || m.allRead() {
		t.Fatal("no receipts: delivered or read")
	}
	if m.mark("stranger", true) {
		t.Fatal("a receipt from a non-member changed the marks")
	}
	for i, a := range members[:len(members)-1] {
		if !m.mark(a, i%2 == 0) { // half by a read receipt (a read message is delivered too)
			t.Fatalf("receipt of %s changed nothing", a)
		}
	}
	if m.mark(members[0], true) || m.mark(members[1], false) {
		t.Fatal("a repeated receipt changed the marks")
	}
	if m.allDelivered() {
		t.Fatal("delivered with one member of 1024 missing")
	}
	last := members[len(members)-1]
	m.mark(last, false)
	if !m.allDelivered() || m.allRead() {
		t.Fatalf("every member delivered, half read: delivered %v read %v", m.allDelivered(), m.allRead())
	}
	for _, a := range members {
		m.mark(a, true)
	}
	if !m.allRead() {
		t.Fatal("every member read: not read")
	}
	if len(m.delivered) != 128 || len(m.read) != 128 {
		t.Fatalf("bitsets of %d and %d bytes for 1024 members, want 128", len(m.delivered), len(m.read))
	}
}

// Through the store: a record of a message to 1,024 members goes from sent to delivered to read
// with receipts from every member (early ones, before the ack, folded in), and its marks take
// 2 bits per member.
func TestGroupReceiptAt1024(t *testing.T) {
	st, err := store.Open(t.TempDir(), store.Options{NoSync: true})
	if err != nil {
		t.Fatal(err)
	}
	t.Cleanup(func() { st.Close() })
	c := &Client{}
	const gid = "g1"
	members := bigMembers(1024)
	rec := &store.HistoryRecord{Dir: store.Outgoing, Peer: store.GroupKey(gid), ID: "m1", Group: gid, Status: store.StatusPending}
	var events []Event
	receipt := func(from string, read bool) {
		t.Helper()
		if err := st.Update(func(tx *store.Tx) error {
			evs, err := c.groupReceipt(tx, gid, from, "m1", read)
			events = append(events, evs...)
			return err
		}); err != nil {
			t.Fatal(err)
		}
	}
	get := func() *store.HistoryRecord {
		t.Helper()
		var r *store.HistoryRecord
		if err := st.View(func(tx *store.Tx) (err error) {
			r, err = tx.HistoryByID(store.Outgoing, store.GroupKey(gid), "m1")
			return err
		}); err != nil {
			t.Fatal(err)
		}
		return r
	}
	if err := st.Update(func(tx *store.Tx) error { return tx.AddHistory(rec) }); err != nil {
		t.Fatal(err)
	}
	// Two receipts before the ack are kept by name.
	receipt(members[0], false)
	receipt(members[1], true)
	if r := get(); len(r.DeliveredBy) != 2 || len(r.ReadBy) != 1 {
		t.Fatalf("early receipts: delivered by %v, read by %v", r.DeliveredBy, r.ReadBy)
	}
	// The ack (as groupAcked records it).
	if err := st.Update(func(tx *store.Tx) error {
		r, err := tx.HistoryByID(store.Outgoing, store.GroupKey(gid), "m1")
		if err != nil {
			return err
		}
		r.Status, r.GroupMembers = store.StatusSent, members
		foldEarlyMarks(r)
		events = append(events, groupMarks(r)...)
		return tx.PutHistory(r)
	}); err != nil {
		t.Fatal(err)
	}
	for _, a := range members[2:] {
		receipt(a, false)
	}
	receipt("stranger", true)
	if len(events) != 1 {
		t.Fatalf("events after every member's delivery: %v, want one Delivered", events)
	}
	if d, ok := events[0].(*Delivered); !ok || d.MessageID != "m1" || d.Group != gid {
		t.Fatalf("got %+v, want group message delivered", events[0])
	}
	for _, a := range members[:len(members)-1] {
		receipt(a, true)
	}
	if r := get(); r.Status != store.StatusDelivered || len(events) != 1 {
		t.Fatalf("one read missing: %s, events %v", r.Status, events)
	}
	receipt(members[len(members)-1], true)
	r := get()
	if rd, ok := events[len(events)-1].(*Read); r.Status != store.StatusRead || !ok || rd.MessageID != "m1" {
		t.Fatalf("every member read: %s, events %v", r.Status, events)
	}
	if len(r.DeliveredBy) != 0 || len(r.ReadBy) != 0 {
		t.Fatalf("early lists kept after the ack: %v %v", r.DeliveredBy, r.ReadBy)
	}
	marks, err := json.Marshal(struct{ D, R []byte }{r.GroupDelivered, r.GroupRead})
	if err != nil {
		t.Fatal(err)
	}
	if len(marks) > 400 { // 2 × 128 bytes, base64
		t.Fatalf("marks of 1024 members take %d bytes of JSON", len(marks))
	}
}
