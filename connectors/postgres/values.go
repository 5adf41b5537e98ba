package postgres

import (
	"encoding/hex"
	"fmt"
	"strconv"
	"strings"
	"time"

	"github.com/lattice-sync/lattice/crdt"
)

// fromText converts a column's text representation (as pgoutput sends it)
// to a value of the field's type.
func fromText(t crdt.Type, s string) (crdt.Value, error) {
	switch t {
	case crdt.TypeString:
		return crdt.String(s), nil
	case crdt.TypeInt:
		i, err := strconv.ParseInt(s, 10, 64)
		if err != nil {
			return crdt.Value{}, fmt.Errorf("not an integer: %q", s)
		}
		return crdt.Int(i), nil
	case crdt.TypeFloat:
		f, err := strconv.ParseFloat(s, 64)
		if err != nil {
			return crdt.Value{}, fmt.Errorf("not a number: %q", s)
		}
		return crdt.Float(f), nil
	case crdt.TypeBool:
		switch s {
		case "t", "true":
			return crdt.Bool(true), nil
		case "f", "false":
			return crdt.Bool(false), nil
		}
		return crdt.Value{}, fmt.Errorf("not a boolean: %q", s)
	case crdt.TypeTimestamp:
		for _, layout := range []string{"2006-01-02 15:04:05.999999-07", "2006-01-02 15:04:05.999999-07:00", "2006-01-02 15:04:05.999999", time.RFC3339Nano} {
			if ts, err := time.Parse(layout, s); err == nil {
				return crdt.TimestampMicros(ts.UnixMicro()), nil
			}
		}
		return crdt.Value{}, fmt.Errorf("not a timestamp: %q", s)
	case crdt.TypeDecimal:
		d, err := crdt.ParseDecimal(s)
		if err != nil {
			return crdt.Value{}, err
		}
		return crdt.Decimal(d), nil
	case crdt.TypeJSON:
		return crdt.JSON(s), nil
	case crdt.TypeBytes:
		if !strings.HasPrefix(s, `\x`) {
			return crdt.Value{}, fmt.Errorf("bytea not in hex format: %q", s)
		}
		b, err := hex.DecodeString(s[2:])
		if err != nil {
			return crdt.Value{}, fmt.Errorf("bytea: %v", err)
		}
		return crdt.Bytes(b), nil
	}
	return crdt.Value{}, fmt.Errorf("unsupported type %s", t)
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
