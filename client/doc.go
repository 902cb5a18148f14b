// Copyright 2026 The Petrel Authors
// SPDX-License-Identifier: Apache-2.0

// Package client is Petrel's Go SDK: register a device, connect, send and receive end-to-end
// encrypted messages, with a local outbox and automatic reconnects.
//
// Local state (keys, sessions, contacts, history, outbox) lives in a client/store.Store that the
// application opens and owns. A typical program:
//
//	st, err := store.Open(home, store.Options{})
//	// once: client.Register(ctx, st, client.RegisterOptions{ServerURL: u, Name: "alice"})
//	c, err := client.Open(client.Config{Store: st, Events: events})
//	go c.Run(ctx)                       // connects, reconnects with backoff, until ctx ends
//	id, err := c.Send(ctx, "bob", "hi") // returns after the server's ack
//	c.Close()
//
// Guarantees:
//   - Send returns nil only after the server's SendResult: every recipient device has the message
//     (live) or the server stored it durably.
//   - Every sent message stays in the local outbox until each recipient device has sent a delivery
//     receipt. Messages the server never acked are resent on the next connection (same message
//     id); messages acked but not receipted for Config.ResendInterval are checked with the server
//     (QueryQueued) and resent if the server no longer holds them. Receivers drop duplicates, so a
//     message is shown once.
//   - A received message is persisted (history and E2EE session state in one transaction) before
//     it is acked to the server.
//
// Identity keys are trusted on first use; a change is reported as an IdentityChanged event.
// Errors from the server are *Error values matching the sentinels (ErrUnknownUser, ...) with
// errors.Is. Neither errors nor logs carry keys or message contents.
package client
