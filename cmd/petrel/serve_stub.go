// Copyright 2026 The Petrel Authors
// SPDX-License-Identifier: Apache-2.0

package main

import (
	"context"
	"fmt"
)

func notYet(e *env, name string) int {
	fmt.Fprintf(e.stderr, "petrel %s: not implemented yet\n", name)
	return 1
}

func runServe(ctx context.Context, e *env, args []string) int { return notYet(e, "serve") }
func runAdmin(ctx context.Context, e *env, args []string) int { return notYet(e, "admin") }
