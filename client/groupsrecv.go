// Copyright 2026 The Petrel Authors
// SPDX-License-Identifier: Apache-2.0

package client

import (
	"context"
	"errors"
	"fmt"
	"slices"
	"time"

	"github.com/petrelchat/petrel/client/store"
	"github.com/petrelchat/petrel/e2ee"
	petrelv1 "github.com/petrelchat/petrel/proto/petrel/v1"
	"google.golang.org/protobuf/proto"
)

// Receiving in groups: membership events, group messages, and the pairwise control messages
// (sender keys, requests for them, group names). Everything here runs inside the inbound batch's
// transaction; what needs the network waits in the store for syncGroups (the sender loop).

// Kinds of held items (store.HeldGroupItem.Kind).
const (
	heldMessage   = "message"
	heldSenderKey = "sender_key"
	heldMeta      = "meta"
)

// receiveGroupEvent handles an ENVELOPE_TYPE_GROUP_EVENT envelope: a SignedGroupEvent from the
// server's record of the group. The next event of a group whose actor device is known is checked
// and applied at once; any other waits for syncGroups.
func (c *Client) receiveGroupEvent(tx *store.Tx, env *petrelv1.Envelope) (receiveResult, error) {
	var res receiveResult
	refuse := func(err error) (receiveResult, error) {
		c.log.Warn("refusing a group event", "group", env.GetGroupId(), "from", env.GetFrom(), "err", err)
		res.events = append(res.events, &DecryptFailed{From: env.GetFrom(), FromDevice: env.GetFromDevice(),
			MessageID: env.GetMessageId(), Err: err})
		return res, nil
	}
	var sge petrelv1.SignedGroupEvent
	if err := proto.Unmarshal(env.GetCiphertext(), &sge); err != nil {
		return refuse(fmt.Errorf("%w: does not parse", ErrGroupEventRefused))
	}
	ev, err := petrelv1.ParseGroupEvent(&sge)
	if err != nil {
		return refuse(fmt.Errorf("%w: %w", ErrGroupEventRefused, err))
	}
	if ev.GetGroupId() != env.GetGroupId() {
		return refuse(fmt.Errorf("%w: the envelope names another group", ErrGroupEventRefused))
	}
	g, err := tx.Group(ev.GetGroupId())
	if errors.Is(err, store.ErrNotFound) {
		g = nil
	} else if err != nil {
		return res, err
	}
	if g != nil && ev.GetVersion() <= g.Version {
		return res, nil // seen (or superseded) already
	}
	if g != nil && ev.GetVersion() == g.Version+1 {
		key, ok, err := c.actorKey(tx, ev.GetActor(), ev.GetActorDevice())
		if err != nil {
			return res, &storeError{err}
		}
		if ok {
			evs, err := c.applyEvent(tx, g, &sge, ev, key)
			if isStoreErr(err) {
				return res, err
			}
			if err != nil {
				return refuse(err)
			}
			res.events = append(res.events, evs...)
			more, err := c.retryHeld(tx, g.ID, func(*store.HeldGroupItem) bool { return true })
			res.events = append(res.events, more...)
			res.groupSync = true // pending events may follow on from this one
			return res, err
		}
	}
	if tx.CountPendingGroupEvents() >= maxPendingGroupEvents {
		return refuse(fmt.Errorf("%w: too many group events waiting", ErrGroupEventRefused))
	}
	err = tx.PutPendingGroupEvent(ev.GetGroupId(), ev.GetVersion(), &store.PendingGroupEvent{Event: env.GetCiphertext(),
		FromDevice: env.GetFromDevice(), ReceivedAt: c.cfg.Now()})
	res.groupSync = true
	return res, err
}

// receiveGroupMessage handles an ENVELOPE_TYPE_GROUP envelope: a sender-key message.
func (c *Client) receiveGroupMessage(tx *store.Tx, env *petrelv1.Envelope) (receiveResult, error) {
	var res receiveResult
	from, dev, id, gid := env.GetFrom(), env.GetFromDevice(), env.GetMessageId(), env.GetGroupId()
	keyID, err := e2ee.SenderKeyMessageKeyID(env.GetCiphertext())
	if err != nil || !petrelv1.ValidGroupID(gid) {
		if err == nil {
			err = fmt.Errorf("%w: group message without a valid group id", ErrProtocol)
		}
		res.events = append(res.events, &DecryptFailed{From: from, FromDevice: dev, MessageID: id, Err: err})
		return res, nil
	}
	h := &store.HeldGroupItem{Kind: heldMessage, Group: gid, From: from, FromDevice: dev, ID: id, KeyID: keyID,
		Data: env.GetCiphertext(), ServerTime: time.UnixMilli(env.GetServerTimeMs()), HeldAt: c.cfg.Now()}
	return c.openGroupMessage(tx, h, true)
}

// openGroupMessage decrypts and records a group message (fresh: just received; else held). One
// that cannot be decrypted yet is held (if fresh): its group, or its sender as a member, is not
// known yet (syncGroups fetches the group), or its sender key is not (asked for). A held message
// that decrypts is removed from the held items by the caller (res.done).
func (c *Client) openGroupMessage(tx *store.Tx, h *store.HeldGroupItem, fresh bool) (res receiveResult, err error) {
	fail := func(err error) (receiveResult, error) {
		c.log.Warn("dropping undecryptable group message", "group", h.Group, "from", h.From, "from_device", h.FromDevice,
			"message_id", h.ID, "err", err)
		res.events = append(res.events, &DecryptFailed{From: h.From, FromDevice: h.FromDevice, MessageID: h.ID, Err: err})
		res.done = true
		return res, nil
	}
	hold := func() (receiveResult, error) {
		if fresh {
			evs, err := c.hold(tx, h)
			res.events = append(res.events, evs...)
			return res, err
		}
		return res, nil
	}
	own := h.From == c.name
	if own && h.FromDevice == c.deviceID {
		res.done = true // this device's own message: nothing to show
		return res, nil
	}
	if own {
		if _, err := tx.HistoryByID(store.Outgoing, store.GroupKey(h.Group), h.ID); err == nil {
			res.done = true
			return res, nil
		} else if !errors.Is(err, store.ErrNotFound) {
			return res, err
		}
	} else if _, err := tx.HistoryByID(store.Incoming, h.From, h.ID); err == nil {
		res.done, res.receiptFor, res.receiptGroup = true, h.ID, h.Group // a duplicate: receipted again
		return res, nil
	} else if !errors.Is(err, store.ErrNotFound) {
		return res, err
	}
	g, err := tx.Group(h.Group)
	if errors.Is(err, store.ErrNotFound) || err == nil && (g.Left || !g.IsMember(h.From)) {
		res.groupSync = true
		return hold()
	}
	if err != nil {
		return res, err
	}
	recvs, err := tx.SenderKeyReceivers(h.Group, h.From, h.FromDevice)
	if err != nil {
		return res, err
	}
	i := slices.IndexFunc(recvs, func(r *store.SenderKeyRecv) bool { return r.KeyID == h.KeyID })
	if i < 0 {
		if err := c.requestSenderKey(tx, h); err != nil {
			return res, err
		}
		res.groupSync = true // kicks the outbox
		return hold()
	}
	r, err := e2ee.UnmarshalSenderKeyReceiver(recvs[i].Receiver)
	if err != nil {
		return res, &storeError{fmt.Errorf("stored sender key: %w", err)}
	}
	pt, err := r.Decrypt(h.Data)
	if errors.Is(err, e2ee.ErrDuplicateMessage) {
		res.done = true
		return res, nil
	}
	if err != nil {
		return fail(err)
	}
	if recvs[i].Receiver, err = r.MarshalBinary(); err != nil {
		return res, err
	}
	if err := tx.PutSenderKeyReceiver(h.Group, h.From, h.FromDevice, recvs[i]); err != nil {
		return res, err
	}
	var content petrelv1.Content
	if err := proto.Unmarshal(pt, &content); err != nil {
		return fail(fmt.Errorf("%w: undecodable content", ErrProtocol))
	}
	if content.GetMessageId() != h.ID || content.GetGroupId() != h.Group {
		return fail(fmt.Errorf("%w: message or group id does not match the encrypted one", ErrProtocol))
	}
	res.done = true
	now := c.cfg.Now()
	switch b := content.GetBody().(type) {
	case *petrelv1.Content_Text:
		rec := &store.HistoryRecord{ID: h.ID, Dir: store.Incoming, Peer: h.From, PeerDevice: h.FromDevice, Group: h.Group,
			Body: b.Text.GetBody(), SentAt: time.UnixMilli(b.Text.GetSentAtMs()), ServerTime: h.ServerTime, ReceivedAt: now,
			ExpiresIn: timerFromContent(content.GetExpiresInMs())}
		if own {
			rec.Dir, rec.Peer, rec.Synced, rec.Status = store.Outgoing, store.GroupKey(h.Group), true, store.StatusSent
		} else {
			res.receiptFor, res.receiptGroup = h.ID, h.Group
		}
		if err := tx.AddHistory(rec); err != nil {
			return res, err
		}
		if own { // a copy of a sent disappearing message: its countdown runs from sent_at
			if err := c.startSentCountdown(tx, rec); err != nil {
				return res, err
			}
		}
		res.events = append(res.events, c.messageFromRecord(rec))
	case *petrelv1.Content_Disappearing: // disappearing.go
		return c.receiveGroupTimer(tx, h, own, b.Disappearing, now)
	case *petrelv1.Content_Typing: // shown (if fresh: a held one is stale), never stored
		if fresh && !own {
			res.events = append(res.events, &Typing{From: h.From, Typing: b.Typing.GetTyping(), Group: h.Group})
		}
	default:
		// A content type this version does not know: ignored.
	}
	return res, nil
}

// hold keeps h (bounded: the oldest items are dropped, reported as undecryptable).
func (c *Client) hold(tx *store.Tx, h *store.HeldGroupItem) ([]Event, error) {
	var events []Event
	if n := tx.CountHeld(); n >= maxHeldItems {
		old, err := tx.Held(n - maxHeldItems + 1)
		if err != nil {
			return nil, err
		}
		for _, o := range old {
			if err := tx.DeleteHeld(o.Seq); err != nil {
				return nil, err
			}
			if o.Kind == heldMessage {
				events = append(events, &DecryptFailed{From: o.From, FromDevice: o.FromDevice, MessageID: o.ID,
					Err: errors.New("dropped: its sender key never came (too many group messages waiting)")})
			}
		}
	}
	return events, tx.AddHeld(h)
}

// requestSenderKey asks the sender device of h for its sender key (pairwise), at most once per
// skRequestInterval per key.
func (c *Client) requestSenderKey(tx *store.Tx, h *store.HeldGroupItem) error {
	key := fmt.Sprintf("%s/%s/%d", h.Group, h.FromDevice, h.KeyID)
	if !c.groups.allow(&c.groups.requested, key, c.cfg.Now()) {
		return nil
	}
	c.log.Info("asking for a sender key", "group", h.Group, "from", h.From, "from_device", h.FromDevice, "key_id", h.KeyID)
	return c.queueControl(tx, h.From, h.FromDevice, &petrelv1.Content{GroupId: h.Group,
		Body: &petrelv1.Content_SenderKeyRequest{SenderKeyRequest: &petrelv1.SenderKeyRequest{KeyId: h.KeyID}}})
}

// isGroupControl reports a pairwise Content about a group that receiveGroupControl handles.
func isGroupControl(content *petrelv1.Content) bool {
	if content.GetGroupId() == "" {
		return false
	}
	switch content.GetBody().(type) {
	case *petrelv1.Content_SenderKey, *petrelv1.Content_SenderKeyRequest, *petrelv1.Content_GroupMeta:
		return true
	}
	return false
}

// receiveGroupControl handles a pairwise control message about a group from device dev of from
// (authenticated by the pairwise session; ident is its identity key): a sender key, a request for
// this device's sender key, or the group's name.
func (c *Client) receiveGroupControl(tx *store.Tx, env *petrelv1.Envelope, content *petrelv1.Content, ident *e2ee.IdentityKey) (receiveResult, error) {
	var res receiveResult
	from, dev, gid := env.GetFrom(), env.GetFromDevice(), content.GetGroupId()
	if !petrelv1.ValidGroupID(gid) {
		c.log.Warn("dropping a group control message without a valid group id", "from", from, "from_device", dev)
		return res, nil
	}
	if from == c.name {
		var key []byte
		if ident != nil {
			key = ident.Bytes()
		}
		listed, err := c.ownListed(tx, dev, key)
		if err != nil {
			return res, err
		}
		if !listed {
			c.log.Warn("dropping a group control message from an own device the signed list does not name", "from_device", dev)
			return res, nil
		}
	}
	h := &store.HeldGroupItem{Group: gid, From: from, FromDevice: dev, ID: env.GetMessageId(), HeldAt: c.cfg.Now()}
	var err error
	switch b := content.GetBody().(type) {
	case *petrelv1.Content_SenderKey:
		h.Kind, h.Data, h.GroupVersion = heldSenderKey, b.SenderKey.GetDistribution(), b.SenderKey.GetGroupVersion()
		res, err = c.useSenderKey(tx, h, true)
	case *petrelv1.Content_GroupMeta:
		h.Kind, h.Data = heldMeta, []byte(b.GroupMeta.GetName())
		res, err = c.useMeta(tx, h, true)
	case *petrelv1.Content_SenderKeyRequest:
		err = c.answerRequest(tx, gid, from, dev, b.SenderKeyRequest.GetKeyId())
	}
	// The outbox may hold something new: an answer, or receipts for held messages now decrypted.
	res.groupSync = true
	return res, err
}

// useSenderKey stores a member device's sender key and decrypts the messages held for it.
func (c *Client) useSenderKey(tx *store.Tx, h *store.HeldGroupItem, fresh bool) (res receiveResult, err error) {
	if h.From == c.name && h.FromDevice == c.deviceID {
		res.done = true
		return res, nil
	}
	r, err := e2ee.NewSenderKeyReceiver(h.Data)
	if err != nil {
		c.log.Warn("dropping a malformed sender key", "group", h.Group, "from", h.From, "from_device", h.FromDevice, "err", err)
		res.done = true
		return res, nil
	}
	g, err := tx.Group(h.Group)
	if errors.Is(err, store.ErrNotFound) || err == nil && (g.Left || !g.IsMember(h.From)) {
		res.groupSync = true
		if fresh {
			evs, err := c.hold(tx, h)
			res.events = evs
			return res, err
		}
		return res, nil
	}
	if err != nil {
		return res, err
	}
	res.done = true
	keyID := r.KeyID()
	recvs, err := tx.SenderKeyReceivers(h.Group, h.From, h.FromDevice)
	if err != nil {
		return res, err
	}
	if slices.ContainsFunc(recvs, func(x *store.SenderKeyRecv) bool { return x.KeyID == keyID }) {
		return res, nil // known: the one already stored has decrypted from its own point on
	}
	if len(recvs) >= maxReceiversPerDevice {
		oldest := slices.MinFunc(recvs, func(a, b *store.SenderKeyRecv) int { return a.Added.Compare(b.Added) })
		if err := tx.DeleteSenderKeyReceiver(h.Group, h.From, h.FromDevice, oldest.KeyID); err != nil {
			return res, err
		}
	}
	raw, err := r.MarshalBinary()
	if err != nil {
		return res, err
	}
	if err := tx.PutSenderKeyReceiver(h.Group, h.From, h.FromDevice, &store.SenderKeyRecv{KeyID: keyID, Receiver: raw, Added: c.cfg.Now()}); err != nil {
		return res, err
	}
	res.events, err = c.retryHeld(tx, h.Group, func(o *store.HeldGroupItem) bool {
		return o.Kind == heldMessage && o.From == h.From && o.FromDevice == h.FromDevice && o.KeyID == keyID
	})
	return res, err
}

// useMeta takes a group's name from a member (the first one told wins; a clash on this device
// gets a suffix).
func (c *Client) useMeta(tx *store.Tx, h *store.HeldGroupItem, fresh bool) (res receiveResult, err error) {
	g, err := tx.Group(h.Group)
	if errors.Is(err, store.ErrNotFound) || err == nil && (g.Left || !g.IsMember(h.From)) {
		res.groupSync = true
		if fresh {
			evs, err := c.hold(tx, h)
			res.events = evs
			return res, err
		}
		return res, nil
	}
	if err != nil {
		return res, err
	}
	res.done = true
	name := string(h.Data)
	if g.NameSet || !ValidGroupName(name) {
		return res, nil
	}
	g.Name, g.NameSet = uniqueGroupName(tx, name, g.ID), true
	return res, tx.PutGroup(g)
}

// answerRequest answers a member device's request for this device's sender key keyID with the
// distribution that device was given (or, for the current key, the current one, which it is owed
// from now on). Requests from non-members and for unknown keys are ignored.
func (c *Client) answerRequest(tx *store.Tx, gid, from, dev string, keyID uint32) error {
	g, err := tx.Group(gid)
	if errors.Is(err, store.ErrNotFound) {
		return nil
	}
	if err != nil {
		return err
	}
	if g.Left || !g.IsMember(from) || g.SenderKey == nil || from == c.name && dev == c.deviceID {
		return nil
	}
	given, err := tx.Given(gid, keyID, dev)
	switch {
	case errors.Is(err, store.ErrNotFound) && keyID == g.SenderKeyID:
		sk, err := e2ee.UnmarshalSenderKey(g.SenderKey)
		if err != nil {
			return &storeError{fmt.Errorf("stored sender key: %w", err)}
		}
		given = &store.GivenKey{Account: from, Distribution: sk.Distribution()}
		if err := tx.PutGiven(gid, keyID, dev, given); err != nil {
			return err
		}
	case errors.Is(err, store.ErrNotFound):
		c.log.Info("ignoring a request for a sender key this device never gave", "group", gid, "from_device", dev)
		return nil
	case err != nil:
		return err
	}
	if given.Account != from {
		return nil
	}
	if !c.groups.allow(&c.groups.answered, fmt.Sprintf("%s/%s/%d", gid, dev, keyID), c.cfg.Now()) {
		return nil
	}
	c.log.Info("sending a sender key again on request", "group", gid, "to", from, "to_device", dev)
	return c.queueControl(tx, from, dev, &petrelv1.Content{GroupId: gid, Body: &petrelv1.Content_SenderKey{
		SenderKey: &petrelv1.SenderKeyDistribution{Distribution: given.Distribution, GroupVersion: g.Version}}})
}

// retryHeld tries again the held items of group gid that match: messages are decrypted (and
// receipted), sender keys and names used. Items that succeed leave the held items.
func (c *Client) retryHeld(tx *store.Tx, gid string, match func(*store.HeldGroupItem) bool) ([]Event, error) {
	items, err := tx.Held(maxHeldItems)
	if err != nil {
		return nil, err
	}
	var events []Event
	receipts := map[string][]string{}
	var order []string
	for _, h := range items {
		if h.Group != gid || !match(h) {
			continue
		}
		var res receiveResult
		switch h.Kind {
		case heldMessage:
			res, err = c.openGroupMessage(tx, h, false)
		case heldSenderKey:
			res, err = c.useSenderKey(tx, h, false)
		case heldMeta:
			res, err = c.useMeta(tx, h, false)
		default:
			res.done = true
		}
		if err != nil {
			return nil, err
		}
		events = append(events, res.events...)
		if res.receiptFor != "" {
			if _, ok := receipts[h.From]; !ok {
				order = append(order, h.From)
			}
			receipts[h.From] = append(receipts[h.From], res.receiptFor)
		}
		if res.done {
			if err := tx.DeleteHeld(h.Seq); err != nil {
				return nil, err
			}
		}
	}
	for _, from := range order {
		for ids := receipts[from]; len(ids) > 0; {
			n := min(len(ids), maxReceiptIDs)
			if err := c.queueReceipt(tx, from, gid, ids[:n]); err != nil {
				return nil, err
			}
			ids = ids[n:]
		}
	}
	return events, nil
}

// syncGroups, run by the sender loop when asked (requestGroupSync), applies pending membership
// events (fetching their actors' device lists, and the group from the server when versions are
// missing), fetches the groups that held contents wait for, and drops held items past heldTTL.
// Only errors that end the connection are returned.
func (l *link) syncGroups(ctx context.Context) error {
	c := l.c
	if !c.groups.syncWanted.Swap(false) {
		return nil
	}
	return l.syncGroupsNow(ctx)
}

// SyncGroups waits for a connection (Run) whose stored backlog has been received, then applies
// the group changes and group contents that wait for something from the server (a device list,
// the group's state). Commands that show groups call it first.
func (c *Client) SyncGroups(ctx context.Context) error {
	l, err := c.ready(ctx)
	if err != nil {
		return err
	}
	return l.syncGroupsNow(ctx)
}

func (l *link) syncGroupsNow(ctx context.Context) error {
	c := l.c
	c.groups.syncMu.Lock()
	defer c.groups.syncMu.Unlock()
	var pending []string
	var held []*store.HeldGroupItem
	err := c.st.View(func(tx *store.Tx) error {
		pending = tx.PendingGroupIDs(64)
		var err error
		held, err = tx.Held(maxHeldItems)
		return err
	})
	if err != nil {
		return &storeError{err}
	}
	fetched := map[string]bool{}
	for _, gid := range pending {
		if err := l.applyPending(ctx, gid, fetched); err != nil {
			if isConnErr(err) || isStoreErr(err) {
				return err
			}
			c.log.Warn("group events not applied", "group", gid, "err", err)
		}
	}
	// Held contents whose group (or sender's membership) this device does not know: the group is
	// fetched once (a device linked after the group was made, or an event still on its way).
	now := c.cfg.Now()
	var expired []uint64
	for _, h := range held {
		if now.Sub(h.HeldAt) > heldTTL {
			expired = append(expired, h.Seq)
			continue
		}
		if fetched[h.Group] {
			continue
		}
		var known bool
		err := c.st.View(func(tx *store.Tx) error {
			g, err := tx.Group(h.Group)
			if errors.Is(err, store.ErrNotFound) {
				return nil
			}
			known = err == nil && !g.Left && g.IsMember(h.From)
			return err
		})
		if err != nil {
			return &storeError{err}
		}
		if known {
			continue
		}
		fetched[h.Group] = true
		if _, err := l.refreshGroup(ctx, h.Group); err != nil {
			if isConnErr(err) || isStoreErr(err) {
				return err
			}
			c.log.Info("fetching a group for held messages failed", "group", h.Group, "err", err)
		}
	}
	var events []Event
	err = c.st.Update(func(tx *store.Tx) error {
		events = events[:0]
		for _, seq := range expired {
			if err := tx.DeleteHeld(seq); err != nil {
				return err
			}
		}
		for gid := range fetched {
			evs, err := c.retryHeld(tx, gid, func(*store.HeldGroupItem) bool { return true })
			if err != nil {
				return err
			}
			events = append(events, evs...)
		}
		return nil
	})
	if err != nil {
		return &storeError{err}
	}
	c.kickOutbox()
	for _, ev := range events {
		c.emit(l.runCtx, ev)
	}
	return nil
}

// applyPending applies group gid's pending events in version order. A version that does not
// follow the local one makes it fetch the group from the server once (refreshGroup).
func (l *link) applyPending(ctx context.Context, gid string, fetched map[string]bool) error {
	c := l.c
	for round := 0; round < maxPendingGroupEvents; round++ {
		var (
			cur      *store.Group
			versions []uint64
			pending  []*store.PendingGroupEvent
		)
		err := c.st.View(func(tx *store.Tx) error {
			g, err := tx.Group(gid)
			if err != nil && !errors.Is(err, store.ErrNotFound) {
				return err
			}
			cur = g
			versions, pending, err = tx.PendingGroupEvents(gid, 1)
			return err
		})
		if err != nil {
			return &storeError{err}
		}
		if len(pending) == 0 {
			return nil
		}
		v, p := versions[0], pending[0]
		var actor string // set once the event parses
		drop := func(why error) error {
			if why != nil {
				c.log.Warn("refusing a group event", "group", gid, "version", v, "err", why)
				c.emit(l.runCtx, &DecryptFailed{From: actor, FromDevice: p.FromDevice, MessageID: fmt.Sprintf("v%d", v), Err: why})
			}
			return storeErr(c.st.Update(func(tx *store.Tx) error { return tx.DeletePendingGroupEvent(gid, v) }))
		}
		if cur != nil && v <= cur.Version {
			if err := drop(nil); err != nil {
				return err
			}
			continue
		}
		var sge petrelv1.SignedGroupEvent
		var ev *petrelv1.GroupEvent
		err = proto.Unmarshal(p.Event, &sge)
		if err == nil {
			ev, err = petrelv1.ParseGroupEvent(&sge)
		}
		if err != nil {
			if err := drop(fmt.Errorf("%w: %w", ErrGroupEventRefused, err)); err != nil {
				return err
			}
			continue
		}
		actor = ev.GetActor()
		follows := cur != nil && v == cur.Version+1
		if !follows {
			// Versions are missing before this one (or the group is new here): the server's
			// record, once, decides where to start from.
			if fetched[gid] {
				return nil // wait for the missing versions
			}
			fetched[gid] = true
			if _, err := l.refreshGroup(ctx, gid); err != nil {
				return err
			}
			continue
		}
		key, err := l.actorIdentity(ctx, ev.GetActor(), ev.GetActorDevice())
		if errors.Is(err, ErrGroupEventRefused) {
			if err := drop(err); err != nil {
				return err
			}
			continue
		}
		if err != nil {
			return err
		}
		var events []Event
		err = c.st.Update(func(tx *store.Tx) error {
			g, err := tx.Group(gid)
			if err != nil {
				return err
			}
			if g.Version >= v {
				return tx.DeletePendingGroupEvent(gid, v)
			}
			if events, err = c.applyEvent(tx, g, &sge, ev, key); err != nil {
				return err
			}
			if err := tx.DeletePendingGroupEvent(gid, v); err != nil {
				return err
			}
			more, err := c.retryHeld(tx, gid, func(*store.HeldGroupItem) bool { return true })
			events = append(events, more...)
			return err
		})
		if errors.Is(err, ErrGroupEventRefused) {
			if err := drop(err); err != nil {
				return err
			}
			continue
		}
		if err != nil {
			return storeErr(err)
		}
		for _, e := range events {
			c.emit(l.runCtx, e)
		}
	}
	return nil
}
