package check

import (
	"bytes"
	"fmt"
	"sort"
	"strings"

	"google.golang.org/protobuf/proto"

	pb "github.com/lattice-sync/lattice/api/lattice/v1"
)

// Convergence checks invariant 1: once faults healed and traffic stopped,
// the nodes' digests agreed within the timeout, and every node returns
// byte-identical records (Get) and field histories (History, _deleted
// included) for every key any node lists.
type Convergence struct{}

// Name implements Checker.
func (Convergence) Name() string { return "convergence" }

// Check implements Checker.
func (Convergence) Check(in *Input) Result {
	r := newResult("convergence")
	r.Stats["converge_seconds"] = in.ConvergeTook.Seconds()
	if in.ConvergeErr != "" {
		r.violate("digests did not agree: %s", in.ConvergeErr)
	}
	if in.Final == nil {
		r.violate("no final state was read")
		return r.done()
	}
	for _, e := range in.Final.Errors {
		r.violate("final read failed: %s", e)
	}
	r.Stats["keys"] = len(in.Final.Keys)
	marshal := proto.MarshalOptions{Deterministic: true}
	for _, key := range in.Final.Keys {
		// Records: group the nodes by the bytes they returned.
		var groups []string
		byBytes := map[string][]string{}
		for _, node := range in.Nodes {
			var b []byte
			if rec := in.Final.Records[node][key]; rec != nil {
				b, _ = marshal.Marshal(rec)
			}
			k := string(b)
			if byBytes[k] == nil {
				groups = append(groups, k)
			}
			byBytes[k] = append(byBytes[k], node)
		}
		if len(groups) > 1 {
			r.violate("record %s differs between nodes: %s", key, describeGroups(groups, byBytes, func(node string) string {
				return summarize(in.Final.Records[node][key])
			}))
		}
		for _, field := range append(in.Schema.FieldNames(), DeletedField) {
			var first []byte
			firstNode := ""
			for _, node := range in.Nodes {
				var b []byte
				if h := in.Final.History[node][key][field]; h != nil {
					b, _ = marshal.Marshal(h)
				}
				if firstNode == "" {
					first, firstNode = b, node
					continue
				}
				if !bytes.Equal(b, first) {
					r.violate("history of %s.%s differs: %s has %d versions, %s has %d", key, field,
						firstNode, len(in.Final.versions(firstNode, key, field)), node, len(in.Final.versions(node, key, field)))
				}
			}
		}
	}
	return r.done()
}

// describeGroups lists groups of nodes that returned the same bytes, each
// with a summary of what its first node returned.
func describeGroups(groups []string, by map[string][]string, label func(node string) string) string {
	parts := make([]string, 0, len(groups))
	for _, g := range groups {
		nodes := by[g]
		sort.Strings(nodes)
		parts = append(parts, strings.Join(nodes, ",")+": "+label(nodes[0]))
	}
	return strings.Join(parts, " | ")
}

// summarize renders a record's resolved state in one line.
func summarize(rec *pb.Record) string {
	if rec == nil {
		return "not found"
	}
	var b strings.Builder
	if rec.GetDeleted() {
		b.WriteString("deleted ")
	}
	for _, f := range rec.GetFields() {
		fmt.Fprintf(&b, "%s=%s(%d live) ", f.GetName(), valueString(f.GetValue()), len(f.GetLive()))
	}
	fmt.Fprintf(&b, "ctx=%s", rec.GetContext())
	return strings.TrimSpace(b.String())
}
