package check

import (
	"context"
	"encoding/json"
	"fmt"
	"io"
	"sort"
	"time"

	"google.golang.org/grpc/codes"
	"google.golang.org/grpc/status"
	"google.golang.org/protobuf/encoding/protojson"

	pb "github.com/lattice-sync/lattice/api/lattice/v1"
	"github.com/lattice-sync/lattice/jepsen/history"
	"github.com/lattice-sync/lattice/jepsen/workload"
)

// ReadFinal reads, through the public API of every node, every record of
// the entity (List with deleted ones, plus the keys given) and the history
// of each of its fields and of _deleted.
func ReadFinal(ctx context.Context, nodes []workload.Node, s *Schema, keys []string) *Final {
	f := &Final{Records: map[string]map[string]*pb.Record{}, History: map[string]map[string]map[string]*pb.HistoryResponse{}}
	all := map[string]bool{}
	for _, k := range keys {
		all[k] = true
	}
	call := func() (context.Context, context.CancelFunc) { return context.WithTimeout(ctx, 10*time.Second) }
	for _, nd := range nodes {
		token := ""
		for {
			c, cancel := call()
			resp, err := nd.Records.List(c, &pb.ListRequest{Entity: s.Entity, IncludeDeleted: true, PageSize: 1000, PageToken: token})
			cancel()
			if err != nil {
				f.Errors = append(f.Errors, fmt.Sprintf("%s: list: %v", nd.ID, err))
				break
			}
			for _, r := range resp.GetRecords() {
				all[r.GetId()] = true
			}
			if token = resp.GetNextPageToken(); token == "" {
				break
			}
		}
	}
	for k := range all {
		f.Keys = append(f.Keys, k)
	}
	sort.Strings(f.Keys)
	fields := append(s.FieldNames(), DeletedField)
	for _, nd := range nodes {
		f.Records[nd.ID] = map[string]*pb.Record{}
		f.History[nd.ID] = map[string]map[string]*pb.HistoryResponse{}
		for _, k := range f.Keys {
			c, cancel := call()
			rec, err := nd.Records.Get(c, &pb.GetRequest{Entity: s.Entity, Id: k})
			cancel()
			switch {
			case status.Code(err) == codes.NotFound:
				continue
			case err != nil:
				f.Errors = append(f.Errors, fmt.Sprintf("%s: get %s: %v", nd.ID, k, err))
				continue
			}
			f.Records[nd.ID][k] = rec
			f.History[nd.ID][k] = map[string]*pb.HistoryResponse{}
			for _, field := range fields {
				c, cancel := call()
				h, err := nd.Records.History(c, &pb.HistoryRequest{Entity: s.Entity, Id: k, Field: field})
				cancel()
				if err != nil {
					f.Errors = append(f.Errors, fmt.Sprintf("%s: history %s.%s: %v", nd.ID, k, field, err))
					continue
				}
				f.History[nd.ID][k][field] = h
			}
		}
	}
	return f
}

// versions returns node's history of key.field, oldest first by (hlc, dot).
// The result is cached and shared: callers must not modify it.
func (f *Final) versions(node, key, field string) []version {
	ck := node + "\x00" + key + "\x00" + field
	if vs, ok := f.cache[ck]; ok {
		return vs
	}
	if f.cache == nil {
		f.cache = map[string][]version{}
	}
	h := f.History[node][key][field]
	if h == nil {
		f.cache[ck] = nil
		return nil
	}
	vs := versionsOf(h)
	defer func() { f.cache[ck] = vs }()
	sort.SliceStable(vs, func(i, j int) bool {
		if vs[i].HLC != vs[j].HLC {
			return vs[i].HLC < vs[j].HLC
		}
		return dotLess(vs[i].Dot, vs[j].Dot)
	})
	return vs
}

func dotLess(a, b history.Dot) bool {
	if a.Node != b.Node {
		return a.Node < b.Node
	}
	return a.Seq < b.Seq
}

// WriteJSON writes the final state as JSON (the harness keeps it beside a
// failed run's history): keys, and per node and key the record and each
// field's history as the API returned them.
func (f *Final) WriteJSON(w io.Writer) error {
	type keyState struct {
		Record  json.RawMessage            `json:"record,omitempty"`
		History map[string]json.RawMessage `json:"history,omitempty"`
	}
	out := struct {
		Keys   []string                       `json:"keys"`
		Errors []string                       `json:"errors,omitempty"`
		Nodes  map[string]map[string]keyState `json:"nodes"`
	}{Keys: f.Keys, Errors: f.Errors, Nodes: map[string]map[string]keyState{}}
	for node, recs := range f.Records {
		out.Nodes[node] = map[string]keyState{}
		for key, rec := range recs {
			ks := keyState{History: map[string]json.RawMessage{}}
			ks.Record, _ = protojson.Marshal(rec)
			for field, h := range f.History[node][key] {
				ks.History[field], _ = protojson.Marshal(h)
			}
			out.Nodes[node][key] = ks
		}
	}
	enc := json.NewEncoder(w)
	return enc.Encode(out)
}
