// Copyright 2026 The Petrel Authors
// SPDX-License-Identifier: Apache-2.0

// Package groups keeps group membership: which accounts are members and admins of each group, at
// which version, and the signed event that made that version. It never sees content (names and
// avatars travel end to end). Every change is a SignedGroupEvent made by the acting device; the
// service checks it with the rules that members apply too (proto/petrel/v1 groups.go:
// ParseGroupEvent, VerifyGroupEvent, NextGroupState) plus what only the server can check: the
// actor device is the authenticated device, its identity key (from its directory record) signed
// the event, and every account the event adds exists.
//
// Storage (bus.GroupsBucket, one KV bucket, replicated like the others):
//   - g.<group id>: the group's record, a protobuf GroupResult holding group_id, version,
//     last_event and member_since (members and admins are read from last_event). Changes are a
//     read-check-update on the record's revision: two events never both apply to one version.
//   - m.<account>.<group id>: the index of an account's groups for ListGroups ('.' in an account
//     name is written '='), value the decimal version of the event that made it a member. Entries
//     are written before the record (in atomic batches) and removed after it, each removal only
//     if the entry is older than the removing event, so the index holds at least every
//     membership; List checks each entry against the record and skips the ones a crash or a lost
//     race left behind.
//
// Bounds: a group has at most Config.MaxMembers members; List reads at most MaxListed index
// entries of one account; the send path's cache holds at most Config.CacheMembers member names.
package groups

import (
	"context"
	"errors"
	"fmt"
	"log/slog"
	"slices"
	"strconv"
	"strings"
	"sync"
	"time"

	"github.com/nats-io/nats.go"
	"github.com/nats-io/nats.go/jetstream"
	"github.com/prometheus/client_golang/prometheus"
	"github.com/synadia-io/orbit.go/jetstreamext"
	"google.golang.org/protobuf/proto"

	"github.com/petrelchat/petrel/internal/bus"
	"github.com/petrelchat/petrel/internal/directory"
	pb "github.com/petrelchat/petrel/proto/petrel/v1"
)

// Errors callers branch on (besides the pb.Err*GroupEvent, pb.ErrGroupFull and pb.ErrNotGroup*
// refusals of the event rules, and directory.ErrUnknownUser for an added account that does not
// exist).
var (
	// ErrUnknownGroup: no such group, or the asking account is not a member of it.
	ErrUnknownGroup = errors.New("unknown group")
	// ErrNotActor: the event's actor or actor device is not the authenticated device.
	ErrNotActor = errors.New("the event's actor is not this device")
	// ErrWrongKind: a CreateGroup whose event is not a CREATE, or an UpdateGroup whose event is.
	ErrWrongKind = errors.New("wrong event kind for this request")
	// ErrUnavailable: storage failed or kept conflicting; nothing was changed for certain only
	// when the caller sees no GroupResult (retry: a repeated event is answered as applied).
	ErrUnavailable = errors.New("groups unavailable")
)

// MaxListed is the most groups List returns for one account (index entries read).
const MaxListed = 4096

// Directory is what the service needs of the directory: accounts (to check added members and
// count devices) and devices (the actor's identity key).
type Directory interface {
	Account(ctx context.Context, name string) (*directory.Account, error)
	Device(ctx context.Context, id string) (*directory.Device, error)
}

// Config tunes the service.
type Config struct {
	// MaxMembers is the most members a group may have ([groups] max_group_members). Default:
	// pb.DefaultMaxGroupMembers (1024).
	MaxMembers int
	// CacheMembers bounds the send path's cache of memberships, in member names. Default: 1<<20.
	CacheMembers int
	Logger       *slog.Logger
	Registry     prometheus.Registerer
}

func (c *Config) setDefaults() {
	if c.MaxMembers == 0 {
		c.MaxMembers = pb.DefaultMaxGroupMembers
	}
	if c.CacheMembers == 0 {
		c.CacheMembers = 1 << 20
	}
	if c.Logger == nil {
		c.Logger = slog.Default()
	}
}

// Service keeps group membership. Safe for concurrent use.
type Service struct {
	cfg     Config
	bus     *bus.Bus
	kv      jetstream.KeyValue
	dir     Directory
	log     *slog.Logger
	metrics *metrics
	cache   *cache // nil until Start
	watches sync.WaitGroup
}

// New returns a service over b's groups bucket. It does no I/O; Start turns the cache on.
func New(b *bus.Bus, dir Directory, cfg Config) *Service {
	cfg.setDefaults()
	return &Service{cfg: cfg, bus: b, kv: b.Groups, dir: dir, log: cfg.Logger, metrics: newMetrics(cfg.Registry)}
}

// MaxMembers is the configured limit of members per group.
func (s *Service) MaxMembers() int { return s.cfg.MaxMembers }

// Group is a group as stored: its membership and the signed event that made this version.
type Group struct {
	State     *pb.GroupState
	LastEvent *pb.SignedGroupEvent
}

// Change is an applied event.
type Change struct {
	Group *Group
	Event *pb.GroupEvent
	// Recipients are the accounts the event is delivered to: every member before and after it.
	Recipients []string
	// Repeat: the group's last event is this very event (a retry); nothing was changed now.
	Repeat bool
}

// recordKey and indexKey are the bucket's keys (see the package doc).
func recordKey(gid string) string { return "g." + gid }

func indexKey(account, gid string) string {
	return "m." + strings.ReplaceAll(account, ".", "=") + "." + gid
}

// maxAttempts bounds the read-check-update retries of one change.
const maxAttempts = 8

// Apply checks the signed event sge from the authenticated device p (create: a CreateGroup, else
// an UpdateGroup) and stores it. The refusals: pb.ErrInvalidGroupEvent, ErrWrongKind,
// ErrNotActor, pb.ErrGroupEventSignature, pb.ErrStaleGroupEvent, pb.ErrNotGroupMember,
// pb.ErrNotGroupAdmin, pb.ErrGroupFull, directory.ErrUnknownUser.
func (s *Service) Apply(ctx context.Context, p directory.Principal, sge *pb.SignedGroupEvent, create bool) (*Change, error) {
	ch, err := s.apply(ctx, p, sge, create)
	if err == nil && ch.Repeat {
		s.metrics.events.WithLabelValues("repeat").Inc()
	} else {
		s.metrics.observe(err)
	}
	return ch, err
}

func (s *Service) apply(ctx context.Context, p directory.Principal, sge *pb.SignedGroupEvent, create bool) (*Change, error) {
	ev, err := pb.ParseGroupEvent(sge)
	if err != nil {
		return nil, err
	}
	if (ev.Kind == pb.GroupEventKind_GROUP_EVENT_KIND_CREATE) != create {
		return nil, ErrWrongKind
	}
	if ev.Actor != p.Name || ev.ActorDevice != p.ID {
		return nil, ErrNotActor
	}
	dev, err := s.dir.Device(ctx, p.ID)
	if err != nil {
		return nil, fmt.Errorf("%w: the actor device: %w", ErrUnavailable, err)
	}
	if dev.Name != p.Name {
		return nil, ErrNotActor
	}
	if err := pb.VerifyGroupEvent(dev.IdentityKey, sge); err != nil {
		return nil, err
	}
	checked := false
	for range maxAttempts {
		prev, rev, err := s.latest(ctx, ev.GroupId)
		if err != nil {
			return nil, err
		}
		if prev != nil && proto.Equal(prev.LastEvent, sge) {
			return &Change{Group: prev, Event: ev, Recipients: pb.GroupEventRecipients(ev), Repeat: true}, nil
		}
		var prevState *pb.GroupState
		if prev != nil {
			prevState = prev.State
		}
		next, err := pb.NextGroupState(prevState, ev, s.cfg.MaxMembers)
		if err != nil {
			return nil, err
		}
		joined := joinedBy(ev)
		if !checked {
			if err := s.checkAccounts(ctx, joined); err != nil {
				return nil, err
			}
			checked = true
		}
		if err := s.index(ctx, joined, ev.GroupId, ev.Version); err != nil {
			return nil, err
		}
		g := &Group{State: next, LastEvent: &pb.SignedGroupEvent{Event: sge.Event, Signature: sge.Signature}}
		rec, err := proto.Marshal(&pb.GroupResult{GroupId: ev.GroupId, Version: ev.Version, LastEvent: g.LastEvent, MemberSince: next.Since})
		if err != nil {
			return nil, fmt.Errorf("%w: encode record: %v", ErrUnavailable, err)
		}
		if prev == nil {
			_, err = s.kv.Create(ctx, recordKey(ev.GroupId), rec)
			if errors.Is(err, jetstream.ErrKeyExists) {
				continue // created meanwhile: read it (a second CREATE is stale)
			}
		} else {
			_, err = s.kv.Update(ctx, recordKey(ev.GroupId), rec, rev)
		}
		if isConflict(err) {
			s.metrics.conflicts.Inc()
			continue
		}
		if err != nil {
			return nil, fmt.Errorf("%w: write group record: %v", ErrUnavailable, err)
		}
		if s.cache != nil {
			s.cache.drop(ev.GroupId)
		}
		s.unindex(ctx, leftBy(ev), ev.GroupId, ev.Version)
		return &Change{Group: g, Event: ev, Recipients: pb.GroupEventRecipients(ev)}, nil
	}
	return nil, fmt.Errorf("%w: the group kept changing", ErrUnavailable)
}

// joinedBy lists the accounts an event makes members.
func joinedBy(ev *pb.GroupEvent) []string {
	switch ev.Kind {
	case pb.GroupEventKind_GROUP_EVENT_KIND_CREATE:
		return ev.Members
	case pb.GroupEventKind_GROUP_EVENT_KIND_ADD:
		return ev.Targets
	}
	return nil
}

// leftBy lists the accounts an event ends the membership of.
func leftBy(ev *pb.GroupEvent) []string {
	switch ev.Kind {
	case pb.GroupEventKind_GROUP_EVENT_KIND_REMOVE:
		return ev.Targets
	case pb.GroupEventKind_GROUP_EVENT_KIND_LEAVE:
		return []string{ev.Actor}
	}
	return nil
}

// checkAccounts checks that every named account exists (directory.ErrUnknownUser otherwise), a
// few lookups at a time.
func (s *Service) checkAccounts(ctx context.Context, names []string) error {
	const parallel = 16
	var (
		wg    sync.WaitGroup
		mu    sync.Mutex
		first error
	)
	sem := make(chan struct{}, parallel)
	for _, n := range names {
		sem <- struct{}{}
		wg.Go(func() {
			defer func() { <-sem }()
			if _, err := s.dir.Account(ctx, n); err != nil {
				mu.Lock()
				if first == nil || errors.Is(err, directory.ErrUnknownUser) && !errors.Is(first, directory.ErrUnknownUser) {
					first = err
				}
				mu.Unlock()
			}
		})
	}
	wg.Wait()
	if first != nil && !errors.Is(first, directory.ErrUnknownUser) {
		return fmt.Errorf("%w: look up members: %w", ErrUnavailable, first)
	}
	return first
}

// indexBatch is the most index entries written in one atomic batch (the server's limit is 1,000).
const indexBatch = 500

// index records that accounts are members of gid from version on, in atomic batches.
func (s *Service) index(ctx context.Context, accounts []string, gid string, version uint64) error {
	v := []byte(strconv.FormatUint(version, 10))
	for len(accounts) > 0 {
		n := min(len(accounts), indexBatch)
		msgs := make([]*nats.Msg, n)
		for i, a := range accounts[:n] {
			msgs[i] = nats.NewMsg("$KV." + bus.GroupsBucket + "." + indexKey(a, gid))
			msgs[i].Data = v
		}
		if _, err := jetstreamext.PublishMsgBatch(ctx, s.bus.JS(), msgs); err != nil {
			return fmt.Errorf("%w: write group index: %v", ErrUnavailable, err)
		}
		accounts = accounts[n:]
	}
	return nil
}

// unindex removes the index entries of accounts for gid that are older than version (a later
// entry belongs to a membership that began after this event). Failures are logged: List skips
// entries whose account is not a member.
func (s *Service) unindex(ctx context.Context, accounts []string, gid string, version uint64) {
	for _, a := range accounts {
		key := indexKey(a, gid)
		v, rev, ok, err := s.bus.KVLatest(ctx, bus.GroupsBucket, key)
		if err != nil {
			s.log.Warn("group index entry not removed", "group", gid, "err", err)
			continue
		}
		if !ok {
			continue
		}
		if since, err := strconv.ParseUint(string(v), 10, 64); err == nil && since > version {
			continue
		}
		if err := s.kv.Purge(ctx, key, jetstream.LastRevision(rev)); err != nil && !isConflict(err) {
			s.log.Warn("group index entry not removed", "group", gid, "err", err)
		}
	}
}

// readTimeout bounds a read made for a caller without a deadline.
const readTimeout = 10 * time.Second

// latest reads a group's record through the stream leader, with its revision; nil when the group
// does not exist.
func (s *Service) latest(ctx context.Context, gid string) (*Group, uint64, error) {
	if !pb.ValidGroupID(gid) {
		return nil, 0, nil
	}
	if _, ok := ctx.Deadline(); !ok {
		var cancel context.CancelFunc
		ctx, cancel = context.WithTimeout(ctx, readTimeout)
		defer cancel()
	}
	v, rev, ok, err := s.bus.KVLatest(ctx, bus.GroupsBucket, recordKey(gid))
	if err != nil {
		return nil, 0, fmt.Errorf("%w: read group: %v", ErrUnavailable, err)
	}
	if !ok {
		return nil, 0, nil
	}
	g, err := decodeRecord(v)
	if err != nil {
		return nil, 0, fmt.Errorf("%w: group record %s: %v", ErrUnavailable, gid, err)
	}
	return g, rev, nil
}

// decodeRecord parses a stored record.
func decodeRecord(v []byte) (*Group, error) {
	rec := &pb.GroupResult{}
	if err := proto.Unmarshal(v, rec); err != nil {
		return nil, err
	}
	ev := &pb.GroupEvent{}
	if err := proto.Unmarshal(rec.GetLastEvent().GetEvent(), ev); err != nil {
		return nil, err
	}
	if len(rec.MemberSince) != len(ev.Members) || ev.Version != rec.Version {
		return nil, errors.New("record does not match its event")
	}
	return &Group{
		State:     &pb.GroupState{GroupID: ev.GroupId, Version: ev.Version, Members: ev.Members, Admins: ev.Admins, Since: rec.MemberSince},
		LastEvent: rec.LastEvent,
	}, nil
}

// Get returns group gid as stored now, for a member: ErrUnknownGroup when it does not exist or
// account is not a member.
func (s *Service) Get(ctx context.Context, account, gid string) (*Group, error) {
	g, _, err := s.latest(ctx, gid)
	if err != nil {
		return nil, err
	}
	if g == nil || !g.State.IsMember(account) {
		return nil, ErrUnknownGroup
	}
	return g, nil
}

// Members returns group gid's membership for the send path, from the cache when it holds it
// (kept correct by a watch on the bucket: see Start). ErrUnknownGroup when the group does not
// exist. The state is shared: do not modify it.
func (s *Service) Members(ctx context.Context, gid string) (*pb.GroupState, error) {
	if !pb.ValidGroupID(gid) {
		return nil, ErrUnknownGroup
	}
	c := s.cache
	var gen uint64
	if c != nil {
		var st *pb.GroupState
		if st, gen = c.get(gid); st != nil {
			return st, nil
		}
	}
	g, _, err := s.latest(ctx, gid)
	if err != nil {
		return nil, err
	}
	if g == nil {
		return nil, ErrUnknownGroup
	}
	if c != nil {
		c.put(gid, g.State, gen)
	}
	return g.State, nil
}

// List returns the groups account is a member of (at most MaxListed index entries are read), in
// group id order.
func (s *Service) List(ctx context.Context, account string) ([]*Group, error) {
	if !pb.ValidName(account) {
		return nil, nil
	}
	prefix := "$KV." + bus.GroupsBucket + "."
	it, err := jetstreamext.GetLastMsgsFor(ctx, s.bus.JS(), "KV_"+bus.GroupsBucket,
		[]string{prefix + indexKey(account, "*")}, jetstreamext.GetLastMsgsBatchSize(MaxListed))
	if err != nil {
		if errors.Is(err, jetstreamext.ErrNoMessages) {
			return nil, nil
		}
		return nil, fmt.Errorf("%w: read group index: %v", ErrUnavailable, err)
	}
	var gids []string
	for msg, err := range it {
		if err != nil {
			if errors.Is(err, jetstreamext.ErrNoMessages) {
				break
			}
			return nil, fmt.Errorf("%w: read group index: %v", ErrUnavailable, err)
		}
		if op := msg.Header.Get("KV-Operation"); op != "" { // a removed entry
			continue
		}
		gid := msg.Subject[strings.LastIndexByte(msg.Subject, '.')+1:]
		if pb.ValidGroupID(gid) {
			gids = append(gids, gid)
		}
		if len(gids) == MaxListed {
			break
		}
	}
	slices.Sort(gids)
	out := make([]*Group, 0, len(gids))
	for _, gid := range gids {
		g, _, err := s.latest(ctx, gid)
		if err != nil {
			return nil, err
		}
		if g != nil && g.State.IsMember(account) {
			out = append(out, g)
		}
	}
	return out, nil
}

// Result is what GroupResult says of g; with devices, member_devices counts each member's devices
// (an account that no longer exists counts 0).
func (s *Service) Result(ctx context.Context, g *Group, devices bool) (*pb.GroupResult, error) {
	r := &pb.GroupResult{
		GroupId: g.State.GroupID, Version: g.State.Version, Members: g.State.Members, Admins: g.State.Admins,
		LastEvent: g.LastEvent, MemberSince: g.State.Since,
	}
	if devices {
		r.MemberDevices = make([]uint32, len(g.State.Members))
		for i, m := range g.State.Members {
			acc, err := s.dir.Account(ctx, m)
			switch {
			case errors.Is(err, directory.ErrUnknownUser):
			case err != nil:
				return nil, fmt.Errorf("%w: %w", ErrUnavailable, err)
			default:
				r.MemberDevices[i] = uint32(len(acc.Devices))
			}
		}
	}
	return r, nil
}

// isConflict reports whether err is a lost compare-and-set (the key changed since its revision).
func isConflict(err error) bool {
	var apiErr *jetstream.APIError
	if !errors.As(err, &apiErr) {
		return false
	}
	return apiErr.ErrorCode == jetstream.JSErrCodeStreamWrongLastSequence ||
		apiErr.ErrorCode == jetstream.JSErrCodeStreamWrongLastSequenceConstant
}
