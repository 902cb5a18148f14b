// Copyright 2026 The Petrel Authors
// SPDX-License-Identifier: Apache-2.0

package main

import (
	"runtime/debug"
	"strings"
	"testing"
)

func TestVersionFromBuildInfo(t *testing.T) {
	rev := "0123456789abcdef0123456789abcdef01234567"
	cases := []struct {
		name     string
		main     string
		settings map[string]string
		want     string
	}{
		{"module version", "v1.4.0", nil, "v1.4.0"},
		{"module version, dirty tree", "v1.4.0", map[string]string{"vcs.modified": "true"}, "v1.4.0+dirty"},
		{"revision", "(devel)", map[string]string{"vcs.revision": rev, "vcs.modified": "false", "vcs.time": "2026-12-01T10:00:00Z"},
			"devel-0123456789ab (2026-12-01T10:00:00Z)"},
		{"revision, dirty tree", "(devel)", map[string]string{"vcs.revision": rev, "vcs.modified": "true"}, "devel-0123456789ab+dirty"},
		{"nothing known", "(devel)", nil, "devel"},
	}
	for _, tc := range cases {
		t.Run(tc.name, func(t *testing.T) {
			bi := &debug.BuildInfo{Main: debug.Module{Path: "github.com/petrelchat/petrel", Version: tc.main}}
			for k, v := range tc.settings {
				bi.Settings = append(bi.Settings, debug.BuildSetting{Key: k, Value: v})
			}
			if got := versionFromBuildInfo(bi); got != tc.want {
				t.Fatalf("version %q, want %q", got, tc.want)
			}
		})
	}
}

func TestCLIVersionAndHelp(t *testing.T) {
	home := t.TempDir()
	old := version
	version = "v9.9.9-test" // as -ldflags "-X main.version=v9.9.9-test" sets it
	t.Cleanup(func() { version = old })
	for _, args := range [][]string{{"--version"}, {"version"}} {
		r := petrel(t, home, "", args...).must(t, 0)
		if r.stdout != "petrel v9.9.9-test\n" {
			t.Fatalf("%v: stdout %q", args, r.stdout)
		}
	}
	version = ""
	if r := petrel(t, home, "", "--version").must(t, 0); !strings.HasPrefix(r.stdout, "petrel ") || strings.Contains(r.stdout, "petrel dev\n") {
		t.Fatalf("--version without ldflags: %q", r.stdout)
	}
	for _, args := range [][]string{{"send"}, {"group", "create"}, {"devices"}, {"serve"}} {
		h := petrel(t, home, "", append([]string{"help"}, args...)...).must(t, 0)
		f := petrel(t, home, "", append(args, "--help")...).must(t, 0)
		if h.stdout == "" || h.stdout != f.stderr {
			t.Fatalf("help %v differs from %v --help:\n%s\n---\n%s", args, args, h.stdout, f.stderr)
		}
	}
	r := petrel(t, home, "", "help", "no-such-command").must(t, 2)
	if !strings.Contains(r.stderr, `unknown command "no-such-command"`) {
		t.Fatalf("stderr %q", r.stderr)
	}
}
