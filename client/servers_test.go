// Copyright 2026 The Petrel Authors
// SPDX-License-Identifier: Apache-2.0

package client

import (
	"fmt"
	"slices"
	"testing"
	"time"
)

func TestServerListMergeAndBound(t *testing.T) {
	s := newServerList([]string{"http://a:1/", "http://b:2", "http://a:1", "not a url", ""}, []string{"http://c:3"})
	if got, want := s.urls(), []string{"http://a:1", "http://b:2", "http://c:3"}; !slices.Equal(got, want) {
		t.Fatalf("urls = %v, want %v", got, want)
	}
	if s.current() != "http://a:1" {
		t.Fatalf("current = %s, want the first configured URL", s.current())
	}
	if !s.learn([]string{"http://b:2", "https://d:4/", "ftp://e", "http://c:3"}) {
		t.Fatal("learn of a new URL reported no change")
	}
	if s.learn([]string{"http://b:2", "https://d:4"}) {
		t.Fatal("learn of known URLs reported a change")
	}
	if got, want := s.learnedURLs(), []string{"http://c:3", "https://d:4"}; !slices.Equal(got, want) {
		t.Fatalf("learned = %v, want %v", got, want)
	}
	var many []string
	for i := range 40 {
		many = append(many, fmt.Sprintf("http://n%d:7070", i))
	}
	s.learn(many)
	if n := len(s.urls()); n != maxServers {
		t.Fatalf("%d URLs kept, want the bound %d", n, maxServers)
	}
}

// TestServerListNoDowngrade: a client configured with https URLs only does not learn http ones.
func TestServerListNoDowngrade(t *testing.T) {
	s := newServerList([]string{"https://a.example"}, nil)
	s.learn([]string{"http://b.example:7070", "https://c.example"})
	if got, want := s.urls(), []string{"https://a.example", "https://c.example"}; !slices.Equal(got, want) {
		t.Fatalf("urls = %v, want %v", got, want)
	}
	mixed := newServerList([]string{"https://a.example", "http://127.0.0.1:7070"}, nil)
	mixed.learn([]string{"http://127.0.0.1:7071"})
	if n := len(mixed.urls()); n != 3 {
		t.Fatalf("mixed configuration: %v, want the http URL learned", mixed.urls())
	}
}

// TestServerListMovesOnFailure: a failure moves to another URL, picked among the others; a
// success keeps the client where it is.
func TestServerListMovesOnFailure(t *testing.T) {
	s := newServerList([]string{"http://a:1"}, []string{"http://b:2", "http://c:3"})
	now := time.Unix(1000, 0)
	seen := map[string]bool{}
	for i := range 60 {
		u := s.current()
		s.failed(u, now)
		next := s.current()
		if next == u {
			t.Fatalf("attempt %d: stayed on %s after its failure", i, u)
		}
		seen[next] = true
		s.connected(next) // each one works: no URL reaches the skip threshold
	}
	if len(seen) != 3 {
		t.Fatalf("moved only among %v, want all three", seen)
	}
	one := newServerList([]string{"http://only:1"}, nil)
	one.failed("http://only:1", now)
	if one.current() != "http://only:1" {
		t.Fatalf("single URL: current = %q", one.current())
	}
}

// TestServerListSkipsFailingLearned: a learned URL failing skipAfter times in a row is skipped
// until its time is up, and forgotten after dropAfter failures; configured URLs are never
// skipped.
func TestServerListSkipsFailingLearned(t *testing.T) {
	s := newServerList([]string{"http://a:1"}, []string{"http://dead:2"})
	s.rnd = func(n int64) int64 { return 0 }
	now := time.Unix(1000, 0)
	for i := range skipAfter {
		// Alternate: the dead node fails, then the client moves back to a, which fails too.
		if s.current() != "http://a:1" {
			t.Fatalf("round %d: current = %s, want a", i, s.current())
		}
		s.failed("http://a:1", now)
		if s.current() != "http://dead:2" {
			t.Fatalf("round %d: current = %s, want dead (not skipped yet)", i, s.current())
		}
		s.failed("http://dead:2", now)
	}
	// dead has failed skipAfter times: a's failure keeps the client on a.
	s.failed("http://a:1", now)
	if s.current() != "http://a:1" {
		t.Fatalf("current = %s, want a while dead is skipped", s.current())
	}
	// Once the skip is over, dead is tried again.
	s.failed("http://a:1", now.Add(skipBase+time.Second))
	if s.current() != "http://dead:2" {
		t.Fatalf("current = %s after the skip ended, want dead", s.current())
	}
	for range dropAfter {
		s.failed("http://dead:2", now.Add(time.Hour))
	}
	if got := s.urls(); !slices.Equal(got, []string{"http://a:1"}) {
		t.Fatalf("urls = %v, want the dead learned URL forgotten", got)
	}
	// A configured URL is never skipped or forgotten.
	for range 2 * dropAfter {
		s.failed("http://a:1", now)
	}
	if s.current() != "http://a:1" {
		t.Fatalf("configured URL lost: %v", s.urls())
	}
}

// TestReconnectDelaysSpread: the delays between the attempts of many clients are spread (full
// jitter), not packed at one value.
func TestReconnectDelaysSpread(t *testing.T) {
	b := backoff{base: 250 * time.Millisecond, max: 30 * time.Second}
	distinct := map[time.Duration]bool{}
	for range 100 {
		d := b.delay(2)
		if d < 0 || d > time.Second {
			t.Fatalf("delay(2) = %v outside [0, 1s]", d)
		}
		distinct[d] = true
	}
	if len(distinct) < 50 {
		t.Fatalf("only %d distinct delays in 100", len(distinct))
	}
}
