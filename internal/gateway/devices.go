// Copyright 2026 The Petrel Authors
// SPDX-License-Identifier: Apache-2.0

package gateway

import (
	"context"
	"errors"
	"fmt"

	"google.golang.org/protobuf/proto"

	"github.com/petrelchat/petrel/e2ee"
	"github.com/petrelchat/petrel/internal/bus"
	"github.com/petrelchat/petrel/internal/directory"
	pb "github.com/petrelchat/petrel/proto/petrel/v1"
)

// The frames of an authenticated device that manage its account's devices. The directory decides
// (who may, whether a list verifies and matches); the gateway answers, and tells the other nodes
// over the control channel (control.go): the waiting new device of an approved link, the devices
// whose account's list changed, a removed device's connection.
//
// Answers: GetLinkOffer → LinkOffer; ApproveLink, GetDevices, PutDeviceList → DeviceListResult
// (the account's devices after the change); RemoveDevice → DeviceListResult (empty for a device
// that removed itself, whose connection is then closed with DEVICE_REMOVED).

// principal is the connection's authenticated device.
func (c *conn) principal() directory.Principal {
	c.mu.Lock()
	defer c.mu.Unlock()
	return c.dev
}

// deviceError turns the directory's refusals of device changes into coded errors with fixed
// texts (denied: the text for PERMISSION_DENIED in this request); others pass unchanged.
func (c *conn) deviceError(err error, denied string) error {
	switch {
	case errors.Is(err, directory.ErrPermissionDenied):
		return &codedError{code: pb.ErrorCode_ERROR_CODE_PERMISSION_DENIED, msg: denied}
	case errors.Is(err, directory.ErrLinkExpired):
		return &codedError{code: pb.ErrorCode_ERROR_CODE_LINK_EXPIRED, msg: "the link code is unknown, used or expired: start linking again on the new device"}
	case errors.Is(err, directory.ErrTooManyDevices):
		return &codedError{code: pb.ErrorCode_ERROR_CODE_TOO_MANY_DEVICES,
			msg: fmt.Sprintf("the account already has %d devices: remove one with petrel devices remove", c.g.cfg.MaxDevices)}
	case errors.Is(err, directory.ErrStaleDeviceList):
		return &codedError{code: pb.ErrorCode_ERROR_CODE_STALE_DEVICES, msg: "the signed device list does not match the account's devices: fetch them again (GetDevices), sign and retry"}
	case errors.Is(err, directory.ErrInvalidDeviceList):
		return &codedError{code: pb.ErrorCode_ERROR_CODE_INVALID_REQUEST, msg: "the signed device list does not verify or is malformed"}
	}
	return err
}

// Device-management frames that change or probe an account's devices (GetLinkOffer, ApproveLink,
// PutDeviceList, RemoveDevice) are rate-limited per device, on each node: a person links or
// removes a device now and then, while guessing link ids or churning the signed list costs the
// directory a replicated write each time.
const (
	deviceOpsBurst     = 20
	deviceOpsPerMinute = 10
)

// allowDeviceOp takes one device-management frame from the device's budget; when it is spent,
// the frame is answered RATE_LIMITED and false is returned.
func (c *conn) allowDeviceOp(id uint64, dev directory.Principal) bool {
	ok, wait := c.g.devOps.Take(dev.ID, 1)
	if !ok {
		c.g.limitHit(limitDeviceChanges, true)
		c.writeError(id, &codedError{code: pb.ErrorCode_ERROR_CODE_RATE_LIMITED, msg: "too many device changes: try again later", retry: retryMs(wait)})
	}
	return ok
}

const (
	deniedApprove = "approve from your primary device"
	deniedList    = "only the primary device signs the account's device list"
	deniedRemove  = "the primary device cannot be removed, and only the primary removes other devices"
)

// onGetLinkOffer hands a pending link's offer to the account's primary device.
func (c *conn) onGetLinkOffer(f *pb.Frame) {
	dev := c.principal()
	if !c.allowDeviceOp(f.Id, dev) {
		return
	}
	ctx, cancel := c.ctx()
	defer cancel()
	offer, err := c.g.dir.LinkOffer(ctx, dev, f.GetGetLinkOffer_().GetLinkId())
	if err != nil {
		c.writeError(f.Id, c.deviceError(err, deniedApprove))
		return
	}
	c.write(&pb.Frame{Id: f.Id, Body: &pb.Frame_LinkOffer{LinkOffer: offer}})
}

// onApproveLink adds a pending link's device to the account, sends the approval to the waiting
// device (on whichever node holds it) and the new list to the account's other devices.
func (c *conn) onApproveLink(f *pb.Frame) {
	dev := c.principal()
	if !c.allowDeviceOp(f.Id, dev) {
		return
	}
	ctx, cancel := c.ctx()
	defer cancel()
	req := f.GetApproveLink()
	a, err := c.g.dir.ApproveLink(ctx, dev, req)
	if err != nil {
		c.writeError(f.Id, c.deviceError(err, deniedApprove))
		return
	}
	// A canonical link id (checked again: it names a subject).
	if id := a.LinkID; e2ee.ValidLinkID(id) {
		frame, err := proto.Marshal(&pb.Frame{Body: &pb.Frame_LinkApproved{LinkApproved: &pb.LinkApproved{
			Name: a.Name, DeviceId: a.NewDeviceID, EphemeralKey: req.GetEphemeralKey(), SealedApproval: req.GetSealedApproval(),
		}}})
		if err == nil {
			err = c.g.publish(bus.LinkSubject(id), frame)
		}
		if err != nil {
			// The device is linked; the waiting connection will see LINK_EXPIRED and the user
			// links again (with fresh keys).
			c.g.log.Warn("link approval not sent to the waiting device", "conn", c.id, "device", a.NewDeviceID, "err", err)
		}
	}
	c.g.pushDeviceList(deviceIDs(a.Info), a.DeviceList, dev.ID, a.NewDeviceID)
	c.write(&pb.Frame{Id: f.Id, Body: &pb.Frame_DeviceListResult{DeviceListResult: a.Info}})
}

// onGetDevices answers the account's devices.
func (c *conn) onGetDevices(f *pb.Frame) {
	ctx, cancel := c.ctx()
	defer cancel()
	info, err := c.g.dir.Devices(ctx, c.principal())
	if err != nil {
		c.writeError(f.Id, err)
		return
	}
	c.write(&pb.Frame{Id: f.Id, Body: &pb.Frame_DeviceListResult{DeviceListResult: info}})
}

// onPutDeviceList stores a list the primary signed and pushes it to the other devices.
func (c *conn) onPutDeviceList(f *pb.Frame) {
	dev := c.principal()
	if !c.allowDeviceOp(f.Id, dev) {
		return
	}
	ctx, cancel := c.ctx()
	defer cancel()
	sdl := f.GetPutDeviceList().GetDeviceList()
	if err := c.g.dir.PutDeviceList(ctx, dev, sdl); err != nil {
		c.writeError(f.Id, c.deviceError(err, deniedList))
		return
	}
	info, err := c.g.dir.Devices(ctx, dev)
	if err != nil {
		c.writeError(f.Id, err)
		return
	}
	c.g.pushDeviceList(deviceIDs(info), sdl, dev.ID, "")
	c.write(&pb.Frame{Id: f.Id, Body: &pb.Frame_DeviceListResult{DeviceListResult: info}})
}

// onRemoveDevice unlinks a device: the directory removes it, its connection (any node) is closed
// with DEVICE_REMOVED, its inbox is dropped, and the other devices learn the new list.
func (c *conn) onRemoveDevice(f *pb.Frame) {
	dev := c.principal()
	if !c.allowDeviceOp(f.Id, dev) {
		return
	}
	ctx, cancel := c.ctx()
	defer cancel()
	req := f.GetRemoveDevice()
	removed := req.GetDeviceId()
	if err := c.g.dir.RemoveDevice(ctx, dev, removed, req.GetDeviceList()); err != nil {
		c.writeError(f.Id, c.deviceError(err, deniedRemove))
		return
	}
	// The directory accepted a well-formed device id: safe in a subject.
	self := removed == dev.ID
	info := &pb.DeviceListResult{}
	list := req.GetDeviceList()
	var others []string
	if self {
		// No new list: the primary re-signs one when it sees the change. The others get the
		// list stored now (which still names this device) as the news.
		if acc, err := c.g.dir.Account(ctx, dev.Name); err == nil {
			others = acc.Devices
			if sl := acc.DeviceList; sl != nil {
				list = &pb.SignedDeviceList{List: sl.List, Signature: sl.Signature}
			}
		}
	} else {
		var err error
		if info, err = c.g.dir.Devices(ctx, dev); err != nil {
			c.writeError(f.Id, err)
			return
		}
		others = deviceIDs(info)
	}
	if err := c.g.mb.DropInbox(ctx, removed); err != nil {
		// Nothing can be sent to the device any more; what is left expires with the inbox TTL.
		c.g.log.Warn("drop a removed device's inbox", "device", removed, "err", err)
	}
	c.g.pushDeviceList(others, list, dev.ID, removed)
	// When the answer arrives the inbox is gone and the others were told. The removed device's
	// connection is closed after it (it may be this one: a device that removed itself is
	// answered first).
	c.write(&pb.Frame{Id: f.Id, Body: &pb.Frame_DeviceListResult{DeviceListResult: info}})
	if err := c.g.publish(bus.ControlSubject(removed), []byte{ctlRemoved}); err != nil {
		c.g.log.Warn("removed device's connection not told", "conn", c.id, "device", removed, "err", err)
	}
}

// deviceIDs lists the devices of a DeviceListResult.
func deviceIDs(info *pb.DeviceListResult) []string {
	ids := make([]string, 0, len(info.GetDevices()))
	for _, d := range info.GetDevices() {
		ids = append(ids, d.GetDeviceId())
	}
	return ids
}

// pushDeviceList sends DeviceListChanged{list} to each of devices but skip1 and skip2, on
// whichever node holds its connection.
func (g *Gateway) pushDeviceList(devices []string, list *pb.SignedDeviceList, skip1, skip2 string) {
	frame, err := proto.Marshal(&pb.Frame{Body: &pb.Frame_DeviceListChanged{DeviceListChanged: &pb.DeviceListChanged{DeviceList: list}}})
	if err != nil {
		g.log.Error("encode DeviceListChanged", "err", err)
		return
	}
	msg := append([]byte{ctlDeviceList}, frame...)
	for _, d := range devices {
		if d == skip1 || d == skip2 || !pb.ValidDeviceID(d) {
			continue
		}
		if err := g.publish(bus.ControlSubject(d), msg); err != nil {
			g.log.Warn("device list change not pushed", "device", d, "err", err)
		}
	}
}

// seenCtx bounds one last-seen update.
func seenCtx() (context.Context, context.CancelFunc) {
	return context.WithTimeout(context.Background(), seenTimeout)
}
