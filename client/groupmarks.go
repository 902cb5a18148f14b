// Copyright 2026 The Petrel Authors
// SPDX-License-Identifier: Apache-2.0

package client

import (
	"slices"

	"github.com/petrelchat/petrel/client/store"
)

// Group marks storage. A group message this device sent records, at the server's ack, the other
// member accounts it was sent to (store.HistoryRecord.GroupMembers, sorted) and two bitsets over
// that list (GroupDelivered, GroupRead): bit i is set once a device of GroupMembers[i] sent a
// DELIVERED (READ) receipt. That is one name and two bits per member per message, whatever the
// number of devices, for groups up to maxGroupMarkMembers (the largest group a server can be
// configured for). Receipts that arrive before the ack (the member list is not known yet) are
// kept by name in DeliveredBy and ReadBy, at most maxEarlyMarks each, and folded into the bitsets
// at the ack.

const (
	// maxGroupMarkMembers bounds the other members whose receipts a sent group message tracks
	// for its marks: the largest groups.max_group_members a server accepts. A message to a
	// larger group stays "sent".
	maxGroupMarkMembers = 2048
	// maxEarlyMarks bounds the accounts whose receipts are kept by name before the server's ack.
	maxEarlyMarks = 256
)

// memberMarks is the delivered and read bitsets of one group message over its sorted member
// list.
type memberMarks struct {
	members         []string
	delivered, read []byte
}

// marksOf returns r's marks (r.GroupMembers must be set).
func marksOf(r *store.HistoryRecord) *memberMarks {
	return &memberMarks{members: r.GroupMembers, delivered: r.GroupDelivered, read: r.GroupRead}
}

// store writes m's bitsets back to r.
func (m *memberMarks) store(r *store.HistoryRecord) {
	r.GroupDelivered, r.GroupRead = m.delivered, m.read
}

// index returns acct's position in the member list, or -1.
func (m *memberMarks) index(acct string) int {
	i, ok := slices.BinarySearch(m.members, acct)
	if !ok {
		return -1
	}
	return i
}

// mark records a delivery (read) receipt from a device of acct and reports whether anything
// changed (false for an account the message was not sent to, or one already marked).
func (m *memberMarks) mark(acct string, read bool) bool {
	i := m.index(acct)
	if i < 0 {
		return false
	}
	changed := setBit(&m.delivered, len(m.members), i)
	if read && setBit(&m.read, len(m.members), i) {
		changed = true
	}
	return changed
}

// allDelivered reports whether every member has sent a delivery or read receipt.
func (m *memberMarks) allDelivered() bool { return allSet(len(m.members), m.delivered, m.read) }

// allRead reports whether every member has sent a read receipt.
func (m *memberMarks) allRead() bool { return allSet(len(m.members), m.read) }

// setBit sets bit i of *bs (a bitset over n members, allocated on first use; a stored one of the
// wrong length is taken as empty) and reports whether it was clear.
func setBit(bs *[]byte, n, i int) bool {
	if len(*bs) != (n+7)/8 {
		*bs = make([]byte, (n+7)/8)
	}
	b, bit := i/8, byte(1)<<(i%8)
	if (*bs)[b]&bit != 0 {
		return false
	}
	(*bs)[b] |= bit
	return true
}

// allSet reports whether each of the n bits is set in at least one of sets.
func allSet(n int, sets ...[]byte) bool {
	if n == 0 {
		return false
	}
	for i := range n {
		b, bit := i/8, byte(1)<<(i%8)
		if !slices.ContainsFunc(sets, func(s []byte) bool { return len(s) > b && s[b]&bit != 0 }) {
			return false
		}
	}
	return true
}

// foldEarlyMarks moves the receipts r kept by name before its member list was known into its
// bitsets (r.GroupMembers must be set).
func foldEarlyMarks(r *store.HistoryRecord) {
	if len(r.DeliveredBy) == 0 && len(r.ReadBy) == 0 {
		return
	}
	m := marksOf(r)
	for _, a := range r.DeliveredBy {
		m.mark(a, false)
	}
	for _, a := range r.ReadBy {
		m.mark(a, true)
	}
	m.store(r)
	r.DeliveredBy, r.ReadBy = nil, nil
}
