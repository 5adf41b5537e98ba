package crdt

import (
	"slices"
	"strings"
)

// Version is one edit of one register (a field, or a field group as a whole).
type Version struct {
	// Value is the written value (a Tuple for a group), or Null.
	Value Value
	// TS is the HLC timestamp of the edit. It breaks ties between concurrent
	// edits only; it never decides between causally related ones.
	TS Timestamp
	// Origin names who made the edit: "api", "postgres:crm", ...
	Origin string
	// Dot is the id of the edit (shared by every register the edit wrote).
	Dot Dot
	// Ctx is what the writer had seen of this register. A version whose dot
	// (or one of whose Also dots) Ctx covers is superseded by this one.
	Ctx VV
	// Src names the source change a connector captured this edit from
	// (Edit.Source): "" for every other edit. Versions with one Src are
	// copies of one change, captured twice (by two owners of a connector,
	// each before the other's copy reached it); they fold into one version
	// (Fold), so the change counts once however often it was captured.
	Src string
	// Also are the dots of the other copies folded into this version,
	// sorted; Dot is the least of all.
	Also []Dot
}

// Sees reports whether v's writer had seen w, i.e. v supersedes w.
func (v *Version) Sees(w *Version) bool { return w.CoveredBy(v.Ctx) }

// CoveredBy reports whether ctx covers v: its dot or the dot of a copy
// folded into it (having seen one copy of a change is having seen the
// change).
func (v *Version) CoveredBy(ctx VV) bool {
	if ctx.Covers(v.Dot) {
		return true
	}
	for _, d := range v.Also {
		if ctx.Covers(d) {
			return true
		}
	}
	return false
}

// Has reports whether d is v's dot or the dot of a copy folded into it.
func (v *Version) Has(d Dot) bool {
	if v.Dot == d {
		return true
	}
	_, ok := slices.BinarySearchFunc(v.Also, d, Dot.Compare)
	return ok
}

// Fold returns the one version that copies a and b of one source change
// (equal, non-empty Src) make: the value, time and origin of the copy with
// the least dot, that dot, every other copy's dot in Also, and the join of
// their contexts (what either copy's writer had seen is superseded by the
// change). Fold is commutative, associative and idempotent, so the copies
// of a change fold to the same version in any order, on every node.
func Fold(a, b Version) Version {
	base := a
	if b.Dot.Compare(a.Dot) < 0 {
		base = b
	}
	out := Version{Value: base.Value, TS: base.TS, Origin: base.Origin, Dot: base.Dot, Src: base.Src, Ctx: a.Ctx.Join(b.Ctx)}
	dots := make([]Dot, 0, 2+len(a.Also)+len(b.Also))
	dots = append(append(append(append(dots, a.Dot), a.Also...), b.Dot), b.Also...)
	slices.SortFunc(dots, Dot.Compare)
	dots = slices.Compact(dots)
	for _, d := range dots {
		if d != out.Dot {
			out.Also = append(out.Also, d)
		}
	}
	return out
}

// Equal reports whether two versions are the same, field by field.
func (v *Version) Equal(w *Version) bool {
	return v.Dot == w.Dot && v.TS == w.TS && v.Origin == w.Origin && v.Src == w.Src &&
		v.Value.Equal(w.Value) && v.Ctx.Equal(w.Ctx) && slices.Equal(v.Also, w.Also)
}

// Register is the CRDT state of one field or field group: a set of versions
// keyed by dot, kept sorted by dot so equal sets have equal representations.
//
// Merge is set union: commutative, associative and idempotent. Everything
// else (live set, resolved value, fates) is a pure function of the set.
//
// A node's store keeps only live versions in a record's register and moves
// dominated ones to history (TakeDominated); property tests use full sets.
type Register struct {
	Name     string
	Versions []Version
	// Past is the join of the contexts of the folded versions that are no
	// longer in Versions (TakeDominated moved them out, to the store's
	// history) and of copies folded into history since (FoldPast): what
	// their writers had seen is still superseded, though what superseded
	// them may have seen one copy only. It is empty in a full set, and in
	// every register that never held two captures of one change.
	Past VV
}

// find returns the index where a version with dot d is or would be inserted.
func (r *Register) find(d Dot) (int, bool) {
	return slices.BinarySearchFunc(r.Versions, d, func(v Version, d Dot) int { return v.Dot.Compare(d) })
}

// Has reports whether the register holds a version with dot d.
func (r *Register) Has(d Dot) bool {
	_, ok := r.find(d)
	return ok
}

// Add inserts v unless a version with the same dot is present, or folds it
// into the version holding another copy of its source change (same Src).
// It reports whether the set changed. A dot identifies exactly one version,
// so an equal dot means a duplicate delivery.
func (r *Register) Add(v Version) bool {
	if v.Src != "" {
		if j := r.findSrc(v.Src); j >= 0 {
			f := Fold(r.Versions[j], v)
			if f.Equal(&r.Versions[j]) {
				return false
			}
			r.Versions = slices.Delete(r.Versions, j, j+1)
			i, _ := r.find(f.Dot)
			r.Versions = slices.Insert(r.Versions, i, f)
			return true
		}
	}
	i, ok := r.find(v.Dot)
	if ok {
		return false
	}
	r.Versions = slices.Insert(r.Versions, i, v)
	return true
}

// HoldsSrc reports whether r holds a copy of source change src.
func (r *Register) HoldsSrc(src string) bool { return r.findSrc(src) >= 0 }

// findSrc returns the index of the version with Src src, or -1.
func (r *Register) findSrc(src string) int {
	for i := range r.Versions {
		if r.Versions[i].Src == src {
			return i
		}
	}
	return -1
}

// FoldPast folds v into old, the version holding another copy of v's
// source change that the store already moved out of r (to history, as
// superseded), and returns the folded version for the store to keep there
// instead. v joins the superseded versions, and what its writer had seen
// stays superseded: r.Past takes the fold's context, so a version v covers
// arriving later is judged superseded by r alone.
func (r *Register) FoldPast(old, v Version) Version {
	f := Fold(old, v)
	// The folded version's whole context, not only v's: Past is then the
	// join of the contexts of the folded versions in history, whichever
	// node folded them where (stores compare their bytes).
	r.Past = r.Past.Join(f.Ctx)
	return f
}

// Merge adds every version of o into r (set union).
func (r *Register) Merge(o *Register) bool {
	changed := false
	for _, v := range o.Versions {
		if r.Add(v) {
			changed = true
		}
	}
	if !r.Past.Dominates(o.Past) {
		r.Past = r.Past.Join(o.Past)
		changed = true
	}
	return changed
}

// Dominated reports whether version i is superseded by another version of r
// (or by a copy folded into a version r no longer holds, Past).
func (r *Register) Dominated(i int) bool {
	v := &r.Versions[i]
	if len(r.Past) > 0 && v.CoveredBy(r.Past) {
		return true
	}
	for j := range r.Versions {
		if j != i && v.CoveredBy(r.Versions[j].Ctx) {
			return true
		}
	}
	return false
}

// Resolve applies p to the live versions. It returns the index of the
// winning version (-1 when the register is empty) and the number of live
// versions; more than one live version is a conflict. It does not allocate.
func (r *Register) Resolve(p *Policy) (winner, live int) {
	winner = -1
	for i := range r.Versions {
		if r.Dominated(i) {
			continue
		}
		live++
		if winner < 0 || p.Beats(&r.Versions[i], &r.Versions[winner]) {
			winner = i
		}
	}
	return winner, live
}

// Live returns the indexes of live versions, appended to buf.
func (r *Register) Live(buf []int) []int {
	for i := range r.Versions {
		if !r.Dominated(i) {
			buf = append(buf, i)
		}
	}
	return buf
}

// Context is the register's version vector: every dot (folded copies'
// included) and context it holds. A write that uses it as its context
// supersedes every version present.
func (r *Register) Context() VV {
	vv := r.Past
	for i := range r.Versions {
		vv = vv.Join(r.Versions[i].Ctx).WithDot(r.Versions[i].Dot)
		for _, d := range r.Versions[i].Also {
			vv = vv.WithDot(d)
		}
	}
	return vv
}

// TakeDominated removes the dominated versions from r and appends them to
// buf, in dot order. The store calls it after Add to move superseded
// versions to history; a dominated version stays dominated, because the
// context of a version that supersedes another covers that one's context
// (contexts are closed when an edit is accepted, see CloseContext). A
// folded version is the exception (its dominator may have seen one copy
// only): its context joins Past, so a version arriving later is judged
// against exactly what the full set would judge it by.
func (r *Register) TakeDominated(buf []Version) []Version {
	keep := r.Versions[:0]
	n := len(r.Versions)
	// Decide first, then compact: dominance must be judged against the whole set.
	var mask uint64
	var big []bool
	if n > 64 {
		big = make([]bool, n)
	}
	for i := 0; i < n; i++ {
		if r.Dominated(i) {
			if big != nil {
				big[i] = true
			} else {
				mask |= 1 << i
			}
		}
	}
	for i := 0; i < n; i++ {
		dom := mask&(1<<i) != 0
		if big != nil {
			dom = big[i]
		}
		if dom {
			if len(r.Versions[i].Also) > 0 {
				// What it saw stays superseded (Past): its dominator may
				// have seen one copy only, not what the other copies'
				// writers saw. (Any other version's context is covered by
				// its dominator's, closed over it when accepted.)
				r.Past = r.Past.Join(r.Versions[i].Ctx)
			}
			buf = append(buf, r.Versions[i])
		} else {
			keep = append(keep, r.Versions[i])
		}
	}
	clear(r.Versions[len(keep):n])
	r.Versions = keep
	return buf
}

// CloseContext returns the context an edit of r accepted now must carry.
//
// Without a client context (given == nil) it is the register's own context:
// the edit overwrites what the node shows. With one (from an earlier read),
// the context is first clipped to applied (what this node has applied of each
// origin: a context may not claim edits the node has not seen), then closed
// over the versions it covers: if the writer saw w, it saw everything w saw.
// Closure keeps dominance transitive, which history moves rely on.
func (r *Register) CloseContext(given VV, explicit bool, applied VV) VV {
	if !explicit {
		return r.Context()
	}
	return r.closeOver(given.Meet(applied))
}

// closeOver joins into ctx the context of every version ctx covers, until
// nothing changes: a version covered only through another one's context
// counts too.
func (r *Register) closeOver(ctx VV) VV {
	for changed := true; changed; {
		changed = false
		for i := range r.Versions {
			if r.Versions[i].CoveredBy(ctx) && !ctx.Dominates(r.Versions[i].Ctx) {
				ctx = ctx.Join(r.Versions[i].Ctx)
				changed = true
			}
		}
	}
	return ctx
}

// Beats reports whether a wins over b under p. Only meaningful between
// concurrent (live) versions.
//
//   - lww: greater (ts, origin, dot);
//   - priority: greater (rank(origin), ts, origin, dot), unlisted origins lowest;
//   - mvr: like lww (the pick shown to connectors; all live values are siblings).
func (p *Policy) Beats(a, b *Version) bool {
	if p.Kind == PolicyPriority {
		ra, rb := p.Rank(a.Origin), p.Rank(b.Origin)
		if ra != rb {
			return ra > rb
		}
	}
	if a.TS != b.TS {
		return a.TS > b.TS
	}
	if c := strings.Compare(a.Origin, b.Origin); c != 0 {
		return c > 0
	}
	return a.Dot.Compare(b.Dot) > 0
}

// Rank is the priority of origin under p: len(Priority) for the first listed
// origin down to 1 for the last; 0 for unlisted origins.
func (p *Policy) Rank(origin string) int {
	for i, o := range p.Priority {
		if o == origin {
			return len(p.Priority) - i
		}
	}
	return 0
}

// Fate says what became of a version.
type Fate uint8

// Fates of a version in history.
const (
	// FateWon: the version is the register's resolved value.
	FateWon Fate = iota + 1
	// FateSuperseded: a later edit that saw it replaced it (By names it).
	FateSuperseded
	// FateLost: it is live but lost to a concurrent edit under the policy (By names the winner).
	FateLost
	// FateSibling: mvr only; it is live and kept as a sibling of the pick (By names the pick).
	FateSibling
)

func (f Fate) String() string {
	switch f {
	case FateWon:
		return "won"
	case FateSuperseded:
		return "superseded"
	case FateLost:
		return "lost"
	case FateSibling:
		return "sibling"
	}
	return "unknown"
}

// Verdict is the fate of one version and the edit it refers to.
type Verdict struct {
	Fate Fate
	By   Dot
}

// Fates judges every version of a full register (live and history alike,
// copies of one change folded as Register.Add folds them): the winner won;
// another live version lost to the winner (mvr: is its sibling); a
// dominated version was superseded by the earliest edit, by (ts, origin,
// dot), that saw it. The result is indexed like all.
func Fates(all []Version, p *Policy) []Verdict {
	r := Register{Versions: all}
	winner, _ := r.Resolve(p)
	out := make([]Verdict, len(all))
	for i := range all {
		by := -1
		for j := range all {
			if j == i || !all[i].CoveredBy(all[j].Ctx) {
				continue
			}
			if by < 0 || earlier(&all[j], &all[by]) {
				by = j
			}
		}
		switch {
		case by >= 0:
			out[i] = Verdict{Fate: FateSuperseded, By: all[by].Dot}
		case i == winner:
			out[i] = Verdict{Fate: FateWon, By: all[i].Dot}
		case p.Kind == PolicyMVR:
			out[i] = Verdict{Fate: FateSibling, By: all[winner].Dot}
		default:
			out[i] = Verdict{Fate: FateLost, By: all[winner].Dot}
		}
	}
	return out
}

func earlier(a, b *Version) bool {
	if a.TS != b.TS {
		return a.TS < b.TS
	}
	if c := strings.Compare(a.Origin, b.Origin); c != 0 {
		return c < 0
	}
	return a.Dot.Compare(b.Dot) < 0
}
