package storage

import (
	"context"
	"crypto/sha256"
	"encoding/binary"
	"encoding/hex"
	"errors"
	"fmt"

	"github.com/cockroachdb/pebble/v2"

	"github.com/lattice-sync/lattice/crdt"
)

// ErrTruncated is returned when op-log entries below a requested position
// were truncated: the reader must take a snapshot instead.
var ErrTruncated = errors.New("op log truncated")

const prefixTruncated byte = 0x03

func truncatedKey(origin string) []byte {
	return appendEscaped([]byte{prefixTruncated}, origin)
}

func (s *Store) scanTruncated() (crdt.VV, error) { return s.scanMarks(prefixTruncated, "truncated") }

// Truncated returns, per origin, the highest seq removed from the op log
// (or never held, after a snapshot install).
func (s *Store) Truncated() crdt.VV {
	s.mu.Lock()
	defer s.mu.Unlock()
	return s.mu.truncated
}

// ApplyRemoteBatch applies edits from peers in the given order and returns
// one error per edit (nil, or as ApplyRemote would return). Queuing all of
// them before waiting lets one fsync cover the whole batch.
func (s *Store) ApplyRemoteBatch(ctx context.Context, edits []*crdt.Edit) ([]*Result, []error) {
	return s.EnqueueRemote(ctx, edits).Wait()
}

// EnqueueRemote queues edits from peers in the given order without waiting
// for them (see Enqueue); Wait returns one outcome per edit, as ApplyRemote
// would. A replication stream queues the next message's edits while the
// last ones are being synced.
func (s *Store) EnqueueRemote(ctx context.Context, edits []*crdt.Edit) *Pending {
	p := &Pending{s: s, ops: make([]*op, len(edits)), err: make([]error, len(edits))}
	var stop error
	for i, e := range edits {
		if stop != nil {
			p.err[i] = stop
			continue
		}
		if err := s.checkRemote(e); err != nil {
			p.err[i] = err
			continue
		}
		o := &op{remote: e, done: make(chan struct{})}
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

// SnapshotReader reads a consistent snapshot of the store's records.
type SnapshotReader struct {
	snap    *pebble.Snapshot
	Applied crdt.VV
}

// Close releases the snapshot.
func (r *SnapshotReader) Close() error { return r.snap.Close() }

// Checkpoint returns a consistent, durable snapshot: the pipeline is
// flushed first, so the snapshot holds exactly the edits in Applied (Pebble
// otherwise shows batches before their fsync).
func (s *Store) Checkpoint(ctx context.Context) (*SnapshotReader, error) {
	var r *SnapshotReader
	_, err := s.submit(ctx, &op{barrier: func() {
		r = &SnapshotReader{snap: s.db.NewSnapshot(), Applied: s.Applied()}
	}})
	if err != nil {
		return nil, err
	}
	return r, nil
}

// Records calls fn for every record of every entity in key order, with its
// superseded versions, until fn returns an error.
func (r *SnapshotReader) Records(fn func(entity, id string, state []byte, history []HistoryEntry) error) error {
	it, err := r.snap.NewIter(&pebble.IterOptions{LowerBound: []byte{prefixRecord}, UpperBound: []byte{prefixRecord + 1}})
	if err != nil {
		return err
	}
	defer it.Close()
	for it.First(); it.Valid(); it.Next() {
		entity, rest, err := readEscaped(it.Key()[1:])
		if err != nil {
			return fmt.Errorf("%w: record key %q", ErrCorrupt, it.Key())
		}
		id, rest, err := readEscaped(rest)
		if err != nil || len(rest) != 0 {
			return fmt.Errorf("%w: record key %q", ErrCorrupt, it.Key())
		}
		hist, err := r.history(entity, id)
		if err != nil {
			return err
		}
		if err := fn(entity, id, append([]byte(nil), it.Value()...), hist); err != nil {
			return err
		}
	}
	return it.Error()
}

// HistoryEntry is one superseded version of a register.
type HistoryEntry struct {
	Register string
	Version  []byte // crdt.AppendVersion
}

func (r *SnapshotReader) history(entity, id string) ([]HistoryEntry, error) {
	prefix := appendEscaped(appendEscaped([]byte{prefixHistory}, entity), id)
	it, err := r.snap.NewIter(&pebble.IterOptions{LowerBound: prefix, UpperBound: prefixEnd(prefix)})
	if err != nil {
		return nil, err
	}
	defer it.Close()
	var out []HistoryEntry
	for it.First(); it.Valid(); it.Next() {
		reg, _, err := readEscaped(it.Key()[len(prefix):])
		if err != nil {
			return nil, fmt.Errorf("%w: history key %q", ErrCorrupt, it.Key())
		}
		out = append(out, HistoryEntry{Register: reg, Version: append([]byte(nil), it.Value()...)})
	}
	return out, it.Error()
}

type mergeOp struct {
	entity, id string
	state      *crdt.Record
	history    []crdt.Version
	registers  []string
}

// MergeRecord is one record of a snapshot: its state and superseded versions.
type MergeRecord struct {
	Entity, ID string
	State      *crdt.Record
	History    []HistoryEntry
}

// MergeRecords merges record states (and superseded versions) from a
// snapshot into the store, queuing all of them before waiting so they share
// fsyncs. It does not advance the applied vector; call AdvanceApplied with
// the snapshot's vector once every record is merged.
func (s *Store) MergeRecords(ctx context.Context, recs []MergeRecord) error {
	ops := make([]*op, 0, len(recs))
	for _, r := range recs {
		m := &mergeOp{entity: r.Entity, id: r.ID, state: r.State}
		for _, h := range r.History {
			v, err := crdt.DecodeVersion(h.Version)
			if err != nil {
				return fmt.Errorf("snapshot history of %s/%s: %w", r.Entity, r.ID, err)
			}
			m.history = append(m.history, v)
			m.registers = append(m.registers, h.Register)
		}
		o := &op{merge: m, done: make(chan struct{})}
		select {
		case s.reqs <- o:
			ops = append(ops, o)
		case <-s.stop:
			return ErrClosed
		case <-ctx.Done():
			return ctx.Err()
		}
	}
	for _, o := range ops {
		select {
		case <-o.done:
			if o.err != nil {
				return o.err
			}
		case <-s.stopped:
			return ErrClosed
		}
	}
	return nil
}

func (s *Store) stageMerge(st *batchState, o *op) {
	m := o.merge
	rec, key, err := s.loadStaged(st, m.entity, m.id)
	if err != nil {
		o.err = err
		close(o.done)
		return
	}
	rec.Merge(m.state)
	moved := s.historyMover(st, m.entity, m.id)
	rec.TakeDominated(moved)
	fail := func(err error) {
		o.err = s.fail(fmt.Errorf("%w: merge snapshot of %s/%s: %v", ErrFailed, m.entity, m.id, err))
		close(o.done)
	}
	for i := range m.history {
		v := m.history[i]
		name := m.registers[i]
		if r := rec.Register(name); r != nil && r.Has(v.Dot) {
			continue // live here: not superseded on this node
		}
		if v.Src != "" {
			// A copy of a source change folds with the copies here, live
			// (then TakeDominated below moves the fold) or in history.
			folded, _, err := rec.FoldCopy(name, v, s.pastCopies(st, rec, m.entity, m.id), s.pastPutter(st, m.entity, m.id))
			if err != nil {
				fail(err)
				return
			}
			if folded {
				continue
			}
		}
		moved(name, v)
	}
	rec.TakeDominated(moved)
	st.records[key] = rec
	st.advanced = true
	o.res = &Result{}
	st.ops = append(st.ops, o)
}

// AdvanceApplied raises the applied marks to vv after a snapshot install and
// records that the op log holds nothing at or below them for those origins.
func (s *Store) AdvanceApplied(ctx context.Context, vv crdt.VV) error {
	_, err := s.submit(ctx, &op{advance: vv})
	return err
}

// Truncate removes op-log entries at or below vv (per origin). Readers
// asking for entries below the truncation point get ErrTruncated.
func (s *Store) Truncate(ctx context.Context, vv crdt.VV) error {
	durable := s.Applied()
	b := s.db.NewBatch()
	defer b.Close()
	raised := map[string]uint64{}
	cur := s.Truncated()
	for _, e := range vv {
		seq := e.Seq
		if d := durable.Get(e.Node); seq > d {
			seq = d
		}
		if seq <= cur.Get(e.Node) {
			continue
		}
		if err := b.DeleteRange(opLogKey(e.Node, 0), opLogKey(e.Node, seq+1), nil); err != nil {
			return err
		}
		b.Set(truncatedKey(e.Node), uvarintBytes(seq), nil)
		raised[e.Node] = seq
	}
	if len(raised) == 0 {
		return nil
	}
	// Raise the in-memory mark first: a reader that starts now must not
	// trust entries that are about to disappear.
	s.mu.Lock()
	s.mu.truncated = s.mu.truncated.Join(crdt.MakeVV(raised))
	s.mu.Unlock()
	return b.Commit(pebble.Sync)
}

// seqReserve is how many local sequence numbers one persisted ceiling covers.
const seqReserve = 1024

// burnSequence runs on open. Pebble shows a batch to readers before its
// fsync, so after a crash a reader may have seen local seqs that are now
// gone. Reissuing such a seq for another edit would give one dot two
// meanings (a client token covering it would supersede an edit it never
// saw). Every local seq above the durable mark and up to the persisted
// ceiling is therefore burned: written as an empty edit, which peers apply
// as a no-op, so the op log stays gap-free.
func (s *Store) burnSequence() error {
	v, closer, err := s.db.Get(keySeqCeil)
	if errors.Is(err, pebble.ErrNotFound) {
		s.seqCeil = s.mu.applied.Get(s.cfg.NodeID)
		return nil
	}
	if err != nil {
		return fmt.Errorf("read sequence ceiling: %w", err)
	}
	ceil, err := decodeUvarint(v)
	closer.Close()
	if err != nil {
		return fmt.Errorf("read sequence ceiling: %w", err)
	}
	s.seqCeil = ceil
	mark := s.mu.applied.Get(s.cfg.NodeID)
	if ceil <= mark {
		return nil
	}
	b := s.db.NewBatch()
	defer b.Close()
	for seq := mark + 1; seq <= ceil; seq++ {
		e := crdt.Edit{Dot: crdt.Dot{Node: s.cfg.NodeID, Seq: seq}}
		b.Set(opLogKey(s.cfg.NodeID, seq), crdt.AppendEdit(nil, &e), nil)
	}
	b.Set(appliedKey(s.cfg.NodeID), uvarintBytes(ceil), nil)
	if err := b.Commit(pebble.Sync); err != nil {
		return fmt.Errorf("burn sequence numbers after a crash: %w", err)
	}
	s.log.Info("burned sequence numbers an unclean shutdown may have shown", "from", mark+1, "to", ceil)
	s.mu.applied = s.mu.applied.Join(crdt.VV{{Node: s.cfg.NodeID, Seq: ceil}})
	s.staged = s.mu.applied
	s.publishVisible()
	return nil
}

// reserveSeq makes sure seq is below the persisted ceiling. Runs on the
// committer before the batch holding seq is written.
func (s *Store) reserveSeq(seq uint64) error {
	if seq <= s.seqCeil {
		return nil
	}
	ceil := seq + seqReserve
	if err := s.db.Set(keySeqCeil, uvarintBytes(ceil), pebble.Sync); err != nil {
		return fmt.Errorf("persist sequence ceiling: %w", err)
	}
	s.seqCeil = ceil
	return nil
}

// Digest hashes every record state and every history version in key order,
// from a consistent snapshot, and counts the records. Two nodes holding
// byte-identical state and history have equal digests (the op log, which
// nodes truncate at different moments, is not included).
func (s *Store) Digest(ctx context.Context) (string, uint64, crdt.VV, error) {
	snap, err := s.Checkpoint(ctx)
	if err != nil {
		return "", 0, nil, err
	}
	defer snap.Close()
	h := sha256.New()
	var records uint64
	for _, prefix := range []byte{prefixRecord, prefixHistory} {
		it, err := snap.snap.NewIter(&pebble.IterOptions{LowerBound: []byte{prefix}, UpperBound: []byte{prefix + 1}})
		if err != nil {
			return "", 0, nil, err
		}
		for it.First(); it.Valid(); it.Next() {
			if prefix == prefixRecord {
				records++
			}
			var n [8]byte
			binary.BigEndian.PutUint64(n[:], uint64(len(it.Key())))
			h.Write(n[:])
			h.Write(it.Key())
			binary.BigEndian.PutUint64(n[:], uint64(len(it.Value())))
			h.Write(n[:])
			h.Write(it.Value())
		}
		if err := it.Close(); err != nil {
			return "", 0, nil, err
		}
	}
	return hex.EncodeToString(h.Sum(nil)), records, snap.Applied, nil
}
