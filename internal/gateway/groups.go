// Copyright 2026 The Petrel Authors
// SPDX-License-Identifier: Apache-2.0

package gateway

import (
	"context"
	"errors"
	"fmt"
	"strconv"
	"sync"
	"time"

	"github.com/prometheus/client_golang/prometheus"
	"google.golang.org/protobuf/proto"

	"github.com/petrelchat/petrel/internal/directory"
	"github.com/petrelchat/petrel/internal/groups"
	"github.com/petrelchat/petrel/internal/keyrate"
	"github.com/petrelchat/petrel/internal/mailbox"
	"github.com/petrelchat/petrel/internal/messaging"
	pb "github.com/petrelchat/petrel/proto/petrel/v1"
)

// The frames of groups. The groups service decides (the event rules, who may); the messaging
// service resolves a group send's targets; the gateway answers and hands envelopes to the mailbox.
//
// Answers: CreateGroup, UpdateGroup, GetGroup → GroupResult (with member_devices); ListGroups →
// GroupList. An applied event is delivered, before the answer, as an ENVELOPE_TYPE_GROUP_EVENT
// envelope (ciphertext: the SignedGroupEvent bytes; group_id set; from: the actor) to every device
// of every member before and after it except the acting device, on the acting connection's route
// (so that each device gets the event before the actor's later messages to the group), with the
// ack rule of a send. The answer waits for that delivery; if it fails for some device the change
// stands (it is committed) and the answer is still the GroupResult: the failure is logged and
// counted, and that device learns the change with the next GetGroup. Sending the same event again
// (the group's last event, byte for byte) is answered as applied and delivers it again.

// Group frames are rate-limited per device, on each node: a person changes groups now and then,
// while each change is a replicated write and a fan-out to every member device.
const (
	groupOpsBurst     = 60
	groupOpsPerMinute = 60
)

// groupMetrics are the gateway's metrics of groups.
type groupMetrics struct {
	sends          prometheus.Counter
	targets        prometheus.Histogram
	eventsFailed   prometheus.Counter
	eventsDelivery prometheus.Counter
}

func newGroupMetrics(reg prometheus.Registerer) *groupMetrics {
	m := &groupMetrics{
		sends: prometheus.NewCounter(prometheus.CounterOpts{Name: "petrel_gateway_group_sends_acked_total",
			Help: "Group sends acked to clients (every member device has the message live or stored)."}),
		targets: prometheus.NewHistogram(prometheus.HistogramOpts{Name: "petrel_gateway_group_send_devices",
			Help:    "Devices one group send (or membership event) fans out to.",
			Buckets: []float64{1, 4, 16, 64, 256, 1024, 4096, 16384}}),
		eventsDelivery: prometheus.NewCounter(prometheus.CounterOpts{Name: "petrel_gateway_group_events_delivered_total",
			Help: "Membership events delivered to every member device (live or stored)."}),
		eventsFailed: prometheus.NewCounter(prometheus.CounterOpts{Name: "petrel_gateway_group_event_deliveries_failed_total",
			Help: "Applied membership events that could not be delivered to some member device (the change stands; that device sees it with GetGroup)."}),
	}
	if reg != nil {
		reg.MustRegister(m.sends, m.targets, m.eventsDelivery, m.eventsFailed)
	}
	return m
}

func newGroupOps() *keyrate.Limiter[string] {
	return keyrate.New[string](keyrate.Config{Rate: groupOpsPerMinute / 60, Burst: groupOpsBurst, MaxKeys: 100_000})
}

// allowGroupOp takes one group frame from the device's budget; when it is spent the frame is
// answered RATE_LIMITED and false is returned.
func (c *conn) allowGroupOp(id uint64, dev directory.Principal) bool {
	ok, wait := c.g.groupOps.Take(dev.ID, 1)
	if !ok {
		c.g.limitHit(limitGroups, true)
		c.writeError(id, &codedError{code: pb.ErrorCode_ERROR_CODE_RATE_LIMITED, msg: "too many group requests: try again later", retry: retryMs(wait)})
	}
	return ok
}

// Fixed texts of the group refusals.
const (
	msgUnknownGroup = "unknown group, or you are not a member of it"
	msgStaleGroup   = "the group changed: fetch it (GetGroup) and sign the change again at its version + 1"
)

// groupError turns the groups service's refusals into coded errors with fixed texts; others
// (storage) pass unchanged.
func (c *conn) groupError(err error) error {
	coded := func(code pb.ErrorCode, msg string) error { return &codedError{code: code, msg: msg} }
	switch {
	case errors.Is(err, groups.ErrUnknownGroup), errors.Is(err, pb.ErrNotGroupMember):
		return coded(pb.ErrorCode_ERROR_CODE_UNKNOWN_GROUP, msgUnknownGroup)
	case errors.Is(err, pb.ErrStaleGroupEvent):
		return coded(pb.ErrorCode_ERROR_CODE_STALE_GROUP, msgStaleGroup)
	case errors.Is(err, pb.ErrGroupFull):
		return coded(pb.ErrorCode_ERROR_CODE_GROUP_FULL, fmt.Sprintf("a group has at most %d members", c.g.grp.MaxMembers()))
	case errors.Is(err, pb.ErrNotGroupAdmin):
		return coded(pb.ErrorCode_ERROR_CODE_PERMISSION_DENIED, "only an admin of the group may add, remove or promote members")
	case errors.Is(err, groups.ErrNotActor):
		return coded(pb.ErrorCode_ERROR_CODE_PERMISSION_DENIED, "the event's actor and actor_device must be this account and device")
	case errors.Is(err, pb.ErrGroupEventSignature):
		return coded(pb.ErrorCode_ERROR_CODE_INVALID_REQUEST, "the group event's signature does not verify with this device's identity key")
	case errors.Is(err, groups.ErrWrongKind):
		return coded(pb.ErrorCode_ERROR_CODE_INVALID_REQUEST, "CreateGroup carries a CREATE event, UpdateGroup any other kind")
	case errors.Is(err, pb.ErrInvalidGroupEvent):
		return coded(pb.ErrorCode_ERROR_CODE_INVALID_REQUEST, "the group event is malformed, not in its deterministic encoding, or its members and admins do not follow from the change")
	case errors.Is(err, directory.ErrUnknownUser):
		return coded(pb.ErrorCode_ERROR_CODE_UNKNOWN_USER, "an account the event adds does not exist")
	case errors.Is(err, groups.ErrUnavailable):
		return fmt.Errorf("%w: %w", directory.ErrUnavailable, err)
	}
	return err
}

// onCreateGroup and onUpdateGroup apply a membership event.
func (c *conn) onCreateGroup(f *pb.Frame) { c.applyGroupEvent(f, f.GetCreateGroup().GetEvent(), true) }
func (c *conn) onUpdateGroup(f *pb.Frame) { c.applyGroupEvent(f, f.GetUpdateGroup().GetEvent(), false) }

func (c *conn) applyGroupEvent(f *pb.Frame, sge *pb.SignedGroupEvent, create bool) {
	dev := c.principal()
	if !c.allowGroupOp(f.Id, dev) {
		return
	}
	if c.g.grp == nil {
		c.fail(f.Id, pb.ErrorCode_ERROR_CODE_UNKNOWN_FRAME, "groups are not served here")
		return
	}
	ctx, cancel := c.ctx()
	defer cancel()
	ch, err := c.g.grp.Apply(ctx, dev, sge, create)
	if err != nil {
		c.writeError(f.Id, c.groupError(err))
		return
	}
	res, err := c.g.grp.Result(ctx, ch.Group, true)
	if err != nil {
		c.writeError(f.Id, c.groupError(err))
		return
	}
	answer := func() { c.write(&pb.Frame{Id: f.Id, Body: &pb.Frame_GroupResult{GroupResult: res}}) }
	ev := ch.Event
	msgID := "g" + ev.GroupId + "-" + strconv.FormatUint(ev.Version, 10)
	m := getGroupMsg()
	err = c.g.msg.FanOut(ctx, dev, msgID, ev.GroupId, pb.EnvelopeType_ENVELOPE_TYPE_GROUP_EVENT,
		sgeBytes(ch.Group.LastEvent), ch.Recipients, time.Now().UnixMilli(), m)
	if err != nil {
		putGroupMsg(m)
		c.g.groupMetrics.eventsFailed.Inc()
		c.g.log.Warn("group event not delivered", "conn", c.id, "group", ev.GroupId, "version", ev.Version, "err", err)
		answer()
		return
	}
	c.deliver(m, func(o mailbox.Outcome) {
		if o.Err != nil {
			c.g.groupMetrics.eventsFailed.Inc()
			c.g.log.Warn("group event not delivered to every member device", "conn", c.id, "group", ev.GroupId, "version", ev.Version, "err", o.Err)
		} else {
			c.g.groupMetrics.eventsDelivery.Inc()
		}
		answer()
	})
}

// sgeBytes is the serialised SignedGroupEvent (a GROUP_EVENT envelope's ciphertext).
func sgeBytes(sge *pb.SignedGroupEvent) []byte {
	b, _ := proto.Marshal(sge)
	return b
}

// deliver hands m's targets to the mailbox on this connection's route and calls done with the
// outcome; m is returned to its pool once the mailbox has taken the targets. Counted as a send in
// flight (Drain waits for it).
func (c *conn) deliver(m *messaging.Message, done func(mailbox.Outcome)) {
	c.mu.Lock()
	route := c.route
	if route == nil {
		route = mailbox.NewRoute()
		c.route = route
	}
	c.mu.Unlock()
	c.g.groupMetrics.targets.Observe(float64(len(m.Targets)))
	c.sends.Add(1)
	c.g.inflight.add()
	c.g.mb.Send(route, m.Targets, func(o mailbox.Outcome) {
		defer c.g.inflight.done()
		defer c.sends.Add(-1)
		done(o)
	})
	putGroupMsg(m) // the mailbox keeps the targets' values, not the slice
}

// groupSend handles a Send with group_id: the messaging service resolves every member device, the
// mailbox delivers one shared envelope to all of them, and the answer is written when every one
// has it (acked live or stored).
func (c *conn) groupSend(id uint64, s *pb.Send) {
	if id == 0 {
		c.fail(0, pb.ErrorCode_ERROR_CODE_INVALID_REQUEST, "a Send needs a request id")
		return
	}
	if int(c.sends.Load()) >= c.g.cfg.MaxInflightSends {
		c.g.limitHit(limitSendsInFlight, false)
		c.write(&pb.Frame{Id: id, Body: &pb.Frame_Error{Error: &pb.Error{
			Code: pb.ErrorCode_ERROR_CODE_RATE_LIMITED, Message: "too many sends in flight", RetryAfterMs: 100,
		}}})
		return
	}
	if s.GetEphemeral() {
		c.groupSendEphemeral(id, s)
		return
	}
	if err := checkExpiry(s.GetExpiresAtMs()); err != nil {
		c.writeError(id, err)
		return
	}
	dev := c.principal()
	v := messaging.GroupSend{MessageID: s.GetMessageId(), GroupID: s.GetGroupId(), Ciphertext: s.GetGroupCiphertext(),
		Other: s.GetTo() != "" || len(s.GetEnvelopes()) > 0 || len(s.GetOwnEnvelopes()) > 0}
	m := getGroupMsg()
	// No deadline of our own, as for 1:1 sends: cache hits cost no timer; misses are bounded by
	// the directory and the groups service.
	start := time.Now()
	if err := c.g.msg.ResolveGroup(context.Background(), dev, &v, start.UnixMilli(), m); err != nil {
		putGroupMsg(m)
		c.g.observeSend(start, err)
		c.writeError(id, err)
		return
	}
	if at := s.GetExpiresAtMs(); at != 0 { // a disappearing message (presence.go)
		stampExpiry(m, at)
	}
	msgID := m.ID
	c.deliver(m, func(o mailbox.Outcome) {
		c.g.observeSend(start, o.Err)
		if o.Err != nil {
			c.writeError(id, o.Err)
			return
		}
		c.g.metrics.sends.Inc()
		c.g.groupMetrics.sends.Inc()
		_ = c.enqueue(pb.AppendSendResultFrame(nil, id, msgID))
	})
}

// groupSendEphemeral handles a group Send with ephemeral set (a typing indicator in a group):
// resolved like any group send (every device of every member but the sending one), rate-limited
// and shed like a 1:1 ephemeral send (presence.go), offered to the devices connected now, never
// stored, and acked at once. expires_at_ms means nothing here (nothing is stored) and is ignored.
func (c *conn) groupSendEphemeral(id uint64, s *pb.Send) {
	dev := c.principal()
	if ok, wait := c.g.ext.ephemeralOps.Take(dev.ID, 1); !ok {
		c.g.limitHit(limitEphemeral, true)
		c.writeError(id, &codedError{code: pb.ErrorCode_ERROR_CODE_RATE_LIMITED, msg: "too many ephemeral sends: try again later", retry: retryMs(wait)})
		return
	}
	v := messaging.GroupSend{MessageID: s.GetMessageId(), GroupID: s.GetGroupId(), Ciphertext: s.GetGroupCiphertext(),
		Other: s.GetTo() != "" || len(s.GetEnvelopes()) > 0 || len(s.GetOwnEnvelopes()) > 0}
	m := getGroupMsg()
	defer putGroupMsg(m)
	if err := c.g.msg.ResolveGroup(context.Background(), dev, &v, time.Now().UnixMilli(), m); err != nil {
		c.writeError(id, err)
		return
	}
	if c.g.overloaded() {
		c.g.ext.shed.WithLabelValues("typing").Inc()
	} else {
		c.g.mb.SendEphemeral(m.Targets)
	}
	_ = c.enqueue(pb.AppendSendResultFrame(nil, id, m.ID))
}

// groupMsgPool holds target lists for group fan-outs: a message to a 1,024-member group has
// thousands of targets, and the mailbox copies them, so the list is reused.
var groupMsgPool = sync.Pool{New: func() any { return new(messaging.Message) }}

func getGroupMsg() *messaging.Message { return groupMsgPool.Get().(*messaging.Message) }

// putGroupMsg returns m to the pool without references to envelopes or ids. Lists far larger
// than a big group's are dropped.
func putGroupMsg(m *messaging.Message) {
	clear(m.Targets)
	m.ID, m.Targets = "", m.Targets[:0]
	if cap(m.Targets) > 1<<16 {
		return
	}
	groupMsgPool.Put(m)
}

// onGetGroup answers a group's membership, to members only.
func (c *conn) onGetGroup(f *pb.Frame) {
	dev := c.principal()
	if !c.allowGroupOp(f.Id, dev) {
		return
	}
	if c.g.grp == nil {
		c.writeError(f.Id, c.groupError(groups.ErrUnknownGroup))
		return
	}
	ctx, cancel := c.ctx()
	defer cancel()
	g, err := c.g.grp.Get(ctx, dev.Name, f.GetGetGroup().GetGroupId())
	if err != nil {
		c.writeError(f.Id, c.groupError(err))
		return
	}
	res, err := c.g.grp.Result(ctx, g, true)
	if err != nil {
		c.writeError(f.Id, c.groupError(err))
		return
	}
	c.write(&pb.Frame{Id: f.Id, Body: &pb.Frame_GroupResult{GroupResult: res}})
}

// listBudget bounds the bytes of members, admins and events one GroupList carries, so that the
// answer fits in a frame: past it, groups are listed with id and version only (GetGroup has the
// rest).
func (g *Gateway) listBudget() int { return g.cfg.MaxFrameBytes / 2 }

// onListGroups answers the groups of the device's account (without member_devices).
func (c *conn) onListGroups(f *pb.Frame) {
	dev := c.principal()
	if !c.allowGroupOp(f.Id, dev) {
		return
	}
	list := &pb.GroupList{}
	if c.g.grp != nil {
		ctx, cancel := c.ctx()
		defer cancel()
		gs, err := c.g.grp.List(ctx, dev.Name)
		if err != nil {
			c.writeError(f.Id, c.groupError(err))
			return
		}
		budget := c.g.listBudget()
		for _, g := range gs {
			res, _ := c.g.grp.Result(ctx, g, false)
			if size := proto.Size(res); size <= budget {
				budget -= size
			} else {
				res = &pb.GroupResult{GroupId: res.GroupId, Version: res.Version}
			}
			list.Groups = append(list.Groups, res)
		}
	}
	c.write(&pb.Frame{Id: f.Id, Body: &pb.Frame_GroupList{GroupList: list}})
}
