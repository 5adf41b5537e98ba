package postgres_test

import (
	"context"
	"errors"
	"io"
	"log/slog"
	"strings"
	"sync"
	"testing"
	"time"

	"github.com/lattice-sync/lattice/connectors"
	"github.com/lattice-sync/lattice/connectors/postgres"
	"github.com/lattice-sync/lattice/connectors/postgres/pgtest"
	"github.com/lattice-sync/lattice/crdt"
	"github.com/lattice-sync/lattice/storage"
)

// setupOne is setup with only the crm instance (customers table).
func setupOne(t *testing.T) *env {
	t.Helper()
	e := &env{crm: pgtest.Start(t)}
	e.crm.CreateDB(t, "crm")
	e.crm.Exec(t, "crm", `CREATE TABLE customers (customer_id int PRIMARY KEY, full_name text, email_address text, phone text)`)
	s, err := crdt.ParseSchema("schema.yaml", []byte(schemaYAML))
	if err != nil {
		t.Fatal(err)
	}
	e.schema = staticSchema{s}
	cfg := storage.DefaultConfig(t.TempDir(), "n1")
	cfg.Logger = slog.New(slog.NewTextHandler(io.Discard, nil))
	if e.store, err = storage.Open(cfg); err != nil {
		t.Fatal(err)
	}
	t.Cleanup(func() { e.store.Close() })
	return e
}

// pauser stands in for the control plane: it records each pause and, as
// the connector manager does for a paused connector, stops the connector.
type pauser struct {
	mu      sync.Mutex
	reasons []string
}

func (p *pauser) list() []string {
	p.mu.Lock()
	defer p.mu.Unlock()
	return append([]string(nil), p.reasons...)
}

// letters counts what reaches the dead-letter queue.
type letters struct {
	mu   sync.Mutex
	list []connectors.Letter
}

func (q *letters) Add(_ context.Context, _ string, l connectors.Letter) error {
	q.mu.Lock()
	q.list = append(q.list, l)
	q.mu.Unlock()
	return nil
}
func (q *letters) List(string) []connectors.Letter                      { return nil }
func (q *letters) Resolve(context.Context, string, uint64, error) error { return nil }
func (q *letters) count() int                                           { q.mu.Lock(); defer q.mu.Unlock(); return len(q.list) }

// running is a connector started by runPaused.
type running struct {
	c     *postgres.Connector
	ended chan struct{}
	err   error
	stop  func()
}

// runPaused runs a connector declared by decl whose pauses go to p (which
// then stops it, as the control plane does).
func (e *env) runPaused(t *testing.T, name string, decl map[string]any, p *pauser, opts ...postgres.Option) *running {
	t.Helper()
	cfg, err := postgres.ParseConfig(name, decl, e.schema.s)
	if err != nil {
		t.Fatal(err)
	}
	ctx, cancel := context.WithCancel(context.Background())
	r := &running{ended: make(chan struct{})}
	opts = append(opts, postgres.WithPause(func(_ context.Context, reason string) error {
		p.mu.Lock()
		p.reasons = append(p.reasons, reason)
		p.mu.Unlock()
		cancel() // the manager stops a paused connector
		return nil
	}))
	r.c = postgres.New(cfg, e.store, e.schema, slog.New(slog.NewTextHandler(testWriter{t}, &slog.HandlerOptions{Level: slog.LevelInfo})), opts...)
	go func() { r.err = r.c.Run(ctx); close(r.ended) }()
	r.stop = func() {
		cancel()
		select {
		case <-r.ended:
		case <-time.After(20 * time.Second):
			t.Error("connector did not stop in 20 s")
		}
	}
	t.Cleanup(r.stop)
	return r
}

// waitPaused waits until the connector paused itself (n pauses so far)
// and stopped; it returns the last reason.
func waitPaused(t *testing.T, r *running, p *pauser, n int) string {
	t.Helper()
	eventually(t, "connector pauses itself", func() (bool, string) {
		return len(p.list()) >= n, strings.Join(p.list(), " | ")
	})
	select {
	case <-r.ended:
	case <-time.After(20 * time.Second):
		t.Fatal("paused connector did not stop")
	}
	if r.err != nil && !errors.Is(r.err, context.Canceled) {
		t.Errorf("a paused connector's Run ended with %v", r.err)
	}
	l := p.list()
	if len(l) != n {
		t.Fatalf("%d pauses, want %d: %q", len(l), n, l)
	}
	return l[n-1]
}

func wantAll(t *testing.T, what, s string, subs ...string) {
	t.Helper()
	for _, sub := range subs {
		if !strings.Contains(s, sub) {
			t.Errorf("%s %q does not contain %q", what, s, sub)
		}
	}
}

// TestSchemaDriftLogical: while a logical-replication connector streams,
// changes of columns it does not map are ignored; dropping a mapped column
// pauses it before the first change without the column, naming table and
// column; a restart that still finds the column missing pauses again;
// once the column is restored, the resumed connector picks up exactly
// where it paused (the changes made meanwhile arrive, none is captured
// twice). Retyping a mapped column pauses it too, and resuming takes the
// new type.
func TestSchemaDriftLogical(t *testing.T) {
	e := setupOne(t)
	cp := &memCheckpoints{epoch: 1}
	p := &pauser{}
	decl := map[string]any{"kind": "postgres", "dsn": e.crm.DSN("crm"), "project": false, "acks": 1,
		"tables": map[string]any{"customers": map[string]any{"entity": "contact", "key": []any{"customer_id"},
			"columns": map[string]any{"full_name": "name", "email_address": "email", "phone": "phone"}}}}
	run := func() *running { return e.runPaused(t, "crm", decl, p, postgres.WithCheckpoints(cp, 1)) }
	name := func(id string) string { return e.field(t, id, "name") }

	r := run()
	e.crm.Exec(t, "crm", `INSERT INTO customers VALUES (1, 'Ann', 'ann@example.com', '1')`)
	eventually(t, "row 1 captured", func() (bool, string) { return name("1") == "Ann", name("1") })

	// Unmapped columns: added, written, dropped: nothing changes.
	e.crm.Exec(t, "crm", `ALTER TABLE customers ADD COLUMN notes text`)
	e.crm.Exec(t, "crm", `UPDATE customers SET notes = 'x', full_name = 'Ann 2' WHERE customer_id = 1`)
	e.crm.Exec(t, "crm", `ALTER TABLE customers DROP COLUMN notes`)
	e.crm.Exec(t, "crm", `INSERT INTO customers VALUES (2, 'Bob', NULL, '2')`)
	eventually(t, "changes around an unmapped column captured", func() (bool, string) {
		return name("1") == "Ann 2" && name("2") == "Bob", name("1") + " " + name("2")
	})
	if l := p.list(); len(l) != 0 {
		t.Fatalf("an unmapped column's changes paused the connector: %q", l)
	}

	// A mapped column dropped mid-stream.
	e.crm.Exec(t, "crm", `INSERT INTO customers VALUES (3, 'Before drop', NULL, '3')`)
	e.crm.Exec(t, "crm", `ALTER TABLE customers DROP COLUMN phone`)
	e.crm.Exec(t, "crm", `INSERT INTO customers (customer_id, full_name) VALUES (4, 'After drop')`)
	e.crm.Exec(t, "crm", `UPDATE customers SET full_name = 'Ann 3' WHERE customer_id = 1`)
	reason := waitPaused(t, r, p, 1)
	t.Logf("pause reason: %s", reason)
	wantAll(t, "pause reason", reason, "table customers", `column "phone"`, "field phone", "was dropped",
		`ALTER TABLE "customers" ADD COLUMN "phone" text`, "lattice config apply", "lattice connectors resume crm")
	if name("3") != "Before drop" {
		t.Errorf("the change before the drop was not captured: %q", name("3"))
	}
	if name("4") != "<none>" || name("1") != "Ann 2" {
		t.Errorf("changes after the drop were captured while the mapping did not fit: row 4 %q, row 1 %q", name("4"), name("1"))
	}

	// Resumed without restoring the column: it pauses again, saying so.
	r = run()
	reason = waitPaused(t, r, p, 2)
	wantAll(t, "second pause reason", reason, "table customers", `column "phone"`, "does not exist", "lattice connectors resume crm")

	// Restored (same type), then resumed: capture picks up where it paused.
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
	for _, id := range []string{"3", "4"} {
		vs, err := e.store.Versions("contact", id, "name")
		if err != nil {
			t.Fatal(err)
		}
		if len(vs) != 1 {
			t.Errorf("record %s has %d versions of name, want 1 (captured twice across the pause?)", id, len(vs))
		}
	}

	// A mapped column retyped: pauses; resuming takes the new type.
	e.crm.Exec(t, "crm", `ALTER TABLE customers ALTER COLUMN phone TYPE int USING phone::int`)
	e.crm.Exec(t, "crm", `UPDATE customers SET full_name = 'Ann 4', phone = 44 WHERE customer_id = 1`)
	reason = waitPaused(t, r, p, 3)
	wantAll(t, "retype pause reason", reason, "table customers", `column "phone"`, "changed type from text to integer",
		`ALTER TABLE "customers" ALTER COLUMN "phone" TYPE text`, "lattice connectors resume crm")
	if name("1") != "Ann 3" {
		t.Errorf("the change after the retype was captured before the pause: %q", name("1"))
	}
	r = run()
	eventually(t, "after resuming, the retyped column's change arrives", func() (bool, string) {
		return name("1") == "Ann 4" && e.field(t, "1", "phone") == "44", name("1") + " " + e.field(t, "1", "phone")
	})
	if l := p.list(); len(l) != 3 {
		t.Errorf("pauses %q, want 3", l)
	}
	r.stop()
}

// TestSchemaDriftProjection: a project-only connector (no change stream,
// so no Relation messages) notices drift by the catalog: a write the
// database refuses because a mapped column changed type pauses the
// connector rather than sending every record to the dead-letter queue;
// resumed, it takes the new type; and the periodic catalog check pauses it
// when a mapped column is dropped, with no write needed.
func TestSchemaDriftProjection(t *testing.T) {
	e := setupOne(t)
	cp := &memCheckpoints{epoch: 1}
	p := &pauser{}
	dlq := &letters{}
	decl := map[string]any{"kind": "postgres", "dsn": e.crm.DSN("crm"), "capture": false,
		"tables": map[string]any{"customers": map[string]any{"entity": "contact", "key": []any{"customer_id"},
			"columns": map[string]any{"full_name": "name", "email_address": "email", "phone": "phone"}}}}
	ent, _ := e.schema.s.Entity("contact")
	ctx := context.Background()
	put := func(id string, f map[string]string) {
		t.Helper()
		if _, err := e.store.Write(ctx, "contact", id, "api", putFields(ent, f)); err != nil {
			t.Fatal(err)
		}
	}
	dbRow := func(id string) string {
		return row(t, e.crm, "crm", "SELECT full_name, phone FROM customers WHERE customer_id = "+id)
	}
	r := e.runPaused(t, "crm", decl, p, postgres.WithCheckpoints(cp, 1), postgres.WithDeadLetters(dlq))
	put("1", map[string]string{"name": "Ann", "phone": "1"})
	eventually(t, "record 1 projected", func() (bool, string) { return dbRow("1") == "Ann 1", dbRow("1") })

	e.crm.Exec(t, "crm", `ALTER TABLE customers ALTER COLUMN phone TYPE int USING phone::int`)
	put("2", map[string]string{"name": "Bob", "phone": "22"})
	put("3", map[string]string{"name": "Cy", "phone": "33"})
	reason := waitPaused(t, r, p, 1)
	wantAll(t, "pause reason", reason, "table customers", `column "phone"`, "changed type from text to integer")
	if n := dlq.count(); n != 0 {
		t.Errorf("%d records went to the dead-letter queue on a schema change", n)
	}
	if dbRow("2") != "<none>" {
		t.Errorf("record 2 landed: %s", dbRow("2"))
	}
	r = e.runPaused(t, "crm", decl, p, postgres.WithCheckpoints(cp, 1), postgres.WithDeadLetters(dlq), postgres.WithSchemaCheckEvery(200*time.Millisecond))
	eventually(t, "resumed with the new type, the records land", func() (bool, string) {
		return dbRow("2") == "Bob 22" && dbRow("3") == "Cy 33", dbRow("2") + " " + dbRow("3")
	})

	// No write at all: the periodic catalog check sees the drop.
	e.crm.Exec(t, "crm", `ALTER TABLE customers DROP COLUMN email_address`)
	reason = waitPaused(t, r, p, 2)
	wantAll(t, "pause reason", reason, "table customers", `column "email_address"`, "field email", "was dropped")
	if n := dlq.count(); n != 0 {
		t.Errorf("%d dead letters", n)
	}
}
