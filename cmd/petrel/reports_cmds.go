// Copyright 2026 The Petrel Authors
// SPDX-License-Identifier: Apache-2.0

package main

import (
	"context"
	"encoding/json"
	"fmt"
	"io"
	"net/http"
	"os"
	"path/filepath"
	"strings"
	"time"

	"github.com/petrelchat/petrel/internal/server"
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
	base, from, err := resolveAdminURL(*adminURL, *data)
	if err != nil {
		fmt.Fprintf(e.stderr, "%s: %v\n", name, err)
		return 2
	}
	tokPath := filepath.Join(*data, server.AdminTokenFile)
	if *tokenFile != "" {
		tokPath = *tokenFile
	}
	tok, err := os.ReadFile(tokPath)
	if err != nil {
		fmt.Fprintf(e.stderr, "%s: read operator token: %v (is --data the server's data directory, or --token-file its [admin] token_file?)\n", name, err)
		return 1
	}
	ctx, cancel := context.WithTimeout(ctx, 15*time.Second)
	defer cancel()
	req, err := http.NewRequestWithContext(ctx, http.MethodGet, base+status.AdminReportsPath, nil)
	if err != nil {
		fmt.Fprintf(e.stderr, "%s: %v\n", name, err)
		return 2
	}
	req.Header.Set("Authorization", "Bearer "+strings.TrimSpace(string(tok)))
	resp, err := adminHTTPClient.Do(req)
	if err != nil {
		fmt.Fprintf(e.stderr, "%s: cannot reach the admin listener at %s%s: %v; is the server running?\n", name, base, from, err)
		return 1
	}
	defer resp.Body.Close()
	raw, _ := io.ReadAll(io.LimitReader(resp.Body, 1<<20))
	if resp.StatusCode != http.StatusOK {
		var je struct {
			Error string `json:"error"`
		}
		msg := strings.TrimSpace(string(raw))
		if json.Unmarshal(raw, &je) == nil && je.Error != "" {
			msg = je.Error
		}
		fmt.Fprintf(e.stderr, "%s: %s: %s\n", name, resp.Status, sanitize(msg))
		return 1
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
