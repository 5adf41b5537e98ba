package check

import (
	"fmt"
	"sort"
	"time"

	"github.com/lattice-sync/lattice/jepsen/history"
)

// HLC checks invariant 5 from what the nodes reported during the run:
// status samples (the node's greatest timestamp) and the timestamps of
// acknowledged writes.
//
//   - Monotonic: when observation a on a node completed before observation
//     b on that node began, b's HLC is not below a's, and above it when b is
//     a write (a new timestamp); this spans restarts, since a restarted node
//     must resume above its persisted ceiling.
//   - Bounded: a node's HLC never runs more than max-offset (plus the
//     200 ms ceiling window and 300 ms of measurement slack) ahead of its
//     own physical clock at its most skewed so far (real time plus the
//     largest positive offset the harness gave it). A node that adopted a
//     peer's timestamp beyond max-offset shows here.
type HLC struct{}

// Name implements Checker.
func (HLC) Name() string { return "hlc" }

// Window and slack of the bounded check.
const (
	ceilingWindow = 200 * time.Millisecond
	boundSlack    = 300 * time.Millisecond
)

type observation struct {
	invoke, complete int64
	hlc              uint64
	write            bool
	what             string
}

func hlcMillis(h uint64) int64 { return int64(h >> 16) }

func hlcString(h uint64) string {
	return fmt.Sprintf("%s+%d", time.UnixMilli(hlcMillis(h)).UTC().Format("15:04:05.000"), h&0xffff)
}

// Check implements Checker.
func (HLC) Check(in *Input) Result {
	r := newResult("hlc")
	obs := map[string][]observation{}
	for _, s := range in.Samples {
		if s.Error == "" && s.HLC != 0 {
			obs[s.Node] = append(obs[s.Node], observation{s.Invoke, s.Complete, s.HLC, false, "status sample"})
		}
	}
	for _, p := range history.Pairs(in.Ops) {
		if (p.Invoke.F == history.Put || p.Invoke.F == history.Delete) && p.Status() == history.OK && p.Complete.HLC != 0 {
			obs[p.Invoke.Node] = append(obs[p.Invoke.Node], observation{p.Invoke.Time, p.Complete.Time, p.Complete.HLC, true,
				fmt.Sprintf("write #%d", p.Invoke.ID)})
		}
	}
	// Restarts and clock offsets per node, from the events.
	type offsetAt struct {
		t  int64
		ms int64
	}
	offsets := map[string][]offsetAt{}
	restarts := map[string][]int64{}
	for _, e := range in.Events {
		for _, t := range e.Targets {
			switch {
			case e.Kind == "clock":
				offsets[t] = append(offsets[t], offsetAt{e.Time, e.OffsetMS})
			case e.Kind == "stop" && e.Fault == "kill":
				restarts[t] = append(restarts[t], e.Time)
			}
		}
	}
	maxAhead := map[string]float64{}
	for node, os := range obs {
		sort.Slice(os, func(i, j int) bool { return os[i].complete < os[j].complete })
		// Monotonic: prefix maxima by completion time.
		best := make([]int, len(os))
		for i := range os {
			best[i] = i
			if i > 0 && os[best[i-1]].hlc >= os[i].hlc {
				best[i] = best[i-1]
			}
		}
		for _, b := range os {
			j := sort.Search(len(os), func(i int) bool { return os[i].complete >= b.invoke }) - 1
			if j < 0 {
				continue
			}
			a := os[best[j]]
			if b.hlc < a.hlc || b.write && b.hlc == a.hlc {
				n := 0
				for _, t := range restarts[node] {
					if t > a.complete && t < b.invoke {
						n++
					}
				}
				r.violate("%s: HLC went backwards: %s returned %s, then %s (begun %s later, %d restarts between) returned %s",
					node, a.what, hlcString(a.hlc), b.what, time.Duration(b.invoke-a.complete).Round(time.Millisecond), n, hlcString(b.hlc))
			}
		}
		// Bounded.
		ofs := offsets[node]
		sort.Slice(ofs, func(i, j int) bool { return ofs[i].t < ofs[j].t })
		for _, o := range os {
			var most int64
			for _, x := range ofs {
				if x.t > o.complete {
					break
				}
				most = max(most, x.ms)
			}
			ahead := hlcMillis(o.hlc) - o.complete/int64(time.Millisecond)
			maxAhead[node] = max(maxAhead[node], float64(ahead)/1000)
			limit := most + (in.MaxOffset + ceilingWindow + boundSlack).Milliseconds()
			if ahead > limit {
				r.violate("%s: %s returned HLC %s, %d ms ahead of real time, though its own clock was never more than %d ms ahead and max-offset is %s",
					node, o.what, hlcString(o.hlc), ahead, most, in.MaxOffset)
			}
		}
	}
	counts := map[string]int{}
	for n, os := range obs {
		counts[n] = len(os)
	}
	r.Stats["observations"] = counts
	r.Stats["max_ahead_seconds"] = maxAhead
	return r.done()
}
