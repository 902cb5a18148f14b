// Copyright 2026 The Petrel Authors
// SPDX-License-Identifier: Apache-2.0

package main

import (
	"context"
	"fmt"
	"io"
	"net/http"
	"os"
	"path/filepath"
	"strings"
	"time"

	"github.com/petrelchat/petrel/internal/server"
)

func runAdmin(ctx context.Context, e *env, args []string) int {
	if len(args) == 0 || args[0] == "-h" || args[0] == "--help" || args[0] == "help" {
		fmt.Fprintln(e.stderr, "usage: petrel admin invite [--data DIR] [--server URL]\n\n  invite   print a one-time invite code (for registration = \"invite\")")
		if len(args) == 0 {
			return 2
		}
		return 0
	}
	switch args[0] {
	case "invite":
		return runAdminInvite(ctx, e, args[1:])
	default:
		fmt.Fprintf(e.stderr, "petrel admin: unknown subcommand %q (want: invite)\n", args[0])
		return 2
	}
}

func runAdminInvite(ctx context.Context, e *env, args []string) int {
	fs := newFlags(e, "admin invite", "admin invite [--data DIR] [--server URL]")
	data := fs.String("data", "./petrel-data", "the server's data directory (holds the operator token)")
	srvURL := fs.String("server", "http://127.0.0.1:7070", "the running server's URL")
	if code, ok := parseFlags(fs, args); !ok {
		return code
	}
	tokPath := filepath.Join(*data, server.AdminTokenFile)
	tok, err := os.ReadFile(tokPath)
	if err != nil {
		fmt.Fprintf(e.stderr, "petrel admin invite: read operator token: %v (is --data the server's data directory?)\n", err)
		return 1
	}
	ctx, cancel := context.WithTimeout(ctx, 15*time.Second)
	defer cancel()
	req, err := http.NewRequestWithContext(ctx, http.MethodPost, strings.TrimRight(*srvURL, "/")+"/v1/admin/invites", nil)
	if err != nil {
		fmt.Fprintf(e.stderr, "petrel admin invite: %v\n", err)
		return 2
	}
	req.Header.Set("Authorization", "Bearer "+strings.TrimSpace(string(tok)))
	resp, err := http.DefaultClient.Do(req)
	if err != nil {
		fmt.Fprintf(e.stderr, "petrel admin invite: server unreachable at %s: %v\n", *srvURL, err)
		return 1
	}
	defer resp.Body.Close()
	body, _ := io.ReadAll(io.LimitReader(resp.Body, 4096))
	if resp.StatusCode != http.StatusOK {
		fmt.Fprintf(e.stderr, "petrel admin invite: %s: %s\n", resp.Status, strings.TrimSpace(string(body)))
		return 1
	}
	fmt.Fprintln(e.stdout, strings.TrimSpace(string(body)))
	return 0
}
