// Copyright 2026 The Petrel Authors
// SPDX-License-Identifier: Apache-2.0

package bus

import (
	"context"
	"io"
	"log/slog"
	"testing"

	"github.com/nats-io/nats-server/v2/server"
)

// The embedded JetStream server fsyncs every write (sync_interval: always): an ack means the
// envelope is on disk (invariant 1). A kill -9 test cannot tell a missing fsync (the page cache
// survives the process), so this asserts the running server's own view of its configuration.
func TestEmbeddedServerSyncsAlways(t *testing.T) {
	quiet := slog.New(slog.NewTextHandler(io.Discard, nil))
	b, err := Open(context.Background(), Config{DataDir: t.TempDir(), InboxShards: 1, Logger: quiet})
	if err != nil {
		t.Fatal(err)
	}
	defer b.Close()
	if b.srv == nil {
		t.Fatal("no embedded server")
	}
	jsc := b.srv.JetStreamConfig()
	if jsc == nil {
		t.Fatal("JetStream is not enabled on the embedded server")
	}
	if !jsc.SyncAlways {
		t.Fatal("the embedded JetStream server runs without SyncAlways (sync_interval: always)")
	}
	v, err := b.srv.Varz(&server.VarzOptions{})
	if err != nil {
		t.Fatal(err)
	}
	if v.JetStream.Config == nil || !v.JetStream.Config.SyncAlways {
		t.Fatalf("varz jetstream config %+v: sync_always is off", v.JetStream.Config)
	}
}
