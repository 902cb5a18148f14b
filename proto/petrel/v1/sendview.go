// Copyright 2026 The Petrel Authors
// SPDX-License-Identifier: Apache-2.0

package petrelv1

import (
	"math"
	"unicode/utf8"

	"google.golang.org/protobuf/encoding/protowire"
)

// SendView is a Frame{id, send: Send{...}} parsed without building the generated messages: its
// byte slices alias the input. It is for the server's hottest path; everything else uses
// DecodeFrame.
type SendView struct {
	ID        uint64
	MessageID []byte
	To        []byte
	Envelopes []CiphertextView
	// OwnEnvelopes are Send.own_envelopes: the sender's copies for its own other devices.
	OwnEnvelopes []CiphertextView
	// Ephemeral and ExpiresAtMs are Send.ephemeral and Send.expires_at_ms. ParseSendFrame never
	// sets them (a Send with either takes the general path); the gateway fills them in.
	Ephemeral   bool
	ExpiresAtMs int64
}

// CiphertextView is one DeviceCiphertext of a SendView.
type CiphertextView struct {
	DeviceID   []byte
	Type       EnvelopeType
	Ciphertext []byte
}

// ParseSendFrame parses b as a Frame whose body is a Send, appending the envelopes to
// v.Envelopes[:0] and the own envelopes to v.OwnEnvelopes[:0] (give both a backing array and it
// allocates nothing while they fit). It accepts only what a well-behaved encoder writes (each field at most once,
// known fields, valid UTF-8 in strings); on false the caller must use DecodeFrame, which then
// decides (and reports) exactly as for any other frame. It never panics.
func ParseSendFrame(b []byte, v *SendView) bool {
	v.ID, v.MessageID, v.To, v.Envelopes, v.OwnEnvelopes = 0, nil, nil, v.Envelopes[:0], v.OwnEnvelopes[:0]
	v.Ephemeral, v.ExpiresAtMs = false, 0
	var seenID, seenSend bool
	for len(b) > 0 {
		num, typ, n := protowire.ConsumeTag(b)
		if n < 0 {
			return false
		}
		b = b[n:]
		switch {
		case num == 1 && typ == protowire.VarintType && !seenID:
			x, n := protowire.ConsumeVarint(b)
			if n < 0 {
				return false
			}
			v.ID, seenID, b = x, true, b[n:]
		case num == 42 && typ == protowire.BytesType && !seenSend:
			body, n := protowire.ConsumeBytes(b)
			if n < 0 || !parseSend(body, v) {
				return false
			}
			seenSend, b = true, b[n:]
		default:
			return false
		}
	}
	return seenSend
}

func parseSend(b []byte, v *SendView) bool {
	var seenMsg, seenTo bool
	for len(b) > 0 {
		num, typ, n := protowire.ConsumeTag(b)
		if n < 0 || typ != protowire.BytesType {
			return false
		}
		b = b[n:]
		val, n := protowire.ConsumeBytes(b)
		if n < 0 {
			return false
		}
		b = b[n:]
		switch {
		case num == 1 && !seenMsg && utf8.Valid(val):
			v.MessageID, seenMsg = val, true
		case num == 2 && !seenTo && utf8.Valid(val):
			v.To, seenTo = val, true
		case num == 3 || num == 4:
			var c CiphertextView
			if !parseCiphertext(val, &c) {
				return false
			}
			if num == 3 {
				v.Envelopes = append(v.Envelopes, c)
			} else {
				v.OwnEnvelopes = append(v.OwnEnvelopes, c)
			}
		default:
			return false
		}
	}
	return true
}

func parseCiphertext(b []byte, c *CiphertextView) bool {
	var seenDev, seenType, seenCT bool
	for len(b) > 0 {
		num, typ, n := protowire.ConsumeTag(b)
		if n < 0 {
			return false
		}
		b = b[n:]
		switch {
		case num == 1 && typ == protowire.BytesType && !seenDev:
			val, n := protowire.ConsumeBytes(b)
			if n < 0 || !utf8.Valid(val) {
				return false
			}
			c.DeviceID, seenDev, b = val, true, b[n:]
		case num == 2 && typ == protowire.VarintType && !seenType:
			x, n := protowire.ConsumeVarint(b)
			if n < 0 || x > math.MaxInt32 {
				return false
			}
			c.Type, seenType, b = EnvelopeType(x), true, b[n:]
		case num == 3 && typ == protowire.BytesType && !seenCT:
			val, n := protowire.ConsumeBytes(b)
			if n < 0 {
				return false
			}
			c.Ciphertext, seenCT, b = val, true, b[n:]
		default:
			return false
		}
	}
	return true
}

// ParseDeliverAckFrame parses b as a Frame whose only field is a DeliverAck (the frame a device
// sends for every batch of deliveries), appending its tags to tags and returning them, without
// building messages. Like ParseSendFrame it accepts only what a well-behaved encoder writes
// (no request id, the body once, only the tags field, packed or not); on false the caller must use
// DecodeFrame, which then decides exactly as for any other frame. It never panics.
func ParseDeliverAckFrame(b []byte, tags []uint64) ([]uint64, bool) {
	num, typ, n := protowire.ConsumeTag(b)
	if n < 0 || num != fieldDeliverAck || typ != protowire.BytesType {
		return tags, false
	}
	body, m := protowire.ConsumeBytes(b[n:])
	if m < 0 || n+m != len(b) {
		return tags, false
	}
	for len(body) > 0 {
		num, typ, n := protowire.ConsumeTag(body)
		if n < 0 || num != 1 {
			return tags, false
		}
		body = body[n:]
		switch typ {
		case protowire.VarintType:
			x, n := protowire.ConsumeVarint(body)
			if n < 0 {
				return tags, false
			}
			tags, body = append(tags, x), body[n:]
		case protowire.BytesType:
			packed, n := protowire.ConsumeBytes(body)
			if n < 0 {
				return tags, false
			}
			body = body[n:]
			for len(packed) > 0 {
				x, n := protowire.ConsumeVarint(packed)
				if n < 0 {
					return tags, false
				}
				tags, packed = append(tags, x), packed[n:]
			}
		default:
			return tags, false
		}
	}
	return tags, true
}

// fieldDeliverAck is Frame.deliver_ack's field number.
const fieldDeliverAck = 43
