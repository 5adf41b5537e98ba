package check

import (
	"strings"
	"testing"
	"time"

	pb "github.com/lattice-sync/lattice/api/lattice/v1"
	"github.com/lattice-sync/lattice/jepsen/history"
)

// A checker that never fails proves nothing: each table below holds a
// valid history that must pass and mutations of it that must be caught.

var testSchema = Schema{Entity: "item", Fields: []Field{{Name: "a", Policy: "lww"}, {Name: "m", Policy: "mvr"}}}

func dot(n string, s uint64) history.Dot { return history.Dot{Node: n, Seq: s} }

// hv is one history entry to build.
type hv struct {
	val    string
	hlc    uint64
	d      history.Dot
	ctx    map[string]uint64
	origin string
	src    string        // source change (captured versions)
	also   []history.Dot // other captures of src folded into this version
}

// state builds the Final of one key on every node from register versions,
// judging fates and records with the model (the server would agree).
func state(nodes []string, key string, regs map[string][]hv) *Final {
	return stateOf(testSchema, nodes, key, regs)
}

// stateOf is state for the entity of schema s.
func stateOf(s Schema, nodes []string, key string, regs map[string][]hv) *Final {
	f := &Final{Keys: []string{key}, Records: map[string]map[string]*pb.Record{}, History: map[string]map[string]map[string]*pb.HistoryResponse{}}
	for _, n := range nodes {
		rec := &pb.Record{Entity: s.Entity, Id: key}
		f.History[n] = map[string]map[string]*pb.HistoryResponse{key: {}}
		for _, name := range append(s.FieldNames(), DeletedField) {
			var vs []version
			for _, x := range regs[name] {
				o := x.origin
				if o == "" {
					o = "api"
				}
				vs = append(vs, version{Value: x.val, HLC: x.hlc, Origin: o, Dot: x.d, Ctx: x.ctx, Source: x.src, Also: x.also})
			}
			fl := s.Field(name)
			fs := fates(fl, vs)
			h := &pb.HistoryResponse{Entity: s.Entity, Id: key, Field: name}
			for i := len(vs) - 1; i >= 0; i-- { // newest first (tests list oldest first)
				v := vs[i]
				e := &pb.HistoryEntry{Version: pbVersion(v), Fate: fs[i].Fate}
				if fs[i].By != (history.Dot{}) {
					e.By = &pb.Dot{Node: fs[i].By.Node, Seq: fs[i].By.Seq}
				}
				h.Entries = append(h.Entries, e)
			}
			f.History[n][key][name] = h
			live := liveSet(vs)
			w := pick(fl, vs, live)
			if name == DeletedField {
				rec.Deleted = w >= 0 && vs[w].Value == "true"
				continue
			}
			st := &pb.FieldState{Name: name, Value: &pb.Value{Kind: &pb.Value_Null{}}}
			if w >= 0 {
				st.Value = str(vs[w].Value)
				st.Live = append(st.Live, pbVersion(vs[w]))
				n := 0
				for i := range vs {
					if live[i] {
						n++
						if i != w {
							st.Live = append(st.Live, pbVersion(vs[i]))
						}
					}
				}
				st.Conflicted = n > 1
				if fl.Policy == "mvr" && n > 1 {
					for i := range vs {
						if live[i] {
							st.Siblings = append(st.Siblings, str(vs[i].Value))
						}
					}
				}
			}
			rec.Fields = append(rec.Fields, st)
		}
		f.Records[n] = map[string]*pb.Record{key: rec}
	}
	return f
}

func str(s string) *pb.Value { return &pb.Value{Kind: &pb.Value_StringValue{StringValue: s}} }

func pbVersion(v version) *pb.Version {
	val := str(v.Value)
	switch v.Value {
	case "true", "false":
		val = &pb.Value{Kind: &pb.Value_BoolValue{BoolValue: v.Value == "true"}}
	}
	out := &pb.Version{Value: val, Hlc: v.HLC, Origin: v.Origin, Dot: &pb.Dot{Node: v.Dot.Node, Seq: v.Dot.Seq},
		Context: &pb.VersionVector{Entries: v.Ctx}, Source: v.Source}
	for _, d := range v.Also {
		out.Also = append(out.Also, &pb.Dot{Node: d.Node, Seq: d.Seq})
	}
	return out
}

// ops builds a history from invoke/complete pairs at the given milliseconds.
type op struct {
	id         int64
	f, node    string
	fields     map[string]string
	at, done   int64 // ms
	status     string
	d          *history.Dot
	hlc        uint64
	ctx        map[string]uint64
	readOp     int64
	readNode   string
	live       map[string][]history.Live
	acks       int
	notApplied bool
}

func hist(ops ...op) []history.Op {
	var out []history.Op
	for _, o := range ops {
		inv := history.Op{Type: history.Invoke, ID: o.id, F: o.f, Node: o.node, Entity: "item", Key: "k", Fields: o.fields,
			Time: o.at * 1e6, ContextVV: o.ctx, ReadOp: o.readOp, ReadNode: o.readNode, Acks: o.acks}
		if o.ctx != nil && o.f != history.Get {
			inv.Context = "token"
		}
		out = append(out, inv)
		if o.status == "" {
			continue
		}
		c := history.Op{Type: o.status, ID: o.id, F: o.f, Node: o.node, Key: "k", Time: o.done * 1e6, Dot: o.d, HLC: o.hlc}
		if o.f == history.Get {
			c.ContextVV, c.Live = o.ctx, o.live
		}
		out = append(out, c)
	}
	return out
}

func ptr(d history.Dot) *history.Dot { return &d }

var nodes3 = []string{"n1", "n2", "n3"}

func mustPass(t *testing.T, r Result) {
	t.Helper()
	if !r.Valid {
		t.Fatalf("%s: want valid, got %d violations: %v", r.Name, r.Count, r.Violations)
	}
}

func mustFail(t *testing.T, r Result, want string) {
	t.Helper()
	if r.Valid {
		t.Fatalf("%s: want a violation containing %q, got none (notes %v)", r.Name, want, r.Notes)
	}
	for _, v := range r.Violations {
		if strings.Contains(v, want) {
			return
		}
	}
	t.Fatalf("%s: no violation contains %q: %v", r.Name, want, r.Violations)
}

// Two puts on n1, the second without a context (it saw the first).
func baseline() (*Input, map[string][]hv) {
	regs := map[string][]hv{
		"a":          {{val: "1.a", hlc: 10, d: dot("n1", 1)}, {val: "2.a", hlc: 20, d: dot("n1", 2), ctx: map[string]uint64{"n1": 1}}},
		DeletedField: {{val: "false", hlc: 10, d: dot("n1", 1)}, {val: "false", hlc: 20, d: dot("n1", 2), ctx: map[string]uint64{"n1": 1}}},
	}
	in := &Input{Schema: testSchema, Nodes: nodes3, N: 3, MaxOffset: 500 * time.Millisecond, Ops: hist(
		op{id: 1, f: history.Put, node: "n1", fields: map[string]string{"a": "1.a"}, at: 0, done: 1, status: history.OK, d: ptr(dot("n1", 1)), hlc: 10},
		op{id: 2, f: history.Put, node: "n1", fields: map[string]string{"a": "2.a"}, at: 2, done: 3, status: history.OK, d: ptr(dot("n1", 2)), hlc: 20},
		op{id: 3, f: history.Get, node: "n1", at: 4, done: 5, status: history.OK, ctx: map[string]uint64{"n1": 2}},
	)}
	in.Final = state(nodes3, "k", regs)
	return in, regs
}

func TestCheckersPassOnBaseline(t *testing.T) {
	in, _ := baseline()
	for _, r := range Run(in, All()) {
		mustPass(t, r)
	}
}

func TestAcknowledged(t *testing.T) {
	t.Run("missing on one node", func(t *testing.T) {
		in, regs := baseline()
		in.Final = state(nodes3, "k", regs)
		lost := state([]string{"n3"}, "k", map[string][]hv{"a": regs["a"][:1], DeletedField: regs[DeletedField][:1]})
		in.Final.History["n3"], in.Final.Records["n3"] = lost.History["n3"], lost.Records["n3"]
		mustFail(t, Acknowledged{}.Check(in), "n3: acknowledged write missing from the history of k.a: #2 put")
	})
	t.Run("a value no client wrote", func(t *testing.T) {
		in, regs := baseline()
		regs["a"] = append(regs["a"], hv{val: "99.a", hlc: 30, d: dot("n2", 1)})
		regs[DeletedField] = append(regs[DeletedField], hv{val: "false", hlc: 30, d: dot("n2", 1)})
		in.Final = state(nodes3, "k", regs)
		mustFail(t, Acknowledged{}.Check(in), `holds "99.a" (n2:1), which no client wrote there`)
	})
	t.Run("a refused write applied", func(t *testing.T) {
		in, regs := baseline()
		in.Ops = append(in.Ops, hist(op{id: 4, f: history.Put, node: "n2", fields: map[string]string{"a": "4.a"}, at: 6, done: 7, status: history.Fail})...)
		regs["a"] = append(regs["a"], hv{val: "4.a", hlc: 30, d: dot("n2", 1)})
		regs[DeletedField] = append(regs[DeletedField], hv{val: "false", hlc: 30, d: dot("n2", 1)})
		in.Final = state(nodes3, "k", regs)
		mustFail(t, Acknowledged{}.Check(in), "a write the server refused")
	})
	t.Run("an unknown write may land", func(t *testing.T) {
		in, regs := baseline()
		in.Ops = append(in.Ops, hist(op{id: 4, f: history.Put, node: "n2", fields: map[string]string{"a": "4.a"}, at: 6, done: 7, status: history.Unknown})...)
		regs["a"] = append(regs["a"], hv{val: "4.a", hlc: 30, d: dot("n2", 1)})
		regs[DeletedField] = append(regs[DeletedField], hv{val: "false", hlc: 30, d: dot("n2", 1)})
		in.Final = state(nodes3, "k", regs)
		mustPass(t, Acknowledged{}.Check(in))
	})
	t.Run("a read misses a write its node acknowledged", func(t *testing.T) {
		in, _ := baseline()
		in.Ops = append(in.Ops, hist(op{id: 5, f: history.Get, node: "n1", at: 8, done: 9, status: history.OK, ctx: map[string]uint64{"n1": 1}})...)
		mustFail(t, Acknowledged{}.Check(in), "read #5 of k on n1")
	})
	t.Run("a delete nobody made", func(t *testing.T) {
		in, regs := baseline()
		regs[DeletedField] = append(regs[DeletedField], hv{val: "true", hlc: 30, d: dot("n3", 1)})
		in.Final = state(nodes3, "k", regs)
		mustFail(t, Acknowledged{}.Check(in), "deletions of k|n3 with dots no client was told")
	})
}

func TestCausality(t *testing.T) {
	t.Run("a no-context write that does not supersede what its node acknowledged", func(t *testing.T) {
		in, regs := baseline()
		regs["a"][1].ctx = nil
		regs[DeletedField][1].ctx = nil
		in.Final = state(nodes3, "k", regs)
		mustFail(t, Causality{}.Check(in), "had seen n1:1")
	})
	// A read on n2 showed 1.a; a put with its token must supersede it.
	withRead := func(node string) (*Input, map[string][]hv) {
		in, regs := baseline()
		in.Ops = hist(
			op{id: 1, f: history.Put, node: "n1", fields: map[string]string{"a": "1.a"}, at: 0, done: 1, status: history.OK, d: ptr(dot("n1", 1)), hlc: 10},
			op{id: 2, f: history.Get, node: "n2", at: 2, done: 3, status: history.OK, ctx: map[string]uint64{"n1": 1},
				live: map[string][]history.Live{"a": {{Dot: dot("n1", 1)}}}},
			op{id: 3, f: history.Put, node: node, fields: map[string]string{"a": "3.a"}, at: 4, done: 5, status: history.OK,
				d: ptr(dot(node, 1)), hlc: 20, ctx: map[string]uint64{"n1": 1}, readOp: 2, readNode: "n2"},
		)
		regs = map[string][]hv{
			"a":          {{val: "1.a", hlc: 10, d: dot("n1", 1)}, {val: "3.a", hlc: 20, d: dot(node, 1), ctx: map[string]uint64{"n1": 1}}},
			DeletedField: {{val: "false", hlc: 10, d: dot("n1", 1)}, {val: "false", hlc: 20, d: dot(node, 1), ctx: map[string]uint64{"n1": 1}}},
		}
		in.Final = state(nodes3, "k", regs)
		return in, regs
	}
	t.Run("a read-context write supersedes what it read", func(t *testing.T) {
		in, _ := withRead("n2")
		mustPass(t, Causality{}.Check(in))
	})
	t.Run("a read-context write that loses to what it read", func(t *testing.T) {
		in, regs := withRead("n2")
		regs["a"][1].ctx, regs["a"][1].hlc = nil, 5 // concurrent, and older: it loses
		in.Final = state(nodes3, "k", regs)
		mustFail(t, Causality{}.Check(in), "and lost to it")
	})
	t.Run("sent to another node: a documented hazard, unless strict", func(t *testing.T) {
		in, regs := withRead("n3")
		regs["a"][1].ctx = nil
		in.Final = state(nodes3, "k", regs)
		r := Causality{}.Check(in)
		mustPass(t, r)
		if len(r.Notes) == 0 {
			t.Fatal("no hazard noted")
		}
		in.StrictContext = true
		mustFail(t, Causality{}.Check(in), "had seen n1:1")
	})
	t.Run("a silent overwrite of what the read never showed", func(t *testing.T) {
		in, regs := withRead("n2")
		// n3:1 wrote a; the read did not show it, but the token claims n3:1.
		in.Ops = append(in.Ops, hist(op{id: 9, f: history.Put, node: "n3", fields: map[string]string{"a": "9.a"}, at: 1, done: 2,
			status: history.OK, d: ptr(dot("n3", 1)), hlc: 12})...)
		in.Ops[2].ContextVV = map[string]uint64{"n1": 1, "n3": 1} // the get's answer
		in.Ops[4].ContextVV = map[string]uint64{"n1": 1, "n3": 1} // the put's invoke
		regs["a"] = append(regs["a"], hv{val: "9.a", hlc: 12, d: dot("n3", 1)})
		regs["a"][1].ctx = map[string]uint64{"n1": 1, "n3": 1}
		regs[DeletedField] = append(regs[DeletedField], hv{val: "false", hlc: 12, d: dot("n3", 1)})
		in.Final = state(nodes3, "k", regs)
		mustFail(t, Causality{}.Check(in), "silently overwrote n3:1")
	})
	t.Run("a context that claims the future", func(t *testing.T) {
		in, regs := baseline()
		in.Ops = append(in.Ops, hist(op{id: 7, f: history.Put, node: "n2", fields: map[string]string{"a": "7.a"}, at: 50, done: 51,
			status: history.OK, d: ptr(dot("n2", 1)), hlc: 5})...)
		regs["a"] = append(regs["a"], hv{val: "7.a", hlc: 5, d: dot("n2", 1)})
		regs["a"][1].ctx = map[string]uint64{"n1": 1, "n2": 1}
		regs[DeletedField] = append(regs[DeletedField], hv{val: "false", hlc: 5, d: dot("n2", 1)})
		in.Final = state(nodes3, "k", regs)
		mustFail(t, Causality{}.Check(in), "which was sent after n1:2 was acknowledged")
	})
}

func TestResolution(t *testing.T) {
	in, _ := baseline()
	mustPass(t, Resolution{}.Check(in))
	// The server says the older version won.
	h := in.Final.History["n2"]["k"]["a"]
	h.Entries[0].Fate, h.Entries[1].Fate = pb.Fate_FATE_SUPERSEDED, pb.Fate_FATE_WON
	in.Final.cache = nil
	mustFail(t, Resolution{}.Check(in), "n2: k.a version n1:1 (1.a): fate FATE_WON by n1:2, the model says FATE_SUPERSEDED by n1:2")
	// Two concurrent mvr versions are siblings; a record that hides one is caught.
	regs := map[string][]hv{"m": {{val: "x", hlc: 10, d: dot("n1", 1)}, {val: "y", hlc: 11, d: dot("n2", 1)}}}
	in.Final = state(nodes3, "k", regs)
	mustPass(t, Resolution{}.Check(in))
	in.Final.Records["n1"]["k"].Fields[1].Conflicted = false
	mustFail(t, Resolution{}.Check(in), "n1: k.m conflicted=false with 2 live versions")
}

func TestConvergence(t *testing.T) {
	in, regs := baseline()
	mustPass(t, Convergence{}.Check(in))
	other := state([]string{"n2"}, "k", map[string][]hv{"a": regs["a"][:1], DeletedField: regs[DeletedField]})
	in.Final.History["n2"], in.Final.Records["n2"] = other.History["n2"], other.Records["n2"]
	r := Convergence{}.Check(in)
	mustFail(t, r, "history of k.a differs: n1 has 2 versions, n2 has 1")
	mustFail(t, r, "record k differs between nodes")
	in.ConvergeErr = "not converged within 1s"
	mustFail(t, Convergence{}.Check(in), "digests did not agree")
}

func TestHLC(t *testing.T) {
	base := time.Date(2026, 1, 1, 0, 0, 0, 0, time.UTC).UnixNano()
	ms := func(off int64) uint64 { return uint64((base/1e6 + off) << 16) }
	sample := func(node string, at int64, h uint64) history.Sample {
		return history.Sample{Node: node, Invoke: base + at*1e6, Complete: base + at*1e6 + 1e6, HLC: h}
	}
	tests := []struct {
		name    string
		samples []history.Sample
		events  []history.Event
		want    string // "" = valid
	}{
		{"monotonic", []history.Sample{sample("n1", 0, ms(0)), sample("n1", 10, ms(10)), sample("n2", 5, ms(3))}, nil, ""},
		{"backwards", []history.Sample{sample("n1", 0, ms(100)), sample("n1", 10, ms(50))}, nil, "n1: HLC went backwards"},
		{"concurrent observations are not ordered", []history.Sample{
			{Node: "n1", Invoke: base, Complete: base + 10e6, HLC: ms(100)},
			{Node: "n1", Invoke: base + 5e6, Complete: base + 6e6, HLC: ms(50)}}, nil, ""},
		{"far ahead of real time", []history.Sample{sample("n1", 0, ms(3000))}, nil, "2999 ms ahead of real time"},
		{"ahead by its own skew", []history.Sample{sample("n1", 100, ms(3100))},
			[]history.Event{{Time: base, Kind: "clock", Targets: []string{"n1"}, OffsetMS: 3000}}, ""},
		{"a peer's skew adopted", []history.Sample{sample("n2", 100, ms(3100))},
			[]history.Event{{Time: base, Kind: "clock", Targets: []string{"n1"}, OffsetMS: 3000}}, "n2: status sample returned HLC"},
	}
	for _, tt := range tests {
		t.Run(tt.name, func(t *testing.T) {
			in := &Input{Nodes: nodes3, MaxOffset: 500 * time.Millisecond, Samples: tt.samples, Events: tt.events}
			r := HLC{}.Check(in)
			if tt.want == "" {
				mustPass(t, r)
			} else {
				mustFail(t, r, tt.want)
			}
		})
	}
	// A write's timestamp must exceed what its node reported before.
	in := &Input{Nodes: nodes3, MaxOffset: 500 * time.Millisecond, Samples: []history.Sample{sample("n1", 0, ms(5))},
		Ops: []history.Op{
			{Type: history.Invoke, ID: 1, F: history.Put, Node: "n1", Key: "k", Time: base + 5e6},
			{Type: history.OK, ID: 1, F: history.Put, Node: "n1", Key: "k", Time: base + 6e6, HLC: ms(5), Dot: ptr(dot("n1", 1))},
		}}
	mustFail(t, HLC{}.Check(in), "then write #1")
}
