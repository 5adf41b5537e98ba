package postgres_test

import (
	"context"
	"encoding/json"
	"errors"
	"fmt"
	"log/slog"
	"strings"
	"sync"
	"testing"
	"time"

	"github.com/jackc/pglogrepl"
	"github.com/jackc/pgx/v5/pgconn"
	"github.com/jackc/pgx/v5/pgproto3"

	"github.com/lattice-sync/lattice/connectors/postgres"
	"github.com/lattice-sync/lattice/connectors/postgres/pgtest"
	"github.com/lattice-sync/lattice/crdt"
	"github.com/lattice-sync/lattice/storage"
)

// memCheckpoints is the control plane's checkpoint store for connectors
// run inside a test (the cluster keeps them in Raft): writes under another
// epoch are refused.
type memCheckpoints struct {
	mu     sync.Mutex
	epoch  uint64
	data   map[string][]byte
	writes int
	// down makes every write fail, as when the owner dies before its
	// next checkpoint (or the control plane is unreachable).
	down bool
}

var errStale = errors.New("stale epoch")

func (m *memCheckpoints) WriteCheckpoint(_ context.Context, name string, epoch uint64, data []byte) error {
	m.mu.Lock()
	defer m.mu.Unlock()
	if epoch != m.epoch {
		return fmt.Errorf("%w: %d, current %d", errStale, epoch, m.epoch)
	}
	if m.down {
		return errors.New("control plane unreachable (test)")
	}
	if m.data == nil {
		m.data = map[string][]byte{}
	}
	m.data[name] = append([]byte(nil), data...)
	m.writes++
	return nil
}

func (m *memCheckpoints) ReadCheckpoint(name string) (uint64, []byte, bool) {
	m.mu.Lock()
	defer m.mu.Unlock()
	d, ok := m.data[name]
	return m.epoch, d, ok
}

func (m *memCheckpoints) get(t *testing.T, name string) map[string]any {
	t.Helper()
	_, d, ok := m.ReadCheckpoint(name)
	if !ok {
		return nil
	}
	var out map[string]any
	if err := json.Unmarshal(d, &out); err != nil {
		t.Fatal(err)
	}
	return out
}

func (m *memCheckpoints) set(name string, v map[string]any) {
	d, _ := json.Marshal(v)
	m.mu.Lock()
	m.data[name] = d
	m.mu.Unlock()
}

// resnapshots records what the connector reports.
type resnapshots struct {
	mu      sync.Mutex
	reasons []string
}

func (r *resnapshots) Captured(string, int, time.Duration) {}
func (r *resnapshots) Projected(string, time.Duration)     {}
func (r *resnapshots) Resnapshot(_, reason string) {
	r.mu.Lock()
	r.reasons = append(r.reasons, reason)
	r.mu.Unlock()
}

func (r *resnapshots) list() []string {
	r.mu.Lock()
	defer r.mu.Unlock()
	return append([]string(nil), r.reasons...)
}

// runCRM runs a capture-only crm connector with checkpoints until the
// returned stop is called; stop returns Run's error.
func (e *env) runCRM(t *testing.T, cp *memCheckpoints, obs *resnapshots) (stop func() error) {
	t.Helper()
	stop, _ = e.runCRMEnded(t, cp, obs)
	return stop
}

// runCRMEnded is runCRM that also returns a channel closed when Run ends on
// its own.
func (e *env) runCRMEnded(t *testing.T, cp *memCheckpoints, obs *resnapshots) (stop func() error, ended <-chan struct{}) {
	t.Helper()
	cfg, err := postgres.ParseConfig("crm", map[string]any{"kind": "postgres", "dsn": e.crm.DSN("crm"), "project": false, "acks": 1,
		"tables": map[string]any{"customers": map[string]any{"entity": "contact", "key": []any{"customer_id"},
			"columns": map[string]any{"full_name": "name", "email_address": "email", "phone": "phone"}}}}, e.schema.s)
	if err != nil {
		t.Fatal(err)
	}
	c := postgres.New(cfg, e.store, e.schema, slog.New(slog.NewTextHandler(testWriter{t}, &slog.HandlerOptions{Level: slog.LevelInfo})),
		postgres.WithCheckpoints(cp, cp.epoch), postgres.WithObserver(obs))
	ctx, cancel := context.WithCancel(context.Background())
	done := make(chan error, 1)
	endedCh := make(chan struct{})
	go func() { done <- c.Run(ctx); close(endedCh) }()
	var once sync.Once
	var runErr error
	stop = func() error {
		once.Do(func() {
			cancel()
			select {
			case runErr = <-done:
			case <-time.After(20 * time.Second):
				runErr = errors.New("connector did not stop in 20 s")
			}
		})
		return runErr
	}
	t.Cleanup(func() { stop() })
	return stop, endedCh
}

func (e *env) name(t *testing.T, id string) string {
	t.Helper()
	rec, err := e.store.Get("contact", id)
	if errors.Is(err, storage.ErrNotFound) {
		return "<none>"
	}
	if err != nil {
		t.Fatal(err)
	}
	ent, _ := e.schema.s.Entity("contact")
	fields, _ := ent.View(rec)
	for _, f := range fields {
		if f.Name == "name" {
			return f.Value.Str()
		}
	}
	return "<no name>"
}

func waitCheckpoint(t *testing.T, cp *memCheckpoints, what string, cond func(map[string]any) bool) map[string]any {
	t.Helper()
	var last map[string]any
	eventually(t, what, func() (bool, string) {
		last = cp.get(t, "crm")
		return last != nil && cond(last), fmt.Sprint(last)
	})
	return last
}

// TestResumeInsideTransaction: a checkpoint that names a transaction by its
// commit LSN and the number of its changes already captured resumes exactly
// there: the changes before that ordinal are not captured again (several
// changes share one LSN, so an LSN alone could not say where to resume).
func TestResumeInsideTransaction(t *testing.T) {
	e := setup(t)
	cp := &memCheckpoints{epoch: 1}
	obs := &resnapshots{}
	stop := e.runCRM(t, cp, obs)
	snap := waitCheckpoint(t, cp, "snapshot checkpoint", func(m map[string]any) bool { return m["snapshot"] == true })
	if err := stop(); err != nil && !errors.Is(err, context.Canceled) {
		t.Fatal(err)
	}

	// A second pgoutput slot, to learn the transaction's commit LSN exactly
	// as the connector's stream will show it.
	e.crm.Exec(t, "crm", `SELECT pg_create_logical_replication_slot('peek', 'pgoutput')`)
	e.crm.Exec(t, "crm", `INSERT INTO customers SELECT i, 'bulk '||i, NULL, NULL FROM generate_series(101, 110) i`)
	commit := commitLSNs(t, e.crm, "crm", "peek", "lattice_crm")[0]

	// As if the last owner had made the first 4 of the 10 changes durable.
	snap["tx_commit_lsn"], snap["tx_changes"] = commit.String(), 4
	cp.set("crm", snap)
	stop = e.runCRM(t, cp, obs)
	defer stop()
	eventually(t, "changes after the resume point captured", func() (bool, string) {
		return e.name(t, "110") == "bulk 110", e.name(t, "110")
	})
	for i := 101; i <= 110; i++ {
		got := e.name(t, fmt.Sprint(i))
		if i <= 104 && got != "<none>" {
			t.Errorf("row %d was before the resume point but was captured again: %q", i, got)
		}
		if i > 104 && got != fmt.Sprintf("bulk %d", i) {
			t.Errorf("row %d after the resume point: %q", i, got)
		}
	}
	if r := obs.list(); len(r) != 0 {
		t.Errorf("a trusted slot was re-snapshotted: %v", r)
	}
}

// commitLSNs reads the commit LSNs of the transactions waiting in a
// pgoutput slot (without confirming them).
func commitLSNs(t *testing.T, s *pgtest.Server, db, slot, pub string) []pglogrepl.LSN {
	t.Helper()
	ctx, cancel := context.WithTimeout(context.Background(), 10*time.Second)
	defer cancel()
	conn, err := pgconn.Connect(ctx, s.ReplicationDSN(db))
	if err != nil {
		t.Fatal(err)
	}
	defer conn.Close(context.Background())
	if err := pglogrepl.StartReplication(ctx, conn, slot, 0, pglogrepl.StartReplicationOptions{PluginArgs: []string{
		"proto_version '2'", fmt.Sprintf("publication_names '%s'", pub)}}); err != nil {
		t.Fatal(err)
	}
	var out []pglogrepl.LSN
	for {
		rctx, rcancel := context.WithTimeout(ctx, time.Second)
		raw, err := conn.ReceiveMessage(rctx)
		rcancel()
		if err != nil {
			if len(out) > 0 && pgconn.Timeout(err) {
				return out
			}
			t.Fatalf("peek slot %s: %v", slot, err)
		}
		cd, ok := raw.(*pgproto3.CopyData)
		if !ok || len(cd.Data) == 0 || cd.Data[0] != pglogrepl.XLogDataByteID {
			continue
		}
		xld, err := pglogrepl.ParseXLogData(cd.Data[1:])
		if err != nil {
			t.Fatal(err)
		}
		msg, err := pglogrepl.ParseV2(xld.WALData, false)
		if err != nil {
			t.Fatal(err)
		}
		if b, ok := msg.(*pglogrepl.BeginMessage); ok {
			out = append(out, b.FinalLSN)
		}
	}
}

// runWithRow1 starts crm's connector, waits for its snapshot, inserts row 1
// and waits until a checkpoint covers its capture.
func (e *env) runWithRow1(t *testing.T, cp *memCheckpoints, obs *resnapshots) func() error {
	t.Helper()
	stop := e.runCRM(t, cp, obs)
	waitCheckpoint(t, cp, "snapshot checkpoint", func(m map[string]any) bool { return m["snapshot"] == true })
	e.crm.Exec(t, "crm", `INSERT INTO customers VALUES (1, 'Ann', NULL, NULL)`)
	eventually(t, "row 1 captured", func() (bool, string) { return e.name(t, "1") == "Ann", e.name(t, "1") })
	applied := e.store.Applied().Get("n1")
	waitCheckpoint(t, cp, "checkpoint covers row 1", func(m map[string]any) bool { return coversSeq(m, applied) })
	return stop
}

// TestResumeNoDuplicates: a restart resumes from the checkpoint, so changes
// captured before it are not captured again (one version each) and changes
// made while the connector was down are captured once.
func TestResumeNoDuplicates(t *testing.T) {
	e := setup(t)
	cp := &memCheckpoints{epoch: 1}
	obs := &resnapshots{}
	stop := e.runWithRow1(t, cp, obs)
	if err := stop(); err != nil && !errors.Is(err, context.Canceled) {
		t.Fatal(err)
	}
	e.crm.Exec(t, "crm", `INSERT INTO customers VALUES (2, 'Bob', NULL, NULL)`)
	stop = e.runCRM(t, cp, obs)
	defer stop()
	eventually(t, "row 2 captured after the restart", func() (bool, string) { return e.name(t, "2") == "Bob", e.name(t, "2") })
	time.Sleep(300 * time.Millisecond)
	for id, want := range map[string]int{"1": 1, "2": 1} {
		vs, err := e.store.Versions("contact", id, "name")
		if err != nil {
			t.Fatal(err)
		}
		if len(vs) != want {
			t.Errorf("record %s has %d versions of name, want %d (captured twice?)", id, len(vs), want)
		}
	}
	if r := obs.list(); len(r) != 0 {
		t.Errorf("a trusted slot was re-snapshotted: %v", r)
	}
}

// TestResumeBehindCheckpointNoRecapture: the connector captured changes its
// checkpoint never recorded (its owner died before the next checkpoint, or
// the control plane was unreachable); the next run streams them again from
// the checkpoint and recognises each as captured already (the records'
// source registers), so none becomes a second edit.
func TestResumeBehindCheckpointNoRecapture(t *testing.T) {
	e := setup(t)
	cp := &memCheckpoints{epoch: 1}
	obs := &resnapshots{}
	stop := e.runWithRow1(t, cp, obs)
	before := cp.get(t, "crm")

	cp.mu.Lock()
	cp.down = true
	cp.mu.Unlock()
	e.crm.Exec(t, "crm", `UPDATE customers SET full_name = 'Ann 2' WHERE customer_id = 1`)
	e.crm.Exec(t, "crm", `BEGIN; INSERT INTO customers VALUES (2, 'Bob', NULL, NULL); INSERT INTO customers VALUES (3, 'Cy', NULL, NULL); UPDATE customers SET full_name = 'Bob 2' WHERE customer_id = 2; COMMIT`)
	eventually(t, "changes captured past the checkpoint", func() (bool, string) {
		got := e.name(t, "1") + " " + e.name(t, "2") + " " + e.name(t, "3")
		return got == "Ann 2 Bob 2 Cy", got
	})
	if err := stop(); err != nil && !errors.Is(err, context.Canceled) {
		t.Fatal(err)
	}
	if now := cp.get(t, "crm"); now["lsn"] != before["lsn"] || now["seq"] != before["seq"] {
		t.Fatalf("the checkpoint moved while the control plane was down: %v, was %v", now, before)
	}
	cp.mu.Lock()
	cp.down = false
	cp.mu.Unlock()
	stop = e.runCRM(t, cp, obs)
	defer stop()
	e.crm.Exec(t, "crm", `INSERT INTO customers VALUES (4, 'Di', NULL, NULL)`)
	eventually(t, "row 4 captured after the restart", func() (bool, string) { return e.name(t, "4") == "Di", e.name(t, "4") })
	for id, want := range map[string]int{"1": 2, "2": 2, "3": 1, "4": 1} {
		vs, err := e.store.Versions("contact", id, "name")
		if err != nil {
			t.Fatal(err)
		}
		if len(vs) != want {
			t.Errorf("record %s has %d versions of name, want %d (captured twice?): %v", id, len(vs), want, vs)
		}
	}
	if r := obs.list(); len(r) != 0 {
		t.Errorf("a trusted slot was re-snapshotted: %v", r)
	}
}

// TestUntrustedSlotResnapshots: a slot that disappeared, or was dropped and
// recreated (so changes in between never reached it), is detected and
// reported, and capture starts over from a new snapshot that holds those
// changes.
func TestUntrustedSlotResnapshots(t *testing.T) {
	for _, tc := range []struct {
		name     string
		recreate bool
		want     string
	}{
		{"missing", false, "is missing"},
		{"recreated", true, "recreated"},
	} {
		t.Run(tc.name, func(t *testing.T) {
			e := setup(t)
			cp := &memCheckpoints{epoch: 1}
			obs := &resnapshots{}
			stop := e.runCRM(t, cp, obs)
			waitCheckpoint(t, cp, "snapshot checkpoint", func(m map[string]any) bool { return m["snapshot"] == true })
			e.crm.Exec(t, "crm", `INSERT INTO customers VALUES (1, 'Ann', NULL, NULL)`)
			eventually(t, "row 1 captured", func() (bool, string) { return e.name(t, "1") == "Ann", e.name(t, "1") })
			if err := stop(); err != nil && !errors.Is(err, context.Canceled) {
				t.Fatal(err)
			}
			e.crm.Exec(t, "crm", `SELECT pg_drop_replication_slot('lattice_crm')`)
			e.crm.Exec(t, "crm", `INSERT INTO customers VALUES (2, 'Bob', NULL, NULL)`)
			if tc.recreate {
				e.crm.Exec(t, "crm", `SELECT pg_create_logical_replication_slot('lattice_crm', 'pgoutput')`)
				e.crm.Exec(t, "crm", `INSERT INTO customers VALUES (3, 'Cy', NULL, NULL)`)
			}
			stop = e.runCRM(t, cp, obs)
			defer stop()
			eventually(t, "rows the slot never saw are captured by the new snapshot", func() (bool, string) {
				ok := e.name(t, "2") == "Bob" && (!tc.recreate || e.name(t, "3") == "Cy")
				return ok, e.name(t, "2") + " " + e.name(t, "3")
			})
			r := obs.list()
			if len(r) != 1 || !strings.Contains(r[0], tc.want) {
				t.Fatalf("re-snapshot reasons %q, want one containing %q", r, tc.want)
			}
			e.crm.Exec(t, "crm", `UPDATE customers SET full_name = 'Ann 2' WHERE customer_id = 1`)
			eventually(t, "streaming after the re-snapshot", func() (bool, string) { return e.name(t, "1") == "Ann 2", e.name(t, "1") })
		})
	}
}

// TestInvalidatedSlotResnapshots: the server invalidates a slot that holds
// back more WAL than max_slot_wal_keep_size; the connector reports it and
// starts over from a new snapshot instead of trusting it.
func TestInvalidatedSlotResnapshots(t *testing.T) {
	e := setupWith(t, pgtest.WithConf("max_slot_wal_keep_size", "1MB"))
	cp := &memCheckpoints{epoch: 1}
	obs := &resnapshots{}
	stop := e.runCRM(t, cp, obs)
	waitCheckpoint(t, cp, "snapshot checkpoint", func(m map[string]any) bool { return m["snapshot"] == true })
	if err := stop(); err != nil && !errors.Is(err, context.Canceled) {
		t.Fatal(err)
	}
	e.crm.Exec(t, "crm", `INSERT INTO customers VALUES (7, 'While invalid', NULL, NULL)`)
	e.crm.Exec(t, "crm", `CREATE TABLE filler (v text)`)
	eventually(t, "slot invalidated", func() (bool, string) {
		e.crm.Exec(t, "crm", `INSERT INTO filler SELECT repeat('x', 1000) FROM generate_series(1, 20000); SELECT pg_switch_wal(); CHECKPOINT`)
		st := row(t, e.crm, "crm", `SELECT wal_status FROM pg_replication_slots WHERE slot_name = 'lattice_crm'`)
		return st == "lost", st
	})
	stop = e.runCRM(t, cp, obs)
	defer stop()
	eventually(t, "row written while the slot was invalid is captured", func() (bool, string) {
		return e.name(t, "7") == "While invalid", e.name(t, "7")
	})
	r := obs.list()
	if len(r) != 1 || !strings.Contains(r[0], "invalidated") {
		t.Fatalf("re-snapshot reasons %q, want one saying the slot was invalidated", r)
	}
}

// TestUnfinishedSnapshotResnapshots: a slot whose initial snapshot never
// finished (no checkpoint says so) is not trusted.
func TestUnfinishedSnapshotResnapshots(t *testing.T) {
	e := setup(t)
	// The slot exists (as after a crash during the snapshot) but no
	// checkpoint records a finished snapshot.
	e.crm.Exec(t, "crm", `SELECT pg_create_logical_replication_slot('lattice_crm', 'pgoutput')`)
	e.crm.Exec(t, "crm", `INSERT INTO customers VALUES (5, 'Before', NULL, NULL)`)
	cp := &memCheckpoints{epoch: 1}
	obs := &resnapshots{}
	stop := e.runCRM(t, cp, obs)
	defer stop()
	eventually(t, "the row is captured by a fresh snapshot", func() (bool, string) { return e.name(t, "5") == "Before", e.name(t, "5") })
	if r := obs.list(); len(r) != 1 || !strings.Contains(r[0], "never finished") {
		t.Fatalf("re-snapshot reasons %q, want one saying the snapshot never finished", r)
	}
}

// TestStaleEpochStops: a checkpoint refused because the connector moved
// stops the connector with an error saying so.
func TestStaleEpochStops(t *testing.T) {
	e := setup(t)
	cp := &memCheckpoints{epoch: 1}
	stop, ended := e.runCRMEnded(t, cp, &resnapshots{})
	waitCheckpoint(t, cp, "snapshot checkpoint", func(m map[string]any) bool { return m["snapshot"] == true })
	cp.mu.Lock()
	cp.epoch = 2 // the connector was placed elsewhere
	cp.mu.Unlock()
	e.crm.Exec(t, "crm", `INSERT INTO customers VALUES (1, 'Ann', NULL, NULL)`)
	select {
	case <-ended:
	case <-time.After(20 * time.Second):
		t.Fatal("the connector kept running after its checkpoint was refused for a stale epoch")
	}
	err := stop()
	if err == nil || !errors.Is(err, errStale) || !strings.Contains(err.Error(), "move") {
		t.Fatalf("Run ended with %v, want the stale-epoch refusal explaining the connector moved", err)
	}
}

// TestProjectionLock: while another session holds the connector's
// projection lock on the database (another node still writing into it),
// the connector refuses to project and says why; once the lock is free it
// projects.
func TestProjectionLock(t *testing.T) {
	e := setup(t)
	ctx, cancel := context.WithTimeout(context.Background(), time.Minute)
	defer cancel()
	holder, err := pgconn.Connect(ctx, e.billing.DSN("billing"))
	if err != nil {
		t.Fatal(err)
	}
	defer holder.Close(context.Background())
	if _, err := holder.Exec(ctx, `SELECT pg_advisory_lock(hashtextextended('lattice:billing', 0))`).ReadAll(); err != nil {
		t.Fatal(err)
	}
	cfg, err := postgres.ParseConfig("billing", map[string]any{"kind": "postgres", "dsn": e.billing.DSN("billing"), "capture": false,
		"tables": map[string]any{"clients": map[string]any{"entity": "contact", "key": []any{"client_ref"},
			"columns": map[string]any{"name": "name", "email": "email", "tel": "phone"}}}}, e.schema.s)
	if err != nil {
		t.Fatal(err)
	}
	ent, _ := e.schema.s.Entity("contact")
	if _, err := e.store.Write(ctx, "contact", "1", "api", putFields(ent, map[string]string{"name": "Ann"})); err != nil {
		t.Fatal(err)
	}
	newConn := func() *postgres.Connector {
		return postgres.New(cfg, e.store, e.schema, slog.New(slog.NewTextHandler(testWriter{t}, nil)))
	}
	rctx, rcancel := context.WithTimeout(ctx, 10*time.Second)
	err = newConn().Run(rctx)
	rcancel()
	if err == nil || !strings.Contains(err.Error(), "projection lock") {
		t.Fatalf("Run while the lock is held: %v, want a refusal naming the projection lock", err)
	}
	if got := row(t, e.billing, "billing", `SELECT count(*) FROM clients`); got != "0" {
		t.Fatalf("billing has %s rows: the connector wrote without the lock", got)
	}
	if _, err := holder.Exec(ctx, `SELECT pg_advisory_unlock_all()`).ReadAll(); err != nil {
		t.Fatal(err)
	}
	rctx, rcancel = context.WithCancel(ctx)
	defer rcancel()
	go newConn().Run(rctx)
	eventually(t, "projected once the lock is free", func() (bool, string) {
		r := row(t, e.billing, "billing", `SELECT name FROM clients WHERE client_ref = 1`)
		return r == "Ann", r
	})
}

// putFields is a store write of string fields, as an API put without a context.
func putFields(ent *crdt.Entity, fields map[string]string) storage.PrepareFunc {
	vals := map[string]crdt.Value{}
	for k, v := range fields {
		vals[k] = crdt.String(v)
	}
	return func(rec *crdt.Record, env storage.Env) ([]crdt.Write, error) {
		return ent.PreparePut(rec, vals, crdt.EditContext{Applied: env.Applied})
	}
}

// TestNoStaleProjectionIntoSource: while a database's own changes of a row
// are still being captured, the store holds an older state of the row;
// projection must not write that older state back into the database. Under
// a burst of updates of a few rows, a connector with only its own database
// writes nothing into it.
func TestNoStaleProjectionIntoSource(t *testing.T) {
	e := setup(t)
	e.crm.Exec(t, "crm", `INSERT INTO customers SELECT i, 'n'||i, NULL, '0' FROM generate_series(1, 20) i`)
	cfg, err := postgres.ParseConfig("crm", map[string]any{"kind": "postgres", "dsn": e.crm.DSN("crm"),
		"tables": map[string]any{"customers": map[string]any{"entity": "contact", "key": []any{"customer_id"},
			"columns": map[string]any{"full_name": "name", "email_address": "email", "phone": "phone"}}}}, e.schema.s)
	if err != nil {
		t.Fatal(err)
	}
	c := postgres.New(cfg, e.store, e.schema, slog.New(slog.NewTextHandler(testWriter{t}, &slog.HandlerOptions{Level: slog.LevelInfo})), postgres.WithReport())
	ctx, cancel := context.WithCancel(context.Background())
	done := make(chan error, 1)
	go func() { done <- c.Run(ctx) }()
	defer func() { cancel(); <-done }()
	eventually(t, "snapshot captured", func() (bool, string) { return e.name(t, "20") == "n20", e.name(t, "20") })
	start := c.Report().ProjectedRecords
	// Many updates of few rows, from several sessions at once.
	var wg sync.WaitGroup
	for w := 0; w < 4; w++ {
		wg.Add(1)
		go func() {
			defer wg.Done()
			conn, err := pgconn.Connect(ctx, e.crm.DSN("crm"))
			if err != nil {
				t.Error(err)
				return
			}
			defer conn.Close(context.Background())
			for i := 0; i < 300; i++ {
				q := fmt.Sprintf("UPDATE customers SET phone = '%d-%d' WHERE customer_id = %d", w, i, 1+(i*7+w)%20)
				if _, err := conn.Exec(ctx, q).ReadAll(); err != nil {
					t.Error(err)
					return
				}
			}
		}()
	}
	wg.Wait()
	want := query(t, e.crm, "crm", `SELECT customer_id, phone FROM customers ORDER BY 1`)
	eventually(t, "store holds the last phone of every row", func() (bool, string) {
		for _, r := range want {
			f := strings.Fields(r)
			rec, err := e.store.Get("contact", f[0])
			if err != nil {
				return false, err.Error()
			}
			ent, _ := e.schema.s.Entity("contact")
			fields, _ := ent.View(rec)
			for _, fv := range fields {
				if fv.Name == "phone" && fv.Value.Str() != f[1] {
					return false, fmt.Sprintf("row %s: store %q, database %q", f[0], fv.Value.Str(), f[1])
				}
			}
		}
		return true, ""
	})
	time.Sleep(500 * time.Millisecond)
	if got := query(t, e.crm, "crm", `SELECT customer_id, phone FROM customers ORDER BY 1`); strings.Join(got, ",") != strings.Join(want, ",") {
		t.Errorf("the database changed after its own updates ended (projection wrote into it):\nbefore %v\nafter  %v", want, got)
	}
	if n := c.Report().ProjectedRecords - start; n != 0 {
		t.Errorf("%d records were projected into the database whose own changes they were", n)
	}
}

// TestRestartKeepsConcurrentFieldEdits: while crm's connector is down,
// billing changes a row's email and crm changes the same row's phone.
// After crm's connector restarts (it remembers nothing of the row), crm's
// change must still be an edit of the phone only (the stream carries the
// old row: REPLICA IDENTITY FULL), so both edits survive on both sides
// instead of crm's stale email overwriting billing's.
func TestRestartKeepsConcurrentFieldEdits(t *testing.T) {
	e := setup(t)
	e.crm.Exec(t, "crm", `INSERT INTO customers VALUES (1, 'Ann', 'ann@old.example', '111')`)
	run := func(name string, db *pgtest.Server, dbName, table string, cols map[string]any, key string) func() {
		cfg, err := postgres.ParseConfig(name, map[string]any{"kind": "postgres", "dsn": db.DSN(dbName),
			"tables": map[string]any{table: map[string]any{"entity": "contact", "key": []any{key}, "columns": cols}}}, e.schema.s)
		if err != nil {
			t.Fatal(err)
		}
		c := postgres.New(cfg, e.store, e.schema, slog.New(slog.NewTextHandler(testWriter{t}, &slog.HandlerOptions{Level: slog.LevelInfo})))
		ctx, cancel := context.WithCancel(context.Background())
		done := make(chan struct{})
		go func() { defer close(done); c.Run(ctx) }()
		stop := func() { cancel(); <-done }
		t.Cleanup(stop)
		return stop
	}
	crmCols := map[string]any{"full_name": "name", "email_address": "email", "phone": "phone"}
	billCols := map[string]any{"name": "name", "email": "email", "tel": "phone"}
	stopCRM := run("crm", e.crm, "crm", "customers", crmCols, "customer_id")
	run("billing", e.billing, "billing", "clients", billCols, "client_ref")
	billingRow := func() string {
		return row(t, e.billing, "billing", `SELECT name, email, tel FROM clients WHERE client_ref = 1`)
	}
	crmRow := func() string {
		return row(t, e.crm, "crm", `SELECT full_name, email_address, phone FROM customers WHERE customer_id = 1`)
	}
	eventually(t, "row synced", func() (bool, string) { return billingRow() == "Ann ann@old.example 111", billingRow() })

	stopCRM()
	e.billing.Exec(t, "billing", `UPDATE clients SET email = 'ann@billing.example' WHERE client_ref = 1`)
	eventually(t, "billing's edit in the store", func() (bool, string) {
		rec, _ := e.store.Get("contact", "1")
		ent, _ := e.schema.s.Entity("contact")
		fields, _ := ent.View(rec)
		for _, f := range fields {
			if f.Name == "email" {
				return f.Value.Str() == "ann@billing.example", f.Value.Str()
			}
		}
		return false, "no email"
	})
	time.Sleep(100 * time.Millisecond)
	e.crm.Exec(t, "crm", `UPDATE customers SET phone = '999' WHERE customer_id = 1`) // crm has not seen billing's email
	run("crm", e.crm, "crm", "customers", crmCols, "customer_id")
	eventually(t, "both edits on both sides", func() (bool, string) {
		a, b := crmRow(), billingRow()
		return a == "Ann ann@billing.example 999" && b == a, a + " | " + b
	})
}

// coversSeq reports whether checkpoint m covers the store's edits up to
// applied (read once the edits were visible, which can be just before
// they are durable and counted: so at least, not exactly).
func coversSeq(m map[string]any, applied uint64) bool {
	seq, _ := m["seq"].(float64)
	return seq >= float64(applied)
}
