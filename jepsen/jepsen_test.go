package jepsen

import (
	"context"
	"fmt"
	"os"
	"path/filepath"
	"strings"
	"testing"
	"time"

	pb "github.com/lattice-sync/lattice/api/lattice/v1"
	"github.com/lattice-sync/lattice/api/server"
	"github.com/lattice-sync/lattice/cluster/clustertest"
	"github.com/lattice-sync/lattice/jepsen/check"
	"github.com/lattice-sync/lattice/jepsen/nodes"
	"github.com/lattice-sync/lattice/jepsen/report"
)

func needNetNS(t *testing.T) {
	t.Helper()
	if !clustertest.InNetNS() {
		t.Skip("the fault harness needs root, unshare, ip and iptables (a private network namespace)")
	}
}

// outDir is where a test's reports go: kept (and logged) when it fails.
func outDir(t *testing.T) string {
	t.Helper()
	dir, err := os.MkdirTemp("", "lattice-jepsen-"+strings.ReplaceAll(t.Name(), "/", "-")+"-")
	if err != nil {
		t.Fatal(err)
	}
	t.Cleanup(func() {
		if t.Failed() {
			t.Logf("reports kept in %s (open index.html)", dir)
			return
		}
		os.RemoveAll(dir)
	})
	return dir
}

func logRun(t *testing.T, r *report.Run) {
	t.Helper()
	t.Logf("run %d seed %d: valid=%v, %d ops (%v), %d injections, converged in %.2fs, %d violations",
		r.Index, r.Seed, r.Valid, r.Ops.Total, r.Ops.ByType, len(r.Injections), r.ConvergeSeconds, r.Violations)
	for _, in := range r.Injections {
		t.Logf("  %5.1f-%5.1fs %s: %s", in.Start, in.Stop, in.Fault, in.Desc)
	}
	for _, c := range r.Checks {
		for _, v := range c.Violations {
			t.Logf("  %s: %s", c.Name, v)
		}
		for _, n := range c.Notes {
			if strings.HasPrefix(n, "KNOWN BUG") {
				t.Logf("  %s: %s", c.Name, n)
			}
		}
	}
	for _, e := range r.Errors {
		t.Logf("  error: %s", e)
	}
}

// TestSmoke is the short suite of make test: two runs of 25 s with every
// fault (short pauses), the API workload and every checker. A known bug
// that is not fixed yet is tolerated (reported in the log), so the smoke
// run fails only on something new.
func TestSmoke(t *testing.T) {
	needNetNS(t)
	cfg := SmokeConfig()
	cfg.Bin, cfg.OutDir = bin, outDir(t)
	cfg.Seed = 11
	for b := range check.KnownBugs {
		cfg.Tolerate = append(cfg.Tolerate, b)
	}
	start := time.Now()
	suite, err := Run(context.Background(), cfg, func(r *report.Run) { logRun(t, r) })
	if err != nil {
		t.Fatal(err)
	}
	t.Logf("smoke: %d runs, %d injections, %d operations in %s", len(suite.Runs), suite.Injections, suite.Ops, time.Since(start).Round(time.Second))
	if !suite.Valid {
		for _, r := range suite.Runs {
			if !r.Valid {
				t.Errorf("run %d (seed %d) failed; reproduce with %s", r.Index, r.Seed, r.Reproduce)
			}
		}
	}
	if suite.Injections == 0 || suite.Ops < 500 {
		t.Errorf("the smoke run did too little: %d injections, %d operations", suite.Injections, suite.Ops)
	}
}

// TestSmokePostgres is the PostgreSQL part of make test's smoke suite: one
// run of 25 s with both workloads (the API and two PostgreSQL databases
// synced through the cluster), the PostgreSQL faults beside a node kill and
// an isolation (short bounds: a database down for 3-6 s; seed 34 plans
// each of the five PostgreSQL faults), and every checker,
// the postgres one included.
func TestSmokePostgres(t *testing.T) {
	needNetNS(t)
	cfg := SmokeConfig()
	cfg.Bin, cfg.OutDir = bin, outDir(t)
	cfg.Runs, cfg.Seed, cfg.Workloads, cfg.Faults = 1, 34, "api,postgres", "postgres,kill,partition-isolate"
	cfg.Rate, cfg.Clients = 40, 4
	for b := range check.KnownBugs {
		cfg.Tolerate = append(cfg.Tolerate, b)
	}
	suite, err := Run(context.Background(), cfg, func(r *report.Run) { logRun(t, r) })
	if err != nil {
		t.Fatal(err)
	}
	r := suite.Runs[0]
	if !r.Valid {
		t.Errorf("run %d (seed %d) failed; reproduce with %s", r.Index, r.Seed, r.Reproduce)
	}
	pgFaults := 0
	for _, in := range r.Injections {
		if strings.HasPrefix(in.Fault, "pg-") || in.Fault == "kill-owner" {
			pgFaults++
		}
	}
	var pgCheck *check.Result
	for i := range r.Checks {
		if r.Checks[i].Name == "postgres" {
			pgCheck = &r.Checks[i]
		}
	}
	updates := r.Ops.ByKind["pg-update"]["ok"]
	t.Logf("postgres smoke: %d PostgreSQL faults of %d, %d updates ok, databases settled %.2fs after traffic stopped", pgFaults, len(r.Injections), updates, r.PGSettleSeconds)
	switch {
	case pgCheck == nil:
		t.Error("no postgres checker verdict in the run")
	case pgFaults == 0 || updates < 300:
		t.Errorf("the PostgreSQL smoke run did too little: %d PostgreSQL faults, %d updates ok", pgFaults, updates)
	case pgCheck.Stats["db_fields_checked"] == 0:
		t.Errorf("the postgres checker compared no database field: %v", pgCheck.Stats)
	}
}

// TestScenarios replays the regression scenarios (fixed seed and fault
// list). They take about 45 s each, so make test leaves them out; make
// jepsen-scenarios (LATTICE_JEPSEN_SCENARIOS=1) runs them.
func TestScenarios(t *testing.T) {
	needNetNS(t)
	if os.Getenv("LATTICE_JEPSEN_SCENARIOS") == "" {
		t.Skip("set LATTICE_JEPSEN_SCENARIOS=1 (make jepsen-scenarios) to replay the regression scenarios")
	}
	for _, sc := range Scenarios {
		t.Run(sc.Name, func(t *testing.T) {
			cfg := DefaultConfig()
			sc.Config(&cfg)
			cfg.Runs, cfg.Bin, cfg.OutDir = 1, bin, outDir(t)
			// Another open bug's symptoms do not fail this scenario.
			for b := range check.KnownBugs {
				if b != sc.Bug {
					cfg.Tolerate = append(cfg.Tolerate, b)
				}
			}
			suite, err := Run(context.Background(), cfg, func(r *report.Run) { logRun(t, r) })
			if err != nil {
				t.Fatal(err)
			}
			r := suite.Runs[0]
			if r.Valid {
				return
			}
			if sc.Bug != "" && onlyBug(r, sc.Bug) {
				t.Skipf("known bug %s reproduced (%s): see jepsen/README.md", sc.Bug, sc.Found)
			}
			t.Errorf("scenario %s failed: %d violations; reproduce with %s", sc.Name, r.Violations, r.Reproduce)
		})
	}
}

// onlyBug reports whether every violation of r is the known bug's symptom.
func onlyBug(r *report.Run, bug string) bool {
	if len(r.Errors) > 0 {
		return false
	}
	for _, c := range r.Checks {
		for _, v := range c.Violations {
			switch {
			case bug == "token-overclaim" && c.Name == "causality" && strings.Contains(v, "silently overwrote"):
			case bug == "pg-recapture" && c.Name == "postgres" && (strings.Contains(v, "captured again") || strings.Contains(v, "re-delivered")):
			default:
				return false
			}
		}
		if c.Count > len(c.Violations) && c.Name != "causality" && c.Name != "postgres" {
			return false
		}
	}
	return true
}

// TestTokenCoversOnlyWhatTheReadShowed forces the token-overclaim bug step
// by step (the directed regression test of the token-overclaim scenarios):
//
//  1. packets between n1 and n2 are dropped (n2 hears of n1's edits only
//     through n3's catch-up passes, once a second);
//  2. X: put c=X on n1; once n3 has it, V: put a=V on n3 (V's _deleted
//     context covers X);
//  3. a read on n2 as soon as it shows V: c shows nothing (n2 has not
//     applied X) but the token covers X's dot (V's context named it);
//  4. W: put c=W with that token on n3, which has X.
//
// DESIGN.md says a token entry ctx[n] >= s means the reader had seen every
// version of n up to s, and that a write passing a token makes a concurrent
// edit a conflict, not a silent overwrite. So X must stay live beside W (a
// visible conflict). Today W supersedes X: history says X was superseded by
// a later edit that saw it, although its writer never saw X.
func TestTokenCoversOnlyWhatTheReadShowed(t *testing.T) {
	needNetNS(t)
	ctx := context.Background()
	cl, err := nodes.Start(ctx, nodes.Config{Bin: bin, Dir: filepath.Join(t.TempDir(), "nodes"), N: 3, Schema: schema.YAML()})
	if err != nil {
		t.Fatal(err)
	}
	t.Cleanup(func() { cl.Close() })
	n1, n2, n3 := cl.Nodes[0], cl.Nodes[1], cl.Nodes[2]
	str := func(s string) *pb.Value { return &pb.Value{Kind: &pb.Value_StringValue{StringValue: s}} }
	field := func(r *pb.Record, name string) *pb.FieldState {
		for _, f := range r.GetFields() {
			if f.GetName() == name {
				return f
			}
		}
		return nil
	}
	call := func() (context.Context, context.CancelFunc) { return context.WithTimeout(ctx, 5*time.Second) }
	poll := func(what string, nd *nodes.Node, key string, cond func(*pb.Record) bool) *pb.Record {
		t.Helper()
		deadline := time.Now().Add(10 * time.Second)
		for time.Now().Before(deadline) {
			c, cancel := call()
			r, err := nd.Records().Get(c, &pb.GetRequest{Entity: schema.Entity, Id: key})
			cancel()
			if err == nil && cond(r) {
				return r
			}
			time.Sleep(time.Millisecond)
		}
		t.Fatalf("%s: not within 10 s", what)
		return nil
	}
	if err := cl.Drop("n1", "n2"); err != nil {
		t.Fatal(err)
	}
	if err := cl.Drop("n2", "n1"); err != nil {
		t.Fatal(err)
	}
	// n2 may catch up with X between steps 2 and 3; try a few keys.
	for attempt := 0; attempt < 10; attempt++ {
		key := fmt.Sprintf("t%d", attempt)
		c, cancel := call()
		x, err := n1.Records().Put(c, &pb.PutRequest{Entity: schema.Entity, Id: key, Fields: map[string]*pb.Value{"c": str("X")}})
		cancel()
		if err != nil {
			t.Fatal(err)
		}
		poll("n3 has X", n3, key, func(r *pb.Record) bool { return len(field(r, "c").GetLive()) > 0 })
		c, cancel = call()
		_, err = n3.Records().Put(c, &pb.PutRequest{Entity: schema.Entity, Id: key, Fields: map[string]*pb.Value{"a": str("V")}})
		cancel()
		if err != nil {
			t.Fatal(err)
		}
		g := poll("n2 shows V", n2, key, func(r *pb.Record) bool { return field(r, "a").GetValue().GetStringValue() == "V" })
		if len(field(g, "c").GetLive()) > 0 {
			t.Logf("%s: n2 caught up with X before the read; again", key)
			continue
		}
		token, err := server.DecodeContext(g.GetContext())
		if err != nil {
			t.Fatal(err)
		}
		t.Logf("%s: X is %s:%d; the read on n2 shows no c, its token is %s", key, x.GetDot().GetNode(), x.GetDot().GetSeq(), token)
		c, cancel = call()
		w, err := n3.Records().Put(c, &pb.PutRequest{Entity: schema.Entity, Id: key, Context: g.GetContext(), Fields: map[string]*pb.Value{"c": str("W")}})
		cancel()
		if err != nil {
			t.Fatal(err)
		}
		c, cancel = call()
		h, err := n3.Records().History(c, &pb.HistoryRequest{Entity: schema.Entity, Id: key, Field: "c"})
		cancel()
		if err != nil {
			t.Fatal(err)
		}
		for _, e := range h.GetEntries() {
			v := e.GetVersion()
			t.Logf("  c=%s %s:%d saw %v: %s by %v", v.GetValue().GetStringValue(), v.GetDot().GetNode(), v.GetDot().GetSeq(),
				v.GetContext().GetEntries(), e.GetFate(), e.GetBy())
			if v.GetDot().GetSeq() == x.GetDot().GetSeq() && v.GetDot().GetNode() == x.GetDot().GetNode() &&
				e.GetFate() == pb.Fate_FATE_SUPERSEDED && e.GetBy().GetNode() == w.GetDot().GetNode() && e.GetBy().GetSeq() == w.GetDot().GetSeq() {
				if _, known := check.KnownBugs["token-overclaim"]; known {
					t.Skipf("known bug token-overclaim reproduced: W (%s:%d), written with a token from a read that never showed X, superseded X (see jepsen/README.md)",
						w.GetDot().GetNode(), w.GetDot().GetSeq())
				}
				t.Fatalf("W superseded X, which its read never showed: a silent overwrite")
			}
		}
		return
	}
	t.Fatal("n2 always caught up with X before the read: the scenario did not set up")
}
