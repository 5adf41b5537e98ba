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
	"github.com/lattice-sync/lattice/jepsen/pg"
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
	// Workloads is a comma-separated list of workloads: "api" (workload a)
	// and "postgres" (workload b: two databases synced through the
	// cluster, with the PostgreSQL faults); default both.
	Workloads string
	// PGClients, PGRate and PGRows configure the PostgreSQL workload
	// (workload.PostgresConfig).
	PGClients int
	PGRate    float64
	PGRows    int
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
		Workloads: "api,postgres", PGClients: 4, PGRate: 40, PGRows: 8,
		Keys: 8, Clients: 16, Rate: 150, Timeout: 2 * time.Second, CrossNode: 0.2, Limits: fault.DefaultLimits(),
		Lead: 2 * time.Second, Tail: 5 * time.Second, ConvergeTimeout: 60 * time.Second, MaxOffset: 500 * time.Millisecond,
		SampleEvery: 250 * time.Millisecond}
}

// SmokeConfig is the short suite make test runs: 2 runs of 25 s with every
// fault, shorter pauses, less traffic.
func SmokeConfig() Config {
	c := DefaultConfig()
	c.Runs, c.Duration, c.Rate, c.Clients, c.Timeout = 2, 25*time.Second, 60, 8, time.Second
	c.Workloads = "api"
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

// pgSchema is the entity the PostgreSQL workload's tables map to (as in
// cmd/lattice-demo): three lww fields, history kept forever.
var pgSchema = check.Schema{Entity: "contact", Fields: []check.Field{
	{Name: "email", Policy: "lww"}, {Name: "name", Policy: "lww"}, {Name: "phone", Policy: "lww"},
}}

// pgIDBase keeps the PostgreSQL workload's operation ids apart from the
// API workload's.
const pgIDBase = 1_000_000_000

// workloads parses Config.Workloads.
func (c *Config) workloads() (api, postgres bool, err error) {
	for _, w := range strings.Split(c.Workloads, ",") {
		switch strings.TrimSpace(w) {
		case "api":
			api = true
		case "postgres", "pg":
			postgres = true
		case "":
		default:
			return false, false, fmt.Errorf("unknown workload %q (workloads: api, postgres)", w)
		}
	}
	if !api && !postgres {
		return false, false, errors.New("no workload: --workload api, postgres or api,postgres")
	}
	return api, postgres, nil
}

// topology is what the run's faults are planned against.
func (c *Config) topology() (fault.Topology, error) {
	topo := fault.Topology{Nodes: nodeIDs(c.Nodes), MaxOffset: c.MaxOffset}
	_, postgres, err := c.workloads()
	if postgres {
		for _, sp := range pg.Specs {
			topo.Databases = append(topo.Databases, sp.Name)
		}
	}
	return topo, err
}

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
	if c.Workloads == "" {
		c.Workloads = d.Workloads
	}
	if c.PGClients <= 0 {
		c.PGClients = d.PGClients
	}
	if c.PGRate <= 0 {
		c.PGRate = d.PGRate
	}
	if c.PGRows <= 0 {
		c.PGRows = d.PGRows
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
	topo, err := cfg.topology()
	if err != nil {
		return nil, err
	}
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
	fmt.Fprintf(&b, "make jepsen ARGS='--runs 1 --seed %d --duration %s --workload %s --faults %s --nodes %d --rate %g --clients %d --keys %d --cross-node %g",
		seed, cfg.Duration, cfg.Workloads, cfg.Faults, cfg.Nodes, cfg.Rate, cfg.Clients, cfg.Keys, cfg.CrossNode)
	if _, postgres, _ := cfg.workloads(); postgres {
		fmt.Fprintf(&b, " --pg-rate %g --pg-clients %d --pg-rows %d", cfg.PGRate, cfg.PGClients, cfg.PGRows)
	}
	if d := fault.DefaultLimits(); cfg.Limits.DownMax != d.DownMax && cfg.Limits != fault.SmokeLimits() {
		fmt.Fprintf(&b, " --db-down-max %s", cfg.Limits.DownMax)
	}
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
	topo, err := cfg.topology()
	if err != nil {
		return nil, err
	}
	useAPI, usePG, _ := cfg.workloads()
	faults, err := fault.Parse(cfg.Faults, topo)
	if err != nil {
		return nil, err
	}
	rec, err := history.NewRecorder(dir)
	if err != nil {
		return nil, err
	}
	defer rec.Close()
	var names []string
	if useAPI {
		names = append(names, "api")
	}
	if usePG {
		names = append(names, "postgres")
	}
	r := &report.Run{Index: index, Seed: seed, Dir: dir, Workload: strings.Join(names, "+"), Nodes: cfg.Nodes, Duration: cfg.Duration.Seconds(),
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

	// Databases: started, seeded and named in the nodes' configuration
	// before the cluster starts (the connectors' initial snapshot captures
	// the seeded rows).
	config := schema.YAML()
	var dbs *pg.Set
	var pgw *workload.Postgres
	if usePG {
		dbs, err = pg.Start(ctx, pg.Specs)
		if err != nil {
			r.Errors = append(r.Errors, "start PostgreSQL: "+err.Error())
			r.Finish()
			return r, report.WriteRun(r, nil)
		}
		defer func() {
			dbs.KeepLogs(dir)
			if err := dbs.Close(); err != nil {
				log.Warn("close databases", "err", err)
			}
		}()
		var tables []workload.PGTable
		for _, d := range dbs.DBs {
			tables = append(tables, workload.PGTable{DB: d.Name, DSN: d.ClientDSN(), Table: d.Table, KeyCol: d.KeyCol, Columns: d.Columns})
		}
		pgw = workload.NewPostgres(workload.PostgresConfig{Seed: seed, Clients: cfg.PGClients, Rate: cfg.PGRate, Entity: pgSchema.Entity,
			Rows: cfg.PGRows, Tables: tables, Fields: pgSchema.FieldNames(), Timeout: cfg.Timeout, IDBase: pgIDBase})
		if err := pgw.Seed(ctx, rec); err != nil {
			r.Errors = append(r.Errors, err.Error())
			r.Finish()
			return r, report.WriteRun(r, nil)
		}
		config = check.YAML(schema, pgSchema) + dbs.ConnectorYAML(pgSchema.Entity)
	}

	// Cluster.
	cl, err := nodes.Start(ctx, nodes.Config{Bin: cfg.Bin, Dir: filepath.Join(dir, "nodes"), N: cfg.Nodes, Schema: config,
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
	pgKeys := check.PGKeys(cfg.PGRows)
	if usePG {
		// The seeded rows must have reached the other database before
		// traffic starts.
		took, err := settle(ctx, wnodes, dbs, pgKeys, cfg.ConvergeTimeout)
		if err != nil {
			r.Errors = append(r.Errors, "initial sync: "+err.Error())
			r.Finish()
			return r, report.WriteRun(r, nil)
		}
		log.Info("databases in sync", "took", took)
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
	var ws []workload.Workload
	if useAPI {
		ws = append(ws, workload.NewAPI(workload.APIConfig{Seed: seed, Clients: cfg.Clients, Rate: cfg.Rate, Entity: schema.Entity,
			Keys: cfg.Keys, Fields: schema.FieldNames(), Origins: origins, Timeout: cfg.Timeout, CrossNode: cfg.CrossNode}))
	}
	if usePG {
		ws = append(ws, pgw)
	}
	t0 := time.Now()
	r.Start = t0
	trafficCtx, stopTraffic := context.WithDeadline(ctx, t0.Add(cfg.Duration))
	defer stopTraffic()
	var traffic sync.WaitGroup
	for _, w := range ws {
		traffic.Add(1)
		go func() {
			defer traffic.Done()
			if err := w.Run(trafficCtx, workload.Env{Nodes: wnodes, Recorder: rec}); err != nil {
				log.Error("workload", "workload", w.Name(), "err", err)
			}
		}()
	}
	env := fault.Env{Cluster: cl}
	if usePG {
		env.Databases, env.Owner = dbs, func(ctx context.Context, name string) (string, error) { return owner(ctx, cl, name) }
	}
	fault.Run(trafficCtx, env, steps, t0, &observer{rec: rec, log: log})
	// Final heal: nothing may stay broken, whatever the schedule did.
	if usePG {
		if err := dbs.HealAll(context.Background()); err != nil {
			r.Errors = append(r.Errors, "final heal of the databases: "+err.Error())
		}
	}
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
	if usePG {
		// The databases settle: every node returns the same records of
		// the entity and both databases hold them; then the nodes agree
		// again (the connectors may have written meanwhile).
		in.PG = &check.PGInput{Schema: pgSchema, DBs: dbs.Names()}
		took, err := settle(ctx, wnodes, dbs, pgKeys, cfg.ConvergeTimeout)
		if err != nil {
			in.PG.SettleErr = err.Error()
		} else {
			in.PG.SettleTook = time.Since(trafficEnd)
			r.PGSettleSeconds = in.PG.SettleTook.Seconds()
			log.Info("databases settled", "took", took)
			if _, err := cl.WaitConverged(ctx, cfg.ConvergeTimeout); err != nil {
				in.PG.SettleErr = "after the databases settled, the nodes did not converge: " + err.Error()
			}
		}
		if in.PG.SettleErr != "" {
			r.PGSettleError = in.PG.SettleErr
		}
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
	if usePG {
		in.PG.Final = check.ReadFinal(ctx, wnodes, &pgSchema, pgKeys)
		in.PG.Rows = map[string]map[string]map[string]string{}
		for _, d := range dbs.DBs {
			rctx, cancel := context.WithTimeout(ctx, 10*time.Second)
			rows, err := d.Rows(rctx)
			cancel()
			if err != nil {
				in.PG.RowErrors = append(in.PG.RowErrors, err.Error())
				continue
			}
			in.PG.Rows[d.Name] = map[string]map[string]string{}
			for k, row := range rows {
				in.PG.Rows[d.Name][pg.Key(k)] = row.Fields
			}
		}
	}
	stopSampling()
	sampling.Wait()
	in.Ops, in.Samples, in.Events = rec.Snapshot()
	r.Checks = check.Run(in, check.ForRun(usePG))

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
		if in.PG != nil && in.PG.Final != nil {
			if f, err := os.Create(filepath.Join(dir, "final-"+pgSchema.Entity+".json")); err == nil {
				_ = in.PG.Final.WriteJSON(f)
				f.Close()
			}
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
		if r.PGSettleSeconds > 0 {
			fmt.Fprintf(w, "  databases held the cluster's records %.2fs after traffic stopped\n", r.PGSettleSeconds)
		}
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

// owner returns the node the cluster placed connector on, from the status
// of the first running node that answers.
func owner(ctx context.Context, cl *nodes.Cluster, connector string) (string, error) {
	var errs []error
	for _, nd := range cl.Nodes {
		if !nd.Running() || nd.Paused() {
			continue
		}
		sctx, cancel := context.WithTimeout(ctx, 2*time.Second)
		st, err := nd.Cluster().Status(sctx, &pb.StatusRequest{})
		cancel()
		if err != nil {
			errs = append(errs, fmt.Errorf("%s: %w", nd.ID, err))
			continue
		}
		for _, p := range st.GetConnectors() {
			if p.GetName() == connector {
				if p.GetNode() == "" {
					return "", fmt.Errorf("connector %s is not placed (status of %s)", connector, nd.ID)
				}
				return p.GetNode(), nil
			}
		}
		errs = append(errs, fmt.Errorf("%s: no connector %s in its status", nd.ID, connector))
	}
	return "", fmt.Errorf("no node named the owner of %s: %w", connector, errors.Join(errs...))
}

// settle waits until every node returns the same values for every record
// of keys of the PostgreSQL workload's entity and every database's rows
// hold them through the column mapping, and returns how long it took; on
// timeout the error says the last difference.
func settle(ctx context.Context, nds []workload.Node, dbs *pg.Set, keys []string, timeout time.Duration) (time.Duration, error) {
	start := time.Now()
	for {
		why := pgDiff(ctx, nds, dbs, keys)
		if why == "" {
			return time.Since(start), nil
		}
		if time.Since(start) > timeout {
			return 0, fmt.Errorf("the databases did not equal the cluster's records within %s: %s", timeout, why)
		}
		select {
		case <-ctx.Done():
			return 0, ctx.Err()
		case <-time.After(200 * time.Millisecond):
		}
	}
}

// pgDiff returns the first difference between the nodes' records of keys
// and between them and the databases' rows ("" when there is none).
func pgDiff(ctx context.Context, nds []workload.Node, dbs *pg.Set, keys []string) string {
	var ref map[string]map[string]string // key -> field -> value ("" deleted: no entry)
	for _, nd := range nds {
		got := map[string]map[string]string{}
		for _, k := range keys {
			gctx, cancel := context.WithTimeout(ctx, 2*time.Second)
			rec, err := nd.Records.Get(gctx, &pb.GetRequest{Entity: pgSchema.Entity, Id: k})
			cancel()
			if err != nil {
				return fmt.Sprintf("%s: get %s: %v", nd.ID, k, err)
			}
			if rec.GetDeleted() {
				continue
			}
			got[k] = map[string]string{}
			for _, f := range rec.GetFields() {
				if len(f.GetLive()) > 0 {
					got[k][f.GetName()] = f.GetValue().GetStringValue()
				}
			}
		}
		if ref == nil {
			ref = got
			continue
		}
		for _, k := range keys {
			if !sameFields(ref[k], got[k]) {
				return fmt.Sprintf("%s %s: %s has %v, %s has %v", pgSchema.Entity, k, nds[0].ID, ref[k], nd.ID, got[k])
			}
		}
	}
	for _, d := range dbs.DBs {
		rctx, cancel := context.WithTimeout(ctx, 5*time.Second)
		rows, err := d.Rows(rctx)
		cancel()
		if err != nil {
			return err.Error()
		}
		if len(rows) != len(ref) {
			return fmt.Sprintf("%s holds %d rows, the cluster %d records", d.Name, len(rows), len(ref))
		}
		for k, row := range rows {
			if want := ref[pg.Key(k)]; !sameFields(want, row.Fields) {
				return fmt.Sprintf("%s row %d holds %v, the cluster's record %v", d.Name, k, row.Fields, want)
			}
		}
	}
	return ""
}

func sameFields(a, b map[string]string) bool {
	if (a == nil) != (b == nil) || len(a) != len(b) {
		return false
	}
	for k, v := range a {
		if bv, ok := b[k]; !ok || bv != v {
			return false
		}
	}
	return true
}
