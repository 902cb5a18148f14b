// Copyright 2026 The Petrel Authors
// SPDX-License-Identifier: Apache-2.0

package messaging

import (
	"errors"
	"testing"

	pb "github.com/petrelchat/petrel/proto/petrel/v1"
)

// The short-list and long-list device checks agree on every outcome, with and without a device
// left out (the sender's own list).
func TestCheckDevicesPaths(t *testing.T) {
	devs := func(ids ...string) []pb.CiphertextView {
		out := make([]pb.CiphertextView, len(ids))
		for i, id := range ids {
			out[i] = pb.CiphertextView{DeviceID: []byte(id)}
		}
		return out
	}
	cases := []struct {
		name    string
		current []string
		self    string
		envs    []pb.CiphertextView
		want    pb.ErrorCode // 0: accepted
	}{
		{"one", []string{"a"}, "", devs("a"), 0},
		{"two in any order", []string{"a", "b"}, "", devs("b", "a"), 0},
		{"one missing", []string{"a", "b"}, "", devs("a"), pb.ErrorCode_ERROR_CODE_STALE_DEVICES},
		{"twice", []string{"a"}, "", devs("a", "a"), pb.ErrorCode_ERROR_CODE_INVALID_REQUEST},
		{"unknown", []string{"a"}, "", devs("x"), pb.ErrorCode_ERROR_CODE_UNKNOWN_DEVICE},
		{"one too many", []string{"a", "b"}, "", devs("a", "b", "c"), pb.ErrorCode_ERROR_CODE_UNKNOWN_DEVICE},
		{"none", []string{"a"}, "", nil, pb.ErrorCode_ERROR_CODE_STALE_DEVICES},
		{"own: the others", []string{"a", "b", "c"}, "b", devs("c", "a"), 0},
		{"own: alone", []string{"a"}, "a", nil, 0},
		{"own: one other missing", []string{"a", "b", "c"}, "b", devs("c"), pb.ErrorCode_ERROR_CODE_STALE_DEVICES},
		{"own: none but others exist", []string{"a", "b"}, "a", nil, pb.ErrorCode_ERROR_CODE_STALE_DEVICES},
		{"own: the sender itself", []string{"a", "b"}, "a", devs("a", "b"), pb.ErrorCode_ERROR_CODE_INVALID_REQUEST},
		{"own: unknown", []string{"a", "b"}, "a", devs("z"), pb.ErrorCode_ERROR_CODE_UNKNOWN_DEVICE},
	}
	codeOf := func(err error) pb.ErrorCode {
		var e *Error
		if errors.As(err, &e) {
			return e.Code
		}
		if err != nil {
			t.Fatalf("not an *Error: %v", err)
		}
		return 0
	}
	for _, c := range cases {
		t.Run(c.name, func(t *testing.T) {
			errs := recipientList
			if c.self != "" {
				errs = ownList
			}
			got := codeOf(checkDevices(c.current, c.self, c.envs, errs))
			if got != c.want {
				t.Errorf("checkDevices(%v, %q, %d envelopes) = %v, want %v", c.current, c.self, len(c.envs), got, c.want)
			}
			if len(c.envs) > 0 {
				want := len(c.current)
				for _, d := range c.current {
					if d == c.self {
						want--
					}
				}
				if large := codeOf(checkDevicesLarge(c.current, c.self, want, c.envs, errs)); large != got {
					t.Errorf("long-list path disagrees: %v vs %v", large, got)
				}
			}
		})
	}
}
