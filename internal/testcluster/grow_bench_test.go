// Copyright 2026 The Petrel Authors
// SPDX-License-Identifier: Apache-2.0

package testcluster_test

import (
	"context"
	"fmt"
	"regexp"
	"testing"
	"time"

	"github.com/nats-io/nats.go"
	"github.com/nats-io/nats.go/jetstream"
	"github.com/synadia-io/orbit.go/jetstreamext"

	"github.com/petrelchat/petrel/internal/testcluster"
	"github.com/petrelchat/petrel/internal/testserver"
)

// BenchmarkGrowImport measures README's grow with 100,000 stored envelopes of 300 B over 1,000
// devices: the import into R3 (from n1's log) and the whole grow (stop, import, start of three
// nodes). Run: go test -run '^$' -bench GrowImport -benchtime 1x ./internal/testcluster/
func BenchmarkGrowImport(b *testing.B) {
	const msgs, devices, batch = 100_000, 1_000, 500
	took := regexp.MustCompile(`imported the single-node store.*took=(\S+)`)
	for range b.N {
		b.StopTimer()
		var log testserver.Buffer
		c := testcluster.StartSingle(b, testcluster.Options{Log: &log})
		bs := c.Node(0).Server().Bus()
		body := make([]byte, 300)
		byStream := map[int][]*nats.Msg{}
		flush := func(shard int) {
			if _, err := jetstreamext.PublishMsgBatch(context.Background(), bs.JS(), byStream[shard]); err != nil {
				b.Fatal(err)
			}
			byStream[shard] = byStream[shard][:0]
		}
		for i := range msgs {
			dev := fmt.Sprintf("dev%05d", i%devices)
			m := nats.NewMsg(bs.InboxSubject(dev))
			m.Data = body
			m.Header.Set(jetstream.MsgIDHeader, fmt.Sprintf("sender.m%d.%s", i, dev))
			shard := bs.Shard(dev)
			if byStream[shard] = append(byStream[shard], m); len(byStream[shard]) == batch {
				flush(shard)
			}
		}
		for shard, ms := range byStream {
			if len(ms) > 0 {
				flush(shard)
			}
		}
		b.StartTimer()
		start := time.Now()
		c.Grow(b, nodes)
		b.ReportMetric(time.Since(start).Seconds(), "grow_s")
		b.StopTimer()
		m := took.FindStringSubmatch(log.String())
		if m == nil {
			b.Fatal("no import line in n1's log")
		}
		d, err := time.ParseDuration(m[1])
		if err != nil {
			b.Fatal(err)
		}
		b.ReportMetric(d.Seconds(), "import_s")
		b.ReportMetric(msgs/d.Seconds(), "imported_msgs/s")
		c.Stop()
	}
}
