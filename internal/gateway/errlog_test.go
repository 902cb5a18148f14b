// Copyright 2026 The Petrel Authors
// SPDX-License-Identifier: Apache-2.0

package gateway

import (
	"bytes"
	"errors"
	"fmt"
	"log/slog"
	"strings"
	"testing"

	"golang.org/x/time/rate"

	"github.com/petrelchat/petrel/internal/directory"
	"github.com/petrelchat/petrel/internal/mailbox"
	pb "github.com/petrelchat/petrel/proto/petrel/v1"
)

// errorFrame sends the code and its fixed message, never the error's text: wrapped storage
// errors, record keys and subjects stay in the server.
func TestErrorFrameCarriesNoInternals(t *testing.T) {
	const internals = "nats: API error: code=503 err_code=10077 subject inbox.3.0123456789abcdef0123456789abcdef record acct-secret"
	for _, sentinel := range []error{
		mailbox.ErrStorage, mailbox.ErrOverloaded, mailbox.ErrClosed,
		directory.ErrUnavailable, directory.ErrUnknownUser, directory.ErrUnknownDevice, directory.ErrAuthFailed,
		directory.ErrNameTaken, directory.ErrInvalidName, directory.ErrRegistrationClosed, directory.ErrInvalidInvite,
		directory.ErrInvalidKeys, directory.ErrInvalidRequest, directory.ErrTooManyPreKeys,
		errors.New("anything else"),
	} {
		err := fmt.Errorf("%w: %s", sentinel, internals)
		e := errorFrame(9, err, "abc123").GetError()
		code, _ := codeFor(err)
		if e.GetCode() != code || e.GetErrorId() != "abc123" || e.GetMessage() != publicMessage(code) || e.GetMessage() == "" {
			t.Errorf("%v: got %v", sentinel, e)
		}
		for _, leak := range []string{"nats", "inbox.", "0123456789abcdef", "acct-secret", "10077"} {
			if strings.Contains(e.GetMessage(), leak) {
				t.Errorf("%v: message %q carries %q", sentinel, e.GetMessage(), leak)
			}
		}
	}
	// Every code has its own text (none falls through to "internal error" by mistake).
	seen := map[string]pb.ErrorCode{}
	for v := range pb.ErrorCode_name {
		code := pb.ErrorCode(v)
		if code == pb.ErrorCode_ERROR_CODE_UNSPECIFIED || code == pb.ErrorCode_ERROR_CODE_INTERNAL {
			continue
		}
		switch code {
		case pb.ErrorCode_ERROR_CODE_MALFORMED_FRAME, pb.ErrorCode_ERROR_CODE_UNKNOWN_FRAME, pb.ErrorCode_ERROR_CODE_FRAME_TOO_LARGE,
			pb.ErrorCode_ERROR_CODE_NOT_AUTHENTICATED, pb.ErrorCode_ERROR_CODE_CONNECTED_ELSEWHERE, pb.ErrorCode_ERROR_CODE_ALREADY_AUTHENTICATED:
			continue // answered by fail() with a fixed text of their own, never through errorFrame
		}
		m := publicMessage(code)
		if prev, dup := seen[m]; dup || m == publicMessage(pb.ErrorCode_ERROR_CODE_INTERNAL) {
			t.Errorf("%v has the text of %v: %q", code, prev, m)
		}
		seen[m] = code
	}
}

// A storm of failing requests logs at most the burst, hands out an error id only for the lines it
// wrote, and the next line written says how many were suppressed. A storm of refusals does not
// use up the budget of the server's own failures.
func TestErrorLogIsRateLimited(t *testing.T) {
	var out bytes.Buffer
	log := slog.New(slog.NewTextHandler(&out, nil))
	l := newErrorLog()
	for i := range l.lim {
		l.lim[i] = rate.NewLimiter(0, errorLogBurst) // no refill: the burst, then nothing
	}
	var ids []string
	const storm = 10 * errorLogBurst
	for range storm {
		if id := l.log(log, pb.ErrorCode_ERROR_CODE_UNKNOWN_USER, "request failed", "err", "unknown user"); id != "" {
			ids = append(ids, id)
		}
	}
	if len(ids) != errorLogBurst {
		t.Fatalf("%d lines logged for %d errors, want %d", len(ids), storm, errorLogBurst)
	}
	for _, id := range ids {
		if !strings.Contains(out.String(), "error_id="+id) {
			t.Fatalf("error id %s handed out but not logged", id)
		}
	}
	if got := strings.Count(out.String(), "\n"); got != len(ids) {
		t.Fatalf("%d log lines for %d ids", got, len(ids))
	}
	// The refusals spent their budget, not the server faults'.
	out.Reset()
	if id := l.log(log, pb.ErrorCode_ERROR_CODE_UNAVAILABLE, "request failed", "err", "nats: boom"); id == "" || !strings.Contains(out.String(), "level=WARN") {
		t.Fatalf("a storage failure after a storm of refusals: id %q, log %s", id, out.String())
	}
	l.lim[0].SetLimit(rate.Inf)
	out.Reset()
	if id := l.log(log, pb.ErrorCode_ERROR_CODE_INVALID_KEYS, "request failed", "err", "bad key"); id == "" {
		t.Fatal("no id once the limit allows")
	}
	if line := out.String(); !strings.Contains(line, fmt.Sprintf("suppressed_before=%d", storm-errorLogBurst)) || !strings.Contains(line, "level=INFO") {
		t.Fatalf("want the suppressed count on an Info line (a refusal, not a server fault), got %s", line)
	}
}
