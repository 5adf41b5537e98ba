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
func (e *Edit) Version(w *Write) Version {
	return Version{Value: w.Value, TS: e.TS, Origin: e.Origin, Dot: e.Dot, Ctx: w.Ctx}
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
	changed := false
	for i := range e.Writes {
		w := &e.Writes[i]
		if rec.registerFor(w.Register).Add(e.Version(w)) {
			changed = true
			rec.Context = rec.Context.Join(w.Ctx)
		}
	}
	if changed {
		rec.Context = rec.Context.WithDot(e.Dot)
	}
	return changed
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
