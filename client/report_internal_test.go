// Copyright 2026 The Petrel Authors
// SPDX-License-Identifier: Apache-2.0

package client

import (
	"testing"
	"time"
)

// TestReporterBounds checks when automatic reports begin: only after AutoReportAfter and
// autoReportMinFails failures in a row, one at a time, one an hour, autoReportMaxPerRun a run.
func TestReporterBounds(t *testing.T) {
	cfg := Config{AutoReportAfter: 2 * time.Minute}
	r := newReporter("id", &cfg, func(string, ...any) {})
	t0 := time.Date(2026, 1, 1, 0, 0, 0, 0, time.UTC)
	begun := func() bool {
		select {
		case <-r.due:
			r.mu.Lock()
			r.busy = false // the report was sent
			r.mu.Unlock()
			return true
		default:
			return false
		}
	}
	// Three quick failures, then more within two minutes: nothing.
	for i := range 10 {
		r.failed("http://h", t0.Add(time.Duration(i)*10*time.Second))
	}
	if begun() {
		t.Fatal("report before AutoReportAfter")
	}
	// A connection in between starts the count again.
	r.connected()
	r.failed("http://h", t0.Add(3*time.Minute))
	r.failed("http://h", t0.Add(5*time.Minute+time.Second))
	if begun() {
		t.Fatal("report after 2 failures")
	}
	r.failed("http://h", t0.Add(5*time.Minute+2*time.Second))
	if !begun() {
		t.Fatal("no report after 2m and 3 failures")
	}
	// Failing on: the next one an hour after the first, and no more than three per run.
	at := t0.Add(5*time.Minute + 2*time.Second)
	r.failed("http://h", at.Add(59*time.Minute))
	if begun() {
		t.Fatal("second report within the hour")
	}
	n := 1
	for h := 1; h <= 10; h++ {
		r.failed("http://h", at.Add(time.Duration(h)*time.Hour))
		if begun() {
			n++
		}
	}
	if n != autoReportMaxPerRun {
		t.Fatalf("%d reports in a run, want %d", n, autoReportMaxPerRun)
	}
}

// TestReporterOneAtATime: while a report is being sent, no other begins.
func TestReporterOneAtATime(t *testing.T) {
	cfg := Config{AutoReportAfter: time.Second}
	r := newReporter("id", &cfg, func(string, ...any) {})
	t0 := time.Now()
	for i := range 5 {
		r.failed("http://h", t0.Add(time.Duration(i)*time.Second))
	}
	<-r.due // taken by the worker, still sending (busy)
	r.failed("http://h", t0.Add(2*time.Hour))
	select {
	case <-r.due:
		t.Fatal("a second report while one is being sent")
	default:
	}
}
