// Copyright 2026 The Petrel Authors
// SPDX-License-Identifier: Apache-2.0

package nodes

import "testing"

func TestValidURL(t *testing.T) {
	for _, tc := range []struct {
		url  string
		want bool
	}{
		{"https://chat1.example:7443", true},
		{"http://127.0.0.1:7070", true},
		{"https://chat.example/", true},
		{"http://[::1]:7070", true},
		{"", false},
		{"chat.example:7443", false},
		{"ftp://chat.example", false},
		{"https://", false},
		{"https://chat.example/path", false},
		{"https://chat.example?x=1", false},
		{"https://u:p@chat.example", false},
		{"https://chat.example#frag", false},
		{"https://" + string(make([]byte, 300)), false},
	} {
		if got := ValidURL(tc.url); got != tc.want {
			t.Errorf("ValidURL(%q) = %v, want %v", tc.url, got, tc.want)
		}
	}
}
