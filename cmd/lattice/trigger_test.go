package main

import (
	"bytes"
	"context"
	"fmt"
	"os"
	"path/filepath"
	"strings"
	"testing"

	"github.com/lattice-sync/lattice/connectors/postgres/pgtest"
)

// TestTriggerInstallRemove: `connectors trigger install` prints the SQL
// before running it, --dry-run only prints it, and running install (or
// remove) twice leaves the same objects; remove takes everything away,
// schema lattice included; bad input is refused naming the problem.
func TestTriggerInstallRemove(t *testing.T) {
	t.Parallel()
	pg := pgtest.Start(t, pgtest.WithConf("wal_level", "replica"))
	pg.CreateDB(t, "crm")
	pg.Exec(t, "crm", `CREATE TABLE customers (customer_id int PRIMARY KEY, full_name text)`)
	dir := t.TempDir()
	file := filepath.Join(dir, "lattice.yaml")
	write := func(mode string) {
		cfg := fmt.Sprintf(`entities:
  contact:
    fields: {name: string}
connectors:
  crm:
    kind: postgres
    dsn: %q
    mode: %s
    tables:
      customers: {entity: contact, key: [customer_id], columns: {full_name: name}}
`, pg.DSN("crm"), mode)
		if err := os.WriteFile(file, []byte(cfg), 0o600); err != nil {
			t.Fatal(err)
		}
	}
	write("trigger")
	lattice := func(args ...string) (string, error) {
		var out, errOut bytes.Buffer
		err := run(context.Background(), append([]string{"connectors", "trigger"}, args...), &out, &errOut)
		return out.String() + errOut.String(), err
	}
	objects := func() string {
		var n []string
		for _, q := range []string{
			`SELECT count(*) FROM pg_namespace WHERE nspname = 'lattice'`,
			`SELECT count(*) FROM pg_class WHERE oid = to_regclass('lattice.changes_crm')`,
			`SELECT count(*) FROM pg_proc WHERE oid = to_regprocedure('lattice.capture_crm()')`,
			`SELECT count(*) FROM pg_trigger WHERE tgname = 'lattice_capture_crm'`,
		} {
			n = append(n, query(t, pg, "crm", q)[0])
		}
		return strings.Join(n, " ")
	}

	out, err := lattice("install", "crm", "--config", file, "--dry-run")
	if err != nil {
		t.Fatalf("dry run: %v\n%s", err, out)
	}
	for _, want := range []string{"CREATE TABLE IF NOT EXISTS \"lattice\".\"changes_crm\"", "CREATE OR REPLACE FUNCTION", "CREATE TRIGGER \"lattice_capture_crm\" AFTER INSERT OR UPDATE OR DELETE ON \"customers\"", "dry run: nothing was run"} {
		if !strings.Contains(out, want) {
			t.Errorf("dry run output lacks %q:\n%s", want, out)
		}
	}
	if got := objects(); got != "0 0 0 0" {
		t.Fatalf("dry run changed the database: schema, table, function, trigger = %s", got)
	}
	for i := 0; i < 2; i++ {
		out, err := lattice("install", "crm", "--config", file)
		if err != nil {
			t.Fatalf("install %d: %v\n%s", i+1, err, out)
		}
		if !strings.Contains(out, "CREATE TRIGGER") || strings.Index(out, "CREATE TRIGGER") > strings.Index(out, "-- done: installed") {
			t.Errorf("install %d does not print the SQL before running it:\n%s", i+1, out)
		}
		if got := objects(); got != "1 1 1 1" {
			t.Fatalf("after install %d: schema, table, function, trigger = %s", i+1, got)
		}
	}
	// The trigger records a change.
	pg.Exec(t, "crm", `INSERT INTO customers VALUES (1, 'Ann')`)
	if got := query(t, pg, "crm", `SELECT op::text || ' ' || (new->>'full_name') FROM lattice.changes_crm`); len(got) != 1 || got[0] != "I Ann" {
		t.Errorf("change table after an insert: %q", got)
	}
	for i := 0; i < 2; i++ {
		out, err := lattice("remove", "crm", "--config", file)
		if err != nil {
			t.Fatalf("remove %d: %v\n%s", i+1, err, out)
		}
		if !strings.Contains(out, "DROP TABLE IF EXISTS \"lattice\".\"changes_crm\"") {
			t.Errorf("remove %d does not print its SQL:\n%s", i+1, out)
		}
		if got := objects(); got != "0 0 0 0" {
			t.Fatalf("after remove %d: schema, table, function, trigger = %s", i+1, got)
		}
	}
	// Bad input: nothing runs.
	for _, tc := range []struct {
		args []string
		want string
	}{
		{[]string{"install", "crm"}, "--config FILE is required"},
		{[]string{"install", "erp", "--config", file}, "declares no connector erp (it declares crm)"},
	} {
		if out, err := lattice(tc.args...); err == nil || !strings.Contains(err.Error(), tc.want) {
			t.Errorf("%v: error %v, want %q\n%s", tc.args, err, tc.want, out)
		}
	}
	write("logical")
	if out, err := lattice("install", "crm", "--config", file); err == nil || !strings.Contains(err.Error(), "is in mode logical") {
		t.Errorf("install for a logical connector: error %v\n%s", err, out)
	}
	if got := objects(); got != "0 0 0 0" {
		t.Errorf("refused commands changed the database: %s", got)
	}
}
