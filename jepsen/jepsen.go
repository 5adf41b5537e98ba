package jepsen

import (
	"context"
	"errors"
	"fmt"
	"io"
	"log/slog"
	"os"
	"path/filepath"
	"sort"
	"strings"
	"sync"
	"time"

	pb "github.com/lattice-sync/lattice/api/lattice/v1"
	"github.com/lattice-sync/lattice/cluster/clustertest"
	"github.com/lattice-sync/lattice/jepsen/check"
	"github.com/lattice-sync/lattice/jepsen/fault"
	"github.com/lattice-sync/lattice/jepsen/history"
	"github.com/lattice-sync/lattice/jepsen/nodes"
	"github.com/lattice-sync/lattice/jepsen/report"
	"github.com/lattice-sync/lattice/jepsen/workload"
)

// Config configures a suite of runs.
type Config struct {
	// Runs is the number of runs; run i uses seed Seed+i.
	Runs int
	// Duration is each run's traffic time.
	Duration time.Duration
	// Seed fixes the fault schedules and the clients' choices.
	Seed uint64
	// Faults is a comma-separated list of fault and group names
	// (fault.Parse): "all", "partition,kill", "none".
	Faults string
	// OutDir receives one directory per run and the suite summary.
	OutDir string
	// Nodes is the cluster size.
	Nodes int
	// Keys, Clients, Rate, Timeout and CrossNode configure the API
	// workload (workload.APIConfig).
	Keys      int
	Clients   int
	Rate      float64
	Timeout   time.Duration
	CrossNode float64
	// Limits bound the faults.
	Limits fault.Limits
	// Lead is the fault-free time at the start of traffic; Tail the
	// fault-free time after the final heal, traffic still running.
	Lead, Tail time.Duration
	// ConvergeTimeout bounds the wait for convergence after traffic stops.
	ConvergeTimeout time.Duration
	// MaxOffset is the nodes' --max-offset.
	MaxOffset time.Duration
	// SampleEvery is the status sampling interval.
	SampleEvery time.Duration
	// StrictContext makes cross-node read-context hazards violations.
	StrictContext bool
	// Tolerate names known bugs (KnownBugs) whose violations are reported
	// as notes instead of failing the run.
	Tolerate []string
	// KeepData keeps the nodes' data directories of passing runs.
	KeepData bool
	// Bin is the lattice binary; empty builds one into OutDir.
	Bin string
	// Logger receives progress; default discards.
	Logger *slog.Logger
}

// DefaultConfig is the full suite: 20 runs of 60 s with every fault.
func DefaultConfig() Config {
	return Config{Runs: 20, Duration: 60 * time.Second, Seed: 1, Faults: "all", OutDir: "jepsen/out", Nodes: 3,
		Keys: 8, Clients: 16, Rate: 150, Timeout: 2 * time.Second, CrossNode: 0.2, Limits: fault.DefaultLimits(),
		Lead: 2 * time.Second, Tail: 5 * time.Second, ConvergeTimeout: 60 * time.Second, MaxOffset: 500 * time.Millisecond,
		SampleEvery: 250 * time.Millisecond}
}

// SmokeConfig is the short suite make test runs: 2 runs of 25 s with every
// fault, shorter pauses, less traffic.
func SmokeConfig() Config {
	c := DefaultConfig()
	c.Runs, c.Duration, c.Rate, c.Clients, c.Timeout = 2, 25*time.Second, 60, 8, time.Second
	c.Limits = fault.SmokeLimits()
	c.Tail = 3 * time.Second
	return c
}

// schema is the entity the API workload writes: three lww fields, one mvr
// and one with a priority policy, history kept forever.
var schema = check.Schema{Entity: "item", Fields: []check.Field{
	{Name: "a", Policy: "lww"}, {Name: "b", Policy: "lww"}, {Name: "c", Policy: "lww"},
	{Name: "m", Policy: "mvr"}, {Name: "p", Policy: "priority", Priority: []string{"api-primary", "api"}},
}}

// origins the API workload writes as (api-primary one time in four).
var origins = []string{"api", "api", "api", "api-primary"}

func (c *Config) fill() {
	d := DefaultConfig()
	if c.Runs <= 0 {
		c.Runs = 1
	}
	if c.Duration <= 0 {
		c.Duration = d.Duration
	}
	if c.OutDir == "" {
		c.OutDir = d.OutDir
	}
	if c.Nodes <= 0 {
		c.Nodes = d.Nodes
	}
	if c.Limits == (fault.Limits{}) {
		c.Limits = d.Limits
	}
	if c.ConvergeTimeout <= 0 {
		c.ConvergeTimeout = d.ConvergeTimeout
	}
	if c.MaxOffset <= 0 {
		c.MaxOffset = d.MaxOffset
	}
	if c.SampleEvery <= 0 {
		c.SampleEvery = d.SampleEvery
	}
	if c.Timeout <= 0 {
		c.Timeout = d.Timeout
	}
	if c.Logger == nil {
		c.Logger = slog.New(slog.DiscardHandler)
	}
}

// Run runs the suite and writes its reports, calling done (if set) after
// each run. It returns an error only when the harness itself cannot run (no
// namespace, no binary); violations are in the suite's runs.
func Run(ctx context.Context, cfg Config, done func(*report.Run)) (*report.Suite, error) {
	cfg.fill()
	if !clustertest.InNetNS() {
		return nil, errors.New("the harness needs root and a private network namespace: call clustertest.EnterNetNS first")
	}
	topo := fault.Topology{Nodes: nodeIDs(cfg.Nodes), MaxOffset: cfg.MaxOffset}
	if _, err := fault.Parse(cfg.Faults, topo); err != nil {
		return nil, err
	}
	if err := os.MkdirAll(cfg.OutDir, 0o755); err != nil {
		return nil, err
	}
	if cfg.Bin == "" {
		bin, err := clustertest.Build(cfg.OutDir)
		if err != nil {
			return nil, err
		}
		cfg.Bin = bin
	}
	suite := &report.Suite{Start: time.Now(), Valid: true}
	for i := 0; i < cfg.Runs && ctx.Err() == nil; i++ {
		r, err := RunOne(ctx, cfg, i, cfg.Seed+uint64(i))
		if err != nil {
			return suite, err
		}
		suite.Add(r)
		if done != nil {
			done(r)
		}
		if err := report.WriteSuite(cfg.OutDir, suite); err != nil {
			return suite, err
		}
	}
	return suite, ctx.Err()
}

func nodeIDs(n int) []string {
	out := make([]string, n)
	for i := range out {
		out[i] = fmt.Sprintf("n%d", i+1)
	}
	return out
}

// Reproduce is the command that replays a run with seed under cfg.
func Reproduce(cfg Config, seed uint64) string {
	var b strings.Builder
	fmt.Fprintf(&b, "make jepsen ARGS='--runs 1 --seed %d --duration %s --faults %s --nodes %d --rate %g --clients %d --keys %d --cross-node %g",
		seed, cfg.Duration, cfg.Faults, cfg.Nodes, cfg.Rate, cfg.Clients, cfg.Keys, cfg.CrossNode)
	if cfg.Limits == fault.SmokeLimits() {
		b.WriteString(" --smoke")
	}
	if cfg.StrictContext {
		b.WriteString(" --strict-context")
	}
	if len(cfg.Tolerate) > 0 {
		fmt.Fprintf(&b, " --tolerate %s", strings.Join(cfg.Tolerate, ","))
	}
	b.WriteString("'")
	return b.String()
}

// RunOne runs one run with seed and writes its report into
// OutDir/run-<index>-seed-<seed>. cfg.Bin must be set.
func RunOne(ctx context.Context, cfg Config, index int, seed uint64) (*report.Run, error) {
	cfg.fill()
	began := time.Now()
	log := cfg.Logger.With("run", index, "seed", seed)
	dir, err := filepath.Abs(filepath.Join(cfg.OutDir, fmt.Sprintf("run-%03d-seed-%d", index, seed)))
	if err != nil {
		return nil, err
	}
	_ = os.RemoveAll(dir)
	if err := os.MkdirAll(dir, 0o755); err != nil {
		return nil, err
	}
	topo := fault.Topology{Nodes: nodeIDs(cfg.Nodes), MaxOffset: cfg.MaxOffset}
	faults, err := fault.Parse(cfg.Faults, topo)
	if err != nil {
		return nil, err
	}
	rec, err := history.NewRecorder(dir)
	if err != nil {
		return nil, err
	}
	defer rec.Close()
	r := &report.Run{Index: index, Seed: seed, Dir: dir, Workload: "api", Nodes: cfg.Nodes, Duration: cfg.Duration.Seconds(),
		Reproduce: Reproduce(cfg, seed), ClockRefusals: map[string]uint64{}}
	for _, f := range faults {
		r.Faults = append(r.Faults, f.Name())
	}

	// Plan the schedule from the seed before anything runs.
	steps := fault.Plan(seed, faults, topo, cfg.Limits, cfg.Lead, cfg.Duration-cfg.Tail)
	for _, s := range steps {
		r.Schedule = append(r.Schedule, report.Step{At: s.At.Seconds(), Hold: s.Hold().Seconds(), Fault: s.Fault, Desc: s.String(), Targets: s.Targets()})
	}
	log.Info("run starting", "dir", dir, "injections", len(steps))

	// Cluster.
	cl, err := nodes.Start(ctx, nodes.Config{Bin: cfg.Bin, Dir: filepath.Join(dir, "nodes"), N: cfg.Nodes, Schema: schema.YAML(),
		MaxOffset: cfg.MaxOffset, Logger: log,
		OnClock: func(node string, off time.Duration) {
			rec.Event(history.Event{Kind: "clock", Targets: []string{node}, OffsetMS: off.Milliseconds()})
		}})
	if err != nil {
		r.Errors = append(r.Errors, "start cluster: "+err.Error())
		r.Finish()
		return r, report.WriteRun(r, nil)
	}
	defer func() {
		if err := cl.Close(); err != nil {
			log.Warn("close cluster", "err", err)
		}
		if r.Valid && !cfg.KeepData {
			for _, nd := range cl.Nodes {
				_ = os.RemoveAll(nd.DataDir)
			}
		}
	}()
	var wnodes []workload.Node
	for _, nd := range cl.Nodes {
		wnodes = append(wnodes, workload.Node{ID: nd.ID, Records: nd.Records()})
	}

	// Status sampler: every node's HLC and applied vector, all run long.
	sampleCtx, stopSampling := context.WithCancel(ctx)
	var sampling sync.WaitGroup
	for _, nd := range cl.Nodes {
		sampling.Add(1)
		go func() {
			defer sampling.Done()
			sample(sampleCtx, nd, rec, cfg.SampleEvery)
		}()
	}
	defer func() { stopSampling(); sampling.Wait() }()

	// Traffic and faults.
	w := workload.NewAPI(workload.APIConfig{Seed: seed, Clients: cfg.Clients, Rate: cfg.Rate, Entity: schema.Entity,
		Keys: cfg.Keys, Fields: schema.FieldNames(), Origins: origins, Timeout: cfg.Timeout, CrossNode: cfg.CrossNode})
	t0 := time.Now()
	r.Start = t0
	trafficCtx, stopTraffic := context.WithDeadline(ctx, t0.Add(cfg.Duration))
	defer stopTraffic()
	var traffic sync.WaitGroup
	traffic.Add(1)
	go func() {
		defer traffic.Done()
		if err := w.Run(trafficCtx, workload.Env{Nodes: wnodes, Recorder: rec}); err != nil {
			log.Error("workload", "err", err)
		}
	}()
	env := fault.Env{Cluster: cl}
	fault.Run(trafficCtx, env, steps, t0, &observer{rec: rec, log: log})
	// Final heal: nothing may stay broken, whatever the schedule did.
	if err := cl.HealAll(context.Background()); err != nil {
		r.Errors = append(r.Errors, "final heal: "+err.Error())
	}
	rec.Event(history.Event{Kind: "heal"})
	healed := time.Now()
	r.Heal = healed.Sub(t0).Seconds()
	traffic.Wait()
	trafficEnd := time.Now()
	log.Info("traffic stopped; waiting for convergence")

	// Converge, read the final state, check.
	in := &check.Input{Schema: schema, Nodes: cl.IDs(), N: cfg.Nodes, MaxOffset: cfg.MaxOffset, StrictContext: cfg.StrictContext,
		Tolerate: cfg.Tolerate}
	_, err = cl.WaitConverged(ctx, cfg.ConvergeTimeout)
	if err != nil {
		in.ConvergeErr = err.Error()
		r.ConvergeError = err.Error()
	} else {
		in.ConvergeTook = time.Since(trafficEnd)
		r.ConvergeSeconds = in.ConvergeTook.Seconds()
		r.ConvergeAfterHeal = time.Since(healed).Seconds()
	}
	for _, nd := range cl.Nodes {
		mctx, cancel := context.WithTimeout(ctx, 5*time.Second)
		resp, err := nd.Cluster().Members(mctx, &pb.MembersRequest{})
		cancel()
		if err == nil {
			for _, m := range resp.GetMembers() {
				r.ClockRefusals[nd.ID] += m.GetClockRefusals()
			}
		}
	}
	r.RefusalLogLines = map[string]int{}
	for _, nd := range cl.Nodes {
		r.RefusalLogLines[nd.ID] = countLines(nd.Log, "ahead of the local clock")
	}
	var keys []string
	for k := 0; k < cfg.Keys; k++ {
		keys = append(keys, fmt.Sprintf("k%d", k))
	}
	in.Final = check.ReadFinal(ctx, wnodes, &schema, keys)
	stopSampling()
	sampling.Wait()
	in.Ops, in.Samples, in.Events = rec.Snapshot()
	r.Checks = check.Run(in, check.All())

	// Report.
	r.Ops = report.Summarize(in.Ops, cfg.Duration)
	r.Injections = injections(in.Events, in.Samples, t0)
	for _, in := range r.Injections {
		if in.StartErr != "" || in.StopErr != "" {
			r.Errors = append(r.Errors, fmt.Sprintf("fault %d (%s): %s %s", in.Step, in.Desc, in.StartErr, in.StopErr))
		}
	}
	r.Finish()
	if !r.Valid {
		// Keep what the nodes returned, for the post-mortem.
		if f, err := os.Create(filepath.Join(dir, "final.json")); err == nil {
			_ = in.Final.WriteJSON(f)
			f.Close()
		}
	}
	r.Took = time.Since(began).Seconds()
	if err := rec.Close(); err != nil {
		r.Errors = append(r.Errors, "history: "+err.Error())
		r.Finish()
	}
	log.Info("run done", "valid", r.Valid, "violations", r.Violations, "ops", r.Ops.Total)
	return r, report.WriteRun(r, in.Ops)
}

// injections pairs the start and stop events of each step.
func injections(events []history.Event, samples []history.Sample, t0 time.Time) []report.Injection {
	var out []report.Injection
	var stops []int64 // Unix ns, by injection
	idx := map[int]int{}
	sec := func(t int64) float64 { return float64(t-t0.UnixNano()) / 1e9 }
	for _, e := range events {
		switch e.Kind {
		case "start":
			idx[e.Step] = len(out)
			out = append(out, report.Injection{Step: e.Step, Fault: e.Fault, Desc: e.Desc, Targets: e.Targets, Start: sec(e.Time), StartErr: e.Error, Recovery: -1})
			stops = append(stops, 0)
		case "stop":
			if i, ok := idx[e.Step]; ok {
				out[i].Stop, out[i].StopErr = sec(e.Time), e.Error
				stops[i] = e.Time
			}
		}
	}
	for i := range out {
		if stops[i] == 0 {
			continue
		}
		until := int64(1<<63 - 1)
		if i+1 < len(out) {
			until = t0.UnixNano() + int64(out[i+1].Start*1e9)
		}
		out[i].Recovery = report.Recovery(samples, stops[i], until)
	}
	return out
}

// countLines counts the lines of file that contain s.
func countLines(file, s string) int {
	b, err := os.ReadFile(file)
	if err != nil {
		return 0
	}
	n := 0
	for _, l := range strings.Split(string(b), "\n") {
		if strings.Contains(l, s) {
			n++
		}
	}
	return n
}

// sample reads the node's status every interval until ctx ends.
func sample(ctx context.Context, nd *nodes.Node, rec *history.Recorder, every time.Duration) {
	t := time.NewTicker(every)
	defer t.Stop()
	for {
		s := history.Sample{Node: nd.ID, Invoke: time.Now().UnixNano()}
		sctx, cancel := context.WithTimeout(ctx, time.Second)
		st, err := nd.Cluster().Status(sctx, &pb.StatusRequest{})
		cancel()
		s.Complete = time.Now().UnixNano()
		if err != nil {
			if ctx.Err() != nil {
				return
			}
			s.Error = err.Error()
		} else {
			s.HLC, s.Applied = st.GetHlc(), st.GetApplied().GetEntries()
		}
		rec.Sample(s)
		select {
		case <-ctx.Done():
			return
		case <-t.C:
		}
	}
}

// observer records fault events.
type observer struct {
	rec *history.Recorder
	log *slog.Logger
}

func errString(err error) string {
	if err == nil {
		return ""
	}
	return err.Error()
}

func (o *observer) Started(i int, s fault.Step, err error) {
	o.log.Info("fault started", "step", i, "fault", s.Fault, "what", s.String(), "err", err)
	o.rec.Event(history.Event{Kind: "start", Step: i, Fault: s.Fault, Desc: s.String(), Targets: s.Targets(), Error: errString(err)})
}

func (o *observer) Stopped(i int, s fault.Step, err error) {
	o.log.Info("fault stopped", "step", i, "fault", s.Fault, "err", err)
	o.rec.Event(history.Event{Kind: "stop", Step: i, Fault: s.Fault, Desc: s.String(), Targets: s.Targets(), Error: errString(err)})
}

// The node runner is what faults act on.
var _ fault.Cluster = (*nodes.Cluster)(nil)

// Progress returns a Run callback that prints one line per run to w.
func Progress(w io.Writer) func(*report.Run) {
	return func(r *report.Run) {
		verdict := "PASS"
		if !r.Valid {
			verdict = fmt.Sprintf("FAIL (%d violations, %d errors)", r.Violations, len(r.Errors))
		}
		fmt.Fprintf(w, "run %d seed %d: %s: %d ops (%d ok, %d unknown, %d fail), %d faults, converged %.2fs after traffic stopped (%.1fs after the final heal), %.0fs\n",
			r.Index, r.Seed, verdict, r.Ops.Total, r.Ops.ByType[history.OK], r.Ops.ByType[history.Unknown],
			r.Ops.ByType[history.Fail], len(r.Injections), r.ConvergeSeconds, r.ConvergeAfterHeal, r.Took)
		for _, c := range r.Checks {
			if !c.Valid {
				fmt.Fprintf(w, "  %s: %d violations, e.g. %s\n", c.Name, c.Count, first(c.Violations))
			}
		}
		for _, e := range r.Errors {
			fmt.Fprintf(w, "  error: %s\n", e)
		}
	}
}

func first(xs []string) string {
	if len(xs) == 0 {
		return "-"
	}
	return xs[0]
}

// Describe lists the registered faults and groups, for --help.
func Describe() string {
	var b strings.Builder
	b.WriteString("faults: " + strings.Join(fault.Names(), ", ") + "\ngroups: all, none")
	groups := fault.Groups()
	names := make([]string, 0, len(groups))
	for g := range groups {
		names = append(names, g)
	}
	sort.Strings(names)
	for _, g := range names {
		fmt.Fprintf(&b, ", %s (%s)", g, strings.Join(groups[g], ","))
	}
	return b.String()
}
