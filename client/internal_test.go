// Copyright 2026 The Petrel Authors
// SPDX-License-Identifier: Apache-2.0

package client

import (
	"context"
	"errors"
	"os/exec"
	"strings"
	"testing"
	"time"

	petrelv1 "github.com/petrelchat/petrel/proto/petrel/v1"
)

func TestBackoffBounds(t *testing.T) {
	b := backoff{base: 250 * time.Millisecond, max: 30 * time.Second}
	for attempt := 0; attempt < 200; attempt++ {
		ceil := b.ceiling(attempt)
		if ceil < b.base || ceil > b.max {
			t.Fatalf("attempt %d: ceiling %v outside [%v, %v]", attempt, ceil, b.base, b.max)
		}
		for range 20 {
			if d := b.delay(attempt); d < 0 || d > ceil {
				t.Fatalf("attempt %d: delay %v outside [0, %v]", attempt, d, ceil)
			}
		}
	}
	if got := b.ceiling(3); got != 2*time.Second {
		t.Fatalf("ceiling(3) = %v, want 2s", got)
	}
	// Full jitter: the extremes of the random source map to 0 and the ceiling.
	lo := backoff{base: time.Second, max: time.Minute, rnd: func(int64) int64 { return 0 }}
	hi := backoff{base: time.Second, max: time.Minute, rnd: func(n int64) int64 { return n - 1 }}
	if lo.delay(2) != 0 || hi.delay(2) != 4*time.Second {
		t.Fatalf("jitter range: %v..%v", lo.delay(2), hi.delay(2))
	}
	// A server hint is a floor, plus at most 10% (capped at 1s) of jitter.
	if d := hi.withRetryAfter(0, 5*time.Second); d != 5500*time.Millisecond {
		t.Fatalf("retry-after 5s: %v", d)
	}
	if d := hi.withRetryAfter(0, time.Minute); d != time.Minute+time.Second {
		t.Fatalf("retry-after 1m: %v", d)
	}
	if d := lo.withRetryAfter(3*time.Second, 0); d != 3*time.Second {
		t.Fatalf("no hint: %v", d)
	}
}

func TestConnectURL(t *testing.T) {
	cases := []struct{ in, want string }{
		{"http://127.0.0.1:7070", "ws://127.0.0.1:7070/v1/connect"},
		{"https://chat.example.org", "wss://chat.example.org/v1/connect"},
		{"https://chat.example.org/petrel/", "wss://chat.example.org/petrel/v1/connect"},
		{"ws://h:1", "ws://h:1/v1/connect"},
	}
	for _, tc := range cases {
		got, err := connectURL(tc.in)
		if err != nil || got != tc.want {
			t.Errorf("connectURL(%q) = %q, %v; want %q", tc.in, got, err, tc.want)
		}
	}
	for _, bad := range []string{"", "127.0.0.1:7070", "ftp://h", "http://"} {
		if _, err := connectURL(bad); err == nil {
			t.Errorf("connectURL(%q) accepted", bad)
		}
	}
}

// Every wire code has a sentinel, and *Error matches exactly its own.
func TestErrorCodeTable(t *testing.T) {
	seen := map[error]petrelv1.ErrorCode{}
	for v := range petrelv1.ErrorCode_name {
		code := petrelv1.ErrorCode(v)
		if code == petrelv1.ErrorCode_ERROR_CODE_UNSPECIFIED {
			continue
		}
		s := Sentinel(code)
		if s == nil {
			t.Errorf("no sentinel for %v", code)
			continue
		}
		if other, dup := seen[s]; dup {
			t.Errorf("%v and %v share a sentinel", code, other)
		}
		seen[s] = code
		e := error(errorFromProto(&petrelv1.Error{Code: code, Message: "m", RetryAfterMs: 1500, ErrorId: "E1"}))
		if !errors.Is(e, s) {
			t.Errorf("%v does not match its sentinel", code)
		}
		if code != petrelv1.ErrorCode_ERROR_CODE_UNKNOWN_USER && errors.Is(e, ErrUnknownUser) {
			t.Errorf("%v matches ErrUnknownUser", code)
		}
		if retryAfter(e) != 1500*time.Millisecond {
			t.Errorf("%v: retry after %v", code, retryAfter(e))
		}
		if !strings.Contains(e.Error(), petrelv1.ErrorCodeName(code)) || !strings.Contains(e.Error(), "E1") {
			t.Errorf("%v: message %q", code, e.Error())
		}
	}
	if !isFatal(errorFromProto(&petrelv1.Error{Code: petrelv1.ErrorCode_ERROR_CODE_CONNECTED_ELSEWHERE})) {
		t.Error("CONNECTED_ELSEWHERE must stop reconnecting")
	}
	if isFatal(&goAwayError{reason: petrelv1.ErrorCode_ERROR_CODE_SHUTTING_DOWN}) {
		t.Error("GoAway(SHUTTING_DOWN) must reconnect")
	}
}

// TestDeps: the SDK never depends on the server's internal packages or on testing.
func TestDeps(t *testing.T) {
	if testing.Short() {
		t.Skip("runs go list")
	}
	out, err := exec.Command("go", "list", "-deps", "github.com/petrelchat/petrel/client", "github.com/petrelchat/petrel/client/store").CombinedOutput()
	if err != nil {
		t.Fatalf("go list: %v\n%s", err, out)
	}
	for _, p := range strings.Fields(string(out)) {
		if strings.HasPrefix(p, "github.com/petrelchat/petrel/internal") || p == "testing" ||
			strings.HasPrefix(p, "github.com/nats-io/") || strings.HasPrefix(p, "github.com/lesismal/") {
			t.Errorf("the SDK depends on %s", p)
		}
	}
}

func TestSplitUpload(t *testing.T) {
	up := &petrelv1.KeyBundleUpload{
		IdentityKey:         make([]byte, 129),
		SignedPrekey:        &petrelv1.SignedPreKey{Id: 1, PublicKey: make([]byte, 32), Signature: make([]byte, 64)},
		LastResortKemPrekey: &petrelv1.KEMPreKey{Id: 1, PublicKey: make([]byte, 1184), Signature: make([]byte, 64), LastResort: true},
	}
	for i := range 100 {
		up.KemPrekeys = append(up.KemPrekeys, &petrelv1.KEMPreKey{Id: uint32(i + 2), PublicKey: make([]byte, 1184), Signature: make([]byte, 64)})
		up.OneTimePrekeys = append(up.OneTimePrekeys, &petrelv1.OneTimePreKey{Id: uint32(i + 1), PublicKey: make([]byte, 32)})
	}
	if parts := splitUpload(up, petrelv1.DefaultMaxFrameBytes); len(parts) != 1 {
		t.Fatalf("fits in one frame, split into %d", len(parts))
	}
	const limit = 8192
	parts := splitUpload(up, limit)
	var kem, otk int
	for i, p := range parts {
		f := &petrelv1.Frame{Id: 1 << 40, Body: &petrelv1.Frame_UploadPrekeys{UploadPrekeys: &petrelv1.UploadPreKeys{Keys: p}}}
		b, _ := petrelv1.EncodeFrame(f)
		if len(b) > limit {
			t.Fatalf("part %d: %d bytes > %d", i, len(b), limit)
		}
		if (i == 0) != (p.SignedPrekey != nil) {
			t.Fatalf("part %d: signed prekey placement", i)
		}
		kem += len(p.KemPrekeys)
		otk += len(p.OneTimePrekeys)
	}
	if kem != 100 || otk != 100 {
		t.Fatalf("lost keys: %d kem, %d one-time", kem, otk)
	}
}

// TestSetReadyAfterLinkEnded: a link's sender loop can reach setReady after the link ended and
// runLink already said there is no connection (QueueEmpty and the end of the link at once). That
// late call must not make the dead link current, and the next link must become ready without
// closing readyCh twice (it panicked: "close of closed channel").
func TestSetReadyAfterLinkEnded(t *testing.T) {
	c := &Client{readyCh: make(chan struct{})}
	dead, cancel := context.WithCancel(context.Background())
	cancel()
	a, b := &link{}, &link{}
	c.setReady(dead, nil) // runLink: link a ended (it was never current)
	c.setReady(dead, a)   // a's sender loop, late
	if c.cur != nil {
		t.Fatal("a link that had ended became current")
	}
	c.setReady(context.Background(), b) // the next link
	if c.cur != b {
		t.Fatal("the next link did not become current")
	}
	select {
	case <-c.readyCh:
	default:
		t.Fatal("readyCh not closed for the next link")
	}
	c.setReady(context.Background(), b) // idempotent
}
