// Package report writes what a run found (etcd's report/): a summary JSON
// and a self-contained HTML page per run (inline SVG: latency and
// throughput over time with fault periods shaded, each checker's verdict),
// and a suite summary over all runs.
package report

import (
	"encoding/json"
	"fmt"
	"math"
	"os"
	"path/filepath"
	"sort"
	"time"

	"github.com/lattice-sync/lattice/jepsen/check"
	"github.com/lattice-sync/lattice/jepsen/history"
)

// Step is one planned injection.
type Step struct {
	At      float64  `json:"at_s"`
	Hold    float64  `json:"hold_s"`
	Fault   string   `json:"fault"`
	Desc    string   `json:"desc"`
	Targets []string `json:"targets"`
}

// Injection is what an injection did, in seconds from the start of traffic.
type Injection struct {
	Step     int      `json:"step"`
	Fault    string   `json:"fault"`
	Desc     string   `json:"desc"`
	Targets  []string `json:"targets"`
	Start    float64  `json:"start_s"`
	Stop     float64  `json:"stop_s"`
	StartErr string   `json:"start_error,omitempty"`
	StopErr  string   `json:"stop_error,omitempty"`
	// Recovery is how long after the stop every node had applied what any
	// node had applied at the stop (-1: not before the next injection
	// started, or the run ended).
	Recovery float64 `json:"recovery_s"`
}

// Latency summarises completed operations' latencies in milliseconds.
type Latency struct {
	P50 float64 `json:"p50_ms"`
	P95 float64 `json:"p95_ms"`
	P99 float64 `json:"p99_ms"`
	Max float64 `json:"max_ms"`
}

// Ops counts operations.
type Ops struct {
	Total int `json:"total"`
	// ByType counts completions: ok, fail, unknown (incomplete ones count as unknown).
	ByType map[string]int `json:"by_type"`
	// ByKind counts completions per operation kind.
	ByKind map[string]map[string]int `json:"by_kind"`
	// Latency is over ok operations.
	Latency Latency `json:"latency"`
	// PerSecond is ok operations per second of traffic.
	PerSecond float64 `json:"ok_per_second"`
}

// Run is the summary of one run.
type Run struct {
	Index    int       `json:"index"`
	Seed     uint64    `json:"seed"`
	Dir      string    `json:"dir"`
	Workload string    `json:"workload"`
	Faults   []string  `json:"faults"`
	Nodes    int       `json:"nodes"`
	Start    time.Time `json:"start"`
	// Duration is the traffic's length in seconds; Heal when the final heal
	// happened (seconds from the start of traffic).
	Duration float64 `json:"duration_s"`
	Heal     float64 `json:"heal_s"`
	// Schedule is what the seed planned; Injections what happened.
	Schedule   []Step      `json:"schedule"`
	Injections []Injection `json:"injections"`
	Ops        Ops         `json:"ops"`
	// ConvergeSeconds is how long the nodes took to agree after traffic
	// stopped; ConvergeError is set when they did not in time.
	ConvergeSeconds float64 `json:"converge_s"`
	ConvergeError   string  `json:"converge_error,omitempty"`
	// ConvergeAfterHeal is how long after the final heal the nodes agreed
	// (traffic ran on for the tail in between).
	ConvergeAfterHeal float64 `json:"converge_after_heal_s"`
	// PGSettleSeconds is how long after traffic stopped both databases
	// held the cluster's records (PostgreSQL workload); PGSettleError is
	// set when they did not in time.
	PGSettleSeconds float64 `json:"pg_settle_s,omitempty"`
	PGSettleError   string  `json:"pg_settle_error,omitempty"`
	// ClockRefusals counts, per receiving node, edits refused because their
	// timestamp was beyond max-offset ahead.
	ClockRefusals map[string]uint64 `json:"clock_refusals"`
	// RefusalLogLines counts, per node, log lines with crdt.OffsetError's
	// message (the agent logs refusals at debug level only: 0 at info).
	RefusalLogLines map[string]int `json:"refusal_log_lines"`
	Checks          []check.Result `json:"checks"`
	// Errors are harness failures (a node that would not restart, ...).
	Errors []string `json:"errors,omitempty"`
	Valid  bool     `json:"valid"`
	// Violations totals the checkers' violation counts.
	Violations int `json:"violations"`
	// Reproduce is the command that replays this run's schedule.
	Reproduce string `json:"reproduce"`
	// Took is how long the whole run took (start to report), in seconds.
	Took float64 `json:"took_s"`
}

// Finish sets Valid and Violations from the checks and errors.
func (r *Run) Finish() {
	r.Valid = len(r.Errors) == 0
	r.Violations = 0
	for _, c := range r.Checks {
		r.Violations += c.Count
		if !c.Valid {
			r.Valid = false
		}
	}
}

// Summarize computes the operation statistics of a history whose traffic
// lasted d.
func Summarize(ops []history.Op, d time.Duration) Ops {
	out := Ops{ByType: map[string]int{}, ByKind: map[string]map[string]int{}}
	var lat []float64
	for _, p := range history.Pairs(ops) {
		out.Total++
		st := p.Status()
		out.ByType[st]++
		if out.ByKind[p.Invoke.F] == nil {
			out.ByKind[p.Invoke.F] = map[string]int{}
		}
		out.ByKind[p.Invoke.F][st]++
		if st == history.OK {
			lat = append(lat, float64(p.Complete.Time-p.Invoke.Time)/1e6)
		}
	}
	sort.Float64s(lat)
	q := func(x float64) float64 {
		if len(lat) == 0 {
			return 0
		}
		return lat[int(math.Min(float64(len(lat)-1), x*float64(len(lat))))]
	}
	out.Latency = Latency{P50: q(0.5), P95: q(0.95), P99: q(0.99), Max: q(1)}
	if d > 0 {
		out.PerSecond = float64(out.ByType[history.OK]) / d.Seconds()
	}
	return out
}

// Recovery returns, for a stop at time stop (Unix ns), how long until every
// node had applied what any node had applied at the stop, from the status
// samples; -1 if that did not happen before until (the next injection's
// start: a later fault would be measured, not this one's aftermath).
func Recovery(samples []history.Sample, stop, until int64) float64 {
	target := map[string]uint64{}
	latest := map[string]int64{}
	for _, s := range samples {
		if s.Error != "" || s.Complete > stop {
			continue
		}
		if s.Complete >= latest[s.Node] {
			latest[s.Node] = s.Complete
			for k, v := range s.Applied {
				target[k] = max(target[k], v)
			}
		}
	}
	nodes := map[string]bool{}
	for _, s := range samples {
		nodes[s.Node] = true
	}
	var worst int64
	for n := range nodes {
		var first int64 = -1
		for _, s := range samples {
			if s.Node != n || s.Error != "" || s.Complete < stop || s.Complete > until {
				continue
			}
			ok := true
			for k, v := range target {
				if s.Applied[k] < v {
					ok = false
					break
				}
			}
			if ok && (first < 0 || s.Complete < first) {
				first = s.Complete
			}
		}
		if first < 0 {
			return -1
		}
		worst = max(worst, first-stop)
	}
	return float64(worst) / 1e9
}

// WriteRun writes summary.json and index.html into the run's directory.
func WriteRun(r *Run, ops []history.Op) error {
	b, err := json.MarshalIndent(r, "", "  ")
	if err != nil {
		return err
	}
	if err := os.WriteFile(filepath.Join(r.Dir, "summary.json"), append(b, '\n'), 0o644); err != nil {
		return fmt.Errorf("write summary: %w", err)
	}
	f, err := os.Create(filepath.Join(r.Dir, "index.html"))
	if err != nil {
		return err
	}
	if err := runPage(f, r, ops); err != nil {
		f.Close()
		return fmt.Errorf("write report page: %w", err)
	}
	return f.Close()
}

// Suite is the summary of several runs.
type Suite struct {
	Start      time.Time `json:"start"`
	Runs       []*Run    `json:"runs"`
	Valid      bool      `json:"valid"`
	Violations int       `json:"violations"`
	Ops        int       `json:"ops"`
	Injections int       `json:"injections"`
	// FailedSeeds are the seeds of the runs that failed.
	FailedSeeds []uint64 `json:"failed_seeds,omitempty"`
}

// Add records a run.
func (s *Suite) Add(r *Run) {
	s.Runs = append(s.Runs, r)
	s.Valid = true
	s.Violations, s.Ops, s.Injections, s.FailedSeeds = 0, 0, 0, nil
	for _, r := range s.Runs {
		s.Violations += r.Violations
		s.Ops += r.Ops.Total
		s.Injections += len(r.Injections)
		if !r.Valid {
			s.Valid = false
			s.FailedSeeds = append(s.FailedSeeds, r.Seed)
		}
	}
}

// WriteSuite writes summary.json and index.html into dir.
func WriteSuite(dir string, s *Suite) error {
	b, err := json.MarshalIndent(s, "", "  ")
	if err != nil {
		return err
	}
	if err := os.WriteFile(filepath.Join(dir, "summary.json"), append(b, '\n'), 0o644); err != nil {
		return err
	}
	f, err := os.Create(filepath.Join(dir, "index.html"))
	if err != nil {
		return err
	}
	if err := suitePage(f, dir, s); err != nil {
		f.Close()
		return err
	}
	return f.Close()
}
