// Copyright 2026 The Petrel Authors
// SPDX-License-Identifier: Apache-2.0

package status

import (
	"encoding/json"
	"net/http"
	"strings"
	"sync"
	"time"
	"unicode/utf8"
)

// AdminReportsPath: GET lists the notes of the latest problem reports received by this node (on
// the admin listener, behind the operator token).
const AdminReportsPath = "/v1/admin/reports"

// MaxReportNotes is how many report notes a node keeps (memory only): past it the oldest goes.
const MaxReportNotes = 100

// ReportNote is the note of one problem report, as operators read it: no address, no client id.
// Note is the user's text as sent: escape it wherever it is shown.
type ReportNote struct {
	At       time.Time `json:"at"`
	Category string    `json:"category"`
	Note     string    `json:"note"`
}

// ReportNoteList is the answer of GET /v1/admin/reports: the notes this node kept, newest first.
type ReportNoteList struct {
	Node  string       `json:"node"`
	Max   int          `json:"max"`
	Notes []ReportNote `json:"notes"`
}

// noteRing keeps the last MaxReportNotes notes.
type noteRing struct {
	mu    sync.Mutex // guards the fields below
	items [MaxReportNotes]ReportNote
	next  int // where the next note goes
	n     int // how many are kept
}

// add keeps a report's note (a blank note is not kept). The note is already within MaxNoteBytes;
// invalid UTF-8 is replaced.
func (r *noteRing) add(at time.Time, category, note string) {
	note = strings.TrimSpace(note)
	if note == "" {
		return
	}
	if !utf8.ValidString(note) {
		note = strings.ToValidUTF8(note, "\uFFFD")
	}
	r.mu.Lock()
	defer r.mu.Unlock()
	r.items[r.next] = ReportNote{At: at.UTC(), Category: category, Note: note}
	r.next = (r.next + 1) % MaxReportNotes
	r.n = min(r.n+1, MaxReportNotes)
}

// list is the kept notes, newest first.
func (r *noteRing) list() []ReportNote {
	r.mu.Lock()
	defer r.mu.Unlock()
	out := make([]ReportNote, 0, r.n)
	for i := 1; i <= r.n; i++ {
		out = append(out, r.items[(r.next-i+MaxReportNotes)%MaxReportNotes])
	}
	return out
}

func (s *Service) listReportNotes(w http.ResponseWriter, _ *http.Request) {
	w.Header().Set("Content-Type", "application/json")
	w.Header().Set("Cache-Control", "no-store")
	// encoding/json escapes <, > and & in strings: the notes are user text.
	_ = json.NewEncoder(w).Encode(ReportNoteList{Node: s.cfg.Node, Max: MaxReportNotes, Notes: s.notes.list()})
}
