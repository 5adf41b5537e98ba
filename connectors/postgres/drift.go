package postgres

import (
	"context"
	"errors"
	"fmt"
	"log/slog"
	"sort"
	"strings"
	"sync"
	"time"

	"github.com/jackc/pglogrepl"
	"github.com/jackc/pgx/v5"
	"github.com/jackc/pgx/v5/pgconn"
)

// Schema drift.
//
// The connector needs, of each mapped table, its key columns, its mapped
// columns and the columns its expressions read (Table.columns), with the
// types they had when it started (read from the catalog in prepare).
// Everything else about the table may change freely: a column added, or
// an unmapped column dropped or retyped, is ignored (logged once).
//
// A needed column that is dropped or changes type (or a table that is
// gone) is drift: the connector stops capture before any change that
// depends on it, records the position it reached, and pauses itself
// through the control plane (WithPause) with a reason naming the table and
// column and saying what to do: restore the column, or change the mapping
// (lattice config apply), then lattice connectors resume NAME. The source
// keeps what was not captured (logical replication: the slot is never
// confirmed past it), so a resumed connector picks up exactly there. A
// resumed connector is a new one: it reads the catalog again in prepare
// and, if the mapping still does not fit (a needed column is missing), it
// pauses again with the same reason; a retyped column that was not changed
// back is taken with its new type.
//
// Where it is seen:
//   - at start (prepare), for every capture mode: a needed column or
//     table that does not exist;
//   - logical replication: each Relation message of a mapped table
//     (pgoutput sends one before the first change of the table in a
//     session and after each change of its definition) is compared with
//     the types at start. A difference is checked against the catalog
//     now: if the column is there with its type at start, the message is
//     from the stream's past (the column was dropped or retyped and
//     restored since, or the connector resumes from before such a change)
//     and capture goes on; the changes in between carry what the table
//     had then (a change without the column does not write its field).
//     Otherwise it is drift, and the pipeline is drained first, so the
//     position recorded is just before the change that needed the column;
//   - every capture mode (and project-only connectors): the catalog is
//     compared with the types at start every 30 s;
//   - projection: a write the database refuses because a column is
//     missing or of another type (SQLSTATE 42703, 42P01, 42804) is not a
//     dead letter: the catalog is checked and, if it drifted, the
//     connector pauses; else the error ends the attempt (retried).
//
// Known limit: a column retyped while the connector is not running is not
// seen (the types at start are read when it starts); a column dropped
// meanwhile is.

// ErrSchemaDrift is wrapped by a DriftError.
var ErrSchemaDrift = errors.New("schema drift")

// ColumnChange is one change of a mapped table that the connector cannot
// go on with.
type ColumnChange struct {
	Table string
	// Column is the column that changed; empty when the table is gone.
	Column string
	// Field is the field the column is mapped to; empty for a key column
	// or one read only by expressions (Key tells which).
	Field string
	Key   bool
	// From is the column's type when the connector started (empty when it
	// did not exist then); To its type now (empty: dropped).
	From, To string
}

// DriftError is a schema change of a mapped table that the mapping does not
// fit. Its message is the reason the connector pauses with.
type DriftError struct {
	Connector string
	Changes   []ColumnChange
}

func (e *DriftError) Unwrap() error { return ErrSchemaDrift }

func (e *DriftError) Error() string {
	var what, todo []string
	retyped := false
	for _, ch := range e.Changes {
		table := pgx.Identifier(strings.Split(ch.Table, ".")).Sanitize()
		if ch.Column == "" {
			what = append(what, fmt.Sprintf("table %s does not exist", ch.Table))
			todo = append(todo, fmt.Sprintf("create table %s again or take it out of the connector's tables", ch.Table))
			continue
		}
		role := "mapped to field " + ch.Field
		switch {
		case ch.Key:
			role = "a key column"
		case ch.Field == "":
			role = "read by the table's expressions"
		}
		col := pgx.Identifier{ch.Column}.Sanitize()
		switch {
		case ch.To == "" && ch.From != "":
			what = append(what, fmt.Sprintf("table %s: column %q (%s) was dropped", ch.Table, ch.Column, role))
			todo = append(todo, fmt.Sprintf("restore it (ALTER TABLE %s ADD COLUMN %s %s) or take it out of the mapping", table, col, ch.From))
		case ch.To == "":
			what = append(what, fmt.Sprintf("table %s: column %q (%s) does not exist", ch.Table, ch.Column, role))
			todo = append(todo, fmt.Sprintf("add it (ALTER TABLE %s ADD COLUMN %s <type>) or take it out of the mapping", table, col))
		default:
			retyped = true
			what = append(what, fmt.Sprintf("table %s: column %q (%s) changed type from %s to %s", ch.Table, ch.Column, role, ch.From, ch.To))
			todo = append(todo, fmt.Sprintf("change it back (ALTER TABLE %s ALTER COLUMN %s TYPE %s) or make the mapping fit %s", table, col, ch.From, ch.To))
		}
	}
	msg := fmt.Sprintf("schema drift: %s. Connector %s paused before applying any change that needs it (the source keeps what was not captured yet). To go on: %s (the mapping changes with lattice config apply FILE), then run lattice connectors resume %s",
		strings.Join(what, "; "), e.Connector, strings.Join(todo, "; "), e.Connector)
	if retyped {
		msg += " (a resumed connector takes a column's type as it is then)"
	}
	return msg
}

// WithPause lets the connector pause itself through the control plane
// when the schema drifted (cluster.Node.PauseConnectorFor under its
// epoch): pause records the reason, which the connector's status shows,
// and the connector is stopped until an operator resumes it. Without it a
// drift ends Run with a DriftError.
func WithPause(pause func(ctx context.Context, reason string) error) Option {
	return func(c *Connector) { c.pause = pause }
}

// schemaCheckEvery is how often the catalog is compared with the mapping.
const schemaCheckEvery = 30 * time.Second

// driftState is what the connector knows of its tables' definitions.
type driftState struct {
	every time.Duration // catalog check interval; 0: schemaCheckEvery
	mu    struct {
		sync.Mutex
		// start is, per table, every column's type when the connector started.
		start map[string]map[string]colType
		// noted are the changes already logged (each is logged once).
		noted map[string]bool
		// pausing is set once a drift is being handled.
		pausing bool
	}
}

// colType is a column's type: its OID and modifier (as pgoutput sends
// them) and its SQL name.
type colType struct {
	oid  uint32
	mod  int32
	name string
}

func (a colType) same(b colType) bool { return a.oid == b.oid && a.mod == b.mod }

// readTable reads a table's columns from the catalog (none: no such table).
func readTable(ctx context.Context, conn *pgx.Conn, table string) (map[string]colType, error) {
	rows, err := conn.Query(ctx, `SELECT a.attname, a.atttypid, a.atttypmod, format_type(a.atttypid, a.atttypmod)
		FROM pg_attribute a WHERE a.attrelid = to_regclass($1) AND a.attnum > 0 AND NOT a.attisdropped`, table)
	if err != nil {
		return nil, err
	}
	defer rows.Close()
	out := map[string]colType{}
	for rows.Next() {
		var name string
		var ct colType
		if err := rows.Scan(&name, &ct.oid, &ct.mod, &ct.name); err != nil {
			return nil, err
		}
		out[name] = ct
	}
	return out, rows.Err()
}

// checkSchema reads the mapped tables' definitions at start: they become
// the types later changes are compared with. A table or needed column that
// does not exist is drift.
func (c *Connector) checkSchema(ctx context.Context, conn *pgx.Conn) error {
	start := map[string]map[string]colType{}
	var changes []ColumnChange
	for i := range c.cfg.Tables {
		t := &c.cfg.Tables[i]
		cols, err := readTable(ctx, conn, t.Name)
		if err != nil {
			return fmt.Errorf("connector %s: table %s: %w", c.cfg.Name, t.Name, err)
		}
		if len(cols) == 0 {
			changes = append(changes, ColumnChange{Table: t.Name})
			continue
		}
		for _, col := range t.columns() {
			if _, ok := cols[col]; !ok {
				changes = append(changes, c.columnChange(t, col, colType{}, colType{}, false))
			}
		}
		start[t.Name] = cols
	}
	if len(changes) > 0 {
		return &DriftError{Connector: c.cfg.Name, Changes: changes}
	}
	c.drift.mu.Lock()
	c.drift.mu.start = start
	c.drift.mu.Unlock()
	return nil
}

// columnChange describes a needed column of t that is gone (ok false) or
// now of type now, having been of type was at start.
func (c *Connector) columnChange(t *Table, col string, was, now colType, ok bool) ColumnChange {
	ch := ColumnChange{Table: t.Name, Column: col, Field: t.Columns[col], Key: contains(t.Key, col), From: was.name}
	if ok {
		ch.To = now.name
	}
	return ch
}

// startTypes returns a table's column types at start (nil: not read).
func (c *Connector) startTypes(table string) map[string]colType {
	c.drift.mu.Lock()
	defer c.drift.mu.Unlock()
	return c.drift.mu.start[table]
}

// note logs a schema change once.
func (c *Connector) note(level slog.Level, key, msg string, args ...any) {
	c.drift.mu.Lock()
	if c.drift.mu.noted == nil {
		c.drift.mu.noted = map[string]bool{}
	}
	seen := c.drift.mu.noted[key]
	c.drift.mu.noted[key] = true
	c.drift.mu.Unlock()
	if !seen {
		c.log.Log(context.Background(), level, msg, args...)
	}
}

// compare sets a table's columns now (from the catalog or a Relation
// message; types may lack names) against those at start: it logs changes
// of columns the mapping does not need, and returns the needed columns
// that are missing or of another type.
func (c *Connector) compare(t *Table, start, now map[string]colType) []string {
	needed := t.columns()
	var suspect []string
	for _, col := range needed {
		if n, ok := now[col]; !ok || !n.same(start[col]) {
			suspect = append(suspect, col)
		}
	}
	for name, n := range now {
		s, ok := start[name]
		switch {
		case !ok:
			c.note(slog.LevelInfo, t.Name+"\x00add\x00"+name, "column added to a mapped table: not mapped, ignored", "table", t.Name, "column", name)
		case !contains(needed, name) && !n.same(s):
			c.note(slog.LevelInfo, t.Name+"\x00type\x00"+name, "unmapped column changed type: ignored", "table", t.Name, "column", name, "was", s.name)
		}
	}
	for name := range start {
		if _, ok := now[name]; !ok && !contains(needed, name) {
			c.note(slog.LevelInfo, t.Name+"\x00drop\x00"+name, "unmapped column dropped: ignored", "table", t.Name, "column", name)
		}
	}
	sort.Strings(suspect)
	return suspect
}

// relationDrift compares a Relation message of a mapped table with the
// types at start (see the top of this file). On drift it drains the
// pipeline (everything before this point of the stream is durable and its
// position recorded) and returns a DriftError: the stream must stop here.
func (c *Connector) relationDrift(ctx context.Context, pl *pipeline, rel *pglogrepl.RelationMessage) error {
	var t *Table
	for i := range c.cfg.Tables {
		if c.cfg.Tables[i].relName() == rel.Namespace+"."+rel.RelationName {
			t = &c.cfg.Tables[i]
		}
	}
	if t == nil {
		return nil
	}
	start := c.startTypes(t.Name)
	if start == nil {
		return nil
	}
	got := map[string]colType{}
	for _, col := range rel.Columns {
		got[col.Name] = colType{oid: col.DataType, mod: col.TypeModifier}
	}
	suspect := c.compare(t, start, got)
	if len(suspect) == 0 {
		return nil
	}
	// The message describes the table at this point of the stream, which
	// may be its past: ask the catalog how it is now.
	now, err := c.catalogTable(ctx, t.Name)
	if err != nil {
		return fmt.Errorf("connector %s: table %s changed in the stream; reading its definition: %w", c.cfg.Name, t.Name, err)
	}
	var changes []ColumnChange
	for _, col := range suspect {
		n, ok := now[col]
		if ok && n.same(start[col]) {
			c.note(slog.LevelWarn, t.Name+"\x00past\x00"+col,
				"the stream shows a needed column dropped or retyped that is back as it was: changes from then are captured as the table had them (without the column, its field is not written)",
				"table", t.Name, "column", col)
			continue
		}
		changes = append(changes, c.columnChange(t, col, start[col], n, ok))
	}
	if len(changes) == 0 {
		return nil
	}
	if err := pl.drain(); err != nil {
		return err
	}
	return &DriftError{Connector: c.cfg.Name, Changes: changes}
}

// catalogTable reads one table's columns on a connection of its own.
func (c *Connector) catalogTable(ctx context.Context, table string) (map[string]colType, error) {
	ctx, cancel := context.WithTimeout(ctx, 10*time.Second)
	defer cancel()
	conn, err := pgx.Connect(ctx, c.cfg.DSN)
	if err != nil {
		return nil, err
	}
	defer conn.Close(context.Background())
	return readTable(ctx, conn, table)
}

// catalogDrift compares the catalog with the types at start; nil when the
// mapping still fits.
func (c *Connector) catalogDrift(ctx context.Context) (*DriftError, error) {
	ctx, cancel := context.WithTimeout(ctx, 10*time.Second)
	defer cancel()
	conn, err := pgx.Connect(ctx, c.cfg.DSN)
	if err != nil {
		return nil, err
	}
	defer conn.Close(context.Background())
	var changes []ColumnChange
	for i := range c.cfg.Tables {
		t := &c.cfg.Tables[i]
		start := c.startTypes(t.Name)
		if start == nil {
			continue
		}
		now, err := readTable(ctx, conn, t.Name)
		if err != nil {
			return nil, err
		}
		if len(now) == 0 {
			changes = append(changes, ColumnChange{Table: t.Name})
			continue
		}
		for _, col := range c.compare(t, start, now) {
			n, ok := now[col]
			changes = append(changes, c.columnChange(t, col, start[col], n, ok))
		}
	}
	if len(changes) == 0 {
		return nil, nil
	}
	return &DriftError{Connector: c.cfg.Name, Changes: changes}, nil
}

// watchSchema compares the catalog with the mapping every
// schemaCheckEvery until ctx ends or it drifted (every capture mode: the
// modes without Relation messages rely on it).
func (c *Connector) watchSchema(ctx context.Context) error {
	every := c.drift.every
	if every <= 0 {
		every = schemaCheckEvery
	}
	t := time.NewTicker(every)
	defer t.Stop()
	for {
		select {
		case <-ctx.Done():
			return ctx.Err()
		case <-t.C:
		}
		de, err := c.catalogDrift(ctx)
		switch {
		case err != nil && ctx.Err() == nil:
			c.log.Warn("schema check: could not read the catalog (retried)", "err", err)
		case de != nil:
			return de
		}
	}
}

// schemaFailure reports whether the database refused a statement because a
// table or column is not what the connector prepared it for: undefined
// column (42703) or table (42P01), or a value of the type the column had
// (42804: projection casts each value to the column's type at start).
func schemaFailure(err error) bool {
	var pgErr *pgconn.PgError
	if !errors.As(err, &pgErr) {
		return false
	}
	switch pgErr.Code {
	case "42703", "42P01", "42804":
		return true
	}
	return false
}

// onDrift handles what ended a part of the connector (prepare, capture,
// projection, the schema check). A DriftError, or a schema failure the
// catalog confirms, pauses the connector: the position reached is
// checkpointed, the pause goes through the control plane with the reason,
// and onDrift waits until the control plane stops the connector (ctx
// ends). Anything else is returned as it is.
func (c *Connector) onDrift(ctx context.Context, err error) error {
	if err == nil || ctx.Err() != nil {
		return err
	}
	var de *DriftError
	if !errors.As(err, &de) {
		if !schemaFailure(err) {
			return err
		}
		found, cerr := c.catalogDrift(ctx)
		if cerr != nil || found == nil {
			return err
		}
		c.log.Error("the database refused a projection: its schema changed", "err", err)
		de = found
	}
	reason := de.Error()
	c.drift.mu.Lock()
	first := !c.drift.mu.pausing
	c.drift.mu.pausing = true
	c.drift.mu.Unlock()
	if first {
		c.log.Error("pausing the connector", "reason", reason)
		c.stats().fail(de)
		if c.pause == nil {
			return de
		}
		// What is durable is recorded now, so a resumed connector picks up
		// exactly here (best effort: at worst it resumes from the last
		// checkpoint and captures some changes again).
		c.prog.mu.Lock()
		pos, hasPos := c.prog.capture, c.prog.hasPos
		c.prog.mu.Unlock()
		if hasPos || !c.cfg.Capture {
			if err := c.writeCheckpoint(ctx, pos, true); err != nil {
				c.log.Warn("checkpoint before pausing not written", "err", err)
			}
		}
		if err := c.pause(ctx, reason); err != nil {
			return fmt.Errorf("%w (pausing it through the control plane failed: %v)", de, err)
		}
	} else if c.pause == nil {
		return de
	}
	// The control plane stops a paused connector (its manager cancels ctx).
	select {
	case <-ctx.Done():
		return ctx.Err()
	case <-time.After(30 * time.Second):
		return de
	}
}

// drain queues what was gathered and waits until every queued group is
// durable, handing the position to the next checkpoint.
func (p *pipeline) drain() error {
	if err := p.flush(); err != nil {
		return err
	}
	for p.n > 0 {
		select {
		case d, ok := <-p.completed:
			if !ok {
				return p.ctx.Err()
			}
			if d.err != nil {
				return d.err
			}
			p.durable = d.pos
			p.n--
			p.c.prog.setCapture(p.durable)
		case <-p.ctx.Done():
			return p.ctx.Err()
		}
	}
	return nil
}
