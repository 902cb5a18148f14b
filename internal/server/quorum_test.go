// Copyright 2026 The Petrel Authors
// SPDX-License-Identifier: Apache-2.0

package server_test

import (
	"bufio"
	"fmt"
	"io"
	"net/http"
	"strconv"
	"strings"
	"testing"
	"time"

	"github.com/petrelchat/petrel/internal/testserver"
	pb "github.com/petrelchat/petrel/proto/petrel/v1"
)

// A node whose JetStream stops answering is not ready within a few seconds, says why, and counts
// the loss once (petrel_cluster_quorum 0, petrel_cluster_quorum_lost_total 1); its connections
// keep working.
func TestReadyzWithoutQuorum(t *testing.T) {
	s := testserver.Start(t)
	if code, _ := get(t, s.URL()+"/readyz"); code != http.StatusOK {
		t.Fatalf("readyz before: %d", code)
	}
	if v := gauge(t, s.AdminURL(), "petrel_cluster_quorum"); v != 1 {
		t.Fatalf("petrel_cluster_quorum = %v before, want 1", v)
	}
	alice := testserver.Dial(t, s.URL())
	alice.MustRegister("alice")
	if err := s.Server().Bus().DisableJetStreamForTest(); err != nil {
		t.Fatal(err)
	}
	waitUntil(t, 15*time.Second, func() error {
		if v := gauge(t, s.AdminURL(), "petrel_cluster_quorum"); v != 0 {
			return fmt.Errorf("petrel_cluster_quorum = %v", v)
		}
		return nil
	})
	if code, body := get(t, s.URL()+"/readyz"); code != http.StatusServiceUnavailable || !strings.HasPrefix(body, "not ready: ") {
		t.Fatalf("readyz %d %q, want 503 with a reason", code, body)
	}
	if v := gauge(t, s.AdminURL(), "petrel_cluster_quorum_lost_total"); v != 1 {
		t.Fatalf("petrel_cluster_quorum_lost_total = %v, want 1", v)
	}
	if p := alice.Request(&pb.Frame{Body: &pb.Frame_Ping{Ping: &pb.Ping{}}}); p.GetPong() == nil {
		t.Fatalf("connection broken: %v", p)
	}
}

func get(t *testing.T, url string) (int, string) {
	t.Helper()
	resp, err := http.Get(url)
	if err != nil {
		t.Fatal(err)
	}
	defer resp.Body.Close()
	b, _ := io.ReadAll(resp.Body)
	return resp.StatusCode, string(b)
}

// gauge reads one unlabelled metric from the admin listener.
func gauge(t *testing.T, adminURL, name string) float64 {
	t.Helper()
	resp, err := http.Get(adminURL + "/metrics")
	if err != nil {
		t.Fatal(err)
	}
	defer resp.Body.Close()
	sc := bufio.NewScanner(resp.Body)
	sc.Buffer(make([]byte, 1<<20), 1<<20)
	for sc.Scan() {
		if v, ok := strings.CutPrefix(sc.Text(), name+" "); ok {
			f, err := strconv.ParseFloat(v, 64)
			if err != nil {
				t.Fatal(err)
			}
			return f
		}
	}
	t.Fatalf("metric %s not found", name)
	return 0
}

// waitUntil polls cond (a state no event announces: the quorum watch's cached view) until nil.
func waitUntil(t *testing.T, d time.Duration, cond func() error) {
	t.Helper()
	deadline := time.Now().Add(d)
	for {
		err := cond()
		if err == nil {
			return
		}
		if time.Now().After(deadline) {
			t.Fatalf("not within %s: %v", d, err)
		}
		time.Sleep(50 * time.Millisecond)
	}
}
