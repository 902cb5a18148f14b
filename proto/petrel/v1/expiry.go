// Copyright 2026 The Petrel Authors
// SPDX-License-Identifier: Apache-2.0

package petrelv1

import "google.golang.org/protobuf/encoding/protowire"

// Limits of presence, settings and disappearing messages that the server and the SDK share.
const (
	// MaxPresenceAccounts is the most accounts one SubscribePresence may name.
	MaxPresenceAccounts = 256
	// MaxSettingsContacts is the most accounts Settings.contacts may list.
	MaxSettingsContacts = 4096
	// MaxExpiresInMs is the longest disappearing timer (Send.expires_at_ms may be at most this far
	// ahead of the server's clock, plus a day of clock skew).
	MaxExpiresInMs = 366 * 24 * 3600 * 1000
)

// AppendEnvelopeExpiry appends Envelope.expires_at_ms (field 8) to env, an encoded Envelope whose
// fields all have lower numbers (AppendEnvelope's output, with group_id if any): the result is
// what proto.Marshal produces for the envelope with expires_at_ms set. 0 appends nothing.
func AppendEnvelopeExpiry(env []byte, expiresAtMs int64) []byte {
	if expiresAtMs == 0 {
		return env
	}
	env = protowire.AppendTag(env, 8, protowire.VarintType)
	return protowire.AppendVarint(env, uint64(expiresAtMs))
}

// EnvelopeExpiry returns Envelope.expires_at_ms of an encoded Envelope: 0 when it has none or
// the bytes are not an envelope. It reads the top-level fields only (no allocation).
func EnvelopeExpiry(env []byte) int64 { return envelopeVarint(env, 8) }

// EnvelopeServerTime returns Envelope.server_time_ms (when the server accepted the Send) of an
// encoded Envelope: 0 when it has none or the bytes are not an envelope. It reads the top-level
// fields only (no allocation).
func EnvelopeServerTime(env []byte) int64 { return envelopeVarint(env, 6) }

// envelopeVarint returns the last value of the top-level varint field num of an encoded
// message: 0 when it has none or the bytes are malformed.
func envelopeVarint(env []byte, num protowire.Number) int64 {
	var val int64
	for len(env) > 0 {
		n0, typ, n := protowire.ConsumeTag(env)
		if n < 0 {
			return 0
		}
		env = env[n:]
		if n0 == num && typ == protowire.VarintType {
			v, n := protowire.ConsumeVarint(env)
			if n < 0 {
				return 0
			}
			val, env = int64(v), env[n:]
			continue
		}
		n = protowire.ConsumeFieldValue(n0, typ, env)
		if n < 0 {
			return 0
		}
		env = env[n:]
	}
	return val
}
