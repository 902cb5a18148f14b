// Copyright 2026 The Petrel Authors
// SPDX-License-Identifier: Apache-2.0

package server_test

import (
	"os"
	"path/filepath"
	"reflect"
	"regexp"
	"slices"
	"strings"
	"testing"

	"github.com/petrelchat/petrel/internal/server"
)

// exampleConfig is the example configuration shipped for operators.
const exampleConfig = "../../deploy/petrel.example.toml"

// exampleCommented are the keys the example shows commented out, with an example value: they
// have no fixed default (empty, or derived from another key). Every other key must be written at
// its default.
var exampleCommented = []string{
	"registration", "nats", "node", "public_url",
	"cluster_listen", "peers", "cluster_token_file", "cluster_tls_cert", "cluster_tls_key", "cluster_tls_ca",
	"tls.cert", "tls.key", "tls.acme_domain", "tls.acme_email", "tls.acme_http_listen",
	"admin.token_file",
	"inbox.shards", "inbox.max_per_sender", "inbox.max_bytes_per_sender",
	"limits.preauth_queued_bytes",
	"status.probe_token",
}

// configKeys lists every key of the config file ("section.key", or "key" at the top level), read
// from the Config struct's toml tags.
func configKeys(t reflect.Type, section string) []string {
	var keys []string
	for i := range t.NumField() {
		f := t.Field(i)
		tag := f.Tag.Get("toml")
		if tag == "-" || !f.IsExported() {
			continue
		}
		if f.Anonymous && f.Type.Kind() == reflect.Struct {
			sub := section
			if tag != "" {
				sub = tag
			}
			keys = append(keys, configKeys(f.Type, sub)...)
			continue
		}
		if tag == "" {
			continue
		}
		if section != "" {
			tag = section + "." + tag
		}
		keys = append(keys, tag)
	}
	return keys
}

// exampleLines maps each key written in the example to whether it is commented out.
func exampleLines(t *testing.T, text string) map[string]bool {
	t.Helper()
	section := ""
	sectionRE := regexp.MustCompile(`^\[([a-z_]+)\]$`)
	keyRE := regexp.MustCompile(`^(# )?([a-z_]+) = \S`)
	seen := map[string]bool{}
	for _, line := range strings.Split(text, "\n") {
		if m := sectionRE.FindStringSubmatch(line); m != nil {
			section = m[1]
			continue
		}
		m := keyRE.FindStringSubmatch(line)
		if m == nil {
			continue
		}
		key := m[2]
		if section != "" {
			key = section + "." + key
		}
		if _, dup := seen[key]; dup {
			t.Errorf("example: key %s written twice", key)
		}
		seen[key] = m[1] != ""
	}
	return seen
}

// The example configuration has every key of Config, each written at its default or (the keys
// without a fixed default) commented out with a valid example value, so it cannot drift from the
// code: a new key, a changed default or a renamed key fails here.
func TestExampleConfig(t *testing.T) {
	raw, err := os.ReadFile(exampleConfig)
	if err != nil {
		t.Fatal(err)
	}
	written := exampleLines(t, string(raw))
	for _, key := range configKeys(reflect.TypeFor[server.Config](), "") {
		commented, ok := written[key]
		switch {
		case !ok:
			t.Errorf("deploy/petrel.example.toml lacks the key %s: add it, commented, at its default", key)
		case commented && !slices.Contains(exampleCommented, key):
			t.Errorf("deploy/petrel.example.toml: %s is commented out: write it at its default (or list it in exampleCommented if it has none)", key)
		case !commented && slices.Contains(exampleCommented, key):
			t.Errorf("deploy/petrel.example.toml: %s has no fixed default: comment it out", key)
		}
	}

	// The written values are the defaults: loaded with the real loader and completed, the
	// example is exactly the default configuration.
	got, err := server.LoadConfig(exampleConfig)
	if err != nil {
		t.Fatal(err)
	}
	if len(got.Warnings) > 0 {
		t.Errorf("example uses deprecated keys: %v", got.Warnings)
	}
	got.SetDefaults()
	var want server.Config
	want.SetDefaults()
	if !reflect.DeepEqual(got, want) {
		gv, wv := reflect.ValueOf(got), reflect.ValueOf(want)
		for _, f := range reflect.VisibleFields(gv.Type()) {
			if f.Anonymous {
				continue
			}
			if g, w := gv.FieldByIndex(f.Index).Interface(), wv.FieldByIndex(f.Index).Interface(); !reflect.DeepEqual(g, w) {
				t.Errorf("deploy/petrel.example.toml: %s is %v, the default is %v", f.Name, g, w)
			}
		}
	}
	if err := got.Validate(); err != nil {
		t.Errorf("the example does not validate: %v", err)
	}

	// The commented-out lines are valid keys with values of the right type: uncommented, the
	// whole file still loads (unknown keys and wrong types are errors).
	uncommented := regexp.MustCompile(`(?m)^# ([a-z_]+ = \S)`).ReplaceAllString(string(raw), "$1")
	path := filepath.Join(t.TempDir(), "all.toml")
	if err := os.WriteFile(path, []byte(uncommented), 0o600); err != nil {
		t.Fatal(err)
	}
	if _, err := server.LoadConfig(path); err != nil {
		t.Errorf("the example's commented-out keys do not load: %v", err)
	}
}
