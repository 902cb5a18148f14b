// Copyright 2026 The Petrel Authors
// SPDX-License-Identifier: Apache-2.0

package gateway

import (
	"context"
	"log/slog"
	"sync/atomic"

	"golang.org/x/time/rate"

	pb "github.com/petrelchat/petrel/proto/petrel/v1"
)

// Error log rate: a storm of failing requests (storage down, a client looping on a bad request)
// must not turn into a storm of log lines. Each class (the server's own failures; refusals of bad
// requests) may write errorLogsPerSecond lines a second on average, in bursts of errorLogBurst,
// with its own budget, so a client flooding bad requests cannot hide a storage failure from the
// log. The next line after a suppressed run says how many lines of its class were suppressed.
const (
	errorLogsPerSecond = 20
	errorLogBurst      = 100
)

// errorLog writes the log lines of errors answered to clients, each under a fresh error id that
// the client gets too, rate-limited per class (index 0: refusals, 1: server faults).
type errorLog struct {
	lim        [2]*rate.Limiter
	suppressed [2]atomic.Int64 // lines dropped since the last one written
}

func newErrorLog() *errorLog {
	return &errorLog{lim: [2]*rate.Limiter{
		rate.NewLimiter(errorLogsPerSecond, errorLogBurst),
		rate.NewLimiter(errorLogsPerSecond, errorLogBurst),
	}}
}

// log writes msg with args and a fresh error id, at Warn for the server's own failures and at Info
// for refusals of bad requests, and returns the id; "" when the line is suppressed by the rate
// limit (the caller then sends no id: every id a client holds can be found in the log).
func (l *errorLog) log(log *slog.Logger, code pb.ErrorCode, msg string, args ...any) string {
	class, level := 0, slog.LevelInfo
	if serverFault(code) {
		class, level = 1, slog.LevelWarn
	}
	if !l.lim[class].Allow() {
		l.suppressed[class].Add(1)
		return ""
	}
	errID := newErrorID()
	args = append(args, "code", pb.ErrorCodeName(code), "error_id", errID)
	if n := l.suppressed[class].Swap(0); n > 0 {
		args = append(args, "suppressed_before", n)
	}
	log.Log(context.Background(), level, msg, args...)
	return errID
}

// serverFault reports whether code is the server's failure (storage, a bug, shutdown) rather than
// a refusal of the request.
func serverFault(code pb.ErrorCode) bool {
	switch code {
	case pb.ErrorCode_ERROR_CODE_UNAVAILABLE, pb.ErrorCode_ERROR_CODE_INTERNAL, pb.ErrorCode_ERROR_CODE_SHUTTING_DOWN:
		return true
	}
	return false
}
