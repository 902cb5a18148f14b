// Copyright 2026 The Petrel Authors
// SPDX-License-Identifier: Apache-2.0

// Package hostile holds tests that attack a real server as a hostile client would: each file
// attacks one surface (admin_test.go: the operator surfaces and the public listener) through
// internal/testserver, and asserts what the attacker gets and that the server stays bounded.
// It has no code of its own.
package hostile
