package check

import (
	"slices"
	"sort"

	"github.com/lattice-sync/lattice/jepsen/history"
)

// Resolution checks determinism (invariant 4) against the model: on every
// node, every field's resolved value, conflict flag, live versions and
// every history entry's fate are what the model derives from the field's
// versions, and history is listed newest first.
type Resolution struct{}

// Name implements Checker.
func (Resolution) Name() string { return "resolution" }

// Check implements Checker.
func (Resolution) Check(in *Input) Result {
	r := newResult("resolution")
	if in.Final == nil {
		r.violate("no final state was read")
		return r.done()
	}
	registersChecked := 0
	for _, node := range in.Nodes {
		for _, key := range in.Final.Keys {
			rec := in.Final.Records[node][key]
			if rec == nil {
				continue
			}
			fields := map[string]int{}
			for i, fs := range rec.GetFields() {
				fields[fs.GetName()] = i
			}
			for _, name := range append(in.Schema.FieldNames(), DeletedField) {
				h := in.Final.History[node][key][name]
				if h == nil {
					continue
				}
				registersChecked++
				f := in.Schema.Field(name)
				listed := versionsOf(h)
				for i := 1; i < len(listed); i++ {
					a, b := &listed[i-1], &listed[i]
					if a.HLC < b.HLC || a.HLC == b.HLC && dotLess(a.Dot, b.Dot) {
						r.violate("%s: history of %s.%s is not newest first: %s before %s", node, key, name, a.Dot, b.Dot)
					}
				}
				vs := in.Final.versions(node, key, name)
				want := fates(f, vs)
				live := liveSet(vs)
				w := pick(f, vs, live)
				for i := range vs {
					if vs[i].Fate != want[i].Fate || vs[i].By != want[i].By {
						r.violate("%s: %s.%s version %s (%s): fate %s by %s, the model says %s by %s",
							node, key, name, vs[i].Dot, vs[i].Value, vs[i].Fate, vs[i].By, want[i].Fate, want[i].By)
					}
				}
				if name == DeletedField {
					deleted := w >= 0 && vs[w].Value == "true"
					if rec.GetDeleted() != deleted {
						r.violate("%s: %s shows deleted=%v, the model says %v", node, key, rec.GetDeleted(), deleted)
					}
					continue
				}
				i, ok := fields[name]
				if !ok {
					r.violate("%s: %s has no field %s in its record", node, key, name)
					continue
				}
				fs := rec.GetFields()[i]
				var wantLive []history.Dot
				var wantSiblings []string
				for j := range vs {
					if live[j] {
						wantLive = append(wantLive, vs[j].Dot)
						wantSiblings = append(wantSiblings, vs[j].Value)
					}
				}
				var gotLive []history.Dot
				for _, v := range fs.GetLive() {
					gotLive = append(gotLive, dotOf(v.GetDot()))
				}
				got := valueString(fs.GetValue())
				switch {
				case w < 0 && len(gotLive) > 0:
					r.violate("%s: %s.%s has live versions %v but no history", node, key, name, gotLive)
				case w >= 0 && got != vs[w].Value:
					r.violate("%s: %s.%s resolves to %q, the model says %q (%s)", node, key, name, got, vs[w].Value, vs[w].Dot)
				case w >= 0 && (len(gotLive) == 0 || gotLive[0] != vs[w].Dot):
					r.violate("%s: %s.%s lists %v as live, the pick %s first", node, key, name, gotLive, vs[w].Dot)
				}
				if fs.GetConflicted() != (len(wantLive) > 1) {
					r.violate("%s: %s.%s conflicted=%v with %d live versions", node, key, name, fs.GetConflicted(), len(wantLive))
				}
				if !sameDots(gotLive, wantLive) {
					r.violate("%s: %s.%s live versions %v, the model says %v", node, key, name, gotLive, wantLive)
				}
				// Siblings are listed only while there is a conflict (the
				// proto says "when the policy is mvr"; the server fills them
				// only with more than one live version).
				if f.Policy == "mvr" {
					if len(wantLive) < 2 {
						wantSiblings = nil
					}
					var sib []string
					for _, v := range fs.GetSiblings() {
						sib = append(sib, valueString(v))
					}
					sort.Strings(sib)
					sort.Strings(wantSiblings)
					if !slices.Equal(sib, wantSiblings) {
						r.violate("%s: %s.%s siblings %v, the model says %v", node, key, name, sib, wantSiblings)
					}
				}
			}
		}
	}
	r.Stats["registers"] = registersChecked
	return r.done()
}

func sameDots(a, b []history.Dot) bool {
	if len(a) != len(b) {
		return false
	}
	x := append([]history.Dot(nil), a...)
	y := append([]history.Dot(nil), b...)
	less := func(s []history.Dot) func(i, j int) bool { return func(i, j int) bool { return dotLess(s[i], s[j]) } }
	sort.Slice(x, less(x))
	sort.Slice(y, less(y))
	return slices.Equal(x, y)
}
