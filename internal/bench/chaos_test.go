// Copyright 2026 The Petrel Authors
// SPDX-License-Identifier: Apache-2.0

package bench

import (
	"context"
	"errors"
	"fmt"
	"io"
	"math/rand/v2"
	"syscall"
	"testing"
	"time"
)

func TestParseSpan(t *testing.T) {
	cases := []struct {
		in      string
		want    Span
		wantErr bool
	}{
		{"30s-90s", Span{30 * time.Second, 90 * time.Second}, false},
		{"5s", Span{5 * time.Second, 5 * time.Second}, false},
		{"300ms - 1s", Span{300 * time.Millisecond, time.Second}, false},
		{"9s-3s", Span{}, true},
		{"x", Span{}, true},
		{"-1s", Span{}, true},
	}
	for _, tc := range cases {
		t.Run(tc.in, func(t *testing.T) {
			got, err := ParseSpan(tc.in)
			if (err != nil) != tc.wantErr || got != tc.want {
				t.Fatalf("ParseSpan(%q) = %v, %v; want %v (error %v)", tc.in, got, err, tc.want, tc.wantErr)
			}
		})
	}
	rnd := rand.New(rand.NewPCG(1, 2))
	sp := Span{time.Second, 2 * time.Second}
	for range 1000 {
		if d := sp.pick(rnd); d < sp.Min || d > sp.Max {
			t.Fatalf("pick = %v, outside %v", d, sp)
		}
	}
}

func TestChaosErrKind(t *testing.T) {
	cases := []struct {
		err  error
		want string
	}{
		{fmt.Errorf("dial: %w", syscall.ECONNREFUSED), "connection_refused"},
		{errors.New("connect to http://127.0.0.1:1: failed to WebSocket dial: expected handshake response status code 101 but got 503"), "http_503"},
		{fmt.Errorf("read: %w", io.EOF), "connection_closed"},
		{fmt.Errorf("wait: %w", context.DeadlineExceeded), "timeout"},
		{errors.New("something else"), "other"},
	}
	for _, tc := range cases {
		if got := chaosErrKind(tc.err); got != tc.want {
			t.Errorf("chaosErrKind(%v) = %q, want %q", tc.err, got, tc.want)
		}
	}
}
