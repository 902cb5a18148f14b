// Copyright 2026 The Petrel Authors
// SPDX-License-Identifier: Apache-2.0

package main

import (
	"context"
	"fmt"
	"runtime/debug"
	"strings"
)

// versionString is the version this binary reports: the one set with -ldflags "-X
// main.version=V" when there is one, else the module version from the build information (a
// `go install …@v1.2.3` build), else the VCS revision the binary was built from (first 12 hex
// digits, "+dirty" when the tree had changes), else "devel".
func versionString() string {
	if version != "" {
		return version
	}
	bi, ok := debug.ReadBuildInfo()
	if !ok {
		return "devel"
	}
	return versionFromBuildInfo(bi)
}

// versionFromBuildInfo picks the version of versionString from build information.
func versionFromBuildInfo(bi *debug.BuildInfo) string {
	var rev, when string
	modified := false
	for _, s := range bi.Settings {
		switch s.Key {
		case "vcs.revision":
			rev = s.Value
		case "vcs.time":
			when = s.Value
		case "vcs.modified":
			modified = s.Value == "true"
		}
	}
	if v := bi.Main.Version; v != "" && v != "(devel)" {
		if modified {
			return v + "+dirty"
		}
		return v
	}
	if rev == "" {
		return "devel"
	}
	if len(rev) > 12 {
		rev = rev[:12]
	}
	v := "devel-" + rev
	if modified {
		v += "+dirty"
	}
	if when != "" {
		v += " (" + when + ")"
	}
	return v
}

// helpCommand is 'petrel help CMD [SUB]': the same as 'petrel CMD [SUB] --help', exit 0.
func helpCommand(ctx context.Context, e *env, args []string) int {
	if args[0] == "help" || strings.HasPrefix(args[0], "-") {
		// petrel help --help, petrel help help: help's own usage, on standard output.
		he := *e
		he.stderr = e.stdout
		fs := newFlags(&he, "help", helpUsage)
		if code, ok := parseFlags(fs, args[1:]); !ok {
			return code
		}
		fs.Usage()
		return 0
	}
	for _, c := range commands() {
		if c.name == args[0] && c.summary != "" {
			sub := append(append([]string{}, args[1:]...), "--help")
			// Usage goes to stderr in the commands; help asked for is the answer: stdout.
			he := *e
			he.stderr = e.stdout
			if code := c.run(ctx, &he, sub); code != 2 {
				return 0
			}
			return 2
		}
	}
	fmt.Fprintf(e.stderr, "petrel help: unknown command %q\n\n", args[0])
	usage(e.stderr)
	return 2
}

const helpUsage = "help COMMAND [SUB]\n\nPrints the same text as 'petrel COMMAND [SUB] --help', on standard output."
