// Package pg runs the PostgreSQL side of a fault-injection run: two private
// PostgreSQL 15 instances (connectors/postgres/pgtest), a CRM and a billing
// database whose tables name one entity's fields differently, as in
// cmd/lattice-demo, and what PostgreSQL faults do to them: terminate
// lattice's sessions (pg_terminate_backend), fast stop and start, and cut
// the network between the cluster and a database (iptables, inside the
// harness's private network namespace).
//
// Each instance listens on its own loopback address (127.0.0.(30+i)), the
// address lattice's connectors use, so iptables rules can cut lattice's
// sessions to it. The workload's own clients connect through the unix socket
// in the instance's directory instead, which no packet drop touches: a cut
// stalls lattice, not the clients editing the database.
//
// lattice's connector sessions do not bind the node's address (their source
// address is 127.0.0.1, whichever node runs them), so a cut acts between the
// whole cluster and one database, not between one node and it.
package pg

import (
	"context"
	"errors"
	"fmt"
	"os"
	"os/exec"
	"os/user"
	"path/filepath"
	"sort"
	"strconv"
	"strings"
	"sync"
	"time"

	"github.com/jackc/pgx/v5"

	"github.com/lattice-sync/lattice/cluster/clustertest"
	"github.com/lattice-sync/lattice/connectors/postgres/pgtest"
)

// ClientApp is the application_name of the workload's sessions: connection
// kills spare them (they are the clients, not lattice).
const ClientApp = "jepsen-client"

// Spec describes one database: its connector name (also the database's
// name), table and key column, and the column of each entity field.
type Spec struct {
	Name   string
	Table  string
	KeyCol string
	// Columns maps entity field -> column.
	Columns map[string]string
}

// Fields lists the mapped entity fields, sorted.
func (s Spec) Fields() []string {
	out := make([]string, 0, len(s.Columns))
	for f := range s.Columns {
		out = append(out, f)
	}
	sort.Strings(out)
	return out
}

// Specs are the two databases of the demo: crm.customers(customer_id,
// full_name, email_address, phone) and billing.clients(client_ref, name,
// email, tel), both mapping to the entity's fields name, email and phone.
var Specs = []Spec{
	{Name: "crm", Table: "customers", KeyCol: "customer_id",
		Columns: map[string]string{"name": "full_name", "email": "email_address", "phone": "phone"}},
	{Name: "billing", Table: "clients", KeyCol: "client_ref",
		Columns: map[string]string{"name": "name", "email": "email", "phone": "tel"}},
}

// DB is one running database.
type DB struct {
	Spec
	// IP is the loopback address it listens on (lattice's DSN).
	IP  string
	srv *pgtest.Server

	mu   sync.Mutex
	down bool
}

// Port is the instance's TCP port (also its unix socket's number).
func (d *DB) Port() int { return d.srv.Port }

// DSN is the DSN lattice's connector uses: TCP to the database's own address.
func (d *DB) DSN() string {
	return fmt.Sprintf("postgres://postgres@%s:%d/%s?sslmode=disable", d.IP, d.srv.Port, d.Name)
}

// ClientDSN is the DSN of the workload's clients: the unix socket (no
// packet drop touches it), with application_name ClientApp.
func (d *DB) ClientDSN() string { return d.clientDSN(d.Name) }

func (d *DB) clientDSN(db string) string {
	return fmt.Sprintf("host=%s port=%d user=postgres dbname=%s sslmode=disable application_name=%s connect_timeout=2",
		d.srv.Dir, d.srv.Port, db, ClientApp)
}

func exec1(ctx context.Context, dsn, sql string) error {
	conn, err := pgx.Connect(ctx, dsn)
	if err != nil {
		return fmt.Errorf("connect: %w", err)
	}
	defer conn.Close(context.Background())
	_, err = conn.Exec(ctx, sql)
	return err
}

// Log is the server log file.
func (d *DB) Log() string { return filepath.Join(d.srv.Dir, "log") }

// Down reports whether the harness stopped the database.
func (d *DB) Down() bool {
	d.mu.Lock()
	defer d.mu.Unlock()
	return d.down
}

// Set is the run's databases.
type Set struct {
	DBs   []*DB
	netMu sync.Mutex
}

// Start launches one instance per spec (in parallel), creates its database
// and table and returns them; nothing is left behind on error. Instance i
// listens on 127.0.0.(30+i).
func Start(ctx context.Context, specs []Spec) (*Set, error) {
	s := &Set{}
	errs := make([]error, len(specs))
	s.DBs = make([]*DB, len(specs))
	var wg sync.WaitGroup
	for i, sp := range specs {
		ip := fmt.Sprintf("127.0.0.%d", 31+i)
		wg.Add(1)
		go func() {
			defer wg.Done()
			srv, err := pgtest.Launch(pgtest.WithConf("listen_addresses", ip))
			if err != nil {
				errs[i] = fmt.Errorf("start %s: %w", sp.Name, err)
				return
			}
			s.DBs[i] = &DB{Spec: sp, IP: ip, srv: srv}
		}()
	}
	wg.Wait()
	if err := errors.Join(errs...); err != nil {
		s.Close()
		return nil, err
	}
	for _, d := range s.DBs {
		cols := []string{pgx.Identifier{d.KeyCol}.Sanitize() + " int PRIMARY KEY"}
		for _, f := range d.Fields() {
			cols = append(cols, pgx.Identifier{d.Columns[f]}.Sanitize()+" text")
		}
		if err := exec1(ctx, d.clientDSN("postgres"), "CREATE DATABASE "+pgx.Identifier{d.Name}.Sanitize()); err != nil {
			s.Close()
			return nil, err
		}
		if err := d.Exec(ctx, fmt.Sprintf("CREATE TABLE %s (%s)", pgx.Identifier{d.Table}.Sanitize(), strings.Join(cols, ", "))); err != nil {
			s.Close()
			return nil, err
		}
	}
	return s, nil
}

// DB returns the named database, or nil.
func (s *Set) DB(name string) *DB {
	for _, d := range s.DBs {
		if d.Name == name {
			return d
		}
	}
	return nil
}

func (s *Set) db(name string) (*DB, error) {
	if d := s.DB(name); d != nil {
		return d, nil
	}
	return nil, fmt.Errorf("no database %q", name)
}

// Names lists the databases in order.
func (s *Set) Names() []string {
	out := make([]string, len(s.DBs))
	for i, d := range s.DBs {
		out[i] = d.Name
	}
	return out
}

// ConnectorYAML is the connectors section of the nodes' configuration: one
// postgres connector per database, mapping its table to entity.
func (s *Set) ConnectorYAML(entity string) string {
	var b strings.Builder
	b.WriteString("connectors:\n")
	for _, d := range s.DBs {
		fmt.Fprintf(&b, "  %s:\n    kind: postgres\n    dsn: %q\n    tables:\n      %s:\n        entity: %s\n        key: [%s]\n        columns: {",
			d.Name, d.DSN(), d.Table, entity, d.KeyCol)
		for i, f := range d.Fields() {
			if i > 0 {
				b.WriteString(", ")
			}
			fmt.Fprintf(&b, "%s: %s", d.Columns[f], f)
		}
		b.WriteString("}\n")
	}
	return b.String()
}

// Exec runs sql on the database through a client session.
func (d *DB) Exec(ctx context.Context, sql string) error {
	if err := exec1(ctx, d.ClientDSN(), sql); err != nil {
		return fmt.Errorf("%s: %w", d.Name, err)
	}
	return nil
}

// Row is one row: its key and each mapped field's value (a NULL column is
// absent).
type Row struct {
	Key    int
	Fields map[string]string
}

// Rows reads every row of the table, by key.
func (d *DB) Rows(ctx context.Context) (map[int]Row, error) {
	conn, err := pgx.Connect(ctx, d.ClientDSN())
	if err != nil {
		return nil, fmt.Errorf("%s: connect: %w", d.Name, err)
	}
	defer conn.Close(context.Background())
	fields := d.Fields()
	cols := []string{pgx.Identifier{d.KeyCol}.Sanitize()}
	for _, f := range fields {
		cols = append(cols, pgx.Identifier{d.Columns[f]}.Sanitize())
	}
	rows, err := conn.Query(ctx, fmt.Sprintf("SELECT %s FROM %s", strings.Join(cols, ", "), pgx.Identifier{d.Table}.Sanitize()))
	if err != nil {
		return nil, fmt.Errorf("%s: %w", d.Name, err)
	}
	defer rows.Close()
	out := map[int]Row{}
	for rows.Next() {
		var key int
		vals := make([]*string, len(fields))
		dest := []any{&key}
		for i := range vals {
			dest = append(dest, &vals[i])
		}
		if err := rows.Scan(dest...); err != nil {
			return nil, fmt.Errorf("%s: %w", d.Name, err)
		}
		r := Row{Key: key, Fields: map[string]string{}}
		for i, f := range fields {
			if vals[i] != nil {
				r.Fields[f] = *vals[i]
			}
		}
		out[key] = r
	}
	return out, rows.Err()
}

// Terminate ends every session of the database that is not the workload's
// (lattice's replication and projection sessions) with
// pg_terminate_backend and returns how many it ended.
func (s *Set) Terminate(ctx context.Context, name string) (int, error) {
	d, err := s.db(name)
	if err != nil {
		return 0, err
	}
	conn, err := pgx.Connect(ctx, d.ClientDSN())
	if err != nil {
		return 0, fmt.Errorf("%s: connect: %w", d.Name, err)
	}
	defer conn.Close(context.Background())
	var n int
	err = conn.QueryRow(ctx, `SELECT count(*) FROM (SELECT pg_terminate_backend(pid) FROM pg_stat_activity
		WHERE pid <> pg_backend_pid() AND datname = $1 AND application_name <> $2
		AND backend_type IN ('client backend', 'walsender')) t`, d.Name, ClientApp).Scan(&n)
	if err != nil {
		return 0, fmt.Errorf("%s: pg_terminate_backend: %w", d.Name, err)
	}
	return n, nil
}

// Stop stops the database (pg_ctl stop -m fast).
func (s *Set) Stop(ctx context.Context, name string) error {
	d, err := s.db(name)
	if err != nil {
		return err
	}
	d.mu.Lock()
	defer d.mu.Unlock()
	if err := d.pgctl(ctx, "-m", "fast", "stop"); err != nil {
		return err
	}
	d.down = true
	return nil
}

// StartDB starts a database Stop stopped, on the same port and data.
func (s *Set) StartDB(ctx context.Context, name string) error {
	d, err := s.db(name)
	if err != nil {
		return err
	}
	d.mu.Lock()
	defer d.mu.Unlock()
	if !d.down {
		return nil
	}
	if err := d.pgctl(ctx, "-l", filepath.Join(d.srv.Dir, "log"), "start"); err != nil {
		return err
	}
	d.down = false
	return nil
}

// pgctl runs pg_ctl -w on the instance's data directory, as the postgres
// OS user when root (PostgreSQL refuses to run as root).
func (d *DB) pgctl(ctx context.Context, args ...string) error {
	bin, err := pgtest.Bin()
	if err != nil {
		return err
	}
	ctx, cancel := context.WithTimeout(ctx, 45*time.Second)
	defer cancel()
	argv := append([]string{filepath.Join(bin, "pg_ctl"), "-D", filepath.Join(d.srv.Dir, "data"), "-w", "-t", "30"}, args...)
	var cmd *exec.Cmd
	if os.Geteuid() == 0 {
		if _, err := user.Lookup("postgres"); err != nil {
			return fmt.Errorf("pg_ctl as root needs the postgres OS user: %w", err)
		}
		cmd = exec.CommandContext(ctx, "runuser", append([]string{"-u", "postgres", "--"}, argv...)...)
	} else {
		cmd = exec.CommandContext(ctx, argv[0], argv[1:]...)
	}
	cmd.Dir = d.srv.Dir
	cmd.WaitDelay = 5 * time.Second
	if out, err := cmd.CombinedOutput(); err != nil {
		return fmt.Errorf("%s: pg_ctl %s: %v: %s", d.Name, args[len(args)-1], err, strings.TrimSpace(string(out)))
	}
	return nil
}

// Cut drops every packet to and from the database's address (lattice's
// sessions stall; the clients' unix-socket sessions do not). Heal (the
// nodes' network heal flushes the same chain) undoes it.
func (s *Set) Cut(name string) error {
	if !clustertest.InNetNS() {
		return errors.New("packet drops need root and a private network namespace (clustertest.EnterNetNS)")
	}
	d, err := s.db(name)
	if err != nil {
		return err
	}
	s.netMu.Lock()
	defer s.netMu.Unlock()
	for _, rule := range [][]string{{"-d", d.IP}, {"-s", d.IP}} {
		args := append([]string{"-A", "INPUT"}, append(rule, "-j", "DROP")...)
		if out, err := exec.Command("iptables", args...).CombinedOutput(); err != nil {
			return fmt.Errorf("iptables: %v: %s", err, out)
		}
	}
	return nil
}

// HealAll starts every stopped database.
func (s *Set) HealAll(ctx context.Context) error {
	var errs []error
	for _, d := range s.DBs {
		if d.Down() {
			errs = append(errs, s.StartDB(ctx, d.Name))
		}
	}
	return errors.Join(errs...)
}

// Close stops every instance and removes its directory.
func (s *Set) Close() error {
	var errs []error
	for _, d := range s.DBs {
		if d != nil {
			errs = append(errs, d.srv.Close())
		}
	}
	return errors.Join(errs...)
}

// KeepLogs copies each server log into dir (as <name>.log).
func (s *Set) KeepLogs(dir string) {
	for _, d := range s.DBs {
		if b, err := os.ReadFile(d.Log()); err == nil {
			_ = os.WriteFile(filepath.Join(dir, d.Name+".log"), b, 0o644)
		}
	}
}

// Key is the record id of a row key (the connector's id of a one-column
// integer key is its decimal text).
func Key(k int) string { return strconv.Itoa(k) }
