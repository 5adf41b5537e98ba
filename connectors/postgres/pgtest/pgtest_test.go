package pgtest_test

import (
	"context"
	"os"
	"path/filepath"
	"strings"
	"testing"
	"time"

	"github.com/jackc/pglogrepl"
	"github.com/jackc/pgx/v5"
	"github.com/jackc/pgx/v5/pgconn"

	"github.com/lattice-sync/lattice/connectors/postgres/pgtest"
)

func ctxT(t *testing.T) context.Context {
	ctx, cancel := context.WithTimeout(context.Background(), 20*time.Second)
	t.Cleanup(cancel)
	return ctx
}

func showSetting(t *testing.T, srv *pgtest.Server, name string) string {
	t.Helper()
	ctx := ctxT(t)
	conn, err := pgx.Connect(ctx, srv.DSN("postgres"))
	if err != nil {
		t.Fatal(err)
	}
	defer conn.Close(ctx)
	var v string
	if err := conn.QueryRow(ctx, "SHOW "+name).Scan(&v); err != nil {
		t.Fatal(err)
	}
	return v
}

func readItems(t *testing.T, srv *pgtest.Server, db string) map[int]string {
	t.Helper()
	ctx := ctxT(t)
	conn, err := pgx.Connect(ctx, srv.DSN(db))
	if err != nil {
		t.Fatal(err)
	}
	defer conn.Close(ctx)
	rows, err := conn.Query(ctx, "SELECT id, name FROM items ORDER BY id")
	if err != nil {
		t.Fatal(err)
	}
	got := map[int]string{}
	for rows.Next() {
		var id int
		var name string
		if err := rows.Scan(&id, &name); err != nil {
			t.Fatal(err)
		}
		got[id] = name
	}
	if err := rows.Err(); err != nil {
		t.Fatal(err)
	}
	return got
}

func checkItems(t *testing.T, got map[int]string, want map[int]string) {
	t.Helper()
	if len(got) != len(want) {
		t.Fatalf("got %d rows %v, want %v", len(got), got, want)
	}
	for id, name := range want {
		if got[id] != name {
			t.Fatalf("row %d = %q, want %q (all: %v)", id, got[id], name, got)
		}
	}
}

func TestBin(t *testing.T) {
	dir, err := pgtest.Bin()
	if err != nil {
		t.Fatal(err)
	}
	for _, tool := range []string{"initdb", "pg_ctl"} {
		if _, err := os.Stat(filepath.Join(dir, tool)); err != nil {
			t.Fatal(err)
		}
	}
}

func TestServer(t *testing.T) {
	t.Parallel()
	start := time.Now()
	srv := pgtest.Start(t)
	t.Logf("Start took %v (port %d, dir %s)", time.Since(start), srv.Port, srv.Dir)

	if srv.Port == 5432 {
		t.Fatal("private server must not use the system port 5432")
	}
	if want := "postgres://postgres@127.0.0.1:"; !strings.HasPrefix(srv.DSN("app"), want) ||
		!strings.HasSuffix(srv.DSN("app"), "/app?sslmode=disable") {
		t.Fatalf("DSN = %q", srv.DSN("app"))
	}
	if got := srv.ReplicationDSN("app"); got != srv.DSN("app")+"&replication=database" {
		t.Fatalf("ReplicationDSN = %q", got)
	}

	srv.CreateDB(t, "app")
	srv.Exec(t, "app", `CREATE TABLE items (id int PRIMARY KEY, name text NOT NULL)`)
	srv.Exec(t, "app", `INSERT INTO items VALUES ($1, $2), ($3, $4)`, 1, "one", 2, "two")
	srv.Exec(t, "app", `INSERT INTO items VALUES (3, 'three'); INSERT INTO items VALUES (4, 'four')`)
	want := map[int]string{1: "one", 2: "two", 3: "three", 4: "four"}
	checkItems(t, readItems(t, srv, "app"), want)

	for name, want := range map[string]string{
		"wal_level":               "logical",
		"max_replication_slots":   "20",
		"max_wal_senders":         "20",
		"synchronous_commit":      "on",
		"fsync":                   "on",
		"listen_addresses":        "127.0.0.1",
		"unix_socket_directories": srv.Dir,
	} {
		if got := showSetting(t, srv, name); got != want {
			t.Errorf("SHOW %s = %q, want %q", name, got, want)
		}
	}

	// Replication connection.
	ctx := ctxT(t)
	repl, err := pgconn.Connect(ctx, srv.ReplicationDSN("app"))
	if err != nil {
		t.Fatal(err)
	}
	sys, err := pglogrepl.IdentifySystem(ctx, repl)
	if err != nil {
		t.Fatal(err)
	}
	if sys.DBName != "app" || sys.SystemID == "" || sys.XLogPos == 0 {
		t.Fatalf("IdentifySystem = %+v", sys)
	}
	if _, err := pglogrepl.CreateReplicationSlot(ctx, repl, "pgtest_slot", "pgoutput",
		pglogrepl.CreateReplicationSlotOptions{Temporary: true}); err != nil {
		t.Fatal(err)
	}
	repl.Close(ctx)

	// Restart keeps the data, on the same port.
	port := srv.Port
	start = time.Now()
	srv.Restart(t)
	t.Logf("Restart took %v", time.Since(start))
	if srv.Port != port {
		t.Fatalf("port changed from %d to %d", port, srv.Port)
	}
	checkItems(t, readItems(t, srv, "app"), want)

	// Crash: committed rows survive SIGKILL and crash recovery.
	srv.Exec(t, "app", `INSERT INTO items VALUES (5, 'five')`)
	want[5] = "five"
	start = time.Now()
	srv.Kill(t)
	t.Logf("Kill took %v", time.Since(start))
	if _, err := pgx.Connect(ctxT(t), srv.DSN("app")); err == nil {
		t.Fatal("connect succeeded after Kill")
	}
	start = time.Now()
	srv.Restart(t)
	t.Logf("Restart after Kill took %v", time.Since(start))
	checkItems(t, readItems(t, srv, "app"), want)

	// Stop then Restart.
	srv.Stop(t)
	if _, err := pgx.Connect(ctxT(t), srv.DSN("app")); err == nil {
		t.Fatal("connect succeeded after Stop")
	}
	srv.Stop(t) // no-op when stopped
	srv.Restart(t)
	checkItems(t, readItems(t, srv, "app"), want)
}

func TestWithConf(t *testing.T) {
	t.Parallel()
	start := time.Now()
	srv := pgtest.Start(t, pgtest.WithConf("wal_level", "replica"), pgtest.WithConf("application_name", "it's pgtest"))
	t.Logf("Start took %v", time.Since(start))
	if got := showSetting(t, srv, "wal_level"); got != "replica" {
		t.Fatalf("wal_level = %q, want replica", got)
	}
	if got := showSetting(t, srv, "max_wal_senders"); got != "20" {
		t.Fatalf("max_wal_senders = %q, want 20", got)
	}
	if got := showSetting(t, srv, "application_name"); got != "it's pgtest" {
		t.Fatalf("application_name = %q", got)
	}
}

func TestCleanupRemovesDir(t *testing.T) {
	t.Parallel()
	var dir string
	t.Run("inner", func(t *testing.T) {
		srv := pgtest.Start(t)
		dir = srv.Dir
	})
	if _, err := os.Stat(dir); !os.IsNotExist(err) {
		t.Fatalf("%s still exists after cleanup (err=%v)", dir, err)
	}
}
