// Command lattice-jepsen runs lattice's fault-injection suite (jepsen/):
// real node processes in a private network namespace, the API workload,
// seeded faults, checkers and reports. It needs root (iptables inside its
// own network namespace; nothing touches the host).
//
//	go run ./cmd/lattice-jepsen --runs 20 --duration 60s --faults all
//	go run ./cmd/lattice-jepsen --runs 1 --seed 7 --faults kill,clock-skew
//
// It exits 1 when a run finds a violation, printing the seed that
// reproduces it, and 2 when the harness cannot run.
package main

import (
	"context"
	"errors"
	"flag"
	"fmt"
	"io"
	"log/slog"
	"os"
	"os/signal"
	"path/filepath"
	"sort"
	"strings"
	"syscall"
	"time"

	"github.com/lattice-sync/lattice/cluster/clustertest"
	"github.com/lattice-sync/lattice/jepsen"
	"github.com/lattice-sync/lattice/jepsen/check"
)

// errViolations says a run failed its checks.
var errViolations = errors.New("violations found")

func main() {
	// The harness re-executes itself inside a private network namespace.
	if !clustertest.EnterNetNS() {
		fmt.Fprintln(os.Stderr, "lattice-jepsen: needs root, unshare, ip and iptables (make deps installs iptables)")
		os.Exit(2)
	}
	ctx, stop := signal.NotifyContext(context.Background(), os.Interrupt, syscall.SIGTERM)
	err := run(ctx, os.Args[1:], os.Stdout, os.Stderr)
	stop()
	switch {
	case errors.Is(err, errViolations):
		os.Exit(1)
	case err != nil:
		fmt.Fprintln(os.Stderr, "lattice-jepsen:", err)
		os.Exit(2)
	}
}

func run(ctx context.Context, args []string, stdout, stderr io.Writer) error {
	cfg := jepsen.DefaultConfig()
	fs := flag.NewFlagSet("lattice-jepsen", flag.ContinueOnError)
	fs.SetOutput(stderr)
	fs.IntVar(&cfg.Runs, "runs", cfg.Runs, "number of runs (run i uses seed+i)")
	fs.DurationVar(&cfg.Duration, "duration", cfg.Duration, "traffic time of each run")
	fs.Uint64Var(&cfg.Seed, "seed", 0, "seed of the first run (0: from the clock; printed)")
	fs.StringVar(&cfg.Faults, "faults", cfg.Faults, "comma-separated faults and groups (see below)")
	fs.StringVar(&cfg.OutDir, "out", cfg.OutDir, "output directory (one directory per run, summary.json, index.html)")
	fs.IntVar(&cfg.Nodes, "nodes", cfg.Nodes, "cluster size")
	fs.StringVar(&cfg.Workloads, "workload", cfg.Workloads, "comma-separated workloads: api (clients of the gRPC API), postgres (clients of two PostgreSQL databases synced through the cluster; enables the PostgreSQL faults)")
	fs.IntVar(&cfg.PGClients, "pg-clients", cfg.PGClients, "PostgreSQL workload: concurrent clients")
	fs.Float64Var(&cfg.PGRate, "pg-rate", cfg.PGRate, "PostgreSQL workload: updates per second, all clients together")
	fs.IntVar(&cfg.PGRows, "pg-rows", cfg.PGRows, "PostgreSQL workload: rows (keys 1..n) the clients update")
	downMax := fs.Duration("db-down-max", 0, "longest pg-down (a database stopped); 0: 40 s (smoke 6 s); the shortest is a third of it, at most 15 s")
	fs.IntVar(&cfg.Keys, "keys", cfg.Keys, "record ids the workload writes")
	fs.IntVar(&cfg.Clients, "clients", cfg.Clients, "concurrent clients")
	fs.Float64Var(&cfg.Rate, "rate", cfg.Rate, "operations per second, all clients together")
	fs.DurationVar(&cfg.Timeout, "timeout", cfg.Timeout, "request timeout (past it an operation is unknown)")
	fs.Float64Var(&cfg.CrossNode, "cross-node", cfg.CrossNode, "share of read-context writes sent to another node than their read")
	fs.BoolVar(&cfg.StrictContext, "strict-context", false, "count a cross-node read-context write that fails to supersede what it read as a violation (default: a documented hazard, reported as a note)")
	fs.DurationVar(&cfg.ConvergeTimeout, "converge-timeout", cfg.ConvergeTimeout, "how long nodes may take to converge after traffic stops")
	tolerate := fs.String("tolerate", "", "comma-separated known bugs whose violations are reported as notes (see jepsen/README.md): "+knownBugs())
	fs.BoolVar(&cfg.KeepData, "keep-data", false, "keep node data directories of passing runs")
	smoke := fs.Bool("smoke", false, "short fault bounds (pauses of 1-4 s), as in make test")
	verbose := fs.Bool("v", false, "log every fault and node event")
	fs.Usage = func() {
		fmt.Fprintf(stderr, "usage: lattice-jepsen [flags]\n\n%s\n\nflags:\n", jepsen.Describe())
		fs.PrintDefaults()
	}
	if err := fs.Parse(args); err != nil {
		if errors.Is(err, flag.ErrHelp) {
			return nil
		}
		return err
	}
	if cfg.Seed == 0 {
		cfg.Seed = uint64(time.Now().UnixNano()%1_000_000) + 1
	}
	if *tolerate != "" {
		for _, b := range strings.Split(*tolerate, ",") {
			if _, ok := check.KnownBugs[b]; !ok {
				return fmt.Errorf("--tolerate %q: not a known bug (known: %s)", b, knownBugs())
			}
			cfg.Tolerate = append(cfg.Tolerate, b)
		}
	}
	if *smoke {
		cfg.Limits = jepsen.SmokeConfig().Limits
	}
	if *downMax > 0 {
		cfg.Limits.DownMax = *downMax
		cfg.Limits.DownMin = min(*downMax/3, 15*time.Second)
	}
	level := slog.LevelWarn
	if *verbose {
		level = slog.LevelInfo
	}
	cfg.Logger = slog.New(slog.NewTextHandler(stderr, &slog.HandlerOptions{Level: level}))
	fmt.Fprintf(stdout, "lattice-jepsen: %d runs of %s, workloads %s, faults %s, seeds %d..%d, output %s\n",
		cfg.Runs, cfg.Duration, cfg.Workloads, cfg.Faults, cfg.Seed, cfg.Seed+uint64(cfg.Runs)-1, cfg.OutDir)
	suite, err := jepsen.Run(ctx, cfg, jepsen.Progress(stdout))
	if suite != nil {
		fmt.Fprintf(stdout, "\n%d runs, %d fault injections, %d operations, %d violations\n",
			len(suite.Runs), suite.Injections, suite.Ops, suite.Violations)
		abs, _ := filepath.Abs(filepath.Join(cfg.OutDir, "index.html"))
		fmt.Fprintf(stdout, "report: %s\n", abs)
	}
	if err != nil {
		return err
	}
	if !suite.Valid {
		for _, r := range suite.Runs {
			if !r.Valid {
				fmt.Fprintf(stdout, "FAILED: run %d, seed %d (%d violations, %d harness errors): reproduce with\n  %s\n",
					r.Index, r.Seed, r.Violations, len(r.Errors), r.Reproduce)
			}
		}
		return errViolations
	}
	return nil
}

func knownBugs() string {
	var out []string
	for b := range check.KnownBugs {
		out = append(out, b)
	}
	sort.Strings(out)
	if len(out) == 0 {
		return "none"
	}
	return strings.Join(out, ", ")
}
