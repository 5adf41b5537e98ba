package server

import (
	"context"
	"encoding/base64"
	"errors"
	"fmt"
	"log/slog"
	"sort"
	"sync/atomic"
	"unicode/utf8"

	"google.golang.org/grpc"
	"google.golang.org/grpc/codes"
	"google.golang.org/grpc/status"

	pb "github.com/lattice-sync/lattice/api/lattice/v1"
	"github.com/lattice-sync/lattice/crdt"
	"github.com/lattice-sync/lattice/storage"
)

// Limits on requests.
const (
	DefaultPageSize = 100
	MaxPageSize     = 1000
	MaxBatchGet     = 1000
	MaxOriginBytes  = 128
	DefaultOrigin   = "api"
)

// Replicator waits for an edit to be durable on more nodes (write concern).
// The cluster provides it; a single node has none.
type Replicator interface {
	// WaitAcks returns once n nodes, this one included, hold the edit durably.
	WaitAcks(ctx context.Context, dot crdt.Dot, n int) error
}

// Config configures the Records server.
type Config struct {
	Store      *storage.Store
	Schema     *crdt.Schema
	Replicator Replicator
	Logger     *slog.Logger
}

// Records implements lattice.v1.Records. Handlers are thin: they validate
// and convert requests, call the store, and map domain errors to gRPC codes.
type Records struct {
	pb.UnimplementedRecordsServer
	store      *storage.Store
	schema     atomic.Pointer[crdt.Schema]
	replicator Replicator
	log        *slog.Logger
}

// New returns a Records server.
func New(cfg Config) (*Records, error) {
	if cfg.Store == nil {
		return nil, errors.New("server: store is required")
	}
	if err := cfg.Schema.Validate(); err != nil {
		return nil, fmt.Errorf("server: schema: %w", err)
	}
	if cfg.Logger == nil {
		cfg.Logger = slog.Default()
	}
	r := &Records{store: cfg.Store, replicator: cfg.Replicator, log: cfg.Logger.With("component", "api")}
	r.schema.Store(cfg.Schema)
	return r, nil
}

// Register adds the service to a gRPC server.
func (r *Records) Register(s *grpc.Server) { pb.RegisterRecordsServer(s, r) }

// SetSchema swaps the schema (configuration changes); reads and writes that
// start afterwards use it. Since every live version is kept, a policy change
// re-derives resolved values on the next read.
func (r *Records) SetSchema(s *crdt.Schema) error {
	if err := s.Validate(); err != nil {
		return err
	}
	r.schema.Store(s)
	return nil
}

// Schema returns the schema in use.
func (r *Records) Schema() *crdt.Schema { return r.schema.Load() }

func (r *Records) entity(name string) (*crdt.Entity, error) {
	if name == "" {
		return nil, status.Error(codes.InvalidArgument, "entity is required")
	}
	ent, ok := r.schema.Load().Entity(name)
	if !ok {
		names := []string{}
		for _, e := range r.schema.Load().Entities {
			names = append(names, e.Name)
		}
		return nil, status.Errorf(codes.InvalidArgument, "unknown entity %q (configured: %v)", name, names)
	}
	return ent, nil
}

// toStatus maps domain errors to gRPC status codes.
func toStatus(err error) error {
	if err == nil {
		return nil
	}
	if _, ok := status.FromError(err); ok {
		return err
	}
	switch {
	case errors.Is(err, crdt.ErrInvalid):
		return status.Error(codes.InvalidArgument, trimInvalid(err))
	case errors.Is(err, crdt.ErrStaleContext):
		return status.Error(codes.FailedPrecondition, err.Error())
	case errors.Is(err, storage.ErrNotFound):
		return status.Error(codes.NotFound, err.Error())
	case errors.Is(err, storage.ErrClosed):
		return status.Error(codes.Unavailable, "node is shutting down: retry on another node")
	case errors.Is(err, context.DeadlineExceeded):
		return status.Error(codes.DeadlineExceeded, err.Error())
	case errors.Is(err, context.Canceled):
		return status.Error(codes.Canceled, err.Error())
	}
	return status.Error(codes.Internal, err.Error())
}

func trimInvalid(err error) string {
	s := err.Error()
	const p = "invalid input: "
	if len(s) > len(p) && s[:len(p)] == p {
		return s[len(p):]
	}
	return s
}

func checkOrigin(o string) (string, error) {
	switch {
	case o == "":
		return DefaultOrigin, nil
	case len(o) > MaxOriginBytes:
		return "", status.Errorf(codes.InvalidArgument, "origin is %d bytes, over the %d-byte limit", len(o), MaxOriginBytes)
	case !utf8.ValidString(o):
		return "", status.Error(codes.InvalidArgument, "origin is not valid UTF-8")
	}
	return o, nil
}

func (r *Records) editContext(token string) (crdt.EditContext, error) {
	if token == "" {
		return crdt.EditContext{}, nil
	}
	vv, err := DecodeContext(token)
	if err != nil {
		return crdt.EditContext{}, status.Error(codes.InvalidArgument, err.Error())
	}
	return crdt.EditContext{Token: vv, Explicit: true}, nil
}

// Get returns one record.
func (r *Records) Get(ctx context.Context, req *pb.GetRequest) (*pb.Record, error) {
	ent, err := r.entity(req.GetEntity())
	if err != nil {
		return nil, err
	}
	if err := crdt.CheckID(req.GetId()); err != nil {
		return nil, toStatus(err)
	}
	rec, err := r.store.Get(ent.Name, req.GetId())
	if errors.Is(err, storage.ErrNotFound) {
		return nil, status.Errorf(codes.NotFound, "%s %q not found", ent.Name, req.GetId())
	}
	if err != nil {
		return nil, toStatus(err)
	}
	return recordToProto(ent, req.GetId(), rec), nil
}

// BatchGet returns several records in request order.
func (r *Records) BatchGet(ctx context.Context, req *pb.BatchGetRequest) (*pb.BatchGetResponse, error) {
	ent, err := r.entity(req.GetEntity())
	if err != nil {
		return nil, err
	}
	if n := len(req.GetIds()); n > MaxBatchGet {
		return nil, status.Errorf(codes.InvalidArgument, "batch of %d ids is over the limit of %d", n, MaxBatchGet)
	}
	out := &pb.BatchGetResponse{}
	for _, id := range req.GetIds() {
		if err := crdt.CheckID(id); err != nil {
			return nil, toStatus(err)
		}
		rec, err := r.store.Get(ent.Name, id)
		if errors.Is(err, storage.ErrNotFound) {
			out.Missing = append(out.Missing, id)
			continue
		}
		if err != nil {
			return nil, toStatus(err)
		}
		out.Records = append(out.Records, recordToProto(ent, id, rec))
	}
	return out, nil
}

// List pages through an entity's records in id order.
func (r *Records) List(ctx context.Context, req *pb.ListRequest) (*pb.ListResponse, error) {
	ent, err := r.entity(req.GetEntity())
	if err != nil {
		return nil, err
	}
	size := int(req.GetPageSize())
	switch {
	case size < 0:
		return nil, status.Errorf(codes.InvalidArgument, "page_size %d is negative", size)
	case size == 0:
		size = DefaultPageSize
	case size > MaxPageSize:
		size = MaxPageSize
	}
	after := ""
	if t := req.GetPageToken(); t != "" {
		b, err := base64.RawURLEncoding.DecodeString(t)
		if err != nil || len(b) == 0 {
			return nil, status.Error(codes.InvalidArgument, "malformed page_token: pass next_page_token from the previous response verbatim")
		}
		after = string(b)
	}
	out := &pb.ListResponse{}
	for len(out.Records) < size {
		entries, more, err := r.store.List(ent.Name, after, size-len(out.Records))
		if err != nil {
			return nil, toStatus(err)
		}
		for _, e := range entries {
			after = e.ID
			p := recordToProto(ent, e.ID, e.Record)
			if p.Deleted && !req.GetIncludeDeleted() {
				continue
			}
			out.Records = append(out.Records, p)
		}
		if !more {
			return out, nil
		}
	}
	out.NextPageToken = base64.RawURLEncoding.EncodeToString([]byte(after))
	return out, nil
}

// Put writes fields of a record.
func (r *Records) Put(ctx context.Context, req *pb.PutRequest) (*pb.PutResponse, error) {
	ent, err := r.entity(req.GetEntity())
	if err != nil {
		return nil, err
	}
	if len(req.GetFields()) == 0 {
		return nil, status.Errorf(codes.InvalidArgument, "put of %s %q has no fields", ent.Name, req.GetId())
	}
	fields := make(map[string]crdt.Value, len(req.GetFields()))
	names := make([]string, 0, len(req.GetFields()))
	for n := range req.GetFields() {
		names = append(names, n)
	}
	sort.Strings(names)
	for _, n := range names {
		v, err := valueFromProto(n, req.GetFields()[n])
		if err != nil {
			return nil, status.Error(codes.InvalidArgument, err.Error())
		}
		fields[n] = v
	}
	return r.write(ctx, ent, req.GetId(), req.GetOrigin(), req.GetContext(), req.GetAcks(),
		func(rec *crdt.Record, ec crdt.EditContext) ([]crdt.Write, error) {
			return ent.PreparePut(rec, fields, ec)
		})
}

// Delete writes a tombstone.
func (r *Records) Delete(ctx context.Context, req *pb.DeleteRequest) (*pb.PutResponse, error) {
	ent, err := r.entity(req.GetEntity())
	if err != nil {
		return nil, err
	}
	return r.write(ctx, ent, req.GetId(), req.GetOrigin(), req.GetContext(), req.GetAcks(),
		func(rec *crdt.Record, ec crdt.EditContext) ([]crdt.Write, error) {
			if len(rec.Registers) == 0 {
				return nil, fmt.Errorf("%w: %s %q does not exist", storage.ErrNotFound, ent.Name, req.GetId())
			}
			return ent.PrepareDelete(rec, ec)
		})
}

// Resolve ends a conflict on one field.
func (r *Records) Resolve(ctx context.Context, req *pb.ResolveRequest) (*pb.PutResponse, error) {
	ent, err := r.entity(req.GetEntity())
	if err != nil {
		return nil, err
	}
	var value *crdt.Value
	if req.GetValue() != nil {
		v, err := valueFromProto(req.GetField(), req.GetValue())
		if err != nil {
			return nil, status.Error(codes.InvalidArgument, err.Error())
		}
		value = &v
	}
	return r.write(ctx, ent, req.GetId(), req.GetOrigin(), req.GetContext(), 0,
		func(rec *crdt.Record, ec crdt.EditContext) ([]crdt.Write, error) {
			if len(rec.Registers) == 0 {
				return nil, fmt.Errorf("%w: %s %q does not exist", storage.ErrNotFound, ent.Name, req.GetId())
			}
			return ent.PrepareResolve(rec, req.GetField(), value, ec)
		})
}

func (r *Records) write(ctx context.Context, ent *crdt.Entity, id, origin, token string, acks uint32,
	prepare func(*crdt.Record, crdt.EditContext) ([]crdt.Write, error)) (*pb.PutResponse, error) {
	if err := crdt.CheckID(id); err != nil {
		return nil, toStatus(err)
	}
	origin, err := checkOrigin(origin)
	if err != nil {
		return nil, err
	}
	ec, err := r.editContext(token)
	if err != nil {
		return nil, err
	}
	if acks > 1 && r.replicator == nil {
		return nil, status.Errorf(codes.InvalidArgument, "write concern acks=%d needs %d nodes, but this node runs alone: use acks=1", acks, acks)
	}
	res, err := r.store.Write(ctx, ent.Name, id, origin, func(rec *crdt.Record, env storage.Env) ([]crdt.Write, error) {
		ec.Applied, ec.History = env.Applied, env.History
		return prepare(rec, ec)
	})
	if err != nil {
		return nil, toStatus(err)
	}
	if acks > 1 {
		if err := r.replicator.WaitAcks(ctx, res.Edit.Dot, int(acks)); err != nil {
			return nil, status.Errorf(codes.DeadlineExceeded,
				"edit %s is applied on this node and will still replicate, but %d nodes did not confirm it in time: %v", res.Edit.Dot, acks, err)
		}
	}
	return &pb.PutResponse{Dot: dotToProto(res.Edit.Dot), Hlc: uint64(res.Edit.TS), Record: recordToProto(ent, id, res.Record)}, nil
}

// History lists every kept version of a field with its fate, newest first.
func (r *Records) History(ctx context.Context, req *pb.HistoryRequest) (*pb.HistoryResponse, error) {
	ent, err := r.entity(req.GetEntity())
	if err != nil {
		return nil, err
	}
	if err := crdt.CheckID(req.GetId()); err != nil {
		return nil, toStatus(err)
	}
	field := req.GetField()
	if field != crdt.DeletedField {
		if _, ok := ent.Field(field); !ok {
			return nil, status.Errorf(codes.InvalidArgument, "entity %q has no field %q", ent.Name, field)
		}
	}
	if req.GetLimit() < 0 {
		return nil, status.Errorf(codes.InvalidArgument, "limit %d is negative", req.GetLimit())
	}
	register := ent.RegisterOf(field)
	versions, err := r.store.Versions(ent.Name, req.GetId(), register)
	if errors.Is(err, storage.ErrNotFound) {
		return nil, status.Errorf(codes.NotFound, "%s %q not found", ent.Name, req.GetId())
	}
	if err != nil {
		return nil, toStatus(err)
	}
	verdicts := crdt.Fates(versions, ent.PolicyOf(register))
	member := memberIndex(ent, field)
	type entry struct {
		v crdt.Version
		f crdt.Verdict
	}
	entries := make([]entry, len(versions))
	for i := range versions {
		v := versions[i]
		if member >= 0 {
			if ms := v.Value.Members(); member < len(ms) {
				v.Value = ms[member]
			} else {
				v.Value = crdt.Null
			}
		}
		entries[i] = entry{v, verdicts[i]}
	}
	sort.Slice(entries, func(a, b int) bool {
		x, y := &entries[a].v, &entries[b].v
		if x.TS != y.TS {
			return x.TS > y.TS
		}
		return x.Dot.Compare(y.Dot) > 0
	})
	if l := int(req.GetLimit()); l > 0 && l < len(entries) {
		entries = entries[:l]
	}
	out := &pb.HistoryResponse{Entity: ent.Name, Id: req.GetId(), Field: field}
	for _, e := range entries {
		he := &pb.HistoryEntry{Version: versionToProto(&e.v), Fate: pb.Fate(e.f.Fate)}
		if e.f.Fate == crdt.FateSuperseded || e.f.Fate == crdt.FateLost || e.f.Fate == crdt.FateSibling {
			he.By = dotToProto(e.f.By)
		}
		out.Entries = append(out.Entries, he)
	}
	return out, nil
}

func memberIndex(ent *crdt.Entity, field string) int {
	f, ok := ent.Field(field)
	if !ok || f.Group == "" {
		return -1
	}
	for _, g := range ent.Groups {
		if g.Name == f.Group {
			for i, m := range g.Fields {
				if m == field {
					return i
				}
			}
		}
	}
	return -1
}
