// Copyright 2026 The Petrel Authors
// SPDX-License-Identifier: Apache-2.0

package main

import (
	"context"
	"fmt"
)

// Placeholders: the client commands are being written (see client/).

func runRegister(ctx context.Context, e *env, args []string) int     { return notYet(e, "register") }
func runSend(ctx context.Context, e *env, args []string) int         { return notYet(e, "send") }
func runRecv(ctx context.Context, e *env, args []string) int         { return notYet(e, "recv") }
func runChat(ctx context.Context, e *env, args []string) int         { return notYet(e, "chat") }
func runWhoami(ctx context.Context, e *env, args []string) int       { return notYet(e, "whoami") }
func runSafetyNumber(ctx context.Context, e *env, args []string) int { return notYet(e, "safety-number") }

func notYet(e *env, name string) int {
	fmt.Fprintf(e.stderr, "petrel %s: not implemented yet\n", name)
	return 1
}
