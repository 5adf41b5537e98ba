package storage_test

import (
	"context"
	"encoding/binary"
	"fmt"
	"runtime"
	"sync"
	"sync/atomic"
	"testing"

	"github.com/cockroachdb/pebble/v2"

	"github.com/lattice-sync/lattice/crdt"
	"github.com/lattice-sync/lattice/storage"
)

// benchRound is how many edits (store) or edit-equivalents (raw Pebble) go
// into one synced round.
const benchRound = 1000

var benchFields = map[string]crdt.Value{"name": crdt.String("benchmark-value-0123456789")}

// reportBatches reports the mean number of edits per synced batch.
func reportBatches(b *testing.B, obs *batchObserver) {
	if sizes := obs.sizes(); len(sizes) > 0 {
		sum := 0
		for _, n := range sizes {
			sum += n
		}
		b.ReportMetric(float64(sum)/float64(len(sizes)), "edits/batch")
	}
}

// BenchmarkStoreApply: rounds of 1,000 concurrent Writes, each a put of one
// field of a new record, which the committer gathers into synced batches.
// An op is one edit; versions/s counts the versions written (the field and
// _deleted, two per edit). Compare with BenchmarkRawPebble's keys/s: the
// store writes two keys per edit (record and op-log entry) plus one applied
// mark per batch.
func BenchmarkStoreApply(b *testing.B) {
	ent := testEntity()
	obs := &batchObserver{}
	s := openStore(b, b.TempDir(), "bench", nil, func(c *storage.Config) { c.Metrics = obs })
	ctx := context.Background()
	prepare := putFn(ent, benchFields)
	b.ResetTimer()
	for done := 0; done < b.N; {
		n := min(benchRound, b.N-done)
		var wg sync.WaitGroup
		for i := range n {
			id := fmt.Sprintf("rec-%010d", done+i)
			wg.Go(func() {
				if _, err := s.Write(ctx, ent.Name, id, "api", prepare); err != nil {
					b.Error(err)
				}
			})
		}
		wg.Wait()
		done += n
	}
	b.StopTimer()
	b.ReportMetric(float64(2*b.N)/b.Elapsed().Seconds(), "versions/s")
	reportBatches(b, obs)
}

type nopPebbleLogger struct{}

func (nopPebbleLogger) Infof(string, ...any)  {}
func (nopPebbleLogger) Errorf(string, ...any) {}
func (nopPebbleLogger) Fatalf(format string, args ...any) {
	panic(fmt.Sprintf(format, args...))
}

// benchEncodedSizes returns the sizes of a stored record and an op-log entry
// for one put of benchFields, as BenchmarkStoreApply writes them.
func benchEncodedSizes(b *testing.B) (record, edit int) {
	ent := testEntity()
	s := openStore(b, b.TempDir(), "bench", nil)
	res := put(b, s, ent, "rec-0000000000", benchFields)
	return len(crdt.AppendRecord(nil, res.Record)), len(crdt.AppendEdit(nil, res.Edit))
}

// BenchmarkRawPebble is the ceiling for BenchmarkStoreApply: Pebble alone,
// batches of 1,000 edit-equivalents (a record-like key and an op-log-like key
// each, with values the size of the store's, plus one mark per batch)
// committed with pebble.Sync. An op is one edit-equivalent (two keys).
func BenchmarkRawPebble(b *testing.B) {
	recSize, editSize := benchEncodedSizes(b)
	db, err := pebble.Open(b.TempDir(), &pebble.Options{Logger: nopPebbleLogger{}})
	if err != nil {
		b.Fatal(err)
	}
	defer db.Close()
	recVal, editVal := make([]byte, recSize), make([]byte, editSize)
	for i := range recVal {
		recVal[i] = byte(i)
	}
	for i := range editVal {
		editVal[i] = byte(i * 7)
	}
	markKey := []byte("\x02bench\x00\x01")
	keys := 0
	b.ResetTimer()
	for done := 0; done < b.N; {
		n := min(benchRound, b.N-done)
		batch := db.NewBatch()
		for i := range n {
			seq := uint64(done + i + 1)
			rk := fmt.Appendf([]byte("\x10contact\x00\x01"), "rec-%010d\x00\x01", done+i)
			ok := binary.BigEndian.AppendUint64([]byte("\x20bench\x00\x01"), seq)
			if err := batch.Set(rk, recVal, nil); err != nil {
				b.Fatal(err)
			}
			if err := batch.Set(ok, editVal, nil); err != nil {
				b.Fatal(err)
			}
		}
		if err := batch.Set(markKey, binary.AppendUvarint(nil, uint64(done+n)), nil); err != nil {
			b.Fatal(err)
		}
		if err := batch.Commit(pebble.Sync); err != nil {
			b.Fatal(err)
		}
		batch.Close()
		keys += 2*n + 1
		done += n
	}
	b.StopTimer()
	b.ReportMetric(float64(keys)/b.Elapsed().Seconds(), "keys/s")
}

// BenchmarkPutSerial: one writer, one put at a time (one fsync per edit).
func BenchmarkPutSerial(b *testing.B) {
	ent := testEntity()
	s := openStore(b, b.TempDir(), "bench", nil)
	ctx := context.Background()
	prepare := putFn(ent, benchFields)
	b.ResetTimer()
	for i := range b.N {
		if _, err := s.Write(ctx, ent.Name, fmt.Sprintf("rec-%010d", i%1000), "api", prepare); err != nil {
			b.Fatal(err)
		}
	}
	b.StopTimer()
	b.ReportMetric(float64(b.N)/b.Elapsed().Seconds(), "edits/s")
}

// BenchmarkPutParallel: 64 writers putting new records concurrently.
func BenchmarkPutParallel(b *testing.B) {
	ent := testEntity()
	obs := &batchObserver{}
	s := openStore(b, b.TempDir(), "bench", nil, func(c *storage.Config) { c.Metrics = obs })
	ctx := context.Background()
	prepare := putFn(ent, benchFields)
	var next atomic.Int64
	b.SetParallelism(max(1, 64/runtime.GOMAXPROCS(0))) // 64 goroutines in all
	b.ResetTimer()
	b.RunParallel(func(pb *testing.PB) {
		for pb.Next() {
			id := fmt.Sprintf("rec-%010d", next.Add(1))
			if _, err := s.Write(ctx, ent.Name, id, "api", prepare); err != nil {
				b.Error(err)
				return
			}
		}
	})
	b.StopTimer()
	b.ReportMetric(float64(b.N)/b.Elapsed().Seconds(), "edits/s")
	reportBatches(b, obs)
}

// BenchmarkStoreApplyReplicated is the apply path of a replica: edits from
// another node, already minted, applied with ApplyRemoteBatch in groups of
// 1,000 (as a replication stream delivers them), each one field of a new
// record plus _deleted. versions/s counts both versions of each edit, as
// BenchmarkStoreApply does; compare with BenchmarkRawPebble's keys/s.
func BenchmarkStoreApplyReplicated(b *testing.B) {
	ent := testEntity()
	obs := &batchObserver{}
	s := openStore(b, b.TempDir(), "bench", nil, func(c *storage.Config) { c.Metrics = obs })
	ts := s.Clock().Now()
	edits := make([]*crdt.Edit, b.N)
	for i := range edits {
		writes, err := ent.PreparePut(&crdt.Record{}, benchFields, crdt.EditContext{})
		if err != nil {
			b.Fatal(err)
		}
		edits[i] = &crdt.Edit{Entity: ent.Name, ID: fmt.Sprintf("rec-%010d", i), Dot: crdt.Dot{Node: "n2", Seq: uint64(i + 1)},
			TS: ts, Origin: "api", Writes: writes}
	}
	b.ResetTimer()
	applyInRounds(b, s, edits)
	b.StopTimer()
	b.ReportMetric(float64(2*b.N)/b.Elapsed().Seconds(), "versions/s")
	reportBatches(b, obs)
}

// applyInRounds applies edits with ApplyRemoteBatch in groups of
// benchRound, as a replication stream delivers them.
func applyInRounds(b *testing.B, s *storage.Store, edits []*crdt.Edit) {
	ctx := context.Background()
	for done := 0; done < len(edits); {
		n := min(benchRound, len(edits)-done)
		_, errs := s.ApplyRemoteBatch(ctx, edits[done:done+n])
		for _, err := range errs {
			if err != nil {
				b.Fatal(err)
			}
		}
		done += n
	}
}

// BenchmarkStoreApplyCaptured is BenchmarkStoreApplyReplicated for edits a
// connector captured: each also writes the record's source register, and
// every 4 edits hit one record (a row changed again and again), so each
// capture supersedes the last one (history moves, the source register's history by position).
// edits/s; compare with BenchmarkStoreApplyReplicated in the same run.
func BenchmarkStoreApplyCaptured(b *testing.B) {
	ent := testEntity()
	obs := &batchObserver{}
	s := openStore(b, b.TempDir(), "bench", nil, func(c *storage.Config) { c.Metrics = obs })
	ts := s.Clock().Now()
	edits := make([]*crdt.Edit, b.N)
	for i := range edits {
		seq := uint64(i + 1)
		var ctxVV crdt.VV
		if i%4 != 0 {
			ctxVV = crdt.VV{{Node: "n2", Seq: seq - 1}} // saw the row's previous capture
		}
		writes := []crdt.Write{
			{Register: crdt.SourceRegister("crm"), Value: crdt.String(fmt.Sprintf("L%016X.%08X", seq, 0)), Ctx: ctxVV},
			{Register: crdt.DeletedField, Value: crdt.Bool(false), Ctx: ctxVV},
			{Register: "name", Value: crdt.String(fmt.Sprintf("name %d", i)), Ctx: ctxVV},
		}
		edits[i] = &crdt.Edit{Entity: ent.Name, ID: fmt.Sprintf("rec-%010d", i/4), Dot: crdt.Dot{Node: "n2", Seq: seq},
			TS: ts, Origin: "postgres:crm", Writes: writes}
	}
	b.ResetTimer()
	applyInRounds(b, s, edits)
	b.StopTimer()
	b.ReportMetric(float64(b.N)/b.Elapsed().Seconds(), "edits/s")
	reportBatches(b, obs)
}
