package storage

import (
	"bytes"
	"encoding/binary"
	"errors"
	"fmt"
	"strings"

	"github.com/cockroachdb/pebble/v2"

	"github.com/lattice-sync/lattice/crdt"
)

// Copies of one captured source change (crdt.Version.Src) fold into one
// version wherever they meet. Live copies meet in the record; a copy that
// arrives after the others were superseded must find them in history. The
// history of a connector's source register (crdt.SourceRegister) is kept
// by position (0x11 entity id register position dot, see historyKeyOf), so
// the superseded capture of a change is one seek away, and its dots (Dot
// and Also) name the history versions of the other registers it wrote. The
// store only looks when the record may hold a copy at all
// (crdt.Record.MayHoldCopy): a change captured once costs nothing extra.

// historyKeyOf is the history key of version v of register: by dot, or
// for a source register by position, then dot.
func historyKeyOf(entity, id, register string, v *crdt.Version) []byte {
	if strings.HasPrefix(register, crdt.SourcePrefix) && v.Value.Kind() == crdt.KindString {
		return sourceHistoryKey(entity, id, register, v.Value.Str(), v.Dot)
	}
	return historyKey(entity, id, register, v.Dot)
}

// sourcePositionPrefix is the prefix of the history keys of a source
// register's versions at position pos.
func sourcePositionPrefix(entity, id, register, pos string) []byte {
	return appendEscaped(historyPrefix(entity, id, register), "="+pos)
}

func sourceHistoryKey(entity, id, register, pos string, d crdt.Dot) []byte {
	b := appendEscaped(sourcePositionPrefix(entity, id, register, pos), d.Node)
	return binary.BigEndian.AppendUint64(b, d.Seq)
}

// stagedSourceCapture returns the superseded version of the source register
// that holds position pos, as this batch left it (nil when there is none).
func (s *Store) stagedSourceCapture(st *batchState, entity, id, register, pos string) (*crdt.Version, error) {
	prefix := sourcePositionPrefix(entity, id, register, pos)
	for k, v := range st.folded {
		if v != nil && strings.HasPrefix(k, string(prefix)) {
			return v, nil
		}
	}
	for _, v := range st.history[string(historyPrefix(entity, id, register))] {
		if v.Value.Kind() == crdt.KindString && v.Value.Str() == pos {
			if _, gone := st.folded[string(historyKeyOf(entity, id, register, &v))]; !gone {
				return &v, nil
			}
		}
	}
	it, err := s.db.NewIter(&pebble.IterOptions{LowerBound: prefix, UpperBound: prefixEnd(prefix)})
	if err != nil {
		return nil, err
	}
	defer it.Close()
	for it.First(); it.Valid(); it.Next() {
		if v, ok := st.folded[string(it.Key())]; ok && v == nil {
			continue // replaced in this batch by a fold kept under another dot
		}
		v, err := crdt.DecodeVersion(it.Value())
		if err != nil {
			return nil, fmt.Errorf("%w: history %q: %v", ErrCorrupt, it.Key(), err)
		}
		return &v, nil
	}
	return nil, it.Error()
}

// stagedHistoryVersion returns the history version of a (non-source)
// register kept under dot d, as this batch left it (nil when there is none).
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

// pastCopy returns the history version of register holding a capture of
// source change src ("<source register>=<position>"), or nil. rec is the
// record as staged: the capture's version of the source register may still
// be live there (what superseded the capture did not write it).
func (s *Store) pastCopy(st *batchState, rec *crdt.Record, entity, id, register, src string) (*crdt.Version, error) {
	srcReg, pos, ok := strings.Cut(src, "=")
	if !ok {
		return nil, nil
	}
	var capture *crdt.Version
	if r := rec.Register(srcReg); r != nil && register != srcReg {
		for i := range r.Versions {
			if r.Versions[i].Src == src {
				capture = &r.Versions[i]
			}
		}
	}
	if capture == nil {
		var err error
		capture, err = s.stagedSourceCapture(st, entity, id, srcReg, pos)
		if err != nil || capture == nil || register == srcReg {
			return capture, err
		}
	}
	// The capture's dots name the edits that captured the change; each
	// kept its version of register under its own dot (the least of those
	// that wrote it, once folded).
	for _, d := range append([]crdt.Dot{capture.Dot}, capture.Also...) {
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

// pastCopies is pastCopy as crdt.Record.ApplyStored's past.
func (s *Store) pastCopies(st *batchState, rec *crdt.Record, entity, id string) func(register, src string) (*crdt.Version, error) {
	return func(register, src string) (*crdt.Version, error) {
		return s.pastCopy(st, rec, entity, id, register, src)
	}
}

// pastPutter is putPast as crdt.Record.ApplyStored's put.
func (s *Store) pastPutter(st *batchState, entity, id string) func(register string, old *crdt.Version, v crdt.Version) {
	return func(register string, old *crdt.Version, v crdt.Version) { s.putPast(st, entity, id, register, old, v) }
}

// putPast replaces the history version old by v (their fold).
func (s *Store) putPast(st *batchState, entity, id, register string, old *crdt.Version, v crdt.Version) {
	ok, nk := historyKeyOf(entity, id, register, old), historyKeyOf(entity, id, register, &v)
	if !bytes.Equal(ok, nk) {
		st.b.Delete(ok, nil)
		st.folded[string(ok)] = nil
	}
	st.setVersion(nk, &v)
	st.folded[string(nk)] = &v
}
