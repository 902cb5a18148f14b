// Copyright 2026 The Petrel Authors
// SPDX-License-Identifier: Apache-2.0

package bus

import (
	"bytes"
	"context"
	"errors"
	"io"
	"log/slog"
	"strings"
	"testing"
	"time"

	"github.com/nats-io/nats.go"
	"github.com/nats-io/nats.go/jetstream"
	"github.com/prometheus/client_golang/prometheus"
)

// A subscription that cannot keep up makes nats.go drop messages: the drop is counted by subject
// kind, and OnSlowConsumer listeners hear of it.
func TestSlowConsumerCounted(t *testing.T) {
	reg := prometheus.NewRegistry()
	b, err := Open(context.Background(), Config{DataDir: t.TempDir(), InboxShards: 1, Registry: reg,
		Logger: slog.New(slog.NewTextHandler(io.Discard, nil))})
	if err != nil {
		t.Fatal(err)
	}
	defer b.Close()
	reported := make(chan *nats.Subscription, 8)
	remove := b.OnSlowConsumer(func(sub *nats.Subscription) { reported <- sub })
	defer remove()

	release := make(chan struct{})
	defer close(release)
	nc := b.Conn()
	sub, err := nc.Subscribe(DeviceSubject("d1"), func(*nats.Msg) { <-release })
	if err != nil {
		t.Fatal(err)
	}
	// One message in the blocked handler, one pending: the third is dropped whatever the timing.
	if err := sub.SetPendingLimits(1, -1); err != nil {
		t.Fatal(err)
	}
	for range 3 {
		if err := nc.Publish(DeviceSubject("d1"), []byte("x")); err != nil {
			t.Fatal(err)
		}
	}
	if got := <-reported; got != sub {
		t.Fatalf("slow consumer reported for %q, want %q", got.Subject, sub.Subject)
	}
	if n, err := sub.Dropped(); err != nil || n < 1 {
		t.Fatalf("dropped %d %v", n, err)
	}
	mfs, err := reg.Gather()
	if err != nil {
		t.Fatal(err)
	}
	var device float64
	for _, mf := range mfs {
		if mf.GetName() != "petrel_bus_slow_consumer_total" {
			continue
		}
		for _, m := range mf.GetMetric() {
			if m.GetLabel()[0].GetValue() == KindDevice {
				device = m.GetCounter().GetValue()
			}
		}
	}
	if device != 1 {
		t.Fatalf("petrel_bus_slow_consumer_total{subject_kind=device} = %v, want 1", device)
	}
}

// The slow-consumer log says at most slowConsumerLogBurst lines a second, and the next line says
// how many it left out.
func TestSlowConsumerLogRateLimited(t *testing.T) {
	var buf bytes.Buffer
	e := newAsyncErrors(slog.New(slog.NewTextHandler(&buf, nil)), nil)
	now := time.Unix(1_000_000, 0)
	e.now = func() time.Time { return now }
	for range slowConsumerLogBurst + 3 {
		e.logLimited("nats slow consumer")
	}
	if n := strings.Count(buf.String(), "nats slow consumer"); n != slowConsumerLogBurst {
		t.Fatalf("%d lines in one second, want %d:\n%s", n, slowConsumerLogBurst, buf.String())
	}
	if strings.Contains(buf.String(), "suppressed") {
		t.Fatalf("suppressed reported early:\n%s", buf.String())
	}
	now = now.Add(time.Second)
	buf.Reset()
	e.logLimited("nats slow consumer")
	if !strings.Contains(buf.String(), "suppressed=3") {
		t.Fatalf("the next second's line does not say 3 were suppressed: %s", buf.String())
	}
}

func TestSubjectKind(t *testing.T) {
	for subj, want := range map[string]string{
		DeviceSubject("abc"): KindDevice,
		"_PR.node1.*":        KindReply,
		"$JS.API.>":          KindOther,
	} {
		if got := SubjectKind(subj); got != want {
			t.Errorf("SubjectKind(%q) = %q, want %q", subj, got, want)
		}
	}
}

// A failed JetStream API check while the node's connection is up — no answer in time, or 503
// "JetStream system temporarily unavailable" — is the cluster's state (ErrAPISlow: clients stay);
// only with the connection down is it this node's (clients move).
func TestAPICheckErr(t *testing.T) {
	unavailable := &jetstream.APIError{Code: 503, ErrorCode: 10008, Description: "JetStream system temporarily unavailable"}
	for _, tc := range []struct {
		name      string
		connected bool
		err       error
		slow      bool
	}{
		{"timeout, connected", true, context.DeadlineExceeded, true},
		{"503 unavailable, connected", true, unavailable, true},
		{"timeout, disconnected", false, context.DeadlineExceeded, false},
		{"503 unavailable, disconnected", false, unavailable, false},
	} {
		t.Run(tc.name, func(t *testing.T) {
			err := apiCheckErr(tc.connected, tc.err)
			if !errors.Is(err, ErrNoQuorum) {
				t.Fatalf("%v does not wrap ErrNoQuorum", err)
			}
			if got := errors.Is(err, ErrAPISlow); got != tc.slow {
				t.Fatalf("ErrAPISlow = %v, want %v (%v)", got, tc.slow, err)
			}
		})
	}
}
