// Copyright 2026 The Petrel Authors
// SPDX-License-Identifier: Apache-2.0

package status_test

import (
	"bytes"
	"context"
	"net/http"
	"os"
	"os/exec"
	"path/filepath"
	"strings"
	"testing"
	"time"

	"github.com/petrelchat/petrel/internal/status"
	"github.com/petrelchat/petrel/internal/testserver"
)

// chromium finds Debian's chromium (.ci/run installs it). Outside CI a machine without it skips
// the browser test; in CI its absence fails.
func chromium(t *testing.T) string {
	t.Helper()
	for _, name := range []string{"chromium", "chromium-browser"} {
		if p, err := exec.LookPath(name); err == nil {
			return p
		}
	}
	if os.Getenv("CI") != "" {
		t.Fatal("chromium is not installed, and CI must have it (.ci/run installs Debian's chromium)")
	}
	t.Skip("chromium is not installed: apt-get install chromium to run the real-browser test of the status page")
	return ""
}

// headless runs chromium headless with args and the URL; it returns stdout.
func headless(t *testing.T, bin, url string, args ...string) string {
	t.Helper()
	ctx, cancel := context.WithTimeout(context.Background(), 60*time.Second)
	defer cancel()
	profile := t.TempDir()
	all := append([]string{"--headless", "--no-sandbox", "--disable-gpu", "--disable-dev-shm-usage", "--no-first-run",
		"--disable-extensions", "--hide-scrollbars", "--user-data-dir=" + profile}, args...)
	cmd := exec.CommandContext(ctx, bin, append(all, url)...)
	var out, errb bytes.Buffer
	cmd.Stdout, cmd.Stderr = &out, &errb
	if err := cmd.Run(); err != nil {
		t.Fatalf("chromium %v: %v\n%s", args, err, errb.String())
	}
	return out.String()
}

// The status page in a real browser (JavaScript plays no part: the page has none): healthy,
// degraded and with an open incident, each as the DOM the browser built and as screenshots at a
// phone's and a desktop's width (logged; kept with go test -artifacts -outputdir DIR).
func TestStatusPageInChromium(t *testing.T) {
	bin := chromium(t)
	s := testserver.Start(t, testserver.WithConfig(fastStatus))
	dir := t.ArtifactDir() // a temporary directory; kept with go test -artifacts -outputdir DIR
	shoot := func(state string, want ...string) {
		t.Helper()
		dom := headless(t, bin, s.URL()+status.PagePath, "--dump-dom")
		for _, w := range want {
			if !strings.Contains(dom, w) {
				t.Fatalf("%s: the rendered page lacks %q:\n%s", state, w, dom)
			}
		}
		for _, size := range []struct{ name, wh string }{{"phone", "390,844"}, {"desktop", "1280,900"}} {
			path := filepath.Join(dir, state+"-"+size.name+".png")
			headless(t, bin, s.URL()+status.PagePath, "--screenshot="+path, "--window-size="+size.wh)
			fi, err := os.Stat(path)
			if err != nil || fi.Size() < 1000 {
				t.Fatalf("%s: no screenshot at %s (%v)", state, path, err)
			}
			t.Logf("screenshot %s (%d bytes)", path, fi.Size())
		}
	}

	shoot("healthy", "All systems operational", "State: operational", "(this node)", "No incidents")

	sink := s.Server().StatusSink()
	for i := range 6 {
		r := status.ProbeResult{Node: s.URL(), Source: "self", At: time.Now(), OK: i%2 == 0, LatencyMS: 30 + float64(i)*10}
		if !r.OK {
			r.Error = "no answer within 10s"
		}
		sink.RecordProbe(r)
	}
	waitView(t, s.URL(), 5*time.Second, "degraded", func(v status.View) bool { return v.State == status.Degraded })
	shoot("degraded", "Degraded service", "State: degraded", "3 of 6 probes failed", "no answer within 10s")

	tok := s.AdminToken(t)
	if code, _, body := post(t, s.AdminURL()+status.AdminIncidentsPath, tok, mustJSON(status.IncidentRequest{Action: "open", Text: "Some messages are delayed; we are on it"})); code != http.StatusOK {
		t.Fatalf("open incident: %d %s", code, body)
	}
	if code, _, body := post(t, s.AdminURL()+status.AdminIncidentsPath, tok, mustJSON(status.IncidentRequest{Action: "update", Text: "Cause found: one disk is slow"})); code != http.StatusOK {
		t.Fatalf("update incident: %d %s", code, body)
	}
	shoot("incident", "Some messages are delayed; we are on it", "Cause found: one disk is slow", ">open<")
}
