// Copyright 2026 The Petrel Authors
// SPDX-License-Identifier: Apache-2.0

package client

import "time"

// Event is something the client reports on Config.Events: *Message, *Connected, *QueueEmpty,
// *Disconnected, *Delivered, *SendFailed, *IdentityChanged, *DevicesChanged, *HistoryReceived,
// *DecryptFailed, *PreKeysUploaded, *Read, *Typing or *PresenceChanged.
type Event interface{ isEvent() }

// Message is a received text message, or (Outgoing) one this account sent from another of its
// devices. It was persisted and acked before it is reported; it stays in Client.Unseen until
// claimed (Client.ClaimSeen), which an application does before showing it.
type Message struct {
	// Seq is the message's position in the local history (see Client.ClaimSeen).
	Seq uint64
	ID  string
	// From is the sender account (this account's name for an Outgoing message); FromDevice the
	// device that sent it.
	From       string
	FromDevice string
	// Outgoing is set on a message this account sent from another device, to account To.
	Outgoing bool
	To       string
	Text     string
	// SentAt is the sender's clock; ServerTime when the server accepted it; ReceivedAt ours.
	SentAt     time.Time
	ServerTime time.Time
	ReceivedAt time.Time
	// Group is the group id of a group message (To is then empty; Client.GroupName gives the
	// group's local name). GroupEvent is set on a membership change shown in the group's chat
	// (From is then its actor, Text its description).
	Group      string
	GroupEvent *GroupEvent
	// ExpiresIn is a disappearing message's timer (0: none), ExpiresAt when it leaves the history
	// (zero until its countdown starts: a received one's starts when it is shown). Timer marks a
	// change of the chat's disappearing timer to TimerSet (0: off) rather than a text
	// (disappearing.go).
	ExpiresIn time.Duration
	ExpiresAt time.Time
	Timer     bool
	TimerSet  time.Duration
}

// Connected reports an authenticated connection.
type Connected struct {
	Name, DeviceID string
	// Server is the URL connected to.
	Server string
}

// QueueEmpty reports that everything the server held for this device when the connection was
// made has been received (and reported before this event).
type QueueEmpty struct {
	Delivered int
}

// Disconnected reports a lost connection and when the client will try again.
type Disconnected struct {
	Err     error
	RetryIn time.Duration
}

// Delivered reports that a recipient device has sent a delivery receipt for a message (the first
// one; the message stays in the outbox until every device it was sent to receipted it or left
// the recipient's device list). For a group message (Group set, To empty) it reports that every
// member it was sent to has it: a device of each sent a delivery receipt.
type Delivered struct {
	To, MessageID string
	// Group is the group id of a group message (Client.GroupName gives its local name).
	Group string
}

// SendFailed reports a message that was refused for good and left the outbox (for example, the
// recipient account no longer exists) while no Send was waiting for it (a message from an earlier
// run); a waiting Send returns the error instead.
type SendFailed struct {
	To, MessageID string
	Err           error
}

// IdentityChanged reports a contact device whose identity key differs from the one trusted
// before, or a new device on a known contact. Either changes the safety number: users who care
// should compare it again.
type IdentityChanged struct {
	Name     string
	DeviceID string
	// NewDevice is true when the device was not known before (its key is new rather than changed).
	NewDevice bool
	// OldFingerprint is empty for a new device.
	OldFingerprint, NewFingerprint string
}

// DevicesChanged reports that an account's signed device list changed: devices were added or
// removed (Name is this account's own name for a change of its own devices). The safety number
// with Name changes with it. Sessions with removed devices are deleted.
type DevicesChanged struct {
	Name           string
	Version        uint64
	Added, Removed []string
}

// HistoryReceived reports a chunk of recent history sent by another device of this account after
// this one was linked (see Client.History): Chunk is its number in the transfer (from 1),
// Messages how many messages it added; Last is set on the final chunk.
type HistoryReceived struct {
	FromDevice string
	Chunk      int
	Messages   int
	Last       bool
}

// DecryptFailed reports an envelope that could not be decrypted; it was acked and dropped.
type DecryptFailed struct {
	From, FromDevice, MessageID string
	Err                         error
}

// PreKeysUploaded reports prekeys uploaded after connecting: one-time prekeys replenished and/or
// the signed and last-resort prekeys rotated.
type PreKeysUploaded struct {
	OneTime, KEM int
	Rotated      bool
}

func (*Message) isEvent()         {}
func (*PreKeysUploaded) isEvent() {}
func (*Connected) isEvent()       {}
func (*QueueEmpty) isEvent()      {}
func (*Disconnected) isEvent()    {}
func (*Delivered) isEvent()       {}
func (*SendFailed) isEvent()      {}
func (*IdentityChanged) isEvent() {}
func (*DecryptFailed) isEvent()   {}
func (*DevicesChanged) isEvent()  {}
func (*HistoryReceived) isEvent() {}
