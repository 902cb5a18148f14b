// Copyright 2026 The Petrel Authors
// SPDX-License-Identifier: Apache-2.0

package bus

// Presence (package presence): core subjects only, nothing stored except each account's settings.
const (
	// SettingsBucket holds each account's presence and privacy settings (a serialised
	// petrelv1.Settings under the account name).
	SettingsBucket = "settings"

	// PresenceTransitions carries, from each node, batches of its accounts going online (a first
	// device connected to that node) and offline (the last one left). Every node subscribes once.
	PresenceTransitions = "petrel.presence.t"
	// PresenceQuery asks every node what it knows of some accounts (the answers come back to the
	// asker's reply subject).
	PresenceQuery = "petrel.presence.q"
	// PresenceHeartbeat carries each node's heartbeat (and hello, and goodbye), so that a node's
	// accounts are taken offline when it dies.
	PresenceHeartbeat = "petrel.presence.hb"
	// PresenceSettingsChanged carries the name of an account whose settings changed (header
	// Petrel-Revision: the settings bucket's revision of the new value).
	PresenceSettingsChanged = "petrel.presence.s"
)
