// Copyright 2026 The Petrel Authors
// SPDX-License-Identifier: Apache-2.0

package archtest

import (
	"io/fs"
	"os"
	"path/filepath"
	"regexp"
	"strings"
	"testing"
)

// docs/architecture.md says which tests guard each invariant; every test it names must exist, in
// the file it names when it names one, so the table cannot point at a renamed or deleted test.
func TestInvariantTableNamesRealTests(t *testing.T) {
	const root = "../.."
	doc, err := os.ReadFile(filepath.Join(root, "docs", "architecture.md"))
	if err != nil {
		t.Fatal(err)
	}
	_, section, ok := strings.Cut(string(doc), "## Invariants and where each is tested")
	if !ok {
		t.Fatal("docs/architecture.md has no section \"Invariants and where each is tested\"")
	}
	section, _, _ = strings.Cut(section, "\n## ")

	where := map[string][]string{} // test name → files defining it
	funcRE := regexp.MustCompile(`(?m)^func (Test[A-Za-z0-9_]+)\(`)
	err = filepath.WalkDir(root, func(path string, d fs.DirEntry, err error) error {
		if err != nil {
			return err
		}
		if d.IsDir() && (d.Name() == "third_party" || strings.HasPrefix(d.Name(), ".")) && path != root {
			return filepath.SkipDir
		}
		if d.IsDir() || !strings.HasSuffix(path, "_test.go") {
			return nil
		}
		b, err := os.ReadFile(path)
		if err != nil {
			return err
		}
		rel, _ := filepath.Rel(root, path)
		for _, m := range funcRE.FindAllSubmatch(b, -1) {
			where[string(m[1])] = append(where[string(m[1])], filepath.ToSlash(rel))
		}
		return nil
	})
	if err != nil {
		t.Fatal(err)
	}

	rows := 0
	for _, line := range strings.Split(section, "\n") {
		if !strings.HasPrefix(line, "| ") || strings.HasPrefix(line, "| invariant") {
			continue
		}
		rows++
		// Each "`TestX`, `TestY` (`dir/file_test.go` ...)" group: the names before a file name.
		cellRE := regexp.MustCompile("`(Test[A-Za-z0-9_]+)`|`([a-z0-9_/]+_test\\.go)")
		var pending []string
		for _, m := range cellRE.FindAllStringSubmatch(line, -1) {
			if m[1] != "" {
				pending = append(pending, m[1])
				if len(where[m[1]]) == 0 {
					t.Errorf("docs/architecture.md names %s, which no test file defines", m[1])
				}
				continue
			}
			for _, name := range pending {
				found := false
				for _, f := range where[name] {
					if strings.HasSuffix(f, m[2]) {
						found = true
					}
				}
				if !found && len(where[name]) > 0 {
					t.Errorf("docs/architecture.md puts %s in %s; it is in %v", name, m[2], where[name])
				}
			}
			pending = nil
		}
	}
	if rows < 8 {
		t.Errorf("docs/architecture.md's invariant table has %d rows: want one per invariant (8)", rows)
	}
}
