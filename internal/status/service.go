// Copyright 2026 The Petrel Authors
// SPDX-License-Identifier: Apache-2.0

package status

import (
	"bytes"
	"context"
	"crypto/subtle"
	"encoding/json"
	"errors"
	"fmt"
	"io"
	"log/slog"
	"math"
	"net"
	"net/http"
	"strconv"
	"strings"
	"sync"
	"sync/atomic"
	"time"

	"github.com/nats-io/nats.go"
	"github.com/nats-io/nats.go/jetstream"
	"github.com/prometheus/client_golang/prometheus"

	"github.com/petrelchat/petrel/internal/keyrate"
)

// Admin paths (on the admin listener, behind the operator token).
const (
	// AdminIncidentsPath: GET lists incidents; POST {"action","id","text"} opens, updates or
	// resolves one.
	AdminIncidentsPath = "/v1/admin/incidents"
)

// Defaults of Config.
const (
	DefaultShareInterval         = 10 * time.Second
	DefaultLagDegraded           = 2 * time.Second
	DefaultProbeSlow             = 3 * time.Second
	DefaultReportsPerIPPerMinute = 2
	// MaxReportBytes bounds a POST /v1/reports body.
	MaxReportBytes = 2048
	// MaxProbeBatchBytes bounds a POST /v1/probes body, MaxProbeBatch its results.
	MaxProbeBatchBytes = 64 << 10
	MaxProbeBatch      = 100
	// pageCacheFor is how long a rendered page is served again.
	pageCacheFor = time.Second
	// maxPeers bounds the other nodes' summaries kept.
	maxPeers = 64
	// maxSummaryBytes bounds a summary received over the bus.
	maxSummaryBytes = 512 << 10
	limiterKeys     = 1 << 14
)

// Config configures the status service. Zero values mean the documented defaults.
type Config struct {
	// Node is this node's name. Required.
	Node string
	// URL returns this node's public URL ("" if none), shown on the page.
	URL func() string
	// Storage reports whether the node's storage is usable (reachable, with quorum) and, if not,
	// why. It must answer from memory (the service calls it once a second from its own
	// goroutine). Nil: always usable.
	Storage func() (bool, string)
	// Conn is the bus connection on which nodes share their views (Subject). Nil: alone.
	Conn *nats.Conn
	// Subject is the core NATS subject of the shared views.
	Subject string
	// Incidents is the incidents bucket. Nil: incidents cannot be posted.
	Incidents jetstream.KeyValue
	// Baseline is the bucket of the nodes' report counts per hour of the week (baseline.go). Nil:
	// the baseline is this node's own counts since it started.
	Baseline jetstream.KeyValue
	// OperatorToken and ProbeToken are accepted on POST /v1/probes (ProbeToken "" : only the
	// operator token).
	OperatorToken, ProbeToken string
	// ShareInterval is how often this node publishes its view; a node not heard for six of them
	// is forgotten. Default: DefaultShareInterval.
	ShareInterval time.Duration
	// Thresholds of the state rules. Defaults: DefaultLagDegraded, DefaultProbeSlow.
	Thresholds Thresholds
	// ReportsPerIPPerMinute rate-limits POST /v1/reports per client address (burst: 5 or the
	// rate, whichever is more). Default: DefaultReportsPerIPPerMinute.
	ReportsPerIPPerMinute float64
	// Now is the clock. Default: time.Now.
	Now      func() time.Time
	Logger   *slog.Logger
	Registry prometheus.Registerer
}

// Service is the status page, problem reports, probe intake and incidents of one node. Lifecycle:
// New (no I/O) → Start → Close.
type Service struct {
	cfg                                Config
	log                                *slog.Logger
	agg                                *Aggregates
	inc                                *Incidents
	pageLimit, reportLimit, probeLimit *keyrate.Limiter[string]

	storageOK   atomic.Bool
	storageNote atomic.Value // string

	mu    sync.Mutex // guards peers
	peers map[string]heard

	cacheMu  sync.Mutex // guards the rendered page
	cacheAt  time.Time
	cacheJS  []byte
	cacheHTM []byte

	notes   noteRing // the latest report notes, for operators
	reports *prometheus.CounterVec
	probesN *prometheus.CounterVec

	// persist asks persistBaseline to write this node's baseline record (capacity 1).
	persist chan struct{}

	ctx    context.Context
	cancel context.CancelFunc
	wg     sync.WaitGroup
	sub    *nats.Subscription
	closed atomic.Bool
}

type heard struct {
	s  Summary
	at time.Time
}

// New returns the service. It does no I/O.
func New(cfg Config) *Service {
	clock := cfg.Now // nil: the real clock, which lets the aggregates read it coarsely
	if cfg.Now == nil {
		cfg.Now = time.Now
	}
	if cfg.Logger == nil {
		cfg.Logger = slog.Default()
	}
	if cfg.ShareInterval <= 0 {
		cfg.ShareInterval = DefaultShareInterval
	}
	if cfg.Thresholds.LagDegraded <= 0 {
		cfg.Thresholds.LagDegraded = DefaultLagDegraded
	}
	if cfg.Thresholds.ProbeSlow <= 0 {
		cfg.Thresholds.ProbeSlow = DefaultProbeSlow
	}
	if cfg.ReportsPerIPPerMinute <= 0 {
		cfg.ReportsPerIPPerMinute = DefaultReportsPerIPPerMinute
	}
	if cfg.URL == nil {
		cfg.URL = func() string { return "" }
	}
	s := &Service{cfg: cfg, log: cfg.Logger, agg: NewAggregates(clock), peers: map[string]heard{},
		inc: NewIncidents(cfg.Incidents, cfg.Now, cfg.Logger)}
	s.storageOK.Store(true)
	s.storageNote.Store("")
	s.pageLimit = keyrate.New[string](keyrate.Config{Rate: 20, Burst: 40, MaxKeys: limiterKeys, Now: cfg.Now})
	s.reportLimit = keyrate.New[string](keyrate.Config{Rate: cfg.ReportsPerIPPerMinute / 60,
		Burst: math.Max(5, cfg.ReportsPerIPPerMinute), MaxKeys: limiterKeys, Now: cfg.Now})
	s.probeLimit = keyrate.New[string](keyrate.Config{Rate: 10, Burst: 60, MaxKeys: limiterKeys, Now: cfg.Now})
	s.reports = prometheus.NewCounterVec(prometheus.CounterOpts{Name: "petrel_status_reports_total",
		Help: "User problem reports received on this node, by outcome (counted; duplicate: the client's second in a window; invalid; rate_limited)."}, []string{"outcome"})
	s.probesN = prometheus.NewCounterVec(prometheus.CounterOpts{Name: "petrel_status_probe_results_total",
		Help: "Probe results recorded on this node, by result (ok, failed)."}, []string{"result"})
	for _, o := range []string{"counted", "duplicate", "invalid", "rate_limited"} {
		s.reports.WithLabelValues(o)
	}
	s.probesN.WithLabelValues("ok")
	s.probesN.WithLabelValues("failed")
	if cfg.Registry != nil {
		cfg.Registry.MustRegister(s.reports, s.probesN)
	}
	s.persist = make(chan struct{}, 1)
	s.ctx, s.cancel = context.WithCancel(context.Background())
	return s
}

// RecordProbe records a probe result (ProbeSink): hand the service to a prober.
func (s *Service) RecordProbe(r ProbeResult) {
	if r.OK {
		s.probesN.WithLabelValues("ok").Inc()
	} else {
		s.probesN.WithLabelValues("failed").Inc()
	}
	s.agg.RecordProbe(r)
}

// ObserveSend records a send's outcome (gateway.SendObserver).
func (s *Service) ObserveSend(ok bool, lag time.Duration) { s.agg.ObserveSend(ok, lag) }

// Incidents is the incident store.
func (s *Service) Incidents() *Incidents { return s.inc }

// Start subscribes to the other nodes' views and starts the service's goroutines: the sampler
// and sharer (once a second, and every ShareInterval), the incidents watch, and the baseline's
// watch and writer.
func (s *Service) Start() error {
	s.sample()
	s.render()
	if s.cfg.Conn != nil {
		sub, err := s.cfg.Conn.Subscribe(s.cfg.Subject, s.onSummary)
		if err != nil {
			return fmt.Errorf("status: subscribe: %w", err)
		}
		s.sub = sub
	}
	s.wg.Add(2)
	go func() { defer s.wg.Done(); s.loop() }()
	go func() { defer s.wg.Done(); s.inc.watch(s.ctx) }()
	if s.cfg.Baseline != nil {
		loaded := make(chan struct{})
		s.wg.Add(2)
		go func() { defer s.wg.Done(); s.followBaseline(s.ctx, loaded) }()
		go func() { defer s.wg.Done(); s.persistBaseline(s.ctx, loaded, s.persist) }()
	}
	return nil
}

// Close stops the goroutines and waits for them. Idempotent.
func (s *Service) Close() {
	if !s.closed.CompareAndSwap(false, true) {
		return
	}
	if s.sub != nil {
		_ = s.sub.Unsubscribe()
	}
	s.cancel()
	s.wg.Wait()
}

func (s *Service) loop() {
	tick := time.NewTicker(time.Second)
	if s.cfg.ShareInterval < time.Second {
		tick.Reset(s.cfg.ShareInterval)
	}
	defer tick.Stop()
	var shared time.Time
	for {
		select {
		case <-s.ctx.Done():
			return
		case <-tick.C:
		}
		s.sample()
		now := s.cfg.Now()
		if now.Sub(shared) >= s.cfg.ShareInterval {
			shared = now
			s.share()
		}
		s.forget(now)
		s.render()
		if s.agg.takeFolded() { // an hour ended: write this node's counts (at most once an hour)
			select {
			case s.persist <- struct{}{}:
			default:
			}
		}
	}
}

// sample reads the storage state (from memory, see Config.Storage).
func (s *Service) sample() {
	if s.cfg.Storage == nil {
		return
	}
	ok, why := s.cfg.Storage()
	s.storageOK.Store(ok)
	s.storageNote.Store(why)
}

// own is this node's summary now.
func (s *Service) own() Summary {
	sum := s.agg.Snapshot()
	sum.Node, sum.URL = s.cfg.Node, s.cfg.URL()
	sum.StorageOK = s.storageOK.Load()
	sum.StorageNote, _ = s.storageNote.Load().(string)
	return sum
}

// share publishes this node's summary on the bus (core NATS: no storage involved, and a
// publish never blocks on a sick store).
func (s *Service) share() {
	if s.cfg.Conn == nil {
		return
	}
	b, err := json.Marshal(s.own())
	if err != nil || len(b) > maxSummaryBytes {
		s.log.Warn("status: summary not shared", "bytes", len(b), "err", err)
		return
	}
	if err := s.cfg.Conn.Publish(s.cfg.Subject, b); err != nil {
		s.log.Debug("status: share", "err", err)
	}
}

func (s *Service) onSummary(m *nats.Msg) {
	if len(m.Data) > maxSummaryBytes {
		return
	}
	var sum Summary
	if err := json.Unmarshal(m.Data, &sum); err != nil || sum.Node == "" || sum.Node == s.cfg.Node {
		return
	}
	sum.Node = clip(sum.Node, maxNameLen)
	if len(sum.Probes) > MaxProbeSeries {
		sum.Probes = sum.Probes[:MaxProbeSeries]
	}
	now := s.cfg.Now()
	s.mu.Lock()
	defer s.mu.Unlock()
	if _, known := s.peers[sum.Node]; !known && len(s.peers) >= maxPeers {
		return
	}
	s.peers[sum.Node] = heard{s: sum, at: now}
}

func (s *Service) forget(now time.Time) {
	s.mu.Lock()
	defer s.mu.Unlock()
	for n, h := range s.peers {
		if now.Sub(h.at) > 6*s.cfg.ShareInterval {
			delete(s.peers, n)
		}
	}
}

// View is the merged state now: this node's own view, then the other nodes' in name order.
// Memory only.
func (s *Service) View() View {
	sums := []peer{{Summary: s.own(), self: true}}
	s.mu.Lock()
	others := make([]peer, 0, len(s.peers))
	for _, h := range s.peers {
		others = append(others, peer{Summary: h.s})
	}
	s.mu.Unlock()
	sortPeers(others)
	sums = append(sums, others...)
	return buildView(s.cfg.Node, sums, s.inc.Shown(), s.cfg.Thresholds, s.cfg.Now())
}

func sortPeers(p []peer) {
	for i := 1; i < len(p); i++ {
		for j := i; j > 0 && p[j].Node < p[j-1].Node; j-- {
			p[j], p[j-1] = p[j-1], p[j]
		}
	}
}

// render renders the page (JSON and HTML) from memory and caches it. The service's loop calls it
// every tick, so that a request only copies bytes.
func (s *Service) render() {
	v := s.View()
	js, _ := json.MarshalIndent(v, "", "  ")
	var buf bytes.Buffer
	if err := renderPage(&buf, &v); err != nil {
		s.log.Error("status: render page", "err", err)
	}
	s.cacheMu.Lock()
	s.cacheJS, s.cacheHTM, s.cacheAt = js, buf.Bytes(), s.cfg.Now()
	s.cacheMu.Unlock()
}

// rendered returns the cached page; it renders it here only when the loop has not (before its
// first tick, or if it fell behind by several periods).
func (s *Service) rendered() (js, htm []byte) {
	s.cacheMu.Lock()
	js, htm, at := s.cacheJS, s.cacheHTM, s.cacheAt
	s.cacheMu.Unlock()
	if now := s.cfg.Now(); js == nil || now.Sub(at) > 3*pageCacheFor || now.Before(at) {
		s.render()
		s.cacheMu.Lock()
		js, htm = s.cacheJS, s.cacheHTM
		s.cacheMu.Unlock()
	}
	return js, htm
}

// Register adds the public routes: the page, its JSON, reports and probe intake.
func (s *Service) Register(mux *http.ServeMux) {
	mux.HandleFunc("GET "+PagePath, s.page)
	mux.HandleFunc("GET "+JSONPath, s.pageJSON)
	mux.HandleFunc("POST "+ReportsPath, s.report)
	mux.HandleFunc("POST "+ProbesPath, s.probes)
}

// clientIP is the request's peer address without its port.
func clientIP(r *http.Request) string {
	host, _, err := net.SplitHostPort(r.RemoteAddr)
	if err != nil {
		return r.RemoteAddr
	}
	return host
}

// jsonError answers code with {"error": msg}.
func jsonError(w http.ResponseWriter, code int, msg string, retry time.Duration) {
	w.Header().Set("Content-Type", "application/json")
	w.Header().Set("Cache-Control", "no-store")
	body := map[string]any{"error": msg}
	if retry > 0 {
		secs := int(math.Ceil(retry.Seconds()))
		w.Header().Set("Retry-After", strconv.Itoa(secs))
		body["retry_after_s"] = secs
	}
	w.WriteHeader(code)
	_ = json.NewEncoder(w).Encode(body)
}

func (s *Service) limited(w http.ResponseWriter, r *http.Request, l *keyrate.Limiter[string]) bool {
	if ok, wait := l.Take(clientIP(r), 1); !ok {
		jsonError(w, http.StatusTooManyRequests, "too many requests from your address: try again later", wait)
		return true
	}
	return false
}

// serverTiming sets the Server-Timing header to the time since start: how long this node took
// to handle a page request (rate limit, cache, render when needed), without the network and the
// time before the handler ran.
func serverTiming(w http.ResponseWriter, start time.Time) {
	w.Header().Set("Server-Timing", fmt.Sprintf("page;dur=%.3f", float64(time.Since(start))/1e6))
}

func (s *Service) page(w http.ResponseWriter, r *http.Request) {
	start := time.Now()
	if s.limited(w, r, s.pageLimit) {
		return
	}
	_, htm := s.rendered()
	serverTiming(w, start)
	w.Header().Set("Content-Type", "text/html; charset=utf-8")
	w.Header().Set("Cache-Control", "no-cache")
	w.Header().Set("Content-Security-Policy", "default-src 'none'; style-src 'unsafe-inline'; img-src data:")
	_, _ = w.Write(htm)
}

func (s *Service) pageJSON(w http.ResponseWriter, r *http.Request) {
	start := time.Now()
	if s.limited(w, r, s.pageLimit) {
		return
	}
	js, _ := s.rendered()
	serverTiming(w, start)
	w.Header().Set("Content-Type", "application/json")
	w.Header().Set("Cache-Control", "no-cache")
	_, _ = w.Write(js)
}

// readBody reads at most limit bytes of the body; tooLarge when there are more.
func readBody(r *http.Request, limit int64) (b []byte, tooLarge bool, err error) {
	if r.ContentLength > limit {
		return nil, true, nil
	}
	b, err = io.ReadAll(io.LimitReader(r.Body, limit+1))
	if err != nil {
		return nil, false, err
	}
	if int64(len(b)) > limit {
		return nil, true, nil
	}
	return b, false, nil
}

// ReportAnswer is the body of a 202 answer to POST /v1/reports.
type ReportAnswer struct {
	// Counted is false when this client already reported in the current window.
	Counted bool `json:"counted"`
}

func (s *Service) report(w http.ResponseWriter, r *http.Request) {
	if ok, wait := s.reportLimit.Take(clientIP(r), 1); !ok {
		s.reports.WithLabelValues("rate_limited").Inc()
		jsonError(w, http.StatusTooManyRequests, "too many reports from your address: we have your earlier report; try again later", wait)
		return
	}
	bad := func(msg string) {
		s.reports.WithLabelValues("invalid").Inc()
		jsonError(w, http.StatusBadRequest, msg, 0)
	}
	b, tooLarge, err := readBody(r, MaxReportBytes)
	switch {
	case tooLarge:
		bad(fmt.Sprintf("report larger than %d bytes: shorten the note", MaxReportBytes))
		return
	case err != nil:
		bad("could not read the report: " + err.Error())
		return
	}
	var req ReportRequest
	dec := json.NewDecoder(bytes.NewReader(b))
	if err := dec.Decode(&req); err != nil {
		bad(`the body is not a JSON report: want {"category": "cant-connect|not-sending|not-receiving|other", "note": "…"}`)
		return
	}
	switch {
	case categoryIndex(req.Category) < 0:
		bad(fmt.Sprintf("unknown category %q: want one of %s", clip(req.Category, 40), strings.Join(Categories[:], ", ")))
		return
	case len(req.Note) > MaxNoteBytes:
		bad(fmt.Sprintf("note of %d bytes: at most %d", len(req.Note), MaxNoteBytes))
		return
	case len(req.Client) > 64:
		bad("client id longer than 64 characters")
		return
	}
	counted := s.agg.RecordReport(req.Category, req.Client)
	s.notes.add(s.cfg.Now(), req.Category, req.Note)
	if counted {
		s.reports.WithLabelValues("counted").Inc()
	} else {
		s.reports.WithLabelValues("duplicate").Inc()
	}
	w.Header().Set("Content-Type", "application/json")
	w.WriteHeader(http.StatusAccepted)
	_ = json.NewEncoder(w).Encode(ReportAnswer{Counted: counted})
}

// ProbeAnswer is the body of a 202 answer to POST /v1/probes.
type ProbeAnswer struct {
	Accepted int `json:"accepted"`
}

func (s *Service) probes(w http.ResponseWriter, r *http.Request) {
	if s.limited(w, r, s.probeLimit) {
		return
	}
	tok, ok := strings.CutPrefix(r.Header.Get("Authorization"), "Bearer ")
	if !ok || !s.tokenOK(tok) {
		w.Header().Set("WWW-Authenticate", `Bearer realm="petrel-probes"`)
		jsonError(w, http.StatusUnauthorized, "probe results need the operator token or the probe token (status.probe_token) as Authorization: Bearer TOKEN", 0)
		return
	}
	b, tooLarge, err := readBody(r, MaxProbeBatchBytes)
	switch {
	case tooLarge:
		jsonError(w, http.StatusBadRequest, fmt.Sprintf("batch larger than %d bytes: send at most %d results at a time", MaxProbeBatchBytes, MaxProbeBatch), 0)
		return
	case err != nil:
		jsonError(w, http.StatusBadRequest, "could not read the batch: "+err.Error(), 0)
		return
	}
	var batch ProbeBatch
	if err := json.Unmarshal(b, &batch); err != nil {
		jsonError(w, http.StatusBadRequest, `the body is not a JSON probe batch: want {"results": [...]}`, 0)
		return
	}
	if len(batch.Results) > MaxProbeBatch {
		jsonError(w, http.StatusBadRequest, fmt.Sprintf("%d results: send at most %d at a time", len(batch.Results), MaxProbeBatch), 0)
		return
	}
	for i, res := range batch.Results {
		if res.Node == "" {
			jsonError(w, http.StatusBadRequest, fmt.Sprintf("result %d has no node", i), 0)
			return
		}
	}
	for _, res := range batch.Results {
		s.RecordProbe(res)
	}
	w.Header().Set("Content-Type", "application/json")
	w.WriteHeader(http.StatusAccepted)
	_ = json.NewEncoder(w).Encode(ProbeAnswer{Accepted: len(batch.Results)})
}

func (s *Service) tokenOK(tok string) bool {
	okOp := s.cfg.OperatorToken != "" && subtle.ConstantTimeCompare([]byte(tok), []byte(s.cfg.OperatorToken)) == 1
	okPr := s.cfg.ProbeToken != "" && subtle.ConstantTimeCompare([]byte(tok), []byte(s.cfg.ProbeToken)) == 1
	return okOp || okPr
}

// IncidentRequest is the body of POST /v1/admin/incidents.
type IncidentRequest struct {
	Action string `json:"action"` // open, update or resolve
	ID     string `json:"id,omitempty"`
	Text   string `json:"text"`
}

// IncidentList is the answer of GET /v1/admin/incidents.
type IncidentList struct {
	Incidents []IncidentView `json:"incidents"`
}

// AdminHandlers are the operator endpoints (pattern → handler) for the admin listener, which
// checks the operator token and bounds the body before they run.
func (s *Service) AdminHandlers() map[string]http.Handler {
	return map[string]http.Handler{
		"GET " + AdminIncidentsPath:  http.HandlerFunc(s.listIncidents),
		"POST " + AdminIncidentsPath: http.HandlerFunc(s.postIncident),
		"GET " + AdminReportsPath:    http.HandlerFunc(s.listReportNotes),
	}
}

const incidentTimeout = 10 * time.Second

func (s *Service) listIncidents(w http.ResponseWriter, r *http.Request) {
	ctx, cancel := context.WithTimeout(r.Context(), incidentTimeout)
	defer cancel()
	all, err := s.inc.List(ctx)
	if err != nil {
		s.incidentError(w, err)
		return
	}
	w.Header().Set("Content-Type", "application/json")
	_ = json.NewEncoder(w).Encode(IncidentList{Incidents: all})
}

func (s *Service) postIncident(w http.ResponseWriter, r *http.Request) {
	var req IncidentRequest
	if err := json.NewDecoder(r.Body).Decode(&req); err != nil {
		jsonError(w, http.StatusBadRequest, `the body is not a JSON incident request: want {"action": "open|update|resolve", "id": "…", "text": "…"}`, 0)
		return
	}
	ctx, cancel := context.WithTimeout(r.Context(), incidentTimeout)
	defer cancel()
	var inc IncidentView
	var err error
	switch req.Action {
	case "open":
		if req.ID != "" {
			jsonError(w, http.StatusBadRequest, "open takes no id: the server makes one", 0)
			return
		}
		inc, err = s.inc.Open(ctx, req.Text)
	case "update":
		inc, err = s.inc.Update(ctx, req.ID, req.Text)
	case "resolve":
		inc, err = s.inc.Resolve(ctx, req.ID, req.Text)
	default:
		jsonError(w, http.StatusBadRequest, fmt.Sprintf("unknown action %q: want open, update or resolve", clip(req.Action, 40)), 0)
		return
	}
	if err != nil {
		s.incidentError(w, err)
		return
	}
	s.render() // the page shows it at once
	s.log.Info("incident", "id", inc.ID, "action", req.Action, "state", inc.State)
	w.Header().Set("Content-Type", "application/json")
	_ = json.NewEncoder(w).Encode(inc)
}

func (s *Service) incidentError(w http.ResponseWriter, err error) {
	switch {
	case errors.Is(err, ErrBadIncidentText):
		jsonError(w, http.StatusBadRequest, err.Error(), 0)
	case errors.Is(err, ErrNoIncident):
		jsonError(w, http.StatusNotFound, err.Error(), 0)
	case errors.Is(err, ErrAmbiguousIncident), errors.Is(err, ErrIncidentResolved):
		jsonError(w, http.StatusConflict, err.Error(), 0)
	default:
		s.log.Warn("incidents", "err", err)
		jsonError(w, http.StatusServiceUnavailable, "incident storage unavailable: try again in a moment (the page keeps showing the incidents it has)", 0)
	}
}
