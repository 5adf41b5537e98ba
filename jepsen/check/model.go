package check

import (
	"strings"

	pb "github.com/lattice-sync/lattice/api/lattice/v1"
	"github.com/lattice-sync/lattice/jepsen/history"
)

// The model: an independent statement of DESIGN.md's merge rules over the
// versions of one register, written from the prose, not from crdt/:
//
//   - v is dominated when another version's context covers v's dot, or
//     one of v's also dots (another capture of v's source change: seeing
//     one capture of a change is seeing the change);
//   - the live versions are those not dominated;
//   - the pick among live versions is the greatest (hlc, origin, dot) for
//     lww and mvr, the greatest (rank(origin), hlc, origin, dot) for
//     priority (first listed origin ranks highest, unlisted lowest);
//   - fates (crdt/DESIGN.md): a dominated version was superseded by the
//     earliest (hlc, origin, dot) version covering it; the pick won; the
//     other live versions lost to the pick (mvr: are its siblings, by the pick).

func liveSet(vs []version) []bool {
	out := make([]bool, len(vs))
	for i := range vs {
		out[i] = true
		for j := range vs {
			if i != j && vs[j].sees(&vs[i]) {
				out[i] = false
				break
			}
		}
	}
	return out
}

func rank(f Field, origin string) int {
	if f.Policy != "priority" {
		return 0
	}
	for i, o := range f.Priority {
		if o == origin {
			return len(f.Priority) - i
		}
	}
	return 0
}

// greater orders versions by (hlc, origin, dot).
func greater(a, b *version) bool {
	if a.HLC != b.HLC {
		return a.HLC > b.HLC
	}
	if c := strings.Compare(a.Origin, b.Origin); c != 0 {
		return c > 0
	}
	return dotLess(b.Dot, a.Dot)
}

func beats(f Field, a, b *version) bool {
	if ra, rb := rank(f, a.Origin), rank(f, b.Origin); ra != rb {
		return ra > rb
	}
	return greater(a, b)
}

// pick returns the index of the winning live version (-1 if none).
func pick(f Field, vs []version, live []bool) int {
	w := -1
	for i := range vs {
		if live[i] && (w < 0 || beats(f, &vs[i], &vs[w])) {
			w = i
		}
	}
	return w
}

type verdict struct {
	Fate pb.Fate
	By   history.Dot
}

// fates judges every version of a register under f's policy.
func fates(f Field, vs []version) []verdict {
	live := liveSet(vs)
	w := pick(f, vs, live)
	out := make([]verdict, len(vs))
	for i := range vs {
		by := -1
		for j := range vs {
			if j != i && vs[j].sees(&vs[i]) && (by < 0 || greater(&vs[by], &vs[j])) {
				by = j
			}
		}
		switch {
		case by >= 0:
			out[i] = verdict{pb.Fate_FATE_SUPERSEDED, vs[by].Dot}
		case i == w:
			out[i] = verdict{pb.Fate_FATE_WON, history.Dot{}}
		case f.Policy == "mvr":
			// The server names the pick (crdt/DESIGN.md), although the
			// proto comment says by is unset for siblings.
			out[i] = verdict{pb.Fate_FATE_SIBLING, vs[w].Dot}
		default:
			out[i] = verdict{pb.Fate_FATE_LOST, vs[w].Dot}
		}
	}
	return out
}
