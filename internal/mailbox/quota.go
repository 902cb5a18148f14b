// Copyright 2026 The Petrel Authors
// SPDX-License-Identifier: Apache-2.0

package mailbox

import (
	"context"
	"errors"
	"fmt"
	"hash/maphash"
	"sort"
	"strings"
	"sync"
	"time"

	"github.com/nats-io/nats.go"
	"github.com/nats-io/nats.go/jetstream"
)

// Inbox accounting. Each shard writer keeps, for the devices of its shard that have envelopes
// stored, an index of those envelopes: per sender, in stream order, each envelope's sequence, size
// and a hash of its dedupe id. It serves three purposes:
//
//   - Admission before the batch: an append that would take its device past the count or byte cap,
//     or its sender past the per-sender quota, is refused (ErrInboxFull) before it joins a commit,
//     so an atomic batch never holds an envelope the stream would refuse, and one full inbox never
//     fails another device's envelopes. The stream's own per-subject and byte limits stay the last
//     line of defence (another node appending to the same inbox; an index that lags); a batch they
//     refuse is split and retried one envelope at a time, so even then only the refused envelopes fail.
//   - QueryQueued: a sender's question about its own envelopes is answered from its part of the
//     index, in memory; nothing is read from the store.
//   - Counts survive restarts: the index is rebuilt from the stream, one device at a time, when the
//     device is first touched (an append or a query) after start. The devices that may have
//     envelopes stored are listed at start from the stream's per-subject state (no message read).
//
// The index shrinks when acked envelopes are purged on this node. Envelopes that leave the stream
// otherwise (expired after the inbox TTL; purged by another node of a cluster) are noticed when a
// device is found full: the index is then checked against the device's first stored sequence (one
// read, at most once a second per device), since an inbox only ever loses a prefix.
//
// Memory: about 40 bytes per stored envelope, plus a map entry per device with stored envelopes.

// Reasons an append is refused, the label of petrel_mailbox_inbox_full_total.
const (
	reasonCount       = "count"        // the device's envelope cap (inbox_max_per_device)
	reasonBytes       = "bytes"        // the device's byte cap (inbox_max_bytes_per_device)
	reasonSenderCount = "sender_count" // the sender's share (inbox_max_per_sender)
	reasonSenderBytes = "sender_bytes" // the sender's share in bytes (inbox_max_bytes_per_sender)
	reasonStream      = "stream"       // refused by the stream's per-subject limit (last line)
)

// inboxEntry is one stored envelope in the index.
type inboxEntry struct {
	seq  uint64 // stream sequence
	id   uint64 // hashID of the dedupe id
	size int64  // stored bytes (the envelope)
}

// senderUsage is one sender's envelopes in one device's inbox.
type senderUsage struct {
	entries  []inboxEntry // ascending seq
	bytes    int64        // sum of entries' sizes
	reserved int          // admitted into the commit in progress
	resBytes int64
}

// inboxUsage is one device's stored envelopes, by sender.
type inboxUsage struct {
	senders  map[string]*senderUsage
	count    int   // stored envelopes (sum over senders)
	bytes    int64 // stored bytes
	reserved int   // admitted into the commit in progress
	resBytes int64
	checked  time.Time // last check against the stream's first sequence (resyncLocked)
}

// idSeed keys hashID for this process; the index is rebuilt with it on every start.
var idSeed = maphash.MakeSeed()

// hashID is the index key of a dedupe id (64 bits: a sender asking about 256 ids among 10,000 of
// its own has a chance of a false "queued" near 10⁻¹³).
func hashID(dedupeID string) uint64 { return maphash.String(idSeed, dedupeID) }

// DedupeID is the dedupe id of a message for one recipient device: <from>.<messageID>.<device>.
// The sender's device id comes first: the per-sender quota and QueryQueued key on it. Device ids
// and message ids contain no dots.
func DedupeID(from, messageID, device string) string {
	return from + "." + messageID + "." + device
}

// senderOf is the sending device of a dedupe id (see DedupeID), or "" for an id without one.
// Envelopes without a sender (tests, tools) are counted for their device but have no quota.
func senderOf(dedupeID string) string {
	if i := strings.IndexByte(dedupeID, '.'); i > 0 {
		return dedupeID[:i]
	}
	return ""
}

// ErrInboxFull's refusals, one per reason: errors.Is(err, ErrInboxFull) holds for each.
var (
	errFullCount       = fmt.Errorf("%w: the device's inbox holds its maximum of envelopes", ErrInboxFull)
	errFullBytes       = fmt.Errorf("%w: the device's inbox holds its maximum of bytes", ErrInboxFull)
	errFullSenderCount = fmt.Errorf("%w: this sender's share of the device's inbox is used up (envelopes)", ErrInboxFull)
	errFullSenderBytes = fmt.Errorf("%w: this sender's share of the device's inbox is used up (bytes)", ErrInboxFull)
	errFullStream      = fmt.Errorf("%w: the device's inbox holds its maximum of envelopes", ErrInboxFull)
)

// limits are the caps admission enforces; zero means none.
type limits struct {
	perDevice, perDeviceBytes int64
	perSender, perSenderBytes int64
}

// refusal returns why adding size bytes from sender would break l, or "" if it would not.
func (u *inboxUsage) refusal(l limits, sender string, size int64) string {
	switch {
	case l.perDevice > 0 && int64(u.count+u.reserved+1) > l.perDevice:
		return reasonCount
	case l.perDeviceBytes > 0 && u.bytes+u.resBytes+size > l.perDeviceBytes && u.count+u.reserved > 0:
		// One envelope larger than the cap is still taken into an empty inbox: the frame limit
		// bounds it, and refusing it for good would make it undeliverable.
		return reasonBytes
	}
	if sender == "" {
		return ""
	}
	s := u.senders[sender]
	if s == nil {
		return ""
	}
	switch {
	case l.perSender > 0 && int64(len(s.entries)+s.reserved+1) > l.perSender:
		return reasonSenderCount
	case l.perSenderBytes > 0 && s.bytes+s.resBytes+size > l.perSenderBytes && len(s.entries)+s.reserved > 0:
		return reasonSenderBytes
	}
	return ""
}

func (u *inboxUsage) sender(id string) *senderUsage {
	s := u.senders[id]
	if s == nil {
		if u.senders == nil {
			u.senders = make(map[string]*senderUsage, 1)
		}
		s = &senderUsage{}
		u.senders[id] = s
	}
	return s
}

func (u *inboxUsage) reserve(sender string, size int64) {
	u.reserved++
	u.resBytes += size
	s := u.sender(sender)
	s.reserved++
	s.resBytes += size
}

func (u *inboxUsage) unreserve(sender string, size int64) {
	u.reserved--
	u.resBytes -= size
	if s := u.senders[sender]; s != nil {
		s.reserved--
		s.resBytes -= size
		u.dropIfEmpty(sender, s)
	}
}

// add records a stored envelope (sequences arrive in ascending order per device, except when a
// duplicate's original is reported; those are already indexed or purged and are skipped).
func (u *inboxUsage) add(sender string, e inboxEntry) {
	s := u.sender(sender)
	if n := len(s.entries); n > 0 && s.entries[n-1].seq >= e.seq {
		i := sort.Search(n, func(i int) bool { return s.entries[i].seq >= e.seq })
		if i < n && s.entries[i].seq == e.seq {
			return // already indexed
		}
		s.entries = append(s.entries, inboxEntry{})
		copy(s.entries[i+1:], s.entries[i:])
		s.entries[i] = e
	} else {
		s.entries = append(s.entries, e)
	}
	s.bytes += e.size
	u.count++
	u.bytes += e.size
}

// releaseTo forgets every envelope with a sequence up to to (they left the stream).
func (u *inboxUsage) releaseTo(to uint64) {
	for id, s := range u.senders {
		n := sort.Search(len(s.entries), func(i int) bool { return s.entries[i].seq > to })
		if n == 0 {
			continue
		}
		for _, e := range s.entries[:n] {
			s.bytes -= e.size
			u.bytes -= e.size
		}
		u.count -= n
		s.entries = s.entries[n:]
		if len(s.entries) == 0 {
			s.entries = nil
		} else if cap(s.entries) > 2*len(s.entries)+16 {
			s.entries = append([]inboxEntry(nil), s.entries...) // give the purged prefix back
		}
		u.dropIfEmpty(id, s)
	}
}

func (u *inboxUsage) dropIfEmpty(id string, s *senderUsage) {
	if len(s.entries) == 0 && s.reserved == 0 {
		delete(u.senders, id)
	}
}

func (u *inboxUsage) empty() bool { return u.count == 0 && u.reserved == 0 }

// usageLocked returns dev's index entry, rebuilding it from the stream if the device may have
// envelopes stored from before this process started. w.mu must be held.
func (w *shardWriter) usageLocked(ctx context.Context, dev string) (*inboxUsage, error) {
	if u := w.usage[dev]; u != nil {
		return u, nil
	}
	u := &inboxUsage{}
	if _, ok := w.unindexed[dev]; ok {
		if err := w.rebuildLocked(ctx, dev, u); err != nil {
			return nil, err
		}
		delete(w.unindexed, dev)
	}
	w.usage[dev] = u
	return u, nil
}

// rebuildLocked reads dev's stored envelopes (their dedupe ids and sizes) into u.
func (w *shardWriter) rebuildLocked(ctx context.Context, dev string, u *inboxUsage) error {
	subject := w.m.bus.InboxSubject(dev)
	seq := uint64(1)
	for {
		n, err := w.m.getBatchMsgs(ctx, w.stream, subject, seq, maxReadBatch, 1<<20, func(s uint64, msg *nats.Msg) bool {
			seq = s + 1
			id := msg.Header.Get(jetstream.MsgIDHeader)
			u.add(senderOf(id), inboxEntry{seq: s, id: hashID(id), size: int64(len(msg.Data))})
			return true
		})
		if err != nil {
			return fmt.Errorf("%w: rebuild the index of an inbox: %v", ErrStorage, err)
		}
		if n == 0 {
			w.m.metrics.indexRebuilds.Inc()
			return nil
		}
	}
}

// resyncLocked drops the index entries of envelopes that left dev's inbox without this node
// purging them (expired, or purged by another node), by reading the first stored sequence; at most
// once a second per device. It reports whether anything was dropped.
func (w *shardWriter) resyncLocked(ctx context.Context, dev string, u *inboxUsage) bool {
	now := time.Now()
	if now.Sub(u.checked) < time.Second {
		return false
	}
	u.checked = now
	first := uint64(0)
	_, err := w.m.getBatchMsgs(ctx, w.stream, w.m.bus.InboxSubject(dev), 1, 1, 1, func(s uint64, _ *nats.Msg) bool {
		first = s
		return false
	})
	if err != nil {
		return false
	}
	before := u.count
	if first == 0 {
		u.releaseTo(^uint64(0))
	} else {
		u.releaseTo(first - 1)
	}
	return u.count != before
}

// loadUnindexed lists the devices of the shard that have envelopes stored (from the stream's
// per-subject state; nothing is read), so their index is rebuilt when first touched.
func (w *shardWriter) loadUnindexed(ctx context.Context, shard int) error {
	st := w.m.bus.Inbox(shard)
	prefix := fmt.Sprintf("inbox.%02d.", shard)
	info, err := st.Info(ctx, jetstream.WithSubjectFilter(prefix+"*"))
	if err != nil {
		return fmt.Errorf("inbox %s: list stored devices: %w", w.stream, err)
	}
	w.mu.Lock()
	defer w.mu.Unlock()
	for subj, n := range info.State.Subjects {
		if n > 0 && strings.HasPrefix(subj, prefix) {
			w.unindexed[subj[len(prefix):]] = struct{}{}
		}
	}
	return nil
}

// released tells the index that dev's envelopes up to sequence to were purged.
func (m *Mailbox) released(dev string, to uint64) {
	w := m.writers[m.bus.Shard(dev)]
	w.mu.Lock()
	if u := w.usage[dev]; u != nil {
		u.releaseTo(to)
		if u.empty() {
			delete(w.usage, dev)
		}
	}
	w.mu.Unlock()
}

// QueryQueued reports which of ids (message ids) fromDevice sent to deviceID are still stored in
// deviceID's inbox. Only the sender's own envelopes are considered, from the in-memory index: a
// device asking about another sender's messages learns nothing, and no query reads the store
// (except, once per device after a restart, to rebuild its index). Queries are rate-limited per
// asking device (ErrQueryRateLimited).
func (m *Mailbox) QueryQueued(ctx context.Context, deviceID, fromDevice string, ids []string) ([]string, error) {
	if !m.queryLimit.allow(fromDevice) {
		m.metrics.queryRateLimited.Inc()
		return nil, ErrQueryRateLimited
	}
	if len(ids) == 0 || fromDevice == "" {
		return nil, nil
	}
	w := m.writers[m.bus.Shard(deviceID)]
	w.mu.Lock()
	defer w.mu.Unlock()
	var s *senderUsage
	if u := w.usage[deviceID]; u != nil {
		s = u.senders[fromDevice]
	} else if _, ok := w.unindexed[deviceID]; ok {
		u, err := w.usageLocked(ctx, deviceID)
		if err != nil {
			return nil, err
		}
		s = u.senders[fromDevice]
		if u.empty() {
			delete(w.usage, deviceID)
		}
	}
	if s == nil || len(s.entries) == 0 {
		return nil, nil
	}
	want := make(map[uint64]string, len(ids))
	for _, id := range ids {
		want[hashID(DedupeID(fromDevice, id, deviceID))] = id
	}
	var found []string
	for _, e := range s.entries { // at most inbox_max_per_sender, all this sender's own
		if id, ok := want[e.id]; ok {
			found = append(found, id)
			delete(want, e.id)
			if len(want) == 0 {
				break
			}
		}
	}
	return found, nil
}

// classifyStoreErr maps a refusal by JetStream to the mailbox's errors: the per-subject limit is
// a full inbox (permanent), the stream's or the store's byte limit is a full store (retryable).
func classifyStoreErr(err error) error {
	if err == nil {
		return nil
	}
	s := err.Error()
	switch {
	case strings.Contains(s, "maximum messages per subject exceeded"):
		return errFullStream
	case strings.Contains(s, "maximum bytes exceeded"), strings.Contains(s, "insufficient resources"),
		strings.Contains(s, "resources exceeded"), strings.Contains(s, "insufficient storage"):
		return fmt.Errorf("%w: %v", ErrStoreFull, err)
	}
	var apiErr *jetstream.APIError
	if errors.As(err, &apiErr) && apiErr.ErrorCode == 10023 { // JSInsufficientResourcesErr
		return fmt.Errorf("%w: %v", ErrStoreFull, err)
	}
	return fmt.Errorf("%w: %v", ErrStorage, err)
}

// watchStore reads the JetStream account's store usage and limit every second (writers add what
// they commit in between), for storeTight. Stops with the mailbox.
func (m *Mailbox) watchStore() {
	t := time.NewTicker(time.Second)
	defer t.Stop()
	for {
		select {
		case <-t.C:
		case <-m.stop:
			return
		}
		m.readStoreUsage()
	}
}

// readStoreUsage updates storeUsed and storeLimit from the account's usage.
func (m *Mailbox) readStoreUsage() {
	ctx, cancel := context.WithTimeout(context.Background(), 5*time.Second)
	defer cancel()
	info, err := m.bus.JS().AccountInfo(ctx)
	if err != nil {
		return
	}
	limit := info.Limits.MaxStore
	if limit <= 0 {
		limit = m.bus.StoreMaxBytes()
	}
	m.storeLimit.Store(limit)
	m.storeUsed.Store(int64(info.Store))
	m.batchTimedOut.Store(false)
}

// storedSize estimates the bytes an envelope takes in the store (payload, subject, headers and
// the file store's record overhead).
func storedSize(r *appendReq) int64 {
	return int64(len(r.data)+len(r.subject)+len(r.dedupeID)) + 64
}

// reserveBatch reports whether the admitted requests of a commit may go as one atomic batch, and
// if so counts their bytes as used (the caller gives back what was not stored). It says no when
// they, plus a sixteenth of the limit for slack, might not fit in the store, or when an atomic
// commit timed out since the last read of the usage. Such commits are single publishes:
// nats-server 2.15.2 leaves an atomic batch that fills the store unanswered until the commit times
// out, while single publishes are refused at once, one by one.
func (m *Mailbox) reserveBatch(reqs []*appendReq, admitted []int) (int64, bool) {
	if m.batchTimedOut.Load() {
		return 0, false
	}
	limit := m.storeLimit.Load()
	if limit <= 0 {
		return 0, true
	}
	var n int64
	for _, i := range admitted {
		n += storedSize(reqs[i])
	}
	for {
		used := m.storeUsed.Load()
		if used+n+limit/16 > limit {
			return 0, false
		}
		if m.storeUsed.CompareAndSwap(used, used+n) {
			return n, true
		}
	}
}

// isLimitErr reports whether a failed batch was refused by a stream or store limit (so splitting
// it lets the envelopes within the limits through).
func isLimitErr(err error) bool {
	c := classifyStoreErr(err)
	return errors.Is(c, ErrInboxFull) || errors.Is(c, ErrStoreFull)
}

// queryLimiter rate-limits QueryQueued per asking device: token buckets in a fixed table indexed
// by a keyed hash of the device id (bounded memory; devices that share a bucket share its rate,
// and the key is secret, so nobody can aim at another device's bucket).
type queryLimiter struct {
	rate  float64 // tokens per second; 0: no limit
	burst float64
	seed  maphash.Seed
	mu    sync.Mutex
	b     [queryBuckets]struct {
		tokens float64
		at     int64 // nanotime of the last refill
		used   bool
	}
}

const queryBuckets = 4096

func (l *queryLimiter) allow(dev string) bool {
	if l.rate <= 0 {
		return true
	}
	now := nanotime()
	i := maphash.String(l.seed, dev) % queryBuckets
	l.mu.Lock()
	defer l.mu.Unlock()
	b := &l.b[i]
	if !b.used {
		b.used, b.tokens, b.at = true, l.burst, now
	}
	b.tokens = min(l.burst, b.tokens+float64(now-b.at)/1e9*l.rate)
	b.at = now
	if b.tokens < 1 {
		return false
	}
	b.tokens--
	return true
}
