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
	"github.com/lattice-sync/lattice/storage"
)

// Poll mode tests. crm runs on wal_level=replica (no logical decoding at
// all) and its customers table gets an updated_at column the writers set
// (clock_timestamp(), or now() where a test needs one stamp per
// transaction) and a soft-delete flag.

// pollSetup is setup with crm on wal_level=replica and the poll columns.
func pollSetup(t *testing.T) *env {
	t.Helper()
	e := setupWith(t, pgtest.WithConf("wal_level", "replica"))
	e.crm.Exec(t, "crm", `ALTER TABLE customers
		ADD COLUMN updated_at timestamptz NOT NULL DEFAULT clock_timestamp(),
		ADD COLUMN deleted boolean NOT NULL DEFAULT false;
		CREATE INDEX customers_poll ON customers (updated_at, customer_id)`)
	return e
}

// pollDecl is crm's declaration in poll mode; poll overrides poll settings.
func pollDecl(e *env, poll map[string]any, top map[string]any) map[string]any {
	p := map[string]any{"interval": "50ms", "overlap": "5s", "page_size": 500,
		"soft_delete": map[string]any{"column": "deleted", "value": true}, "keyset_every": 2}
	for k, v := range poll {
		if v == nil {
			delete(p, k)
		} else {
			p[k] = v
		}
	}
	d := map[string]any{"kind": "postgres", "dsn": e.crm.DSN("crm"), "mode": "poll", "acks": 1,
		"tables": map[string]any{"customers": map[string]any{"entity": "contact", "key": []any{"customer_id"}, "updated_at": "updated_at",
			"columns": map[string]any{"full_name": "name", "email_address": "email", "phone": "phone"}, "poll": p}}}
	for k, v := range top {
		d[k] = v
	}
	return d
}

// runConnector runs a connector until the returned stop is called (also
// at cleanup); stop returns Run's error (nil when it ended by stop).
func (e *env) runConnector(t *testing.T, name string, decl map[string]any, opts ...postgres.Option) (*postgres.Connector, func() error) {
	t.Helper()
	cfg, err := postgres.ParseConfig(name, decl, e.schema.s)
	if err != nil {
		t.Fatal(err)
	}
	c := postgres.New(cfg, e.store, e.schema, slog.New(slog.NewTextHandler(testWriter{t}, &slog.HandlerOptions{Level: slog.LevelInfo})), opts...)
	ctx, cancel := context.WithCancel(context.Background())
	done := make(chan error, 1)
	go func() { done <- c.Run(ctx) }()
	var once sync.Once
	var runErr error
	stop := func() error {
		once.Do(func() {
			cancel()
			select {
			case runErr = <-done:
			case <-time.After(20 * time.Second):
				runErr = errors.New("connector did not stop in 20 s")
			}
			if errors.Is(runErr, context.Canceled) {
				runErr = nil
			}
		})
		return runErr
	}
	t.Cleanup(func() {
		if err := stop(); err != nil {
			t.Errorf("connector %s: %v", name, err)
		}
	})
	return c, stop
}

// field is a record's resolved field ("<none>": no record, "<deleted>").
func (e *env) field(t *testing.T, id, name string) string {
	t.Helper()
	rec, err := e.store.Get("contact", id)
	if errors.Is(err, storage.ErrNotFound) {
		return "<none>"
	}
	if err != nil {
		t.Fatal(err)
	}
	ent, _ := e.schema.s.Entity("contact")
	fields, deleted := ent.View(rec)
	if deleted {
		return "<deleted>"
	}
	for _, f := range fields {
		if f.Name == name {
			if f.Value.IsNull() {
				return "<null>"
			}
			return f.Value.Str()
		}
	}
	return "<no field>"
}

// view is a record's field view.
func (e *env) view(t *testing.T, id, name string) crdt.FieldView {
	t.Helper()
	rec, err := e.store.Get("contact", id)
	if err != nil {
		t.Fatal(err)
	}
	ent, _ := e.schema.s.Entity("contact")
	fields, _ := ent.View(rec)
	for _, f := range fields {
		if f.Name == name {
			return f
		}
	}
	t.Fatalf("record %s has no field %s", id, name)
	return crdt.FieldView{}
}

func (e *env) versions(t *testing.T, id, field string) int {
	t.Helper()
	vs, err := e.store.Versions("contact", id, field)
	if err != nil {
		t.Fatal(err)
	}
	return len(vs)
}

// records counts the live records of contact and those whose field is want.
func (e *env) records(t *testing.T, field, want string) (live, match int) {
	t.Helper()
	ent, _ := e.schema.s.Entity("contact")
	after := ""
	for {
		page, more, err := e.store.List("contact", after, 1000)
		if err != nil {
			t.Fatal(err)
		}
		for _, r := range page {
			after = r.ID
			fields, deleted := ent.View(r.Record)
			if deleted {
				continue
			}
			live++
			for _, f := range fields {
				if f.Name == field && f.Value.Str() == want {
					match++
				}
			}
		}
		if !more {
			return live, match
		}
	}
}

// noEcho fails when a field (record id, field) has a version crm captured
// other than crm's own value own: crm took a projection back as native.
func (e *env) noEcho(t *testing.T, own string, fields ...[2]string) {
	t.Helper()
	for _, f := range fields {
		vs, err := e.store.Versions("contact", f[0], f[1])
		if err != nil {
			t.Fatal(err)
		}
		for _, v := range vs {
			if v.Origin == "postgres:crm" && v.Value.Str() != own {
				t.Errorf("record %s %s: crm captured lattice's own projection back: %v", f[0], f[1], vs)
			}
		}
	}
}

// TestPollCapture: the initial poll captures the rows already there; then
// inserts, updates (only the columns that changed), soft deletes and hard
// deletes (key set) are captured, on a server without logical decoding.
func TestPollCapture(t *testing.T) {
	e := pollSetup(t)
	e.crm.Exec(t, "crm", `INSERT INTO customers VALUES (1, 'Ann', 'ann@example.com', '111'), (2, 'Bob', 'bob@example.com', '222'), (4, 'Dee', NULL, NULL)`)
	c, _ := e.runConnector(t, "crm", pollDecl(e, nil, map[string]any{"project": false}), postgres.WithReport())
	eventually(t, "initial poll", func() (bool, string) {
		return e.field(t, "1", "name") == "Ann" && e.field(t, "4", "name") == "Dee", e.field(t, "1", "name")
	})
	e.crm.Exec(t, "crm", `INSERT INTO customers (customer_id, full_name) VALUES (3, 'Cy')`)
	e.crm.Exec(t, "crm", `UPDATE customers SET email_address = 'ann@new.example', updated_at = clock_timestamp() WHERE customer_id = 1`)
	e.crm.Exec(t, "crm", `UPDATE customers SET deleted = true, updated_at = clock_timestamp() WHERE customer_id = 2`)
	eventually(t, "insert, update, soft delete captured", func() (bool, string) {
		got := e.field(t, "3", "name") + " " + e.field(t, "1", "email") + " " + e.field(t, "2", "name")
		return got == "Cy ann@new.example <deleted>", got
	})
	e.crm.Exec(t, "crm", `DELETE FROM customers WHERE customer_id IN (3, 4)`)
	eventually(t, "hard deletes found by the key set", func() (bool, string) {
		got := e.field(t, "3", "name") + " " + e.field(t, "4", "name")
		return got == "<deleted> <deleted>", got
	})
	// The update was an edit of the email only.
	if n := e.versions(t, "1", "name"); n != 1 {
		t.Errorf("record 1 has %d versions of name, want 1 (the update of the email wrote the name again)", n)
	}
	// A soft-deleted row that comes back is captured whole again.
	e.crm.Exec(t, "crm", `UPDATE customers SET deleted = false, phone = '333', updated_at = clock_timestamp() WHERE customer_id = 2`)
	eventually(t, "undeleted row captured", func() (bool, string) {
		got := e.field(t, "2", "name") + " " + e.field(t, "2", "phone")
		return got == "Bob 333", got
	})
	e.quiet(t, "capture only")
	if r := c.Report(); r.Mode != "poll" || r.State != "streaming" || !strings.Contains(r.ReceivedPosition, "customers: next scan from") {
		t.Errorf("report: mode %q state %q received %q", r.Mode, r.State, r.ReceivedPosition)
	}
}

// TestPollSharedTimestamp: rows written by one transaction share one
// updated_at (now()). The initial poll (key order) reads 5,000 of them;
// a later poll, paging 500 at a time by (updated_at, key) strictly after
// the last row read, reads 10,000 sharing one updated_at (5,000 updated,
// 5,000 inserted) and loses none.
func TestPollSharedTimestamp(t *testing.T) {
	e := pollSetup(t)
	e.crm.Exec(t, "crm", `INSERT INTO customers (customer_id, full_name, phone, updated_at) SELECT i, 'n'||i, '0', now() FROM generate_series(1, 5000) i`)
	_, _ = e.runConnector(t, "crm", pollDecl(e, map[string]any{"keyset_every": nil}, map[string]any{"project": false}))
	eventually(t, "initial poll of 5,000 rows sharing an updated_at", func() (bool, string) {
		live, match := e.records(t, "phone", "0")
		return live == 5000 && match == 5000, fmt.Sprintf("%d records, %d with phone 0", live, match)
	})
	e.crm.Exec(t, "crm", `INSERT INTO customers (customer_id, full_name, phone, updated_at) SELECT i, 'n'||i, '1', now() FROM generate_series(5001, 10000) i;
		UPDATE customers SET phone = '1', updated_at = now() WHERE customer_id <= 5000`)
	eventually(t, "5,000 updates and 5,000 inserts sharing an updated_at", func() (bool, string) {
		live, match := e.records(t, "phone", "1")
		return live == 10000 && match == 10000, fmt.Sprintf("%d records, %d with phone 1", live, match)
	})
	for _, id := range []string{"1", "2500", "5000"} {
		if n := e.versions(t, id, "name"); n != 1 {
			t.Errorf("record %s has %d versions of name, want 1", id, n)
		}
		if n := e.versions(t, id, "phone"); n != 2 {
			t.Errorf("record %s has %d versions of phone, want 2", id, n)
		}
	}
}

// TestPollLateCommit: a transaction stamps its row (now(): its start) and
// commits seconds later, after polls have read rows stamped after it; the
// overlap window still reads it.
func TestPollLateCommit(t *testing.T) {
	e := pollSetup(t)
	e.crm.Exec(t, "crm", `INSERT INTO customers VALUES (1, 'Ann', NULL, NULL), (2, 'Bob', NULL, NULL)`)
	_, _ = e.runConnector(t, "crm", pollDecl(e, nil, map[string]any{"project": false}))
	eventually(t, "initial poll", func() (bool, string) { return e.field(t, "2", "name") == "Bob", e.field(t, "2", "name") })
	ctx := context.Background()
	conn, err := pgx.Connect(ctx, e.crm.DSN("crm"))
	if err != nil {
		t.Fatal(err)
	}
	defer conn.Close(ctx)
	tx, err := conn.Begin(ctx)
	if err != nil {
		t.Fatal(err)
	}
	if _, err := tx.Exec(ctx, `UPDATE customers SET full_name = 'Ann late', updated_at = now() WHERE customer_id = 1`); err != nil {
		t.Fatal(err)
	}
	for i := 0; i < 6; i++ {
		time.Sleep(250 * time.Millisecond)
		e.crm.Exec(t, "crm", fmt.Sprintf(`UPDATE customers SET full_name = 'Bob %d', updated_at = clock_timestamp() WHERE customer_id = 2`, i))
	}
	eventually(t, "later rows polled", func() (bool, string) { return e.field(t, "2", "name") == "Bob 5", e.field(t, "2", "name") })
	if got := e.field(t, "1", "name"); got != "Ann" {
		t.Fatalf("uncommitted change captured: %q", got)
	}
	if err := tx.Commit(ctx); err != nil {
		t.Fatal(err)
	}
	eventually(t, "the late commit, stamped 1.5 s before, is captured", func() (bool, string) {
		return e.field(t, "1", "name") == "Ann late", e.field(t, "1", "name")
	})
}

// TestPollNoEcho: what lattice projects into a polled table is not
// captured back, with a trigger that stamps every write (projections
// included) and without one.
func TestPollNoEcho(t *testing.T) {
	for _, trigger := range []bool{false, true} {
		t.Run(fmt.Sprintf("trigger=%v", trigger), func(t *testing.T) {
			e := pollSetup(t)
			if trigger {
				e.crm.Exec(t, "crm", `CREATE FUNCTION stamp() RETURNS trigger AS $$ BEGIN NEW.updated_at = clock_timestamp(); RETURN NEW; END $$ LANGUAGE plpgsql;
					CREATE TRIGGER stamp BEFORE INSERT OR UPDATE ON customers FOR EACH ROW EXECUTE FUNCTION stamp()`)
			}
			e.crm.Exec(t, "crm", `INSERT INTO customers VALUES (1, 'Ann', 'ann@example.com', '111')`)
			_, _ = e.runConnector(t, "crm", pollDecl(e, nil, nil))
			_, _ = e.runConnector(t, "billing", map[string]any{"kind": "postgres", "dsn": e.billing.DSN("billing"), "acks": 1, "tables": map[string]any{
				"clients": map[string]any{"entity": "contact", "key": []any{"client_ref"}, "columns": map[string]any{"name": "name", "email": "email", "tel": "phone"}}}})
			crmRow := func(id int) string {
				return row(t, e.crm, "crm", fmt.Sprintf("SELECT full_name, email_address, phone, deleted FROM customers WHERE customer_id = %d", id))
			}
			billRow := func(id int) string {
				return row(t, e.billing, "billing", fmt.Sprintf("SELECT name, email, tel FROM clients WHERE client_ref = %d", id))
			}
			eventually(t, "crm's row reaches billing", func() (bool, string) { return billRow(1) == "Ann ann@example.com 111", billRow(1) })
			e.billing.Exec(t, "billing", `INSERT INTO clients VALUES (2, 'Bob', 'bob@example.com', '222')`)
			e.billing.Exec(t, "billing", `UPDATE clients SET tel = '999' WHERE client_ref = 1`)
			eventually(t, "billing's changes projected into crm", func() (bool, string) {
				got := crmRow(1) + " | " + crmRow(2)
				return got == "Ann ann@example.com 999 false | Bob bob@example.com 222 false", got
			})
			e.quiet(t, "after projecting into the polled table")
			// Nothing crm captured came from its own projections: billing's
			// versions are the only ones of what billing wrote.
			e.noEcho(t, "111", [2]string{"2", "name"}, [2]string{"1", "phone"})
			// And crm's own edits still go through.
			e.crm.Exec(t, "crm", `UPDATE customers SET email_address = 'bob@crm.example', updated_at = clock_timestamp() WHERE customer_id = 2`)
			eventually(t, "crm's edit reaches billing", func() (bool, string) { return billRow(2) == "Bob bob@crm.example 222", billRow(2) })
			e.quiet(t, "after a native edit")
		})
	}
}

// TestPollCausality: a native change stamped after a projection into its
// row saw it and supersedes it; one stamped before it is concurrent: a
// conflict, both versions kept, resolved by policy.
func TestPollCausality(t *testing.T) {
	e := pollSetup(t)
	e.crm.Exec(t, "crm", `INSERT INTO customers VALUES (1, 'Ann', 'ann@example.com', '111')`)
	_, _ = e.runConnector(t, "crm", pollDecl(e, nil, nil))
	eventually(t, "initial poll", func() (bool, string) { return e.field(t, "1", "name") == "Ann", e.field(t, "1", "name") })
	ent, _ := e.schema.s.Entity("contact")
	ctx := context.Background()
	crmName := func() string { return row(t, e.crm, "crm", `SELECT full_name FROM customers WHERE customer_id = 1`) }

	// Later: an API edit is projected, then crm changes the name again.
	if _, err := e.store.Write(ctx, "contact", "1", "api", putFields(ent, map[string]string{"name": "Ann (api)"})); err != nil {
		t.Fatal(err)
	}
	eventually(t, "API edit projected", func() (bool, string) { return crmName() == "Ann (api)", crmName() })
	e.crm.Exec(t, "crm", `UPDATE customers SET full_name = 'Ann (crm, after)', updated_at = clock_timestamp() WHERE customer_id = 1`)
	eventually(t, "later native change captured", func() (bool, string) {
		return e.field(t, "1", "name") == "Ann (crm, after)", e.field(t, "1", "name")
	})
	if f := e.view(t, "1", "name"); f.Conflicted || len(f.Live) != 1 {
		t.Errorf("a change stamped after the projection it saw is a conflict: %d live versions %v", len(f.Live), f.Live)
	}

	// Earlier: crm's change is stamped before the projection landed (as a
	// transaction that began before it would be): concurrent.
	before := row(t, e.crm, "crm", `SELECT clock_timestamp()::text`)
	time.Sleep(20 * time.Millisecond)
	if _, err := e.store.Write(ctx, "contact", "1", "api", putFields(ent, map[string]string{"name": "Ann (api 2)"})); err != nil {
		t.Fatal(err)
	}
	eventually(t, "second API edit projected", func() (bool, string) { return crmName() == "Ann (api 2)", crmName() })
	e.crm.Exec(t, "crm", fmt.Sprintf(`UPDATE customers SET full_name = 'Ann (crm, concurrent)', updated_at = '%s' WHERE customer_id = 1`, before))
	eventually(t, "concurrent native change captured as a conflict", func() (bool, string) {
		f := e.view(t, "1", "name")
		var vals []string
		for _, v := range f.Live {
			vals = append(vals, v.Value.Str())
		}
		return f.Conflicted && len(f.Live) == 2, fmt.Sprintf("conflicted %v, live %q", f.Conflicted, vals)
	})
	// Last writer wins: the API edit is the later one (the native change
	// is dated by its updated_at), and crm ends up holding it.
	eventually(t, "crm holds the winner", func() (bool, string) {
		return e.field(t, "1", "name") == "Ann (api 2)" && crmName() == "Ann (api 2)", e.field(t, "1", "name") + " | " + crmName()
	})
}

// TestPollProjectionWaitsForPoll: projection never writes over a row that
// changed since it was last polled (it would put the row's older columns
// back): it waits for the poll, then writes the merged record.
func TestPollProjectionWaitsForPoll(t *testing.T) {
	e := pollSetup(t)
	e.crm.Exec(t, "crm", `INSERT INTO customers VALUES (1, 'Ann', 'ann@example.com', '111')`)
	_, _ = e.runConnector(t, "crm", pollDecl(e, map[string]any{"interval": "3s"}, nil))
	eventually(t, "initial poll", func() (bool, string) { return e.field(t, "1", "name") == "Ann", e.field(t, "1", "name") })
	time.Sleep(200 * time.Millisecond) // the next poll is seconds away
	e.crm.Exec(t, "crm", `UPDATE customers SET phone = '999', updated_at = clock_timestamp() WHERE customer_id = 1`)
	ent, _ := e.schema.s.Entity("contact")
	if _, err := e.store.Write(context.Background(), "contact", "1", "api", putFields(ent, map[string]string{"email": "ann@api.example"})); err != nil {
		t.Fatal(err)
	}
	crmRow := func() string {
		return row(t, e.crm, "crm", `SELECT full_name, email_address, phone FROM customers WHERE customer_id = 1`)
	}
	eventually(t, "both edits in crm and in the store", func() (bool, string) {
		got := crmRow() + " | " + e.field(t, "1", "email") + " " + e.field(t, "1", "phone")
		return got == "Ann ann@api.example 999 | ann@api.example 999", got
	})
}

// TestPollResume: a restarted connector resumes from its checkpoint:
// changes made while it was down are captured once, nothing captured
// before is captured again.
func TestPollResume(t *testing.T) {
	e := pollSetup(t)
	e.crm.Exec(t, "crm", `INSERT INTO customers (customer_id, full_name, phone) SELECT i, 'n'||i, '0' FROM generate_series(1, 50) i`)
	cp := &memCheckpoints{epoch: 1}
	decl := pollDecl(e, nil, map[string]any{"project": false})
	_, stop := e.runConnector(t, "crm", decl, postgres.WithCheckpoints(cp, 1))
	eventually(t, "initial poll", func() (bool, string) { live, _ := e.records(t, "phone", "0"); return live == 50, fmt.Sprint(live) })
	e.crm.Exec(t, "crm", `UPDATE customers SET phone = '1', updated_at = clock_timestamp() WHERE customer_id <= 10`)
	eventually(t, "updates captured", func() (bool, string) { _, n := e.records(t, "phone", "1"); return n == 10, fmt.Sprint(n) })
	applied := e.store.Applied().Get("n1")
	waitCheckpoint(t, cp, "checkpoint covers the updates", func(m map[string]any) bool { return coversSeq(m, applied) })
	if err := stop(); err != nil {
		t.Fatal(err)
	}
	// While it is down: updates (some within the overlap window of the
	// last poll, so read again), inserts and a soft delete.
	e.crm.Exec(t, "crm", `UPDATE customers SET phone = '2', updated_at = clock_timestamp() WHERE customer_id BETWEEN 6 AND 15;
		INSERT INTO customers (customer_id, full_name, phone) SELECT i, 'n'||i, '2' FROM generate_series(51, 60) i;
		UPDATE customers SET deleted = true, updated_at = clock_timestamp() WHERE customer_id = 20`)
	_, _ = e.runConnector(t, "crm", decl, postgres.WithCheckpoints(cp, 1))
	eventually(t, "changes made while down captured", func() (bool, string) {
		live, n := e.records(t, "phone", "2")
		return live == 59 && n == 20, fmt.Sprintf("%d live, %d with phone 2", live, n)
	})
	time.Sleep(500 * time.Millisecond) // a few more polls
	for id, want := range map[string][2]int{"1": {1, 2}, "6": {1, 3}, "12": {1, 2}, "30": {1, 1}, "55": {1, 1}} {
		if n := e.versions(t, id, "name"); n != want[0] {
			t.Errorf("record %s: %d versions of name, want %d", id, n, want[0])
		}
		if n := e.versions(t, id, "phone"); n != want[1] {
			t.Errorf("record %s: %d versions of phone, want %d", id, n, want[1])
		}
	}
	if got := e.field(t, "20", "name"); got != "<deleted>" {
		t.Errorf("record 20 (soft-deleted while down): %s", got)
	}
	poll, _ := cp.get(t, "crm")["poll"].(map[string]any)
	if poll == nil || poll["tables"] == nil {
		t.Errorf("checkpoint has no poll position: %v", cp.get(t, "crm"))
	}
}

// TestPollResumeFromCursor: an interrupted scan resumes after its
// checkpointed cursor, the initial scan's (key) as a later scan's
// (updated_at, key): the rows before it are not read again, those after it
// are, also the one sharing the cursor's updated_at.
func TestPollResumeFromCursor(t *testing.T) {
	for _, initial := range []bool{true, false} {
		t.Run(fmt.Sprintf("initial=%v", initial), func(t *testing.T) {
			e := pollSetup(t)
			// Old stamps (outside any later scan's window), two rows per
			// stamp so the cursor falls inside a group of equal updated_at.
			e.crm.Exec(t, "crm", `INSERT INTO customers (customer_id, full_name, updated_at)
				SELECT i, 'n'||i, timestamptz '2020-01-01' + ((i + 1) / 2) * interval '1 second' FROM generate_series(1, 10) i`)
			mark := map[string]any{"next": row(t, e.crm, "crm", `SELECT (clock_timestamp() - interval '5 seconds')::text`), "key": []any{"5"}}
			if !initial {
				mark["from"], mark["snapshot"] = "2019-01-01 00:00:00+00", true
				mark["u"] = row(t, e.crm, "crm", `SELECT updated_at::text FROM customers WHERE customer_id = 5`)
			}
			cp := &memCheckpoints{epoch: 1, data: map[string][]byte{}}
			cp.set("crm", map[string]any{"slot": "lattice_crm", "lsn": "0/0", "snapshot": true, "node": "n1",
				"poll": map[string]any{"seq": 7, "tables": map[string]any{"customers": mark}}})
			_, _ = e.runConnector(t, "crm", pollDecl(e, nil, map[string]any{"project": false}), postgres.WithCheckpoints(cp, 1))
			eventually(t, "rows after the cursor captured", func() (bool, string) { return e.field(t, "10", "name") == "n10", e.field(t, "10", "name") })
			time.Sleep(300 * time.Millisecond)
			for i := 1; i <= 10; i++ {
				got := e.field(t, fmt.Sprint(i), "name")
				if i <= 5 && got != "<none>" {
					t.Errorf("row %d was before the cursor but was read again: %q", i, got)
				}
				if i > 5 && got != fmt.Sprintf("n%d", i) {
					t.Errorf("row %d after the cursor: %q", i, got)
				}
			}
		})
	}
}

// TestPollConfig: poll settings are checked when the configuration is
// parsed, and errors name the connector, the table and the setting.
func TestPollConfig(t *testing.T) {
	sch, _ := crdt.ParseSchema("s.yaml", []byte(schemaYAML))
	table := func(extra map[string]any) map[string]any {
		tb := map[string]any{"entity": "contact", "key": []any{"id"}, "updated_at": "updated_at", "columns": map[string]any{"a": "name"}}
		for k, v := range extra {
			tb[k] = v
		}
		return tb
	}
	decl := func(mode string, tb map[string]any) map[string]any {
		return map[string]any{"kind": "postgres", "dsn": "x", "mode": mode, "tables": map[string]any{"t": tb}}
	}
	cfg, err := postgres.ParseConfig("crm", decl("poll", table(nil)), sch)
	if err != nil {
		t.Fatal(err)
	}
	p := cfg.Tables[0].Poll
	if p == nil || p.Interval != time.Second || p.Overlap != 5*time.Second || p.PageSize != 1000 || p.SoftDelete != "" || p.KeysetEvery != 0 {
		t.Errorf("defaults: %+v", p)
	}
	cfg, err = postgres.ParseConfig("crm", decl("poll", table(map[string]any{"poll": map[string]any{"interval": "250ms", "overlap": "30s", "page_size": 200,
		"soft_delete": map[string]any{"column": "deleted_at"}, "keyset_every": 10}})), sch)
	if err != nil {
		t.Fatal(err)
	}
	if p := cfg.Tables[0].Poll; p.Interval != 250*time.Millisecond || p.Overlap != 30*time.Second || p.PageSize != 200 || p.SoftDelete != "deleted_at" || p.SoftValue != nil || p.KeysetEvery != 10 {
		t.Errorf("settings: %+v", p)
	}
	cases := []struct {
		name string
		decl map[string]any
		want string
	}{
		{"no updated_at", decl("poll", map[string]any{"entity": "contact", "key": []any{"id"}, "columns": map[string]any{"a": "name"}}), `connector "crm" table "t": mode poll needs updated_at`},
		{"updated_at is the key", decl("poll", table(map[string]any{"updated_at": "id"})), `updated_at column "id" is a key column`},
		{"updated_at mapped to a string", decl("poll", table(map[string]any{"columns": map[string]any{"a": "name", "updated_at": "email"}})), `column "updated_at": the updated_at column must be a timestamp`},
		{"poll in logical mode", decl("logical", table(map[string]any{"poll": map[string]any{"interval": "1s"}})), `poll settings apply to mode: poll`},
		{"bad interval", decl("poll", table(map[string]any{"poll": map[string]any{"interval": "soon"}})), `table "t" poll interval "soon": want a duration`},
		{"zero interval", decl("poll", table(map[string]any{"poll": map[string]any{"interval": "0s"}})), `poll interval "0s": want a positive duration`},
		{"page size", decl("poll", table(map[string]any{"poll": map[string]any{"page_size": 0}})), `poll page_size 0`},
		{"keyset", decl("poll", table(map[string]any{"poll": map[string]any{"keyset_every": 0}})), `poll keyset_every 0`},
		{"soft delete without column", decl("poll", table(map[string]any{"poll": map[string]any{"soft_delete": map[string]any{"value": true}}})), `poll soft_delete: column is required`},
		{"soft delete on the key", decl("poll", table(map[string]any{"poll": map[string]any{"soft_delete": map[string]any{"column": "id"}}})), `soft_delete column "id" is a key column`},
		{"unknown key", decl("poll", table(map[string]any{"poll": map[string]any{"intervall": "1s"}})), `unknown key "intervall"`},
	}
	for _, tc := range cases {
		t.Run(tc.name, func(t *testing.T) {
			_, err := postgres.ParseConfig("crm", tc.decl, sch)
			if err == nil || !strings.Contains(err.Error(), tc.want) {
				t.Fatalf("got %v, want an error containing %q", err, tc.want)
			}
		})
	}
}
