package postgres

import (
	"context"
	"encoding/json"
	"errors"
	"fmt"
	"math"
	"sort"
	"strings"
	"sync"
	"sync/atomic"
	"time"

	"github.com/jackc/pgx/v5"

	"github.com/lattice-sync/lattice/connectors"
	"github.com/lattice-sync/lattice/crdt"
	"github.com/lattice-sync/lattice/storage"
)

// Poll capture (mode: poll): for databases without logical replication
// (wal_level replica, no superuser, a managed service that allows neither).
// Each table is read by queries ordered by (updated_at, key); what changed
// is told apart from what was already captured by comparing each row with
// what the connector last saw of it. connectors/DESIGN.md ("Poll mode")
// gives the reasoning; the invariants the code keeps:
//
//   - Watermark. A scan reads every row whose updated_at is at or after its
//     lower bound From, in (updated_at, key) order, a page at a time: the
//     next page starts strictly after the last (updated_at, key) read, so
//     rows sharing one updated_at are never skipped, wherever a LIMIT cuts
//     through them. When a scan that began at database time S completes,
//     the next one starts at S - overlap: a row committed after S has an
//     updated_at later than its commit time minus the overlap (the overlap
//     exceeds the longest transaction; HAZARD in DESIGN.md), so every row
//     version is read by the first scan that begins after it commits. The
//     first scan (From empty) reads every row in key order, null
//     updated_at included: the initial snapshot; rows written while it
//     runs are stamped after its start minus the overlap, so the next scan
//     reads them.
//   - Exact resume. The position (pollPosition, checkpointed through Raft
//     like an LSN) holds per table From, the next From once the scan in
//     progress completes, and the (updated_at, key) cursor of the scan in
//     progress (the key alone in the initial scan) up to which its changes
//     are durable. A restarted or moved
//     connector continues an interrupted scan after its cursor; rows it
//     reads again (the overlap window) are deduplicated against the store.
//   - Dedupe. A row re-read with the values the connector last saw is no
//     change; what it last saw is kept per row in memory (Connector.mu.rows,
//     pollState.rows), bounded by pollRowsMax: rows outside every scan's
//     window are evicted first. A row without an entry (evicted, or after a
//     restart) is compared with the store's record: a field holding the
//     record's resolved value, or this connector's own newest version of
//     it, is not a change.
//   - Echo. Lattice's own writes are read back in the projection's
//     transaction (poll_project.go), so the connector knows exactly what
//     the row holds afterwards (values and updated_at): reading that back
//     is no change. No marks, no replication origin.
//   - Causality by time. Each projection records the database time just
//     before its commit and the record context it wrote. A polled change
//     whose updated_at is later than a projection's time saw it (its
//     context covers the projection's); an earlier one is concurrent.
//   - Never project over a change not yet polled: projection locks the rows
//     it writes and skips (defers until the next poll) a row whose
//     updated_at is neither what the connector last saw, nor below every
//     scan's window, nor at most its own last projection's time.

// Poll defaults.
const (
	defaultPollInterval = time.Second
	defaultPollOverlap  = 5 * time.Second
	defaultPollPage     = 1000
	// pollRowsMax bounds the rows whose last seen state is kept in memory
	// (rows changed within a scan's window are kept whatever the bound).
	pollRowsMax = 100_000
	// pollProjsMax bounds the projections kept per row for causality;
	// dropping the oldest only makes a later change concurrent with it.
	pollProjsMax = 8
	// pokeGap is the shortest time between two scans of a table when a
	// projection waits for one (pollAllow).
	pokeGap = 50 * time.Millisecond
)

// PollTable is how poll mode reads one table (the table's poll: mapping).
type PollTable struct {
	// Interval is the time between two scans (default 1 s).
	Interval time.Duration
	// Overlap is how far before the last scan's start a scan re-reads
	// (default 5 s). It must exceed the longest transaction that writes the
	// table: a row is stamped when its transaction writes it and becomes
	// visible when it commits.
	Overlap time.Duration
	// PageSize is the rows one query returns (default 1000).
	PageSize int
	// SoftDelete names a column whose value marks a row deleted; SoftValue
	// is that value's text (col::text; booleans are true/false), nil when
	// any non-null value means deleted (a deleted_at column).
	SoftDelete string
	SoftValue  *string
	// KeysetEvery, when > 0, compares the table's keys with the records
	// lattice holds from it every that many scans: a key gone from the
	// table is a deleted row.
	KeysetEvery int
}

type rawPoll struct {
	Interval    string         `json:"interval"`
	Overlap     string         `json:"overlap"`
	PageSize    *int           `json:"page_size"`
	SoftDelete  *rawSoftDelete `json:"soft_delete"`
	KeysetEvery *int           `json:"keyset_every"`
}

type rawSoftDelete struct {
	Column string          `json:"column"`
	Value  json.RawMessage `json:"value"`
}

// polling reports whether the connector captures by polling (configured,
// or chosen by mode auto: auto.go).
func (c *Connector) polling() bool { return c.modeNow() == ModePoll }

// parsePoll reads a table's poll settings (config.go calls it for every
// table): required updated_at in mode poll, defaults, and checks whose
// errors name the connector, the table and the setting or column.
func parsePoll(connector, name, mode string, raw json.RawMessage, t *Table) []error {
	at := fmt.Sprintf("connector %q table %q", connector, name)
	var errs []error
	given := len(raw) > 0 && string(raw) != "null"
	if given && (mode == ModeLogical || mode == ModeTrigger) {
		return []error{fmt.Errorf("%s: poll settings apply to mode: poll, and this connector's mode is %s: remove poll or set mode: poll", at, mode)}
	}
	// Mode auto may fall back to poll: a table with updated_at gets poll's
	// settings (defaults when none are given), one without cannot be polled.
	pollable := mode == ModePoll || (mode == ModeAuto && t.UpdatedAt != "")
	if given && mode == ModeAuto && t.UpdatedAt == "" {
		return []error{fmt.Errorf("%s: poll settings need updated_at (mode auto falls back to poll only for tables with an updated_at column): add updated_at or remove poll", at)}
	}
	if !pollable && !given {
		return nil
	}
	p := &PollTable{Interval: defaultPollInterval, Overlap: defaultPollOverlap, PageSize: defaultPollPage}
	if given {
		var rp rawPoll
		dec := json.NewDecoder(strings.NewReader(string(raw)))
		dec.DisallowUnknownFields()
		if err := dec.Decode(&rp); err != nil {
			msg := err.Error()
			if k, ok := strings.CutPrefix(msg, "json: unknown field "); ok {
				msg = fmt.Sprintf("unknown key %s (want interval, overlap, page_size, soft_delete, keyset_every)", k)
			}
			return []error{fmt.Errorf("%s poll: %s", at, msg)}
		}
		duration := func(key, s string, d *time.Duration, zeroOK bool) {
			if s == "" {
				return
			}
			v, err := time.ParseDuration(s)
			switch {
			case err != nil:
				errs = append(errs, fmt.Errorf("%s poll %s %q: want a duration such as 1s, 500ms or 1m", at, key, s))
			case v < 0 || (v == 0 && !zeroOK):
				errs = append(errs, fmt.Errorf("%s poll %s %q: want a positive duration", at, key, s))
			default:
				*d = v
			}
		}
		duration("interval", rp.Interval, &p.Interval, false)
		duration("overlap", rp.Overlap, &p.Overlap, true)
		if rp.PageSize != nil {
			if *rp.PageSize < 1 || *rp.PageSize > 100000 {
				errs = append(errs, fmt.Errorf("%s poll page_size %d: want 1 to 100000 rows", at, *rp.PageSize))
			}
			p.PageSize = *rp.PageSize
		}
		if rp.KeysetEvery != nil {
			if *rp.KeysetEvery < 1 {
				errs = append(errs, fmt.Errorf("%s poll keyset_every %d: want a number of scans, at least 1 (omit it to detect no hard deletes)", at, *rp.KeysetEvery))
			}
			p.KeysetEvery = *rp.KeysetEvery
		}
		if sd := rp.SoftDelete; sd != nil {
			switch {
			case sd.Column == "":
				errs = append(errs, fmt.Errorf("%s poll soft_delete: column is required (the column whose value marks a row deleted)", at))
			case contains(t.Key, sd.Column):
				errs = append(errs, fmt.Errorf("%s poll soft_delete column %q is a key column", at, sd.Column))
			case sd.Column == t.UpdatedAt:
				errs = append(errs, fmt.Errorf("%s poll soft_delete column %q is the updated_at column", at, sd.Column))
			}
			p.SoftDelete = sd.Column
			if v := strings.TrimSpace(string(sd.Value)); v != "" && v != "null" {
				texts, err := scalarTexts("value", []json.RawMessage{sd.Value})
				if err != nil {
					errs = append(errs, fmt.Errorf("%s poll soft_delete column %q: %v", at, sd.Column, err))
				} else {
					p.SoftValue = &texts[0]
				}
			}
		}
	}
	if pollable {
		switch {
		case t.UpdatedAt == "":
			errs = append(errs, fmt.Errorf("%s: mode poll needs updated_at: the timestamp column the database sets whenever a row is inserted or updated (DEFAULT clock_timestamp() and a trigger, or SET updated_at = clock_timestamp() in every UPDATE)", at))
		case contains(t.Key, t.UpdatedAt):
			errs = append(errs, fmt.Errorf("%s: updated_at column %q is a key column", at, t.UpdatedAt))
		}
		if t.tf != nil {
			if cv := t.tf.conv[t.UpdatedAt]; cv != nil && (cv.typ != crdt.TypeTimestamp || cv.unit != 0 || cv.layout != "") {
				errs = append(errs, fmt.Errorf("%s column %q: the updated_at column must be a timestamp or timestamptz column read as PostgreSQL's own text (no format, a timestamp field)", at, t.UpdatedAt))
			}
		}
	}
	t.Poll = p
	return errs
}

// pollPosition is poll mode's capture position: per table, where its scans
// are. It is immutable once made (with returns a copy), so a pipeline group
// can hold it. Seq orders positions (position.after).
type pollPosition struct {
	Seq    uint64              `json:"seq"`
	Tables map[string]pollMark `json:"tables"`
}

// pollMark is one table's scan state.
type pollMark struct {
	// From is the lower bound (updated_at text) of the scan in progress, or
	// of the next one; "" reads every row (the initial snapshot).
	From string `json:"from,omitempty"`
	// Next is the From the next scan takes once the one in progress
	// completes (its start time minus the overlap); "" when no scan is in
	// progress.
	Next string `json:"next,omitempty"`
	// U and Key are the cursor of the scan in progress: every row up to
	// (U, Key) in (updated_at, key) order that it read is durable.
	U   string   `json:"u,omitempty"`
	Key []string `json:"key,omitempty"`
	// Snapshot is set once the first scan (every row) completed.
	Snapshot bool `json:"snapshot,omitempty"`
	// Scans counts completed scans (for keyset_every).
	Scans uint64 `json:"scans,omitempty"`
}

func (p *pollPosition) seq() uint64 {
	if p == nil {
		return 0
	}
	return p.Seq
}

// with returns the position with one table's mark replaced.
func (p *pollPosition) with(table string, m pollMark) *pollPosition {
	out := &pollPosition{Seq: p.seq() + 1, Tables: map[string]pollMark{}}
	if p != nil {
		for k, v := range p.Tables {
			out.Tables[k] = v
		}
	}
	out.Tables[table] = m
	return out
}

func (p *pollPosition) mark(table string) pollMark {
	if p == nil {
		return pollMark{}
	}
	return p.Tables[table]
}

// String describes the position for status reports.
func (p *pollPosition) String() string {
	if p == nil {
		return ""
	}
	names := make([]string, 0, len(p.Tables))
	for n := range p.Tables {
		names = append(names, n)
	}
	sort.Strings(names)
	parts := make([]string, 0, len(names))
	for _, n := range names {
		m := p.Tables[n]
		switch {
		case m.Next != "" && m.U != "":
			parts = append(parts, fmt.Sprintf("%s: scanning from %s, at (%s, %s)", n, orAll(m.From), m.U, strings.Join(m.Key, "/")))
		case m.Next != "":
			parts = append(parts, fmt.Sprintf("%s: scanning from %s", n, orAll(m.From)))
		default:
			parts = append(parts, fmt.Sprintf("%s: next scan from %s", n, orAll(m.From)))
		}
	}
	return strings.Join(parts, "; ")
}

func orAll(from string) string {
	if from == "" {
		return "the first row"
	}
	return from
}

// pollState is what poll mode keeps in memory, shared by the poller and
// the projector. Lock order: pollState.mu before Connector.mu (never the
// other way round).
type pollState struct {
	mu struct {
		sync.Mutex
		rows map[string]*pollRow
		// from is, per entity, the lower bound of the next scan (µs): every
		// row version with an updated_at below it has been read.
		from map[string]int64
		// gen counts projections landed; a row's land is the gen of its
		// last one (a poll page read before it is stale for that row).
		gen uint64
		// keyset asks the poller for a key-set pass of an entity's table.
		keyset map[string]bool
		// evicted is when pollEvict last went through rows (at most every 10 s).
		evicted time.Time
	}
	poke     chan struct{}
	received atomic.Pointer[pollPosition] // the poller's position (report)
}

// pollRow is what the connector last saw of one row (besides its values,
// in Connector.mu.rows).
type pollRow struct {
	seen    bool  // u is the updated_at of the version last seen
	u       int64 // µs; math.MinInt64 for null
	present bool  // the row exists (not deleted, not soft-deleted)
	land    uint64
	// projAt is the database time of the last projection into the row
	// (µs, just before its commit); projs the projections no polled change
	// has covered yet, oldest first.
	projAt  int64
	projs   []pollProj
	refused int64 // updated_at of a version refused (dead letter), so it is refused once
	hasRef  bool
}

type pollProj struct {
	at  int64
	ctx crdt.VV
}

func newPollState() *pollState {
	s := &pollState{poke: make(chan struct{}, 1)}
	s.mu.rows = map[string]*pollRow{}
	s.mu.from = map[string]int64{}
	s.mu.keyset = map[string]bool{}
	return s
}

// row returns a row's state, created when absent. s.mu must be held.
func (s *pollState) row(k string) *pollRow {
	r := s.mu.rows[k]
	if r == nil {
		r = &pollRow{u: math.MinInt64, projAt: math.MinInt64}
		s.mu.rows[k] = r
	}
	return r
}

// wake asks the poller for a scan now.
func (s *pollState) wake() {
	select {
	case s.poke <- struct{}{}:
	default:
	}
}

// covered takes the projections of a row that a change stamped u saw
// (those before u) and returns the context of the latest of them.
func (r *pollRow) covered(u int64) crdt.VV {
	var vv crdt.VV
	n := 0
	for _, p := range r.projs {
		if p.at < u {
			vv = vv.Join(p.ctx)
			n++
		}
	}
	r.projs = append(r.projs[:0], r.projs[n:]...)
	return vv
}

// pollMicros reads an updated_at text as microseconds; ok is false for null.
func pollMicros(s *string) (int64, bool) {
	if s == nil {
		return math.MinInt64, false
	}
	switch strings.TrimSpace(*s) {
	case "-infinity":
		return math.MinInt64, true
	case "infinity":
		return math.MaxInt64, true
	}
	v, err := parseTimestamp(*s, time.UTC)
	if err != nil {
		return math.MinInt64, false
	}
	return v.Int64(), true
}

// pollScan is one table's scan plumbing.
type pollScan struct {
	t        *Table
	cfg      *PollTable
	cols     []string // t.columns(): key, mapped, read by expressions, updated_at
	table    string   // sanitized
	u        string   // sanitized updated_at column
	uType    string
	keys     []string // sanitized key columns
	keyTypes []string
	soft     string // sanitized soft-delete column, or ""
	// last is when the last scan began, due when the next one does.
	last, due time.Time
}

func (c *Connector) pollScans() ([]*pollScan, error) {
	var out []*pollScan
	for i := range c.cfg.Tables {
		t := &c.cfg.Tables[i]
		if t.Poll == nil || t.UpdatedAt == "" {
			return nil, fmt.Errorf("connector %s table %s: mode poll needs updated_at", c.cfg.Name, t.Name)
		}
		types := c.colTypes[t.Name]
		// Columns are qualified (t.x) in WHERE and ORDER BY: a bare name in
		// ORDER BY would be the select list's text of the column.
		sc := &pollScan{t: t, cfg: t.Poll, cols: t.columns(), table: pgx.Identifier(strings.Split(t.Name, ".")).Sanitize() + " AS t",
			u: "t." + pgx.Identifier{t.UpdatedAt}.Sanitize(), uType: types[t.UpdatedAt]}
		if !strings.HasPrefix(sc.uType, "timestamp") {
			return nil, fmt.Errorf("connector %s table %s column %q: updated_at is %s: poll mode needs a timestamp or timestamptz column", c.cfg.Name, t.Name, t.UpdatedAt, orNone(sc.uType))
		}
		for _, k := range t.Key {
			sc.keys = append(sc.keys, "t."+pgx.Identifier{k}.Sanitize())
			sc.keyTypes = append(sc.keyTypes, types[k])
		}
		if t.Poll.SoftDelete != "" {
			if _, ok := types[t.Poll.SoftDelete]; !ok {
				return nil, fmt.Errorf("connector %s: table %s has no column %q (poll soft_delete)", c.cfg.Name, t.Name, t.Poll.SoftDelete)
			}
			sc.soft = "t." + pgx.Identifier{t.Poll.SoftDelete}.Sanitize()
		}
		out = append(out, sc)
	}
	return out, nil
}

func orNone(s string) string {
	if s == "" {
		return "missing"
	}
	return s
}

// capturePoll captures by polling until ctx ends: the first scan of each
// table reads every row (the initial snapshot), later ones what changed.
func (c *Connector) capturePoll(ctx context.Context, conn *pgx.Conn) error {
	scans, err := c.pollScans()
	if err != nil {
		return err
	}
	st := newPollState()
	c.pollst.Store(st)
	from := position{Poll: &pollPosition{Tables: map[string]pollMark{}}}
	if cp, ok := c.readCheckpoint(); ok && cp.Poll != nil {
		from.Poll = cp.Poll
		if err := c.awaitPrevious(ctx, cp); err != nil {
			return err
		}
	}
	st.mu.Lock()
	for _, sc := range scans {
		if m := from.Poll.mark(sc.t.Name); m.Snapshot {
			st.mu.from[sc.t.Entity], _ = pollMicros(&m.From)
		} else {
			st.mu.from[sc.t.Entity] = math.MinInt64
		}
	}
	st.mu.Unlock()
	st.received.Store(from.Poll)
	c.prog.setCapture(from)
	pl := c.newPipeline(ctx, from)
	defer pl.close()
	c.log.Info("capture polling", "tables", len(scans), "from", from.Poll.String())

	first := true
	for {
		now := time.Now()
		for _, sc := range scans {
			st.mu.Lock()
			asked := st.mu.keyset[sc.t.Entity] // a projection found a row gone
			delete(st.mu.keyset, sc.t.Entity)
			st.mu.Unlock()
			keyset := asked && sc.cfg.KeysetEvery > 0
			if first || !now.Before(sc.due) {
				if first && !pl.pos.Poll.mark(sc.t.Name).Snapshot {
					c.stats().setState(connectors.StateSnapshotting)
				}
				sc.last, sc.due = now, now.Add(sc.cfg.Interval)
				if err := c.pollTable(ctx, conn, pl, st, sc); err != nil {
					return err
				}
				m := pl.pos.Poll.mark(sc.t.Name)
				keyset = keyset || (sc.cfg.KeysetEvery > 0 && m.Scans%uint64(sc.cfg.KeysetEvery) == 0)
			}
			if keyset {
				if err := c.pollKeyset(ctx, conn, pl, st, sc); err != nil {
					return err
				}
			}
		}
		if err := pl.flush(); err != nil {
			return err
		}
		c.releaseDeferred()
		if first {
			// Projection starts once the first scan is durable, so it never
			// writes over a row the scan has not read yet.
			for pl.busy() {
				if err := pl.reap(); err != nil {
					return err
				}
				if err := pl.flush(); err != nil {
					return err
				}
				select {
				case <-ctx.Done():
					return ctx.Err()
				case <-time.After(2 * time.Millisecond):
				}
			}
			close(c.ready)
			first = false
			c.log.Info("initial poll done: polling for changes", "position", pl.pos.Poll.String())
		}
		c.pollEvict(st, scans)
		// Wait for the next table due, or a projection asking for a scan,
		// reaping what becomes durable meanwhile.
		next := scans[0].due
		for _, sc := range scans[1:] {
			if sc.due.Before(next) {
				next = sc.due
			}
		}
		for {
			if err := pl.reap(); err != nil {
				return err
			}
			wait := time.Until(next)
			if pl.busy() {
				if err := pl.flush(); err != nil {
					return err
				}
				wait = min(wait, 2*time.Millisecond)
			}
			if wait <= 0 {
				break
			}
			timer := time.NewTimer(wait)
			select {
			case <-ctx.Done():
				timer.Stop()
				return ctx.Err()
			case <-st.poke:
				// A projection waits for a row to be polled: scan soon, but
				// not more often than every pokeGap.
				timer.Stop()
				for _, sc := range scans {
					if soon := sc.last.Add(min(sc.cfg.Interval, pokeGap)); soon.Before(sc.due) {
						sc.due = soon
					}
					if sc.due.Before(next) {
						next = sc.due
					}
				}
			case <-timer.C:
			}
		}
	}
}

// pollTable runs one scan of a table (or continues the one in progress).
func (c *Connector) pollTable(ctx context.Context, conn *pgx.Conn, pl *pipeline, st *pollState, sc *pollScan) error {
	name := sc.t.Name
	m := pl.pos.Poll.mark(name)
	if m.Next == "" {
		// A new scan: it starts now (database time) and the next one at
		// that minus the overlap.
		q := fmt.Sprintf("SELECT CAST(n - $1::interval AS %[1]s)::text FROM (SELECT clock_timestamp() AS n) x", sc.uType)
		if err := conn.QueryRow(ctx, q, fmt.Sprintf("%d microseconds", sc.cfg.Overlap.Microseconds())).Scan(&m.Next); err != nil {
			return fmt.Errorf("connector %s: poll %s: %w", c.cfg.Name, name, err)
		}
		m.U, m.Key = "", nil
	}
	// The initial scan (From empty) reads every row in key order (rows
	// without updated_at too, and the primary key's index serves it); a
	// row written while it runs is stamped after the scan's start minus the
	// overlap, so the next scan reads it. Later scans go in (updated_at,
	// key) order from From.
	initial := m.From == ""
	order := sc.u + ", " + strings.Join(sc.keys, ", ")
	cursor := append([]string{sc.u}, sc.keys...)
	if initial {
		order, cursor = strings.Join(sc.keys, ", "), sc.keys
	}
	sel := "SELECT " + qualified(sc.cols)
	if sc.soft != "" {
		sel += ", " + sc.soft + "::text"
	}
	sel += " FROM " + sc.table
	for {
		var q string
		var args []any
		switch {
		case len(m.Key) == len(sc.keys) && (initial || m.U != ""):
			var rhs []string
			if !initial {
				args = append(args, m.U)
				rhs = append(rhs, fmt.Sprintf("CAST($1::text AS %s)", sc.uType))
			}
			for i := range sc.keys {
				args = append(args, m.Key[i])
				rhs = append(rhs, fmt.Sprintf("CAST($%d::text AS %s)", len(args), sc.keyTypes[i]))
			}
			q = fmt.Sprintf("%s WHERE (%s) > (%s)", sel, strings.Join(cursor, ", "), strings.Join(rhs, ", "))
		case initial:
			q = sel
		default:
			args = append(args, m.From)
			q = fmt.Sprintf("%s WHERE %s >= CAST($1::text AS %s)", sel, sc.u, sc.uType)
		}
		args = append(args, sc.cfg.PageSize)
		q += fmt.Sprintf(" ORDER BY %s LIMIT $%d", order, len(args))
		st.mu.Lock()
		gen := st.mu.gen // projections landing from here on may be newer than the page
		st.mu.Unlock()
		page, err := c.pollPage(ctx, conn, q, args, len(sc.cols)+boolInt(sc.soft != ""))
		if err != nil {
			return fmt.Errorf("connector %s: poll %s: %w", c.cfg.Name, name, err)
		}
		var keys []string
		for _, vals := range page {
			text := make(map[string]*string, len(sc.cols))
			for i, col := range sc.cols {
				text[col] = vals[i]
			}
			var soft *string
			if sc.soft != "" {
				soft = vals[len(sc.cols)]
			}
			chs, k := c.pollRow(sc, st, text, soft, gen, initial)
			for _, ch := range chs {
				pl.add(ch)
			}
			if k != "" {
				keys = append(keys, k)
			}
		}
		if n := len(page); n > 0 {
			// The cursor: the last row's (updated_at, key) texts.
			last := page[n-1]
			m.U, m.Key = "", make([]string, len(sc.t.Key))
			for j, col := range sc.cols {
				if last[j] == nil {
					continue
				}
				if col == sc.t.UpdatedAt && !initial {
					m.U = *last[j]
				}
				for i, k := range sc.t.Key {
					if col == k {
						m.Key[i] = *last[j]
					}
				}
			}
			if !initial && m.U == "" {
				return fmt.Errorf("connector %s: poll %s: a row without updated_at in a page ordered by it", c.cfg.Name, name)
			}
		}
		if len(page) < sc.cfg.PageSize {
			break
		}
		pl.advance(position{Poll: pl.pos.Poll.with(name, m)})
		st.received.Store(pl.pos.Poll)
		if pl.full() || pl.due() {
			if err := pl.flush(); err != nil {
				return err
			}
		}
		if err := pl.reap(); err != nil {
			return err
		}
		c.releaseDeferredKeys(keys)
	}
	// The scan is complete: the next one starts at its start minus the overlap.
	m = pollMark{From: m.Next, Snapshot: true, Scans: m.Scans + 1}
	pl.advance(position{Poll: pl.pos.Poll.with(name, m)})
	st.received.Store(pl.pos.Poll)
	from, _ := pollMicros(&m.From)
	st.mu.Lock()
	st.mu.from[sc.t.Entity] = from
	st.mu.Unlock()
	if pl.full() || pl.due() {
		if err := pl.flush(); err != nil {
			return err
		}
	}
	return pl.reap()
}

// qualified is castText for columns of the table aliased t.
func qualified(cols []string) string {
	parts := make([]string, len(cols))
	for i, c := range cols {
		parts[i] = "t." + pgx.Identifier{c}.Sanitize() + "::text"
	}
	return strings.Join(parts, ", ")
}

func boolInt(b bool) int {
	if b {
		return 1
	}
	return 0
}

// pollPage runs one page query; each row is its columns' texts.
func (c *Connector) pollPage(ctx context.Context, conn *pgx.Conn, q string, args []any, ncols int) ([][]*string, error) {
	rows, err := conn.Query(ctx, q, args...)
	if err != nil {
		return nil, err
	}
	defer rows.Close()
	var out [][]*string
	for rows.Next() {
		vals := make([]*string, ncols)
		ptrs := make([]any, ncols)
		for i := range vals {
			ptrs[i] = &vals[i]
		}
		if err := rows.Scan(ptrs...); err != nil {
			return nil, err
		}
		out = append(out, vals)
	}
	return out, rows.Err()
}

// pollRow decides what one polled row is: nothing new (a row read again,
// lattice's own write read back), a change of the fields that differ from
// what the connector last saw, a (soft) delete, or a row refused. It
// returns the changes to add and the row's key.
func (c *Connector) pollRow(sc *pollScan, st *pollState, text map[string]*string, soft *string, gen uint64, initial bool) ([]change, string) {
	t := sc.t
	u, uok := pollMicros(text[t.UpdatedAt])
	deleted := softDeleted(t, soft)
	if id, ok := keyID(t, text); ok {
		// The version last seen (same updated_at), read again: no change,
		// and nothing to decode.
		k := rowKey(t.Entity, id)
		st.mu.Lock()
		r := st.mu.rows[k]
		same := r != nil && r.land <= gen && r.seen && uok && r.u == u && (r.hasRef || r.present == !deleted)
		st.mu.Unlock()
		if same {
			return nil, k
		}
	}
	ch, err := c.toChange(t, text, false)
	if err != nil {
		c.log.Error("polled row refused", "table", t.Name, "err", err)
		c.stats().fail(err)
		return nil, ""
	}
	k := rowKey(t.Entity, ch.id)
	st.mu.Lock()
	r := st.row(k)
	if r.land > gen {
		// A projection landed after this page was read: what it read back
		// is newer than the page. The next scan reads the row again.
		st.mu.Unlock()
		return nil, ""
	}
	if ch.refused != nil {
		again := r.hasRef && r.refused == u
		r.refused, r.hasRef, r.seen, r.u = u, true, true, u
		st.mu.Unlock()
		if again {
			return nil, k
		}
		return []change{ch}, k
	}
	r.hasRef = false
	wasSeen := r.seen
	r.seen, r.u, r.present = true, u, !deleted
	st.mu.Unlock()

	if !ch.updatedAt.IsZero() {
		// Versions are dated by when the row changed (its updated_at).
		ch.at, ch.historical = ch.updatedAt, true
	} else {
		ch.at = time.Now()
	}
	c.mu.Lock()
	_, known := c.mu.rows[k]
	wasDeleted := c.mu.deleted[k]
	c.mu.Unlock()
	if deleted {
		if wasDeleted {
			return nil, k
		}
		if !known && !wasSeen && c.deletedInStore(t.Entity, ch.id) {
			c.remember(change{table: t, id: ch.id, deleted: true})
			return nil, k
		}
		del := change{table: t, id: ch.id, deleted: true, fields: map[string]crdt.Value{}, at: ch.at, historical: ch.historical}
		c.pollCovered(st, k, t.Entity, ch.id, u)
		c.remember(del)
		return []change{del}, k
	}
	if initial {
		ch.snapshot = true
	}
	if !known && !wasDeleted && !initial {
		// Nothing in memory of this row (new, evicted, or a restart): the
		// store's record is the base; fields equal to what it resolved
		// were captured (or projected) already.
		if base := c.storeBase(t, ch.id, ch.fields); base != nil {
			c.mu.Lock()
			c.mu.rows[k] = base
			c.mu.Unlock()
			ch.snapshot = true
		}
	}
	d, ok := c.diff(ch)
	var out []change
	if ok {
		c.pollCovered(st, k, t.Entity, ch.id, u)
		out = append(out, d)
	}
	c.remember(ch)
	return out, k
}

// keyID is a row's record id from its key columns' texts.
func keyID(t *Table, text map[string]*string) (string, bool) {
	parts := make([]string, len(t.Key))
	for i, k := range t.Key {
		v := text[k]
		if v == nil {
			return "", false
		}
		parts[i] = *v
	}
	return strings.Join(parts, "/"), true
}

// pollCovered records that a change stamped u of a row saw the
// projections into it that landed before u.
func (c *Connector) pollCovered(st *pollState, k, entity, id string, u int64) {
	st.mu.Lock()
	vv := st.row(k).covered(u)
	st.mu.Unlock()
	if len(vv) > 0 {
		c.observe(entity, id, vv)
	}
}

// deletedInStore reports whether a record is absent or deleted in the store.
func (c *Connector) deletedInStore(entity, id string) bool {
	ent, ok := c.schema.Schema().Entity(entity)
	if !ok {
		return true
	}
	rec, err := c.store.Get(entity, id)
	if err != nil {
		return true
	}
	_, deleted := ent.View(rec)
	return deleted
}

// storeBase rebuilds what the connector last saw of a row it has no memory
// of from the store's record: per field, the resolved value, or the row's
// own value when that is this connector's newest version of the field (its
// own capture not yet overwritten by a projection). Nil when the record is
// unknown, or was deleted by this connector (a row inserted again: every
// field is new).
func (c *Connector) storeBase(t *Table, id string, fields map[string]crdt.Value) map[string]crdt.Value {
	ent, ok := c.schema.Schema().Entity(t.Entity)
	if !ok {
		return nil
	}
	rec, err := c.store.Get(t.Entity, id)
	if err != nil {
		if !errors.Is(err, storage.ErrNotFound) {
			c.log.Warn("poll: read record for its base", "entity", t.Entity, "id", id, "err", err)
		}
		return nil
	}
	view, deleted := ent.View(rec)
	if deleted {
		if reg := rec.Register(crdt.DeletedField); reg != nil {
			for _, v := range reg.Versions {
				if v.Origin == c.origin && v.Value.BoolValue() {
					return nil
				}
			}
		}
	}
	base := make(map[string]crdt.Value, len(fields))
	for _, f := range view {
		if _, ok := fields[f.Name]; !ok {
			continue
		}
		base[f.Name] = f.Value
		v := fields[f.Name]
		if f.Value.Equal(v) {
			continue
		}
		// The newest version this connector wrote of the field.
		var own *crdt.Version
		for i := range f.Live {
			if f.Live[i].Origin == c.origin && (own == nil || f.Live[i].TS > own.TS) {
				own = &f.Live[i]
			}
		}
		if own == nil && ent.RegisterOf(f.Name) == f.Name {
			if hist, err := c.store.Versions(t.Entity, id, f.Name); err == nil {
				for i := range hist {
					if hist[i].Origin == c.origin && (own == nil || hist[i].TS > own.TS) {
						own = &hist[i]
					}
				}
			}
		}
		if own != nil && own.Value.Equal(v) {
			base[f.Name] = v
		}
	}
	return base
}

// releaseDeferred hands every row deferred for poll mode (and not being
// captured) back to the projector, which checks it again.
func (c *Connector) releaseDeferred() { c.releaseDeferredKeys(nil) }

// releaseDeferredKeys is releaseDeferred for the given rows (nil: all).
func (c *Connector) releaseDeferredKeys(keys []string) {
	c.mu.Lock()
	ready := false
	release := func(k string) {
		if !c.mu.deferred[k] || c.mu.capturing[k] > 0 {
			return
		}
		delete(c.mu.deferred, k)
		entity, id, _ := strings.Cut(k, "\x00")
		c.mu.recheck = append(c.mu.recheck, [2]string{entity, id})
		ready = true
	}
	if keys == nil {
		for k := range c.mu.deferred {
			release(k)
		}
	}
	for _, k := range keys {
		release(k)
	}
	c.mu.Unlock()
	if ready {
		select {
		case c.recheckC <- struct{}{}:
		default:
		}
	}
}

// pollKeyset compares the table's keys with the records lattice holds from
// it: a record the table held (the connector saw the row, or captured from
// it last) whose key is gone is a deleted row. Keys are merged in byte
// order with the store's listing, so memory does not grow with the table.
func (c *Connector) pollKeyset(ctx context.Context, conn *pgx.Conn, pl *pipeline, st *pollState, sc *pollScan) error {
	t := sc.t
	ent, ok := c.schema.Schema().Entity(t.Entity)
	if !ok {
		return nil
	}
	st.mu.Lock()
	gen := st.mu.gen // rows projected from here on may not be in the key set
	st.mu.Unlock()
	parts := make([]string, len(sc.keys))
	var notNull []string
	for i, k := range sc.keys {
		parts[i] = k + "::text"
		notNull = append(notNull, k+" IS NOT NULL")
	}
	idExpr := strings.Join(parts, " || '/' || ")
	q := fmt.Sprintf(`SELECT %[1]s FROM %[2]s WHERE %[3]s ORDER BY (%[1]s) COLLATE "C"`, idExpr, sc.table, strings.Join(notNull, " AND "))
	rows, err := conn.Query(ctx, q)
	if err != nil {
		return fmt.Errorf("connector %s: key set of %s: %w", c.cfg.Name, t.Name, err)
	}
	defer rows.Close()
	var dbID string
	dbOK := false
	next := func() error {
		dbOK = rows.Next()
		if dbOK {
			return rows.Scan(&dbID)
		}
		return rows.Err()
	}
	if err := next(); err != nil {
		return err
	}
	deletes := 0
	after := ""
	for {
		page, more, err := c.store.List(t.Entity, after, 500)
		if err != nil {
			return err
		}
		for _, r := range page {
			after = r.ID
			for dbOK && dbID < r.ID {
				if err := next(); err != nil {
					return err
				}
			}
			if dbOK && dbID == r.ID {
				continue
			}
			if !c.heldRow(st, ent, r, gen) {
				continue
			}
			k := rowKey(t.Entity, r.ID)
			del := change{table: t, id: r.ID, deleted: true, fields: map[string]crdt.Value{}, at: time.Now()}
			c.pollCovered(st, k, t.Entity, r.ID, math.MaxInt64)
			st.mu.Lock()
			st.row(k).present = false
			st.mu.Unlock()
			pl.add(del)
			c.remember(del)
			deletes++
			if pl.full() {
				if err := pl.flush(); err != nil {
					return err
				}
			}
		}
		if !more {
			break
		}
	}
	if deletes > 0 {
		c.log.Info("key set: rows deleted from the table", "table", t.Name, "deletes", deletes)
	}
	return rows.Err()
}

// heldRow reports whether the table held a record's row as far as the
// connector knows: it saw the row (polled, or read back after a projection
// that landed before the key set was read), or, knowing nothing of it, the
// record's newest live version is one it captured. A record deleted in the
// store, or known deleted, was not held.
func (c *Connector) heldRow(st *pollState, ent *crdt.Entity, r storage.RecordEntry, gen uint64) bool {
	k := rowKey(ent.Name, r.ID)
	c.mu.Lock()
	gone := c.mu.deleted[k]
	c.mu.Unlock()
	if gone {
		return false
	}
	if _, deleted := ent.View(r.Record); deleted {
		return false
	}
	st.mu.Lock()
	pr := st.mu.rows[k]
	var seen, present, fresh bool
	if pr != nil {
		seen, present, fresh = pr.seen, pr.present, pr.land > gen
	}
	st.mu.Unlock()
	if fresh {
		return false
	}
	if seen {
		return present
	}
	var newest *crdt.Version
	for i := range r.Record.Registers {
		for j := range r.Record.Registers[i].Versions {
			if v := &r.Record.Registers[i].Versions[j]; newest == nil || v.TS > newest.TS {
				newest = v
			}
		}
	}
	return newest != nil && newest.Origin == c.origin
}

// pollEvict bounds what poll mode keeps in memory: past pollRowsMax rows,
// rows below every scan's window (no scan reads them again unless they
// change) are forgotten, those without projections to remember first.
func (c *Connector) pollEvict(st *pollState, scans []*pollScan) {
	st.mu.Lock()
	defer st.mu.Unlock()
	if len(st.mu.rows) <= pollRowsMax || time.Since(st.mu.evicted) < 10*time.Second {
		return
	}
	st.mu.evicted = time.Now()
	target := pollRowsMax * 9 / 10
	var drop []string
	for pass := 0; pass < 2 && len(st.mu.rows)-len(drop) > target; pass++ {
		for k, r := range st.mu.rows {
			if len(st.mu.rows)-len(drop) <= target {
				break
			}
			entity, _, _ := strings.Cut(k, "\x00")
			if r.u >= st.mu.from[entity] || (pass == 0 && len(r.projs) > 0) {
				continue
			}
			drop = append(drop, k)
		}
	}
	c.mu.Lock()
	for _, k := range drop {
		if c.mu.capturing[k] > 0 || c.mu.deferred[k] {
			continue
		}
		delete(st.mu.rows, k)
		delete(c.mu.rows, k)
		delete(c.mu.deleted, k)
		delete(c.mu.seen, k)
	}
	c.mu.Unlock()
}

// pollReport describes poll capture's positions in a status report: the
// one last checkpointed as the source position, the poller's own as
// received.
func (c *Connector) pollReport(r *connectors.Report) {
	st := c.pollst.Load()
	if st == nil {
		return
	}
	c.prog.mu.Lock()
	written := c.prog.written.capture.Poll
	c.prog.mu.Unlock()
	r.SourcePosition = written.String()
	r.ReceivedPosition = st.received.Load().String()
}
