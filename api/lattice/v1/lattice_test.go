package latticev1

import (
	"bytes"
	"encoding/json"
	"testing"
	"time"

	"google.golang.org/protobuf/encoding/protojson"
	"google.golang.org/protobuf/proto"
	"google.golang.org/protobuf/types/known/structpb"
	"google.golang.org/protobuf/types/known/timestamppb"
)

func sampleRecord() *Record {
	ts := timestamppb.New(time.Date(2025, 1, 2, 3, 4, 5, 0, time.UTC))
	name := &Value{Kind: &Value_StringValue{StringValue: "Ann"}}
	return &Record{
		Entity: "customer",
		Id:     "c1",
		Fields: []*FieldState{
			{Name: "name", Value: name, Live: []*Version{{
				Value:   name,
				Hlc:     uint64(ts.AsTime().UnixMilli())<<16 | 1,
				Time:    ts,
				Origin:  "postgres:crm",
				Dot:     &Dot{Node: "n1", Seq: 7},
				Context: &VersionVector{Entries: map[string]uint64{"n1": 6, "n2": 3}},
			}}},
			{Name: "age", Value: &Value{Kind: &Value_IntValue{IntValue: 42}}},
			{Name: "note", Value: &Value{Kind: &Value_Null{Null: structpb.NullValue_NULL_VALUE}}},
			{Name: "tags", Value: &Value{Kind: &Value_JsonValue{JsonValue: `["a","b"]`}}, Conflicted: true,
				Siblings: []*Value{
					{Kind: &Value_BoolValue{BoolValue: true}},
					{Kind: &Value_DecimalValue{DecimalValue: "12.50"}},
					{Kind: &Value_TimestampValue{TimestampValue: ts}},
					{Kind: &Value_BytesValue{BytesValue: []byte{0, 1, 2}}},
					{Kind: &Value_FloatValue{FloatValue: 1.5}},
				}},
		},
		Context:    "opaque-token",
		UpdatedHlc: 12345,
	}
}

func TestRecordRoundTrip(t *testing.T) {
	rec := sampleRecord()

	b, err := proto.Marshal(rec)
	if err != nil {
		t.Fatal(err)
	}
	var fromWire Record
	if err := proto.Unmarshal(b, &fromWire); err != nil {
		t.Fatal(err)
	}
	if !proto.Equal(rec, &fromWire) {
		t.Errorf("proto round trip changed the record:\n got %v\nwant %v", &fromWire, rec)
	}

	j, err := protojson.Marshal(rec)
	if err != nil {
		t.Fatal(err)
	}
	var fromJSON Record
	if err := protojson.Unmarshal(j, &fromJSON); err != nil {
		t.Fatalf("protojson.Unmarshal(%s): %v", j, err)
	}
	if !proto.Equal(rec, &fromJSON) {
		t.Errorf("protojson round trip changed the record:\n got %v\nwant %v\njson %s", &fromJSON, rec, j)
	}
}

// TestValueJSON checks that values render as natural JSON (compact form, to
// avoid protojson's deliberately unstable whitespace).
func TestValueJSON(t *testing.T) {
	ts := timestamppb.New(time.Date(2025, 1, 2, 3, 4, 5, 0, time.UTC))
	for _, tc := range []struct {
		v    *Value
		want string
	}{
		{&Value{Kind: &Value_StringValue{StringValue: "Ann"}}, `{"stringValue":"Ann"}`},
		{&Value{Kind: &Value_IntValue{IntValue: 42}}, `{"intValue":"42"}`},
		{&Value{Kind: &Value_FloatValue{FloatValue: 1.5}}, `{"floatValue":1.5}`},
		{&Value{Kind: &Value_BoolValue{BoolValue: false}}, `{"boolValue":false}`},
		{&Value{Kind: &Value_Null{}}, `{"null":null}`},
		{&Value{Kind: &Value_TimestampValue{TimestampValue: ts}}, `{"timestampValue":"2025-01-02T03:04:05Z"}`},
		{&Value{Kind: &Value_DecimalValue{DecimalValue: "12.50"}}, `{"decimalValue":"12.50"}`},
		{&Value{Kind: &Value_JsonValue{JsonValue: `{"a":1}`}}, `{"jsonValue":"{\"a\":1}"}`},
		{&Value{Kind: &Value_BytesValue{BytesValue: []byte("hi")}}, `{"bytesValue":"aGk="}`},
	} {
		got, err := protojson.Marshal(tc.v)
		if err != nil {
			t.Fatal(err)
		}
		// protojson may randomly add a space after ':' or ','; compact it.
		compact := compactJSON(t, got)
		if compact != tc.want {
			t.Errorf("protojson(%v) = %s, want %s", tc.v, compact, tc.want)
		}
		var back Value
		if err := protojson.Unmarshal([]byte(tc.want), &back); err != nil {
			t.Errorf("protojson.Unmarshal(%s): %v", tc.want, err)
		} else if !proto.Equal(&back, tc.v) {
			t.Errorf("protojson.Unmarshal(%s) = %v, want %v", tc.want, &back, tc.v)
		}
	}
}

func compactJSON(t *testing.T, b []byte) string {
	t.Helper()
	var buf bytes.Buffer
	if err := json.Compact(&buf, b); err != nil {
		t.Fatalf("json.Compact(%s): %v", b, err)
	}
	return buf.String()
}
