// Copyright 2026 The Petrel Authors
// SPDX-License-Identifier: Apache-2.0

package main

import (
	"bufio"
	"bytes"
	"context"
	"debug/elf"
	"encoding/json"
	"net"
	"net/url"
	"os"
	"os/exec"
	"path/filepath"
	"regexp"
	"slices"
	"strconv"
	"strings"
	"testing"
	"time"

	"go.yaml.in/yaml/v3"

	"github.com/petrelchat/petrel/internal/server"
)

// The self-hosting kit (Dockerfile, compose files, systemd unit) is checked against the real
// binary: every command line they give parses with serve's own flag set and validates, and the
// image's build line builds a static binary. Docker itself is not run (README.md, "Self-hosting").

const repoRoot = "../.."

// parseServeArgs runs serve's flag parsing and validation on args (as the image or unit passes
// them, without the leading "serve") and fails the test with serve's own message.
func parseServeArgs(t *testing.T, where string, args []string) server.Config {
	t.Helper()
	var errb bytes.Buffer
	e := &env{stdin: strings.NewReader(""), stdout: &bytes.Buffer{}, stderr: &errb, getenv: func(string) string { return "" }}
	cfg, code, ok := serveConfig(e, args)
	if !ok {
		t.Fatalf("%s: petrel serve %s: exit %d: %s", where, strings.Join(args, " "), code, errb.String())
	}
	return cfg
}

// composeFile is the part of a compose file the tests read.
type composeFile struct {
	Services map[string]struct {
		Build    any      `yaml:"build"`
		Hostname string   `yaml:"hostname"`
		Command  []string `yaml:"command"`
		Ports    []string `yaml:"ports"`
		Volumes  []string `yaml:"volumes"`
		Ulimits  struct {
			Nofile struct {
				Soft int `yaml:"soft"`
				Hard int `yaml:"hard"`
			} `yaml:"nofile"`
		} `yaml:"ulimits"`
		StopGracePeriod string `yaml:"stop_grace_period"`
	} `yaml:"services"`
	Volumes map[string]any `yaml:"volumes"`
}

func readCompose(t *testing.T, path string) composeFile {
	t.Helper()
	raw, err := os.ReadFile(filepath.Join(repoRoot, path))
	if err != nil {
		t.Fatal(err)
	}
	var c composeFile
	if err := yaml.Unmarshal(raw, &c); err != nil {
		t.Fatalf("%s: %v", path, err)
	}
	if len(c.Services) == 0 {
		t.Fatalf("%s: no services", path)
	}
	return c
}

// checkComposeService checks what every Petrel service needs and returns its parsed config.
func checkComposeService(t *testing.T, file, name string, c composeFile) server.Config {
	t.Helper()
	s := c.Services[name]
	where := file + ": " + name
	if len(s.Command) < 1 || s.Command[0] != "serve" {
		t.Fatalf("%s: command %q: want [\"serve\", ...] in exec form", where, s.Command)
	}
	cfg := parseServeArgs(t, where, s.Command[1:])
	if cfg.Data != "/data" {
		t.Errorf("%s: --data %q: want /data, the image's volume", where, cfg.Data)
	}
	if len(s.Volumes) != 1 || !strings.HasSuffix(s.Volumes[0], ":/data") {
		t.Errorf("%s: volumes %q: want one volume mounted at /data", where, s.Volumes)
	} else if vol := strings.TrimSuffix(s.Volumes[0], ":/data"); c.Volumes == nil || !hasKey(c.Volumes, vol) {
		t.Errorf("%s: volume %q is not a named volume of the file", where, vol)
	}
	if s.Ulimits.Nofile.Soft < 65536 || s.Ulimits.Nofile.Hard < s.Ulimits.Nofile.Soft {
		t.Errorf("%s: ulimits nofile %+v: want at least 65536 (one descriptor per connection)", where, s.Ulimits.Nofile)
	}
	grace, err := time.ParseDuration(s.StopGracePeriod)
	if err != nil || grace < cfg.DrainTimeout.Duration+5*time.Second {
		t.Errorf("%s: stop_grace_period %q: want at least drain_timeout (%s) + 5s, or docker kills the drain", where, s.StopGracePeriod, cfg.DrainTimeout.Duration)
	}
	_, port, _ := net.SplitHostPort(cfg.Listen)
	published := false
	for _, p := range s.Ports {
		if strings.HasSuffix(p, ":"+port) {
			published = true
			if !strings.HasPrefix(p, "127.0.0.1:") && !cfg.Insecure {
				continue
			}
			if cfg.Insecure && !strings.HasPrefix(p, "127.0.0.1:") {
				t.Errorf("%s: port %q publishes plain HTTP beyond the host's loopback", where, p)
			}
		}
	}
	if !published {
		t.Errorf("%s: ports %q do not publish the listen port %s", where, s.Ports, port)
	}
	if s.Build == nil {
		t.Errorf("%s: no build: the image is built from the repository", where)
	}
	return cfg
}

func hasKey(m map[string]any, k string) bool { _, ok := m[k]; return ok }

func TestComposeSingleNode(t *testing.T) {
	c := readCompose(t, "compose.yaml")
	if len(c.Services) != 1 {
		t.Fatalf("compose.yaml: %d services: want 1", len(c.Services))
	}
	for name := range c.Services {
		cfg := checkComposeService(t, "compose.yaml", name, c)
		if cfg.ClusterListen != "" {
			t.Errorf("compose.yaml: a single node with --cluster-listen")
		}
		if cfg.Registration != "invite" {
			t.Errorf("compose.yaml: registration %q: want invite off loopback", cfg.Registration)
		}
	}
}

func TestComposeCluster(t *testing.T) {
	const file = "deploy/compose.cluster.yaml"
	c := readCompose(t, file)
	if len(c.Services) != 3 {
		t.Fatalf("%s: %d services: want 3", file, len(c.Services))
	}
	var peers []string
	listens := map[string]bool{}
	volumes := map[string]bool{}
	urls := map[string]bool{}
	for _, name := range slices.Sorted(func(yield func(string) bool) {
		for k := range c.Services {
			if !yield(k) {
				return
			}
		}
	}) {
		cfg := checkComposeService(t, file, name, c)
		s := c.Services[name]
		if cfg.ClusterListen == "" {
			t.Fatalf("%s: %s has no --cluster-listen", file, name)
		}
		host, _, _ := net.SplitHostPort(cfg.ClusterListen)
		if host != s.Hostname && host != name {
			t.Errorf("%s: %s listens for routes on %q, which is not its own name", file, name, host)
		}
		listens[cfg.ClusterListen] = true
		if peers == nil {
			peers = cfg.Peers
		} else if !slices.Equal(peers, cfg.Peers) {
			t.Errorf("%s: %s has --peers %q, another node %q: want the same list everywhere", file, name, cfg.Peers, peers)
		}
		volumes[s.Volumes[0]] = true
		if cfg.PublicURL == "" || urls[cfg.PublicURL] {
			t.Errorf("%s: %s: public URL %q: want one of its own, so clients can fail over", file, name, cfg.PublicURL)
		}
		urls[cfg.PublicURL] = true
		if u, err := url.Parse(cfg.PublicURL); err == nil {
			found := false
			for _, p := range s.Ports {
				if strings.HasPrefix(p, "127.0.0.1:"+u.Port()+":") {
					found = true
				}
			}
			if !found {
				t.Errorf("%s: %s: public URL %s is not the port it publishes (%q)", file, name, cfg.PublicURL, s.Ports)
			}
		}
	}
	for l := range listens {
		if !slices.Contains(peers, l) {
			t.Errorf("%s: route address %s is not in --peers %q", file, l, peers)
		}
	}
	if len(volumes) != 3 {
		t.Errorf("%s: %d distinct volumes: want one per node", file, len(volumes))
	}
}

// dockerfile is a Dockerfile's instructions, continuation lines joined.
func dockerfile(t *testing.T) []string {
	t.Helper()
	raw, err := os.ReadFile(filepath.Join(repoRoot, "Dockerfile"))
	if err != nil {
		t.Fatal(err)
	}
	var out []string
	var cur strings.Builder
	sc := bufio.NewScanner(bytes.NewReader(raw))
	for sc.Scan() {
		line := strings.TrimSpace(sc.Text())
		if cur.Len() == 0 && (line == "" || strings.HasPrefix(line, "#")) {
			continue
		}
		if strings.HasSuffix(line, "\\") {
			cur.WriteString(strings.TrimSuffix(line, "\\") + " ")
			continue
		}
		cur.WriteString(line)
		out = append(out, cur.String())
		cur.Reset()
	}
	return out
}

// instr returns the arguments of every instruction named name.
func instr(lines []string, name string) []string {
	var out []string
	for _, l := range lines {
		if k, rest, ok := strings.Cut(l, " "); ok && strings.EqualFold(k, name) {
			out = append(out, strings.TrimSpace(rest))
		}
	}
	return out
}

// execForm parses a JSON exec-form argument list.
func execForm(t *testing.T, what, s string) []string {
	t.Helper()
	var args []string
	if err := json.Unmarshal([]byte(s), &args); err != nil {
		t.Fatalf("Dockerfile %s %s: want the exec form (a JSON list): %v", what, s, err)
	}
	return args
}

func TestDockerfile(t *testing.T) {
	lines := dockerfile(t)

	// The Go version is the one go.mod requires.
	gomod, err := os.ReadFile(filepath.Join(repoRoot, "go.mod"))
	if err != nil {
		t.Fatal(err)
	}
	goVersion := regexp.MustCompile(`(?m)^go (\S+)$`).FindSubmatch(gomod)
	if !slices.Contains(instr(lines, "ARG"), "GO_VERSION="+string(goVersion[1])) {
		t.Errorf("Dockerfile: want ARG GO_VERSION=%s (go.mod's go line)", goVersion[1])
	}
	froms := instr(lines, "FROM")
	if len(froms) != 2 || !strings.HasPrefix(froms[0], "golang:${GO_VERSION}") || froms[1] != "scratch" {
		t.Errorf("Dockerfile: FROM %q: want a golang:${GO_VERSION} build stage and a scratch final stage", froms)
	}
	if users := instr(lines, "USER"); len(users) != 1 || strings.HasPrefix(users[0], "0") || strings.HasPrefix(users[0], "root") {
		t.Errorf("Dockerfile: USER %q: want one non-root user", users)
	}
	if v := instr(lines, "VOLUME"); !slices.Equal(v, []string{"/data"}) {
		t.Errorf("Dockerfile: VOLUME %q: want /data", v)
	}
	if !slices.ContainsFunc(instr(lines, "COPY"), func(s string) bool { return strings.Contains(s, "ca-certificates.crt") }) {
		t.Error("Dockerfile: no CA certificates in the final image (ACME and external NATS over TLS need them)")
	}

	// ENTRYPOINT + CMD parse with serve's flags; the health check asks the port CMD listens on.
	entry := instr(lines, "ENTRYPOINT")
	if len(entry) != 1 || !slices.Equal(execForm(t, "ENTRYPOINT", entry[0]), []string{"/petrel"}) {
		t.Fatalf("Dockerfile: ENTRYPOINT %q: want [\"/petrel\"]", entry)
	}
	cmds := instr(lines, "CMD")
	if len(cmds) != 1 {
		t.Fatalf("Dockerfile: %d CMD lines", len(cmds))
	}
	cmd := execForm(t, "CMD", cmds[0])
	if len(cmd) == 0 || cmd[0] != "serve" {
		t.Fatalf("Dockerfile: CMD %q: want serve ...", cmd)
	}
	cfg := parseServeArgs(t, "Dockerfile CMD", cmd[1:])
	if cfg.Data != "/data" {
		t.Errorf("Dockerfile CMD: --data %q: want /data", cfg.Data)
	}
	_, port, _ := net.SplitHostPort(cfg.Listen)
	if !slices.ContainsFunc(instr(lines, "EXPOSE"), func(s string) bool { return slices.Contains(strings.Fields(s), port) }) {
		t.Errorf("Dockerfile: EXPOSE does not list the listen port %s", port)
	}
	hc := instr(lines, "HEALTHCHECK")
	if len(hc) != 1 {
		t.Fatalf("Dockerfile: %d HEALTHCHECK lines", len(hc))
	}
	_, hcCmd, ok := strings.Cut(hc[0], "CMD ")
	if !ok {
		t.Fatalf("Dockerfile: HEALTHCHECK %q without CMD", hc[0])
	}
	hcArgs := execForm(t, "HEALTHCHECK CMD", hcCmd)
	if len(hcArgs) != 4 || hcArgs[0] != "/petrel" || hcArgs[1] != "healthcheck" || hcArgs[2] != "--url" {
		t.Fatalf("Dockerfile: HEALTHCHECK CMD %q: want [/petrel healthcheck --url URL]", hcArgs)
	}
	if u, err := url.Parse(hcArgs[3]); err != nil || u.Port() != port || u.Path != "/healthz" {
		t.Errorf("Dockerfile: health check URL %q: want /healthz on the listen port %s", hcArgs[3], port)
	}

	// The build line builds a static binary: run it as written (output into a temporary
	// directory, ${VERSION} set).
	var build string
	for _, r := range instr(lines, "RUN") {
		if strings.Contains(r, "go build") {
			build = r
		}
	}
	if build == "" {
		t.Fatal("Dockerfile: no RUN line with go build")
	}
	for _, want := range []string{"CGO_ENABLED=0", "-trimpath", "-o /out/petrel", "./cmd/petrel"} {
		if !strings.Contains(build, want) {
			t.Errorf("Dockerfile build line %q lacks %s", build, want)
		}
	}
	if testing.Short() {
		t.Skip("-short: not running the image's build line")
	}
	out := filepath.Join(t.TempDir(), "petrel")
	line := strings.ReplaceAll(build, "-o /out/petrel", "-o "+out)
	line = strings.ReplaceAll(line, "${VERSION}", "9.9.9-test")
	ctx, cancel := context.WithTimeout(context.Background(), 8*time.Minute)
	defer cancel()
	sh := exec.CommandContext(ctx, "sh", "-c", line)
	sh.Dir = repoRoot
	sh.Env = append(os.Environ(), "GOFLAGS=-buildvcs=false")
	if b, err := sh.CombinedOutput(); err != nil {
		t.Fatalf("the Dockerfile's build line failed: %v\n%s", err, b)
	}
	f, err := elf.Open(out)
	if err != nil {
		t.Fatal(err)
	}
	defer f.Close()
	for _, p := range f.Progs {
		if p.Type == elf.PT_INTERP || p.Type == elf.PT_DYNAMIC {
			t.Errorf("the image's binary is not static: it has a %v program header", p.Type)
		}
	}
	if libs, _ := f.ImportedLibraries(); len(libs) > 0 {
		t.Errorf("the image's binary needs shared libraries: %v", libs)
	}
	v, err := exec.Command(out, "version").Output()
	if err != nil || strings.TrimSpace(string(v)) != "petrel 9.9.9-test" {
		t.Errorf("the built binary's version: %q, %v: want petrel 9.9.9-test (-X main.version)", v, err)
	}
}

// The systemd unit has the file-descriptor limit and the hardening, its ExecStart parses with
// serve's flags (with the example config), and systemd-analyze verify accepts it where systemd is
// installed.
func TestSystemdUnit(t *testing.T) {
	path := filepath.Join(repoRoot, "deploy", "petrel.service")
	raw, err := os.ReadFile(path)
	if err != nil {
		t.Fatal(err)
	}
	keys := map[string][]string{}
	section := ""
	for _, line := range strings.Split(string(raw), "\n") {
		line = strings.TrimSpace(line)
		switch {
		case line == "" || strings.HasPrefix(line, "#"):
		case strings.HasPrefix(line, "["):
			section = strings.Trim(line, "[]")
		default:
			k, v, ok := strings.Cut(line, "=")
			if !ok {
				t.Fatalf("petrel.service: line %q is not KEY=VALUE", line)
			}
			keys[section+"."+k] = append(keys[section+"."+k], v)
		}
	}
	one := func(k string) string {
		if v := keys[k]; len(v) > 0 {
			return v[len(v)-1]
		}
		return ""
	}
	for k, want := range map[string]string{
		"Service.DynamicUser":             "yes",
		"Service.StateDirectory":          "petrel",
		"Service.NoNewPrivileges":         "yes",
		"Service.ProtectSystem":           "strict",
		"Service.ProtectHome":             "yes",
		"Service.PrivateTmp":              "yes",
		"Service.MemoryDenyWriteExecute":  "yes",
		"Service.CapabilityBoundingSet":   "",
		"Service.SystemCallArchitectures": "native",
	} {
		if _, ok := keys[k]; !ok || one(k) != want {
			t.Errorf("petrel.service: %s=%q: want %q", k, one(k), want)
		}
	}
	if !slices.Contains(keys["Service.SystemCallFilter"], "@system-service") {
		t.Errorf("petrel.service: SystemCallFilter %q: want @system-service", keys["Service.SystemCallFilter"])
	}
	if fams := strings.Fields(one("Service.RestrictAddressFamilies")); !slices.Contains(fams, "AF_INET") || !slices.Contains(fams, "AF_INET6") || slices.Contains(fams, "AF_PACKET") {
		t.Errorf("petrel.service: RestrictAddressFamilies %q", fams)
	}
	if n, err := strconv.Atoi(one("Service.LimitNOFILE")); err != nil || n < 65536 {
		t.Errorf("petrel.service: LimitNOFILE %q: want at least 65536", one("Service.LimitNOFILE"))
	}
	if d, err := time.ParseDuration(one("Service.TimeoutStopSec")); err != nil || d < 25*time.Second {
		t.Errorf("petrel.service: TimeoutStopSec %q: want more than drain_timeout (20s)", one("Service.TimeoutStopSec"))
	}
	if _, ok := keys["Service.AmbientCapabilities"]; ok {
		t.Error("petrel.service: AmbientCapabilities given while CapabilityBoundingSet is empty")
	}

	exe := strings.Fields(one("Service.ExecStart"))
	if len(exe) < 2 || exe[0] != "/usr/local/bin/petrel" || exe[1] != "serve" {
		t.Fatalf("petrel.service: ExecStart %q: want /usr/local/bin/petrel serve ...", exe)
	}
	args := slices.Clone(exe[2:])
	if i := slices.Index(args, "--config"); i >= 0 && i+1 < len(args) {
		args[i+1] = filepath.Join(repoRoot, "deploy", "petrel.example.toml")
	}
	cfg := parseServeArgs(t, "petrel.service ExecStart", args)
	if cfg.Data != "/var/lib/"+one("Service.StateDirectory") {
		t.Errorf("petrel.service: data %q is not the StateDirectory /var/lib/%s", cfg.Data, one("Service.StateDirectory"))
	}

	if _, err := exec.LookPath("systemd-analyze"); err != nil {
		t.Log("systemd-analyze not installed: the unit was checked by the parse above only")
		return
	}
	// verify wants ExecStart's binary to exist: point it at the test's build.
	unit := filepath.Join(t.TempDir(), "petrel.service")
	if err := os.WriteFile(unit, bytes.ReplaceAll(raw, []byte("/usr/local/bin/petrel"), []byte(petrelBin)), 0o644); err != nil {
		t.Fatal(err)
	}
	out, err := exec.Command("systemd-analyze", "verify", unit).CombinedOutput()
	if err != nil || len(bytes.TrimSpace(out)) > 0 {
		t.Errorf("systemd-analyze verify: %v\n%s", err, out)
	}
}

// petrel healthcheck answers 0 for a serving node and 1, with the next step, for none.
func TestHealthcheck(t *testing.T) {
	srv := startServer(t, t.TempDir(), "127.0.0.1:0")
	var out, errb bytes.Buffer
	e := &env{stdin: strings.NewReader(""), stdout: &out, stderr: &errb, getenv: func(string) string { return "" }}
	if code := run(context.Background(), []string{"healthcheck", "--url", srv.url + "/healthz"}, e); code != 0 {
		t.Fatalf("healthcheck of a serving node: exit %d: %s", code, errb.String())
	}
	if !strings.Contains(out.String(), "healthy: ok") {
		t.Errorf("healthcheck output %q", out.String())
	}

	closed := deadURL(t) + "/healthz"
	out.Reset()
	errb.Reset()
	if code := run(context.Background(), []string{"healthcheck", "--url", closed, "--timeout", "2s"}, e); code != 1 {
		t.Fatalf("healthcheck of nothing: exit %d: want 1", code)
	}
	if !strings.Contains(errb.String(), "is `petrel serve` running there?") {
		t.Errorf("healthcheck error %q does not say what to check", errb.String())
	}
	errb.Reset()
	if code := run(context.Background(), []string{"healthcheck", "--url", "127.0.0.1:7070"}, e); code != 2 {
		t.Fatalf("healthcheck with a URL without scheme: exit %d: want 2", code)
	}
	if !strings.Contains(errb.String(), "want http://") {
		t.Errorf("healthcheck error %q does not say the URL's form", errb.String())
	}
}
