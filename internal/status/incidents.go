// Copyright 2026 The Petrel Authors
// SPDX-License-Identifier: Apache-2.0

package status

import (
	"context"
	"crypto/rand"
	"encoding/hex"
	"encoding/json"
	"errors"
	"fmt"
	"log/slog"
	"sort"
	"strings"
	"sync"
	"time"
	"unicode/utf8"

	"github.com/nats-io/nats.go/jetstream"
)

// Incident states and update kinds.
const (
	IncidentOpen     = "open"
	IncidentResolved = "resolved"
	KindUpdate       = "update"
)

// Bounds of incidents.
const (
	// MaxIncidentText bounds one note's text.
	MaxIncidentText = 1000
	// MaxIncidentUpdates bounds the notes of one incident (open, updates, resolve).
	MaxIncidentUpdates = 100
	// MaxIncidentsListed bounds what a list reads and the page keeps.
	MaxIncidentsListed = 500
	// ResolvedShownFor is how long the page keeps showing a resolved incident.
	ResolvedShownFor = 7 * 24 * time.Hour
)

// Errors of the incident store, for the admin handler's status codes.
var (
	ErrNoIncident        = errors.New("no such incident")
	ErrAmbiguousIncident = errors.New("more than one incident is open")
	ErrIncidentResolved  = errors.New("the incident is already resolved")
	ErrBadIncidentText   = errors.New("bad incident text")
	ErrIncidentStorage   = errors.New("incident storage unavailable")
)

// IncidentUpdate is one note of an incident.
type IncidentUpdate struct {
	At   time.Time `json:"at"`
	Kind string    `json:"kind"` // open, update or resolved
	Text string    `json:"text"`
}

// IncidentView is an incident as stored (JSON in the incidents bucket) and shown.
type IncidentView struct {
	ID         string           `json:"id"`
	State      string           `json:"state"` // open or resolved
	OpenedAt   time.Time        `json:"opened_at"`
	ResolvedAt *time.Time       `json:"resolved_at,omitempty"`
	Updates    []IncidentUpdate `json:"updates"`
}

// Incidents keeps operators' incident notes durably in a KV bucket (one key per incident) and a
// copy in memory for the page, kept current by a watch of the bucket (so that every node shows
// what any node wrote).
type Incidents struct {
	kv  jetstream.KeyValue
	now func() time.Time
	log *slog.Logger

	mu    sync.Mutex // guards items
	items map[string]IncidentView
}

// NewIncidents returns the incident store over kv (nil: none configured; every call fails with
// ErrIncidentStorage).
func NewIncidents(kv jetstream.KeyValue, now func() time.Time, log *slog.Logger) *Incidents {
	if now == nil {
		now = time.Now
	}
	if log == nil {
		log = slog.Default()
	}
	return &Incidents{kv: kv, now: now, log: log, items: map[string]IncidentView{}}
}

func checkText(text string) (string, error) {
	text = strings.TrimSpace(text)
	switch {
	case text == "":
		return "", fmt.Errorf("%w: the text is empty (say what users see and what is being done)", ErrBadIncidentText)
	case len(text) > MaxIncidentText:
		return "", fmt.Errorf("%w: %d bytes, at most %d", ErrBadIncidentText, len(text), MaxIncidentText)
	case !utf8.ValidString(text):
		return "", fmt.Errorf("%w: not UTF-8", ErrBadIncidentText)
	}
	return text, nil
}

// Open records a new open incident.
func (s *Incidents) Open(ctx context.Context, text string) (IncidentView, error) {
	text, err := checkText(text)
	if err != nil {
		return IncidentView{}, err
	}
	if s.kv == nil {
		return IncidentView{}, ErrIncidentStorage
	}
	now := s.now().UTC()
	var r [3]byte
	_, _ = rand.Read(r[:])
	inc := IncidentView{ID: now.Format("20060102-150405") + "-" + hex.EncodeToString(r[:]), State: IncidentOpen, OpenedAt: now,
		Updates: []IncidentUpdate{{At: now, Kind: IncidentOpen, Text: text}}}
	b, _ := json.Marshal(inc)
	if _, err := s.kv.Create(ctx, inc.ID, b); err != nil {
		return IncidentView{}, fmt.Errorf("%w: %w", ErrIncidentStorage, err)
	}
	s.apply(inc)
	return inc, nil
}

// Update adds a note to an open incident (id "": the only open one).
func (s *Incidents) Update(ctx context.Context, id, text string) (IncidentView, error) {
	return s.change(ctx, id, text, false)
}

// Resolve closes an open incident with a last note (id "": the only open one).
func (s *Incidents) Resolve(ctx context.Context, id, text string) (IncidentView, error) {
	return s.change(ctx, id, text, true)
}

func (s *Incidents) change(ctx context.Context, id, text string, resolve bool) (IncidentView, error) {
	text, err := checkText(text)
	if err != nil {
		return IncidentView{}, err
	}
	if s.kv == nil {
		return IncidentView{}, ErrIncidentStorage
	}
	if id == "" {
		if id, err = s.onlyOpen(ctx); err != nil {
			return IncidentView{}, err
		}
	}
	for attempt := 0; ; attempt++ {
		e, err := s.kv.Get(ctx, id)
		if errors.Is(err, jetstream.ErrKeyNotFound) || errors.Is(err, jetstream.ErrInvalidKey) {
			return IncidentView{}, fmt.Errorf("%w: %q (petrel admin incident list shows the ids)", ErrNoIncident, id)
		}
		if err != nil {
			return IncidentView{}, fmt.Errorf("%w: %w", ErrIncidentStorage, err)
		}
		var inc IncidentView
		if err := json.Unmarshal(e.Value(), &inc); err != nil {
			return IncidentView{}, fmt.Errorf("%w: incident %s is damaged: %w", ErrIncidentStorage, id, err)
		}
		if inc.State == IncidentResolved {
			return IncidentView{}, fmt.Errorf("%w: %s (open a new one)", ErrIncidentResolved, id)
		}
		now := s.now().UTC()
		kind := KindUpdate
		if resolve {
			kind, inc.State, inc.ResolvedAt = IncidentResolved, IncidentResolved, &now
		}
		inc.Updates = append(inc.Updates, IncidentUpdate{At: now, Kind: kind, Text: text})
		if len(inc.Updates) > MaxIncidentUpdates { // keep the opening note and the newest ones
			inc.Updates = append(inc.Updates[:1], inc.Updates[len(inc.Updates)-MaxIncidentUpdates+1:]...)
		}
		b, _ := json.Marshal(inc)
		_, err = s.kv.Update(ctx, id, b, e.Revision())
		if err == nil {
			s.apply(inc)
			return inc, nil
		}
		var apiErr *jetstream.APIError
		if attempt < 3 && errors.As(err, &apiErr) && apiErr.ErrorCode == jetstream.JSErrCodeStreamWrongLastSequence {
			continue // another operator wrote in between: read again
		}
		return IncidentView{}, fmt.Errorf("%w: %w", ErrIncidentStorage, err)
	}
}

// onlyOpen is the id of the one open incident.
func (s *Incidents) onlyOpen(ctx context.Context) (string, error) {
	all, err := s.List(ctx)
	if err != nil {
		return "", err
	}
	var open []string
	for _, inc := range all {
		if inc.State == IncidentOpen {
			open = append(open, inc.ID)
		}
	}
	switch len(open) {
	case 0:
		return "", fmt.Errorf("%w: none is open (open one with petrel admin incident open \"TEXT\")", ErrNoIncident)
	case 1:
		return open[0], nil
	}
	return "", fmt.Errorf("%w (%s): say which with --id", ErrAmbiguousIncident, strings.Join(open, ", "))
}

// List reads every incident from the bucket (at most MaxIncidentsListed), newest first.
func (s *Incidents) List(ctx context.Context) ([]IncidentView, error) {
	if s.kv == nil {
		return nil, ErrIncidentStorage
	}
	lister, err := s.kv.ListKeys(ctx)
	if err != nil {
		return nil, fmt.Errorf("%w: %w", ErrIncidentStorage, err)
	}
	var keys []string
	for k := range lister.Keys() {
		keys = append(keys, k)
	}
	_ = lister.Stop()
	sort.Sort(sort.Reverse(sort.StringSlice(keys))) // ids start with their opening time
	if len(keys) > MaxIncidentsListed {
		keys = keys[:MaxIncidentsListed]
	}
	out := make([]IncidentView, 0, len(keys))
	for _, k := range keys {
		e, err := s.kv.Get(ctx, k)
		if errors.Is(err, jetstream.ErrKeyNotFound) {
			continue
		}
		if err != nil {
			return nil, fmt.Errorf("%w: %w", ErrIncidentStorage, err)
		}
		var inc IncidentView
		if json.Unmarshal(e.Value(), &inc) == nil {
			out = append(out, inc)
			s.apply(inc)
		}
	}
	return out, nil
}

// apply puts an incident into the memory copy, keeping it bounded.
func (s *Incidents) apply(inc IncidentView) {
	s.mu.Lock()
	defer s.mu.Unlock()
	if old, ok := s.items[inc.ID]; ok && len(old.Updates) > len(inc.Updates) {
		return // a stale copy (a watch behind a write of ours)
	}
	s.items[inc.ID] = inc
	if len(s.items) > MaxIncidentsListed {
		var oldest string
		for id := range s.items {
			if oldest == "" || id < oldest {
				oldest = id
			}
		}
		delete(s.items, oldest)
	}
}

// Shown is what the page shows: the open incidents and those resolved within ResolvedShownFor,
// newest first. Memory only.
func (s *Incidents) Shown() []IncidentView {
	cut := s.now().Add(-ResolvedShownFor)
	s.mu.Lock()
	out := make([]IncidentView, 0, len(s.items))
	for _, inc := range s.items {
		if inc.State == IncidentOpen || (inc.ResolvedAt != nil && inc.ResolvedAt.After(cut)) {
			out = append(out, inc)
		}
	}
	s.mu.Unlock()
	sort.Slice(out, func(i, j int) bool {
		if (out[i].State == IncidentOpen) != (out[j].State == IncidentOpen) {
			return out[i].State == IncidentOpen
		}
		return out[i].ID > out[j].ID
	})
	return out
}

// watch keeps the memory copy current until ctx ends: a watch of the whole bucket (it starts
// with every current entry), made again with a jittered backoff when it cannot be made (storage
// down).
func (s *Incidents) watch(ctx context.Context) {
	if s.kv == nil {
		return
	}
	watchBucket(ctx, s.kv, s.log, "incidents", func(e jetstream.KeyValueEntry) {
		if e == nil || e.Operation() != jetstream.KeyValuePut {
			return // nil: the initial values are all delivered
		}
		var inc IncidentView
		if json.Unmarshal(e.Value(), &inc) == nil && inc.ID != "" {
			s.apply(inc)
		}
	})
}
