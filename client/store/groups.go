// Copyright 2026 The Petrel Authors
// SPDX-License-Identifier: Apache-2.0

package store

import (
	"bytes"
	"encoding/binary"
	"encoding/json"
	"time"
)

// Groups (client/groups.go). Buckets, in addition to those of store.go:
//
//	groups:        group id → Group
//	group_names:   local name → group id
//	group_events:  group id || 0x00 || version (8) → PendingGroupEvent (received, not applied yet)
//	group_held:    seq (8) → HeldGroupItem (group content waiting for a sender key or the group)
//	sk_given:      group id || 0x00 || key id (4) || device → GivenKey (who holds this
//	               device's sender key, and the distribution it was given)
//	sk_recv:       group id || 0x00 || account || 0x00 || device || 0x00 || key id (4) →
//	               SenderKeyRecv (a member device's sender key, for decrypting)
//	group_outbox:  message id → group id (this device's group messages in the outbox, so a
//	               receipt, which names only the message, finds its entry)
var (
	bGroups      = []byte("groups")
	bGroupNames  = []byte("group_names")
	bGroupEvents = []byte("group_events")
	bGroupHeld   = []byte("group_held")
	bGiven       = []byte("sk_given")
	bReceivers   = []byte("sk_recv")
	bGroupOutbox = []byte("group_outbox")
)

func init() {
	allBuckets = append(allBuckets, bGroups, bGroupNames, bGroupEvents, bGroupHeld, bGiven, bReceivers, bGroupOutbox)
}

// GroupPrefix starts the outbox recipient (OutboxEntry.To) and the history peer of a group
// chat: "#" and the group id. No account name contains it.
const GroupPrefix = "#"

// GroupKey returns the outbox recipient and history peer of group id.
func GroupKey(id string) string { return GroupPrefix + id }

// GroupOf returns the group id of a GroupKey ("" for an account name).
func GroupOf(to string) string {
	if len(to) > len(GroupPrefix) && to[:len(GroupPrefix)] == GroupPrefix {
		return to[len(GroupPrefix):]
	}
	return ""
}

// KindControl is a pairwise control message (a sender-key distribution or request, a group's
// name); it leaves the outbox once the server acks it.
const KindControl OutboxKind = "control"

// Group is a group this account is (or was) a member of, as this device verified it.
type Group struct {
	ID string `json:"id"`
	// Name is the group's local name, unique among this device's groups; NameSet is set once it
	// came from a group_meta or was chosen on this device (else it is a placeholder).
	Name    string `json:"name"`
	NameSet bool   `json:"name_set,omitempty"`
	// Version, Members and Admins are the state after the last applied event (sorted).
	Version uint64   `json:"version"`
	Members []string `json:"members"`
	Admins  []string `json:"admins"`
	// Since is, for each of Members (same order), the version of the event that made it a member
	// (the last admin's LEAVE promotes the longest-standing member).
	Since []uint64 `json:"since,omitempty"`
	// LastEvent is the SignedGroupEvent (protobuf) that made Version.
	LastEvent []byte `json:"last_event,omitempty"`
	// Left is set once this account is no longer a member.
	Left      bool      `json:"left,omitempty"`
	CreatedAt time.Time `json:"created_at"`
	UpdatedAt time.Time `json:"updated_at"`
	// SenderKey is this device's sending key (e2ee.SenderKey.MarshalBinary), nil before the first
	// group message; SenderKeyID its key id. OldKeyIDs are earlier key ids whose distributions
	// may still be asked for (newest last, bounded).
	SenderKey   []byte   `json:"sender_key,omitempty"`
	SenderKeyID uint32   `json:"sender_key_id,omitempty"`
	OldKeyIDs   []uint32 `json:"old_key_ids,omitempty"`
}

// IsMember reports whether name is a member.
func (g *Group) IsMember(name string) bool { return contains(g.Members, name) }

// IsAdmin reports whether name is an admin.
func (g *Group) IsAdmin(name string) bool { return contains(g.Admins, name) }

func contains(list []string, s string) bool {
	for _, x := range list {
		if x == s {
			return true
		}
	}
	return false
}

// Group returns a group by id, or ErrNotFound.
func (t *Tx) Group(id string) (*Group, error) {
	var g Group
	ok, err := getJSON(t.b(bGroups), []byte(id), &g)
	if err != nil {
		return nil, err
	}
	if !ok {
		return nil, ErrNotFound
	}
	return &g, nil
}

// GroupByName returns the group with a local name, or ErrNotFound.
func (t *Tx) GroupByName(name string) (*Group, error) {
	id := t.b(bGroupNames).Get([]byte(name))
	if id == nil {
		return nil, ErrNotFound
	}
	return t.Group(string(id))
}

// GroupNameTaken reports whether a local name is in use by a group other than id.
func (t *Tx) GroupNameTaken(name, id string) bool {
	v := t.b(bGroupNames).Get([]byte(name))
	return v != nil && string(v) != id
}

// PutGroup stores a group and maintains the name index (the caller keeps names unique).
func (t *Tx) PutGroup(g *Group) error {
	old, err := t.Group(g.ID)
	if err == nil && old.Name != g.Name {
		if err := t.b(bGroupNames).Delete([]byte(old.Name)); err != nil {
			return err
		}
	} else if err != nil && err != ErrNotFound {
		return err
	}
	if err := t.b(bGroupNames).Put([]byte(g.Name), []byte(g.ID)); err != nil {
		return err
	}
	return putJSON(t.b(bGroups), []byte(g.ID), g)
}

// Groups returns every stored group, in name order.
func (t *Tx) Groups() ([]*Group, error) {
	var out []*Group
	err := t.b(bGroupNames).ForEach(func(_, id []byte) error {
		g, err := t.Group(string(id))
		if err != nil {
			return err
		}
		out = append(out, g)
		return nil
	})
	return out, err
}

// PendingGroupEvent is a received membership event not applied yet (its actor's devices must be
// fetched, or an earlier version is missing).
type PendingGroupEvent struct {
	Event      []byte    `json:"event"` // SignedGroupEvent, protobuf
	FromDevice string    `json:"from_device,omitempty"`
	ReceivedAt time.Time `json:"received_at"`
}

func versionKey(group string, v uint64) []byte {
	return binary.BigEndian.AppendUint64(append([]byte(group), 0), v)
}

// PutPendingGroupEvent keeps event version v of group.
func (t *Tx) PutPendingGroupEvent(group string, v uint64, p *PendingGroupEvent) error {
	return putJSON(t.b(bGroupEvents), versionKey(group, v), p)
}

// DeletePendingGroupEvent forgets a pending event.
func (t *Tx) DeletePendingGroupEvent(group string, v uint64) error {
	return t.b(bGroupEvents).Delete(versionKey(group, v))
}

// PendingGroupEvents returns up to limit pending events of group in version order.
func (t *Tx) PendingGroupEvents(group string, limit int) (versions []uint64, events []*PendingGroupEvent, err error) {
	prefix := append([]byte(group), 0)
	c := t.b(bGroupEvents).Cursor()
	for k, v := c.Seek(prefix); k != nil && bytes.HasPrefix(k, prefix) && len(events) < limit; k, v = c.Next() {
		var p PendingGroupEvent
		if err := json.Unmarshal(v, &p); err != nil {
			return nil, nil, err
		}
		versions = append(versions, binary.BigEndian.Uint64(k[len(prefix):]))
		events = append(events, &p)
	}
	return versions, events, nil
}

// PendingGroupIDs returns up to limit distinct groups with pending events.
func (t *Tx) PendingGroupIDs(limit int) []string {
	var out []string
	c := t.b(bGroupEvents).Cursor()
	for k, _ := c.First(); k != nil && len(out) < limit; {
		i := bytes.IndexByte(k, 0)
		if i < 0 {
			k, _ = c.Next()
			continue
		}
		id := string(k[:i])
		out = append(out, id)
		k, _ = c.Seek(append([]byte(id), 1)) // past every version of id
	}
	return out
}

// CountPendingGroupEvents returns how many events are pending in all.
func (t *Tx) CountPendingGroupEvents() int { return t.b(bGroupEvents).Stats().KeyN }

// HeldGroupItem is group content that could not be used yet: a group message whose sender key
// is unknown, or a distribution or group name for a group (or a sender) this device does not
// know as a member yet.
type HeldGroupItem struct {
	Seq   uint64 `json:"seq"`
	Kind  string `json:"kind"` // "message", "sender_key" or "meta"
	Group string `json:"group"`
	From  string `json:"from"`
	// FromDevice sent it; ID is the envelope's message id.
	FromDevice string    `json:"from_device"`
	ID         string    `json:"id"`
	KeyID      uint32    `json:"key_id,omitempty"`
	Data       []byte    `json:"data"` // the group ciphertext, the distribution, or the name
	ServerTime time.Time `json:"server_time,omitzero"`
	HeldAt     time.Time `json:"held_at"`
	// GroupVersion is a distribution's SenderKeyDistribution.group_version.
	GroupVersion uint64 `json:"group_version,omitempty"`
}

// AddHeld keeps an item, setting h.Seq.
func (t *Tx) AddHeld(h *HeldGroupItem) error {
	b := t.b(bGroupHeld)
	seq, err := b.NextSequence()
	if err != nil {
		return err
	}
	h.Seq = seq
	return putJSON(b, u64key(seq), h)
}

// DeleteHeld forgets a held item.
func (t *Tx) DeleteHeld(seq uint64) error { return t.b(bGroupHeld).Delete(u64key(seq)) }

// Held returns up to limit held items, oldest first.
func (t *Tx) Held(limit int) ([]*HeldGroupItem, error) {
	var out []*HeldGroupItem
	c := t.b(bGroupHeld).Cursor()
	for k, v := c.First(); k != nil && len(out) < limit; k, v = c.Next() {
		var h HeldGroupItem
		if err := json.Unmarshal(v, &h); err != nil {
			return nil, err
		}
		out = append(out, &h)
	}
	return out, nil
}

// CountHeld returns how many items are held.
func (t *Tx) CountHeld() int { return t.b(bGroupHeld).Stats().KeyN }

// GivenKey records that a device was given (or is owed) this device's sender key: the
// distribution it got, at the iteration it got it, which is what a request from it is answered
// with (never an earlier one: a member added later cannot read earlier messages).
type GivenKey struct {
	Account      string `json:"account"`
	Distribution []byte `json:"distribution"`
}

func givenPrefix(group string, keyID uint32) []byte {
	return binary.BigEndian.AppendUint32(append([]byte(group), 0), keyID)
}

// Given returns what device dev was given of key keyID in group, or ErrNotFound.
func (t *Tx) Given(group string, keyID uint32, dev string) (*GivenKey, error) {
	var g GivenKey
	ok, err := getJSON(t.b(bGiven), append(givenPrefix(group, keyID), dev...), &g)
	if err != nil {
		return nil, err
	}
	if !ok {
		return nil, ErrNotFound
	}
	return &g, nil
}

// PutGiven records a distribution given to device dev.
func (t *Tx) PutGiven(group string, keyID uint32, dev string, g *GivenKey) error {
	return putJSON(t.b(bGiven), append(givenPrefix(group, keyID), dev...), g)
}

// GivenDevices returns every device given key keyID in group, with its account.
func (t *Tx) GivenDevices(group string, keyID uint32) (map[string]string, error) {
	out := map[string]string{}
	prefix := givenPrefix(group, keyID)
	c := t.b(bGiven).Cursor()
	for k, v := c.Seek(prefix); k != nil && bytes.HasPrefix(k, prefix); k, v = c.Next() {
		var g GivenKey
		if err := json.Unmarshal(v, &g); err != nil {
			return nil, err
		}
		out[string(k[len(prefix):])] = g.Account
	}
	return out, nil
}

// DeleteGiven forgets who holds key keyID of group.
func (t *Tx) DeleteGiven(group string, keyID uint32) error {
	prefix := givenPrefix(group, keyID)
	b := t.b(bGiven)
	c := b.Cursor()
	for k, _ := c.Seek(prefix); k != nil && bytes.HasPrefix(k, prefix); k, _ = c.Seek(prefix) {
		if err := b.Delete(k); err != nil {
			return err
		}
	}
	return nil
}

// SenderKeyRecv is a member device's sender key (e2ee.SenderKeyReceiver.MarshalBinary).
type SenderKeyRecv struct {
	KeyID    uint32    `json:"key_id"`
	Receiver []byte    `json:"receiver"`
	Added    time.Time `json:"added"`
}

func recvPrefix(group, account, dev string) []byte {
	k := append([]byte(group), 0)
	k = append(k, account...)
	k = append(k, 0)
	k = append(k, dev...)
	return append(k, 0)
}

// SenderKeyReceivers returns the stored sender keys of device dev of account in group.
func (t *Tx) SenderKeyReceivers(group, account, dev string) ([]*SenderKeyRecv, error) {
	var out []*SenderKeyRecv
	prefix := recvPrefix(group, account, dev)
	c := t.b(bReceivers).Cursor()
	for k, v := c.Seek(prefix); k != nil && bytes.HasPrefix(k, prefix); k, v = c.Next() {
		var r SenderKeyRecv
		if err := json.Unmarshal(v, &r); err != nil {
			return nil, err
		}
		out = append(out, &r)
	}
	return out, nil
}

// PutSenderKeyReceiver stores a sender key of device dev of account in group.
func (t *Tx) PutSenderKeyReceiver(group, account, dev string, r *SenderKeyRecv) error {
	return putJSON(t.b(bReceivers), binary.BigEndian.AppendUint32(recvPrefix(group, account, dev), r.KeyID), r)
}

// DeleteSenderKeyReceiver forgets one sender key.
func (t *Tx) DeleteSenderKeyReceiver(group, account, dev string, keyID uint32) error {
	return t.b(bReceivers).Delete(binary.BigEndian.AppendUint32(recvPrefix(group, account, dev), keyID))
}

// DeleteSenderKeyReceivers forgets every sender key of account in group (a member that left).
func (t *Tx) DeleteSenderKeyReceivers(group, account string) error {
	prefix := append(append(append([]byte(group), 0), account...), 0)
	b := t.b(bReceivers)
	c := b.Cursor()
	for k, _ := c.Seek(prefix); k != nil && bytes.HasPrefix(k, prefix); k, _ = c.Seek(prefix) {
		if err := b.Delete(k); err != nil {
			return err
		}
	}
	return nil
}

// GroupOfOutbox returns the group of this device's group message id in the outbox ("" if none).
func (t *Tx) GroupOfOutbox(id string) string {
	return string(t.b(bGroupOutbox).Get([]byte(id)))
}

// indexGroupOutbox maintains group_outbox for an entry added (add) or deleted.
func (t *Tx) indexGroupOutbox(e *OutboxEntry, add bool) error {
	g := GroupOf(e.To)
	if g == "" || e.Kind != KindText {
		return nil
	}
	if add {
		return t.b(bGroupOutbox).Put([]byte(e.ID), []byte(g))
	}
	return t.b(bGroupOutbox).Delete([]byte(e.ID))
}

// GroupEventRecord is a membership change shown in a group's chat ("alice added carol").
type GroupEventRecord struct {
	Kind    string   `json:"kind"` // "create", "add", "remove", "leave", "promote"
	Actor   string   `json:"actor"`
	Targets []string `json:"targets,omitempty"`
	Version uint64   `json:"version"`
}
