package storage

import (
	"bytes"
	"context"
	"encoding/binary"
	"fmt"
	"time"

	"github.com/cockroachdb/pebble/v2"

	"github.com/lattice-sync/lattice/crdt"
)

// PrepareFunc computes the writes of a local edit (none: nothing is written) from the record's current
// state (empty for a new record) and the node's applied vector. It runs on
// the committer goroutine, so it sees every edit committed before it; it must
// neither modify nor keep rec. An error refuses the edit and nothing is written.
type PrepareFunc func(rec *crdt.Record, env Env) ([]crdt.Write, error)

// Env is what a PrepareFunc may consult besides the record.
type Env struct {
	// Applied is the node's applied vector (edits staged before this one included).
	Applied crdt.VV
	// History returns the superseded versions of one of the record's
	// registers, including ones moved to history earlier in the same batch.
	History func(register string) ([]crdt.Version, error)
}

// Result is the outcome of an accepted edit.
type Result struct {
	// Edit is the edit as accepted (for a remote edit that was already
	// applied, Duplicate is true and Edit is the one submitted).
	Edit      *crdt.Edit
	Duplicate bool
	// Record is the record state after the batch that committed the edit
	// (it includes later edits of the same record in that batch). Shared
	// between the results of one batch: read only.
	Record *crdt.Record
}

type op struct {
	// barrier: flush the pipeline, then run fn on the committer (nothing else runs meanwhile)
	barrier func()
	// merge: a record state from a snapshot
	merge *mergeOp
	// advance: raise applied and truncated marks (end of a snapshot install)
	advance crdt.VV

	// local edit
	entity, id, origin string
	prepare            PrepareFunc
	// at, when set, is the edit's time at its source (a captured commit time)
	at crdt.Timestamp
	// historical: at may lie any distance in the past (see LocalWrite)
	historical bool
	// remote edit
	remote *crdt.Edit

	res  *Result
	err  error
	done chan struct{}
}

// Write accepts a local edit of (entity, id) made by origin: it assigns the
// next dot and an HLC timestamp, applies it, and returns once it is durable.
func (s *Store) Write(ctx context.Context, entity, id, origin string, prepare PrepareFunc) (*Result, error) {
	if err := crdt.CheckID(id); err != nil {
		return nil, err
	}
	return s.submit(ctx, &op{entity: entity, id: id, origin: origin, prepare: prepare})
}

// WriteAt is Write for an edit captured from a system that knows when it
// happened (a commit time): the edit carries that time, made an HLC
// timestamp, when it is within max-offset of this node's clock, and the
// clock moves past it; otherwise the edit gets the clock's own Now().
func (s *Store) WriteAt(ctx context.Context, entity, id, origin string, at time.Time, prepare PrepareFunc) (*Result, error) {
	if err := crdt.CheckID(id); err != nil {
		return nil, err
	}
	return s.submit(ctx, &op{entity: entity, id: id, origin: origin, prepare: prepare, at: crdt.TimestampFromTime(at)})
}

// sourceTime returns the timestamp of a local edit (see WriteAt and
// LocalWrite.Historical).
func (s *Store) sourceTime(at crdt.Timestamp, historical bool) crdt.Timestamp {
	if at == 0 {
		return s.clock.Now()
	}
	phys := s.cfg.Physical()
	d := at.Millis() - phys
	if historical && d <= s.clock.MaxOffset().Milliseconds() {
		if d < 0 {
			return at // in the past: the clock has nothing to catch up with
		}
		_ = s.clock.Update(at)
		return at
	}
	if d > s.clock.MaxOffset().Milliseconds() || -d > s.clock.MaxOffset().Milliseconds() {
		s.sourceClockSkew.Add(1)
		return s.clock.Now()
	}
	_ = s.clock.Update(at) // within max-offset: cannot be refused
	return at
}

// SourceClockSkew counts captured edits whose source time was beyond
// max-offset of this node's clock (they got the node's own time instead).
func (s *Store) SourceClockSkew() uint64 { return s.sourceClockSkew.Load() }

// ApplyRemote applies an edit minted by another node. Edits of one origin
// must arrive in sequence order: an edit at or below the origin's applied
// mark is a harmless duplicate; one that skips a sequence fails with ErrGap.
// A timestamp beyond max-offset is refused (crdt.ErrClockOffset).
func (s *Store) ApplyRemote(ctx context.Context, e *crdt.Edit) (*Result, error) {
	if err := s.checkRemote(e); err != nil {
		return nil, err
	}
	return s.submit(ctx, &op{remote: e})
}

// checkRemote validates an edit received from a peer before it is queued.
func (s *Store) checkRemote(e *crdt.Edit) error {
	switch {
	case e.Dot.Node == s.cfg.NodeID:
		return fmt.Errorf("remote edit %s claims this node's origin", e.Dot)
	case e.Dot.Node == "" || e.Dot.Seq == 0:
		return fmt.Errorf("%w: remote edit has no dot", crdt.ErrInvalid)
	case len(e.Writes) == 0:
		return nil // a burned sequence number
	case e.Entity == "":
		return fmt.Errorf("%w: remote edit %s has no entity", crdt.ErrInvalid, e.Dot)
	}
	if err := crdt.CheckID(e.ID); err != nil {
		return fmt.Errorf("remote edit %s: %w", e.Dot, err)
	}
	for i := range e.Writes {
		if n := e.Writes[i].Value.Size(); n > crdt.MaxValueBytes+64 {
			return fmt.Errorf("%w: remote edit %s: value of %q is %d bytes", crdt.ErrInvalid, e.Dot, e.Writes[i].Register, n)
		}
	}
	return nil
}

// batchState is what one committer round has staged.
type batchState struct {
	b         *pebble.Batch
	records   map[string]*crdt.Record // by record key
	applied   map[string]uint64       // advanced marks
	ops       []*op
	edits     []*crdt.Edit
	conflicts int
	start     time.Time
	err       error
	// barrier, when set, is closed by the syncer once every earlier batch is synced.
	barrier chan struct{}
	// truncated marks raised in this batch.
	truncated map[string]uint64
	// advanced or merged: the batch writes state even without edits.
	advanced bool
	// history holds versions moved to history in this batch, by history prefix.
	history map[string][]crdt.Version
	// folded holds history versions rewritten by a fold in this batch, by
	// history key (nil: deleted, the fold is kept under a lesser dot).
	folded map[string]*crdt.Version
	// it reads the records this batch stages (nil until the first read):
	// one iterator for the batch costs less than a point Get per edit,
	// which builds its own iterator stack each time. It sees every earlier
	// batch (each is written before the next is staged); records of this
	// batch come from records first.
	it *pebble.Iterator
	// buf is scratch space for encoding values: Batch.Set copies them.
	buf []byte
}

// setEdit, setRecord and setVersion stage a value encoded into buf.
func (st *batchState) setEdit(key []byte, e *crdt.Edit) {
	st.buf = crdt.AppendEdit(st.buf[:0], e)
	st.b.Set(key, st.buf, nil)
}

func (st *batchState) setRecord(key []byte, rec *crdt.Record) {
	st.buf = crdt.AppendRecord(st.buf[:0], rec)
	st.b.Set(key, st.buf, nil)
}

func (st *batchState) setVersion(key []byte, v *crdt.Version) {
	st.buf = crdt.AppendVersion(st.buf[:0], v)
	st.b.Set(key, st.buf, nil)
}

// committer stages batches; syncer waits for their fsync and answers. The
// two run as a pipeline: while batch k is being synced, batch k+1 is staged
// and written, so the fsync device is kept busy and each fsync covers every
// request that arrived during the previous one. Pebble syncs its WAL in
// order, so batch k+1 is never durable before batch k.
func (s *Store) committer() {
	synced := make(chan *batchState, 1)
	syncerDone := make(chan struct{})
	go func() {
		defer close(syncerDone)
		for st := range synced {
			s.finish(st)
		}
	}()
	defer func() {
		close(synced)
		<-syncerDone
		close(s.stopped)
	}()
	for {
		var first *op
		select {
		case first = <-s.reqs:
		case <-s.stop:
			s.drainClosed()
			return
		}
		var barrier *op
		if first.barrier != nil {
			barrier = first
		} else {
			st := s.newBatch()
			s.stage(st, first)
		gather:
			for len(st.ops) < s.cfg.MaxBatch {
				select {
				case o := <-s.reqs:
					if o.barrier != nil {
						barrier = o
						break gather
					}
					s.stage(st, o)
				default:
					break gather
				}
			}
			s.write(st)
			synced <- st
		}
		if barrier != nil {
			// Wait until every batch before the barrier is synced, then run it
			// with the pipeline empty: durable state == visible state.
			flushed := &batchState{barrier: make(chan struct{})}
			synced <- flushed
			<-flushed.barrier
			barrier.barrier()
			close(barrier.done)
		}
	}
}

func (s *Store) newBatch() *batchState {
	return &batchState{b: s.db.NewBatch(), records: map[string]*crdt.Record{}, applied: map[string]uint64{},
		truncated: map[string]uint64{}, history: map[string][]crdt.Version{}, start: time.Now(),
		folded: map[string]*crdt.Version{}}
}

// drainClosed fails requests still queued at Close.
func (s *Store) drainClosed() {
	for {
		select {
		case o := <-s.reqs:
			o.err = ErrClosed
			close(o.done)
		default:
			return
		}
	}
}

// appliedMark is the origin's mark including batches staged but not yet synced.
func (s *Store) appliedMark(st *batchState, origin string) uint64 {
	if seq, ok := st.applied[origin]; ok {
		return seq
	}
	return s.staged.Get(origin)
}

func (s *Store) appliedVV(st *batchState) crdt.VV {
	vv := s.staged
	if len(st.applied) > 0 {
		vv = vv.Join(crdt.MakeVV(st.applied))
	}
	return vv
}

// load returns the record state as staged in this batch or stored.
func (s *Store) loadStaged(st *batchState, entity, id string) (*crdt.Record, string, error) {
	k := string(recordKey(entity, id))
	if rec, ok := st.records[k]; ok {
		return rec, k, nil
	}
	if st.it == nil {
		it, err := s.db.NewIter(nil)
		if err != nil {
			return nil, k, err
		}
		st.it = it
	}
	key := []byte(k)
	if !st.it.SeekPrefixGE(key) || !bytes.Equal(st.it.Key(), key) {
		if err := st.it.Error(); err != nil {
			return nil, k, err
		}
		return &crdt.Record{}, k, nil
	}
	v, err := st.it.ValueAndErr()
	if err != nil {
		return nil, k, err
	}
	rec, err := decodeStored(key, v)
	return rec, k, err
}

// stage applies one op to the batch, or fails it without touching the batch.
func (s *Store) stage(st *batchState, o *op) {
	if err := s.failure(); err != nil {
		// After a failed write or sync nothing is known about the batches in
		// flight: refuse everything (a retried remote edit must not pass as
		// a duplicate of an edit that never became durable).
		o.err = err
		close(o.done)
		return
	}
	switch {
	case o.merge != nil:
		s.stageMerge(st, o)
		return
	case o.advance != nil:
		for _, en := range o.advance {
			if en.Seq > s.appliedMark(st, en.Node) {
				st.applied[en.Node] = en.Seq
			}
			if en.Seq > st.truncated[en.Node] {
				st.truncated[en.Node] = en.Seq
			}
		}
		o.res = &Result{}
		st.ops = append(st.ops, o)
		st.advanced = true
		return
	}
	var e *crdt.Edit
	if o.remote != nil {
		e = o.remote
		mark := s.appliedMark(st, e.Dot.Node)
		switch {
		case e.Dot.Seq <= mark:
			o.res = &Result{Edit: e, Duplicate: true}
			st.ops = append(st.ops, o)
			return
		case e.Dot.Seq != mark+1:
			o.err = fmt.Errorf("%w: edit %s after %s:%d", ErrGap, e.Dot, e.Dot.Node, mark)
			close(o.done)
			return
		}
		if err := s.clock.Update(e.TS); err != nil {
			o.err = fmt.Errorf("edit %s: %w", e.Dot, err)
			close(o.done)
			return
		}
	}
	if e != nil && len(e.Writes) == 0 {
		// A burned sequence number: advance the mark, keep the entry.
		st.applied[e.Dot.Node] = e.Dot.Seq
		st.setEdit(opLogKey(e.Dot.Node, e.Dot.Seq), e)
		o.res = &Result{Edit: e}
		st.ops = append(st.ops, o)
		st.edits = append(st.edits, e)
		return
	}
	entity, id := o.entity, o.id
	if e != nil {
		entity, id = e.Entity, e.ID
	}
	rec, key, err := s.loadStaged(st, entity, id)
	if err != nil {
		o.err = err
		close(o.done)
		return
	}
	if e == nil {
		// PrepareFunc must not modify rec, so a refused edit leaves the staged state untouched.
		writes, err := o.prepare(rec, Env{Applied: s.appliedVV(st), History: func(register string) ([]crdt.Version, error) {
			return s.stagedHistory(st, entity, id, register)
		}})
		if err != nil {
			o.err = err
			close(o.done)
			return
		}
		if len(writes) == 0 {
			// Nothing to write (e.g. a captured delete of a record lattice
			// never held): no edit, no sequence number.
			o.res = &Result{}
			close(o.done)
			return
		}
		seq := s.appliedMark(st, s.cfg.NodeID) + 1
		if err := s.reserveSeq(seq); err != nil {
			o.err = err
			close(o.done)
			return
		}
		e = &crdt.Edit{Entity: entity, ID: id, Origin: o.origin, Writes: writes,
			Dot: crdt.Dot{Node: s.cfg.NodeID, Seq: seq}, TS: s.sourceTime(o.at, o.historical)}
	}
	if src := e.Source(); src != "" {
		// A copy of a source change folds into the version holding the
		// others, in the record or in history (sources.go).
		// The check comes before the edit writes the source register.
		var past func(register, src string) (*crdt.Version, error)
		if rec.MayHoldCopy(src) {
			past = s.pastCopies(st, rec, entity, id)
		}
		_, err := rec.ApplyStored(e, past, s.pastPutter(st, entity, id))
		if err != nil {
			// The staged record may hold part of the edit: nothing in
			// this batch can be trusted.
			o.err = s.fail(fmt.Errorf("%w: apply %s to %s/%s: %v", ErrFailed, e.Dot, entity, id, err))
			close(o.done)
			return
		}
	} else {
		rec.Apply(e)
	}
	st.conflicts += countConflicts(rec, e)
	rec.TakeDominated(s.historyMover(st, entity, id))
	st.records[key] = rec
	st.applied[e.Dot.Node] = e.Dot.Seq
	st.setEdit(opLogKey(e.Dot.Node, e.Dot.Seq), e)
	o.res = &Result{Edit: e}
	st.ops = append(st.ops, o)
	st.edits = append(st.edits, e)
}

// countConflicts counts registers the edit wrote that now hold more than one version.
func countConflicts(rec *crdt.Record, e *crdt.Edit) int {
	n := 0
	for i := range e.Writes {
		if r := rec.Register(e.Writes[i].Register); r != nil && len(r.Versions) > 1 {
			// Versions left after TakeDominated are live; before it, count live ones.
			live := 0
			for j := range r.Versions {
				if !r.Dominated(j) {
					live++
				}
			}
			if live > 1 {
				n++
			}
		}
	}
	return n
}

// write hands the staged batch to Pebble without waiting for its fsync.
// Runs on the committer goroutine.
func (s *Store) write(st *batchState) {
	if st.it != nil {
		if err := st.it.Close(); err != nil && s.failure() == nil {
			st.err = s.fail(fmt.Errorf("%w: read records: %v", ErrFailed, err))
		}
		st.it = nil
	}
	if err := s.failure(); err != nil {
		st.err = err
		return
	}
	if !st.dirty() {
		return
	}
	for k, rec := range st.records {
		st.setRecord([]byte(k), rec)
	}
	for origin, seq := range st.applied {
		st.b.Set(appliedKey(origin), uvarintBytes(seq), nil)
	}
	for origin, seq := range st.truncated {
		st.b.Set(truncatedKey(origin), uvarintBytes(seq), nil)
	}
	// Readers must not pair the records of this batch with the vector of
	// the one before (or the reverse): visGen is odd from before Pebble
	// shows the batch until its vector is published.
	s.visGen.Add(1)
	defer s.visGen.Add(1)
	if err := s.db.ApplyNoSyncWait(st.b, pebble.Sync); err != nil {
		// A failed write leaves the store in an unknown state: refuse every
		// later edit rather than risk a gap in the op log.
		st.err = s.fail(fmt.Errorf("%w: write batch: %v", ErrFailed, err))
		s.log.Error("store failed: restart the node", "err", err)
		return
	}
	s.staged = s.staged.Join(crdt.MakeVV(st.applied))
	s.publishVisible()
}

// finish waits for the batch's fsync, publishes it and answers its requests.
// Runs on the syncer goroutine, batch by batch in order.
func (s *Store) finish(st *batchState) {
	if st.barrier != nil {
		close(st.barrier)
		return
	}
	err := st.err
	if err == nil && st.dirty() {
		if err = st.b.SyncWait(); err != nil {
			err = s.fail(fmt.Errorf("%w: sync batch: %v", ErrFailed, err))
		}
	}
	st.b.Close()
	var applied crdt.VV
	if err == nil && st.dirty() {
		s.mu.Lock()
		s.mu.applied = s.mu.applied.Join(crdt.MakeVV(st.applied))
		applied = s.mu.applied
		s.mu.truncated = s.mu.truncated.Join(crdt.MakeVV(st.truncated))
		for sub := range s.mu.subs {
			sub.offer(st.edits)
		}
		s.mu.Unlock()
		if s.cfg.Metrics != nil && len(st.edits) > 0 {
			s.cfg.Metrics.Committed(len(st.edits), st.conflicts, time.Since(st.start))
		}
	}
	for _, o := range st.ops {
		if err != nil && !o.res.Duplicate {
			o.res, o.err = nil, err
		} else if o.res != nil && o.res.Edit != nil && !o.res.Duplicate && o.res.Edit.Entity != "" {
			if rec := st.records[string(recordKey(o.res.Edit.Entity, o.res.Edit.ID))]; rec != nil {
				o.res.Record = &crdt.Record{Registers: rec.Registers, Context: rec.Context.Meet(applied)}
			}
		}
		close(o.done)
	}
}

// historyMover returns the function that stages a version of a record's
// register in history (TakeDominated's callback).
func (s *Store) historyMover(st *batchState, entity, id string) func(register string, v crdt.Version) {
	return func(register string, v crdt.Version) {
		st.setVersion(historyKeyOf(entity, id, register, &v), &v)
		hk := string(historyPrefix(entity, id, register))
		st.history[hk] = append(st.history[hk], v)
	}
}

// stagedHistory returns a register's superseded versions: stored ones and
// those moved to history earlier in this batch.
func (s *Store) stagedHistory(st *batchState, entity, id, register string) ([]crdt.Version, error) {
	out, err := s.history(entity, id, register)
	if err != nil {
		return nil, err
	}
	out = append(out, st.history[string(historyPrefix(entity, id, register))]...)
	if len(st.folded) == 0 {
		return out, nil
	}
	// Folds of this batch replace what they rewrote.
	kept := out[:0]
	for _, v := range out {
		if _, ok := st.folded[string(historyKeyOf(entity, id, register, &v))]; !ok {
			kept = append(kept, v)
		}
	}
	prefix := string(historyPrefix(entity, id, register))
	for k, v := range st.folded {
		if v != nil && len(k) > len(prefix) && k[:len(prefix)] == prefix && string(historyKeyOf(entity, id, register, v)) == k {
			kept = append(kept, *v)
		}
	}
	return kept, nil
}

// fail records the first error that stopped the store and returns it.
func (s *Store) fail(err error) error {
	if s.failed.CompareAndSwap(nil, &err) {
		s.log.Error("store failed: restart the node", "err", err)
	}
	return *s.failed.Load()
}

// failure returns the error that stopped the store, or nil.
func (s *Store) failure() error {
	if p := s.failed.Load(); p != nil {
		return *p
	}
	return nil
}

func (st *batchState) dirty() bool { return len(st.edits) > 0 || st.advanced }

func putUvarint(b []byte, x uint64) int { return binary.PutUvarint(b, x) }

// LocalWrite is one local edit for Enqueue.
type LocalWrite struct {
	Entity, ID, Origin string
	// At, when set, is the edit's time at its source (see WriteAt).
	At time.Time
	// Historical allows At to lie any distance in the past: a row's last
	// update time read by a snapshot, so the versions of a database that
	// already held data are dated by when they were written (a time in the
	// future beyond max-offset is still replaced by the node's clock).
	Historical bool
	Prepare    PrepareFunc
}

// Pending is a set of edits queued by Enqueue.
type Pending struct {
	s   *Store
	ops []*op
	err []error // errors that kept an edit from being queued
}

// Enqueue queues local edits without waiting for them to commit. Edits
// queued by one call, and by successive calls of one caller, are staged in
// that order: each PrepareFunc sees the record as the earlier edits left it.
// Many edits share one batch and one fsync, so a caller with a stream of
// edits (a connector's capture) can queue the next group while the last is
// being synced. Wait returns the outcomes. If ctx ends or the store closes
// before an edit is queued, that edit and the ones after it fail with that
// error and are not applied.
func (s *Store) Enqueue(ctx context.Context, ws []LocalWrite) *Pending {
	p := &Pending{s: s, ops: make([]*op, len(ws)), err: make([]error, len(ws))}
	var stop error
	for i, w := range ws {
		if stop != nil {
			p.err[i] = stop
			continue
		}
		if err := crdt.CheckID(w.ID); err != nil {
			p.err[i] = err
			continue
		}
		o := &op{entity: w.Entity, id: w.ID, origin: w.Origin, prepare: w.Prepare, historical: w.Historical, done: make(chan struct{})}
		if !w.At.IsZero() {
			o.at = crdt.TimestampFromTime(w.At)
		}
		select {
		case s.reqs <- o:
			p.ops[i] = o
		case <-s.stop:
			stop = ErrClosed
			p.err[i] = stop
		case <-ctx.Done():
			stop = ctx.Err()
			p.err[i] = stop
		}
	}
	return p
}

// Wait returns each queued edit's outcome once all are durable (or failed),
// in the order they were queued. Like Write, it waits for an edit that was
// queued even if the caller's context has ended, so an edit that landed is
// never reported as failed.
func (p *Pending) Wait() ([]*Result, []error) {
	res := make([]*Result, len(p.ops))
	errs := make([]error, len(p.ops))
	for i, o := range p.ops {
		if o == nil {
			errs[i] = p.err[i]
			continue
		}
		select {
		case <-o.done:
			res[i], errs[i] = o.res, o.err
		case <-p.s.stopped:
			select {
			case <-o.done:
				res[i], errs[i] = o.res, o.err
			default:
				errs[i] = ErrClosed
			}
		}
	}
	return res, errs
}
