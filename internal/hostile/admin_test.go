// Copyright 2026 The Petrel Authors
// SPDX-License-Identifier: Apache-2.0

package hostile

import (
	"bytes"
	"crypto/ed25519"
	"fmt"
	"io"
	"net/http"
	"os"
	"path/filepath"
	"strings"
	"testing"

	"google.golang.org/protobuf/proto"

	"github.com/petrelchat/petrel/internal/admin"
	"github.com/petrelchat/petrel/internal/testserver"
	pb "github.com/petrelchat/petrel/proto/petrel/v1"
)

// operatorRequest is one request to an operator surface.
type operatorRequest struct {
	method, path string
	body         []byte
}

func operatorRequests(t *testing.T, name string) []operatorRequest {
	return []operatorRequest{
		{"GET", "/metrics", nil},
		{"GET", "/debug/pprof/", nil},
		{"GET", "/debug/pprof/heap", nil},
		{"GET", "/debug/pprof/goroutine?debug=2", nil},
		{"GET", "/debug/pprof/cmdline", nil},
		{"GET", "/debug/pprof/profile?seconds=1", nil},
		{"GET", "/debug/pprof/trace?seconds=1", nil},
		{"POST", "/debug/pprof/symbol", []byte("0x1")},
		{"POST", "/v1/admin/invites", nil},
		{"POST", "/v1/admin/register-bulk", bulkBody(t, name)},
	}
}

// bulkBody is a valid bulk registration of one device called name.
func bulkBody(t *testing.T, name string) []byte {
	t.Helper()
	_, keys := testserver.NewKeys(t, 0)
	pub, _, err := ed25519.GenerateKey(nil)
	if err != nil {
		t.Fatal(err)
	}
	b, err := proto.Marshal(&pb.BulkRegisterRequest{Devices: []*pb.BulkDevice{{Name: name, AuthKey: pub, Keys: keys}}})
	if err != nil {
		t.Fatal(err)
	}
	return b
}

func do(t *testing.T, method, url, token string, body []byte) (int, []byte) {
	t.Helper()
	req, err := http.NewRequest(method, url, bytes.NewReader(body))
	if err != nil {
		t.Fatal(err)
	}
	if token != "" {
		req.Header.Set("Authorization", "Bearer "+token)
	}
	resp, err := http.DefaultClient.Do(req)
	if err != nil {
		t.Fatalf("%s %s: %v", method, url, err)
	}
	defer resp.Body.Close()
	b, _ := io.ReadAll(io.LimitReader(resp.Body, 1<<20))
	return resp.StatusCode, b
}

// The public listener serves clients, /healthz and /readyz only: metrics (traffic analysis),
// profiles and the operator API answer 404 there, with the operator token or without.
func TestPublicListenerRefusesOperatorSurfaces(t *testing.T) {
	s := testserver.Start(t)
	tok := s.AdminToken(t)
	for _, r := range operatorRequests(t, "mallory") {
		for _, token := range []string{"", tok} {
			if code, body := do(t, r.method, s.URL()+r.path, token, r.body); code != http.StatusNotFound {
				t.Errorf("public %s %s (token %v): %d, want 404\n%.200s", r.method, r.path, token != "", code, body)
			}
		}
	}
	for _, p := range []string{"/healthz", "/readyz"} {
		if code, _ := do(t, "GET", s.URL()+p, "", nil); code != http.StatusOK {
			t.Errorf("public %s: %d", p, code)
		}
	}
	// Nothing sent to the public listener registered anybody: the name is still free.
	if code, body := do(t, "POST", s.AdminURL()+"/v1/admin/register-bulk", tok, bulkBody(t, "mallory")); code != http.StatusOK || !registered(t, body) {
		t.Fatalf("bulk registration of mallory on the admin listener: %d %x", code, body)
	}
}

func registered(t *testing.T, body []byte) bool {
	t.Helper()
	res := &pb.BulkRegisterResponse{}
	if err := proto.Unmarshal(body, res); err != nil {
		t.Fatalf("answer is not a BulkRegisterResponse: %v", err)
	}
	return len(res.GetDeviceIds()) == 1 && res.GetDeviceIds()[0] != "" && res.GetErrors()[0] == ""
}

// The admin listener serves every operator surface with the token and refuses it without (401),
// except /metrics, open on a loopback admin listener for scrapers.
func TestAdminListenerNeedsTheToken(t *testing.T) {
	s := testserver.Start(t)
	tok := s.AdminToken(t)
	for _, r := range operatorRequests(t, "mallory") {
		for _, bad := range []string{"", "0000" + tok[4:], tok + "x", strings.ToUpper(tok)} {
			code, _ := do(t, r.method, s.AdminURL()+r.path, bad, r.body)
			want := http.StatusUnauthorized
			if r.path == "/metrics" {
				want = http.StatusOK
			}
			if code != want {
				t.Errorf("admin %s %s with token %q…: %d, want %d", r.method, r.path, bad[:min(len(bad), 4)], code, want)
			}
		}
	}
	// None of those registered mallory; with the token, each surface answers.
	for _, r := range operatorRequests(t, "mallory") {
		code, body := do(t, r.method, s.AdminURL()+r.path, tok, r.body)
		if code != http.StatusOK {
			t.Errorf("admin %s %s with the token: %d %.200s", r.method, r.path, code, body)
		}
		if strings.HasSuffix(r.path, "register-bulk") && !registered(t, body) {
			t.Errorf("mallory was taken before the operator registered her: %x", body)
		}
	}
	code, body := do(t, "GET", s.AdminURL()+"/metrics", "", nil)
	want := fmt.Sprintf(`petrel_admin_refused_total{reason="token"} %d`, 4*(len(operatorRequests(t, "x"))-1))
	if code != http.StatusOK || !strings.Contains(string(body), want) {
		t.Errorf("metrics: %d; want the refused tokens counted:\n%s", code, grep(string(body), "petrel_admin"))
	}
}

func grep(s, sub string) string {
	var out []string
	for _, l := range strings.Split(s, "\n") {
		if strings.Contains(l, sub) {
			out = append(out, l)
		}
	}
	return strings.Join(out, "\n")
}

// Only bulk registration takes a large body. A large body to any other operator endpoint is 413,
// an oversized bulk registration too, and neither reaches storage.
func TestAdminBodyLimits(t *testing.T) {
	s := testserver.Start(t)
	tok := s.AdminToken(t)
	big := bytes.Repeat([]byte{0xff}, 1<<20) // not a valid message: the size check comes first
	if code, _ := do(t, "POST", s.AdminURL()+"/v1/admin/invites", tok, big); code != http.StatusRequestEntityTooLarge {
		t.Errorf("invite with a 1 MiB body: %d, want 413", code)
	}
	// 1 MiB is read on bulk registration (and refused as malformed, not as too large).
	if code, body := do(t, "POST", s.AdminURL()+"/v1/admin/register-bulk", tok, big); code != http.StatusBadRequest || !strings.Contains(string(body), "not a BulkRegisterRequest") {
		t.Errorf("bulk registration with a 1 MiB body: %d %s, want 400 (read, then refused as malformed)", code, body)
	}
	huge := make([]byte, admin.DefaultBulkMaxBytes+1)
	if code, _ := do(t, "POST", s.AdminURL()+"/v1/admin/register-bulk", tok, huge); code != http.StatusRequestEntityTooLarge {
		t.Errorf("bulk registration of %d bytes: %d, want 413", len(huge), code)
	}
	// The server keeps serving.
	if code, _ := do(t, "POST", s.AdminURL()+"/v1/admin/invites", tok, nil); code != http.StatusOK {
		t.Errorf("invite after the large bodies: %d", code)
	}
}

// Two servers on one machine, each with admin_listen 127.0.0.1:0: each writes its own bound
// address to its data directory's admin.addr, and each accepts only its own token.
func TestTwoServersShareAMachine(t *testing.T) {
	a, b := testserver.Start(t), testserver.Start(t)
	if a.AdminURL() == b.AdminURL() || strings.HasSuffix(a.AdminURL(), ":0") {
		t.Fatalf("admin URLs %s and %s", a.AdminURL(), b.AdminURL())
	}
	for _, s := range []*testserver.Server{a, b} {
		got, err := admin.ReadAddrFile(filepath.Join(s.DataDir(), admin.AddrFile))
		if err != nil || got != s.AdminURL() {
			t.Fatalf("%s/admin.addr: %q %v, want %s", s.DataDir(), got, err, s.AdminURL())
		}
		st, err := os.Stat(filepath.Join(s.DataDir(), admin.AddrFile))
		if err != nil || st.Mode().Perm() != 0o600 {
			t.Fatalf("admin.addr mode: %v %v", st, err)
		}
		if code, body := do(t, "POST", s.AdminURL()+"/v1/admin/invites", s.AdminToken(t), nil); code != http.StatusOK || len(bytes.TrimSpace(body)) < 10 {
			t.Fatalf("invite at %s: %d %s", s.AdminURL(), code, body)
		}
	}
	if code, _ := do(t, "POST", b.AdminURL()+"/v1/admin/invites", a.AdminToken(t), nil); code != http.StatusUnauthorized {
		t.Fatalf("a's token at b: %d, want 401", code)
	}
}
