package crdt

import (
	"bytes"
	"encoding/binary"
	"errors"
	"fmt"
	"unsafe"

	"unicode/utf8"
)

// Binary encodings. Every encoder is deterministic (equal states encode to
// equal bytes, which is what "byte-identical state" across nodes compares),
// and every decoder validates what it reads: arbitrary bytes give an error,
// never a panic; a decoder never trusts a count before reading the bytes it
// covers, so its allocations grow with what it actually decoded (at most a
// small constant factor of the input), never with a count an attacker wrote.
//
//	value    = kind:byte payload
//	           string/decimal/json/bytes: uvarint len, bytes
//	           int/timestamp: zigzag varint; float: 8 bytes big-endian; bool: 0|1
//	           tuple: uvarint n, n values (no nested tuples); null: nothing
//	vv       = uvarint n, n × (string node, uvarint seq)   sorted, unique, seq > 0
//	dot      = string node, uvarint seq
//	version  = value, uvarint ts, string origin, dot, vv ctx, string src,
//	           uvarint n, n × dot also                        also sorted, unique, none = dot
//	register = string name, vv past, uvarint n, n × version  sorted by dot
//	record   = 0x02, vv context, uvarint n, n × register     sorted by name
//
// Format 1 records (written before copies of a source change folded) have
// registers without past and versions without src and also; they still
// decode. A version alone (a history value) ends after ctx in format 1.
//	edit     = 0x01, string entity, string id, dot, uvarint ts, string origin,
//	           uvarint n, n × (string register, value, vv ctx)   sorted by register

// ErrCorrupt is returned (wrapped) by every decoder for malformed input.
var ErrCorrupt = errors.New("corrupt encoding")

const (
	formatV1 = 1
	formatV2 = 2
)

// AppendValue appends the encoding of v.
func AppendValue(b []byte, v Value) []byte {
	b = append(b, byte(v.kind))
	switch v.kind {
	case KindString, KindDecimal, KindJSON, KindBytes:
		b = appendString(b, v.s)
	case KindInt, KindTimestamp:
		b = binary.AppendVarint(b, int64(v.n))
	case KindFloat:
		b = binary.BigEndian.AppendUint64(b, v.n)
	case KindBool:
		b = append(b, byte(v.n))
	case KindTuple:
		b = binary.AppendUvarint(b, uint64(len(v.t)))
		for _, m := range v.t {
			b = AppendValue(b, m)
		}
	}
	return b
}

// AppendVV appends the encoding of a version vector.
func AppendVV(b []byte, v VV) []byte {
	b = binary.AppendUvarint(b, uint64(len(v)))
	for _, e := range v {
		b = appendString(b, e.Node)
		b = binary.AppendUvarint(b, e.Seq)
	}
	return b
}

// AppendVersion appends the encoding of a version.
func AppendVersion(b []byte, v *Version) []byte {
	b = AppendValue(b, v.Value)
	b = binary.AppendUvarint(b, uint64(v.TS))
	b = appendString(b, v.Origin)
	b = appendString(b, v.Dot.Node)
	b = binary.AppendUvarint(b, v.Dot.Seq)
	b = AppendVV(b, v.Ctx)
	b = appendString(b, v.Src)
	b = binary.AppendUvarint(b, uint64(len(v.Also)))
	for _, d := range v.Also {
		b = appendString(b, d.Node)
		b = binary.AppendUvarint(b, d.Seq)
	}
	return b
}

// AppendRecord appends the encoding of a record state.
func AppendRecord(b []byte, rec *Record) []byte {
	b = append(b, formatV2)
	b = AppendVV(b, rec.Context)
	b = binary.AppendUvarint(b, uint64(len(rec.Registers)))
	for i := range rec.Registers {
		r := &rec.Registers[i]
		b = appendString(b, r.Name)
		b = AppendVV(b, r.Past)
		b = binary.AppendUvarint(b, uint64(len(r.Versions)))
		for j := range r.Versions {
			b = AppendVersion(b, &r.Versions[j])
		}
	}
	return b
}

// AppendEdit appends the encoding of an edit.
func AppendEdit(b []byte, e *Edit) []byte {
	b = append(b, formatV1)
	b = appendString(b, e.Entity)
	b = appendString(b, e.ID)
	b = appendString(b, e.Dot.Node)
	b = binary.AppendUvarint(b, e.Dot.Seq)
	b = binary.AppendUvarint(b, uint64(e.TS))
	b = appendString(b, e.Origin)
	b = binary.AppendUvarint(b, uint64(len(e.Writes)))
	for i := range e.Writes {
		w := &e.Writes[i]
		b = appendString(b, w.Register)
		b = AppendValue(b, w.Value)
		b = AppendVV(b, w.Ctx)
	}
	return b
}

func appendString(b []byte, s string) []byte {
	b = binary.AppendUvarint(b, uint64(len(s)))
	return append(b, s...)
}

// decoder reads from b; the first error sticks and later reads return zero values.
type decoder struct {
	b      []byte
	err    error
	shared bool // b is a private copy: strings may alias it
}

// ownedDecoder copies b once so decoded strings can alias the copy.
func ownedDecoder(b []byte) decoder {
	return decoder{b: bytes.Clone(b), shared: true}
}

func (d *decoder) fail(format string, args ...any) {
	if d.err == nil {
		d.err = fmt.Errorf("%w: %s", ErrCorrupt, fmt.Sprintf(format, args...))
	}
}

func (d *decoder) byte1(what string) byte {
	if d.err != nil {
		return 0
	}
	if len(d.b) == 0 {
		d.fail("truncated %s", what)
		return 0
	}
	c := d.b[0]
	d.b = d.b[1:]
	return c
}

func (d *decoder) uvarint(what string) uint64 {
	if d.err != nil {
		return 0
	}
	x, n := binary.Uvarint(d.b)
	if n <= 0 {
		d.fail("bad %s", what)
		return 0
	}
	d.b = d.b[n:]
	return x
}

func (d *decoder) varint(what string) int64 {
	if d.err != nil {
		return 0
	}
	x, n := binary.Varint(d.b)
	if n <= 0 {
		d.fail("bad %s", what)
		return 0
	}
	d.b = d.b[n:]
	return x
}

// prealloc bounds the capacity decoders reserve up front; larger slices grow
// as elements are actually decoded.
func prealloc(n int) int { return min(n, 16) }

// count reads an element count; each element takes at least min bytes, so a
// count larger than the rest of the input is corrupt (and never allocated).
func (d *decoder) count(what string, min int) int {
	n := d.uvarint(what)
	if d.err == nil && n > uint64(len(d.b)/min) {
		d.fail("%s count %d exceeds input", what, n)
		return 0
	}
	return int(n)
}

func (d *decoder) str(what string) string {
	n := d.uvarint(what)
	if d.err != nil {
		return ""
	}
	if n > uint64(len(d.b)) {
		d.fail("truncated %s", what)
		return ""
	}
	var s string
	switch {
	case n == 0:
	case d.shared:
		// The decoder owns a private copy of the input that nothing
		// modifies: strings can point into it instead of each allocating.
		s = unsafe.String(&d.b[0], int(n))
	default:
		s = string(d.b[:n])
	}
	d.b = d.b[n:]
	return s
}

func (d *decoder) value(depth int) Value {
	k := Kind(d.byte1("value kind"))
	if d.err != nil {
		return Value{}
	}
	switch k {
	case KindNull:
		return Value{}
	case KindString, KindDecimal, KindJSON:
		s := d.str("value")
		if d.err == nil && !utf8.ValidString(s) {
			d.fail("%s value is not valid UTF-8", k)
		}
		return Value{kind: k, s: s}
	case KindBytes:
		return Value{kind: k, s: d.str("value")}
	case KindInt, KindTimestamp:
		return Value{kind: k, n: uint64(d.varint("integer value"))}
	case KindFloat:
		if len(d.b) < 8 {
			d.fail("truncated float")
			return Value{}
		}
		n := binary.BigEndian.Uint64(d.b)
		d.b = d.b[8:]
		return Value{kind: k, n: n}
	case KindBool:
		c := d.byte1("bool")
		if c > 1 {
			d.fail("bool byte %d", c)
		}
		return Value{kind: k, n: uint64(c)}
	case KindTuple:
		if depth > 0 {
			d.fail("nested tuple")
			return Value{}
		}
		n := d.count("tuple", 1)
		t := make([]Value, 0, prealloc(n))
		for i := 0; i < n && d.err == nil; i++ {
			t = append(t, d.value(depth+1))
		}
		return Value{kind: k, t: t}
	}
	d.fail("unknown value kind %d", k)
	return Value{}
}

func (d *decoder) vv() VV {
	n := d.count("version vector", 2)
	if n == 0 {
		return nil
	}
	v := make(VV, 0, prealloc(n))
	for i := 0; i < n && d.err == nil; i++ {
		v = append(v, VVEntry{Node: d.str("vv node"), Seq: d.uvarint("vv seq")})
	}
	if d.err == nil {
		if err := v.Valid(); err != nil {
			d.fail("%v", err)
		}
	}
	return v
}

func (d *decoder) dot() Dot {
	dot := Dot{Node: d.str("dot node"), Seq: d.uvarint("dot seq")}
	if d.err == nil && (dot.Node == "" || dot.Seq == 0) {
		d.fail("invalid dot %s", dot)
	}
	return dot
}

// version decodes a version; tail says whether src and also follow.
func (d *decoder) version(tail bool) Version {
	var v Version
	v.Value = d.value(0)
	v.TS = Timestamp(d.uvarint("timestamp"))
	v.Origin = d.str("origin")
	v.Dot = d.dot()
	v.Ctx = d.vv()
	if tail {
		d.versionTail(&v)
	}
	return v
}

// versionTail decodes what format 2 adds to a version: src and also.
func (d *decoder) versionTail(v *Version) {
	if d.err != nil {
		return
	}
	v.Src = d.str("src")
	n := d.count("also", 2)
	for i := 0; i < n && d.err == nil; i++ {
		a := d.dot()
		switch {
		case d.err != nil:
		case a == v.Dot:
			d.fail("version %s lists its own dot in also", v.Dot)
		case a.Compare(v.Dot) < 0:
			d.fail("version %s: also dot %s is below the version's dot", v.Dot, a)
		case i > 0 && v.Also[i-1].Compare(a) >= 0:
			d.fail("version %s: also dots not sorted and unique at %s", v.Dot, a)
		}
		v.Also = append(v.Also, a)
	}
	if d.err == nil && len(v.Also) > 0 && v.Src == "" {
		d.fail("version %s folds copies but names no source change", v.Dot)
	}
}

// format reads the format byte of a record or an edit and returns it.
func (d *decoder) format(max byte) byte {
	f := d.byte1("format")
	if d.err == nil && (f < formatV1 || f > max) {
		d.fail("unknown format version %d", f)
	}
	return f
}

func (d *decoder) done(what string) error {
	if d.err == nil && len(d.b) != 0 {
		d.fail("%d trailing bytes after %s", len(d.b), what)
	}
	return d.err
}

// DecodeValue decodes a value encoded by AppendValue.
func DecodeValue(b []byte) (Value, error) {
	d := decoder{b: b}
	v := d.value(0)
	return v, d.done("value")
}

// DecodeVV decodes a version vector encoded by AppendVV.
func DecodeVV(b []byte) (VV, error) {
	d := decoder{b: b}
	v := d.vv()
	return v, d.done("version vector")
}

// DecodeVersion decodes a version encoded by AppendVersion.
func DecodeVersion(b []byte) (Version, error) {
	d := ownedDecoder(b)
	v := d.version(false)
	if len(d.b) > 0 {
		// Format 2: src and also follow (a format 1 value ends after ctx).
		d.versionTail(&v)
	}
	return v, d.done("version")
}

// DecodeRecord decodes a record state encoded by AppendRecord.
func DecodeRecord(b []byte) (*Record, error) {
	d := ownedDecoder(b)
	f := d.format(formatV2)
	rec := &Record{Context: d.vv()}
	n := d.count("registers", 2)
	if n > 0 {
		rec.Registers = make([]Register, 0, prealloc(n))
	}
	for i := 0; i < n && d.err == nil; i++ {
		r := Register{Name: d.str("register name")}
		if f >= formatV2 {
			r.Past = d.vv()
		}
		m := d.count("versions", 6)
		if m > 0 {
			r.Versions = make([]Version, 0, prealloc(m))
		}
		for j := 0; j < m && d.err == nil; j++ {
			v := d.version(f >= formatV2)
			if d.err == nil && j > 0 && r.Versions[j-1].Dot.Compare(v.Dot) >= 0 {
				d.fail("register %q versions not sorted by dot", r.Name)
			}
			r.Versions = append(r.Versions, v)
		}
		if d.err == nil && i > 0 && rec.Registers[i-1].Name >= r.Name {
			d.fail("registers not sorted at %q", r.Name)
		}
		rec.Registers = append(rec.Registers, r)
	}
	if err := d.done("record"); err != nil {
		return nil, err
	}
	return rec, nil
}

// DecodeEdit decodes an edit encoded by AppendEdit.
func DecodeEdit(b []byte) (*Edit, error) {
	d := ownedDecoder(b)
	d.format(formatV1)
	e := &Edit{Entity: d.str("entity"), ID: d.str("id")}
	e.Dot = d.dot()
	e.TS = Timestamp(d.uvarint("timestamp"))
	e.Origin = d.str("origin")
	n := d.count("writes", 3)
	if n > 0 {
		e.Writes = make([]Write, 0, prealloc(n))
	}
	for i := 0; i < n && d.err == nil; i++ {
		w := Write{Register: d.str("register"), Value: d.value(0), Ctx: d.vv()}
		if d.err == nil && i > 0 && e.Writes[i-1].Register >= w.Register {
			d.fail("writes not sorted at %q", w.Register)
		}
		e.Writes = append(e.Writes, w)
	}
	if err := d.done("edit"); err != nil {
		return nil, err
	}
	return e, nil
}

// EncodeToken renders a record context as an opaque token for clients.
func EncodeToken(v VV) []byte { return AppendVV([]byte{'L', formatV1}, v) }

// DecodeToken parses a token made by EncodeToken.
func DecodeToken(b []byte) (VV, error) {
	if len(b) < 2 || b[0] != 'L' || b[1] != formatV1 {
		return nil, fmt.Errorf("%w: not a lattice context token", ErrCorrupt)
	}
	return DecodeVV(b[2:])
}
