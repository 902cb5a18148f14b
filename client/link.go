// Copyright 2026 The Petrel Authors
// SPDX-License-Identifier: Apache-2.0

package client

import (
	"context"
	"crypto/ed25519"
	"errors"
	"fmt"
	"math"
	"sync"
	"sync/atomic"
	"time"

	"github.com/petrelchat/petrel/client/store"
	petrelv1 "github.com/petrelchat/petrel/proto/petrel/v1"
)

const (
	// inboundQueue bounds envelopes read but not yet processed; when full the reader waits (and
	// the server's flow control takes over).
	inboundQueue = 256
	// maxAckBatch bounds the envelopes persisted in one transaction and acked in one DeliverAck.
	maxAckBatch = 128
)

// link is one authenticated connection and the goroutines that serve it: the reader (owns reads),
// the inbound worker (decrypt, persist, ack), the sender (prekeys, outbox) and the keep-alive.
type link struct {
	c *Client
	// runCtx is Run's context (the link's own ends with the connection): events of a committed
	// batch are reported with it, so a connection that drops meanwhile does not swallow them.
	runCtx  context.Context
	conn    *conn
	welcome *petrelv1.Welcome
	inbound chan inboundItem
	// queueEmpty is closed by the inbound worker once the stored backlog has been processed.
	queueEmpty chan struct{}
	// otkLeft and kemLeft are the server's one-time prekey counts (Welcome, then PreKeyStatus);
	// only the sender goroutine uses them.
	otkLeft, kemLeft uint32
	// lastRead is when the reader last read a frame (Unix nanoseconds); handing is set while it
	// waits to hand one to the inbound worker (it reads nothing meanwhile: not a dead server).
	lastRead atomic.Int64
	handing  atomic.Bool
}

type inboundItem struct {
	deliver     *petrelv1.Deliver
	queueEmpty  *petrelv1.QueueEmpty
	listChanged *petrelv1.DeviceListChanged
}

// runLink makes one connection and serves it until it fails or ctx ends. connected reports
// whether authentication succeeded.
func (c *Client) runLink(ctx context.Context, url string) (connected bool, err error) {
	dctx, cancel := context.WithTimeout(ctx, c.cfg.DialTimeout)
	defer cancel()
	ws, err := dialServer(dctx, url)
	if err != nil {
		return false, err
	}
	cn := newConn(ws, c.cfg.RequestTimeout)
	welcome, err := c.authenticate(dctx, cn, url)
	if err != nil {
		cn.shutdown(false)
		return false, err
	}
	if mf := int(welcome.GetMaxFrameBytes()); mf > 0 {
		cn.maxFrame.Store(int64(mf))
		ws.SetReadLimit(readLimit(mf))
		c.rememberMaxFrame(mf)
	}
	c.servers.connected(url)
	c.mu.Lock()
	c.failover = failover{} // reported (or not one: the same server)
	c.mu.Unlock()
	c.learnServers(welcome.GetNodes())
	c.log.Info("connected", "name", welcome.GetName(), "server", url)
	if !c.emit(ctx, &Connected{Name: c.name, DeviceID: c.deviceID, Server: url}) {
		cn.shutdown(false)
		return true, ctx.Err()
	}

	l := &link{c: c, runCtx: ctx, conn: cn, welcome: welcome,
		inbound: make(chan inboundItem, inboundQueue), queueEmpty: make(chan struct{}),
		otkLeft: welcome.GetOneTimePrekeysLeft(), kemLeft: welcome.GetKemPrekeysLeft()}
	l.lastRead.Store(time.Now().UnixNano())
	lctx, lcancel := context.WithCancelCause(ctx)
	var wg sync.WaitGroup
	start := func(f func(context.Context) error) {
		wg.Add(1)
		go func() {
			defer wg.Done()
			if err := f(lctx); err != nil {
				lcancel(err)
			}
		}()
	}
	start(l.readLoop)
	start(l.inboundLoop)
	start(l.senderLoop)
	start(l.keepAlive)
	start(l.presenceLoop) // presence.go
	<-lctx.Done()
	err = context.Cause(lctx)
	c.setReady(ctx, nil)
	cn.shutdown(ctx.Err() != nil)
	wg.Wait()
	lcancel(nil)
	return true, err
}

// authenticate runs the handshake: Challenge → Auth → Welcome.
func (c *Client) authenticate(ctx context.Context, cn *conn, url string) (*petrelv1.Welcome, error) {
	f, err := cn.read(ctx)
	if err != nil {
		return nil, err
	}
	ch := f.GetChallenge()
	if ch == nil || len(ch.GetNonce()) != petrelv1.NonceSize {
		if e := f.GetError(); e != nil {
			return nil, errorFromProto(e)
		}
		return nil, fmt.Errorf("%w: expected Challenge", ErrProtocol)
	}
	sig := ed25519.Sign(c.authKey, petrelv1.AuthPayload(ch.GetNonce(), c.deviceID))
	auth := &petrelv1.Auth{DeviceId: c.deviceID, Signature: sig}
	c.mu.Lock()
	if fo := c.failover; fo.from != "" && fo.from != url {
		auth.FailoverMs = uint32(min(time.Since(fo.at).Milliseconds()+1, math.MaxUint32))
		auth.FailoverReason = fo.reason
	}
	c.mu.Unlock()
	w, err := cn.handshake(ctx, &petrelv1.Frame{Body: &petrelv1.Frame_Auth{Auth: auth}})
	if err != nil {
		return nil, err
	}
	if w == nil {
		return nil, fmt.Errorf("%w: expected Welcome", ErrProtocol)
	}
	if w.GetDeviceId() != c.deviceID {
		return nil, fmt.Errorf("%w: Welcome for another device", ErrProtocol)
	}
	return w, nil
}

// learnServers adds the nodes a Welcome named to the server list, and stores the list if it
// changed.
func (c *Client) learnServers(nodes []string) {
	if !c.servers.learn(nodes) {
		return
	}
	learned := c.servers.learnedURLs()
	err := c.st.Update(func(tx *store.Tx) error {
		a, err := tx.Account()
		if err != nil {
			return err
		}
		a.LearnedServers = learned
		return tx.PutAccount(a)
	})
	if err != nil {
		c.log.Warn("store server list", "err", err)
	}
}

func (c *Client) rememberMaxFrame(mf int) {
	c.mu.Lock()
	changed := c.maxFrame != mf
	c.maxFrame = mf
	c.mu.Unlock()
	if !changed {
		return
	}
	err := c.st.Update(func(tx *store.Tx) error {
		a, err := tx.Account()
		if err != nil {
			return err
		}
		a.MaxFrameBytes = uint32(mf)
		return tx.PutAccount(a)
	})
	if err != nil {
		c.log.Warn("store frame limit", "err", err)
	}
}

// readLoop owns reads: responses go to their requests, pushes to the inbound worker.
func (l *link) readLoop(ctx context.Context) error {
	for {
		f, err := l.conn.read(ctx)
		if err != nil {
			return err
		}
		l.lastRead.Store(time.Now().UnixNano())
		if f.GetId() != 0 {
			l.conn.dispatch(f)
			continue
		}
		var item inboundItem
		switch b := f.GetBody().(type) {
		case *petrelv1.Frame_Deliver:
			if b.Deliver.GetEnvelope() == nil {
				return fmt.Errorf("%w: Deliver without envelope", ErrProtocol)
			}
			item.deliver = b.Deliver
		case *petrelv1.Frame_QueueEmpty:
			item.queueEmpty = b.QueueEmpty
		case *petrelv1.Frame_DeviceListChanged:
			item.listChanged = b.DeviceListChanged
		case *petrelv1.Frame_PresenceChanged: // presence.go
			l.presencePushed(ctx, b.PresenceChanged)
			continue
		case *petrelv1.Frame_GoAway:
			g := b.GoAway
			l.c.mu.Lock()
			l.c.sawGoAway = true // whichever loop's error ends the link, it was sent away
			l.c.mu.Unlock()
			return &goAwayError{reason: g.GetReason(), message: g.GetMessage(),
				retryAfter: time.Duration(g.GetRetryAfterMs()) * time.Millisecond}
		case *petrelv1.Frame_Error:
			return errorFromProto(b.Error)
		default:
			l.c.log.Debug("ignoring unexpected push")
			continue
		}
		l.handing.Store(true)
		select {
		case l.inbound <- item:
		case <-ctx.Done():
			l.handing.Store(false)
			return nil
		}
		l.handing.Store(false)
		l.lastRead.Store(time.Now().UnixNano())
	}
}

// inboundLoop processes pushed envelopes in batches: decrypt and persist in one transaction,
// then ack the batch, then report.
func (l *link) inboundLoop(ctx context.Context) error {
	for {
		var batch []inboundItem
		select {
		case it := <-l.inbound:
			batch = append(batch, it)
		case <-ctx.Done():
			return nil
		}
	fill:
		for len(batch) < maxAckBatch && batch[len(batch)-1].queueEmpty == nil && batch[len(batch)-1].listChanged == nil {
			select {
			case it := <-l.inbound:
				batch = append(batch, it)
			default:
				break fill
			}
		}
		if err := l.processBatch(ctx, batch); err != nil {
			return err
		}
	}
}

// keepAlive pings the server every KeepAlive so a dead one is noticed: a ping unanswered
// within KeepAliveTimeout ends the link (the client moves to another server), unless frames
// still arrive or the reader is only waiting for the application to take the last one.
func (l *link) keepAlive(ctx context.Context) error {
	cfg := l.c.cfg
	if cfg.KeepAlive < 0 {
		return nil
	}
	t := time.NewTicker(cfg.KeepAlive)
	defer t.Stop()
	for {
		select {
		case <-t.C:
		case <-ctx.Done():
			return nil
		}
		now := cfg.Now().UnixMilli()
		pctx, cancel := context.WithTimeout(ctx, cfg.KeepAliveTimeout)
		_, err := l.conn.request(pctx, &petrelv1.Frame{Body: &petrelv1.Frame_Ping{Ping: &petrelv1.Ping{ClientTimeMs: now}}})
		cancel()
		if err == nil || ctx.Err() != nil {
			continue
		}
		if errors.Is(err, context.DeadlineExceeded) &&
			(l.handing.Load() || time.Since(time.Unix(0, l.lastRead.Load())) < cfg.KeepAliveTimeout) {
			continue // alive, only busy: the pong waits behind frames the application has not taken
		}
		return fmt.Errorf("keep-alive: %w", err)
	}
}

// senderLoop keeps the prekeys topped up, then (after QueueEmpty) drives the outbox.
func (l *link) senderLoop(ctx context.Context) error {
	c := l.c
	if err := l.maintainPreKeys(ctx); err != nil {
		if ctx.Err() != nil {
			return nil
		}
		if isConnErr(err) {
			return err
		}
		c.log.Warn("prekey maintenance failed", "err", err)
	}
	// This account's devices: the primary publishes the first signed list of an account that has
	// none; every device learns the current list (a push may have been missed while offline).
	c.ownSyncWanted.Store(true)
	c.groups.syncWanted.Store(true) // what waited in the store when the last connection ended
	if err := l.syncOwn(ctx); err != nil {
		return err
	}
	select {
	case <-l.queueEmpty:
	case <-ctx.Done():
		return nil
	}
	c.setReady(ctx, l)
	checkEvery := max(c.cfg.ResendInterval/4, time.Second)
	nextCheck := time.Time{}
	for {
		if now := c.cfg.Now(); !now.Before(nextCheck) {
			if !nextCheck.IsZero() {
				// Long-lived connection: rotate the signed prekey on schedule.
				if err := l.maintainPreKeys(ctx); err != nil {
					if ctx.Err() != nil {
						return nil
					}
					if isConnErr(err) {
						return err
					}
					c.log.Warn("prekey maintenance failed", "err", err)
				}
			}
			if err := l.checkOutbox(ctx); err != nil {
				if ctx.Err() != nil {
					return nil
				}
				return err
			}
			nextCheck = now.Add(checkEvery)
		}
		if err := l.syncOwn(ctx); err != nil {
			return err
		}
		if err := l.syncGroups(ctx); err != nil {
			return err
		}
		if err := l.flush(ctx); err != nil {
			if ctx.Err() != nil {
				return nil
			}
			return err
		}
		c.signalFlushed()
		t := time.NewTimer(checkEvery)
		select {
		case <-c.kick:
		case <-t.C:
		case <-ctx.Done():
			t.Stop()
			return nil
		}
		t.Stop()
	}
}

// syncOwn fetches this account's devices when asked to (requestOwnSync), then shows or drops the
// messages that waited for the list. Only errors that end the connection are returned.
func (l *link) syncOwn(ctx context.Context) error {
	c := l.c
	if !c.ownSyncWanted.Swap(false) {
		return nil
	}
	_, err := l.syncOwnDevices(ctx)
	switch {
	case ctx.Err() != nil:
		return nil
	case errors.Is(err, ErrDeviceRemoved):
		return err
	case err != nil && (isConnErr(err) || isStoreErr(err)):
		return err
	case err != nil:
		c.log.Warn("fetching this account's devices failed", "err", err)
		return nil
	}
	var events []Event
	err = c.st.Update(func(tx *store.Tx) error {
		var err error
		events, err = c.verifyUnverified(tx, true)
		return err
	})
	if err != nil {
		return &storeError{err}
	}
	for _, ev := range events {
		c.emit(l.runCtx, ev)
	}
	return nil
}

// requestOwnSync asks the sender loop to fetch this account's devices.
func (c *Client) requestOwnSync() {
	c.ownSyncWanted.Store(true)
	c.kickOutbox()
}

// isConnErr reports an error that means the connection is unusable (as opposed to a refused
// request).
func isConnErr(err error) bool {
	var e *Error
	if errors.As(err, &e) {
		return false
	}
	return errors.Is(err, errConnClosed) || errors.Is(err, ErrProtocol) || errors.Is(err, context.Canceled) ||
		errors.Is(err, context.DeadlineExceeded)
}
