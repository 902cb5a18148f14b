// Copyright 2026 The Petrel Authors
// SPDX-License-Identifier: Apache-2.0

package messaging_test

import (
	"context"
	"encoding/json"
	"fmt"
	"io"
	"log/slog"
	"testing"
	"time"

	"github.com/petrelchat/petrel/internal/bus"
	"github.com/petrelchat/petrel/internal/directory"
	"github.com/petrelchat/petrel/internal/messaging"
	pb "github.com/petrelchat/petrel/proto/petrel/v1"
)

// BenchmarkFanOut resolves one message to a group of 1,024 members with 5 devices each (5,119
// targets: the sending device excluded), accounts from the directory's cache: what a group send
// costs the sending connection's executor before the mailbox takes the targets.
func BenchmarkFanOut(b *testing.B) {
	quiet := slog.New(slog.NewTextHandler(io.Discard, nil))
	bs, err := bus.Open(context.Background(), bus.Config{DataDir: b.TempDir(), InboxShards: 1, Logger: quiet})
	if err != nil {
		b.Fatal(err)
	}
	b.Cleanup(bs.Close)
	d := directory.New(bs, directory.Config{Logger: quiet})
	ctx, cancel := context.WithCancel(context.Background())
	b.Cleanup(func() { cancel(); d.Wait() })
	if err := d.Start(ctx); err != nil {
		b.Fatal(err)
	}
	const members, devices = 1024, 5
	names := make([]string, members)
	for i := range names {
		names[i] = fmt.Sprintf("m%04d", i)
		a := directory.Account{Name: names[i], Created: time.Now().UTC()}
		for k := range devices {
			a.Devices = append(a.Devices, fmt.Sprintf("%028x%04x", i, k))
		}
		rec, _ := json.Marshal(a)
		if _, err := bs.Accounts.Put(ctx, a.Name, rec); err != nil {
			b.Fatal(err)
		}
	}
	s := messaging.New(d)
	from := directory.Principal{Name: names[0], ID: fmt.Sprintf("%028x%04x", 0, 0)}
	ct := make([]byte, 300)
	m := &messaging.Message{}
	if err := s.FanOut(ctx, from, "warm", "0123456789abcdef0123456789abcdef", pb.EnvelopeType_ENVELOPE_TYPE_GROUP, ct, names, 1, m); err != nil {
		b.Fatal(err)
	}
	if len(m.Targets) != members*devices-1 {
		b.Fatalf("%d targets", len(m.Targets))
	}
	b.ReportAllocs()
	for b.Loop() {
		if err := s.FanOut(ctx, from, "msg-1", "0123456789abcdef0123456789abcdef", pb.EnvelopeType_ENVELOPE_TYPE_GROUP, ct, names, 1, m); err != nil {
			b.Fatal(err)
		}
	}
	b.ReportMetric(float64(b.Elapsed().Nanoseconds())/float64(b.N*len(m.Targets)), "ns/target")
}
