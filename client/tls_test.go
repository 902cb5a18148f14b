// Copyright 2026 The Petrel Authors
// SPDX-License-Identifier: Apache-2.0

package client_test

import (
	"os"
	"os/exec"
	"strings"
	"testing"

	"github.com/petrelchat/petrel/internal/testserver"
)

// TestTLSEndToEnd registers two devices and relays a message between them through the SDK over
// https/wss. The SDK trusts the system's roots, so the test runs itself again in a child process
// whose roots are the test certificate (SSL_CERT_FILE, read once per process).
func TestTLSEndToEnd(t *testing.T) {
	if os.Getenv("PETREL_TLS_TEST_CHILD") == "" {
		cert := testserver.SelfSigned(t, testserver.ECDSA)
		cmd := exec.Command(os.Args[0], "-test.run=^TestTLSEndToEnd$", "-test.count=1", "-test.v")
		cmd.Env = append(os.Environ(), "PETREL_TLS_TEST_CHILD="+cert.CertFile+"\n"+cert.KeyFile, "SSL_CERT_FILE="+cert.CertFile)
		out, err := cmd.CombinedOutput()
		if err != nil || !strings.Contains(string(out), "--- PASS: TestTLSEndToEnd") {
			t.Fatalf("child: %v\n%s", err, out)
		}
		return
	}
	files := strings.SplitN(os.Getenv("PETREL_TLS_TEST_CHILD"), "\n", 2)
	if len(files) != 2 {
		t.Fatal("PETREL_TLS_TEST_CHILD: want the certificate and key files")
	}
	cert := testserver.Cert{CertFile: files[0], KeyFile: files[1]}
	srv := testserver.Start(t, testserver.WithTLS(cert))
	if u := srv.URL(); !strings.HasPrefix(u, "https://") {
		t.Fatalf("URL %s", u)
	}
	alice := register(t, srv, "alice", devOpts{}).start()
	bob := register(t, srv, "bob", devOpts{}).start()
	bob.waitQueueEmpty()
	id := alice.send("bob", "hello over TLS")
	if m := bob.nextMessage(); m.ID != id || m.From != "alice" || m.Text != "hello over TLS" {
		t.Fatalf("bob got %+v", m)
	}
	alice.waitDelivered(id)
}
