// Copyright 2026 The Petrel Authors
// SPDX-License-Identifier: Apache-2.0

// Package archtest holds tests of the repository's shape: dependency direction (the SDK and the
// E2EE core never import internal/ or server parts; services and the admin listener never import
// the server or gateway, and the admin listener imports no service) and that every package has a
// doc comment. It has no code of its own.
package archtest
