// Package check holds the checkers that judge a run once its faults healed
// and its traffic stopped (etcd's validate/). Each checker is a pure
// function of the recorded history and of the final state read through the
// public gRPC API; none calls lattice's merge code, so a merge bug cannot
// check itself. What a version "had seen" is derived from what clients were
// told (context tokens, dots, acknowledgements, real-time order), and the
// resolved value of every field is re-derived by an independent model of
// the rules in DESIGN.md ("Merge").
//
// The checkers and the invariants they prove (DESIGN.md, "Invariants the
// tests must hold"):
//
//   - convergence (1): every node returns identical records and identical
//     history for every field of every key;
//   - acknowledged (2): every ok write, and every write the server said it
//     applied locally, is in its fields' history on every node with the dot
//     the API returned; nothing appears that no client wrote or that was
//     refused; a read on a node sees every write that node acknowledged
//     before the read began;
//   - causality (3): a version a write had seen is superseded, never live
//     beside it or above it, and a write's context never claims an edit
//     made after the write was acknowledged;
//   - resolution (4): every node's resolved values, conflict flags and
//     history fates equal what the model derives from the versions;
//   - hlc (5): each node's HLC never went backwards, across restarts, and
//     never ran further ahead of real time than its own skewed clock plus
//     max-offset (a peer's timestamp beyond max-offset was not adopted).
package check

import (
	"fmt"
	"sort"
	"strings"
	"time"

	pb "github.com/lattice-sync/lattice/api/lattice/v1"
	"github.com/lattice-sync/lattice/jepsen/history"
)

// DeletedField is the reserved field that holds a record's deletion flag.
const DeletedField = "_deleted"

// Field is one declared field of the checked entity.
type Field struct {
	Name string
	// Policy is "lww", "mvr" or "priority".
	Policy string
	// Priority lists origins, most trusted first (policy priority).
	Priority []string
}

// Schema is the checked entity as the harness declared it. The harness
// renders the nodes' configuration from it (YAML), so the checkers and the
// cluster cannot disagree about policies.
type Schema struct {
	Entity string
	Fields []Field
}

// FieldNames lists the declared fields in order.
func (s *Schema) FieldNames() []string {
	out := make([]string, len(s.Fields))
	for i, f := range s.Fields {
		out[i] = f.Name
	}
	return out
}

// Field returns the named field; _deleted is lww.
func (s *Schema) Field(name string) Field {
	for _, f := range s.Fields {
		if f.Name == name {
			return f
		}
	}
	return Field{Name: name, Policy: "lww"}
}

// YAML renders the entity configuration. Retention is 0: history is kept
// forever, so "every acknowledged edit is in history" holds for the whole run.
func (s *Schema) YAML() string { return YAML(*s) }

// YAML renders the configuration of several entities (see Schema.YAML).
func YAML(schemas ...Schema) string {
	var b strings.Builder
	b.WriteString("entities:\n")
	for i := range schemas {
		schemas[i].entityYAML(&b)
	}
	return b.String()
}

func (s *Schema) entityYAML(b *strings.Builder) {
	fmt.Fprintf(b, "  %s:\n    retention: 0s\n    fields:\n", s.Entity)
	for _, f := range s.Fields {
		switch f.Policy {
		case "priority":
			fmt.Fprintf(b, "      %s: {type: string, policy: {priority: [%s]}}\n", f.Name, quoteAll(f.Priority))
		default:
			fmt.Fprintf(b, "      %s: {type: string, policy: %s}\n", f.Name, f.Policy)
		}
	}
}

func quoteAll(xs []string) string {
	q := make([]string, len(xs))
	for i, x := range xs {
		q[i] = fmt.Sprintf("%q", x)
	}
	return strings.Join(q, ", ")
}

// Input is what the checkers judge.
type Input struct {
	Schema Schema
	// Nodes are the node ids.
	Nodes []string
	// N is the cluster size (a write with acks = N is on every node).
	N int
	// MaxOffset is the nodes' --max-offset.
	MaxOffset time.Duration
	Ops       []history.Op
	Samples   []history.Sample
	Events    []history.Event
	// Final is the state read after convergence; nil when it could not be read.
	Final *Final
	// ConvergeErr is set when the nodes did not converge in time.
	ConvergeErr string
	// ConvergeTook is how long they took after traffic stopped.
	ConvergeTook time.Duration
	// StrictContext counts a read-context write sent to another node than
	// its read, which lost to what it read, as a violation (default: a
	// documented hazard, reported apart).
	StrictContext bool
	// Tolerate names known bugs (KnownBugs) whose violations become notes.
	Tolerate []string
	// PG is the PostgreSQL side (nil in runs without databases).
	PG *PGInput
}

// KnownBugs are bugs the harness found in lattice that are not fixed yet,
// by name, with what they look like (see jepsen/README.md). A checker
// reports a violation of one as a violation, unless Input.Tolerate names it.
var KnownBugs = map[string]string{}

func (in *Input) tolerates(bug string) bool {
	for _, b := range in.Tolerate {
		if b == bug {
			return true
		}
	}
	return false
}

// Final is the state every node returned through the API after convergence.
type Final struct {
	// Keys are every record id any node lists (deleted ones included).
	Keys []string
	// Records[node][key] is the node's Get answer; a missing entry means
	// NotFound.
	Records map[string]map[string]*pb.Record
	// History[node][key][field] is the node's History answer, _deleted
	// included.
	History map[string]map[string]map[string]*pb.HistoryResponse
	// Errors are reads that failed.
	Errors []string

	cache map[string][]version // see versions
}

// Result is one checker's verdict.
type Result struct {
	Name  string `json:"name"`
	Valid bool   `json:"valid"`
	// Violations describe what is wrong (the first MaxViolations of Count).
	Violations []string `json:"violations,omitempty"`
	Count      int      `json:"count"`
	// Notes are findings that are not violations (documented hazards).
	Notes []string `json:"notes,omitempty"`
	// Stats are what the checker measured.
	Stats map[string]any `json:"stats,omitempty"`
}

// MaxViolations caps the violations a result lists.
const MaxViolations = 50

// Checker judges an Input.
type Checker interface {
	Name() string
	Check(in *Input) Result
}

// All returns every checker, in report order.
func All() []Checker {
	return []Checker{Convergence{}, Acknowledged{}, Causality{}, Resolution{}, HLC{}}
}

// ForRun returns every checker a run needs: All, and Postgres when the
// run has databases.
func ForRun(databases bool) []Checker {
	if databases {
		return append(All(), Postgres{})
	}
	return All()
}

// Run runs checkers against in.
func Run(in *Input, checkers []Checker) []Result {
	out := make([]Result, 0, len(checkers))
	for _, c := range checkers {
		out = append(out, c.Check(in))
	}
	return out
}

// result collects violations and notes, deduplicated.
type result struct {
	Result
	seen map[string]bool
}

func newResult(name string) *result {
	return &result{Result: Result{Name: name, Valid: true, Stats: map[string]any{}}, seen: map[string]bool{}}
}

func (r *result) violate(format string, args ...any) {
	msg := fmt.Sprintf(format, args...)
	if r.seen[msg] {
		return
	}
	r.seen[msg] = true
	r.Valid = false
	r.Count++
	if len(r.Violations) < MaxViolations {
		r.Violations = append(r.Violations, msg)
	}
}

func (r *result) note(format string, args ...any) {
	msg := fmt.Sprintf(format, args...)
	if r.seen[msg] {
		return
	}
	r.seen[msg] = true
	if len(r.Notes) < MaxViolations {
		r.Notes = append(r.Notes, msg)
	}
}

func (r *result) done() Result { return r.Result }

// ---- versions as the API returns them ----

// version is one history entry in the checker's own terms.
type version struct {
	Value  string // a string value, "true"/"false" for _deleted, "<null>"
	HLC    uint64
	Origin string
	Dot    history.Dot
	Ctx    map[string]uint64
	Fate   pb.Fate
	By     history.Dot
	// Source names the source change a connector captured the version
	// from; Also are the dots of other captures of that change, which
	// lattice counts as this one edit.
	Source string
	Also   []history.Dot
}

func (v *version) covers(d history.Dot) bool { return covers(v.Ctx, d) }

// sees reports whether v's writer had seen w: v's context covers w's dot,
// or the dot of another capture of w's change (seeing one capture of a
// change is seeing the change).
func (v *version) sees(w *version) bool {
	if v.covers(w.Dot) {
		return true
	}
	for _, d := range w.Also {
		if v.covers(d) {
			return true
		}
	}
	return false
}

func covers(vv map[string]uint64, d history.Dot) bool { return d.Seq > 0 && vv[d.Node] >= d.Seq }

func dotOf(d *pb.Dot) history.Dot { return history.Dot{Node: d.GetNode(), Seq: d.GetSeq()} }

func valueString(v *pb.Value) string {
	switch k := v.GetKind().(type) {
	case *pb.Value_StringValue:
		return k.StringValue
	case *pb.Value_BoolValue:
		if k.BoolValue {
			return "true"
		}
		return "false"
	case nil, *pb.Value_Null:
		return "<null>"
	default:
		return fmt.Sprintf("<%T>", k)
	}
}

func versionsOf(h *pb.HistoryResponse) []version {
	out := make([]version, 0, len(h.GetEntries()))
	for _, e := range h.GetEntries() {
		v := e.GetVersion()
		ver := version{Value: valueString(v.GetValue()), HLC: v.GetHlc(), Origin: v.GetOrigin(),
			Dot: dotOf(v.GetDot()), Ctx: v.GetContext().GetEntries(), Fate: e.GetFate(), By: dotOf(e.GetBy()), Source: v.GetSource()}
		for _, d := range v.GetAlso() {
			ver.Also = append(ver.Also, dotOf(d))
		}
		out = append(out, ver)
	}
	return out
}

// index is the checkers' view of the operations.
type index struct {
	pairs []history.Pair
	byID  map[int64]*history.Pair
	// writes are the puts and deletes, in invoke order.
	writes []*history.Pair
}

func newIndex(ops []history.Op) *index {
	ix := &index{pairs: history.Pairs(ops), byID: map[int64]*history.Pair{}}
	for i := range ix.pairs {
		p := &ix.pairs[i]
		ix.byID[p.Invoke.ID] = p
		if p.Invoke.F == history.Put || p.Invoke.F == history.Delete {
			ix.writes = append(ix.writes, p)
		}
	}
	return ix
}

// registers lists the registers a write writes: a put its fields and
// _deleted, a delete _deleted.
func registers(p *history.Pair) []string {
	if p.Invoke.F == history.Delete {
		return []string{DeletedField}
	}
	out := make([]string, 0, len(p.Invoke.Fields)+1)
	for f := range p.Invoke.Fields {
		out = append(out, f)
	}
	sort.Strings(out)
	return append(out, DeletedField)
}

// okDot is the dot the server returned for a write (ok, or unknown but
// said to be applied); nil otherwise.
func okDot(p *history.Pair) *history.Dot {
	if p.Complete == nil {
		return nil
	}
	if p.Complete.Type == history.OK || p.Complete.Applied {
		return p.Complete.Dot
	}
	return nil
}

func describe(p *history.Pair) string {
	o := p.Invoke
	var b strings.Builder
	fmt.Fprintf(&b, "#%d %s %s on %s", o.ID, o.F, o.Key, o.Node)
	if len(o.Fields) > 0 {
		keys := make([]string, 0, len(o.Fields))
		for k := range o.Fields {
			keys = append(keys, k)
		}
		sort.Strings(keys)
		for _, k := range keys {
			fmt.Fprintf(&b, " %s=%s", k, o.Fields[k])
		}
	}
	if o.Context != "" {
		fmt.Fprintf(&b, " ctx(read #%d on %s)=%v", o.ReadOp, o.ReadNode, o.ContextVV)
	}
	if o.Acks > 1 {
		fmt.Fprintf(&b, " acks=%d", o.Acks)
	}
	fmt.Fprintf(&b, " [%s", p.Status())
	if d := okDot(p); d != nil {
		fmt.Fprintf(&b, " %s", d)
	}
	b.WriteString("]")
	return b.String()
}
