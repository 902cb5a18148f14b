// Package e2ee implements Petrel's end-to-end encryption core on the Go
// standard library's primitives only:
//
//   - identities (Ed25519 + X25519, bound by a signature) and prekeys:
//     signed X25519 prekeys, one-time X25519 prekeys, and signed ML-KEM-768
//     prekeys (one-time and last-resort), in the bundle format the server
//     stores ([PreKeyBundle]);
//   - PQXDH session setup ([InitiateSession], [AcceptSession]);
//   - the Double Ratchet ([Session]) with authenticated headers, bounded
//     skipped keys, old receiving chains and replay rejection;
//   - Sesame-style handling of several sessions per remote device
//     ([SessionRecord]);
//   - sender keys for groups ([SenderKey], [SenderKeyReceiver]);
//   - safety numbers covering every device of both users ([SafetyNumber]);
//   - linking a new device to an account: link codes ([FormatLinkCode],
//     [ParseLinkCode]), the offer MAC ([LinkOfferMAC]), the sealed approval
//     ([SealLinkApproval], [OpenLinkApproval]) and device list signatures
//     ([SignDeviceList]).
//
// The exact constructions, byte layouts, KDF labels, limits and state
// serialisation formats are specified in docs/protocol.md in this
// repository.
//
// This package has NOT been externally audited yet. It is a careful
// implementation of published designs that still awaits independent review.
//
// Every function that needs randomness takes an io.Reader; nil means
// crypto/rand.Reader. Deterministic readers are meant for tests only.
//
// Sessions, session records, sender keys and sender-key receivers are safe
// for concurrent use, and every decryption is transactional: on any error
// the state is unchanged. Persist a session (or sender key) after Encrypt
// and before sending the ciphertext: restarting from a state saved before an
// Encrypt would reuse that message key. Private types print redacted with
// every fmt verb, and error strings never carry key material.
package e2ee
