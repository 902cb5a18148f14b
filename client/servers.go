// Copyright 2026 The Petrel Authors
// SPDX-License-Identifier: Apache-2.0

package client

import (
	"math/rand/v2"
	"net/url"
	"strings"
	"sync"
	"time"
)

const (
	// maxServers bounds the server URLs a client keeps: configured and learned together.
	maxServers = 16
	// maxServerURL bounds one learned URL's length; longer ones are ignored.
	maxServerURL = 256
	// skipAfter is how many failures in a row make a learned server be skipped for a while:
	// skipBase, doubled for each further failure, at most skipMax.
	skipAfter = 3
	skipBase  = 30 * time.Second
	skipMax   = 10 * time.Minute
	// dropAfter is how many failures in a row make a learned server be forgotten.
	dropAfter = 10
)

// server is one URL the client may connect to.
type server struct {
	url     string
	learned bool // from a Welcome (else configured: never skipped or forgotten)
	fails   int  // failures in a row
	skip    time.Time
}

// serverList holds the URLs a client may connect to: the configured ones first (in order), then
// those learned from Welcome messages. The client stays on the current URL while it works; when a
// connection to it fails or ends, it moves to another one, picked at random among those not
// being skipped (so the clients of a node that dies or drains spread over the others).
type serverList struct {
	// rnd returns a uniform value in [0, n); nil means math/rand/v2.
	rnd func(n int64) int64
	// pinned (Config.OnlyServer): the list is the one configured URL and learns none.
	pinned bool

	mu   sync.Mutex // guards the following fields
	list []*server
	cur  int
}

func newServerList(configured, learned []string) *serverList {
	s := &serverList{}
	for _, u := range configured {
		s.addLocked(u, false)
	}
	for _, u := range learned {
		s.addLocked(u, true)
	}
	return s
}

// normURL is the form URLs are compared in: without a trailing slash.
func normURL(u string) string { return strings.TrimSuffix(strings.TrimSpace(u), "/") }

// validServerURL reports whether u looks like a server's base URL (http or https, a host).
func validServerURL(u string) bool {
	if u == "" || len(u) > maxServerURL {
		return false
	}
	p, err := url.Parse(u)
	return err == nil && (p.Scheme == "http" || p.Scheme == "https") && p.Host != "" && p.User == nil
}

func (s *serverList) indexLocked(u string) int {
	for i, e := range s.list {
		if e.url == u {
			return i
		}
	}
	return -1
}

func (s *serverList) addLocked(u string, learned bool) bool {
	u = normURL(u)
	if !validServerURL(u) || s.indexLocked(u) >= 0 || len(s.list) >= maxServers {
		return false
	}
	s.list = append(s.list, &server{url: u, learned: learned})
	return true
}

// current returns the URL to connect to next ("" if there is none).
func (s *serverList) current() string {
	s.mu.Lock()
	defer s.mu.Unlock()
	if len(s.list) == 0 {
		return ""
	}
	return s.list[s.cur].url
}

// connected records that u authenticated: its failures are forgotten.
func (s *serverList) connected(u string) {
	s.mu.Lock()
	defer s.mu.Unlock()
	if i := s.indexLocked(u); i >= 0 {
		s.list[i].fails, s.list[i].skip = 0, time.Time{}
	}
}

// failed records that a connection to u failed or ended, and moves to another URL: one picked at
// random among the others not being skipped; if every other one is, the one whose skip ends
// first. A learned URL failing skipAfter times in a row is skipped for a while, and forgotten
// after dropAfter.
func (s *serverList) failed(u string, now time.Time) {
	s.mu.Lock()
	defer s.mu.Unlock()
	i := s.indexLocked(u)
	if i < 0 {
		return
	}
	e := s.list[i]
	e.fails++
	if e.learned && e.fails >= skipAfter {
		d := skipBase
		for k := skipAfter; k < e.fails && d < skipMax; k++ {
			d *= 2
		}
		e.skip = now.Add(min(d, skipMax))
	}
	if e.learned && e.fails >= dropAfter {
		s.list = append(s.list[:i], s.list[i+1:]...)
		i = -1 // every remaining URL is "another"
	}
	if len(s.list) == 0 {
		s.cur = 0
		return
	}
	var ok []int
	best := -1
	for j, o := range s.list {
		if j == i {
			continue
		}
		if !now.Before(o.skip) {
			ok = append(ok, j)
		} else if best < 0 || o.skip.Before(s.list[best].skip) {
			best = j
		}
	}
	switch {
	case len(ok) > 0:
		rnd := s.rnd
		if rnd == nil {
			rnd = rand.Int64N
		}
		s.cur = ok[rnd(int64(len(ok)))]
	case best >= 0 && (i < 0 || s.list[best].skip.Before(s.list[i].skip)):
		s.cur = best
	case i >= 0:
		s.cur = i // the only one, or the others are skipped for longer
	default:
		s.cur = best
	}
}

// learn adds the URLs of a Welcome it does not hold yet (as far as there is room); it reports
// whether the list changed. No downgrade: when every configured URL is https, learned http URLs
// are ignored.
func (s *serverList) learn(urls []string) bool {
	if s.pinned {
		return false
	}
	s.mu.Lock()
	defer s.mu.Unlock()
	tlsOnly := false
	for _, e := range s.list {
		if e.learned {
			continue
		}
		if !strings.HasPrefix(e.url, "https://") {
			tlsOnly = false
			break
		}
		tlsOnly = true
	}
	changed := false
	for _, u := range urls {
		if tlsOnly && !strings.HasPrefix(normURL(u), "https://") {
			continue
		}
		if s.addLocked(u, true) {
			changed = true
		}
	}
	return changed
}

// urls returns every URL, configured first.
func (s *serverList) urls() []string {
	s.mu.Lock()
	defer s.mu.Unlock()
	out := make([]string, len(s.list))
	for i, e := range s.list {
		out[i] = e.url
	}
	return out
}

// learnedURLs returns the learned URLs (what the store keeps besides the configured ones).
func (s *serverList) learnedURLs() []string {
	s.mu.Lock()
	defer s.mu.Unlock()
	var out []string
	for _, e := range s.list {
		if e.learned {
			out = append(out, e.url)
		}
	}
	return out
}
