package crdt

import (
	"testing"
)

// BenchmarkFieldMerge measures the merge kernel of one register as the store
// runs it per accepted or replicated edit: Add a version whose context
// covers the current winner (an overwrite through a stale read, so two
// concurrent versions from other nodes stay live), Resolve under lww, and
// move the dominated version out with TakeDominated into a reused buffer.
// The register stays at 3 live versions (4 during the merge).
func BenchmarkFieldMerge(b *testing.B) {
	const ms = 1_700_000_000_000
	p := &Policy{Kind: PolicyLWW}
	reg := &Register{Name: "email", Versions: make([]Version, 0, 8)}
	reg.Add(Version{Value: String("b@example.com"), TS: MakeTimestamp(ms, 0), Origin: "postgres:crm", Dot: Dot{"node-b", 7}, Ctx: VV{{"node-a", 1}}})
	reg.Add(Version{Value: String("c@example.com"), TS: MakeTimestamp(ms, 1), Origin: "api", Dot: Dot{"node-c", 3}, Ctx: VV{{"node-a", 1}}})
	reg.Add(Version{Value: String("a@example.com"), TS: MakeTimestamp(ms+1, 0), Origin: "api", Dot: Dot{"node-a", 2}, Ctx: VV{{"node-a", 1}}})
	// Contexts are immutable once in a register; a ring of four lets each
	// be rewritten only after the version that used it has left the register.
	var ring [4]VV
	for i := range ring {
		ring[i] = VV{{Node: "node-a"}, {Node: "node-z", Seq: 1}}
	}
	values := [2]Value{String("x@example.com"), String("y@example.com")}
	buf := make([]Version, 0, 8)
	b.ReportAllocs()
	b.ResetTimer()
	for i := 0; i < b.N; i++ {
		seq := uint64(i) + 3
		ctx := ring[seq%4]
		ctx[0].Seq = seq - 1 // covers the current winner node-a:seq-1
		reg.Add(Version{Value: values[seq%2], TS: MakeTimestamp(ms+2, 0) + Timestamp(seq), Origin: "api", Dot: Dot{"node-a", seq}, Ctx: ctx})
		w, live := reg.Resolve(p)
		winner := reg.Versions[w].Dot
		buf = reg.TakeDominated(buf[:0])
		if winner.Seq != seq || live != 3 || len(buf) != 1 || len(reg.Versions) != 3 {
			b.Fatalf("iteration %d: winner %v live %d moved %d kept %d", i, winner, live, len(buf), len(reg.Versions))
		}
	}
	b.ReportMetric(float64(b.N)/b.Elapsed().Seconds(), "merges/s")
}

// BenchmarkRecordApply is the record-level step around the kernel: apply a
// replicated edit of two registers (one field and _deleted) and move
// dominated versions to history.
func BenchmarkRecordApply(b *testing.B) {
	const ms = 1_700_000_000_000
	rec := sampleRecord(10)
	var ring [4]VV
	for i := range ring {
		ring[i] = VV{{Node: "node-1"}, {Node: "node-2", Seq: 100}}
	}
	edit := &Edit{Entity: "contact", ID: "r1", Origin: "api", Writes: []Write{
		{Register: "_deleted", Value: Bool(false)},
		{Register: "c_field", Value: String("new value")},
	}}
	seq0 := rec.Context.Get("node-1")
	b.ReportAllocs()
	b.ResetTimer()
	for i := 0; i < b.N; i++ {
		seq := seq0 + uint64(i) + 1
		ctx := ring[seq%4]
		ctx[0].Seq = seq - 1
		edit.Dot = Dot{"node-1", seq}
		edit.TS = MakeTimestamp(ms+10, 0) + Timestamp(seq)
		edit.Writes[0].Ctx, edit.Writes[1].Ctx = ctx, ctx
		if !rec.Apply(edit) {
			b.Fatal("edit not applied")
		}
		rec.TakeDominated(func(string, Version) {})
	}
	b.ReportMetric(float64(b.N)/b.Elapsed().Seconds(), "edits/s")
}

func BenchmarkEncodeRecord(b *testing.B) {
	rec := sampleRecord(10)
	buf := AppendRecord(nil, rec)
	b.SetBytes(int64(len(buf)))
	b.ReportAllocs()
	b.ResetTimer()
	for i := 0; i < b.N; i++ {
		buf = AppendRecord(buf[:0], rec)
	}
}

func BenchmarkDecodeRecord(b *testing.B) {
	enc := AppendRecord(nil, sampleRecord(10))
	b.SetBytes(int64(len(enc)))
	b.ReportAllocs()
	b.ResetTimer()
	for i := 0; i < b.N; i++ {
		if _, err := DecodeRecord(enc); err != nil {
			b.Fatal(err)
		}
	}
}
