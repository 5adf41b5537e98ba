package crdt

import (
	"slices"
	"strings"
)

// Edit is one accepted edit of one record: the unit of the op log and of
// replication. All its writes share its dot, timestamp and origin.
type Edit struct {
	Entity string
	ID     string
	Dot    Dot
	TS     Timestamp
	Origin string
	// Writes are sorted by register name, one per register.
	Writes []Write
}

// Write is the part of an edit that touches one register.
type Write struct {
	Register string
	Value    Value
	// Ctx is what the writer had seen of this register (closed, see CloseContext).
	Ctx VV
}

// Version returns the version w adds to its register.
func (e *Edit) Version(w *Write) Version { return e.version(w, e.Source()) }

// version is Version for an edit whose Source is src.
func (e *Edit) version(w *Write, src string) Version {
	return Version{Value: w.Value, TS: e.TS, Origin: e.Origin, Dot: e.Dot, Ctx: w.Ctx, Src: src}
}

// Source names the source change e captured: the write of a connector's
// source register (SourceRegister), as "register=position"; "" when e
// writes none (API edits, snapshot rows). Two edits with one Source are
// two captures of one change (see Version.Src).
func (e *Edit) Source() string {
	for i := range e.Writes {
		w := &e.Writes[i]
		if strings.HasPrefix(w.Register, SourcePrefix) && w.Value.Kind() == KindString {
			return w.Register + "=" + w.Value.Str()
		}
	}
	return ""
}

// Record is the CRDT state of one record: its registers (sorted by name) and
// its context, the join of every dot and version context it ever held. The
// context is what a read hands out as the token for a later write.
type Record struct {
	Registers []Register
	Context   VV
}

// Register returns the named register, or nil.
func (rec *Record) Register(name string) *Register {
	i, ok := slices.BinarySearchFunc(rec.Registers, name, func(r Register, n string) int { return strings.Compare(r.Name, n) })
	if !ok {
		return nil
	}
	return &rec.Registers[i]
}

func (rec *Record) registerFor(name string) *Register {
	i, ok := slices.BinarySearchFunc(rec.Registers, name, func(r Register, n string) int { return strings.Compare(r.Name, n) })
	if !ok {
		rec.Registers = slices.Insert(rec.Registers, i, Register{Name: name})
	}
	return &rec.Registers[i]
}

// Apply merges an edit into the record (set union per register). It reports
// whether anything changed; applying an edit twice changes nothing.
func (rec *Record) Apply(e *Edit) bool {
	changed, _ := rec.ApplyStored(e, nil, nil)
	return changed
}

// SourceShows says what the live versions of source register shows of
// position pos: atOrAfter, a position of pos's kind (same first letter and
// width, so positions compare as text) at or after pos; otherKind, a
// position of another kind (the connector changed capture mode).
// Connectors skip a change the record shows at or after its position
// (it was captured already); stores use it through MayHoldCopy.
func (rec *Record) SourceShows(register, pos string) (atOrAfter, otherKind bool) {
	reg := rec.Register(register)
	if reg == nil || pos == "" {
		return false, false
	}
	for i := range reg.Versions {
		if reg.Dominated(i) {
			continue
		}
		have := reg.Versions[i].Value.Str()
		if len(have) != len(pos) || have[0] != pos[0] {
			otherKind = true
		} else if have >= pos {
			atOrAfter = true
		}
	}
	return atOrAfter, otherKind
}

// MayHoldCopy reports whether rec may hold (live or, in a store, in
// history) a capture of source change src (Edit.Source). A connector
// captures the changes of a row in position order and never one at or
// before a position the record shows, and only its captures write its
// source register, so once a capture of src reached rec the register's
// live versions hold src's position or a later one (a capture that
// superseded it saw it, so came later). A register showing only earlier
// positions of the same kind rules a copy out: a store need not look in
// history, the common case of a change captured once.
func (rec *Record) MayHoldCopy(src string) bool {
	register, pos, ok := strings.Cut(src, "=")
	if !ok || pos == "" {
		return true
	}
	atOrAfter, otherKind := rec.SourceShows(register, pos)
	return atOrAfter || otherKind
}

// ApplyStored is Apply for a store that keeps only the live versions in rec
// and moved the superseded ones to history. When the edit captured a source
// change (Edit.Source) that a version in history already holds a copy of,
// past returns that version (nil when there is none) and the edit's version
// folds into it there: put receives the old version and the folded one to
// keep instead. A nil past means rec is a full set.
func (rec *Record) ApplyStored(e *Edit, past func(register, src string) (*Version, error), put func(register string, old *Version, v Version)) (bool, error) {
	changed := false
	src := e.Source()
	for i := range e.Writes {
		w := &e.Writes[i]
		v := e.version(w, src)
		var folded, ch bool
		if src != "" {
			var err error
			if folded, ch, err = rec.FoldCopy(w.Register, v, past, put); err != nil {
				return changed, err
			}
		}
		if !folded {
			ch = rec.registerFor(w.Register).Add(v)
		}
		if ch {
			changed = true
			rec.Context = rec.Context.Join(w.Ctx)
		}
	}
	if changed {
		rec.Context = rec.Context.WithDot(e.Dot)
	}
	return changed, nil
}

// FoldCopy folds v, a version of register capturing a source change
// (v.Src set), into the version holding another capture of that change:
// live in rec, or, when past finds one (a store's history, see
// ApplyStored), there, handing the fold to put. It reports whether such a
// version existed (folded; otherwise v is the change's first version here)
// and whether anything changed.
func (rec *Record) FoldCopy(register string, v Version, past func(register, src string) (*Version, error), put func(register string, old *Version, v Version)) (folded, changed bool, err error) {
	reg := rec.registerFor(register)
	if reg.HoldsSrc(v.Src) {
		return true, reg.Add(v), nil
	}
	if past == nil {
		return false, false, nil
	}
	old, err := past(register, v.Src)
	if err != nil || old == nil {
		return false, false, err
	}
	if old.Has(v.Dot) {
		return true, false, nil
	}
	put(register, old, reg.FoldPast(*old, v))
	return true, true, nil
}

// Merge merges another record state into rec (set union of every register).
func (rec *Record) Merge(o *Record) bool {
	changed := false
	for i := range o.Registers {
		if rec.registerFor(o.Registers[i].Name).Merge(&o.Registers[i]) {
			changed = true
		}
	}
	rec.Context = rec.Context.Join(o.Context)
	return changed
}

// TakeDominated moves every dominated version out of rec's registers, calling
// fn for each (register name and version), in register then dot order.
func (rec *Record) TakeDominated(fn func(register string, v Version)) {
	var buf []Version
	for i := range rec.Registers {
		buf = rec.Registers[i].TakeDominated(buf[:0])
		for _, v := range buf {
			fn(rec.Registers[i].Name, v)
		}
	}
}

// Clone returns a deep copy of the slices of rec that Apply mutates.
func (rec *Record) Clone() *Record {
	out := &Record{Context: rec.Context, Registers: make([]Register, len(rec.Registers))}
	for i, r := range rec.Registers {
		out.Registers[i] = Register{Name: r.Name, Versions: slices.Clone(r.Versions)}
	}
	return out
}
