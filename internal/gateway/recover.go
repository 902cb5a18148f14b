// Copyright 2026 The Petrel Authors
// SPDX-License-Identifier: Apache-2.0

package gateway

import (
	"context"
	"errors"
	"time"

	"github.com/petrelchat/petrel/internal/bus"
	"github.com/petrelchat/petrel/internal/directory"
	"github.com/petrelchat/petrel/internal/keyrate"
	pb "github.com/petrelchat/petrel/proto/petrel/v1"
)

// Recover (handshake state): a new device re-claims an account with its recovery key. Attempts,
// valid or not, are limited per address (the registration budget: RegistrationLimits) and per
// account (recoverBurst, then one every recoverEvery, on each node) before the directory spends a
// read and a signature check on them: a guesser gets a handful of tries an hour, and the key's
// 240 bits make guessing hopeless anyway.
const (
	recoverBurst = 5
	recoverEvery = 12 * time.Minute
)

func newRecoverLimiter() *keyrate.Limiter[string] {
	return keyrate.New[string](keyrate.Config{Rate: 1 / recoverEvery.Seconds(), Burst: recoverBurst, MaxKeys: 100_000})
}

// onRecover handles Recover: the limits, the directory's checks and writes, then the old devices
// are told (their connections, on any node, are closed with DEVICE_REMOVED; their inboxes are
// dropped) and this connection is welcomed as the account's primary.
func (c *conn) onRecover(f *pb.Frame) {
	ctx, cancel := c.ctx()
	defer cancel()
	req := f.GetRecover()
	r, clientFault, err := c.recover(ctx, req)
	var dev directory.Principal
	if err == nil {
		dev = r.Device.Principal()
		c.g.log.Info("account recovered", "name", dev.Name, "device", dev.ID, "removed", len(r.Removed))
		c.dropRecovered(ctx, r.Removed)
	}
	c.authenticated(ctx, f, dev, clientFault, err)
}

// recover applies the limits and runs the directory's Recover.
func (c *conn) recover(ctx context.Context, req *pb.Recover) (r *directory.Recovered, clientFault bool, err error) {
	if ok, retry := c.g.reg.allowIP(c.ws.RemoteAddr()); !ok {
		c.g.reg.limited.WithLabelValues("recover_ip").Inc()
		return nil, true, &codedError{code: pb.ErrorCode_ERROR_CODE_RATE_LIMITED,
			msg: "too many attempts from this address, try later", retry: retryMs(retry)}
	}
	if pb.ValidName(req.GetName()) {
		if ok, retry := c.g.recoverOps.Take(req.GetName(), 1); !ok {
			c.g.reg.limited.WithLabelValues("recover_account").Inc()
			return nil, true, &codedError{code: pb.ErrorCode_ERROR_CODE_RATE_LIMITED,
				msg: "too many recovery attempts for this account, try later", retry: retryMs(retry)}
		}
	}
	r, err = c.g.dir.Recover(ctx, req, c.nonce())
	if errors.Is(err, directory.ErrRecoveryRefused) {
		err = &codedError{code: pb.ErrorCode_ERROR_CODE_AUTH_FAILED, msg: "the recovery key does not match this account"}
	}
	return r, err != nil && !errors.Is(err, directory.ErrUnavailable) && ctx.Err() == nil, err
}

// dropRecovered drops the inboxes of the devices a recovery removed and closes their connections.
func (c *conn) dropRecovered(ctx context.Context, removed []string) {
	for _, id := range removed {
		if !pb.ValidDeviceID(id) {
			continue
		}
		if err := c.g.mb.DropInbox(ctx, id); err != nil {
			c.g.log.Warn("drop the inbox of a device replaced by recovery", "device", id, "err", err)
		}
		if err := c.g.publish(bus.ControlSubject(id), []byte{ctlRemoved}); err != nil {
			c.g.log.Warn("replaced device's connection not told", "conn", c.id, "device", id, "err", err)
		}
	}
}
