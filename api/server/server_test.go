package server_test

import (
	"context"
	"encoding/base64"
	"encoding/hex"
	"encoding/json"
	"fmt"
	"io"
	"log/slog"
	"net"
	"reflect"
	"strings"
	"testing"
	"time"

	"google.golang.org/grpc"
	"google.golang.org/grpc/codes"
	"google.golang.org/grpc/credentials/insecure"
	"google.golang.org/grpc/status"
	"google.golang.org/protobuf/encoding/protojson"
	"google.golang.org/protobuf/encoding/protowire"
	"google.golang.org/protobuf/proto"
	"google.golang.org/protobuf/types/known/structpb"
	"google.golang.org/protobuf/types/known/timestamppb"

	pb "github.com/lattice-sync/lattice/api/lattice/v1"
	"github.com/lattice-sync/lattice/api/server"
	"github.com/lattice-sync/lattice/crdt"
	"github.com/lattice-sync/lattice/storage"
)

// testSchema has every type, an mvr field, a priority field and a group.
const testSchema = `
entities:
  thing:
    fields:
      name: string
      email: string
      s: string
      i: int
      f: float
      b: bool
      ts: timestamp
      d: decimal
      j: json
      blob: bytes
      tags: {type: string, policy: mvr}
      phone: {type: string, policy: {priority: ["postgres:crm", "api"]}}
      street: string
      city: string
    groups:
      address: {fields: [street, city], policy: lww}
  note:
    fields:
      text: string
`

var testEntities = []string{"thing", "note"}

type testEnv struct {
	client pb.RecordsClient
	conn   *grpc.ClientConn
	store  *storage.Store
}

func quietLogger() *slog.Logger { return slog.New(slog.NewTextHandler(io.Discard, nil)) }

// startServer serves a Records server over a real loopback gRPC socket.
func startServer(t testing.TB, schemaYAML string) (pb.RecordsClient, *storage.Store) {
	env := startEnv(t, schemaYAML)
	return env.client, env.store
}

func startEnv(t testing.TB, schemaYAML string) *testEnv {
	t.Helper()
	cfg := storage.DefaultConfig(t.TempDir(), "n1")
	cfg.Logger = quietLogger()
	store, err := storage.Open(cfg)
	if err != nil {
		t.Fatalf("open store: %v", err)
	}
	t.Cleanup(func() {
		if err := store.Close(); err != nil {
			t.Errorf("close store: %v", err)
		}
	})
	schema, err := crdt.ParseSchema("test.yaml", []byte(schemaYAML))
	if err != nil {
		t.Fatalf("parse schema: %v", err)
	}
	srv, err := server.New(server.Config{Store: store, Schema: schema, Logger: quietLogger()})
	if err != nil {
		t.Fatalf("server.New: %v", err)
	}
	lis, err := net.Listen("tcp", "127.0.0.1:0")
	if err != nil {
		t.Fatalf("listen: %v", err)
	}
	gs := grpc.NewServer(server.ServerOptions()...)
	srv.Register(gs)
	go func() { _ = gs.Serve(lis) }()
	t.Cleanup(gs.GracefulStop)
	conn, err := grpc.NewClient(lis.Addr().String(), grpc.WithTransportCredentials(insecure.NewCredentials()))
	if err != nil {
		t.Fatalf("dial: %v", err)
	}
	t.Cleanup(func() { conn.Close() }) // first cleanup to run: ends open streams so GracefulStop returns
	return &testEnv{client: pb.NewRecordsClient(conn), conn: conn, store: store}
}

func tctx(t testing.TB) context.Context {
	ctx, cancel := context.WithTimeout(context.Background(), 10*time.Second)
	t.Cleanup(cancel)
	return ctx
}

// Value constructors.
func sv(s string) *pb.Value  { return &pb.Value{Kind: &pb.Value_StringValue{StringValue: s}} }
func iv(i int64) *pb.Value   { return &pb.Value{Kind: &pb.Value_IntValue{IntValue: i}} }
func fv(f float64) *pb.Value { return &pb.Value{Kind: &pb.Value_FloatValue{FloatValue: f}} }
func bv(b bool) *pb.Value    { return &pb.Value{Kind: &pb.Value_BoolValue{BoolValue: b}} }
func dv(s string) *pb.Value  { return &pb.Value{Kind: &pb.Value_DecimalValue{DecimalValue: s}} }
func jv(s string) *pb.Value  { return &pb.Value{Kind: &pb.Value_JsonValue{JsonValue: s}} }
func byv(b []byte) *pb.Value { return &pb.Value{Kind: &pb.Value_BytesValue{BytesValue: b}} }
func nullv() *pb.Value       { return &pb.Value{Kind: &pb.Value_Null{Null: structpb.NullValue_NULL_VALUE}} }
func tsv(t time.Time) *pb.Value {
	return &pb.Value{Kind: &pb.Value_TimestampValue{TimestampValue: timestamppb.New(t)}}
}

func put(t testing.TB, c pb.RecordsClient, req *pb.PutRequest) *pb.PutResponse {
	t.Helper()
	resp, err := c.Put(tctx(t), req)
	if err != nil {
		t.Fatalf("Put %s/%s %v: %v", req.GetEntity(), req.GetId(), req.GetFields(), err)
	}
	return resp
}

func putS(t testing.TB, c pb.RecordsClient, entity, id, token string, kv ...string) *pb.PutResponse {
	t.Helper()
	req := &pb.PutRequest{Entity: entity, Id: id, Context: token, Fields: map[string]*pb.Value{}}
	for i := 0; i+1 < len(kv); i += 2 {
		req.Fields[kv[i]] = sv(kv[i+1])
	}
	return put(t, c, req)
}

func get(t testing.TB, c pb.RecordsClient, entity, id string) *pb.Record {
	t.Helper()
	rec, err := c.Get(tctx(t), &pb.GetRequest{Entity: entity, Id: id})
	if err != nil {
		t.Fatalf("Get %s/%s: %v", entity, id, err)
	}
	return rec
}

func history(t testing.TB, c pb.RecordsClient, entity, id, field string) []*pb.HistoryEntry {
	t.Helper()
	resp, err := c.History(tctx(t), &pb.HistoryRequest{Entity: entity, Id: id, Field: field})
	if err != nil {
		t.Fatalf("History %s/%s %s: %v", entity, id, field, err)
	}
	return resp.GetEntries()
}

func field(t testing.TB, rec *pb.Record, name string) *pb.FieldState {
	t.Helper()
	for _, f := range rec.GetFields() {
		if f.GetName() == name {
			return f
		}
	}
	t.Fatalf("record %s/%s has no field %q", rec.GetEntity(), rec.GetId(), name)
	return nil
}

func str(v *pb.Value) string {
	if v == nil {
		return "<nil>"
	}
	if s, ok := v.GetKind().(*pb.Value_StringValue); ok {
		return s.StringValue
	}
	return fmt.Sprintf("<%v>", v)
}

func dotEq(a, b *pb.Dot) bool { return a.GetNode() == b.GetNode() && a.GetSeq() == b.GetSeq() }

func dotS(d *pb.Dot) string { return fmt.Sprintf("%s:%d", d.GetNode(), d.GetSeq()) }

func wantCode(t testing.TB, err error, code codes.Code, substr string) {
	t.Helper()
	st, _ := status.FromError(err)
	if err == nil || st.Code() != code {
		t.Fatalf("got error %v, want code %v", err, code)
	}
	if !strings.Contains(st.Message(), substr) {
		t.Fatalf("error message %q does not contain %q", st.Message(), substr)
	}
}

// ---------------------------------------------------------------------------
// Round trips, deletes, listing
// ---------------------------------------------------------------------------

func TestPutGetEveryType(t *testing.T) {
	c, _ := startServer(t, testSchema)
	when := time.Date(2024, 5, 6, 7, 8, 9, 123456000, time.UTC)
	fields := map[string]*pb.Value{
		"s":     sv("héllo, wörld"),
		"i":     iv(-42),
		"f":     fv(1.5),
		"b":     bv(true),
		"ts":    tsv(when),
		"d":     dv("-12.3400"),
		"j":     jv(`{"a":[1,2,{"b":null}]}`),
		"blob":  byv([]byte{0, 1, 2, 0xff}),
		"email": nullv(),
	}
	resp := put(t, c, &pb.PutRequest{Entity: "thing", Id: "t1", Fields: fields})
	if resp.GetDot().GetNode() != "n1" || resp.GetDot().GetSeq() != 1 || resp.GetHlc() == 0 {
		t.Errorf("put response dot=%v hlc=%d, want n1:1 and an hlc", resp.GetDot(), resp.GetHlc())
	}
	// protojson renderings of each value (int64 is a JSON string by the protojson mapping).
	wantJSON := map[string]string{
		"s":     `{"stringValue":"héllo, wörld"}`,
		"i":     `{"intValue":"-42"}`,
		"f":     `{"floatValue":1.5}`,
		"b":     `{"boolValue":true}`,
		"ts":    `{"timestampValue":"2024-05-06T07:08:09.123456Z"}`,
		"d":     `{"decimalValue":"-12.3400"}`,
		"j":     `{"jsonValue":"{\"a\":[1,2,{\"b\":null}]}"}`,
		"blob":  `{"bytesValue":"AAEC/w=="}`,
		"email": `{"null":null}`,
		"name":  `{"null":null}`, // never written
	}
	for _, rec := range []*pb.Record{resp.GetRecord(), get(t, c, "thing", "t1")} {
		if rec.GetEntity() != "thing" || rec.GetId() != "t1" || rec.GetDeleted() || rec.GetContext() == "" || rec.GetUpdatedHlc() != resp.GetHlc() {
			t.Errorf("record header: entity=%q id=%q deleted=%v context=%q updated_hlc=%d (put hlc %d)",
				rec.GetEntity(), rec.GetId(), rec.GetDeleted(), rec.GetContext(), rec.GetUpdatedHlc(), resp.GetHlc())
		}
		// Fields come in declaration order.
		var names []string
		for _, f := range rec.GetFields() {
			names = append(names, f.GetName())
		}
		if want := []string{"name", "email", "s", "i", "f", "b", "ts", "d", "j", "blob", "tags", "phone", "street", "city"}; !reflect.DeepEqual(names, want) {
			t.Errorf("field order %v, want %v", names, want)
		}
		for name, want := range wantJSON {
			f := field(t, rec, name)
			if name != "name" {
				if !proto.Equal(f.GetValue(), fields[name]) {
					t.Errorf("field %s: got %v, want %v", name, f.GetValue(), fields[name])
				}
				if len(f.GetLive()) != 1 || f.GetConflicted() || !dotEq(f.GetLive()[0].GetDot(), resp.GetDot()) || f.GetLive()[0].GetOrigin() != "api" {
					t.Errorf("field %s: live=%v conflicted=%v, want one live version by api at %v", name, f.GetLive(), f.GetConflicted(), resp.GetDot())
				}
			} else if len(f.GetLive()) != 0 {
				t.Errorf("never-written field name has live versions %v", f.GetLive())
			}
			b, err := protojson.Marshal(f.GetValue())
			if err != nil {
				t.Fatal(err)
			}
			var got, exp any
			if err := json.Unmarshal(b, &got); err != nil {
				t.Fatal(err)
			}
			if err := json.Unmarshal([]byte(want), &exp); err != nil {
				t.Fatal(err)
			}
			if !reflect.DeepEqual(got, exp) {
				t.Errorf("field %s renders as %s, want %s", name, b, want)
			}
		}
		// Version times are the HLC's physical part.
		v := field(t, rec, "s").GetLive()[0]
		if got, want := v.GetTime().AsTime().UnixMilli(), int64(v.GetHlc()>>16); got != want {
			t.Errorf("version time %d ms, want hlc physical %d ms", got, want)
		}
	}
}

// The proto documents timestamp_value as nanosecond precision.
func TestTimestampMicrosecondPrecision(t *testing.T) {
	c, _ := startServer(t, testSchema)
	when := time.Date(2024, 5, 6, 7, 8, 9, 123456789, time.UTC)
	put(t, c, &pb.PutRequest{Entity: "thing", Id: "t1", Fields: map[string]*pb.Value{"ts": tsv(when)}})
	got := field(t, get(t, c, "thing", "t1"), "ts").GetValue().GetTimestampValue().AsTime()
	if want := when.Truncate(time.Microsecond); !got.Equal(want) {
		t.Errorf("timestamp_value round trip: put %s, got %s, want %s (lattice.proto documents microsecond precision)",
			when.Format(time.RFC3339Nano), got.Format(time.RFC3339Nano), want.Format(time.RFC3339Nano))
	}
}

func TestGetMissingIsNotFound(t *testing.T) {
	c, _ := startServer(t, testSchema)
	_, err := c.Get(tctx(t), &pb.GetRequest{Entity: "thing", Id: "nope"})
	wantCode(t, err, codes.NotFound, `"nope" not found`)
	_, err = c.History(tctx(t), &pb.HistoryRequest{Entity: "thing", Id: "nope", Field: "name"})
	wantCode(t, err, codes.NotFound, "not found")
	_, err = c.Delete(tctx(t), &pb.DeleteRequest{Entity: "thing", Id: "nope"})
	wantCode(t, err, codes.NotFound, "does not exist")
	_, err = c.Resolve(tctx(t), &pb.ResolveRequest{Entity: "thing", Id: "nope", Field: "name"})
	wantCode(t, err, codes.NotFound, "does not exist")
}

func TestDeleteAndRevive(t *testing.T) {
	c, _ := startServer(t, testSchema)
	putS(t, c, "thing", "t1", "", "name", "Ann", "email", "ann@example.com")
	del, err := c.Delete(tctx(t), &pb.DeleteRequest{Entity: "thing", Id: "t1"})
	if err != nil {
		t.Fatal(err)
	}
	if !del.GetRecord().GetDeleted() || del.GetDot().GetSeq() != 2 {
		t.Fatalf("delete response: deleted=%v dot=%v", del.GetRecord().GetDeleted(), del.GetDot())
	}
	rec := get(t, c, "thing", "t1")
	if !rec.GetDeleted() {
		t.Fatalf("after delete, Get shows deleted=false")
	}
	// Fields keep their values through a delete.
	if got := str(field(t, rec, "name").GetValue()); got != "Ann" {
		t.Errorf("deleted record's name = %q, want Ann", got)
	}
	// A put that saw the delete revives the record; unnamed fields keep their values.
	rev := putS(t, c, "thing", "t1", del.GetRecord().GetContext(), "name", "Bob")
	if rev.GetRecord().GetDeleted() {
		t.Fatalf("put with the delete's context did not revive the record")
	}
	rec = get(t, c, "thing", "t1")
	if rec.GetDeleted() || str(field(t, rec, "name").GetValue()) != "Bob" || str(field(t, rec, "email").GetValue()) != "ann@example.com" {
		t.Errorf("revived record: deleted=%v name=%v email=%v", rec.GetDeleted(), field(t, rec, "name").GetValue(), field(t, rec, "email").GetValue())
	}
	// _deleted has a history of its own: false (put), true (delete), false (revive).
	h := history(t, c, "thing", "t1", crdt.DeletedField)
	var vals []bool
	for _, e := range h {
		vals = append(vals, e.GetVersion().GetValue().GetBoolValue())
	}
	if !reflect.DeepEqual(vals, []bool{false, true, false}) || h[0].GetFate() != pb.Fate_FATE_WON ||
		h[1].GetFate() != pb.Fate_FATE_SUPERSEDED || h[2].GetFate() != pb.Fate_FATE_SUPERSEDED {
		t.Errorf("_deleted history: %v", h)
	}
}

func TestListPagination(t *testing.T) {
	c, _ := startServer(t, testSchema)
	for i := 1; i <= 5; i++ {
		putS(t, c, "thing", fmt.Sprintf("r%d", i), "", "name", fmt.Sprintf("N%d", i))
	}
	putS(t, c, "note", "n0", "", "text", "other entity")
	if _, err := c.Delete(tctx(t), &pb.DeleteRequest{Entity: "thing", Id: "r3"}); err != nil {
		t.Fatal(err)
	}
	pages := func(includeDeleted bool) [][]string {
		var out [][]string
		token := ""
		for n := 0; n < 10; n++ {
			resp, err := c.List(tctx(t), &pb.ListRequest{Entity: "thing", PageSize: 2, PageToken: token, IncludeDeleted: includeDeleted})
			if err != nil {
				t.Fatal(err)
			}
			var ids []string
			for _, r := range resp.GetRecords() {
				ids = append(ids, r.GetId())
				if r.GetDeleted() != (r.GetId() == "r3") {
					t.Errorf("record %s deleted=%v", r.GetId(), r.GetDeleted())
				}
				if r.GetEntity() != "thing" {
					t.Errorf("record %s of entity %q", r.GetId(), r.GetEntity())
				}
			}
			out = append(out, ids)
			if token = resp.GetNextPageToken(); token == "" {
				return out
			}
		}
		t.Fatalf("List did not end after 10 pages: %v", out)
		return nil
	}
	if got, want := pages(false), [][]string{{"r1", "r2"}, {"r4", "r5"}}; !reflect.DeepEqual(got, want) {
		t.Errorf("pages without deleted = %v, want %v", got, want)
	}
	if got, want := pages(true), [][]string{{"r1", "r2"}, {"r3", "r4"}, {"r5"}}; !reflect.DeepEqual(got, want) {
		t.Errorf("pages with deleted = %v, want %v", got, want)
	}
	// Default page size returns all in one page.
	resp, err := c.List(tctx(t), &pb.ListRequest{Entity: "thing"})
	if err != nil {
		t.Fatal(err)
	}
	if len(resp.GetRecords()) != 4 || resp.GetNextPageToken() != "" {
		t.Errorf("default page: %d records, token %q", len(resp.GetRecords()), resp.GetNextPageToken())
	}
	// An empty entity lists nothing.
	c2, _ := startServer(t, testSchema)
	resp, err = c2.List(tctx(t), &pb.ListRequest{Entity: "thing", PageSize: 2})
	if err != nil || len(resp.GetRecords()) != 0 || resp.GetNextPageToken() != "" {
		t.Errorf("empty list: %v %v", resp, err)
	}
}

// Ids are arbitrary UTF-8 (NUL and prefixes included) and list in byte order.
func TestOddIDs(t *testing.T) {
	c, _ := startServer(t, testSchema)
	ids := []string{"a", "a\x00", "a\x00b", "a\x01", "ab", strings.Repeat("z", 512), "é"} // byte order
	for _, id := range ids {
		putS(t, c, "thing", id, "", "name", id)
	}
	var got []string
	token := ""
	for {
		resp, err := c.List(tctx(t), &pb.ListRequest{Entity: "thing", PageSize: 3, PageToken: token})
		if err != nil {
			t.Fatal(err)
		}
		for _, r := range resp.GetRecords() {
			got = append(got, r.GetId())
			if str(field(t, r, "name").GetValue()) != r.GetId() {
				t.Errorf("record %q has name %q", r.GetId(), str(field(t, r, "name").GetValue()))
			}
		}
		if token = resp.GetNextPageToken(); token == "" {
			break
		}
	}
	if !reflect.DeepEqual(got, ids) {
		t.Errorf("listed %q, want %q", got, ids)
	}
	for _, id := range ids {
		if r := get(t, c, "thing", id); r.GetId() != id {
			t.Errorf("Get(%q) returned id %q", id, r.GetId())
		}
	}
}

func TestBatchGet(t *testing.T) {
	c, _ := startServer(t, testSchema)
	putS(t, c, "thing", "a", "", "name", "A")
	putS(t, c, "thing", "b", "", "name", "B")
	putS(t, c, "note", "x", "", "text", "other entity")
	resp, err := c.BatchGet(tctx(t), &pb.BatchGetRequest{Entity: "thing", Ids: []string{"b", "zz", "a", "x", "yy"}})
	if err != nil {
		t.Fatal(err)
	}
	var ids []string
	for _, r := range resp.GetRecords() {
		ids = append(ids, r.GetId()+"="+str(field(t, r, "name").GetValue()))
	}
	if want := []string{"b=B", "a=A"}; !reflect.DeepEqual(ids, want) {
		t.Errorf("records %v, want %v", ids, want)
	}
	if want := []string{"zz", "x", "yy"}; !reflect.DeepEqual(resp.GetMissing(), want) {
		t.Errorf("missing %v, want %v", resp.GetMissing(), want)
	}
	_, err = c.BatchGet(tctx(t), &pb.BatchGetRequest{Entity: "thing", Ids: []string{"a", ""}})
	wantCode(t, err, codes.InvalidArgument, "record id is empty")
}

// ---------------------------------------------------------------------------
// Bad input changes nothing
// ---------------------------------------------------------------------------

// snapshot renders the store's full state: applied vector, every record's
// encoding, every register's kept versions (live and history) and the op log.
func snapshot(t testing.TB, s *storage.Store) string {
	t.Helper()
	var b strings.Builder
	applied := s.Applied()
	fmt.Fprintf(&b, "applied %s\n", applied)
	for _, ent := range testEntities {
		entries, more, err := s.List(ent, "", 1<<20)
		if err != nil || more {
			t.Fatalf("store.List(%s): more=%v err=%v", ent, more, err)
		}
		for _, e := range entries {
			fmt.Fprintf(&b, "record %s/%s %s\n", ent, e.ID, hex.EncodeToString(crdt.AppendRecord(nil, e.Record)))
			for _, r := range e.Record.Registers {
				vs, err := s.Versions(ent, e.ID, r.Name)
				if err != nil {
					t.Fatal(err)
				}
				for i := range vs {
					fmt.Fprintf(&b, "  version %s %s\n", r.Name, hex.EncodeToString(crdt.AppendVersion(nil, &vs[i])))
				}
			}
		}
	}
	nodes := map[string]bool{"n1": true}
	for _, e := range applied {
		nodes[e.Node] = true
	}
	for n := range nodes {
		err := s.ScanOpLog(n, 0, -1, func(e *crdt.Edit) bool {
			fmt.Fprintf(&b, "op %s %s\n", e.Dot, hex.EncodeToString(crdt.AppendEdit(nil, e)))
			return true
		})
		if err != nil {
			t.Fatal(err)
		}
	}
	return b.String()
}

// rawCodec sends pre-encoded request bytes, so a test can send what a
// non-Go client could (e.g. invalid UTF-8 in a string field).
type rawCodec struct{}

func (rawCodec) Marshal(v any) ([]byte, error) {
	if b, ok := v.([]byte); ok {
		return b, nil
	}
	return proto.Marshal(v.(proto.Message))
}
func (rawCodec) Unmarshal(data []byte, v any) error { return proto.Unmarshal(data, v.(proto.Message)) }
func (rawCodec) Name() string                       { return "proto" }

// rawPut encodes a PutRequest without UTF-8 validation.
func rawPut(entity, id, origin string, fields map[string]string) []byte {
	var b []byte
	b = protowire.AppendTag(b, 1, protowire.BytesType)
	b = protowire.AppendString(b, entity)
	b = protowire.AppendTag(b, 2, protowire.BytesType)
	b = protowire.AppendString(b, id)
	for k, v := range fields {
		var val []byte
		val = protowire.AppendTag(val, 2, protowire.BytesType) // string_value
		val = protowire.AppendString(val, v)
		var entry []byte
		entry = protowire.AppendTag(entry, 1, protowire.BytesType)
		entry = protowire.AppendString(entry, k)
		entry = protowire.AppendTag(entry, 2, protowire.BytesType)
		entry = protowire.AppendBytes(entry, val)
		b = protowire.AppendTag(b, 3, protowire.BytesType)
		b = protowire.AppendBytes(b, entry)
	}
	if origin != "" {
		b = protowire.AppendTag(b, 5, protowire.BytesType)
		b = protowire.AppendString(b, origin)
	}
	return b
}

func TestBadInputChangesNothing(t *testing.T) {
	env := startEnv(t, testSchema)
	c := env.client
	// Some state to protect: a record with a conflict, a group, a deleted record.
	first := putS(t, c, "thing", "t1", "", "name", "Ann", "street", "Main St", "city", "Springfield")
	tok := first.GetRecord().GetContext()
	putS(t, c, "thing", "t1", tok, "name", "Bob")
	putS(t, c, "thing", "t1", tok, "name", "Cara")
	putS(t, c, "thing", "gone", "", "name", "Gone")
	if _, err := c.Delete(tctx(t), &pb.DeleteRequest{Entity: "thing", Id: "gone"}); err != nil {
		t.Fatal(err)
	}
	putS(t, c, "note", "n1", "", "text", "hello")

	randomToken := base64.RawURLEncoding.EncodeToString([]byte{0x9c, 0x01, 0x7f, 0x33, 0xa0, 0x10, 0xee, 0x42})
	// A well-formed token prefix with a truncated vector.
	truncatedToken := base64.RawURLEncoding.EncodeToString([]byte{'L', 1, 3, 2, 'n'})
	one := func(name string, v *pb.Value) map[string]*pb.Value { return map[string]*pb.Value{name: v} }
	raw := func(b []byte) func(ctx context.Context) error {
		return func(ctx context.Context) error {
			return env.conn.Invoke(ctx, "/lattice.v1.Records/Put", b, &pb.PutResponse{}, grpc.ForceCodec(rawCodec{}))
		}
	}
	putReq := func(r *pb.PutRequest) func(ctx context.Context) error {
		return func(ctx context.Context) error { _, err := c.Put(ctx, r); return err }
	}
	cases := []struct {
		name string
		call func(ctx context.Context) error
		want string
	}{
		{"unknown entity", putReq(&pb.PutRequest{Entity: "nope", Id: "t1", Fields: one("name", sv("x"))}), `unknown entity "nope"`},
		{"empty entity", putReq(&pb.PutRequest{Entity: "", Id: "t1", Fields: one("name", sv("x"))}), "entity is required"},
		{"unknown field", putReq(&pb.PutRequest{Entity: "thing", Id: "t1", Fields: one("nope", sv("x"))}), `no field "nope"`},
		{"unknown field among good ones", putReq(&pb.PutRequest{Entity: "thing", Id: "t1", Fields: map[string]*pb.Value{"name": sv("x"), "nope": sv("y")}}), `no field "nope"`},
		{"wrong type", putReq(&pb.PutRequest{Entity: "thing", Id: "t1", Fields: one("i", sv("5"))}), `field "i" is int, got a string value`},
		{"wrong type in group", putReq(&pb.PutRequest{Entity: "thing", Id: "t1", Fields: one("city", iv(5))}), `field "city" is string, got a int value`},
		{"value over 1 MiB", putReq(&pb.PutRequest{Entity: "thing", Id: "t1", Fields: one("name", sv(strings.Repeat("x", crdt.MaxValueBytes+1)))}), "over the 1 MiB limit"},
		{"bytes over 1 MiB", putReq(&pb.PutRequest{Entity: "thing", Id: "t1", Fields: one("blob", byv(make([]byte, crdt.MaxValueBytes)))}), "over the 1 MiB limit"},
		{"empty id", putReq(&pb.PutRequest{Entity: "thing", Id: "", Fields: one("name", sv("x"))}), "record id is empty"},
		{"513-byte id", putReq(&pb.PutRequest{Entity: "thing", Id: strings.Repeat("a", 513), Fields: one("name", sv("x"))}), "513 bytes, over the 512-byte limit"},
		{"id with invalid UTF-8", raw(rawPut("thing", "t\xff1", "", map[string]string{"name": "x"})), "UTF-8"},
		{"string value with invalid UTF-8", raw(rawPut("thing", "t1", "", map[string]string{"name": "bad\xc3\x28"})), "UTF-8"},
		{"origin with invalid UTF-8", raw(rawPut("thing", "t1", "api\xff", map[string]string{"name": "x"})), "UTF-8"},
		{"context token random base64", putReq(&pb.PutRequest{Entity: "thing", Id: "t1", Fields: one("name", sv("x")), Context: randomToken}), "malformed context token"},
		{"context token truncated", putReq(&pb.PutRequest{Entity: "thing", Id: "t1", Fields: one("name", sv("x")), Context: truncatedToken}), "malformed context token"},
		{"context token not base64", putReq(&pb.PutRequest{Entity: "thing", Id: "t1", Fields: one("name", sv("x")), Context: "not base64!!"}), "malformed context token: not base64url"},
		{"delete with malformed context", func(ctx context.Context) error {
			_, err := c.Delete(ctx, &pb.DeleteRequest{Entity: "thing", Id: "t1", Context: "%%%"})
			return err
		}, "malformed context token"},
		{"value with no kind", putReq(&pb.PutRequest{Entity: "thing", Id: "t1", Fields: one("name", &pb.Value{})}), "no kind set"},
		{"decimal 1e5", putReq(&pb.PutRequest{Entity: "thing", Id: "t1", Fields: one("d", dv("1e5"))}), `invalid decimal "1e5"`},
		{"decimal empty", putReq(&pb.PutRequest{Entity: "thing", Id: "t1", Fields: one("d", dv(""))}), "empty decimal"},
		{"json {bad", putReq(&pb.PutRequest{Entity: "thing", Id: "t1", Fields: one("j", jv("{bad"))}), "not valid JSON"},
		{"timestamp out of range", putReq(&pb.PutRequest{Entity: "thing", Id: "t1", Fields: one("ts",
			&pb.Value{Kind: &pb.Value_TimestampValue{TimestampValue: &timestamppb.Timestamp{Seconds: 1 << 62}}})}), `field "ts"`},
		{"put with no fields", putReq(&pb.PutRequest{Entity: "thing", Id: "t1"}), "has no fields"},
		{"writing _deleted", putReq(&pb.PutRequest{Entity: "thing", Id: "t1", Fields: one("_deleted", bv(true))}), `"_deleted" is reserved`},
		{"acks=3 on a single node", putReq(&pb.PutRequest{Entity: "thing", Id: "t1", Fields: one("name", sv("x")), Acks: 3}), "acks=3"},
		{"delete acks=2 on a single node", func(ctx context.Context) error {
			_, err := c.Delete(ctx, &pb.DeleteRequest{Entity: "thing", Id: "t1", Acks: 2})
			return err
		}, "acks=2"},
		{"origin over 128 bytes", putReq(&pb.PutRequest{Entity: "thing", Id: "t1", Fields: one("name", sv("x")), Origin: strings.Repeat("o", 129)}), "129 bytes, over the 128-byte limit"},
		{"negative page_size", func(ctx context.Context) error {
			_, err := c.List(ctx, &pb.ListRequest{Entity: "thing", PageSize: -1})
			return err
		}, "page_size -1 is negative"},
		{"malformed page_token", func(ctx context.Context) error {
			_, err := c.List(ctx, &pb.ListRequest{Entity: "thing", PageToken: "%%%not-a-token"})
			return err
		}, "malformed page_token"},
		{"History of unknown field", func(ctx context.Context) error {
			_, err := c.History(ctx, &pb.HistoryRequest{Entity: "thing", Id: "t1", Field: "nope"})
			return err
		}, `no field "nope"`},
		{"History negative limit", func(ctx context.Context) error {
			_, err := c.History(ctx, &pb.HistoryRequest{Entity: "thing", Id: "t1", Field: "name", Limit: -1})
			return err
		}, "limit -1 is negative"},
		{"Resolve of unknown field", func(ctx context.Context) error {
			_, err := c.Resolve(ctx, &pb.ResolveRequest{Entity: "thing", Id: "t1", Field: "nope"})
			return err
		}, `no field "nope"`},
		{"Resolve of _deleted", func(ctx context.Context) error {
			_, err := c.Resolve(ctx, &pb.ResolveRequest{Entity: "thing", Id: "t1", Field: "_deleted"})
			return err
		}, "reserved"},
		{"Resolve with wrong type", func(ctx context.Context) error {
			_, err := c.Resolve(ctx, &pb.ResolveRequest{Entity: "thing", Id: "t1", Field: "name", Value: iv(1)})
			return err
		}, `field "name" is string, got a int value`},
		{"Resolve with value with no kind", func(ctx context.Context) error {
			_, err := c.Resolve(ctx, &pb.ResolveRequest{Entity: "thing", Id: "t1", Field: "name", Value: &pb.Value{}})
			return err
		}, "no kind set"},
		{"Resolve of a never-written field", func(ctx context.Context) error {
			_, err := c.Resolve(ctx, &pb.ResolveRequest{Entity: "thing", Id: "t1", Field: "email"})
			return err
		}, "no value to resolve"},
		{"BatchGet over the limit", func(ctx context.Context) error {
			_, err := c.BatchGet(ctx, &pb.BatchGetRequest{Entity: "thing", Ids: make([]string, server.MaxBatchGet+1)})
			return err
		}, "over the limit of 1000"},
		{"Get of empty id", func(ctx context.Context) error {
			_, err := c.Get(ctx, &pb.GetRequest{Entity: "thing", Id: ""})
			return err
		}, "record id is empty"},
		{"Watch of unknown entity", func(ctx context.Context) error {
			s, err := c.Watch(ctx, &pb.WatchRequest{Entity: "nope"})
			if err != nil {
				return err
			}
			_, err = s.Recv()
			return err
		}, `unknown entity "nope"`},
	}
	before := snapshot(t, env.store)
	for _, tc := range cases {
		t.Run(tc.name, func(t *testing.T) {
			err := tc.call(tctx(t))
			st, _ := status.FromError(err)
			if err == nil || st.Code() != codes.InvalidArgument {
				t.Errorf("got %v, want codes.InvalidArgument", err)
			} else if !strings.Contains(st.Message(), tc.want) {
				t.Errorf("message %q does not name the problem (want substring %q)", st.Message(), tc.want)
			}
			if after := snapshot(t, env.store); after != before {
				t.Errorf("store changed:\nbefore:\n%s\nafter:\n%s", before, after)
			}
		})
	}
	// A good write afterwards gets the next sequence number: the refused edits used none.
	resp := putS(t, c, "thing", "t1", "", "name", "Dan")
	if got, want := resp.GetDot().GetSeq(), env.store.Applied().Get("n1"); got != want || got != 7 {
		t.Errorf("next dot after refused edits = %v, want n1:7 (applied %v)", resp.GetDot(), env.store.Applied())
	}
}

// ---------------------------------------------------------------------------
// Conflicts, history, resolve
// ---------------------------------------------------------------------------

func TestConcurrentEditsViaStaleContext(t *testing.T) {
	c, _ := startServer(t, testSchema)
	ann := putS(t, c, "thing", "c1", "", "name", "Ann")
	tok := get(t, c, "thing", "c1").GetContext()
	bob := putS(t, c, "thing", "c1", tok, "name", "Bob")
	cara := putS(t, c, "thing", "c1", tok, "name", "Cara")
	if bob.GetHlc() >= cara.GetHlc() {
		t.Fatalf("hlc not increasing: bob %d cara %d", bob.GetHlc(), cara.GetHlc())
	}

	rec := get(t, c, "thing", "c1")
	name := field(t, rec, "name")
	if !name.GetConflicted() || len(name.GetLive()) != 2 {
		t.Fatalf("name: conflicted=%v live=%d, want a conflict of 2 live versions", name.GetConflicted(), len(name.GetLive()))
	}
	if str(name.GetValue()) != "Cara" || str(name.GetLive()[0].GetValue()) != "Cara" || !dotEq(name.GetLive()[0].GetDot(), cara.GetDot()) {
		t.Errorf("resolved %q live[0] %q %v; want Cara (later HLC) first", str(name.GetValue()), str(name.GetLive()[0].GetValue()), name.GetLive()[0].GetDot())
	}
	if str(name.GetLive()[1].GetValue()) != "Bob" || !dotEq(name.GetLive()[1].GetDot(), bob.GetDot()) {
		t.Errorf("live[1] = %q %v, want Bob %v", str(name.GetLive()[1].GetValue()), name.GetLive()[1].GetDot(), bob.GetDot())
	}
	if len(name.GetSiblings()) != 0 {
		t.Errorf("lww field has siblings %v", name.GetSiblings())
	}
	if field(t, rec, "email").GetConflicted() {
		t.Errorf("untouched field email is conflicted")
	}
	// Both concurrent versions' contexts are the stale read's.
	for _, v := range name.GetLive() {
		if got := v.GetContext().GetEntries(); !reflect.DeepEqual(got, map[string]uint64{"n1": 1}) {
			t.Errorf("version %v context %v, want {n1:1}", v.GetDot(), got)
		}
	}

	h := history(t, c, "thing", "c1", "name")
	if len(h) != 3 {
		t.Fatalf("history has %d entries, want 3: %v", len(h), h)
	}
	type row struct {
		value string
		fate  pb.Fate
	}
	var got []row
	for _, e := range h {
		got = append(got, row{str(e.GetVersion().GetValue()), e.GetFate()})
	}
	want := []row{{"Cara", pb.Fate_FATE_WON}, {"Bob", pb.Fate_FATE_LOST}, {"Ann", pb.Fate_FATE_SUPERSEDED}}
	if !reflect.DeepEqual(got, want) {
		t.Fatalf("history = %v, want %v", got, want)
	}
	if h[0].GetBy() != nil {
		t.Errorf("WON entry has by=%v, want unset", h[0].GetBy())
	}
	if !dotEq(h[1].GetBy(), cara.GetDot()) {
		t.Errorf("Bob lost to %v, want Cara's dot %v", dotS(h[1].GetBy()), dotS(cara.GetDot()))
	}
	// Ann was superseded by an edit whose context covers her dot (the earliest: Bob).
	by := h[2].GetBy()
	if !dotEq(by, bob.GetDot()) {
		t.Errorf("Ann superseded by %v, want the earliest edit that saw her, Bob %v", dotS(by), dotS(bob.GetDot()))
	}
	for _, e := range h {
		if dotEq(e.GetVersion().GetDot(), by) {
			if e.GetVersion().GetContext().GetEntries()[ann.GetDot().GetNode()] < ann.GetDot().GetSeq() {
				t.Errorf("superseding edit %v context %v does not cover Ann %v", dotS(by), e.GetVersion().GetContext(), dotS(ann.GetDot()))
			}
		}
	}
	// Newest first.
	for i := 1; i < len(h); i++ {
		if h[i-1].GetVersion().GetHlc() < h[i].GetVersion().GetHlc() {
			t.Errorf("history not newest first at %d", i)
		}
	}
	// Limit.
	lim, err := c.History(tctx(t), &pb.HistoryRequest{Entity: "thing", Id: "c1", Field: "name", Limit: 1})
	if err != nil || len(lim.GetEntries()) != 1 || str(lim.GetEntries()[0].GetVersion().GetValue()) != "Cara" {
		t.Errorf("History limit 1: %v %v", lim, err)
	}

	// A resolve with the stale token (it saw neither Bob nor Cara) is refused, changing nothing.
	_, err = c.Resolve(tctx(t), &pb.ResolveRequest{Entity: "thing", Id: "c1", Field: "name", Context: tok})
	wantCode(t, err, codes.FailedPrecondition, "arrived after your read")

	// Resolve with no value keeps the resolved value and ends the conflict.
	res, err := c.Resolve(tctx(t), &pb.ResolveRequest{Entity: "thing", Id: "c1", Field: "name"})
	if err != nil {
		t.Fatal(err)
	}
	for _, r := range []*pb.Record{res.GetRecord(), get(t, c, "thing", "c1")} {
		n := field(t, r, "name")
		if n.GetConflicted() || len(n.GetLive()) != 1 || str(n.GetValue()) != "Cara" {
			t.Errorf("after resolve: conflicted=%v live=%d value=%q, want Cara alone", n.GetConflicted(), len(n.GetLive()), str(n.GetValue()))
		}
	}
	h = history(t, c, "thing", "c1", "name")
	if len(h) != 4 || h[0].GetFate() != pb.Fate_FATE_WON || !dotEq(h[0].GetVersion().GetDot(), res.GetDot()) {
		t.Fatalf("history after resolve: %v", h)
	}
	for _, e := range h[1:] {
		if e.GetFate() != pb.Fate_FATE_SUPERSEDED {
			t.Errorf("after resolve, %q has fate %v, want SUPERSEDED", str(e.GetVersion().GetValue()), e.GetFate())
		}
	}

	// Read, then a new concurrent sibling appears (made from the old token):
	// a resolve with the read's explicit context is refused.
	read := get(t, c, "thing", "c1").GetContext()
	zed := putS(t, c, "thing", "c1", tok, "name", "Zed")
	if !field(t, zed.GetRecord(), "name").GetConflicted() {
		t.Fatalf("put from the old token is not concurrent with the resolve")
	}
	_, err = c.Resolve(tctx(t), &pb.ResolveRequest{Entity: "thing", Id: "c1", Field: "name", Context: read})
	wantCode(t, err, codes.FailedPrecondition, "arrived after your read")
	// With a fresh read it succeeds, with an explicit value.
	fresh := get(t, c, "thing", "c1").GetContext()
	res, err = c.Resolve(tctx(t), &pb.ResolveRequest{Entity: "thing", Id: "c1", Field: "name", Context: fresh, Value: sv("Final")})
	if err != nil {
		t.Fatal(err)
	}
	if n := field(t, res.GetRecord(), "name"); n.GetConflicted() || str(n.GetValue()) != "Final" {
		t.Errorf("resolve with value: conflicted=%v value=%q", n.GetConflicted(), str(n.GetValue()))
	}
}

func TestConcurrentEditsOfDifferentFieldsBothSurvive(t *testing.T) {
	c, _ := startServer(t, testSchema)
	tok := putS(t, c, "thing", "c1", "", "name", "Ann", "email", "ann@example.com").GetRecord().GetContext()
	putS(t, c, "thing", "c1", tok, "name", "Bob")
	putS(t, c, "thing", "c1", tok, "email", "bob@example.com")
	rec := get(t, c, "thing", "c1")
	if n, e := field(t, rec, "name"), field(t, rec, "email"); str(n.GetValue()) != "Bob" || str(e.GetValue()) != "bob@example.com" || n.GetConflicted() || e.GetConflicted() {
		t.Errorf("name=%q (conflicted %v) email=%q (conflicted %v), want Bob and bob@example.com without conflict",
			str(n.GetValue()), n.GetConflicted(), str(e.GetValue()), e.GetConflicted())
	}
	if rec.GetDeleted() {
		t.Errorf("record deleted")
	}
}

func TestMVRSiblings(t *testing.T) {
	c, _ := startServer(t, testSchema)
	tok := putS(t, c, "thing", "c1", "", "tags", "base").GetRecord().GetContext()
	x := putS(t, c, "thing", "c1", tok, "tags", "x")
	y := putS(t, c, "thing", "c1", tok, "tags", "y")
	f := field(t, get(t, c, "thing", "c1"), "tags")
	if !f.GetConflicted() || len(f.GetLive()) != 2 {
		t.Fatalf("tags: conflicted=%v live=%d", f.GetConflicted(), len(f.GetLive()))
	}
	var sib []string
	for _, v := range f.GetSiblings() {
		sib = append(sib, str(v))
	}
	if want := []string{"x", "y"}; !reflect.DeepEqual(sib, want) {
		t.Errorf("siblings %v, want %v", sib, want)
	}
	if str(f.GetValue()) != "y" {
		t.Errorf("mvr pick %q, want the lww pick y", str(f.GetValue()))
	}
	h := history(t, c, "thing", "c1", "tags")
	if len(h) != 3 {
		t.Fatalf("history %v", h)
	}
	if h[0].GetFate() != pb.Fate_FATE_WON || !dotEq(h[0].GetVersion().GetDot(), y.GetDot()) {
		t.Errorf("entry 0: %v", h[0])
	}
	if h[1].GetFate() != pb.Fate_FATE_SIBLING || !dotEq(h[1].GetVersion().GetDot(), x.GetDot()) || !dotEq(h[1].GetBy(), y.GetDot()) {
		t.Errorf("entry 1: fate %v by %v, want SIBLING of %v", h[1].GetFate(), h[1].GetBy(), y.GetDot())
	}
	if h[2].GetFate() != pb.Fate_FATE_SUPERSEDED {
		t.Errorf("entry 2: fate %v, want SUPERSEDED", h[2].GetFate())
	}
	// A non-mvr field never reports siblings, even in conflict.
	if s := field(t, get(t, c, "thing", "c1"), "name").GetSiblings(); len(s) != 0 {
		t.Errorf("name siblings %v", s)
	}
	// Resolve ends the sibling set.
	res, err := c.Resolve(tctx(t), &pb.ResolveRequest{Entity: "thing", Id: "c1", Field: "tags", Value: sv("x+y")})
	if err != nil {
		t.Fatal(err)
	}
	if f := field(t, res.GetRecord(), "tags"); f.GetConflicted() || len(f.GetSiblings()) != 0 || str(f.GetValue()) != "x+y" {
		t.Errorf("after resolve: %v", f)
	}
}

func TestPriorityBeatsLaterTimestamp(t *testing.T) {
	c, _ := startServer(t, testSchema)
	tok := putS(t, c, "thing", "c1", "", "phone", "base").GetRecord().GetContext()
	crm := put(t, c, &pb.PutRequest{Entity: "thing", Id: "c1", Context: tok, Origin: "postgres:crm", Fields: map[string]*pb.Value{"phone": sv("crm")}})
	api := put(t, c, &pb.PutRequest{Entity: "thing", Id: "c1", Context: tok, Origin: "api", Fields: map[string]*pb.Value{"phone": sv("api-later")}})
	other := put(t, c, &pb.PutRequest{Entity: "thing", Id: "c1", Context: tok, Origin: "sheet", Fields: map[string]*pb.Value{"phone": sv("unlisted-latest")}})
	if !(crm.GetHlc() < api.GetHlc() && api.GetHlc() < other.GetHlc()) {
		t.Fatalf("hlc order")
	}
	f := field(t, get(t, c, "thing", "c1"), "phone")
	if str(f.GetValue()) != "crm" || f.GetLive()[0].GetOrigin() != "postgres:crm" || !f.GetConflicted() || len(f.GetLive()) != 3 {
		t.Errorf("phone = %q (live[0] origin %q, conflicted %v, %d live), want crm from postgres:crm winning over later edits",
			str(f.GetValue()), f.GetLive()[0].GetOrigin(), f.GetConflicted(), len(f.GetLive()))
	}
	fates := map[string]string{}
	for _, e := range history(t, c, "thing", "c1", "phone") {
		fates[str(e.GetVersion().GetValue())] = e.GetFate().String() + " " + dotS(e.GetBy())
	}
	want := map[string]string{
		"crm":             "FATE_WON :0",
		"api-later":       "FATE_LOST " + dotS(crm.GetDot()),
		"unlisted-latest": "FATE_LOST " + dotS(crm.GetDot()),
		"base":            "FATE_SUPERSEDED " + dotS(crm.GetDot()),
	}
	if !reflect.DeepEqual(fates, want) {
		t.Errorf("fates %v, want %v", fates, want)
	}
}

func TestCausalityBeatsClocks(t *testing.T) {
	env := startEnv(t, testSchema)
	c := env.client
	// One node: a put that saw v1 supersedes it (not a lww loss).
	v1 := putS(t, c, "thing", "c1", "", "name", "v1")
	v2 := putS(t, c, "thing", "c1", v1.GetRecord().GetContext(), "name", "v2")
	h := history(t, c, "thing", "c1", "name")
	if len(h) != 2 || h[1].GetFate() != pb.Fate_FATE_SUPERSEDED || h[1].GetFate() == pb.Fate_FATE_LOST || !dotEq(h[1].GetBy(), v2.GetDot()) {
		t.Fatalf("history %v: want v1 SUPERSEDED by %v", h, v2.GetDot())
	}

	// A remote edit with an earlier clock that saw the local version still wins.
	ann := putS(t, c, "thing", "c2", "", "name", "Ann", "email", "local@example.com")
	seen, err := server.DecodeContext(ann.GetRecord().GetContext())
	if err != nil {
		t.Fatal(err)
	}
	early := crdt.Timestamp(ann.GetHlc()) - crdt.MakeTimestamp(5000, 0) // 5 s earlier
	_, err = env.store.ApplyRemote(tctx(t), &crdt.Edit{
		Entity: "thing", ID: "c2", Dot: crdt.Dot{Node: "n2", Seq: 1}, TS: early, Origin: "api",
		Writes: []crdt.Write{{Register: "name", Value: crdt.String("Remote"), Ctx: seen}},
	})
	if err != nil {
		t.Fatal(err)
	}
	// A remote edit with an earlier clock that did not see the local email is concurrent and loses.
	_, err = env.store.ApplyRemote(tctx(t), &crdt.Edit{
		Entity: "thing", ID: "c2", Dot: crdt.Dot{Node: "n2", Seq: 2}, TS: early + 1, Origin: "api",
		Writes: []crdt.Write{{Register: "email", Value: crdt.String("remote@example.com")}},
	})
	if err != nil {
		t.Fatal(err)
	}
	rec := get(t, c, "thing", "c2")
	if n := field(t, rec, "name"); str(n.GetValue()) != "Remote" || n.GetConflicted() {
		t.Errorf("name = %q conflicted=%v, want Remote (it saw Ann) despite its earlier timestamp", str(n.GetValue()), n.GetConflicted())
	}
	if e := field(t, rec, "email"); str(e.GetValue()) != "local@example.com" || !e.GetConflicted() {
		t.Errorf("email = %q conflicted=%v, want local@example.com winning a concurrent conflict", str(e.GetValue()), e.GetConflicted())
	}
	h = history(t, c, "thing", "c2", "name")
	if len(h) != 2 {
		t.Fatalf("history %v", h)
	}
	// Newest first by HLC: Ann is newer by clock, yet superseded.
	if str(h[0].GetVersion().GetValue()) != "Ann" || h[0].GetFate() != pb.Fate_FATE_SUPERSEDED || dotS(h[0].GetBy()) != "n2:1" {
		t.Errorf("Ann entry: %q fate %v by %v, want SUPERSEDED by n2:1", str(h[0].GetVersion().GetValue()), h[0].GetFate(), dotS(h[0].GetBy()))
	}
	if str(h[1].GetVersion().GetValue()) != "Remote" || h[1].GetFate() != pb.Fate_FATE_WON {
		t.Errorf("Remote entry: %q fate %v, want WON", str(h[1].GetVersion().GetValue()), h[1].GetFate())
	}
	he := history(t, c, "thing", "c2", "email")
	if len(he) != 2 || he[1].GetFate() != pb.Fate_FATE_LOST || !dotEq(he[1].GetBy(), ann.GetDot()) {
		t.Errorf("email history %v: want the remote email LOST to %v", he, ann.GetDot())
	}
}

func TestGroupNeverMixesConcurrentEdits(t *testing.T) {
	c, _ := startServer(t, testSchema)
	tok := putS(t, c, "thing", "c1", "", "street", "1 Old Rd", "city", "Oldtown").GetRecord().GetContext()
	putS(t, c, "thing", "c1", tok, "street", "2 New St") // writer A: (2 New St, Oldtown)
	putS(t, c, "thing", "c1", tok, "city", "Newcity")    // writer B: (1 Old Rd, Newcity)
	rec := get(t, c, "thing", "c1")
	st, ci := field(t, rec, "street"), field(t, rec, "city")
	got := [2]string{str(st.GetValue()), str(ci.GetValue())}
	writerA := [2]string{"2 New St", "Oldtown"}
	writerB := [2]string{"1 Old Rd", "Newcity"}
	if got != writerA && got != writerB {
		t.Errorf("resolved address = %v: a mix of two concurrent edits, want one writer's pair %v or %v", got, writerA, writerB)
	}
	if !st.GetConflicted() || !ci.GetConflicted() {
		t.Errorf("street conflicted=%v city conflicted=%v, want both (one group register)", st.GetConflicted(), ci.GetConflicted())
	}
	// Every live version of the group holds a full pair some writer meant.
	for i := range st.GetLive() {
		pair := [2]string{str(st.GetLive()[i].GetValue()), str(ci.GetLive()[i].GetValue())}
		if pair != writerA && pair != writerB {
			t.Errorf("live version %v of the group = %v, which neither writer wrote", st.GetLive()[i].GetDot(), pair)
		}
	}
	// A single writer's partial group update keeps the other member.
	putS(t, c, "thing", "c2", "", "street", "S", "city", "C")
	putS(t, c, "thing", "c2", "", "city", "C2")
	rec = get(t, c, "thing", "c2")
	if got := [2]string{str(field(t, rec, "street").GetValue()), str(field(t, rec, "city").GetValue())}; got != [2]string{"S", "C2"} {
		t.Errorf("sequential group update = %v, want [S C2]", got)
	}
	// History of a member shows that member's values.
	h := history(t, c, "thing", "c2", "street")
	if len(h) != 2 || str(h[0].GetVersion().GetValue()) != "S" || str(h[1].GetVersion().GetValue()) != "S" {
		t.Errorf("street history %v", h)
	}
}

// ---------------------------------------------------------------------------
// Watch
// ---------------------------------------------------------------------------

type watcher struct {
	t      testing.TB
	cancel context.CancelFunc
	ch     chan *pb.WatchEvent
	errc   chan error
}

func watch(t testing.TB, c pb.RecordsClient, req *pb.WatchRequest) *watcher {
	t.Helper()
	ctx, cancel := context.WithCancel(context.Background())
	t.Cleanup(cancel)
	s, err := c.Watch(ctx, req)
	if err != nil {
		t.Fatalf("Watch: %v", err)
	}
	w := &watcher{t: t, cancel: cancel, ch: make(chan *pb.WatchEvent, 1024), errc: make(chan error, 1)}
	go func() {
		for {
			ev, err := s.Recv()
			if err != nil {
				w.errc <- err
				return
			}
			w.ch <- ev
		}
	}()
	return w
}

func (w *watcher) next(timeout time.Duration) (*pb.WatchEvent, error) {
	select {
	case ev := <-w.ch:
		return ev, nil
	case err := <-w.errc:
		return nil, err
	case <-time.After(timeout):
		return nil, nil
	}
}

func (w *watcher) must() *pb.WatchEvent {
	w.t.Helper()
	ev, err := w.next(5 * time.Second)
	if err != nil || ev == nil {
		w.t.Fatalf("no watch event: %v", err)
	}
	return ev
}

func cursorSeq(t testing.TB, cursor string) uint64 {
	t.Helper()
	vv, err := server.DecodeContext(cursor)
	if err != nil {
		t.Fatalf("cursor %q: %v", cursor, err)
	}
	return vv.Get("n1")
}

// sync makes sure a "from now" watcher is live: it puts sentinel records until
// the watcher reports one, then drains up to the last sentinel.
func (w *watcher) sync(c pb.RecordsClient) {
	w.t.Helper()
	for i := 0; i < 50; i++ {
		id := fmt.Sprintf("sync-%d", i)
		putS(w.t, c, "thing", id, "", "name", "sync")
		ev, err := w.next(300 * time.Millisecond)
		if err != nil {
			w.t.Fatalf("watch: %v", err)
		}
		if ev == nil {
			continue
		}
		for ev.GetRecord().GetId() != id {
			ev = w.must()
		}
		return
	}
	w.t.Fatalf("watcher never reported a sentinel")
}

func TestWatch(t *testing.T) {
	env := startEnv(t, testSchema)
	c := env.client
	putS(t, c, "thing", "before", "", "name", "before the watch")

	live := watch(t, c, &pb.WatchRequest{})
	live.sync(c)
	base := env.store.Applied().Get("n1")

	var events []*pb.WatchEvent
	ids := []string{"w1", "w2", "w3"}
	for _, id := range ids {
		putS(t, c, "thing", id, "", "name", "N"+id)
		events = append(events, live.must())
	}
	putS(t, c, "note", "nt1", "", "text", "note text")
	events = append(events, live.must())
	for i, ev := range events {
		wantID := "nt1"
		if i < len(ids) {
			wantID = ids[i]
		}
		if ev.GetRecord().GetId() != wantID {
			t.Errorf("event %d is for %s, want %s", i, ev.GetRecord().GetId(), wantID)
		}
		if got := cursorSeq(t, ev.GetCursor()); got != base+uint64(i)+1 {
			t.Errorf("event %d cursor at n1:%d, want n1:%d", i, got, base+uint64(i)+1)
		}
	}
	if got := str(field(t, events[0].GetRecord(), "name").GetValue()); got != "Nw1" {
		t.Errorf("event record name %q", got)
	}
	if ev, err := live.next(200 * time.Millisecond); ev != nil || err != nil {
		t.Errorf("unexpected extra event %v %v", ev, err)
	}

	// Resume after the 2nd event: exactly the later changes, then live ones.
	resumed := watch(t, c, &pb.WatchRequest{Cursor: events[1].GetCursor()})
	if ev := resumed.must(); ev.GetRecord().GetId() != "w3" || ev.GetCursor() != events[2].GetCursor() {
		t.Errorf("resumed first event %s cursor n1:%d, want w3 at n1:%d", ev.GetRecord().GetId(), cursorSeq(t, ev.GetCursor()), cursorSeq(t, events[2].GetCursor()))
	}
	if ev := resumed.must(); ev.GetRecord().GetId() != "nt1" {
		t.Errorf("resumed second event %s, want nt1", ev.GetRecord().GetId())
	}
	putS(t, c, "thing", "w4", "", "name", "Nw4")
	if ev := resumed.must(); ev.GetRecord().GetId() != "w4" {
		t.Errorf("resumed live event %s, want w4", ev.GetRecord().GetId())
	}
	if ev := live.must(); ev.GetRecord().GetId() != "w4" {
		t.Errorf("live watcher event %s, want w4", ev.GetRecord().GetId())
	}

	// from_start replays the whole op log in order.
	total := env.store.Applied().Get("n1")
	var logIDs []string
	if err := env.store.ScanOpLog("n1", 0, -1, func(e *crdt.Edit) bool { logIDs = append(logIDs, e.ID); return true }); err != nil {
		t.Fatal(err)
	}
	all := watch(t, c, &pb.WatchRequest{FromStart: true})
	for i := uint64(1); i <= total; i++ {
		ev := all.must()
		if got := cursorSeq(t, ev.GetCursor()); got != i {
			t.Errorf("from_start event %d at cursor n1:%d", i, got)
		}
		if ev.GetRecord().GetId() != logIDs[i-1] {
			t.Errorf("from_start event %d for %s, want %s", i, ev.GetRecord().GetId(), logIDs[i-1])
		}
	}
	putS(t, c, "thing", "w5", "", "name", "Nw5")
	if ev := all.must(); ev.GetRecord().GetId() != "w5" {
		t.Errorf("from_start live event %s, want w5", ev.GetRecord().GetId())
	}

	// Entity filter: only notes, from the start and live.
	notes := watch(t, c, &pb.WatchRequest{Entity: "note", FromStart: true})
	if ev := notes.must(); ev.GetRecord().GetId() != "nt1" || ev.GetRecord().GetEntity() != "note" {
		t.Errorf("note watcher got %s/%s", ev.GetRecord().GetEntity(), ev.GetRecord().GetId())
	}
	putS(t, c, "thing", "w6", "", "name", "Nw6")
	putS(t, c, "note", "nt2", "", "text", "second note")
	if ev := notes.must(); ev.GetRecord().GetId() != "nt2" {
		t.Errorf("note watcher got %s/%s, want note/nt2", ev.GetRecord().GetEntity(), ev.GetRecord().GetId())
	}

	// Deletes are changes too.
	if _, err := c.Delete(tctx(t), &pb.DeleteRequest{Entity: "note", Id: "nt2"}); err != nil {
		t.Fatal(err)
	}
	if ev := notes.must(); ev.GetRecord().GetId() != "nt2" || !ev.GetRecord().GetDeleted() {
		t.Errorf("delete event %v", ev.GetRecord())
	}

	// Malformed cursors.
	for _, cur := range []string{"%%%", base64.RawURLEncoding.EncodeToString([]byte("garbage"))} {
		bad := watch(t, c, &pb.WatchRequest{Cursor: cur})
		ev, err := bad.next(5 * time.Second)
		if ev != nil {
			t.Errorf("cursor %q: got event %v", cur, ev)
		}
		wantCode(t, err, codes.InvalidArgument, "malformed cursor")
	}
}

// Watchers end when the server stops: the stream is not left hanging.
func TestWatchEndsOnStoreClose(t *testing.T) {
	env := startEnv(t, testSchema)
	w := watch(t, env.client, &pb.WatchRequest{FromStart: true})
	w.sync(env.client)
	if err := env.store.Close(); err != nil {
		t.Fatal(err)
	}
	_, err := w.next(5 * time.Second)
	wantCode(t, err, codes.Unavailable, "shutting down")
	_, err = env.client.Put(tctx(t), &pb.PutRequest{Entity: "thing", Id: "x", Fields: map[string]*pb.Value{"name": sv("x")}})
	if status.Code(err) != codes.Unavailable {
		t.Errorf("put on a closed store: %v, want Unavailable", err)
	}
}
