package storage_test

import (
	"bytes"
	"context"
	"errors"
	"fmt"
	"io"
	"log/slog"
	"slices"
	"sort"
	"strings"
	"sync"
	"sync/atomic"
	"testing"
	"time"

	"github.com/lattice-sync/lattice/crdt"
	"github.com/lattice-sync/lattice/storage"
)

// ---------------------------------------------------------------------------
// Helpers shared by the tests and benchmarks of this package.

// t0 is the physical time (ms) the injected clocks start at.
const t0 = int64(1_700_000_000_000)

// physClock is an injectable physical clock (wall milliseconds).
type physClock struct{ ms atomic.Int64 }

func newPhysClock(ms int64) *physClock {
	p := &physClock{}
	p.ms.Store(ms)
	return p
}

func (p *physClock) Now() int64   { return p.ms.Load() }
func (p *physClock) Set(ms int64) { p.ms.Store(ms) }
func (p *physClock) Add(ms int64) { p.ms.Add(ms) }

func testEntity() *crdt.Entity {
	return &crdt.Entity{Name: "contact", Fields: []crdt.FieldSpec{
		{Name: "name", Type: crdt.TypeString},
		{Name: "email", Type: crdt.TypeString},
		{Name: "age", Type: crdt.TypeInt},
	}}
}

var quietLogger = slog.New(slog.NewTextHandler(io.Discard, nil))

// openStore opens a store with phys (nil: wall clock) and closes it at cleanup.
func openStore(tb testing.TB, dir, node string, phys *physClock, opts ...func(*storage.Config)) *storage.Store {
	tb.Helper()
	s, err := tryOpen(dir, node, phys, opts...)
	if err != nil {
		tb.Fatalf("open store %s in %s: %v", node, dir, err)
	}
	tb.Cleanup(func() { s.Close() })
	return s
}

func tryOpen(dir, node string, phys *physClock, opts ...func(*storage.Config)) (*storage.Store, error) {
	cfg := storage.DefaultConfig(dir, node)
	if phys != nil {
		cfg.Physical = phys.Now
	}
	cfg.Logger = quietLogger
	for _, o := range opts {
		o(&cfg)
	}
	return storage.Open(cfg)
}

func closeStore(tb testing.TB, s *storage.Store) {
	tb.Helper()
	if err := s.Close(); err != nil {
		tb.Fatalf("close: %v", err)
	}
}

// putFn is the usual PrepareFunc of a put without a client context.
func putFn(ent *crdt.Entity, fields map[string]crdt.Value) storage.PrepareFunc {
	return func(rec *crdt.Record, env storage.Env) ([]crdt.Write, error) {
		return ent.PreparePut(rec, fields, crdt.EditContext{Applied: env.Applied})
	}
}

// tokenPutFn is a put carrying an explicit (possibly stale) read token.
func tokenPutFn(ent *crdt.Entity, fields map[string]crdt.Value, tok crdt.VV) storage.PrepareFunc {
	return func(rec *crdt.Record, env storage.Env) ([]crdt.Write, error) {
		return ent.PreparePut(rec, fields, crdt.EditContext{Token: tok, Explicit: true, Applied: env.Applied, History: env.History})
	}
}

func str(s string) map[string]crdt.Value { return map[string]crdt.Value{"name": crdt.String(s)} }

func put(tb testing.TB, s *storage.Store, ent *crdt.Entity, id string, fields map[string]crdt.Value) *storage.Result {
	tb.Helper()
	res, err := s.Write(context.Background(), ent.Name, id, "api", putFn(ent, fields))
	if err != nil {
		tb.Fatalf("put %s/%q: %v", ent.Name, id, err)
	}
	return res
}

func get(tb testing.TB, s *storage.Store, ent *crdt.Entity, id string) *crdt.Record {
	tb.Helper()
	rec, err := s.Get(ent.Name, id)
	if err != nil {
		tb.Fatalf("get %s/%q: %v", ent.Name, id, err)
	}
	return rec
}

// field resolves one field of rec with ent.View.
func field(tb testing.TB, ent *crdt.Entity, rec *crdt.Record, name string) crdt.FieldView {
	tb.Helper()
	fields, _ := ent.View(rec)
	for _, f := range fields {
		if f.Name == name {
			return f
		}
	}
	tb.Fatalf("entity %s has no field %q", ent.Name, name)
	return crdt.FieldView{}
}

// opLog returns every op-log entry of origin in sequence order.
func opLog(tb testing.TB, s *storage.Store, origin string) []*crdt.Edit {
	tb.Helper()
	var out []*crdt.Edit
	if err := s.ScanOpLog(origin, 0, -1, func(e *crdt.Edit) bool { out = append(out, e); return true }); err != nil {
		tb.Fatalf("scan op log of %s: %v", origin, err)
	}
	return out
}

// listAll returns every record of ent, paging through List.
func listAll(tb testing.TB, s *storage.Store, entity string, page int) []storage.RecordEntry {
	tb.Helper()
	var out []storage.RecordEntry
	after := ""
	for {
		recs, more, err := s.List(entity, after, page)
		if err != nil {
			tb.Fatalf("list %s after %q: %v", entity, after, err)
		}
		out = append(out, recs...)
		if !more {
			return out
		}
		if len(recs) == 0 {
			tb.Fatalf("list %s after %q: more=true with an empty page", entity, after)
		}
		after = recs[len(recs)-1].ID
	}
}

// dumpStore renders everything the exported API can see, one line per item:
// the applied vector, every record of the entities (crdt.AppendRecord), every
// kept version of each of their registers (live and history) and the op log
// of every origin in Applied() and in origins.
func dumpStore(tb testing.TB, s *storage.Store, ents []*crdt.Entity, origins ...string) []string {
	tb.Helper()
	applied := s.Applied()
	lines := []string{"applied " + applied.String()}
	for _, ent := range ents {
		for _, r := range listAll(tb, s, ent.Name, 7) {
			lines = append(lines, fmt.Sprintf("record %s %q %x", ent.Name, r.ID, crdt.AppendRecord(nil, r.Record)))
			regs := []string{crdt.DeletedField}
			for _, f := range ent.Fields {
				regs = append(regs, ent.RegisterOf(f.Name))
			}
			for _, reg := range r.Record.Registers {
				regs = append(regs, reg.Name)
			}
			sort.Strings(regs)
			for _, reg := range slices.Compact(regs) {
				vs, err := s.Versions(ent.Name, r.ID, reg)
				if err != nil {
					tb.Fatalf("versions %s/%q/%s: %v", ent.Name, r.ID, reg, err)
				}
				for i := range vs {
					lines = append(lines, fmt.Sprintf("version %s %q %s %x", ent.Name, r.ID, reg, crdt.AppendVersion(nil, &vs[i])))
				}
			}
		}
	}
	for _, e := range applied {
		origins = append(origins, e.Node)
	}
	sort.Strings(origins)
	for _, o := range slices.Compact(origins) {
		for _, e := range opLog(tb, s, o) {
			lines = append(lines, fmt.Sprintf("op %s %d %x", o, e.Dot.Seq, crdt.AppendEdit(nil, e)))
		}
	}
	return lines
}

func sameDump(tb testing.TB, what string, before, after []string) {
	tb.Helper()
	if slices.Equal(before, after) {
		return
	}
	for i := 0; i < max(len(before), len(after)); i++ {
		var b, a string
		if i < len(before) {
			b = before[i]
		}
		if i < len(after) {
			a = after[i]
		}
		if a != b {
			tb.Fatalf("%s changed the store (%d lines before, %d after); first difference at line %d:\nbefore: %.300s\nafter:  %.300s",
				what, len(before), len(after), i, b, a)
		}
	}
}

// replay applies edits in order to fresh records the way the store does
// (merge, then move dominated versions out) and returns them by id.
func replay(edits []*crdt.Edit) map[string]*crdt.Record {
	recs := map[string]*crdt.Record{}
	for _, e := range edits {
		if len(e.Writes) == 0 {
			continue // a burned sequence number (after an unclean shutdown)
		}
		rec := recs[e.ID]
		if rec == nil {
			rec = &crdt.Record{}
			recs[e.ID] = rec
		}
		rec.Apply(e)
		rec.TakeDominated(func(string, crdt.Version) {})
	}
	return recs
}

// checkReplay checks that the stored records of ent are byte-identical to a
// sequential replay of edits.
func checkReplay(tb testing.TB, s *storage.Store, ent *crdt.Entity, edits []*crdt.Edit) {
	tb.Helper()
	want := replay(edits)
	got := listAll(tb, s, ent.Name, 500)
	if len(got) != len(want) {
		tb.Fatalf("store holds %d records, replay of the op log gives %d", len(got), len(want))
	}
	for _, r := range got {
		w, ok := want[r.ID]
		if !ok {
			tb.Fatalf("record %q is stored but no op-log entry wrote it", r.ID)
		}
		if a, b := crdt.AppendRecord(nil, r.Record), crdt.AppendRecord(nil, w); !bytes.Equal(a, b) {
			tb.Fatalf("record %q differs from the replay of the op log:\nstored: %x\nreplay: %x", r.ID, a, b)
		}
	}
}

// checkOpLogDense checks the op log of origin holds exactly seqs 1..n.
func checkOpLogDense(tb testing.TB, edits []*crdt.Edit, origin string, n uint64) {
	tb.Helper()
	if uint64(len(edits)) != n {
		tb.Fatalf("op log of %s has %d entries, want %d (applied mark)", origin, len(edits), n)
	}
	for i, e := range edits {
		if e.Dot != (crdt.Dot{Node: origin, Seq: uint64(i + 1)}) {
			tb.Fatalf("op log entry %d is %s, want %s:%d (gap or duplicate)", i, e.Dot, origin, i+1)
		}
	}
}

// waitFor polls cond until it holds or the deadline passes.
func waitFor(tb testing.TB, what string, cond func() bool) {
	tb.Helper()
	deadline := time.Now().Add(20 * time.Second)
	for !cond() {
		if time.Now().After(deadline) {
			tb.Fatalf("timed out waiting for %s", what)
		}
		time.Sleep(time.Millisecond) // poll interval, not a synchronisation sleep
	}
}

// batchObserver records the size of every committed batch.
type batchObserver struct {
	mu      sync.Mutex
	batches []int
}

func (o *batchObserver) Committed(edits, conflicts int, took time.Duration) {
	o.mu.Lock()
	o.batches = append(o.batches, edits)
	o.mu.Unlock()
}

func (o *batchObserver) sizes() []int {
	o.mu.Lock()
	defer o.mu.Unlock()
	return slices.Clone(o.batches)
}

// holdCommitter queues a put on record "hold" whose prepare blocks until
// release is called, so requests queued meanwhile land in one batch.
// release waits until n requests are queued, lets the committer go and
// returns the hold edit's result.
func holdCommitter(tb testing.TB, s *storage.Store, ent *crdt.Entity) (release func(n int) *storage.Result) {
	tb.Helper()
	entered, gate := make(chan struct{}), make(chan struct{})
	type out struct {
		res *storage.Result
		err error
	}
	done := make(chan out, 1)
	go func() {
		res, err := s.Write(context.Background(), ent.Name, "hold", "api", func(rec *crdt.Record, env storage.Env) ([]crdt.Write, error) {
			close(entered)
			<-gate
			return ent.PreparePut(rec, str("hold"), crdt.EditContext{Applied: env.Applied})
		})
		done <- out{res, err}
	}()
	<-entered
	return func(n int) *storage.Result {
		tb.Helper()
		waitFor(tb, fmt.Sprintf("%d queued requests", n), func() bool { return storage.QueueLen(s) >= n })
		close(gate)
		o := <-done
		if o.err != nil {
			tb.Fatalf("hold edit: %v", o.err)
		}
		return o.res
	}
}

// ---------------------------------------------------------------------------
// Tests.

func TestPutGetReopen(t *testing.T) {
	dir := t.TempDir()
	ent := testEntity()
	phys := newPhysClock(t0)
	s := openStore(t, dir, "n1", phys)

	steps := []struct {
		id, name string
	}{
		{"alice", "Alice"},
		{"bob", "Bob"},
		{"alice", "Alicia"},
		{"carol", "Carol"},
	}
	var lastTS crdt.Timestamp
	for i, st := range steps {
		res := put(t, s, ent, st.id, str(st.name))
		if want := (crdt.Dot{Node: "n1", Seq: uint64(i + 1)}); res.Edit.Dot != want {
			t.Fatalf("put %d: dot %s, want %s", i, res.Edit.Dot, want)
		}
		if res.Edit.TS <= lastTS {
			t.Fatalf("put %d: TS %s not after %s", i, res.Edit.TS, lastTS)
		}
		lastTS = res.Edit.TS
		if got := s.Applied().Get("n1"); got != uint64(i+1) {
			t.Fatalf("after put %d: Applied()[n1] = %d, want %d", i, got, i+1)
		}
		if got := field(t, ent, res.Record, "name").Value; !got.Equal(crdt.String(st.name)) {
			t.Fatalf("put %d: Result.Record name = %v, want %q", i, got, st.name)
		}
		if got := field(t, ent, get(t, s, ent, st.id), "name").Value; !got.Equal(crdt.String(st.name)) {
			t.Fatalf("get after put %d: name = %v, want %q", i, got, st.name)
		}
	}
	if _, err := s.Get(ent.Name, "nobody"); !errors.Is(err, storage.ErrNotFound) {
		t.Fatalf("get of a missing record: %v, want ErrNotFound", err)
	}
	want := map[string]string{"alice": "Alicia", "bob": "Bob", "carol": "Carol"}
	before := dumpStore(t, s, []*crdt.Entity{ent})
	closeStore(t, s)
	if _, err := s.Write(context.Background(), ent.Name, "x", "api", putFn(ent, str("x"))); !errors.Is(err, storage.ErrClosed) {
		t.Fatalf("write after close: %v, want ErrClosed", err)
	}

	s = openStore(t, dir, "n1", phys)
	sameDump(t, "close and reopen", before, dumpStore(t, s, []*crdt.Entity{ent}))
	for id, name := range want {
		if got := field(t, ent, get(t, s, ent, id), "name").Value; !got.Equal(crdt.String(name)) {
			t.Fatalf("after reopen %q: name = %v, want %q", id, got, name)
		}
	}
	vs, err := s.Versions(ent.Name, "alice", "name")
	if err != nil || len(vs) != 2 {
		t.Fatalf("after reopen: versions of alice.name = %d, %v; want 2", len(vs), err)
	}
	res := put(t, s, ent, "dave", str("Dave"))
	if want := (crdt.Dot{Node: "n1", Seq: 5}); res.Edit.Dot != want {
		t.Fatalf("first put after reopen: dot %s, want %s", res.Edit.Dot, want)
	}
	if res.Edit.TS <= lastTS {
		t.Fatalf("first put after reopen: TS %s not after %s", res.Edit.TS, lastTS)
	}
	edits := opLog(t, s, "n1")
	checkOpLogDense(t, edits, "n1", 5)
	checkReplay(t, s, ent, edits)
}

func TestNodeMismatch(t *testing.T) {
	dir := t.TempDir()
	s := openStore(t, dir, "node-a", nil)
	put(t, s, testEntity(), "r", str("x"))
	closeStore(t, s)

	s2, err := tryOpen(dir, "node-b", nil)
	if err == nil {
		s2.Close()
		t.Fatal("opening node-a's directory as node-b succeeded")
	}
	if !errors.Is(err, storage.ErrNodeMismatch) {
		t.Fatalf("error %v is not ErrNodeMismatch", err)
	}
	for _, id := range []string{"node-a", "node-b"} {
		if !strings.Contains(err.Error(), id) {
			t.Errorf("error %q does not name %s", err, id)
		}
	}
	// The refused open changed nothing: node-a still opens with its data.
	s = openStore(t, dir, "node-a", nil)
	if got := s.Applied().Get("node-a"); got != 1 {
		t.Fatalf("after the refused open, Applied()[node-a] = %d, want 1", got)
	}
}

func TestConfigValidate(t *testing.T) {
	tests := []struct {
		name, node, dir, want string
	}{
		{"empty node", "", "d", "node id is required"},
		{"long node", strings.Repeat("n", 65), "d", "longer than 64 bytes"},
		{"bad char", "a/b", "d", "may hold only"},
		{"no dir", "n1", "", "data directory is required"},
	}
	for _, tt := range tests {
		t.Run(tt.name, func(t *testing.T) {
			cfg := storage.DefaultConfig(tt.dir, tt.node)
			if err := cfg.Validate(); err == nil || !strings.Contains(err.Error(), tt.want) {
				t.Fatalf("Validate() = %v, want an error containing %q", err, tt.want)
			}
		})
	}
}

func TestBadInputChangesNothing(t *testing.T) {
	ent := testEntity()
	s := openStore(t, t.TempDir(), "n1", newPhysClock(t0))
	// Some state with history, a conflict and several records.
	put(t, s, ent, "r1", str("one"))
	put(t, s, ent, "r1", map[string]crdt.Value{"name": crdt.String("uno"), "age": crdt.Int(7)})
	put(t, s, ent, "r2", str("two"))
	tok := get(t, s, ent, "r2").Context
	for _, v := range []string{"a", "b"} {
		if _, err := s.Write(context.Background(), ent.Name, "r2", "api", tokenPutFn(ent, str(v), tok)); err != nil {
			t.Fatal(err)
		}
	}
	ents := []*crdt.Entity{ent}
	before := dumpStore(t, s, ents, "n1")
	applied := s.Applied()

	big := strings.Repeat("x", crdt.MaxValueBytes+1)
	tests := []struct {
		name   string
		id     string
		fields map[string]crdt.Value
		want   string // in the error message
	}{
		{"unknown field", "r1", map[string]crdt.Value{"nope": crdt.String("x")}, `no field "nope"`},
		{"unknown field on new record", "r9", map[string]crdt.Value{"nope": crdt.String("x")}, `no field "nope"`},
		{"wrong type", "r1", map[string]crdt.Value{"age": crdt.String("7")}, `field "age" is int, got a string value`},
		{"wrong type beside a good field", "r1", map[string]crdt.Value{"name": crdt.String("ok"), "age": crdt.Bool(true)}, `field "age" is int`},
		{"value over 1 MiB", "r1", str(big), "over the 1 MiB limit"},
		{"value over 1 MiB on new record", "r9", str(big), "over the 1 MiB limit"},
		{"empty id", "", str("x"), "record id is empty"},
		{"513-byte id", strings.Repeat("i", 513), str("x"), "513 bytes, over the 512-byte limit"},
		{"invalid UTF-8 id", "r\xff\xfe", str("x"), "record id is not valid UTF-8"},
		{"invalid UTF-8 value", "r1", str("bad\xc3\x28"), `field "name" value is not valid UTF-8`},
		{"reserved field", "r1", map[string]crdt.Value{crdt.DeletedField: crdt.Bool(true)}, "reserved"},
		{"no fields", "r1", map[string]crdt.Value{}, "has no fields"},
	}
	for _, tt := range tests {
		t.Run(tt.name, func(t *testing.T) {
			res, err := s.Write(context.Background(), ent.Name, tt.id, "api", putFn(ent, tt.fields))
			if err == nil {
				t.Fatalf("bad put accepted as %s", res.Edit.Dot)
			}
			if !errors.Is(err, crdt.ErrInvalid) {
				t.Fatalf("error %v is not crdt.ErrInvalid", err)
			}
			if !strings.Contains(err.Error(), tt.want) {
				t.Fatalf("error %q does not say %q", err, tt.want)
			}
			sameDump(t, "bad put "+tt.name, before, dumpStore(t, s, ents, "n1"))
		})
	}
	// No sequence number was consumed by the refused edits.
	res := put(t, s, ent, "r3", str("three"))
	if want := applied.Get("n1") + 1; res.Edit.Dot.Seq != want {
		t.Fatalf("first good put after the bad ones got seq %d, want %d", res.Edit.Dot.Seq, want)
	}
}

// A refused edit staged in the same batch as good ones (also on the same
// records) must not affect them.
func TestBadEditInBatch(t *testing.T) {
	ent := testEntity()
	obs := &batchObserver{}
	s := openStore(t, t.TempDir(), "n1", newPhysClock(t0), func(c *storage.Config) { c.Metrics = obs })
	put(t, s, ent, "shared", str("s0")) // seq 1

	release := holdCommitter(t, s, ent) // seq 2
	type req struct {
		id     string
		fields map[string]crdt.Value
		bad    bool
	}
	var reqs []req
	for i := range 8 {
		reqs = append(reqs,
			req{id: fmt.Sprintf("good%d", i), fields: str(fmt.Sprintf("g%d", i))},
			req{id: "shared", fields: map[string]crdt.Value{"age": crdt.Int(int64(i))}},
			req{id: "shared", fields: map[string]crdt.Value{"age": crdt.String("bad")}, bad: true},
			req{id: fmt.Sprintf("good%d", i), fields: map[string]crdt.Value{"nope": crdt.Int(1)}, bad: true},
			req{id: fmt.Sprintf("new%d", i), fields: str(strings.Repeat("y", crdt.MaxValueBytes+1)), bad: true},
		)
	}
	type out struct {
		res *storage.Result
		err error
	}
	outs := make([]out, len(reqs))
	var wg sync.WaitGroup
	for i, r := range reqs {
		wg.Go(func() {
			res, err := s.Write(context.Background(), ent.Name, r.id, "api", putFn(ent, r.fields))
			outs[i] = out{res, err}
		})
	}
	release(len(reqs))
	wg.Wait()

	var good []*crdt.Edit
	for i, r := range reqs {
		o := outs[i]
		switch {
		case r.bad && o.err == nil:
			t.Fatalf("bad request %d (%s) accepted", i, r.id)
		case r.bad && !errors.Is(o.err, crdt.ErrInvalid):
			t.Fatalf("bad request %d: %v, want ErrInvalid", i, o.err)
		case !r.bad && o.err != nil:
			t.Fatalf("good request %d (%s) failed: %v", i, r.id, o.err)
		case !r.bad:
			good = append(good, o.res.Edit)
		}
	}
	// All good edits and the hold edit were committed in one batch.
	sizes := obs.sizes()
	if len(sizes) != 2 || sizes[1] != len(good)+1 {
		t.Fatalf("batch sizes %v, want [1 %d]", sizes, len(good)+1)
	}
	edits := opLog(t, s, "n1")
	checkOpLogDense(t, edits, "n1", uint64(len(good)+2))
	if got := s.Applied().Get("n1"); got != uint64(len(good)+2) {
		t.Fatalf("Applied()[n1] = %d, want %d", got, len(good)+2)
	}
	for _, e := range good {
		logged := edits[e.Dot.Seq-1]
		if !bytes.Equal(crdt.AppendEdit(nil, logged), crdt.AppendEdit(nil, e)) {
			t.Fatalf("op log entry %s differs from the acknowledged edit", e.Dot)
		}
	}
	checkReplay(t, s, ent, edits)
	shared := get(t, s, ent, "shared")
	if f := field(t, ent, shared, "age"); f.Value.Kind() != crdt.KindInt || f.Conflicted {
		t.Fatalf("shared.age = %v (conflicted %v), want one int", f.Value, f.Conflicted)
	}
	if f := field(t, ent, shared, "name"); !f.Value.Equal(crdt.String("s0")) {
		t.Fatalf("shared.name = %v, want s0", f.Value)
	}
	for i := range 8 {
		if _, err := s.Get(ent.Name, fmt.Sprintf("new%d", i)); !errors.Is(err, storage.ErrNotFound) {
			t.Fatalf("record new%d of a refused edit: %v, want ErrNotFound", i, err)
		}
	}
}

// A PrepareFunc that fails must leave the batch as it was, even when the
// record was already staged by an earlier edit of the same batch and the
// function touched rec before failing. (commit.go says "Prepare on a copy: a
// refused edit must leave the staged state untouched", and PrepareFunc says
// "An error refuses the edit and nothing is written".)
func TestRefusedPrepareLeavesStagedRecord(t *testing.T) {
	ent := testEntity()
	s := openStore(t, t.TempDir(), "n1", newPhysClock(t0))
	put(t, s, ent, "r", str("before"))

	release := holdCommitter(t, s, ent)
	var wg sync.WaitGroup
	var goodErr, badErr error
	wg.Go(func() {
		_, goodErr = s.Write(context.Background(), ent.Name, "r", "api", putFn(ent, map[string]crdt.Value{"age": crdt.Int(1)}))
	})
	waitFor(t, "good edit queued", func() bool { return storage.QueueLen(s) == 1 })
	wg.Go(func() {
		_, badErr = s.Write(context.Background(), ent.Name, "r", "api", func(rec *crdt.Record, env storage.Env) ([]crdt.Write, error) {
			// Read the staged record, then refuse (PrepareFunc must not modify rec).
			if rec.Register("name") == nil {
				return nil, errors.New("prepare did not see the staged record")
			}
			return nil, fmt.Errorf("%w: refused after looking", crdt.ErrInvalid)
		})
	})
	release(2)
	wg.Wait()
	if goodErr != nil || badErr == nil {
		t.Fatalf("good edit: %v; bad edit: %v (want nil and an error)", goodErr, badErr)
	}
	edits := opLog(t, s, "n1")
	checkOpLogDense(t, edits, "n1", 3)
	rec := get(t, s, ent, "r")
	if f := field(t, ent, rec, "name"); !f.Value.Equal(crdt.String("before")) {
		t.Errorf("r.name = %v after a refused edit in the batch, want \"before\"", f.Value)
	}
	checkReplay(t, s, ent, edits)
}

func TestGroupCommit(t *testing.T) {
	const writers, perWriter = 64, 50
	ent := testEntity()
	obs := &batchObserver{}
	s := openStore(t, t.TempDir(), "n1", nil, func(c *storage.Config) { c.Metrics = obs })

	acked := make([][]*crdt.Edit, writers)
	errs := make(chan error, writers)
	var wg sync.WaitGroup
	for w := range writers {
		wg.Go(func() {
			for i := range perWriter {
				id := fmt.Sprintf("own-%02d-%02d", w, i) // distinct record
				if i%2 == 1 {
					id = fmt.Sprintf("shared-%d", (w+i)%5) // contended records
				}
				fields := map[string]crdt.Value{"name": crdt.String(fmt.Sprintf("w%d-i%d", w, i))}
				if i%3 == 0 {
					fields["age"] = crdt.Int(int64(w*1000 + i))
				}
				res, err := s.Write(context.Background(), ent.Name, id, fmt.Sprintf("origin-%d", w%3), putFn(ent, fields))
				if err != nil {
					errs <- fmt.Errorf("writer %d put %d: %w", w, i, err)
					return
				}
				acked[w] = append(acked[w], res.Edit)
			}
		})
	}
	wg.Wait()
	close(errs)
	for err := range errs {
		t.Fatal(err)
	}
	const total = writers * perWriter
	if got := s.Applied().Get("n1"); got != total {
		t.Fatalf("Applied()[n1] = %d, want %d", got, total)
	}
	edits := opLog(t, s, "n1")
	checkOpLogDense(t, edits, "n1", total)
	seen := map[uint64]bool{}
	for w := range writers {
		var last uint64
		for _, e := range acked[w] {
			if seen[e.Dot.Seq] {
				t.Fatalf("seq %d acknowledged twice", e.Dot.Seq)
			}
			seen[e.Dot.Seq] = true
			if e.Dot.Seq <= last {
				t.Fatalf("writer %d: seq %d after %d", w, e.Dot.Seq, last)
			}
			last = e.Dot.Seq
			if !bytes.Equal(crdt.AppendEdit(nil, e), crdt.AppendEdit(nil, edits[e.Dot.Seq-1])) {
				t.Fatalf("op log entry %s differs from the acknowledged edit", e.Dot)
			}
		}
	}
	for i := 1; i < len(edits); i++ {
		if edits[i].TS <= edits[i-1].TS {
			t.Fatalf("op log seq %d has TS %s, not after seq %d's %s", i+1, edits[i].TS, i, edits[i-1].TS)
		}
	}
	checkReplay(t, s, ent, edits)

	sizes := obs.sizes()
	sum, biggest := 0, 0
	for _, n := range sizes {
		sum += n
		biggest = max(biggest, n)
	}
	if sum != total {
		t.Fatalf("observer saw %d edits in %d batches, want %d", sum, len(sizes), total)
	}
	if biggest < 2 {
		t.Fatalf("no batch held more than one edit (%d batches): group commit did not happen", len(sizes))
	}
	t.Logf("%d edits in %d batches (largest %d)", total, len(sizes), biggest)
}

func TestStaleContextConflict(t *testing.T) {
	ent := testEntity()
	s := openStore(t, t.TempDir(), "n1", newPhysClock(t0))
	ctx := context.Background()
	put(t, s, ent, "r", map[string]crdt.Value{"email": crdt.String("r@example.com")})
	tok := get(t, s, ent, "r").Context // the token of a read before both edits

	a, err := s.Write(ctx, ent.Name, "r", "api", tokenPutFn(ent, str("A"), tok))
	if err != nil {
		t.Fatal(err)
	}
	b, err := s.Write(ctx, ent.Name, "r", "api", tokenPutFn(ent, str("B"), tok))
	if err != nil {
		t.Fatal(err)
	}
	f := field(t, ent, get(t, s, ent, "r"), "name")
	if !f.Conflicted || len(f.Live) != 2 {
		t.Fatalf("after two writes with one stale token: conflicted=%v live=%d, want a conflict of 2", f.Conflicted, len(f.Live))
	}
	vs, err := s.Versions(ent.Name, "r", "name")
	if err != nil || len(vs) != 2 {
		t.Fatalf("Versions = %d, %v; want 2", len(vs), err)
	}
	fates := crdt.Fates(vs, ent.PolicyOf("name"))
	byDot := map[crdt.Dot]crdt.Verdict{}
	for i := range vs {
		byDot[vs[i].Dot] = fates[i]
	}
	// LWW: B has the greater timestamp and wins.
	if b.Edit.TS <= a.Edit.TS {
		t.Fatalf("B's TS %s is not after A's %s", b.Edit.TS, a.Edit.TS)
	}
	if v := byDot[b.Edit.Dot]; v.Fate != crdt.FateWon {
		t.Fatalf("B: fate %v, want won", v.Fate)
	}
	if v := byDot[a.Edit.Dot]; v.Fate != crdt.FateLost || v.By != b.Edit.Dot {
		t.Fatalf("A: %v by %s, want lost by %s", v.Fate, v.By, b.Edit.Dot)
	}
	if f.Winner.Dot != b.Edit.Dot || !f.Value.Equal(crdt.String("B")) {
		t.Fatalf("view picks %s (%v), want B's %s", f.Winner.Dot, f.Value, b.Edit.Dot)
	}

	c := put(t, s, ent, "r", str("C")) // no token: overwrites what the node shows
	rec := get(t, s, ent, "r")
	f = field(t, ent, rec, "name")
	if f.Conflicted || len(f.Live) != 1 || !f.Value.Equal(crdt.String("C")) {
		t.Fatalf("after the tokenless write: conflicted=%v live=%d value=%v, want C alone", f.Conflicted, len(f.Live), f.Value)
	}
	if n := len(rec.Register("name").Versions); n != 1 {
		t.Fatalf("record keeps %d versions of name, want 1 (the others in history)", n)
	}
	vs, err = s.Versions(ent.Name, "r", "name")
	if err != nil || len(vs) != 3 {
		t.Fatalf("Versions = %d, %v; want 3", len(vs), err)
	}
	fates = crdt.Fates(vs, ent.PolicyOf("name"))
	for i := range vs {
		want := crdt.Verdict{Fate: crdt.FateSuperseded, By: c.Edit.Dot}
		if vs[i].Dot == c.Edit.Dot {
			want = crdt.Verdict{Fate: crdt.FateWon, By: c.Edit.Dot}
		}
		if fates[i] != want {
			t.Fatalf("version %s: %v by %s, want %v by %s", vs[i].Dot, fates[i].Fate, fates[i].By, want.Fate, want.By)
		}
	}
}

// remoteNode mints edits as another node would.
type remoteNode struct {
	node string
	seq  uint64
	recs map[string]*crdt.Record
}

func newRemote(node string) *remoteNode {
	return &remoteNode{node: node, recs: map[string]*crdt.Record{}}
}

// edit mints the node's next edit of id at ts and applies it to its own state.
func (r *remoteNode) edit(tb testing.TB, ent *crdt.Entity, id string, ts crdt.Timestamp, fields map[string]crdt.Value) *crdt.Edit {
	tb.Helper()
	rec := r.recs[id]
	if rec == nil {
		rec = &crdt.Record{}
		r.recs[id] = rec
	}
	writes, err := ent.PreparePut(rec, fields, crdt.EditContext{})
	if err != nil {
		tb.Fatal(err)
	}
	r.seq++
	e := &crdt.Edit{Entity: ent.Name, ID: id, Dot: crdt.Dot{Node: r.node, Seq: r.seq}, TS: ts, Origin: "postgres:crm", Writes: writes}
	rec.Apply(e)
	return e
}

func TestApplyRemote(t *testing.T) {
	ent := testEntity()
	ents := []*crdt.Entity{ent}
	phys := newPhysClock(t0)
	s := openStore(t, t.TempDir(), "n1", phys)
	ctx := context.Background()
	n2 := newRemote("n2")

	e1 := n2.edit(t, ent, "r", crdt.MakeTimestamp(t0-1000, 0), str("x"))
	e2 := n2.edit(t, ent, "r", crdt.MakeTimestamp(t0-900, 0), str("y"))
	for _, e := range []*crdt.Edit{e1, e2} {
		res, err := s.ApplyRemote(ctx, e)
		if err != nil || res.Duplicate {
			t.Fatalf("apply %s: %v (duplicate %v)", e.Dot, err, res != nil && res.Duplicate)
		}
	}
	if got := s.Applied().Get("n2"); got != 2 {
		t.Fatalf("Applied()[n2] = %d, want 2", got)
	}
	if got := field(t, ent, get(t, s, ent, "r"), "name").Value; !got.Equal(crdt.String("y")) {
		t.Fatalf("r.name = %v, want y", got)
	}
	if vs, err := s.Versions(ent.Name, "r", "name"); err != nil || len(vs) != 2 {
		t.Fatalf("versions of r.name: %d, %v; want 2 (x in history)", len(vs), err)
	}
	before := dumpStore(t, s, ents, "n1", "n2")
	lastTS := s.Clock().Last()

	// Duplicates are acknowledged and change nothing.
	for _, e := range []*crdt.Edit{e1, e2} {
		res, err := s.ApplyRemote(ctx, e)
		if err != nil || !res.Duplicate {
			t.Fatalf("re-apply %s: %v, want a duplicate result", e.Dot, err)
		}
	}
	sameDump(t, "duplicate remote edits", before, dumpStore(t, s, ents, "n1", "n2"))

	e3far := n2.edit(t, ent, "r", crdt.MakeTimestamp(t0+10_000, 0), str("future"))
	e4 := n2.edit(t, ent, "r", crdt.MakeTimestamp(t0, 0), str("z"))
	bad := []struct {
		name string
		e    *crdt.Edit
		is   error
	}{
		{"gap", e4, storage.ErrGap},
		{"clock 10s ahead", e3far, crdt.ErrClockOffset},
	}
	for _, tt := range bad {
		t.Run(tt.name, func(t *testing.T) {
			res, err := s.ApplyRemote(ctx, tt.e)
			if !errors.Is(err, tt.is) {
				t.Fatalf("apply %s: %v, %v; want %v", tt.e.Dot, res, err, tt.is)
			}
			sameDump(t, tt.name, before, dumpStore(t, s, ents, "n1", "n2"))
			if got := s.Clock().Last(); got != lastTS {
				t.Fatalf("clock moved from %s to %s", lastTS, got)
			}
		})
	}
	if _, err := s.ApplyRemote(ctx, &crdt.Edit{Entity: ent.Name, ID: "r", Dot: crdt.Dot{Node: "n1", Seq: 1}, TS: 1, Writes: e1.Writes}); err == nil {
		t.Fatal("a remote edit claiming this node's origin was accepted")
	}
	sameDump(t, "edit claiming the local origin", before, dumpStore(t, s, ents, "n1", "n2"))

	// The same seq within max-offset is accepted and moves the clock.
	e3 := *e3far
	e3.TS = crdt.MakeTimestamp(t0+300, 5)
	if _, err := s.ApplyRemote(ctx, &e3); err != nil {
		t.Fatalf("apply %s at +300ms: %v", e3.Dot, err)
	}
	if _, err := s.ApplyRemote(ctx, e4); err != nil {
		t.Fatalf("apply %s after the gap closed: %v", e4.Dot, err)
	}
	if got := s.Applied().Get("n2"); got != 4 {
		t.Fatalf("Applied()[n2] = %d, want 4", got)
	}
	local := put(t, s, ent, "r", str("local"))
	if local.Edit.TS <= e3.TS {
		t.Fatalf("local edit TS %s is not after the remote TS %s", local.Edit.TS, e3.TS)
	}
	if local.Edit.Dot != (crdt.Dot{Node: "n1", Seq: 1}) {
		t.Fatalf("local edit dot %s, want n1:1", local.Edit.Dot)
	}
	checkOpLogDense(t, opLog(t, s, "n2"), "n2", 4)
}

// recv reads one edit from sub with a deadline.
func recv(tb testing.TB, sub *storage.Subscription) (*crdt.Edit, bool) {
	tb.Helper()
	timer := time.NewTimer(20 * time.Second)
	defer timer.Stop()
	select {
	case e, ok := <-sub.C():
		return e, ok
	case <-timer.C:
		tb.Fatal("timed out waiting for an edit from the subscription")
		return nil, false
	}
}

func TestSubscribe(t *testing.T) {
	ent := testEntity()
	s := openStore(t, t.TempDir(), "n1", nil)
	put(t, s, ent, "before", str("not delivered"))

	sub, err := s.Subscribe(1024)
	if err != nil {
		t.Fatal(err)
	}
	defer sub.Close()
	slow, err := s.Subscribe(1)
	if err != nil {
		t.Fatal(err)
	}

	// Sequential then concurrent edits; writers must never wait for the slow
	// subscriber, so every write carries a deadline.
	ctx, cancel := context.WithTimeout(context.Background(), 20*time.Second)
	defer cancel()
	var want []*crdt.Edit
	for i := range 5 {
		res, err := s.Write(ctx, ent.Name, fmt.Sprintf("seq%d", i), "api", putFn(ent, str("v")))
		if err != nil {
			t.Fatal(err)
		}
		want = append(want, res.Edit)
	}
	var wg sync.WaitGroup
	for i := range 40 {
		wg.Go(func() {
			if _, err := s.Write(ctx, ent.Name, fmt.Sprintf("par%d", i%7), "api", putFn(ent, str(fmt.Sprint(i)))); err != nil {
				t.Error(err)
			}
		})
	}
	wg.Wait()
	if t.Failed() {
		t.FailNow()
	}

	for i := range 45 {
		e, ok := recv(t, sub)
		if !ok {
			t.Fatalf("subscription ended after %d edits (lagged %v)", i, sub.Lagged())
		}
		if e.Dot.Seq != uint64(i+2) {
			t.Fatalf("edit %d delivered is %s, want seq %d (commit order)", i, e.Dot, i+2)
		}
		if i < len(want) && e.Dot != want[i].Dot {
			t.Fatalf("edit %d delivered is %s, want %s", i, e.Dot, want[i].Dot)
		}
	}
	if sub.Lagged() {
		t.Fatal("the reading subscriber is marked lagged")
	}

	// The slow one got its one buffered edit and was ended.
	e, ok := recv(t, slow)
	if !ok || e.Dot.Seq != 2 {
		t.Fatalf("slow subscriber's buffered edit: %v %v, want seq 2", e, ok)
	}
	if _, ok := recv(t, slow); ok {
		t.Fatal("slow subscriber was not ended")
	}
	if !slow.Lagged() {
		t.Fatal("slow subscriber ended without Lagged")
	}
	slow.Close() // harmless after it ended

	// Remote edits are delivered too.
	n2 := newRemote("n2")
	re := n2.edit(t, ent, "remote", s.Clock().Now(), str("r"))
	if _, err := s.ApplyRemote(ctx, re); err != nil {
		t.Fatal(err)
	}
	if e, ok := recv(t, sub); !ok || e.Dot != re.Dot {
		t.Fatalf("after a remote edit the subscription delivered %v %v, want %s", e, ok, re.Dot)
	}

	closeStore(t, s)
	if _, ok := recv(t, sub); ok {
		t.Fatal("subscription still open after the store closed")
	}
	if _, err := s.Subscribe(1); !errors.Is(err, storage.ErrClosed) {
		t.Fatalf("subscribe after close: %v, want ErrClosed", err)
	}
}

func TestPrune(t *testing.T) {
	ent := testEntity()
	phys := newPhysClock(t0)
	s := openStore(t, t.TempDir(), "n1", phys)

	put(t, s, ent, "old-live", str("kept forever")) // live at t0
	v1 := put(t, s, ent, "r", str("v1"))            // superseded at t0: pruned
	phys.Set(t0 + 1000)
	v2 := put(t, s, ent, "r", str("v2")) // superseded at t0+1s: newer than the horizon, kept
	phys.Set(t0 + 5000)
	v3 := put(t, s, ent, "r", str("v3")) // live
	other := &crdt.Entity{Name: "contact2", Fields: ent.Fields}
	put(t, s, other, "r", str("o1"))
	put(t, s, other, "r", str("o2")) // other entity's history is not pruned

	horizon := crdt.MakeTimestamp(t0+500, 0)
	n, err := s.Prune(ent.Name, horizon)
	if err != nil {
		t.Fatal(err)
	}
	// v1's versions of name and _deleted.
	if n != 2 {
		t.Fatalf("Prune deleted %d versions, want 2", n)
	}
	dots := func(entity, id, reg string) []crdt.Dot {
		t.Helper()
		vs, err := s.Versions(entity, id, reg)
		if err != nil {
			t.Fatal(err)
		}
		var out []crdt.Dot
		for _, v := range vs {
			out = append(out, v.Dot)
		}
		return out
	}
	for _, reg := range []string{"name", crdt.DeletedField} {
		if got, want := dots(ent.Name, "r", reg), []crdt.Dot{v2.Edit.Dot, v3.Edit.Dot}; !slices.Equal(got, want) {
			t.Fatalf("versions of r.%s after prune: %v, want %v", reg, got, want)
		}
	}
	if got := dots(ent.Name, "old-live", "name"); len(got) != 1 {
		t.Fatalf("old live version pruned: %v", got)
	}
	if got := dots(other.Name, "r", "name"); len(got) != 2 {
		t.Fatalf("other entity's history: %v, want 2 versions", got)
	}
	_ = v1
	if n, err := s.Prune(ent.Name, horizon); err != nil || n != 0 {
		t.Fatalf("second prune: %d, %v; want 0", n, err)
	}
	// A horizon past everything takes all history and no live version.
	if n, err := s.Prune(ent.Name, crdt.MakeTimestamp(t0+1_000_000, 0)); err != nil || n != 2 {
		t.Fatalf("prune at a late horizon: %d, %v; want 2", n, err)
	}
	if got := dots(ent.Name, "r", "name"); !slices.Equal(got, []crdt.Dot{v3.Edit.Dot}) {
		t.Fatalf("after the late prune: %v, want only the live %s", got, v3.Edit.Dot)
	}
	if got := field(t, ent, get(t, s, ent, "r"), "name").Value; !got.Equal(crdt.String("v3")) {
		t.Fatalf("r.name = %v after prune, want v3", got)
	}
}

func TestListPagination(t *testing.T) {
	ent := testEntity()
	s := openStore(t, t.TempDir(), "n1", nil)
	ids := []string{"\x00", "\x00\x00", "a", "a\x00", "a\x00\x00", "a\x00b", "a\x01", "ab", "b",
		"é", "日本", "日本\x00語", "zz", "Z", "0", "a b", "\x7f", "ü\x00ü", "\x01", "ñ", "😀", "x\x00\x01y", "x\x01", "x", "xy"}
	if len(ids) != 25 {
		t.Fatalf("%d ids", len(ids))
	}
	for _, id := range ids {
		put(t, s, ent, id, str("v"))
	}
	// Records of entities whose names share a prefix must not appear.
	for _, name := range []string{"contac", "contacts", "contact\x00"} {
		e := &crdt.Entity{Name: name, Fields: ent.Fields}
		put(t, s, e, "a", str("other entity"))
	}
	want := slices.Clone(ids)
	sort.Strings(want)

	for _, page := range []int{1, 3, 10, 24, 25, 26, 100} {
		t.Run(fmt.Sprint("page ", page), func(t *testing.T) {
			var got []string
			after, pages := "", 0
			for {
				recs, more, err := s.List(ent.Name, after, page)
				if err != nil {
					t.Fatal(err)
				}
				pages++
				if len(recs) > page {
					t.Fatalf("page of %d records with limit %d", len(recs), page)
				}
				for _, r := range recs {
					got = append(got, r.ID)
					if v := field(t, ent, r.Record, "name").Value; !v.Equal(crdt.String("v")) {
						t.Fatalf("record %q: name %v", r.ID, v)
					}
				}
				if !more {
					break
				}
				if len(recs) == 0 || pages > 100 {
					t.Fatalf("pagination does not advance after %q", after)
				}
				after = recs[len(recs)-1].ID
			}
			if !slices.Equal(got, want) {
				t.Fatalf("listed\n%q\nwant\n%q", got, want)
			}
			if wantPages := (len(ids) + page - 1) / page; pages != wantPages {
				t.Fatalf("%d pages, want %d", pages, wantPages)
			}
		})
	}
}

func TestHLCCeilingAcrossRestart(t *testing.T) {
	tests := []struct {
		name   string
		remote bool // also apply a remote edit ahead of the local clock
	}{
		{"local edits", false},
		{"after a remote edit ahead", true},
	}
	for _, tt := range tests {
		t.Run(tt.name, func(t *testing.T) {
			ent := testEntity()
			dir := t.TempDir()
			phys := newPhysClock(t0)
			s := openStore(t, dir, "n1", phys)
			var maxTS crdt.Timestamp
			for i := range 5 {
				res := put(t, s, ent, fmt.Sprint("r", i), str("v"))
				maxTS = max(maxTS, res.Edit.TS)
				phys.Add(50)
			}
			if tt.remote {
				e := newRemote("n2").edit(t, ent, "r", crdt.MakeTimestamp(phys.Now()+450, 3), str("ahead"))
				if _, err := s.ApplyRemote(context.Background(), e); err != nil {
					t.Fatal(err)
				}
				maxTS = max(maxTS, e.TS)
			}
			closeStore(t, s)

			phys.Add(-time.Hour.Milliseconds())
			s = openStore(t, dir, "n1", phys)
			res := put(t, s, ent, "after", str("v"))
			if res.Edit.TS <= maxTS {
				t.Fatalf("after restart with the clock 1h back: TS %s, not after %s", res.Edit.TS, maxTS)
			}
			if now := s.Clock().Now(); now <= res.Edit.TS {
				t.Fatalf("clock Now %s not after the last edit %s", now, res.Edit.TS)
			}
		})
	}
}

func TestWriteAtSourceTime(t *testing.T) {
	ent := testEntity()
	phys := newPhysClock(t0)
	s := openStore(t, t.TempDir(), "n1", phys)
	ctx := context.Background()
	// Within max-offset: the edit carries the source's time, and the clock moves past it.
	at := time.UnixMilli(t0 + 300)
	res, err := s.WriteAt(ctx, ent.Name, "a", "postgres:crm", at, putFn(ent, str("x")))
	if err != nil {
		t.Fatal(err)
	}
	if res.Edit.TS != crdt.TimestampFromTime(at) {
		t.Errorf("edit TS = %s, want the source time %s", res.Edit.TS, crdt.TimestampFromTime(at))
	}
	if next := put(t, s, ent, "b", str("y")); next.Edit.TS <= res.Edit.TS {
		t.Errorf("next local edit TS %s is not after the source time %s", next.Edit.TS, res.Edit.TS)
	}
	// Beyond max-offset (an hour off): the node's own time, counted.
	far := time.UnixMilli(t0 - 3600_000)
	res, err = s.WriteAt(ctx, ent.Name, "c", "postgres:crm", far, putFn(ent, str("z")))
	if err != nil {
		t.Fatal(err)
	}
	if res.Edit.TS == crdt.TimestampFromTime(far) || res.Edit.TS.Millis() < t0 {
		t.Errorf("edit TS = %s for a source time an hour off, want the node's clock", res.Edit.TS)
	}
	if got := s.SourceClockSkew(); got != 1 {
		t.Errorf("SourceClockSkew = %d, want 1", got)
	}
}
