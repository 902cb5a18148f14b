// Copyright 2026 The Petrel Authors
// SPDX-License-Identifier: Apache-2.0

package client_test

import (
	"errors"
	"strings"
	"testing"
	"time"

	"github.com/petrelchat/petrel/client"
	"github.com/petrelchat/petrel/client/store"
	"github.com/petrelchat/petrel/internal/testserver"
)

// A connected device of an account recovered on another home is closed by the server with
// DEVICE_REMOVED: its Run ends with ErrDeviceRemoved, whose text says so in words, while the
// recovered device runs as the account's primary.
func TestRecoverClosesConnectedDevice(t *testing.T) {
	srv := testserver.Start(t)
	old := register(t, srv, "alice", devOpts{}).start()
	old.waitQueueEmpty() // connected and authenticated
	key, err := client.RecoveryKey(old.st)
	if err != nil {
		t.Fatal(err)
	}

	st, err := store.Open(t.TempDir(), store.Options{NoSync: true})
	if err != nil {
		t.Fatal(err)
	}
	ctx, cancel := ctxT()
	defer cancel()
	acct, err := client.Recover(ctx, st, client.RecoverOptions{ServerURL: srv.URL(), Name: "alice", RecoveryKey: key, PreKeys: 5})
	st.Close()
	if err != nil {
		t.Fatal(err)
	}
	select {
	case err := <-old.runErr:
		if !errors.Is(err, client.ErrDeviceRemoved) {
			t.Fatalf("the old device's Run ended with %v, want ErrDeviceRemoved (DEVICE_REMOVED)", err)
		}
		if !strings.Contains(err.Error(), "this device was removed from its account") {
			t.Fatalf("the old device's error does not say so in words: %q", err)
		}
	case <-time.After(waitFor):
		t.Fatal("the old device stayed connected after the account was recovered elsewhere")
	}
	if !acct.Primary || acct.DeviceID == "" {
		t.Fatalf("recovered account: %+v", acct)
	}
}
