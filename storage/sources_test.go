package storage_test

import (
	"context"
	"fmt"
	"slices"
	"testing"

	"github.com/lattice-sync/lattice/crdt"
	"github.com/lattice-sync/lattice/storage"
)

// recaptureEdits is the pg-recapture case as edits minted elsewhere: n1
// and n2 each capture change L1 of crm (n2 taking over before n1's copy
// reached it), n2's copy having seen x (an API edit n1's had not), and y
// (billing, on n2) saw n2's copy. In every arrival order the store shows
// the change once (one version, both dots), superseded by y, and x
// superseded too (n2's copy saw it), across a reopen.
func recaptureEdits() (c, w, x, y *crdt.Edit) {
	ts := crdt.MakeTimestamp(t0, 0)
	src := crdt.SourceRegister("crm")
	x = &crdt.Edit{Entity: "contact", ID: "r", Dot: crdt.Dot{Node: "n3", Seq: 1}, TS: ts - 10, Origin: "api",
		Writes: []crdt.Write{{Register: "name", Value: crdt.String("x")}}}
	c = &crdt.Edit{Entity: "contact", ID: "r", Dot: crdt.Dot{Node: "n1", Seq: 1}, TS: ts, Origin: "postgres:crm",
		Writes: []crdt.Write{{Register: src, Value: crdt.String("L1")}, {Register: "name", Value: crdt.String("v1")}}}
	w = &crdt.Edit{Entity: "contact", ID: "r", Dot: crdt.Dot{Node: "n2", Seq: 1}, TS: ts, Origin: "postgres:crm",
		Writes: []crdt.Write{{Register: src, Value: crdt.String("L1")}, {Register: "name", Value: crdt.String("v1"), Ctx: crdt.VV{{Node: "n3", Seq: 1}}}}}
	y = &crdt.Edit{Entity: "contact", ID: "r", Dot: crdt.Dot{Node: "n4", Seq: 1}, TS: ts + 1, Origin: "postgres:billing",
		Writes: []crdt.Write{{Register: "name", Value: crdt.String("v2"), Ctx: crdt.VV{{Node: "n2", Seq: 1}, {Node: "n3", Seq: 1}}}}}
	return c, w, x, y
}

func TestRecaptureFoldsInStore(t *testing.T) {
	c, w, x, y := recaptureEdits()
	orders := [][]*crdt.Edit{{c, w, x, y}, {c, x, y, w}, {w, y, x, c}, {x, c, y, w}, {c, y, x, w}, {y, w, c, x}, {x, y, c, w}}
	ctx := context.Background()
	digests := map[string]string{}
	for _, order := range orders {
		name := ""
		for _, e := range order {
			name += e.Dot.String() + ","
		}
		t.Run(name, func(t *testing.T) {
			dir := t.TempDir()
			s := openStore(t, dir, "n9", newPhysClock(t0))
			for i, e := range order {
				if _, err := s.ApplyRemote(ctx, e); err != nil {
					t.Fatalf("apply %v: %v", e.Dot, err)
				}
				if i == len(order)-2 {
					// Reopen before the last arrival: the fold must come
					// from what was stored, not from memory.
					s.Close()
					s = openStore(t, dir, "n9", newPhysClock(t0))
				}
			}
			check := func(s *storage.Store) {
				t.Helper()
				vs, err := s.Versions("contact", "r", "name")
				if err != nil {
					t.Fatal(err)
				}
				got := map[string][]crdt.Dot{}
				for _, v := range vs {
					got[v.Value.Str()] = append(got[v.Value.Str()], append([]crdt.Dot{v.Dot}, v.Also...)...)
				}
				want := map[string][]crdt.Dot{"x": {x.Dot}, "v1": {c.Dot, w.Dot}, "v2": {y.Dot}}
				if fmt.Sprint(got) != fmt.Sprint(want) {
					t.Fatalf("versions of name: %v, want %v (the change once, with both dots)", got, want)
				}
				rec, err := s.Get("contact", "r")
				if err != nil {
					t.Fatal(err)
				}
				reg := rec.Register("name")
				if len(reg.Versions) != 1 || reg.Versions[0].Dot != y.Dot {
					t.Fatalf("live versions of name: %+v, want y (%v) alone", reg.Versions, y.Dot)
				}
				srcVs, err := s.Versions("contact", "r", crdt.SourceRegister("crm"))
				if err != nil {
					t.Fatal(err)
				}
				if len(srcVs) != 1 || !slices.Equal(srcVs[0].Also, []crdt.Dot{w.Dot}) {
					t.Fatalf("versions of the source register: %+v, want one, folded", srcVs)
				}
			}
			check(s)
			s.Close()
			s = openStore(t, dir, "n9", newPhysClock(t0))
			check(s)
			// Byte-identical state and history whatever the order (what
			// nodes compare to know they converged).
			d, _, _, err := s.Digest(ctx)
			if err != nil {
				t.Fatal(err)
			}
			digests[name] = d
		})
	}
	for name, d := range digests {
		for other, e := range digests {
			if d != e {
				t.Fatalf("order %s gives digest %s, order %s gives %s", name, d, other, e)
			}
		}
	}
}

// TestSnapshotMergeFoldsCaptures: a node that holds one capture of a
// change and installs a snapshot holding the other (superseded there)
// ends with the same bytes as a node that received every edit.
func TestSnapshotMergeFoldsCaptures(t *testing.T) {
	c, w, x, y := recaptureEdits()
	ctx := context.Background()
	apply := func(s *storage.Store, edits ...*crdt.Edit) {
		t.Helper()
		for _, e := range edits {
			if _, err := s.ApplyRemote(ctx, e); err != nil {
				t.Fatalf("apply %v: %v", e.Dot, err)
			}
		}
	}
	a := openStore(t, t.TempDir(), "n8", newPhysClock(t0))
	apply(a, w, x, y) // w's version of name is superseded here
	b := openStore(t, t.TempDir(), "n9", newPhysClock(t0))
	apply(b, c)
	snap, err := a.Checkpoint(ctx)
	if err != nil {
		t.Fatal(err)
	}
	var recs []storage.MergeRecord
	err = snap.Records(func(entity, id string, state []byte, history []storage.HistoryEntry) error {
		rec, err := crdt.DecodeRecord(state)
		if err != nil {
			return err
		}
		recs = append(recs, storage.MergeRecord{Entity: entity, ID: id, State: rec, History: history})
		return nil
	})
	snap.Close()
	if err != nil {
		t.Fatal(err)
	}
	if err := b.MergeRecords(ctx, recs); err != nil {
		t.Fatal(err)
	}
	if err := b.AdvanceApplied(ctx, a.Applied()); err != nil {
		t.Fatal(err)
	}
	full := openStore(t, t.TempDir(), "n7", newPhysClock(t0))
	apply(full, c, w, x, y)
	vs, err := b.Versions("contact", "r", "name")
	if err != nil {
		t.Fatal(err)
	}
	copies := 0
	for _, v := range vs {
		if v.Value.Str() == "v1" {
			copies++
			if v.Dot != c.Dot || !slices.Equal(v.Also, []crdt.Dot{w.Dot}) {
				t.Errorf("the change after the snapshot: %v also %v, want %v also [%v]", v.Dot, v.Also, c.Dot, w.Dot)
			}
		}
	}
	if copies != 1 {
		t.Fatalf("the change shows %d times in name's versions after the snapshot, want once: %+v", copies, vs)
	}
	db, _, _, err := b.Digest(ctx)
	if err != nil {
		t.Fatal(err)
	}
	df, _, _, err := full.Digest(ctx)
	if err != nil {
		t.Fatal(err)
	}
	if db != df {
		t.Fatalf("after the snapshot the digest is %s, a store that received every edit has %s", db, df)
	}
}
