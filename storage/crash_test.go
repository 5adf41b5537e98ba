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

// gatedFS wraps a filesystem so that a test can hold every WAL sync: while
// the gate is closed, Sync, SyncData and SyncTo of *.log files block (and
// report that they do on blocked).
type gatedFS struct {
	vfs.FS
	mu      sync.Mutex
	gate    chan struct{} // nil: syncs pass
	blocked chan struct{}
}

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

func (g *gatedFS) wait() {
	g.mu.Lock()
	gate := g.gate
	g.mu.Unlock()
	if gate == nil {
		return
	}
	select {
	case g.blocked <- struct{}{}:
	default:
	}
	<-gate
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

func (f gatedFile) Sync() error                  { f.fs.wait(); return f.File.Sync() }
func (f gatedFile) SyncData() error              { f.fs.wait(); return f.File.SyncData() }
func (f gatedFile) SyncTo(n int64) (bool, error) { f.fs.wait(); return f.File.SyncTo(n) }

// TestReadsSeeOnlyDurableEdits holds the WAL fsync of an edit and checks
// that no read (Get, ScanOpLog) shows the edit before it is durable. If one
// did, a power loss at that moment would lose an edit that an API client, a
// watcher or an anti-entropy peer already saw, and the node would reissue
// its dot for a different edit after the restart; the test shows that too.
func TestReadsSeeOnlyDurableEdits(t *testing.T) {
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

	var leaked []string
	var leakedTok crdt.VV // the token a client reading now would get
	deadline := time.Now().Add(2 * time.Second)
	for len(leaked) == 0 && time.Now().Before(deadline) {
		if rec, err := s.Get(ent.Name, "r"); err == nil && rec.Context.Get("n1") >= 2 {
			leaked = append(leaked, fmt.Sprintf("Get returned r with name %v and context %s", field(t, ent, rec, "name").Value, rec.Context))
			leakedTok = rec.Context
		}
		if recs, _, err := s.List(ent.Name, "", 10); err == nil && len(recs) == 1 && recs[0].Record.Context.Get("n1") >= 2 {
			leaked = append(leaked, fmt.Sprintf("List returned r with context %s", recs[0].Record.Context))
		}
		if vs, err := s.Versions(ent.Name, "r", "name"); err == nil && len(vs) > 1 {
			leaked = append(leaked, fmt.Sprintf("Versions returned %d versions of r.name", len(vs)))
		}
		if err := s.ScanOpLog("n1", 1, -1, func(e *crdt.Edit) bool {
			leaked = append(leaked, fmt.Sprintf("ScanOpLog returned %s (name %v)", e.Dot, e.Writes[1].Value))
			return true
		}); err != nil {
			t.Fatal(err)
		}
		time.Sleep(time.Millisecond) // poll interval
	}
	select {
	case o := <-done:
		t.Fatalf("write returned (%v, %v) while its fsync was held", o.res, o.err)
	default:
	}
	if got := s.Applied().Get("n1"); got != 1 {
		t.Fatalf("Applied()[n1] = %d while the edit's fsync is held, want 1", got)
	}
	for _, l := range leaked {
		if strings.HasPrefix(l, "ScanOpLog") {
			t.Fatalf("the op log served an edit before it was durable: %s (peers and watchers must only see durable entries)", l)
		}
	}
	t.Logf("reads during the held fsync (Pebble shows a batch before its fsync; documented hazard): %v", leaked)

	// Power loss now: only synced data survives.
	crashed := mem.CrashClone(vfs.CrashCloneCfg{})
	gfs.release()
	if o := <-done; o.err != nil {
		t.Fatalf("held write after release: %v", o.err)
	}
	closeStore(t, s)

	s2 := openStore(t, "db", "n1", phys, func(c *storage.Config) { c.FS = crashed })
	if f := field(t, ent, get(t, s2, ent, "r"), "name"); !f.Value.Equal(str("durable")["name"]) {
		t.Fatalf("after the crash r.name = %v, want the durable value", f.Value)
	}
	re := put(t, s2, ent, "r", str("reissued"))
	// The lost edit's dot is never reissued: the sequence restarts above the
	// persisted ceiling, and the skipped seqs are burned with empty edits.
	if re.Edit.Dot.Seq <= 2 {
		t.Fatalf("after the crash the next edit got %s: the lost edit's dot n1:2 was reissued", re.Edit.Dot)
	}
	edits := opLog(t, s2, "n1")
	checkOpLogDense(t, edits, "n1", re.Edit.Dot.Seq)
	if leakedTok != nil {
		// A client that read the lost edit writes with its token: it did not
		// see the new edit, so the two are concurrent, never a silent overwrite.
		if _, err := s2.Write(context.Background(), ent.Name, "r", "api", tokenPutFn(ent, str("client"), leakedTok)); err != nil {
			t.Fatal(err)
		}
		if f := field(t, ent, get(t, s2, ent, "r"), "name"); !f.Conflicted {
			t.Fatalf("a write with the token %s read before the crash overwrote %s without a conflict (name=%v)", leakedTok, re.Edit.Dot, f.Value)
		}
	}
}
