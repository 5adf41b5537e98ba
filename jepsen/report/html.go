package report

import (
	"encoding/json"
	"fmt"
	"html"
	"html/template"
	"io"
	"math"
	"path/filepath"
	"strings"

	"github.com/lattice-sync/lattice/jepsen/history"
)

const (
	chartW, chartH = 1000.0, 240.0
	padL, padR     = 60.0, 10.0
	padT, padB     = 18.0, 28.0
)

var typeColor = map[string]string{history.OK: "#2e7d32", history.Fail: "#ef6c00", history.Unknown: "#c62828"}

func faultColor(name string) string {
	switch {
	case strings.HasPrefix(name, "partition"):
		return "#1e88e5"
	case name == "kill":
		return "#e53935"
	case name == "pause":
		return "#8e24aa"
	case strings.HasPrefix(name, "clock"):
		return "#fdd835"
	}
	return "#757575"
}

type chart struct {
	b    strings.Builder
	span float64 // seconds on the x axis
}

func (c *chart) x(t float64) float64 { return padL + t/c.span*(chartW-padL-padR) }

func (c *chart) open(title string) {
	fmt.Fprintf(&c.b, `<svg xmlns="http://www.w3.org/2000/svg" width="%.0f" height="%.0f" viewBox="0 0 %.0f %.0f" font-family="sans-serif" font-size="11">`, chartW, chartH, chartW, chartH)
	fmt.Fprintf(&c.b, `<text x="%.0f" y="12" font-weight="bold">%s</text>`, padL, html.EscapeString(title))
	fmt.Fprintf(&c.b, `<rect x="%.0f" y="%.0f" width="%.0f" height="%.0f" fill="none" stroke="#999"/>`, padL, padT, chartW-padL-padR, chartH-padT-padB)
	for t := 0.0; t <= c.span; t += tickStep(c.span) {
		fmt.Fprintf(&c.b, `<line x1="%.1f" x2="%.1f" y1="%.0f" y2="%.0f" stroke="#ddd"/><text x="%.1f" y="%.0f" text-anchor="middle">%gs</text>`,
			c.x(t), c.x(t), padT, chartH-padB, c.x(t), chartH-padB+14, t)
	}
}

func tickStep(span float64) float64 {
	for _, s := range []float64{1, 2, 5, 10, 15, 30, 60, 120, 300} {
		if span/s <= 12 {
			return s
		}
	}
	return 600
}

// bands shades the fault periods and marks the final heal.
func (c *chart) bands(r *Run) {
	for _, in := range r.Injections {
		x0, x1 := c.x(in.Start), c.x(math.Max(in.Stop, in.Start+0.05))
		fmt.Fprintf(&c.b, `<g><title>%s (%.1f-%.1fs)</title><rect x="%.1f" y="%.0f" width="%.1f" height="%.0f" fill="%s" fill-opacity="0.18"/><text x="%.1f" y="%.0f" fill="#333" font-size="9">%s</text></g>`,
			html.EscapeString(in.Fault+": "+in.Desc), in.Start, in.Stop, x0, padT, x1-x0, chartH-padT-padB, faultColor(in.Fault),
			x0+2, padT+10, html.EscapeString(in.Fault))
	}
	if r.Heal > 0 {
		fmt.Fprintf(&c.b, `<line x1="%.1f" x2="%.1f" y1="%.0f" y2="%.0f" stroke="#000" stroke-dasharray="4 3"/><text x="%.1f" y="%.0f" font-size="9">heal</text>`,
			c.x(r.Heal), c.x(r.Heal), padT, chartH-padB, c.x(r.Heal)+2, chartH-padB-4)
	}
}

func (c *chart) close() template.HTML {
	c.b.WriteString(`</svg>`)
	return template.HTML(c.b.String()) // built from escaped parts above
}

// latencyChart plots each completed operation's latency (log scale) at its
// invoke time, colored by completion type.
func latencyChart(r *Run, pairs []history.Pair) template.HTML {
	c := &chart{span: math.Max(r.Duration, 1)}
	c.open("latency (ms, log scale) by invoke time: ok green, fail orange, unknown red")
	c.bands(r)
	lo, hi := -1.0, 4.0 // 0.1 ms .. 10 s
	y := func(ms float64) float64 {
		l := math.Log10(math.Max(ms, 0.1))
		return chartH - padB - (math.Min(l, hi)-lo)/(hi-lo)*(chartH-padT-padB)
	}
	for _, ms := range []float64{0.1, 1, 10, 100, 1000, 10000} {
		fmt.Fprintf(&c.b, `<line x1="%.0f" x2="%.0f" y1="%.1f" y2="%.1f" stroke="#eee"/><text x="%.0f" y="%.1f" text-anchor="end">%g</text>`,
			padL, chartW-padR, y(ms), y(ms), padL-4, y(ms)+4, ms)
	}
	t0 := r.Start.UnixNano()
	okEvery := 1
	if n := len(pairs); n > 15000 {
		okEvery = n / 15000
	}
	i := 0
	for _, p := range pairs {
		if p.Complete == nil {
			continue
		}
		st := p.Status()
		if st == history.OK {
			i++
			if i%okEvery != 0 {
				continue
			}
		}
		t := float64(p.Invoke.Time-t0) / 1e9
		if t < 0 || t > c.span {
			continue
		}
		ms := float64(p.Complete.Time-p.Invoke.Time) / 1e6
		fmt.Fprintf(&c.b, `<circle cx="%.1f" cy="%.1f" r="1.3" fill="%s" fill-opacity="0.6"/>`, c.x(t), y(ms), typeColor[st])
	}
	return c.close()
}

// throughputChart plots completions per second, by type.
func throughputChart(r *Run, pairs []history.Pair) template.HTML {
	c := &chart{span: math.Max(r.Duration, 1)}
	c.open("throughput (completions per second): ok green, fail orange, unknown red")
	c.bands(r)
	n := int(math.Ceil(c.span))
	counts := map[string][]int{history.OK: make([]int, n), history.Fail: make([]int, n), history.Unknown: make([]int, n)}
	t0 := r.Start.UnixNano()
	peak := 1
	for _, p := range pairs {
		if p.Complete == nil {
			continue
		}
		s := int((p.Complete.Time - t0) / 1e9)
		if s < 0 || s >= n {
			continue
		}
		counts[p.Status()][s]++
		peak = max(peak, counts[p.Status()][s])
	}
	y := func(v int) float64 { return chartH - padB - float64(v)/float64(peak)*(chartH-padT-padB) }
	for _, v := range []int{0, peak / 2, peak} {
		fmt.Fprintf(&c.b, `<text x="%.0f" y="%.1f" text-anchor="end">%d</text>`, padL-4, y(v)+4, v)
	}
	for _, st := range []string{history.OK, history.Fail, history.Unknown} {
		var pts []string
		for s, v := range counts[st] {
			pts = append(pts, fmt.Sprintf("%.1f,%.1f", c.x(float64(s)+0.5), y(v)))
		}
		fmt.Fprintf(&c.b, `<polyline fill="none" stroke="%s" stroke-width="1.5" points="%s"/>`, typeColor[st], strings.Join(pts, " "))
	}
	return c.close()
}

type checkView struct {
	Name, Verdict, Class, Stats string
	Count                       int
	Violations, Notes           []string
}

var funcs = template.FuncMap{
	"f1":   func(x float64) string { return fmt.Sprintf("%.1f", x) },
	"f2":   func(x float64) string { return fmt.Sprintf("%.2f", x) },
	"join": func(xs []string) string { return strings.Join(xs, ", ") },
	"base": filepath.Base,
}

var runTmpl = template.Must(template.New("run").Funcs(funcs).Parse(`<!doctype html>
<html><head><meta charset="utf-8"><title>lattice jepsen run {{.R.Index}} seed {{.R.Seed}}</title>
<style>
body{font-family:sans-serif;margin:20px;max-width:1100px}
table{border-collapse:collapse;margin:8px 0}td,th{border:1px solid #ccc;padding:3px 8px;text-align:left;vertical-align:top;font-size:13px}
.pass{color:#2e7d32;font-weight:bold}.fail{color:#c62828;font-weight:bold}
code,pre{background:#f5f5f5;padding:2px 4px}pre{white-space:pre-wrap;font-size:12px}
</style></head><body>
<h1>lattice jepsen — run {{.R.Index}}, seed {{.R.Seed}}: {{if .R.Valid}}<span class="pass">PASS</span>{{else}}<span class="fail">FAIL ({{.R.Violations}} violations)</span>{{end}}</h1>
<p>Workload <b>{{.R.Workload}}</b> on {{.R.Nodes}} nodes for {{f1 .R.Duration}} s; faults: {{join .R.Faults}}.
Converged {{f2 .R.ConvergeSeconds}} s after traffic stopped ({{f2 .R.ConvergeAfterHeal}} s after the final heal){{if .R.ConvergeError}} — <span class="fail">{{.R.ConvergeError}}</span>{{end}}.
{{if .R.PGSettleSeconds}}Both databases held the cluster's records {{f2 .R.PGSettleSeconds}} s after traffic stopped.{{end}}{{if .R.PGSettleError}} <span class="fail">Databases: {{.R.PGSettleError}}</span>{{end}}
Run took {{f1 .R.Took}} s.</p>
<p>Reproduce: <code>{{.R.Reproduce}}</code></p>
{{if .R.Errors}}<h2>Harness errors</h2><ul>{{range .R.Errors}}<li class="fail">{{.}}</li>{{end}}</ul>{{end}}
<h2>Checkers</h2>
<table><tr><th>checker</th><th>verdict</th><th>violations</th><th>measured</th></tr>
{{range .Checks}}<tr><td>{{.Name}}</td><td class="{{.Class}}">{{.Verdict}}</td><td>{{.Count}}</td><td><code>{{.Stats}}</code></td></tr>
{{if .Violations}}<tr><td colspan="4"><pre>{{range .Violations}}{{.}}
{{end}}</pre></td></tr>{{end}}{{if .Notes}}<tr><td colspan="4">notes:<pre>{{range .Notes}}{{.}}
{{end}}</pre></td></tr>{{end}}{{end}}
</table>
<h2>Latency and throughput</h2>
{{.Latency}}
{{.Throughput}}
<h2>Operations</h2>
<table><tr><th>kind</th><th>ok</th><th>fail</th><th>unknown</th></tr>
{{range $k, $v := .R.Ops.ByKind}}<tr><td>{{$k}}</td><td>{{index $v "ok"}}</td><td>{{index $v "fail"}}</td><td>{{index $v "unknown"}}</td></tr>{{end}}
</table>
<p>{{.R.Ops.Total}} operations, {{f1 .R.Ops.PerSecond}} ok/s; ok latency p50 {{f2 .R.Ops.Latency.P50}} ms, p95 {{f2 .R.Ops.Latency.P95}} ms, p99 {{f2 .R.Ops.Latency.P99}} ms, max {{f1 .R.Ops.Latency.Max}} ms.
Clock refusals (edits refused for a timestamp beyond max-offset, by receiving node, since its last start): {{.Refusals}};
log lines reporting them: {{.RefusalLogs}}.</p>
<h2>Faults</h2>
<table><tr><th>#</th><th>fault</th><th>what</th><th>start s</th><th>stop s</th><th title="until every node had applied what any node had at the stop; - : not before the next fault">recovery s</th><th>errors</th></tr>
{{range .R.Injections}}<tr><td>{{.Step}}</td><td>{{.Fault}}</td><td>{{.Desc}}</td><td>{{f1 .Start}}</td><td>{{f1 .Stop}}</td><td>{{if lt .Recovery 0.0}}-{{else}}{{f2 .Recovery}}{{end}}</td><td>{{.StartErr}} {{.StopErr}}</td></tr>{{end}}
</table>
<p>Files: <a href="history.jsonl">history.jsonl</a> (operations), <a href="events.jsonl">events.jsonl</a> (faults, clock offsets),
<a href="samples.jsonl">samples.jsonl</a> (node status samples), <a href="summary.json">summary.json</a>, node logs in <a href="nodes/">nodes/</a>.</p>
</body></html>
`))

func runPage(w io.Writer, r *Run, ops []history.Op) error {
	pairs := history.Pairs(ops)
	var checks []checkView
	for _, c := range r.Checks {
		v := checkView{Name: c.Name, Verdict: "pass", Class: "pass", Count: c.Count, Violations: c.Violations, Notes: c.Notes}
		if !c.Valid {
			v.Verdict, v.Class = "FAIL", "fail"
		}
		b, _ := json.Marshal(c.Stats)
		v.Stats = string(b)
		checks = append(checks, v)
	}
	ref, _ := json.Marshal(r.ClockRefusals)
	logs, _ := json.Marshal(r.RefusalLogLines)
	return runTmpl.Execute(w, map[string]any{"R": r, "Checks": checks, "Latency": latencyChart(r, pairs),
		"Throughput": throughputChart(r, pairs), "Refusals": string(ref), "RefusalLogs": string(logs)})
}

var suiteTmpl = template.Must(template.New("suite").Funcs(funcs).Parse(`<!doctype html>
<html><head><meta charset="utf-8"><title>lattice jepsen suite</title>
<style>body{font-family:sans-serif;margin:20px}table{border-collapse:collapse}td,th{border:1px solid #ccc;padding:3px 8px;font-size:13px}
.pass{color:#2e7d32;font-weight:bold}.fail{color:#c62828;font-weight:bold}</style></head><body>
<h1>lattice jepsen suite: {{if .S.Valid}}<span class="pass">PASS</span>{{else}}<span class="fail">FAIL</span>{{end}}</h1>
<p>{{len .S.Runs}} runs, {{.S.Injections}} fault injections, {{.S.Ops}} operations, {{.S.Violations}} violations.
{{if .S.FailedSeeds}}Failed seeds: {{.S.FailedSeeds}}.{{end}}</p>
<table><tr><th>run</th><th>seed</th><th>verdict</th><th>faults injected</th><th>ops</th><th>ok/s</th><th>unknown</th><th>violations</th><th>converge s</th><th>page</th></tr>
{{range .S.Runs}}<tr><td>{{.Index}}</td><td>{{.Seed}}</td><td class="{{if .Valid}}pass">pass{{else}}fail">FAIL{{end}}</td><td>{{len .Injections}}</td><td>{{.Ops.Total}}</td><td>{{f1 .Ops.PerSecond}}</td><td>{{index .Ops.ByType "unknown"}}</td><td>{{.Violations}}</td><td>{{f2 .ConvergeSeconds}}</td><td><a href="{{base .Dir}}/index.html">{{base .Dir}}</a></td></tr>
{{end}}</table></body></html>
`))

func suitePage(w io.Writer, _ string, s *Suite) error {
	return suiteTmpl.Execute(w, map[string]any{"S": s})
}
