// Copyright 2026 The Petrel Authors
// SPDX-License-Identifier: Apache-2.0

package main

import (
	"bytes"
	"context"
	"crypto/rand"
	"encoding/hex"
	"encoding/json"
	"fmt"
	"io"
	"net/http"
	"net/url"
	"os"
	"path/filepath"
	"strings"
	"time"

	"github.com/petrelchat/petrel/internal/server"
	"github.com/petrelchat/petrel/internal/status"
)

const reportUsage = "report --server URL --category cant-connect|not-sending|not-receiving|other [--note TEXT]"

// reportIDFile keeps the random id a home sends with its reports (so that the server counts only
// its first report in a window); it identifies nothing else.
const reportIDFile = "report.id"

// runReport sends an anonymous problem report: no account, no home needed.
func runReport(ctx context.Context, e *env, args []string) int {
	fs := newFlags(e, "report", reportUsage)
	srv := fs.String("server", "", "the server's URL (http(s)://HOST[:PORT])")
	cat := fs.String("category", "", "what is wrong: cant-connect, not-sending, not-receiving or other")
	note := fs.String("note", "", fmt.Sprintf("a few words on what you see (at most %d bytes; no message content, please)", status.MaxNoteBytes))
	if code, ok := parseFlags(fs, args); !ok {
		return code
	}
	if fs.NArg() > 0 {
		fmt.Fprintf(e.stderr, "petrel report: unexpected argument %q (put the note in --note \"TEXT\")\n", fs.Arg(0))
		return 2
	}
	base, err := normalizeServer(*srv)
	if err != nil {
		fmt.Fprintf(e.stderr, "petrel report: %v\n", err)
		return 2
	}
	switch *cat {
	case status.CategoryCantConnect, status.CategoryNotSending, status.CategoryNotReceiving, status.CategoryOther:
	case "":
		fmt.Fprintln(e.stderr, "petrel report: --category is required: cant-connect, not-sending, not-receiving or other")
		return 2
	default:
		fmt.Fprintf(e.stderr, "petrel report: unknown --category %q: want cant-connect, not-sending, not-receiving or other\n", *cat)
		return 2
	}
	if len(*note) > status.MaxNoteBytes {
		fmt.Fprintf(e.stderr, "petrel report: --note has %d bytes: at most %d\n", len(*note), status.MaxNoteBytes)
		return 2
	}
	body, _ := json.Marshal(status.ReportRequest{Category: *cat, Note: *note, Client: reportClientID(e.home)})
	ctx, cancel := context.WithTimeout(ctx, 15*time.Second)
	defer cancel()
	req, err := http.NewRequestWithContext(ctx, http.MethodPost, base+status.ReportsPath, bytes.NewReader(body))
	if err != nil {
		fmt.Fprintf(e.stderr, "petrel report: %v\n", err)
		return 2
	}
	req.Header.Set("Content-Type", "application/json")
	resp, err := http.DefaultClient.Do(req)
	if err != nil {
		fmt.Fprintf(e.stderr, "petrel report: cannot reach %s: %v (if this server is down, that is what you wanted to report: try another of its addresses later)\n", base, err)
		return 1
	}
	defer resp.Body.Close()
	raw, _ := io.ReadAll(io.LimitReader(resp.Body, 4096))
	if resp.StatusCode != http.StatusAccepted {
		fmt.Fprintf(e.stderr, "petrel report: %s: %s\n", resp.Status, errorText(raw))
		return 1
	}
	var ans status.ReportAnswer
	_ = json.Unmarshal(raw, &ans)
	if ans.Counted {
		fmt.Fprintln(e.stdout, "report sent: thank you")
	} else {
		fmt.Fprintln(e.stdout, "report sent (you already reported in the last 15 minutes: counted once)")
	}
	return 0
}

// normalizeServer checks a --server URL and returns it without a trailing slash.
func normalizeServer(s string) (string, error) {
	if s == "" {
		return "", fmt.Errorf("--server is required (the server's URL, e.g. https://chat.example.org)")
	}
	u, err := url.Parse(s)
	if err != nil || (u.Scheme != "http" && u.Scheme != "https") || u.Host == "" {
		return "", fmt.Errorf("--server %q: want http(s)://HOST[:PORT]", s)
	}
	return strings.TrimRight(s, "/"), nil
}

// reportClientID is the home's report id (made once, kept in the home when the home exists), or a
// fresh one for this report.
func reportClientID(home string) string {
	path := filepath.Join(home, reportIDFile)
	if b, err := os.ReadFile(path); err == nil {
		if id := strings.TrimSpace(string(b)); len(id) == 32 {
			return id
		}
	}
	var raw [16]byte
	_, _ = rand.Read(raw[:])
	id := hex.EncodeToString(raw[:])
	if fi, err := os.Stat(home); err == nil && fi.IsDir() {
		_ = os.WriteFile(path, []byte(id+"\n"), 0o600)
	}
	return id
}

const incidentUsage = `admin incident open|update|resolve [--id ID] [--data DIR] [--token-file FILE] [--admin URL] "TEXT" | admin incident list [--json]`

// runAdminIncident posts or lists incident notes on the admin listener.
func runAdminIncident(ctx context.Context, e *env, args []string) int {
	if len(args) == 0 || args[0] == "-h" || args[0] == "--help" {
		fmt.Fprintln(e.stderr, "usage: petrel "+incidentUsage+"\n\n  open     open an incident with a first note (prints its id)\n  update   add a note (--id, or the only open incident)\n  resolve  resolve it with a last note\n  list     list incidents")
		if len(args) == 0 {
			return 2
		}
		return 0
	}
	action := args[0]
	switch action {
	case "open", "update", "resolve", "list":
	default:
		fmt.Fprintf(e.stderr, "petrel admin incident: unknown subcommand %q (want: open, update, resolve, list)\n", action)
		return 2
	}
	fs := newFlags(e, "admin incident "+action, incidentUsage)
	data := fs.String("data", "./petrel-data", "the server's data directory (holds admin.token and admin.addr)")
	adminURL := fs.String("admin", "", "the admin listener's URL (default: from DIR/admin.addr)")
	tokenFile := fs.String("token-file", "", "the operator token (default: DIR/admin.token)")
	id, asJSON := new(string), new(bool)
	if action == "list" {
		fs.BoolVar(asJSON, "json", false, "list as JSON")
	} else {
		fs.StringVar(id, "id", "", "the incident (update, resolve; default: the only open one)")
	}
	if code, ok := parseFlags(fs, args[1:]); !ok {
		return code
	}
	name := "petrel admin incident " + action
	var text string
	if action == "list" {
		if fs.NArg() > 0 {
			fmt.Fprintf(e.stderr, "%s: unexpected argument %q\n", name, fs.Arg(0))
			return 2
		}
	} else {
		if fs.NArg() != 1 {
			fmt.Fprintf(e.stderr, "%s: want one TEXT argument, in quotes, after the flags\n", name)
			return 2
		}
		text = fs.Arg(0)
		if action == "open" && *id != "" {
			fmt.Fprintf(e.stderr, "%s: --id is for update and resolve (open makes a new id)\n", name)
			return 2
		}
	}
	method, body := http.MethodGet, []byte(nil)
	if action != "list" {
		method = http.MethodPost
		body, _ = json.Marshal(status.IncidentRequest{Action: action, ID: *id, Text: text})
	}
	raw, code := adminCall(ctx, e, name, *adminURL, *data, *tokenFile, method, status.AdminIncidentsPath, body)
	if code != 0 {
		return code
	}
	if action != "list" {
		var inc status.IncidentView
		if err := json.Unmarshal(raw, &inc); err != nil {
			fmt.Fprintf(e.stderr, "%s: unexpected answer: %v\n", name, err)
			return 1
		}
		fmt.Fprintf(e.stdout, "%s %s\n", inc.ID, inc.State)
		return 0
	}
	if *asJSON {
		_, _ = e.stdout.Write(raw)
		return 0
	}
	var list status.IncidentList
	if err := json.Unmarshal(raw, &list); err != nil {
		fmt.Fprintf(e.stderr, "%s: unexpected answer: %v\n", name, err)
		return 1
	}
	if len(list.Incidents) == 0 {
		fmt.Fprintln(e.stdout, "no incidents")
	}
	for _, inc := range list.Incidents {
		fmt.Fprintf(e.stdout, "%s  %-8s  opened %s", inc.ID, inc.State, inc.OpenedAt.UTC().Format(time.RFC3339))
		if inc.ResolvedAt != nil {
			fmt.Fprintf(e.stdout, "  resolved %s", inc.ResolvedAt.UTC().Format(time.RFC3339))
		}
		fmt.Fprintln(e.stdout)
		for _, u := range inc.Updates {
			fmt.Fprintf(e.stdout, "    %s  %-8s  %s\n", u.At.UTC().Format(time.RFC3339), u.Kind, sanitize(u.Text))
		}
	}
	return 0
}

// adminCall sends one operator request to the admin listener (--admin, or DIR/admin.addr) with
// the operator token (--token-file, or DIR/admin.token) and returns the answer's body when it is
// 200 OK. Otherwise it prints why, in words, to stderr and returns the exit code (2: usage, 1:
// the server or the token).
func adminCall(ctx context.Context, e *env, name, adminURL, data, tokenFile, method, path string, body []byte) ([]byte, int) {
	base, from, err := resolveAdminURL(adminURL, data)
	if err != nil {
		fmt.Fprintf(e.stderr, "%s: %v\n", name, err)
		return nil, 2
	}
	tokPath := filepath.Join(data, server.AdminTokenFile)
	if tokenFile != "" {
		tokPath = tokenFile
	}
	tok, err := os.ReadFile(tokPath)
	if err != nil {
		fmt.Fprintf(e.stderr, "%s: read operator token: %v (is --data the server's data directory, or --token-file its [admin] token_file?)\n", name, err)
		return nil, 1
	}
	ctx, cancel := context.WithTimeout(ctx, 15*time.Second)
	defer cancel()
	req, err := http.NewRequestWithContext(ctx, method, base+path, bytes.NewReader(body))
	if err != nil {
		fmt.Fprintf(e.stderr, "%s: %v\n", name, err)
		return nil, 2
	}
	req.Header.Set("Authorization", "Bearer "+strings.TrimSpace(string(tok)))
	if body != nil {
		req.Header.Set("Content-Type", "application/json")
	}
	resp, err := adminHTTPClient.Do(req)
	if err != nil {
		fmt.Fprintf(e.stderr, "%s: cannot reach the admin listener at %s%s: %v; is the server running?\n", name, base, from, err)
		return nil, 1
	}
	defer resp.Body.Close()
	raw, _ := io.ReadAll(io.LimitReader(resp.Body, 4<<20))
	if resp.StatusCode != http.StatusOK {
		fmt.Fprintf(e.stderr, "%s: %s: %s\n", name, resp.Status, errorText(raw))
		return nil, 1
	}
	return raw, 0
}

// errorText is what an HTTP error answer says: its JSON "error" if it has one, else its text,
// escaped for the terminal (the server's words are not trusted there).
func errorText(raw []byte) string {
	var je struct {
		Error string `json:"error"`
	}
	msg := strings.TrimSpace(string(raw))
	if json.Unmarshal(raw, &je) == nil && je.Error != "" {
		msg = je.Error
	}
	return sanitize(msg)
}
