// Copyright 2026 The Petrel Authors
// SPDX-License-Identifier: Apache-2.0

// Package store is the Petrel client's local state: one bbolt file (petrel.db, mode 0600) in a
// home directory (mode 0700) holding the account and its private keys, E2EE sessions, contacts,
// message history and the outbox.
//
// Only one process may open a home at a time: Open fails with ErrLocked when another holds it.
// All reads and writes go through View and Update transactions, so a batch of changes (a session
// advanced by a decryption, the decrypted message, the consumed prekey) commits atomically.
//
// The file holds private keys and plaintext: it is protected by file permissions only.
//
// Layout (bucket: key → value; integers big endian; values JSON unless noted):
//
//	meta:           "version" → "1"; "account" → Account
//	signed_prekeys: id (4) → SignedPreKey
//	onetime_prekeys: id (4) → private key bytes (e2ee encoding)
//	kem_prekeys:    id (4) → KEMPreKey
//	sessions:       name 0x00 device → e2ee.SessionRecord encoding
//	contacts:       name → Contact
//	history:        seq (8) → HistoryRecord
//	history_ids:    dir (1) || peer || 0x00 || message id → seq (8)
//	unseen:         seq (8) → empty (incoming messages not yet shown)
//	outbox:         seq (8) → OutboxEntry
//	outbox_ids:     to || 0x00 || message id → seq (8)
//	outbox_pending: seq (8) → empty (entries the server has not acked yet)
//	unverified:     seq (8) → empty (history records from an own device not yet in the verified
//	                device list; shown once the list names it)
//
// Groups have buckets of their own: see groups.go.
package store

import (
	"encoding/binary"
	"encoding/json"
	"errors"
	"fmt"
	"os"
	"path/filepath"
	"time"

	bolt "go.etcd.io/bbolt"
	bolterrors "go.etcd.io/bbolt/errors"
)

// FileName is the database file inside a home directory.
const FileName = "petrel.db"

const schemaVersion = "1"

var (
	bMeta          = []byte("meta")
	bSignedPreKeys = []byte("signed_prekeys")
	bOneTime       = []byte("onetime_prekeys")
	bKEM           = []byte("kem_prekeys")
	bSessions      = []byte("sessions")
	bContacts      = []byte("contacts")
	bHistory       = []byte("history")
	bHistoryIDs    = []byte("history_ids")
	bUnseen        = []byte("unseen")
	bOutbox        = []byte("outbox")
	bOutboxIDs     = []byte("outbox_ids")
	bOutboxPending = []byte("outbox_pending")
	bUnverified    = []byte("unverified")

	allBuckets = [][]byte{bMeta, bSignedPreKeys, bOneTime, bKEM, bSessions, bContacts, bHistory,
		bHistoryIDs, bUnseen, bOutbox, bOutboxIDs, bOutboxPending, bUnverified}

	kVersion = []byte("version")
	kAccount = []byte("account")
)

// ErrLocked reports a home directory that another process has open.
var ErrLocked = errors.New("another petrel process is using the home directory")

// ErrNoHome reports a home directory without a database (with Options.MustExist).
var ErrNoHome = errors.New("no petrel state in this home directory")

// ErrNotFound reports a missing record.
var ErrNotFound = errors.New("not found")

// Options tunes Open.
type Options struct {
	// LockTimeout is how long Open waits for another process to release the home. Default: 500ms.
	LockTimeout time.Duration
	// MustExist makes Open fail with ErrNoHome instead of creating a missing database.
	MustExist bool
	// NoSync skips fsync on commit. Only for tests and benchmarks: a crash may lose state (and
	// reuse E2EE message keys). Default: false.
	NoSync bool
}

// Store is an open home directory. It is safe for concurrent use.
type Store struct {
	db  *bolt.DB
	dir string
}

// Open creates dir (0700) if needed and opens its database (0600).
func Open(dir string, opts Options) (*Store, error) {
	if opts.LockTimeout <= 0 {
		opts.LockTimeout = 500 * time.Millisecond
	}
	path := filepath.Join(dir, FileName)
	if opts.MustExist {
		if _, err := os.Stat(path); errors.Is(err, os.ErrNotExist) {
			return nil, fmt.Errorf("%w: %s", ErrNoHome, dir)
		}
	}
	if err := os.MkdirAll(dir, 0o700); err != nil {
		return nil, fmt.Errorf("create home %s: %w", dir, err)
	}
	db, err := bolt.Open(path, 0o600, &bolt.Options{Timeout: opts.LockTimeout, NoSync: opts.NoSync})
	if err != nil {
		if errors.Is(err, bolterrors.ErrTimeout) {
			return nil, fmt.Errorf("%w: another petrel process is using %s", ErrLocked, dir)
		}
		return nil, fmt.Errorf("open %s: %w", path, err)
	}
	// An existing file keeps its mode; tighten it in case it was created loosely.
	_ = os.Chmod(path, 0o600)
	err = db.Update(func(tx *bolt.Tx) error {
		for _, name := range allBuckets {
			if _, err := tx.CreateBucketIfNotExists(name); err != nil {
				return err
			}
		}
		meta := tx.Bucket(bMeta)
		switch v := meta.Get(kVersion); {
		case v == nil:
			return meta.Put(kVersion, []byte(schemaVersion))
		case string(v) != schemaVersion:
			return fmt.Errorf("unsupported store version %q (this petrel knows %q)", v, schemaVersion)
		}
		return nil
	})
	if err != nil {
		db.Close()
		return nil, fmt.Errorf("open %s: %w", path, err)
	}
	return &Store{db: db, dir: dir}, nil
}

// Dir returns the home directory.
func (s *Store) Dir() string { return s.dir }

// Close closes the database and releases the home.
func (s *Store) Close() error { return s.db.Close() }

// Backup writes a consistent copy of the last committed state to a new file at path (mode 0600)
// while the store stays open: the database as a crash (kill -9) at this instant would leave it.
// path must not exist.
func (s *Store) Backup(path string) error {
	f, err := os.OpenFile(path, os.O_WRONLY|os.O_CREATE|os.O_EXCL, 0o600)
	if err != nil {
		return err
	}
	err = s.db.View(func(tx *bolt.Tx) error {
		_, err := tx.WriteTo(f)
		return err
	})
	if err == nil {
		err = f.Sync()
	}
	if cerr := f.Close(); err == nil {
		err = cerr
	}
	if err != nil {
		os.Remove(path)
		return fmt.Errorf("back up %s: %w", s.dir, err)
	}
	return nil
}

// View runs fn in a read-only transaction.
func (s *Store) View(fn func(tx *Tx) error) error {
	return s.db.View(func(btx *bolt.Tx) error { return fn(&Tx{tx: btx}) })
}

// Update runs fn in a read-write transaction, committed (and fsync'd) when fn returns nil and
// rolled back otherwise.
func (s *Store) Update(fn func(tx *Tx) error) error {
	return s.db.Update(func(btx *bolt.Tx) error { return fn(&Tx{tx: btx}) })
}

// Tx is a transaction. It must not be used after its View/Update function returns.
type Tx struct {
	tx *bolt.Tx
}

func (t *Tx) b(name []byte) *bolt.Bucket { return t.tx.Bucket(name) }

func getJSON(b *bolt.Bucket, key []byte, v any) (bool, error) {
	raw := b.Get(key)
	if raw == nil {
		return false, nil
	}
	if err := json.Unmarshal(raw, v); err != nil {
		return false, fmt.Errorf("decode stored record: %w", err)
	}
	return true, nil
}

func putJSON(b *bolt.Bucket, key []byte, v any) error {
	raw, err := json.Marshal(v)
	if err != nil {
		return err
	}
	return b.Put(key, raw)
}

func u32key(id uint32) []byte { return binary.BigEndian.AppendUint32(nil, id) }
func u64key(n uint64) []byte  { return binary.BigEndian.AppendUint64(nil, n) }

func pairKey(a, b string) []byte {
	k := make([]byte, 0, len(a)+1+len(b))
	k = append(k, a...)
	k = append(k, 0)
	return append(k, b...)
}

// Account is this device's identity and registration.
type Account struct {
	// ServerURL is the server's base URL (http://host:port or https://...): the first one
	// registration was given.
	ServerURL string `json:"server_url"`
	// Servers are the other URLs registration was given (the same service's other nodes).
	Servers []string `json:"servers,omitempty"`
	// LearnedServers are nodes' URLs the servers told the device (Welcome), kept for failover;
	// together with the configured ones at most 16.
	LearnedServers []string `json:"learned_servers,omitempty"`
	// Name is the account name; DeviceID is petrelv1.DeviceID(AuthKey public half).
	Name     string `json:"name"`
	DeviceID string `json:"device_id"`
	// AuthKey is the Ed25519 private key (64 bytes) used to answer connection challenges.
	AuthKey []byte `json:"auth_key"`
	// Identity is the e2ee identity key pair (IdentityKeyPair.MarshalBinary).
	Identity []byte `json:"identity"`
	// Registered is set once the server has welcomed the Register request.
	Registered   bool      `json:"registered"`
	RegisteredAt time.Time `json:"registered_at,omitzero"`
	// Next ids for generated prekeys (ids are never reused).
	NextSignedPreKeyID  uint32 `json:"next_signed_prekey_id"`
	NextOneTimePreKeyID uint32 `json:"next_onetime_prekey_id"`
	NextKEMPreKeyID     uint32 `json:"next_kem_prekey_id"`
	// MaxFrameBytes is the server's frame limit from the last Welcome (0: unknown).
	MaxFrameBytes uint32 `json:"max_frame_bytes,omitempty"`
	// Companion is set on a device linked to an existing account (petrel link); the device that
	// registered the account is its primary (Companion false) and signs its device list.
	Companion bool `json:"companion,omitempty"`
	// PrimaryIdentity is the identity key (e2ee IdentityKey.Bytes) of the account's primary
	// device, as the approval named it (a companion's trust anchor for its own device list).
	PrimaryIdentity []byte `json:"primary_identity,omitempty"`
	// DeviceList is the account's signed device list (SignedDeviceList, protobuf) as last
	// verified, nil before the first; DeviceListVersion its version, the highest seen.
	DeviceList        []byte `json:"device_list,omitempty"`
	DeviceListVersion uint64 `json:"device_list_version,omitempty"`
	// RecoveryKey is the account's recovery key as its user writes it down (e2ee.RecoveryKey
	// Text), kept on the primary device that registered or recovered the account; empty on a
	// companion and on accounts registered without one. It is as secret as the keys above.
	RecoveryKey string `json:"recovery_key,omitempty"`
}

// Account returns the account, or ErrNotFound.
func (t *Tx) Account() (*Account, error) {
	var a Account
	ok, err := getJSON(t.b(bMeta), kAccount, &a)
	if err != nil {
		return nil, err
	}
	if !ok {
		return nil, ErrNotFound
	}
	return &a, nil
}

// PutAccount stores the account.
func (t *Tx) PutAccount(a *Account) error { return putJSON(t.b(bMeta), kAccount, a) }

// ResetKeys deletes every stored prekey (used when a registration starts over).
func (t *Tx) ResetKeys() error {
	for _, name := range [][]byte{bSignedPreKeys, bOneTime, bKEM} {
		if err := t.tx.DeleteBucket(name); err != nil {
			return err
		}
		if _, err := t.tx.CreateBucket(name); err != nil {
			return err
		}
	}
	return nil
}

// SignedPreKey is a private signed prekey with its rotation times.
type SignedPreKey struct {
	ID        uint32    `json:"id"`
	Pair      []byte    `json:"pair"` // e2ee.SignedPreKeyPair.MarshalBinary
	CreatedAt time.Time `json:"created_at"`
	// RetiredAt is when a newer signed prekey replaced it (zero for the current one). Retired keys
	// are kept for a grace period so in-flight PreKey messages still decrypt.
	RetiredAt time.Time `json:"retired_at,omitzero"`
}

// SignedPreKey returns one signed prekey, or ErrNotFound.
func (t *Tx) SignedPreKey(id uint32) (*SignedPreKey, error) {
	var k SignedPreKey
	ok, err := getJSON(t.b(bSignedPreKeys), u32key(id), &k)
	if err != nil {
		return nil, err
	}
	if !ok {
		return nil, ErrNotFound
	}
	return &k, nil
}

// SignedPreKeys returns every stored signed prekey in id order.
func (t *Tx) SignedPreKeys() ([]*SignedPreKey, error) {
	var out []*SignedPreKey
	err := t.b(bSignedPreKeys).ForEach(func(_, v []byte) error {
		var k SignedPreKey
		if err := json.Unmarshal(v, &k); err != nil {
			return err
		}
		out = append(out, &k)
		return nil
	})
	return out, err
}

// PutSignedPreKey stores a signed prekey.
func (t *Tx) PutSignedPreKey(k *SignedPreKey) error {
	return putJSON(t.b(bSignedPreKeys), u32key(k.ID), k)
}

// DeleteSignedPreKey deletes a signed prekey.
func (t *Tx) DeleteSignedPreKey(id uint32) error { return t.b(bSignedPreKeys).Delete(u32key(id)) }

// OneTimePreKey returns a private one-time prekey (e2ee encoding), or ErrNotFound.
func (t *Tx) OneTimePreKey(id uint32) ([]byte, error) {
	v := t.b(bOneTime).Get(u32key(id))
	if v == nil {
		return nil, ErrNotFound
	}
	return append([]byte(nil), v...), nil
}

// PutOneTimePreKey stores a private one-time prekey.
func (t *Tx) PutOneTimePreKey(id uint32, pair []byte) error {
	return t.b(bOneTime).Put(u32key(id), pair)
}

// DeleteOneTimePreKey deletes a consumed one-time prekey.
func (t *Tx) DeleteOneTimePreKey(id uint32) error { return t.b(bOneTime).Delete(u32key(id)) }

// CountOneTimePreKeys returns how many private one-time prekeys are stored.
func (t *Tx) CountOneTimePreKeys() int { return t.b(bOneTime).Stats().KeyN }

// KEMPreKey is a private ML-KEM prekey, one-time or last-resort.
type KEMPreKey struct {
	ID         uint32    `json:"id"`
	Pair       []byte    `json:"pair"` // e2ee.KEMPreKeyPair.MarshalBinary
	LastResort bool      `json:"last_resort,omitempty"`
	CreatedAt  time.Time `json:"created_at"`
	// RetiredAt is set on a last-resort key once a newer one replaced it.
	RetiredAt time.Time `json:"retired_at,omitzero"`
}

// KEMPreKey returns one KEM prekey, or ErrNotFound.
func (t *Tx) KEMPreKey(id uint32) (*KEMPreKey, error) {
	var k KEMPreKey
	ok, err := getJSON(t.b(bKEM), u32key(id), &k)
	if err != nil {
		return nil, err
	}
	if !ok {
		return nil, ErrNotFound
	}
	return &k, nil
}

// LastResortKEMPreKeys returns the stored last-resort KEM prekeys in id order.
func (t *Tx) LastResortKEMPreKeys() ([]*KEMPreKey, error) {
	var out []*KEMPreKey
	err := t.b(bKEM).ForEach(func(_, v []byte) error {
		var k KEMPreKey
		if err := json.Unmarshal(v, &k); err != nil {
			return err
		}
		if k.LastResort {
			out = append(out, &k)
		}
		return nil
	})
	return out, err
}

// PutKEMPreKey stores a KEM prekey.
func (t *Tx) PutKEMPreKey(k *KEMPreKey) error { return putJSON(t.b(bKEM), u32key(k.ID), k) }

// DeleteKEMPreKey deletes a KEM prekey.
func (t *Tx) DeleteKEMPreKey(id uint32) error { return t.b(bKEM).Delete(u32key(id)) }

// SessionRecord returns the E2EE session record with (name, device) (e2ee.SessionRecord
// encoding: the active session and a few previous ones), or nil.
func (t *Tx) SessionRecord(name, device string) []byte {
	v := t.b(bSessions).Get(pairKey(name, device))
	if v == nil {
		return nil
	}
	return append([]byte(nil), v...)
}

// PutSessionRecord stores the session record with (name, device).
func (t *Tx) PutSessionRecord(name, device string, rec []byte) error {
	return t.b(bSessions).Put(pairKey(name, device), rec)
}

// DeleteSessionRecord deletes the session record with (name, device).
func (t *Tx) DeleteSessionRecord(name, device string) error {
	return t.b(bSessions).Delete(pairKey(name, device))
}

// Contact is what this device knows of another account (or of its own other devices).
type Contact struct {
	Name string `json:"name"`
	// Devices maps a device id to what is known of it.
	Devices map[string]*ContactDevice `json:"devices"`
	// DevicesKnown is set once the full device list has been learnt from the server (a bundle
	// fetch or a stale-devices answer), as opposed to devices seen only as senders.
	DevicesKnown bool      `json:"devices_known,omitempty"`
	UpdatedAt    time.Time `json:"updated_at"`
	// ListVersion is the highest version of the contact's signed device list accepted (0: none
	// seen, a single-device account of an old client); a lower one is refused (rollback).
	ListVersion uint64 `json:"list_version,omitempty"`
	// PrimaryIdentity is the identity key of the primary device that signed that list, trusted
	// on first use like any identity key.
	PrimaryIdentity []byte `json:"primary_identity,omitempty"`
	// DeviceList is that list (SignedDeviceList, protobuf) as verified: group events are checked
	// against it (the acting device must be listed).
	DeviceList []byte `json:"device_list,omitempty"`
}

// ContactDevice is one device of a contact.
type ContactDevice struct {
	// IdentityKey is the device's e2ee identity key (IdentityKey.Bytes), trusted on first use.
	IdentityKey []byte    `json:"identity_key"`
	FirstSeen   time.Time `json:"first_seen"`
}

// Contact returns a contact, or ErrNotFound.
func (t *Tx) Contact(name string) (*Contact, error) {
	var c Contact
	ok, err := getJSON(t.b(bContacts), []byte(name), &c)
	if err != nil {
		return nil, err
	}
	if !ok {
		return nil, ErrNotFound
	}
	if c.Devices == nil {
		c.Devices = map[string]*ContactDevice{}
	}
	return &c, nil
}

// PutContact stores a contact.
func (t *Tx) PutContact(c *Contact) error { return putJSON(t.b(bContacts), []byte(c.Name), c) }

// Direction says whether a history record was received or sent.
type Direction uint8

const (
	// Incoming is a message received from Peer.
	Incoming Direction = 1
	// Outgoing is a message sent to Peer.
	Outgoing Direction = 2
)

// Status is the delivery state of an outgoing message.
type Status string

const (
	StatusPending   Status = "pending"   // in the outbox, not yet acked by the server
	StatusSent      Status = "sent"      // acked by the server (stored or delivered live)
	StatusDelivered Status = "delivered" // every recipient device sent a delivery receipt
	StatusFailed    Status = "failed"    // refused for good (e.g. unknown user); not in the outbox
	StatusRead      Status = "read"      // a recipient device sent a read receipt (extras.go)
)

// HistoryRecord is one message received or sent.
type HistoryRecord struct {
	Seq        uint64    `json:"seq"`
	ID         string    `json:"id"`
	Dir        Direction `json:"dir"`
	Peer       string    `json:"peer"`
	PeerDevice string    `json:"peer_device,omitempty"`
	Body       string    `json:"body"`
	SentAt     time.Time `json:"sent_at"`
	// ServerTime is when the server accepted an incoming message.
	ServerTime time.Time `json:"server_time,omitzero"`
	ReceivedAt time.Time `json:"received_at,omitzero"`
	// Seen is set once an incoming message has been shown to the user.
	Seen   bool   `json:"seen,omitempty"`
	Status Status `json:"status,omitempty"`
	// Failure says why an outgoing message failed (no secrets).
	Failure string `json:"failure,omitempty"`
	// Synced marks an outgoing message this account sent from another of its devices (PeerDevice
	// names that device): it is shown like an incoming one (unseen until shown).
	Synced bool `json:"synced,omitempty"`
	// FromHistory marks a record received in a history transfer from another own device.
	FromHistory bool `json:"from_history,omitempty"`
	// Unverified marks a Synced record from a device this account's verified device list did not
	// name yet: it is kept out of sight (not unseen, not in History) until the list names the
	// device with SenderIdentity, its identity key, and deleted if it never does.
	Unverified     bool   `json:"unverified,omitempty"`
	SenderIdentity []byte `json:"sender_identity,omitempty"`
	// Group is the group id of a group message or membership change (Peer is then the sender,
	// or GroupKey(Group) for one sent from this device); GroupEvent is set on a membership change.
	Group      string            `json:"group,omitempty"`
	GroupEvent *GroupEventRecord `json:"group_event,omitempty"`

	// Disappearing messages (extras.go). ExpiresIn is the chat's timer when the message was sent
	// (0: none); ExpiresAt is when the record is deleted (zero until its countdown starts: when it
	// is sent, or when a received one is shown). Timer marks a record that is not a text but a
	// change of the chat's timer to TimerSet (0: off).
	ExpiresIn time.Duration `json:"expires_in,omitempty"`
	ExpiresAt time.Time     `json:"expires_at,omitzero"`
	Timer     bool          `json:"timer,omitempty"`
	TimerSet  time.Duration `json:"timer_set,omitempty"`

	// Group marks (client/groupmarks.go), on a group message this device sent: GroupMembers are
	// the other member accounts it was sent to, sorted (set at the server's ack; none beyond the
	// client's bound); bit i of GroupDelivered (GroupRead) is set once a device of
	// GroupMembers[i] sent a delivery (read) receipt. DeliveredBy and ReadBy name the accounts
	// whose receipts came before the ack (bounded); they are folded into the bitsets at the ack.
	// Delivered (read) once every member's bit is set.
	GroupMembers   []string `json:"group_members,omitempty"`
	GroupDelivered []byte   `json:"group_delivered,omitempty"`
	GroupRead      []byte   `json:"group_read,omitempty"`
	DeliveredBy    []string `json:"delivered_by,omitempty"`
	ReadBy         []string `json:"read_by,omitempty"`
}

// Shown reports whether the record is one the user is shown as it arrives: a received message,
// or one this account sent from another device (once verified).
func (r *HistoryRecord) Shown() bool { return (r.Dir == Incoming || r.Synced) && !r.Unverified }

func historyIDKey(dir Direction, peer, id string) []byte {
	return append([]byte{byte(dir)}, pairKey(peer, id)...)
}

// HistoryByID returns the record of message id exchanged with peer in direction dir, or
// ErrNotFound.
func (t *Tx) HistoryByID(dir Direction, peer, id string) (*HistoryRecord, error) {
	seq := t.b(bHistoryIDs).Get(historyIDKey(dir, peer, id))
	if seq == nil {
		return nil, ErrNotFound
	}
	var r HistoryRecord
	ok, err := getJSON(t.b(bHistory), seq, &r)
	if err != nil {
		return nil, err
	}
	if !ok {
		return nil, ErrNotFound
	}
	return &r, nil
}

// AddHistory appends a new record, setting r.Seq. Shown records (HistoryRecord.Shown) that are
// not Seen are indexed as unseen.
func (t *Tx) AddHistory(r *HistoryRecord) error {
	b := t.b(bHistory)
	seq, err := b.NextSequence()
	if err != nil {
		return err
	}
	r.Seq = seq
	if err := t.b(bHistoryIDs).Put(historyIDKey(r.Dir, r.Peer, r.ID), u64key(seq)); err != nil {
		return err
	}
	return t.PutHistory(r)
}

// PutHistory updates an existing record (by Seq), maintaining the unseen index.
func (t *Tx) PutHistory(r *HistoryRecord) error {
	if r.Seq == 0 {
		return errors.New("history record without seq")
	}
	if r.Shown() && !r.Seen {
		if err := t.b(bUnseen).Put(u64key(r.Seq), nil); err != nil {
			return err
		}
	} else if err := t.b(bUnseen).Delete(u64key(r.Seq)); err != nil {
		return err
	}
	if r.Unverified {
		if err := t.b(bUnverified).Put(u64key(r.Seq), nil); err != nil {
			return err
		}
	} else if err := t.b(bUnverified).Delete(u64key(r.Seq)); err != nil {
		return err
	}
	return putJSON(t.b(bHistory), u64key(r.Seq), r)
}

// History returns up to limit records with Seq > after, in order.
func (t *Tx) History(after uint64, limit int) ([]*HistoryRecord, error) {
	var out []*HistoryRecord
	c := t.b(bHistory).Cursor()
	for k, v := c.Seek(u64key(after + 1)); k != nil && len(out) < limit; k, v = c.Next() {
		var r HistoryRecord
		if err := json.Unmarshal(v, &r); err != nil {
			return nil, err
		}
		out = append(out, &r)
	}
	return out, nil
}

// DeleteHistory removes a record and its indexes.
func (t *Tx) DeleteHistory(r *HistoryRecord) error {
	for _, b := range [][]byte{bUnseen, bUnverified, bHistory} {
		if err := t.b(b).Delete(u64key(r.Seq)); err != nil {
			return err
		}
	}
	return t.b(bHistoryIDs).Delete(historyIDKey(r.Dir, r.Peer, r.ID))
}

// UnverifiedHistory returns up to limit records marked Unverified, oldest first.
func (t *Tx) UnverifiedHistory(limit int) ([]*HistoryRecord, error) {
	var out []*HistoryRecord
	c := t.b(bUnverified).Cursor()
	for k, _ := c.First(); k != nil && len(out) < limit; k, _ = c.Next() {
		var r HistoryRecord
		ok, err := getJSON(t.b(bHistory), k, &r)
		if err != nil {
			return nil, err
		}
		if ok {
			out = append(out, &r)
		}
	}
	return out, nil
}

// HistoryBefore returns up to limit records with Seq < before (0: from the newest), newest first.
func (t *Tx) HistoryBefore(before uint64, limit int) ([]*HistoryRecord, error) {
	var out []*HistoryRecord
	c := t.b(bHistory).Cursor()
	var k, v []byte
	if before == 0 {
		k, v = c.Last()
	} else {
		c.Seek(u64key(before))
		k, v = c.Prev()
	}
	for ; k != nil && len(out) < limit; k, v = c.Prev() {
		var r HistoryRecord
		if err := json.Unmarshal(v, &r); err != nil {
			return nil, err
		}
		out = append(out, &r)
	}
	return out, nil
}

// Unseen returns up to limit shown records (HistoryRecord.Shown) not yet shown, oldest first.
func (t *Tx) Unseen(limit int) ([]*HistoryRecord, error) { return t.UnseenAfter(0, limit) }

// UnseenAfter is Unseen from the record after seq on: pass the last Seq of a page to read the
// next one, so that a reader that leaves some records unseen (those of other conversations)
// still reaches every one.
func (t *Tx) UnseenAfter(seq uint64, limit int) ([]*HistoryRecord, error) {
	var out []*HistoryRecord
	c := t.b(bUnseen).Cursor()
	for k, _ := c.Seek(u64key(seq + 1)); k != nil && len(out) < limit; k, _ = c.Next() {
		var r HistoryRecord
		ok, err := getJSON(t.b(bHistory), k, &r)
		if err != nil {
			return nil, err
		}
		if ok {
			out = append(out, &r)
		}
	}
	return out, nil
}

// ClaimSeen marks the record seq as shown and reports whether it was not shown before (false for
// a record already seen, an outgoing one sent from this device, or none). Show a record only when ClaimSeen
// returned true in a committed transaction: whatever the crash point, it is then never shown twice.
func (t *Tx) ClaimSeen(seq uint64) (bool, error) {
	var r HistoryRecord
	ok, err := getJSON(t.b(bHistory), u64key(seq), &r)
	if err != nil || !ok || !r.Shown() || r.Seen {
		return false, err
	}
	r.Seen = true
	return true, t.PutHistory(&r)
}

// MarkSeen marks records as shown.
func (t *Tx) MarkSeen(seqs ...uint64) error {
	for _, seq := range seqs {
		var r HistoryRecord
		ok, err := getJSON(t.b(bHistory), u64key(seq), &r)
		if err != nil {
			return err
		}
		if !ok || r.Seen {
			continue
		}
		r.Seen = true
		if err := t.PutHistory(&r); err != nil {
			return err
		}
	}
	return nil
}

// OutboxKind says what an outbox entry carries.
type OutboxKind string

const (
	// KindText is a chat message; it stays until every recipient device has receipted it.
	KindText OutboxKind = "text"
	// KindReceipt is a delivery receipt; it leaves the outbox once the server acks it.
	KindReceipt OutboxKind = "receipt"
	// KindDevice is a message for one other device of this account (Device), such as a history
	// chunk; it leaves the outbox once the server acks it.
	KindDevice OutboxKind = "device"
)

// OutboxEntry is a message this device must get to every device of To (invariant 3).
type OutboxEntry struct {
	Seq  uint64     `json:"seq"`
	ID   string     `json:"id"`
	To   string     `json:"to"`
	Kind OutboxKind `json:"kind"`
	// Content is the serialised petrelv1.Content (plaintext: never log it).
	Content   []byte    `json:"content"`
	CreatedAt time.Time `json:"created_at"`
	// ServerAckedAt is when the server last acked a send of this entry; zero while pending.
	ServerAckedAt time.Time `json:"server_acked_at,omitzero"`
	// CheckedAt is when the server last confirmed the entry still queued (QueryQueued).
	CheckedAt time.Time `json:"checked_at,omitzero"`
	// Awaiting are the recipient devices whose delivery receipt is still missing (set on server ack).
	Awaiting []string `json:"awaiting,omitempty"`
	// Receipted are the devices that sent a delivery receipt.
	Receipted []string `json:"receipted,omitempty"`
	// Sends counts the server-acked sends of this entry (resends after loss included).
	Sends int `json:"sends,omitempty"`
	// Delivered is set once any recipient device receipted the entry (it stays until all did).
	Delivered bool `json:"delivered,omitempty"`
	// Device is the one device a KindDevice entry is for (To is this account's name).
	Device string `json:"device,omitempty"`
}

// Pending reports whether the server has not acked the entry yet.
func (e *OutboxEntry) Pending() bool { return e.ServerAckedAt.IsZero() }

// AddOutbox appends a new pending entry, setting e.Seq.
func (t *Tx) AddOutbox(e *OutboxEntry) error {
	b := t.b(bOutbox)
	seq, err := b.NextSequence()
	if err != nil {
		return err
	}
	e.Seq = seq
	if err := t.b(bOutboxIDs).Put(pairKey(e.To, e.ID), u64key(seq)); err != nil {
		return err
	}
	if err := t.indexGroupOutbox(e, true); err != nil {
		return err
	}
	return t.PutOutbox(e)
}

// PutOutbox updates an entry (by Seq), maintaining the pending index.
func (t *Tx) PutOutbox(e *OutboxEntry) error {
	if e.Seq == 0 {
		return errors.New("outbox entry without seq")
	}
	if e.Pending() {
		if err := t.b(bOutboxPending).Put(u64key(e.Seq), nil); err != nil {
			return err
		}
	} else if err := t.b(bOutboxPending).Delete(u64key(e.Seq)); err != nil {
		return err
	}
	return putJSON(t.b(bOutbox), u64key(e.Seq), e)
}

// DeleteOutbox removes an entry.
func (t *Tx) DeleteOutbox(e *OutboxEntry) error {
	if err := t.b(bOutboxIDs).Delete(pairKey(e.To, e.ID)); err != nil {
		return err
	}
	if err := t.b(bOutboxPending).Delete(u64key(e.Seq)); err != nil {
		return err
	}
	if err := t.indexGroupOutbox(e, false); err != nil {
		return err
	}
	return t.b(bOutbox).Delete(u64key(e.Seq))
}

// OutboxByID returns the entry for message id to recipient to, or ErrNotFound.
func (t *Tx) OutboxByID(to, id string) (*OutboxEntry, error) {
	seq := t.b(bOutboxIDs).Get(pairKey(to, id))
	if seq == nil {
		return nil, ErrNotFound
	}
	return t.outboxAt(seq)
}

func (t *Tx) outboxAt(seq []byte) (*OutboxEntry, error) {
	var e OutboxEntry
	ok, err := getJSON(t.b(bOutbox), seq, &e)
	if err != nil {
		return nil, err
	}
	if !ok {
		return nil, ErrNotFound
	}
	return &e, nil
}

// PendingOutbox returns up to limit entries not yet acked by the server, in send order.
func (t *Tx) PendingOutbox(limit int) ([]*OutboxEntry, error) {
	return t.PendingOutboxAfter(0, limit)
}

// PendingOutboxAfter returns up to limit entries not yet acked by the server with Seq > after,
// in send order.
func (t *Tx) PendingOutboxAfter(after uint64, limit int) ([]*OutboxEntry, error) {
	var out []*OutboxEntry
	c := t.b(bOutboxPending).Cursor()
	for k, _ := c.Seek(u64key(after + 1)); k != nil && len(out) < limit; k, _ = c.Next() {
		e, err := t.outboxAt(k)
		if errors.Is(err, ErrNotFound) {
			continue
		}
		if err != nil {
			return nil, err
		}
		out = append(out, e)
	}
	return out, nil
}

// Outbox returns up to limit entries with Seq > after, in order (pending or not).
func (t *Tx) Outbox(after uint64, limit int) ([]*OutboxEntry, error) {
	var out []*OutboxEntry
	c := t.b(bOutbox).Cursor()
	for k, v := c.Seek(u64key(after + 1)); k != nil && len(out) < limit; k, v = c.Next() {
		var e OutboxEntry
		if err := json.Unmarshal(v, &e); err != nil {
			return nil, err
		}
		out = append(out, &e)
	}
	return out, nil
}

// OutboxLen returns the number of outbox entries.
func (t *Tx) OutboxLen() int { return t.b(bOutbox).Stats().KeyN }
