package connectors

import (
	"testing"
	"time"

	"github.com/lattice-sync/lattice/crdt"
)

func TestPlanPolicies(t *testing.T) {
	schema, err := crdt.ParseSchema("s.yaml", []byte(`entities:
  contact:
    fields:
      name: string
      phone: {type: string, policy: {priority: ["postgres:billing"]}}
`))
	if err != nil {
		t.Fatal(err)
	}
	p := NewPlanner(schema)
	fields := map[string][]string{"contact": {"name", "phone"}}
	p.Side("crm", "postgres:crm", fields)
	p.Side("billing", "postgres:billing", fields)
	old, newer := time.Date(2026, 1, 1, 0, 0, 0, 0, time.UTC), time.Date(2026, 2, 1, 0, 0, 0, 0, time.UTC)
	s := crdt.String
	// 1: crm's name is newer (lww: crm wins name); phone differs: billing
	// wins by priority whatever the time.
	p.Add("crm", PlanRow{Entity: "contact", ID: "1", Fields: map[string]crdt.Value{"name": s("crm"), "phone": s("c")}, UpdatedAt: newer})
	p.Add("billing", PlanRow{Entity: "contact", ID: "1", Fields: map[string]crdt.Value{"name": s("bill"), "phone": s("b")}, UpdatedAt: old})
	// 2: alike.
	p.Add("crm", PlanRow{Entity: "contact", ID: "2", Fields: map[string]crdt.Value{"name": s("x"), "phone": s("y")}})
	p.Add("billing", PlanRow{Entity: "contact", ID: "2", Fields: map[string]crdt.Value{"name": s("x"), "phone": s("y")}})
	// 3: names differ, no updated_at: undetermined.
	p.Add("crm", PlanRow{Entity: "contact", ID: "3", Fields: map[string]crdt.Value{"name": s("a"), "phone": s("y")}})
	p.Add("billing", PlanRow{Entity: "contact", ID: "3", Fields: map[string]crdt.Value{"name": s("b"), "phone": s("y")}})
	// 4: only in crm; and a refused row.
	p.Add("crm", PlanRow{Entity: "contact", ID: "4", Fields: map[string]crdt.Value{"name": s("only")}})
	p.Add("billing", PlanRow{Entity: "contact", ID: "5", Refused: errTest})
	got := map[string]SidePlan{}
	for _, sp := range p.Plan() {
		got[sp.Name] = sp
	}
	// crm: 1 updated (phone from billing), 2 unchanged, 3 one of the two, 4 unchanged.
	crm, bill := got["crm"], got["billing"]
	if crm.Rows != 4 || crm.Create != 0 || crm.Conflicts != 2 || crm.Undetermined != 1 {
		t.Errorf("crm plan %+v", crm)
	}
	if bill.Rows != 3 || bill.Create != 1 || bill.Conflicts != 2 || bill.Undetermined != 1 || bill.Refused != 1 {
		t.Errorf("billing plan %+v", bill)
	}
	// Row 1 changes on both sides (name to crm's in billing, phone to
	// billing's in crm); row 3 changes on exactly one side.
	if crm.Update+bill.Update != 3 || crm.Update+crm.Unchanged != crm.Rows || bill.Update+bill.Unchanged != bill.Rows {
		t.Errorf("updates: crm %+v billing %+v", crm, bill)
	}
}

type testErr string

func (e testErr) Error() string { return string(e) }

var errTest = testErr("bad row")
