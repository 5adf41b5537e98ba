package workload

import (
	"context"
	"errors"
	"fmt"
	"math/rand/v2"
	"sort"
	"strconv"
	"strings"
	"sync/atomic"
	"time"

	"github.com/jackc/pgx/v5"
	"github.com/jackc/pgx/v5/pgconn"

	"github.com/lattice-sync/lattice/jepsen/history"
)

// Operation kinds of the PostgreSQL workload.
const (
	// PGInsert is an INSERT of a row with every field set: the harness's
	// seed rows before the cluster starts (process -1; the initial snapshot
	// captures them) and clients' re-inserts of deleted rows (INSERT ... ON
	// CONFLICT DO NOTHING: a row that exists is a fail, nothing written).
	PGInsert = "pg-insert"
	// PGUpdate is a client's UPDATE of some fields of one row (a row that
	// does not exist is a fail).
	PGUpdate = "pg-update"
	// PGDelete is a client's DELETE of one row (Before: the values it
	// deleted; a row that does not exist is a fail).
	PGDelete = "pg-delete"
)

// PGTable is one database as the PostgreSQL workload sees it.
type PGTable struct {
	// DB is the database's (and its connector's) name.
	DB string
	// DSN is the clients' DSN.
	DSN    string
	Table  string
	KeyCol string
	// Columns maps entity field -> column.
	Columns map[string]string
}

// PostgresConfig configures the PostgreSQL workload.
type PostgresConfig struct {
	// Seed fixes every client's choices (database, row, fields).
	Seed uint64
	// Clients is the number of concurrent clients (default 4); Rate the
	// total operations per second (default 40).
	Clients int
	Rate    float64
	// Entity is the entity the tables map to (recorded on each operation).
	Entity string
	// Rows is the number of rows (keys 1..Rows), inserted into the first
	// table by Seed before the cluster starts.
	Rows   int
	Tables []PGTable
	// Fields are the entity fields an update picks from.
	Fields []string
	// Timeout bounds each transaction (default 2 s).
	Timeout time.Duration
	// IDBase is the first operation id (keep it apart from other
	// workloads' ids: ids are unique in a history).
	IDBase int64
}

// Postgres is workload (b): clients updating random fields of random rows
// in two databases that lattice keeps in sync (84 %), deleting a row (8 %)
// and inserting one with every field set (8 %; it lands only where the
// row is gone). Each update is one transaction that reads the row's current
// values with SELECT ... FOR UPDATE, then writes new ones: the history
// records what the database showed the writer (Before) as well as what it
// wrote, so a checker knows which value each write had seen. Every value is
// unique ("pg<op id>.<field>").
//
// A failure before COMMIT is a fail (PostgreSQL rolls back a transaction
// whose session ends); a failure of the COMMIT itself is unknown.
type Postgres struct {
	cfg PostgresConfig
	ids atomic.Int64
}

// NewPostgres returns the PostgreSQL workload with defaults filled in.
func NewPostgres(cfg PostgresConfig) *Postgres {
	if cfg.Clients <= 0 {
		cfg.Clients = 4
	}
	if cfg.Rate <= 0 {
		cfg.Rate = 40
	}
	if cfg.Rows <= 0 {
		cfg.Rows = 8
	}
	if cfg.Timeout <= 0 {
		cfg.Timeout = 2 * time.Second
	}
	w := &Postgres{cfg: cfg}
	w.ids.Store(cfg.IDBase)
	return w
}

// Name implements Workload.
func (w *Postgres) Name() string { return "postgres" }

// PGValue is the value the workload writes into field by operation id.
func PGValue(id int64, field string) string { return "pg" + strconv.FormatInt(id, 10) + "." + field }

// PGValueOp returns the operation id and field a PostgreSQL workload value
// names (ok false for any other value).
func PGValueOp(v string) (id int64, field string, ok bool) {
	if !strings.HasPrefix(v, "pg") {
		return 0, "", false
	}
	return ValueOp(v[2:])
}

// Seed inserts rows 1..Rows into the first table, every field set, and
// records each as a pg-insert (process -1).
func (w *Postgres) Seed(ctx context.Context, rec *history.Recorder) error {
	if len(w.cfg.Tables) == 0 {
		return errors.New("postgres workload: no tables")
	}
	t := &w.cfg.Tables[0]
	conn, err := pgx.Connect(ctx, t.DSN)
	if err != nil {
		return fmt.Errorf("postgres workload: connect to %s: %w", t.DB, err)
	}
	defer conn.Close(context.Background())
	for k := 1; k <= w.cfg.Rows; k++ {
		id := w.ids.Add(1)
		inv := history.Op{Type: history.Invoke, ID: id, Proc: -1, F: PGInsert, DB: t.DB, Entity: w.cfg.Entity,
			Key: strconv.Itoa(k), Fields: map[string]string{}}
		cols, args, marks := []string{pgx.Identifier{t.KeyCol}.Sanitize()}, []any{k}, []string{"$1"}
		for _, f := range w.cfg.Fields {
			inv.Fields[f] = PGValue(id, f)
			cols = append(cols, pgx.Identifier{t.Columns[f]}.Sanitize())
			args = append(args, inv.Fields[f])
			marks = append(marks, "$"+strconv.Itoa(len(args)))
		}
		rec.Op(inv)
		_, err := conn.Exec(ctx, fmt.Sprintf("INSERT INTO %s (%s) VALUES (%s)", pgx.Identifier{t.Table}.Sanitize(),
			strings.Join(cols, ", "), strings.Join(marks, ", ")), args...)
		if err != nil {
			rec.Op(history.Op{Type: history.Fail, ID: id, Proc: -1, F: PGInsert, DB: t.DB, Key: inv.Key, Error: err.Error()})
			return fmt.Errorf("postgres workload: seed %s row %d: %w", t.DB, k, err)
		}
		rec.Op(history.Op{Type: history.OK, ID: id, Proc: -1, F: PGInsert, DB: t.DB, Key: inv.Key})
	}
	return nil
}

// Run implements Workload.
func (w *Postgres) Run(ctx context.Context, env Env) error {
	if len(w.cfg.Tables) == 0 || len(w.cfg.Fields) == 0 {
		return errors.New("postgres workload: needs tables and fields")
	}
	pace(ctx, w.cfg.Clients, w.cfg.Rate, func(p int) (func(), func()) {
		c := &pgClient{w: w, rec: env.Recorder, proc: 1000 + p, conns: map[string]*pgx.Conn{},
			rng: rand.New(rand.NewPCG(w.cfg.Seed, 0x7067<<16|uint64(p)))}
		return c.step, c.close
	})
	return nil
}

type pgClient struct {
	w     *Postgres
	rec   *history.Recorder
	proc  int
	rng   *rand.Rand
	conns map[string]*pgx.Conn
}

func (c *pgClient) close() {
	for _, conn := range c.conns {
		conn.Close(context.Background())
	}
}

func (c *pgClient) conn(ctx context.Context, t *PGTable) (*pgx.Conn, error) {
	if conn := c.conns[t.DB]; conn != nil && !conn.IsClosed() {
		return conn, nil
	}
	conn, err := pgx.Connect(ctx, t.DSN)
	if err != nil {
		return nil, err
	}
	c.conns[t.DB] = conn
	return conn, nil
}

func (c *pgClient) drop(t *PGTable) {
	if conn := c.conns[t.DB]; conn != nil {
		conn.Close(context.Background())
		delete(c.conns, t.DB)
	}
}

// step draws one update (all random choices first) and runs it.
func (c *pgClient) step() {
	cfg := &c.w.cfg
	t := &cfg.Tables[c.rng.IntN(len(cfg.Tables))]
	key := 1 + c.rng.IntN(cfg.Rows)
	n := 1 + c.rng.IntN(min(3, len(cfg.Fields)))
	fields := make([]string, 0, n)
	for _, i := range c.rng.Perm(len(cfg.Fields))[:n] {
		fields = append(fields, cfg.Fields[i])
	}
	sort.Strings(fields)
	kind := PGUpdate
	switch x := c.rng.IntN(100); {
	case x >= 92:
		kind, fields = PGInsert, append([]string(nil), cfg.Fields...)
	case x >= 84:
		kind, fields = PGDelete, nil
	}
	id := c.w.ids.Add(1)
	inv := history.Op{Type: history.Invoke, ID: id, Proc: c.proc, F: kind, DB: t.DB, Entity: cfg.Entity,
		Key: strconv.Itoa(key)}
	for _, f := range fields {
		if inv.Fields == nil {
			inv.Fields = map[string]string{}
		}
		inv.Fields[f] = PGValue(id, f)
	}
	c.rec.Op(inv)
	ctx, cancel := context.WithTimeout(context.Background(), cfg.Timeout)
	defer cancel()
	done := history.Op{ID: id, Proc: c.proc, F: kind, DB: t.DB, Key: inv.Key}
	var before map[string]string
	var committing bool
	var err error
	switch kind {
	case PGUpdate:
		before, committing, err = c.update(ctx, t, key, fields, inv.Fields)
	case PGDelete:
		before, committing, err = c.delete(ctx, t, key)
	case PGInsert:
		committing, err = c.insert(ctx, t, key, inv.Fields)
	}
	switch {
	case err == nil:
		done.Type, done.Before = history.OK, before
	case committing:
		// The COMMIT was sent (or being sent): it may have landed.
		done.Type, done.Error = history.Unknown, short(err)
		c.drop(t)
	default:
		done.Type, done.Error = history.Fail, short(err)
		var pgErr *pgconn.PgError
		if !errors.As(err, &pgErr) {
			c.drop(t)
		}
	}
	c.rec.Op(done)
}

// update runs one transaction: SELECT ... FOR UPDATE of the fields, then
// UPDATE. committing says the error came from COMMIT.
func (c *pgClient) update(ctx context.Context, t *PGTable, key int, fields []string, values map[string]string) (before map[string]string, committing bool, err error) {
	conn, err := c.conn(ctx, t)
	if err != nil {
		return nil, false, err
	}
	tx, err := conn.Begin(ctx)
	if err != nil {
		return nil, false, err
	}
	defer func() {
		if err != nil && !committing {
			rctx, cancel := context.WithTimeout(context.Background(), time.Second)
			_ = tx.Rollback(rctx)
			cancel()
		}
	}()
	cols := make([]string, len(fields))
	sets := make([]string, len(fields))
	args := []any{key}
	for i, f := range fields {
		cols[i] = pgx.Identifier{t.Columns[f]}.Sanitize()
		args = append(args, values[f])
		sets[i] = fmt.Sprintf("%s = $%d", cols[i], len(args))
	}
	tab, kc := pgx.Identifier{t.Table}.Sanitize(), pgx.Identifier{t.KeyCol}.Sanitize()
	vals := make([]*string, len(fields))
	dest := make([]any, len(fields))
	for i := range vals {
		dest[i] = &vals[i]
	}
	if err := tx.QueryRow(ctx, fmt.Sprintf("SELECT %s FROM %s WHERE %s = $1 FOR UPDATE", strings.Join(cols, ", "), tab, kc), key).Scan(dest...); err != nil {
		return nil, false, fmt.Errorf("select: %w", err)
	}
	before = map[string]string{}
	for i, f := range fields {
		if vals[i] != nil {
			before[f] = *vals[i]
		}
	}
	tag, err := tx.Exec(ctx, fmt.Sprintf("UPDATE %s SET %s WHERE %s = $1", tab, strings.Join(sets, ", "), kc), args...)
	if err != nil {
		return nil, false, fmt.Errorf("update: %w", err)
	}
	if tag.RowsAffected() != 1 {
		return nil, false, fmt.Errorf("update: %d rows affected", tag.RowsAffected())
	}
	if err := tx.Commit(ctx); err != nil {
		return nil, true, fmt.Errorf("commit: %w", err)
	}
	return before, false, nil
}

func short(err error) string {
	s := err.Error()
	if len(s) > 300 {
		s = s[:300] + "..."
	}
	return s
}

// delete deletes the row in one statement (its own transaction) and returns
// the values it held. committing: the statement was sent, so it may have
// committed.
func (c *pgClient) delete(ctx context.Context, t *PGTable, key int) (before map[string]string, committing bool, err error) {
	conn, err := c.conn(ctx, t)
	if err != nil {
		return nil, false, err
	}
	fields := c.w.cfg.Fields
	cols := make([]string, len(fields))
	for i, f := range fields {
		cols[i] = pgx.Identifier{t.Columns[f]}.Sanitize()
	}
	vals := make([]*string, len(fields))
	dest := make([]any, len(fields))
	for i := range vals {
		dest[i] = &vals[i]
	}
	err = conn.QueryRow(ctx, fmt.Sprintf("DELETE FROM %s WHERE %s = $1 RETURNING %s", pgx.Identifier{t.Table}.Sanitize(),
		pgx.Identifier{t.KeyCol}.Sanitize(), strings.Join(cols, ", ")), key).Scan(dest...)
	switch {
	case errors.Is(err, pgx.ErrNoRows):
		return nil, false, errors.New("delete: no such row")
	case err != nil:
		return nil, mayHaveRun(err), fmt.Errorf("delete: %w", err)
	}
	before = map[string]string{}
	for i, f := range fields {
		if vals[i] != nil {
			before[f] = *vals[i]
		}
	}
	return before, false, nil
}

// insert inserts the row with every field unless it exists (then nothing
// is written: an error).
func (c *pgClient) insert(ctx context.Context, t *PGTable, key int, values map[string]string) (committing bool, err error) {
	conn, err := c.conn(ctx, t)
	if err != nil {
		return false, err
	}
	cols, args, marks := []string{pgx.Identifier{t.KeyCol}.Sanitize()}, []any{key}, []string{"$1"}
	for _, f := range c.w.cfg.Fields {
		cols = append(cols, pgx.Identifier{t.Columns[f]}.Sanitize())
		args = append(args, values[f])
		marks = append(marks, "$"+strconv.Itoa(len(args)))
	}
	tag, err := conn.Exec(ctx, fmt.Sprintf("INSERT INTO %s (%s) VALUES (%s) ON CONFLICT DO NOTHING", pgx.Identifier{t.Table}.Sanitize(),
		strings.Join(cols, ", "), strings.Join(marks, ", ")), args...)
	if err != nil {
		return mayHaveRun(err), fmt.Errorf("insert: %w", err)
	}
	if tag.RowsAffected() != 1 {
		return false, errors.New("insert: the row exists")
	}
	return false, nil
}

// mayHaveRun reports whether a statement sent on its own (autocommit) may
// have committed despite err: not when PostgreSQL refused it (a PgError)
// nor when pgx says it was never sent (pgconn.SafeToRetry); otherwise (the
// session ended, a timeout) the outcome is unknown.
func mayHaveRun(err error) bool {
	var pgErr *pgconn.PgError
	return !errors.As(err, &pgErr) && !pgconn.SafeToRetry(err)
}
