package postgres

import (
	"context"
	"encoding/json"
	"errors"
	"fmt"
	"strings"
	"sync"
	"time"

	"github.com/jackc/pglogrepl"
	"github.com/jackc/pgx/v5"
	"github.com/jackc/pgx/v5/pgconn"
	"github.com/jackc/pgx/v5/pgproto3"

	"github.com/lattice-sync/lattice/connectors"
	"github.com/lattice-sync/lattice/crdt"
)

// position is an exact point of the change stream. Several changes share
// one commit LSN (every change of a transaction does), so an LSN alone
// cannot say how much of a transaction was captured: a transaction that was
// made durable only in part is named by its commit LSN and the number of its
// row changes already durable.
type position struct {
	// LSN is the end of the last transaction captured whole; the source
	// may release everything before it.
	LSN pglogrepl.LSN
	// Commit is the commit LSN of a transaction captured in part (0: none)
	// and Changes how many of its row changes, in stream order, are durable.
	Commit  pglogrepl.LSN
	Changes int
	// Poll is poll mode's position (poll.go); nil in other modes.
	Poll *pollPosition
	// Trigger is trigger mode's position (trigger.go); nil in other modes.
	Trigger *triggerPosition
}

// after reports whether p is further along the stream than q.
func (p position) after(q position) bool {
	if p.LSN != q.LSN {
		return p.LSN > q.LSN
	}
	if p.Commit != q.Commit {
		return p.Commit > q.Commit
	}
	if p.Changes != q.Changes {
		return p.Changes > q.Changes
	}
	if p.Poll.seq() != q.Poll.seq() {
		return p.Poll.seq() > q.Poll.seq()
	}
	return p.Trigger.seq() > q.Trigger.seq()
}

// checkpoint is what the connector records through the control plane.
type checkpoint struct {
	Slot string `json:"slot"`
	LSN  string `json:"lsn"`
	// TxCommit and TxChanges name a transaction captured in part (see position).
	TxCommit  string `json:"tx_commit_lsn,omitempty"`
	TxChanges int    `json:"tx_changes,omitempty"`
	// Snapshot is set once the slot's initial snapshot was captured whole.
	Snapshot bool `json:"snapshot"`
	// Node and Seq name the last edit of the node that wrote the
	// checkpoint when it was written: a node taking the connector over
	// waits until it holds that edit, so the context of the rows' next
	// changes covers what was captured before.
	Node string `json:"node,omitempty"`
	Seq  uint64 `json:"seq,omitempty"`
	// Cursor is the projection cursor: per origin, the edits whose records
	// are written into the database.
	Cursor map[string]uint64 `json:"cursor,omitempty"`
	At     string            `json:"at,omitempty"`
	// Limits is each rate-limit pool's budget when it was written (ratelimit.go).
	Limits map[string]poolState `json:"rate_limits,omitempty"`
	// Poll is poll mode's position (poll.go); nil in other modes.
	Poll *pollPosition `json:"poll,omitempty"`
	// Trigger is trigger mode's position (trigger.go); nil in other modes.
	Trigger *triggerPosition `json:"trigger,omitempty"`
	// Mode is the capture mode that wrote it (mode auto keeps it while the
	// database still allows it: auto.go).
	Mode string `json:"mode,omitempty"`
}

func (cp *checkpoint) cursor() (crdt.VV, bool) {
	if cp.Cursor == nil {
		return nil, false
	}
	return crdt.MakeVV(cp.Cursor), true
}

// progress is what the connector will record at its next checkpoint: the
// capture position made durable and the projection cursor. Capture and
// projection update it; checkpointLoop writes it through Raft once a
// second, so Raft is never on the per-row path.
type progress struct {
	mu      sync.Mutex
	capture position
	hasPos  bool
	cursor  crdt.VV
	hasCur  bool
	written struct {
		capture position
		cursor  crdt.VV
	}
}

func (p *progress) setCapture(pos position) {
	p.mu.Lock()
	p.capture, p.hasPos = pos, true
	p.mu.Unlock()
}

func (p *progress) setCursor(vv crdt.VV) {
	p.mu.Lock()
	p.cursor, p.hasCur = vv, true
	p.mu.Unlock()
}

// checkpointLoop writes the connector's progress through the control plane
// every checkpointEvery until ctx ends; a refused epoch ends it with an error.
func (c *Connector) checkpointLoop(ctx context.Context) error {
	if c.checkpoints == nil {
		return nil
	}
	t := time.NewTicker(checkpointEvery)
	defer t.Stop()
	for {
		select {
		case <-ctx.Done():
			return ctx.Err()
		case <-t.C:
		}
		c.prog.mu.Lock()
		pos, hasPos, cur := c.prog.capture, c.prog.hasPos, c.prog.cursor
		changed := (hasPos && pos.after(c.prog.written.capture)) || !cur.Equal(c.prog.written.cursor)
		c.prog.mu.Unlock()
		if !changed || !hasPos && c.cfg.Capture {
			continue
		}
		err := c.writeCheckpoint(ctx, pos, true)
		switch {
		case errors.Is(err, errNotYet):
			c.log.Debug("checkpoint postponed", "err", err)
		case err != nil:
			return err
		}
	}
}

func (cp *checkpoint) position() position {
	p := position{}
	p.LSN, _ = pglogrepl.ParseLSN(cp.LSN)
	if cp.TxCommit != "" {
		p.Commit, _ = pglogrepl.ParseLSN(cp.TxCommit)
		p.Changes = cp.TxChanges
	}
	return p
}

// readCheckpoint returns the connector's last checkpoint, if any.
func (c *Connector) readCheckpoint() (checkpoint, bool) {
	if c.checkpoints == nil {
		return checkpoint{}, false
	}
	_, data, ok := c.checkpoints.ReadCheckpoint(c.cfg.Name)
	if !ok || len(data) == 0 {
		return checkpoint{}, false
	}
	var cp checkpoint
	if err := json.Unmarshal(data, &cp); err != nil {
		c.log.Warn("unreadable checkpoint: treating the slot as unknown", "err", err)
		return checkpoint{}, false
	}
	// Checkpoints written before snapshots were recorded only name a position.
	if cp.LSN != "" && cp.LSN != "0/0" {
		cp.Snapshot = true
	}
	return cp, true
}

// writeCheckpoint records pos through the control plane under the
// connector's epoch, once the node's edits up to now are held by the write
// concern's number of nodes.
func (c *Connector) writeCheckpoint(ctx context.Context, pos position, snapshot bool) error {
	if c.checkpoints == nil {
		return nil
	}
	node := c.store.NodeID()
	seq := c.store.Applied().Get(node)
	if c.acks > 1 && c.waitAcks != nil && seq > 0 {
		wctx, cancel := context.WithTimeout(ctx, 10*time.Second)
		err := c.waitAcks(wctx, crdt.Dot{Node: node, Seq: seq}, c.acks)
		cancel()
		if err != nil {
			return fmt.Errorf("%w: captured edits not yet on %d nodes: %v", errNotYet, c.acks, err)
		}
	}
	c.prog.mu.Lock()
	cur, hasCur := c.prog.cursor, c.prog.hasCur
	c.prog.mu.Unlock()
	if !hasCur {
		// Keep the cursor the last owner recorded until projection moves it.
		if old, ok := c.readCheckpoint(); ok {
			cur, hasCur = old.cursor()
		}
	}
	cp := checkpoint{Slot: c.cfg.Slot, LSN: pos.LSN.String(), Snapshot: snapshot, Node: node, Seq: seq,
		At: time.Now().UTC().Format(time.RFC3339Nano)}
	cp.Limits = c.limits().state(time.Now()) // ratelimit.go
	if pos.Commit != 0 {
		cp.TxCommit, cp.TxChanges = pos.Commit.String(), pos.Changes
	}
	if hasCur {
		cp.Cursor = map[string]uint64{}
		for _, e := range cur {
			cp.Cursor[e.Node] = e.Seq
		}
	}
	cp.Poll = pos.Poll       // poll mode (poll.go); nil otherwise
	cp.Trigger = pos.Trigger // trigger mode (trigger.go); nil otherwise
	cp.Mode = c.modeNow()
	data, _ := json.Marshal(cp)
	if err := c.checkpoints.WriteCheckpoint(ctx, c.cfg.Name, c.epoch, data); err != nil {
		return fmt.Errorf("connector %s: checkpoint at epoch %d refused (did it move to another node?): %w", c.cfg.Name, c.epoch, err)
	}
	c.prog.mu.Lock()
	c.prog.written.capture, c.prog.written.cursor = pos, cur
	c.prog.mu.Unlock()
	c.setConfirmed(pos)
	return nil
}

// errNotYet marks a checkpoint that could not be written yet (retried).
var errNotYet = errors.New("checkpoint not written yet")

// slotInfo is what pg_replication_slots says of the connector's slot.
type slotInfo struct {
	exists    bool
	plugin    string
	confirmed pglogrepl.LSN
	walStatus string // reserved, extended, unreserved or lost (invalidated)
	activePID int
}

func (c *Connector) slotInfo(ctx context.Context, conn *pgx.Conn) (slotInfo, error) {
	var si slotInfo
	var confirmed, status *string
	var pid *int32
	var plugin *string
	err := conn.QueryRow(ctx, `SELECT plugin, confirmed_flush_lsn::text, wal_status, active_pid
		FROM pg_replication_slots WHERE slot_name = $1`, c.cfg.Slot).Scan(&plugin, &confirmed, &status, &pid)
	if errors.Is(err, pgx.ErrNoRows) {
		return si, nil
	}
	if err != nil {
		return si, fmt.Errorf("connector %s: read replication slot %s: %w", c.cfg.Name, c.cfg.Slot, err)
	}
	si.exists = true
	if plugin != nil {
		si.plugin = *plugin
	}
	if confirmed != nil {
		si.confirmed, _ = pglogrepl.ParseLSN(*confirmed)
	}
	if status != nil {
		si.walStatus = *status
	}
	if pid != nil {
		si.activePID = int(*pid)
	}
	return si, nil
}

// distrust says why the slot cannot be resumed from, or "" when it can.
// Source safety: a slot that was dropped, invalidated, recreated or moved
// on by someone else may have lost changes; it is never silently trusted.
func (c *Connector) distrust(si slotInfo, cp checkpoint, hasCP bool) string {
	switch {
	case !si.exists && hasCP:
		return fmt.Sprintf("replication slot %s from the last checkpoint (at %s) is missing: it was dropped or the database was restored", c.cfg.Slot, cp.LSN)
	case !si.exists:
		return ""
	case si.walStatus == "lost":
		return fmt.Sprintf("replication slot %s was invalidated: the server removed WAL it still needed (see max_slot_wal_keep_size)", c.cfg.Slot)
	case si.plugin != "pgoutput":
		return fmt.Sprintf("replication slot %s uses plugin %q, not pgoutput", c.cfg.Slot, si.plugin)
	case c.checkpoints == nil:
		return "" // no control plane to compare with (a connector embedded in a test)
	case !hasCP || cp.Slot != c.cfg.Slot || !cp.Snapshot:
		return fmt.Sprintf("replication slot %s exists but lattice never finished its initial snapshot from it", c.cfg.Slot)
	}
	if at := cp.position(); si.confirmed > at.LSN {
		return fmt.Sprintf("replication slot %s is confirmed up to %s, beyond lattice's checkpoint %s: it was recreated or consumed by another client", c.cfg.Slot, si.confirmed, cp.LSN)
	}
	return ""
}

// capture reads the initial snapshot (when the slot is new) and then the
// change stream from the exact checkpointed position.
func (c *Connector) capture(ctx context.Context, conn *pgx.Conn) error {
	rconn, err := pgconn.Connect(ctx, replicationDSN(c.cfg.DSN))
	if err != nil {
		return fmt.Errorf("connector %s: replication connection: %w", c.cfg.Name, err)
	}
	defer rconn.Close(context.Background())
	cp, hasCP := c.readCheckpoint()
	si, err := c.slotInfo(ctx, conn)
	if err != nil {
		return err
	}
	var from position
	if why := c.distrust(si, cp, hasCP); why != "" {
		if si.activePID != 0 {
			return fmt.Errorf("connector %s: %s, and it is in use by server process %d: stop that client (or wait for it to end) and the connector starts over from a new snapshot", c.cfg.Name, why, si.activePID)
		}
		c.log.Error("capture starts over from a new snapshot: "+why, "slot", c.cfg.Slot)
		if c.obs != nil {
			c.obs.Resnapshot(c.cfg.Name, why)
		}
		if si.exists {
			if _, err := conn.Exec(ctx, "SELECT pg_drop_replication_slot($1)", c.cfg.Slot); err != nil {
				return fmt.Errorf("connector %s: drop the untrusted slot %s: %w", c.cfg.Name, c.cfg.Slot, err)
			}
		}
		si.exists = false
	}
	if !si.exists {
		res, err := pglogrepl.CreateReplicationSlot(ctx, rconn, c.cfg.Slot, "pgoutput",
			pglogrepl.CreateReplicationSlotOptions{SnapshotAction: "EXPORT_SNAPSHOT"})
		if err != nil {
			return fmt.Errorf("connector %s: create replication slot: %w", c.cfg.Name, err)
		}
		lsn, err := pglogrepl.ParseLSN(res.ConsistentPoint)
		if err != nil {
			return err
		}
		from = position{LSN: lsn}
		// Initial snapshot at exactly the slot's starting point.
		c.stats().setState(connectors.StateSnapshotting)
		if err := c.snapshot(ctx, conn, res.SnapshotName); err != nil {
			return err
		}
		// Recorded before streaming: a restart before this point finds a
		// slot without a finished snapshot and starts over.
		if err := c.recordSnapshot(ctx, from); err != nil {
			return err
		}
	} else if hasCP && cp.Slot == c.cfg.Slot {
		from = cp.position()
		if err := c.awaitPrevious(ctx, cp); err != nil {
			return err
		}
	}
	c.setConfirmed(from)
	c.prog.setCapture(from)
	close(c.ready)
	start := from.LSN
	err = pglogrepl.StartReplication(ctx, rconn, c.cfg.Slot, start, pglogrepl.StartReplicationOptions{PluginArgs: []string{
		"proto_version '2'", fmt.Sprintf("publication_names '%s'", c.cfg.Publication), "messages 'true'"}})
	if err != nil {
		return fmt.Errorf("connector %s: start replication: %w", c.cfg.Name, err)
	}
	c.log.Info("capture streaming", "slot", c.cfg.Slot, "from", start.String(), "skip_in_tx", from.Commit.String(), "skip_changes", from.Changes)
	return c.stream(ctx, rconn, from)
}

// recordSnapshot checkpoints the position right after an initial
// snapshot, waiting (retrying) while the write concern is not reached.
func (c *Connector) recordSnapshot(ctx context.Context, from position) error {
	for c.checkpoints != nil {
		err := c.writeCheckpoint(ctx, from, true)
		if err == nil {
			return nil
		}
		if !errors.Is(err, errNotYet) {
			return err
		}
		c.log.Warn("waiting to record the snapshot's checkpoint", "err", err)
		select {
		case <-ctx.Done():
			return ctx.Err()
		case <-time.After(time.Second):
		}
	}
	return nil
}

// awaitPrevious waits (bounded) until this node holds the edits the
// checkpoint's writer had made when it wrote it, so the next changes of
// each row are captured with a context that covers them.
func (c *Connector) awaitPrevious(ctx context.Context, cp checkpoint) error {
	if cp.Node == "" || cp.Node == c.store.NodeID() {
		return nil
	}
	defer c.awaitQuiet(ctx, cp.Node)
	if c.store.Applied().Get(cp.Node) >= cp.Seq {
		return nil
	}
	c.log.Info("waiting for the previous owner's captured edits to replicate here", "node", cp.Node, "seq", cp.Seq)
	deadline := time.Now().Add(30 * time.Second)
	for c.store.Applied().Get(cp.Node) < cp.Seq {
		if time.Now().After(deadline) {
			c.log.Warn("previous owner's edits did not arrive in 30 s: resuming anyway (rows changed again may show spurious conflicts)",
				"node", cp.Node, "seq", cp.Seq, "have", c.store.Applied().Get(cp.Node))
			return nil
		}
		select {
		case <-ctx.Done():
			return ctx.Err()
		case <-time.After(20 * time.Millisecond):
		}
	}
	return nil
}

// awaitQuiet waits (up to previousQuiet.max) until no more of node's edits
// arrive here for previousQuiet.still: the previous owner may have captured
// changes after its checkpoint, and those still on their way would not be
// recognised as already captured (the records' source registers, see
// change.src) and be captured a second time.
func (c *Connector) awaitQuiet(ctx context.Context, node string) {
	deadline := time.Now().Add(previousQuiet.max)
	last, since := c.store.Applied().Get(node), time.Now()
	for time.Since(since) < previousQuiet.still && time.Now().Before(deadline) {
		select {
		case <-ctx.Done():
			return
		case <-time.After(20 * time.Millisecond):
		}
		if seq := c.store.Applied().Get(node); seq != last {
			last, since = seq, time.Now()
		}
	}
}

// previousQuiet bounds awaitQuiet.
var previousQuiet = struct{ still, max time.Duration }{time.Second, 5 * time.Second}

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
	if err := c.snapshotTables(ctx, tx); err != nil {
		return err
	}
	return tx.Commit(ctx)
}

// snapshotTables captures every row of the mapped tables as tx sees them.
func (c *Connector) snapshotTables(ctx context.Context, tx pgx.Tx) error {
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
		flush := func() error {
			if err := c.apply(ctx, batch); err != nil {
				return err
			}
			total += len(batch)
			batch = batch[:0]
			return nil
		}
		for rows.Next() {
			text, err := scanText(rows, cols)
			if err != nil {
				rows.Close()
				return err
			}
			ch, err := c.toChange(t, text, false)
			if err != nil {
				rows.Close()
				return fmt.Errorf("connector %s: snapshot of %s: %w", c.cfg.Name, t.Name, err)
			}
			ch.at, ch.snapshot, ch.seen = time.Now(), true, c.seenOf(ch.table.Entity, ch.id)
			if !ch.updatedAt.IsZero() {
				// The row's own last-change time dates it: connecting a
				// database that already holds data, the newer row wins.
				ch.at, ch.historical = ch.updatedAt, true
			}
			c.remember(ch)
			if err := c.limits().reads.take(ctx, 1, flush); err != nil { // rate limit: ratelimit.go
				rows.Close()
				return err
			}
			batch = append(batch, ch)
			if len(batch) >= 2000 {
				if err := flush(); err != nil {
					rows.Close()
					return err
				}
			}
		}
		rows.Close()
		if err := rows.Err(); err != nil {
			return err
		}
		if err := flush(); err != nil {
			return err
		}
	}
	c.log.Info("initial snapshot captured", "rows", total)
	return nil
}

// Capture pipeline limits.
const (
	// groupChanges and groupAge bound how much of the stream is gathered
	// before it is queued as edits (a quiet stream is queued at once).
	groupChanges = 2000
	groupAge     = 5 * time.Millisecond
	// inflightGroups bounds the groups queued in the store and not yet
	// durable; the stream is not read further while it is full.
	inflightGroups = 8
	// checkpointEvery is how often the durable position goes through Raft.
	checkpointEvery = time.Second
	// statusEvery is how often the position is reported to the server.
	statusEvery = 5 * time.Second
)

// stream consumes the replication stream until ctx ends. from is where it
// resumes: changes of the transaction from.Commit up to from.Changes are
// already captured and are skipped.
//
// The loop decodes the stream in order and gathers changes into groups,
// queues each group in the store (Enqueue: the order of edits is the
// stream's) and goes on reading while a completer goroutine waits for the
// group to be durable. A group's position becomes durable only after every
// earlier group's. checkpointLoop then records it through Raft, and only a
// checkpointed position is confirmed to the server, so the slot never
// moves past what a new owner would resume from.
func (c *Connector) stream(ctx context.Context, rconn *pgconn.PgConn, from position) error {
	ctx, cancel := context.WithCancel(ctx)
	defer cancel()

	pl := c.newPipeline(ctx, from)
	defer pl.close()

	var reported pglogrepl.LSN
	var lastStatus time.Time
	replyNow := false
	status := func() error {
		confirmed := pl.durable.LSN
		if c.checkpoints != nil {
			confirmed = c.confirmedLSN()
		}
		if err := pglogrepl.SendStandbyStatusUpdate(ctx, rconn, pglogrepl.StandbyStatusUpdate{
			WALWritePosition: confirmed, WALFlushPosition: confirmed, WALApplyPosition: confirmed, ClientTime: time.Now()}); err != nil {
			return fmt.Errorf("connector %s: send status: %w", c.cfg.Name, err)
		}
		reported, lastStatus, replyNow = confirmed, time.Now(), false
		return nil
	}
	// statusDue is when the server should next hear from us: at once when
	// it asked, a second after a new position was confirmed, and every
	// statusEvery regardless.
	statusDue := func() time.Time {
		confirmed := pl.durable.LSN
		if c.checkpoints != nil {
			confirmed = c.confirmedLSN()
		}
		switch {
		case replyNow:
			return time.Time{}
		case confirmed > reported:
			return lastStatus.Add(time.Second)
		}
		return lastStatus.Add(statusEvery)
	}

	var tx struct {
		echo    bool
		skip    bool // part of it was captured before the resume point
		at      time.Time
		commit  pglogrepl.LSN
		changes int
		// projected lists the rows whose projection messages it carries.
		projected [][2]string
	}
	for {
		if err := pl.reap(); err != nil {
			return err
		}
		now := time.Now()
		if !now.Before(statusDue()) {
			if err := status(); err != nil {
				return err
			}
		}
		// Wake up for whatever comes first: queueing what was gathered,
		// reaping queued groups, the next checkpoint, the next status.
		deadline := statusDue()
		if pl.busy() {
			deadline = now.Add(time.Millisecond)
		}
		rctx, rcancel := context.WithDeadline(ctx, deadline)
		raw, err := rconn.ReceiveMessage(rctx)
		rcancel()
		if err != nil {
			if ctx.Err() != nil {
				return ctx.Err()
			}
			if pgconn.Timeout(err) {
				// Nothing more waiting: queue what was gathered.
				if err := pl.flush(); err != nil {
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
				return fmt.Errorf("connector %s: decode keepalive: %w", c.cfg.Name, err)
			}
			if ka.ReplyRequested {
				replyNow = true
			}
		case pglogrepl.XLogDataByteID:
			xld, err := pglogrepl.ParseXLogData(cd.Data[1:])
			if err != nil {
				return fmt.Errorf("connector %s: decode XLogData: %w", c.cfg.Name, err)
			}
			c.stats().received(xld.WALStart + pglogrepl.LSN(len(xld.WALData)))
			msg, err := pglogrepl.ParseV2(xld.WALData, false)
			if err != nil {
				return fmt.Errorf("connector %s: decode pgoutput: %w", c.cfg.Name, err)
			}
			var row, oldRow *pglogrepl.TupleData
			var oldFull bool // oldRow is the whole old row (REPLICA IDENTITY FULL), not only its key
			var rel uint32
			deleted := false
			switch m := msg.(type) {
			case *pglogrepl.RelationMessageV2:
				if err := c.relationDrift(ctx, pl, &m.RelationMessage); err != nil { // schema drift: drift.go
					return err
				}
				c.mu.Lock()
				c.mu.relations[m.RelationID] = &m.RelationMessage
				c.mu.Unlock()
			case *pglogrepl.BeginMessage:
				tx.echo, tx.at, tx.commit, tx.changes, tx.projected = false, m.CommitTime, m.FinalLSN, 0, nil
				tx.skip = from.Commit != 0 && m.FinalLSN == from.Commit
			case *pglogrepl.OriginMessage:
				if m.Name == c.cfg.originName() {
					tx.echo = true
				}
			case *pglogrepl.LogicalDecodingMessageV2:
				// What lattice projected into rows, at its place in the stream.
				switch m.Prefix {
				case marksPrefix:
					marks, err := decodeMarks(m.Content)
					if err != nil {
						c.log.Warn("projection message in the stream does not decode", "err", err)
						c.stats().fail(err)
					}
					for _, mk := range marks {
						c.observe(mk.entity, mk.id, mk.ctx)
						tx.projected = append(tx.projected, [2]string{mk.entity, mk.id})
					}
				case legacyPrefix:
					if entity, id, ok := c.observeProjection(m.Content); ok {
						tx.projected = append(tx.projected, [2]string{entity, id})
					}
				}
			case *pglogrepl.InsertMessageV2:
				rel, row = m.RelationID, m.Tuple
			case *pglogrepl.UpdateMessageV2:
				rel, row = m.RelationID, m.NewTuple
				if m.OldTuple != nil && (m.OldTupleType == pglogrepl.UpdateMessageTupleTypeOld || m.OldTupleType == pglogrepl.UpdateMessageTupleTypeKey) {
					oldRow, oldFull = m.OldTuple, m.OldTupleType == pglogrepl.UpdateMessageTupleTypeOld
				}
			case *pglogrepl.DeleteMessageV2:
				rel, row, deleted = m.RelationID, m.OldTuple, true
			case *pglogrepl.CommitMessage:
				c.log.Debug("transaction decoded", "commit_lsn", m.CommitLSN.String(), "echo", tx.echo, "changes", tx.changes)
				// The rows now show what those projections wrote.
				for _, r := range tx.projected {
					c.unechoed(r[0], r[1], -1)
				}
				pl.advance(position{LSN: m.TransactionEndLSN})
				if pl.due() {
					if err := pl.flush(); err != nil {
						return err
					}
				}
			}
			if row == nil {
				continue
			}
			if !tx.echo {
				if err := pl.pace(); err != nil { // rate limit: ratelimit.go
					return err
				}
			}
			tx.changes++
			pl.advance(position{LSN: pl.pos.LSN, Commit: tx.commit, Changes: tx.changes})
			ch, ok := c.rowChange(rel, row, deleted)
			if !ok {
				continue
			}
			var moved *change // the old key of an UPDATE that changed the key
			if oldRow != nil {
				if old, ok := c.rowChange(rel, oldRow, !oldFull); ok && old.refused == nil {
					if old.id != ch.id {
						del := change{table: old.table, id: old.id, deleted: true, fields: map[string]crdt.Value{}}
						moved = &del
					} else if oldFull {
						// The exact diff base: what the row held just before.
						ch.before = old.fields
					}
				}
			}
			if tx.echo || (tx.skip && tx.changes <= from.Changes) {
				// Lattice's own write, or captured before the resume point:
				// not captured again, but it is what the row now holds.
				if moved != nil {
					c.remember(*moved)
				}
				c.remember(ch)
				continue
			}
			// Dated by its commit, however late it is captured (a backlog,
			// a resume): last-writer-wins compares when the writes were
			// made, and a change captured a second time by another owner
			// (connectors/DESIGN.md, Delivery) is no later than the edits
			// made after it.
			ch.at, ch.historical, ch.src = tx.at, true, sourcePos(tx.commit, tx.changes)
			if moved != nil {
				// A new key is a new record: the old one is deleted.
				moved.at, moved.historical, moved.src = tx.at, true, ch.src
				pl.add(*moved)
				c.remember(*moved)
			}
			if d, ok := c.diff(ch); ok {
				pl.add(d)
			}
			c.remember(ch)
			if pl.full() {
				// A large transaction is queued in parts; its position
				// names how many of its changes each part covers.
				if err := pl.flush(); err != nil {
					return err
				}
			}
		}
	}
}

// confirmed is the last position recorded by a checkpoint (what the
// server may be told is flushed).
func (c *Connector) setConfirmed(p position) { c.confirmed.Store(uint64(p.LSN)) }

func (c *Connector) confirmedLSN() pglogrepl.LSN { return pglogrepl.LSN(c.confirmed.Load()) }
