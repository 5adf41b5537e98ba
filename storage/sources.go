package storage

import (
	"encoding/binary"
	"errors"
	"fmt"

	"github.com/cockroachdb/pebble/v2"

	"github.com/lattice-sync/lattice/crdt"
)

// Copies of one captured source change (crdt.Version.Src) fold into one
// version wherever they meet. Live copies meet in the record; a copy that
// arrives after the others were superseded must find them in history, so
// the store keeps, per record and source change, the dots of the edits
// that captured it (0x12 entity id src -> uvarint ts, uvarint n, n × dot)
// and looks the history version up by those dots. An entry is pruned with
// the history it points into (Prune), once no live version holds its change.

// sourceKey is the key of the index entry of one source change of a record.
func sourceKey(entity, id, src string) []byte {
	b := appendEscaped([]byte{prefixSource}, entity)
	b = appendEscaped(b, id)
	return appendEscaped(b, src)
}

// sourceEntry is an index entry: the captures' dots and their greatest time.
type sourceEntry struct {
	ts   crdt.Timestamp
	dots []crdt.Dot
}

func (e *sourceEntry) has(d crdt.Dot) bool {
	for _, x := range e.dots {
		if x == d {
			return true
		}
	}
	return false
}

func (e *sourceEntry) encode() []byte {
	b := binary.AppendUvarint(nil, uint64(e.ts))
	b = binary.AppendUvarint(b, uint64(len(e.dots)))
	for _, d := range e.dots {
		b = binary.AppendUvarint(b, uint64(len(d.Node)))
		b = append(b, d.Node...)
		b = binary.AppendUvarint(b, d.Seq)
	}
	return b
}

var errSourceEntry = errors.New("bad source index entry")

func decodeSourceEntry(b []byte) (*sourceEntry, error) {
	ts, n := binary.Uvarint(b)
	if n <= 0 {
		return nil, errSourceEntry
	}
	b = b[n:]
	cnt, n := binary.Uvarint(b)
	if n <= 0 || cnt > uint64(len(b)) {
		return nil, errSourceEntry
	}
	b = b[n:]
	e := &sourceEntry{ts: crdt.Timestamp(ts)}
	for i := uint64(0); i < cnt; i++ {
		l, n := binary.Uvarint(b)
		if n <= 0 || l == 0 || l > uint64(len(b)-n) {
			return nil, errSourceEntry
		}
		node := string(b[n : n+int(l)])
		b = b[n+int(l):]
		seq, n := binary.Uvarint(b)
		if n <= 0 || seq == 0 {
			return nil, errSourceEntry
		}
		b = b[n:]
		e.dots = append(e.dots, crdt.Dot{Node: node, Seq: seq})
	}
	if len(b) != 0 {
		return nil, errSourceEntry
	}
	return e, nil
}

// stagedSource returns the index entry of a source change as this batch
// left it (nil when there is none).
func (s *Store) stagedSource(st *batchState, entity, id, src string) (*sourceEntry, error) {
	k := string(sourceKey(entity, id, src))
	if e, ok := st.sources[k]; ok {
		return e, nil
	}
	b, closer, err := s.db.Get([]byte(k))
	if errors.Is(err, pebble.ErrNotFound) {
		return nil, nil
	}
	if err != nil {
		return nil, err
	}
	defer closer.Close()
	e, err := decodeSourceEntry(b)
	if err != nil {
		return nil, fmt.Errorf("%w: source index %q: %v", ErrCorrupt, k, err)
	}
	st.sources[k] = e
	return e, nil
}

// noteSource records that the edits with dots captured source change src
// of a record (at time ts) reached this store.
func (s *Store) noteSource(st *batchState, entity, id, src string, ts crdt.Timestamp, dots ...crdt.Dot) error {
	entry, err := s.stagedSource(st, entity, id, src)
	if err != nil {
		return err
	}
	if entry == nil {
		entry = &sourceEntry{}
	}
	next := &sourceEntry{ts: max(entry.ts, ts), dots: append([]crdt.Dot(nil), entry.dots...)}
	for _, d := range dots {
		if !next.has(d) {
			next.dots = append(next.dots, d)
		}
	}
	if len(next.dots) == len(entry.dots) && next.ts == entry.ts {
		return nil
	}
	k := sourceKey(entity, id, src)
	st.sources[string(k)] = next
	st.b.Set(k, next.encode(), nil)
	return nil
}

// noteVersion is noteSource for a version (its dot and its copies').
func (s *Store) noteVersion(st *batchState, entity, id string, v *crdt.Version) error {
	if v.Src == "" {
		return nil
	}
	return s.noteSource(st, entity, id, v.Src, v.TS, append([]crdt.Dot{v.Dot}, v.Also...)...)
}

// stagedHistoryVersion returns the history version kept under dot d, as
// this batch left it (nil when there is none).
func (s *Store) stagedHistoryVersion(st *batchState, entity, id, register string, d crdt.Dot) (*crdt.Version, error) {
	k := historyKey(entity, id, register, d)
	if v, ok := st.folded[string(k)]; ok {
		return v, nil
	}
	for _, v := range st.history[string(historyPrefix(entity, id, register))] {
		if v.Dot == d {
			return &v, nil
		}
	}
	b, closer, err := s.db.Get(k)
	if errors.Is(err, pebble.ErrNotFound) {
		return nil, nil
	}
	if err != nil {
		return nil, err
	}
	defer closer.Close()
	v, err := crdt.DecodeVersion(b)
	if err != nil {
		return nil, fmt.Errorf("%w: history %q: %v", ErrCorrupt, k, err)
	}
	return &v, nil
}

// pastCopy returns the history version of register holding a copy of
// source change src, or nil.
func (s *Store) pastCopy(st *batchState, entity, id, register, src string) (*crdt.Version, error) {
	entry, err := s.stagedSource(st, entity, id, src)
	if err != nil || entry == nil {
		return nil, err
	}
	for _, d := range entry.dots {
		v, err := s.stagedHistoryVersion(st, entity, id, register, d)
		if err != nil {
			return nil, err
		}
		if v != nil && v.Src == src {
			return v, nil
		}
	}
	return nil, nil
}

// putPast replaces the history version kept under old by v (a fold).
func (s *Store) putPast(st *batchState, entity, id, register string, old crdt.Dot, v crdt.Version) {
	if old != v.Dot {
		k := historyKey(entity, id, register, old)
		st.b.Delete(k, nil)
		st.folded[string(k)] = nil
	}
	k := historyKey(entity, id, register, v.Dot)
	st.b.Set(k, crdt.AppendVersion(nil, &v), nil)
	st.folded[string(k)] = &v
}
