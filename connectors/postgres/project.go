package postgres

import (
	"context"
	"errors"
	"fmt"
	"sort"
	"strconv"
	"strings"
	"time"

	"github.com/jackc/pgx/v5"
	"github.com/jackc/pgx/v5/pgconn"

	"github.com/lattice-sync/lattice/connectors"
	"github.com/lattice-sync/lattice/crdt"
	"github.com/lattice-sync/lattice/storage"
)

// projectBuffer is how many committed edits the projector's subscription
// holds before it falls back to reading the op log (a backlog draining at
// tens of thousands of edits a second fits).
const projectBuffer = 65536

// project writes resolved record state into the database as edits commit.
// Its session carries the replication origin, so capture skips these
// writes, and each transaction carries the record context it wrote.
func (c *Connector) project(ctx context.Context, sub *storage.Subscription) error {
	defer sub.Close()
	conn, err := pgx.Connect(ctx, c.cfg.DSN)
	if err != nil {
		return fmt.Errorf("connector %s: projection connection: %w", c.cfg.Name, err)
	}
	defer conn.Close(context.Background())
	// One writer per database and connector: a second node that believes
	// it owns the connector (a stale owner cut off from Raft) waits here
	// until the first one's session ends.
	var locked bool
	if err := conn.QueryRow(ctx, "SELECT pg_try_advisory_lock(hashtextextended($1, 0))", "lattice:"+c.cfg.Name).Scan(&locked); err != nil {
		return fmt.Errorf("connector %s: projection lock: %w", c.cfg.Name, err)
	}
	if !locked {
		return fmt.Errorf("connector %s: another session holds the projection lock (advisory lock on 'lattice:%s') on this database: another lattice node is still writing into it; retrying until its session ends", c.cfg.Name, c.cfg.Name)
	}
	switch {
	case c.polling():
		// Poll mode reads its writes back instead (poll_project.go).
	case c.triggering():
		// Trigger mode: the capture trigger skips sessions with this
		// setting (trigger.go).
		if _, err := conn.Exec(ctx, "SELECT set_config($1, $2, false)", triggerOriginSetting, c.cfg.originName()); err != nil {
			return fmt.Errorf("connector %s: mark projection session with %s: %w", c.cfg.Name, triggerOriginSetting, err)
		}
	default:
		if _, err := conn.Exec(ctx, "SELECT pg_replication_origin_session_setup($1)", c.cfg.originName()); err != nil {
			return fmt.Errorf("connector %s: mark projection session with replication origin %s: %w", c.cfg.Name, c.cfg.originName(), err)
		}
	}
	// The subscription is open: everything committed from here on arrives
	// through it. What committed before is projected now: from the op log
	// after the checkpointed projection cursor, or (no cursor, or the log
	// truncated past it) every record (idempotent upserts).
	pos := c.store.Applied()
	if err := c.catchUp(ctx, conn, pos); err != nil {
		return err
	}
	c.prog.setCursor(pos)
	c.stats().projectedTo(pos)
	replayTick := time.NewTicker(time.Second)
	defer replayTick.Stop()
	for {
		var batch []*crdt.Edit
		select {
		case <-ctx.Done():
			return ctx.Err()
		case <-replayTick.C:
			if err := c.replay(ctx, conn); err != nil {
				return err
			}
			continue
		case <-c.recheckC:
			// Rows deferred while their own changes were being captured.
			for recs := c.takeRecheck(); len(recs) > 0; {
				n := min(len(recs), 500)
				if err := c.projectBatch(ctx, conn, recs[:n]); err != nil {
					return err
				}
				recs = recs[n:]
			}
			continue
		case e, ok := <-sub.C():
			if !ok {
				if !sub.Lagged() {
					return nil
				}
				// Fell behind: read what was missed from the op log.
				sub2, err := c.store.Subscribe(projectBuffer)
				if err != nil {
					return err
				}
				sub = sub2
				for _, o := range c.store.Applied() {
					err := c.store.ScanOpLog(o.Node, pos.Get(o.Node), -1, func(e *crdt.Edit) bool {
						batch = append(batch, e)
						return true
					})
					if errors.Is(err, storage.ErrTruncated) {
						// Truncated meanwhile: every record, then carry on.
						batch = nil
						now := c.store.Applied()
						if err := c.projectAll(ctx, conn); err != nil {
							return err
						}
						pos = now
						break
					}
					if err != nil {
						return err
					}
				}
			} else {
				batch = append(batch, e)
			}
		}
		// Drain what is ready, then project each record once.
	drain:
		for len(batch) < projectBuffer/4 {
			select {
			case e, ok := <-sub.C():
				if !ok {
					break drain
				}
				batch = append(batch, e)
			default:
				break drain
			}
		}
		seen := map[string]bool{}
		var records [][2]string
		for _, e := range batch {
			if e.Dot.Seq <= pos.Get(e.Dot.Node) {
				continue
			}
			pos = pos.WithDot(e.Dot)
			if len(e.Writes) == 0 || c.cfg.tableFor(e.Entity) == nil {
				continue
			}
			k := rowKey(e.Entity, e.ID)
			if !seen[k] {
				seen[k] = true
				records = append(records, [2]string{e.Entity, e.ID})
			}
		}
		for len(records) > 0 {
			n := min(len(records), 500)
			if err := c.projectBatch(ctx, conn, records[:n]); err != nil {
				return err
			}
			records = records[n:]
		}
		c.prog.setCursor(pos)
		c.stats().projectedTo(pos)
	}
}

// catchUpLimit bounds the edits replayed from the op log at start; past it,
// a pass over every record is cheaper.
const catchUpLimit = 200000

// catchUp projects what committed before the subscription opened (up to
// upto): the records of the op-log entries after the checkpointed cursor,
// or every record when there is no cursor or the log no longer reaches it.
func (c *Connector) catchUp(ctx context.Context, conn *pgx.Conn, upto crdt.VV) error {
	cp, ok := c.readCheckpoint()
	cursor, hasCursor := cp.cursor()
	if !ok || !hasCursor {
		return c.projectAll(ctx, conn)
	}
	seen := map[string]bool{}
	var records [][2]string
	n := 0
	for _, o := range upto {
		err := c.store.ScanOpLog(o.Node, cursor.Get(o.Node), -1, func(e *crdt.Edit) bool {
			if e.Dot.Seq > o.Seq {
				return false
			}
			n++
			if len(e.Writes) > 0 && c.cfg.tableFor(e.Entity) != nil {
				if k := rowKey(e.Entity, e.ID); !seen[k] {
					seen[k] = true
					records = append(records, [2]string{e.Entity, e.ID})
				}
			}
			return n < catchUpLimit
		})
		if errors.Is(err, storage.ErrTruncated) || n >= catchUpLimit {
			c.log.Info("projection cursor too far behind the op log: projecting every record", "cursor", cursor.String())
			return c.projectAll(ctx, conn)
		}
		if err != nil {
			return err
		}
	}
	c.log.Info("projection resumed from its cursor", "cursor", cursor.String(), "edits", n, "records", len(records))
	for len(records) > 0 {
		k := min(len(records), 500)
		if err := c.projectBatch(ctx, conn, records[:k]); err != nil {
			return err
		}
		records = records[k:]
	}
	return nil
}

// projectAll projects every record of every mapped entity.
func (c *Connector) projectAll(ctx context.Context, conn *pgx.Conn) error {
	n := 0
	for _, t := range c.cfg.Tables {
		after := ""
		for {
			page, more, err := c.store.List(t.Entity, after, 500)
			if err != nil {
				return err
			}
			for _, r := range page {
				after = r.ID
				if err := c.projectOrQueue(ctx, conn, t.Entity, r.ID); err != nil {
					return err
				}
				n++
			}
			if !more {
				break
			}
		}
	}
	c.log.Info("initial projection done", "records", n)
	return nil
}

// projection is the SQL that writes one record's resolved state.
type projection struct {
	entity, id string
	token      []byte // the record context it writes (crdt.EncodeToken)
	table      *Table
	deleted    bool
	vals       []any // key values, then valueColumns' values (nil: NULL)
	q          string
	args       []any
	rec        *crdt.Record
	// poll is, in poll mode, what the row held when the projection
	// committed (poll_project.go).
	poll *pollBack
}

// projectRecord writes one record's resolved state in one transaction.
func (c *Connector) projectRecord(ctx context.Context, conn *pgx.Conn, entity, id string) error {
	p, err := c.buildPaced(ctx, entity, id) // build within the write rate limit: ratelimit.go
	if err != nil || p == nil {
		return err
	}
	tctx, cancel := context.WithTimeout(ctx, 30*time.Second)
	defer cancel()
	c.unechoed(p.entity, p.id, 1)
	committed := false
	defer func() {
		if !committed {
			c.unechoed(p.entity, p.id, -1)
		}
	}()
	tx, err := conn.Begin(tctx)
	if err != nil {
		return fmt.Errorf("connector %s: projection: %w", c.cfg.Name, err)
	}
	defer tx.Rollback(context.Background())
	// Poll mode: a row changed since it was last polled is left for the
	// poll (poll_project.go).
	if kept, err := c.pollLock(tctx, tx, []*projection{p}); err != nil || len(kept) == 0 {
		return err
	}
	if err := c.execProjection(tctx, tx, p); err != nil {
		return err
	}
	// The marks come after the writes: in trigger mode their place in the
	// change table must follow the row locks the writes took (trigger.go).
	if err := c.execMarks(tctx, tx, []*projection{p}); err != nil {
		return err
	}
	if err := c.pollReadBack(tctx, tx, []*projection{p}); err != nil { // poll mode
		return err
	}
	if err := tx.Commit(tctx); err != nil {
		return fmt.Errorf("connector %s: projection commit: %w", c.cfg.Name, err)
	}
	committed = true
	c.projected(p)
	return nil
}

// projectBatch writes many records in one transaction (one commit), each
// under a savepoint so a record the database refuses goes to the
// dead-letter queue without undoing the others.
func (c *Connector) projectBatch(ctx context.Context, conn *pgx.Conn, records [][2]string) error {
	// Rate limit (ratelimit.go): batches fit the write burst; wait for the
	// budget before building, give back what is not written.
	if parts, ok := c.writeParts(records); ok {
		for _, part := range parts {
			if err := c.projectBatch(ctx, conn, part); err != nil {
				return err
			}
		}
		return nil
	}
	if err := c.limits().writes.take(ctx, len(records), nil); err != nil {
		return err
	}
	var ps []*projection
	for _, r := range records {
		p, err := c.buildOrQueue(ctx, r[0], r[1])
		if err != nil {
			return err
		}
		if p != nil {
			ps = append(ps, p)
		}
	}
	c.limits().writes.giveBack(len(records) - len(ps)) // ratelimit.go
	if len(ps) == 0 {
		return nil
	}
	tctx, cancel := context.WithTimeout(ctx, 60*time.Second)
	defer cancel()
	// Fast path: the whole batch in one transaction sent as one pipeline
	// (one round trip). If the database refuses any statement, the
	// transaction is rolled back and the batch goes through the slow path.
	// Each row counts as unechoed from before the send (its echo may be
	// decoded before the commit returns here) until the stream shows it.
	for _, p := range ps {
		c.unechoed(p.entity, p.id, 1)
	}
	if ok, err := c.pipeline(tctx, conn, ps); err != nil {
		return err // the connector restarts with fresh state
	} else if ok {
		for _, p := range ps {
			c.projected(p)
		}
		return nil
	}
	// Rolled back: no echo will come. The slow path counts each row again.
	for _, p := range ps {
		c.unechoed(p.entity, p.id, -1)
	}
	tx, err := conn.Begin(tctx)
	if err != nil {
		return fmt.Errorf("connector %s: projection: %w", c.cfg.Name, err)
	}
	defer tx.Rollback(context.Background())
	if ps, err = c.pollLock(tctx, tx, ps); err != nil { // poll mode (poll_project.go)
		return err
	}
	var done []*projection
	for _, p := range ps {
		if _, err := tx.Exec(tctx, "SAVEPOINT lattice_record"); err != nil {
			return fmt.Errorf("connector %s: projection: %w", c.cfg.Name, err)
		}
		c.unechoed(p.entity, p.id, 1)
		err := c.execProjection(tctx, tx, p)
		var refused *refusedError
		switch {
		case errors.As(err, &refused):
			if _, err := tx.Exec(tctx, "ROLLBACK TO SAVEPOINT lattice_record"); err != nil {
				return fmt.Errorf("connector %s: projection: %w", c.cfg.Name, err)
			}
			c.unechoed(p.entity, p.id, -1) // not written: no mark for it
			if err := c.deadLetter(ctx, connectors.DirectionProject, p.entity, p.id, refused.err); err != nil {
				return err
			}
		case err != nil:
			return err
		default:
			if _, err := tx.Exec(tctx, "RELEASE SAVEPOINT lattice_record"); err != nil {
				return fmt.Errorf("connector %s: projection: %w", c.cfg.Name, err)
			}
			done = append(done, p)
		}
	}
	if len(done) > 0 {
		if err := c.execMarks(tctx, tx, done); err != nil {
			return err
		}
	}
	if err := c.pollReadBack(tctx, tx, done); err != nil { // poll mode
		return err
	}
	if err := tx.Commit(tctx); err != nil {
		return fmt.Errorf("connector %s: projection commit: %w", c.cfg.Name, err)
	}
	for _, p := range done {
		c.projected(p)
	}
	return nil
}

// pipeline sends a batch's projections in one transaction and one round
// trip. It reports false (and has rolled back) when the database refused a
// statement for good; transient failures are errors.
func (c *Connector) pipeline(ctx context.Context, conn *pgx.Conn, ps []*projection) (bool, error) {
	if c.pollst.Load() != nil {
		return c.pollPipeline(ctx, conn, ps) // poll mode (poll_project.go)
	}
	b := &pgx.Batch{}
	b.Queue("BEGIN")
	for _, st := range c.statements(ps) {
		b.Queue(st.SQL, st.Arguments...)
	}
	// The marks after the writes (see execMarks).
	if q, args, ok := c.markStatement(ps); ok {
		b.Queue(q, args...)
	}
	b.Queue("COMMIT")
	res := conn.SendBatch(ctx, b)
	var failed error
	for i := 0; i < b.Len(); i++ {
		if _, err := res.Exec(); err != nil && failed == nil {
			failed = err
		}
	}
	if err := res.Close(); err != nil && failed == nil {
		failed = err
	}
	if failed == nil {
		return true, nil
	}
	// An error aborts the transaction; make sure nothing of it remains.
	_, _ = conn.Exec(ctx, "ROLLBACK")
	var pgErr *pgconn.PgError
	if errors.As(failed, &pgErr) && (permanent(pgErr) || pgErr.Code == "25P02") {
		return false, nil
	}
	return false, fmt.Errorf("connector %s: projection: %w", c.cfg.Name, failed)
}

// emitMarks writes a projection message into the transaction's WAL.
const emitMarks = "SELECT pg_logical_emit_message(true, $1, $2::bytea)"

// markStatement is the statement that records ps's marks: a logical
// message in the WAL (logical mode), a mark row in the change table
// (trigger mode, when it captures: trigger.go), none in poll mode (no
// stream reads them: poll_project.go).
func (c *Connector) markStatement(ps []*projection) (string, []any, bool) {
	switch {
	case c.polling():
		return "", nil, false
	case c.triggering():
		if !c.cfg.Capture {
			return "", nil, false
		}
		return c.trig.sql.mark, []any{appendMarks(nil, ps), c.run}, true
	}
	return emitMarks, []any{marksPrefix, appendMarks(nil, ps)}, true
}

// execMarks writes the projection marks for ps inside tx, after their
// writes: in trigger mode a mark's place in the change table is its place
// in the row's history, so it must come after the row locks the writes
// took (for logical mode the place inside the transaction does not matter).
func (c *Connector) execMarks(ctx context.Context, tx pgx.Tx, ps []*projection) error {
	q, args, ok := c.markStatement(ps)
	if !ok {
		return nil
	}
	if _, err := tx.Exec(ctx, q, args...); err != nil {
		return fmt.Errorf("connector %s: projection marks: %w", c.cfg.Name, err)
	}
	return nil
}

// execProjection runs one record's projection inside tx (its mark is
// written separately, by execMarks).
func (c *Connector) execProjection(ctx context.Context, tx pgx.Tx, p *projection) error {
	if _, err := tx.Exec(ctx, p.q, p.args...); err != nil {
		var pgErr *pgconn.PgError
		if errors.As(err, &pgErr) && permanent(pgErr) && !schemaFailure(err) { // a schema change is no dead letter: drift.go
			return &refusedError{err: err}
		}
		return fmt.Errorf("connector %s: projection of %s %s: %w", c.cfg.Name, p.entity, p.id, err)
	}
	return nil
}

// projected reports a landed projection.
func (c *Connector) projected(p *projection) {
	if !c.pollLanded(p) {
		return // poll mode: deferred, not written (poll_project.go)
	}
	c.log.Debug("projected", "entity", p.entity, "id", p.id, "context", p.rec.Context.String())
	if c.obs == nil {
		return
	}
	var newest crdt.Timestamp
	for i := range p.rec.Registers {
		for _, v := range p.rec.Registers[i].Versions {
			if v.TS > newest {
				newest = v.TS
			}
		}
	}
	c.obs.Projected(c.cfg.Name, time.Since(newest.Time()))
}

// build prepares a record's projection; nil when there is nothing to write.
func (c *Connector) build(entity, id string) (*projection, error) {
	t := c.cfg.tableFor(entity)
	ent, ok := c.schema.Schema().Entity(entity)
	if !ok || t == nil {
		return nil, nil
	}
	if c.deferCapturing(entity, id) {
		return nil, nil // projected once the row's own changes are durable
	}
	rec, err := c.store.Get(entity, id)
	if err != nil {
		return nil, err
	}
	fields, deleted := ent.View(rec)
	values := map[string]crdt.Value{}
	mapped := map[string]crdt.Value{}
	for _, f := range fields {
		values[f.Name] = f.Value
	}
	if ok, err := t.projects(values, deleted); !ok || err != nil {
		return nil, err // project_filter: not written, or to the dead-letter queue (transform.go)
	}
	for _, field := range t.Columns {
		mapped[field] = values[field]
	}
	// Skip what the database already holds, as its own change stream last
	// showed it (not lattice's view of it): a row whose own edit won is not
	// written back, and one that a projection overwrote is.
	if c.holds(entity, id, mapped, deleted) {
		return nil, nil
	}
	keys := strings.Split(id, "/")
	if len(keys) != len(t.Key) {
		return nil, fmt.Errorf("connector %s: id %q does not split into the %d key columns of %s", c.cfg.Name, id, len(t.Key), t.Name)
	}
	p := &projection{entity: entity, id: id, token: crdt.EncodeToken(rec.Context), rec: rec, table: t, deleted: deleted}
	for _, k := range keys {
		p.vals = append(p.vals, k)
	}
	if !deleted {
		for _, col := range c.valueColumns(t) {
			var v any
			if s, ok := t.toColumn(col, values[t.Columns[col]]); ok {
				v = s
			}
			p.vals = append(p.vals, v)
		}
	}
	p.q, p.args = c.statement([]*projection{p})
	return p, nil
}

// valueColumns are the mapped columns a projection writes besides the key,
// in a fixed order.
func (c *Connector) valueColumns(t *Table) []string {
	var out []string
	for _, col := range mapKeys(t.Columns) {
		if !contains(t.Key, col) {
			out = append(out, col)
		}
	}
	sort.Strings(out)
	return out
}

// statement is the SQL that writes ps, which share one table and are all
// deletes or all upserts: one multi-row INSERT ... ON CONFLICT DO UPDATE
// (a row that already holds its values is left alone: no new row version,
// no UPDATE triggers) or one DELETE ... WHERE (key) IN (...).
func (c *Connector) statement(ps []*projection) (string, []any) {
	t := ps[0].table
	types := c.colTypes[t.Name]
	table := pgx.Identifier(strings.Split(t.Name, ".")).Sanitize()
	cols := append(append([]string{}, t.Key...), c.valueColumns(t)...)
	var args []any
	param := func(v any, col string) string {
		args = append(args, v)
		return "CAST($" + strconv.Itoa(len(args)) + "::text AS " + types[col] + ")"
	}
	ident := func(col string) string { return pgx.Identifier{col}.Sanitize() }
	var keyCols []string
	for _, k := range t.Key {
		keyCols = append(keyCols, ident(k))
	}
	var sb strings.Builder
	if ps[0].deleted {
		sb.WriteString("DELETE FROM " + table + " WHERE (" + strings.Join(keyCols, ", ") + ") IN (")
		for i, p := range ps {
			if i > 0 {
				sb.WriteString(", ")
			}
			sb.WriteString("(")
			for j, k := range t.Key {
				if j > 0 {
					sb.WriteString(", ")
				}
				sb.WriteString(param(p.vals[j], k))
			}
			sb.WriteString(")")
		}
		sb.WriteString(")")
		return sb.String(), args
	}
	var names []string
	for _, col := range cols {
		names = append(names, ident(col))
	}
	sb.WriteString("INSERT INTO " + table + " AS t (" + strings.Join(names, ", ") + ") VALUES ")
	for i, p := range ps {
		if i > 0 {
			sb.WriteString(", ")
		}
		sb.WriteString("(")
		for j, col := range cols {
			if j > 0 {
				sb.WriteString(", ")
			}
			sb.WriteString(param(p.vals[j], col))
		}
		sb.WriteString(")")
	}
	sb.WriteString(" ON CONFLICT (" + strings.Join(keyCols, ", ") + ")")
	valueCols := cols[len(t.Key):]
	if len(valueCols) == 0 {
		sb.WriteString(" DO NOTHING")
		return sb.String(), args
	}
	var sets, olds, news []string
	for _, col := range valueCols {
		sets = append(sets, ident(col)+" = EXCLUDED."+ident(col))
		olds = append(olds, "t."+ident(col))
		news = append(news, "EXCLUDED."+ident(col))
	}
	sb.WriteString(" DO UPDATE SET " + strings.Join(sets, ", ") + " WHERE (" + strings.Join(olds, ", ") + ") IS DISTINCT FROM (" + strings.Join(news, ", ") + ")")
	return sb.String(), args
}

// statements groups a batch's projections into multi-row statements (one
// per table and kind, at most 500 rows or 30,000 parameters each).
func (c *Connector) statements(ps []*projection) []*pgx.QueuedQuery {
	type shape struct {
		table   string
		deleted bool
	}
	groups := map[shape][]*projection{}
	var order []shape
	for _, p := range ps {
		k := shape{p.table.Name, p.deleted}
		if _, ok := groups[k]; !ok {
			order = append(order, k)
		}
		groups[k] = append(groups[k], p)
	}
	var out []*pgx.QueuedQuery
	for _, k := range order {
		g := groups[k]
		per := max(1, min(500, 30000/max(1, len(g[0].vals))))
		for len(g) > 0 {
			n := min(per, len(g))
			q, args := c.statement(g[:n])
			out = append(out, &pgx.QueuedQuery{SQL: q, Arguments: args})
			g = g[n:]
		}
	}
	return out
}

// refusedError is a projection the database refused for good (constraint
// or type violation): it goes to the dead-letter queue.
type refusedError struct{ err error }

func (e *refusedError) Error() string { return e.err.Error() }
func (e *refusedError) Unwrap() error { return e.err }

// permanent reports whether a PostgreSQL error will not go away by retrying:
// integrity constraint violations (class 23) and data exceptions (class 22).
func permanent(e *pgconn.PgError) bool {
	return strings.HasPrefix(e.Code, "23") || strings.HasPrefix(e.Code, "22") || e.Code == "42804"
}

// projectOrQueue projects a record; a refusal goes to the dead-letter queue.
func (c *Connector) projectOrQueue(ctx context.Context, conn *pgx.Conn, entity, id string) error {
	err := c.projectRecord(ctx, conn, entity, id)
	var refused *refusedError
	if errors.As(err, &refused) {
		return c.deadLetter(ctx, connectors.DirectionProject, entity, id, refused.err)
	}
	return err
}

// replayLoop retries the dead letters an operator asked to replay.
func (c *Connector) replay(ctx context.Context, conn *pgx.Conn) error {
	if c.dlq == nil {
		return nil
	}
	for _, l := range c.dlq.List(c.cfg.Name) {
		if !l.Replay {
			continue
		}
		var err error
		switch l.Direction {
		case connectors.DirectionProject:
			err = c.projectRecord(ctx, conn, l.Entity, l.RecordID)
		case connectors.DirectionCapture:
			err = c.recapture(ctx, l.Entity, l.RecordID)
		}
		var refused *refusedError
		if err != nil && !errors.As(err, &refused) && !errors.Is(err, crdt.ErrInvalid) {
			return err // transient: retried with the connector
		}
		if rerr := c.dlq.Resolve(ctx, c.cfg.Name, l.ID, err); rerr != nil {
			return rerr
		}
		c.log.Info("dead letter replayed", "id", l.ID, "entity", l.Entity, "record", l.RecordID, "ok", err == nil)
	}
	return nil
}

// recapture reads a row again from the source and captures it as it is now.
func (c *Connector) recapture(ctx context.Context, entity, id string) error {
	t := c.cfg.tableFor(entity)
	if t == nil {
		return fmt.Errorf("%w: entity %q is no longer mapped by connector %s", crdt.ErrInvalid, entity, c.cfg.Name)
	}
	keys := strings.Split(id, "/")
	if len(keys) != len(t.Key) {
		return fmt.Errorf("%w: id %q does not match the key columns of %s", crdt.ErrInvalid, id, t.Name)
	}
	conn, err := pgx.Connect(ctx, c.cfg.DSN)
	if err != nil {
		return err
	}
	defer conn.Close(context.Background())
	cols := t.columns()
	var where []string
	args := make([]any, len(keys))
	for i, k := range t.Key {
		where = append(where, fmt.Sprintf("%s::text = $%d", pgx.Identifier{k}.Sanitize(), i+1))
		args[i] = keys[i]
	}
	q := fmt.Sprintf("SELECT %s FROM %s WHERE %s", castText(cols), pgx.Identifier(strings.Split(t.Name, ".")).Sanitize(), strings.Join(where, " AND "))
	text, err := scanText(conn.QueryRow(ctx, q, args...), cols)
	if err != nil {
		if errors.Is(err, pgx.ErrNoRows) {
			return nil // the row is gone: nothing to capture
		}
		return err
	}
	ch, err := c.toChange(t, text, false)
	if err != nil {
		return fmt.Errorf("%w: %v", crdt.ErrInvalid, err)
	}
	if ch.refused != nil {
		return ch.refused // the dead letter stays, with this error
	}
	ch.at, ch.seen = time.Now(), c.seenOf(ch.table.Entity, ch.id)
	return c.apply(ctx, []change{ch})
}

func contains(xs []string, s string) bool {
	for _, x := range xs {
		if x == s {
			return true
		}
	}
	return false
}
