package check

import (
	"strings"
	"testing"
	"time"

	"github.com/lattice-sync/lattice/jepsen/history"
	"github.com/lattice-sync/lattice/jepsen/workload"
)

var pgTestSchema = Schema{Entity: "contact", Fields: []Field{{Name: "name", Policy: "lww"}}}

// pgCase is one PostgreSQL run to judge: a seeded row in crm (#1), then an
// update in billing (#2) that read #1's value and wrote its own.
type pgCase struct {
	ops   []history.Op
	name  []hv // versions of contact 1's name
	del   []hv // versions of its _deleted (nil: one false per name version)
	rows  map[string]map[string]map[string]string
	settl string
}

func pgBase() *pgCase {
	v1, v2 := workload.PGValue(1, "name"), workload.PGValue(2, "name")
	at := func(ms int64) int64 { return time.Unix(1000, 0).Add(time.Duration(ms) * time.Millisecond).UnixNano() }
	return &pgCase{
		ops: []history.Op{
			{Type: history.Invoke, ID: 1, Proc: -1, F: workload.PGInsert, DB: "crm", Key: "1", Fields: map[string]string{"name": v1}, Time: at(0)},
			{Type: history.OK, ID: 1, Proc: -1, F: workload.PGInsert, DB: "crm", Key: "1", Time: at(1)},
			{Type: history.Invoke, ID: 2, Proc: 1000, F: workload.PGUpdate, DB: "billing", Key: "1", Fields: map[string]string{"name": v2}, Time: at(10)},
			{Type: history.OK, ID: 2, Proc: 1000, F: workload.PGUpdate, DB: "billing", Key: "1", Time: at(12), Before: map[string]string{"name": v1}},
		},
		name: []hv{
			{val: v1, hlc: 10, d: dot("n1", 1), origin: "postgres:crm"},
			{val: v2, hlc: 20, d: dot("n2", 1), ctx: map[string]uint64{"n1": 1}, origin: "postgres:billing"},
		},
		rows: map[string]map[string]map[string]string{
			"crm":     {"1": {"name": v2}},
			"billing": {"1": {"name": v2}},
		},
	}
}

func (c *pgCase) input() *Input {
	nodes := []string{"n1", "n2"}
	del := c.del
	if del == nil {
		for _, v := range c.name {
			del = append(del, hv{val: "false", hlc: v.hlc, d: v.d, ctx: v.ctx, origin: v.origin})
		}
	}
	in := &Input{Schema: testSchema, Nodes: nodes, N: 2, Ops: c.ops,
		PG: &PGInput{Schema: pgTestSchema, DBs: []string{"crm", "billing"}, Rows: c.rows, SettleErr: c.settl,
			Final: stateOf(pgTestSchema, nodes, "1", map[string][]hv{"name": c.name, DeletedField: del})}}
	return in
}

func TestPostgresChecker(t *testing.T) {
	v1, v2 := workload.PGValue(1, "name"), workload.PGValue(2, "name")
	cases := []struct {
		name   string
		mutate func(c *pgCase)
		want   string // "" = valid; else a substring of a violation
	}{
		{"valid", func(*pgCase) {}, ""},
		{"a database kept a stale value", func(c *pgCase) { c.rows["billing"]["1"]["name"] = v1 }, "but the resolved state of the field is " + v2},
		{"a row is missing", func(c *pgCase) { delete(c.rows["crm"], "1") }, "crm: row 1 is missing"},
		{"an extra row", func(c *pgCase) { c.rows["crm"]["2"] = map[string]string{"name": v2} }, "no node has the record"},
		{"an invented value in a database", func(c *pgCase) {
			c.rows["crm"]["1"]["name"] = "pg99.name"
		}, "which no write made: operation 99 is not in the history"},
		{"a failed write's value in the history", func(c *pgCase) {
			c.ops[3].Type, c.ops[3].Error = history.Fail, "rolled back"
		}, "operation 2 failed"},
		{"a version with the wrong origin (an echo)", func(c *pgCase) { c.name[1].origin = "postgres:crm" }, "has origin postgres:crm, but it was written in billing"},
		{"a committed update missing from the history", func(c *pgCase) {
			c.name = c.name[:1]
			c.rows["crm"]["1"]["name"], c.rows["billing"]["1"]["name"] = v1, v1
		}, "committed pg-update #2 in billing (row 1, name = " + v2 + ") is missing"},
		{"an update lost to the value it had read", func(c *pgCase) {
			c.name[1].ctx, c.name[1].hlc = nil, 5
			c.rows["crm"]["1"]["name"], c.rows["billing"]["1"]["name"] = v1, v1
		}, "an edit lost to a version its writer had seen"},
		{"a version claims to have seen a later write", func(c *pgCase) {
			c.name[0].ctx = map[string]uint64{"n2": 1}
			c.name[1].ctx = nil
		}, "claims to have seen n2:1"},
		{"the databases did not settle", func(c *pgCase) { c.settl = "crm row 1 holds ..." }, "databases did not settle"},
	}
	for _, tc := range cases {
		t.Run(tc.name, func(t *testing.T) {
			c := pgBase()
			tc.mutate(c)
			res := Postgres{}.Check(c.input())
			if tc.want == "" {
				if !res.Valid {
					t.Fatalf("valid run rejected: %v", res.Violations)
				}
				if res.Stats["reads_superseded"] != 1 || res.Stats["ok_writes"] != 2 {
					t.Fatalf("stats %v: want 1 read superseded and 2 ok writes", res.Stats)
				}
				return
			}
			if res.Valid {
				t.Fatalf("not caught: want a violation with %q", tc.want)
			}
			for _, v := range res.Violations {
				if strings.Contains(v, tc.want) {
					return
				}
			}
			t.Fatalf("want a violation with %q, got %v", tc.want, res.Violations)
		})
	}
}

// An update whose context does not cover what it read (the connector lost
// what its stream had shown, after a restart) but which still wins is a
// note, not a violation.
func TestPostgresCheckerConcurrentRead(t *testing.T) {
	c := pgBase()
	c.name[1].ctx = nil
	res := Postgres{}.Check(c.input())
	if !res.Valid {
		t.Fatalf("rejected: %v", res.Violations)
	}
	if res.Stats["reads_concurrent"] != 1 || len(res.Notes) != 1 || !strings.Contains(res.Notes[0], "concurrent, not superseding") {
		t.Fatalf("want one concurrent read noted, got stats %v notes %v", res.Stats, res.Notes)
	}
}

// A row deleted in crm: the record is deleted, both databases lack the
// row, and the _deleted history holds the deletion from postgres:crm.
func TestPostgresCheckerDelete(t *testing.T) {
	base := func() *pgCase {
		c := pgBase()
		v1 := c.name[0].val
		at := c.ops[0].Time
		c.ops = append(c.ops[:2],
			history.Op{Type: history.Invoke, ID: 3, Proc: 1000, F: workload.PGDelete, DB: "crm", Key: "1", Time: at + 5e6},
			history.Op{Type: history.OK, ID: 3, Proc: 1000, F: workload.PGDelete, DB: "crm", Key: "1", Time: at + 6e6, Before: map[string]string{"name": v1}})
		c.name = c.name[:1]
		c.del = []hv{{val: "false", hlc: 10, d: dot("n1", 1), origin: "postgres:crm"},
			{val: "true", hlc: 15, d: dot("n1", 2), ctx: map[string]uint64{"n1": 1}, origin: "postgres:crm"}}
		c.rows = map[string]map[string]map[string]string{"crm": {}, "billing": {}}
		return c
	}
	cases := []struct {
		name   string
		mutate func(c *pgCase)
		want   string
	}{
		{"valid", func(*pgCase) {}, ""},
		{"the row survives in a database", func(c *pgCase) {
			c.rows["billing"]["1"] = map[string]string{"name": c.name[0].val}
		}, "billing: row 1 exists, but the record is deleted"},
		{"the deletion is missing", func(c *pgCase) {
			c.del = c.del[:1]
			c.rows["crm"]["1"] = map[string]string{"name": c.name[0].val}
			c.rows["billing"]["1"] = map[string]string{"name": c.name[0].val}
		}, "crm deleted row 1 1 times (committed), but the history"},
		{"the deletion captured back from the other database", func(c *pgCase) {
			c.del = append(c.del, hv{val: "true", hlc: 16, d: dot("n2", 1), ctx: map[string]uint64{"n1": 2}, origin: "postgres:billing"})
		}, "deletions from postgres:billing, but billing deleted row 1 at most 0 times"},
	}
	for _, tc := range cases {
		t.Run(tc.name, func(t *testing.T) {
			c := base()
			tc.mutate(c)
			res := Postgres{}.Check(c.input())
			if tc.want == "" {
				if !res.Valid || res.Stats["ok_deletes"] != 1 {
					t.Fatalf("valid run: valid=%v violations %v stats %v", res.Valid, res.Violations, res.Stats)
				}
				return
			}
			for _, v := range res.Violations {
				if strings.Contains(v, tc.want) {
					return
				}
			}
			t.Fatalf("want a violation with %q, got %v", tc.want, res.Violations)
		})
	}
}

// A change captured by two owners, folded by lattice into one version
// (its other capture in also): counted once, and billing's update, which
// saw the other capture only, supersedes it. Unfolded, the two captures of
// one source change are a violation.
func TestPostgresCheckerFoldedCapture(t *testing.T) {
	c := pgBase()
	c.name[0].src, c.name[0].also = "_src:crm=L1", []history.Dot{dot("n3", 4)}
	c.name[1].ctx = map[string]uint64{"n3": 4} // billing saw n3's capture
	res := Postgres{}.Check(c.input())
	if !res.Valid || res.Stats["captured_again"] != 0 {
		t.Fatalf("folded capture: valid=%v violations %v stats %v", res.Valid, res.Violations, res.Stats)
	}

	c = pgBase()
	c.name[0].src = "_src:crm=L1"
	c.name = append(c.name, hv{val: c.name[0].val + "'", hlc: 10, d: dot("n3", 4), origin: "postgres:crm", src: "_src:crm=L1"})
	res = Postgres{}.Check(c.input())
	found := false
	for _, v := range res.Violations {
		found = found || strings.Contains(v, "both capture source change _src:crm=L1")
	}
	if !found {
		t.Fatalf("two versions of one source change: want a violation, got %v", res.Violations)
	}
}

// A change captured twice as two versions (pg-recapture, before captures
// of one change folded): the value is in the history twice, and the second
// copy, newer than the update that had read the first, beats it.
func TestPostgresCheckerRecapture(t *testing.T) {
	c := pgBase()
	v1 := c.name[0].val
	c.name = append(c.name, hv{val: v1, hlc: 30, d: dot("n1", 7), origin: "postgres:crm"})
	c.rows["crm"]["1"]["name"], c.rows["billing"]["1"]["name"] = v1, v1
	in := c.input()
	res := Postgres{}.Check(in)
	want := []string{"was captured again as n1:7", "a re-delivered copy of a version its writer had seen"}
	for _, w := range want {
		found := false
		for _, v := range res.Violations {
			found = found || strings.Contains(v, w)
		}
		if !found {
			t.Errorf("want a violation with %q, got %v", w, res.Violations)
		}
	}
	if res.Stats["captured_again"] != 2 {
		t.Errorf("captured_again = %v, want 2 (once per node)", res.Stats["captured_again"])
	}
}
