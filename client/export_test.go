// Copyright 2026 The Petrel Authors
// SPDX-License-Identifier: Apache-2.0

package client

import "time"

// SetAckHookForTest makes c call f with the tags of each batch it has committed, before it acks
// them; an error from f is taken as the ack's write error: the ack is lost and the connection
// drops. Call it before Run.
func (c *Client) SetAckHookForTest(f func(tags []uint64) error) { c.ackHook = f }

// SendHighWaterForTest returns the most outbox sends that were in flight at once.
func (c *Client) SendHighWaterForTest() int { return int(c.sendHighWater.Load()) }

// SetGroupAwaitingForTest lowers the most member devices a group message waits for in the
// outbox (maxGroupAwaiting); past it the server's ack ends the entry. Call it before Run.
func (c *Client) SetGroupAwaitingForTest(n int) { c.groupAwaiting = n }

// SetReportRetryForTest sets the first retry delay of a problem report whose POST failed.
// Call it before Run.
func (c *Client) SetReportRetryForTest(d time.Duration) {
	if c.rep != nil {
		c.rep.retryBase = d
	}
}

// ReportsSentForTest returns how many automatic problem reports the server took in this run.
func (c *Client) ReportsSentForTest() int {
	if c.rep == nil {
		return 0
	}
	c.rep.mu.Lock()
	defer c.rep.mu.Unlock()
	return c.rep.sent
}
