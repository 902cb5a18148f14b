// Copyright 2026 The Petrel Authors
// SPDX-License-Identifier: Apache-2.0

package server

import (
	"crypto/rand"
	"encoding/hex"
	"errors"
	"fmt"
	"os"
	"path/filepath"
	"strings"
)

// NodeIDFile holds the random part of the default node name; it is created in the data directory
// at first start (mode 0600) and kept, so the name survives restarts.
const NodeIDFile = "node.id"

// nodeIDLen is the length of the random part of a default node name, in hex digits.
const nodeIDLen = 8

// defaultNodeName is the host name, "-" and the id in <data>/node.id (created at first start).
// Several nodes on one machine have several data directories, so their names differ; in a NATS
// cluster server names must be unique.
func defaultNodeName(data string) (string, error) {
	id, err := loadOrCreateNodeID(filepath.Join(data, NodeIDFile))
	if err != nil {
		return "", err
	}
	host, _ := os.Hostname()
	if host == "" {
		host = "petrel"
	}
	return host + "-" + id, nil
}

func loadOrCreateNodeID(path string) (string, error) {
	var raw [nodeIDLen / 2]byte
	if _, err := rand.Read(raw[:]); err != nil {
		return "", err
	}
	id := hex.EncodeToString(raw[:])
	// O_EXCL: of two processes starting on one data directory, one writes and the other reads.
	f, err := os.OpenFile(path, os.O_WRONLY|os.O_CREATE|os.O_EXCL, 0o600)
	if err == nil {
		_, werr := f.WriteString(id + "\n")
		if err := errors.Join(werr, f.Sync(), f.Close()); err != nil {
			_ = os.Remove(path)
			return "", fmt.Errorf("write node id: %w", err)
		}
		return id, nil
	}
	if !errors.Is(err, os.ErrExist) {
		return "", fmt.Errorf("create node id: %w", err)
	}
	b, err := os.ReadFile(path)
	if err != nil {
		return "", fmt.Errorf("read node id: %w", err)
	}
	id = strings.TrimSpace(string(b))
	if !validNodeID(id) {
		return "", fmt.Errorf("%s is damaged (want up to 64 letters, digits, '-' or '_'): delete it to create a new node id, or set node in the config", path)
	}
	return id, nil
}

func validNodeID(id string) bool {
	if id == "" || len(id) > 64 {
		return false
	}
	for _, c := range id {
		if !(c >= 'a' && c <= 'z' || c >= 'A' && c <= 'Z' || c >= '0' && c <= '9' || c == '-' || c == '_') {
			return false
		}
	}
	return true
}
