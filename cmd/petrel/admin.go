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

	"github.com/petrelchat/petrel/internal/admin"
	"github.com/petrelchat/petrel/internal/server"
)

const adminUsage = "admin invite [--data DIR] [--token-file FILE] [--admin URL] | admin incident open|update|resolve|list ... | admin reports [--json]"

func runAdmin(ctx context.Context, e *env, args []string) int {
	if len(args) == 0 || args[0] == "-h" || args[0] == "--help" || args[0] == "help" {
		fmt.Fprintln(e.stderr, "usage: petrel "+adminUsage+"\n\n  invite   print a one-time invite code (for registration = \"invite\")\n  incident post or list incident notes for the status page\n  reports  list the notes of the latest problem reports")
		if len(args) == 0 {
			return 2
		}
		return 0
	}
	switch args[0] {
	case "invite":
		return runAdminInvite(ctx, e, args[1:])
	case "incident":
		return runAdminIncident(ctx, e, args[1:])
	case "reports":
		return runAdminReports(ctx, e, args[1:])
	default:
		fmt.Fprintf(e.stderr, "petrel admin: unknown subcommand %q (want: invite, incident, reports)\n", args[0])
		return 2
	}
}

func runAdminInvite(ctx context.Context, e *env, args []string) int {
	fs := newFlags(e, "admin invite", adminUsage)
	data := fs.String("data", "./petrel-data", "the server's data directory (holds admin.token and admin.addr)")
	adminURL := fs.String("admin", "", "the admin listener's URL (default: from DIR/admin.addr)")
	srvURL := fs.String("server", "", "deprecated and ignored: invites come from the admin listener (--admin)")
	tokenFile := fs.String("token-file", "", "the operator token (default: DIR/admin.token; the server's [admin] token_file when it sets one)")
	if code, ok := parseFlags(fs, args); !ok {
		return code
	}
	if fs.NArg() > 0 {
		fmt.Fprintf(e.stderr, "petrel admin invite: unexpected argument %q\n", fs.Arg(0))
		return 2
	}
	if *srvURL != "" {
		fmt.Fprintf(e.stderr, "petrel admin invite: --server is deprecated and ignored: invites come from the admin listener (its address is in %s, or pass --admin URL)\n", filepath.Join(*data, admin.AddrFile))
	}
	tokPath := filepath.Join(*data, server.AdminTokenFile)
	if *tokenFile != "" {
		tokPath = *tokenFile
	}
	base, from, err := resolveAdminURL(*adminURL, *data)
	if err != nil {
		fmt.Fprintf(e.stderr, "petrel admin invite: %v\n", err)
		return 2
	}
	tok, err := os.ReadFile(tokPath)
	if err != nil {
		hint := "is --data the server's data directory?"
		if *tokenFile != "" {
			hint = "is --token-file the server's [admin] token_file?"
		}
		fmt.Fprintf(e.stderr, "petrel admin invite: read operator token: %v (%s)\n", err, hint)
		return 1
	}
	ctx, cancel := context.WithTimeout(ctx, 15*time.Second)
	defer cancel()
	req, err := http.NewRequestWithContext(ctx, http.MethodPost, base+admin.InvitesPath, nil)
	if err != nil {
		fmt.Fprintf(e.stderr, "petrel admin invite: %v\n", err)
		return 2
	}
	req.Header.Set("Authorization", "Bearer "+strings.TrimSpace(string(tok)))
	resp, err := adminHTTPClient.Do(req)
	if err != nil {
		fmt.Fprintf(e.stderr, "petrel admin invite: cannot reach the admin listener at %s%s: %v; is the server running?\n", base, from, err)
		return 1
	}
	defer resp.Body.Close()
	body, _ := io.ReadAll(io.LimitReader(resp.Body, 4096))
	if resp.StatusCode != http.StatusOK {
		if resp.StatusCode == http.StatusNotFound && isPublicListener(ctx, base) { // errors_cli.go
			fmt.Fprintf(e.stderr, "petrel admin invite: %s%s is the server's public address, not its admin listener: "+
				"give --admin the admin address ('petrel serve' logs it as \"admin listener\", default http://127.0.0.1:7071, "+
				"and writes it to DATA/%s)\n", base, from, admin.AddrFile)
			return 1
		}
		fmt.Fprintf(e.stderr, "petrel admin invite: %s%s: %s: %s\n", base, from, resp.Status, strings.TrimSpace(string(body)))
		return 1
	}
	fmt.Fprintln(e.stdout, strings.TrimSpace(string(body)))
	return 0
}

// adminHTTPClient talks to admin listeners: no redirects (a redirect could carry the operator
// token elsewhere), no proxy from the environment.
var adminHTTPClient = &http.Client{
	Transport: &http.Transport{Proxy: nil, ForceAttemptHTTP2: false},
	CheckRedirect: func(*http.Request, []*http.Request) error {
		return http.ErrUseLastResponse
	},
}

// resolveAdminURL returns the admin listener's base URL: flagValue when given, else the content
// of dataDir/admin.addr. from says where it came from, for error messages (" (from FILE)"). It
// refuses a URL that would carry the operator token in clear to another machine.
func resolveAdminURL(flagValue, dataDir string) (base, from string, err error) {
	if flagValue != "" {
		base, err = admin.NormalizeURL(flagValue)
	} else {
		file := filepath.Join(dataDir, admin.AddrFile)
		from = " (from " + file + ")"
		base, err = admin.ReadAddrFile(file)
	}
	if err != nil {
		return "", "", err
	}
	if err := admin.CheckTokenTransport(base); err != nil {
		return "", "", err
	}
	return base, from, nil
}
