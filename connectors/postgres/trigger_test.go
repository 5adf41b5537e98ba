package postgres_test

import (
	"context"
	"errors"
	"fmt"
	"log/slog"
	"strings"
	"sync"
	"testing"
	"time"

	"github.com/jackc/pgx/v5"

	"github.com/lattice-sync/lattice/connectors/postgres"
	"github.com/lattice-sync/lattice/connectors/postgres/pgtest"
	"github.com/lattice-sync/lattice/crdt"
)

// Trigger mode tests. crm runs on wal_level=replica (no logical decoding
// at all), so whatever crm captures came through its change table.

// triggerDecl is crm's declaration in trigger mode.
func triggerDecl(e *env, top map[string]any) map[string]any {
	d := map[string]any{"kind": "postgres", "dsn": e.crm.DSN("crm"), "mode": "trigger", "acks": 1,
		"tables": map[string]any{"customers": map[string]any{"entity": "contact", "key": []any{"customer_id"},
			"columns": map[string]any{"full_name": "name", "email_address": "email", "phone": "phone"}}}}
	for k, v := range top {
		d[k] = v
	}
	return d
}

func billingDecl(e *env) map[string]any {
	return map[string]any{"kind": "postgres", "dsn": e.billing.DSN("billing"), "acks": 1, "tables": map[string]any{
		"clients": map[string]any{"entity": "contact", "key": []any{"client_ref"}, "columns": map[string]any{"name": "name", "email": "email", "tel": "phone"}}}}
}

// changeRows counts crm's change table rows of an op ("" for all).
func changeRows(t *testing.T, e *env, op string) string {
	t.Helper()
	q := `SELECT count(*) FROM lattice.changes_crm`
	if op != "" {
		q += fmt.Sprintf(" WHERE op = '%s'", op)
	}
	return row(t, e.crm, "crm", q)
}

// TestTriggerSync: trigger capture on a server without logical decoding,
// both ways with a logical-mode billing: the initial snapshot, native
// inserts, updates (only the columns they changed) and deletes reach
// billing; billing's changes are projected into crm and never come back
// through the change table (echo); a native change made after a
// projection supersedes it, one made while the projection waited for its
// row is a conflict; captured rows leave the change table.
func TestTriggerSync(t *testing.T) {
	t.Parallel()
	e := setupWith(t, pgtest.WithConf("wal_level", "replica"))
	e.crm.Exec(t, "crm", `INSERT INTO customers VALUES (1, 'Ann', 'ann@example.com', '111'), (3, 'Cy', NULL, NULL)`)
	c, _ := e.runConnector(t, "crm", triggerDecl(e, nil), postgres.WithReport())
	_, _ = e.runConnector(t, "billing", billingDecl(e))
	crmRow := func(id int) string {
		return row(t, e.crm, "crm", fmt.Sprintf("SELECT full_name, email_address, phone FROM customers WHERE customer_id = %d", id))
	}
	billRow := func(id int) string {
		return row(t, e.billing, "billing", fmt.Sprintf("SELECT name, email, tel FROM clients WHERE client_ref = %d", id))
	}
	eventually(t, "crm's snapshot reaches billing", func() (bool, string) { return billRow(1) == "Ann ann@example.com 111", billRow(1) })

	// Native changes in crm.
	e.crm.Exec(t, "crm", `INSERT INTO customers VALUES (2, 'Bob', 'bob@example.com', '222')`)
	e.crm.Exec(t, "crm", `UPDATE customers SET email_address = 'ann@crm.example' WHERE customer_id = 1`)
	e.crm.Exec(t, "crm", `DELETE FROM customers WHERE customer_id = 3`)
	eventually(t, "crm's insert, update and delete reach billing", func() (bool, string) {
		got := billRow(1) + " | " + billRow(2) + " | " + billRow(3)
		return got == "Ann ann@crm.example 111 | Bob bob@example.com 222 | <none>", got
	})
	if n := e.versions(t, "1", "name"); n != 1 {
		t.Errorf("record 1 has %d versions of name, want 1 (the update of the email wrote the name again)", n)
	}

	// Billing's changes projected into crm: no echo.
	e.billing.Exec(t, "billing", `INSERT INTO clients VALUES (4, 'Dee', 'dee@example.com', '444')`)
	e.billing.Exec(t, "billing", `UPDATE clients SET tel = '999' WHERE client_ref = 1`)
	eventually(t, "billing's changes projected into crm", func() (bool, string) {
		got := crmRow(1) + " | " + crmRow(4)
		return got == "Ann ann@crm.example 999 | Dee dee@example.com 444", got
	})
	e.quiet(t, "after projecting into crm")
	e.noEcho(t, "111", [2]string{"4", "name"}, [2]string{"1", "phone"})
	if n := changeRows(t, e, "I"); n != "0" {
		t.Errorf("%s insert rows in the change table after everything was captured (a projection recorded as a native change, or captured rows not deleted)", n)
	}

	// Later: an API edit is projected, then crm changes the name: it saw
	// the projection, so it supersedes it.
	ent, _ := e.schema.s.Entity("contact")
	ctx := context.Background()
	if _, err := e.store.Write(ctx, "contact", "2", "api", putFields(ent, map[string]string{"name": "Bob (api)"})); err != nil {
		t.Fatal(err)
	}
	eventually(t, "API edit projected", func() (bool, string) { return crmRow(2) == "Bob (api) bob@example.com 222", crmRow(2) })
	e.crm.Exec(t, "crm", `UPDATE customers SET full_name = 'Bob (crm, after)' WHERE customer_id = 2`)
	eventually(t, "later native change captured", func() (bool, string) {
		return e.field(t, "2", "name") == "Bob (crm, after)", e.field(t, "2", "name")
	})
	if f := e.view(t, "2", "name"); f.Conflicted || len(f.Live) != 1 {
		t.Errorf("a native change made after the projection it saw is a conflict: %d live versions %v", len(f.Live), f.Live)
	}

	// Concurrent: crm's transaction holds the row while an API edit is
	// projected; the projection waits for the row and writes over it.
	conn, err := pgx.Connect(ctx, e.crm.DSN("crm"))
	if err != nil {
		t.Fatal(err)
	}
	defer conn.Close(ctx)
	tx, err := conn.Begin(ctx)
	if err != nil {
		t.Fatal(err)
	}
	if _, err := tx.Exec(ctx, `UPDATE customers SET full_name = 'Bob (crm, concurrent)' WHERE customer_id = 2`); err != nil {
		t.Fatal(err)
	}
	if _, err := e.store.Write(ctx, "contact", "2", "api", putFields(ent, map[string]string{"name": "Bob (api 2)"})); err != nil {
		t.Fatal(err)
	}
	time.Sleep(300 * time.Millisecond) // the projection waits for the row's lock
	if err := tx.Commit(ctx); err != nil {
		t.Fatal(err)
	}
	eventually(t, "concurrent native change captured as a conflict", func() (bool, string) {
		f := e.view(t, "2", "name")
		var vals []string
		for _, v := range f.Live {
			vals = append(vals, v.Value.Str())
		}
		return f.Conflicted && len(f.Live) == 2, fmt.Sprintf("conflicted %v, live %q", f.Conflicted, vals)
	})
	// The policy (lww) picks the winner; both databases end up holding it.
	eventually(t, "crm and billing hold the winner", func() (bool, string) {
		w := e.field(t, "2", "name")
		got := w + " | " + crmRow(2) + " | " + billRow(2)
		return (w == "Bob (api 2)" || w == "Bob (crm, concurrent)") && got == fmt.Sprintf("%[1]s | %[1]s bob@example.com 222 | %[1]s bob@example.com 222", w), got
	})
	e.quiet(t, "at the end")
	eventually(t, "captured rows deleted from the change table", func() (bool, string) {
		n := changeRows(t, e, "")
		return n == "0", n + " rows"
	})
	if r := c.Report(); r.Mode != "trigger" || r.State != "streaming" || !strings.Contains(r.ReceivedPosition, "change") {
		t.Errorf("report: mode %q state %q received %q", r.Mode, r.State, r.ReceivedPosition)
	}
}

// TestTriggerCommitOrder: change ids are drawn in statement order, not
// commit order. A transaction that draws a lower id and commits after
// later ones were captured is still captured; two transactions changing
// one row are captured in their commit order.
func TestTriggerCommitOrder(t *testing.T) {
	t.Parallel()
	e := setupWith(t, pgtest.WithConf("wal_level", "replica"))
	e.crm.Exec(t, "crm", `INSERT INTO customers (customer_id, full_name) SELECT i, 'n'||i FROM generate_series(1, 3) i`)
	_, _ = e.runConnector(t, "crm", triggerDecl(e, map[string]any{"project": false}))
	eventually(t, "snapshot", func() (bool, string) { return e.field(t, "3", "name") == "n3", e.field(t, "3", "name") })
	ctx := context.Background()
	connect := func() *pgx.Conn {
		conn, err := pgx.Connect(ctx, e.crm.DSN("crm"))
		if err != nil {
			t.Fatal(err)
		}
		t.Cleanup(func() { conn.Close(ctx) })
		return conn
	}
	long := connect()
	tx, err := long.Begin(ctx)
	if err != nil {
		t.Fatal(err)
	}
	if _, err := tx.Exec(ctx, `UPDATE customers SET full_name = 'long' WHERE customer_id = 1`); err != nil {
		t.Fatal(err)
	}
	var longID int64 // the long transaction sees its own change row
	if err := tx.QueryRow(ctx, `SELECT max(id) FROM lattice.changes_crm WHERE new->>'full_name' = 'long'`).Scan(&longID); err != nil {
		t.Fatal(err)
	}
	for i := 0; i < 5; i++ {
		e.crm.Exec(t, "crm", fmt.Sprintf(`UPDATE customers SET full_name = 'short %d' WHERE customer_id = 2`, i))
	}
	eventually(t, "later transactions captured", func() (bool, string) { return e.field(t, "2", "name") == "short 4", e.field(t, "2", "name") })
	shortMax := int64(atoi(t, row(t, e.crm, "crm", `SELECT last_value FROM lattice.changes_crm_id_seq`)))
	if longID >= shortMax {
		t.Fatalf("the scenario does not interleave: the long transaction's change id %d is not below the later ones' (up to %d)", longID, shortMax)
	}
	if got := e.field(t, "1", "name"); got != "n1" {
		t.Fatalf("uncommitted change captured: %q", got)
	}
	if err := tx.Commit(ctx); err != nil {
		t.Fatal(err)
	}
	eventually(t, "the lower-id transaction that committed last is captured", func() (bool, string) {
		return e.field(t, "1", "name") == "long", e.field(t, "1", "name")
	})

	// One row, two transactions: the second waits for the first's lock,
	// draws its id after the first committed, and is captured after it.
	first, second := connect(), connect()
	tx1, err := first.Begin(ctx)
	if err != nil {
		t.Fatal(err)
	}
	if _, err := tx1.Exec(ctx, `UPDATE customers SET full_name = 'first' WHERE customer_id = 3`); err != nil {
		t.Fatal(err)
	}
	done := make(chan error, 1)
	go func() {
		_, err := second.Exec(ctx, `UPDATE customers SET full_name = 'second' WHERE customer_id = 3`)
		done <- err
	}()
	time.Sleep(200 * time.Millisecond)
	if err := tx1.Commit(ctx); err != nil {
		t.Fatal(err)
	}
	if err := <-done; err != nil {
		t.Fatal(err)
	}
	eventually(t, "the row's last committed change wins", func() (bool, string) {
		return e.field(t, "3", "name") == "second", e.field(t, "3", "name")
	})
	time.Sleep(300 * time.Millisecond)
	if got := e.field(t, "3", "name"); got != "second" {
		t.Errorf("record 3 = %q after both commits, want second", got)
	}
	if f := e.view(t, "3", "name"); f.Conflicted {
		t.Errorf("two serialized changes of one row are a conflict: %v", f.Live)
	}

	// A change row whose notification was lost (written here without
	// pg_notify) is read by the periodic drain.
	e.crm.Exec(t, "crm", `INSERT INTO lattice.changes_crm (tbl, op, new) VALUES ('public.customers', 'I', '{"customer_id": 9, "full_name": "no notification"}')`)
	eventually(t, "a change without notification drained", func() (bool, string) {
		return e.field(t, "9", "name") == "no notification", e.field(t, "9", "name")
	})
}

// frozenAcks makes every checkpoint wait for acknowledgements that never
// come while frozen (checkpoints are postponed, not refused).
type frozenAcks struct {
	mu     sync.Mutex
	frozen bool
}

func (f *frozenAcks) wait(ctx context.Context, _ crdt.Dot, _ int) error {
	f.mu.Lock()
	defer f.mu.Unlock()
	if f.frozen {
		return errors.New("frozen")
	}
	return nil
}

// TestTriggerResume: a restarted connector resumes from its checkpoint:
// changes made while it was down are captured once, nothing a checkpoint
// covers is captured again, captured rows are deleted only once a
// checkpoint covers them, and rows captured after the last checkpoint (the
// owner killed before writing one) are read again and write nothing.
func TestTriggerResume(t *testing.T) {
	t.Parallel()
	e := setupWith(t, pgtest.WithConf("wal_level", "replica"))
	e.crm.Exec(t, "crm", `INSERT INTO customers (customer_id, full_name, phone) SELECT i, 'n'||i, '0' FROM generate_series(1, 50) i`)
	cp := &memCheckpoints{epoch: 1}
	fa := &frozenAcks{}
	decl := triggerDecl(e, map[string]any{"project": false})
	opts := []postgres.Option{postgres.WithCheckpoints(cp, 1), postgres.WithWriteConcern(2, fa.wait)}
	_, stop := e.runConnector(t, "crm", decl, opts...)
	eventually(t, "snapshot", func() (bool, string) { live, _ := e.records(t, "phone", "0"); return live == 50, fmt.Sprint(live) })
	e.crm.Exec(t, "crm", `UPDATE customers SET phone = '1' WHERE customer_id <= 10`)
	eventually(t, "updates captured", func() (bool, string) { _, n := e.records(t, "phone", "1"); return n == 10, fmt.Sprint(n) })
	applied := e.store.Applied().Get("n1")
	waitCheckpoint(t, cp, "checkpoint covers the updates", func(m map[string]any) bool { return coversSeq(m, applied) })
	eventually(t, "checkpointed rows deleted", func() (bool, string) { n := changeRows(t, e, ""); return n == "0", n })
	if err := stop(); err != nil {
		t.Fatal(err)
	}
	// While it is down: updates, inserts, a delete.
	e.crm.Exec(t, "crm", `UPDATE customers SET phone = '2' WHERE customer_id BETWEEN 6 AND 15;
		INSERT INTO customers (customer_id, full_name, phone) SELECT i, 'n'||i, '2' FROM generate_series(51, 60) i;
		DELETE FROM customers WHERE customer_id = 20`)
	_, stop = e.runConnector(t, "crm", decl, opts...)
	eventually(t, "changes made while down captured", func() (bool, string) {
		live, n := e.records(t, "phone", "2")
		return live == 59 && n == 20, fmt.Sprintf("%d live, %d with phone 2", live, n)
	})
	applied = e.store.Applied().Get("n1")
	waitCheckpoint(t, cp, "checkpoint covers them", func(m map[string]any) bool { return coversSeq(m, applied) })
	for id, want := range map[string][2]int{"1": {1, 2}, "6": {1, 3}, "12": {1, 2}, "30": {1, 1}, "55": {1, 1}} {
		if n := e.versions(t, id, "name"); n != want[0] {
			t.Errorf("record %s: %d versions of name, want %d", id, n, want[0])
		}
		if n := e.versions(t, id, "phone"); n != want[1] {
			t.Errorf("record %s: %d versions of phone, want %d", id, n, want[1])
		}
	}
	if got := e.field(t, "20", "name"); got != "<deleted>" {
		t.Errorf("record 20 (deleted while down): %s", got)
	}

	// Checkpoints frozen: changes are captured, their rows stay.
	fa.mu.Lock()
	fa.frozen = true
	fa.mu.Unlock()
	e.crm.Exec(t, "crm", `UPDATE customers SET phone = '3' WHERE customer_id BETWEEN 1 AND 5`)
	eventually(t, "captured while checkpoints are frozen", func() (bool, string) { _, n := e.records(t, "phone", "3"); return n == 5, fmt.Sprint(n) })
	time.Sleep(1500 * time.Millisecond) // more than a checkpoint interval
	if n := changeRows(t, e, "U"); n != "5" {
		t.Errorf("%s update rows in the change table, want 5: rows deleted before a checkpoint covered them", n)
	}
	if err := stop(); err != nil { // the owner dies without a checkpoint
		t.Fatal(err)
	}
	fa.mu.Lock()
	fa.frozen = false
	fa.mu.Unlock()
	_, _ = e.runConnector(t, "crm", decl, opts...)
	eventually(t, "rows captured again and then deleted", func() (bool, string) { n := changeRows(t, e, ""); return n == "0", n })
	for _, id := range []string{"1", "5"} {
		f := e.view(t, id, "phone")
		if f.Conflicted || len(f.Live) != 1 || f.Value.Str() != "3" {
			t.Errorf("record %s phone after a duplicate capture: value %q, conflicted %v, %d live", id, f.Value.Str(), f.Conflicted, len(f.Live))
		}
		// Snapshot '0', '1', '3': the row read again is no fourth edit.
		if n := e.versions(t, id, "phone"); n != 3 {
			t.Errorf("record %s: %d versions of phone, want 3 (captured twice?)", id, n)
		}
	}
	tr, _ := cp.get(t, "crm")["trigger"].(map[string]any)
	if tr == nil || tr["snapshot"] != true || cp.get(t, "crm")["mode"] != "trigger" {
		t.Errorf("checkpoint has no trigger position: %v", cp.get(t, "crm"))
	}
}

// TestTriggerReinstalls: capture objects dropped while the connector was
// down are installed again at start, and capture starts over from a
// snapshot (the changes made without them are in the rows).
func TestTriggerReinstalls(t *testing.T) {
	t.Parallel()
	e := setupWith(t, pgtest.WithConf("wal_level", "replica"))
	e.crm.Exec(t, "crm", `INSERT INTO customers VALUES (1, 'Ann', NULL, NULL)`)
	cp := &memCheckpoints{epoch: 1}
	decl := triggerDecl(e, map[string]any{"project": false})
	_, stop := e.runConnector(t, "crm", decl, postgres.WithCheckpoints(cp, 1))
	eventually(t, "snapshot", func() (bool, string) { return e.field(t, "1", "name") == "Ann", e.field(t, "1", "name") })
	waitCheckpoint(t, cp, "first checkpoint", func(m map[string]any) bool { return m["trigger"] != nil })
	if err := stop(); err != nil {
		t.Fatal(err)
	}
	cfg, err := postgres.ParseConfig("crm", decl, e.schema.s)
	if err != nil {
		t.Fatal(err)
	}
	if err := postgres.ExecSQL(context.Background(), cfg, postgres.TriggerRemoveSQL(cfg)); err != nil {
		t.Fatal(err)
	}
	e.crm.Exec(t, "crm", `UPDATE customers SET full_name = 'Ann (untracked)' WHERE customer_id = 1`)
	rs := &resnapshots{}
	_, _ = e.runConnector(t, "crm", decl, postgres.WithCheckpoints(cp, 1), postgres.WithObserver(rs))
	eventually(t, "change made without the trigger captured by the new snapshot", func() (bool, string) {
		return e.field(t, "1", "name") == "Ann (untracked)", e.field(t, "1", "name")
	})
	reasons := rs.list()
	if len(reasons) != 1 || !strings.Contains(reasons[0], "missing") {
		t.Errorf("re-snapshot reasons: %q", reasons)
	}
}

// TestAutoMode: mode auto picks logical where the database allows it,
// trigger on a server without logical decoding, poll for a role that may
// not create triggers, and fails naming every reason when none fits.
func TestAutoMode(t *testing.T) {
	t.Parallel()
	cols := map[string]any{"full_name": "name", "email_address": "email", "phone": "phone"}
	decl := func(dsn string, updatedAt bool) map[string]any {
		tbl := map[string]any{"entity": "contact", "key": []any{"customer_id"}, "columns": cols}
		if updatedAt {
			tbl["updated_at"] = "updated_at"
		}
		return map[string]any{"kind": "postgres", "dsn": dsn, "mode": "auto", "acks": 1, "project": false,
			"tables": map[string]any{"customers": tbl}}
	}
	addUpdatedAt := func(e *env) {
		e.crm.Exec(t, "crm", `ALTER TABLE customers ADD COLUMN updated_at timestamptz NOT NULL DEFAULT clock_timestamp()`)
	}
	for _, tc := range []struct {
		name, wal, mode string
		role            bool // a role that owns nothing and may not create
	}{
		{"logical", "logical", "logical", false},
		{"trigger", "replica", "trigger", false},
		{"poll", "replica", "poll", true},
	} {
		t.Run(tc.name, func(t *testing.T) {
			t.Parallel()
			e := setupWith(t, pgtest.WithConf("wal_level", tc.wal))
			addUpdatedAt(e)
			e.crm.Exec(t, "crm", `INSERT INTO customers VALUES (1, 'Ann', NULL, NULL)`)
			dsn := e.crm.DSN("crm")
			if tc.role {
				e.crm.Exec(t, "crm", `CREATE ROLE app LOGIN; GRANT SELECT, INSERT, UPDATE, DELETE ON customers TO app`)
				dsn = strings.Replace(dsn, "postgres@", "app@", 1)
				// Without updated_at nothing fits: the error names each reason.
				cfg, err := postgres.ParseConfig("crm", decl(dsn, false), e.schema.s)
				if err != nil {
					t.Fatal(err)
				}
				c := postgres.New(cfg, e.store, e.schema, slog.New(slog.NewTextHandler(testWriter{t}, nil)))
				ctx, cancel := context.WithTimeout(context.Background(), 20*time.Second)
				err = c.Run(ctx)
				cancel()
				for _, want := range []string{"allows no capture mode", "wal_level is replica", "may not create schema lattice", "has no updated_at"} {
					if err == nil || !strings.Contains(err.Error(), want) {
						t.Errorf("auto without any possible mode: error %v, want it to say %q", err, want)
					}
				}
				// Told mode trigger, the connector says what to run.
				td := decl(dsn, false)
				td["mode"] = "trigger"
				if cfg, err = postgres.ParseConfig("crm", td, e.schema.s); err != nil {
					t.Fatal(err)
				}
				ctx, cancel = context.WithTimeout(context.Background(), 20*time.Second)
				err = postgres.New(cfg, e.store, e.schema, slog.New(slog.NewTextHandler(testWriter{t}, nil))).Run(ctx)
				cancel()
				if err == nil || !strings.Contains(err.Error(), "run `lattice connectors trigger install crm --config FILE`") {
					t.Errorf("mode trigger without the rights to install: error %v, want it to say what to run", err)
				}
			}
			c, _ := e.runConnector(t, "crm", decl(dsn, true), postgres.WithReport())
			eventually(t, "snapshot", func() (bool, string) { return e.field(t, "1", "name") == "Ann", e.field(t, "1", "name") })
			e.crm.Exec(t, "crm", `UPDATE customers SET full_name = 'Ann 2', updated_at = clock_timestamp() WHERE customer_id = 1`)
			eventually(t, "a change captured in the chosen mode", func() (bool, string) { return e.field(t, "1", "name") == "Ann 2", e.field(t, "1", "name") })
			if r := c.Report(); !strings.HasPrefix(r.Mode, tc.mode+" (auto: ") {
				t.Errorf("report mode %q, want %s chosen by auto", r.Mode, tc.mode)
			} else {
				t.Logf("report mode: %s", r.Mode)
			}
			triggers := row(t, e.crm, "crm", `SELECT count(*) FROM pg_trigger WHERE tgname = 'lattice_capture_crm'`)
			if want := map[bool]string{true: "1", false: "0"}[tc.mode == "trigger"]; triggers != want {
				t.Errorf("%s capture triggers installed in mode %s", triggers, tc.mode)
			}
		})
	}
}

// TestTriggerConfig: configuration errors of modes trigger and auto name
// the problem.
func TestTriggerConfig(t *testing.T) {
	s, err := crdt.ParseSchema("schema.yaml", []byte(schemaYAML))
	if err != nil {
		t.Fatal(err)
	}
	base := func(mode string, table map[string]any) map[string]any {
		tbl := map[string]any{"entity": "contact", "key": []any{"customer_id"}, "columns": map[string]any{"full_name": "name"}}
		for k, v := range table {
			tbl[k] = v
		}
		return map[string]any{"kind": "postgres", "dsn": "postgres://x", "mode": mode, "tables": map[string]any{"customers": tbl}}
	}
	for _, tc := range []struct {
		name, conn, mode string
		table            map[string]any
		want             string
	}{
		{"unknown mode", "crm", "triggers", nil, `mode "triggers": want logical, trigger, poll, auto`},
		{"poll settings in trigger mode", "crm", "trigger", map[string]any{"updated_at": "u", "poll": map[string]any{"interval": "1s"}}, "poll settings apply to mode: poll"},
		{"poll settings without updated_at in auto", "crm", "auto", map[string]any{"poll": map[string]any{"interval": "1s"}}, "poll settings need updated_at"},
		{"name too long", strings.Repeat("n", 50), "trigger", nil, "name too long for trigger capture"},
	} {
		_, err := postgres.ParseConfig(tc.conn, base(tc.mode, tc.table), s)
		if err == nil || !strings.Contains(err.Error(), tc.want) {
			t.Errorf("%s: error %v, want %q", tc.name, err, tc.want)
		}
	}
	for _, mode := range []string{"trigger", "auto"} {
		if _, err := postgres.ParseConfig("crm", base(mode, map[string]any{"updated_at": "u"}), s); err != nil {
			t.Errorf("mode %s: %v", mode, err)
		}
	}
}

func atoi(t *testing.T, s string) int {
	t.Helper()
	var n int
	if _, err := fmt.Sscan(s, &n); err != nil {
		t.Fatalf("%q: %v", s, err)
	}
	return n
}

// TestTriggerSchemaDrift: in trigger mode, a change row written after a
// mapped column was dropped pauses the connector before it is captured
// (the change table shows the row without the column: no 30 s catalog
// check needed), naming table and column; restored and resumed, capture
// picks up exactly there. A retyped mapped column pauses it through the
// catalog check; resumed, it takes the new type.
func TestTriggerSchemaDrift(t *testing.T) {
	t.Parallel()
	e := setupOne(t)
	cp := &memCheckpoints{epoch: 1}
	p := &pauser{}
	decl := triggerDecl(e, map[string]any{"project": false})
	run := func(opts ...postgres.Option) *running {
		return e.runPaused(t, "crm", decl, p, append([]postgres.Option{postgres.WithCheckpoints(cp, 1)}, opts...)...)
	}
	name := func(id string) string { return e.field(t, id, "name") }
	r := run()
	e.crm.Exec(t, "crm", `INSERT INTO customers VALUES (1, 'Ann', 'ann@example.com', '1')`)
	eventually(t, "row 1 captured", func() (bool, string) { return name("1") == "Ann", name("1") })
	// Unmapped columns come and go freely.
	e.crm.Exec(t, "crm", `ALTER TABLE customers ADD COLUMN notes text`)
	e.crm.Exec(t, "crm", `UPDATE customers SET notes = 'x', full_name = 'Ann 2' WHERE customer_id = 1`)
	e.crm.Exec(t, "crm", `ALTER TABLE customers DROP COLUMN notes`)
	eventually(t, "change around an unmapped column captured", func() (bool, string) { return name("1") == "Ann 2", name("1") })

	e.crm.Exec(t, "crm", `INSERT INTO customers VALUES (3, 'Before drop', NULL, '3')`)
	e.crm.Exec(t, "crm", `ALTER TABLE customers DROP COLUMN phone`)
	e.crm.Exec(t, "crm", `INSERT INTO customers (customer_id, full_name) VALUES (4, 'After drop')`)
	e.crm.Exec(t, "crm", `UPDATE customers SET full_name = 'Ann 3' WHERE customer_id = 1`)
	reason := waitPaused(t, r, p, 1)
	wantAll(t, "pause reason", reason, "table customers", `column "phone"`, "was dropped", "lattice connectors resume crm")
	if name("3") != "Before drop" {
		t.Errorf("the change before the drop was not captured: %q", name("3"))
	}
	if name("4") != "<none>" || name("1") != "Ann 2" {
		t.Errorf("changes after the drop were captured while the mapping did not fit: row 4 %q, row 1 %q", name("4"), name("1"))
	}
	e.crm.Exec(t, "crm", `ALTER TABLE customers ADD COLUMN phone text`)
	e.crm.Exec(t, "crm", `INSERT INTO customers VALUES (5, 'Cy', NULL, '5')`)
	r = run()
	eventually(t, "changes made while paused arrive", func() (bool, string) {
		return name("4") == "After drop" && name("1") == "Ann 3" && name("5") == "Cy", name("4") + " " + name("1") + " " + name("5")
	})
	if got := e.field(t, "5", "phone"); got != "5" {
		t.Errorf("row 5 phone %q, want 5", got)
	}
	if got := e.field(t, "3", "phone"); got != "3" {
		t.Errorf("row 3 phone %q, want 3 (captured before the drop)", got)
	}
	if got := e.field(t, "1", "phone"); got != "1" {
		t.Errorf("row 1 phone %q, want 1: its update written without the column must not clear the field", got)
	}
	if n := e.versions(t, "3", "name"); n != 1 {
		t.Errorf("record 3 has %d versions of name, want 1 (captured twice across the pause?)", n)
	}
	r.stop()

	r = run(postgres.WithSchemaCheckEvery(200 * time.Millisecond))
	// Running (it read the types at start) before the column is retyped.
	e.crm.Exec(t, "crm", `UPDATE customers SET full_name = 'Ann 3b' WHERE customer_id = 1`)
	eventually(t, "running again", func() (bool, string) { return name("1") == "Ann 3b", name("1") })
	e.crm.Exec(t, "crm", `ALTER TABLE customers ALTER COLUMN phone TYPE int USING phone::int`)
	reason = waitPaused(t, r, p, 2)
	wantAll(t, "retype pause reason", reason, "table customers", `column "phone"`, "changed type from text to integer")
	e.crm.Exec(t, "crm", `UPDATE customers SET full_name = 'Ann 4', phone = 44 WHERE customer_id = 1`)
	r = run()
	eventually(t, "after resuming, the retyped column's change arrives", func() (bool, string) {
		return name("1") == "Ann 4" && e.field(t, "1", "phone") == "44", name("1") + " " + e.field(t, "1", "phone")
	})
	r.stop()
}
