// Copyright 2026 The Petrel Authors
// SPDX-License-Identifier: Apache-2.0

package archtest

import (
	"encoding/json"
	"io"
	"os/exec"
	"strings"
	"testing"
)

type pkg struct {
	ImportPath string
	Doc        string
	Imports    []string
	Deps       []string
	Name       string
}

func listPackages(t *testing.T) []pkg {
	t.Helper()
	out, err := exec.Command("go", "list", "-json", "github.com/petrelchat/petrel/...").Output()
	if err != nil {
		t.Fatalf("go list: %v", err)
	}
	dec := json.NewDecoder(strings.NewReader(string(out)))
	var pkgs []pkg
	for {
		var p pkg
		if err := dec.Decode(&p); err == io.EOF {
			break
		} else if err != nil {
			t.Fatal(err)
		}
		// third_party holds upstream code carried with a fix (third_party/nbio/PETREL.md): its
		// packages keep upstream's shape, and the rules here are about Petrel's own.
		if strings.HasPrefix(p.ImportPath, "github.com/petrelchat/petrel/third_party/") {
			continue
		}
		pkgs = append(pkgs, p)
	}
	return pkgs
}

// The public SDK and E2EE core must be embeddable anywhere: no internal/ imports, no server parts.
func TestPublicPackagesDoNotImportInternal(t *testing.T) {
	for _, p := range listPackages(t) {
		public := strings.HasPrefix(p.ImportPath, "github.com/petrelchat/petrel/client") ||
			strings.HasPrefix(p.ImportPath, "github.com/petrelchat/petrel/e2ee") ||
			strings.HasPrefix(p.ImportPath, "github.com/petrelchat/petrel/proto")
		if !public {
			continue
		}
		for _, d := range p.Deps {
			if strings.HasPrefix(d, "github.com/petrelchat/petrel/internal") ||
				strings.HasPrefix(d, "github.com/nats-io/nats-server") ||
				strings.HasPrefix(d, "github.com/petrelchat/petrel/third_party/nbio") {
				t.Errorf("%s depends on %s", p.ImportPath, d)
			}
			if d == "testing" {
				t.Errorf("%s depends on the testing package in production code", p.ImportPath)
			}
		}
	}
}

// Services never import the composition root or the gateway (dependencies point one way).
func TestServicesDoNotImportServerOrGateway(t *testing.T) {
	for _, p := range listPackages(t) {
		for _, svc := range []string{"directory", "mailbox", "messaging", "groups", "bus", "admin", "status"} {
			if p.ImportPath != "github.com/petrelchat/petrel/internal/"+svc {
				continue
			}
			for _, d := range p.Deps {
				if strings.HasSuffix(d, "/internal/server") || strings.HasSuffix(d, "/internal/gateway") {
					t.Errorf("%s imports %s", p.ImportPath, d)
				}
			}
		}
	}
}

// The admin listener reaches the services only through the narrow interfaces it declares: it
// imports no service, so the server decides what it may touch.
func TestAdminTakesNarrowInterfaces(t *testing.T) {
	found := false
	for _, p := range listPackages(t) {
		if p.ImportPath != "github.com/petrelchat/petrel/internal/admin" {
			continue
		}
		found = true
		for _, d := range p.Deps {
			if strings.HasPrefix(d, "github.com/petrelchat/petrel/internal/") {
				t.Errorf("%s imports %s", p.ImportPath, d)
			}
		}
	}
	if !found {
		t.Error("internal/admin is missing")
	}
}

func TestEveryPackageHasADocComment(t *testing.T) {
	for _, p := range listPackages(t) {
		if strings.TrimSpace(p.Doc) == "" {
			t.Errorf("package %s has no doc comment", p.ImportPath)
		}
	}
}

// TLS is Go's crypto/tls, never a fork of it (DESIGN.md): no package of ours imports a TLS
// implementation other than crypto/tls. (nbio's HTTP engine still links lesismal/llib's fork for
// its own TLS listener, which Petrel does not use: the gateway runs its own acceptor.)
func TestNoForkedTLS(t *testing.T) {
	for _, p := range listPackages(t) {
		for _, imp := range p.Imports {
			if strings.HasPrefix(imp, "github.com/lesismal/llib") || (strings.HasSuffix(imp, "/tls") && imp != "crypto/tls") {
				t.Errorf("%s imports %s: TLS is crypto/tls", p.ImportPath, imp)
			}
		}
	}
}
