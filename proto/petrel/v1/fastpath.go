// Copyright 2026 The Petrel Authors
// SPDX-License-Identifier: Apache-2.0

package petrelv1

import "google.golang.org/protobuf/encoding/protowire"

// Hand-written encoders for the two messages the server builds for every relayed message. They
// produce exactly what proto.Marshal produces for the same message (tested), in one allocation
// instead of four or five.

// AppendEnvelope appends the encoding of Envelope{message_id, from, from_device, type, ciphertext,
// server_time_ms} to b.
func AppendEnvelope(b []byte, messageID, from, fromDevice string, typ EnvelopeType, ciphertext []byte, serverTimeMs int64) []byte {
	if b == nil {
		b = make([]byte, 0, 24+len(messageID)+len(from)+len(fromDevice)+len(ciphertext))
	}
	b = appendString(b, 1, messageID)
	b = appendString(b, 2, from)
	b = appendString(b, 3, fromDevice)
	if typ != 0 {
		b = protowire.AppendTag(b, 4, protowire.VarintType)
		b = protowire.AppendVarint(b, uint64(typ))
	}
	if len(ciphertext) > 0 {
		b = protowire.AppendTag(b, 5, protowire.BytesType)
		b = protowire.AppendBytes(b, ciphertext)
	}
	if serverTimeMs != 0 {
		b = protowire.AppendTag(b, 6, protowire.VarintType)
		b = protowire.AppendVarint(b, uint64(serverTimeMs))
	}
	return b
}

// EnvelopeSize is the length of what AppendEnvelope appends for the same arguments (ciphertextLen
// bytes of ciphertext), so that several envelopes can share one exactly sized buffer.
func EnvelopeSize(messageID, from, fromDevice string, typ EnvelopeType, ciphertextLen int, serverTimeMs int64) int {
	n := sizeString(1, messageID) + sizeString(2, from) + sizeString(3, fromDevice)
	if typ != 0 {
		n += protowire.SizeTag(4) + protowire.SizeVarint(uint64(typ))
	}
	if ciphertextLen > 0 {
		n += protowire.SizeTag(5) + protowire.SizeBytes(ciphertextLen)
	}
	if serverTimeMs != 0 {
		n += protowire.SizeTag(6) + protowire.SizeVarint(uint64(serverTimeMs))
	}
	return n
}

func sizeString(num protowire.Number, s string) int {
	if s == "" {
		return 0
	}
	return protowire.SizeTag(num) + protowire.SizeBytes(len(s))
}

// AppendSendResultFrame appends the encoding of Frame{id, send_result: SendResult{message_id}}
// to b. SendResult's delivered_live and stored are never set: they were a presence oracle.
func AppendSendResultFrame(b []byte, id uint64, messageID string) []byte {
	inner := 0
	if messageID != "" {
		inner += protowire.SizeTag(1) + protowire.SizeBytes(len(messageID))
	}
	if b == nil {
		b = make([]byte, 0, 16+inner)
	}
	if id != 0 {
		b = protowire.AppendTag(b, 1, protowire.VarintType)
		b = protowire.AppendVarint(b, id)
	}
	b = protowire.AppendTag(b, 16, protowire.BytesType)
	b = protowire.AppendVarint(b, uint64(inner))
	return appendString(b, 1, messageID)
}

func appendString(b []byte, num protowire.Number, s string) []byte {
	if s == "" {
		return b
	}
	b = protowire.AppendTag(b, num, protowire.BytesType)
	return protowire.AppendString(b, s)
}
