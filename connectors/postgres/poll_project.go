package postgres

import (
	"context"
	"errors"
	"fmt"
	"math"
	"strconv"
	"strings"

	"github.com/jackc/pgx/v5"
	"github.com/jackc/pgx/v5/pgconn"
)

// Projection in poll mode (poll.go). No change stream shows lattice's own
// writes, so each projection transaction
//
//  1. locks the rows it is about to write (SELECT ... FOR UPDATE) and
//     leaves out, deferring it to the next poll, any row whose updated_at
//     says it changed since the connector last saw it: its change must be
//     captured before the record is projected over it (pollAllow);
//  2. writes the others as in every mode;
//  3. reads back what the rows now hold (values, updated_at, soft-delete
//     column) and the database time, after every write of the transaction
//     and before its commit (so a trigger's updated_at is never later).
//
// Once the transaction committed, projected() hands the read-back to
// pollLanded: it becomes what the connector last saw of each row (a poll
// reading it again finds no change: echo suppression), and the time and
// record context it wrote are kept for causality (pollRow.covered).

// pollBack is what a projection's transaction read back of its row.
type pollBack struct {
	deferred bool // left out: the row changed since it was last polled
	present  bool
	text     map[string]*string // the row's columns (Table.columns())
	u        *string            // updated_at
	soft     *string            // the soft-delete column
	at       int64              // database time before the commit (µs)
}

// querier is what the lock and read-back queries run on (a connection or
// a transaction).
type querier interface {
	Query(ctx context.Context, sql string, args ...any) (pgx.Rows, error)
}

// pollGroup is the projections of one table in a batch.
type pollGroup struct {
	t  *Table
	ps []*projection
}

func pollGroups(ps []*projection) []*pollGroup {
	var out []*pollGroup
	by := map[string]*pollGroup{}
	for _, p := range ps {
		g := by[p.table.Name]
		if g == nil {
			g = &pollGroup{t: p.table}
			by[p.table.Name] = g
			out = append(out, g)
		}
		g.ps = append(g.ps, p)
	}
	return out
}

// keyValues is "(VALUES (1, CAST($n AS type), ...), ...) AS v(lattice_i,
// lattice_k0, ...)": the group's keys, numbered by their place in g.ps.
func (c *Connector) keyValues(g *pollGroup, args []any) (string, string, []any) {
	types := c.colTypes[g.t.Name]
	var sb strings.Builder
	sb.WriteString("(VALUES ")
	for i, p := range g.ps {
		if i > 0 {
			sb.WriteString(", ")
		}
		sb.WriteString("(" + strconv.Itoa(i))
		for j, k := range g.t.Key {
			args = append(args, p.vals[j])
			sb.WriteString(", CAST($" + strconv.Itoa(len(args)) + "::text AS " + types[k] + ")")
		}
		sb.WriteString(")")
	}
	names := []string{"lattice_i"}
	var on []string
	for j, k := range g.t.Key {
		n := "lattice_k" + strconv.Itoa(j)
		names = append(names, n)
		on = append(on, "t."+pgx.Identifier{k}.Sanitize()+" = v."+n)
	}
	sb.WriteString(") AS v(" + strings.Join(names, ", ") + ")")
	return sb.String(), strings.Join(on, " AND "), args
}

func pollTableName(t *Table) string {
	return pgx.Identifier(strings.Split(t.Name, ".")).Sanitize()
}

// lockSQL locks a group's rows and reads their updated_at.
func (c *Connector) lockSQL(g *pollGroup) (string, []any) {
	vals, on, args := c.keyValues(g, nil)
	return fmt.Sprintf("SELECT v.lattice_i, CAST(t.%s AS text) FROM %s JOIN %s AS t ON %s ORDER BY v.lattice_i FOR UPDATE OF t",
		pgx.Identifier{g.t.UpdatedAt}.Sanitize(), vals, pollTableName(g.t), on), args
}

// readBackSQL reads back what a group's rows hold (absent rows too).
func (c *Connector) readBackSQL(g *pollGroup) (string, []any) {
	vals, on, args := c.keyValues(g, nil)
	sel := []string{qualified(g.t.columns())}
	sel = append(sel, "CAST(t."+pgx.Identifier{g.t.UpdatedAt}.Sanitize()+" AS text)")
	if g.t.Poll != nil && g.t.Poll.SoftDelete != "" {
		sel = append(sel, "t."+pgx.Identifier{g.t.Poll.SoftDelete}.Sanitize()+"::text")
	} else {
		sel = append(sel, "NULL::text")
	}
	return fmt.Sprintf("SELECT v.lattice_i, t.ctid IS NOT NULL, %s FROM %s LEFT JOIN %s AS t ON %s",
		strings.Join(sel, ", "), vals, pollTableName(g.t), on), args
}

// clockSQL reads the database time as the group's updated_at type.
func (c *Connector) clockSQL(g *pollGroup) string {
	return fmt.Sprintf("SELECT CAST(clock_timestamp() AS %s)::text", c.colTypes[g.t.Name][g.t.UpdatedAt])
}

// lockRows reads a lock query's rows: updated_at by place in the group.
func lockRows(rows pgx.Rows, n int) (map[int]*string, error) {
	defer rows.Close()
	out := make(map[int]*string, n)
	for rows.Next() {
		var i int
		var u *string
		if err := rows.Scan(&i, &u); err != nil {
			return nil, err
		}
		out[i] = u
	}
	return out, rows.Err()
}

// readBackRows reads a read-back query's rows into the group's projections.
func readBackRows(rows pgx.Rows, g *pollGroup) error {
	defer rows.Close()
	cols := g.t.columns()
	for rows.Next() {
		var i int
		var present bool
		vals := make([]*string, len(cols)+2)
		ptrs := []any{&i, &present}
		for j := range vals {
			ptrs = append(ptrs, &vals[j])
		}
		if err := rows.Scan(ptrs...); err != nil {
			return err
		}
		if i < 0 || i >= len(g.ps) {
			return fmt.Errorf("read back: row %d of %d", i, len(g.ps))
		}
		b := &pollBack{present: present, text: make(map[string]*string, len(cols)), u: vals[len(cols)], soft: vals[len(cols)+1]}
		for j, col := range cols {
			b.text[col] = vals[j]
		}
		g.ps[i].poll = b
	}
	return rows.Err()
}

// setClock stamps a group's read-backs with the database time.
func setClock(g *pollGroup, s string) {
	at, _ := pollMicros(&s)
	for _, p := range g.ps {
		if p.poll != nil {
			p.poll.at = at
		}
	}
}

// pollLock locks the rows of ps in tx and returns the projections that may
// be written; the others are deferred (see pollAllow). Outside poll mode it
// returns ps.
func (c *Connector) pollLock(ctx context.Context, tx querier, ps []*projection) ([]*projection, error) {
	if c.pollst.Load() == nil || len(ps) == 0 {
		return ps, nil
	}
	var kept []*projection
	for _, g := range pollGroups(ps) {
		q, args := c.lockSQL(g)
		rows, err := tx.Query(ctx, q, args...)
		if err != nil {
			return nil, fmt.Errorf("connector %s: projection: lock rows of %s: %w", c.cfg.Name, g.t.Name, err)
		}
		us, err := lockRows(rows, len(g.ps))
		if err != nil {
			return nil, fmt.Errorf("connector %s: projection: lock rows of %s: %w", c.cfg.Name, g.t.Name, err)
		}
		kept = append(kept, c.pollAllow(g, us)...)
	}
	return kept, nil
}

// pollReadBack reads back, in tx after its writes, what the rows of ps
// hold and the time (for pollLanded). Outside poll mode it does nothing.
func (c *Connector) pollReadBack(ctx context.Context, tx querier, ps []*projection) error {
	if c.pollst.Load() == nil || len(ps) == 0 {
		return nil
	}
	for _, g := range pollGroups(ps) {
		q, args := c.readBackSQL(g)
		rows, err := tx.Query(ctx, q, args...)
		if err != nil {
			return fmt.Errorf("connector %s: projection: read back %s: %w", c.cfg.Name, g.t.Name, err)
		}
		if err := readBackRows(rows, g); err != nil {
			return fmt.Errorf("connector %s: projection: read back %s: %w", c.cfg.Name, g.t.Name, err)
		}
	}
	for _, g := range pollGroups(ps) {
		var now string
		rows, err := tx.Query(ctx, c.clockSQL(g))
		if err == nil {
			for rows.Next() {
				err = rows.Scan(&now)
			}
			rows.Close()
			if err == nil {
				err = rows.Err()
			}
		}
		if err != nil {
			return fmt.Errorf("connector %s: projection: read the time: %w", c.cfg.Name, err)
		}
		setClock(g, now)
	}
	return nil
}

// pollAllow keeps the projections whose rows may be written, given each
// row's updated_at under lock (absent: no row). A row may be written when
// it is absent, or its updated_at is the one last seen, below the window
// of every scan (so a completed scan read it), at most the time of the
// connector's own last projection into it (its own write, or older), or
// null (a poll never sees such a row change). Otherwise it changed since:
// it is deferred (Connector.mu.deferred) and the poller is woken; once the
// poll has read it, the projector tries again. An absent row the poller
// saw present was deleted since: with keyset_every its delete is looked
// for now (a key-set pass), and it is deferred too.
func (c *Connector) pollAllow(g *pollGroup, us map[int]*string) []*projection {
	st := c.pollst.Load()
	var kept, deferred []*projection
	st.mu.Lock()
	for i, p := range g.ps {
		k := rowKey(p.entity, p.id)
		r := st.mu.rows[k]
		ut, present := us[i]
		ok := false
		switch {
		case !present:
			ok = p.deleted || r == nil || !r.present || g.t.Poll == nil || g.t.Poll.KeysetEvery == 0
			if !ok {
				st.mu.keyset[p.entity] = true
			}
		default:
			u, notNull := pollMicros(ut)
			ok = !notNull || (r != nil && r.seen && r.u == u) || u < st.mu.from[p.entity] || (r != nil && u <= r.projAt)
		}
		if ok {
			kept = append(kept, p)
		} else {
			p.poll = &pollBack{deferred: true}
			deferred = append(deferred, p)
		}
	}
	if len(deferred) > 0 {
		c.mu.Lock()
		for _, p := range deferred {
			c.mu.deferred[rowKey(p.entity, p.id)] = true
		}
		c.mu.Unlock()
	}
	st.mu.Unlock()
	if len(deferred) > 0 {
		c.log.Debug("projection deferred: rows changed since they were last polled", "rows", len(deferred), "table", g.t.Name)
		st.wake()
	}
	return kept
}

// pollPipeline is pipeline (project.go) in poll mode: one round trip to
// begin and lock the rows (pollLock), one to write those that may be
// written, read them back and commit. Like pipeline, it reports false (and
// has rolled back) when the database refused a statement for good.
func (c *Connector) pollPipeline(ctx context.Context, conn *pgx.Conn, ps []*projection) (bool, error) {
	groups := pollGroups(ps)
	b := &pgx.Batch{}
	b.Queue("BEGIN")
	for _, g := range groups {
		q, args := c.lockSQL(g)
		b.Queue(q, args...)
	}
	res := conn.SendBatch(ctx, b)
	_, err := res.Exec()
	var kept []*projection
	for _, g := range groups {
		if err != nil {
			break
		}
		var rows pgx.Rows
		rows, err = res.Query()
		if err != nil {
			break
		}
		var us map[int]*string
		if us, err = lockRows(rows, len(g.ps)); err == nil {
			kept = append(kept, c.pollAllow(g, us)...)
		}
	}
	if cerr := res.Close(); cerr != nil && err == nil {
		err = cerr
	}
	if err != nil {
		_, _ = conn.Exec(ctx, "ROLLBACK")
		return false, fmt.Errorf("connector %s: projection: lock rows: %w", c.cfg.Name, err)
	}
	if len(kept) == 0 {
		if _, err := conn.Exec(ctx, "COMMIT"); err != nil {
			return false, fmt.Errorf("connector %s: projection: %w", c.cfg.Name, err)
		}
		return true, nil
	}
	b = &pgx.Batch{}
	sts := c.statements(kept)
	for _, st := range sts {
		b.Queue(st.SQL, st.Arguments...)
	}
	kgroups := pollGroups(kept)
	for _, g := range kgroups {
		q, args := c.readBackSQL(g)
		b.Queue(q, args...)
	}
	for _, g := range kgroups {
		b.Queue(c.clockSQL(g))
	}
	b.Queue("COMMIT")
	res = conn.SendBatch(ctx, b)
	var failed error
	note := func(err error) {
		if err != nil && failed == nil {
			failed = err
		}
	}
	for range sts {
		_, err := res.Exec()
		note(err)
	}
	for _, g := range kgroups {
		rows, err := res.Query()
		note(err)
		if err == nil {
			note(readBackRows(rows, g))
		} else {
			rows.Close()
		}
	}
	for _, g := range kgroups {
		var now string
		err := res.QueryRow().Scan(&now)
		note(err)
		if err == nil {
			setClock(g, now)
		}
	}
	_, err = res.Exec()
	note(err)
	note(res.Close())
	if failed == nil {
		return true, nil
	}
	for _, p := range kept {
		p.poll = nil // not written: nothing to read back
	}
	_, _ = conn.Exec(ctx, "ROLLBACK")
	var pgErr *pgconn.PgError
	if errors.As(failed, &pgErr) && (permanent(pgErr) || pgErr.Code == "25P02") {
		return false, nil
	}
	return false, fmt.Errorf("connector %s: projection: %w", c.cfg.Name, failed)
}

// pollLanded takes a committed projection's read-back as what the row now
// holds (see the top of this file). It reports whether the projection was
// written (a deferred one was not). Outside poll mode it reports true.
func (c *Connector) pollLanded(p *projection) bool {
	st := c.pollst.Load()
	if st == nil || p.poll == nil {
		return true
	}
	b := p.poll
	if b.deferred {
		return false
	}
	soft := b.present && softDeleted(p.table, b.soft)
	k := rowKey(p.entity, p.id)
	st.mu.Lock()
	st.mu.gen++
	r := st.row(k)
	r.land = st.mu.gen
	r.seen, r.present, r.u = true, b.present && !soft, math.MinInt64
	if b.present {
		if u, ok := pollMicros(b.u); ok {
			r.u = u
		}
	}
	r.projAt = max(r.projAt, b.at)
	r.projs = append(r.projs, pollProj{at: b.at, ctx: p.rec.Context})
	if len(r.projs) > pollProjsMax {
		r.projs = append(r.projs[:0], r.projs[len(r.projs)-pollProjsMax:]...)
	}
	st.mu.Unlock()
	if !b.present || soft {
		// Gone (a delete projected) or soft-deleted: a poll reading it so
		// is no change.
		c.remember(change{table: p.table, id: p.id, deleted: true})
		return true
	}
	ch, err := c.toChange(p.table, b.text, false)
	if err != nil || ch.refused != nil {
		c.log.Warn("projected row does not read back as a record (a poll will refuse it)", "entity", p.entity, "id", p.id, "err", errOr(err, ch.refused))
		return true
	}
	ch.id = p.id
	c.remember(ch)
	return true
}

func errOr(a, b error) error {
	if a != nil {
		return a
	}
	return b
}

// softDeleted reports whether a soft-delete column's text marks its row deleted.
func softDeleted(t *Table, s *string) bool {
	if t.Poll == nil || t.Poll.SoftDelete == "" || s == nil {
		return false
	}
	return t.Poll.SoftValue == nil || strings.TrimSpace(*s) == *t.Poll.SoftValue
}
