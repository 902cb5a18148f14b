// Copyright 2026 The Petrel Authors
// SPDX-License-Identifier: Apache-2.0

package gateway

import (
	"fmt"
	"log/slog"
	"sync"

	"github.com/petrelchat/petrel/third_party/nbio/logging"
)

var nbioLogOnce sync.Once

// routeNBIOLogs sends nbio's own logging to slog at debug (warnings and errors at warn), once per
// process: nbio's logger is package-global.
func routeNBIOLogs(log *slog.Logger) {
	nbioLogOnce.Do(func() { logging.SetLogger(nbioLogger{log.With("component", "nbio")}) })
}

type nbioLogger struct{ log *slog.Logger }

func (l nbioLogger) SetLevel(int) {}
func (l nbioLogger) Debug(format string, v ...any) {
	l.log.Debug(fmt.Sprintf(format, v...))
}
func (l nbioLogger) Info(format string, v ...any) {
	l.log.Debug(fmt.Sprintf(format, v...))
}
func (l nbioLogger) Warn(format string, v ...any) {
	l.log.Warn(fmt.Sprintf(format, v...))
}
func (l nbioLogger) Error(format string, v ...any) {
	l.log.Warn(fmt.Sprintf(format, v...))
}
