// Copyright 2026 The Petrel Authors
// SPDX-License-Identifier: Apache-2.0

package directory_test

import (
	"bytes"
	"context"
	"crypto/ed25519"
	"fmt"
	"math/rand/v2"
	"runtime"
	"testing"
	"time"

	"github.com/nats-io/nats.go"
	"github.com/synadia-io/orbit.go/jetstreamext"

	"github.com/petrelchat/petrel/internal/bus"
	"github.com/petrelchat/petrel/internal/directory"
	pb "github.com/petrelchat/petrel/proto/petrel/v1"
)

// benchDevice is a registered device and its signature over the benchmark nonce.
type benchDevice struct {
	id  string
	sig []byte
}

// openBenchDir opens a started directory on a fresh bus, registers n devices, and fills the
// PREKEYS stream with other devices' keys so counts are taken from a stream that is not empty.
func openBenchDir(b *testing.B, cfg directory.Config, nonce []byte, n int) (*directory.Directory, []benchDevice) {
	b.Helper()
	d, bs := startedDir(b, cfg)
	ctx := context.Background()
	devs := make([]benchDevice, n)
	for i := range devs {
		reg, priv := registration(b, fmt.Sprintf("bench%d", i), nonce, byte(100+i))
		dev, err := d.Register(ctx, reg, nonce)
		if err != nil {
			b.Fatal(err)
		}
		devs[i] = benchDevice{id: dev.ID, sig: ed25519.Sign(priv, pb.AuthPayload(nonce, dev.ID))}
	}
	fillPreKeys(b, bs, 1000, 2) // other devices' keys
	return d, devs
}

// fillPreKeys stores, for each of devices made-up devices (ids %032x of 0 … devices-1), keys
// one-time prekeys of each kind (40 and 1,300 bytes, as real ones), in atomic batches of 200.
func fillPreKeys(b *testing.B, bs *bus.Bus, devices, keys int) {
	b.Helper()
	ctx := context.Background()
	var batch []*nats.Msg
	flush := func() {
		if len(batch) == 0 {
			return
		}
		if _, err := jetstreamext.PublishMsgBatch(ctx, bs.JS(), batch); err != nil {
			b.Fatal(err)
		}
		batch = batch[:0]
	}
	for i := range devices {
		id := fmt.Sprintf("%032x", i)
		for range keys {
			batch = append(batch,
				&nats.Msg{Subject: bus.OneTimePreKeySubject(id), Data: bytes.Repeat([]byte{1}, 40), Header: nats.Header{}},
				&nats.Msg{Subject: bus.KEMPreKeySubject(id), Data: bytes.Repeat([]byte{2}, 1300), Header: nats.Header{}})
			if len(batch) >= 200 {
				flush()
			}
		}
	}
	flush()
}

// reportCPU adds the process CPU time per operation (client and embedded server together).
func reportCPU(b *testing.B, start time.Duration) {
	if c := cpuTime(); c > 0 && start > 0 {
		b.ReportMetric(float64(c-start)/float64(b.N), "cpu-ns/op")
	}
}

// BenchmarkAuthenticate measures the connect-time authentication: hit authenticates one device
// over and over (cached after the first), miss alternates between two devices with room for one
// in the cache (every call reads and decodes the record, then evicts the other one).
func BenchmarkAuthenticate(b *testing.B) {
	nonce := bytes.Repeat([]byte{3}, 32)
	for _, bc := range []struct {
		name    string
		cfg     directory.Config
		devices int
	}{
		{name: "hit", devices: 1},
		{name: "miss", cfg: directory.Config{DeviceCacheSize: 1}, devices: 2},
	} {
		b.Run(bc.name, func(b *testing.B) {
			d, devs := openBenchDir(b, bc.cfg, nonce, bc.devices)
			ctx := context.Background()
			b.ReportAllocs()
			start := cpuTime()
			for i := 0; b.Loop(); i++ {
				dv := devs[i%len(devs)]
				if _, err := d.Authenticate(ctx, dv.id, nonce, dv.sig); err != nil {
					b.Fatal(err)
				}
			}
			reportCPU(b, start)
		})
	}
}

// BenchmarkStatus measures the connect-time prekey count of a device. warm: one device with 3
// keys of each kind, asked again and again, next to 1,000 other devices' keys, by both ways
// below. cold: 3,000
// devices with 100 keys of each kind (40 B and 1,300 B, as real ones: ~400 MB of stream, ~100
// blocks), asked in a random order, as a reconnect storm does, by the stream-info request (info)
// and by the fallback's direct gets (direct), which load the block holding the device's first
// key. heap-MB is the process's peak heap in use (the embedded server's included).
func BenchmarkStatus(b *testing.B) {
	b.Run("warm", func(b *testing.B) {
		nonce := bytes.Repeat([]byte{4}, 32)
		d, devs := openBenchDir(b, directory.Config{}, nonce, 1)
		ctx := context.Background()
		p, err := d.Authenticate(ctx, devs[0].id, nonce, devs[0].sig)
		if err != nil {
			b.Fatal(err)
		}
		for _, how := range []string{"info", "direct"} {
			b.Run(how, func(b *testing.B) {
				if how == "direct" {
					d.SetPreKeyTotalsSubjectForTest(b, "petrel.bench.nobody") // fails at once, then backs off
				}
				b.ReportAllocs()
				start := cpuTime()
				for b.Loop() {
					st, err := d.Status(ctx, p)
					if err != nil {
						b.Fatal(err)
					}
					if st.GetOneTimePrekeysLeft() != 3 || st.GetKemPrekeysLeft() != 3 {
						b.Fatalf("status %v", st)
					}
				}
				reportCPU(b, start)
			})
		}
	})
	b.Run("cold", func(b *testing.B) {
		const devices, keys = 3000, 100
		d, bs := startedDir(b, directory.Config{})
		ctx := context.Background()
		fillPreKeys(b, bs, devices, keys)
		for _, how := range []string{"info", "direct"} {
			b.Run(how, func(b *testing.B) {
				if how == "direct" {
					d.SetPreKeyTotalsSubjectForTest(b, "petrel.bench.nobody") // fails at once, then backs off
				}
				order := rand.Perm(devices)
				var ms runtime.MemStats
				runtime.GC()
				var peak uint64
				b.ReportAllocs()
				start := cpuTime()
				for i := 0; b.Loop(); i++ {
					st, err := d.Status(ctx, directory.Principal{ID: fmt.Sprintf("%032x", order[i%devices])})
					if err != nil {
						b.Fatal(err)
					}
					if st.GetOneTimePrekeysLeft() != keys || st.GetKemPrekeysLeft() != keys {
						b.Fatalf("status %v", st)
					}
					if i%256 == 0 {
						runtime.ReadMemStats(&ms)
						peak = max(peak, ms.HeapInuse)
					}
				}
				reportCPU(b, start)
				b.ReportMetric(float64(peak)/(1<<20), "heap-MB")
			})
		}
	})
}
