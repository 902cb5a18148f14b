// Copyright 2026 The Petrel Authors
// SPDX-License-Identifier: Apache-2.0

package main

import (
	"context"
	"encoding/json"
	"fmt"
	"net/http"
	"time"

	"github.com/petrelchat/petrel/internal/status"
)

const reportsUsage = `admin reports [--json] [--data DIR] [--token-file FILE] [--admin URL]`

// runAdminReports lists the notes of the latest problem reports a node received (admin
// listener). The notes are users' text: printed with control characters escaped.
func runAdminReports(ctx context.Context, e *env, args []string) int {
	const name = "petrel admin reports"
	fs := newFlags(e, "admin reports", reportsUsage)
	data := fs.String("data", "./petrel-data", "the server's data directory (holds admin.token and admin.addr)")
	adminURL := fs.String("admin", "", "the admin listener's URL (default: from DIR/admin.addr)")
	tokenFile := fs.String("token-file", "", "the operator token (default: DIR/admin.token)")
	asJSON := fs.Bool("json", false, "print the answer as JSON")
	if code, ok := parseFlags(fs, args); !ok {
		return code
	}
	if fs.NArg() > 0 {
		fmt.Fprintf(e.stderr, "%s: unexpected argument %q\n", name, fs.Arg(0))
		return 2
	}
	raw, code := adminCall(ctx, e, name, *adminURL, *data, *tokenFile, http.MethodGet, status.AdminReportsPath, nil)
	if code != 0 {
		return code
	}
	if *asJSON {
		_, _ = e.stdout.Write(raw)
		return 0
	}
	var list status.ReportNoteList
	if err := json.Unmarshal(raw, &list); err != nil {
		fmt.Fprintf(e.stderr, "%s: unexpected answer: %v\n", name, err)
		return 1
	}
	if len(list.Notes) == 0 {
		fmt.Fprintf(e.stdout, "no report notes on %s (a node keeps the last %d, in memory)\n", sanitize(list.Node), list.Max)
		return 0
	}
	for _, n := range list.Notes {
		fmt.Fprintf(e.stdout, "%s  %-14s  %s\n", n.At.UTC().Format(time.RFC3339), sanitize(n.Category), sanitize(n.Note))
	}
	return 0
}
