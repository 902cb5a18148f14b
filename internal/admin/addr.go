// Copyright 2026 The Petrel Authors
// SPDX-License-Identifier: Apache-2.0

package admin

import (
	"errors"
	"fmt"
	"net"
	"net/url"
	"os"
	"path/filepath"
	"strings"
)

// AddrFile is the name of the file, in the server's data directory beside admin.token, that holds
// the admin listener's base URL while the server runs.
const AddrFile = "admin.addr"

// ErrPlainToken reports an admin URL that would carry the operator token over plain HTTP to
// another machine.
var ErrPlainToken = errors.New("refusing to send the operator token over plain http to a non-loopback host: use https, or reach the admin listener through loopback (an SSH tunnel)")

// ErrNoAddrFile reports a data directory without an admin.addr: the server is not running, or
// runs with admin_listen = "off".
var ErrNoAddrFile = errors.New("no admin listener address")

// writeFileAtomic writes data to path through a temporary file in the same directory and a
// rename, so that a reader sees the old content or the new, never a part.
func writeFileAtomic(path string, data []byte, perm os.FileMode) error {
	f, err := os.CreateTemp(filepath.Dir(path), "."+filepath.Base(path)+".tmp-*")
	if err != nil {
		return err
	}
	tmp := f.Name()
	_, werr := f.Write(data)
	if werr == nil {
		werr = f.Chmod(perm)
	}
	if werr == nil {
		werr = f.Sync()
	}
	if cerr := f.Close(); werr == nil {
		werr = cerr
	}
	if werr == nil {
		werr = os.Rename(tmp, path)
	}
	if werr != nil {
		_ = os.Remove(tmp)
		return werr
	}
	return nil
}

// removeAddrFile removes the address file if it still holds what this server wrote.
func (s *Server) removeAddrFile() {
	if s.addrFile == "" {
		return
	}
	if b, err := os.ReadFile(s.cfg.AddrFile); err == nil && string(b) == s.addrFile {
		if err := os.Remove(s.cfg.AddrFile); err != nil {
			s.log.Warn("admin listener: remove address file", "path", s.cfg.AddrFile, "err", err)
		}
	}
}

// ReadAddrFile reads an admin.addr file and returns the admin listener's base URL. A missing
// file is ErrNoAddrFile, with a hint for the operator.
func ReadAddrFile(path string) (string, error) {
	b, err := os.ReadFile(path)
	if errors.Is(err, os.ErrNotExist) {
		return "", fmt.Errorf("%w: %s does not exist (is the server running, with admin_listen not \"off\"? or pass --admin URL)", ErrNoAddrFile, path)
	}
	if err != nil {
		return "", fmt.Errorf("read admin listener address: %w", err)
	}
	u, err := NormalizeURL(strings.TrimSpace(string(b)))
	if err != nil {
		return "", fmt.Errorf("%s: %w", path, err)
	}
	return u, nil
}

// NormalizeURL turns an admin listener address (a base URL, or HOST:PORT meaning http) into a
// base URL without a trailing slash.
func NormalizeURL(s string) (string, error) {
	s = strings.TrimSpace(s)
	if s == "" {
		return "", errors.New("empty admin listener address")
	}
	if !strings.Contains(s, "://") {
		s = "http://" + s
	}
	u, err := url.Parse(s)
	if err != nil {
		return "", fmt.Errorf("admin listener address %q: %w", s, err)
	}
	if u.Scheme != "http" && u.Scheme != "https" {
		return "", fmt.Errorf("admin listener address %q: want http:// or https://", s)
	}
	if u.Hostname() == "" {
		return "", fmt.Errorf("admin listener address %q: no host", s)
	}
	return strings.TrimRight(s, "/"), nil
}

// CheckTokenTransport returns ErrPlainToken when base is a plain http URL to a host that is not
// loopback; the check needs no network.
func CheckTokenTransport(base string) error {
	u, err := url.Parse(base)
	if err != nil {
		return fmt.Errorf("admin listener address %q: %w", base, err)
	}
	if u.Scheme == "https" {
		return nil
	}
	if u.Scheme != "http" {
		return fmt.Errorf("admin listener address %q: want http:// or https://", base)
	}
	if !IsLoopbackHost(u.Hostname()) {
		return fmt.Errorf("%s: %w", base, ErrPlainToken)
	}
	return nil
}

// IsLoopbackHost reports whether host (no port) is "localhost" or a loopback IP address.
func IsLoopbackHost(host string) bool {
	if strings.EqualFold(host, "localhost") {
		return true
	}
	ip := net.ParseIP(strings.Trim(host, "[]"))
	return ip != nil && ip.IsLoopback()
}
