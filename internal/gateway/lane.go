// Copyright 2026 The Petrel Authors
// SPDX-License-Identifier: Apache-2.0

package gateway

import (
	"fmt"
	"reflect"
	"runtime/debug"
	"sync"
	"sync/atomic"

	pb "github.com/petrelchat/petrel/proto/petrel/v1"
)

// The request lane: an authenticated connection's requests that wait on the store (directory,
// prekey, group and settings reads and writes: a JetStream stream leader, up to the request's
// 10 s) run on a goroutine of their own, in arrival order, instead of on the connection's frame
// job. nbio runs a connection's frames one at a time, so before, a device whose GetDevices waited
// for a stream leader's election (4–9 s after its node died) had its DeliverAcks and
// Pings wait too: its live deliveries were not acked in time and went to the store, which waited
// for the same election; and its keep-alive could give up on a healthy server.
//
// Only DeliverAck and Ping pass a busy lane (neither depends on an earlier request, and acks free
// the server's storage). Every other frame that arrives while the lane holds something joins it
// behind, so a connection's requests and sends keep their order (a group event before the
// actor's later messages to the group, a device list before sends that rely on it). A frame in
// the lane keeps its admission charge (bytes and frame count) until it has been handled, so the
// lane is bounded by the connection's QueuedFrames and QueuedBytes like the frame queue; its
// goroutine exists only while the lane holds a frame.

// laneFrames are the authenticated requests that may wait on the store.
var laneFrames = map[reflect.Type]bool{
	body[*pb.Frame_GetBundle]():         true,
	body[*pb.Frame_UploadPrekeys]():     true,
	body[*pb.Frame_QueryQueued]():       true,
	body[*pb.Frame_GetLinkOffer_]():     true,
	body[*pb.Frame_ApproveLink]():       true,
	body[*pb.Frame_GetDevices]():        true,
	body[*pb.Frame_PutDeviceList]():     true,
	body[*pb.Frame_RemoveDevice]():      true,
	body[*pb.Frame_CreateGroup]():       true,
	body[*pb.Frame_UpdateGroup]():       true,
	body[*pb.Frame_GetGroup]():          true,
	body[*pb.Frame_ListGroups]():        true,
	body[*pb.Frame_SubscribePresence](): true,
	body[*pb.Frame_PutSettings]():       true,
}

// passLane are the frames handled at once even while the lane is busy.
var passLane = map[reflect.Type]bool{
	body[*pb.Frame_DeliverAck](): true,
	body[*pb.Frame_Ping]():       true,
}

// lane is a connection's request lane, made on its first lane frame. Only the connection's frame
// job adds to it (one at a time: nbio's guarantee); the lane's goroutine takes from it.
type lane struct {
	n  atomic.Int32 // frames in the lane (queued or running): the frame job's busy check
	mu sync.Mutex   // guards q and running
	q  []laneItem
	// running: a goroutine is taking frames from q.
	running bool
}

type laneItem struct {
	f      *pb.Frame
	h      handler
	charge int64 // admission bytes, given back when the frame has been handled
}

// laneBusy reports whether the lane holds a frame; frame job only. A false answer stays true
// until the job adds one: only the job makes the lane busy.
func (c *conn) laneBusy() bool { return c.lane != nil && c.lane.n.Load() > 0 }

// toLane queues f for h on the lane, with its admission charge; frame job only.
func (c *conn) toLane(f *pb.Frame, h handler, charge int64) {
	l := c.lane
	if l == nil {
		l = &lane{}
		c.lane = l
	}
	l.n.Add(1)
	l.mu.Lock()
	l.q = append(l.q, laneItem{f: f, h: h, charge: charge})
	start := !l.running
	l.running = true
	l.mu.Unlock()
	if start {
		c.g.metrics.laneRuns.Inc()
		go c.runLane(l)
	}
}

// runLane handles the lane's frames in order until it is empty. A frame of a connection closed
// meanwhile is dropped (its charge was given back at the close).
func (c *conn) runLane(l *lane) {
	for {
		l.mu.Lock()
		if len(l.q) == 0 {
			l.running = false
			l.q = nil // a burst's backing array is not kept for the connection's life
			l.mu.Unlock()
			return
		}
		it := l.q[0]
		l.q[0] = laneItem{}
		l.q = l.q[1:]
		l.mu.Unlock()
		if c.state.Load() == stateAuthed {
			c.handleLaneItem(it)
		}
		c.finished(it.charge)
		l.n.Add(-1)
	}
}

// handleLaneItem runs one lane frame's handler; a panic is contained to the connection, as in handle.
func (c *conn) handleLaneItem(it laneItem) {
	defer func() {
		if r := recover(); r != nil {
			errID := newErrorID()
			c.g.metrics.panics.Inc()
			c.g.log.Error("panic handling frame", "conn", c.id, "error_id", errID, "panic", fmt.Sprint(r), "stack", string(debug.Stack()))
			c.write(errorFrame(it.f.Id, &codedError{code: pb.ErrorCode_ERROR_CODE_INTERNAL, msg: "internal error", retry: 1000}, errID))
		}
	}()
	c.call(it.h, it.f)
}
