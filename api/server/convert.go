package server

import (
	"encoding/base64"
	"fmt"
	"math"
	"sort"
	"time"

	"google.golang.org/protobuf/types/known/structpb"
	"google.golang.org/protobuf/types/known/timestamppb"

	pb "github.com/lattice-sync/lattice/api/lattice/v1"
	"github.com/lattice-sync/lattice/crdt"
)

// valueFromProto converts a request value. field names the field for errors.
func valueFromProto(field string, v *pb.Value) (crdt.Value, error) {
	if v == nil {
		return crdt.Value{}, fmt.Errorf("field %q: value is missing (set one kind, or null)", field)
	}
	switch k := v.Kind.(type) {
	case *pb.Value_Null:
		return crdt.Null, nil
	case *pb.Value_StringValue:
		return crdt.String(k.StringValue), nil
	case *pb.Value_IntValue:
		return crdt.Int(k.IntValue), nil
	case *pb.Value_FloatValue:
		return crdt.Float(k.FloatValue), nil
	case *pb.Value_BoolValue:
		return crdt.Bool(k.BoolValue), nil
	case *pb.Value_TimestampValue:
		if err := k.TimestampValue.CheckValid(); err != nil {
			return crdt.Value{}, fmt.Errorf("field %q: %v", field, err)
		}
		return crdt.TimestampMicros(k.TimestampValue.AsTime().UnixMicro()), nil
	case *pb.Value_DecimalValue:
		s, err := crdt.ParseDecimal(k.DecimalValue)
		if err != nil {
			return crdt.Value{}, fmt.Errorf("field %q: %v", field, err)
		}
		return crdt.Decimal(s), nil
	case *pb.Value_JsonValue:
		if !jsonValid(k.JsonValue) {
			return crdt.Value{}, fmt.Errorf("field %q: json_value is not valid JSON", field)
		}
		return crdt.JSON(k.JsonValue), nil
	case *pb.Value_BytesValue:
		return crdt.Bytes(k.BytesValue), nil
	}
	return crdt.Value{}, fmt.Errorf("field %q: value has no kind set (use null for an explicit null)", field)
}

// valueToProto converts a stored value. Tuples never reach here: views
// split group registers into member values.
func valueToProto(v crdt.Value) *pb.Value {
	switch v.Kind() {
	case crdt.KindString:
		return &pb.Value{Kind: &pb.Value_StringValue{StringValue: v.Str()}}
	case crdt.KindInt:
		return &pb.Value{Kind: &pb.Value_IntValue{IntValue: v.Int64()}}
	case crdt.KindFloat:
		f := v.Float64()
		if math.IsNaN(f) || math.IsInf(f, 0) {
			// protojson cannot carry these as numbers; it renders them as strings.
			return &pb.Value{Kind: &pb.Value_FloatValue{FloatValue: f}}
		}
		return &pb.Value{Kind: &pb.Value_FloatValue{FloatValue: f}}
	case crdt.KindBool:
		return &pb.Value{Kind: &pb.Value_BoolValue{BoolValue: v.BoolValue()}}
	case crdt.KindTimestamp:
		return &pb.Value{Kind: &pb.Value_TimestampValue{TimestampValue: timestamppb.New(time.UnixMicro(v.Int64()))}}
	case crdt.KindDecimal:
		return &pb.Value{Kind: &pb.Value_DecimalValue{DecimalValue: v.Str()}}
	case crdt.KindJSON:
		return &pb.Value{Kind: &pb.Value_JsonValue{JsonValue: v.Str()}}
	case crdt.KindBytes:
		return &pb.Value{Kind: &pb.Value_BytesValue{BytesValue: []byte(v.Str())}}
	}
	return &pb.Value{Kind: &pb.Value_Null{Null: structpb.NullValue_NULL_VALUE}}
}

func dotToProto(d crdt.Dot) *pb.Dot { return &pb.Dot{Node: d.Node, Seq: d.Seq} }

func vvToProto(v crdt.VV) *pb.VersionVector {
	return &pb.VersionVector{Entries: v.Map()}
}

func versionToProto(v *crdt.Version) *pb.Version {
	out := &pb.Version{
		Value:   valueToProto(v.Value),
		Hlc:     uint64(v.TS),
		Time:    timestamppb.New(v.TS.Time()),
		Origin:  v.Origin,
		Dot:     dotToProto(v.Dot),
		Context: vvToProto(v.Ctx),
		Source:  v.Src,
	}
	for _, d := range v.Also {
		out.Also = append(out.Also, dotToProto(d))
	}
	return out
}

// EncodeContext renders a record context as the opaque token clients pass back.
func EncodeContext(v crdt.VV) string {
	return base64.RawURLEncoding.EncodeToString(crdt.EncodeToken(v))
}

// DecodeContext parses a token made by EncodeContext.
func DecodeContext(s string) (crdt.VV, error) {
	b, err := base64.RawURLEncoding.DecodeString(s)
	if err != nil {
		return nil, fmt.Errorf("malformed context token: not base64url (copy the context field of a read verbatim)")
	}
	vv, err := crdt.DecodeToken(b)
	if err != nil {
		return nil, fmt.Errorf("malformed context token: %v", err)
	}
	return vv, nil
}

// recordToProto renders a record's resolved state under its entity.
func recordToProto(ent *crdt.Entity, id string, rec *crdt.Record) *pb.Record {
	fields, deleted := ent.View(rec)
	out := &pb.Record{Entity: ent.Name, Id: id, Deleted: deleted, Context: EncodeContext(rec.Context)}
	for i := range rec.Registers {
		for j := range rec.Registers[i].Versions {
			if ts := uint64(rec.Registers[i].Versions[j].TS); ts > out.UpdatedHlc {
				out.UpdatedHlc = ts
			}
		}
	}
	for i := range fields {
		f := &fields[i]
		fs := &pb.FieldState{Name: f.Name, Value: valueToProto(f.Value), Conflicted: f.Conflicted}
		// The picked version first, then the other live ones by dot.
		sort.SliceStable(f.Live, func(a, b int) bool {
			wa, wb := f.Live[a].Dot == f.Winner.Dot, f.Live[b].Dot == f.Winner.Dot
			if wa != wb {
				return wa
			}
			return f.Live[a].Dot.Compare(f.Live[b].Dot) < 0
		})
		for j := range f.Live {
			fs.Live = append(fs.Live, versionToProto(&f.Live[j]))
		}
		if spec, _ := ent.Field(f.Name); spec != nil && ent.PolicyOf(ent.RegisterOf(f.Name)).Kind == crdt.PolicyMVR && len(f.Live) > 1 {
			live := append([]crdt.Version(nil), f.Live...)
			sort.Slice(live, func(a, b int) bool { return live[a].Dot.Compare(live[b].Dot) < 0 })
			for j := range live {
				fs.Siblings = append(fs.Siblings, valueToProto(live[j].Value))
			}
		}
		out.Fields = append(out.Fields, fs)
	}
	return out
}
