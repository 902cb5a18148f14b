// Copyright 2026 The Petrel Authors
// SPDX-License-Identifier: Apache-2.0

package bus

import (
	"context"
	"errors"
	"fmt"
	"hash/fnv"
	"reflect"
	"strconv"
	"time"

	"github.com/nats-io/nats.go"
	"github.com/nats-io/nats.go/jetstream"
)

// Stream, bucket and subject names. These are a storage format: never rename one in place.
const (
	AccountsBucket = "accounts"
	DevicesBucket  = "devices"
	InvitesBucket  = "invites"
	LinksBucket    = "links"
	LastSeenBucket = "last_seen"
	GroupsBucket   = "groups"
	MetaBucket     = "petrel_meta"
	PreKeysStream  = "PREKEYS"
	inboxStreamFmt = "INBOX_%02d"

	// InviteTTL is how long an unused invite code stays valid.
	InviteTTL = 7 * 24 * time.Hour
	// LinksMaxAge is the longest a pending device link is kept: the links bucket's own age
	// limit, behind each entry's TTL (the directory's link TTL, at most this).
	LinksMaxAge = time.Hour
)

// InboxStreamName is the stream of a shard.
func InboxStreamName(shard int) string { return fmt.Sprintf(inboxStreamFmt, shard) }

// Shard maps a device id to its inbox shard.
func (b *Bus) Shard(deviceID string) int {
	h := fnv.New32a()
	h.Write([]byte(deviceID))
	return int(h.Sum32() % uint32(b.cfg.InboxShards))
}

// InboxSubject is the subject of a device's inbox: inbox.<shard>.<device>.
func (b *Bus) InboxSubject(deviceID string) string {
	return fmt.Sprintf("inbox.%02d.%s", b.Shard(deviceID), deviceID)
}

// NodesSubject is the core subject on which nodes announce their public URLs (package nodes).
const NodesSubject = "petrel.nodes"

// StatusSubject is the core subject on which nodes share their own status views (package status).
const StatusSubject = "petrel.status"

// IncidentsBucket holds operators' incident notes for the status page (package status): a storage
// format like the names above.
const IncidentsBucket = "incidents"

// BaselineBucket holds the problem-report baseline of the status page (package status): one
// record per node (key: the node's name, or a hash of it) with its report counts per hour of the
// week over the last weeks, rewritten by that node at most once an hour. A storage format like the
// names above.
const BaselineBucket = "status_baseline"

// BaselineMaxAge is the baseline bucket's age limit: the record of a node not heard for longer
// (decommissioned) is dropped. A running node rewrites its record every hour.
const BaselineMaxAge = 9 * 7 * 24 * time.Hour

// Device traffic between nodes' mailboxes (package mailbox). No subject is subscribed per device:
// each node's mailbox subscribes once to each pattern below. (A subscription per connected device
// cost 3.9 KB per connection across the cluster: each JetStream server keeps every subscription's
// interest, 200,000 of them 200 MB each.)
const (
	// DeviceSubjects matches DeviceSubject: every node's mailbox hears every device's takeovers,
	// ticket releases and resync wake-ups, and ephemeral envelopes for a device whose node the
	// sender does not know.
	DeviceSubjects = "dev.*"
	// WakeSubjects matches WakeSubject.
	WakeSubjects = "mbw.*"
)

// DeviceSubject carries, to every node, events for one device: dev.<device>.
func DeviceSubject(deviceID string) string { return "dev." + deviceID }

// NodeDevices matches NodeDeviceSubject for one node: the node's mailbox subscribes to it.
func NodeDevices(node string) string { return "pn." + node + ".*" }

// NodeDeviceSubject carries live deliveries (requests) and ephemeral envelopes for a device to the
// node that holds its connection: pn.<node>.<device>. No responders means the node is gone.
func NodeDeviceSubject(node, deviceID string) string { return "pn." + node + "." + deviceID }

// WakeSubject carries, to every node, one inbox commit's wake-ups from the node that committed it:
// mbw.<node>.
func WakeSubject(node string) string { return "mbw." + node }

// HintSubject carries to a node the locations of devices it stored envelopes for: mbh.<node>.
func HintSubject(node string) string { return "mbh." + node }

// The control channel: core subjects for rare events between nodes, each node subscribed once to
// each pattern (never a subscription per connection).
const (
	// LinkSubjects matches LinkSubject.
	LinkSubjects = "link.*"
	// ControlSubjects matches ControlSubject.
	ControlSubjects = "ctl.*"
)

// LinkSubject is the core subject on which the approval of a pending device link is published,
// for the node that holds the waiting device's connection: link.<link id>. linkID must be a
// well-formed link id (no dots or wildcards).
func LinkSubject(linkID string) string { return "link." + linkID }

// ControlSubject carries events for one device to the node that holds its connection: its
// account's device list changed, or it was removed: ctl.<device id>.
func ControlSubject(deviceID string) string { return "ctl." + deviceID }

// OneTimePreKeySubject and KEMPreKeySubject hold a device's unclaimed one-time prekeys.
func OneTimePreKeySubject(deviceID string) string { return "prekeys.otk." + deviceID }

// KEMPreKeySubject holds a device's unclaimed one-time ML-KEM prekeys.
func KEMPreKeySubject(deviceID string) string { return "prekeys.kem." + deviceID }

// errNotYetVisible: a stream that exists is not yet visible to the node answering (retried).
var errNotYetVisible = errors.New("created but not yet visible")

// errShardsChanged is a refused change of the inbox shard count: never retried.
var errShardsChanged = errors.New("inbox shard count changed")

// migrateRetry runs migrate until it succeeds, fails for good, or ctx ends. In a cluster the
// first attempts can fail while nodes join (a replicated stream needs as many nodes as replicas):
// those errors are retried.
func (b *Bus) migrateRetry(ctx context.Context) error {
	delay := 100 * time.Millisecond
	start := time.Now()
	var lastForming time.Time
	for {
		err := b.migrate(ctx)
		if len(b.cfg.URLs) > 0 && notClustered(err) {
			return fmt.Errorf("%w: %w: the external NATS does not run JetStream clustered, so it cannot hold %d replicas: "+
				"point nats at a JetStream cluster of at least %d servers, or set replicas = 1", errRefused, err, b.cfg.Replicas, b.cfg.Replicas)
		}
		if err == nil || !retryable(err) || ctx.Err() != nil {
			return err
		}
		switch {
		case len(b.cfg.URLs) > 0 && !errors.Is(err, errForming):
			b.cfg.Logger.Warn("bus migrations: retrying: the external JetStream cluster needs at least replicas servers up, with room in their store", "replicas", b.cfg.Replicas, "err", err, "waited", time.Since(start).Round(time.Millisecond))
		case !errors.Is(err, errForming):
			b.cfg.Logger.Warn("bus migrations: retrying (cluster forming?)", "err", err, "waited", time.Since(start).Round(time.Millisecond))
		case time.Since(lastForming) >= 10*time.Second: // a wait for other nodes or an import: once in a while
			lastForming = time.Now()
			b.cfg.Logger.Info("bus migrations: waiting", "reason", err, "waited", time.Since(start).Round(time.Millisecond))
		}
		t := time.NewTimer(delay)
		select {
		case <-t.C:
		case <-ctx.Done():
			t.Stop()
			return err
		}
		delay = min(delay*2, 2*time.Second)
	}
}

// retryable reports whether a migration error can pass by itself: the JetStream cluster is not
// (yet) available, has too few nodes, or did not answer in time.
func retryable(err error) bool {
	if errors.Is(err, errShardsChanged) || errors.Is(err, errRefused) {
		return false
	}
	if errors.Is(err, errNotYetVisible) || errors.Is(err, errForming) {
		return true
	}
	var apiErr *jetstream.APIError
	if errors.As(err, &apiErr) {
		switch apiErr.ErrorCode {
		case 10005, 10006, 10008, 10009, 10023, 10074: // no peers, not active, not available, not leader, insufficient resources, replicas > cluster size
			return true
		}
		return false
	}
	return errors.Is(err, context.DeadlineExceeded) || errors.Is(err, nats.ErrTimeout) ||
		errors.Is(err, nats.ErrNoResponders) || errors.Is(err, jetstream.ErrNoStreamResponse) ||
		errors.Is(err, jetstream.ErrJetStreamNotEnabled)
}

// migrate creates what is missing and updates what may be updated. It never deletes a stream or
// bucket, and it refuses a change of the inbox shard count. Several nodes may run it at once:
// each object is created if missing (losing a creation race is success), and an existing one is
// updated only where the fields Petrel manages differ, so concurrent runs converge and no run
// ever switches a setting off that another has just switched on.
func (b *Bus) migrate(ctx context.Context) error {
	ctx, cancel := context.WithTimeout(ctx, 60*time.Second)
	defer cancel()
	r := b.cfg.Replicas

	kv := func(cfg jetstream.KeyValueConfig, opts kvOptions) (jetstream.KeyValue, error) {
		cfg.Replicas = r
		cfg.Storage = jetstream.FileStorage
		s, err := b.ensureKV(ctx, cfg, opts)
		if err != nil {
			return nil, fmt.Errorf("bucket %s: %w", cfg.Bucket, err)
		}
		return s, nil
	}
	meta, err := kv(jetstream.KeyValueConfig{Bucket: MetaBucket, Description: "petrel deployment facts", History: 1}, kvOptions{})
	if err != nil {
		return err
	}
	b.meta = meta
	b.grow = growNone
	if b.cfg.ClusterListen != "" || len(b.cfg.URLs) > 0 {
		if b.grow, err = b.gate(ctx, meta); err != nil {
			return err
		}
	}
	if b.grow == growNone { // an importer records the shard count once the import is done
		if err := b.checkShards(ctx, meta); err != nil {
			return err
		}
	}
	// Bulk registration writes many records of accounts and devices as one atomic batch.
	if b.Accounts, err = kv(jetstream.KeyValueConfig{Bucket: AccountsBucket, Description: "account name → account", History: 1}, kvOptions{atomic: true}); err != nil {
		return err
	}
	if b.Devices, err = kv(jetstream.KeyValueConfig{Bucket: DevicesBucket, Description: "device id → device keys", History: 1}, kvOptions{atomic: true}); err != nil {
		return err
	}
	if b.Invites, err = kv(jetstream.KeyValueConfig{Bucket: InvitesBucket, Description: "one-time invite codes", History: 1, TTL: InviteTTL}, kvOptions{}); err != nil {
		return err
	}
	// Pending device links expire by a TTL per entry (the directory's link_ttl), under the
	// bucket's own age limit.
	// Last-seen times of devices, apart from the account records: an account record is read on
	// every send (cached on every node), and a write to it drops it from every node's cache.
	if b.LastSeen, err = kv(jetstream.KeyValueConfig{Bucket: LastSeenBucket, Description: "device id → last seen (Unix ms, decimal)", History: 1}, kvOptions{atomic: true}); err != nil {
		return err
	}
	if b.Links, err = kv(jetstream.KeyValueConfig{Bucket: LinksBucket, Description: "link id → pending device link offer", History: 1, TTL: LinksMaxAge}, kvOptions{msgTTL: true}); err != nil {
		return err
	}
	// Group records and the per-account index of groups (package groups); the index is written
	// in atomic batches.
	if b.Groups, err = kv(jetstream.KeyValueConfig{Bucket: GroupsBucket, Description: "group id → membership; account → its groups", History: 1}, kvOptions{atomic: true}); err != nil {
		return err
	}
	if b.Settings, err = kv(jetstream.KeyValueConfig{Bucket: SettingsBucket, Description: "account name → presence and privacy settings (petrelv1.Settings)", History: 1}, kvOptions{}); err != nil {
		return err
	}
	if b.Incidents, err = kv(jetstream.KeyValueConfig{Bucket: IncidentsBucket, Description: "incident id → incident notes for the status page (JSON)", History: 1}, kvOptions{}); err != nil {
		return err
	}
	if b.Baseline, err = kv(jetstream.KeyValueConfig{Bucket: BaselineBucket, Description: "node → its problem-report counts per hour of the week for the status page's baseline (JSON)", History: 1, TTL: BaselineMaxAge}, kvOptions{}); err != nil {
		return err
	}
	b.PreKeys, err = b.ensureStream(ctx, jetstream.StreamConfig{
		Name:                 PreKeysStream,
		Description:          "unclaimed one-time prekeys, claimed by get-then-delete",
		Subjects:             []string{"prekeys.otk.*", "prekeys.kem.*"},
		Storage:              jetstream.FileStorage,
		Replicas:             r,
		MaxMsgsPerSubject:    1000,
		Discard:              jetstream.DiscardNew,
		DiscardNewPerSubject: true,
		AllowDirect:          true,
		AllowAtomicPublish:   true,
	})
	if err != nil {
		return fmt.Errorf("stream %s: %w", PreKeysStream, err)
	}
	inboxes := make([]jetstream.Stream, b.cfg.InboxShards)
	maxBytes := b.cfg.InboxStreamMaxBytes
	if maxBytes <= 0 {
		maxBytes = -1 // no cap of the stream's own
	}
	for i := range inboxes {
		name := InboxStreamName(i)
		s, err := b.ensureStream(ctx, jetstream.StreamConfig{
			Name:                 name,
			Description:          "device inboxes (store-and-forward), subject inbox.<shard>.<device>",
			Subjects:             []string{fmt.Sprintf("inbox.%02d.*", i)},
			Storage:              jetstream.FileStorage,
			Replicas:             r,
			MaxAge:               b.cfg.InboxMaxAge,
			MaxMsgsPerSubject:    b.cfg.InboxMaxPerDevice,
			MaxBytes:             maxBytes,
			Discard:              jetstream.DiscardNew,
			DiscardNewPerSubject: true,
			Duplicates:           b.cfg.DuplicateWindow,
			AllowDirect:          true,
			AllowAtomicPublish:   true,
			// Disappearing messages: a stored envelope carries a per-message TTL (Nats-TTL) and
			// the store deletes it at its expiry.
			AllowMsgTTL: true,
		})
		if err != nil {
			return fmt.Errorf("stream %s: %w", name, err)
		}
		if err := b.visible(ctx, s); err != nil {
			return fmt.Errorf("stream %s: %w", name, err)
		}
		inboxes[i] = s
	}
	b.inboxes = inboxes
	return nil
}

// objectTimeout bounds the migration of one stream or bucket. In a cluster a request about a
// stream whose Raft group has no leader yet (just created by another node) gets no answer at
// all: it times out, and migrateRetry runs the migration again.
const objectTimeout = 10 * time.Second

// ensureStream creates the stream, or brings an existing one's managed fields (those want sets)
// to want. It asks for a creation first: JetStream answers an identical existing stream with
// success, so a fresh cluster's nodes racing each other, and every restart, write nothing; only
// a stream whose config differs (an operator changed a setting) is read and updated.
func (b *Bus) ensureStream(ctx context.Context, want jetstream.StreamConfig) (jetstream.Stream, error) {
	ctx, cancel := context.WithTimeout(ctx, objectTimeout)
	defer cancel()
	s, err := b.js.CreateStream(ctx, want)
	if !errors.Is(err, jetstream.ErrStreamNameAlreadyInUse) {
		return s, err
	}
	if s, err = b.js.Stream(ctx, want.Name); err != nil {
		return nil, err
	}
	cur := s.CachedInfo().Config
	if err := checkDurable(cur); err != nil {
		return nil, err
	}
	upd := cur
	upd.Description = want.Description
	upd.Subjects = want.Subjects
	// Replicas only grow here. A node whose settings ask for fewer (one restarted with an old
	// config in a rolling change, or one whose peers list is short) must not shrink what the
	// others replicate: scale down by hand (nats stream edit --replicas).
	switch {
	case want.Replicas > cur.Replicas:
		upd.Replicas = want.Replicas
		b.cfg.Logger.Info("bus migration: scaling stream up", "stream", want.Name, "from_replicas", cur.Replicas, "to_replicas", want.Replicas)
	case want.Replicas < cur.Replicas:
		b.cfg.Logger.Warn("bus migration: stream has more replicas than this node's replicas setting; keeping them (scale down by hand if that is what you want)",
			"stream", want.Name, "replicas", cur.Replicas, "setting", want.Replicas)
	}
	upd.MaxAge = want.MaxAge
	upd.MaxMsgsPerSubject = want.MaxMsgsPerSubject
	if want.MaxBytes != 0 {
		upd.MaxBytes = want.MaxBytes
	}
	upd.Discard = want.Discard
	upd.DiscardNewPerSubject = want.DiscardNewPerSubject
	if want.Duplicates != 0 {
		upd.Duplicates = want.Duplicates
	}
	upd.AllowDirect = want.AllowDirect
	upd.AllowAtomicPublish = want.AllowAtomicPublish
	if want.AllowMsgTTL { // JetStream cannot switch per-message TTLs off again: only ever on
		upd.AllowMsgTTL = true
	}
	if reflect.DeepEqual(cur, upd) {
		return s, nil
	}
	b.cfg.Logger.Info("bus migration: updating stream", "stream", want.Name)
	return b.js.UpdateStream(ctx, upd)
}

// visible checks, in a cluster, that the stream's info can be read through this node: a creation
// acknowledged to another node, or answered during a meta leader change, can reach this node's
// view a moment later, and the mailbox reads every inbox's info as it starts (seen once under
// load: "stream not found" right after the migrations).
func (b *Bus) visible(ctx context.Context, s jetstream.Stream) error {
	if b.srv != nil && !b.srv.JetStreamIsClustered() {
		return nil
	}
	ctx, cancel := context.WithTimeout(ctx, objectTimeout)
	defer cancel()
	if _, err := s.Info(ctx); errors.Is(err, jetstream.ErrStreamNotFound) {
		return fmt.Errorf("%w: %w", errNotYetVisible, err)
	} else if err != nil {
		return err
	}
	return nil
}

// kvOptions are the stream settings of a bucket that the KV API does not manage.
type kvOptions struct {
	atomic bool // atomic batch publishing (AllowAtomicPublish)
	msgTTL bool // a TTL per entry (AllowMsgTTL; jetstream.KeyTTL on Create)
}

// ensureKV creates the bucket, or brings an existing one's managed fields to cfg, through
// ensureStream. The bucket's stream is written here as nats.go's KV API writes it (nats.go
// v1.55 prepareKeyValueConfig), plus atomic batch publishing and per-entry TTLs when opts asks:
// the KV API cannot set the first, and its update path rewrites the whole config (it would
// switch atomic publishing off again while another node relies on it).
func (b *Bus) ensureKV(ctx context.Context, cfg jetstream.KeyValueConfig, opts kvOptions) (jetstream.KeyValue, error) {
	dup := 2 * time.Minute
	if cfg.TTL > 0 && cfg.TTL < dup {
		dup = cfg.TTL
	}
	history := int64(max(1, cfg.History))
	if _, err := b.ensureStream(ctx, jetstream.StreamConfig{
		Name:               "KV_" + cfg.Bucket,
		Description:        cfg.Description,
		Subjects:           []string{"$KV." + cfg.Bucket + ".>"},
		MaxMsgsPerSubject:  history,
		MaxBytes:           -1,
		MaxAge:             cfg.TTL,
		MaxMsgSize:         -1,
		Storage:            cfg.Storage,
		Replicas:           cfg.Replicas,
		AllowRollup:        true,
		DenyDelete:         true,
		Duplicates:         dup,
		MaxMsgs:            -1,
		MaxConsumers:       -1,
		AllowDirect:        true,
		Discard:            jetstream.DiscardNew,
		AllowAtomicPublish: opts.atomic,
		AllowMsgTTL:        opts.msgTTL,
	}); err != nil {
		return nil, err
	}
	ctx, cancel := context.WithTimeout(ctx, objectTimeout)
	defer cancel()
	kv, err := b.js.KeyValue(ctx, cfg.Bucket)
	if errors.Is(err, jetstream.ErrBucketNotFound) {
		// The stream exists (ensureStream just said so): the node answering has not applied
		// the creation yet.
		return nil, fmt.Errorf("%w: %w", errNotYetVisible, err)
	}
	return kv, err
}

// checkShards records the shard count on first start; later it adopts the recorded one if the
// configuration named none, and refuses a different one if it did.
func (b *Bus) checkShards(ctx context.Context, meta jetstream.KeyValue) error {
	ctx, cancel := context.WithTimeout(ctx, objectTimeout)
	defer cancel()
	want := strconv.Itoa(b.cfg.InboxShards)
	e, err := meta.Get(ctx, metaInboxShards)
	switch {
	case errors.Is(err, jetstream.ErrKeyNotFound): // a new deployment: record this node's count
		if err := b.checkStreamBytes(); err != nil {
			return err
		}
		_, err = meta.Create(ctx, metaInboxShards, []byte(want))
		if errors.Is(err, jetstream.ErrKeyExists) { // another node recorded first: check against its count
			return b.checkShards(ctx, meta)
		}
		if err != nil {
			return fmt.Errorf("record inbox shard count: %w", err)
		}
		return nil
	case err != nil:
		return fmt.Errorf("read inbox shard count: %w", err)
	case string(e.Value()) == want:
		return b.checkStreamBytes()
	case b.shardsAuto:
		return b.adoptShards(string(e.Value()), "the deployment's")
	default:
		return fmt.Errorf("%w: inbox_shards is %s but this deployment was created with %s: changing it would orphan stored messages; set inbox_shards = %s (or leave it unset)", errShardsChanged, want, e.Value(), e.Value())
	}
}

// adoptShards makes this node, whose configuration names no shard count, use v: the count
// recorded by the deployment, or by the single-node store it imports (whose names which).
func (b *Bus) adoptShards(v, whose string) error {
	n, err := strconv.Atoi(v)
	if err != nil || n < 1 || n > MaxInboxShards {
		return fmt.Errorf("%w: %s recorded inbox_shards %q: want 1..%d", errRefused, whose, v, MaxInboxShards)
	}
	b.cfg.Logger.Info("inbox_shards: using "+whose+" count (the configuration names none)", "inbox_shards", n)
	b.cfg.InboxShards = n
	return b.checkStreamBytes()
}

// MaxInboxShards is the largest inbox shard count.
const MaxInboxShards = 256

// checkStreamBytes refuses per-stream byte caps that the store cannot reserve for every shard
// (JetStream reserves each stream's MaxBytes): the configuration checks this when it names the
// shard count; an adopted count is checked here.
func (b *Bus) checkStreamBytes() error {
	c := b.cfg
	if c.InboxStreamMaxBytes > 0 && c.StoreMaxBytes > 0 && int64(c.InboxShards) > c.StoreMaxBytes/c.InboxStreamMaxBytes {
		return fmt.Errorf("%w: inbox.stream_max_bytes %d × inbox_shards %d exceeds inbox.store_max_bytes %d (JetStream reserves each stream's cap)", errRefused, c.InboxStreamMaxBytes, c.InboxShards, c.StoreMaxBytes)
	}
	return nil
}
