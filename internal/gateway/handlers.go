// Copyright 2026 The Petrel Authors
// SPDX-License-Identifier: Apache-2.0

package gateway

import (
	"reflect"

	pb "github.com/petrelchat/petrel/proto/petrel/v1"
)

// A handler handles one decoded frame whose body is of the type it is registered for. It runs on
// the connection's executor, one frame of the connection at a time, or, for requests that wait
// on the store, on the connection's request lane (lane.go): one lane frame at a time, while the
// executor goes on with DeliverAcks and Pings.
type handler func(c *conn, f *pb.Frame)

// handlers maps a frame body type (*pb.Frame_Send, ...) to its handler.
type handlers map[reflect.Type]handler

// body is the key of frames whose body has type B.
func body[B any]() reflect.Type { return reflect.TypeFor[B]() }

// The frame handlers of each connection state. A frame whose body has no handler in its
// connection's state gets that state's refusal (stateTable). Canonical Send frames of an
// authenticated connection never get here: handle parses them on the fast path first.
var (
	// handshakeFrames: before Register or Auth succeeded.
	handshakeFrames = handlers{
		body[*pb.Frame_Register]():  (*conn).onRegister,
		body[*pb.Frame_Auth]():      (*conn).onAuth,
		body[*pb.Frame_StartLink](): (*conn).onStartLink,
		body[*pb.Frame_Recover]():   (*conn).onRecover, // recover.go
	}
	// linkingFrames: a new device waiting for its link's approval (link.go).
	linkingFrames = handlers{
		body[*pb.Frame_Ping](): (*conn).onPing,
	}
	// authedFrames: an authenticated device.
	authedFrames = handlers{
		body[*pb.Frame_Send]():          (*conn).onSend,
		body[*pb.Frame_DeliverAck]():    (*conn).onDeliverAck,
		body[*pb.Frame_Ping]():          (*conn).onPing,
		body[*pb.Frame_GetBundle]():     (*conn).onGetBundle,
		body[*pb.Frame_UploadPrekeys](): (*conn).onUploadPreKeys,
		body[*pb.Frame_QueryQueued]():   (*conn).onQueryQueued,
		body[*pb.Frame_GetLinkOffer_](): (*conn).onGetLinkOffer,
		body[*pb.Frame_ApproveLink]():   (*conn).onApproveLink,
		body[*pb.Frame_GetDevices]():    (*conn).onGetDevices,
		body[*pb.Frame_PutDeviceList](): (*conn).onPutDeviceList,
		body[*pb.Frame_RemoveDevice]():  (*conn).onRemoveDevice,
		body[*pb.Frame_CreateGroup]():   (*conn).onCreateGroup,
		body[*pb.Frame_UpdateGroup]():   (*conn).onUpdateGroup,
		body[*pb.Frame_GetGroup]():      (*conn).onGetGroup,
		body[*pb.Frame_ListGroups]():    (*conn).onListGroups,
		body[*pb.Frame_Register]():      (*conn).alreadyAuthenticated,
		body[*pb.Frame_Auth]():          (*conn).alreadyAuthenticated,
		body[*pb.Frame_StartLink]():     (*conn).alreadyAuthenticated,
		body[*pb.Frame_Recover]():       (*conn).alreadyAuthenticated,

		body[*pb.Frame_SubscribePresence](): (*conn).onSubscribePresence, // presence.go
		body[*pb.Frame_PutSettings]():       (*conn).onPutSettings,
	}
)

// stateTable is the handler table of a connection state and its answer to any other frame.
func stateTable(state int32) (handlers, handler) {
	switch state {
	case stateHandshake:
		return handshakeFrames, (*conn).notAuthenticated
	case stateAuthed:
		return authedFrames, (*conn).unknownFrame
	case stateLinking:
		return linkingFrames, (*conn).linkingRefused
	}
	return nil, nil // closed: nothing is handled
}

// dispatch runs the handler of f's body type in the connection's state.
// An authenticated connection's requests that wait on the store, and every frame but DeliverAck
// and Ping behind them, go to the connection's request lane with their admission charge (true).
func (c *conn) dispatch(f *pb.Frame, charge int64) (toLane bool) {
	state := c.state.Load()
	table, other := stateTable(state)
	if table == nil {
		return false
	}
	t := reflect.TypeOf(f.Body)
	h := table[t]
	if h == nil {
		h = other
	}
	if state == stateAuthed && (laneFrames[t] || (c.laneBusy() && !passLane[t])) {
		c.toLane(f, h, charge)
		return true
	}
	c.call(h, f)
	return false
}

// call runs h on f, after the test hook (testhook.go) if one is set: on the executor or on the
// request lane, wherever the handler runs.
func (c *conn) call(h handler, f *pb.Frame) {
	if hook := frameHook.Load(); hook != nil {
		(*hook)(f)
	}
	h(c, f)
}
