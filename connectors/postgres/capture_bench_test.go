package postgres_test

import (
	"context"
	"fmt"
	"io"
	"log/slog"
	"os"
	"os/exec"
	"path/filepath"
	"sort"
	"strconv"
	"sync"
	"testing"
	"time"

	"github.com/lattice-sync/lattice/connectors"
	"github.com/lattice-sync/lattice/connectors/postgres"
	"github.com/lattice-sync/lattice/connectors/postgres/pgtest"
	"github.com/lattice-sync/lattice/crdt"
	"github.com/lattice-sync/lattice/storage"
)

// lagRecorder keeps every capture lag the connector reports.
type lagRecorder struct {
	mu   sync.Mutex
	lags []time.Duration
	n    int
}

func (l *lagRecorder) Captured(_ string, edits int, lag time.Duration) {
	l.mu.Lock()
	l.lags = append(l.lags, lag)
	l.n += edits
	l.mu.Unlock()
}
func (l *lagRecorder) Projected(string, time.Duration) {}
func (l *lagRecorder) Resnapshot(string, string)       {}

// BenchmarkCaptureLag measures capture alone, in process: from a commit in
// PostgreSQL (pgbench, single-row UPDATEs at a fixed rate) to its edits
// being durable in a store (one node, no cluster, no projection).
//
//	go test ./connectors/postgres/ -run '^$' -bench CaptureLag -benchtime 1x
func BenchmarkCaptureLag(b *testing.B) {
	src := pgtest.Start(b)
	bin, err := pgtest.Bin()
	if err != nil {
		b.Fatal(err)
	}
	src.CreateDB(b, "crm")
	src.Exec(b, "crm", `CREATE TABLE customers (customer_id int PRIMARY KEY, full_name text, email_address text, phone text)`)
	src.Exec(b, "crm", `INSERT INTO customers SELECT i, 'name '||i, 'c'||i||'@example.com', '0' FROM generate_series(1, 1000) i`)
	sch, err := crdt.ParseSchema("s.yaml", []byte(schemaYAML))
	if err != nil {
		b.Fatal(err)
	}
	scfg := storage.DefaultConfig(b.TempDir(), "n1")
	scfg.Logger = slog.New(slog.NewTextHandler(io.Discard, nil))
	store, err := storage.Open(scfg)
	if err != nil {
		b.Fatal(err)
	}
	defer store.Close()
	cfg, err := postgres.ParseConfig("crm", map[string]any{"kind": "postgres", "dsn": src.DSN("crm"), "project": false,
		"tables": map[string]any{"customers": map[string]any{"entity": "contact", "key": []any{"customer_id"},
			"columns": map[string]any{"full_name": "name", "email_address": "email", "phone": "phone"}}}}, sch)
	if err != nil {
		b.Fatal(err)
	}
	rec := &lagRecorder{}
	start := func() func() {
		c := postgres.New(cfg, store, staticSchema{sch}, slog.New(slog.NewTextHandler(io.Discard, nil)), postgres.WithObserver(rec))
		ctx, cancel := context.WithCancel(context.Background())
		done := make(chan error, 1)
		go func() { done <- c.Run(ctx) }()
		return func() { cancel(); <-done }
	}
	stop := start()
	defer func() { stop() }()
	for store.Applied().Get("n1") < 1000 { // the initial snapshot
		time.Sleep(50 * time.Millisecond)
	}
	script := filepath.Join(b.TempDir(), "update.sql")
	os.WriteFile(script, []byte("\\set id random(1, 1000)\nUPDATE customers SET phone = :id || '-' || random() WHERE customer_id = :id;\n"), 0o644)
	os.Chmod(filepath.Dir(script), 0o755)
	for _, rate := range []int{1000, 4000} {
		rec.reset()
		out, err := exec.Command(filepath.Join(bin, "pgbench"), "-n", "-h", "127.0.0.1", "-p", strconv.Itoa(src.Port), "-U", "postgres",
			"-f", script, "-R", strconv.Itoa(rate), "-T", "5", "-c", "8", "-j", "2", "crm").CombinedOutput()
		if err != nil {
			b.Fatalf("pgbench: %v\n%s", err, out)
		}
		time.Sleep(time.Second)
		p50, p99, groups, edits := rec.stats()
		fmt.Printf("capture only, %d updates/s offered (%s): %d edits in %d groups, group lag p50 %v, p99 %v\n",
			rate, lastLine(string(out)), edits, groups, p50, p99)
	}
	// Backlog: 20,000 updates while the connector is stopped, then the time
	// from its start until all are durable edits.
	stop()
	out, err := exec.Command(filepath.Join(bin, "pgbench"), "-n", "-h", "127.0.0.1", "-p", strconv.Itoa(src.Port), "-U", "postgres",
		"-f", script, "-t", "2500", "-c", "8", "-j", "2", "crm").CombinedOutput()
	if err != nil {
		b.Fatalf("pgbench: %v\n%s", err, out)
	}
	before := store.Applied().Get("n1")
	t0 := time.Now()
	stop = start()
	for store.Applied().Get("n1") < before+19000 && time.Since(t0) < time.Minute {
		time.Sleep(5 * time.Millisecond)
	}
	// Changes of a row that end where they began are not edits; wait for quiet.
	for last := uint64(0); store.Applied().Get("n1") != last; {
		last = store.Applied().Get("n1")
		time.Sleep(100 * time.Millisecond)
	}
	took := time.Since(t0) - 100*time.Millisecond
	n := store.Applied().Get("n1") - before
	fmt.Printf("capture only, backlog of 20000 updates: %d edits durable %v after start: %.0f edits/s\n", n, took.Round(time.Millisecond), float64(n)/took.Seconds())
}

func (l *lagRecorder) reset() {
	l.mu.Lock()
	l.lags, l.n = nil, 0
	l.mu.Unlock()
}

func (l *lagRecorder) stats() (p50, p99 time.Duration, groups, edits int) {
	l.mu.Lock()
	defer l.mu.Unlock()
	s := append([]time.Duration(nil), l.lags...)
	sort.Slice(s, func(i, j int) bool { return s[i] < s[j] })
	if len(s) == 0 {
		return 0, 0, 0, l.n
	}
	return s[len(s)/2], s[len(s)*99/100], len(s), l.n
}

// BenchmarkBootstrap measures the initial snapshot of a table that already
// holds LATTICE_BENCH_ROWS rows (default 1,000,000): from the connector's
// start to every row being a durable record in one store (capture only),
// and the dry run (`lattice connectors plan`'s scan) of the same table.
//
//	go test ./connectors/postgres/ -run '^$' -bench Bootstrap -benchtime 1x -timeout 30m
func BenchmarkBootstrap(b *testing.B) {
	rows := 1_000_000
	if v, err := strconv.Atoi(os.Getenv("LATTICE_BENCH_ROWS")); err == nil && v > 0 {
		rows = v
	}
	src := pgtest.Start(b)
	src.CreateDB(b, "crm")
	src.Exec(b, "crm", `CREATE TABLE customers (customer_id int PRIMARY KEY, full_name text, email_address text, phone text, updated_at timestamptz)`)
	src.Exec(b, "crm", fmt.Sprintf(`INSERT INTO customers SELECT i, 'name '||i, 'c'||i||'@example.com', '555-'||i, now() - i * interval '1 second' FROM generate_series(1, %d) i`, rows))
	src.Exec(b, "crm", `VACUUM ANALYZE customers`)
	sch, err := crdt.ParseSchema("s.yaml", []byte(schemaYAML))
	if err != nil {
		b.Fatal(err)
	}
	scfg := storage.DefaultConfig(b.TempDir(), "n1")
	scfg.Logger = slog.New(slog.NewTextHandler(io.Discard, nil))
	store, err := storage.Open(scfg)
	if err != nil {
		b.Fatal(err)
	}
	defer store.Close()
	cfg, err := postgres.ParseConfig("crm", map[string]any{"kind": "postgres", "dsn": src.DSN("crm"), "project": false,
		"tables": map[string]any{"customers": map[string]any{"entity": "contact", "key": []any{"customer_id"}, "updated_at": "updated_at",
			"columns": map[string]any{"full_name": "name", "email_address": "email", "phone": "phone"}}}}, sch)
	if err != nil {
		b.Fatal(err)
	}
	quiet := slog.New(slog.NewTextHandler(io.Discard, nil))
	// The dry run's scan.
	t0 := time.Now()
	scanned := 0
	if err := postgres.New(cfg, nil, staticSchema{sch}, quiet).Scan(context.Background(), nil, func(connectors.PlanRow) { scanned++ }); err != nil {
		b.Fatal(err)
	}
	scan := time.Since(t0)
	// The snapshot.
	c := postgres.New(cfg, store, staticSchema{sch}, quiet)
	ctx, cancel := context.WithCancel(context.Background())
	done := make(chan error, 1)
	t0 = time.Now()
	go func() { done <- c.Run(ctx) }()
	for store.Applied().Get("n1") < uint64(rows) {
		select {
		case err := <-done:
			b.Fatalf("connector stopped: %v", err)
		case <-time.After(20 * time.Millisecond):
		}
	}
	took := time.Since(t0)
	cancel()
	<-done
	fmt.Printf("bootstrap of %d rows: snapshot captured into the store in %v (%.0f rows/s); plan scan of the same rows in %v (%.0f rows/s); store %d MiB\n",
		rows, took.Round(time.Millisecond), float64(rows)/took.Seconds(), scan.Round(time.Millisecond), float64(scanned)/scan.Seconds(), store.DiskUsage()>>20)
}
