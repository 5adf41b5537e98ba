package postgres_test

import (
	"context"
	"errors"
	"fmt"
	"io"
	"log/slog"
	"strings"
	"sync"
	"testing"

	"github.com/lattice-sync/lattice/connectors"
	"github.com/lattice-sync/lattice/connectors/postgres"
	"github.com/lattice-sync/lattice/connectors/postgres/pgtest"
	"github.com/lattice-sync/lattice/crdt"
	"github.com/lattice-sync/lattice/storage"
)

const personSchemaYAML = `entities:
  person:
    fields:
      full_name: string
      active: bool
      joined: timestamp
      seen: timestamp
      balance: decimal
`

// memLetters is an in-memory dead-letter queue.
type memLetters struct {
	mu      sync.Mutex
	letters []connectors.Letter
}

func (q *memLetters) Add(_ context.Context, _ string, l connectors.Letter) error {
	q.mu.Lock()
	defer q.mu.Unlock()
	l.ID = uint64(len(q.letters) + 1)
	q.letters = append(q.letters, l)
	return nil
}

func (q *memLetters) List(string) []connectors.Letter {
	q.mu.Lock()
	defer q.mu.Unlock()
	return append([]connectors.Letter(nil), q.letters...)
}

func (q *memLetters) Resolve(_ context.Context, _ string, id uint64, failure error) error {
	q.mu.Lock()
	defer q.mu.Unlock()
	for i, l := range q.letters {
		if l.ID == id {
			if failure == nil {
				q.letters = append(q.letters[:i], q.letters[i+1:]...)
			} else {
				q.letters[i].Error, q.letters[i].Replay = failure.Error(), false
			}
		}
	}
	return nil
}

// letterFor returns the letter of a record, if any.
func (q *memLetters) letterFor(id string) (connectors.Letter, bool) {
	for _, l := range q.List("") {
		if l.RecordID == id {
			return l, true
		}
	}
	return connectors.Letter{}, false
}

// TestTransformSync: crm keeps people with Y/N flags, dates as dd/mm/yyyy
// text, epoch milliseconds and first/last names; billing keeps members with
// native types and one full_name. Through lattice: conversions both ways,
// a computed field, a capture filter, a projection filter, and bad rows in
// the dead-letter queue.
func TestTransformSync(t *testing.T) {
	var crm, billing *pgtest.Server
	var wg sync.WaitGroup
	var crmErr, billErr any
	wg.Add(2)
	go func() { defer wg.Done(); defer func() { crmErr = recover() }(); crm = pgtest.Start(t) }()
	go func() { defer wg.Done(); defer func() { billErr = recover() }(); billing = pgtest.Start(t) }()
	wg.Wait()
	if crmErr != nil || billErr != nil || crm == nil || billing == nil {
		t.Fatalf("start PostgreSQL: %v %v", crmErr, billErr)
	}
	crm.CreateDB(t, "crm")
	billing.CreateDB(t, "billing")
	crm.Exec(t, "crm", `CREATE TABLE people (id int PRIMARY KEY, first text, last text, active char(1),
		joined_on text, seen_ms bigint, balance text, status text)`)
	billing.Exec(t, "billing", `CREATE TABLE members (ref int PRIMARY KEY, full_name text, active boolean,
		joined timestamptz, last_seen timestamptz, balance numeric(12,2))`)
	// Before the connectors start: the initial snapshot.
	crm.Exec(t, "crm", `INSERT INTO people VALUES
		(1, 'Ann', 'Lee', 'Y', '03/02/2001', 981216306000, '12.50', 'active'),
		(2, 'Tess', 'Test', 'Y', '01/01/2020', 0, '1', 'test'),     -- the filter excludes it
		(3, 'Bad', 'Row', 'X', '01/01/2020', 0, '1', 'active'),     -- not Y or N: dead letter
		(4, 'Cy', 'Off', 'N', '05/06/2010', 1275700000000, '0.10', 'active') -- inactive: not projected`)

	sch, err := crdt.ParseSchema("schema.yaml", []byte(personSchemaYAML))
	if err != nil {
		t.Fatal(err)
	}
	scfg := storage.DefaultConfig(t.TempDir(), "n1")
	scfg.Logger = slog.New(slog.NewTextHandler(io.Discard, nil))
	store, err := storage.Open(scfg)
	if err != nil {
		t.Fatal(err)
	}
	t.Cleanup(func() { store.Close() })
	crmLetters, billingLetters := &memLetters{}, &memLetters{}
	newConnector := func(name string, decl map[string]any, q *memLetters) *postgres.Connector {
		cfg, err := postgres.ParseConfig(name, decl, sch)
		if err != nil {
			t.Fatal(err)
		}
		return postgres.New(cfg, store, staticSchema{sch}, slog.New(slog.NewTextHandler(testWriter{t}, &slog.HandlerOptions{Level: slog.LevelDebug})),
			postgres.WithDeadLetters(q))
	}
	crmC := newConnector("crm", map[string]any{"kind": "postgres", "dsn": crm.DSN("crm"), "tables": map[string]any{
		"people": map[string]any{"entity": "person", "key": []any{"id"},
			"columns": map[string]any{
				"active":    map[string]any{"field": "active", "true_values": []any{"Y"}, "false_values": []any{"N"}},
				"joined_on": map[string]any{"field": "joined", "format": "%d/%m/%Y"},
				"seen_ms":   map[string]any{"field": "seen", "format": "unix_ms"},
				"balance":   map[string]any{"field": "balance", "type": "decimal"},
				"first":     map[string]any{"type": "string"},
				"last":      map[string]any{"type": "string"},
				"status":    map[string]any{"type": "string"},
			},
			"filter":   "row.status != 'test'",
			"computed": map[string]any{"full_name": "row.first + ' ' + row.last"},
		}}}, crmLetters)
	billingC := newConnector("billing", map[string]any{"kind": "postgres", "dsn": billing.DSN("billing"), "tables": map[string]any{
		"members": map[string]any{"entity": "person", "key": []any{"ref"},
			"columns":        map[string]any{"full_name": "full_name", "active": "active", "joined": "joined", "last_seen": "seen", "balance": "balance"},
			"project_filter": "record.active",
		}}}, billingLetters)
	ctx, cancel := context.WithCancel(context.Background())
	var run sync.WaitGroup
	for _, c := range []*postgres.Connector{crmC, billingC} {
		run.Add(1)
		go func(c *postgres.Connector) {
			defer run.Done()
			if err := c.Run(ctx); err != nil && ctx.Err() == nil {
				t.Errorf("connector %s: %v", c.Origin(), err)
			}
		}(c)
	}
	t.Cleanup(func() { cancel(); run.Wait() })

	member := func(ref int) string {
		return row(t, billing, "billing", fmt.Sprintf(`SELECT full_name, active,
			to_char(joined AT TIME ZONE 'UTC', 'YYYY-MM-DD HH24:MI:SS'),
			to_char(last_seen AT TIME ZONE 'UTC', 'YYYY-MM-DD HH24:MI:SS.MS'), balance::text
			FROM members WHERE ref = %d`, ref))
	}
	person := func(id int) string {
		return row(t, crm, "crm", fmt.Sprintf(`SELECT first, last, active, joined_on, seen_ms, balance FROM people WHERE id = %d`, id))
	}
	refs := func() string {
		return strings.Join(query(t, billing, "billing", `SELECT ref FROM members ORDER BY ref`), ",")
	}
	captured := func(id string) bool {
		rec, err := store.Get("person", id)
		if errors.Is(err, storage.ErrNotFound) {
			return false
		}
		if err != nil {
			t.Fatal(err)
		}
		return len(rec.Registers) > 0
	}

	// Snapshot: row 1 arrives converted (Y -> true, dd/mm/yyyy and epoch
	// milliseconds -> timestamps, text -> decimal) with its computed name.
	eventually(t, "snapshot row 1 reaches billing", func() (bool, string) {
		r := member(1)
		return r == "Ann Lee true 2001-02-03 00:00:00 2001-02-03 16:05:06.000 12.50", r
	})
	// Row 3 ('X' is neither Y nor N) is in the dead-letter queue, naming the
	// table, the column and the value.
	eventually(t, "row 3 in the dead-letter queue", func() (bool, string) {
		l, ok := crmLetters.letterFor("3")
		return ok && l.Direction == connectors.DirectionCapture && strings.Contains(l.Error, `table people column "active"`) &&
			strings.Contains(l.Error, `"X"`), fmt.Sprint(crmLetters.List(""))
	})
	// Row 2 is excluded by crm's filter: never captured. Row 4 is captured
	// (inactive) but billing's project_filter keeps it out of billing.
	if captured("2") {
		t.Errorf("row 2 (status test) was captured despite the filter")
	}
	eventually(t, "row 4 captured", func() (bool, string) { return captured("4"), "" })
	if r := refs(); r != "1" {
		t.Errorf("billing holds members %s, want only 1 (2 filtered, 3 refused, 4 inactive)", r)
	}

	// Stream: a refused row, a filtered row, then a good one.
	crm.Exec(t, "crm", `INSERT INTO people VALUES (6, 'Q', 'Q', 'Q', '01/01/2020', 0, '1', 'active')`)
	crm.Exec(t, "crm", `INSERT INTO people VALUES (7, 'T', 'T', 'Y', '01/01/2020', 0, '1', 'test')`)
	crm.Exec(t, "crm", `INSERT INTO people VALUES (5, 'Dee', 'Fox', 'Y', '10/10/2010', 1286668800000, '5.00', 'active')`)
	eventually(t, "streamed row 5 reaches billing", func() (bool, string) {
		r := member(5)
		return r == "Dee Fox true 2010-10-10 00:00:00 2010-10-10 00:00:00.000 5.00", r
	})
	if l, ok := crmLetters.letterFor("6"); !ok || !strings.Contains(l.Error, `"Q" is neither a true value ("Y") nor a false value ("N")`) {
		t.Errorf("streamed row 6 with active 'Q': letter %+v, %v", l, ok)
	}
	if captured("7") {
		t.Errorf("streamed row 7 (status test) was captured despite the filter")
	}

	// The computed field follows its columns.
	crm.Exec(t, "crm", `UPDATE people SET last = 'Lee-Smith' WHERE id = 1`)
	eventually(t, "recomputed full_name reaches billing", func() (bool, string) {
		r := member(1)
		return strings.HasPrefix(r, "Ann Lee-Smith true "), r
	})

	// Billing's native types convert back into crm's formats: false -> 'N',
	// a timestamp -> dd/mm/yyyy text and epoch milliseconds, numeric -> text.
	billing.Exec(t, "billing", `UPDATE members SET active = false, joined = '2002-03-04 00:00:00+00',
		last_seen = '2003-01-01 00:00:00.123+00', balance = 99.99 WHERE ref = 1`)
	eventually(t, "billing's edit reaches crm in crm's formats", func() (bool, string) {
		r := person(1)
		return r == "Ann Lee-Smith N 04/03/2002 1041379200123 99.99", r
	})

	// Record 1 is inactive now: billing's project_filter stops writing it.
	crm.Exec(t, "crm", `UPDATE people SET last = 'Later' WHERE id = 1`)
	crm.Exec(t, "crm", `INSERT INTO people VALUES (8, 'Eve', 'Oak', 'Y', '01/01/2020', 0, '2', 'active')`)
	eventually(t, "row 8 reaches billing", func() (bool, string) { return strings.HasPrefix(member(8), "Eve Oak true"), member(8) })
	if r := member(1); !strings.HasPrefix(r, "Ann Lee-Smith false ") {
		t.Errorf("billing's member 1 = %q: an inactive record was projected despite record.active", r)
	}

	// Deletes are captured whatever the filter says.
	crm.Exec(t, "crm", `DELETE FROM people WHERE id = 5`)
	eventually(t, "delete reaches billing", func() (bool, string) { return member(5) == "<none>", member(5) })

	if l := billingLetters.List(""); len(l) != 0 {
		t.Errorf("billing dead letters: %+v", l)
	}
	if l := crmLetters.List(""); len(l) != 2 {
		t.Errorf("crm dead letters: %+v, want rows 3 and 6 only", l)
	}
}
