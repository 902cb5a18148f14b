// Copyright 2026 The Petrel Authors
// SPDX-License-Identifier: Apache-2.0

// Package petrelv1 is Petrel's wire protocol, version 1: the protobuf schema in petrel.proto (the
// protocol flow is documented there), its generated code, and the small helpers that the server and
// the SDK must agree on byte for byte: frame limits, the auth payload, device ids and name rules.
//
// Regenerate the Go code with scripts/genproto after changing a .proto file.
package petrelv1

import (
	"crypto/ed25519"
	"crypto/sha256"
	"encoding/hex"
	"errors"
	"fmt"

	"google.golang.org/protobuf/proto"
)

const (
	// Subprotocol is the WebSocket subprotocol every connection must negotiate.
	Subprotocol = "petrel.v1"
	// ConnectPath is the WebSocket endpoint.
	ConnectPath = "/v1/connect"
	// DefaultMaxFrameBytes is the default limit on one frame (config max_frame_bytes).
	DefaultMaxFrameBytes = 256 << 10
	// NonceSize is the size of a Challenge nonce.
	NonceSize = 32
	// MaxQueryQueued is the most message ids one QueryQueued may ask about.
	MaxQueryQueued = 256
	// MaxNameLen and MaxMessageIDLen bound account names and message ids.
	MaxNameLen      = 32
	MaxMessageIDLen = 64

	authContext = "petrel-auth-v1"
)

// ErrFrameTooLarge is returned by DecodeFrame for frames over the limit.
var ErrFrameTooLarge = errors.New("frame too large")

// ErrMalformedFrame is returned by DecodeFrame for bytes that are not a Frame.
var ErrMalformedFrame = errors.New("malformed frame")

// DecodeFrame parses one frame, refusing frames longer than maxBytes (0 means DefaultMaxFrameBytes).
func DecodeFrame(b []byte, maxBytes int) (*Frame, error) {
	if maxBytes <= 0 {
		maxBytes = DefaultMaxFrameBytes
	}
	if len(b) > maxBytes {
		return nil, fmt.Errorf("%w: %d bytes, limit %d", ErrFrameTooLarge, len(b), maxBytes)
	}
	f := &Frame{}
	if err := proto.Unmarshal(b, f); err != nil {
		return nil, fmt.Errorf("%w: %v", ErrMalformedFrame, err)
	}
	return f, nil
}

// EncodeFrame serialises one frame.
func EncodeFrame(f *Frame) ([]byte, error) {
	return proto.Marshal(f)
}

// AuthPayload is the message a device signs to answer a Challenge:
// "petrel-auth-v1" || 0x00 || nonce || deviceID.
func AuthPayload(nonce []byte, deviceID string) []byte {
	b := make([]byte, 0, len(authContext)+1+len(nonce)+len(deviceID))
	b = append(b, authContext...)
	b = append(b, 0)
	b = append(b, nonce...)
	b = append(b, deviceID...)
	return b
}

// DeviceID derives a device id from the device's Ed25519 auth public key: the lowercase hex of the
// first 16 bytes of its SHA-256. It is safe to use as a NATS subject token.
func DeviceID(authKey ed25519.PublicKey) string {
	sum := sha256.Sum256(authKey)
	return hex.EncodeToString(sum[:16])
}

// ValidDeviceID reports whether s has the shape of a device id.
func ValidDeviceID(s string) bool {
	if len(s) != 32 {
		return false
	}
	for i := 0; i < len(s); i++ {
		c := s[i]
		if !(c >= '0' && c <= '9' || c >= 'a' && c <= 'f') {
			return false
		}
	}
	return true
}

// ValidName reports whether name is an acceptable account name: 1-32 of [a-z0-9_.-], starting with
// a letter or digit.
func ValidName(name string) bool {
	if len(name) == 0 || len(name) > MaxNameLen {
		return false
	}
	for i := 0; i < len(name); i++ {
		c := name[i]
		switch {
		case c >= 'a' && c <= 'z', c >= '0' && c <= '9':
		case (c == '_' || c == '.' || c == '-') && i > 0:
		default:
			return false
		}
	}
	return true
}

// ValidMessageID reports whether id is an acceptable client-chosen message id: 1-64 of [A-Za-z0-9_-].
func ValidMessageID(id string) bool {
	if len(id) == 0 || len(id) > MaxMessageIDLen {
		return false
	}
	for i := 0; i < len(id); i++ {
		c := id[i]
		if !(c >= 'a' && c <= 'z' || c >= 'A' && c <= 'Z' || c >= '0' && c <= '9' || c == '_' || c == '-') {
			return false
		}
	}
	return true
}

// ErrorCodeName returns the short stable name of a code, e.g. "unknown_user".
func ErrorCodeName(c ErrorCode) string {
	name, ok := ErrorCode_name[int32(c)]
	if !ok {
		return fmt.Sprintf("error_%d", int32(c))
	}
	const prefix = "ERROR_CODE_"
	b := []byte(name[len(prefix):])
	for i, ch := range b {
		if ch >= 'A' && ch <= 'Z' {
			b[i] = ch + 'a' - 'A'
		}
	}
	return string(b)
}

// recoverContext is the domain separator of recover_payload (see Recover in petrel.proto).
const recoverContext = "petrel-recover-v1"

// RecoverPayload is what a Recover frame's recovery_signature signs: "petrel-recover-v1" || 0x00
// || nonce || name || 0x00 || authKey (the new device's Ed25519 auth public key).
func RecoverPayload(nonce []byte, name string, authKey []byte) []byte {
	b := make([]byte, 0, len(recoverContext)+2+len(nonce)+len(name)+len(authKey))
	b = append(b, recoverContext...)
	b = append(b, 0)
	b = append(b, nonce...)
	b = append(b, name...)
	b = append(b, 0)
	b = append(b, authKey...)
	return b
}
