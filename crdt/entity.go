package crdt

import (
	"errors"
	"fmt"
	"sort"
	"strings"
	"unicode/utf8"
)

// Limits on edits (DESIGN.md invariant 6: bad input changes nothing).
const (
	MaxValueBytes = 1 << 20
	MaxIDBytes    = 512
)

// ErrInvalid marks an edit refused because its input is malformed: an
// unknown field, a wrong type, an oversized value, a bad id or context.
var ErrInvalid = errors.New("invalid input")

// ErrStaleContext marks a resolve whose context does not cover every live
// sibling: a new edit arrived after the read.
var ErrStaleContext = errors.New("stale context")

func invalid(format string, args ...any) error {
	return fmt.Errorf("%w: %s", ErrInvalid, fmt.Sprintf(format, args...))
}

// RegisterOf returns the register that holds field name: its group, or itself.
func (e *Entity) RegisterOf(name string) string {
	if name == DeletedField {
		return DeletedField
	}
	if f, ok := e.Field(name); ok && f.Group != "" {
		return f.Group
	}
	return name
}

// PolicyOf returns the policy of a register.
func (e *Entity) PolicyOf(register string) *Policy {
	if register == DeletedField {
		return &e.DeletedPolicy
	}
	for i := range e.Groups {
		if e.Groups[i].Name == register {
			return &e.Groups[i].Policy
		}
	}
	if f, ok := e.Field(register); ok {
		return &f.Policy
	}
	return &Policy{}
}

func (e *Entity) group(name string) *Group {
	for i := range e.Groups {
		if e.Groups[i].Name == name {
			return &e.Groups[i]
		}
	}
	return nil
}

// CheckID validates a record id.
func CheckID(id string) error {
	switch {
	case id == "":
		return invalid("record id is empty")
	case len(id) > MaxIDBytes:
		return invalid("record id is %d bytes, over the %d-byte limit", len(id), MaxIDBytes)
	case !utf8.ValidString(id):
		return invalid("record id is not valid UTF-8")
	}
	return nil
}

// CheckValue validates a value for field f.
func CheckValue(f *FieldSpec, v Value) error {
	if !v.Conforms(f.Type) {
		return invalid("field %q is %s, got a %s value", f.Name, f.Type, v.Kind())
	}
	if n := v.Size(); n > MaxValueBytes {
		return invalid("field %q value is %d bytes, over the 1 MiB limit", f.Name, n)
	}
	switch v.Kind() {
	case KindString, KindJSON:
		if !utf8.ValidString(v.Str()) {
			return invalid("field %q value is not valid UTF-8", f.Name)
		}
	case KindDecimal:
		if _, err := ParseDecimal(v.Str()); err != nil {
			return invalid("field %q: %v", f.Name, err)
		}
	}
	return nil
}

// EditContext says which context a new edit carries.
type EditContext struct {
	// Token is the record context from an earlier read. When Explicit is
	// false the edit overwrites what the node currently shows.
	Token    VV
	Explicit bool
	// Applied is what the accepting node has applied of each origin.
	Applied VV
	// History, when set, returns the superseded versions of a register (the
	// store keeps them out of the record). An explicit context is closed over
	// them too, and a partial write of a field group fills the members it
	// does not set from what the context saw, which may be in history.
	History func(register string) ([]Version, error)
}

// PreparePut turns a put of fields into writes: each field (or the group it
// belongs to, filled from the current resolved group value) and _deleted =
// false, so an edit that saw a delete revives the record. Writes are sorted
// by register. Nothing in rec is changed.
func (e *Entity) PreparePut(rec *Record, fields map[string]Value, ec EditContext) ([]Write, error) {
	if len(fields) == 0 {
		return nil, invalid("put of entity %q has no fields", e.Name)
	}
	names := make([]string, 0, len(fields))
	for n := range fields {
		names = append(names, n)
	}
	sort.Strings(names)
	tuples := map[string][]Value{}
	var writes []Write
	for _, n := range names {
		if n == DeletedField {
			return nil, invalid("field %q is reserved: use delete", n)
		}
		f, ok := e.Field(n)
		if !ok {
			return nil, invalid("entity %q has no field %q (fields: %s)", e.Name, n, e.fieldList())
		}
		v := fields[n]
		if err := CheckValue(f, v); err != nil {
			return nil, err
		}
		if f.Group == "" {
			writes = append(writes, Write{Register: n, Value: v})
			continue
		}
		g := e.group(f.Group)
		t, ok := tuples[g.Name]
		if !ok {
			var err error
			if t, err = e.seenTuple(rec, g, ec); err != nil {
				return nil, err
			}
			tuples[g.Name] = t
		}
		for i, m := range g.Fields {
			if m == n {
				t[i] = v
			}
		}
	}
	for name, t := range tuples {
		writes = append(writes, Write{Register: name, Value: Tuple(t...)})
	}
	writes = append(writes, Write{Register: DeletedField, Value: Bool(false)})
	sort.Slice(writes, func(i, j int) bool { return writes[i].Register < writes[j].Register })
	for i := range writes {
		if i > 0 && writes[i].Register == writes[i-1].Register {
			return nil, invalid("field %q is written twice", writes[i].Register)
		}
		ctx, err := contextFor(rec, writes[i].Register, ec)
		if err != nil {
			return nil, err
		}
		writes[i].Ctx = ctx
	}
	return writes, nil
}

// PrepareDelete returns the write that deletes a record.
func (e *Entity) PrepareDelete(rec *Record, ec EditContext) ([]Write, error) {
	ctx, err := contextFor(rec, DeletedField, ec)
	if err != nil {
		return nil, err
	}
	return []Write{{Register: DeletedField, Value: Bool(true), Ctx: ctx}}, nil
}

// PrepareResolve returns the write that ends a conflict on field: its context
// covers every live version of the field's register. With value nil the
// current resolved value is kept. With an explicit token that does not cover
// every live version, it fails with ErrStaleContext.
func (e *Entity) PrepareResolve(rec *Record, field string, value *Value, ec EditContext) ([]Write, error) {
	if field == DeletedField {
		return nil, invalid("field %q is reserved: use delete or put", field)
	}
	f, ok := e.Field(field)
	if !ok {
		return nil, invalid("entity %q has no field %q", e.Name, field)
	}
	regName := e.RegisterOf(field)
	reg := rec.Register(regName)
	if reg == nil || len(reg.Versions) == 0 {
		return nil, invalid("field %q of this record has no value to resolve", field)
	}
	if ec.Explicit {
		ctx, err := contextFor(rec, regName, ec)
		if err != nil {
			return nil, err
		}
		for i := range reg.Versions {
			if !reg.Dominated(i) && !reg.Versions[i].CoveredBy(ctx) {
				return nil, fmt.Errorf("%w: version %s of field %q arrived after your read; read the record again", ErrStaleContext, reg.Versions[i].Dot, field)
			}
		}
	}
	winner, _ := reg.Resolve(e.PolicyOf(regName))
	v := reg.Versions[winner].Value
	if value != nil {
		if err := CheckValue(f, *value); err != nil {
			return nil, err
		}
		if f.Group == "" {
			v = *value
		} else {
			g := e.group(f.Group)
			t := e.currentTuple(rec, g)
			for i, m := range g.Fields {
				if m == field {
					t[i] = *value
				}
			}
			v = Tuple(t...)
		}
	}
	return []Write{{Register: regName, Value: v, Ctx: reg.Context()}}, nil
}

func (e *Entity) fieldList() string {
	names := make([]string, len(e.Fields))
	for i := range e.Fields {
		names[i] = e.Fields[i].Name
	}
	return strings.Join(names, ", ")
}

// contextFor computes the context a write of register carries (see
// Register.CloseContext); an explicit context is also closed over the
// register's history when the store provides it.
func contextFor(rec *Record, register string, ec EditContext) (VV, error) {
	reg := rec.Register(register)
	if reg == nil {
		reg = &Register{}
	}
	ctx := reg.CloseContext(ec.Token, ec.Explicit, ec.Applied)
	if !ec.Explicit || ec.History == nil {
		return ctx, nil
	}
	hist, err := ec.History(register)
	if err != nil {
		return nil, fmt.Errorf("read history of %q: %w", register, err)
	}
	all := Register{Versions: append(append([]Version(nil), reg.Versions...), hist...)}
	return all.closeOver(ctx), nil
}

// seenTuple returns a fresh copy of g's member values as the writer saw
// them: without an explicit context, the node's resolved value; with one,
// the policy's pick among the versions the context covers (live or in
// history), so a partial write of a group never combines members the writer
// saw with members of a concurrent edit it did not see.
func (e *Entity) seenTuple(rec *Record, g *Group, ec EditContext) ([]Value, error) {
	if !ec.Explicit {
		return e.currentTuple(rec, g), nil
	}
	ctx, err := contextFor(rec, g.Name, ec)
	if err != nil {
		return nil, err
	}
	seen := Register{Name: g.Name}
	if reg := rec.Register(g.Name); reg != nil {
		for _, v := range reg.Versions {
			if v.CoveredBy(ctx) {
				seen.Add(v)
			}
		}
	}
	if ec.History != nil {
		hist, err := ec.History(g.Name)
		if err != nil {
			return nil, fmt.Errorf("read history of %q: %w", g.Name, err)
		}
		for _, v := range hist {
			if v.CoveredBy(ctx) {
				seen.Add(v)
			}
		}
	}
	t := make([]Value, len(g.Fields))
	if w, _ := seen.Resolve(&g.Policy); w >= 0 {
		copy(t, seen.Versions[w].Value.Members())
	}
	return t, nil
}

// currentTuple returns a fresh copy of the resolved member values of g.
func (e *Entity) currentTuple(rec *Record, g *Group) []Value {
	t := make([]Value, len(g.Fields))
	if reg := rec.Register(g.Name); reg != nil {
		if w, _ := reg.Resolve(&g.Policy); w >= 0 {
			copy(t, reg.Versions[w].Value.Members())
		}
	}
	return t
}

// FieldView is the resolved state of one field.
type FieldView struct {
	Name       string
	Value      Value
	Conflicted bool
	// Winner is the version whose value was picked (zero if the field was never written).
	Winner Version
	// Live are the live versions of the field's register, with Value set to
	// this field's member value for a grouped field. Siblings (mvr) are their values.
	Live []Version
}

// View resolves every declared field of rec under the entity's policies, in
// declaration order, and says whether the record is deleted. Fields never
// written are included with a null value.
func (e *Entity) View(rec *Record) (fields []FieldView, deleted bool) {
	if reg := rec.Register(DeletedField); reg != nil {
		if w, _ := reg.Resolve(&e.DeletedPolicy); w >= 0 {
			deleted = reg.Versions[w].Value.BoolValue()
		}
	}
	fields = make([]FieldView, 0, len(e.Fields))
	for i := range e.Fields {
		f := &e.Fields[i]
		fv := FieldView{Name: f.Name}
		regName := e.RegisterOf(f.Name)
		reg := rec.Register(regName)
		if reg != nil && len(reg.Versions) > 0 {
			member := -1
			if f.Group != "" {
				for j, m := range e.group(f.Group).Fields {
					if m == f.Name {
						member = j
					}
				}
			}
			w, live := reg.Resolve(e.PolicyOf(regName))
			fv.Conflicted = live > 1
			pick := func(v Version) Version {
				if member >= 0 {
					if ms := v.Value.Members(); member < len(ms) {
						v.Value = ms[member]
					} else {
						v.Value = Null
					}
				}
				return v
			}
			fv.Winner = pick(reg.Versions[w])
			fv.Value = fv.Winner.Value
			for j := range reg.Versions {
				if !reg.Dominated(j) {
					fv.Live = append(fv.Live, pick(reg.Versions[j]))
				}
			}
		}
		fields = append(fields, fv)
	}
	return fields, deleted
}

// SourcePrefix begins the name of the system register a connector keeps in
// each record it captures (SourceRegister): the source position of the last
// change of the row it captured. It is never a declared field (names
// starting with "_" are reserved), never in a View and never projected; it
// replicates with the record like any register, so a connector that resumes
// from an earlier checkpoint, here or on another node, recognises the
// changes it already captured and does not capture them a second time as
// new edits.
const SourcePrefix = "_src:"

// SourceRegister names connector's source-position register.
func SourceRegister(connector string) string { return SourcePrefix + connector }

// SystemValues returns the live values of a system register of rec.
func SystemValues(rec *Record, register string) []Value {
	reg := rec.Register(register)
	if reg == nil {
		return nil
	}
	var out []Value
	for i := range reg.Versions {
		if !reg.Dominated(i) {
			out = append(out, reg.Versions[i].Value)
		}
	}
	return out
}

// WithSystem returns writes with one more write, of the system register
// (a name starting with "_" that no schema declares) to v, its context
// computed from ec as for any other write, keeping writes sorted by
// register. writes must not already hold the register.
func WithSystem(rec *Record, writes []Write, register string, v Value, ec EditContext) ([]Write, error) {
	if !strings.HasPrefix(register, "_") || register == DeletedField {
		return nil, invalid("register %q is not a system register", register)
	}
	ctx, err := contextFor(rec, register, ec)
	if err != nil {
		return nil, err
	}
	out := make([]Write, 0, len(writes)+1)
	out = append(out, writes...)
	i := sort.Search(len(out), func(i int) bool { return out[i].Register >= register })
	if i < len(out) && out[i].Register == register {
		return nil, invalid("register %q is written twice", register)
	}
	out = append(out, Write{})
	copy(out[i+1:], out[i:])
	out[i] = Write{Register: register, Value: v, Ctx: ctx}
	return out, nil
}
