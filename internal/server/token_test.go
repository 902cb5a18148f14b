// Copyright 2026 The Petrel Authors
// SPDX-License-Identifier: Apache-2.0

package server_test

import (
	"errors"
	"net/http"
	"os"
	"path/filepath"
	"strings"
	"testing"

	"github.com/petrelchat/petrel/internal/admin"
	"github.com/petrelchat/petrel/internal/server"
	"github.com/petrelchat/petrel/internal/testserver"
)

// Two nodes given the same admin.token_file accept the same operator token, and neither writes a
// <data>/admin.token of its own.
func TestAdminTokenFileSharedByNodes(t *testing.T) {
	const token = "0123456789abcdef0123456789abcdef0123456789abcdef0123456789abcdef"
	file := filepath.Join(t.TempDir(), "cluster.token")
	if err := os.WriteFile(file, []byte("  "+token+"\n"), 0o600); err != nil {
		t.Fatal(err)
	}
	shared := testserver.WithConfig(func(c *server.Config) { c.AdminTokenFile = file })
	for i, s := range []*testserver.Server{testserver.Start(t, shared), testserver.Start(t, shared)} {
		for _, tc := range []struct {
			token string
			want  int
		}{{token, http.StatusOK}, {strings.Repeat("f", 64), http.StatusUnauthorized}} {
			req, err := http.NewRequest(http.MethodPost, s.AdminURL()+admin.InvitesPath, nil)
			if err != nil {
				t.Fatal(err)
			}
			req.Header.Set("Authorization", "Bearer "+tc.token)
			resp, err := http.DefaultClient.Do(req)
			if err != nil {
				t.Fatal(err)
			}
			resp.Body.Close()
			if resp.StatusCode != tc.want {
				t.Fatalf("node %d: invite with token %.8s…: %s, want %d", i, tc.token, resp.Status, tc.want)
			}
		}
		if _, err := os.Stat(filepath.Join(s.DataDir(), server.AdminTokenFile)); !errors.Is(err, os.ErrNotExist) {
			t.Fatalf("node %d wrote its own %s with admin.token_file set (%v)", i, server.AdminTokenFile, err)
		}
	}
}

// admin.token_file must name a readable file holding one token of at least 32 characters; each
// problem is reported by Validate, naming the key.
func TestAdminTokenFileValidation(t *testing.T) {
	dir := t.TempDir()
	write := func(name, content string) string {
		p := filepath.Join(dir, name)
		if err := os.WriteFile(p, []byte(content), 0o600); err != nil {
			t.Fatal(err)
		}
		return p
	}
	cases := []struct {
		name, file, wantErr string
	}{
		{"good", write("good", strings.Repeat("a", 64)+"\n"), ""},
		{"missing", filepath.Join(dir, "nope"), "does not exist"},
		{"empty", write("empty", ""), "is empty"},
		{"blank", write("blank", " \n\n"), "is empty"},
		{"short", write("short", "secret\n"), "at least 32 characters"},
		{"two words", write("two", strings.Repeat("a", 32)+" "+strings.Repeat("b", 32)), "at least 32 characters"},
		{"directory", dir, "not a regular file"},
	}
	for _, tc := range cases {
		t.Run(tc.name, func(t *testing.T) {
			c := server.Config{}
			c.AdminTokenFile = tc.file
			c.SetDefaults()
			err := c.Validate()
			switch {
			case tc.wantErr == "" && err != nil:
				t.Fatalf("unexpected error: %v", err)
			case tc.wantErr != "" && (err == nil || !strings.Contains(err.Error(), "admin.token_file") || !strings.Contains(err.Error(), tc.wantErr)):
				t.Fatalf("error %v, want one naming admin.token_file and containing %q", err, tc.wantErr)
			}
		})
	}
	p := filepath.Join(dir, "petrel.toml")
	if err := os.WriteFile(p, []byte("[admin]\ntoken_file = \"/etc/petrel/admin.token\"\n"), 0o600); err != nil {
		t.Fatal(err)
	}
	if c, err := server.LoadConfig(p); err != nil || c.AdminTokenFile != "/etc/petrel/admin.token" {
		t.Fatalf("[admin] token_file from a file: %q %v", c.AdminTokenFile, err)
	}
}
