// Copyright 2026 The Petrel Authors
// SPDX-License-Identifier: Apache-2.0

package bus

import (
	"context"
	"fmt"
	"io"
	"log/slog"
	"sync"
	"testing"
	"time"

	"github.com/nats-io/nats.go"
	"github.com/nats-io/nats.go/jetstream"
	"github.com/synadia-io/orbit.go/jetstreamext"
)

// BenchmarkR1Commit measures the embedded engine's durable store paths on one node (R1 file
// streams, sync_interval: always, 300 B messages, one writer per stream, batches of 128 spread
// over 32 subjects a stream), without Petrel above them: what each way of committing a run of
// messages costs the engine. atomic: one atomic batch (the mailbox's group commit); fast:
// nats-server's fast-ingest batch (2.14+); each: one asynchronous publish per message, the run
// in flight at once. msgid adds a Nats-Msg-Id header per message (the mailbox's dedupe).
//
//	go test -run '^$' -bench BenchmarkR1Commit -benchtime 100000x ./internal/bus
func BenchmarkR1Commit(b *testing.B) {
	const streams, batch = 32, 128
	for _, mode := range []string{"atomic", "atomic-msgid", "fast", "each"} {
		b.Run(mode, func(b *testing.B) {
			quiet := slog.New(slog.NewTextHandler(io.Discard, nil))
			bs, err := Open(context.Background(), Config{DataDir: b.TempDir(), InboxShards: 1, Logger: quiet})
			if err != nil {
				b.Fatal(err)
			}
			defer bs.Close()
			ctx := context.Background()
			js := bs.JS()
			for i := range streams {
				if _, err := js.CreateStream(ctx, jetstream.StreamConfig{
					Name: fmt.Sprintf("BENCH_%d", i), Subjects: []string{fmt.Sprintf("bench.%d.*", i)},
					Storage: jetstream.FileStorage, Replicas: 1, AllowAtomicPublish: true, AllowBatchPublish: true,
				}); err != nil {
					b.Fatal(err)
				}
			}
			payload := make([]byte, 300)
			per := (b.N + streams - 1) / streams
			b.ResetTimer()
			start := time.Now()
			var wg sync.WaitGroup
			errs := make(chan error, streams)
			for i := range streams {
				wg.Go(func() {
					if err := commitRuns(ctx, js, mode, i, per, batch, payload); err != nil {
						errs <- err
					}
				})
			}
			wg.Wait()
			elapsed := time.Since(start)
			b.StopTimer()
			close(errs)
			for err := range errs {
				b.Fatal(err)
			}
			b.ReportMetric(float64(per*streams)/elapsed.Seconds(), "msgs/s")
		})
	}
}

// commitRuns stores n messages on stream i's subjects in runs of batch, the way mode says.
func commitRuns(ctx context.Context, js jetstream.JetStream, mode string, i, n, batch int, payload []byte) error {
	subject := func(k int) string { return fmt.Sprintf("bench.%d.d%d", i, k%32) }
	for done := 0; done < n; {
		run := min(batch, n-done)
		switch mode {
		case "atomic", "atomic-msgid":
			msgs := make([]*nats.Msg, run)
			for k := range msgs {
				msgs[k] = &nats.Msg{Subject: subject(done + k), Data: payload, Header: nats.Header{}}
				if mode == "atomic-msgid" {
					msgs[k].Header.Set(jetstream.MsgIDHeader, fmt.Sprintf("m-%d-%d", i, done+k))
				}
			}
			if _, err := jetstreamext.PublishMsgBatch(ctx, js, msgs); err != nil {
				return err
			}
		case "fast":
			fp, err := jetstreamext.NewFastPublisher(js)
			if err != nil {
				return err
			}
			for k := range run - 1 {
				if _, err := fp.Add(subject(done+k), payload); err != nil {
					return err
				}
			}
			if _, err := fp.Commit(ctx, subject(done+run-1), payload); err != nil {
				return err
			}
		case "each":
			futs := make([]jetstream.PubAckFuture, 0, run)
			for k := range run {
				f, err := js.PublishAsync(subject(done+k), payload)
				if err != nil {
					return err
				}
				futs = append(futs, f)
			}
			for _, f := range futs {
				select {
				case <-f.Ok():
				case err := <-f.Err():
					return err
				case <-ctx.Done():
					return ctx.Err()
				}
			}
		}
		done += run
	}
	return nil
}
