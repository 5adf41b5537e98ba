package postgres_test

import (
	"context"
	"fmt"
	"io"
	"log/slog"
	"strings"
	"sync"
	"testing"
	"time"

	"github.com/jackc/pgx/v5"

	"github.com/lattice-sync/lattice/connectors/postgres"
	"github.com/lattice-sync/lattice/connectors/postgres/pgtest"
	"github.com/lattice-sync/lattice/crdt"
	"github.com/lattice-sync/lattice/storage"
)

const schemaYAML = `entities:
  contact:
    fields:
      name: string
      email: string
      phone: string
      company: string
`

type staticSchema struct{ s *crdt.Schema }

func (s staticSchema) Schema() *crdt.Schema { return s.s }

type env struct {
	crm, billing *pgtest.Server
	store        *storage.Store
	schema       staticSchema
}

func setup(t *testing.T) *env {
	t.Helper()
	return setupWith(t)
}

// setupWith is setup with options for the crm instance.
func setupWith(t *testing.T, crmOpts ...pgtest.Option) *env {
	t.Helper()
	var e env
	var wg sync.WaitGroup
	wg.Add(2)
	// Two private instances, started in parallel.
	var crmErr, billErr any
	go func() {
		defer wg.Done()
		defer func() { crmErr = recover() }()
		e.crm = pgtest.Start(t, crmOpts...)
	}()
	go func() {
		defer wg.Done()
		defer func() { billErr = recover() }()
		e.billing = pgtest.Start(t)
	}()
	wg.Wait()
	if crmErr != nil || billErr != nil || e.crm == nil || e.billing == nil {
		t.Fatalf("start PostgreSQL: %v %v", crmErr, billErr)
	}
	e.crm.CreateDB(t, "crm")
	e.billing.CreateDB(t, "billing")
	e.crm.Exec(t, "crm", `CREATE TABLE customers (customer_id int PRIMARY KEY, full_name text, email_address text, phone text)`)
	e.billing.Exec(t, "billing", `CREATE TABLE clients (client_ref int PRIMARY KEY, name text, email text, tel text)`)
	s, err := crdt.ParseSchema("schema.yaml", []byte(schemaYAML))
	if err != nil {
		t.Fatal(err)
	}
	e.schema = staticSchema{s}
	cfg := storage.DefaultConfig(t.TempDir(), "n1")
	cfg.Logger = slog.New(slog.NewTextHandler(io.Discard, nil))
	e.store, err = storage.Open(cfg)
	if err != nil {
		t.Fatal(err)
	}
	t.Cleanup(func() { e.store.Close() })
	return &e
}

func (e *env) connector(t *testing.T, name string, decl map[string]any) *postgres.Connector {
	t.Helper()
	cfg, err := postgres.ParseConfig(name, decl, e.schema.s)
	if err != nil {
		t.Fatal(err)
	}
	return postgres.New(cfg, e.store, e.schema, slog.New(slog.NewTextHandler(testWriter{t}, &slog.HandlerOptions{Level: slog.LevelDebug})))
}

type testWriter struct{ t *testing.T }

func (w testWriter) Write(p []byte) (int, error) { w.t.Log(string(p)); return len(p), nil }

func (e *env) start(t *testing.T) {
	t.Helper()
	crm := e.connector(t, "crm", map[string]any{"kind": "postgres", "dsn": e.crm.DSN("crm"), "tables": map[string]any{
		"customers": map[string]any{"entity": "contact", "key": []any{"customer_id"},
			"columns": map[string]any{"full_name": "name", "email_address": "email", "phone": "phone"}}}})
	billing := e.connector(t, "billing", map[string]any{"kind": "postgres", "dsn": e.billing.DSN("billing"), "tables": map[string]any{
		"clients": map[string]any{"entity": "contact", "key": []any{"client_ref"},
			"columns": map[string]any{"name": "name", "email": "email", "tel": "phone"}}}})
	ctx, cancel := context.WithCancel(context.Background())
	var wg sync.WaitGroup
	for _, c := range []*postgres.Connector{crm, billing} {
		wg.Add(1)
		go func(c *postgres.Connector) {
			defer wg.Done()
			if err := c.Run(ctx); err != nil && ctx.Err() == nil {
				t.Errorf("connector %s: %v", c.Origin(), err)
			}
		}(c)
	}
	t.Cleanup(func() { cancel(); wg.Wait() })
}

func query(t testing.TB, s *pgtest.Server, db, q string, args ...any) []string {
	t.Helper()
	ctx, cancel := context.WithTimeout(context.Background(), 5*time.Second)
	defer cancel()
	conn, err := pgx.Connect(ctx, s.DSN(db))
	if err != nil {
		t.Fatal(err)
	}
	defer conn.Close(context.Background())
	rows, err := conn.Query(ctx, q, args...)
	if err != nil {
		t.Fatal(err)
	}
	defer rows.Close()
	var out []string
	for rows.Next() {
		vals, err := rows.Values()
		if err != nil {
			t.Fatal(err)
		}
		parts := make([]string, len(vals))
		for i, v := range vals {
			parts[i] = fmt.Sprint(v)
		}
		out = append(out, strings.Join(parts, " "))
	}
	return out
}

func eventually(t *testing.T, what string, cond func() (bool, string)) {
	t.Helper()
	deadline := time.Now().Add(20 * time.Second)
	var why string
	for time.Now().Before(deadline) {
		var ok bool
		if ok, why = cond(); ok {
			return
		}
		time.Sleep(50 * time.Millisecond)
	}
	t.Fatalf("%s: not within 20 s: %s", what, why)
}

// quiet fails when edits keep appearing for a while with nothing changing
// in any database (an echo loop).
//
// An echo never goes 1.5 s without a new edit; the last projection and its
// read-back may still be in flight at first on a loaded machine.
func (e *env) quiet(t *testing.T, what string) {
	t.Helper()
	eventually(t, what+": no new edits for 1.5 s (no echo)", func() (bool, string) {
		before := e.store.Applied()
		time.Sleep(1500 * time.Millisecond)
		after := e.store.Applied()
		return after.Equal(before), fmt.Sprintf("edits keep appearing with no change in any database: %s -> %s", before, after)
	})
}

func row(t *testing.T, s *pgtest.Server, db, q string) string {
	r := query(t, s, db, q)
	if len(r) == 0 {
		return "<none>"
	}
	return r[0]
}

func TestBidirectionalSync(t *testing.T) {
	e := setup(t)
	// A row that exists before the connector starts: the initial snapshot.
	e.crm.Exec(t, "crm", `INSERT INTO customers VALUES (1, 'Ann', 'ann@example.com', '111')`)
	e.start(t)

	billingRow := func(id int) string {
		return row(t, e.billing, "billing", fmt.Sprintf("SELECT name, email, tel FROM clients WHERE client_ref = %d", id))
	}
	crmRow := func(id int) string {
		return row(t, e.crm, "crm", fmt.Sprintf("SELECT full_name, email_address, phone FROM customers WHERE customer_id = %d", id))
	}
	eventually(t, "snapshot row reaches billing", func() (bool, string) {
		r := billingRow(1)
		return r == "Ann ann@example.com 111", r
	})

	// An edit in crm appears in billing; one in billing appears in crm.
	e.crm.Exec(t, "crm", `UPDATE customers SET email_address = 'ann@new.example' WHERE customer_id = 1`)
	eventually(t, "crm update reaches billing", func() (bool, string) {
		r := billingRow(1)
		return r == "Ann ann@new.example 111", r
	})
	e.billing.Exec(t, "billing", `INSERT INTO clients VALUES (2, 'Bob', 'bob@example.com', '222')`)
	eventually(t, "billing insert reaches crm", func() (bool, string) {
		r := crmRow(2)
		return r == "Bob bob@example.com 222", r
	})

	// A billing edit made after seeing crm's value supersedes it (causality
	// from stream order: billing's row showed crm's projection).
	e.billing.Exec(t, "billing", `UPDATE clients SET email = 'ann@billing.example' WHERE client_ref = 1`)
	eventually(t, "billing's later edit wins everywhere", func() (bool, string) {
		a, b := crmRow(1), billingRow(1)
		return a == "Ann ann@billing.example 111" && b == a, a + " | " + b
	})
	rec, err := e.store.Get("contact", "1")
	if err != nil {
		t.Fatal(err)
	}
	ent, _ := e.schema.s.Entity("contact")
	fields, _ := ent.View(rec)
	for _, f := range fields {
		if f.Name == "email" && f.Conflicted {
			t.Errorf("an edit made after seeing the synced value is shown as a conflict: %v", f.Live)
		}
	}

	// Concurrent edits of different fields both survive.
	e.crm.Exec(t, "crm", `UPDATE customers SET phone = '999' WHERE customer_id = 2`)
	e.billing.Exec(t, "billing", `UPDATE clients SET name = 'Robert' WHERE client_ref = 2`)
	eventually(t, "both concurrent edits survive on both sides", func() (bool, string) {
		a, b := crmRow(2), billingRow(2)
		return a == "Robert bob@example.com 999" && b == a, a + " | " + b
	})

	// No echo loop: once quiet, no new edits appear.
	e.quiet(t, "after the concurrent edits")
}

func TestWalLevelNotLogical(t *testing.T) {
	s := pgtest.Start(t, pgtest.WithConf("wal_level", "replica"))
	s.CreateDB(t, "crm")
	s.Exec(t, "crm", `CREATE TABLE customers (customer_id int PRIMARY KEY, full_name text)`)
	sch, _ := crdt.ParseSchema("s.yaml", []byte(schemaYAML))
	cfg, err := postgres.ParseConfig("crm", map[string]any{"kind": "postgres", "dsn": s.DSN("crm"), "tables": map[string]any{
		"customers": map[string]any{"entity": "contact", "key": []any{"customer_id"}, "columns": map[string]any{"full_name": "name"}}}}, sch)
	if err != nil {
		t.Fatal(err)
	}
	scfg := storage.DefaultConfig(t.TempDir(), "n1")
	store, err := storage.Open(scfg)
	if err != nil {
		t.Fatal(err)
	}
	defer store.Close()
	c := postgres.New(cfg, store, staticSchema{sch}, slog.New(slog.NewTextHandler(io.Discard, nil)))
	ctx, cancel := context.WithTimeout(context.Background(), 10*time.Second)
	defer cancel()
	err = c.Run(ctx)
	if err == nil || !contains(err.Error(), "wal_level") || !contains(err.Error(), "logical") {
		t.Fatalf("Run on wal_level=replica: %v, want an error saying to set wal_level = logical", err)
	}
}

func TestConfigErrors(t *testing.T) {
	sch, _ := crdt.ParseSchema("s.yaml", []byte(schemaYAML))
	cases := []struct {
		name string
		decl map[string]any
		want string
	}{
		{"no dsn", map[string]any{"kind": "postgres", "tables": map[string]any{"t": map[string]any{"entity": "contact", "key": []any{"id"}, "columns": map[string]any{"a": "name"}}}}, "no connection string"},
		{"empty env", map[string]any{"kind": "postgres", "dsn_env": "LATTICE_TEST_UNSET_DSN", "tables": map[string]any{"t": map[string]any{"entity": "contact", "key": []any{"id"}, "columns": map[string]any{"a": "name"}}}}, "LATTICE_TEST_UNSET_DSN"},
		{"unknown entity", map[string]any{"kind": "postgres", "dsn": "x", "tables": map[string]any{"t": map[string]any{"entity": "nope", "key": []any{"id"}, "columns": map[string]any{"a": "name"}}}}, `unknown entity "nope"`},
		{"unknown field", map[string]any{"kind": "postgres", "dsn": "x", "tables": map[string]any{"t": map[string]any{"entity": "contact", "key": []any{"id"}, "columns": map[string]any{"a": "nme"}}}}, `no field "nme"`},
		{"no key", map[string]any{"kind": "postgres", "dsn": "x", "tables": map[string]any{"t": map[string]any{"entity": "contact", "columns": map[string]any{"a": "name"}}}}, "key columns are required"},
		{"unknown option", map[string]any{"kind": "postgres", "dsn": "x", "tabels": map[string]any{}}, "tabels"},
	}
	for _, tc := range cases {
		t.Run(tc.name, func(t *testing.T) {
			_, err := postgres.ParseConfig("crm", tc.decl, sch)
			if err == nil || !contains(err.Error(), tc.want) {
				t.Fatalf("got %v, want an error containing %q", err, tc.want)
			}
		})
	}
}

func contains(s, sub string) bool {
	return len(sub) == 0 || (len(s) >= len(sub) && (s == sub || indexOf(s, sub) >= 0))
}

func indexOf(s, sub string) int {
	for i := 0; i+len(sub) <= len(s); i++ {
		if s[i:i+len(sub)] == sub {
			return i
		}
	}
	return -1
}
