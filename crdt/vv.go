package crdt

import (
	"fmt"
	"sort"
	"strings"
)

// Dot identifies one edit: the node that accepted it and that node's
// sequence number for it. Dots are unique cluster-wide.
type Dot struct {
	Node string
	Seq  uint64
}

// Compare orders dots by (node, seq).
func (d Dot) Compare(e Dot) int {
	if c := strings.Compare(d.Node, e.Node); c != 0 {
		return c
	}
	switch {
	case d.Seq < e.Seq:
		return -1
	case d.Seq > e.Seq:
		return 1
	}
	return 0
}

// IsZero reports whether d is the zero Dot.
func (d Dot) IsZero() bool { return d.Node == "" && d.Seq == 0 }

func (d Dot) String() string { return fmt.Sprintf("%s:%d", d.Node, d.Seq) }

// VVEntry is one entry of a version vector.
type VVEntry struct {
	Node string
	Seq  uint64
}

// VV is a version vector: for each node, the highest sequence seen. Entries
// are sorted by node, have Seq > 0 and no duplicate nodes; the zero value is
// the empty vector. A VV is treated as immutable once built: operations that
// change it return a new slice or write into one the caller owns.
//
// Because every node applies each origin's entries in sequence order without
// gaps, vv[n] >= s means every edit from node n up to s was seen.
type VV []VVEntry

// Get returns the sequence recorded for node (0 if absent).
func (v VV) Get(node string) uint64 {
	// Vectors are short (one entry per node); a linear scan beats binary search.
	for i := range v {
		if v[i].Node == node {
			return v[i].Seq
		}
	}
	return 0
}

// Covers reports whether d is included in v.
func (v VV) Covers(d Dot) bool { return d.Seq != 0 && v.Get(d.Node) >= d.Seq }

// Equal reports whether two vectors hold the same entries.
func (v VV) Equal(w VV) bool {
	if len(v) != len(w) {
		return false
	}
	for i := range v {
		if v[i] != w[i] {
			return false
		}
	}
	return true
}

// Dominates reports whether v >= w pointwise.
func (v VV) Dominates(w VV) bool {
	for _, e := range w {
		if v.Get(e.Node) < e.Seq {
			return false
		}
	}
	return true
}

// Join returns the pointwise maximum of v and w. When one already contains
// the other, that one is returned without allocating.
func (v VV) Join(w VV) VV {
	if v.Dominates(w) {
		return v
	}
	if w.Dominates(v) {
		return w
	}
	out := make(VV, 0, len(v)+len(w))
	i, j := 0, 0
	for i < len(v) || j < len(w) {
		switch {
		case j == len(w) || (i < len(v) && v[i].Node < w[j].Node):
			out = append(out, v[i])
			i++
		case i == len(v) || w[j].Node < v[i].Node:
			out = append(out, w[j])
			j++
		default:
			e := v[i]
			if w[j].Seq > e.Seq {
				e.Seq = w[j].Seq
			}
			out = append(out, e)
			i++
			j++
		}
	}
	return out
}

// WithDot returns v extended to cover d.
func (v VV) WithDot(d Dot) VV {
	if v.Covers(d) {
		return v
	}
	return v.Join(VV{{Node: d.Node, Seq: d.Seq}})
}

// Meet returns the pointwise minimum of v and w (entries absent in either are dropped).
func (v VV) Meet(w VV) VV {
	if w.Dominates(v) {
		return v
	}
	out := make(VV, 0, len(v))
	for _, e := range v {
		s := w.Get(e.Node)
		if s < e.Seq {
			e.Seq = s
		}
		if e.Seq > 0 {
			out = append(out, e)
		}
	}
	return out
}

// Valid checks the representation invariants: sorted, unique, non-empty nodes, Seq > 0.
func (v VV) Valid() error {
	for i, e := range v {
		if e.Node == "" {
			return fmt.Errorf("version vector entry %d has an empty node", i)
		}
		if e.Seq == 0 {
			return fmt.Errorf("version vector entry for %q has seq 0", e.Node)
		}
		if i > 0 && v[i-1].Node >= e.Node {
			return fmt.Errorf("version vector entries are not sorted and unique at %q", e.Node)
		}
	}
	return nil
}

// MakeVV builds a valid VV from a map.
func MakeVV(m map[string]uint64) VV {
	out := make(VV, 0, len(m))
	for n, s := range m {
		if s > 0 {
			out = append(out, VVEntry{Node: n, Seq: s})
		}
	}
	sort.Slice(out, func(i, j int) bool { return out[i].Node < out[j].Node })
	return out
}

// Map returns the vector as a map.
func (v VV) Map() map[string]uint64 {
	m := make(map[string]uint64, len(v))
	for _, e := range v {
		m[e.Node] = e.Seq
	}
	return m
}

func (v VV) String() string {
	var b strings.Builder
	b.WriteByte('{')
	for i, e := range v {
		if i > 0 {
			b.WriteByte(' ')
		}
		fmt.Fprintf(&b, "%s:%d", e.Node, e.Seq)
	}
	b.WriteByte('}')
	return b.String()
}
