package check

import (
	"fmt"
	"sort"
	"strconv"
	"time"

	pb "github.com/lattice-sync/lattice/api/lattice/v1"
	"github.com/lattice-sync/lattice/jepsen/history"
	"github.com/lattice-sync/lattice/jepsen/workload"
)

// PGInput is what the postgres checker judges, beside the history: the
// entity the databases map to, the cluster's final state of it and every
// database's final rows.
type PGInput struct {
	// Schema is the entity the tables map to (every field lww).
	Schema Schema
	// DBs are the databases, which are also their connectors' names (the
	// origin of a captured edit is "postgres:<db>").
	DBs []string
	// Final is the cluster's state of the entity, read from every node
	// after the databases settled.
	Final *Final
	// Rows[db][key][field] is the database's final row, in entity field
	// names; a NULL column is absent, a missing row has no entry.
	Rows map[string]map[string]map[string]string
	// RowErrors are reads of the databases that failed.
	RowErrors []string
	// SettleErr is set when the databases did not equal the cluster's
	// records in time after traffic stopped; SettleTook is how long they
	// took.
	SettleErr  string
	SettleTook time.Duration
}

// Postgres checks the PostgreSQL side (workload b) from the history and
// the final state, without lattice's merge code:
//
//   - convergence (invariant 1): the databases equalled the cluster in time
//     after traffic stopped; every node returns the same records and
//     histories of the entity; in each database every row's columns equal,
//     through the column mapping, the resolved value the model derives from
//     the field's history (the pick among versions no other version's
//     context covers) and the record every node returns; no row is missing
//     or extra;
//   - no invented values: every value in a database, and every version in
//     the entity's history, is a value a recorded insert or update wrote
//     (not a failed one), to that row and field, and a version's origin is
//     the connector of the database the write ran in (an echo captured
//     back as a native change of the other database would show here);
//   - acknowledged (invariant 2): every committed insert or update is in
//     its fields' history on every node, and every value a transaction read
//     in a database is in the cluster's history;
//   - causality (invariant 3): an update that read V in a field (SELECT ...
//     FOR UPDATE in its own transaction) and wrote W never loses to V: V
//     is not the pick above a live W, and V's context does not cover W
//     (V cannot have seen what was written after it). W's context should
//     cover V (superseded, not merely newer); when it does not, the
//     connector had lost what its stream showed (connectors/DESIGN.md,
//     HAZARD: after a connector restart), and the checker notes it.
type Postgres struct{}

// Name implements Checker.
func (Postgres) Name() string { return "postgres" }

// Check implements Checker.
func (Postgres) Check(in *Input) Result {
	r := newResult("postgres")
	pg := in.PG
	if pg == nil {
		r.violate("no PostgreSQL state was read")
		return r.done()
	}
	if pg.SettleErr != "" {
		r.violate("databases did not settle: %s", pg.SettleErr)
	} else {
		r.Stats["settle_s"] = pg.SettleTook.Seconds()
	}
	for _, e := range pg.RowErrors {
		r.violate("read a database: %s", e)
	}
	if pg.Final == nil {
		r.violate("no final state of %s was read", pg.Schema.Entity)
		return r.done()
	}
	for _, e := range pg.Final.Errors {
		r.violate("read %s: %s", pg.Schema.Entity, e)
	}
	writes := pgWrites(in.Ops)
	// A change captured again (pg-recapture, fixed) shows in thousands of
	// places: list the first ten such violations, count the rest, so that
	// other violations stay in the list.
	listed := 0
	bug := func(format string, args ...any) {
		switch {
		case listed < 10:
			listed++
			r.violate(format, args...)
		default:
			r.Valid = false
			r.Count++
		}
	}
	pgConverged(r, in, pg)
	pgRecaptured(r, in, pg, bug)
	pgResolved(r, in, pg)
	pgInvented(r, in, pg, writes)
	pgAcked(r, in, pg, writes)
	pgDeletes(r, in, pg, writes, bug)
	pgCausality(r, in, pg, writes, bug)
	return r.done()
}

// pgWrites indexes the PostgreSQL workload's writes by id.
func pgWrites(ops []history.Op) map[int64]*history.Pair {
	out := map[int64]*history.Pair{}
	for _, p := range history.Pairs(ops) {
		if p.Invoke.F == workload.PGUpdate || p.Invoke.F == workload.PGInsert || p.Invoke.F == workload.PGDelete {
			out[p.Invoke.ID] = &p
		}
	}
	return out
}

func pgRegisters(s Schema) []string { return append(s.FieldNames(), DeletedField) }

// pgConverged: every node returns the same records and histories of the entity.
func pgConverged(r *result, in *Input, pg *PGInput) {
	if len(in.Nodes) == 0 {
		return
	}
	ref := in.Nodes[0]
	for _, node := range in.Nodes[1:] {
		for _, key := range pg.Final.Keys {
			a, b := pg.Final.Records[ref][key], pg.Final.Records[node][key]
			if (a == nil) != (b == nil) {
				r.violate("%s %s: %s has it %v, %s has it %v", pg.Schema.Entity, key, ref, a != nil, node, b != nil)
				continue
			}
			for _, f := range pgRegisters(pg.Schema) {
				va, vb := pg.Final.versions(ref, key, f), pg.Final.versions(node, key, f)
				if len(va) != len(vb) {
					r.violate("%s %s.%s: %s holds %d versions, %s %d", pg.Schema.Entity, key, f, ref, len(va), node, len(vb))
					continue
				}
				for i := range va {
					if va[i].Dot != vb[i].Dot || va[i].Value != vb[i].Value || va[i].Fate != vb[i].Fate {
						r.violate("%s %s.%s: version %d differs: %s has %s=%s (%s), %s has %s=%s (%s)", pg.Schema.Entity, key, f, i,
							ref, va[i].Dot, va[i].Value, va[i].Fate, node, vb[i].Dot, vb[i].Value, vb[i].Fate)
						break
					}
				}
			}
		}
	}
}

// resolvedValue is the model's pick of a field's versions ("<null>" when
// the field has none).
func resolvedValue(f Field, vs []version) string {
	if w := pick(f, vs, liveSet(vs)); w >= 0 {
		return vs[w].Value
	}
	return "<null>"
}

func recordValue(rec *pb.Record, field string) string {
	for _, fs := range rec.GetFields() {
		if fs.GetName() == field {
			if len(fs.GetLive()) == 0 {
				return "<null>"
			}
			return valueString(fs.GetValue())
		}
	}
	return "<null>"
}

// pgResolved: each database row equals the model's resolved state and the
// cluster's record.
func pgResolved(r *result, in *Input, pg *PGInput) {
	if len(in.Nodes) == 0 {
		return
	}
	checked := 0
	for _, node := range in.Nodes {
		for _, key := range pg.Final.Keys {
			rec := pg.Final.Records[node][key]
			if rec == nil {
				continue
			}
			deleted := resolvedValue(Field{Name: DeletedField, Policy: "lww"}, pg.Final.versions(node, key, DeletedField)) == "true"
			if deleted != rec.GetDeleted() {
				r.violate("%s on %s: record deleted=%v, the model resolves _deleted to %v", key, node, rec.GetDeleted(), deleted)
			}
			for _, f := range pg.Schema.Fields {
				want := resolvedValue(f, pg.Final.versions(node, key, f.Name))
				if got := recordValue(rec, f.Name); got != want {
					r.violate("%s.%s on %s: the record's value is %s, the model resolves %s from its history", key, f.Name, node, got, want)
				}
				if node != in.Nodes[0] {
					continue
				}
				for _, db := range pg.DBs {
					row, ok := pg.Rows[db][key]
					switch {
					case deleted && ok:
						r.violate("%s: row %s exists, but the record is deleted", db, key)
					case deleted:
					case !ok:
						r.violate("%s: row %s is missing (the cluster has the record)", db, key)
					default:
						got, present := row[f.Name]
						if !present {
							got = "<null>"
						}
						checked++
						if got != want {
							r.violate("%s row %s: %s = %s, but the resolved state of the field is %s", db, key, f.Name, got, want)
						}
					}
				}
			}
		}
	}
	for _, db := range pg.DBs {
		for key := range pg.Rows[db] {
			if pg.Final.Records[in.Nodes[0]][key] == nil {
				r.violate("%s: row %s exists, but no node has the record", db, key)
			}
		}
	}
	r.Stats["db_fields_checked"] = checked
}

// writerOf returns the write that wrote v into key.field, or why none did.
func writerOf(writes map[int64]*history.Pair, key, field, v string) (*history.Pair, string) {
	id, f, ok := workload.PGValueOp(v)
	if !ok {
		return nil, "no PostgreSQL workload operation writes such a value"
	}
	p := writes[id]
	switch {
	case p == nil:
		return nil, fmt.Sprintf("operation %d is not in the history", id)
	case f != field || p.Invoke.Fields[field] != v:
		return nil, fmt.Sprintf("operation %d wrote it to another field", id)
	case p.Invoke.Key != key:
		return nil, fmt.Sprintf("operation %d wrote it to row %s", id, p.Invoke.Key)
	case p.Status() == history.Fail:
		return nil, fmt.Sprintf("operation %d failed (rolled back: %s)", id, p.Complete.Error)
	}
	return p, ""
}

// pgInvented: every value in a database and in the history was written by
// a recorded write that did not fail, in the database its origin names.
func pgInvented(r *result, in *Input, pg *PGInput, writes map[int64]*history.Pair) {
	for _, db := range pg.DBs {
		for key, row := range pg.Rows[db] {
			for field, v := range row {
				if _, why := writerOf(writes, key, field, v); why != "" {
					r.violate("%s row %s: %s = %s, which no write made: %s", db, key, field, v, why)
				}
			}
		}
	}
	versions := 0
	for _, node := range in.Nodes {
		for _, key := range pg.Final.Keys {
			for _, f := range pg.Schema.FieldNames() {
				for _, v := range pg.Final.versions(node, key, f) {
					versions++
					if v.Value == "<null>" {
						r.violate("%s.%s on %s: version %s is null, and no write nulls a field", key, f, node, v.Dot)
						continue
					}
					p, why := writerOf(writes, key, f, v.Value)
					if why != "" {
						r.violate("%s.%s on %s: version %s = %s, which no write made: %s", key, f, node, v.Dot, v.Value, why)
						continue
					}
					if want := "postgres:" + p.Invoke.DB; v.Origin != want {
						r.violate("%s.%s on %s: version %s = %s has origin %s, but it was written in %s (want origin %s)",
							key, f, node, v.Dot, v.Value, v.Origin, p.Invoke.DB, want)
					}
				}
			}
		}
	}
	r.Stats["versions_checked"] = versions
}

// find returns the version of vs with value v (nil if none).
func find(vs []version, v string) *version {
	for i := range vs {
		if vs[i].Value == v {
			return &vs[i]
		}
	}
	return nil
}

// pgAcked: every committed write is in the history on every node; every
// value a transaction read is in the history.
func pgAcked(r *result, in *Input, pg *PGInput, writes map[int64]*history.Pair) {
	ok, unknown, failed := 0, 0, 0
	ids := make([]int64, 0, len(writes))
	for id := range writes {
		ids = append(ids, id)
	}
	sort.Slice(ids, func(i, j int) bool { return ids[i] < ids[j] })
	for _, id := range ids {
		p := writes[id]
		switch p.Status() {
		case history.OK:
			ok++
		case history.Fail:
			failed++
			continue
		default:
			unknown++
			continue
		}
		for _, node := range in.Nodes {
			for f, v := range p.Invoke.Fields {
				if find(pg.Final.versions(node, p.Invoke.Key, f), v) == nil {
					r.violate("committed %s #%d in %s (row %s, %s = %s) is missing from the history of %s.%s on %s",
						p.Invoke.F, id, p.Invoke.DB, p.Invoke.Key, f, v, p.Invoke.Key, f, node)
				}
			}
			for f, v := range p.Complete.Before {
				if find(pg.Final.versions(node, p.Invoke.Key, f), v) == nil {
					r.violate("#%d read %s = %s in %s row %s, a value missing from the history of %s.%s on %s",
						id, f, v, p.Invoke.DB, p.Invoke.Key, p.Invoke.Key, f, node)
				}
			}
		}
	}
	r.Stats["ok_writes"], r.Stats["unknown_writes"], r.Stats["failed_writes"] = ok, unknown, failed
}

// pgDeletes: the deletions in each record's _deleted history from a
// database's connector number at least its committed DELETEs of the row and
// at most those plus the ones of unknown outcome (a delete projected into the
// other database and captured back there would be one too many).
func pgDeletes(r *result, in *Input, pg *PGInput, writes map[int64]*history.Pair, bug func(string, ...any)) {
	type dbKey struct{ db, key string }
	okN, maybeN := map[dbKey]int{}, map[dbKey]int{}
	for _, p := range writes {
		if p.Invoke.F != workload.PGDelete {
			continue
		}
		k := dbKey{p.Invoke.DB, p.Invoke.Key}
		switch p.Status() {
		case history.OK:
			okN[k]++
			maybeN[k]++
		case history.Unknown:
			maybeN[k]++
		}
	}
	total := 0
	for _, n := range okN {
		total += n
	}
	r.Stats["ok_deletes"] = total
	for _, node := range in.Nodes {
		for _, key := range pg.Final.Keys {
			got := map[string]int{}
			for _, v := range pg.Final.versions(node, key, DeletedField) {
				if v.Value == "true" {
					got[v.Origin]++
				}
			}
			for _, db := range pg.DBs {
				k, n := dbKey{db, key}, got["postgres:"+db]
				delete(got, "postgres:"+db)
				switch {
				case n < okN[k]:
					r.violate("%s deleted row %s %d times (committed), but the history of %s._deleted on %s holds %d deletions from postgres:%s",
						db, key, okN[k], key, node, n, db)
				case n > maybeN[k]:
					bug("the history of %s._deleted on %s holds %d deletions from postgres:%s, but %s deleted row %s at most %d times (a deletion captured again?)",
						key, node, n, db, db, key, maybeN[k])
				}
			}
			for origin, n := range got {
				r.violate("the history of %s._deleted on %s holds %d deletions from %s, which no workload deletes through", key, node, n, origin)
			}
		}
	}
}

// pgRecaptured: each value is in a field's history once (every value is
// written once; a second version with it is a change the connector
// captured again, with a new dot: not effectively-once, DESIGN.md
// "Delivery"), and so is each source change. Captures of one change by
// two owners of a connector must be one version (the others' dots in its
// also list).
func pgRecaptured(r *result, in *Input, pg *PGInput, bug func(string, ...any)) {
	dups, folded := 0, 0
	for _, node := range in.Nodes {
		for _, key := range pg.Final.Keys {
			for _, f := range pg.Schema.FieldNames() {
				first := map[string]history.Dot{}
				bySource := map[string]history.Dot{}
				for _, v := range pg.Final.versions(node, key, f) {
					folded += len(v.Also)
					if len(v.Also) > 0 && v.Source == "" {
						r.violate("%s.%s on %s: %s lists other captures %v but names no source change", key, f, node, v.Dot, v.Also)
					}
					if v.Source != "" {
						if d, seen := bySource[v.Source]; seen {
							dups++
							bug("%s.%s on %s: %s and %s both capture source change %s: two versions of one change",
								key, f, node, d, v.Dot, v.Source)
							continue
						}
						bySource[v.Source] = v.Dot
					}
					d, seen := first[v.Value]
					if !seen {
						first[v.Value] = v.Dot
						continue
					}
					dups++
					bug("%s.%s on %s: %s = %s (%s) was captured again as %s: a re-delivered change made a second edit",
						key, f, node, d, v.Value, v.Origin, v.Dot)
				}
			}
		}
	}
	r.Stats["captured_again"] = dups
	r.Stats["folded_captures"] = folded
}

// pgCausality: an update never loses to a value it had read.
func pgCausality(r *result, in *Input, pg *PGInput, writes map[int64]*history.Pair, bug func(string, ...any)) {
	if len(in.Nodes) == 0 {
		return
	}
	node := in.Nodes[0]
	superseded, concurrent := 0, 0
	ids := make([]int64, 0, len(writes))
	for id, p := range writes {
		if p.Status() == history.OK && p.Invoke.F == workload.PGUpdate {
			ids = append(ids, id)
		}
	}
	sort.Slice(ids, func(i, j int) bool { return ids[i] < ids[j] })
	for _, id := range ids {
		p := writes[id]
		for f, seen := range p.Complete.Before {
			field := pg.Schema.Field(f)
			vs := pg.Final.versions(node, p.Invoke.Key, f)
			w, v := find(vs, p.Invoke.Fields[f]), find(vs, seen)
			if w == nil || v == nil {
				continue // reported by pgAcked
			}
			if v.sees(w) {
				r.violate("%s.%s: %s = %s (%s) claims to have seen %s (%s), written by #%d in %s after reading it",
					p.Invoke.Key, f, v.Dot, v.Value, v.Origin, w.Dot, w.Value, id, p.Invoke.DB)
			}
			live := liveSet(vs)
			wi := indexOf(vs, w)
			// Every version holding the value read (more than one when a
			// change was captured again) must not beat the update.
			for i := range vs {
				if vs[i].Value != seen || &vs[i] == v || w.sees(&vs[i]) {
					continue
				}
				if live[i] && live[wi] && beats(field, &vs[i], w) {
					bug("%s.%s: #%d in %s read %s and wrote %s (%s), yet %s = %s, the value captured again, beats it: an edit lost to a re-delivered copy of a version its writer had seen",
						p.Invoke.Key, f, id, p.Invoke.DB, seen, w.Value, w.Dot, vs[i].Dot, seen)
				}
			}
			if w.sees(v) {
				superseded++
				continue
			}
			concurrent++
			vi := indexOf(vs, v)
			if live[vi] && live[wi] && beats(field, v, w) {
				r.violate("%s.%s: #%d in %s read %s (%s) and wrote %s (%s), yet %s beats it: an edit lost to a version its writer had seen",
					p.Invoke.Key, f, id, p.Invoke.DB, v.Value, v.Dot, w.Value, w.Dot, v.Value)
			} else {
				r.note("%s.%s: #%d in %s wrote %s (%s) after reading %s (%s), but its context does not cover %s: concurrent, not superseding (connectors/DESIGN.md, HAZARD after a connector restart); it did not lose to it",
					p.Invoke.Key, f, id, p.Invoke.DB, w.Value, w.Dot, v.Value, v.Dot, v.Dot)
			}
		}
	}
	r.Stats["reads_superseded"], r.Stats["reads_concurrent"] = superseded, concurrent
}

func indexOf(vs []version, v *version) int {
	for i := range vs {
		if &vs[i] == v {
			return i
		}
	}
	return -1
}

// PGKeys are the record ids of rows 1..n.
func PGKeys(n int) []string {
	out := make([]string, n)
	for i := range out {
		out[i] = strconv.Itoa(i + 1)
	}
	return out
}
