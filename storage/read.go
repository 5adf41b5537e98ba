package storage

import (
	"errors"
	"fmt"
	"runtime"
	"sort"
	"time"

	"github.com/cockroachdb/pebble/v2"

	"github.com/lattice-sync/lattice/crdt"
)

func (s *Store) getRecord(key []byte) (*crdt.Record, error) {
	v, closer, err := s.db.Get(key)
	if errors.Is(err, pebble.ErrNotFound) {
		return nil, ErrNotFound
	}
	if err != nil {
		return nil, err
	}
	defer closer.Close()
	return decodeStored(key, v)
}

// decodeStored decodes the stored value v of the record at key.
func decodeStored(key, v []byte) (*crdt.Record, error) {
	rec, err := crdt.DecodeRecord(v)
	if err != nil {
		return nil, fmt.Errorf("%w: record %q: %v", ErrCorrupt, key, err)
	}
	return rec, nil
}

// Get returns the state of one record (its live versions and context) with
// one point lookup, or ErrNotFound.
//
// The context is clipped to what this node has applied: a record's context
// joins the contexts of its versions, and a version may name an edit from
// another origin that has not arrived here yet (origins replicate
// independently). Handed out as a read's token, such a context would let
// a write supersede an edit the reader never saw (found by the fault
// harness, jepsen/README.md). The applied vector is taken before the read,
// so everything it covers is in what the read returns; and the read is
// retried if a batch was applied meanwhile, so what the read returns is
// covered too (else a batch Pebble showed before its vector was published
// made the token miss versions the read showed: a write passing it would
// be concurrent with what its reader saw; found by the fault harness with
// the PostgreSQL workload, jepsen/README.md).
func (s *Store) Get(entity, id string) (*crdt.Record, error) {
	var rec *crdt.Record
	vis, err := s.consistent(func() (err error) {
		rec, err = s.getRecord(recordKey(entity, id))
		return err
	})
	if err != nil {
		return nil, err
	}
	rec.Context = rec.Context.Meet(vis)
	return rec, nil
}

// consistent runs read (which must not keep state between attempts) so
// that it sees exactly the batches of the visible vector it returns: it
// starts when no batch is being applied and is run again if one was
// applied before it ended.
func (s *Store) consistent(read func() error) (crdt.VV, error) {
	for spins := 0; ; spins++ {
		if g := s.visGen.Load(); g&1 == 0 {
			vis := s.visibleVV()
			err := read()
			if s.visGen.Load() == g {
				return vis, err
			}
		}
		if spins < 8 {
			runtime.Gosched()
		} else {
			time.Sleep(20 * time.Microsecond)
		}
	}
}

// publishVisible makes staged the vector reads clip to. Runs on the
// committer goroutine (or before it starts).
func (s *Store) publishVisible() {
	v := s.staged
	s.visible.Store(&v)
}

func (s *Store) visibleVV() crdt.VV {
	if p := s.visible.Load(); p != nil {
		return *p
	}
	return nil
}

// RecordEntry is a record state with its id.
type RecordEntry struct {
	ID     string
	Record *crdt.Record
}

// List returns up to limit records of entity with ids greater than after,
// in id order, and whether more follow.
func (s *Store) List(entity, after string, limit int) ([]RecordEntry, bool, error) {
	prefix := recordPrefix(entity)
	lower := prefix
	if after != "" {
		lower = append(recordKey(entity, after), 0) // first key after `after`
	}
	// An iterator reads the state of its creation: creating it is the read
	// that must match the visible vector (see Get).
	var it *pebble.Iterator
	vis, err := s.consistent(func() (err error) {
		if it != nil {
			it.Close()
		}
		it, err = s.db.NewIter(&pebble.IterOptions{LowerBound: lower, UpperBound: prefixEnd(prefix)})
		return err
	})
	if err != nil {
		return nil, false, err
	}
	defer it.Close()
	var out []RecordEntry
	for it.First(); it.Valid(); it.Next() {
		if len(out) == limit {
			return out, true, nil
		}
		id, rest, err := readEscaped(it.Key()[len(prefix):])
		if err != nil || len(rest) != 0 {
			return nil, false, fmt.Errorf("%w: record key %q", ErrCorrupt, it.Key())
		}
		rec, err := crdt.DecodeRecord(it.Value())
		if err != nil {
			return nil, false, fmt.Errorf("%w: record %q: %v", ErrCorrupt, id, err)
		}
		rec.Context = rec.Context.Meet(vis)
		out = append(out, RecordEntry{ID: id, Record: rec})
	}
	return out, false, it.Error()
}

// Versions returns every kept version of a register: the live ones in the
// record and the superseded ones in history, sorted by dot.
func (s *Store) Versions(entity, id, register string) ([]crdt.Version, error) {
	rec, err := s.Get(entity, id)
	if err != nil {
		return nil, err
	}
	var out []crdt.Version
	if r := rec.Register(register); r != nil {
		out = append(out, r.Versions...)
	}
	hist, err := s.history(entity, id, register)
	if err != nil {
		return nil, err
	}
	out = append(out, hist...)
	sort.Slice(out, func(i, j int) bool { return out[i].Dot.Compare(out[j].Dot) < 0 })
	return out, nil
}

// history returns the superseded versions of a register kept in history.
func (s *Store) history(entity, id, register string) ([]crdt.Version, error) {
	var out []crdt.Version
	prefix := historyPrefix(entity, id, register)
	it, err := s.db.NewIter(&pebble.IterOptions{LowerBound: prefix, UpperBound: prefixEnd(prefix)})
	if err != nil {
		return nil, err
	}
	defer it.Close()
	for it.First(); it.Valid(); it.Next() {
		v, err := crdt.DecodeVersion(it.Value())
		if err != nil {
			return nil, fmt.Errorf("%w: history %q: %v", ErrCorrupt, it.Key(), err)
		}
		out = append(out, v)
	}
	return out, it.Error()
}

// ScanOpLog calls fn for each op-log entry of origin with seq > after, in
// sequence order, until fn returns false or limit entries were read (limit
// < 0: no limit; 0 reads nothing). It reads only durable entries: Pebble makes a batch
// visible before its fsync completes, and an entry that a crash could still
// take back must never reach a peer or a watcher, or its dot could be
// reissued for another edit.
func (s *Store) ScanOpLog(origin string, after uint64, limit int, fn func(*crdt.Edit) bool) error {
	s.mu.Lock()
	durable, truncated := s.mu.applied.Get(origin), s.mu.truncated.Get(origin)
	s.mu.Unlock()
	if after < truncated {
		return fmt.Errorf("%w: %s entries up to %d are gone, asked from %d", ErrTruncated, origin, truncated, after+1)
	}
	if durable <= after {
		return nil
	}
	it, err := s.db.NewIter(&pebble.IterOptions{LowerBound: opLogKey(origin, after+1), UpperBound: opLogKey(origin, durable+1)})
	if err != nil {
		return err
	}
	defer it.Close()
	n := 0
	for it.First(); it.Valid() && n != limit; it.Next() {
		e, err := crdt.DecodeEdit(it.Value())
		if err != nil {
			return fmt.Errorf("%w: op log %q: %v", ErrCorrupt, it.Key(), err)
		}
		n++
		if !fn(e) {
			break
		}
	}
	return it.Error()
}

// Prune deletes superseded versions whose timestamp is below horizon from
// the history of every record of entity. Live versions are never in history,
// so they are never pruned. It returns how many versions were deleted.
func (s *Store) Prune(entity string, horizon crdt.Timestamp) (int, error) {
	prefix := appendEscaped([]byte{prefixHistory}, entity)
	it, err := s.db.NewIter(&pebble.IterOptions{LowerBound: prefix, UpperBound: prefixEnd(prefix)})
	if err != nil {
		return 0, err
	}
	defer it.Close()
	b := s.db.NewBatch()
	defer b.Close()
	n := 0
	for it.First(); it.Valid(); it.Next() {
		v, err := crdt.DecodeVersion(it.Value())
		if err != nil {
			return 0, fmt.Errorf("%w: history %q: %v", ErrCorrupt, it.Key(), err)
		}
		if v.TS < horizon {
			b.Delete(append([]byte(nil), it.Key()...), nil)
			n++
		}
	}
	if err := it.Error(); err != nil {
		return 0, err
	}
	if n == 0 {
		return 0, nil
	}
	return n, b.Commit(pebble.Sync)
}
