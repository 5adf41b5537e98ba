package postgres

import (
	"encoding/hex"
	"fmt"
	"math"
	"strconv"
	"strings"
	"time"
	"unicode/utf8"

	"github.com/lattice-sync/lattice/crdt"
)

// fromText converts a column's text representation (as pgoutput sends it)
// to a value of the field's type, with the default conversion: the text
// PostgreSQL itself prints for a column of a matching type.
func fromText(t crdt.Type, s string) (crdt.Value, error) {
	switch t {
	case crdt.TypeString:
		return crdt.String(s), nil
	case crdt.TypeInt:
		i, err := strconv.ParseInt(strings.TrimSpace(s), 10, 64)
		if err != nil {
			return crdt.Value{}, fmt.Errorf("%s is not an integer", quote(s))
		}
		return crdt.Int(i), nil
	case crdt.TypeFloat:
		f, err := strconv.ParseFloat(strings.TrimSpace(s), 64)
		if err != nil {
			return crdt.Value{}, fmt.Errorf("%s is not a number", quote(s))
		}
		return crdt.Float(f), nil
	case crdt.TypeBool:
		switch strings.TrimSpace(s) {
		case "t", "true":
			return crdt.Bool(true), nil
		case "f", "false":
			return crdt.Bool(false), nil
		}
		return crdt.Value{}, fmt.Errorf("%s is not a boolean (t, true, f or false; declare true_values and false_values for other texts)", quote(s))
	case crdt.TypeTimestamp:
		return parseTimestamp(s, time.UTC)
	case crdt.TypeDecimal:
		d, err := crdt.ParseDecimal(strings.TrimSpace(s))
		if err != nil {
			return crdt.Value{}, fmt.Errorf("%s is not a decimal number", quote(s))
		}
		return crdt.Decimal(d), nil
	case crdt.TypeJSON:
		return crdt.JSON(s), nil
	case crdt.TypeBytes:
		if !strings.HasPrefix(s, `\x`) {
			return crdt.Value{}, fmt.Errorf("bytea not in hex format: %s", quote(s))
		}
		b, err := hex.DecodeString(s[2:])
		if err != nil {
			return crdt.Value{}, fmt.Errorf("bytea %s: %v", quote(s), err)
		}
		return crdt.Bytes(b), nil
	}
	return crdt.Value{}, fmt.Errorf("unsupported type %s", t)
}

// pgTimestampLayouts are the texts PostgreSQL prints for timestamptz,
// timestamp and date columns (DateStyle ISO), then RFC 3339.
var pgTimestampLayouts = []string{
	"2006-01-02 15:04:05.999999-07",
	"2006-01-02 15:04:05.999999Z07:00",
	"2006-01-02 15:04:05.999999-07:00:00",
	"2006-01-02 15:04:05.999999",
	"2006-01-02",
	time.RFC3339Nano,
}

// parseTimestamp reads PostgreSQL's timestamp text; texts without an
// offset are in loc.
func parseTimestamp(s string, loc *time.Location) (crdt.Value, error) {
	t := strings.TrimSpace(s)
	for _, layout := range pgTimestampLayouts {
		if ts, err := time.ParseInLocation(layout, t, loc); err == nil {
			return crdt.TimestampMicros(ts.UnixMicro()), nil
		}
	}
	return crdt.Value{}, fmt.Errorf("%s is not a timestamp (PostgreSQL's ISO format or RFC 3339; declare format for other texts)", quote(s))
}

// toText renders a value as text for a parameter cast to the column's type;
// ok is false for null.
func toText(v crdt.Value) (string, bool) {
	switch v.Kind() {
	case crdt.KindNull:
		return "", false
	case crdt.KindString, crdt.KindDecimal, crdt.KindJSON:
		return v.Str(), true
	case crdt.KindInt:
		return strconv.FormatInt(v.Int64(), 10), true
	case crdt.KindFloat:
		return strconv.FormatFloat(v.Float64(), 'g', -1, 64), true
	case crdt.KindBool:
		return strconv.FormatBool(v.BoolValue()), true
	case crdt.KindTimestamp:
		return time.UnixMicro(v.Int64()).UTC().Format("2006-01-02 15:04:05.999999Z07:00"), true
	case crdt.KindBytes:
		return `\x` + hex.EncodeToString([]byte(v.Str())), true
	}
	return v.String(), true
}

// conversion is how one column's text becomes a value and back: the type
// of the value (the mapped field's, or the declared type of a column read
// only by expressions) and, for timestamps and booleans, the column's own
// format. The zero options are the default conversion (fromText, toText).
type conversion struct {
	typ crdt.Type
	// Timestamps. unit is set for a number since the Unix epoch (seconds,
	// milliseconds or microseconds); layout is a Go time layout for text
	// ("" is PostgreSQL's own text); loc is the zone of texts without an
	// offset and of the text projection writes (UTC by default).
	unit   time.Duration
	layout string
	loc    *time.Location
	// Booleans: the texts read as true and as false (after trimming
	// spaces); projection writes the first of each. Empty: t/true, f/false.
	trues, falses []string
}

// decode converts a column's text to a value; the error says what is wrong
// with the text (the caller adds table and column).
func (cv *conversion) decode(s string) (crdt.Value, error) {
	switch {
	case cv.typ == crdt.TypeTimestamp && cv.unit != 0:
		n, err := strconv.ParseInt(strings.TrimSpace(s), 10, 64)
		if err != nil {
			return crdt.Value{}, fmt.Errorf("%s is not an integer number of %s since 1970-01-01 UTC", quote(s), unitName(cv.unit))
		}
		per := int64(cv.unit / time.Microsecond)
		if n > math.MaxInt64/per || n < math.MinInt64/per {
			return crdt.Value{}, fmt.Errorf("%s %s since 1970 is out of range", quote(s), unitName(cv.unit))
		}
		return crdt.TimestampMicros(n * per), nil
	case cv.typ == crdt.TypeTimestamp && cv.layout != "":
		ts, err := time.ParseInLocation(cv.layout, strings.TrimSpace(s), cv.location())
		if err != nil {
			return crdt.Value{}, fmt.Errorf("%s does not match the format %q", quote(s), cv.layout)
		}
		return crdt.TimestampMicros(ts.UnixMicro()), nil
	case cv.typ == crdt.TypeTimestamp && cv.loc != nil:
		return parseTimestamp(s, cv.loc)
	case cv.typ == crdt.TypeBool && len(cv.trues) > 0:
		t := strings.TrimSpace(s)
		for _, x := range cv.trues {
			if t == x {
				return crdt.Bool(true), nil
			}
		}
		for _, x := range cv.falses {
			if t == x {
				return crdt.Bool(false), nil
			}
		}
		return crdt.Value{}, fmt.Errorf("%s is neither a true value %s nor a false value %s", quote(s), quoteList(cv.trues), quoteList(cv.falses))
	}
	return fromText(cv.typ, s)
}

// encode renders a value as the column's text, the inverse of decode;
// ok is false for null.
func (cv *conversion) encode(v crdt.Value) (string, bool) {
	switch {
	case v.Kind() == crdt.KindTimestamp && cv.typ == crdt.TypeTimestamp && cv.unit != 0:
		// Floor division: an instant before 1970 is in the unit before it.
		per := int64(cv.unit / time.Microsecond)
		us := v.Int64()
		n := us / per
		if us%per < 0 {
			n--
		}
		return strconv.FormatInt(n, 10), true
	case v.Kind() == crdt.KindTimestamp && cv.typ == crdt.TypeTimestamp && cv.layout != "":
		return time.UnixMicro(v.Int64()).In(cv.location()).Format(cv.layout), true
	case v.Kind() == crdt.KindTimestamp && cv.typ == crdt.TypeTimestamp && cv.loc != nil:
		t := time.UnixMicro(v.Int64()).In(cv.loc)
		if _, off := t.Zone(); off%60 != 0 {
			// A local mean time before standard zones (Paris was +00:09:21).
			return t.Format("2006-01-02 15:04:05.999999-07:00:00"), true
		}
		return t.Format("2006-01-02 15:04:05.999999Z07:00"), true
	case v.Kind() == crdt.KindBool && cv.typ == crdt.TypeBool && len(cv.trues) > 0:
		if v.BoolValue() {
			return cv.trues[0], true
		}
		return cv.falses[0], true
	}
	return toText(v)
}

func (cv *conversion) location() *time.Location {
	if cv.loc == nil {
		return time.UTC
	}
	return cv.loc
}

func unitName(d time.Duration) string {
	switch d {
	case time.Second:
		return "seconds"
	case time.Millisecond:
		return "milliseconds"
	}
	return "microseconds"
}

// timestampFormat reads a timestamp column's format: unix, unix_ms,
// unix_us (a number since the epoch), rfc3339, a strftime format (with %)
// or a Go layout (with the reference time 2006-01-02 15:04:05).
func timestampFormat(f string) (unit time.Duration, layout string, err error) {
	switch f {
	case "unix", "unix_s":
		return time.Second, "", nil
	case "unix_ms":
		return time.Millisecond, "", nil
	case "unix_us":
		return time.Microsecond, "", nil
	case "rfc3339":
		return 0, time.RFC3339Nano, nil
	}
	layout = f
	if strings.Contains(f, "%") {
		if layout, err = strftimeLayout(f); err != nil {
			return 0, "", err
		}
	}
	// The layout must say at least which day: format a reference instant
	// and read it back.
	ref := time.Date(2001, 2, 3, 16, 5, 6, 0, time.UTC)
	text := ref.Format(layout)
	back, perr := time.Parse(layout, text)
	if text == layout || perr != nil || back.Year() != 2001 || back.Month() != 2 || back.Day() != 3 {
		return 0, "", fmt.Errorf("format %q does not give year, month and day: write a Go layout such as \"2006-01-02 15:04:05\" (the reference time), a strftime format such as \"%%Y-%%m-%%d %%H:%%M:%%S\", rfc3339, unix, unix_ms or unix_us", f)
	}
	return 0, layout, nil
}

// strftimeDirectives translates strftime directives to Go layout elements.
var strftimeDirectives = map[byte]string{
	'Y': "2006", 'y': "06", 'm': "01", 'd': "02", 'e': "_2", 'j': "002",
	'H': "15", 'I': "03", 'M': "04", 'S': "05", 'p': "PM", 'f': "000000",
	'b': "Jan", 'h': "Jan", 'B': "January", 'a': "Mon", 'A': "Monday",
	'z': "-0700", 'Z': "MST", 'F': "2006-01-02", 'T': "15:04:05", '%': "%",
}

// goLayoutTokens are the texts Go reads as layout elements; strftime
// literal text must not contain them, since Go layouts cannot escape.
var goLayoutTokens = []string{"Jan", "Mon", "MST", "PM", "pm", "Z07", "Z0"}

// strftimeLayout translates a strftime format to a Go layout.
func strftimeLayout(f string) (string, error) {
	var b, lit strings.Builder
	flush := func() error {
		s := lit.String()
		lit.Reset()
		if strings.ContainsAny(s, "0123456789") {
			return fmt.Errorf("format %q: literal text %q contains digits, which a Go layout would read as date elements", f, s)
		}
		for _, tok := range goLayoutTokens {
			if strings.Contains(s, tok) {
				return fmt.Errorf("format %q: literal text %q contains %q, which a Go layout would read as a date element", f, s, tok)
			}
		}
		b.WriteString(s)
		return nil
	}
	for i := 0; i < len(f); i++ {
		if f[i] != '%' {
			lit.WriteByte(f[i])
			continue
		}
		if i+1 == len(f) {
			return "", fmt.Errorf("format %q ends with a lone %%", f)
		}
		i++
		el, ok := strftimeDirectives[f[i]]
		if !ok {
			return "", fmt.Errorf("format %q: %%%c is not supported (use %%Y %%y %%m %%d %%e %%j %%H %%I %%M %%S %%f %%p %%b %%B %%a %%A %%z %%Z %%F %%T or %%%%)", f, f[i])
		}
		if f[i] == '%' {
			lit.WriteByte('%')
			continue
		}
		if err := flush(); err != nil {
			return "", err
		}
		b.WriteString(el)
	}
	if err := flush(); err != nil {
		return "", err
	}
	return b.String(), nil
}

// quote shows a value in an error: quoted, and cut to 64 bytes so a large
// column does not flood the log and the dead-letter queue.
func quote(s string) string {
	const max = 64
	if len(s) <= max {
		return strconv.Quote(s)
	}
	cut := max
	for cut > 0 && !utf8.RuneStart(s[cut]) {
		cut--
	}
	return strconv.Quote(s[:cut]) + fmt.Sprintf("... (%d bytes)", len(s))
}

func quoteList(xs []string) string {
	q := make([]string, len(xs))
	for i, x := range xs {
		q[i] = strconv.Quote(x)
	}
	return "(" + strings.Join(q, ", ") + ")"
}
