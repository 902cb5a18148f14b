// Copyright 2026 The Petrel Authors
// SPDX-License-Identifier: Apache-2.0

// Package status is Petrel's outage transparency: in-memory aggregates of black-box probes, user
// problem reports, the send error rate and delivery lag, and operators' incident notes, served as
// the status page (GET /status, /status.json) on the public listener from its own goroutines, so
// that it keeps answering while the messaging path or the store is sick.
package status

import "time"

// Paths on the public listener.
const (
	// PagePath is the HTML status page.
	PagePath = "/status"
	// JSONPath is the same state as JSON.
	JSONPath = "/status.json"
	// ReportsPath takes user problem reports: POST, JSON ReportRequest, anonymous.
	ReportsPath = "/v1/reports"
	// ProbesPath takes probe results pushed by an external prober: POST, JSON ProbeBatch, with
	// "Authorization: Bearer TOKEN" (the operator token or the probe token).
	ProbesPath = "/v1/probes"
)

// Report categories (the CLI's --category values and ReportRequest.Category).
const (
	CategoryCantConnect  = "cant-connect"
	CategoryNotSending   = "not-sending"
	CategoryNotReceiving = "not-receiving"
	CategoryOther        = "other"
)

// ReportRequest is one user problem report (no content, no account: anonymous).
type ReportRequest struct {
	Category string `json:"category"`
	// Note is free text from the user, at most MaxNoteBytes.
	Note string `json:"note,omitempty"`
	// Client is a random id the reporting client keeps for a while, so that only its first
	// report in a window counts; it identifies nothing else.
	Client string `json:"client,omitempty"`
}

// MaxNoteBytes bounds a report's note.
const MaxNoteBytes = 500

// ProbeResult is one black-box probe: two probe accounts sent a message through the public path
// of one node and received it (or did not).
type ProbeResult struct {
	// Node is the URL (or node name) that was probed.
	Node string `json:"node"`
	// Source says who probed: "self" for a node's own prober, otherwise the external prober's
	// name (--name, default its host name).
	Source string `json:"source"`
	// At is when the probe started.
	At time.Time `json:"at"`
	// OK: the message went through and was received and acked within the probe's deadline.
	OK bool `json:"ok"`
	// LatencyMS is the end-to-end latency (send to receipt by the other probe account) in
	// milliseconds; 0 when OK is false.
	LatencyMS float64 `json:"latency_ms"`
	// Error says what failed, in words (no secrets, no content); empty when OK.
	Error string `json:"error,omitempty"`
}

// ProbeBatch is what an external prober pushes to ProbesPath.
type ProbeBatch struct {
	Results []ProbeResult `json:"results"`
}

// ProbeSink takes probe results: the status aggregates implement it, a node's own prober and
// the ProbesPath handler feed it.
type ProbeSink interface {
	RecordProbe(ProbeResult)
}
