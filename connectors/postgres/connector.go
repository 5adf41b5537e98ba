package postgres

import (
	"context"
	"encoding/base64"
	"encoding/json"
	"errors"
	"fmt"
	"log/slog"
	"net/url"
	"strings"
	"sync"
	"time"

	"github.com/jackc/pglogrepl"
	"github.com/jackc/pgx/v5"
	"github.com/jackc/pgx/v5/pgconn"
	"github.com/jackc/pgx/v5/pgproto3"

	"github.com/lattice-sync/lattice/connectors"
	"github.com/lattice-sync/lattice/crdt"
	"github.com/lattice-sync/lattice/storage"
)

// ErrWalLevel is returned when the database cannot do logical replication.
var ErrWalLevel = errors.New("wal_level is not logical")

// messagePrefix marks the logical message each projection carries.
const messagePrefix = "lattice"

// Connector syncs one PostgreSQL database with a node's store.
type Connector struct {
	cfg    *Config
	store  *storage.Store
	schema connectors.SchemaSource
	log    *slog.Logger
	origin string

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
	}
	// ready is closed once capture has its slot and initial snapshot, so
	// projection never writes rows the snapshot would read back as native.
	ready    chan struct{}
	colTypes map[string]map[string]string // table -> column -> SQL type

	checkpoints connectors.Checkpointer
	epoch       uint64
	dlq         connectors.DeadLetters
	obs         connectors.Observer
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

// checkpoint is what the connector records through the control plane.
type checkpoint struct {
	Slot string `json:"slot"`
	LSN  string `json:"lsn"`
}

// New returns a connector; Run starts it.
func New(cfg *Config, store *storage.Store, schema connectors.SchemaSource, log *slog.Logger, opts ...Option) *Connector {
	c := &Connector{cfg: cfg, store: store, schema: schema, origin: connectors.Origin("postgres", cfg.Name),
		log: log.With("component", "connector", "connector", cfg.Name)}
	for _, o := range opts {
		o(c)
	}
	c.mu.seen = map[string]crdt.VV{}
	c.mu.relations = map[uint32]*pglogrepl.RelationMessage{}
	c.mu.rows = map[string]map[string]crdt.Value{}
	c.mu.deleted = map[string]bool{}
	c.ready = make(chan struct{})
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
	if err := c.prepare(ctx, conn); err != nil {
		return err
	}
	ctx, cancel := context.WithCancel(ctx)
	defer cancel()
	errs := make(chan error, 2)
	var wg sync.WaitGroup
	if c.cfg.Project {
		sub, err := c.store.Subscribe(8192)
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
			errs <- c.project(ctx, sub)
		}()
	}
	if c.cfg.Capture {
		wg.Add(1)
		go func() {
			defer wg.Done()
			errs <- c.capture(ctx, conn)
		}()
	}
	var first error
	select {
	case first = <-errs:
	case <-ctx.Done():
	}
	cancel()
	wg.Wait()
	if first != nil && ctx.Err() != nil && errors.Is(first, context.Canceled) {
		first = nil
	}
	return first
}

// prepare checks wal_level and creates the publication and the replication
// origin lattice's writes carry.
func (c *Connector) prepare(ctx context.Context, conn *pgx.Conn) error {
	var level string
	if err := conn.QueryRow(ctx, "SHOW wal_level").Scan(&level); err != nil {
		return fmt.Errorf("connector %s: %w", c.cfg.Name, err)
	}
	if c.cfg.Capture && level != "logical" {
		return fmt.Errorf("connector %s: %w (it is %q): set wal_level = logical in postgresql.conf (ALTER SYSTEM SET wal_level = logical) and restart PostgreSQL",
			c.cfg.Name, ErrWalLevel, level)
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
	if c.cfg.Capture {
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
	refused error // the row could not be mapped (transform.go): to the dead-letter queue
}

// capture reads the snapshot (first run) and then the change stream.
func (c *Connector) capture(ctx context.Context, conn *pgx.Conn) error {
	rconn, err := pgconn.Connect(ctx, replicationDSN(c.cfg.DSN))
	if err != nil {
		return fmt.Errorf("connector %s: replication connection: %w", c.cfg.Name, err)
	}
	defer rconn.Close(context.Background())
	var exists bool
	if err := conn.QueryRow(ctx, "SELECT EXISTS (SELECT 1 FROM pg_replication_slots WHERE slot_name = $1)", c.cfg.Slot).Scan(&exists); err != nil {
		return err
	}
	var start pglogrepl.LSN
	if !exists && c.checkpoints != nil {
		if _, data, ok := c.checkpoints.ReadCheckpoint(c.cfg.Name); ok {
			var cp checkpoint
			_ = json.Unmarshal(data, &cp)
			// Source safety: the slot the checkpoint refers to is gone (dropped,
			// or the database was restored): changes since may be lost, so
			// capture starts over from a snapshot rather than trust it.
			c.log.Warn("replication slot from the last checkpoint is missing: taking a new initial snapshot",
				"slot", c.cfg.Slot, "checkpoint_lsn", cp.LSN)
		}
	}
	if !exists {
		res, err := pglogrepl.CreateReplicationSlot(ctx, rconn, c.cfg.Slot, "pgoutput",
			pglogrepl.CreateReplicationSlotOptions{SnapshotAction: "EXPORT_SNAPSHOT"})
		if err != nil {
			return fmt.Errorf("connector %s: create replication slot: %w", c.cfg.Name, err)
		}
		lsn, err := pglogrepl.ParseLSN(res.ConsistentPoint)
		if err != nil {
			return err
		}
		start = lsn
		// Initial snapshot at exactly the slot's starting point.
		if err := c.snapshot(ctx, conn, res.SnapshotName); err != nil {
			return err
		}
	}
	close(c.ready)
	err = pglogrepl.StartReplication(ctx, rconn, c.cfg.Slot, start, pglogrepl.StartReplicationOptions{PluginArgs: []string{
		"proto_version '2'", fmt.Sprintf("publication_names '%s'", c.cfg.Publication), "messages 'true'"}})
	if err != nil {
		return fmt.Errorf("connector %s: start replication: %w", c.cfg.Name, err)
	}
	c.log.Info("capture streaming", "slot", c.cfg.Slot, "from", start.String())
	return c.stream(ctx, rconn)
}

// snapshot captures every existing row of the mapped tables as of the slot's snapshot.
func (c *Connector) snapshot(ctx context.Context, conn *pgx.Conn, name string) error {
	tx, err := conn.BeginTx(ctx, pgx.TxOptions{IsoLevel: pgx.RepeatableRead, AccessMode: pgx.ReadOnly})
	if err != nil {
		return err
	}
	defer tx.Rollback(context.Background())
	if _, err := tx.Exec(ctx, fmt.Sprintf("SET TRANSACTION SNAPSHOT '%s'", name)); err != nil {
		return fmt.Errorf("connector %s: use the slot's snapshot: %w", c.cfg.Name, err)
	}
	total := 0
	for i := range c.cfg.Tables {
		t := &c.cfg.Tables[i]
		cols := t.columns()
		q := fmt.Sprintf("SELECT %s FROM %s", castText(cols), pgx.Identifier(strings.Split(t.Name, ".")).Sanitize())
		rows, err := tx.Query(ctx, q)
		if err != nil {
			return fmt.Errorf("connector %s: snapshot of %s: %w", c.cfg.Name, t.Name, err)
		}
		var batch []change
		for rows.Next() {
			vals := make([]*string, len(cols))
			ptrs := make([]any, len(cols))
			for i := range vals {
				ptrs[i] = &vals[i]
			}
			if err := rows.Scan(ptrs...); err != nil {
				rows.Close()
				return err
			}
			text := map[string]*string{}
			for i, col := range cols {
				text[col] = vals[i]
			}
			ch, err := c.toChange(t, text, false)
			if err != nil {
				c.log.Error("snapshot row skipped", "table", t.Name, "err", err)
				continue
			}
			ch.at = time.Now()
			c.remember(ch)
			batch = append(batch, ch)
		}
		rows.Close()
		if err := rows.Err(); err != nil {
			return err
		}
		if err := c.apply(ctx, batch); err != nil {
			return err
		}
		total += len(batch)
	}
	c.log.Info("initial snapshot captured", "rows", total)
	return tx.Commit(ctx)
}

func castText(cols []string) string {
	parts := make([]string, len(cols))
	for i, c := range cols {
		parts[i] = pgx.Identifier{c}.Sanitize() + "::text"
	}
	return strings.Join(parts, ", ")
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
	return c.mapRow(ent, t, text, ch), nil // conversions, filter, computed fields: transform.go
}

// apply writes captured changes as edits, each with the context of what the
// database had seen of its record, and waits until they are durable.
// Changes of different rows go in parallel (they share fsyncs through the
// store's group commit); changes of one row go in stream order, each seeing
// the one before.
func (c *Connector) apply(ctx context.Context, changes []change) error {
	byRow := map[string][]int{}
	var order []string
	for i, ch := range changes {
		k := rowKey(ch.table.Entity, ch.id)
		if _, ok := byRow[k]; !ok {
			order = append(order, k)
		}
		byRow[k] = append(byRow[k], i)
	}
	errs := make([]error, len(changes))
	var wg sync.WaitGroup
	for _, k := range order {
		wg.Add(1)
		go func(idx []int) {
			defer wg.Done()
			for _, i := range idx {
				errs[i] = c.applyOne(ctx, changes[i])
			}
		}(byRow[k])
	}
	wg.Wait()
	for i, err := range errs {
		if err == nil {
			continue
		}
		if !errors.Is(err, crdt.ErrInvalid) {
			return err
		}
		// Bad data from the source: to the dead-letter queue, never dropped.
		if err := c.deadLetter(ctx, connectors.DirectionCapture, changes[i].table.Entity, changes[i].id, err); err != nil {
			return err
		}
	}
	return nil
}

// applyOne writes one change as an edit and records what the row has seen.
func (c *Connector) applyOne(ctx context.Context, ch change) error {
	ent, ok := c.schema.Schema().Entity(ch.table.Entity)
	if !ok {
		return fmt.Errorf("%w: entity %q is no longer configured", crdt.ErrInvalid, ch.table.Entity)
	}
	if ch.refused != nil {
		return ch.refused // to the dead-letter queue (apply)
	}
	if !ch.deleted && len(ch.fields) == 0 {
		return nil // nothing to write (for example a row the table's filter excludes)
	}
	tok := c.seenOf(ch.table.Entity, ch.id)
	res, err := c.store.WriteAt(ctx, ent.Name, ch.id, c.origin, ch.at, func(rec *crdt.Record, env storage.Env) ([]crdt.Write, error) {
		ec := crdt.EditContext{Token: tok, Explicit: true, Applied: env.Applied, History: env.History}
		if ch.deleted {
			if len(rec.Registers) == 0 {
				return nil, nil
			}
			return ent.PrepareDelete(rec, ec)
		}
		if len(ch.fields) == 0 {
			return nil, nil
		}
		return ent.PreparePut(rec, ch.fields, ec)
	})
	if err != nil {
		return err
	}
	if res != nil && res.Edit != nil {
		vv := crdt.VV{}.WithDot(res.Edit.Dot)
		for _, w := range res.Edit.Writes {
			vv = vv.Join(w.Ctx)
		}
		c.observe(ent.Name, ch.id, vv)
	}
	return nil
}

// stream consumes the replication stream until ctx ends.
func (c *Connector) stream(ctx context.Context, rconn *pgconn.PgConn) error {
	var flushed, recorded pglogrepl.LSN
	status := func() error {
		if err := pglogrepl.SendStandbyStatusUpdate(ctx, rconn, pglogrepl.StandbyStatusUpdate{
			WALWritePosition: flushed, WALFlushPosition: flushed, WALApplyPosition: flushed, ClientTime: time.Now()}); err != nil {
			return err
		}
		if c.checkpoints != nil && flushed > recorded {
			data, _ := json.Marshal(checkpoint{Slot: c.cfg.Slot, LSN: flushed.String()})
			if err := c.checkpoints.WriteCheckpoint(ctx, c.cfg.Name, c.epoch, data); err != nil {
				return fmt.Errorf("connector %s: checkpoint at epoch %d refused (did it move to another node?): %w", c.cfg.Name, c.epoch, err)
			}
			recorded = flushed
		}
		return nil
	}
	next := time.Now().Add(5 * time.Second)
	// Committed transactions are gathered while more of the stream is
	// already waiting, then made durable together (one group of fsyncs);
	// the flush position advances past them only after that.
	var pending []change
	var pendingEnd pglogrepl.LSN
	var oldest time.Time    // commit time of the oldest pending transaction
	var gathering time.Time // when the oldest pending change was received
	flush := func() error {
		if len(pending) > 0 {
			if err := c.apply(ctx, pending); err != nil {
				return err
			}
			if c.obs != nil {
				c.obs.Captured(c.cfg.Name, len(pending), time.Since(oldest))
			}
			pending = pending[:0]
		}
		if pendingEnd > flushed {
			flushed = pendingEnd
		}
		return nil
	}
	var tx struct {
		echo    bool
		at      time.Time
		changes []change
		msgs    [][]byte
	}
	for {
		if time.Now().After(next) {
			if err := status(); err != nil {
				return err
			}
			next = time.Now().Add(5 * time.Second)
		}
		deadline := next
		if len(pending) > 0 || pendingEnd > flushed {
			deadline = time.Now().Add(2 * time.Millisecond)
		}
		rctx, cancel := context.WithDeadline(ctx, deadline)
		raw, err := rconn.ReceiveMessage(rctx)
		cancel()
		if err != nil {
			if ctx.Err() != nil {
				return ctx.Err()
			}
			if pgconn.Timeout(err) {
				// Nothing more waiting: make what was gathered durable.
				if err := flush(); err != nil {
					return err
				}
				continue
			}
			return fmt.Errorf("connector %s: replication stream: %w", c.cfg.Name, err)
		}
		if e, ok := raw.(*pgproto3.ErrorResponse); ok {
			return fmt.Errorf("connector %s: replication stream: %s", c.cfg.Name, e.Message)
		}
		cd, ok := raw.(*pgproto3.CopyData)
		if !ok || len(cd.Data) == 0 {
			continue
		}
		switch cd.Data[0] {
		case pglogrepl.PrimaryKeepaliveMessageByteID:
			ka, err := pglogrepl.ParsePrimaryKeepaliveMessage(cd.Data[1:])
			if err != nil {
				return err
			}
			if ka.ReplyRequested {
				next = time.Time{}
			}
		case pglogrepl.XLogDataByteID:
			xld, err := pglogrepl.ParseXLogData(cd.Data[1:])
			if err != nil {
				return err
			}
			msg, err := pglogrepl.ParseV2(xld.WALData, false)
			if err != nil {
				return fmt.Errorf("connector %s: decode pgoutput: %w", c.cfg.Name, err)
			}
			switch m := msg.(type) {
			case *pglogrepl.RelationMessageV2:
				c.mu.Lock()
				c.mu.relations[m.RelationID] = &m.RelationMessage
				c.mu.Unlock()
			case *pglogrepl.BeginMessage:
				tx.echo, tx.at, tx.changes, tx.msgs = false, m.CommitTime, nil, nil
			case *pglogrepl.OriginMessage:
				if m.Name == c.cfg.originName() {
					tx.echo = true
				}
			case *pglogrepl.LogicalDecodingMessageV2:
				if m.Prefix == messagePrefix {
					// Copy: the content aliases a buffer the connection reuses.
					tx.msgs = append(tx.msgs, append([]byte(nil), m.Content...))
				}
			case *pglogrepl.InsertMessageV2:
				if ch, ok := c.rowChange(m.RelationID, m.Tuple, false); ok {
					tx.changes = append(tx.changes, ch)
				}
			case *pglogrepl.UpdateMessageV2:
				if ch, ok := c.rowChange(m.RelationID, m.NewTuple, false); ok {
					tx.changes = append(tx.changes, ch)
				}
			case *pglogrepl.DeleteMessageV2:
				if ch, ok := c.rowChange(m.RelationID, m.OldTuple, true); ok {
					tx.changes = append(tx.changes, ch)
				}
			case *pglogrepl.CommitMessage:
				c.log.Debug("transaction decoded", "commit_lsn", m.CommitLSN.String(), "echo", tx.echo, "changes", len(tx.changes), "messages", len(tx.msgs))
				// What lattice projected into these rows, in stream order.
				for _, content := range tx.msgs {
					c.observeProjection(content)
				}
				if tx.echo {
					// Lattice's own writes: not captured, but they are what the
					// rows now hold.
					for _, ch := range tx.changes {
						c.remember(ch)
					}
				} else {
					for _, ch := range tx.changes {
						ch.at = tx.at
						if d, ok := c.diff(ch); ok {
							if len(pending) == 0 {
								oldest, gathering = tx.at, time.Now()
							}
							pending = append(pending, d)
						}
						c.remember(ch)
					}
				}
				// PostgreSQL may release this WAL once the edits are durable.
				pendingEnd = m.TransactionEndLSN
				// Bound the wait: a busy stream never pauses for the
				// receive timeout, so flush on size or age too.
				if len(pending) >= 1000 || (len(pending) > 0 && time.Since(gathering) > 5*time.Millisecond) {
					if err := flush(); err != nil {
						return err
					}
				}
			}
		}
	}
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

// diff narrows a native change to the fields it really changed, against
// what the stream last showed the row holding: an UPDATE of one column is
// an edit of one field, not of the whole row. A row never seen (or seen
// deleted) keeps every field. ok is false when nothing changed.
func (c *Connector) diff(ch change) (change, bool) {
	if ch.deleted || ch.refused != nil {
		return ch, true
	}
	c.mu.Lock()
	defer c.mu.Unlock()
	k := rowKey(ch.table.Entity, ch.id)
	prev, known := c.mu.rows[k]
	if !known || c.mu.deleted[k] {
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
		return change{}, false
	}
	return ch, true
}

// observeProjection reads a projection's message: entity, id and the
// record context it wrote.
func (c *Connector) observeProjection(content []byte) {
	parts := strings.SplitN(string(content), "\x00", 3)
	if len(parts) != 3 {
		c.log.Warn("malformed projection message in the stream", "bytes", len(content))
		return
	}
	b, err := base64.RawURLEncoding.DecodeString(parts[2])
	if err != nil {
		c.log.Warn("malformed projection message in the stream", "err", err)
		return
	}
	vv, err := crdt.DecodeToken(b)
	if err != nil {
		c.log.Warn("malformed projection message in the stream", "err", err)
		return
	}
	c.log.Debug("projection seen in stream", "entity", parts[0], "id", parts[1], "context", vv.String())
	c.observe(parts[0], parts[1], vv)
}
