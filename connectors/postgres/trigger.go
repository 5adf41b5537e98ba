package postgres

import (
	"context"
	"crypto/rand"
	"encoding/hex"
	"errors"
	"fmt"
	"sort"
	"strings"
	"sync"
	"sync/atomic"
	"time"

	"github.com/jackc/pgx/v5"
	"github.com/jackc/pgx/v5/pgconn"
	"github.com/jackc/pgx/v5/pgtype"

	"github.com/lattice-sync/lattice/connectors"
	"github.com/lattice-sync/lattice/crdt"
)

// Trigger capture (mode: trigger): for databases without logical
// replication where the connector may create triggers. connectors/DESIGN.md
// ("Trigger mode") gives the reasoning; the invariants the code keeps:
//
//   - Objects. Per connector: a change table lattice.changes_<name> (id
//     bigserial, the change's clock_timestamp(), table, op, old and new row
//     as jsonb; mark rows carry projection marks), a trigger function
//     lattice.capture_<name>() and, on every mapped table, an AFTER INSERT
//     OR UPDATE OR DELETE row trigger lattice_capture_<name>. The function
//     inserts one row per change and notifies channel lattice_<name>.
//   - Echo. The function does nothing in a session whose lattice.origin
//     setting is this connector's origin name: projection sets it on its
//     session, so lattice's own writes never reach the change table.
//   - Marks. Each projection transaction inserts, after its writes, one
//     mark row listing the record contexts it wrote (marks.go encoding):
//     the change table holds, per row, native changes and projections in
//     the order they happened, as the WAL does in logical mode.
//   - Order. Changes of one row are in id order, and id order is their
//     commit order: a change's id is drawn by the trigger while the
//     transaction holds the row's lock (or, for an insert, the key's unique
//     index entry), so a later change of the row waits for the earlier one
//     to commit before it draws its id. A mark row is drawn after the
//     projection's writes took their locks. Ids of different rows are not
//     in commit order (a transaction with a lower id can commit later), and
//     nothing needs them to be: a drain reads every visible change row not
//     yet captured, whatever its id, never "the ids above the last one".
//   - Queue and position. The change table is the queue: a row is deleted
//     once its change is durable and a checkpoint records it (after the
//     write concern). The position is the set of ids captured and not yet
//     known deleted (id ranges), so a resumed connector skips rows a
//     checkpoint covers that were not deleted yet; rows captured after the
//     last checkpoint are captured again (a duplicate supersedes the
//     identical version it repeats).
//   - Snapshot. The initial snapshot reads the tables and the change ids
//     in one REPEATABLE READ transaction: every change row it sees is a
//     change the snapshot read (taken as captured), every later one is
//     drained.
//   - Wake-up. A LISTEN connection wakes the drain on each notification;
//     a drain every triggerDrainEvery reads what a lost notification left.

const (
	triggerSchema = "lattice"
	// triggerOriginSetting is the session setting projection sets to its
	// origin name; the capture trigger skips that session's changes.
	triggerOriginSetting = "lattice.origin"
	// triggerPage is the change rows one drain query reads.
	triggerPage = 1000
	// triggerDrainEvery is the drain that runs without notification.
	triggerDrainEvery = time.Second
	// triggerCheckEvery is how often capture checks that its objects are
	// still installed (a dropped or disabled trigger loses changes).
	triggerCheckEvery = 30 * time.Second
)

// triggerObjects are one connector's trigger-capture objects.
type triggerObjects struct {
	table, function   string // schema-qualified, sanitized
	tableReg, funcReg string // as to_regclass / to_regprocedure take them
	trigger, channel  string // bare names
}

func triggerNames(name string) triggerObjects {
	tbl, fn := "changes_"+name, "capture_"+name
	o := triggerObjects{
		table:    pgx.Identifier{triggerSchema, tbl}.Sanitize(),
		function: pgx.Identifier{triggerSchema, fn}.Sanitize(),
		trigger:  "lattice_capture_" + name,
		channel:  "lattice_" + name,
	}
	o.tableReg, o.funcReg = o.table, o.function+"()"
	return o
}

// checkTriggerName refuses a connector name too long for the objects'
// names (PostgreSQL cuts identifiers at 63 bytes).
func checkTriggerName(name string) []error {
	if n := len(triggerNames(name).trigger); n > 63 {
		return []error{fmt.Errorf("connector %q: name too long for trigger capture: its trigger would be named %q (%d bytes; PostgreSQL names have at most 63): use a name of at most %d bytes",
			name, triggerNames(name).trigger, n, 63-len("lattice_capture_"))}
	}
	return nil
}

func quoteLiteral(s string) string { return "'" + strings.ReplaceAll(s, "'", "''") + "'" }

func sanitizedTable(name string) string { return pgx.Identifier(strings.Split(name, ".")).Sanitize() }

// TriggerInstallSQL returns the statements that install trigger capture's
// objects for cfg, in order, to be run in one transaction. Each is
// idempotent: running them again leaves the same objects (the triggers are
// dropped and created again inside the transaction, so no change is
// missed in between).
func TriggerInstallSQL(cfg *Config) []string {
	o := triggerNames(cfg.Name)
	stmts := []string{
		"CREATE SCHEMA IF NOT EXISTS " + pgx.Identifier{triggerSchema}.Sanitize(),
		fmt.Sprintf(`CREATE TABLE IF NOT EXISTS %s (
    id bigserial PRIMARY KEY,
    at timestamptz NOT NULL DEFAULT clock_timestamp(),
    tbl text NOT NULL,
    op "char" NOT NULL,
    old jsonb,
    new jsonb,
    mark bytea,
    run text
)`, o.table),
		fmt.Sprintf("COMMENT ON TABLE %s IS %s", o.table, quoteLiteral(fmt.Sprintf(
			"lattice connector %s (mode trigger): row changes of the mapped tables, and lattice's projection marks; each row is deleted once captured and checkpointed. Remove with: lattice connectors trigger remove %s", cfg.Name, cfg.Name))),
		fmt.Sprintf(`CREATE OR REPLACE FUNCTION %s() RETURNS trigger
LANGUAGE plpgsql SECURITY DEFINER SET search_path = pg_catalog, pg_temp AS $lattice$
BEGIN
    -- lattice's own projection session: not a native change (echo suppression)
    IF current_setting(%s, true) IS NOT DISTINCT FROM %s THEN
        RETURN NULL;
    END IF;
    INSERT INTO %s (tbl, op, old, new) VALUES (TG_TABLE_SCHEMA || '.' || TG_TABLE_NAME, substr(TG_OP, 1, 1),
        CASE WHEN TG_OP <> 'INSERT' THEN to_jsonb(OLD) END,
        CASE WHEN TG_OP <> 'DELETE' THEN to_jsonb(NEW) END);
    PERFORM pg_notify(%s, '');
    RETURN NULL;
END
$lattice$`, o.function, quoteLiteral(triggerOriginSetting), quoteLiteral(cfg.originName()), o.table, quoteLiteral(o.channel)),
	}
	for _, t := range cfg.Tables {
		trig := pgx.Identifier{o.trigger}.Sanitize()
		stmts = append(stmts,
			fmt.Sprintf("DROP TRIGGER IF EXISTS %s ON %s", trig, sanitizedTable(t.Name)),
			fmt.Sprintf("CREATE TRIGGER %s AFTER INSERT OR UPDATE OR DELETE ON %s FOR EACH ROW EXECUTE FUNCTION %s()", trig, sanitizedTable(t.Name), o.function))
	}
	return stmts
}

// TriggerRemoveSQL returns the statements that remove trigger capture's
// objects for cfg (schema lattice too once nothing else is in it), to be
// run in one transaction. Each is idempotent.
func TriggerRemoveSQL(cfg *Config) []string {
	o := triggerNames(cfg.Name)
	var stmts []string
	for _, t := range cfg.Tables {
		stmts = append(stmts, fmt.Sprintf("DROP TRIGGER IF EXISTS %s ON %s", pgx.Identifier{o.trigger}.Sanitize(), sanitizedTable(t.Name)))
	}
	stmts = append(stmts,
		// CASCADE: also this connector's triggers on tables it no longer maps.
		fmt.Sprintf("DROP FUNCTION IF EXISTS %s() CASCADE", o.function),
		"DROP TABLE IF EXISTS "+o.table,
		fmt.Sprintf(`DO $lattice$
BEGIN
    IF to_regnamespace(%[1]s) IS NOT NULL
        AND NOT EXISTS (SELECT 1 FROM pg_class WHERE relnamespace = to_regnamespace(%[1]s))
        AND NOT EXISTS (SELECT 1 FROM pg_proc WHERE pronamespace = to_regnamespace(%[1]s)) THEN
        DROP SCHEMA %[2]s;
    END IF;
END
$lattice$`, quoteLiteral(triggerSchema), pgx.Identifier{triggerSchema}.Sanitize()))
	return stmts
}

// ExecSQL runs statements in one transaction on the connector's database
// (the trigger install and remove commands).
func ExecSQL(ctx context.Context, cfg *Config, stmts []string) error {
	conn, err := pgx.Connect(ctx, cfg.DSN)
	if err != nil {
		return fmt.Errorf("connector %s: connect: %w", cfg.Name, err)
	}
	defer conn.Close(context.Background())
	return execAll(ctx, conn, stmts)
}

func execAll(ctx context.Context, conn *pgx.Conn, stmts []string) error {
	tx, err := conn.Begin(ctx)
	if err != nil {
		return err
	}
	defer tx.Rollback(context.Background())
	for _, q := range stmts {
		if _, err := tx.Exec(ctx, q); err != nil {
			first, _, _ := strings.Cut(q, "\n")
			return fmt.Errorf("%s: %w (nothing was changed)", first, err)
		}
	}
	return tx.Commit(ctx)
}

// trigState is trigger capture's SQL (built by prepare from the types at
// start) and what it reports.
type trigState struct {
	sql struct {
		page, mark, del, islands string
	}
	// installed: prepare installed objects that were missing.
	installed bool
	// missing is what prepare found missing, for the log.
	missing  []string
	received atomic.Pointer[triggerPosition]
}

func newRunID() string {
	var b [8]byte
	_, _ = rand.Read(b[:])
	return hex.EncodeToString(b[:])
}

// triggerMissing lists the trigger-capture objects that are not installed
// (or, for a trigger, disabled).
func (c *Connector) triggerMissing(ctx context.Context, conn *pgx.Conn) ([]string, error) {
	o := triggerNames(c.cfg.Name)
	var tbl, fn bool
	if err := conn.QueryRow(ctx, "SELECT to_regclass($1) IS NOT NULL, to_regprocedure($2) IS NOT NULL", o.tableReg, o.funcReg).Scan(&tbl, &fn); err != nil {
		return nil, fmt.Errorf("connector %s: trigger capture objects: %w", c.cfg.Name, err)
	}
	var missing []string
	if !tbl {
		missing = append(missing, "change table "+o.table)
	}
	if !fn {
		missing = append(missing, "function "+o.funcReg)
	}
	for _, t := range c.cfg.Tables {
		var ok bool
		if err := conn.QueryRow(ctx, `SELECT COALESCE((SELECT tgenabled <> 'D' FROM pg_trigger WHERE tgrelid = to_regclass($1) AND tgname = $2), false)`,
			sanitizedTable(t.Name), o.trigger).Scan(&ok); err != nil {
			return nil, fmt.Errorf("connector %s: trigger capture objects: %w", c.cfg.Name, err)
		}
		if !ok {
			missing = append(missing, fmt.Sprintf("trigger %s on %s (missing or disabled)", o.trigger, t.Name))
		}
	}
	return missing, nil
}

// ensureTrigger checks that each table's key is unique (the order of a
// row's changes rests on its lock) and installs the objects that are
// missing, or says what to run when the role may not.
func (c *Connector) ensureTrigger(ctx context.Context, conn *pgx.Conn) error {
	for _, t := range c.cfg.Tables {
		var unique bool
		err := conn.QueryRow(ctx, `SELECT EXISTS (SELECT 1 FROM pg_index i WHERE i.indrelid = to_regclass($1) AND i.indisunique AND i.indpred IS NULL
			AND 0 <> ALL (i.indkey::int2[])
			AND (SELECT array_agg(a.attname::text) FROM pg_attribute a WHERE a.attrelid = i.indrelid AND a.attnum = ANY (i.indkey::int2[])) <@ $2::text[])`,
			sanitizedTable(t.Name), t.Key).Scan(&unique)
		if err != nil {
			return fmt.Errorf("connector %s: table %s: %w", c.cfg.Name, t.Name, err)
		}
		if !unique {
			return fmt.Errorf("connector %s: table %s: mode trigger needs a primary key or unique index on the key columns (%s): the order of a row's changes rests on the lock its key takes; add one (ALTER TABLE %s ADD PRIMARY KEY (%s)) or use another mode",
				c.cfg.Name, t.Name, strings.Join(t.Key, ", "), sanitizedTable(t.Name), strings.Join(t.Key, ", "))
		}
	}
	missing, err := c.triggerMissing(ctx, conn)
	if err != nil || len(missing) == 0 {
		return err
	}
	stmts := TriggerInstallSQL(c.cfg)
	if err := execAll(ctx, conn, stmts); err != nil {
		var pgErr *pgconn.PgError
		if errors.As(err, &pgErr) && (pgErr.Code == "42501" || strings.HasPrefix(pgErr.Code, "42")) {
			return fmt.Errorf("connector %s: trigger capture needs %s, and this role may not create them (%v): run `lattice connectors trigger install %s --config FILE` as a role that owns the tables (it prints the SQL first; --dry-run only prints it), or grant this role CREATE on the database and TRIGGER on the tables",
				c.cfg.Name, strings.Join(missing, ", "), err, c.cfg.Name)
		}
		return fmt.Errorf("connector %s: install trigger capture: %w", c.cfg.Name, err)
	}
	c.trig.installed, c.trig.missing = true, missing
	c.log.Info("installed trigger capture objects", "missing", strings.Join(missing, ", "))
	return nil
}

// buildTriggerSQL prepares the drain's statements from the types at start.
//
// The page query reads the change rows not captured yet (not in the
// position's id ranges) in id order. Each row's old and new jsonb is turned
// back into the table's columns with the types at start (jsonb_to_record),
// then into their text output, exactly what a snapshot reads with col::text;
// only the columns capture reads are decoded, so an unmapped column that
// changed type does not matter. has says, per column, whether the new row
// has it at all (a dropped column is absent: schema drift).
func (c *Connector) buildTriggerSQL() {
	o := triggerNames(c.cfg.Name)
	var newCase, oldCase, hasCase strings.Builder
	for i := range c.cfg.Tables {
		t := &c.cfg.Tables[i]
		cols := t.columns()
		var defs, texts, has []string
		for _, col := range cols {
			id := pgx.Identifier{col}.Sanitize()
			defs = append(defs, id+" "+c.colTypes[t.Name][col])
			texts = append(texts, "r."+id+"::text")
			has = append(has, "c.new ? "+quoteLiteral(col))
		}
		lit := quoteLiteral(t.relName())
		fmt.Fprintf(&newCase, " WHEN %s THEN (SELECT ARRAY[%s] FROM jsonb_to_record(c.new) AS r(%s))", lit, strings.Join(texts, ", "), strings.Join(defs, ", "))
		fmt.Fprintf(&oldCase, " WHEN %s THEN (SELECT ARRAY[%s] FROM jsonb_to_record(c.old) AS r(%s))", lit, strings.Join(texts, ", "), strings.Join(defs, ", "))
		fmt.Fprintf(&hasCase, " WHEN %s THEN ARRAY[%s]", lit, strings.Join(has, ", "))
	}
	c.trig.sql.page = fmt.Sprintf(`SELECT c.id, c.op::text, c.tbl, c.at, c.mark, c.run,
    CASE WHEN c.new IS NULL THEN NULL ELSE CASE c.tbl%s END END,
    CASE WHEN c.old IS NULL THEN NULL ELSE CASE c.tbl%s END END,
    CASE WHEN c.new IS NULL THEN NULL ELSE CASE c.tbl%s END END
FROM %s c
WHERE NOT EXISTS (SELECT 1 FROM unnest($1::int8[], $2::int8[]) AS d(lo, hi) WHERE c.id BETWEEN d.lo AND d.hi)
ORDER BY c.id LIMIT $3`, newCase.String(), oldCase.String(), hasCase.String(), o.table)
	c.trig.sql.mark = fmt.Sprintf("INSERT INTO %s (tbl, op, mark, run) VALUES ('', 'M', $1, $2)", o.table)
	c.trig.sql.del = fmt.Sprintf("DELETE FROM %s c USING unnest($1::int8[], $2::int8[]) AS d(lo, hi) WHERE c.id BETWEEN d.lo AND d.hi", o.table)
	c.trig.sql.islands = fmt.Sprintf("SELECT min(id), max(id) FROM (SELECT id, id - row_number() OVER (ORDER BY id) AS g FROM %s) s GROUP BY g ORDER BY 1", o.table)
}

// triggerPosition is trigger mode's capture position. It is immutable once
// made (with and without return copies), so a pipeline group can hold it.
type triggerPosition struct {
	Seq uint64 `json:"seq"`
	// Snapshot is set once the initial snapshot was captured whole.
	Snapshot bool `json:"snapshot"`
	// Drained lists the ids of change rows captured (durable once the
	// position is) and not yet known deleted, as [first, last] ranges in
	// order.
	Drained [][2]int64 `json:"drained,omitempty"`
}

func (p *triggerPosition) seq() uint64 {
	if p == nil {
		return 0
	}
	return p.Seq
}

// with returns the position with id drained.
func (p *triggerPosition) with(id int64) *triggerPosition {
	return &triggerPosition{Seq: p.seq() + 1, Snapshot: p.Snapshot, Drained: addID(p.Drained, id)}
}

// without returns the position without the ids of rs (deleted).
func (p *triggerPosition) without(rs [][2]int64) *triggerPosition {
	return &triggerPosition{Seq: p.seq() + 1, Snapshot: p.Snapshot, Drained: subtractRanges(p.Drained, rs)}
}

// bounds are the drained ranges as two arrays (the page query's parameters).
func (p *triggerPosition) bounds() (lo, hi []int64) {
	lo, hi = []int64{}, []int64{}
	if p == nil {
		return lo, hi
	}
	for _, r := range p.Drained {
		lo, hi = append(lo, r[0]), append(hi, r[1])
	}
	return lo, hi
}

// String describes the position for status reports.
func (p *triggerPosition) String() string {
	if p == nil {
		return ""
	}
	if len(p.Drained) == 0 {
		return "change table: every captured row deleted"
	}
	parts := make([]string, 0, len(p.Drained))
	for _, r := range p.Drained {
		if r[0] == r[1] {
			parts = append(parts, fmt.Sprint(r[0]))
		} else {
			parts = append(parts, fmt.Sprintf("%d-%d", r[0], r[1]))
		}
	}
	if len(parts) > 4 {
		parts = append(parts[:2], fmt.Sprintf("... (%d ranges)", len(p.Drained)), parts[len(parts)-1])
	}
	return "change ids captured, not yet deleted: " + strings.Join(parts, ", ")
}

// addID returns rs (sorted, disjoint, non-adjacent ranges) with id added.
func addID(rs [][2]int64, id int64) [][2]int64 {
	out := make([][2]int64, len(rs), len(rs)+1)
	copy(out, rs)
	i := sort.Search(len(out), func(i int) bool { return out[i][1] >= id-1 })
	switch {
	case i == len(out):
		return append(out, [2]int64{id, id})
	case out[i][0] <= id && id <= out[i][1]:
		return out
	case out[i][1] == id-1:
		out[i][1] = id
		if i+1 < len(out) && out[i+1][0] == id+1 {
			out[i][1] = out[i+1][1]
			out = append(out[:i+1], out[i+2:]...)
		}
		return out
	case out[i][0] == id+1:
		out[i][0] = id
		return out
	}
	out = append(out, [2]int64{})
	copy(out[i+1:], out[i:])
	out[i] = [2]int64{id, id}
	return out
}

// subtractRanges returns the ids of rs that are not in del, as ranges.
func subtractRanges(rs, del [][2]int64) [][2]int64 {
	var out [][2]int64
	for _, r := range rs {
		pieces := [][2]int64{r}
		for _, d := range del {
			var next [][2]int64
			for _, p := range pieces {
				if d[1] < p[0] || d[0] > p[1] {
					next = append(next, p)
					continue
				}
				if p[0] < d[0] {
					next = append(next, [2]int64{p[0], d[0] - 1})
				}
				if d[1] < p[1] {
					next = append(next, [2]int64{d[1] + 1, p[1]})
				}
			}
			pieces = next
		}
		out = append(out, pieces...)
	}
	return out
}

// changeRow is one row of the change table as the page query reads it.
type changeRow struct {
	id       int64
	op       string
	tbl      string
	at       time.Time
	mark     []byte
	run      *string
	new, old []pgtype.Text
	has      []bool
}

// captureTrigger captures from the change table until ctx ends: the
// initial snapshot when no checkpoint says one finished, then every change
// row not captured yet, woken by notifications.
func (c *Connector) captureTrigger(ctx context.Context, conn *pgx.Conn) error {
	ctx, cancel := context.WithCancel(ctx)
	defer cancel()
	o := triggerNames(c.cfg.Name)
	// LISTEN before the first drain: a change committed after it wakes capture.
	lconn, err := pgx.Connect(ctx, c.cfg.DSN)
	if err != nil {
		return fmt.Errorf("connector %s: notification connection: %w", c.cfg.Name, err)
	}
	defer lconn.Close(context.Background())
	if _, err := lconn.Exec(ctx, "LISTEN "+pgx.Identifier{o.channel}.Sanitize()); err != nil {
		return fmt.Errorf("connector %s: LISTEN %s: %w", c.cfg.Name, o.channel, err)
	}
	wake := make(chan struct{}, 1)
	lerr := make(chan error, 1)
	var wg sync.WaitGroup
	wg.Add(1)
	go func() {
		defer wg.Done()
		for {
			if _, err := lconn.WaitForNotification(ctx); err != nil {
				lerr <- err
				return
			}
			select {
			case wake <- struct{}{}:
			default:
			}
		}
	}()
	defer func() { cancel(); wg.Wait() }() // before lconn closes

	from := position{}
	cp, hasCP := c.readCheckpoint()
	switch {
	case !hasCP || cp.Trigger == nil || !cp.Trigger.Snapshot:
	case c.trig.installed:
		why := "trigger capture's objects were missing (" + strings.Join(c.trig.missing, ", ") + ") and were installed again: changes made without them were not recorded"
		c.log.Error("capture starts over from a new snapshot: " + why)
		if c.obs != nil {
			c.obs.Resnapshot(c.cfg.Name, why)
		}
	default:
		from.Trigger = cp.Trigger
		if err := c.awaitPrevious(ctx, cp); err != nil {
			return err
		}
	}
	if from.Trigger == nil {
		c.stats().setState(connectors.StateSnapshotting)
		tp, err := c.triggerSnapshot(ctx, conn)
		if err != nil {
			return err
		}
		from = position{Trigger: tp}
		// Recorded before draining: a restart before this point snapshots again.
		if err := c.recordSnapshot(ctx, from); err != nil {
			return err
		}
	}
	c.prog.setCapture(from)
	c.trig.received.Store(from.Trigger)
	close(c.ready)
	pl := c.newPipeline(ctx, from)
	defer pl.close()
	c.log.Info("capture draining the change table", "table", o.table, "from", from.Trigger.String())

	var deleted uint64 // Seq of the last position whose rows were deleted
	fallback := time.NewTicker(triggerDrainEvery)
	defer fallback.Stop()
	check := time.NewTicker(triggerCheckEvery)
	defer check.Stop()
	for {
		n, err := c.drainTrigger(ctx, conn, pl)
		if err != nil {
			return err
		}
		if err := pl.reap(); err != nil {
			return err
		}
		if err := c.releaseTrigger(ctx, conn, pl, &deleted); err != nil {
			return err
		}
		if n == triggerPage {
			continue // more is waiting
		}
		for waiting := true; waiting; {
			var soon <-chan time.Time
			if pl.busy() {
				if err := pl.flush(); err != nil {
					return err
				}
				soon = time.After(2 * time.Millisecond)
			}
			select {
			case <-ctx.Done():
				return ctx.Err()
			case err := <-lerr:
				if ctx.Err() != nil {
					return ctx.Err()
				}
				return fmt.Errorf("connector %s: notification connection (LISTEN %s): %w", c.cfg.Name, o.channel, err)
			case <-wake:
				waiting = false
			case <-fallback.C:
				waiting = false
			case <-check.C:
				missing, err := c.triggerMissing(ctx, conn)
				if err != nil {
					return err
				}
				if len(missing) > 0 {
					return fmt.Errorf("connector %s: trigger capture objects were removed or disabled while capturing (%s): changes may have been missed; the connector installs them again and starts over from a snapshot",
						c.cfg.Name, strings.Join(missing, ", "))
				}
			case <-soon:
				if err := pl.reap(); err != nil {
					return err
				}
				if err := c.releaseTrigger(ctx, conn, pl, &deleted); err != nil {
					return err
				}
			}
		}
	}
}

// triggerSnapshot captures every row of the mapped tables and takes the
// change rows visible in the same snapshot as captured (their changes are
// in the rows it read).
func (c *Connector) triggerSnapshot(ctx context.Context, conn *pgx.Conn) (*triggerPosition, error) {
	tx, err := conn.BeginTx(ctx, pgx.TxOptions{IsoLevel: pgx.RepeatableRead, AccessMode: pgx.ReadOnly})
	if err != nil {
		return nil, err
	}
	defer tx.Rollback(context.Background())
	rows, err := tx.Query(ctx, c.trig.sql.islands)
	if err != nil {
		return nil, fmt.Errorf("connector %s: snapshot: change ids: %w", c.cfg.Name, err)
	}
	tp := &triggerPosition{Seq: 1, Snapshot: true}
	for rows.Next() {
		var r [2]int64
		if err := rows.Scan(&r[0], &r[1]); err != nil {
			rows.Close()
			return nil, err
		}
		tp.Drained = append(tp.Drained, r)
	}
	rows.Close()
	if err := rows.Err(); err != nil {
		return nil, err
	}
	if err := c.snapshotTables(ctx, tx); err != nil {
		return nil, err
	}
	return tp, tx.Commit(ctx)
}

// drainTrigger reads one page of change rows not captured yet and feeds
// them to the pipeline in id order. It returns the rows read.
func (c *Connector) drainTrigger(ctx context.Context, conn *pgx.Conn, pl *pipeline) (int, error) {
	lo, hi := pl.pos.Trigger.bounds()
	rows, err := conn.Query(ctx, c.trig.sql.page, lo, hi, triggerPage)
	if err != nil {
		return 0, c.drainFailed(ctx, pl, err)
	}
	var page []changeRow
	for rows.Next() {
		var r changeRow
		if err := rows.Scan(&r.id, &r.op, &r.tbl, &r.at, &r.mark, &r.run, &r.new, &r.old, &r.has); err != nil {
			rows.Close()
			return 0, c.drainFailed(ctx, pl, err)
		}
		page = append(page, r)
	}
	rows.Close()
	if err := rows.Err(); err != nil {
		return 0, c.drainFailed(ctx, pl, err)
	}
	for i := range page {
		if err := c.triggerRow(ctx, pl, &page[i]); err != nil {
			return 0, err
		}
		pl.advance(position{Trigger: pl.pos.Trigger.with(page[i].id)})
		if pl.full() {
			if err := pl.flush(); err != nil {
				return 0, err
			}
		}
	}
	if len(page) > 0 {
		c.trig.received.Store(pl.pos.Trigger)
		if pl.due() {
			if err := pl.flush(); err != nil {
				return 0, err
			}
		}
	}
	return len(page), nil
}

// drainFailed handles a page query that failed: a value that no longer
// converts to its column's type at start (class 22, 42804) is schema drift
// when the catalog says so.
func (c *Connector) drainFailed(ctx context.Context, pl *pipeline, err error) error {
	var pgErr *pgconn.PgError
	if errors.As(err, &pgErr) && (strings.HasPrefix(pgErr.Code, "22") || pgErr.Code == "42804") {
		if de, cerr := c.catalogDrift(ctx); cerr == nil && de != nil {
			if derr := pl.drain(); derr != nil {
				return derr
			}
			return de
		}
	}
	return fmt.Errorf("connector %s: read change table: %w", c.cfg.Name, err)
}

// triggerRow takes one change row: a mark row records what lattice
// projected into rows at this point; a row change becomes a change of its
// record, narrowed to the columns it changed (the old row is the exact
// base).
func (c *Connector) triggerRow(ctx context.Context, pl *pipeline, r *changeRow) error {
	if r.op == "M" {
		marks, err := decodeMarks(r.mark)
		if err != nil {
			c.log.Warn("projection mark in the change table does not decode", "id", r.id, "err", err)
			c.stats().fail(err)
		}
		for _, mk := range marks {
			c.observe(mk.entity, mk.id, mk.ctx)
			// What the row holds is now the projection's (not remembered
			// here): unknown until its next native change.
			c.forget(mk.entity, mk.id)
			if r.run != nil && *r.run == c.run {
				c.unechoed(mk.entity, mk.id, -1)
			}
		}
		return nil
	}
	var t *Table
	for i := range c.cfg.Tables {
		if c.cfg.Tables[i].relName() == r.tbl {
			t = &c.cfg.Tables[i]
		}
	}
	if t == nil {
		return nil // a table no longer mapped
	}
	cols := t.columns()
	if r.op != "D" {
		for i, ok := range r.has {
			if !ok {
				// The row was written without a needed column: drift,
				// unless the catalog has it back (the past).
				if err := pl.drain(); err != nil {
					return err
				}
				de, err := c.catalogDrift(ctx)
				if err != nil {
					return fmt.Errorf("connector %s: change %d of %s lacks column %q; reading the catalog: %w", c.cfg.Name, r.id, t.Name, cols[i], err)
				}
				if de != nil {
					return de
				}
				break
			}
		}
	}
	text := func(vals []pgtype.Text, has []bool) map[string]*string {
		if len(vals) != len(cols) {
			return nil
		}
		m := make(map[string]*string, len(cols))
		for i, col := range cols {
			if has != nil && i < len(has) && !has[i] {
				continue // not in the row (written without the column)
			}
			if vals[i].Valid {
				s := vals[i].String
				m[col] = &s
			} else {
				m[col] = nil
			}
		}
		return m
	}
	if err := pl.pace(); err != nil { // rate limit: ratelimit.go
		return err
	}
	var ch change
	var moved *change
	var err error
	switch r.op {
	case "I":
		ch, err = c.toChange(t, text(r.new, r.has), false)
		ch.before = map[string]crdt.Value{} // a new row: every field is new
	case "U":
		ch, err = c.toChange(t, text(r.new, r.has), false)
		if err == nil {
			if old, oerr := c.toChange(t, text(r.old, nil), false); oerr == nil && old.refused == nil {
				if old.id != ch.id {
					del := change{table: t, id: old.id, deleted: true, fields: map[string]crdt.Value{}}
					moved = &del
					ch.before = map[string]crdt.Value{}
				} else {
					ch.before = old.fields // the exact diff base
				}
			}
		}
	case "D":
		ch, err = c.toChange(t, text(r.old, nil), true)
	default:
		c.log.Warn("change table row with an unknown op", "id", r.id, "op", r.op)
		return nil
	}
	if err != nil {
		c.log.Error("captured row refused", "table", t.Name, "id", r.id, "err", err)
		c.stats().fail(err)
		return nil
	}
	// A row's change-table ids follow its commit order (its next change
	// waits for the row lock): the id is the change's source position.
	ch.at, ch.historical, ch.src = r.at, true, triggerSourcePos(r.id) // dated as in logical mode
	if moved != nil {
		moved.at, moved.historical, moved.src = r.at, true, ch.src
		pl.add(*moved)
		c.remember(*moved)
	}
	if d, ok := c.diff(ch); ok {
		pl.add(d)
	}
	c.remember(ch)
	return nil
}

// triggerSourcePos names a change-table row as a source position (see
// change.src).
func triggerSourcePos(id int64) string { return fmt.Sprintf("T%016X", uint64(id)) }

// forget drops what the connector knows a row holds.
func (c *Connector) forget(entity, id string) {
	c.mu.Lock()
	defer c.mu.Unlock()
	k := rowKey(entity, id)
	delete(c.mu.rows, k)
	delete(c.mu.deleted, k)
}

// releaseTrigger deletes the change rows a checkpoint (without
// checkpoints: durability) covers, and drops them from the position.
func (c *Connector) releaseTrigger(ctx context.Context, conn *pgx.Conn, pl *pipeline, deleted *uint64) error {
	var w *triggerPosition
	if c.checkpoints == nil {
		w = pl.durable.Trigger
	} else {
		c.prog.mu.Lock()
		w = c.prog.written.capture.Trigger
		c.prog.mu.Unlock()
	}
	if w == nil || w.Seq <= *deleted || len(w.Drained) == 0 {
		return nil
	}
	lo, hi := w.bounds()
	if _, err := conn.Exec(ctx, c.trig.sql.del, lo, hi); err != nil {
		return fmt.Errorf("connector %s: delete captured change rows: %w", c.cfg.Name, err)
	}
	*deleted = w.Seq
	if np := pl.pos.Trigger.without(w.Drained); len(np.Drained) != len(pl.pos.Trigger.Drained) || !sameRanges(np.Drained, pl.pos.Trigger.Drained) {
		pl.advance(position{Trigger: np})
	}
	return nil
}

func sameRanges(a, b [][2]int64) bool {
	if len(a) != len(b) {
		return false
	}
	for i := range a {
		if a[i] != b[i] {
			return false
		}
	}
	return true
}

// triggerReport describes trigger capture's positions in a status report.
func (c *Connector) triggerReport(r *connectors.Report) {
	rec := c.trig.received.Load()
	if rec == nil {
		return
	}
	c.prog.mu.Lock()
	written := c.prog.written.capture.Trigger
	c.prog.mu.Unlock()
	r.SourcePosition = written.String()
	r.ReceivedPosition = rec.String()
}
