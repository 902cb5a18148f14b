// Copyright 2026 The Petrel Authors
// SPDX-License-Identifier: Apache-2.0

package status

import (
	"fmt"
	"html/template"
	"io"
	"math"
	"strings"
	"time"
)

// Chart geometry (SVG user units; the SVG scales to the column's width).
const (
	chartW, chartH = 600.0, 160.0
	chartLeft      = 40.0 // room for the y labels
	chartBottom    = 20.0 // room for the x labels
)

// seriesColours colour the probe series in turn.
var seriesColours = []string{"#1f6feb", "#8250df", "#bf3989", "#1a7f37", "#9a6700", "#0550ae"}

type bar struct{ X, Y, W, H float64 }

type line struct {
	Label, Colour, Points string
	Fails                 []bar // red ticks where probes failed
}

type axisLabel struct {
	X, Y float64
	Text string
}

type chart struct {
	Bars           []bar
	Lines          []line
	BaselinePoints string
	YLabels        []axisLabel
	XLabels        []axisLabel
	Empty          bool
}

type pageData struct {
	*View
	Title      string
	StateText  string
	Reports    chart
	Latency    chart
	Generated  string
	StateClass string
}

func fmtTime(t time.Time) string {
	if t.IsZero() {
		return "—"
	}
	return t.UTC().Format("2006-01-02 15:04 UTC")
}

// niceMax rounds a chart's top up to 1, 2 or 5 times a power of ten.
func niceMax(v float64) float64 {
	if v <= 0 {
		return 1
	}
	p := math.Pow(10, math.Floor(math.Log10(v)))
	for _, m := range []float64{1, 2, 5, 10} {
		if v <= m*p {
			return m * p
		}
	}
	return 10 * p
}

func yLabels(top float64, unit string) []axisLabel {
	plotH := chartH - chartBottom
	var out []axisLabel
	for _, f := range []float64{0, 0.5, 1} {
		v := top * f
		txt := fmt.Sprintf("%g%s", v, unit)
		out = append(out, axisLabel{X: chartLeft - 4, Y: plotH - f*(plotH-8) + 4, Text: txt})
	}
	return out
}

// reportsChart draws hourly report counts as bars and the baseline as a line.
func reportsChart(r *ReportsView) chart {
	var c chart
	top := 0.0
	for i := range r.Hourly {
		top = math.Max(top, float64(r.Hourly[i]))
		top = math.Max(top, r.BaselineHour[i])
	}
	top = niceMax(top)
	plotW, plotH := chartW-chartLeft, chartH-chartBottom
	slot := plotW / 24
	y := func(v float64) float64 { return plotH - v/top*(plotH-8) }
	var pts []string
	for i, n := range r.Hourly {
		x := chartLeft + float64(i)*slot
		if n > 0 {
			c.Bars = append(c.Bars, bar{X: x + 1, Y: y(float64(n)), W: slot - 2, H: plotH - y(float64(n))})
		}
		pts = append(pts, fmt.Sprintf("%.1f,%.1f", x+slot/2, y(r.BaselineHour[i])))
	}
	c.BaselinePoints = strings.Join(pts, " ")
	c.YLabels = yLabels(top, "")
	for i := 0; i < 24; i += 6 {
		c.XLabels = append(c.XLabels, axisLabel{X: chartLeft + float64(i)*slot, Y: chartH - 4,
			Text: r.HourStart.Add(time.Duration(i) * time.Hour).UTC().Format("15:04")})
	}
	c.XLabels = append(c.XLabels, axisLabel{X: chartW - 30, Y: chartH - 4, Text: "now"})
	return c
}

// latencyChart draws each probe series' ten-minute average latency as a line, and red ticks
// where probes failed.
func latencyChart(probes []ProbeView, now time.Time) chart {
	var c chart
	top := 0.0
	for _, p := range probes {
		for _, v := range p.LatencyMS {
			top = math.Max(top, v)
		}
	}
	top = niceMax(top)
	plotW, plotH := chartW-chartLeft, chartH-chartBottom
	step := plotW / chartSlots
	y := func(v float64) float64 { return plotH - v/top*(plotH-8) }
	for i, p := range probes {
		l := line{Label: p.Node + " (by " + p.Source + ")", Colour: seriesColours[i%len(seriesColours)]}
		var pts []string
		for j, v := range p.LatencyMS {
			x := chartLeft + (float64(j)+0.5)*step
			if v > 0 {
				pts = append(pts, fmt.Sprintf("%.1f,%.1f", x, y(v)))
			}
			if j < len(p.Failed) && p.Failed[j] > 0 {
				l.Fails = append(l.Fails, bar{X: x - step/2, Y: plotH - 6, W: math.Max(step, 2), H: 6})
			}
		}
		if len(pts) == 1 { // one point: draw a short flat line so that it shows
			pts = append(pts, pts[0])
		}
		l.Points = strings.Join(pts, " ")
		c.Lines = append(c.Lines, l)
	}
	c.Empty = len(probes) == 0
	c.YLabels = yLabels(top, " ms")
	start := now.Add(-24 * time.Hour)
	for i := 0; i < 24; i += 6 {
		c.XLabels = append(c.XLabels, axisLabel{X: chartLeft + float64(i)*plotW/24, Y: chartH - 4,
			Text: start.Add(time.Duration(i) * time.Hour).UTC().Format("15:04")})
	}
	c.XLabels = append(c.XLabels, axisLabel{X: chartW - 30, Y: chartH - 4, Text: "now"})
	return c
}

func renderPage(w io.Writer, v *View) error {
	d := pageData{View: v, Title: "Petrel status", StateClass: v.State, Generated: fmtTime(v.GeneratedAt)}
	switch v.State {
	case Operational:
		d.StateText = "All systems operational"
	case Degraded:
		d.StateText = "Degraded service"
	default:
		d.StateText = "Outage"
	}
	d.Reports = reportsChart(&v.Reports)
	d.Latency = latencyChart(v.Probes, v.GeneratedAt)
	return pageTmpl.Execute(w, d)
}

var pageTmpl = template.Must(template.New("page").Funcs(template.FuncMap{
	"time": fmtTime,
	"pct":  func(f float64) string { return fmt.Sprintf("%.1f%%", 100*f) },
	"ms":   ms,
}).Parse(`<!doctype html>
<html lang="en">
<head>
<meta charset="utf-8">
<meta name="viewport" content="width=device-width, initial-scale=1">
<title>{{.Title}}: {{.State}}</title>
<style>
:root { color-scheme: light; --ok: #1a7f37; --deg: #9a6700; --out: #cf222e; }
* { box-sizing: border-box; }
body { margin: 0; font: 16px/1.5 system-ui, -apple-system, "Segoe UI", Roboto, sans-serif; color: #1f2328; background: #f6f8fa; }
main { max-width: 56rem; margin: 0 auto; padding: 1rem; }
h1 { font-size: 1.5rem; margin: 0.5rem 0 1rem; }
h2 { font-size: 1.15rem; margin: 1.75rem 0 0.5rem; }
.banner { border-radius: 8px; padding: 1rem 1.25rem; color: #fff; font-size: 1.25rem; font-weight: 600; }
.banner small { display: block; font-size: 0.9rem; font-weight: 400; opacity: 0.95; }
.operational { background: var(--ok); } .degraded { background: var(--deg); } .outage { background: var(--out); }
.pill { display: inline-block; padding: 0 0.5rem; border-radius: 999px; color: #fff; font-size: 0.85rem; }
.card { background: #fff; border: 1px solid #d0d7de; border-radius: 8px; padding: 0.75rem 1rem; margin: 0.5rem 0; }
.notes { margin: 0.75rem 0 0; padding-left: 1.25rem; }
table { width: 100%; border-collapse: collapse; background: #fff; border: 1px solid #d0d7de; border-radius: 8px; }
th, td { text-align: left; padding: 0.4rem 0.6rem; border-bottom: 1px solid #eaeef2; vertical-align: top; }
th { font-size: 0.85rem; color: #57606a; font-weight: 600; }
.wide { overflow-x: auto; }
.muted { color: #57606a; font-size: 0.9rem; }
svg { width: 100%; height: auto; display: block; background: #fff; border: 1px solid #d0d7de; border-radius: 8px; }
svg text { font-size: 11px; fill: #57606a; }
.legend span { display: inline-block; margin-right: 1rem; font-size: 0.9rem; }
.legend i { display: inline-block; width: 1rem; height: 0.25rem; vertical-align: middle; margin-right: 0.3rem; }
.upd { margin: 0.25rem 0 0; padding-left: 1rem; border-left: 3px solid #d0d7de; }
@media (max-width: 40rem) { body { font-size: 15px; } main { padding: 0.6rem; } .hide-narrow { display: none; } }
</style>
</head>
<body>
<main>
<h1>Petrel status</h1>
<div class="banner {{.StateClass}}" id="state">{{.StateText}}<small>State: {{.State}} · as of {{.Generated}}</small></div>
{{if .Notes}}<ul class="notes" id="notes">{{range .Notes}}<li>{{.}}</li>{{end}}</ul>{{end}}

<h2>Incidents</h2>
{{if .Incidents}}{{range .Incidents}}<div class="card incident">
<strong>{{if eq .State "open"}}<span class="pill outage">open</span>{{else}}<span class="pill operational">resolved</span>{{end}}</strong>
<span class="muted">opened {{time .OpenedAt}}{{if .ResolvedAt}} · resolved {{time .ResolvedAt.UTC}}{{end}} · {{.ID}}</span>
{{range .Updates}}<p class="upd"><span class="muted">{{time .At}} · {{.Kind}}</span><br>{{.Text}}</p>{{end}}
</div>{{end}}{{else}}<p class="muted">No incidents in the last 7 days.</p>{{end}}

<h2>Nodes</h2>
<div class="wide"><table>
<tr><th>Node</th><th>State</th><th>Sends 5 min</th><th class="hide-narrow">Failed 5 / 60 min</th><th>Lag p95 5 min</th></tr>
{{range .Nodes}}<tr><td>{{.Node}}{{if .Self}} <span class="muted">(this node)</span>{{end}}</td>
<td><span class="pill {{.State}}">{{.State}}</span>{{range .Reasons}}<br><span class="muted">{{.}}</span>{{end}}</td>
<td>{{.Sends5.Sends}}</td><td class="hide-narrow">{{pct .Sends5.ErrorRate}} / {{pct .Sends60.ErrorRate}}</td><td>{{ms .Sends5.LagP95MS}}</td></tr>
{{end}}</table></div>

<h2>Problem reports</h2>
<p>{{.View.Reports.Count}} reports in the last {{.View.Reports.WindowMinutes}} minutes; usual for this hour: {{printf "%.1f" .View.Reports.Baseline}} an hour.
{{if .View.Reports.Anomaly}}<strong>More than usual: users report problems.</strong>{{end}}</p>
<svg viewBox="0 0 600 160" role="img" aria-label="Problem reports per hour over 24 hours, bars, against the usual number for each hour, line">
<line x1="40" y1="140" x2="600" y2="140" stroke="#d0d7de"/>
{{range .Reports.YLabels}}<text x="{{.X}}" y="{{.Y}}" text-anchor="end">{{.Text}}</text>{{end}}
{{range .Reports.XLabels}}<text x="{{.X}}" y="{{.Y}}">{{.Text}}</text>{{end}}
{{range .Reports.Bars}}<rect x="{{.X}}" y="{{.Y}}" width="{{.W}}" height="{{.H}}" fill="#cf222e" opacity="0.8"/>{{end}}
<polyline points="{{.Reports.BaselinePoints}}" fill="none" stroke="#57606a" stroke-dasharray="4 3" stroke-width="1.5"/>
</svg>
<p class="legend"><span><i style="background:#cf222e"></i>reports per hour</span><span><i style="background:#57606a"></i>usual (same hour of the week)</span></p>

<h2>Probes</h2>
{{if .Latency.Empty}}<p class="muted">No probe results yet.</p>{{else}}
<svg viewBox="0 0 600 160" role="img" aria-label="Probe latency over 24 hours, one line per probed node and prober; red ticks mark failed probes">
<line x1="40" y1="140" x2="600" y2="140" stroke="#d0d7de"/>
{{range .Latency.YLabels}}<text x="{{.X}}" y="{{.Y}}" text-anchor="end">{{.Text}}</text>{{end}}
{{range .Latency.XLabels}}<text x="{{.X}}" y="{{.Y}}">{{.Text}}</text>{{end}}
{{range .Latency.Lines}}<polyline points="{{.Points}}" fill="none" stroke="{{.Colour}}" stroke-width="2"/>{{range .Fails}}<rect x="{{.X}}" y="{{.Y}}" width="{{.W}}" height="{{.H}}" fill="#cf222e"/>{{end}}{{end}}
</svg>
<p class="legend">{{range .Latency.Lines}}<span><i style="background:{{.Colour}}"></i>{{.Label}}</span>{{end}}</p>
<div class="wide"><table>
<tr><th>Probed</th><th>By</th><th>State</th><th>OK / failed 5 min</th><th class="hide-narrow">p95 5 min</th><th class="hide-narrow">Last</th></tr>
{{range .Probes}}<tr><td>{{.Node}}</td><td>{{.Source}}</td><td><span class="pill {{.State}}">{{.State}}</span></td>
<td>{{.Window5.OK}} / {{.Window5.Failed}}</td><td class="hide-narrow">{{ms .Window5.P95MS}}</td>
<td class="hide-narrow">{{time .Last.At}}{{if .Last.Error}}<br><span class="muted">{{.Last.Error}}</span>{{end}}</td></tr>
{{end}}</table></div>{{end}}

<p class="muted">Served by {{.ServedBy}} at {{.Generated}}. Machine-readable: <a href="/status.json">/status.json</a>. Report a problem: <code>petrel report --server URL --category cant-connect</code>.</p>
</main>
</body>
</html>
`))
