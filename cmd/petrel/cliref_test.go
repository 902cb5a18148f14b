// Copyright 2026 The Petrel Authors
// SPDX-License-Identifier: Apache-2.0

package main

import (
	"bytes"
	"context"
	"flag"
	"os"
	"regexp"
	"slices"
	"sort"
	"strings"
	"testing"

	"github.com/petrelchat/petrel/internal/bench"
)

// cliInvocations is every command and subcommand that has its own --help. A README row names
// the longest of these its synopsis starts with ("petrel settings read-receipts on|off" is
// settings).
func cliInvocations() [][]string {
	inv := [][]string{
		{"serve"}, {"admin"}, {"admin", "invite"}, {"admin", "incident"},
		{"admin", "incident", "open"}, {"admin", "incident", "update"}, {"admin", "incident", "resolve"},
		{"admin", "incident", "list"}, {"admin", "reports"},
		{"report"}, {"register"}, {"send"}, {"recv"}, {"chat"},
		{"group"}, {"group", "create"}, {"group", "add"}, {"group", "remove"}, {"group", "admin"},
		{"group", "leave"}, {"group", "list"}, {"group", "info"},
		{"tui"}, {"history"}, {"outbox"}, {"whoami"}, {"safety-number"},
		{"link"}, {"devices"}, {"devices", "approve"}, {"devices", "remove"},
		{"settings"}, {"disappear"}, {"recover"}, {"recovery-key"},
		{"backup"}, {"backup", "export"}, {"backup", "import"},
		{"bench"}, {"probe"}, {"healthcheck"}, {"version"}, {"help"},
	}
	for _, s := range bench.Scenarios {
		inv = append(inv, []string{"bench", s})
	}
	return inv
}

// readmeFlag is one flag as a README synopsis writes it: "--wait D" has the value D, "--json"
// and "--bell=false" none.
type readmeFlag struct {
	name, value string
	boolForm    bool // written --name=false
}

var flagNameRE = regexp.MustCompile(`--([a-z0-9][a-z0-9-]*)(=\S+)?`)

// synopsisFlags lists the flags a synopsis writes, with their values.
func synopsisFlags(syn string) []readmeFlag {
	var out []readmeFlag
	for _, m := range flagNameRE.FindAllStringSubmatchIndex(syn, -1) {
		f := readmeFlag{name: syn[m[2]:m[3]], boolForm: m[4] >= 0}
		if !f.boolForm {
			f.value = synopsisValue(syn[m[0]:], f.name)
		}
		out = append(out, f)
	}
	return out
}

// matchPath reports whether the synopsis words start with path; a word "open|update|resolve"
// matches any of its alternatives.
func matchPath(words, path []string) bool {
	if len(words) < len(path) {
		return false
	}
	for i, p := range path {
		if words[i] != p && !slices.Contains(strings.Split(words[i], "|"), p) {
			return false
		}
	}
	return true
}

// readmeSection returns README.md's text from the heading to the next heading of the same level.
func readmeSection(t *testing.T, readme, heading string) string {
	t.Helper()
	i := strings.Index(readme, "\n"+heading+"\n")
	if i < 0 {
		t.Fatalf("README.md has no %q section", heading)
	}
	s := readme[i+len(heading)+2:]
	if j := strings.Index(s, "\n## "); j >= 0 {
		s = s[:j]
	}
	return s
}

// tableCells splits a Markdown table row into its cells (a \| stays inside its cell).
func tableCells(row string) []string {
	var cells []string
	var b strings.Builder
	row = strings.TrimSpace(row)
	row = strings.TrimPrefix(strings.TrimSuffix(row, "|"), "|")
	for i := 0; i < len(row); i++ {
		switch {
		case row[i] == '\\' && i+1 < len(row) && row[i+1] == '|':
			b.WriteByte('|')
			i++
		case row[i] == '|':
			cells = append(cells, strings.TrimSpace(b.String()))
			b.Reset()
		default:
			b.WriteByte(row[i])
		}
	}
	return append(cells, strings.TrimSpace(b.String()))
}

var backquotedRE = regexp.MustCompile("`([^`]*)`")

// readmeCLI maps each invocation (joined by spaces) to the flags README's CLI reference table
// writes in its synopses, to the synopses themselves and to the whole rows.
func readmeCLI(t *testing.T, readme string) (flags map[string][]readmeFlag, synopses, rows map[string][]string) {
	t.Helper()
	flags, synopses, rows = map[string][]readmeFlag{}, map[string][]string{}, map[string][]string{}
	inv := cliInvocations()
	n := 0
	for _, line := range strings.Split(readmeSection(t, readme, "## CLI reference"), "\n") {
		if !strings.HasPrefix(line, "| `petrel ") {
			continue
		}
		n++
		for _, m := range backquotedRE.FindAllStringSubmatch(tableCells(line)[0], -1) {
			syn := strings.TrimPrefix(m[1], "petrel ")
			words := strings.Fields(syn)
			if len(words) == 0 || strings.HasPrefix(words[0], "-") {
				continue // petrel --version: a global flag
			}
			best := 0
			var paths []string
			for _, p := range inv {
				if !matchPath(words, p) || len(p) < best {
					continue
				}
				if len(p) > best {
					best, paths = len(p), nil
				}
				paths = append(paths, strings.Join(p, " "))
			}
			if len(paths) == 0 {
				t.Errorf("README CLI table: %q names no command of petrel", m[1])
				continue
			}
			for _, p := range paths {
				flags[p] = append(flags[p], synopsisFlags(syn)...)
				synopses[p] = append(synopses[p], syn)
				rows[p] = append(rows[p], line)
			}
		}
	}
	if n < 30 {
		t.Fatalf("README CLI table: found %d command rows, want the whole table", n)
	}
	return flags, synopses, rows
}

// readmeBench returns the flags README's "petrel bench" section documents for each scenario: its
// row of the scenario table and the flags for every scenario.
func readmeBench(t *testing.T, readme string) map[string]map[string]bool {
	t.Helper()
	sec := readmeSection(t, readme, "## `petrel bench`")
	i := strings.Index(sec, "Flags for every scenario:")
	if i < 0 {
		t.Fatal(`README "petrel bench" has no "Flags for every scenario:" paragraph`)
	}
	common, _, _ := strings.Cut(sec[i:], "\n\n")
	out := map[string]map[string]bool{}
	for _, line := range strings.Split(sec, "\n") {
		cells := tableCells(line)
		if !strings.HasPrefix(line, "| `") || len(cells) < 3 {
			continue
		}
		sc := strings.Trim(cells[0], "`")
		set := map[string]bool{}
		for _, m := range flagNameRE.FindAllStringSubmatch(cells[1]+" "+common, -1) {
			set[m[1]] = true
		}
		out[sc] = set
	}
	return out
}

// helpFlagValues parses the flags section of a --help text: "  --name VALUE" lines.
var helpFlagLineRE = regexp.MustCompile(`(?m)^  --([a-z0-9][a-z0-9-]*)(?: (\S+))?$`)

func isBoolFlag(f *flag.Flag) bool {
	b, ok := f.Value.(interface{ IsBoolFlag() bool })
	return ok && b.IsBoolFlag()
}

// cliRun runs petrel in-process and records the FlagSets the command made.
func cliRun(t *testing.T, home string, args ...string) (code int, stdout, stderr string, sets []*flag.FlagSet) {
	t.Helper()
	var out, errb bytes.Buffer
	ctx, cancel := context.WithTimeout(context.Background(), cliWait)
	defer cancel()
	e := &env{stdin: strings.NewReader(""), stdout: &out, stderr: &errb, getenv: func(string) string { return "" }, flagSets: &sets}
	code = run(ctx, append([]string{"--home", home}, args...), e)
	return code, out.String(), errb.String(), sets
}

// TestCLIHelpMatchesREADME keeps every command's flags, its --help and README.md's CLI reference
// from drifting apart: each flag a command defines is in its --help and in README (the bench's in
// the "petrel bench" section), each flag README writes is defined, a flag README writes with a
// value has the same value in --help (--wait DURATION in both), a boolean flag has none, and
// petrel help CMD prints what CMD --help prints, with exit 0. A deprecated flag (its usage
// starts with "deprecated") is named in its row's text instead of the synopsis.
func TestCLIHelpMatchesREADME(t *testing.T) {
	raw, err := os.ReadFile("../../README.md")
	if err != nil {
		t.Fatal(err)
	}
	readme := string(raw)
	readmeFlags, synopses, rows := readmeCLI(t, readme)
	benchFlags := readmeBench(t, readme)
	home := t.TempDir()

	covered := map[string]bool{}
	for _, p := range cliInvocations() {
		covered[p[0]] = true
	}
	for _, c := range commands() {
		if c.summary != "" && !covered[c.name] {
			t.Errorf("command %q is not in cliInvocations: add it (and its subcommands)", c.name)
		}
	}

	for _, path := range cliInvocations() {
		key := strings.Join(path, " ")
		t.Run(strings.ReplaceAll(key, " ", "_"), func(t *testing.T) {
			code, stdout, stderr, sets := cliRun(t, home, append(slices.Clone(path), "--help")...)
			if code != 0 {
				t.Fatalf("petrel %s --help: exit %d\nstderr:\n%s", key, code, stderr)
			}
			help := stdout + stderr
			if !strings.HasPrefix(help, "usage: petrel ") {
				t.Fatalf("petrel %s --help does not start with the usage line:\n%s", key, help)
			}
			hcode, hout, herr, _ := cliRun(t, home, append([]string{"help"}, path...)...)
			if hcode != 0 || hout != help || herr != "" {
				t.Errorf("petrel help %s: exit %d, stdout differs from petrel %s --help: %v\nstderr: %s", key, hcode, key, hout != help, herr)
			}

			defined := map[string]*flag.Flag{}
			if len(sets) > 0 {
				sets[len(sets)-1].VisitAll(func(f *flag.Flag) {
					if f.Name != "home" { // the global --home, documented once above the table
						defined[f.Name] = f
					}
				})
			}
			if key == "bench" {
				return // the scenarios' flags are checked per scenario
			}

			// The help names every flag, written --name VALUE.
			helpValues := map[string]string{}
			for _, m := range helpFlagLineRE.FindAllStringSubmatch(help, -1) {
				helpValues[m[1]] = m[2]
			}
			for name := range defined {
				if _, ok := helpValues[name]; !ok {
					t.Errorf("petrel %s --help does not list --%s in its flags", key, name)
				}
			}

			// README documents exactly the defined flags.
			documented := map[string]bool{}
			if path[0] == "bench" && len(path) == 2 {
				documented = benchFlags[path[1]]
				if documented == nil {
					t.Fatalf(`README "petrel bench" has no row for scenario %q`, path[1])
				}
				for _, f := range readmeFlags["bench"] {
					documented[f.name] = true
				}
			} else {
				for _, f := range readmeFlags[key] {
					documented[f.name] = true
				}
			}
			var missing, extra []string
			for name, f := range defined {
				if strings.HasPrefix(f.Usage, "deprecated") {
					// Kept for old scripts, out of the synopsis: the row says what became of it.
					if !strings.Contains(strings.Join(rows[key], "\n"), "`--"+name+"`") {
						missing = append(missing, "--"+name+" (deprecated: name it in the row's text)")
					}
					continue
				}
				if !documented[name] {
					missing = append(missing, "--"+name)
				}
			}
			for name := range documented {
				if defined[name] == nil {
					extra = append(extra, "--"+name)
				}
			}
			sort.Strings(missing)
			sort.Strings(extra)
			if len(missing) > 0 {
				t.Errorf("petrel %s defines %v, not in README.md (synopses: %q)", key, missing, synopses[key])
			}
			if len(extra) > 0 {
				t.Errorf("README.md documents %v for petrel %s, which does not define them (synopses: %q)", extra, key, synopses[key])
			}

			// Written the same way: README's value is --help's; booleans take none.
			for _, rf := range readmeFlags[key] {
				f := defined[rf.name]
				if f == nil {
					continue
				}
				switch {
				case isBoolFlag(f) && rf.value != "":
					t.Errorf("README.md writes the boolean --%s of petrel %s with a value %q", rf.name, key, rf.value)
				case !isBoolFlag(f) && rf.value == "":
					t.Errorf("README.md writes --%s of petrel %s without its value", rf.name, key)
				case !isBoolFlag(f) && rf.value != helpValues[rf.name]:
					t.Errorf("README.md writes --%s %s for petrel %s, its --help --%s %s", rf.name, rf.value, key, rf.name, helpValues[rf.name])
				}
			}
			// The usage line too.
			usageLine, _, _ := strings.Cut(help, "\n\n")
			for _, uf := range synopsisFlags(usageLine) {
				if f := defined[uf.name]; f != nil && !isBoolFlag(f) && uf.value != helpValues[uf.name] {
					t.Errorf("petrel %s --help: the usage line writes --%s %s, the flags --%s %s", key, uf.name, uf.value, uf.name, helpValues[uf.name])
				}
			}
		})
	}
}

// --help after a command's arguments is help too (petrel settings read-receipts --help), but not
// after "--", where it is text.
func TestCLIHelpAfterArguments(t *testing.T) {
	home := t.TempDir()
	want := petrel(t, home, "", "settings", "--help").must(t, 0).stderr
	for _, args := range [][]string{{"settings", "read-receipts", "--help"}, {"settings", "last-seen", "-h"}} {
		if r := petrel(t, home, "", args...).must(t, 0); r.stderr != want {
			t.Errorf("%v: printed\n%s\nwant settings --help:\n%s", args, r.stderr, want)
		}
	}
	if r := petrel(t, home, "", "help", "recovery-key", "show").must(t, 0); !strings.HasPrefix(r.stdout, "usage: petrel recovery-key show") {
		t.Errorf("help recovery-key show: %q", r.stdout)
	}
	// Not help: the home is not registered, so send fails (exit 1) instead of printing usage.
	if r := petrel(t, home, "", "send", "--to", "bob", "--", "--help").must(t, 1); strings.Contains(r.stderr, "usage:") {
		t.Errorf("send -- --help printed the usage: %q", r.stderr)
	}
}
