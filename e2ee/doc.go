// Package e2ee implements Petrel's end-to-end encryption core on the Go
// standard library's primitives only: PQXDH key agreement (X25519 +
// ML-KEM-768), the Double Ratchet for pairwise sessions, Sesame-style
// per-device sessions for multi-device accounts, sender keys for groups, and
// safety numbers.
//
// The constructions, byte layouts, KDF labels, limits and state
// serialisation formats are specified in docs/protocol.md in this
// repository.
//
// This package has NOT been externally audited yet. Treat it as a careful
// implementation of published designs that still awaits independent review.
//
// Every function that needs randomness takes an io.Reader; nil means
// crypto/rand.Reader. Passing a deterministic reader is meant for tests only.
//
// Sessions, sender keys and sender-key receivers are safe for concurrent use.
// Every decryption is transactional: on any error the state is unchanged.
package e2ee
