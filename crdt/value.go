package crdt

import (
	"bytes"
	"fmt"
	"math"
	"strings"
)

// Kind is the runtime kind of a Value. It mirrors Type, plus Null and Tuple.
type Kind uint8

// Value kinds. KindTuple holds the member values of a field group in the
// group's declared member order.
const (
	KindNull Kind = iota
	KindString
	KindInt
	KindFloat
	KindBool
	KindTimestamp
	KindDecimal
	KindJSON
	KindBytes
	KindTuple
	kindCount
)

// Value is an immutable typed value, or null. The zero Value is null.
//
// Storage per kind: String, Decimal (canonical decimal text), JSON (raw JSON
// text) and Bytes use s; Int, Bool (0/1), Timestamp (microseconds since the
// Unix epoch) and Float (IEEE bits) use n; Tuple uses t.
type Value struct {
	kind Kind
	n    uint64
	s    string
	t    []Value
}

// Null is the null value.
var Null = Value{}

// String returns a string value.
func String(s string) Value { return Value{kind: KindString, s: s} }

// Int returns an int value.
func Int(i int64) Value { return Value{kind: KindInt, n: uint64(i)} }

// Float returns a float value.
func Float(f float64) Value { return Value{kind: KindFloat, n: math.Float64bits(f)} }

// Bool returns a bool value.
func Bool(b bool) Value {
	if b {
		return Value{kind: KindBool, n: 1}
	}
	return Value{kind: KindBool}
}

// TimestampMicros returns a timestamp value from microseconds since the Unix epoch.
func TimestampMicros(us int64) Value { return Value{kind: KindTimestamp, n: uint64(us)} }

// Decimal returns a decimal value from its text. Callers validate the text (see ParseDecimal).
func Decimal(s string) Value { return Value{kind: KindDecimal, s: s} }

// JSON returns a json value holding raw JSON text. Callers validate it.
func JSON(s string) Value { return Value{kind: KindJSON, s: s} }

// Bytes returns a bytes value.
func Bytes(b []byte) Value { return Value{kind: KindBytes, s: string(b)} }

// Tuple returns a tuple of group member values.
func Tuple(vs ...Value) Value { return Value{kind: KindTuple, t: vs} }

// Kind returns the value's kind.
func (v Value) Kind() Kind { return v.kind }

// IsNull reports whether v is null.
func (v Value) IsNull() bool { return v.kind == KindNull }

// Str returns the text of a String, Decimal or JSON value, or the bytes of a Bytes value.
func (v Value) Str() string { return v.s }

// Int64 returns the integer of an Int value or the microseconds of a Timestamp value.
func (v Value) Int64() int64 { return int64(v.n) }

// Float64 returns the number of a Float value.
func (v Value) Float64() float64 { return math.Float64frombits(v.n) }

// BoolValue returns the boolean of a Bool value.
func (v Value) BoolValue() bool { return v.n != 0 }

// Members returns the member values of a Tuple.
func (v Value) Members() []Value { return v.t }

// Size is the approximate encoded size of v, used to enforce value limits.
func (v Value) Size() int {
	n := 1 + len(v.s) + 8
	for _, m := range v.t {
		n += m.Size()
	}
	return n
}

// Equal reports whether two values are identical (same kind and same bits).
func (v Value) Equal(w Value) bool {
	if v.kind != w.kind || v.n != w.n || v.s != w.s || len(v.t) != len(w.t) {
		return false
	}
	for i := range v.t {
		if !v.t[i].Equal(w.t[i]) {
			return false
		}
	}
	return true
}

// Compare orders values totally: by kind, then by content. It is used only
// to make tie-breaks deterministic, not as a domain ordering.
func (v Value) Compare(w Value) int {
	if v.kind != w.kind {
		if v.kind < w.kind {
			return -1
		}
		return 1
	}
	if v.n != w.n {
		if v.n < w.n {
			return -1
		}
		return 1
	}
	if c := strings.Compare(v.s, w.s); c != 0 {
		return c
	}
	for i := 0; i < len(v.t) && i < len(w.t); i++ {
		if c := v.t[i].Compare(w.t[i]); c != 0 {
			return c
		}
	}
	return len(v.t) - len(w.t)
}

// Conforms reports whether v can be stored in a field of type t (null always can).
func (v Value) Conforms(t Type) bool {
	if v.kind == KindNull {
		return true
	}
	switch t {
	case TypeString:
		return v.kind == KindString
	case TypeInt:
		return v.kind == KindInt
	case TypeFloat:
		return v.kind == KindFloat
	case TypeBool:
		return v.kind == KindBool
	case TypeTimestamp:
		return v.kind == KindTimestamp
	case TypeDecimal:
		return v.kind == KindDecimal
	case TypeJSON:
		return v.kind == KindJSON
	case TypeBytes:
		return v.kind == KindBytes
	}
	return false
}

var kindNames = [...]string{"null", "string", "int", "float", "bool", "timestamp", "decimal", "json", "bytes", "tuple"}

func (k Kind) String() string {
	if int(k) < len(kindNames) {
		return kindNames[k]
	}
	return fmt.Sprintf("kind(%d)", uint8(k))
}

// String renders the value for humans.
func (v Value) String() string {
	switch v.kind {
	case KindNull:
		return "null"
	case KindString, KindDecimal, KindJSON:
		return v.s
	case KindInt:
		return fmt.Sprint(int64(v.n))
	case KindFloat:
		return fmt.Sprint(v.Float64())
	case KindBool:
		return fmt.Sprint(v.n != 0)
	case KindTimestamp:
		return fmt.Sprintf("%dus", int64(v.n))
	case KindBytes:
		return fmt.Sprintf("%x", v.s)
	case KindTuple:
		var b bytes.Buffer
		b.WriteByte('(')
		for i, m := range v.t {
			if i > 0 {
				b.WriteString(", ")
			}
			b.WriteString(m.String())
		}
		b.WriteByte(')')
		return b.String()
	}
	return "?"
}

// ParseDecimal checks that s is a decimal number: an optional sign, digits
// with at most one point, no exponent. It returns the canonical text.
func ParseDecimal(s string) (string, error) {
	if s == "" {
		return "", fmt.Errorf("empty decimal")
	}
	body := s
	if body[0] == '-' || body[0] == '+' {
		body = body[1:]
	}
	digits, point := 0, false
	for i := 0; i < len(body); i++ {
		switch c := body[i]; {
		case c >= '0' && c <= '9':
			digits++
		case c == '.' && !point:
			point = true
		default:
			return "", fmt.Errorf("invalid decimal %q: want digits with an optional sign and decimal point", s)
		}
	}
	if digits == 0 {
		return "", fmt.Errorf("invalid decimal %q: no digits", s)
	}
	return strings.TrimPrefix(s, "+"), nil
}
