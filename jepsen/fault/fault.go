// Package fault holds the harness's faults (Jepsen's nemeses, etcd's
// failpoints): one Fault interface, a registry from name to constructor,
// and a Schedule drawn from a seed, so the same seed replays the same faults
// against the same targets for the same lengths, in the same order.
//
// A Fault plans injections; an Injection starts and stops. Everything random
// about an injection (targets, offsets, lengths) is drawn in Plan from the
// schedule's random source, never while it runs, so two runs with one seed
// differ only in timing.
//
// Faults act through Env, the narrow view of the cluster (and of the
// PostgreSQL databases, when the run has some: Env.Databases,
// Topology.Databases) they need; a fault that needs something the run does
// not have says so in Available and is left out.
package fault

import (
	"context"
	"fmt"
	"math/rand/v2"
	"sort"
	"strings"
	"time"
)

// Cluster is what faults do to lattice nodes. The harness's node runner
// (jepsen/nodes) implements it.
type Cluster interface {
	// Kill sends SIGKILL to the node and waits for it to die.
	Kill(node string) error
	// Restart starts a killed node again and waits until it answers.
	Restart(ctx context.Context, node string) error
	// Pause sends SIGSTOP; Resume sends SIGCONT.
	Pause(node string) error
	Resume(node string) error
	// Drop drops every packet from one node to another (one direction).
	Drop(from, to string) error
	// Heal removes every packet drop.
	Heal() error
	// SetClockOffset skews the node's HLC physical clock.
	SetClockOffset(node string, offset time.Duration) error
}

// Databases is what PostgreSQL faults do to the run's databases. The
// harness's database runner (jepsen/pg) implements it.
type Databases interface {
	// Terminate ends lattice's sessions to the database
	// (pg_terminate_backend) and returns how many it ended.
	Terminate(ctx context.Context, db string) (int, error)
	// Stop stops the database (pg_ctl stop -m fast); StartDB starts it
	// again on the same data.
	Stop(ctx context.Context, db string) error
	StartDB(ctx context.Context, db string) error
	// Cut drops every packet between the cluster and the database (the
	// cluster's Heal undoes it).
	Cut(db string) error
}

// Env is what injections act on.
type Env struct {
	Cluster Cluster
	// Databases are the run's PostgreSQL databases (nil without them).
	Databases Databases
	// Owner returns the node the cluster placed the connector on (its
	// connector status); nil without databases.
	Owner func(ctx context.Context, connector string) (string, error)
}

// Topology is what a schedule is planned against.
type Topology struct {
	// Nodes are the lattice node ids, in order.
	Nodes []string
	// MaxOffset is the nodes' --max-offset (clock faults pick offsets on
	// both sides of it).
	MaxOffset time.Duration
	// Databases are the PostgreSQL databases (and their connectors' names);
	// PostgreSQL faults are available only with some.
	Databases []string
}

// Limits bound what injections do.
type Limits struct {
	// Hold bounds how long a partition, kill or clock fault lasts.
	HoldMin, HoldMax time.Duration
	// Pause bounds how long a SIGSTOP lasts before SIGCONT.
	PauseMin, PauseMax time.Duration
	// Gap bounds the quiet time between two injections.
	GapMin, GapMax time.Duration
	// MaxSkew bounds clock offsets (default 5 s).
	MaxSkew time.Duration
	// Down bounds how long pg-down keeps a database stopped.
	DownMin, DownMax time.Duration
}

// DefaultLimits are the full suite's bounds.
func DefaultLimits() Limits {
	return Limits{HoldMin: 2 * time.Second, HoldMax: 10 * time.Second, PauseMin: time.Second, PauseMax: 30 * time.Second,
		GapMin: time.Second, GapMax: 4 * time.Second, MaxSkew: 5 * time.Second,
		DownMin: 15 * time.Second, DownMax: 40 * time.Second}
}

// SmokeLimits are shorter bounds for the smoke run of make test.
func SmokeLimits() Limits {
	return Limits{HoldMin: time.Second, HoldMax: 4 * time.Second, PauseMin: time.Second, PauseMax: 4 * time.Second,
		GapMin: 500 * time.Millisecond, GapMax: 2 * time.Second, MaxSkew: 5 * time.Second,
		DownMin: 3 * time.Second, DownMax: 6 * time.Second}
}

// Fault is one kind of fault.
type Fault interface {
	// Name is the fault's registry name.
	Name() string
	// Available reports whether the fault can act on topo (a partition
	// needs two nodes, a PostgreSQL fault a database).
	Available(topo Topology) bool
	// Plan draws one injection. It must take every random choice from rng
	// and none later, so the schedule depends on the seed alone.
	Plan(rng *rand.Rand, topo Topology, lim Limits) Injection
}

// Injection is one planned fault: it starts, holds, and stops.
type Injection interface {
	// String says what it does, e.g. "isolate n2".
	String() string
	// Targets are the nodes it acts on.
	Targets() []string
	// Hold is how long it lasts between Start and Stop.
	Hold() time.Duration
	// Start injects the fault. Stop undoes it and is called even when Start
	// failed part way; it must leave the targets healthy (running, reachable,
	// clocks unskewed).
	Start(ctx context.Context, env Env) error
	Stop(ctx context.Context, env Env) error
}

// registry maps names to constructors. Populated by init in this package
// (faults.go, pgfaults.go).
var registry = map[string]func() Fault{}

// groups are names that stand for several faults.
var groups = map[string][]string{}

// Register adds a fault constructor under name. It panics on a duplicate
// (a programming error).
func Register(name string, ctor func() Fault) {
	if _, dup := registry[name]; dup {
		panic("fault: duplicate registration of " + name)
	}
	registry[name] = ctor
}

// RegisterGroup makes name stand for several faults in Parse.
func RegisterGroup(name string, members ...string) { groups[name] = members }

// Names lists the registered faults, sorted.
func Names() []string {
	out := make([]string, 0, len(registry))
	for n := range registry {
		out = append(out, n)
	}
	sort.Strings(out)
	return out
}

// Groups lists the group names with their members.
func Groups() map[string][]string { return groups }

// Parse turns a comma-separated list of fault and group names ("all",
// "partition", "kill,clock-skew", "none") into faults available on topo,
// sorted by name. An unknown name is an error naming the known ones.
func Parse(list string, topo Topology) ([]Fault, error) {
	seen := map[string]bool{}
	var names []string
	var add func(n string) error
	add = func(n string) error {
		n = strings.TrimSpace(n)
		switch {
		case n == "" || n == "none":
			return nil
		case n == "all":
			for _, m := range Names() {
				if err := add(m); err != nil {
					return err
				}
			}
			return nil
		case groups[n] != nil:
			for _, m := range groups[n] {
				if err := add(m); err != nil {
					return err
				}
			}
			return nil
		case registry[n] == nil:
			gs := make([]string, 0, len(groups))
			for g := range groups {
				gs = append(gs, g)
			}
			sort.Strings(gs)
			return fmt.Errorf("unknown fault %q (faults: %s; groups: all, none, %s)", n, strings.Join(Names(), ", "), strings.Join(gs, ", "))
		}
		if !seen[n] {
			seen[n] = true
			names = append(names, n)
		}
		return nil
	}
	for _, n := range strings.Split(list, ",") {
		if err := add(n); err != nil {
			return nil, err
		}
	}
	sort.Strings(names)
	var out []Fault
	for _, n := range names {
		f := registry[n]()
		if f.Available(topo) {
			out = append(out, f)
		}
	}
	return out, nil
}

// Step is one injection of a schedule.
type Step struct {
	// At is when it starts, from the start of traffic.
	At    time.Duration
	Fault string
	Injection
}

// Plan draws a schedule from seed: injections one after another, separated
// by quiet gaps, from start until end (from the start of traffic; the last
// one is cut short to stop by end). With no faults it is empty.
func Plan(seed uint64, faults []Fault, topo Topology, lim Limits, start, end time.Duration) []Step {
	if len(faults) == 0 {
		return nil
	}
	rng := rand.New(rand.NewPCG(seed, 0x6661756c74)) // "fault"
	var steps []Step
	at := start
	for at < end {
		f := faults[rng.IntN(len(faults))]
		inj := f.Plan(rng, topo, lim)
		if at+inj.Hold() > end {
			inj = clipped{inj, end - at}
		}
		steps = append(steps, Step{At: at, Fault: f.Name(), Injection: inj})
		at += inj.Hold() + between(rng, lim.GapMin, lim.GapMax)
	}
	return steps
}

// clipped shortens an injection's hold to fit the schedule.
type clipped struct {
	Injection
	hold time.Duration
}

func (c clipped) Hold() time.Duration { return c.hold }

// between draws a duration in [lo, hi] (to the millisecond).
func between(rng *rand.Rand, lo, hi time.Duration) time.Duration {
	if hi <= lo {
		return lo
	}
	return lo + time.Duration(rng.Int64N(int64((hi-lo)/time.Millisecond)+1))*time.Millisecond
}

// pick returns k distinct elements of xs in random order.
func pick(rng *rand.Rand, xs []string, k int) []string {
	p := rng.Perm(len(xs))
	out := make([]string, 0, k)
	for _, i := range p[:k] {
		out = append(out, xs[i])
	}
	return out
}

// Observer receives what a schedule does as it runs.
type Observer interface {
	Started(step int, s Step, err error)
	Stopped(step int, s Step, err error)
}

// Run executes a schedule from t0 (the start of traffic) until it ends or
// ctx is done, and returns once the last injection stopped. Every started
// injection is stopped, also when ctx ends early (with a fresh context, so
// the cluster is left healthy).
func Run(ctx context.Context, env Env, steps []Step, t0 time.Time, obs Observer) {
	for i, s := range steps {
		select {
		case <-ctx.Done():
			return
		case <-time.After(time.Until(t0.Add(s.At))):
		}
		err := s.Start(ctx, env)
		obs.Started(i, s, err)
		select {
		case <-ctx.Done():
		case <-time.After(s.Hold()):
		}
		sctx, cancel := context.WithTimeout(context.Background(), time.Minute)
		err = s.Stop(sctx, env)
		cancel()
		obs.Stopped(i, s, err)
	}
}
