package connectors

import (
	"sort"
	"time"

	"github.com/lattice-sync/lattice/crdt"
)

// Plan: what connecting systems that already hold data will do, before
// anything is written (`lattice connectors plan`).
//
// When connectors start on systems that already hold rows, each one's
// initial snapshot becomes versions of the records, concurrent with the
// other systems' (no system has seen another's rows yet). The merge then
// decides, per field, as it always does: a row only one system holds is
// created in the others; a row whose values differ is a conflict resolved
// by the field's policy, and every system ends up holding the winner. A
// Planner reproduces that decision from the rows alone, with the same
// policies and the same timestamps the snapshots will carry (a table's
// updated_at column, or, without one, the time of the snapshot, which the
// plan cannot know: such a winner is counted as undetermined).

// PlanRow is one source row as a connector maps it to a record.
type PlanRow struct {
	Entity, ID string
	Fields     map[string]crdt.Value
	// UpdatedAt is the row's last-change time (zero: the table has no
	// updated_at column, or it is null).
	UpdatedAt time.Time
	// Refused is set for a row that cannot become a record (a value that
	// does not convert, a failing expression): it will be a dead letter.
	Refused error
}

// SidePlan is what the plan does to one side (a connected system).
type SidePlan struct {
	Name   string // connector name, or "cluster"
	Origin string
	// Rows is how many rows the side holds; Create how many records it
	// lacks and will receive; Update how many of its rows will change;
	// Unchanged how many already hold the outcome.
	Rows, Create, Update, Unchanged int
	// Conflicts counts its rows that disagree with another side on some
	// field; Undetermined those of them whose winner depends on which
	// snapshot runs last (no updated_at to date the versions).
	Conflicts, Undetermined int
	// Refused counts rows that will go to the dead-letter queue instead.
	Refused int
}

// Planner gathers every side's rows and computes the plan.
type Planner struct {
	schema *crdt.Schema
	sides  []SidePlan
	index  map[string]int
	// recs: entity -> id -> side index -> row
	recs map[string]map[string]map[int]PlanRow
	// mapped: side -> entity -> fields the side holds (it is compared and
	// written only on those)
	mapped map[int]map[string][]string
}

// NewPlanner returns an empty planner for the schema.
func NewPlanner(schema *crdt.Schema) *Planner {
	return &Planner{schema: schema, index: map[string]int{}, recs: map[string]map[string]map[int]PlanRow{},
		mapped: map[int]map[string][]string{}}
}

// Side declares a side: its name, the origin its versions carry, and per
// entity the fields it holds.
func (p *Planner) Side(name, origin string, fields map[string][]string) {
	if _, ok := p.index[name]; ok {
		return
	}
	p.index[name] = len(p.sides)
	p.sides = append(p.sides, SidePlan{Name: name, Origin: origin})
	p.mapped[len(p.sides)-1] = fields
}

// Add records one row of a declared side.
func (p *Planner) Add(side string, r PlanRow) {
	i, ok := p.index[side]
	if !ok {
		return
	}
	if r.Refused != nil {
		p.sides[i].Refused++
		return
	}
	if p.recs[r.Entity] == nil {
		p.recs[r.Entity] = map[string]map[int]PlanRow{}
	}
	if p.recs[r.Entity][r.ID] == nil {
		p.recs[r.Entity][r.ID] = map[int]PlanRow{}
	}
	p.recs[r.Entity][r.ID][i] = r
	p.sides[i].Rows++
}

// Plan computes, per side, what connecting them will do.
func (p *Planner) Plan() []SidePlan {
	out := append([]SidePlan(nil), p.sides...)
	entities := make([]string, 0, len(p.recs))
	for e := range p.recs {
		entities = append(entities, e)
	}
	sort.Strings(entities)
	for _, entity := range entities {
		ent, ok := p.schema.Entity(entity)
		if !ok {
			continue
		}
		for _, rows := range p.recs[entity] {
			winner, conflicted, undetermined := p.resolve(ent, rows)
			for i := range out {
				fields := p.mapped[i][entity]
				if len(fields) == 0 {
					continue
				}
				row, has := rows[i]
				if !has {
					out[i].Create++
					continue
				}
				differs := false
				for _, f := range fields {
					if w, ok := winner[f]; ok && !w.Equal(valueOr(row.Fields, f)) {
						differs = true
					}
				}
				if differs {
					out[i].Update++
				} else {
					out[i].Unchanged++
				}
				if conflicted {
					out[i].Conflicts++
					if undetermined {
						out[i].Undetermined++
					}
				}
			}
		}
	}
	return out
}

func valueOr(m map[string]crdt.Value, f string) crdt.Value {
	if v, ok := m[f]; ok {
		return v
	}
	return crdt.Null
}

// resolve decides each field of one record from the sides' rows with the
// entity's policies, the way the merge will: every side's version is
// concurrent with the others'.
func (p *Planner) resolve(ent *crdt.Entity, rows map[int]PlanRow) (winner map[string]crdt.Value, conflicted, undetermined bool) {
	winner = map[string]crdt.Value{}
	sides := make([]int, 0, len(rows))
	for i := range rows {
		sides = append(sides, i)
	}
	sort.Ints(sides)
	for _, f := range ent.Fields {
		var reg crdt.Register
		var vals []crdt.Value
		dated := true
		for n, i := range sides {
			has := false
			for _, m := range p.mapped[i][ent.Name] {
				if m == f.Name {
					has = true
				}
			}
			if !has {
				continue
			}
			row := rows[i]
			v := valueOr(row.Fields, f.Name)
			ts := crdt.TimestampFromTime(row.UpdatedAt)
			if row.UpdatedAt.IsZero() {
				dated = false
				ts = crdt.MakeTimestamp(1, 0)
			}
			reg.Versions = append(reg.Versions, crdt.Version{Value: v, TS: ts, Origin: p.sides[i].Origin,
				Dot: crdt.Dot{Node: "plan", Seq: uint64(n + 1)}})
			vals = append(vals, v)
		}
		if len(vals) == 0 {
			continue
		}
		differ := false
		for _, v := range vals[1:] {
			if !v.Equal(vals[0]) {
				differ = true
			}
		}
		policy := ent.PolicyOf(f.Name)
		w, _ := reg.Resolve(policy)
		if w >= 0 {
			winner[f.Name] = reg.Versions[w].Value
		}
		if differ {
			conflicted = true
			if !dated && policy.Kind != crdt.PolicyPriority {
				undetermined = true
			}
		}
	}
	return winner, conflicted, undetermined
}
