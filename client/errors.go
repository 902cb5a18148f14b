// Copyright 2026 The Petrel Authors
// SPDX-License-Identifier: Apache-2.0

package client

import (
	"errors"
	"fmt"
	"time"

	petrelv1 "github.com/petrelchat/petrel/proto/petrel/v1"
)

// Sentinels for the server's error codes (the one table is petrelv1.ErrorCode). An *Error from
// the server matches the sentinel of its code with errors.Is:
//
//	if errors.Is(err, client.ErrUnknownUser) { ... }
var (
	ErrMalformedFrame       = errors.New("malformed frame")
	ErrUnknownFrame         = errors.New("unknown frame")
	ErrFrameTooLarge        = errors.New("frame too large")
	ErrNotAuthenticated     = errors.New("not authenticated")
	ErrAuthFailed           = errors.New("authentication failed")
	ErrUnknownUser          = errors.New("unknown user")
	ErrUnknownDevice        = errors.New("unknown device")
	ErrStaleDevices         = errors.New("stale device list")
	ErrNameTaken            = errors.New("name taken")
	ErrInvalidName          = errors.New("invalid name")
	ErrRegistrationClosed   = errors.New("registration closed")
	ErrInvalidInvite        = errors.New("invite needed or invalid")
	ErrInvalidKeys          = errors.New("invalid keys")
	ErrInvalidRequest       = errors.New("invalid request")
	ErrUnavailable          = errors.New("server unavailable")
	ErrRateLimited          = errors.New("rate limited")
	ErrConnectedElsewhere   = errors.New("this device connected elsewhere")
	ErrShuttingDown         = errors.New("server shutting down")
	ErrInternal             = errors.New("server internal error")
	ErrAlreadyAuthenticated = errors.New("already authenticated")
	ErrPermissionDenied     = errors.New("permission denied")
	// ErrInboxFull: the recipient's inbox (or this sender's share of it) is full. Retrying does
	// not help until the recipient reads its messages.
	ErrInboxFull = errors.New("recipient's inbox is full")
	// ErrDeviceRemoved: this device was unlinked from its account; its keys are no longer valid
	// there. Link it again (petrel link) to use it.
	ErrDeviceRemoved = errors.New("this device was removed from its account")
	// ErrTooManyDevices: the account already has the server's maximum number of devices.
	ErrTooManyDevices = errors.New("the account has too many devices: remove one first")
	// ErrLinkExpired: the link code is unknown, already used or expired.
	ErrLinkExpired = errors.New("link code unknown, used or expired")
	// ErrUnknownGroup: no such group, or this account is not a member of it.
	ErrUnknownGroup = errors.New("unknown group, or not a member")
	// ErrGroupFull: the group already has the server's maximum number of members.
	ErrGroupFull = errors.New("the group is full")
	// ErrStaleGroup: the group changed meanwhile; fetch it again and retry the change.
	ErrStaleGroup = errors.New("the group changed meanwhile")
)

// Client-side errors.
var (
	// ErrNotRegistered reports a home without a registered device.
	ErrNotRegistered = errors.New("no registered device in this home (run petrel register)")
	// ErrAlreadyRegistered reports a home that already holds a registered device.
	ErrAlreadyRegistered = errors.New("this home already holds a registered device")
	// ErrClosed reports a client that has been closed or whose Run has returned.
	ErrClosed = errors.New("client closed")
	// ErrNotConnected reports a request made while no connection is up.
	ErrNotConnected = errors.New("not connected")
	// ErrUntrustedBundle reports a prekey bundle whose signatures do not verify.
	ErrUntrustedBundle = errors.New("prekey bundle does not verify")
	// ErrProtocol reports a server answer that breaks the protocol.
	ErrProtocol = errors.New("protocol violation by the server")
)

var codeSentinels = map[petrelv1.ErrorCode]error{
	petrelv1.ErrorCode_ERROR_CODE_MALFORMED_FRAME:       ErrMalformedFrame,
	petrelv1.ErrorCode_ERROR_CODE_UNKNOWN_FRAME:         ErrUnknownFrame,
	petrelv1.ErrorCode_ERROR_CODE_FRAME_TOO_LARGE:       ErrFrameTooLarge,
	petrelv1.ErrorCode_ERROR_CODE_NOT_AUTHENTICATED:     ErrNotAuthenticated,
	petrelv1.ErrorCode_ERROR_CODE_AUTH_FAILED:           ErrAuthFailed,
	petrelv1.ErrorCode_ERROR_CODE_UNKNOWN_USER:          ErrUnknownUser,
	petrelv1.ErrorCode_ERROR_CODE_UNKNOWN_DEVICE:        ErrUnknownDevice,
	petrelv1.ErrorCode_ERROR_CODE_STALE_DEVICES:         ErrStaleDevices,
	petrelv1.ErrorCode_ERROR_CODE_NAME_TAKEN:            ErrNameTaken,
	petrelv1.ErrorCode_ERROR_CODE_INVALID_NAME:          ErrInvalidName,
	petrelv1.ErrorCode_ERROR_CODE_REGISTRATION_CLOSED:   ErrRegistrationClosed,
	petrelv1.ErrorCode_ERROR_CODE_INVALID_INVITE:        ErrInvalidInvite,
	petrelv1.ErrorCode_ERROR_CODE_INVALID_KEYS:          ErrInvalidKeys,
	petrelv1.ErrorCode_ERROR_CODE_INVALID_REQUEST:       ErrInvalidRequest,
	petrelv1.ErrorCode_ERROR_CODE_UNAVAILABLE:           ErrUnavailable,
	petrelv1.ErrorCode_ERROR_CODE_RATE_LIMITED:          ErrRateLimited,
	petrelv1.ErrorCode_ERROR_CODE_CONNECTED_ELSEWHERE:   ErrConnectedElsewhere,
	petrelv1.ErrorCode_ERROR_CODE_SHUTTING_DOWN:         ErrShuttingDown,
	petrelv1.ErrorCode_ERROR_CODE_INTERNAL:              ErrInternal,
	petrelv1.ErrorCode_ERROR_CODE_ALREADY_AUTHENTICATED: ErrAlreadyAuthenticated,
	petrelv1.ErrorCode_ERROR_CODE_PERMISSION_DENIED:     ErrPermissionDenied,
	petrelv1.ErrorCode_ERROR_CODE_INBOX_FULL:            ErrInboxFull,
	petrelv1.ErrorCode_ERROR_CODE_DEVICE_REMOVED:        ErrDeviceRemoved,
	petrelv1.ErrorCode_ERROR_CODE_TOO_MANY_DEVICES:      ErrTooManyDevices,
	petrelv1.ErrorCode_ERROR_CODE_LINK_EXPIRED:          ErrLinkExpired,
	petrelv1.ErrorCode_ERROR_CODE_UNKNOWN_GROUP:         ErrUnknownGroup,
	petrelv1.ErrorCode_ERROR_CODE_GROUP_FULL:            ErrGroupFull,
	petrelv1.ErrorCode_ERROR_CODE_STALE_GROUP:           ErrStaleGroup,
}

// Sentinel returns the sentinel error for a wire code, or nil for an unknown code.
func Sentinel(code petrelv1.ErrorCode) error { return codeSentinels[code] }

// Error is an error reported by the server. It matches its code's sentinel with errors.Is.
type Error struct {
	// Code is the stable wire code.
	Code petrelv1.ErrorCode
	// Message is the server's human-readable text (never secrets).
	Message string
	// RetryAfter > 0 says retrying after this long may succeed.
	RetryAfter time.Duration
	// ErrorID identifies the error in the server's logs (for support).
	ErrorID string
}

// Error reads "MESSAGE (CODE, error id ID)", e.g. "unknown user (unknown_user, error id 1f3a)".
func (e *Error) Error() string {
	code := petrelv1.ErrorCodeName(e.Code)
	msg := e.Message
	if msg == "" {
		msg = "server error"
	}
	if e.ErrorID != "" {
		return msg + " (" + code + ", error id " + e.ErrorID + ")"
	}
	return msg + " (" + code + ")"
}

// Unwrap returns the code's sentinel, so errors.Is(err, ErrUnknownUser) works.
func (e *Error) Unwrap() error { return codeSentinels[e.Code] }

func errorFromProto(p *petrelv1.Error) *Error {
	if p == nil {
		return &Error{Code: petrelv1.ErrorCode_ERROR_CODE_UNSPECIFIED}
	}
	return &Error{
		Code:       p.GetCode(),
		Message:    p.GetMessage(),
		RetryAfter: time.Duration(p.GetRetryAfterMs()) * time.Millisecond,
		ErrorID:    p.GetErrorId(),
	}
}

// retryAfter returns the server's retry hint carried by err, if any.
func retryAfter(err error) time.Duration {
	var e *Error
	if errors.As(err, &e) {
		return e.RetryAfter
	}
	var g *goAwayError
	if errors.As(err, &g) {
		return g.retryAfter
	}
	return 0
}

// goAwayError is the server asking the client to reconnect later.
type goAwayError struct {
	reason     petrelv1.ErrorCode
	retryAfter time.Duration
	message    string
}

func (g *goAwayError) Error() string {
	s := "server asked to reconnect: " + petrelv1.ErrorCodeName(g.reason)
	if g.message != "" {
		s += ": " + g.message
	}
	return s
}

func (g *goAwayError) Unwrap() error { return codeSentinels[g.reason] }

// isTransient reports whether a per-request server error may succeed if retried later.
func isTransient(err error) bool {
	var e *Error
	if !errors.As(err, &e) {
		return false
	}
	switch e.Code {
	case petrelv1.ErrorCode_ERROR_CODE_UNAVAILABLE, petrelv1.ErrorCode_ERROR_CODE_RATE_LIMITED,
		petrelv1.ErrorCode_ERROR_CODE_SHUTTING_DOWN, petrelv1.ErrorCode_ERROR_CODE_INTERNAL:
		return true
	}
	return e.RetryAfter > 0
}

// isFatal reports whether a connection error must stop reconnecting: another instance of this
// device took over, the server no longer knows it, or it was removed from its account.
func isFatal(err error) bool {
	return errors.Is(err, ErrConnectedElsewhere) || errors.Is(err, ErrAuthFailed) || errors.Is(err, ErrDeviceRemoved)
}

func frameTooLarge(n, limit int) error {
	return &FrameTooLargeError{Size: n, Limit: limit}
}

// FrameTooLargeError reports a message whose frame would exceed the server's frame limit
// (Welcome.max_frame_bytes); it matches ErrFrameTooLarge. Nothing was sent.
type FrameTooLargeError struct {
	Size  int // the frame's size in bytes (the message, encrypted for every device)
	Limit int // the server's limit in bytes
}

func (e *FrameTooLargeError) Error() string {
	return fmt.Sprintf("%v: %d bytes, the server's limit is %d", ErrFrameTooLarge, e.Size, e.Limit)
}

// Is makes a FrameTooLargeError match ErrFrameTooLarge.
func (e *FrameTooLargeError) Is(target error) bool { return target == ErrFrameTooLarge }

// DialError reports that the connection to a server could not be opened (the server is down or
// unreachable, the URL names something else): Err is the cause (a *net.OpError, a
// *HandshakeStatusError, ...).
type DialError struct {
	URL string // the server's base URL
	Err error
}

func (e *DialError) Error() string { return fmt.Sprintf("connect to %s: %v", e.URL, e.Err) }

// Unwrap returns the cause.
func (e *DialError) Unwrap() error { return e.Err }

// HandshakeStatusError reports an HTTP answer other than the WebSocket upgrade: the URL is not a
// Petrel server's public listener (404 from its admin listener or another web server), or a
// proxy in between refused the upgrade.
type HandshakeStatusError struct {
	Code int // the HTTP status code
	Err  error
}

func (e *HandshakeStatusError) Error() string {
	return fmt.Sprintf("HTTP status %d: %v", e.Code, e.Err)
}

// Unwrap returns the WebSocket library's error.
func (e *HandshakeStatusError) Unwrap() error { return e.Err }
