// Copyright 2026 The Petrel Authors
// SPDX-License-Identifier: Apache-2.0

package server_test

import (
	"bytes"
	"crypto/ed25519"
	"encoding/base64"
	"encoding/hex"
	"net/http"
	"os"
	"path/filepath"
	"strings"
	"testing"
	"time"

	"google.golang.org/protobuf/proto"

	"github.com/petrelchat/petrel/internal/gateway"
	"github.com/petrelchat/petrel/internal/server"
	"github.com/petrelchat/petrel/internal/testserver"
	pb "github.com/petrelchat/petrel/proto/petrel/v1"
)

// Invariant 8: the server's log, at debug level, through live and stored sends, an unacked live
// delivery, a refused send, a malformed frame, a panic, and bulk registrations (one with a
// conflict, one with a wrong token), carries ids and counts, never ciphertext or the operator
// token.
func TestLogsCarryNoSecrets(t *testing.T) {
	var logs testserver.Buffer
	s := testserver.Start(t, testserver.WithLog(&logs), testserver.WithConfig(func(c *server.Config) {
		c.LiveAckTimeout.Duration = 100 * time.Millisecond
	}))
	alice, bob := onlinePair(t, s)
	secret := []byte("CIPHERTEXT-that-must-never-be-logged-7f3a")
	// Bob reads without acking: the live delivery times out and is stored.
	if r := alice.Send("m1", "bob", []string{bob.DeviceID}, secret); r.GetSendResult() == nil {
		t.Fatalf("want the unacked live delivery stored, got %v", r)
	}
	// A device list that is not bob's: refused.
	if r := alice.Send("m2", "bob", []string{"0123456789abcdef0123456789abcdef"}, secret); r.GetError() == nil {
		t.Fatalf("want a refusal, got %v", r)
	}
	alice.WriteRaw(append([]byte{0xff, 0xff}, secret...)) // malformed
	if f := alice.Read(); f.GetError().GetCode() != pb.ErrorCode_ERROR_CODE_MALFORMED_FRAME {
		t.Fatalf("want MALFORMED_FRAME, got %v", f)
	}
	func() {
		defer gateway.SetFrameHookForTest(func(*pb.Frame) { panic("poison frame") })()
		alice.Request(&pb.Frame{Body: &pb.Frame_Ping{Ping: &pb.Ping{}}})
	}()

	token, err := os.ReadFile(filepath.Join(s.DataDir(), "admin.token"))
	if err != nil {
		t.Fatal(err)
	}
	bulk := func(tok string, names ...string) int {
		req := &pb.BulkRegisterRequest{}
		for i, name := range names {
			seed := bytes.Repeat([]byte{byte(i + 1)}, ed25519.SeedSize)
			_, keys := testserver.NewKeys(t, 0)
			req.Devices = append(req.Devices, &pb.BulkDevice{Name: name, AuthKey: ed25519.NewKeyFromSeed(seed).Public().(ed25519.PublicKey), Keys: keys})
		}
		body, _ := proto.Marshal(req)
		hr, _ := http.NewRequest(http.MethodPost, s.AdminURL()+"/v1/admin/register-bulk", bytes.NewReader(body))
		hr.Header.Set("Authorization", "Bearer "+tok)
		resp, err := http.DefaultClient.Do(hr)
		if err != nil {
			t.Fatal(err)
		}
		resp.Body.Close()
		return resp.StatusCode
	}
	if code := bulk(strings.TrimSpace(string(token)), "carol", "bob"); code != http.StatusOK { // bob is taken
		t.Fatalf("bulk registration: HTTP %d", code)
	}
	if code := bulk("not-the-token-3b9c", "dave"); code != http.StatusUnauthorized && code != http.StatusForbidden {
		t.Fatalf("bulk registration with a wrong token: HTTP %d", code)
	}

	out := logs.String()
	if !strings.Contains(out, "one by one") || !strings.Contains(out, "panic handling frame") {
		t.Fatalf("the log does not show the paths this test exercised:\n%s", out)
	}
	for _, bad := range []string{string(secret), hex.EncodeToString(secret), base64.StdEncoding.EncodeToString(secret)[:40],
		strings.TrimSpace(string(token)), "not-the-token-3b9c"} {
		if strings.Contains(out, bad) {
			t.Errorf("the log contains %q", bad)
		}
	}
}
