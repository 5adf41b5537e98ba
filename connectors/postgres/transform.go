package postgres

import (
	"context"
	"encoding/json"
	"errors"
	"fmt"
	"math"
	"reflect"
	"sort"
	"strconv"
	"strings"
	"time"

	"github.com/google/cel-go/cel"
	"github.com/google/cel-go/common/ast"
	"github.com/google/cel-go/common/types"
	"github.com/google/cel-go/common/types/ref"
	"github.com/google/cel-go/common/types/traits"
	"github.com/google/cel-go/ext"
	"github.com/google/cel-go/interpreter"
	"google.golang.org/protobuf/types/known/structpb"

	"github.com/lattice-sync/lattice/connectors"
	"github.com/lattice-sync/lattice/crdt"
)

// Transform: how a table's rows become field values and back (doc.go,
// "Transform"). ParseConfig builds it once: column conversions, and CEL
// programs for the capture filter, the projection filter and computed
// fields. Evaluation happens per row on the capture and projection paths.
//
// Invariants:
//   - A row whose text cannot be converted, or whose expressions fail, is
//     refused: its change carries the error and no fields, and apply sends
//     it to the dead-letter queue. Nothing is dropped without a trace.
//   - A row the filter excludes yields a change with no fields: nothing is
//     written, and the connector's picture of the row (remember) keeps what
//     it last captured, so a row that comes back into the filter is
//     captured with every field that changed meanwhile.
//   - Deletes are always captured: the stream carries only a deleted row's
//     key, so no filter can be evaluated over it.
//   - Every expression's cost is bounded (costLimit): a bad expression ends
//     in an evaluation error for the row, never in a hung capture.

// costLimit bounds one evaluation of one expression, in CEL cost units
// (about one per simple operation; string operations cost about one per
// ten bytes). A cost, not a time: the outcome for a row is the same on
// every node and every replay, whatever the load. A filter or computed
// field costs tens; the limit leaves room for a few scans of a text of a
// hundred kilobytes, and stops a runaway comprehension within about 0.1 s.
const costLimit = 100_000

// maxExprSize bounds an expression's length in code points.
const maxExprSize = 10_000

// transform is what ParseConfig built for a table.
type transform struct {
	// conv holds the declared conversion of every column in the table's
	// columns mapping (mapped or read only by expressions).
	conv map[string]*conversion
	// mapped lists the mapped columns in name order (errors are
	// deterministic); reads lists the columns read only by expressions.
	mapped, reads []string
	// refs lists the columns the capture expressions use, in name order.
	refs          []string
	filter        *expr
	projectFilter *expr
	computed      []computed // in field order
}

// expr is one compiled expression.
type expr struct {
	src  string
	prg  cel.Program
	refs []string  // the columns (row.x) or fields (record.x) it uses
	out  *cel.Type // the result type the checker inferred
}

type computed struct {
	field string
	e     *expr
}

// conversionOf is the conversion of a column into a value of type typ: the
// declared one when it converts to typ, else the default one.
func (t *Table) conversionOf(col string, typ crdt.Type) *conversion {
	if t.tf != nil {
		if cv := t.tf.conv[col]; cv != nil && cv.typ == typ {
			return cv
		}
	}
	return &conversion{typ: typ}
}

// toColumn renders a field value as the text projection writes into col;
// ok is false for null.
func (t *Table) toColumn(col string, v crdt.Value) (string, bool) {
	if t.tf != nil {
		if cv := t.tf.conv[col]; cv != nil {
			return cv.encode(v)
		}
	}
	return toText(v)
}

// mappedColumns returns the mapped columns in name order.
func (t *Table) mappedColumns() []string {
	if t.tf != nil {
		return t.tf.mapped
	}
	cols := mapKeys(t.Columns)
	sort.Strings(cols)
	return cols
}

// mapRow fills ch (a change of a row that is not deleted) from the row's
// column text (nil for null; absent for an unchanged TOAST value): column
// conversions, then the filter, then computed fields. See the invariants
// above for refused and excluded rows.
func (c *Connector) mapRow(ent *crdt.Entity, t *Table, text map[string]*string, ch change) change {
	for _, col := range t.mappedColumns() {
		field := t.Columns[col]
		v, ok := text[col]
		if !ok {
			continue // unchanged TOAST value: not part of this change
		}
		spec, ok := ent.Field(field)
		if !ok {
			return refuse(ch, fmt.Errorf("table %s column %q: entity %q has no field %q any more", t.Name, col, ent.Name, field))
		}
		if v == nil {
			ch.fields[field] = crdt.Null
			continue
		}
		val, err := t.conversionOf(col, spec.Type).decode(*v)
		if err != nil {
			return refuse(ch, fmt.Errorf("table %s column %q: %v", t.Name, col, err))
		}
		ch.fields[field] = val
	}
	tf := t.tf
	if tf == nil || (tf.filter == nil && len(tf.computed) == 0) {
		return ch
	}
	row, err := c.rowValues(ent, t, text, ch)
	if err != nil {
		return refuse(ch, err)
	}
	vars := activation{prefix: "row.", values: row}
	if tf.filter != nil {
		ok, err := tf.filter.test(vars)
		if err != nil {
			return refuse(ch, fmt.Errorf("table %s filter %s: %v%s", t.Name, quote(tf.filter.src), err, nullHint(tf.filter, row)))
		}
		if !ok {
			c.log.Debug("row not captured: the table's filter is false", "table", t.Name, "id", ch.id)
			ch.fields = map[string]crdt.Value{}
			return ch
		}
	}
	for _, cf := range tf.computed {
		spec, ok := ent.Field(cf.field)
		if !ok {
			return refuse(ch, fmt.Errorf("table %s computed field %q: entity %q has no such field any more", t.Name, cf.field, ent.Name))
		}
		v, err := cf.e.value(vars, spec.Type)
		if err != nil {
			return refuse(ch, fmt.Errorf("table %s computed field %q = %s: %v%s", t.Name, cf.field, quote(cf.e.src), err, nullHint(cf.e, row)))
		}
		ch.fields[cf.field] = v
	}
	return ch
}

// refuse turns ch into a refused change: no fields, and an error that
// apply sends to the dead-letter queue (direction capture).
func refuse(ch change, err error) change {
	ch.fields = map[string]crdt.Value{}
	ch.refused = fmt.Errorf("%w: %v", crdt.ErrInvalid, err)
	return ch
}

// rowValues gathers the values of the columns the capture expressions use.
// A mapped column has its field's (converted) value; a key column or one
// read only by expressions is converted by its declared type (text by
// default). A column missing from the change (an unchanged TOAST value)
// takes the value the stream last showed when the connector knows it.
func (c *Connector) rowValues(ent *crdt.Entity, t *Table, text map[string]*string, ch change) (map[string]crdt.Value, error) {
	row := make(map[string]crdt.Value, len(t.tf.refs))
	for _, col := range t.tf.refs {
		if field, ok := t.Columns[col]; ok {
			if v, ok := ch.fields[field]; ok {
				row[col] = v
				continue
			}
			if v, ok := c.heldValue(ent.Name, ch.id, field); ok {
				row[col] = v
				continue
			}
		} else if v, ok := text[col]; ok {
			if v == nil {
				row[col] = crdt.Null
				continue
			}
			val, err := t.conversionOf(col, t.declaredType(col)).decode(*v)
			if err != nil {
				return nil, fmt.Errorf("table %s column %q: %v", t.Name, col, err)
			}
			row[col] = val
			continue
		}
		return nil, fmt.Errorf("table %s column %q: not in this change (PostgreSQL leaves out an unchanged TOASTed value) and an expression of the table uses it: replay the dead letter to read the row again", t.Name, col)
	}
	return row, nil
}

// declaredType is the type of a column read only by expressions (or a key
// column): the declared one, text by default.
func (t *Table) declaredType(col string) crdt.Type {
	if t.tf != nil {
		if cv := t.tf.conv[col]; cv != nil {
			return cv.typ
		}
	}
	return crdt.TypeString
}

// heldValue is a field's value as the stream last showed the row holding it.
func (c *Connector) heldValue(entity, id, field string) (crdt.Value, bool) {
	c.mu.Lock()
	defer c.mu.Unlock()
	v, ok := c.mu.rows[rowKey(entity, id)][field]
	return v, ok
}

// projects reports whether a record's resolved state passes the table's
// project_filter (a deleted record always does: its delete is written).
// An evaluation error is a *refusedError: the record goes to the
// dead-letter queue (direction project).
func (t *Table) projects(values map[string]crdt.Value, deleted bool) (bool, error) {
	if deleted || t.tf == nil || t.tf.projectFilter == nil {
		return true, nil
	}
	f := t.tf.projectFilter
	ok, err := f.test(activation{prefix: "record.", values: values})
	if err != nil {
		return false, &refusedError{err: fmt.Errorf("%w: table %s project_filter %s: %v%s", crdt.ErrInvalid, t.Name, quote(f.src), err, nullHint(f, values))}
	}
	return ok, nil
}

// buildOrQueue prepares a record's projection; a record whose
// project_filter cannot be evaluated goes to the dead-letter queue.
func (c *Connector) buildOrQueue(ctx context.Context, entity, id string) (*projection, error) {
	p, err := c.build(entity, id)
	var refused *refusedError
	if errors.As(err, &refused) {
		return nil, c.deadLetter(ctx, connectors.DirectionProject, entity, id, refused.err)
	}
	return p, err
}

// nullHint names the null inputs of a failed evaluation: the usual cause.
func nullHint(e *expr, values map[string]crdt.Value) string {
	var nulls []string
	for _, r := range e.refs {
		if values[r].IsNull() { // (absent is null too)
			nulls = append(nulls, r)
		}
	}
	if len(nulls) == 0 {
		return ""
	}
	return fmt.Sprintf(" (null: %s; guard with x != null ? ... : ...)", strings.Join(nulls, ", "))
}

// activation gives an expression its variables: prefix+name is a column
// (row.) or a field (record.); an absent one is null.
type activation struct {
	prefix string
	values map[string]crdt.Value
}

func (a activation) ResolveName(name string) (any, bool) {
	n, ok := strings.CutPrefix(name, a.prefix)
	if !ok {
		return nil, false
	}
	return celValue(a.values[n]), true
}

func (a activation) Parent() interpreter.Activation { return nil }

// celValue converts a value to CEL: decimal and json values are their text.
func celValue(v crdt.Value) ref.Val {
	switch v.Kind() {
	case crdt.KindString, crdt.KindDecimal, crdt.KindJSON:
		return types.String(v.Str())
	case crdt.KindInt:
		return types.Int(v.Int64())
	case crdt.KindFloat:
		return types.Double(v.Float64())
	case crdt.KindBool:
		return types.Bool(v.BoolValue())
	case crdt.KindTimestamp:
		return types.Timestamp{Time: time.UnixMicro(v.Int64()).UTC()}
	case crdt.KindBytes:
		return types.Bytes(v.Str())
	}
	return types.NullValue
}

// celType is the CEL type a value of t has in expressions.
func celType(t crdt.Type) *cel.Type {
	switch t {
	case crdt.TypeInt:
		return cel.IntType
	case crdt.TypeFloat:
		return cel.DoubleType
	case crdt.TypeBool:
		return cel.BoolType
	case crdt.TypeTimestamp:
		return cel.TimestampType
	case crdt.TypeBytes:
		return cel.BytesType
	}
	return cel.StringType // string, decimal, json
}

// resultKinds are the CEL result kinds a computed field of each type takes.
var resultKinds = map[crdt.Type][]types.Kind{
	crdt.TypeString:    {types.StringKind},
	crdt.TypeInt:       {types.IntKind, types.UintKind},
	crdt.TypeFloat:     {types.DoubleKind, types.IntKind, types.UintKind},
	crdt.TypeBool:      {types.BoolKind},
	crdt.TypeTimestamp: {types.TimestampKind},
	crdt.TypeDecimal:   {types.StringKind, types.IntKind, types.UintKind, types.DoubleKind},
	crdt.TypeJSON:      {types.StringKind, types.MapKind, types.ListKind},
	crdt.TypeBytes:     {types.BytesKind},
}

// test evaluates a condition.
func (e *expr) test(a activation) (bool, error) {
	out, _, err := e.prg.Eval(a)
	if err != nil {
		return false, err
	}
	b, ok := out.(types.Bool)
	if !ok {
		return false, fmt.Errorf("gave %s %v, want a bool", out.Type().TypeName(), out)
	}
	return bool(b), nil
}

// value evaluates a computed field and converts the result to the field's type.
func (e *expr) value(a activation, typ crdt.Type) (crdt.Value, error) {
	out, _, err := e.prg.Eval(a)
	if err != nil {
		return crdt.Value{}, err
	}
	if out == types.NullValue {
		return crdt.Null, nil
	}
	wrong := fmt.Errorf("gave %s %v, but the field is %s", out.Type().TypeName(), out, typ)
	switch v := out.(type) {
	case types.String:
		switch typ {
		case crdt.TypeString:
			return crdt.String(string(v)), nil
		case crdt.TypeDecimal:
			d, err := crdt.ParseDecimal(string(v))
			if err != nil {
				return crdt.Value{}, fmt.Errorf("gave %s, not a decimal number", quote(string(v)))
			}
			return crdt.Decimal(d), nil
		case crdt.TypeJSON:
			if !json.Valid([]byte(v)) {
				return crdt.Value{}, fmt.Errorf("gave %s, not JSON", quote(string(v)))
			}
			return crdt.JSON(string(v)), nil
		}
	case types.Int:
		switch typ {
		case crdt.TypeInt:
			return crdt.Int(int64(v)), nil
		case crdt.TypeFloat:
			return crdt.Float(float64(v)), nil
		case crdt.TypeDecimal:
			return crdt.Decimal(strconv.FormatInt(int64(v), 10)), nil
		}
	case types.Uint:
		switch typ {
		case crdt.TypeInt:
			if uint64(v) > math.MaxInt64 {
				return crdt.Value{}, fmt.Errorf("gave %d, out of the range of int", uint64(v))
			}
			return crdt.Int(int64(v)), nil
		case crdt.TypeFloat:
			return crdt.Float(float64(v)), nil
		case crdt.TypeDecimal:
			return crdt.Decimal(strconv.FormatUint(uint64(v), 10)), nil
		}
	case types.Double:
		switch typ {
		case crdt.TypeFloat:
			return crdt.Float(float64(v)), nil
		case crdt.TypeDecimal:
			if math.IsInf(float64(v), 0) || math.IsNaN(float64(v)) {
				return crdt.Value{}, fmt.Errorf("gave %v, not a decimal number", float64(v))
			}
			return crdt.Decimal(strconv.FormatFloat(float64(v), 'f', -1, 64)), nil
		}
	case types.Bool:
		if typ == crdt.TypeBool {
			return crdt.Bool(bool(v)), nil
		}
	case types.Timestamp:
		if typ == crdt.TypeTimestamp {
			return crdt.TimestampMicros(v.UnixMicro()), nil
		}
	case types.Bytes:
		if typ == crdt.TypeBytes {
			return crdt.Bytes([]byte(v)), nil
		}
	}
	_, isMap := out.(traits.Mapper)
	_, isList := out.(traits.Lister)
	if typ == crdt.TypeJSON && (isMap || isList) {
		native, err := out.ConvertToNative(reflect.TypeOf(&structpb.Value{}))
		if err != nil {
			return crdt.Value{}, fmt.Errorf("gave a value that is not JSON: %v", err)
		}
		// encoding/json, not protojson: its output is stable (sorted keys,
		// no random spaces), so an unchanged row computes the same text.
		b, err := json.Marshal(native.(*structpb.Value).AsInterface())
		if err != nil {
			return crdt.Value{}, fmt.Errorf("gave a value that is not JSON: %v", err)
		}
		return crdt.JSON(string(b)), nil
	}
	return crdt.Value{}, wrong
}

// newEnv declares the variables prefix.<name>, each nullable of its type.
func newEnv(prefix string, vars map[string]crdt.Type) (*cel.Env, error) {
	opts := []cel.EnvOption{
		cel.CrossTypeNumericComparisons(true),
		cel.DefaultUTCTimeZone(true),
		cel.ParserExpressionSizeLimit(maxExprSize),
		ext.Strings(),
	}
	names := make([]string, 0, len(vars))
	for n := range vars {
		names = append(names, n)
	}
	sort.Strings(names)
	for _, n := range names {
		opts = append(opts, cel.Variable(prefix+"."+n, cel.NullableType(celType(vars[n]))))
	}
	return cel.NewEnv(opts...)
}

// compile parses, checks and plans one expression over prefix.<name>
// variables. The error is cel's message, or names the unknown variables.
func compile(env *cel.Env, prefix, src string, known map[string]crdt.Type, what string) (*expr, error) {
	if strings.TrimSpace(src) == "" {
		return nil, errors.New("empty expression")
	}
	parsed, iss := env.Parse(src)
	if iss.Err() != nil {
		return nil, iss.Err()
	}
	// Unknown columns or fields get a message of their own (cel would say
	// "undeclared reference to 'row'").
	var refs, unknown []string
	idents, selects, tests := 0, 0, 0
	ast.PreOrderVisit(ast.NavigateAST(parsed.NativeRep()), ast.NewExprVisitor(func(e ast.Expr) {
		switch e.Kind() {
		case ast.IdentKind:
			if e.AsIdent() == prefix {
				idents++
			}
		case ast.SelectKind:
			sel := e.AsSelect()
			if op := sel.Operand(); op.Kind() != ast.IdentKind || op.AsIdent() != prefix {
				return
			}
			selects++
			if sel.IsTestOnly() {
				tests++
			}
			name := sel.FieldName()
			if _, ok := known[name]; ok {
				refs = append(refs, name)
			} else {
				unknown = append(unknown, name)
			}
		}
	}))
	switch {
	case len(unknown) > 0:
		return nil, &unknownError{what: what, names: dedupe(unknown), known: known}
	case tests > 0:
		return nil, fmt.Errorf("has(%s.x) does not apply: every %s is always present; compare with null instead (%s.x != null)", prefix, what, prefix)
	case idents > selects:
		return nil, fmt.Errorf("%s can only be used as %s.<%s>", prefix, prefix, what)
	}
	checked, iss := env.Check(parsed)
	if iss.Err() != nil {
		return nil, iss.Err()
	}
	prg, err := env.Program(checked, cel.CostLimit(costLimit), cel.EvalOptions(cel.OptOptimize))
	if err != nil {
		return nil, err
	}
	return &expr{src: src, prg: prg, refs: dedupe(refs), out: checked.OutputType()}, nil
}

// unknownError names variables an expression uses that are not declared.
type unknownError struct {
	what  string // "column" or "field"
	names []string
	known map[string]crdt.Type
}

func (e *unknownError) Error() string {
	known := make([]string, 0, len(e.known))
	for n := range e.known {
		known = append(known, n)
	}
	sort.Strings(known)
	return fmt.Sprintf("no %s %s (the expression can use %s)", e.what, strings.Join(quoteAll(e.names), ", "), strings.Join(known, ", "))
}

func quoteAll(xs []string) []string {
	out := make([]string, len(xs))
	for i, x := range xs {
		out[i] = strconv.Quote(x)
	}
	return out
}

func dedupe(xs []string) []string {
	sort.Strings(xs)
	out := xs[:0]
	for i, x := range xs {
		if i == 0 || x != xs[i-1] {
			out = append(out, x)
		}
	}
	return out
}

// compileTable compiles a table's expressions and records which columns
// they read; the errors name connector, table and expression.
func compileTable(connector string, t *Table, ent *crdt.Entity) []error {
	tf := t.tf
	var errs []error
	at := func(what string) string {
		return strings.TrimSpace(fmt.Sprintf("connector %q table %q %s", connector, t.Name, what))
	}
	// Columns by the type their values have in expressions.
	cols := map[string]crdt.Type{}
	for _, k := range t.Key {
		cols[k] = crdt.TypeString
	}
	for col, cv := range tf.conv {
		cols[col] = cv.typ
	}
	var rowEnv *cel.Env
	if t.Filter != "" || len(t.Computed) > 0 {
		env, err := newEnv("row", cols)
		if err != nil {
			return append(errs, fmt.Errorf("%s: declaring its columns for expressions: %v", at(""), err))
		}
		rowEnv = env
	}
	var refs []string
	if t.Filter != "" {
		e, err := compile(rowEnv, "row", t.Filter, cols, "column")
		switch {
		case err != nil:
			errs = append(errs, fmt.Errorf("%s: %v", at(fmt.Sprintf("filter %q", t.Filter)), describeCompile(err)))
		case !acceptsKind(e.out, types.BoolKind):
			errs = append(errs, fmt.Errorf("%s: gives %s, want a bool: a filter is a condition such as row.status != 'archived'", at(fmt.Sprintf("filter %q", t.Filter)), typeName(e.out)))
		default:
			tf.filter = e
			refs = append(refs, e.refs...)
		}
	}
	fields := make([]string, 0, len(t.Computed))
	for f := range t.Computed {
		fields = append(fields, f)
	}
	sort.Strings(fields)
	for _, f := range fields {
		src := t.Computed[f]
		where := at(fmt.Sprintf("computed field %q (%s)", f, src))
		spec, ok := ent.Field(f)
		if !ok {
			errs = append(errs, fmt.Errorf("%s: entity %q has no field %q", at(fmt.Sprintf("computed field %q", f)), ent.Name, f))
			continue
		}
		if col := columnOf(t, f); col != "" {
			errs = append(errs, fmt.Errorf("%s: field %q is also mapped from column %q: keep one (a computed field is capture-only and is never written back)", at(fmt.Sprintf("computed field %q", f)), f, col))
			continue
		}
		e, err := compile(rowEnv, "row", src, cols, "column")
		if err != nil {
			errs = append(errs, fmt.Errorf("%s: %v", where, describeCompile(err)))
			continue
		}
		if !acceptsKind(e.out, resultKinds[spec.Type]...) {
			errs = append(errs, fmt.Errorf("%s: gives %s, but field %q is %s: convert the result (for example string(...), int(...), double(...), timestamp(...))", where, typeName(e.out), f, spec.Type))
			continue
		}
		tf.computed = append(tf.computed, computed{field: f, e: e})
		refs = append(refs, e.refs...)
	}
	tf.refs = dedupe(refs)
	if t.ProjectFilter != "" {
		fieldTypes := map[string]crdt.Type{}
		for _, f := range ent.Fields {
			fieldTypes[f.Name] = f.Type
		}
		where := at(fmt.Sprintf("project_filter %q", t.ProjectFilter))
		env, err := newEnv("record", fieldTypes)
		if err != nil {
			return append(errs, fmt.Errorf("%s: declaring the entity's fields for expressions: %v", where, err))
		}
		e, err := compile(env, "record", t.ProjectFilter, fieldTypes, "field")
		switch {
		case err != nil:
			errs = append(errs, fmt.Errorf("%s: %v", where, describeCompile(err)))
		case !acceptsKind(e.out, types.BoolKind):
			errs = append(errs, fmt.Errorf("%s: gives %s, want a bool: a filter is a condition such as record.active", where, typeName(e.out)))
		default:
			tf.projectFilter = e
		}
	}
	// A column read only by expressions that none uses is a mistake.
	used := map[string]bool{}
	for _, r := range tf.refs {
		used[r] = true
	}
	for _, col := range tf.reads {
		if !used[col] && len(errs) == 0 { // (a failed expression may be the one that uses it)
			errs = append(errs, fmt.Errorf("%s: maps to no field and no expression uses it: add field: <name>, use it in filter or computed, or remove it", at(fmt.Sprintf("column %q", col))))
		}
	}
	return errs
}

// describeCompile turns a compile error into the text of a config error.
func describeCompile(err error) string {
	var u *unknownError
	if errors.As(err, &u) && u.what == "column" {
		return u.Error() + ": declare the column under columns (for example " + u.names[0] + ": {type: string} reads it without mapping it to a field)"
	}
	if errors.As(err, &u) {
		return u.Error() + ": a projection filter reads the entity's fields"
	}
	return strings.TrimSpace(err.Error())
}

// typeName names a CEL type for a config error: a column's nullable
// string is "string", not "wrapper(string)".
func typeName(t *cel.Type) string {
	s := t.String()
	if inner, ok := strings.CutPrefix(s, "wrapper("); ok {
		return strings.TrimSuffix(inner, ")")
	}
	return s
}

// acceptsKind reports whether a result of type t fits one of kinds (dyn
// and null are checked when the expression runs).
func acceptsKind(t *cel.Type, kinds ...types.Kind) bool {
	switch t.Kind() {
	case types.DynKind, types.AnyKind, types.NullTypeKind:
		return true
	}
	for _, k := range kinds {
		if t.Kind() == k {
			return true
		}
	}
	return false
}

// columnOf returns the column mapped to field, or "".
func columnOf(t *Table, field string) string {
	for _, col := range t.mappedColumns() {
		if t.Columns[col] == field {
			return col
		}
	}
	return ""
}
