// Copyright 2026 The Petrel Authors
// SPDX-License-Identifier: Apache-2.0

package client_test

import (
	"context"
	"errors"
	"strings"
	"testing"
	"time"

	"github.com/petrelchat/petrel/client"
	"github.com/petrelchat/petrel/client/store"
	"github.com/petrelchat/petrel/internal/faultproxy"
	"github.com/petrelchat/petrel/internal/testserver"
)

// TestSilentServerNoticedByKeepAlive: the server goes silent without closing the connection (a
// proxy in between holds every byte, as a dead machine or a black-holing network would). The
// client notices within KeepAlive + KeepAliveTimeout, not after RequestTimeout (30 s), and
// reconnects once the path works again.
func TestSilentServerNoticedByKeepAlive(t *testing.T) {
	srv := testserver.Start(t)
	p, err := faultproxy.New(strings.TrimPrefix(srv.URL(), "http://"))
	if err != nil {
		t.Fatal(err)
	}
	t.Cleanup(p.Close)
	url := "http://" + p.Addr()
	st, err := store.Open(t.TempDir(), store.Options{NoSync: true})
	if err != nil {
		t.Fatal(err)
	}
	t.Cleanup(func() { st.Close() })
	ctx, cancel := context.WithTimeout(context.Background(), waitFor)
	defer cancel()
	if _, err := client.Register(ctx, st, client.RegisterOptions{ServerURL: url, Name: "bob"}); err != nil {
		t.Fatal(err)
	}
	events := make(chan client.Event, 100)
	c, err := client.Open(fastConfig(client.Config{Store: st, Events: events,
		KeepAlive: 100 * time.Millisecond, KeepAliveTimeout: 400 * time.Millisecond, RequestTimeout: time.Minute}))
	if err != nil {
		t.Fatal(err)
	}
	runCtx, stop := context.WithCancel(context.Background())
	done := make(chan struct{})
	go func() { defer close(done); c.Run(runCtx) }()
	t.Cleanup(func() { stop(); <-done })
	next := func(what string, match func(client.Event) bool) time.Time {
		t.Helper()
		timeout := time.After(waitFor)
		for {
			select {
			case ev := <-events:
				if match(ev) {
					return time.Now()
				}
			case <-timeout:
				t.Fatalf("no %s within %s", what, waitFor)
			}
		}
	}
	isQueueEmpty := func(ev client.Event) bool { _, ok := ev.(*client.QueueEmpty); return ok }
	next("QueueEmpty", isQueueEmpty)

	p.Freeze()
	frozen := time.Now()
	var why error
	at := next("Disconnected", func(ev client.Event) bool {
		d, ok := ev.(*client.Disconnected)
		if ok {
			why = d.Err
		}
		return ok
	})
	took := at.Sub(frozen)
	t.Logf("silent server noticed after %s: %v", took.Round(time.Millisecond), why)
	if took > 5*time.Second {
		t.Fatalf("the silent server was noticed after %s, want within a few keep-alive rounds", took)
	}
	if !errors.Is(why, context.DeadlineExceeded) || !strings.Contains(why.Error(), "keep-alive") {
		t.Fatalf("disconnected by %v, want the keep-alive's deadline", why)
	}
	p.Thaw()
	next("QueueEmpty after the path is back", isQueueEmpty)
}
