package postgres

import (
	"encoding/json"
	"errors"
	"io"
	"log/slog"
	"os"
	"strings"
	"testing"
	"time"

	"pgregory.net/rapid"

	"github.com/lattice-sync/lattice/crdt"
)

const transformSchemaYAML = `entities:
  person:
    fields:
      name: string
      full_name: string
      email: string
      age: int
      score: float
      active: bool
      joined: timestamp
      seen: timestamp
      balance: decimal
      extra: json
      avatar: bytes
`

type fixedSchema struct{ s *crdt.Schema }

func (f fixedSchema) Schema() *crdt.Schema { return f.s }

func testSchema(tb testing.TB) *crdt.Schema {
	tb.Helper()
	s, err := crdt.ParseSchema("schema.yaml", []byte(transformSchemaYAML))
	if err != nil {
		tb.Fatal(err)
	}
	return s
}

// conv builds a column's conversion the way ParseConfig does; entry is the
// column's YAML value (a field name or a mapping).
func conv(tb testing.TB, entry any) *conversion {
	tb.Helper()
	cv, err := convErr(tb, entry)
	if err != nil {
		tb.Fatal(err)
	}
	return cv
}

func convErr(tb testing.TB, entry any) (*conversion, error) {
	tb.Helper()
	b, err := json.Marshal(entry)
	if err != nil {
		tb.Fatal(err)
	}
	rc, err := parseColumnEntry(b)
	if err != nil {
		return nil, err
	}
	ent, _ := testSchema(tb).Entity("person")
	return rc.conversion(ent)
}

func us(s string) crdt.Value {
	ts, err := time.Parse(time.RFC3339Nano, s)
	if err != nil {
		panic(err)
	}
	return crdt.TimestampMicros(ts.UnixMicro())
}

type m = map[string]any

var yn = m{"field": "active", "true_values": []any{"Y", "y"}, "false_values": []any{"N", "n"}}

func TestConversionDecode(t *testing.T) {
	cases := []struct {
		name    string
		entry   any
		in      string
		want    crdt.Value
		wantErr string // substring of the error; the bad value is always in it
	}{
		{"text to string", "name", "Ann", crdt.String("Ann"), ""},
		{"text to int", "age", "42", crdt.Int(42), ""},
		{"text to int, spaces", "age", " 42 ", crdt.Int(42), ""},
		{"text to int, bad", "age", "forty", crdt.Value{}, `"forty" is not an integer`},
		{"text to float", "score", "2.5", crdt.Float(2.5), ""},
		{"text to float, bad", "score", "2,5", crdt.Value{}, `"2,5" is not a number`},
		{"text to bool, default", "active", "t", crdt.Bool(true), ""},
		{"text to bool, default false", "active", "false", crdt.Bool(false), ""},
		{"text to bool, default bad", "active", "Y", crdt.Value{}, `"Y" is not a boolean`},
		{"Y/N true", yn, "Y", crdt.Bool(true), ""},
		{"Y/N lower false", yn, "n", crdt.Bool(false), ""},
		{"Y/N char padding", yn, "N ", crdt.Bool(false), ""},
		{"Y/N bad", yn, "X", crdt.Value{}, `"X" is neither a true value ("Y", "y") nor a false value ("N", "n")`},
		{"1/0 from numbers", m{"field": "active", "true_values": []any{1}, "false_values": []any{0}}, "1", crdt.Bool(true), ""},
		{"1/0 bad", m{"field": "active", "true_values": []any{1}, "false_values": []any{0}}, "2", crdt.Value{}, `"2" is neither`},
		{"text to decimal", m{"field": "balance", "type": "decimal"}, "12.50", crdt.Decimal("12.50"), ""},
		{"text to decimal, bad", "balance", "12.5.0", crdt.Value{}, `"12.5.0" is not a decimal number`},
		{"timestamptz", "joined", "2024-03-01 10:20:30.5+01", us("2024-03-01T09:20:30.5Z"), ""},
		{"timestamp without zone is UTC", "joined", "2024-03-01 10:20:30", us("2024-03-01T10:20:30Z"), ""},
		{"date column", "joined", "2024-03-01", us("2024-03-01T00:00:00Z"), ""},
		{"timestamp bad", "joined", "yesterday", crdt.Value{}, `"yesterday" is not a timestamp`},
		{"timestamp with timezone option", m{"field": "joined", "timezone": "Europe/Paris"}, "2024-03-01 10:20:30", us("2024-03-01T09:20:30Z"), ""},
		{"strftime", m{"field": "joined", "format": "%d/%m/%Y %H:%M"}, "01/03/2024 10:20", us("2024-03-01T10:20:00Z"), ""},
		{"strftime in a zone", m{"field": "joined", "format": "%d/%m/%Y %H:%M", "timezone": "America/New_York"}, "01/03/2024 10:20", us("2024-03-01T15:20:00Z"), ""},
		{"Go layout", m{"field": "joined", "format": "02.01.2006"}, "01.03.2024", us("2024-03-01T00:00:00Z"), ""},
		{"layout mismatch", m{"field": "joined", "format": "02.01.2006"}, "2024-03-01", crdt.Value{}, `"2024-03-01" does not match the format "02.01.2006"`},
		{"rfc3339", m{"field": "joined", "format": "rfc3339"}, "2024-03-01T10:20:30.123Z", us("2024-03-01T10:20:30.123Z"), ""},
		{"unix seconds", m{"field": "seen", "format": "unix"}, "1709288430", us("2024-03-01T10:20:30Z"), ""},
		{"unix millis", m{"field": "seen", "format": "unix_ms"}, "1709288430123", us("2024-03-01T10:20:30.123Z"), ""},
		{"unix micros", m{"field": "seen", "format": "unix_us"}, "-1", us("1969-12-31T23:59:59.999999Z"), ""},
		{"unix bad", m{"field": "seen", "format": "unix_ms"}, "1.5", crdt.Value{}, `"1.5" is not an integer number of milliseconds`},
		{"unix overflow", m{"field": "seen", "format": "unix"}, "9223372036854775", crdt.Value{}, "out of range"},
		{"json", "extra", `{"a":1}`, crdt.JSON(`{"a":1}`), ""},
		{"bytea", "avatar", `\x0aff`, crdt.Bytes([]byte{0x0a, 0xff}), ""},
		{"bytea bad", "avatar", `0aff`, crdt.Value{}, `"0aff"`},
		{"long bad value is cut", "age", strings.Repeat("9x", 100), crdt.Value{}, "... (200 bytes)"},
		{"column read only by expressions, typed", m{"type": "int"}, "7", crdt.Int(7), ""},
	}
	for _, tc := range cases {
		t.Run(tc.name, func(t *testing.T) {
			got, err := conv(t, tc.entry).decode(tc.in)
			if tc.wantErr != "" {
				if err == nil || !strings.Contains(err.Error(), tc.wantErr) {
					t.Fatalf("decode(%q) = %v, %v; want an error containing %q", tc.in, got, err, tc.wantErr)
				}
				return
			}
			if err != nil || !got.Equal(tc.want) || got.Kind() != tc.want.Kind() {
				t.Fatalf("decode(%q) = %v (%s), %v; want %v (%s)", tc.in, got, got.Kind(), err, tc.want, tc.want.Kind())
			}
		})
	}
}

func TestConversionEncode(t *testing.T) {
	cases := []struct {
		name  string
		entry any
		in    crdt.Value
		want  string
		null  bool
	}{
		{"null", "name", crdt.Null, "", true},
		{"int", "age", crdt.Int(-3), "-3", false},
		{"bool default", "active", crdt.Bool(true), "true", false},
		{"bool Y", yn, crdt.Bool(true), "Y", false},
		{"bool N", yn, crdt.Bool(false), "N", false},
		{"bool null", yn, crdt.Null, "", true},
		{"timestamp default", "joined", us("2024-03-01T10:20:30.5Z"), "2024-03-01 10:20:30.5Z", false},
		{"timestamp in zone", m{"field": "joined", "timezone": "Europe/Paris"}, us("2024-03-01T10:20:30Z"), "2024-03-01 11:20:30+01:00", false},
		{"strftime", m{"field": "joined", "format": "%d/%m/%Y %H:%M"}, us("2024-03-01T10:20:59Z"), "01/03/2024 10:20", false},
		{"unix", m{"field": "seen", "format": "unix"}, us("2024-03-01T10:20:30.9Z"), "1709288430", false},
		{"unix before 1970 floors", m{"field": "seen", "format": "unix"}, us("1969-12-31T23:59:59.5Z"), "-1", false},
		{"unix_ms", m{"field": "seen", "format": "unix_ms"}, us("2024-03-01T10:20:30.123456Z"), "1709288430123", false},
		{"decimal", "balance", crdt.Decimal("-0.50"), "-0.50", false},
	}
	for _, tc := range cases {
		t.Run(tc.name, func(t *testing.T) {
			got, ok := conv(t, tc.entry).encode(tc.in)
			if ok == tc.null || got != tc.want {
				t.Fatalf("encode(%v) = %q, %v; want %q, %v", tc.in, got, ok, tc.want, !tc.null)
			}
		})
	}
}

// roundTrip entries: each with texts in the column's canonical form, for
// which encode(decode(x)) == x.
var roundTrip = []struct {
	entry any
	texts []string
}{
	{"name", []string{"", "Ann", "ü ñ"}},
	{"age", []string{"0", "-9223372036854775808", "42"}},
	{"score", []string{"2.5", "-1e-300", "NaN", "+Inf"}},
	{"active", []string{"true", "false"}},
	{yn, []string{"Y", "N"}},
	{m{"field": "active", "true_values": []any{"1", "yes"}, "false_values": []any{"0", "no"}}, []string{"1", "0"}},
	{"balance", []string{"0", "-12.50", "123456789012345678901234567890.1"}},
	{"joined", []string{"2024-03-01 10:20:30.5Z", "1969-07-20 20:17:40Z"}},
	{m{"field": "joined", "timezone": "Asia/Tokyo"}, []string{"2024-03-01 10:20:30+09:00"}},
	{m{"field": "joined", "format": "%Y-%m-%dT%H:%M:%S"}, []string{"2024-03-01T10:20:30"}},
	{m{"field": "joined", "format": "02/01/2006"}, []string{"29/02/2024"}},
	{m{"field": "joined", "format": "rfc3339"}, []string{"2024-03-01T10:20:30.123Z"}},
	{m{"field": "seen", "format": "unix"}, []string{"0", "-1", "1709288430"}},
	{m{"field": "seen", "format": "unix_ms"}, []string{"1709288430123", "-1"}},
	{m{"field": "seen", "format": "unix_us"}, []string{"1709288430123456"}},
	{"extra", []string{`{"a": [1, 2]}`}},
	{"avatar", []string{`\x`, `\x00ff10`}},
}

func TestConversionRoundTrip(t *testing.T) {
	for _, rt := range roundTrip {
		cv := conv(t, rt.entry)
		for _, x := range rt.texts {
			v, err := cv.decode(x)
			if err != nil {
				t.Fatalf("%v: decode(%q): %v", rt.entry, x, err)
			}
			if back, ok := cv.encode(v); !ok || back != x {
				t.Errorf("%v: encode(decode(%q)) = %q, %v", rt.entry, x, back, ok)
			}
		}
	}
}

// TestConversionRoundTripValues: every value at the column's precision
// comes back from its text unchanged.
func TestConversionRoundTripValues(t *testing.T) {
	convs := map[string]*conversion{}
	of := func(entry any) *conversion {
		b, _ := json.Marshal(entry)
		if convs[string(b)] == nil {
			convs[string(b)] = conv(t, entry)
		}
		return convs[string(b)]
	}
	rapid.Check(t, func(rt *rapid.T) {
		t := rt
		// Instants from year 1 to 9999 (a day off each end, so that every
		// zone's text still has a four-digit year).
		ts := rapid.Int64Range(-62135596800000000+86400e6, 253402300799999999-86400e6).Draw(t, "micros")
		cases := []struct {
			entry any
			v     crdt.Value
		}{
			{"joined", crdt.TimestampMicros(ts)},
			{m{"field": "joined", "timezone": "Europe/Paris"}, crdt.TimestampMicros(ts)},
			{m{"field": "joined", "format": "rfc3339"}, crdt.TimestampMicros(ts)},
			{m{"field": "joined", "format": "%Y-%m-%d %H:%M:%S"}, crdt.TimestampMicros(floor(ts, 1000000))},
			{m{"field": "seen", "format": "unix_us"}, crdt.TimestampMicros(ts)},
			{m{"field": "seen", "format": "unix_ms"}, crdt.TimestampMicros(floor(ts, 1000))},
			{m{"field": "seen", "format": "unix"}, crdt.TimestampMicros(floor(ts, 1000000))},
			{"age", crdt.Int(rapid.Int64().Draw(t, "int"))},
			{"score", crdt.Float(rapid.Float64().Draw(t, "float"))},
			{yn, crdt.Bool(rapid.Bool().Draw(t, "bool"))},
			{"name", crdt.String(rapid.String().Draw(t, "string"))},
			{"avatar", crdt.Bytes(rapid.SliceOf(rapid.Byte()).Draw(t, "bytes"))},
		}
		for _, tc := range cases {
			cv := of(tc.entry)
			text, ok := cv.encode(tc.v)
			if !ok {
				t.Fatalf("%v: encode(%v) is null", tc.entry, tc.v)
			}
			back, err := cv.decode(text)
			if err != nil || !back.Equal(tc.v) {
				t.Fatalf("%v: decode(encode(%v)) = decode(%q) = %v, %v", tc.entry, tc.v, text, back, err)
			}
		}
	})
}

// floor rounds us down to a multiple of unit.
func floor(us, unit int64) int64 {
	r := us % unit
	if r < 0 {
		r += unit
	}
	return us - r
}

// fuzzConversions are the decoders FuzzColumnText exercises.
var fuzzConversions = []any{
	"name", "age", "score", "active", yn, "balance", "joined", "extra", "avatar",
	m{"field": "joined", "timezone": "Europe/Paris"},
	m{"field": "joined", "format": "%d/%m/%Y %H:%M:%S.%f %z"},
	m{"field": "joined", "format": "Jan _2 2006 3:04PM"},
	m{"field": "joined", "format": "rfc3339"},
	m{"field": "seen", "format": "unix"},
	m{"field": "seen", "format": "unix_ms"},
	m{"field": "seen", "format": "unix_us"},
}

// FuzzColumnText: no column text makes a decoder panic, and what a decoder
// accepts comes back unchanged through the column's text.
func FuzzColumnText(f *testing.F) {
	for _, s := range []string{"", "0", "-1", " 42 ", "9223372036854775807", "9223372036854775808", "1e309", "NaN",
		"t", "Y", "N ", "12.50", "+.5", "-", "2024-03-01 10:20:30.5+01", "2024-03-01", "0000-01-01 00:00:00",
		"01/03/2024 10:20:30.123456 +0100", "Feb 29 2024 3:04PM", "2024-03-01T10:20:30Z", `\x0aff`, `\x0`,
		`{"a":1}`, "\xff\xfe", strings.Repeat("9", 40)} {
		f.Add(s)
	}
	convs := make([]*conversion, len(fuzzConversions))
	for i, e := range fuzzConversions {
		convs[i] = conv(f, e)
	}
	f.Fuzz(func(t *testing.T, s string) {
		for i, cv := range convs {
			v, err := cv.decode(s)
			if err != nil {
				if !strings.Contains(err.Error(), quote(s)) {
					t.Errorf("%v: error %q does not show the value", fuzzConversions[i], err)
				}
				continue
			}
			if !v.Conforms(cv.typ) {
				t.Fatalf("%v: decode(%q) = %v, not a %s", fuzzConversions[i], s, v, cv.typ)
			}
			text, ok := cv.encode(v)
			if !ok {
				t.Fatalf("%v: encode(decode(%q)) is null", fuzzConversions[i], s)
			}
			back, err := cv.decode(text)
			if err != nil || !back.Equal(v) {
				t.Fatalf("%v: decode(%q) = %v, but decode(encode(that) = %q) = %v, %v", fuzzConversions[i], s, v, text, back, err)
			}
		}
	})
}

func parse(tb testing.TB, tables map[string]any) (*Config, error) {
	tb.Helper()
	return ParseConfig("crm", map[string]any{"kind": "postgres", "dsn": "x", "tables": tables}, testSchema(tb))
}

func people(extra m) map[string]any {
	t := m{"entity": "person", "key": []any{"id"}, "columns": m{"email": "email"}}
	for k, v := range extra {
		t[k] = v
	}
	return map[string]any{"people": t}
}

func TestTransformConfigErrors(t *testing.T) {
	cases := []struct {
		name  string
		table m
		want  []string // every one must be in the error
	}{
		{"unknown type", m{"columns": m{"age": m{"field": "age", "type": "integer"}}},
			[]string{`connector "crm" table "people" column "age"`, `unknown type "integer"`, "want string, int"}},
		{"type does not match the field", m{"columns": m{"age": m{"field": "age", "type": "string"}}},
			[]string{`column "age"`, `type string does not match field "age"`, "which is int"}},
		{"unknown key in a column", m{"columns": m{"joined": m{"field": "joined", "fomat": "unix"}}},
			[]string{`column "joined"`, `unknown key "fomat"`, "want field, type, format"}},
		{"unknown key in a table", m{"filters": "true"}, []string{`unknown field "filters"`}},
		{"format on a non-timestamp", m{"columns": m{"age": m{"field": "age", "format": "unix"}}},
			[]string{`column "age"`, "format applies to timestamps", `field "age" is int`}},
		{"bad layout", m{"columns": m{"joined": m{"field": "joined", "format": "YYYY-MM-DD"}}},
			[]string{`column "joined"`, `format "YYYY-MM-DD" does not give year, month and day`, "2006-01-02"}},
		{"bad strftime", m{"columns": m{"joined": m{"field": "joined", "format": "%Y-%m-%d %Q"}}},
			[]string{`column "joined"`, "%Q is not supported"}},
		{"strftime literal read as layout", m{"columns": m{"joined": m{"field": "joined", "format": "%Y-%m-%d Mon"}}},
			[]string{`literal text " Mon" contains "Mon"`}},
		{"timezone unknown", m{"columns": m{"joined": m{"field": "joined", "timezone": "Mars/Olympus"}}},
			[]string{`column "joined"`, `timezone "Mars/Olympus"`}},
		{"timezone on epoch", m{"columns": m{"seen": m{"field": "seen", "format": "unix", "timezone": "UTC"}}},
			[]string{"timezone has no effect"}},
		{"true_values alone", m{"columns": m{"active": m{"field": "active", "true_values": []any{"Y"}}}},
			[]string{`column "active"`, "give both true_values and false_values"}},
		{"true_values on a string", m{"columns": m{"name": m{"field": "name", "true_values": []any{"Y"}, "false_values": []any{"N"}}}},
			[]string{`column "name"`, "apply to booleans"}},
		{"value true and false", m{"columns": m{"active": m{"field": "active", "true_values": []any{"Y"}, "false_values": []any{"Y"}}}},
			[]string{`value "Y" is listed twice`}},
		{"unknown field", m{"columns": m{"a": m{"field": "nope"}}}, []string{`column "a"`, `entity "person" has no field "nope"`}},
		{"field mapped twice", m{"columns": m{"email": "email", "mail": "email"}}, []string{`field "email" is already mapped from column`}},
		{"bad expression", m{"filter": "row.email ==", "columns": m{"email": "email"}},
			[]string{`connector "crm" table "people" filter "row.email =="`, "Syntax error"}},
		{"filter not bool", m{"filter": "row.email", "columns": m{"email": "email"}},
			[]string{`filter "row.email"`, "gives string, want a bool"}},
		{"filter type error", m{"filter": "row.email > 3", "columns": m{"email": "email"}},
			[]string{`filter "row.email > 3"`, "found no matching overload for '_>_'"}},
		{"expression references an unknown column", m{"computed": m{"full_name": "row.first + ' ' + row.last"}},
			[]string{`computed field "full_name" (row.first + ' ' + row.last)`, `no column "first", "last"`, "declare the column under columns", "first: {type: string}"}},
		{"has() on a column", m{"filter": "has(row.email)"}, []string{"has(row.x) does not apply", "row.x != null"}},
		{"row used alone", m{"filter": "size(row) > 0"}, []string{"row can only be used as row.<column>"}},
		{"computed type mismatch", m{"columns": m{"email": "email", "age": m{"type": "int"}}, "computed": m{"name": "row.age + 1"}},
			[]string{`computed field "name" (row.age + 1)`, `gives int, but field "name" is string`, "string(...)"}},
		{"computed unknown field", m{"computed": m{"nope": "'x'"}}, []string{`computed field "nope"`, `entity "person" has no field "nope"`}},
		{"computed and mapped", m{"computed": m{"email": "'x'"}}, []string{`computed field "email"`, `also mapped from column "email"`}},
		{"project_filter over an unknown field", m{"project_filter": "record.nope"},
			[]string{`project_filter "record.nope"`, `no field "nope"`, "active"}},
		{"project_filter over columns", m{"project_filter": "row.email != ''"}, []string{`project_filter "row.email != ''"`, "undeclared reference to 'row'"}},
		{"project_filter not bool", m{"project_filter": "record.age"}, []string{`project_filter "record.age"`, "gives int, want a bool"}},
		{"column read by nothing", m{"columns": m{"email": "email", "first": m{"type": "string"}}},
			[]string{`column "first"`, "maps to no field and no expression uses it"}},
		{"only expression columns", m{"columns": m{"first": m{"type": "string"}}, "computed": m{"name": "row.first"}},
			[]string{"no column is mapped to a field"}},
		{"empty column entry", m{"columns": m{"email": nil}}, []string{`column "email"`, "empty entry"}},
	}
	for _, tc := range cases {
		t.Run(tc.name, func(t *testing.T) {
			_, err := parse(t, people(tc.table))
			if err == nil {
				t.Fatalf("accepted; want an error containing %q", tc.want)
			}
			for _, w := range tc.want {
				if !strings.Contains(err.Error(), w) {
					t.Errorf("error %q\ndoes not contain %q", err, w)
				}
			}
		})
	}
}

// newTestConnector is a connector without a database or store: enough to
// map rows.
func newTestConnector(tb testing.TB, table m) (*Connector, *Table) {
	tb.Helper()
	cfg, err := parse(tb, people(table))
	if err != nil {
		tb.Fatal(err)
	}
	c := New(cfg, nil, fixedSchema{testSchema(tb)}, slog.New(slog.NewTextHandler(io.Discard, nil)))
	return c, &cfg.Tables[0]
}

func text(kv ...string) map[string]*string {
	out := map[string]*string{}
	for i := 0; i+1 < len(kv); i += 2 {
		v := kv[i+1]
		if v == "<null>" {
			out[kv[i]] = nil
		} else {
			out[kv[i]] = &v
		}
	}
	return out
}

func TestMapRow(t *testing.T) {
	c, tbl := newTestConnector(t, m{
		"columns": m{
			"email":  "email",
			"active": yn,
			"first":  m{"type": "string"},
			"last":   m{"type": "string"},
			"kind":   m{"type": "string"},
			"born":   m{"type": "timestamp", "format": "%Y-%m-%d"},
		},
		"filter": "row.kind != 'test' && row.active",
		"computed": m{
			"full_name": "row.first + ' ' + row.last",
			"name":      "row.last.upperAscii()",
			"age":       "row.born == null ? dyn(null) : 2024 - row.born.getFullYear()",
		},
	})
	cases := []struct {
		name    string
		text    map[string]*string
		want    map[string]crdt.Value // nil: refused
		wantErr []string
	}{
		{"captured with computed fields", text("id", "1", "email", "a@x", "active", "Y", "first", "Ann", "last", "Lee", "kind", "customer", "born", "1990-05-01"),
			map[string]crdt.Value{"email": crdt.String("a@x"), "active": crdt.Bool(true), "full_name": crdt.String("Ann Lee"), "name": crdt.String("LEE"), "age": crdt.Int(34)}, nil},
		{"null column: computed gives null", text("id", "1", "email", "<null>", "active", "Y", "first", "Ann", "last", "Lee", "kind", "<null>", "born", "<null>"),
			map[string]crdt.Value{"email": crdt.Null, "active": crdt.Bool(true), "full_name": crdt.String("Ann Lee"), "name": crdt.String("LEE"), "age": crdt.Null}, nil},
		{"excluded by the filter (kind)", text("id", "2", "email", "t@x", "active", "Y", "first", "T", "last", "T", "kind", "test", "born", "<null>"),
			map[string]crdt.Value{}, nil},
		{"excluded by the filter (converted bool)", text("id", "3", "email", "n@x", "active", "N", "first", "N", "last", "N", "kind", "x", "born", "<null>"),
			map[string]crdt.Value{}, nil},
		{"bad bool is refused", text("id", "4", "email", "b@x", "active", "X", "first", "B", "last", "B", "kind", "x", "born", "<null>"),
			nil, []string{"invalid input", "table people column \"active\"", `"X" is neither a true value`}},
		{"bad expression-only column is refused", text("id", "5", "email", "b@x", "active", "Y", "first", "B", "last", "B", "kind", "x", "born", "May 1st"),
			nil, []string{`table people column "born"`, `"May 1st" does not match the format "2006-01-02"`}},
		{"evaluation error is refused, naming the nulls", text("id", "6", "email", "b@x", "active", "Y", "first", "<null>", "last", "B", "kind", "x", "born", "<null>"),
			nil, []string{`table people computed field "full_name" = "row.first + ' ' + row.last"`, "no such overload", "null: first"}},
		{"filter error on a null bool is refused", text("id", "7", "email", "b@x", "active", "<null>", "first", "B", "last", "B", "kind", "x", "born", "<null>"),
			nil, []string{`filter "row.kind != 'test' && row.active"`, "null: active"}},
		{"unchanged TOAST column an expression needs is refused", text("id", "8", "email", "b@x", "active", "Y", "last", "B", "kind", "x", "born", "<null>"),
			nil, []string{`column "first": not in this change`, "replay the dead letter"}},
		{"null key is refused", text("email", "b@x"), nil, []string{`key column "id" is null or missing`}},
	}
	for _, tc := range cases {
		t.Run(tc.name, func(t *testing.T) {
			ch, err := c.toChange(tbl, tc.text, false)
			if err != nil {
				t.Fatal(err)
			}
			if tc.want == nil {
				if ch.refused == nil || len(ch.fields) != 0 {
					t.Fatalf("not refused: %v", ch.fields)
				}
				if !errors.Is(ch.refused, crdt.ErrInvalid) {
					t.Errorf("refusal %v does not wrap crdt.ErrInvalid (apply sends only those to the dead-letter queue)", ch.refused)
				}
				for _, w := range tc.wantErr {
					if !strings.Contains(ch.refused.Error(), w) {
						t.Errorf("refusal %q does not contain %q", ch.refused, w)
					}
				}
				return
			}
			if ch.refused != nil {
				t.Fatalf("refused: %v", ch.refused)
			}
			if len(ch.fields) != len(tc.want) {
				t.Errorf("fields %v, want %v", ch.fields, tc.want)
			}
			for f, v := range tc.want {
				if got, ok := ch.fields[f]; !ok || !got.Equal(v) || got.Kind() != v.Kind() {
					t.Errorf("field %s = %v (%s), want %v (%s)", f, got, got.Kind(), v, v.Kind())
				}
			}
		})
	}
	// A delete is captured whatever the filter says (the stream has only its key).
	ch, err := c.toChange(tbl, text("id", "2"), true)
	if err != nil || ch.refused != nil || !ch.deleted || ch.id != "2" {
		t.Fatalf("delete: %+v, %v", ch, err)
	}
	// An unchanged TOAST value of a mapped column is taken from what the
	// stream last showed the row holding.
	c.remember(change{table: tbl, id: "9", fields: map[string]crdt.Value{"active": crdt.Bool(true)}})
	ch, _ = c.toChange(tbl, text("id", "9", "email", "b@x", "first", "B", "last", "B", "kind", "x", "born", "<null>"), false)
	if ch.refused != nil || !ch.fields["full_name"].Equal(crdt.String("B B")) {
		t.Fatalf("update without the TOASTed mapped column: %v, %v", ch.fields, ch.refused)
	}
	if _, ok := ch.fields["active"]; ok {
		t.Errorf("an unchanged column became part of the change: %v", ch.fields)
	}
}

func TestComputedResultTypes(t *testing.T) {
	c, tbl := newTestConnector(t, m{
		"columns": m{"email": "email", "n": m{"type": "int"}, "d": m{"type": "decimal"}},
		"computed": m{
			"score":   "row.n",                       // int into a float field
			"balance": "row.d",                       // decimal text stays exact
			"extra":   "{'n': row.n, 'tags': ['a']}", // a map into a json field
			"joined":  "timestamp('2024-03-01T10:20:30Z') + duration('1h')",
			"age":     "dyn(row.d)", // dyn: checked when it runs
		},
	})
	ch, _ := c.toChange(tbl, text("id", "1", "email", "e", "n", "3", "d", "12.50"), false)
	if ch.refused == nil || !strings.Contains(ch.refused.Error(), `computed field "age"`) || !strings.Contains(ch.refused.Error(), "but the field is int") {
		t.Fatalf("a dyn string into an int field: %v", ch.refused)
	}
	c, tbl = newTestConnector(t, m{
		"columns": m{"email": "email", "n": m{"type": "int"}, "d": m{"type": "decimal"}},
		"computed": m{
			"score":   "row.n",
			"balance": "row.d",
			"extra":   "{'n': row.n, 'tags': ['a']}",
			"joined":  "timestamp('2024-03-01T10:20:30Z') + duration('1h')",
		},
	})
	ch, _ = c.toChange(tbl, text("id", "1", "email", "e", "n", "3", "d", "12.50"), false)
	if ch.refused != nil {
		t.Fatal(ch.refused)
	}
	want := map[string]crdt.Value{"email": crdt.String("e"), "score": crdt.Float(3), "balance": crdt.Decimal("12.50"),
		"extra": crdt.JSON(`{"n":3,"tags":["a"]}`), "joined": us("2024-03-01T11:20:30Z")}
	for f, v := range want {
		if got := ch.fields[f]; !got.Equal(v) || got.Kind() != v.Kind() {
			t.Errorf("%s = %v (%s), want %v (%s)", f, got, got.Kind(), v, v.Kind())
		}
	}
}

func TestExpressionCostBounded(t *testing.T) {
	c, tbl := newTestConnector(t, m{
		"columns": m{"email": "email", "s": m{"type": "string"}},
		// Quadratic in the list's length: stopped by the cost limit.
		"filter": "row.s == 'x' && [" + strings.Repeat("1,", 1000) + "1].all(x, [" + strings.Repeat("1,", 1000) + "1].all(y, x == y))",
	})
	start := time.Now()
	ch, _ := c.toChange(tbl, text("id", "1", "email", "e", "s", "x"), false)
	if ch.refused == nil || !strings.Contains(ch.refused.Error(), "cost limit") {
		t.Fatalf("an expensive filter: %v", ch.refused)
	}
	if !strings.Contains(ch.refused.Error(), `1,1"... (4046 bytes)`) {
		t.Errorf("the refusal does not cut the expression: %.200s", ch.refused)
	}
	// About 0.1 s here; generous for -race on a loaded machine. A hang
	// would be minutes.
	if d := time.Since(start); d > 20*time.Second {
		t.Errorf("stopping the expression took %v", d)
	}
	t.Logf("stopped after %v", time.Since(start))
}

func TestProjectFilter(t *testing.T) {
	_, tbl := newTestConnector(t, m{"project_filter": "record.active && record.age >= 18"})
	cases := []struct {
		values  map[string]crdt.Value
		deleted bool
		want    bool
		err     string
	}{
		{map[string]crdt.Value{"active": crdt.Bool(true), "age": crdt.Int(30)}, false, true, ""},
		{map[string]crdt.Value{"active": crdt.Bool(false), "age": crdt.Int(30)}, false, false, ""},
		{map[string]crdt.Value{"active": crdt.Bool(true), "age": crdt.Int(3)}, false, false, ""},
		{map[string]crdt.Value{"active": crdt.Bool(false)}, true, true, ""}, // deletes are written
		{map[string]crdt.Value{"age": crdt.Int(30)}, false, false, "null: active"},
	}
	for i, tc := range cases {
		ok, err := tbl.projects(tc.values, tc.deleted)
		var refused *refusedError
		switch {
		case tc.err != "":
			if !errors.As(err, &refused) || !errors.Is(err, crdt.ErrInvalid) || !strings.Contains(err.Error(), tc.err) || !strings.Contains(err.Error(), "project_filter") {
				t.Errorf("case %d: %v, want a refusal containing %q", i, err, tc.err)
			}
		case err != nil || ok != tc.want:
			t.Errorf("case %d: %v, %v; want %v", i, ok, err, tc.want)
		}
	}
}

// TestDocumentedConfig: the YAML examples of doc.go and README.md parse as
// shown and mean what the text says.
func TestDocumentedConfig(t *testing.T) {
	const entities = `entities:
  person:
    fields: {full_name: string, email: string, active: bool, joined: timestamp, seen: timestamp, balance: decimal, age: int}
`
	doc, err := os.ReadFile("doc.go")
	if err != nil {
		t.Fatal(err)
	}
	// doc.go: the tab-indented block after "# Configuration".
	var docYAML []string
	for _, line := range strings.Split(string(doc[strings.Index(string(doc), "# Configuration"):]), "\n") {
		if y, ok := strings.CutPrefix(line, "//\t"); ok {
			docYAML = append(docYAML, y)
		} else if len(docYAML) > 0 {
			break
		}
	}
	readme, err := os.ReadFile("../../README.md")
	if err != nil {
		t.Fatal(err)
	}
	section := string(readme[strings.Index(string(readme), "### Conversions, filters and computed fields"):])
	section = section[strings.Index(section, "```yaml\n")+len("```yaml\n"):]
	readmeYAML := section[:strings.Index(section, "```")]
	t.Setenv("CRM_DSN", "postgres://localhost/crm")
	for name, y := range map[string]string{"doc.go": strings.Join(docYAML, "\n") + "\n", "README.md": readmeYAML} {
		t.Run(name, func(t *testing.T) {
			s, err := crdt.ParseSchema("sync.yaml", []byte(entities+y))
			if err != nil {
				t.Fatalf("%v\n%s", err, y)
			}
			cfg, err := ParseConfig("crm", s.Connectors[0].Config, s)
			if err != nil {
				t.Fatal(err)
			}
			tbl := cfg.Tables[0]
			if got := strings.Join(tbl.columns(), ","); got != "id,active,balance,email,first,joined_on,last,last_seen_ms,status" {
				t.Errorf("columns read: %s", got)
			}
			if cv := tbl.tf.conv["active"]; strings.Join(cv.trues, ",") != "Y,1" || strings.Join(cv.falses, ",") != "N,0" {
				t.Errorf("true/false values: %v %v", cv.trues, cv.falses)
			}
			if got, _ := tbl.toColumn("joined_on", us("2024-03-01T23:30:00Z")); got != "02/03/2024" {
				t.Errorf("joined_on projected as %q (Paris is an hour ahead)", got)
			}
			if got, _ := tbl.toColumn("active", crdt.Bool(false)); got != "N" {
				t.Errorf("active false projected as %q", got)
			}
			if len(tbl.tf.refs) != 3 || tbl.tf.filter == nil || tbl.tf.projectFilter == nil || len(tbl.tf.computed) != 1 {
				t.Errorf("expressions: refs %v, filter %v, project_filter %v, computed %v", tbl.tf.refs, tbl.tf.filter, tbl.tf.projectFilter, tbl.tf.computed)
			}
		})
	}
}

// TestOddColumnNames: columns whose names are not CEL identifiers can be
// mapped next to expressions; only expressions cannot name them.
func TestOddColumnNames(t *testing.T) {
	c, tbl := newTestConnector(t, m{
		"columns": m{"E-Mail": "email", "in": "name", "kind": m{"type": "string"}},
		"filter":  "row.kind == 'a'",
	})
	ch, _ := c.toChange(tbl, text("id", "1", "E-Mail", "e@x", "in", "n", "kind", "a"), false)
	if ch.refused != nil || !ch.fields["email"].Equal(crdt.String("e@x")) || !ch.fields["name"].Equal(crdt.String("n")) {
		t.Fatalf("%v, %v", ch.fields, ch.refused)
	}
	if _, err := parse(t, people(m{"columns": m{"in": "name"}, "filter": "row.in == 'x'"})); err == nil || !strings.Contains(err.Error(), "Syntax error") {
		t.Fatalf("an expression naming a reserved word: %v", err)
	}
}
