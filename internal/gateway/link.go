// Copyright 2026 The Petrel Authors
// SPDX-License-Identifier: Apache-2.0

package gateway

import (
	"errors"

	"github.com/petrelchat/petrel/internal/directory"
	pb "github.com/petrelchat/petrel/proto/petrel/v1"
)

// Linking, on the new device's connection (docs/protocol.md, "Linked devices"):
//
//   - Instead of Register or Auth, the device sends StartLink. The directory checks and stores its
//     offer; the connection answers LinkStarted and enters the linking state: still
//     unauthenticated, held until the link is approved or expires (the handshake deadline becomes
//     the link's expiry). The node holds at most Config.MaxPendingLinks such connections (past
//     it StartLink is RATE_LIMITED), StartLink takes from the same per-address budget as Register,
//     and a linking connection keeps the bounds of an unauthenticated one (admission, frame
//     limits). It may send Ping; any other frame is NOT_AUTHENTICATED and closes it.
//   - The approval (ApproveLink, from the primary, on any node) is published on the control
//     channel (bus.LinkSubject): the node holding the waiting connection writes LinkApproved to
//     it and closes it. The device then connects again and authenticates with Auth.
//   - At the expiry the connection gets Error LINK_EXPIRED and is closed.

// Outcomes of linking connections (the label of petrel_gateway_link_connections_total).
const (
	linkApprovedOutcome = "approved" // LinkApproved written, connection closed
	linkExpiredOutcome  = "expired"  // LINK_EXPIRED written at the expiry, connection closed
	linkLimitedOutcome  = "limited"  // StartLink refused: max_pending_links connections wait already
	linkClosedOutcome   = "closed"   // the client closed it, or it broke a frame rule
)

// DefaultMaxPendingLinks is Config.MaxPendingLinks's default.
const DefaultMaxPendingLinks = 1000

var errTooManyLinks = &codedError{code: pb.ErrorCode_ERROR_CODE_RATE_LIMITED,
	msg: "too many devices are waiting to be linked on this server, try later", retry: 5000}

// onStartLink handles StartLink (handshake state).
func (c *conn) onStartLink(f *pb.Frame) {
	if ok, retry := c.g.reg.allowIP(c.ws.RemoteAddr()); !ok {
		c.g.reg.limited.WithLabelValues("ip").Inc()
		c.writeError(f.Id, &codedError{code: pb.ErrorCode_ERROR_CODE_RATE_LIMITED,
			msg: "too many registrations from this address, try later", retry: retryMs(retry)})
		c.handshakeFailed()
		return
	}
	// The slot is taken before the directory stores anything: past the bound, nothing is stored.
	if c.g.pendingLinks.Add(1) > int64(c.g.cfg.MaxPendingLinks) {
		c.g.pendingLinks.Add(-1)
		c.g.metrics.linkConns.WithLabelValues(linkLimitedOutcome).Inc()
		c.writeError(f.Id, errTooManyLinks)
		return
	}
	ctx, cancel := c.ctx()
	defer cancel()
	id, expires, err := c.g.dir.StartLink(ctx, c.nonce(), f.GetStartLink())
	if err != nil {
		c.g.pendingLinks.Add(-1)
		c.g.metrics.authFailures.Inc()
		code, _ := codeFor(err)
		errID := c.g.errLog.log(c.g.log, code, "link refused", "conn", c.id, "err", err)
		c.write(errorFrame(f.Id, err, errID))
		if !errors.Is(err, directory.ErrUnavailable) && ctx.Err() == nil {
			c.handshakeFailed()
		}
		return
	}
	c.mu.Lock()
	c.linkID = id
	c.mu.Unlock()
	c.g.mu.Lock()
	c.g.links[id] = c
	c.g.mu.Unlock()
	// The deadline first: the sweep must not see a linking connection with the handshake's.
	c.deadline.Store(int64(expires.Sub(c.g.clockBase)))
	if !c.state.CompareAndSwap(stateHandshake, stateLinking) {
		c.g.endLink(c, linkClosedOutcome) // closed meanwhile
		return
	}
	c.write(&pb.Frame{Id: f.Id, Body: &pb.Frame_LinkStarted{LinkStarted: &pb.LinkStarted{LinkId: id, ExpiresMs: expires.UnixMilli()}}})
}

// linkingRefused answers any frame but Ping on a linking connection, and closes it.
func (c *conn) linkingRefused(f *pb.Frame) {
	var id uint64
	if f != nil {
		id = f.Id
	}
	c.fail(id, pb.ErrorCode_ERROR_CODE_NOT_AUTHENTICATED, "this connection waits for its link to be approved: it may only ping")
	c.close()
}

// endLink forgets c's pending link, if it still has one, and counts how it ended. It reports
// whether it did: of an approval, the expiry and the close, only the first ends a link.
func (g *Gateway) endLink(c *conn, outcome string) bool {
	c.mu.Lock()
	id := c.linkID
	c.mu.Unlock()
	if id == "" {
		return false
	}
	g.mu.Lock()
	mine := g.links[id] == c
	if mine {
		delete(g.links, id)
	}
	g.mu.Unlock()
	if !mine {
		return false
	}
	g.pendingLinks.Add(-1)
	g.metrics.linkConns.WithLabelValues(outcome).Inc()
	return true
}

// linkExpired ends a linking connection at its deadline: Error LINK_EXPIRED, then close.
func (c *conn) linkExpired() {
	if !c.g.endLink(c, linkExpiredOutcome) {
		return // approved meanwhile: the approval is being written, then the connection closed
	}
	c.write(&pb.Frame{Body: &pb.Frame_Error{Error: &pb.Error{
		Code: pb.ErrorCode_ERROR_CODE_LINK_EXPIRED, Message: "the link was not approved in time: start linking again",
	}}})
	c.close()
}

// deliverApproval writes an approval (an encoded Frame with LinkApproved) to the connection
// waiting on linkID, if this node holds it, and closes that connection.
func (g *Gateway) deliverApproval(linkID string, frame []byte) {
	g.mu.Lock()
	c := g.links[linkID]
	g.mu.Unlock()
	if c == nil || !g.endLink(c, linkApprovedOutcome) {
		return
	}
	_ = c.enqueue(frame)
	c.close()
}
