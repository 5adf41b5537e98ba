package postgres

import (
	"context"
	"encoding/base64"
	"errors"
	"fmt"
	"log/slog"
	"net/url"
	"strings"
	"sync"
	"sync/atomic"
	"time"

	"github.com/jackc/pglogrepl"
	"github.com/jackc/pgx/v5"

	"github.com/lattice-sync/lattice/connectors"
	"github.com/lattice-sync/lattice/crdt"
	"github.com/lattice-sync/lattice/storage"
)

// ErrWalLevel is returned when the database cannot do logical replication.
var ErrWalLevel = errors.New("wal_level is not logical")

// Connector syncs one PostgreSQL database with a node's store.
type Connector struct {
	cfg    *Config
	store  *storage.Store
	schema connectors.SchemaSource
	log    *slog.Logger
	origin string
	srcReg string // the records' source register of this connector (change.src)

	mu struct {
		sync.Mutex
		// seen is, per row, the context of what the database has seen of the
		// record (captured edits and projections), from stream order.
		seen map[string]crdt.VV
		// relations maps pgoutput relation ids to their metadata.
		relations map[uint32]*pglogrepl.RelationMessage
		// rows is, per row, the mapped values the database holds as its
		// change stream last showed them (native changes and lattice's own
		// projections alike); absent when unknown. Capture writes only the
		// fields a change really changed; projection skips a record the
		// database already holds.
		rows map[string]map[string]crdt.Value
		// deleted marks rows whose last change in the stream was a delete.
		deleted map[string]bool
		// unechoed counts, per row, projections sent whose transaction the
		// stream has not shown yet: until it has, rows lags the database
		// and cannot tell what the row holds.
		unechoed map[string]int
		// capturing counts, per row, native changes decoded from the stream
		// and not yet durable: the row holds something newer than the store
		// shows, so projecting the store's state would put an older value
		// back. Such a row is deferred and projected again once its
		// captures are durable.
		capturing map[string]int
		deferred  map[string]bool
		recheck   [][2]string
	}
	// recheckC signals the projector that deferred rows are ready (mu.recheck).
	recheckC chan struct{}
	// ready is closed once capture has its slot and initial snapshot, so
	// projection never writes rows the snapshot would read back as native.
	ready    chan struct{}
	colTypes map[string]map[string]string // table -> column -> SQL type

	checkpoints connectors.Checkpointer
	epoch       uint64
	// acks is the write concern captured edits reach before a checkpoint
	// lets the source release them; waitAcks waits for it.
	acks     int
	waitAcks func(ctx context.Context, dot crdt.Dot, k int) error
	// confirmed is the stream position (an LSN) last recorded by a
	// checkpoint: what the server is told lattice has flushed.
	confirmed atomic.Uint64
	prog      progress
	dlq       connectors.DeadLetters
	obs       connectors.Observer
	// Schema drift (drift.go) and rate limits (ratelimit.go).
	drift driftState
	pause func(ctx context.Context, reason string) error
	rl    limits

	// pollst is poll capture's state (poll.go), set when it starts; nil in
	// other modes.
	pollst atomic.Pointer[pollState]
	// mode is the capture mode in effect: the configured one, or the one
	// mode auto chose and why (auto.go); set by Run before anything starts.
	mode atomic.Pointer[modeChoice]
	// trig is trigger capture's SQL and state (trigger.go); run tells this
	// attempt's projection marks from earlier attempts'.
	trig trigState
	run  string
}

// WithObserver reports capture and projection lag.
func WithObserver(o connectors.Observer) Option {
	return func(c *Connector) { c.obs = o }
}

// WithDeadLetters gives the connector its dead-letter queue. Without one,
// refused changes are only logged (tests).
func WithDeadLetters(q connectors.DeadLetters) Option {
	return func(c *Connector) { c.dlq = q }
}

// deadLetter records a refused change; it fails only if the queue itself
// cannot be written, and then the change is not acknowledged either.
func (c *Connector) deadLetter(ctx context.Context, dir, entity, id string, cause error) error {
	c.log.Error("change refused: sent to the dead-letter queue", "direction", dir, "entity", entity, "id", id, "err", cause)
	if c.dlq == nil {
		return nil
	}
	return c.dlq.Add(ctx, c.cfg.Name, connectors.Letter{Direction: dir, Entity: entity, RecordID: id, Error: cause.Error(), At: time.Now().UTC()})
}

// Option configures a Connector.
type Option func(*Connector)

// WithCheckpoints makes the connector record its confirmed source position
// through the control plane under its placement epoch. A write refused
// because the epoch is stale (the connector moved) stops the connector.
func WithCheckpoints(cp connectors.Checkpointer, epoch uint64) Option {
	return func(c *Connector) { c.checkpoints, c.epoch = cp, epoch }
}

// WithWriteConcern makes a checkpoint wait until the captured edits it
// covers are durable on acks nodes (this one included), so the source
// never releases a change only one node holds. wait is the cluster's
// acknowledgement wait (cluster.Node.WaitAcks).
func WithWriteConcern(acks int, wait func(ctx context.Context, dot crdt.Dot, k int) error) Option {
	return func(c *Connector) { c.acks, c.waitAcks = acks, wait }
}

// New returns a connector; Run starts it.
func New(cfg *Config, store *storage.Store, schema connectors.SchemaSource, log *slog.Logger, opts ...Option) *Connector {
	c := &Connector{cfg: cfg, store: store, schema: schema, origin: connectors.Origin("postgres", cfg.Name), srcReg: crdt.SourceRegister(cfg.Name),
		log: log.With("component", "connector", "connector", cfg.Name)}
	for _, o := range opts {
		o(c)
	}
	c.mu.seen = map[string]crdt.VV{}
	c.mu.relations = map[uint32]*pglogrepl.RelationMessage{}
	c.mu.rows = map[string]map[string]crdt.Value{}
	c.mu.deleted = map[string]bool{}
	c.mu.unechoed = map[string]int{}
	c.mu.capturing = map[string]int{}
	c.mu.deferred = map[string]bool{}
	c.recheckC = make(chan struct{}, 1)
	c.ready = make(chan struct{})
	c.run = newRunID()
	return c
}

// Origin is the origin of the edits this connector captures.
func (c *Connector) Origin() string { return c.origin }

// Run prepares the database (publication, replication origin), then runs
// projection and capture until ctx ends or one fails.
func (c *Connector) Run(ctx context.Context) error {
	conn, err := pgx.Connect(ctx, c.cfg.DSN)
	if err != nil {
		return fmt.Errorf("connector %s: connect: %w", c.cfg.Name, err)
	}
	defer conn.Close(context.Background())
	// The capture mode: the configured one, or mode auto's choice (auto.go).
	if err := c.chooseMode(ctx, conn); err != nil {
		return err
	}
	if err := c.prepare(ctx, conn); err != nil {
		return err
	}
	ctx, cancel := context.WithCancel(ctx)
	defer cancel()
	errs := make(chan error, 4)
	var wg sync.WaitGroup
	if c.cfg.Project {
		sub, err := c.store.Subscribe(projectBuffer)
		if err != nil {
			return err
		}
		if !c.cfg.Capture {
			close(c.ready)
		}
		wg.Add(1)
		go func() {
			defer wg.Done()
			select {
			case <-c.ready:
			case <-ctx.Done():
				sub.Close()
				errs <- ctx.Err()
				return
			}
			errs <- c.onDrift(ctx, c.project(ctx, sub)) // onDrift: drift.go
		}()
	}
	if c.cfg.Capture {
		wg.Add(1)
		go func() {
			defer wg.Done()
			errs <- c.onDrift(ctx, c.captureMode(ctx, conn)) // onDrift: drift.go
		}()
	}
	if c.checkpoints != nil {
		wg.Add(1)
		go func() {
			defer wg.Done()
			errs <- c.checkpointLoop(ctx)
		}()
	}
	// Schema drift (drift.go): the catalog compared with the mapping now and then.
	wg.Add(1)
	go func() {
		defer wg.Done()
		errs <- c.onDrift(ctx, c.watchSchema(ctx))
	}()
	var first error
	select {
	case first = <-errs:
	case <-ctx.Done():
	}
	cancel()
	wg.Wait()
	c.finalCheckpoint()
	if first != nil && ctx.Err() != nil && errors.Is(first, context.Canceled) {
		first = nil
	}
	return first
}

// finalCheckpoint records how far capture got durably when the connector
// stops (its database went away, a session was killed, it was stopped):
// the next start, here or on another node, resumes there. Without it a
// restart resumed from the last periodic checkpoint and captured every
// change after it a second time, as new edits with new dots and timestamps
// (found by the fault harness: jepsen/README.md, pg-recapture). An owner
// that dies cannot write it; the records' source registers (change.src)
// then keep the changes streamed again from being captured twice.
func (c *Connector) finalCheckpoint() {
	if c.checkpoints == nil {
		return
	}
	c.prog.mu.Lock()
	pos, changed := c.prog.capture, c.prog.hasPos && c.prog.capture.after(c.prog.written.capture)
	c.prog.mu.Unlock()
	if !changed {
		return
	}
	ctx, cancel := context.WithTimeout(context.Background(), 5*time.Second)
	defer cancel()
	if err := c.writeCheckpoint(ctx, pos, true); err != nil {
		c.log.Warn("could not record the capture position at stop: a restart captures the changes after the last checkpoint again", "err", err)
	}
}

// captureMode runs capture in the configured mode. Each mode reads the
// database's changes in order and feeds a pipeline (pipeline.go).
func (c *Connector) captureMode(ctx context.Context, conn *pgx.Conn) error {
	switch m := c.modeNow(); m {
	case ModeLogical:
		return c.capture(ctx, conn)
	case ModeTrigger:
		return c.captureTrigger(ctx, conn) // trigger.go
	case ModePoll:
		return c.capturePoll(ctx, conn) // poll.go
	default:
		return fmt.Errorf("connector %s: capture mode %q is not implemented", c.cfg.Name, m)
	}
}

// prepare checks wal_level and creates the publication and the replication
// origin lattice's writes carry (logical mode), or trigger capture's
// objects (trigger mode).
func (c *Connector) prepare(ctx context.Context, conn *pgx.Conn) error {
	// Poll mode (poll.go) reads the tables with plain queries and reads its
	// own writes back, trigger mode (trigger.go) reads a change table: no
	// logical WAL, publication, replica identity or replication origin.
	stream := c.modeNow() == ModeLogical
	var level string
	if err := conn.QueryRow(ctx, "SHOW wal_level").Scan(&level); err != nil {
		return fmt.Errorf("connector %s: %w", c.cfg.Name, err)
	}
	if c.cfg.Capture && stream && level != "logical" {
		return fmt.Errorf("connector %s: %w (it is %q): set wal_level = logical in postgresql.conf (ALTER SYSTEM SET wal_level = logical) and restart PostgreSQL",
			c.cfg.Name, ErrWalLevel, level)
	}
	// Schema drift (drift.go): a table or column the mapping needs is gone.
	if err := c.checkSchema(ctx, conn); err != nil {
		return c.onDrift(ctx, err)
	}
	c.colTypes = map[string]map[string]string{}
	var tables []string
	for _, t := range c.cfg.Tables {
		rows, err := conn.Query(ctx, `SELECT attname, format_type(atttypid, atttypmod) FROM pg_attribute
			WHERE attrelid = $1::regclass AND attnum > 0 AND NOT attisdropped`, t.Name)
		if err != nil {
			return fmt.Errorf("connector %s: table %s: %w", c.cfg.Name, t.Name, err)
		}
		types := map[string]string{}
		for rows.Next() {
			var n, typ string
			if err := rows.Scan(&n, &typ); err != nil {
				rows.Close()
				return err
			}
			types[n] = typ
		}
		rows.Close()
		if err := rows.Err(); err != nil {
			return fmt.Errorf("connector %s: table %s: %w", c.cfg.Name, t.Name, err)
		}
		for _, col := range t.columns() {
			if _, ok := types[col]; !ok {
				return fmt.Errorf("connector %s: table %s has no column %q (check the connector's tables mapping)", c.cfg.Name, t.Name, col)
			}
		}
		c.colTypes[t.Name] = types
		tables = append(tables, pgx.Identifier(strings.Split(t.Name, ".")).Sanitize())
	}
	if c.cfg.Capture && stream && c.cfg.FullIdentity {
		// Every UPDATE then carries the old row, so capture knows exactly
		// which columns changed, also for a row it has not seen since it
		// started (after a restart or a move).
		for _, t := range c.cfg.Tables {
			var ident string
			if err := conn.QueryRow(ctx, "SELECT relreplident::text FROM pg_class WHERE oid = $1::regclass", t.Name).Scan(&ident); err != nil {
				return fmt.Errorf("connector %s: table %s: %w", c.cfg.Name, t.Name, err)
			}
			if ident == "f" {
				continue
			}
			q := fmt.Sprintf("ALTER TABLE %s REPLICA IDENTITY FULL", pgx.Identifier(strings.Split(t.Name, ".")).Sanitize())
			if _, err := conn.Exec(ctx, q); err != nil {
				c.log.Warn("could not set REPLICA IDENTITY FULL (needs the table's owner): after a restart, a row's first change is captured with every column",
					"table", t.Name, "err", err)
				continue
			}
			c.log.Info("set REPLICA IDENTITY FULL, so the stream carries each updated row's old values", "table", t.Name)
		}
	}
	if c.cfg.Capture && stream {
		var exists bool
		if err := conn.QueryRow(ctx, "SELECT EXISTS (SELECT 1 FROM pg_publication WHERE pubname = $1)", c.cfg.Publication).Scan(&exists); err != nil {
			return err
		}
		if !exists {
			q := fmt.Sprintf("CREATE PUBLICATION %s FOR TABLE %s", pgx.Identifier{c.cfg.Publication}.Sanitize(), strings.Join(tables, ", "))
			if _, err := conn.Exec(ctx, q); err != nil {
				return fmt.Errorf("connector %s: create publication: %w", c.cfg.Name, err)
			}
		}
	}
	if c.triggering() {
		c.buildTriggerSQL() // trigger.go
	}
	if c.triggering() && c.cfg.Capture {
		if err := c.ensureTrigger(ctx, conn); err != nil { // trigger.go
			return err
		}
	}
	if !stream {
		return nil
	}
	if _, err := conn.Exec(ctx, `SELECT pg_replication_origin_create($1)
		WHERE NOT EXISTS (SELECT 1 FROM pg_replication_origin WHERE roname = $1)`, c.cfg.originName()); err != nil {
		return fmt.Errorf("connector %s: create replication origin (needs superuser or REPLICATION): %w", c.cfg.Name, err)
	}
	return nil
}

func mapKeys(m map[string]string) []string {
	out := make([]string, 0, len(m))
	for k := range m {
		out = append(out, k)
	}
	return out
}

// replicationDSN adds replication=database to a DSN (URL or key=value).
func replicationDSN(dsn string) string {
	if u, err := url.Parse(dsn); err == nil && (u.Scheme == "postgres" || u.Scheme == "postgresql") {
		q := u.Query()
		q.Set("replication", "database")
		u.RawQuery = q.Encode()
		return u.String()
	}
	return dsn + " replication=database"
}

func rowKey(entity, id string) string { return entity + "\x00" + id }

// observe records that the database has seen vv of a record.
func (c *Connector) observe(entity, id string, vv crdt.VV) {
	c.mu.Lock()
	defer c.mu.Unlock()
	k := rowKey(entity, id)
	c.mu.seen[k] = c.mu.seen[k].Join(vv)
}

func (c *Connector) seenOf(entity, id string) crdt.VV {
	c.mu.Lock()
	defer c.mu.Unlock()
	return c.mu.seen[rowKey(entity, id)]
}

// change is one captured row change.
type change struct {
	at      time.Time // commit time at the source
	table   *Table
	id      string
	fields  map[string]crdt.Value
	deleted bool
	// seen is what the stream showed the row had seen when the change was
	// decoded (lattice's projections into it); set by the stream.
	seen crdt.VV
	// before is the row's values just before an UPDATE when the stream
	// carries the old row (REPLICA IDENTITY FULL): the exact diff base.
	before map[string]crdt.Value
	// updatedAt is the row's Table.UpdatedAt value (zero: none, or null).
	updatedAt time.Time
	// historical: at may be far in the past (storage.LocalWrite.Historical).
	historical bool
	// snapshot marks a row read by a snapshot rather than a change: fields
	// that already hold the record's resolved value are not written again.
	snapshot bool
	refused  error // the row could not be mapped (transform.go): to the dead-letter queue
	// src is the change's place in the source (sourcePos), ordered among
	// the changes of one row; "" for a snapshot row. Kept in the record's
	// source register, it makes capturing the change a second time (after
	// a resume from an earlier checkpoint) a no-op.
	src string
}

// sourcePos names a streamed change by the commit LSN of its transaction
// and its ordinal in it: fixed-width, so that positions of one mode compare
// as strings in stream order.
func sourcePos(commit pglogrepl.LSN, ordinal int) string {
	return fmt.Sprintf("L%016X.%08X", uint64(commit), ordinal)
}

// alreadyCaptured reports whether rec's source register says this
// connector captured a change at or after src (of the same kind of
// position) already.
func alreadyCaptured(rec *crdt.Record, reg, src string) bool {
	atOrAfter, _ := rec.SourceShows(reg, src)
	return atOrAfter
}

func castText(cols []string) string {
	parts := make([]string, len(cols))
	for i, c := range cols {
		parts[i] = pgx.Identifier{c}.Sanitize() + "::text"
	}
	return strings.Join(parts, ", ")
}

// scanText reads one row of castText columns as column -> text (nil for
// null).
func scanText(row pgx.Row, cols []string) (map[string]*string, error) {
	vals := make([]*string, len(cols))
	ptrs := make([]any, len(cols))
	for i := range vals {
		ptrs[i] = &vals[i]
	}
	if err := row.Scan(ptrs...); err != nil {
		return nil, err
	}
	text := make(map[string]*string, len(cols))
	for i, col := range cols {
		text[col] = vals[i]
	}
	return text, nil
}

// toChange maps a row (column -> text, nil for null; absent for unchanged
// TOAST values) to a change of its record.
func (c *Connector) toChange(t *Table, text map[string]*string, deleted bool) (change, error) {
	ent, ok := c.schema.Schema().Entity(t.Entity)
	if !ok {
		return change{}, fmt.Errorf("entity %q is no longer configured", t.Entity)
	}
	keys := make([]string, len(t.Key))
	for i, k := range t.Key {
		v, ok := text[k]
		if !ok || v == nil {
			return refuse(change{table: t}, fmt.Errorf("table %s: key column %q is null or missing", t.Name, k)), nil
		}
		keys[i] = *v
	}
	ch := change{table: t, id: strings.Join(keys, "/"), deleted: deleted, fields: map[string]crdt.Value{}}
	if deleted {
		return ch, nil
	}
	if t.UpdatedAt != "" {
		if v := text[t.UpdatedAt]; v != nil {
			ts, err := fromText(crdt.TypeTimestamp, *v)
			if err != nil {
				return refuse(ch, fmt.Errorf("table %s: updated_at column %q: %v", t.Name, t.UpdatedAt, err)), nil
			}
			ch.updatedAt = time.UnixMicro(ts.Int64())
		}
	}
	return c.mapRow(ent, t, text, ch), nil // conversions, filter, computed fields: transform.go
}

// group is captured changes queued as edits and not yet known durable.
type group struct {
	changes []change
	pending *storage.Pending
	queued  []int     // index into changes of each queued write
	bad     []error   // per change: refused before it could be queued
	pos     position  // stream position after the group's last change
	live    bool      // from the stream: each change counted in capturing
	oldest  time.Time // commit time of the oldest transaction in the group
}

// enqueue queues captured changes as edits, in stream order, without
// waiting for them. Each carries the context of what the database had seen
// of its record at that point of the stream: its own earlier changes of the
// row and lattice's projections into it. Several changes of one row are
// staged in order, each seeing the one before, so a whole group shares one
// fsync.
func (c *Connector) enqueue(ctx context.Context, changes []change) *group {
	g := &group{changes: changes, bad: make([]error, len(changes))}
	ws := make([]storage.LocalWrite, 0, len(changes))
	for i, ch := range changes {
		ent, ok := c.schema.Schema().Entity(ch.table.Entity)
		if !ok {
			g.bad[i] = fmt.Errorf("%w: entity %q is no longer configured", crdt.ErrInvalid, ch.table.Entity)
			continue
		}
		if ch.refused != nil {
			g.bad[i] = ch.refused // to the dead-letter queue (complete)
			continue
		}
		if !ch.deleted && len(ch.fields) == 0 {
			continue // nothing to write (for example a row the table's filter excludes)
		}
		// What only the stream knows (the projections the row received) is
		// taken now, in stream order; what the store knows (this database's
		// own earlier changes of the row) is added when the edit is staged.
		ws = append(ws, c.write(ent, ch, ch.seen))
		g.queued = append(g.queued, i)
	}
	g.pending = c.store.Enqueue(ctx, ws)
	return g
}

// write is the store write of one captured change whose stream-known
// context is tok.
func (c *Connector) write(ent *crdt.Entity, ch change, tok crdt.VV) storage.LocalWrite {
	return storage.LocalWrite{Entity: ent.Name, ID: ch.id, Origin: c.origin, At: ch.at, Historical: ch.historical,
		Prepare: func(rec *crdt.Record, env storage.Env) ([]crdt.Write, error) {
			// The database saw every version it produced itself: each of its
			// changes of a row comes after the earlier ones in its stream.
			ec := crdt.EditContext{Token: tok.Join(ownContext(rec, c.origin)), Explicit: true, Applied: env.Applied}
			// The context is a join of contexts this node computed (each
			// closed over the versions it covered when it was computed), so
			// it is already closed over history; history is read only to
			// fill a partial write of a field group.
			if len(ent.Groups) > 0 {
				ec.History = env.History
			}
			reg := c.srcReg
			if ch.src != "" && alreadyCaptured(rec, reg, ch.src) {
				// Captured before a resume from an earlier checkpoint
				// (the last owner got further than its checkpoint): the
				// edit exists, with its own dot and time; a second one
				// would count the change twice and could beat an edit
				// made after it (found by the fault harness, pg-recapture).
				c.log.Debug("change already captured", "entity", ent.Name, "id", ch.id, "src", ch.src)
				return nil, nil
			}
			var writes []crdt.Write
			var err error
			if ch.deleted {
				if len(rec.Registers) == 0 {
					return nil, nil
				}
				writes, err = ent.PrepareDelete(rec, ec)
			} else {
				fields := ch.fields
				if ch.snapshot && len(rec.Registers) > 0 {
					fields = unchanged(ent, rec, fields)
				}
				if len(fields) == 0 {
					return nil, nil
				}
				writes, err = ent.PreparePut(rec, fields, ec)
			}
			if err != nil || ch.src == "" {
				return writes, err
			}
			return crdt.WithSystem(rec, writes, reg, crdt.String(ch.src), ec)
		}}
}

// unchanged drops the fields whose value is already the record's resolved
// value: a snapshot row that agrees with lattice adds nothing (and, after a
// re-snapshot, would only show as versions concurrent with ones the row
// already holds).
func unchanged(ent *crdt.Entity, rec *crdt.Record, fields map[string]crdt.Value) map[string]crdt.Value {
	view, deleted := ent.View(rec)
	if deleted {
		return fields
	}
	cur := make(map[string]crdt.Value, len(view))
	for _, f := range view {
		cur[f.Name] = f.Value
	}
	out := make(map[string]crdt.Value, len(fields))
	for f, v := range fields {
		if old, ok := cur[f]; !ok || !old.Equal(v) {
			out[f] = v
		}
	}
	return out
}

// ownContext is the join of the dots and contexts of the record's live
// versions that origin wrote.
func ownContext(rec *crdt.Record, origin string) crdt.VV {
	var vv crdt.VV
	for i := range rec.Registers {
		for _, v := range rec.Registers[i].Versions {
			if v.Origin == origin {
				vv = vv.WithDot(v.Dot).Join(v.Ctx)
				for _, d := range v.Also { // other captures of the same change
					vv = vv.WithDot(d)
				}
			}
		}
	}
	return vv
}

// complete waits until a group's edits are durable, records what each row
// has now seen, and sends changes the store refused as invalid to the
// dead-letter queue. Any other failure is returned: the group is then not
// acknowledged to the source and is captured again after a restart.
func (c *Connector) complete(ctx context.Context, g *group) error {
	res, errs := g.pending.Wait()
	for j, i := range g.queued {
		if errs[j] != nil {
			g.bad[i] = errs[j]
			continue
		}
		if r := res[j]; r != nil && r.Edit != nil {
			vv := crdt.VV{}.WithDot(r.Edit.Dot)
			for _, w := range r.Edit.Writes {
				vv = vv.Join(w.Ctx)
			}
			c.observe(r.Edit.Entity, r.Edit.ID, vv)
		}
	}
	if g.live {
		for _, ch := range g.changes {
			c.capturing(ch.table.Entity, ch.id, -1)
		}
	}
	for i, err := range g.bad {
		if err == nil {
			continue
		}
		if !errors.Is(err, crdt.ErrInvalid) {
			return err
		}
		// Bad data from the source: to the dead-letter queue, never dropped.
		if err := c.deadLetter(ctx, connectors.DirectionCapture, g.changes[i].table.Entity, g.changes[i].id, err); err != nil {
			return err
		}
	}
	if c.obs != nil && len(g.changes) > 0 && !g.oldest.IsZero() {
		c.obs.Captured(c.cfg.Name, len(g.changes), time.Since(g.oldest))
	}
	return nil
}

// apply writes captured changes as edits and waits until they are durable.
func (c *Connector) apply(ctx context.Context, changes []change) error {
	return c.complete(ctx, c.enqueue(ctx, changes))
}

// remember records what a row holds after a change.
func (c *Connector) remember(ch change) {
	c.mu.Lock()
	defer c.mu.Unlock()
	k := rowKey(ch.table.Entity, ch.id)
	if ch.deleted {
		delete(c.mu.rows, k)
		c.mu.deleted[k] = true
		return
	}
	delete(c.mu.deleted, k)
	row := c.mu.rows[k]
	if row == nil {
		row = map[string]crdt.Value{}
		c.mu.rows[k] = row
	}
	for f, v := range ch.fields {
		row[f] = v
	}
}

// diff narrows a native change to the fields it really changed: against the
// old row the stream carried with it (REPLICA IDENTITY FULL), else against
// what the stream last showed the row holding. An UPDATE of one column is
// an edit of one field, not of the whole row. Without either (a row never
// seen since the connector started, without a full replica identity) every
// field is kept. ok is false when nothing changed.
func (c *Connector) diff(ch change) (change, bool) {
	if ch.deleted || ch.refused != nil {
		return ch, true
	}
	c.mu.Lock()
	defer c.mu.Unlock()
	k := rowKey(ch.table.Entity, ch.id)
	prev, known := c.mu.rows[k]
	if ch.before != nil {
		prev, known = ch.before, true
	} else if !known || c.mu.deleted[k] {
		return ch, true
	}
	out := ch
	out.fields = map[string]crdt.Value{}
	for f, v := range ch.fields {
		if old, ok := prev[f]; !ok || !old.Equal(v) {
			out.fields[f] = v
		}
	}
	return out, len(out.fields) > 0
}

// holds reports whether the database, as its stream last showed it, holds
// exactly these mapped values for a row (or has it deleted, for deleted).
func (c *Connector) holds(entity, id string, values map[string]crdt.Value, deleted bool) bool {
	c.mu.Lock()
	defer c.mu.Unlock()
	k := rowKey(entity, id)
	if c.mu.capturing[k] != 0 {
		// The row changed in the database and the change is not in the
		// store yet: not now (see capturing).
		c.mu.deferred[k] = true
		return true
	}
	if c.mu.unechoed[k] != 0 {
		// A projection of the row is on its way through the stream: what
		// the stream showed is older than what the row holds.
		return false
	}
	if deleted {
		return c.mu.deleted[k]
	}
	row, ok := c.mu.rows[k]
	if !ok {
		return false
	}
	for f, v := range values {
		if old, ok := row[f]; !ok || !old.Equal(v) {
			return false
		}
	}
	return true
}

// capturing records that n native changes of a row were decoded (n > 0)
// or made durable (n < 0). A deferred row whose captures are all durable is
// handed to the projector.
func (c *Connector) capturing(entity, id string, n int) {
	c.mu.Lock()
	k := rowKey(entity, id)
	c.mu.capturing[k] += n
	ready := false
	if c.mu.capturing[k] <= 0 {
		delete(c.mu.capturing, k)
		if c.mu.deferred[k] {
			delete(c.mu.deferred, k)
			c.mu.recheck = append(c.mu.recheck, [2]string{entity, id})
			ready = true
		}
	}
	c.mu.Unlock()
	if ready {
		select {
		case c.recheckC <- struct{}{}:
		default:
		}
	}
}

// deferCapturing reports whether a row has native changes being captured,
// and if so defers it (see capturing).
func (c *Connector) deferCapturing(entity, id string) bool {
	c.mu.Lock()
	defer c.mu.Unlock()
	k := rowKey(entity, id)
	if c.mu.capturing[k] == 0 {
		return false
	}
	c.mu.deferred[k] = true
	return true
}

// takeRecheck returns the deferred rows ready to be projected again.
func (c *Connector) takeRecheck() [][2]string {
	c.mu.Lock()
	defer c.mu.Unlock()
	out := c.mu.recheck
	c.mu.recheck = nil
	return out
}

// unechoed records that n projections of a row were sent (n > 0) or that
// the stream showed them, or they were rolled back (n < 0).
func (c *Connector) unechoed(entity, id string, n int) {
	if c.polling() {
		return // no stream shows projections: they are read back (poll_project.go)
	}
	c.mu.Lock()
	defer c.mu.Unlock()
	k := rowKey(entity, id)
	if c.mu.unechoed[k] += n; c.mu.unechoed[k] == 0 {
		delete(c.mu.unechoed, k)
	}
}

// rowChange decodes a tuple of a mapped table.
func (c *Connector) rowChange(rel uint32, tuple *pglogrepl.TupleData, deleted bool) (change, bool) {
	c.mu.Lock()
	r := c.mu.relations[rel]
	c.mu.Unlock()
	if r == nil || tuple == nil {
		return change{}, false
	}
	var t *Table
	for i := range c.cfg.Tables {
		if c.cfg.Tables[i].relName() == r.Namespace+"."+r.RelationName {
			t = &c.cfg.Tables[i]
		}
	}
	if t == nil {
		return change{}, false
	}
	text := map[string]*string{}
	for i, col := range tuple.Columns {
		if i >= len(r.Columns) {
			break
		}
		name := r.Columns[i].Name
		switch col.DataType {
		case 'n':
			text[name] = nil
		case 't':
			s := string(col.Data)
			text[name] = &s
		}
	}
	ch, err := c.toChange(t, text, deleted)
	if err != nil {
		c.log.Error("captured row refused", "table", t.Name, "err", err)
		c.stats().fail(err)
		return change{}, false
	}
	return ch, true
}

// observeProjection reads a one-record projection message of earlier
// versions (entity, id and the record context it wrote; see marks.go) and
// records that the row has seen that context. It returns the row's key.
func (c *Connector) observeProjection(content []byte) (string, string, bool) {
	parts := strings.SplitN(string(content), "\x00", 3)
	if len(parts) != 3 {
		c.log.Warn("malformed projection message in the stream", "bytes", len(content))
		c.stats().fail(fmt.Errorf("malformed projection message in the stream (%d bytes)", len(content)))
		return "", "", false
	}
	b, err := base64.RawURLEncoding.DecodeString(parts[2])
	if err != nil {
		c.log.Warn("malformed projection message in the stream", "err", err)
		return "", "", false
	}
	vv, err := crdt.DecodeToken(b)
	if err != nil {
		c.log.Warn("malformed projection message in the stream", "err", err)
		return "", "", false
	}
	c.log.Debug("projection seen in stream", "entity", parts[0], "id", parts[1], "context", vv.String())
	c.observe(parts[0], parts[1], vv)
	return parts[0], parts[1], true
}
