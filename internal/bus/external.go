// Copyright 2026 The Petrel Authors
// SPDX-License-Identifier: Apache-2.0

package bus

// Checks of an external NATS cluster (Config.URLs), from what a client can see. An external
// cluster's server settings (sync_interval, store limits) are invisible to an ordinary account:
// varz answers only the system account, which cannot hold JetStream. So this checks what it can
// (JetStream on, clustered when replicas > 1, the streams' storage and persist mode), logs what
// it cannot once, and README lists the settings the servers must have.

import (
	"context"
	"errors"
	"fmt"
	"path/filepath"

	"github.com/nats-io/nats.go/jetstream"
)

// prepareExternal refuses a data directory whose local store would be left behind, and opens a
// single-node store for import into the external cluster (grow.go) like a clustered node does.
func (b *Bus) prepareExternal() error {
	if b.cfg.DataDir == "" {
		return nil
	}
	storeDir := filepath.Join(b.cfg.DataDir, "jetstream")
	_, clustered, err := storeKind(storeDir)
	if err != nil {
		return fmt.Errorf("inspect %s: %w", storeDir, err)
	}
	if clustered {
		return fmt.Errorf("%w: %s holds an embedded cluster node's store; with nats (external) this node keeps no JetStream data and would leave it behind. "+
			"Petrel does not move an embedded cluster's data to an external one: keep the node in its embedded cluster, or move %s away to run as an edge node",
			errRefused, storeDir, storeDir)
	}
	return b.prepareStore(storeDir)
}

// checkExternal runs once the external JetStream answers, before migrations.
func (b *Bus) checkExternal(ctx context.Context) error {
	servers := RedactURLs(b.cfg.URLs)
	if b.nc.ConnectedClusterName() == "" && b.cfg.Replicas > 1 {
		return fmt.Errorf("%w: the NATS server at %v runs alone (no cluster), so it cannot hold %d replicas: point nats at the servers of a JetStream cluster of at least %d, "+
			"or set replicas = 1 (then the loss of that one server's disk loses acknowledged messages)", errRefused, servers, b.cfg.Replicas, b.cfg.Replicas)
	}
	info, err := b.js.AccountInfo(ctx)
	if err != nil {
		return fmt.Errorf("jetstream account info from %v: %w", servers, err)
	}
	b.cfg.Logger.Info("external jetstream", "servers", servers, "cluster", b.nc.ConnectedClusterName(), "domain", info.Domain,
		"replicas", b.cfg.Replicas, "max_store", info.Limits.MaxStore, "streams", info.Streams)
	if b.cfg.Replicas == 1 {
		b.cfg.Logger.Warn("external jetstream with replicas = 1: the loss of the server holding a stream loses its acknowledged messages; use 3")
	}
	b.cfg.Logger.Warn("cannot check the external NATS servers' sync_interval from this account (only the system account sees server settings): " +
		"every server must run jetstream { sync_interval: always }, or a crash loses acknowledged messages (README: External NATS)")
	return nil
}

// checkDurable refuses an existing stream whose storage would lose acknowledged messages: memory
// storage, or asynchronous persistence. Neither can be changed by an update, and Petrel never
// creates either: somebody made the stream by hand.
func checkDurable(cfg jetstream.StreamConfig) error {
	if cfg.Storage != jetstream.FileStorage {
		return fmt.Errorf("%w: stream %s uses %s storage: a restart of its servers loses every acknowledged message in it. "+
			"Petrel creates it with file storage and cannot change it in place: copy out what you need, delete the stream (nats stream rm %s) and start again so that Petrel recreates it",
			errRefused, cfg.Name, cfg.Storage, cfg.Name)
	}
	if cfg.PersistMode == jetstream.AsyncPersistMode {
		return fmt.Errorf("%w: stream %s uses persist_mode async: it acknowledges writes before they are on disk. "+
			"Petrel cannot change it in place: copy out what you need, delete the stream (nats stream rm %s) and start again so that Petrel recreates it",
			errRefused, cfg.Name, cfg.Name)
	}
	return nil
}

// errNotClustered: a replicated stream asked of a JetStream server that runs alone.
func notClustered(err error) bool {
	var apiErr *jetstream.APIError
	return errors.As(err, &apiErr) && apiErr.ErrorCode == 10074
}
