// Copyright 2026 The Petrel Authors
// SPDX-License-Identifier: Apache-2.0

package testserver

import (
	"bytes"
	"strings"
	"sync"
	"testing"
	"time"
)

// Buffer is an output or log destination that a command's goroutines write to while a test reads
// it. The zero value is ready to use.
type Buffer struct {
	mu      sync.Mutex
	b       bytes.Buffer
	changed chan struct{} // closed and replaced by every Write; made on first use
}

func (s *Buffer) Write(p []byte) (int, error) {
	s.mu.Lock()
	defer s.mu.Unlock()
	n, err := s.b.Write(p)
	if s.changed != nil {
		close(s.changed)
	}
	s.changed = make(chan struct{})
	return n, err
}

func (s *Buffer) String() string {
	s.mu.Lock()
	defer s.mu.Unlock()
	return s.b.String()
}

// WaitFor waits until the buffer contains sub, failing t after within.
func (s *Buffer) WaitFor(t testing.TB, sub string, within time.Duration) {
	t.Helper()
	deadline := time.After(within)
	for {
		s.mu.Lock()
		if s.changed == nil {
			s.changed = make(chan struct{})
		}
		ok, ch := strings.Contains(s.b.String(), sub), s.changed
		s.mu.Unlock()
		if ok {
			return
		}
		select {
		case <-ch:
		case <-deadline:
			t.Fatalf("output never contained %q; got:\n%s", sub, s.String())
		}
	}
}
