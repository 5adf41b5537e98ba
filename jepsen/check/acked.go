package check

import (
	"time"

	"github.com/lattice-sync/lattice/jepsen/history"
	"github.com/lattice-sync/lattice/jepsen/workload"
)

// Acknowledged checks invariant 2, that no acknowledged edit is lost:
//
//   - every write the server acknowledged (ok), or said it applied locally
//     before its write concern timed out, is in the history of each field
//     it wrote, and of _deleted, on every node, with the dot the API
//     returned and the value written;
//   - every version in any history was written by a client: its value
//     names an operation (values are unique) that was not refused, sent to
//     the node that minted the dot, for that key and field; a deletion
//     whose dot no client was told is matched against deletes whose outcome
//     is unknown;
//   - a read sees every write its node acknowledged before the read began
//     (and every write acknowledged by all N nodes): the read's context
//     covers the write's dot. A lost synced write shows here even when
//     later anti-entropy brings it back from a peer.
type Acknowledged struct{}

// Name implements Checker.
func (Acknowledged) Name() string { return "acknowledged" }

// Check implements Checker.
func (Acknowledged) Check(in *Input) Result {
	r := newResult("acknowledged")
	ix := newIndex(in.Ops)
	okWrites, applied := 0, 0
	for _, p := range ix.writes {
		if p.Status() == history.OK {
			okWrites++
		} else if okDot(p) != nil {
			applied++
		}
	}
	r.Stats["ok_writes"] = okWrites
	r.Stats["applied_unknown_writes"] = applied
	if in.Final == nil {
		r.violate("no final state was read")
	} else {
		checkPresent(r, in, ix)
		checkAccounted(r, in, ix)
	}
	checkReads(r, in, ix)
	return r.done()
}

// checkPresent: every acknowledged write is on every node.
func checkPresent(r *result, in *Input, ix *index) {
	for _, p := range ix.writes {
		d := okDot(p)
		if d == nil {
			continue
		}
		for _, node := range in.Nodes {
			for _, reg := range registers(p) {
				want := "true"
				switch {
				case reg != DeletedField:
					want = p.Invoke.Fields[reg]
				case p.Invoke.F == history.Put:
					want = "false"
				}
				found, other := false, ""
				for _, v := range in.Final.versions(node, p.Invoke.Key, reg) {
					if v.Dot == *d {
						found = v.Value == want
						other = v.Value
						break
					}
				}
				switch {
				case found:
				case other != "":
					r.violate("%s: %s.%s has %s = %q, not the %q that %s wrote", node, p.Invoke.Key, reg, d, other, want, describe(p))
				default:
					r.violate("%s: acknowledged write missing from the history of %s.%s: %s", node, p.Invoke.Key, reg, describe(p))
				}
			}
		}
	}
}

// checkAccounted: every version was written by some client.
func checkAccounted(r *result, in *Input, ix *index) {
	type keyDot struct {
		key string
		dot history.Dot
	}
	// Dots the server returned, and dots of versions matched by value.
	owner := map[keyDot]*history.Pair{}
	for _, p := range ix.writes {
		if d := okDot(p); d != nil {
			owner[keyDot{p.Invoke.Key, *d}] = p
		}
	}
	claim := func(node, key string, d history.Dot, p *history.Pair) {
		k := keyDot{key, d}
		if q, ok := owner[k]; ok && q != p {
			r.violate("%s: dot %s of %s is claimed by two writes: %s and %s", node, d, key, describe(q), describe(p))
			return
		}
		owner[k] = p
	}
	versions := 0
	for _, node := range in.Nodes {
		for _, key := range in.Final.Keys {
			for _, field := range in.Schema.FieldNames() {
				for _, v := range in.Final.versions(node, key, field) {
					versions++
					id, f, ok := workload.ValueOp(v.Value)
					p := ix.byID[id]
					switch {
					case !ok || p == nil || p.Invoke.F != history.Put || f != field || p.Invoke.Key != key || p.Invoke.Fields[field] != v.Value:
						r.violate("%s: %s.%s holds %q (%s), which no client wrote there", node, key, field, v.Value, v.Dot)
						continue
					case p.Status() == history.Fail:
						r.violate("%s: %s.%s holds %s, a write the server refused: %s", node, key, field, v.Dot, describe(p))
					case v.Dot.Node != p.Invoke.Node:
						r.violate("%s: %s.%s: %s was sent to %s but carries dot %s", node, key, field, describe(p), p.Invoke.Node, v.Dot)
					case okDot(p) != nil && *okDot(p) != v.Dot:
						r.violate("%s: %s.%s: %s carries dot %s, not the one returned", node, key, field, describe(p), v.Dot)
					}
					if origin := originOf(p); v.Origin != origin {
						r.violate("%s: %s.%s version %s has origin %q, written by %q", node, key, field, v.Dot, v.Origin, origin)
					}
					claim(node, key, v.Dot, p)
				}
			}
		}
	}
	// _deleted: a put's false or a delete's true; deletions with a dot no
	// client was told are matched against unknown deletes of that key
	// sent to the dot's node.
	unknownDeletes := map[string]int{} // key|node
	for _, p := range ix.writes {
		if p.Invoke.F == history.Delete && okDot(p) == nil && p.Status() != history.Fail {
			unknownDeletes[p.Invoke.Key+"|"+p.Invoke.Node]++
		}
	}
	for _, node := range in.Nodes {
		unmatched := map[string]int{}
		for _, key := range in.Final.Keys {
			for _, v := range in.Final.versions(node, key, DeletedField) {
				versions++
				p := owner[keyDot{key, v.Dot}]
				switch {
				case p == nil && v.Value == "true":
					unmatched[key+"|"+v.Dot.Node]++
				case p == nil:
					r.violate("%s: %s._deleted holds %s = %s, which matches no write", node, key, v.Dot, v.Value)
				case p.Invoke.F == history.Put && v.Value != "false", p.Invoke.F == history.Delete && v.Value != "true":
					r.violate("%s: %s._deleted holds %s = %s, but that dot is %s", node, key, v.Dot, v.Value, describe(p))
				case p.Status() == history.Fail:
					r.violate("%s: %s._deleted holds %s, a write the server refused: %s", node, key, v.Dot, describe(p))
				}
				if p != nil && v.Origin != originOf(p) {
					r.violate("%s: %s._deleted version %s has origin %q, written by %q", node, key, v.Dot, v.Origin, originOf(p))
				}
			}
		}
		for k, n := range unmatched {
			if n > unknownDeletes[k] {
				r.violate("%s: %d deletions of %s with dots no client was told, but only %d deletes there had an unknown outcome", node, n, k, unknownDeletes[k])
			}
		}
	}
	r.Stats["versions"] = versions
}

func originOf(p *history.Pair) string {
	if p.Invoke.Origin == "" {
		return "api"
	}
	return p.Invoke.Origin
}

// checkReads: a read sees what its node acknowledged before it began.
func checkReads(r *result, in *Input, ix *index) {
	byKey := map[string][]*history.Pair{}
	for _, p := range ix.writes {
		if okDot(p) != nil {
			byKey[p.Invoke.Key] = append(byKey[p.Invoke.Key], p)
		}
	}
	reads := 0
	for i := range ix.pairs {
		g := &ix.pairs[i]
		if g.Invoke.F != history.Get || g.Complete == nil {
			continue
		}
		var seen map[string]uint64
		switch {
		case g.Complete.Type == history.OK:
			seen = g.Complete.ContextVV
		case g.Complete.Type == history.Fail && g.Complete.Code == "NotFound":
		default:
			continue
		}
		reads++
		for _, w := range byKey[g.Invoke.Key] {
			if w.Complete.Time >= g.Invoke.Time {
				continue
			}
			sameNode := w.Invoke.Node == g.Invoke.Node
			everywhere := w.Status() == history.OK && in.N > 0 && w.Invoke.Acks >= in.N
			d := okDot(w)
			if (sameNode || everywhere) && !covers(seen, *d) {
				why := "its node acknowledged"
				if !sameNode {
					why = "every node acknowledged"
				}
				r.violate("read #%d of %s on %s (context %v) missed %s, which %s %s before the read began",
					g.Invoke.ID, g.Invoke.Key, g.Invoke.Node, seen, describe(w), why,
					time.Duration(g.Invoke.Time-w.Complete.Time).Round(time.Millisecond))
			}
		}
	}
	r.Stats["reads_checked"] = reads
}
