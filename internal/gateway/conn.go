// Copyright 2026 The Petrel Authors
// SPDX-License-Identifier: Apache-2.0

package gateway

import (
	"context"
	"crypto/rand"
	"encoding/hex"
	"errors"
	"fmt"
	"runtime/debug"
	"sync"
	"sync/atomic"
	"time"

	"google.golang.org/protobuf/encoding/protowire"
	"google.golang.org/protobuf/proto"

	"github.com/petrelchat/petrel/internal/directory"
	"github.com/petrelchat/petrel/internal/mailbox"
	"github.com/petrelchat/petrel/internal/messaging"
	pb "github.com/petrelchat/petrel/proto/petrel/v1"
	"github.com/petrelchat/petrel/third_party/nbio"
	"github.com/petrelchat/petrel/third_party/nbio/nbhttp/websocket"
)

// Connection states.
const (
	stateHandshake int32 = iota
	stateAuthed
	stateClosed
	stateLinking // a new device waiting for its link's approval (link.go): unauthenticated
)

// conn is one device connection. It holds no buffers while idle.
type conn struct {
	g  *Gateway
	ws *websocket.Conn // set by onOpen, under wmu (flushLocked may run before)
	id string
	// hs is what only the handshake needs (its nonce, its refused frames): made by onOpen, dropped
	// once the device is authenticated, so an idle connection does not carry it. Only the
	// connection's frame handler uses it after onOpen (handshake frames never go to the lane).
	hs *handshake
	// The per-connection frame rate limit, a token bucket (rate.Limiter is six times the size). Only
	// the connection's reader uses it, on the poller goroutine (admission.go).
	tokens     float64
	tokensTime time.Duration // gateway clock (since clockBase) of the last refill

	// Admission (admission.go, wsread.go): what the connection's frames hold before they are
	// handled. rd belongs to the poller goroutine; queued and held are shared with the executor.
	rd     wsReader
	nbc    *nbio.Conn   // the socket, the key of the reader until it is installed
	held   atomic.Int64 // inbound bytes charged and not yet released; -1 once closed
	queued atomic.Int32 // frames queued and not yet handled

	state atomic.Int32
	// deadline is when the connection is closed unless a frame comes (gateway clock, see sweep):
	// the handshake deadline, then the idle deadline, pushed on as each frame is read
	// (wsReader.frameDone), not as it is handled.
	deadline atomic.Int64
	sends    atomic.Int32 // sends in flight
	// idx is the connection's index in g.conns, -1 when not there; guarded by g.mu.
	idx int32
	// lane is the request lane (lane.go), made by the frame job on the first request that waits
	// on the store; only the frame job sets it.
	lane *lane

	mu     sync.Mutex // guards the fields below
	dev    directory.Principal
	att    *mailbox.Attachment
	route  *mailbox.Route
	linkID string // the pending link of a linking connection

	fmu  sync.Mutex // held while flushing (see writer.go)
	wmu  sync.Mutex // guards the write fields below
	wbuf *[]byte    // pending frames; nil while idle
	// The flags share a word; each is guarded as its comment says.
	presenceOn bool // the device was counted online by the presence service (presence.go); under mu
	wscheduled bool // under wmu
	wclosed    bool // under wmu
}

// handshake is what a connection holds until its device is authenticated.
type handshake struct {
	nonce    [pb.NonceSize]byte
	failures int32 // refused handshake frames (see handshakeFailed)
}

// nonce is the handshake's challenge nonce; nil once the device is authenticated (nothing signed
// over it verifies then).
func (c *conn) nonce() []byte {
	if c.hs == nil {
		return nil
	}
	return c.hs.nonce[:]
}

// handle processes one frame whose admission charge is charge. It reports whether the frame went
// to the connection's request lane (lane.go), which then gives the charge back; otherwise the
// caller does. A panic here is contained to this connection (invariant 6).
func (c *conn) handle(mt websocket.MessageType, data []byte, charge int64) (toLane bool) {
	var reqID uint64
	defer func() {
		if r := recover(); r != nil {
			errID := newErrorID()
			c.g.metrics.panics.Inc()
			c.g.log.Error("panic handling frame", "conn", c.id, "error_id", errID, "panic", fmt.Sprint(r), "stack", string(debug.Stack()))
			c.write(errorFrame(reqID, &codedError{code: pb.ErrorCode_ERROR_CODE_INTERNAL, msg: "internal error", retry: 1000}, errID))
		}
	}()
	if c.state.Load() == stateClosed {
		return
	}
	c.g.metrics.frames.Inc()
	linking := c.state.Load() == stateLinking
	if mt != websocket.BinaryMessage {
		if linking {
			c.linkingRefused(nil)
			return
		}
		c.fail(0, pb.ErrorCode_ERROR_CODE_MALFORMED_FRAME, "frames are binary WebSocket messages")
		return
	}
	if len(data) <= c.g.cfg.MaxFrameBytes && c.state.Load() == stateAuthed && frameHook.Load() == nil {
		// The hottest frames, parsed without building messages; anything unusual takes the
		// general path below, which answers exactly as before. A Send waits behind a busy
		// request lane; a DeliverAck never does (lane.go).
		if !c.laneBusy() {
			s := getSendScratch()
			if pb.ParseSendFrame(data, &s.v) {
				reqID = s.v.ID
				c.sendView(&s.v, &s.msg)
				putSendScratch(s)
				return
			}
			putSendScratch(s)
		}
		var backing [64]uint64
		if tags, ok := pb.ParseDeliverAckFrame(data, backing[:0]); ok {
			c.ack(tags)
			return
		}
	}
	f, err := pb.DecodeFrame(data, c.g.cfg.MaxFrameBytes)
	if err != nil && linking {
		c.linkingRefused(nil)
		return
	}
	if err != nil {
		code := pb.ErrorCode_ERROR_CODE_MALFORMED_FRAME
		if errors.Is(err, pb.ErrFrameTooLarge) {
			code = pb.ErrorCode_ERROR_CODE_FRAME_TOO_LARGE
		}
		c.fail(0, code, err.Error())
		return
	}
	reqID = f.Id
	return c.dispatch(f, charge)
}

func (c *conn) ctx() (context.Context, context.CancelFunc) {
	return context.WithTimeout(context.Background(), 10*time.Second)
}

// onRegister handles Register (handshake state).
func (c *conn) onRegister(f *pb.Frame) {
	ctx, cancel := c.ctx()
	defer cancel()
	d, clientFault, err := c.register(ctx, f.GetRegister())
	var dev directory.Principal
	if err == nil {
		dev = d.Principal()
		c.g.metrics.registrations.Inc()
		c.g.log.Info("registered", "name", dev.Name, "device", dev.ID)
	}
	c.authenticated(ctx, f, dev, clientFault, err)
}

// onAuth handles Auth (handshake state).
func (c *conn) onAuth(f *pb.Frame) {
	ctx, cancel := c.ctx()
	defer cancel()
	a := f.GetAuth()
	dev, err := c.g.dir.Authenticate(ctx, a.GetDeviceId(), c.nonce(), a.GetSignature())
	if c.authenticated(ctx, f, dev, errors.Is(err, directory.ErrAuthFailed), err) {
		c.g.seen(dev.ID)
	}
}

// notAuthenticated refuses a frame other than Register or Auth before the handshake.
func (c *conn) notAuthenticated(f *pb.Frame) {
	c.fail(f.Id, pb.ErrorCode_ERROR_CODE_NOT_AUTHENTICATED, "authenticate first (Register or Auth)")
	c.handshakeFailed()
}

// authenticated ends a handshake frame: on err, the refusal (counted against the connection when
// it is the client's fault); otherwise Welcome, and the device is attached for delivery. It
// reports whether the device was welcomed.
func (c *conn) authenticated(ctx context.Context, f *pb.Frame, dev directory.Principal, clientFault bool, err error) bool {
	if err != nil {
		c.g.metrics.authFailures.Inc()
		code, _ := codeFor(err)
		errID := c.g.errLog.log(c.g.log, code, "handshake refused", "conn", c.id, "err", err)
		c.write(errorFrame(f.Id, err, errID))
		if clientFault {
			c.handshakeFailed()
		}
		return false
	}
	status, err := c.g.dir.Status(ctx, dev)
	if err != nil {
		c.writeError(f.Id, err)
		return false
	}
	c.mu.Lock()
	c.dev = dev
	c.mu.Unlock()
	if !c.state.CompareAndSwap(stateHandshake, stateAuthed) {
		return false
	}
	c.hs = nil // the handshake is over: an authenticated connection refuses handshake frames
	// The takeover order is taken now, not at the attach below: of two connections of the
	// device, the one that authenticated later stays, even if this handler is held up before
	// it attaches (mailbox.AttachAfter).
	order := c.g.mb.Order()
	c.g.metrics.connects.Inc()
	c.deadline.Store(c.g.clock() + int64(c.g.cfg.IdleTimeout))
	if a := f.GetAuth(); a.GetFailoverMs() > 0 {
		c.g.countFailover(a)
	}
	c.write(&pb.Frame{Id: f.Id, Body: &pb.Frame_Welcome{Welcome: &pb.Welcome{
		Name:                  dev.Name,
		DeviceId:              dev.ID,
		OneTimePrekeysLeft:    status.GetOneTimePrekeysLeft(),
		KemPrekeysLeft:        status.GetKemPrekeysLeft(),
		ReplenishBelow:        c.g.dir.ReplenishBelow(),
		SignedPrekeyCreatedMs: status.GetSignedPrekeyCreatedMs(),
		ServerTimeMs:          time.Now().UnixMilli(),
		MaxFrameBytes:         uint32(c.g.cfg.MaxFrameBytes),
		Nodes:                 c.g.nodeURLs(),
	}}})
	if h := welcomeHook.Load(); h != nil {
		if done := (*h)(dev.ID); done != nil {
			defer done()
		}
	}
	att, err := c.g.mb.AttachAfter(dev.ID, c.id, order, c)
	if err != nil {
		c.writeError(0, err)
		c.close()
		return false
	}
	c.mu.Lock()
	if c.state.Load() == stateClosed {
		c.mu.Unlock()
		att.Detach()
		return false
	}
	c.att = att
	c.mu.Unlock()
	c.presenceOnline(dev)
	return true
}

// alreadyAuthenticated refuses a handshake frame on an authenticated connection.
func (c *conn) alreadyAuthenticated(f *pb.Frame) {
	c.fail(f.Id, pb.ErrorCode_ERROR_CODE_ALREADY_AUTHENTICATED, "this connection is already authenticated")
}

// unknownFrame refuses a frame type the connection's state has no handler for.
func (c *conn) unknownFrame(f *pb.Frame) {
	c.fail(f.Id, pb.ErrorCode_ERROR_CODE_UNKNOWN_FRAME, "unknown or unexpected frame type")
}

// onDeliverAck hands the device's acks to its attachment.
func (c *conn) onDeliverAck(f *pb.Frame) { c.ack(f.GetDeliverAck().GetTags()) }

// ack hands acked tags to the device's attachment (which keeps nothing of the slice).
func (c *conn) ack(tags []uint64) {
	c.mu.Lock()
	att := c.att
	c.mu.Unlock()
	if att != nil {
		att.Ack(tags)
	}
}

// onPing answers Ping with Pong.
func (c *conn) onPing(f *pb.Frame) {
	c.write(&pb.Frame{Id: f.Id, Body: &pb.Frame_Pong{Pong: &pb.Pong{ClientTimeMs: f.GetPing().GetClientTimeMs(), ServerTimeMs: time.Now().UnixMilli()}}})
}

// onSend validates a Send and hands it to the mailbox; the answer is written when every device has
// the envelope (acked live or stored), or as an error when one does not. The answer never says
// which of the two happened. (Canonical Send frames take the fast path, sendView, directly.)
func (c *conn) onSend(f *pb.Frame) {
	s := f.GetSend()
	if s.GetGroupId() != "" {
		c.groupSend(f.Id, s)
		return
	}
	views := func(l []*pb.DeviceCiphertext) []pb.CiphertextView {
		out := make([]pb.CiphertextView, 0, len(l))
		for _, e := range l {
			out = append(out, pb.CiphertextView{DeviceID: []byte(e.GetDeviceId()), Type: e.GetType(), Ciphertext: e.GetCiphertext()})
		}
		return out
	}
	v := pb.SendView{ID: f.Id, MessageID: []byte(s.GetMessageId()), To: []byte(s.GetTo()),
		Envelopes: views(s.GetEnvelopes()), OwnEnvelopes: views(s.GetOwnEnvelopes()),
		Ephemeral: s.GetEphemeral(), ExpiresAtMs: s.GetExpiresAtMs()}
	c.sendView(&v, &messaging.Message{})
}

// sendView is onSend on a parsed view (the fast path for canonical Send frames): the messaging
// service resolves its targets into m, the mailbox delivers them. Nothing in v or m is kept after
// it returns.
func (c *conn) sendView(v *pb.SendView, m *messaging.Message) {
	id := v.ID
	if id == 0 {
		c.fail(0, pb.ErrorCode_ERROR_CODE_INVALID_REQUEST, "a Send needs a request id")
		return
	}
	if v.Ephemeral { // typing: live only, acked at once (presence.go)
		c.sendEphemeral(v, m)
		return
	}
	if err := checkExpiry(v.ExpiresAtMs); err != nil {
		c.writeError(id, err)
		return
	}
	if int(c.sends.Load()) >= c.g.cfg.MaxInflightSends {
		c.g.limitHit(limitSendsInFlight, false)
		c.write(&pb.Frame{Id: id, Body: &pb.Frame_Error{Error: &pb.Error{
			Code: pb.ErrorCode_ERROR_CODE_RATE_LIMITED, Message: "too many sends in flight", RetryAfterMs: 100,
		}}})
		return
	}
	c.mu.Lock()
	dev, route := c.dev, c.route
	if route == nil { // made on the first send: most connections never send
		route = mailbox.NewRoute()
		c.route = route
	}
	c.mu.Unlock()
	// No deadline of our own: a cache hit (the usual case) then costs no timer; a miss is bounded
	// by the directory.
	start := time.Now()
	if err := c.g.msg.Resolve(context.Background(), dev, v, start.UnixMilli(), m); err != nil {
		c.g.observeSend(start, err)
		c.writeError(id, err)
		return
	}
	if v.ExpiresAtMs != 0 { // a disappearing message (presence.go)
		stampExpiry(m, v.ExpiresAtMs)
	}
	msgID := m.ID
	c.sends.Add(1)
	c.g.inflight.add()
	c.g.mb.Send(route, m.Targets, func(o mailbox.Outcome) {
		defer c.g.inflight.done()
		defer c.sends.Add(-1)
		c.g.observeSend(start, o.Err)
		if o.Err != nil {
			c.writeError(id, o.Err)
			return
		}
		c.g.metrics.sends.Inc()
		// Only "accepted": whether the recipient acked live or the envelope was stored would tell
		// any sender whether the recipient is online (invariant 1 holds either way).
		_ = c.enqueue(pb.AppendSendResultFrame(nil, id, msgID))
	})
}

// sendScratch is what the Send fast path parses and resolves into, pooled: a send allocates
// neither its views nor its target list.
type sendScratch struct {
	v        pb.SendView
	msg      messaging.Message
	env, own [4]pb.CiphertextView
	targets  [8]mailbox.Target
}

var sendScratchPool = sync.Pool{New: func() any { return new(sendScratch) }}

func getSendScratch() *sendScratch {
	s := sendScratchPool.Get().(*sendScratch)
	s.v.Envelopes, s.v.OwnEnvelopes, s.msg.Targets = s.env[:0], s.own[:0], s.targets[:0]
	return s
}

// putSendScratch returns s to the pool, keeping no reference to the frame or the envelopes.
func putSendScratch(s *sendScratch) {
	s.v, s.msg = pb.SendView{}, messaging.Message{}
	clear(s.env[:])
	clear(s.own[:])
	clear(s.targets[:])
	sendScratchPool.Put(s)
}

// onGetBundle answers GetBundle. The directory limits the claims of this device (see
// directory.Bundles); a refusal is RATE_LIMITED with the directory's retry hint.
func (c *conn) onGetBundle(f *pb.Frame) {
	id, req := f.Id, f.GetGetBundle()
	ctx, cancel := c.ctx()
	defer cancel()
	c.mu.Lock()
	me := c.dev.ID
	c.mu.Unlock()
	res, err := c.g.dir.Bundles(ctx, me, req.GetName(), req.GetDeviceIds())
	if rl := (*directory.RateLimitError)(nil); errors.As(err, &rl) {
		c.g.metrics.rejected.WithLabelValues(pb.ErrorCodeName(pb.ErrorCode_ERROR_CODE_RATE_LIMITED)).Inc()
		err = &codedError{code: pb.ErrorCode_ERROR_CODE_RATE_LIMITED, msg: rl.Error(), retry: retryMs(rl.RetryAfter)}
	}
	if err != nil {
		c.writeError(id, err)
		return
	}
	c.write(&pb.Frame{Id: id, Body: &pb.Frame_BundleResult{BundleResult: res}})
}

// onUploadPreKeys adds or rotates this device's prekeys.
func (c *conn) onUploadPreKeys(f *pb.Frame) {
	id, req := f.Id, f.GetUploadPrekeys()
	ctx, cancel := c.ctx()
	defer cancel()
	c.mu.Lock()
	devID := c.dev.ID
	c.mu.Unlock()
	st, err := c.g.dir.UploadPreKeys(ctx, devID, req.GetKeys())
	if err != nil {
		c.writeError(id, err)
		return
	}
	c.write(&pb.Frame{Id: id, Body: &pb.Frame_PrekeyStatus{PrekeyStatus: st}})
}

// onQueryQueued answers which of this device's sends are still queued for a recipient device.
func (c *conn) onQueryQueued(f *pb.Frame) {
	id, req := f.Id, f.GetQueryQueued()
	if len(req.GetMessageIds()) > pb.MaxQueryQueued {
		c.fail(id, pb.ErrorCode_ERROR_CODE_INVALID_REQUEST, fmt.Sprintf("at most %d message ids", pb.MaxQueryQueued))
		return
	}
	ctx, cancel := c.ctx()
	defer cancel()
	acc, err := c.g.dir.Account(ctx, req.GetTo())
	if err != nil {
		c.writeError(id, err)
		return
	}
	owned := false
	for _, d := range acc.Devices {
		owned = owned || d == req.GetDeviceId()
	}
	if !owned {
		c.fail(id, pb.ErrorCode_ERROR_CODE_UNKNOWN_DEVICE, "the recipient does not own that device")
		return
	}
	c.mu.Lock()
	me := c.dev.ID
	c.mu.Unlock()
	// Answered from the mailbox's index of this device's own envelopes (never a scan of the inbox);
	// rate-limited per device.
	found, err := c.g.mb.QueryQueued(ctx, req.GetDeviceId(), me, req.GetMessageIds())
	if err != nil {
		c.writeError(id, err)
		return
	}
	c.write(&pb.Frame{Id: id, Body: &pb.Frame_QueuedResult{QueuedResult: &pb.QueuedResult{Queued: found}}})
}

// Push implements mailbox.Sink: it writes a Deliver frame built around the stored envelope bytes.
func (c *conn) Push(tag uint64, envelope []byte) error {
	if c.state.Load() == stateClosed {
		return errors.New("connection closed")
	}
	if err := c.enqueueDeliver(tag, envelope); err != nil {
		return err
	}
	c.g.metrics.pushed.Inc()
	return nil
}

// fieldDeliver is Frame.deliver's field number.
const fieldDeliver = 13

// deliverInnerLen is the encoded size of Deliver{tag, envelope}.
func deliverInnerLen(tag uint64, envelope []byte) int {
	return protowire.SizeTag(1) + protowire.SizeVarint(tag) + protowire.SizeTag(2) + protowire.SizeBytes(len(envelope))
}

// appendDeliver appends Frame{deliver: Deliver{tag, envelope}} around already-encoded envelope
// bytes (not decoded and encoded again); inner is deliverInnerLen's.
func appendDeliver(b []byte, tag uint64, envelope []byte, inner int) []byte {
	b = protowire.AppendTag(b, fieldDeliver, protowire.BytesType)
	b = protowire.AppendVarint(b, uint64(inner))
	b = protowire.AppendTag(b, 1, protowire.VarintType)
	b = protowire.AppendVarint(b, tag)
	b = protowire.AppendTag(b, 2, protowire.BytesType)
	return protowire.AppendBytes(b, envelope)
}

// QueueEmpty implements mailbox.Sink.
func (c *conn) QueueEmpty(delivered int) {
	c.write(&pb.Frame{Body: &pb.Frame_QueueEmpty{QueueEmpty: &pb.QueueEmpty{Delivered: uint32(delivered)}}})
}

// Kicked implements mailbox.Sink: another connection of this device took over.
func (c *conn) Kicked() {
	c.write(&pb.Frame{Body: &pb.Frame_Error{Error: &pb.Error{
		Code:    pb.ErrorCode_ERROR_CODE_CONNECTED_ELSEWHERE,
		Message: "this device connected elsewhere; this connection is closed",
	}}})
	c.close()
}

func (c *conn) write(f *pb.Frame) {
	b, err := proto.Marshal(f)
	if err != nil {
		c.g.log.Error("encode frame", "err", err)
		return
	}
	_ = c.enqueue(b)
}

// writeError answers request id with err: its stable code and fixed message (errorFrame), and an
// error id under which the full error is logged. Logs are rate-limited node-wide (errorLog): an
// error whose line is suppressed gets no id, so every id a client holds is in the log. A
// codedError (the gateway's own refusal) or messaging.Error (a send the recipient rules refused)
// has a fixed message: answered as is, not logged.
func (c *conn) writeError(id uint64, err error) {
	code, _ := codeFor(err)
	c.g.metrics.rejected.WithLabelValues(pb.ErrorCodeName(code)).Inc()
	var ce *codedError
	var me *messaging.Error
	if errors.As(err, &ce) || errors.As(err, &me) {
		c.write(errorFrame(id, err, ""))
		return
	}
	errID := c.g.errLog.log(c.g.log, code, "request failed", "conn", c.id, "request", id, "err", err)
	c.write(errorFrame(id, err, errID))
}

func (c *conn) fail(id uint64, code pb.ErrorCode, msg string) {
	c.g.metrics.rejected.WithLabelValues(pb.ErrorCodeName(code)).Inc()
	c.write(&pb.Frame{Id: id, Body: &pb.Frame_Error{Error: &pb.Error{Code: code, Message: msg}}})
}

// close closes the WebSocket after writing what is pending; onClose then detaches.
func (c *conn) close() {
	_ = c.flushLocked()
	c.closeNow()
}

// closeNow closes the WebSocket, dropping what is pending.
func (c *conn) closeNow() {
	c.closeWriter()
	_ = c.ws.Close()
	c.shutdown()
}

// shutdown detaches the device from delivery and forgets a pending link. Idempotent.
func (c *conn) shutdown() {
	if c.state.Swap(stateClosed) == stateClosed {
		return
	}
	c.g.endLink(c, linkClosedOutcome)
	c.presenceOffline()
	c.mu.Lock()
	att := c.att
	c.att = nil
	c.mu.Unlock()
	if att != nil {
		att.Detach()
	}
}

func newErrorID() string {
	var b [6]byte
	_, _ = rand.Read(b[:])
	return hex.EncodeToString(b[:])
}
