package storage_test

import (
	"bufio"
	"bytes"
	"context"
	"errors"
	"fmt"
	"math/rand/v2"
	"os"
	"os/exec"
	"path/filepath"
	"slices"
	"strconv"
	"strings"
	"sync"
	"sync/atomic"
	"testing"
	"time"

	"github.com/cockroachdb/pebble/v2/vfs"

	"github.com/lattice-sync/lattice/crdt"
	"github.com/lattice-sync/lattice/storage"
)

// Environment of the re-executed children.
const (
	crashDirEnv   = "LATTICE_CRASH_DIR"   // TestCrashChild: the store directory
	crashCycleEnv = "LATTICE_CRASH_CYCLE" // TestCrashChild: cycle number, part of every value
	closeDirEnv   = "LATTICE_CLOSE_DIR"   // TestCloseWithSubscriberChild: a scratch directory
	crashNode     = "crash-node"
	crashWriters  = 16
	crashMinAcks  = 2000
)

// ack is one acknowledged edit as a writer saw it.
type ack struct {
	seq   uint64
	ts    crdt.Timestamp
	id    string
	value string
}

func parseAck(line string) (ack, error) {
	f := strings.Fields(line)
	if len(f) != 5 || f[0] != "ack" {
		return ack{}, fmt.Errorf("malformed ack line %q", line)
	}
	seq, err1 := strconv.ParseUint(f[1], 10, 64)
	ts, err2 := strconv.ParseUint(f[2], 10, 64)
	if err := errors.Join(err1, err2); err != nil {
		return ack{}, fmt.Errorf("ack line %q: %v", line, err)
	}
	return ack{seq: seq, ts: crdt.Timestamp(ts), id: f[3], value: f[4]}, nil
}

// TestCrashChild is the process TestCrash kills: 16 writers put as fast as
// they can and print one line per acknowledged edit. It does nothing unless
// LATTICE_CRASH_DIR is set.
func TestCrashChild(t *testing.T) {
	dir := os.Getenv(crashDirEnv)
	if dir == "" {
		t.Skip("runs only as the child of TestCrash")
	}
	cycle := os.Getenv(crashCycleEnv)
	ent := testEntity()
	s, err := tryOpen(dir, crashNode, nil)
	if err != nil {
		fmt.Fprintf(os.Stderr, "child: open: %v\n", err)
		os.Exit(3)
	}
	var mu sync.Mutex // one line per write(2) on the unbuffered stdout
	deadline := time.Now().Add(60 * time.Second)
	var wg sync.WaitGroup
	for w := range crashWriters {
		wg.Go(func() {
			for i := 0; time.Now().Before(deadline); i++ {
				id := fmt.Sprintf("w%02d-%03d", w, i%97)
				value := fmt.Sprintf("c%s-w%d-i%d", cycle, w, i)
				res, err := s.Write(context.Background(), ent.Name, id, "api", putFn(ent, str(value)))
				if err != nil {
					fmt.Fprintf(os.Stderr, "child: write: %v\n", err)
					os.Exit(4)
				}
				mu.Lock()
				fmt.Fprintf(os.Stdout, "ack %d %d %s %s\n", res.Edit.Dot.Seq, uint64(res.Edit.TS), id, value)
				mu.Unlock()
			}
		})
	}
	wg.Wait()
	s.Close()
}

// TestCrash SIGKILLs a child process mid-stream three times on the same
// directory and checks, after each crash, that every acknowledged edit
// survived, the op log has no gap and the sequence and clock continue.
func TestCrash(t *testing.T) {
	if testing.Short() {
		t.Skip("crash test in -short mode")
	}
	dir := t.TempDir()
	ent := testEntity()
	var acks []ack
	for cycle := range 3 {
		got := runCrashChild(t, dir, cycle)
		if len(got) < crashMinAcks {
			t.Fatalf("cycle %d: only %d acks", cycle, len(got))
		}
		acks = append(acks, got...)

		s := openStore(t, dir, crashNode, nil)
		next := verifyAcks(t, s, ent, crashNode, acks)
		acks = append(acks, next)
		closeStore(t, s)
		t.Logf("cycle %d: %d acks read before and after the kill, applied %d", cycle, len(got), next.seq)
	}
}

// runCrashChild runs TestCrashChild on dir, SIGKILLs it once it acknowledged
// crashMinAcks edits and returns every ack it printed.
func runCrashChild(t *testing.T, dir string, cycle int) []ack {
	t.Helper()
	cmd := exec.Command(os.Args[0], "-test.run=^TestCrashChild$", "-test.count=1")
	cmd.Env = append(os.Environ(), crashDirEnv+"="+dir, fmt.Sprintf("%s=%d", crashCycleEnv, cycle))
	var stderr bytes.Buffer
	cmd.Stderr = &stderr
	stdout, err := cmd.StdoutPipe()
	if err != nil {
		t.Fatal(err)
	}
	if err := cmd.Start(); err != nil {
		t.Fatal(err)
	}
	// Whatever happens, the child does not outlive a minute.
	watchdog := time.AfterFunc(60*time.Second, func() { cmd.Process.Kill() })
	defer watchdog.Stop()

	var acks []ack
	killed := false
	sc := bufio.NewScanner(stdout)
	for sc.Scan() {
		line := sc.Text()
		if !strings.HasPrefix(line, "ack ") {
			continue // test framework output
		}
		a, err := parseAck(line)
		if err != nil {
			cmd.Process.Kill()
			cmd.Wait()
			t.Fatal(err)
		}
		acks = append(acks, a)
		if len(acks) >= crashMinAcks && !killed {
			// Kill mid-stream; lines already in the pipe are acks too.
			if err := cmd.Process.Kill(); err != nil {
				t.Fatal(err)
			}
			killed = true
		}
	}
	werr := cmd.Wait()
	if !killed {
		t.Fatalf("cycle %d: child ended before %d acks (%d): %v\nstderr:\n%s", cycle, crashMinAcks, len(acks), werr, stderr.String())
	}
	if werr == nil || !strings.Contains(werr.Error(), "killed") {
		t.Fatalf("cycle %d: child exit %v, want killed by SIGKILL\nstderr:\n%s", cycle, werr, stderr.String())
	}
	return acks
}

// verifyAcks checks a reopened store against the edits acknowledged before
// a crash: each is in the op log with the acknowledged content and its value
// is kept (live or in history); the op log is dense up to the applied mark;
// records equal a replay of the op log; a new edit continues the sequence
// and the clock. It returns that new edit as an ack.
func verifyAcks(tb testing.TB, s *storage.Store, ent *crdt.Entity, node string, acks []ack) ack {
	tb.Helper()
	applied := s.Applied().Get(node)
	var maxSeq uint64
	var maxTS crdt.Timestamp
	for _, a := range acks {
		maxSeq, maxTS = max(maxSeq, a.seq), max(maxTS, a.ts)
	}
	if applied < maxSeq {
		tb.Fatalf("Applied()[%s] = %d after the crash, below the acknowledged seq %d", node, applied, maxSeq)
	}
	edits := opLog(tb, s, node)
	checkOpLogDense(tb, edits, node, applied)

	seen := map[uint64]bool{}
	versions := map[string][]crdt.Version{} // by id
	for _, a := range acks {
		if seen[a.seq] {
			tb.Fatalf("seq %d acknowledged twice", a.seq)
		}
		seen[a.seq] = true
		e := edits[a.seq-1]
		if e.ID != a.id || e.TS != a.ts || e.Entity != ent.Name {
			tb.Fatalf("op log seq %d is %s/%q at %s, acknowledged %q at %s", a.seq, e.Entity, e.ID, e.TS, a.id, a.ts)
		}
		i := slices.IndexFunc(e.Writes, func(w crdt.Write) bool { return w.Register == "name" })
		if i < 0 || !e.Writes[i].Value.Equal(crdt.String(a.value)) {
			tb.Fatalf("op log seq %d does not write name=%q: %+v", a.seq, a.value, e.Writes)
		}
		vs, ok := versions[a.id]
		if !ok {
			var err error
			if vs, err = s.Versions(ent.Name, a.id, "name"); err != nil {
				tb.Fatalf("versions of %q: %v", a.id, err)
			}
			versions[a.id] = vs
		}
		j := slices.IndexFunc(vs, func(v crdt.Version) bool { return v.Dot == e.Dot })
		if j < 0 || !vs[j].Value.Equal(crdt.String(a.value)) || vs[j].TS != a.ts {
			tb.Fatalf("acknowledged version %s (%q) of %q is neither live nor in history", e.Dot, a.value, a.id)
		}
	}
	checkReplay(tb, s, ent, edits)

	res := put(tb, s, ent, "after-crash", str(fmt.Sprintf("after-%d", applied)))
	if res.Edit.Dot.Seq != applied+1 {
		tb.Fatalf("first edit after the crash got seq %d, want %d", res.Edit.Dot.Seq, applied+1)
	}
	if res.Edit.TS <= maxTS {
		tb.Fatalf("first edit after the crash has TS %s, not after the acknowledged %s", res.Edit.TS, maxTS)
	}
	return ack{seq: res.Edit.Dot.Seq, ts: res.Edit.TS, id: "after-crash", value: fmt.Sprintf("after-%d", applied)}
}

// TestCrashCloneMem crashes an in-memory filesystem (pebble's crashable
// MemFS) while writers are in flight and reopens a store on the clone.
func TestCrashCloneMem(t *testing.T) {
	tests := []struct {
		name     string
		unsynced int // percent of unsynced data the clone keeps
	}{
		{"synced data only", 0},
		{"half of unsynced data", 50},
		{"all data", 100},
	}
	for i, tt := range tests {
		t.Run(tt.name, func(t *testing.T) {
			ent := testEntity()
			fs := vfs.NewCrashableMem()
			withFS := func(fs vfs.FS) func(*storage.Config) { return func(c *storage.Config) { c.FS = fs } }
			s := openStore(t, "db", "mem-node", nil, withFS(fs))

			var mu sync.Mutex
			var acks []ack
			stop := make(chan struct{})
			var wg sync.WaitGroup
			for w := range 8 {
				wg.Go(func() {
					for n := 0; ; n++ {
						select {
						case <-stop:
							return
						default:
						}
						id, value := fmt.Sprintf("w%d-%d", w, n%13), fmt.Sprintf("w%d-n%d", w, n)
						res, err := s.Write(context.Background(), ent.Name, id, "api", putFn(ent, str(value)))
						if err != nil {
							t.Errorf("write: %v", err)
							return
						}
						mu.Lock()
						acks = append(acks, ack{seq: res.Edit.Dot.Seq, ts: res.Edit.TS, id: id, value: value})
						mu.Unlock()
					}
				})
			}
			waitFor(t, "500 acks", func() bool { mu.Lock(); defer mu.Unlock(); return len(acks) >= 500 })
			mu.Lock()
			before := slices.Clone(acks) // acknowledged before the clone is taken
			mu.Unlock()
			crashed := fs.CrashClone(vfs.CrashCloneCfg{UnsyncedDataPercent: tt.unsynced, RNG: rand.New(rand.NewPCG(uint64(i), 42))})
			close(stop)
			wg.Wait()
			closeStore(t, s)

			s2 := openStore(t, "db", "mem-node", nil, withFS(crashed))
			verifyAcks(t, s2, ent, "mem-node", before)
			t.Logf("%d acks before the clone; applied after reopen %d", len(before), s2.Applied().Get("mem-node"))
		})
	}
}

// TestCloseWithSubscriber closes stores that have an open subscription
// while writes are in flight, in a child process so that a crash there does
// not take the other tests down. Close must not panic, and every edit
// acknowledged before Close must survive it.
func TestCloseWithSubscriber(t *testing.T) {
	cmd := exec.Command(os.Args[0], "-test.run=^TestCloseWithSubscriberChild$", "-test.count=1", "-test.v")
	cmd.Env = append(os.Environ(), closeDirEnv+"="+t.TempDir())
	out, err := cmd.CombinedOutput()
	if err != nil {
		lines := strings.Split(strings.TrimSpace(string(out)), "\n")
		if len(lines) > 40 {
			lines = lines[:40]
		}
		t.Fatalf("child closing stores with a subscriber and writes in flight failed: %v\n%s", err, strings.Join(lines, "\n"))
	}
}

func TestCloseWithSubscriberChild(t *testing.T) {
	base := os.Getenv(closeDirEnv)
	if base == "" {
		t.Skip("runs only as the child of TestCloseWithSubscriber")
	}
	ent := testEntity()
	for round := range 20 {
		dir := filepath.Join(base, fmt.Sprint(round))
		s, err := tryOpen(dir, "n1", nil)
		if err != nil {
			t.Fatal(err)
		}
		sub, err := s.Subscribe(1 << 16)
		if err != nil {
			t.Fatal(err)
		}
		var mu sync.Mutex
		var acks []ack
		var wg sync.WaitGroup
		for w := range 8 {
			wg.Go(func() {
				for n := 0; ; n++ {
					id, value := fmt.Sprintf("w%d-%d", w, n%5), fmt.Sprintf("w%d-n%d", w, n)
					res, err := s.Write(context.Background(), ent.Name, id, "api", putFn(ent, str(value)))
					if errors.Is(err, storage.ErrClosed) {
						return
					}
					if err != nil {
						t.Errorf("write: %v", err)
						return
					}
					mu.Lock()
					acks = append(acks, ack{seq: res.Edit.Dot.Seq, ts: res.Edit.TS, id: id, value: value})
					mu.Unlock()
				}
			})
		}
		waitFor(t, "50 acks", func() bool { mu.Lock(); defer mu.Unlock(); return len(acks) >= 50 })
		if err := s.Close(); err != nil {
			t.Fatal(err)
		}
		wg.Wait()
		for range sub.C() { // drained and closed
		}
		s2 := openStore(t, dir, "n1", nil)
		verifyAcks(t, s2, ent, "n1", acks)
		closeStore(t, s2)
	}
}

// gatedFS wraps a filesystem so that a test can hold or fail the syncs of
// the WAL (*.log files): while held, Sync, SyncData and SyncTo block (and
// say so on blocked); while failing, they return an error.
type gatedFS struct {
	vfs.FS
	mu      sync.Mutex
	gate    chan struct{} // nil: syncs pass
	blocked chan struct{}
	fail    atomic.Bool
}

var errInjectedSync = errors.New("injected WAL sync failure")

func newGatedFS(fs vfs.FS) *gatedFS { return &gatedFS{FS: fs, blocked: make(chan struct{}, 1)} }

func (g *gatedFS) hold() {
	g.mu.Lock()
	g.gate = make(chan struct{})
	g.mu.Unlock()
}

func (g *gatedFS) release() {
	g.mu.Lock()
	if g.gate != nil {
		close(g.gate)
		g.gate = nil
	}
	g.mu.Unlock()
}

func (g *gatedFS) wait() error {
	if g.fail.Load() {
		return errInjectedSync
	}
	g.mu.Lock()
	gate := g.gate
	g.mu.Unlock()
	if gate == nil {
		return nil
	}
	select {
	case g.blocked <- struct{}{}:
	default:
	}
	<-gate
	return nil
}

func (g *gatedFS) wrap(name string, f vfs.File, err error) (vfs.File, error) {
	if err != nil || !strings.HasSuffix(name, ".log") {
		return f, err
	}
	return gatedFile{File: f, fs: g}, nil
}

func (g *gatedFS) Create(name string, c vfs.DiskWriteCategory) (vfs.File, error) {
	f, err := g.FS.Create(name, c)
	return g.wrap(name, f, err)
}

func (g *gatedFS) ReuseForWrite(oldname, newname string, c vfs.DiskWriteCategory) (vfs.File, error) {
	f, err := g.FS.ReuseForWrite(oldname, newname, c)
	return g.wrap(newname, f, err)
}

func (g *gatedFS) OpenReadWrite(name string, c vfs.DiskWriteCategory, opts ...vfs.OpenOption) (vfs.File, error) {
	f, err := g.FS.OpenReadWrite(name, c, opts...)
	return g.wrap(name, f, err)
}

type gatedFile struct {
	vfs.File
	fs *gatedFS
}

func (f gatedFile) Sync() error {
	if err := f.fs.wait(); err != nil {
		return err
	}
	return f.File.Sync()
}

func (f gatedFile) SyncData() error {
	if err := f.fs.wait(); err != nil {
		return err
	}
	return f.File.SyncData()
}

func (f gatedFile) SyncTo(n int64) (bool, error) {
	if err := f.fs.wait(); err != nil {
		return false, err
	}
	return f.File.SyncTo(n)
}

// TestCrashWhileFsyncHeld holds the WAL fsync of an edit, reads the store
// meanwhile, then crashes (keeping only synced data) and reopens. The edit
// was never acknowledged, so losing it is fine, but:
//   - ScanOpLog (anti-entropy, watch resume) never shows it;
//   - its dot is never reissued for another edit after the restart, even
//     though Get/List/Versions may have shown it (and handed out a token
//     covering it): a client writing with such a token must conflict with
//     the edits made after the restart, not silently overwrite them.
func TestCrashWhileFsyncHeld(t *testing.T) {
	ent := testEntity()
	mem := vfs.NewCrashableMem()
	gfs := newGatedFS(mem)
	// A frozen physical clock: the HLC ceiling persisted by the first edit
	// covers every later one, so the committer issues no sync of its own.
	phys := newPhysClock(t0)
	s := openStore(t, "db", "n1", phys, func(c *storage.Config) { c.FS = gfs })
	put(t, s, ent, "r", str("durable")) // n1:1

	gfs.hold()
	type out struct {
		res *storage.Result
		err error
	}
	done := make(chan out, 1)
	go func() {
		res, err := s.Write(context.Background(), ent.Name, "r", "api", putFn(ent, str("lost")))
		done <- out{res, err}
	}()
	select {
	case <-gfs.blocked: // the edit's batch reached its fsync
	case <-time.After(20 * time.Second):
		t.Fatal("the write never reached a WAL sync")
	}

	// Read while the fsync is held, until a read shows the edit (the store
	// may also hide it; then the deadline ends the loop).
	var shown []string
	var tok crdt.VV // the token a client reading now gets
	deadline := time.Now().Add(2 * time.Second)
	for len(shown) == 0 && time.Now().Before(deadline) {
		if err := s.ScanOpLog("n1", 1, -1, func(e *crdt.Edit) bool {
			t.Errorf("ScanOpLog returned %s before it was durable (Applied %s)", e.Dot, s.Applied())
			return true
		}); err != nil {
			t.Fatal(err)
		}
		if rec, err := s.Get(ent.Name, "r"); err == nil && rec.Context.Get("n1") >= 2 {
			shown = append(shown, fmt.Sprintf("Get: r.name=%v context %s", field(t, ent, rec, "name").Value, rec.Context))
			tok = rec.Context
		}
		if recs, _, err := s.List(ent.Name, "", 10); err == nil && len(recs) == 1 && recs[0].Record.Context.Get("n1") >= 2 {
			shown = append(shown, fmt.Sprintf("List: context %s", recs[0].Record.Context))
		}
		if vs, err := s.Versions(ent.Name, "r", "name"); err == nil && len(vs) > 1 {
			shown = append(shown, fmt.Sprintf("Versions: %d versions of r.name", len(vs)))
		}
		time.Sleep(time.Millisecond) // poll interval
	}
	t.Logf("reads during the held fsync: %q", shown)
	select {
	case o := <-done:
		t.Fatalf("write returned (%v, %v) while its fsync was held", o.res, o.err)
	default:
	}
	if got := s.Applied().Get("n1"); got != 1 {
		t.Fatalf("Applied()[n1] = %d while the edit's fsync is held, want 1", got)
	}

	// Power loss now: only synced data survives.
	crashed := mem.CrashClone(vfs.CrashCloneCfg{})
	gfs.release()
	if o := <-done; o.err != nil {
		t.Fatalf("held write after release: %v", o.err)
	}
	closeStore(t, s)

	s2 := openStore(t, "db", "n1", phys, func(c *storage.Config) { c.FS = crashed })
	if got := field(t, ent, get(t, s2, ent, "r"), "name").Value; !got.Equal(crdt.String("durable")) {
		t.Fatalf("after the crash r.name = %v, want the durable value (the held edit was not synced)", got)
	}
	edits := opLog(t, s2, "n1")
	checkOpLogDense(t, edits, "n1", s2.Applied().Get("n1"))
	for _, e := range edits[1:] {
		if len(e.Writes) != 0 {
			t.Fatalf("op log entry %s after the crash holds writes %+v; only burned (empty) entries may follow n1:1", e.Dot, e.Writes)
		}
	}
	re := put(t, s2, ent, "r", str("after"))
	if re.Edit.Dot.Seq <= 2 {
		t.Fatalf("the first edit after the crash got %s: the dot n1:2 of the lost edit was reissued", re.Edit.Dot)
	}
	if tok != nil {
		if _, err := s2.Write(context.Background(), ent.Name, "r", "api", tokenPutFn(ent, str("client"), tok)); err != nil {
			t.Fatal(err)
		}
		f := field(t, ent, get(t, s2, ent, "r"), "name")
		if !f.Conflicted || len(f.Live) != 2 {
			t.Fatalf("a write with the token %s read before the crash overwrote the later edit %s without a conflict (name=%v, live %d)",
				tok, re.Edit.Dot, f.Value, len(f.Live))
		}
	}
}

// TestSyncFailureStopsStore fails one WAL fsync. The edits of that batch are
// refused with ErrFailed; after it the store refuses everything (DESIGN:
// "refuse every later edit rather than risk a gap"), including retries of
// the failed remote edit, which it must not acknowledge as duplicates since
// they were never durable; and Close does not crash the process.
func TestSyncFailureStopsStore(t *testing.T) {
	ent := testEntity()
	gfs := newGatedFS(vfs.NewMem())
	s := openStore(t, "db", "n1", newPhysClock(t0), func(c *storage.Config) { c.FS = gfs })
	put(t, s, ent, "r", str("ok")) // n1:1
	ctx, cancel := context.WithTimeout(context.Background(), 20*time.Second)
	defer cancel()

	remote := newRemote("n2").edit(t, ent, "r", crdt.MakeTimestamp(t0-1000, 0), str("remote"))
	gfs.fail.Store(true)
	if res, err := s.ApplyRemote(ctx, remote); !errors.Is(err, storage.ErrFailed) {
		t.Fatalf("remote edit in a batch whose fsync failed: %+v, %v; want ErrFailed", res, err)
	}
	gfs.fail.Store(false)

	if res, err := s.ApplyRemote(ctx, remote); err == nil {
		t.Errorf("retry of the failed remote edit %s acknowledged (duplicate %v) though it was never durable; Applied %s",
			remote.Dot, res.Duplicate, s.Applied())
	} else if !errors.Is(err, storage.ErrFailed) {
		t.Errorf("retry of the failed remote edit: %v, want ErrFailed", err)
	}
	if _, err := s.Write(ctx, ent.Name, "r", "api", putFn(ent, str("later"))); !errors.Is(err, storage.ErrFailed) {
		t.Errorf("local edit after a failed fsync: %v, want ErrFailed", err)
	}
	if got := s.Applied(); !got.Equal(crdt.VV{{Node: "n1", Seq: 1}}) {
		t.Errorf("Applied() = %s after the failure, want {n1:1}", got)
	}

	closed := make(chan error, 1)
	go func() {
		defer func() {
			if r := recover(); r != nil {
				closed <- fmt.Errorf("Close panicked: %v", r)
			}
		}()
		s.Close() // an error is fine: the store failed
		closed <- nil
	}()
	select {
	case err := <-closed:
		if err != nil {
			t.Fatal(err)
		}
	case <-time.After(20 * time.Second):
		t.Fatal("Close of a failed store hung")
	}
}
