package crdt

import (
	"bytes"
	"encoding/binary"
	"errors"
	"math"
	"runtime"
	"slices"
	"sort"
	"testing"

	"pgregory.net/rapid"
)

// Generators of arbitrary (structurally valid) values, shared by the
// encoding and merge tests.

var genFloat64Bits = rapid.OneOf(
	rapid.Map(rapid.Float64(), math.Float64bits),
	rapid.Uint64(), // any bit pattern: NaNs with payloads, denormals, infinities
	rapid.SampledFrom([]uint64{
		math.Float64bits(math.NaN()), 0x7ff0000000000001, 0xfff8000000000000, // NaNs
		math.Float64bits(math.Inf(1)), math.Float64bits(math.Inf(-1)),
		0, 1 << 63, // +0, -0
	}),
)

// genScalar generates a non-tuple value of any kind, including null, empty strings and NaN floats.
var genScalar = rapid.Custom(func(t *rapid.T) Value {
	switch k := Kind(rapid.IntRange(int(KindNull), int(KindBytes)).Draw(t, "kind")); k {
	case KindNull:
		return Null
	case KindString:
		return String(rapid.OneOf(rapid.Just(""), rapid.String()).Draw(t, "string"))
	case KindInt:
		return Int(rapid.Int64().Draw(t, "int"))
	case KindFloat:
		return Value{kind: KindFloat, n: genFloat64Bits.Draw(t, "float")}
	case KindBool:
		return Bool(rapid.Bool().Draw(t, "bool"))
	case KindTimestamp:
		return TimestampMicros(rapid.Int64().Draw(t, "micros"))
	case KindDecimal:
		return Decimal(rapid.StringMatching(`-?[0-9]{1,20}(\.[0-9]{0,10})?`).Draw(t, "decimal"))
	case KindJSON:
		return JSON(rapid.SampledFrom([]string{`{}`, `null`, `[1,2]`, `{"a":"é"}`, `""`}).Draw(t, "json"))
	default:
		return Bytes(rapid.SliceOfN(rapid.Byte(), 0, 16).Draw(t, "bytes"))
	}
})

// genValue generates any value: a scalar or a tuple of scalars (tuples do not nest).
var genValue = rapid.OneOf(
	genScalar,
	rapid.Map(rapid.SliceOfN(genScalar, 0, 4), func(vs []Value) Value { return Tuple(vs...) }),
)

var genNodeName = rapid.OneOf(
	rapid.SampledFrom([]string{"a", "b", "c", "node-1", "node-2", "é"}),
	rapid.StringN(1, 6, -1),
)

var genVV = rapid.Custom(func(t *rapid.T) VV {
	m := rapid.MapOfN(genNodeName, rapid.OneOf(rapid.Uint64Range(1, 20), rapid.Uint64Min(1)), 0, 5).Draw(t, "vv")
	return MakeVV(m)
})

var genDot = rapid.Custom(func(t *rapid.T) Dot {
	return Dot{Node: genNodeName.Draw(t, "node"), Seq: rapid.OneOf(rapid.Uint64Range(1, 20), rapid.Uint64Min(1)).Draw(t, "seq")}
})

var genVersion = rapid.Custom(func(t *rapid.T) Version {
	v := Version{
		Value:  genValue.Draw(t, "value"),
		TS:     Timestamp(rapid.Uint64().Draw(t, "ts")),
		Origin: rapid.SampledFrom([]string{"", "api", "postgres:crm"}).Draw(t, "origin"),
		Dot:    genDot.Draw(t, "dot"),
		Ctx:    genVV.Draw(t, "ctx"),
	}
	if rapid.Bool().Draw(t, "captured") {
		v.Src = rapid.SampledFrom([]string{"_src:crm=L0000000001000000.00000001", "_src:x=T1"}).Draw(t, "src")
		for _, d := range rapid.SliceOfNDistinct(genDot, 0, 3, rapid.ID[Dot]).Draw(t, "also") {
			if d.Compare(v.Dot) > 0 {
				v.Also = append(v.Also, d)
			}
		}
		slices.SortFunc(v.Also, Dot.Compare)
	}
	return v
})

var genRecord = rapid.Custom(func(t *rapid.T) *Record {
	names := rapid.SliceOfNDistinct(rapid.OneOf(rapid.SampledFrom([]string{"", "_deleted", "name", "address"}), rapid.String()), 0, 4, rapid.ID[string]).Draw(t, "registers")
	sort.Strings(names)
	rec := &Record{Context: genVV.Draw(t, "context")}
	for _, n := range names {
		vs := rapid.SliceOfNDistinct(genVersion, 0, 4, func(v Version) Dot { return v.Dot }).Draw(t, "versions")
		slices.SortFunc(vs, func(a, b Version) int { return a.Dot.Compare(b.Dot) })
		rec.Registers = append(rec.Registers, Register{Name: n, Versions: vs, Past: genVV.Draw(t, "past")})
	}
	return rec
})

var genEdit = rapid.Custom(func(t *rapid.T) *Edit {
	e := &Edit{
		Entity: rapid.SampledFrom([]string{"", "contact", "order"}).Draw(t, "entity"),
		ID:     rapid.String().Draw(t, "id"),
		Dot:    genDot.Draw(t, "dot"),
		TS:     Timestamp(rapid.Uint64().Draw(t, "ts")),
		Origin: rapid.SampledFrom([]string{"", "api", "postgres:crm"}).Draw(t, "origin"),
	}
	names := rapid.SliceOfNDistinct(rapid.String(), 0, 4, rapid.ID[string]).Draw(t, "registers")
	sort.Strings(names)
	for _, n := range names {
		e.Writes = append(e.Writes, Write{Register: n, Value: genValue.Draw(t, "value"), Ctx: genVV.Draw(t, "ctx")})
	}
	return e
})

func appendVersionValue(b []byte, v Version) []byte { return AppendVersion(b, &v) }

// checkRoundTrip checks decode(encode(x)) re-encodes to the same bytes.
func checkRoundTrip[X any](t tb, x X, enc func([]byte, X) []byte, dec func([]byte) (X, error)) X {
	t.Helper()
	b := enc(nil, x)
	y, err := dec(b)
	if err != nil {
		t.Fatalf("decode(encode(%v)): %v", x, err)
	}
	if b2 := enc(nil, y); !bytes.Equal(b, b2) {
		t.Fatalf("round trip changed the encoding:\n%x\n%x", b, b2)
	}
	return y
}

func TestValueRoundTrip(t *testing.T) {
	rapid.Check(t, func(t *rapid.T) {
		v := genValue.Draw(t, "v")
		got := checkRoundTrip(t, v, AppendValue, DecodeValue)
		if !got.Equal(v) || got.Compare(v) != 0 {
			t.Fatalf("decode(encode(%v)) = %v", v, got)
		}
	})
}

func TestValueRoundTripSpecial(t *testing.T) {
	tests := []Value{
		Null, String(""), Bytes(nil), Bytes([]byte{0, 0xff}), Float(math.NaN()), Float(math.Copysign(0, -1)),
		Float(math.Inf(-1)), Int(math.MinInt64), Int(math.MaxInt64), TimestampMicros(-1), Bool(true), Bool(false),
		Decimal("-0.50"), JSON(`{"a":[1,null]}`), Tuple(), Tuple(Null, String("x"), Float(math.NaN())),
		String("\u00e9\u4e16\U0001f600"),
	}
	for _, v := range tests {
		t.Run(v.Kind().String()+":"+v.String(), func(t *testing.T) {
			got := checkRoundTrip(t, v, AppendValue, DecodeValue)
			if !got.Equal(v) {
				t.Fatalf("decode(encode(%v)) = %v", v, got)
			}
		})
	}
}

func TestVVRoundTrip(t *testing.T) {
	rapid.Check(t, func(t *rapid.T) {
		v := genVV.Draw(t, "vv")
		if got := checkRoundTrip(t, v, AppendVV, DecodeVV); !got.Equal(v) {
			t.Fatalf("decode(encode(%v)) = %v", v, got)
		}
		tok, err := DecodeToken(EncodeToken(v))
		if err != nil || !tok.Equal(v) {
			t.Fatalf("DecodeToken(EncodeToken(%v)) = %v, %v", v, tok, err)
		}
	})
}

func TestVersionRoundTrip(t *testing.T) {
	rapid.Check(t, func(t *rapid.T) {
		v := genVersion.Draw(t, "version")
		got := checkRoundTrip(t, v, appendVersionValue, DecodeVersion)
		if !got.Value.Equal(v.Value) || got.TS != v.TS || got.Origin != v.Origin || got.Dot != v.Dot || !got.Ctx.Equal(v.Ctx) {
			t.Fatalf("decode(encode(%+v)) = %+v", v, got)
		}
	})
}

func TestRecordRoundTrip(t *testing.T) {
	rapid.Check(t, func(t *rapid.T) {
		rec := genRecord.Draw(t, "record")
		got := checkRoundTrip(t, rec, AppendRecord, DecodeRecord)
		if !got.Context.Equal(rec.Context) || len(got.Registers) != len(rec.Registers) {
			t.Fatalf("decode(encode(record)) differs: %+v", got)
		}
		for i := range rec.Registers {
			r, g := &rec.Registers[i], &got.Registers[i]
			if r.Name != g.Name || len(r.Versions) != len(g.Versions) {
				t.Fatalf("register %d: got %q with %d versions, want %q with %d", i, g.Name, len(g.Versions), r.Name, len(r.Versions))
			}
			for j := range r.Versions {
				if !r.Versions[j].Value.Equal(g.Versions[j].Value) || r.Versions[j].Dot != g.Versions[j].Dot {
					t.Fatalf("register %q version %d differs", r.Name, j)
				}
			}
		}
	})
}

func TestEditRoundTrip(t *testing.T) {
	rapid.Check(t, func(t *rapid.T) {
		e := genEdit.Draw(t, "edit")
		got := checkRoundTrip(t, e, AppendEdit, DecodeEdit)
		if got.Entity != e.Entity || got.ID != e.ID || got.Dot != e.Dot || got.TS != e.TS || got.Origin != e.Origin || len(got.Writes) != len(e.Writes) {
			t.Fatalf("decode(encode(%+v)) = %+v", e, got)
		}
		for i := range e.Writes {
			if got.Writes[i].Register != e.Writes[i].Register || !got.Writes[i].Value.Equal(e.Writes[i].Value) || !got.Writes[i].Ctx.Equal(e.Writes[i].Ctx) {
				t.Fatalf("write %d: got %+v, want %+v", i, got.Writes[i], e.Writes[i])
			}
		}
	})
}

// TestDecodeRejects lists malformed encodings each decoder must refuse with ErrCorrupt.
func TestDecodeRejects(t *testing.T) {
	str := func(s string) []byte { return appendString(nil, s) }
	cat := func(bs ...[]byte) []byte { return bytes.Join(bs, nil) }
	tests := []struct {
		name string
		dec  func([]byte) error
		in   []byte
	}{
		{"value empty", decValue, nil},
		{"value unknown kind", decValue, []byte{byte(kindCount)}},
		{"value bool 2", decValue, []byte{byte(KindBool), 2}},
		{"value truncated float", decValue, []byte{byte(KindFloat), 1, 2, 3}},
		{"value string invalid UTF-8", decValue, cat([]byte{byte(KindString)}, str("\xff"))},
		{"value json invalid UTF-8", decValue, cat([]byte{byte(KindJSON)}, str("\xc3"))},
		{"value string length beyond input", decValue, []byte{byte(KindString), 5, 'a'}},
		{"value nested tuple", decValue, []byte{byte(KindTuple), 1, byte(KindTuple), 0}},
		{"value tuple count beyond input", decValue, []byte{byte(KindTuple), 0xff, 0xff, 0xff, 0xff, 0x0f}},
		{"value trailing bytes", decValue, []byte{byte(KindNull), 0}},
		{"value varint overflow", decValue, []byte{byte(KindInt), 0xff, 0xff, 0xff, 0xff, 0xff, 0xff, 0xff, 0xff, 0xff, 0x7f}},
		{"vv unsorted", decVV, cat([]byte{2}, str("b"), []byte{1}, str("a"), []byte{1})},
		{"vv duplicate", decVV, cat([]byte{2}, str("a"), []byte{1}, str("a"), []byte{2})},
		{"vv seq 0", decVV, cat([]byte{1}, str("a"), []byte{0})},
		{"vv empty node", decVV, cat([]byte{1}, str(""), []byte{1})},
		{"vv huge count", decVV, []byte{0xff, 0xff, 0xff, 0xff, 0xff, 0xff, 0xff, 0xff, 0xff, 0x01}},
		{"version zero dot", decVersion, cat([]byte{byte(KindNull), 1}, str("api"), str(""), []byte{0, 0})},
		{"record empty", decRecord, nil},
		{"record bad format", decRecord, []byte{3, 0, 0}},
		{"record format 0", decRecord, []byte{0, 0, 0}},
		{"version also without src", decVersion, cat([]byte{byte(KindNull), 1}, str("api"), str("a"), []byte{1, 0}, str(""), []byte{1}, str("b"), []byte{1})},
		{"version also own dot", decVersion, cat([]byte{byte(KindNull), 1}, str("api"), str("a"), []byte{1, 0}, str("s"), []byte{1}, str("a"), []byte{1})},
		{"version also below dot", decVersion, cat([]byte{byte(KindNull), 1}, str("api"), str("b"), []byte{1, 0}, str("s"), []byte{1}, str("a"), []byte{1})},
		{"version also unsorted", decVersion, cat([]byte{byte(KindNull), 1}, str("api"), str("a"), []byte{1, 0}, str("s"), []byte{2}, str("c"), []byte{1}, str("b"), []byte{1})},
		{"record unsorted registers", decRecord, cat([]byte{1, 0, 2}, str("b"), []byte{0}, str("a"), []byte{0})},
		{"record duplicate registers", decRecord, cat([]byte{1, 0, 2}, str("a"), []byte{0}, str("a"), []byte{0})},
		{"record unsorted versions", decRecord, cat([]byte{2, 0, 1}, str("r"), []byte{0, 2},
			AppendVersion(nil, &Version{Dot: Dot{"b", 1}}), AppendVersion(nil, &Version{Dot: Dot{"a", 1}}))},
		{"record duplicate versions", decRecord, cat([]byte{2, 0, 1}, str("r"), []byte{0, 2},
			AppendVersion(nil, &Version{Dot: Dot{"a", 1}}), AppendVersion(nil, &Version{Dot: Dot{"a", 1}}))},
		{"record truncated", decRecord, AppendRecord(nil, &Record{Registers: []Register{{Name: "r", Versions: []Version{{Dot: Dot{"a", 1}}}}}})[:8]},
		{"edit unsorted writes", decEdit, AppendEdit(nil, &Edit{Dot: Dot{"a", 1}, Writes: []Write{{Register: "b"}, {Register: "a"}}})},
		{"edit zero dot", decEdit, AppendEdit(nil, &Edit{})},
		{"token wrong magic", decToken, []byte{'X', 1, 0}},
		{"token short", decToken, []byte{'L'}},
		{"token bad vv", decToken, []byte{'L', 1, 1}},
	}
	for _, tt := range tests {
		t.Run(tt.name, func(t *testing.T) {
			if err := tt.dec(tt.in); !errors.Is(err, ErrCorrupt) {
				t.Fatalf("decode(%x) error = %v, want ErrCorrupt", tt.in, err)
			}
		})
	}
}

// TestDecodeFormat1 reads what stores wrote before copies of a source
// change folded: records without past and versions without src and also.
func TestDecodeFormat1(t *testing.T) {
	str := func(s string) []byte { return appendString(nil, s) }
	cat := func(bs ...[]byte) []byte { return bytes.Join(bs, nil) }
	v1 := cat([]byte{byte(KindString)}, str("x"), []byte{7}, str("api"), str("a"), []byte{3, 1}, str("a"), []byte{2})
	v, err := DecodeVersion(v1)
	if err != nil {
		t.Fatalf("format 1 version: %v", err)
	}
	want := Version{Value: String("x"), TS: 7, Origin: "api", Dot: Dot{"a", 3}, Ctx: VV{{"a", 2}}}
	if !v.Equal(&want) {
		t.Fatalf("format 1 version = %+v, want %+v", v, want)
	}
	rec, err := DecodeRecord(cat([]byte{1, 0, 1}, str("name"), []byte{1}, v1))
	if err != nil {
		t.Fatalf("format 1 record: %v", err)
	}
	if len(rec.Registers) != 1 || len(rec.Registers[0].Versions) != 1 || !rec.Registers[0].Versions[0].Equal(&want) {
		t.Fatalf("format 1 record = %+v", rec)
	}
	if b := AppendRecord(nil, rec); b[0] != formatV2 {
		t.Fatalf("re-encoded record has format %d, want %d", b[0], formatV2)
	}
}

func decValue(b []byte) error   { _, err := DecodeValue(b); return err }
func decVV(b []byte) error      { _, err := DecodeVV(b); return err }
func decVersion(b []byte) error { _, err := DecodeVersion(b); return err }
func decRecord(b []byte) error  { _, err := DecodeRecord(b); return err }
func decEdit(b []byte) error    { _, err := DecodeEdit(b); return err }
func decToken(b []byte) error   { _, err := DecodeToken(b); return err }

// checkFixedPoint checks a decoder on arbitrary input: it never panics;
// failures wrap ErrCorrupt; on success encode(decode(b)) decodes and
// re-encodes to itself.
func checkFixedPoint[X any](t *testing.T, b []byte, dec func([]byte) (X, error), enc func([]byte, X) []byte) {
	t.Helper()
	x, err := dec(b)
	if err != nil {
		if !errors.Is(err, ErrCorrupt) {
			t.Fatalf("decode(%x): error %v does not wrap ErrCorrupt", b, err)
		}
		return
	}
	b1 := enc(nil, x)
	y, err := dec(b1)
	if err != nil {
		t.Fatalf("decode(%x) succeeded but its re-encoding %x fails: %v", b, b1, err)
	}
	if b2 := enc(nil, y); !bytes.Equal(b1, b2) {
		t.Fatalf("encode(decode(b)) is not a fixed point:\nb  = %x\nb1 = %x\nb2 = %x", b, b1, b2)
	}
}

// seeds adds n encodings of generated values (rapid examples are deterministic per seed).
func seeds[X any](f *testing.F, g *rapid.Generator[X], enc func([]byte, X) []byte, extra ...[]byte) {
	for i := 0; i < 8; i++ {
		f.Add(enc(nil, g.Example(i)))
	}
	for _, b := range extra {
		f.Add(b)
	}
	f.Add([]byte{})
}

func FuzzDecodeValue(f *testing.F) {
	seeds(f, genValue, AppendValue, AppendValue(nil, Float(math.NaN())), AppendValue(nil, Tuple(String(""), Null)))
	f.Fuzz(func(t *testing.T, b []byte) { checkFixedPoint(t, b, DecodeValue, AppendValue) })
}

func FuzzDecodeVV(f *testing.F) {
	seeds(f, genVV, AppendVV, AppendVV(nil, VV{{"a", 1}, {"b", 1 << 40}}))
	f.Fuzz(func(t *testing.T, b []byte) { checkFixedPoint(t, b, DecodeVV, AppendVV) })
}

func FuzzDecodeVersion(f *testing.F) {
	seeds(f, genVersion, appendVersionValue)
	f.Fuzz(func(t *testing.T, b []byte) { checkFixedPoint(t, b, DecodeVersion, appendVersionValue) })
}

func FuzzDecodeRecord(f *testing.F) {
	seeds(f, genRecord, AppendRecord, AppendRecord(nil, sampleRecord(10)))
	f.Fuzz(func(t *testing.T, b []byte) { checkFixedPoint(t, b, DecodeRecord, AppendRecord) })
}

func FuzzDecodeEdit(f *testing.F) {
	seeds(f, genEdit, AppendEdit)
	f.Fuzz(func(t *testing.T, b []byte) { checkFixedPoint(t, b, DecodeEdit, AppendEdit) })
}

func FuzzDecodeToken(f *testing.F) {
	seeds(f, genVV, func(b []byte, v VV) []byte { return append(b, EncodeToken(v)...) })
	f.Fuzz(func(t *testing.T, b []byte) {
		checkFixedPoint(t, b, DecodeToken, func(b []byte, v VV) []byte { return append(b, EncodeToken(v)...) })
	})
}

// sampleRecord builds a record with n fields, each with a live version and
// a conflicting one, as a node would hold after a concurrent edit.
func sampleRecord(n int) *Record {
	rec := &Record{}
	names := make([]string, n)
	for i := range names {
		names[i] = string(rune('a'+i)) + "_field"
	}
	sort.Strings(names)
	for i, name := range names {
		rec.Registers = append(rec.Registers, Register{Name: name, Versions: []Version{
			{Value: String("value of " + name), TS: MakeTimestamp(1_700_000_000_000+int64(i), 0), Origin: "api",
				Dot: Dot{"node-1", uint64(10 + i)}, Ctx: VV{{"node-1", uint64(9 + i)}, {"node-2", 4}}},
			{Value: Int(int64(i) * 1000), TS: MakeTimestamp(1_700_000_000_000+int64(i), 1), Origin: "postgres:crm",
				Dot: Dot{"node-2", uint64(5 + i)}, Ctx: VV{{"node-1", uint64(8 + i)}, {"node-2", 4}}},
		}})
		rec.Context = rec.Context.Join(VV{{"node-1", uint64(10 + i)}, {"node-2", uint64(5 + i)}})
	}
	return rec
}

// TestDecodeAllocationBounded checks that a decoder never trusts a count
// before reading the bytes it covers (encoding.go): each input declares a
// large element count that the rest of the input can hold (so the count
// check passes) and is corrupt right after, so decoding must fail having
// allocated little beyond the input itself.
func TestDecodeAllocationBounded(t *testing.T) {
	const size = 1 << 20
	filler := func(b []byte, c byte) []byte { return append(b, bytes.Repeat([]byte{c}, size)...) }
	tests := []struct {
		name string
		dec  func([]byte) error
		in   []byte
	}{
		// tuple of 1M members, the first of unknown kind 0xff
		{"value tuple", decValue, filler(binary.AppendUvarint([]byte{byte(KindTuple)}, size), 0xff)},
		// version vector of 512K entries, the first with a truncated node
		{"vv", decVV, filler(binary.AppendUvarint(nil, size/2), 0xff)},
		// record with 512K registers: two empty registers named "" are unsorted
		{"record registers", decRecord, filler(binary.AppendUvarint([]byte{formatV1, 0}, size/2), 0)},
		// record with one register of 170K versions, the first of unknown kind
		{"record versions", decRecord, filler(binary.AppendUvarint([]byte{formatV1, 0, 1, 0}, size/6), 0xff)},
		// edit with 340K writes, the first with a truncated register name
		{"edit writes", decEdit, filler(binary.AppendUvarint([]byte{formatV1, 0, 0, 1, 'a', 1, 0, 0}, size/3), 0xff)},
	}
	for _, tt := range tests {
		t.Run(tt.name, func(t *testing.T) {
			var before, after runtime.MemStats
			runtime.GC()
			runtime.ReadMemStats(&before)
			err := tt.dec(tt.in)
			runtime.ReadMemStats(&after)
			if !errors.Is(err, ErrCorrupt) {
				t.Fatalf("decode: %v, want ErrCorrupt", err)
			}
			alloc := after.TotalAlloc - before.TotalAlloc
			if alloc > uint64(len(tt.in))+64<<10 {
				t.Errorf("decoding %d corrupt bytes allocated %d bytes (%.0fx the input): a declared count was trusted before its elements were read",
					len(tt.in), alloc, float64(alloc)/float64(len(tt.in)))
			}
		})
	}
}
