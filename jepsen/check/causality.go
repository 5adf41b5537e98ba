package check

import (
	pb "github.com/lattice-sync/lattice/api/lattice/v1"
	"github.com/lattice-sync/lattice/jepsen/history"
	"github.com/lattice-sync/lattice/jepsen/workload"
)

// Causality checks invariant 3, that an edit that saw another never loses
// to it, and its counterpart, that an edit never supersedes one it did not
// see. What a write W had seen is derived from the history alone:
//
//   - W passed the context token of a read G: in a field, W saw the
//     versions G showed (G's live versions, and every version their
//     contexts cover: their writers saw those); in _deleted, which reads do
//     not show, the versions of puts G showed in a field;
//   - W passed no context ("overwrite what the node shows"): W saw every
//     write its node acknowledged, or said it applied, before W was sent,
//     and every write all N nodes acknowledged before W was sent.
//
// Rules, for every register W wrote, on every node:
//
//   - saw: every version W saw is covered by W's context, so it is
//     superseded and W can never lose to it.
//   - no silent overwrite: a W that passed a read's context is not what
//     superseded a field version G did not show (history would credit W
//     with having seen it): the token exists so that a concurrent edit
//     becomes a visible conflict, not a silent overwrite (DESIGN.md,
//     "Merge": ctx[n] >= s means the reader had seen every version from n
//     up to s). When an earlier edit had superseded that version already,
//     the claim is counted (token_claims_unshown) and noted.
//   - no future: W's context covers no version whose write was sent after
//     W was acknowledged.
//
// A write sent to another node than the read whose token it passes is
// clipped to what that node had applied (crdt/doc.go, HAZARD): when it
// then fails to supersede what it read, that is reported as a note, not a
// violation, unless Input.StrictContext is set.
type Causality struct{}

// Name implements Checker.
func (Causality) Name() string { return "causality" }

type keyDot struct {
	key string
	dot history.Dot
}

// owners maps (key, dot) to the write that made it: dots the server
// returned, and the dots of versions whose unique value names their write.
func owners(in *Input, ix *index) map[keyDot]*history.Pair {
	own := map[keyDot]*history.Pair{}
	for _, p := range ix.writes {
		if d := okDot(p); d != nil {
			own[keyDot{p.Invoke.Key, *d}] = p
		}
	}
	if in.Final == nil {
		return own
	}
	for _, node := range in.Nodes {
		for _, key := range in.Final.Keys {
			for _, field := range in.Schema.FieldNames() {
				for _, v := range in.Final.versions(node, key, field) {
					if id, _, ok := workload.ValueOp(v.Value); ok {
						if p := ix.byID[id]; p != nil && p.Invoke.Key == key {
							if _, dup := own[keyDot{key, v.Dot}]; !dup {
								own[keyDot{key, v.Dot}] = p
							}
						}
					}
				}
			}
		}
	}
	return own
}

// shown reports whether read g showed version d of field: d is live in
// g's answer or covered by the context of a version that is.
func shown(g *history.Op, field string, d history.Dot) bool {
	for _, l := range g.Live[field] {
		if l.Dot == d || covers(l.Ctx, d) {
			return true
		}
	}
	return false
}

// Check implements Checker.
func (Causality) Check(in *Input) Result {
	r := newResult("causality")
	if in.Final == nil {
		r.violate("no final state was read")
		return r.done()
	}
	ix := newIndex(in.Ops)
	own := owners(in, ix)
	dotOf := map[*history.Pair]history.Dot{}
	for kd, p := range own {
		dotOf[p] = kd.dot
	}
	// Writes by key, for the no-context rule.
	byKey := map[string][]*history.Pair{}
	for _, p := range ix.writes {
		byKey[p.Invoke.Key] = append(byKey[p.Invoke.Key], p)
	}
	var checked, explicit, cross, relations, hazards, overclaims, overwrites int
	for _, w := range ix.writes {
		dw, ok := dotOf[w]
		if !ok || w.Status() == history.Fail {
			continue
		}
		checked++
		key := w.Invoke.Key
		var g *history.Op // the read whose context W passed
		if w.Invoke.Context != "" {
			explicit++
			if p := ix.byID[w.Invoke.ReadOp]; p != nil && p.Complete != nil && p.Complete.Type == history.OK {
				g = p.Complete
			}
		}
		isCross := g != nil && w.Invoke.ReadNode != w.Invoke.Node
		if isCross {
			cross++
		}
		// The writes W had seen when it passed no context.
		var before map[history.Dot]bool
		if w.Invoke.Context == "" {
			before = map[history.Dot]bool{}
			for _, p := range byKey[key] {
				d := okDot(p)
				if p == w || d == nil || p.End() >= w.Invoke.Time {
					continue
				}
				everywhere := p.Status() == history.OK && in.N > 0 && p.Invoke.Acks >= in.N
				if p.Invoke.Node == w.Invoke.Node || everywhere {
					before[*d] = true
				}
			}
		}
		for _, node := range in.Nodes {
			for _, reg := range registers(w) {
				vs := in.Final.versions(node, key, reg)
				wi := -1
				for i := range vs {
					if vs[i].Dot == dw {
						wi = i
					}
				}
				if wi < 0 {
					continue // the acknowledged checker reports it when it must be there
				}
				wv := &vs[wi]
				for i := range vs {
					if i == wi {
						continue
					}
					v := &vs[i]
					saw := before[v.Dot]
					switch {
					case g != nil && reg != DeletedField:
						saw = shown(g, reg, v.Dot)
					case g != nil:
						// Reads do not show _deleted's versions: G saw a
						// put's when it showed one of the put's fields.
						saw = false
						if p := own[keyDot{key, v.Dot}]; p != nil && p.Invoke.F == history.Put {
							for f := range p.Invoke.Fields {
								saw = saw || shown(g, f, v.Dot)
							}
						}
					case w.Invoke.Context != "":
						saw = false // its read's answer is unknown
					}
					covered := wv.covers(v.Dot)
					if saw {
						relations++
					}
					switch {
					case saw && !covered && isCross && !in.StrictContext:
						hazards++
						r.note("%s.%s: %s had read %s (%q) on %s but was sent to %s, which had not applied it: its context %v does not cover it (%s is %s, %s is %s) [crdt/doc.go HAZARD]",
							key, reg, describe(w), v.Dot, v.Value, w.Invoke.ReadNode, w.Invoke.Node, wv.Ctx, dw, wv.Fate, v.Dot, v.Fate)
					case saw && !covered:
						what := "does not supersede it"
						if (wv.Fate == pb.Fate_FATE_LOST || wv.Fate == pb.Fate_FATE_SIBLING) && wv.By == v.Dot {
							what = "and lost to it"
						}
						r.violate("%s.%s: %s had seen %s (%q) %s: its context %v (%s is %s, %s is %s)",
							key, reg, describe(w), v.Dot, v.Value, what, wv.Ctx, dw, wv.Fate, v.Dot, v.Fate)
					case !saw && covered && g != nil && reg != DeletedField:
						// W claims a version its read never showed. It is a
						// silent overwrite when W is what superseded it (the
						// history credits W with having seen it); when an
						// earlier edit had superseded it already, nothing
						// was hidden, but the token still claimed too much.
						if v.Fate == pb.Fate_FATE_SUPERSEDED && v.By == dw {
							report := r.violate
							if in.tolerates("token-overclaim") {
								overwrites++
								report = func(format string, args ...any) { r.note("KNOWN BUG token-overclaim: "+format, args...) }
							}
							report("%s.%s: %s silently overwrote %s (%q): its read #%d on %s never showed that version (it showed %v), yet the token %v covers it, so W's context %v does and history says %s superseded it",
								key, reg, describe(w), v.Dot, v.Value, w.Invoke.ReadOp, w.Invoke.ReadNode, liveDots(g, reg), w.Invoke.ContextVV, wv.Ctx, dw)
						} else {
							overclaims++
							r.note("%s.%s: the context of %s covers %s (%q), which its read #%d on %s never showed (token %v); %s had superseded it already",
								key, reg, describe(w), v.Dot, v.Value, w.Invoke.ReadOp, w.Invoke.ReadNode, w.Invoke.ContextVV, v.By)
						}
					}
					// A context never claims an edit sent after W was acknowledged.
					if covered && w.Complete != nil && w.Complete.Type == history.OK {
						if q := own[keyDot{key, v.Dot}]; q != nil && q.Invoke.Time > w.Complete.Time {
							r.violate("%s.%s: the context of %s covers %s, written by %s which was sent after %s was acknowledged",
								key, reg, describe(w), v.Dot, describe(q), dw)
						}
					}
				}
			}
		}
	}
	r.Stats["writes_checked"] = checked
	r.Stats["with_read_context"] = explicit
	r.Stats["cross_node_context"] = cross
	r.Stats["seen_relations"] = relations
	r.Stats["hazards"] = hazards
	r.Stats["token_claims_unshown"] = overclaims
	r.Stats["tolerated_overwrites"] = overwrites
	return r.done()
}

func liveDots(g *history.Op, field string) []history.Dot {
	var out []history.Dot
	for _, l := range g.Live[field] {
		out = append(out, l.Dot)
	}
	return out
}
