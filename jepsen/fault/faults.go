package fault

import (
	"context"
	"errors"
	"fmt"
	"math/rand/v2"
	"strings"
	"sync"
	"time"
)

// The registered faults. Groups: "partition" (every partition-*),
// "process" (kill, pause), "clock" (every clock-*).
func init() {
	Register("partition-isolate", func() Fault { return partitionFault{"partition-isolate", planIsolate} })
	Register("partition-split", func() Fault { return partitionFault{"partition-split", planSplit} })
	Register("partition-oneway", func() Fault { return partitionFault{"partition-oneway", planOneWay} })
	Register("partition-bridge", func() Fault { return partitionFault{"partition-bridge", planBridge} })
	Register("kill", func() Fault { return killFault{} })
	Register("pause", func() Fault { return pauseFault{} })
	Register("clock-skew", func() Fault { return clockFault{"clock-skew"} })
	Register("clock-jump", func() Fault { return clockFault{"clock-jump"} })
	Register("clock-strobe", func() Fault { return clockFault{"clock-strobe"} })
	RegisterGroup("partition", "partition-isolate", "partition-split", "partition-oneway", "partition-bridge")
	RegisterGroup("process", "kill", "pause")
	RegisterGroup("clock", "clock-skew", "clock-jump", "clock-strobe")
}

// injection is an Injection made of closures.
type injection struct {
	desc    string
	targets []string
	hold    time.Duration
	start   func(ctx context.Context, env Env) error
	stop    func(ctx context.Context, env Env) error
}

func (i *injection) String() string                           { return i.desc }
func (i *injection) Targets() []string                        { return i.targets }
func (i *injection) Hold() time.Duration                      { return i.hold }
func (i *injection) Start(ctx context.Context, env Env) error { return i.start(ctx, env) }
func (i *injection) Stop(ctx context.Context, env Env) error  { return i.stop(ctx, env) }

// ---- partitions ----

// link is a one-way packet drop.
type link struct{ from, to string }

// partitionFault drops packets on the links its planner picks; Stop heals
// the whole network (one fault at a time, so nothing else is cut).
type partitionFault struct {
	name string
	plan func(rng *rand.Rand, nodes []string) (string, []string, []link)
}

func (f partitionFault) Name() string                 { return f.name }
func (f partitionFault) Available(topo Topology) bool { return len(topo.Nodes) >= 2 }

func (f partitionFault) Plan(rng *rand.Rand, topo Topology, lim Limits) Injection {
	desc, targets, links := f.plan(rng, topo.Nodes)
	return &injection{desc: desc, targets: targets, hold: between(rng, lim.HoldMin, lim.HoldMax),
		start: func(_ context.Context, env Env) error {
			var errs []error
			for _, l := range links {
				errs = append(errs, env.Cluster.Drop(l.from, l.to))
			}
			return errors.Join(errs...)
		},
		stop: func(_ context.Context, env Env) error { return env.Cluster.Heal() },
	}
}

// cut returns the links that separate groups a and b, both ways.
func cut(a, b []string) []link {
	var out []link
	for _, x := range a {
		for _, y := range b {
			out = append(out, link{x, y}, link{y, x})
		}
	}
	return out
}

func without(xs []string, drop ...string) []string {
	var out []string
	for _, x := range xs {
		keep := true
		for _, d := range drop {
			if x == d {
				keep = false
			}
		}
		if keep {
			out = append(out, x)
		}
	}
	return out
}

func planIsolate(rng *rand.Rand, nodes []string) (string, []string, []link) {
	x := nodes[rng.IntN(len(nodes))]
	return "isolate " + x, []string{x}, cut([]string{x}, without(nodes, x))
}

// planSplit splits the nodes into a majority and a minority at random
// (with three nodes, 2/1).
func planSplit(rng *rand.Rand, nodes []string) (string, []string, []link) {
	p := pick(rng, nodes, len(nodes))
	minority, majority := p[:len(p)/2], p[len(p)/2:]
	return fmt.Sprintf("split %s | %s", strings.Join(majority, ","), strings.Join(minority, ",")), p, cut(majority, minority)
}

// planOneWay drops what one node sends to the others, or what it receives.
func planOneWay(rng *rand.Rand, nodes []string) (string, []string, []link) {
	x := nodes[rng.IntN(len(nodes))]
	var links []link
	out := rng.IntN(2) == 0
	for _, y := range without(nodes, x) {
		if out {
			links = append(links, link{x, y})
		} else {
			links = append(links, link{y, x})
		}
	}
	if out {
		return "one-way: nothing from " + x + " arrives", []string{x}, links
	}
	return "one-way: nothing arrives at " + x, []string{x}, links
}

// planBridge cuts the nodes into two sides that cannot talk to each other
// but both talk to one bridge node (with three nodes: one link is cut).
func planBridge(rng *rand.Rand, nodes []string) (string, []string, []link) {
	p := pick(rng, nodes, len(nodes))
	bridge, rest := p[0], p[1:]
	if len(rest) < 2 {
		return "bridge " + bridge + " (too few nodes: no cut)", []string{bridge}, nil
	}
	a, b := rest[:len(rest)/2], rest[len(rest)/2:]
	return fmt.Sprintf("bridge %s between %s | %s", bridge, strings.Join(a, ","), strings.Join(b, ",")), p, cut(a, b)
}

// ---- processes ----

// killFault SIGKILLs one node (sometimes all but one) and restarts it after the hold.
type killFault struct{}

func (killFault) Name() string                 { return "kill" }
func (killFault) Available(topo Topology) bool { return len(topo.Nodes) >= 1 }

func (killFault) Plan(rng *rand.Rand, topo Topology, lim Limits) Injection {
	k := 1
	if len(topo.Nodes) > 2 && rng.IntN(5) == 0 {
		k = len(topo.Nodes) - 1 // a majority: the data plane stays up, Raft does not
	}
	targets := pick(rng, topo.Nodes, k)
	return &injection{desc: "kill -9 " + strings.Join(targets, ","), targets: targets, hold: between(rng, lim.HoldMin/2, lim.HoldMax),
		start: func(_ context.Context, env Env) error {
			var errs []error
			for _, t := range targets {
				errs = append(errs, env.Cluster.Kill(t))
			}
			return errors.Join(errs...)
		},
		stop: func(ctx context.Context, env Env) error {
			var errs []error
			for _, t := range targets {
				errs = append(errs, env.Cluster.Restart(ctx, t))
			}
			return errors.Join(errs...)
		},
	}
}

// pauseFault SIGSTOPs one node and SIGCONTs it after the pause.
type pauseFault struct{}

func (pauseFault) Name() string                 { return "pause" }
func (pauseFault) Available(topo Topology) bool { return len(topo.Nodes) >= 1 }

func (pauseFault) Plan(rng *rand.Rand, topo Topology, lim Limits) Injection {
	x := topo.Nodes[rng.IntN(len(topo.Nodes))]
	hold := between(rng, lim.PauseMin, lim.PauseMax)
	return &injection{desc: fmt.Sprintf("SIGSTOP %s for %s", x, hold.Round(time.Millisecond)), targets: []string{x}, hold: hold,
		start: func(_ context.Context, env Env) error { return env.Cluster.Pause(x) },
		stop:  func(_ context.Context, env Env) error { return env.Cluster.Resume(x) },
	}
}

// ---- clocks ----

// clockFault skews one node's HLC physical clock:
//   - clock-skew: a fixed offset of up to ±MaxSkew, on either side of
//     max-offset, for the hold;
//   - clock-jump: ahead by a, then, halfway, a jump back to b behind (a
//     backward jump of a+b while the HLC has issued timestamps a ahead);
//   - clock-strobe: the offset flips between +a and -a every period
//     (50-300 ms) for the hold.
//
// Stop sets the offset back to zero.
type clockFault struct{ name string }

func (f clockFault) Name() string                 { return f.name }
func (f clockFault) Available(topo Topology) bool { return len(topo.Nodes) >= 1 }

func (f clockFault) Plan(rng *rand.Rand, topo Topology, lim Limits) Injection {
	x := topo.Nodes[rng.IntN(len(topo.Nodes))]
	hold := between(rng, lim.HoldMin, lim.HoldMax)
	skew := func(lo time.Duration) time.Duration { return between(rng, lo, lim.MaxSkew) }
	inj := &injection{targets: []string{x}, hold: hold}
	reset := func(_ context.Context, env Env) error { return env.Cluster.SetClockOffset(x, 0) }
	switch f.name {
	case "clock-skew":
		d := skew(100 * time.Millisecond)
		if rng.IntN(2) == 0 {
			d = -d
		}
		side := "within"
		if d > topo.MaxOffset || -d > topo.MaxOffset {
			side = "beyond"
		}
		inj.desc = fmt.Sprintf("clock of %s %+dms (%s max-offset)", x, d.Milliseconds(), side)
		inj.start = func(_ context.Context, env Env) error { return env.Cluster.SetClockOffset(x, d) }
		inj.stop = reset
	case "clock-jump":
		ahead, behind := skew(time.Second), -skew(500*time.Millisecond)
		inj.desc = fmt.Sprintf("clock of %s %+dms, then jumps back to %+dms", x, ahead.Milliseconds(), behind.Milliseconds())
		inj.start, inj.stop = ticking(x, hold/2, false, ahead, behind)
	case "clock-strobe":
		a := skew(topo.MaxOffset)
		period := between(rng, 50*time.Millisecond, 300*time.Millisecond)
		inj.desc = fmt.Sprintf("clock of %s strobes ±%dms every %s", x, a.Milliseconds(), period)
		inj.start, inj.stop = ticking(x, period, true, a, -a)
	}
	return inj
}

// ticking returns start and stop functions that set node's offset to
// offsets[0], then every period to the next offset (repeating when loop is
// set, else stopping at the last), until stop. The goroutine is owned by the
// injection: stop ends it and waits for it before resetting the clock.
func ticking(node string, period time.Duration, loop bool, offsets ...time.Duration) (func(context.Context, Env) error, func(context.Context, Env) error) {
	var rep repeater
	start := func(_ context.Context, env Env) error {
		if e := env.Cluster.SetClockOffset(node, offsets[0]); e != nil {
			return e
		}
		rep.start(period, func(i int) (bool, error) {
			if !loop && i >= len(offsets) {
				return false, nil
			}
			return true, env.Cluster.SetClockOffset(node, offsets[i%len(offsets)])
		})
		return nil
	}
	stop := func(_ context.Context, env Env) error {
		return errors.Join(rep.stop(), env.Cluster.SetClockOffset(node, 0))
	}
	return start, stop
}

// repeater runs an action every period in a goroutine an injection owns.
type repeater struct {
	done chan struct{}
	wg   sync.WaitGroup
	mu   sync.Mutex
	err  error
}

// start calls act(1), act(2), ... every period until stop or until act
// says no more; errors are kept for stop.
func (r *repeater) start(period time.Duration, act func(i int) (more bool, err error)) {
	r.done = make(chan struct{})
	r.wg.Add(1)
	go func() {
		defer r.wg.Done()
		t := time.NewTicker(period)
		defer t.Stop()
		for i := 1; ; i++ {
			select {
			case <-r.done:
				return
			case <-t.C:
			}
			more, e := act(i)
			if e != nil {
				r.mu.Lock()
				r.err = errors.Join(r.err, e)
				r.mu.Unlock()
			}
			if !more {
				return
			}
		}
	}()
}

// stop ends the goroutine, waits for it and returns the errors it met.
func (r *repeater) stop() error {
	if r.done != nil {
		close(r.done)
		r.wg.Wait()
		r.done = nil
	}
	r.mu.Lock()
	defer r.mu.Unlock()
	return r.err
}
