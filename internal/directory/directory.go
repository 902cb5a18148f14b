// Copyright 2026 The Petrel Authors
// SPDX-License-Identifier: Apache-2.0

// Package directory holds accounts, devices and their public keys: registration (open, invite-only
// or closed), device authentication (challenge–response on the device's Ed25519 auth key), and the
// prekey directory, where fetching a bundle claims exactly one one-time prekey per device, and
// linked devices: an account's primary device links companions (links.go) and signs the
// account's device list, which the directory checks against the account and hands out with
// bundles (devices.go).
//
// State lives in the bus: account and device records, and pending links, in key-value buckets,
// one-time prekeys as messages on prekeys.otk.<device> / prekeys.kem.<device>, claimed by
// get-then-delete (a failed delete means somebody else claimed that one: take the next).
package directory

import (
	"context"
	"crypto/ed25519"
	"crypto/rand"
	"encoding/base32"
	"encoding/hex"
	"encoding/json"
	"errors"
	"fmt"
	"log/slog"
	"strconv"
	"strings"
	"sync"
	"sync/atomic"
	"time"

	"github.com/nats-io/nats.go"
	"github.com/nats-io/nats.go/jetstream"
	"github.com/prometheus/client_golang/prometheus"
	"github.com/synadia-io/orbit.go/jetstreamext"
	"google.golang.org/protobuf/proto"

	"github.com/petrelchat/petrel/e2ee"
	"github.com/petrelchat/petrel/internal/bus"
	pb "github.com/petrelchat/petrel/proto/petrel/v1"
)

// Registration policies.
const (
	PolicyOpen   = "open"
	PolicyInvite = "invite"
	PolicyClosed = "closed"
)

// Errors callers branch on. The gateway maps them to wire codes.
var (
	ErrUnknownUser        = errors.New("unknown user")
	ErrUnknownDevice      = errors.New("unknown device")
	ErrAuthFailed         = errors.New("authentication failed")
	ErrNameTaken          = errors.New("name taken")
	ErrInvalidName        = errors.New("invalid name")
	ErrRegistrationClosed = errors.New("registration is closed")
	ErrInvalidInvite      = errors.New("invalid or used invite code")
	ErrInvalidKeys        = errors.New("invalid keys")
	ErrInvalidRequest     = errors.New("invalid request")
	ErrDeviceExists       = errors.New("device already registered")
	ErrUnavailable        = errors.New("directory unavailable")
	ErrTooManyPreKeys     = errors.New("too many prekeys")

	// Linked devices (devices.go, links.go).
	ErrLinkExpired       = errors.New("the link code is unknown, used or expired: start linking again on the new device")
	ErrTooManyDevices    = errors.New("the account has as many devices as allowed: remove one with petrel devices remove")
	ErrPermissionDenied  = errors.New("permission denied: only the primary device may change the account's devices")
	ErrInvalidDeviceList = errors.New("invalid signed device list")
	ErrStaleDeviceList   = errors.New("the signed device list does not match the account's devices: fetch them again, re-sign and retry")
)

// Limits on what one device may upload.
const (
	MaxPreKeysPerUpload = 200
	MaxPreKeysStored    = 1000
	maxClaimAttempts    = 64
)

// Defaults of Config's cache sizes (the server's account_cache_size and device_cache_size).
const (
	DefaultAccountCacheSize = 100_000
	DefaultDeviceCacheSize  = 200_000
)

// Config tunes the directory.
type Config struct {
	// Policy is the registration policy: "open", "invite" or "closed". Default: "open".
	Policy string
	// ReplenishBelow is the one-time prekey count under which clients are told to upload more. Default: 20.
	ReplenishBelow uint32
	// AccountCacheSize bounds the in-memory account cache (see Start). Default: 100,000.
	AccountCacheSize int
	// DeviceCacheSize bounds the in-memory cache of device auth keys that Authenticate reads (see
	// Start); an entry takes about 130 bytes (200,000: about 26 MB). Default: 200,000.
	DeviceCacheSize int

	// BundleCacheTTL is how long a requester that asks again for a device's bundle gets it
	// without one-time prekeys instead of claiming new ones. Default: 10m.
	BundleCacheTTL time.Duration
	// BundleCacheSize bounds the claims remembered for BundleCacheTTL (one per requester and
	// target device, about 64 bytes each: 200,000 are about 13 MB). Default: 200,000.
	BundleCacheSize int
	// ClaimRequesterBurst and ClaimRequesterPerMinute limit how many devices' one-time prekeys one
	// device may claim: a burst, then a rate. Over it GetBundle is refused (RATE_LIMITED).
	// Defaults: 100 and 10 a minute.
	ClaimRequesterBurst     float64
	ClaimRequesterPerMinute float64
	// ClaimPairBurst and ClaimPairPerMinute limit how often one device may claim one-time prekeys
	// of one other device (a repeat within BundleCacheTTL is not a claim). Over it GetBundle is
	// refused (RATE_LIMITED). Defaults: 6 and 0.1 a minute (Signal-Server's "prekeys" limiter).
	ClaimPairBurst     float64
	ClaimPairPerMinute float64
	// ClaimTargetBurst and ClaimTargetPerMinute limit how many of one device's one-time prekeys
	// all requesters together may claim. Over it bundles of that device carry no one-time prekey
	// (the signed and last-resort KEM prekeys only), as when it has none left. Defaults: 20 and
	// 1 a minute.
	ClaimTargetBurst     float64
	ClaimTargetPerMinute float64
	// ClaimLimiterKeys bounds the keys (devices, pairs) each claim limiter tracks. Default: 100,000.
	ClaimLimiterKeys int

	// MaxDevices is the most devices one account may have, its primary included (1-16: a signed
	// device list holds at most 16). Default: 5.
	MaxDevices int
	// LinkTTL is how long a started device link waits for its approval (1s to
	// bus.LinksMaxAge, 1h). Default: 5m.
	LinkTTL time.Duration

	Logger *slog.Logger
	// Registry receives the directory's metrics; nil registers none.
	Registry prometheus.Registerer
	// Now is the clock of the claim limits and the answer cache; nil means time.Now.
	Now func() time.Time
}

// Directory is the account and key directory.
type Directory struct {
	cfg     Config
	bus     *bus.Bus
	log     *slog.Logger
	metrics *metrics
	limits  *claimLimits
	answers *answerCache

	// Caches, nil until Start. Each is kept correct by a watch on its bucket.
	accounts *cache[string, *Account]
	auth     *cache[deviceKey, authEntry]
	watches  sync.WaitGroup // the watch goroutines started by Start

	seenMu      sync.Mutex       // guards seenWritten
	seenWritten map[string]int64 // device id → last-seen time this node wrote or read (Seen)

	// totalsDownUntil: until then (Unix ns) Status counts prekeys with direct gets, after a
	// stream-info request failed (0: it did not, or answered since).
	totalsDownUntil atomic.Int64
}

// New returns a directory over b. It does no I/O.
func New(b *bus.Bus, cfg Config) *Directory {
	if cfg.Policy == "" {
		cfg.Policy = PolicyOpen
	}
	if cfg.ReplenishBelow == 0 {
		cfg.ReplenishBelow = 20
	}
	if cfg.AccountCacheSize == 0 {
		cfg.AccountCacheSize = DefaultAccountCacheSize
	}
	if cfg.DeviceCacheSize == 0 {
		cfg.DeviceCacheSize = DefaultDeviceCacheSize
	}
	if cfg.Logger == nil {
		cfg.Logger = slog.Default()
	}
	cfg.setClaimDefaults()
	return &Directory{
		cfg: cfg, bus: b, log: cfg.Logger,
		metrics: newMetrics(cfg.Registry),
		limits:  newClaimLimits(&cfg),
		answers: &answerCache{ttl: cfg.BundleCacheTTL, max: cfg.BundleCacheSize, m: make(map[pairKey]int64)},
	}
}

// setClaimDefaults fills the unset claim limits.
func (c *Config) setClaimDefaults() {
	def := func(v *float64, d float64) {
		if *v == 0 {
			*v = d
		}
	}
	if c.BundleCacheTTL == 0 {
		c.BundleCacheTTL = DefaultBundleCacheTTL
	}
	if c.BundleCacheSize == 0 {
		c.BundleCacheSize = DefaultBundleCacheSize
	}
	def(&c.ClaimRequesterBurst, DefaultClaimRequesterBurst)
	def(&c.ClaimRequesterPerMinute, DefaultClaimRequesterPerMinute)
	def(&c.ClaimPairBurst, DefaultClaimPairBurst)
	def(&c.ClaimPairPerMinute, DefaultClaimPairPerMinute)
	def(&c.ClaimTargetBurst, DefaultClaimTargetBurst)
	def(&c.ClaimTargetPerMinute, DefaultClaimTargetPerMinute)
	if c.ClaimLimiterKeys == 0 {
		c.ClaimLimiterKeys = DefaultClaimLimiterKeys
	}
	if c.Now == nil {
		c.Now = time.Now
	}
	if c.MaxDevices == 0 {
		c.MaxDevices = DefaultMaxDevices
	}
	if c.LinkTTL == 0 {
		c.LinkTTL = DefaultLinkTTL
	}
}

// Validate reports every out-of-range setting of c (zero values mean their defaults).
func (c Config) Validate() error {
	var errs []error
	switch c.Policy {
	case "", PolicyOpen, PolicyInvite, PolicyClosed:
	default:
		errs = append(errs, fmt.Errorf("registration policy %q: want open, invite or closed", c.Policy))
	}
	if c.MaxDevices != 0 && (c.MaxDevices < 1 || c.MaxDevices > MaxListedDevices) {
		errs = append(errs, fmt.Errorf("max_devices %d: want 1..%d", c.MaxDevices, MaxListedDevices))
	}
	if c.LinkTTL != 0 && (c.LinkTTL < time.Second || c.LinkTTL > bus.LinksMaxAge) {
		errs = append(errs, fmt.Errorf("link_ttl %s: want 1s..%s", c.LinkTTL, bus.LinksMaxAge))
	}
	return errors.Join(errs...)
}

// ReplenishBelow is the configured prekey threshold.
func (d *Directory) ReplenishBelow() uint32 { return d.cfg.ReplenishBelow }

// Account is the stored record of one account. Records written before linked devices have only
// Name, Devices and Created, and load as an account whose primary is its first device, with no
// signed device list and no device details (see Primary and Info).
type Account struct {
	Name string `json:"name"`
	// Devices are the account's device ids, the primary first.
	Devices []string  `json:"devices"`
	Created time.Time `json:"created"`
	// PrimaryID is the primary device's id; empty in records from before linked devices (then
	// the first device is the primary: see Primary).
	PrimaryID string `json:"primary,omitempty"`
	// DeviceList is the device list the primary signed last; nil until it publishes one.
	DeviceList *StoredList `json:"device_list,omitempty"`
	// Details holds each device's name and times, by device id; a device may have none (a
	// device of an older record, not seen since).
	Details map[string]DeviceDetails `json:"device_details,omitempty"`
	// RecoveryVerifier is the Ed25519 public key derived from the account's recovery key
	// (e2ee.RecoveryKey.Verifier), nil when the account has none: Recover checks against it.
	RecoveryVerifier []byte `json:"recovery_verifier,omitempty"`
}

// StoredList is an account's signed device list as stored: the parts of a
// pb.SignedDeviceList, plus the list's version (read from it when it was verified).
type StoredList struct {
	List      []byte `json:"list"`
	Signature []byte `json:"signature"`
	Version   uint64 `json:"version"`
}

// DeviceDetails is what the account record keeps of a device besides its id.
type DeviceDetails struct {
	// Name is the name the primary gave a linked device (empty for the primary).
	Name string `json:"name,omitempty"`
	// LinkedMS is when the device joined the account, in Unix milliseconds; 0 for a device of a
	// record from before linked devices (then the account's creation: see Info).
	LinkedMS int64 `json:"linked_ms,omitempty"`
	// LastSeenMS is when the device last authenticated, in Unix milliseconds, written at most
	// once an hour (see Seen); 0 when not recorded.
	LastSeenMS int64 `json:"last_seen_ms,omitempty"`
}

// Primary is the id of the account's primary device.
func (a *Account) Primary() string {
	if a.PrimaryID != "" {
		return a.PrimaryID
	}
	if len(a.Devices) > 0 {
		return a.Devices[0]
	}
	return ""
}

// HasDevice reports whether id is one of the account's devices.
func (a *Account) HasDevice(id string) bool {
	for _, d := range a.Devices {
		if d == id {
			return true
		}
	}
	return false
}

// OtherDevices returns the account's devices except one (the sender of a Send: its other
// devices are the ones its own_envelopes must address), in the account's order.
func (a *Account) OtherDevices(except string) []string {
	out := make([]string, 0, len(a.Devices))
	for _, d := range a.Devices {
		if d != except {
			out = append(out, d)
		}
	}
	return out
}

// SignedDeviceList returns the stored signed device list, nil when the account has none. The
// message shares the record's bytes: do not modify it.
func (a *Account) SignedDeviceList() *pb.SignedDeviceList {
	if a.DeviceList == nil {
		return nil
	}
	return &pb.SignedDeviceList{List: a.DeviceList.List, Signature: a.DeviceList.Signature}
}

// listVersion is the stored list's version, 0 when there is none.
func (a *Account) listVersion() uint64 {
	if a.DeviceList == nil {
		return 0
	}
	return a.DeviceList.Version
}

// KEMKey is a stored ML-KEM prekey.
type KEMKey struct {
	ID        uint32 `json:"id"`
	PublicKey []byte `json:"public_key"`
	Signature []byte `json:"signature"`
}

// SignedKey is a stored signed EC prekey.
type SignedKey struct {
	ID        uint32    `json:"id"`
	PublicKey []byte    `json:"public_key"`
	Signature []byte    `json:"signature"`
	Created   time.Time `json:"created"`
}

// Device is the stored record of one device: only public keys.
type Device struct {
	ID            string    `json:"id"`
	Name          string    `json:"name"`
	AuthKey       []byte    `json:"auth_key"`
	IdentityKey   []byte    `json:"identity_key"`
	SignedPreKey  SignedKey `json:"signed_prekey"`
	LastResortKEM KEMKey    `json:"last_resort_kem"`
	Created       time.Time `json:"created"`
}

// Principal is an authenticated device: what a connection keeps about it.
type Principal struct {
	ID, Name            string
	SignedPreKeyCreated time.Time
}

// Principal returns what a connection of this device keeps about it.
func (dev *Device) Principal() Principal {
	return Principal{ID: dev.ID, Name: dev.Name, SignedPreKeyCreated: dev.SignedPreKey.Created}
}

// Register creates an account named req.Name whose first device is the one that signed nonce:
// CheckRegister, then CompleteRegister.
func (d *Directory) Register(ctx context.Context, req *pb.Register, nonce []byte) (*Device, error) {
	r, err := d.CheckRegister(ctx, req, nonce)
	if err != nil {
		return nil, err
	}
	return d.CompleteRegister(ctx, r)
}

// Registration is a registration that CheckRegister found valid, for CompleteRegister.
type Registration struct {
	dev       *Device
	keys      *pb.KeyBundleUpload
	invite    string
	inviteRev uint64 // the invite's revision when checked: only that one is spent
	inviteRec []byte // the invite's record, stored again if the registration fails
	verifier  []byte // the account's recovery verifier (nil: none)
}

// Name is the account name being registered.
func (r *Registration) Name() string { return r.dev.Name }

// CheckRegister does every check of a registration that writes nothing, cheapest first: the
// policy, the name's syntax, the keys and their signatures, the proof of possession of the auth
// key over nonce; then, reading the buckets, that the name is free, the device new and the invite
// (under the invite policy) valid. A registration that passes succeeds in CompleteRegister unless
// a concurrent one takes the same name, device or invite first. Callers spend shared budgets
// (the node's registration rate) only on registrations that pass.
func (d *Directory) CheckRegister(ctx context.Context, req *pb.Register, nonce []byte) (*Registration, error) {
	r, err := d.checkRegister(ctx, req, nonce)
	if err != nil {
		d.metrics.registerRefused.WithLabelValues(refusalReason(err)).Inc()
	}
	return r, err
}

func (d *Directory) checkRegister(ctx context.Context, req *pb.Register, nonce []byte) (*Registration, error) {
	switch d.cfg.Policy {
	case PolicyOpen:
	case PolicyInvite:
		if code := req.GetInvite(); code == "" || len(code) > maxInviteLen {
			return nil, ErrInvalidInvite
		}
	default:
		return nil, ErrRegistrationClosed
	}
	if !pb.ValidName(req.GetName()) {
		return nil, fmt.Errorf("%w: use 1-32 of a-z 0-9 _ . - starting with a letter or digit", ErrInvalidName)
	}
	authKey := req.GetAuthKey()
	if len(authKey) != ed25519.PublicKeySize {
		return nil, fmt.Errorf("%w: auth key must be %d bytes", ErrInvalidKeys, ed25519.PublicKeySize)
	}
	if req.GetKeys() == nil || req.GetKeys().GetSignedPrekey() == nil || req.GetKeys().GetLastResortKemPrekey() == nil {
		return nil, fmt.Errorf("%w: identity key, signed prekey and last-resort KEM prekey are required", ErrInvalidKeys)
	}
	deviceID := pb.DeviceID(authKey)
	if !ed25519.Verify(authKey, pb.AuthPayload(nonce, deviceID), req.GetSignature()) {
		return nil, fmt.Errorf("%w: signature does not verify", ErrAuthFailed)
	}
	dev, err := newDevice(req.GetName(), authKey, req.GetKeys(), time.Now().UTC())
	if err != nil {
		return nil, err
	}
	// Reads: the name, the device, the invite. A "not found" here is not confirmed with the
	// leader (see getConfirmed): the creates in CompleteRegister refuse a taken name or key
	// themselves, and most registrations find neither.
	switch _, err := d.account(ctx, dev.Name, precheck); {
	case err == nil:
		return nil, ErrNameTaken
	case !errors.Is(err, ErrUnknownUser):
		return nil, err
	}
	k, _ := parseDeviceKey(deviceID)
	switch _, err := d.authEntry(ctx, deviceID, k, precheck); {
	case err == nil:
		return nil, ErrDeviceExists
	case !errors.Is(err, ErrUnknownDevice):
		return nil, err
	}
	verifier := req.GetRecoveryVerifier()
	if len(verifier) != 0 && len(verifier) != ed25519.PublicKeySize {
		return nil, fmt.Errorf("%w: recovery verifier must be %d bytes", ErrInvalidKeys, ed25519.PublicKeySize)
	}
	r := &Registration{dev: dev, keys: req.GetKeys(), verifier: verifier}
	if d.cfg.Policy == PolicyInvite {
		if r.inviteRev, r.inviteRec, err = d.checkInvite(ctx, req.GetInvite()); err != nil {
			return nil, err
		}
		r.invite = req.GetInvite()
	}
	return r, nil
}

// CompleteRegister writes a registration that CheckRegister passed: it spends the invite (under
// the invite policy), then creates the device and account records and stores the one-time
// prekeys. When the records cannot be created (a concurrent registration took the name or the
// device, or the store failed) the invite is given back.
func (d *Directory) CompleteRegister(ctx context.Context, r *Registration) (*Device, error) {
	if r.invite != "" {
		if err := d.bus.Invites.Purge(ctx, r.invite, jetstream.LastRevision(r.inviteRev)); err != nil {
			d.metrics.registerRefused.WithLabelValues("invalid_invite").Inc()
			return nil, ErrInvalidInvite // spent by a concurrent registration
		}
	}
	dev, err := d.create(ctx, r.dev, r.keys, r.verifier)
	if err != nil {
		d.metrics.registerRefused.WithLabelValues(refusalReason(err)).Inc()
		if r.invite != "" {
			d.returnInvite(ctx, r.invite, r.inviteRec)
		}
		return nil, err
	}
	return dev, nil
}

// refusalReason is the metric label of a registration error.
func refusalReason(err error) string {
	switch {
	case errors.Is(err, ErrRegistrationClosed):
		return "closed"
	case errors.Is(err, ErrInvalidInvite):
		return "invalid_invite"
	case errors.Is(err, ErrInvalidName):
		return "invalid_name"
	case errors.Is(err, ErrInvalidKeys):
		return "invalid_keys"
	case errors.Is(err, ErrAuthFailed):
		return "auth_failed"
	case errors.Is(err, ErrNameTaken):
		return "name_taken"
	case errors.Is(err, ErrDeviceExists):
		return "device_exists"
	default:
		return "unavailable"
	}
}

// newDevice checks a registration and builds its device record.
func newDevice(name string, authKey []byte, keys *pb.KeyBundleUpload, now time.Time) (*Device, error) {
	if !pb.ValidName(name) {
		return nil, fmt.Errorf("%w: use 1-32 of a-z 0-9 _ . - starting with a letter or digit", ErrInvalidName)
	}
	if len(authKey) != ed25519.PublicKeySize {
		return nil, fmt.Errorf("%w: auth key must be %d bytes", ErrInvalidKeys, ed25519.PublicKeySize)
	}
	dev, err := verifyInitialKeys(keys)
	if err != nil {
		return nil, err
	}
	dev.ID, dev.Name, dev.AuthKey, dev.Created = pb.DeviceID(authKey), name, authKey, now
	dev.SignedPreKey.Created = now
	return dev, nil
}

// create writes a checked device's records, then its one-time prekeys.
func (d *Directory) create(ctx context.Context, dev *Device, keys *pb.KeyBundleUpload, verifier []byte) (*Device, error) {
	deviceID, name := dev.ID, dev.Name
	devJSON, _ := json.Marshal(dev)
	if _, err := d.bus.Devices.Create(ctx, deviceID, devJSON); err != nil {
		if errors.Is(err, jetstream.ErrKeyExists) {
			return nil, ErrDeviceExists
		}
		return nil, fmt.Errorf("%w: create device: %v", ErrUnavailable, err)
	}
	if _, err := d.bus.Accounts.Create(ctx, name, newAccountJSON(dev, verifier)); err != nil {
		d.undoDevice(ctx, deviceID) // so the key can register again under another name
		if errors.Is(err, jetstream.ErrKeyExists) {
			return nil, ErrNameTaken
		}
		return nil, fmt.Errorf("%w: create account: %v", ErrUnavailable, err)
	}
	d.addInitialPreKeys(ctx, dev, keys)
	return dev, nil
}

// newAccountJSON is the account record a registration creates: the name, with dev its one device
// and verifier its recovery verifier (nil: none).
func newAccountJSON(dev *Device, verifier []byte) []byte {
	b, _ := json.Marshal(&Account{Name: dev.Name, Devices: []string{dev.ID}, Created: dev.Created, RecoveryVerifier: verifier})
	return b
}

// undoDevice removes a device record whose account could not be created.
func (d *Directory) undoDevice(ctx context.Context, deviceID string) {
	if err := d.bus.Devices.Purge(ctx, deviceID); err != nil {
		d.log.Warn("undo device after failed account create", "device", deviceID, "err", err)
	}
}

// addInitialPreKeys stores a new device's one-time prekeys. A failure is logged, not returned: the
// account exists, and the client uploads prekeys again after connecting.
func (d *Directory) addInitialPreKeys(ctx context.Context, dev *Device, keys *pb.KeyBundleUpload) {
	if err := d.addPreKeys(ctx, dev, keys); err != nil {
		d.log.Warn("store prekeys at registration", "device", dev.ID, "err", err)
	}
}

// verifyInitialKeys checks the identity, signed prekey and last-resort KEM prekey of a registration.
func verifyInitialKeys(keys *pb.KeyBundleUpload) (*Device, error) {
	if keys == nil || keys.GetSignedPrekey() == nil || keys.GetLastResortKemPrekey() == nil {
		return nil, fmt.Errorf("%w: identity key, signed prekey and last-resort KEM prekey are required", ErrInvalidKeys)
	}
	ik, err := e2ee.ParseIdentityKey(keys.GetIdentityKey())
	if err != nil {
		return nil, fmt.Errorf("%w: identity key: %v", ErrInvalidKeys, err)
	}
	dev := &Device{IdentityKey: ik.Bytes()}
	spk := keys.GetSignedPrekey()
	if err := e2ee.VerifySignedPreKey(ik, e2ee.SignedPreKey{ID: spk.GetId(), PublicKey: spk.GetPublicKey(), Signature: spk.GetSignature()}); err != nil {
		return nil, fmt.Errorf("%w: signed prekey: %v", ErrInvalidKeys, err)
	}
	dev.SignedPreKey = SignedKey{ID: spk.GetId(), PublicKey: spk.GetPublicKey(), Signature: spk.GetSignature()}
	lr := keys.GetLastResortKemPrekey()
	if err := e2ee.VerifyKEMPreKey(ik, e2ee.KEMPreKey{ID: lr.GetId(), PublicKey: lr.GetPublicKey(), Signature: lr.GetSignature(), LastResort: true}); err != nil {
		return nil, fmt.Errorf("%w: last-resort KEM prekey: %v", ErrInvalidKeys, err)
	}
	dev.LastResortKEM = KEMKey{ID: lr.GetId(), PublicKey: lr.GetPublicKey(), Signature: lr.GetSignature()}
	return dev, nil
}

// addPreKeys verifies and stores one-time prekeys (EC and KEM) in one atomic batch per kind.
func (d *Directory) addPreKeys(ctx context.Context, dev *Device, keys *pb.KeyBundleUpload) error {
	otks, kems, err := preKeyMsgs(dev, keys)
	if err != nil {
		return err
	}
	if len(otks)+len(kems) == 0 {
		return nil
	}
	// Both kinds are checked before either is stored. Without counts the upload goes on: the
	// stream's per-subject limit still refuses keys past the cap.
	if otk, kem, err := d.preKeyCounts(ctx, dev.ID); err == nil && (otk+len(otks) > MaxPreKeysStored || kem+len(kems) > MaxPreKeysStored) {
		return fmt.Errorf("%w: a device may hold at most %d unclaimed prekeys of each kind", ErrTooManyPreKeys, MaxPreKeysStored)
	}
	for _, batch := range [][]*nats.Msg{otks, kems} {
		if len(batch) == 0 {
			continue
		}
		if err := d.publishPreKeys(ctx, batch, 100); err != nil {
			return err
		}
	}
	return nil
}

// preKeyMsgs verifies one upload's one-time prekeys and returns their messages, EC and KEM.
func preKeyMsgs(dev *Device, keys *pb.KeyBundleUpload) (otks, kems []*nats.Msg, err error) {
	if len(keys.GetOneTimePrekeys()) > MaxPreKeysPerUpload || len(keys.GetKemPrekeys()) > MaxPreKeysPerUpload {
		return nil, nil, fmt.Errorf("%w: at most %d of each kind per upload", ErrTooManyPreKeys, MaxPreKeysPerUpload)
	}
	if len(keys.GetOneTimePrekeys())+len(keys.GetKemPrekeys()) == 0 {
		return nil, nil, nil
	}
	ik, err := e2ee.ParseIdentityKey(dev.IdentityKey)
	if err != nil {
		return nil, nil, fmt.Errorf("%w: stored identity key: %v", ErrInvalidKeys, err)
	}
	for _, k := range keys.GetOneTimePrekeys() {
		if len(k.GetPublicKey()) == 0 || len(k.GetPublicKey()) > 64 {
			return nil, nil, fmt.Errorf("%w: one-time prekey %d has a bad length", ErrInvalidKeys, k.GetId())
		}
		b, _ := proto.Marshal(k)
		otks = append(otks, &nats.Msg{Subject: bus.OneTimePreKeySubject(dev.ID), Data: b, Header: nats.Header{}})
	}
	for _, k := range keys.GetKemPrekeys() {
		if k.GetLastResort() {
			return nil, nil, fmt.Errorf("%w: a one-time KEM prekey is marked last-resort", ErrInvalidKeys)
		}
		if err := e2ee.VerifyKEMPreKey(ik, e2ee.KEMPreKey{ID: k.GetId(), PublicKey: k.GetPublicKey(), Signature: k.GetSignature()}); err != nil {
			return nil, nil, fmt.Errorf("%w: KEM prekey %d: %v", ErrInvalidKeys, k.GetId(), err)
		}
		b, _ := proto.Marshal(k)
		kems = append(kems, &nats.Msg{Subject: bus.KEMPreKeySubject(dev.ID), Data: b, Header: nats.Header{}})
	}
	return otks, kems, nil
}

// publishPreKeys stores prekey messages in atomic batches of at most per messages and about
// preKeyBatchBytes (a batch is one replicated entry in a cluster).
func (d *Directory) publishPreKeys(ctx context.Context, msgs []*nats.Msg, per int) error {
	for len(msgs) > 0 {
		n, size := 0, 0
		for n < len(msgs) && n < per && (n == 0 || size+len(msgs[n].Data) <= preKeyBatchBytes) {
			size += len(msgs[n].Data)
			n++
		}
		if _, err := jetstreamext.PublishMsgBatch(ctx, d.bus.JS(), msgs[:n]); err != nil {
			return fmt.Errorf("%w: store prekeys: %v", ErrUnavailable, err)
		}
		msgs = msgs[n:]
	}
	return nil
}

// addBulkPreKeys stores the one-time prekeys of new devices registered together, in atomic
// batches of up to preKeyBatch messages that mix devices: one fsync for many devices instead of
// two per device. A new device holds no prekeys yet, and one upload is within MaxPreKeysStored,
// so there is no count to check. As for one registration, a failure is logged, not returned.
func (d *Directory) addBulkPreKeys(ctx context.Context, devs []*Device, keys []*pb.KeyBundleUpload) {
	var msgs []*nats.Msg
	for i, dev := range devs {
		otks, kems, err := preKeyMsgs(dev, keys[i])
		if err != nil {
			d.log.Warn("store prekeys at registration", "device", dev.ID, "err", err)
			continue
		}
		msgs = append(append(msgs, otks...), kems...)
	}
	if err := d.publishPreKeys(ctx, msgs, preKeyBatch); err != nil {
		d.log.Warn("store prekeys at bulk registration", "devices", len(devs), "err", err)
	}
}

// preKeyBatch is the most prekey messages written in one atomic batch (nats-server allows 1,000),
// and preKeyBatchBytes about the most bytes (200 ML-KEM prekeys of about 1.3 KB each).
const (
	preKeyBatch      = 1000
	preKeyBatchBytes = 256 << 10
)

// UploadPreKeys adds one-time prekeys and optionally rotates the signed and last-resort prekeys.
func (d *Directory) UploadPreKeys(ctx context.Context, deviceID string, keys *pb.KeyBundleUpload) (*pb.PreKeyStatus, error) {
	if keys == nil {
		return nil, fmt.Errorf("%w: keys missing", ErrInvalidRequest)
	}
	dev, rev, err := d.device(ctx, deviceID)
	if err != nil {
		return nil, err
	}
	if len(keys.GetIdentityKey()) > 0 && string(keys.GetIdentityKey()) != string(dev.IdentityKey) {
		return nil, fmt.Errorf("%w: the identity key of a device cannot change", ErrInvalidKeys)
	}
	ik, err := e2ee.ParseIdentityKey(dev.IdentityKey)
	if err != nil {
		return nil, fmt.Errorf("%w: stored identity key: %v", ErrInvalidKeys, err)
	}
	changed := false
	if spk := keys.GetSignedPrekey(); spk != nil {
		if err := e2ee.VerifySignedPreKey(ik, e2ee.SignedPreKey{ID: spk.GetId(), PublicKey: spk.GetPublicKey(), Signature: spk.GetSignature()}); err != nil {
			return nil, fmt.Errorf("%w: signed prekey: %v", ErrInvalidKeys, err)
		}
		dev.SignedPreKey = SignedKey{ID: spk.GetId(), PublicKey: spk.GetPublicKey(), Signature: spk.GetSignature(), Created: time.Now().UTC()}
		changed = true
	}
	if lr := keys.GetLastResortKemPrekey(); lr != nil {
		if err := e2ee.VerifyKEMPreKey(ik, e2ee.KEMPreKey{ID: lr.GetId(), PublicKey: lr.GetPublicKey(), Signature: lr.GetSignature(), LastResort: true}); err != nil {
			return nil, fmt.Errorf("%w: last-resort KEM prekey: %v", ErrInvalidKeys, err)
		}
		dev.LastResortKEM = KEMKey{ID: lr.GetId(), PublicKey: lr.GetPublicKey(), Signature: lr.GetSignature()}
		changed = true
	}
	if changed {
		b, _ := json.Marshal(dev)
		if _, err := d.bus.Devices.Update(ctx, deviceID, b, rev); err != nil {
			return nil, fmt.Errorf("%w: update device: %v", ErrUnavailable, err)
		}
	}
	if err := d.addPreKeys(ctx, dev, keys); err != nil {
		return nil, err
	}
	return d.Status(ctx, dev.Principal())
}

// Status reports how many one-time prekeys (EC and KEM) device p has left. It asks the PREKEYS
// stream for the totals of the device's two subjects in one stream-info request (preKeyCounts),
// which the server answers from its subject index without loading a message. Counting with direct gets
// (count) loads the block of the stream file that holds the device's first key instead (up to
// 4 MB, kept in memory ~10 s): with real devices' keys (100 of each kind) that costs ~1.1 ms of
// CPU per connect and hundreds of MB of server heap in a reconnect storm, against ~0.08 ms and
// nothing (BenchmarkStatus, cold). Only the stream's leader answers a stream-info request (and
// replicas that count the stream leaderless): when none answers within prekeyTotalsTimeout (a
// leader lost, its followers not yet aware) or the answer is an error, the counts come from
// direct gets, which any replica answers, and so do the next prekeyTotalsBackoff's
// (petrel_directory_prekey_counts_direct_total), so connects go on.
func (d *Directory) Status(ctx context.Context, p Principal) (*pb.PreKeyStatus, error) {
	if !pb.ValidDeviceID(p.ID) {
		return nil, fmt.Errorf("%w: malformed device id", ErrInvalidRequest)
	}
	otk, kem, err := d.preKeyCounts(ctx, p.ID)
	if err != nil {
		return nil, err
	}
	return &pb.PreKeyStatus{
		OneTimePrekeysLeft:    uint32(otk),
		KemPrekeysLeft:        uint32(kem),
		SignedPrekeyCreatedMs: p.SignedPreKeyCreated.UnixMilli(),
	}, nil
}

const (
	// prekeyTotalsTimeout bounds the wait for the PREKEYS leader's stream info in Status.
	prekeyTotalsTimeout = time.Second
	// prekeyTotalsBackoff is how long Status counts with direct gets after a stream-info request
	// failed (no answer, an error answer), before it asks the leader again.
	prekeyTotalsBackoff = 5 * time.Second
)

// errTotalsBackoff: a stream-info request failed less than prekeyTotalsBackoff ago.
var errTotalsBackoff = errors.New("prekey totals: backing off after a failure")

// streamInfoPreKeys is the stream-info API subject of the PREKEYS stream.
var streamInfoPreKeys = bus.StreamInfoSubject(bus.PreKeysStream)

// totalsSubjectHook, when set (tests), replaces streamInfoPreKeys in totals.
var totalsSubjectHook atomic.Pointer[string]

// preKeyCounts returns device id's one-time EC and KEM prekey counts: from the PREKEYS stream's
// subject index (totals), or with direct gets (count) when its leader does not answer.
func (d *Directory) preKeyCounts(ctx context.Context, id string) (otk, kem int, err error) {
	otk, kem, err = d.totals(ctx, id)
	if err == nil {
		return otk, kem, nil
	}
	if ctx.Err() != nil {
		return 0, 0, fmt.Errorf("%w: prekey count: %v", ErrUnavailable, ctx.Err())
	}
	d.metrics.countsDirect.Inc()
	if otk, err = d.count(ctx, bus.OneTimePreKeySubject(id)); err != nil {
		return 0, 0, err
	}
	if kem, err = d.count(ctx, bus.KEMPreKeySubject(id)); err != nil {
		return 0, 0, err
	}
	return otk, kem, nil
}

// totals returns device id's one-time EC and KEM prekey counts from one stream-info request
// with a subjects filter (prekeys.*.ID): the per-subject totals the stream keeps in its subject
// index. It fails without asking for prekeyTotalsBackoff after a failure.
func (d *Directory) totals(ctx context.Context, id string) (otk, kem int, err error) {
	if until := d.totalsDownUntil.Load(); until != 0 && time.Now().UnixNano() < until {
		return 0, 0, errTotalsBackoff
	}
	rctx, cancel := context.WithTimeout(ctx, prekeyTotalsTimeout)
	defer cancel()
	// id is a validated device id: nothing in it needs JSON escaping.
	req := make([]byte, 0, 64+len(id))
	req = append(req, `{"subjects_filter":"prekeys.*.`...)
	req = append(req, id...)
	req = append(req, `"}`...)
	subject := streamInfoPreKeys
	if h := totalsSubjectHook.Load(); h != nil {
		subject = *h
	}
	m, err := d.bus.Conn().RequestWithContext(rctx, subject, req)
	if err == nil {
		otk, kem, err = parseTotals(m.Data, id)
	}
	if err != nil && ctx.Err() == nil {
		if d.totalsDownUntil.Swap(time.Now().Add(prekeyTotalsBackoff).UnixNano()) == 0 {
			d.log.Info("prekey counts: the PREKEYS stream's leader did not answer; counting with direct gets for a while", "err", err, "backoff", prekeyTotalsBackoff)
		}
		return 0, 0, err
	}
	if until := d.totalsDownUntil.Load(); err == nil && until != 0 && d.totalsDownUntil.CompareAndSwap(until, 0) {
		d.log.Info("prekey counts: the PREKEYS stream's leader answers again")
	}
	return otk, kem, err
}

// parseTotals reads device id's prekey totals from a stream-info response (a subject the stream
// holds no key on is absent: 0).
func parseTotals(data []byte, id string) (otk, kem int, err error) {
	var resp struct {
		Error *struct {
			Code        int    `json:"code"`
			Description string `json:"description"`
		} `json:"error"`
		State *struct {
			Subjects map[string]uint64 `json:"subjects"`
		} `json:"state"`
	}
	if err := json.Unmarshal(data, &resp); err != nil {
		return 0, 0, fmt.Errorf("stream info: %v", err)
	}
	if resp.Error != nil {
		return 0, 0, fmt.Errorf("stream info: %d %s", resp.Error.Code, resp.Error.Description)
	}
	if resp.State == nil {
		return 0, 0, errors.New("stream info: no state")
	}
	return int(resp.State.Subjects[bus.OneTimePreKeySubject(id)]), int(resp.State.Subjects[bus.KEMPreKeySubject(id)]), nil
}

// directGetPreKeys is the direct-get API subject of the PREKEYS stream (AllowDirect is set).
var directGetPreKeys = bus.DirectGetSubject(bus.PreKeysStream)

// count returns how many prekeys the PREKEYS stream holds on subject, with one direct get of a
// batch of one, starting at sequence 1: the answer is the subject's first message with a
// Nats-Num-Pending header, the number of matching messages after it; no match answers 404. The
// server takes that number from its per-subject totals (no scan, exact), and unlike a stream-info
// request it encodes no JSON. The server also sends an end-of-batch message, which the
// connection's shared response subscription drops (the request was already answered).
//
// In a cluster any in-sync replica may answer, so a count can trail the leader by a moment, as
// the prekey reads of claim do.
func (d *Directory) count(ctx context.Context, subject string) (int, error) {
	// subject is built from a validated device id: nothing in it needs JSON escaping.
	req := make([]byte, 0, 64+len(subject))
	req = append(req, `{"seq":1,"batch":1,"next_by_subj":"`...)
	req = append(req, subject...)
	req = append(req, `"}`...)
	m, err := d.bus.Conn().RequestWithContext(ctx, directGetPreKeys, req)
	if err != nil {
		return 0, fmt.Errorf("%w: prekey count: %v", ErrUnavailable, err)
	}
	switch st := m.Header.Get("Status"); st {
	case "":
	case "404":
		return 0, nil
	default:
		return 0, fmt.Errorf("%w: prekey count: direct get answered %s %s", ErrUnavailable, st, m.Header.Get("Description"))
	}
	pending, err := strconv.ParseUint(m.Header.Get("Nats-Num-Pending"), 10, 31)
	if err != nil {
		return 0, fmt.Errorf("%w: prekey count: Nats-Num-Pending: %v", ErrUnavailable, err)
	}
	return 1 + int(pending), nil
}

// Authenticate checks a device's signature over the connection's challenge nonce. The device's
// auth key comes from the auth cache when Start runs; the signature is always verified.
func (d *Directory) Authenticate(ctx context.Context, deviceID string, nonce, sig []byte) (Principal, error) {
	k, ok := parseDeviceKey(deviceID)
	if !ok {
		return Principal{}, fmt.Errorf("%w: malformed device id", ErrAuthFailed)
	}
	e, err := d.authEntry(ctx, deviceID, k, confirmed)
	if errors.Is(err, ErrUnknownDevice) {
		return Principal{}, fmt.Errorf("%w: unknown device", ErrAuthFailed)
	}
	if err != nil {
		return Principal{}, err
	}
	if !ed25519.Verify(e.key[:], pb.AuthPayload(nonce, deviceID), sig) {
		return Principal{}, fmt.Errorf("%w: signature does not verify", ErrAuthFailed)
	}
	return e.principal(deviceID), nil
}

// deviceKey is a device id in binary: the auth cache's key (16 bytes instead of a 32-byte string
// and its header).
type deviceKey [16]byte

// parseDeviceKey decodes a device id; ok is false when it is malformed.
func parseDeviceKey(id string) (k deviceKey, ok bool) {
	if !pb.ValidDeviceID(id) {
		return k, false
	}
	_, err := hex.Decode(k[:], []byte(id))
	return k, err == nil
}

// authEntry is what the auth cache keeps of a device: 64 bytes plus the name's bytes, with no
// []byte header and no time.Time (24 bytes, with a pointer).
type authEntry struct {
	name string
	// The signed prekey's creation time in Unix seconds and nanoseconds.
	createdSec  int64
	createdNsec int32
	key         [ed25519.PublicKeySize]byte
}

func (e *authEntry) principal(id string) Principal {
	return Principal{ID: id, Name: e.name, SignedPreKeyCreated: time.Unix(e.createdSec, int64(e.createdNsec)).UTC()}
}

// authRecord is the part of a stored Device that authentication needs. Decoding into it skips the
// large fields (identity key, prekeys and their signatures) without base64-decoding them.
type authRecord struct {
	ID           string `json:"id"`
	Name         string `json:"name"`
	AuthKey      []byte `json:"auth_key"`
	SignedPreKey struct {
		Created time.Time `json:"created"`
	} `json:"signed_prekey"`
}

// authEntry returns the auth entry of a device from the cache, or reads it from the bucket (how:
// see getConfirmed) and caches it. Errors are those of readAuth.
func (d *Directory) authEntry(ctx context.Context, deviceID string, k deviceKey, how readKind) (authEntry, error) {
	return d.auth.load(k, func() (authEntry, uint64, error) {
		e, rev, err := d.readAuth(ctx, deviceID, how)
		if err == nil && d.auth.buried(k, rev) {
			// A replica answered that has not applied the device's deletion (a removal)
			// that this node's watch already saw.
			return authEntry{}, 0, ErrUnknownDevice
		}
		return e, rev, err
	})
}

// readAuth reads the auth entry of a device from the bucket, with the record's revision:
// ErrUnknownDevice when there is none,
// ErrAuthFailed when its auth key is malformed, ErrUnavailable when it cannot be read.
func (d *Directory) readAuth(ctx context.Context, deviceID string, how readKind) (authEntry, uint64, error) {
	value, revision, err := d.deviceRecord(ctx, deviceID, how)
	if err != nil {
		return authEntry{}, 0, err
	}
	var rec authRecord
	if err := json.Unmarshal(value, &rec); err != nil {
		return authEntry{}, 0, fmt.Errorf("%w: device record %s: %v", ErrUnavailable, deviceID, err)
	}
	if rec.ID != deviceID {
		return authEntry{}, 0, fmt.Errorf("%w: device record %s holds device %q", ErrUnavailable, deviceID, rec.ID)
	}
	if len(rec.AuthKey) != ed25519.PublicKeySize {
		return authEntry{}, 0, fmt.Errorf("%w: device record %s: auth key has %d bytes", ErrAuthFailed, deviceID, len(rec.AuthKey))
	}
	created := rec.SignedPreKey.Created
	e := authEntry{name: rec.Name, createdSec: created.Unix(), createdNsec: int32(created.Nanosecond())}
	copy(e.key[:], rec.AuthKey)
	return e, revision, nil
}

// deviceRecord reads a device's stored record and its revision: ErrUnknownDevice when there is
// none, ErrUnavailable when it cannot be read.
func (d *Directory) deviceRecord(ctx context.Context, deviceID string, how readKind) ([]byte, uint64, error) {
	value, revision, ok, err := d.getConfirmed(ctx, d.bus.Devices, bus.DevicesBucket, deviceID, how)
	if err != nil {
		return nil, 0, fmt.Errorf("%w: read device: %v", ErrUnavailable, err)
	}
	if !ok {
		return nil, 0, ErrUnknownDevice
	}
	return value, revision, nil
}

// getConfirmed reads key from bucket (kv) with a direct get, which any replica of the bucket
// may answer. A "not found" is confirmed through the bucket stream's leader before it is
// believed, because nats-server answers a direct get it cannot serve (its store closing on a
// node being stopped, for one) as "not found" too: a registered device refused as unknown is
// told its credentials are wrong and its client gives up; a user refused as unknown looks
// deleted to the sender. ok is false when the leader has no such key either. A precheck read
// skips the leader: its caller writes with a create next, which refuses an existing key itself.
func (d *Directory) getConfirmed(ctx context.Context, kv jetstream.KeyValue, bucket, key string, how readKind) (value []byte, revision uint64, ok bool, err error) {
	e, err := kv.Get(ctx, key)
	if h := directNotFoundHook.Load(); err == nil && h != nil && (*h)(key) {
		e, err = nil, jetstream.ErrKeyNotFound
	}
	if err == nil {
		return e.Value(), e.Revision(), true, nil
	}
	if !errors.Is(err, jetstream.ErrKeyNotFound) {
		return nil, 0, false, err
	}
	if how == precheck {
		return nil, 0, false, nil
	}
	value, revision, ok, err = d.bus.KVLatest(ctx, bucket, key)
	if err != nil {
		return nil, 0, false, fmt.Errorf("from the stream leader: %w", err)
	}
	if ok {
		d.metrics.readsConfirmed.WithLabelValues(bucket).Inc()
	}
	return value, revision, ok, nil
}

// readKind says whether a "not found" from a replica is confirmed with the stream's leader.
type readKind bool

const (
	confirmed readKind = true  // the caller acts on "not found" (refuses a device or user)
	precheck  readKind = false // a create follows, which refuses an existing key itself
)

// directNotFoundHook, set only by tests, makes the direct get of the keys it names (device ids,
// account names) answer "not found", as a replica that cannot serve it does.
var directNotFoundHook atomic.Pointer[func(key string) bool]

// Device returns a device record.
func (d *Directory) Device(ctx context.Context, deviceID string) (*Device, error) {
	dev, _, err := d.device(ctx, deviceID)
	return dev, err
}

func (d *Directory) device(ctx context.Context, deviceID string) (*Device, uint64, error) {
	value, revision, err := d.deviceRecord(ctx, deviceID, confirmed)
	if err != nil {
		return nil, 0, err
	}
	dev := &Device{}
	if err := json.Unmarshal(value, dev); err != nil {
		return nil, 0, fmt.Errorf("%w: device record %s: %v", ErrUnavailable, deviceID, err)
	}
	return dev, revision, nil
}

// readTimeout bounds a bucket read made for a caller that gave no deadline.
const readTimeout = 10 * time.Second

// Account returns an account record (from the cache when Start runs). The result is shared: do not
// modify it.
func (d *Directory) Account(ctx context.Context, name string) (*Account, error) {
	return d.account(ctx, name, confirmed)
}

// account is Account, reading the record (on a cache miss) as how says (see getConfirmed).
func (d *Directory) account(ctx context.Context, name string, how readKind) (*Account, error) {
	if !pb.ValidName(name) {
		return nil, ErrUnknownUser
	}
	return d.accounts.load(name, func() (*Account, uint64, error) {
		if _, ok := ctx.Deadline(); !ok {
			// Callers on the send path pass no deadline, so that a cache hit costs no timer.
			ctx, cancel := context.WithTimeout(ctx, readTimeout)
			defer cancel()
			return d.readAccount(ctx, name, how)
		}
		return d.readAccount(ctx, name, how)
	})
}

// readAccount reads an account record and its revision.
func (d *Directory) readAccount(ctx context.Context, name string, how readKind) (*Account, uint64, error) {
	value, revision, ok, err := d.getConfirmed(ctx, d.bus.Accounts, bus.AccountsBucket, name, how)
	if err != nil {
		return nil, 0, fmt.Errorf("%w: read account: %v", ErrUnavailable, err)
	}
	if !ok {
		return nil, 0, ErrUnknownUser
	}
	acc := &Account{}
	if err := json.Unmarshal(value, acc); err != nil {
		return nil, 0, fmt.Errorf("%w: account record %s: %v", ErrUnavailable, name, err)
	}
	return acc, revision, nil
}

// CreateInvite makes a one-time invite code, valid for bus.InviteTTL.
func (d *Directory) CreateInvite(ctx context.Context) (string, error) {
	var raw [10]byte
	if _, err := rand.Read(raw[:]); err != nil {
		return "", err
	}
	code := strings.ToLower(base32.StdEncoding.WithPadding(base32.NoPadding).EncodeToString(raw[:]))
	rec, _ := json.Marshal(inviteRecord{Created: time.Now().UTC()})
	if _, err := d.bus.Invites.Create(ctx, code, rec); err != nil {
		return "", fmt.Errorf("%w: store invite: %v", ErrUnavailable, err)
	}
	return code, nil
}

// maxInviteLen bounds an invite code (CreateInvite makes 16 characters).
const maxInviteLen = 64

// inviteRecord is the stored value of an invite code.
type inviteRecord struct {
	Created time.Time `json:"created"`
}

// checkInvite reports whether code is an unused invite still valid, with its revision (for the
// purge that spends it) and record. An invite is valid for bus.InviteTTL from its creation, also
// after it was given back (see returnInvite).
func (d *Directory) checkInvite(ctx context.Context, code string) (uint64, []byte, error) {
	if code == "" || len(code) > maxInviteLen || !validKey(code) {
		return 0, nil, ErrInvalidInvite
	}
	e, err := d.bus.Invites.Get(ctx, code)
	if errors.Is(err, jetstream.ErrKeyNotFound) {
		return 0, nil, ErrInvalidInvite
	}
	if err != nil {
		return 0, nil, fmt.Errorf("%w: read invite: %v", ErrUnavailable, err)
	}
	var rec inviteRecord
	if json.Unmarshal(e.Value(), &rec) == nil && !rec.Created.IsZero() && time.Since(rec.Created) > bus.InviteTTL {
		return 0, nil, ErrInvalidInvite
	}
	return e.Revision(), e.Value(), nil
}

// returnInvite stores a spent invite code again, with its record, for a registration that spent
// it and then failed. The record keeps the creation time, so the invite does not live longer
// (see checkInvite).
func (d *Directory) returnInvite(ctx context.Context, code string, rec []byte) {
	if _, err := d.bus.Invites.Create(ctx, code, rec); err != nil {
		d.log.Warn("give back an invite after a failed registration", "err", err)
		return
	}
	d.metrics.invitesReturned.Inc()
}

// validKey reports whether s is safe as a KV key (a-z A-Z 0-9 and -_=.).
func validKey(s string) bool {
	for i := 0; i < len(s); i++ {
		c := s[i]
		if !(c >= 'a' && c <= 'z' || c >= 'A' && c <= 'Z' || c >= '0' && c <= '9' || c == '-' || c == '_' || c == '=' || c == '.') {
			return false
		}
	}
	return true
}

// MaxBulkRegister is the most devices one bulk registration may carry.
const MaxBulkRegister = 1000

// RegisterBulk registers synthetic accounts for operators (load generators, fixtures): keys are
// verified as in Register, but there is no proof of possession and no registration policy. The
// caller must have checked the operator credential. Results are per device, in order.
func (d *Directory) RegisterBulk(ctx context.Context, devs []*pb.BulkDevice) (*pb.BulkRegisterResponse, error) {
	total := 0
	for _, bd := range devs {
		total += 1 + len(bd.GetCompanions())
	}
	if total > MaxBulkRegister {
		return nil, fmt.Errorf("%w: at most %d devices (companions included) per bulk registration", ErrInvalidRequest, MaxBulkRegister)
	}
	res := &pb.BulkRegisterResponse{DeviceIds: make([]string, len(devs)), Errors: make([]string, len(devs))}
	withCompanions := false
	// Check every device first. The valid ones are written in chunks, one atomic batch per bucket
	// and chunk: one fsync for the chunk instead of one per device. A chunk that meets a taken name
	// or an existing device fails as a whole (nothing of it stays), and its devices are then
	// registered one by one, which finds and reports each conflict.
	now := time.Now().UTC()
	var chunk []int // indexes into devs
	chunkDevices := 0
	checked := make([]*Device, len(devs))
	comps := make([][]*Device, len(devs))
	flush := func() {
		if len(chunk) == 0 {
			return
		}
		batch := make([]*Device, len(chunk))
		batchComps := make([][]*Device, len(chunk))
		for k, i := range chunk {
			batch[k], batchComps[k] = checked[i], comps[i]
		}
		if err := d.createBatch(ctx, batch, batchComps, now); err != nil {
			d.log.Debug("bulk registration: chunk registered one by one", "devices", len(chunk), "err", err)
			for _, i := range chunk {
				if _, err := d.create(ctx, checked[i], devs[i].GetKeys(), nil); err != nil {
					res.Errors[i] = err.Error()
					continue
				}
				res.DeviceIds[i] = checked[i].ID
				if err := d.addCompanions(ctx, checked[i].Name, comps[i], devs[i].GetCompanions(), now); err != nil {
					res.Errors[i] = "companions: " + err.Error()
				}
			}
		} else {
			var all []*Device
			var keys []*pb.KeyBundleUpload
			for k, i := range chunk {
				res.DeviceIds[i] = checked[i].ID
				all, keys = append(all, batch[k]), append(keys, devs[i].GetKeys())
				for j, c := range comps[i] {
					all, keys = append(all, c), append(keys, devs[i].GetCompanions()[j].GetKeys())
				}
			}
			d.addBulkPreKeys(ctx, all, keys)
		}
		chunk, chunkDevices = chunk[:0], 0
	}
	names, ids := make(map[string]bool, len(devs)), make(map[string]bool, total)
	for i, bd := range devs {
		dev, err := newDevice(bd.GetName(), bd.GetAuthKey(), bd.GetKeys(), now)
		if err != nil {
			res.Errors[i] = err.Error()
			continue
		}
		if n := len(bd.GetCompanions()); n > 0 && n+1 > d.cfg.MaxDevices {
			res.Errors[i] = fmt.Sprintf("%v: %d devices, at most %d (max_devices)", ErrTooManyDevices, n+1, d.cfg.MaxDevices)
			continue
		}
		var cs []*Device
		repeat := names[dev.Name] || ids[dev.ID]
		for _, c := range bd.GetCompanions() {
			cd, err := newDevice(dev.Name, c.GetAuthKey(), c.GetKeys(), now)
			if err != nil {
				res.Errors[i] = "companion: " + err.Error()
				break
			}
			repeat = repeat || ids[cd.ID] || cd.ID == dev.ID
			cs = append(cs, cd)
		}
		if res.Errors[i] != "" {
			continue
		}
		if repeat {
			flush() // a repeat within the request: the earlier one is written first, so this one fails
		}
		if chunkDevices+1+len(cs) > bulkChunk {
			flush()
		}
		names[dev.Name], ids[dev.ID] = true, true
		for _, c := range cs {
			ids[c.ID] = true
		}
		withCompanions = withCompanions || len(cs) > 0
		checked[i], comps[i] = dev, cs
		chunk = append(chunk, i)
		chunkDevices += 1 + len(cs)
	}
	flush()
	if withCompanions {
		res.CompanionIds = make([]*pb.CompanionIDs, len(devs))
		for i, cs := range comps {
			res.CompanionIds[i] = &pb.CompanionIDs{}
			if res.DeviceIds[i] == "" || res.Errors[i] != "" {
				continue
			}
			for _, c := range cs {
				res.CompanionIds[i].DeviceIds = append(res.CompanionIds[i].DeviceIds, c.ID)
			}
		}
	}
	return res, nil
}

// addCompanions adds checked companion devices to an existing account, one by one (the slow path
// of a bulk registration whose chunk failed).
func (d *Directory) addCompanions(ctx context.Context, name string, cs []*Device, bds []*pb.BulkDevice, now time.Time) error {
	for j, c := range cs {
		devJSON, _ := json.Marshal(c)
		if _, err := d.bus.Devices.Create(ctx, c.ID, devJSON); err != nil {
			if errors.Is(err, jetstream.ErrKeyExists) {
				return ErrDeviceExists
			}
			return fmt.Errorf("%w: create device: %v", ErrUnavailable, err)
		}
		for attempt := 0; ; attempt++ {
			acc, rev, err := d.accountLatest(ctx, name)
			if err != nil {
				d.undoDevice(ctx, c.ID)
				return err
			}
			acc = acc.clone()
			acc.PrimaryID = acc.Primary()
			acc.Devices = append(acc.Devices, c.ID)
			acc.Details[c.ID] = DeviceDetails{LinkedMS: now.UnixMilli()}
			err = d.updateAccount(ctx, acc, rev)
			if err == nil {
				break
			}
			if !errors.Is(err, errConflict) || attempt == 3 {
				d.undoDevice(ctx, c.ID)
				return err
			}
		}
		d.addInitialPreKeys(ctx, c, bds[j].GetKeys())
	}
	return nil
}

// bulkChunk is the most devices written in one atomic batch (nats-server allows 1,000 messages).
const bulkChunk = 250

// createBatch creates the device and account records of devs, which must have distinct ids and
// names, as one atomic batch per bucket. On error none of them exists.
func (d *Directory) createBatch(ctx context.Context, devs []*Device, comps [][]*Device, now time.Time) error {
	devMsgs, accMsgs := make([]*nats.Msg, 0, len(devs)), make([]*nats.Msg, len(devs))
	for i, dev := range devs {
		devJSON, _ := json.Marshal(dev)
		devMsgs = append(devMsgs, kvCreateMsg(bus.DevicesBucket, dev.ID, devJSON))
		accJSON := newAccountJSON(dev, nil)
		if len(comps[i]) > 0 {
			acc := &Account{Name: dev.Name, Devices: []string{dev.ID}, Created: dev.Created, PrimaryID: dev.ID,
				Details: make(map[string]DeviceDetails, len(comps[i]))}
			for _, c := range comps[i] {
				cJSON, _ := json.Marshal(c)
				devMsgs = append(devMsgs, kvCreateMsg(bus.DevicesBucket, c.ID, cJSON))
				acc.Devices = append(acc.Devices, c.ID)
				acc.Details[c.ID] = DeviceDetails{LinkedMS: now.UnixMilli()}
			}
			accJSON, _ = json.Marshal(acc)
		}
		accMsgs[i] = kvCreateMsg(bus.AccountsBucket, dev.Name, accJSON)
	}
	if _, err := jetstreamext.PublishMsgBatch(ctx, d.bus.JS(), devMsgs); err != nil {
		return fmt.Errorf("device records: %w", err)
	}
	if _, err := jetstreamext.PublishMsgBatch(ctx, d.bus.JS(), accMsgs); err != nil {
		for i, dev := range devs { // undo, so the one-by-one path starts from nothing
			d.undoDevice(ctx, dev.ID)
			for _, c := range comps[i] {
				d.undoDevice(ctx, c.ID)
			}
		}
		return fmt.Errorf("account records: %w", err)
	}
	return nil
}

// kvCreateMsg is a put of key in a KV bucket that succeeds only if the key has never been written
// (what jetstream.KeyValue.Create does for a key without history).
func kvCreateMsg(bucket, key string, data []byte) *nats.Msg {
	m := nats.NewMsg("$KV." + bucket + "." + key)
	m.Data = data
	m.Header.Set(jetstream.ExpectedLastSubjSeqHeader, "0")
	return m
}
