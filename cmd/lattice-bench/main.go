// Command lattice-bench measures the figures in BENCHMARKS.md that need a
// running node: Put over gRPC with concurrent clients, and how Put and Get
// latency grow with the number of records and fields.
//
//	go run ./cmd/lattice-bench -mode grpc   -clients 64 -duration 20s
//	go run ./cmd/lattice-bench -mode growth -records 100000,10000000
//	go run ./cmd/lattice-bench -mode fields -records 20000
package main

import (
	"context"
	"flag"
	"fmt"
	"io"
	"log/slog"
	"math/rand/v2"
	"net"
	"os"
	"os/signal"
	"runtime"
	"runtime/pprof"
	"sort"
	"strconv"
	"strings"
	"sync"
	"sync/atomic"
	"time"

	"google.golang.org/grpc"
	"google.golang.org/grpc/credentials/insecure"

	pb "github.com/lattice-sync/lattice/api/lattice/v1"
	"github.com/lattice-sync/lattice/api/server"
	"github.com/lattice-sync/lattice/crdt"
	"github.com/lattice-sync/lattice/storage"
)

func main() {
	ctx, stop := signal.NotifyContext(context.Background(), os.Interrupt)
	err := run(ctx, os.Args[1:], os.Stdout)
	stop()
	if err != nil {
		fmt.Fprintln(os.Stderr, "lattice-bench:", err)
		os.Exit(1)
	}
}

func run(ctx context.Context, args []string, out io.Writer) error {
	fs := flag.NewFlagSet("lattice-bench", flag.ContinueOnError)
	mode := fs.String("mode", "grpc", "grpc, growth, fields or meta")
	clients := fs.Int("clients", 64, "concurrent gRPC clients (grpc mode)")
	conns := fs.Int("conns", 8, "gRPC connections shared by the clients (grpc mode)")
	duration := fs.Duration("duration", 20*time.Second, "measurement time (grpc mode)")
	rate := fs.Int("rate", 0, "grpc mode: total edits/s spread over the clients (open loop, latency from each edit's scheduled time); 0: as fast as possible")
	records := fs.String("records", "100000", "comma-separated record counts (growth, fields)")
	samples := fs.Int("samples", 5000, "latency samples per measurement (growth, fields)")
	dir := fs.String("dir", "", "data directory (default: a temp dir, removed after)")
	cpuprofile := fs.String("cpuprofile", "", "write a CPU profile here")
	if err := fs.Parse(args); err != nil {
		return err
	}
	if *cpuprofile != "" {
		f, err := os.Create(*cpuprofile)
		if err != nil {
			return err
		}
		defer f.Close()
		if err := pprof.StartCPUProfile(f); err != nil {
			return err
		}
		defer pprof.StopCPUProfile()
	}
	base := *dir
	if base == "" {
		d, err := os.MkdirTemp("", "lattice-bench-")
		if err != nil {
			return err
		}
		defer os.RemoveAll(d)
		base = d
	}
	fmt.Fprintf(out, "# lattice-bench -mode %s on %d CPUs, %s\n", *mode, runtime.NumCPU(), runtime.Version())
	switch *mode {
	case "grpc":
		return benchGRPC(ctx, out, base, *clients, *conns, *duration, *rate)
	case "growth":
		counts, err := parseCounts(*records)
		if err != nil {
			return err
		}
		for _, n := range counts {
			if err := benchGrowth(ctx, out, fmt.Sprintf("%s/growth-%d", base, n), n, 10, *samples); err != nil {
				return err
			}
		}
		return nil
	case "fields":
		counts, err := parseCounts(*records)
		if err != nil {
			return err
		}
		for _, f := range []int{10, 200} {
			if err := benchGrowth(ctx, out, fmt.Sprintf("%s/fields-%d", base, f), counts[0], f, *samples); err != nil {
				return err
			}
		}
		return nil
	case "meta":
		return metadata(out)
	}
	return fmt.Errorf("unknown -mode %q", *mode)
}

func parseCounts(s string) ([]int, error) {
	var out []int
	for _, p := range strings.Split(s, ",") {
		n, err := strconv.Atoi(strings.TrimSpace(p))
		if err != nil || n <= 0 {
			return nil, fmt.Errorf("bad -records %q", s)
		}
		out = append(out, n)
	}
	return out, nil
}

func entity(fields int) *crdt.Entity {
	e := &crdt.Entity{Name: "bench"}
	for i := 0; i < fields; i++ {
		e.Fields = append(e.Fields, crdt.FieldSpec{Name: fmt.Sprintf("f%03d", i), Type: crdt.TypeString})
	}
	return e
}

// batchStats counts synced batches, to report the group-commit factor.
type batchStats struct {
	batches, edits atomic.Int64
	commitNanos    atomic.Int64
}

func (b *batchStats) Committed(edits, _ int, took time.Duration) {
	b.batches.Add(1)
	b.edits.Add(int64(edits))
	b.commitNanos.Add(int64(took))
}

func (b *batchStats) String() string {
	n := b.batches.Load()
	if n == 0 {
		return "no batches"
	}
	return fmt.Sprintf("%.1f edits per fsync, %s per batch", float64(b.edits.Load())/float64(n), time.Duration(b.commitNanos.Load()/n).Round(time.Microsecond))
}

var stats batchStats

func openStore(dir string) (*storage.Store, error) {
	cfg := storage.DefaultConfig(dir, "n1")
	cfg.Logger = slog.New(slog.NewTextHandler(io.Discard, nil))
	cfg.Metrics = &stats
	return storage.Open(cfg)
}

// benchGRPC runs one node in-process and drives Put from many clients.
func benchGRPC(ctx context.Context, out io.Writer, dir string, clients, conns int, d time.Duration, rate int) error {
	st, err := openStore(dir)
	if err != nil {
		return err
	}
	defer st.Close()
	schema := &crdt.Schema{Entities: []crdt.Entity{*entity(4)}}
	rs, err := server.New(server.Config{Store: st, Schema: schema, Logger: slog.New(slog.NewTextHandler(io.Discard, nil))})
	if err != nil {
		return err
	}
	lis, err := net.Listen("tcp", "127.0.0.1:0")
	if err != nil {
		return err
	}
	gs := grpc.NewServer(server.ServerOptions()...)
	rs.Register(gs)
	go gs.Serve(lis)
	defer gs.Stop()

	cc := make([]pb.RecordsClient, conns)
	for i := range cc {
		c, err := grpc.NewClient(lis.Addr().String(), grpc.WithTransportCredentials(insecure.NewCredentials()))
		if err != nil {
			return err
		}
		defer c.Close()
		cc[i] = pb.NewRecordsClient(c)
	}
	run := func(d time.Duration, record bool) ([]time.Duration, int64) {
		var mu sync.Mutex
		var lat []time.Duration
		var n atomic.Int64
		deadline := time.Now().Add(d)
		var wg sync.WaitGroup
		for i := 0; i < clients; i++ {
			wg.Add(1)
			go func(i int) {
				defer wg.Done()
				c := cc[i%len(cc)]
				r := rand.New(rand.NewPCG(uint64(i), 7))
				var mine []time.Duration
				var interval time.Duration
				next := time.Now()
				if rate > 0 {
					interval = time.Duration(float64(time.Second) * float64(clients) / float64(rate))
					next = next.Add(time.Duration(r.Int64N(int64(interval))))
				}
				for time.Now().Before(deadline) && ctx.Err() == nil {
					id := "r" + strconv.Itoa(r.IntN(100000))
					start := time.Now()
					if rate > 0 {
						// Open loop: latency counts from the scheduled send time,
						// so a stalled server cannot hide its queue (no coordinated omission).
						if w := time.Until(next); w > 0 {
							time.Sleep(w)
						}
						start = next
						next = next.Add(interval)
					}
					_, err := c.Put(ctx, &pb.PutRequest{Entity: "bench", Id: id, Fields: map[string]*pb.Value{
						"f001": {Kind: &pb.Value_StringValue{StringValue: strconv.Itoa(r.IntN(1 << 30))}}}})
					if err != nil {
						continue
					}
					mine = append(mine, time.Since(start))
					n.Add(1)
				}
				if record {
					mu.Lock()
					lat = append(lat, mine...)
					mu.Unlock()
				}
			}(i)
		}
		wg.Wait()
		return lat, n.Load()
	}
	run(2*time.Second, false) // warm up
	start := time.Now()
	lat, n := run(d, true)
	el := time.Since(start)
	p := percentiles(lat)
	load := "closed loop (as fast as possible)"
	if rate > 0 {
		load = fmt.Sprintf("open loop at %d edits/s", rate)
	}
	fmt.Fprintf(out, "| Put over gRPC, %d clients on %d connections, 1 field, %s | %.0f edits/s | p50 %s | p99 %s | max %s | %d edits in %s | %s |\n",
		clients, conns, load, float64(n)/el.Seconds(), p[50], p[99], p[100], n, el.Round(time.Millisecond), &stats)
	return nil
}

// benchGrowth loads n records of f fields, then measures single-field Put and Get latency.
func benchGrowth(ctx context.Context, out io.Writer, dir string, n, f, samples int) error {
	st, err := openStore(dir)
	if err != nil {
		return err
	}
	defer st.Close()
	ent := entity(f)
	value := strings.Repeat("x", 24)
	fields := map[string]crdt.Value{}
	for _, fs := range ent.Fields {
		fields[fs.Name] = crdt.String(value)
	}
	put := func(id string, fv map[string]crdt.Value) error {
		_, err := st.Write(ctx, ent.Name, id, "bench", func(rec *crdt.Record, env storage.Env) ([]crdt.Write, error) {
			return ent.PreparePut(rec, fv, crdt.EditContext{Applied: env.Applied})
		})
		return err
	}
	// Load with many writers so the committer fills large batches.
	start := time.Now()
	var next atomic.Int64
	var wg sync.WaitGroup
	var loadErr atomic.Value
	lastReport := time.Now()
	var reportMu sync.Mutex
	for w := 0; w < 256; w++ {
		wg.Add(1)
		go func() {
			defer wg.Done()
			for ctx.Err() == nil {
				i := next.Add(1) - 1
				if i >= int64(n) {
					return
				}
				if err := put(fmt.Sprintf("r%09d", i), fields); err != nil {
					loadErr.Store(err)
					return
				}
				if i%100000 == 0 {
					reportMu.Lock()
					if time.Since(lastReport) > 10*time.Second {
						fmt.Fprintf(os.Stderr, "  loaded %d/%d records (%.0f/s)\n", i, n, float64(i)/time.Since(start).Seconds())
						lastReport = time.Now()
					}
					reportMu.Unlock()
				}
			}
		}()
	}
	wg.Wait()
	if e, ok := loadErr.Load().(error); ok {
		return e
	}
	load := time.Since(start)
	r := rand.New(rand.NewPCG(1, 2))
	// Put: one writer, one field of a random existing record.
	var putLat, getLat []time.Duration
	for i := 0; i < samples; i++ {
		id := fmt.Sprintf("r%09d", r.IntN(n))
		t := time.Now()
		if err := put(id, map[string]crdt.Value{ent.Fields[r.IntN(f)].Name: crdt.String(strconv.Itoa(i))}); err != nil {
			return err
		}
		putLat = append(putLat, time.Since(t))
	}
	for i := 0; i < samples; i++ {
		id := fmt.Sprintf("r%09d", r.IntN(n))
		t := time.Now()
		rec, err := st.Get(ent.Name, id)
		if err != nil {
			return err
		}
		ent.View(rec)
		getLat = append(getLat, time.Since(t))
	}
	pp, gp := percentiles(putLat), percentiles(getLat)
	fmt.Fprintf(out, "| %d records × %d fields | load %.0f records/s | Put p50 %s p99 %s | Get p50 %s p99 %s | store %d MiB |\n",
		n, f, float64(n)/load.Seconds(), pp[50], pp[99], gp[50], gp[99], st.DiskUsage()>>20)
	return nil
}

// metadata reports CRDT metadata bytes per field (history aside).
func metadata(out io.Writer) error {
	ent := entity(10)
	rec := &crdt.Record{}
	fields := map[string]crdt.Value{}
	valueBytes := 0
	for _, f := range ent.Fields {
		fields[f.Name] = crdt.String("value-of-24-bytes-xxxxxx")
		valueBytes += len(crdt.AppendValue(nil, fields[f.Name]))
	}
	for i, node := range []string{"n1", "n2", "n3"} {
		ws, err := ent.PreparePut(rec, fields, crdt.EditContext{})
		if err != nil {
			return err
		}
		rec.Apply(&crdt.Edit{Entity: ent.Name, ID: "r1", Dot: crdt.Dot{Node: node, Seq: uint64(1000 + i)}, TS: crdt.TimestampFromTime(time.Now()), Origin: "postgres:crm", Writes: ws})
		rec.TakeDominated(func(string, crdt.Version) {})
	}
	b := crdt.AppendRecord(nil, rec)
	regs := len(rec.Registers)
	fmt.Fprintf(out, "| record of 10 string fields, last written by node n3 after n1 and n2 | %d bytes encoded | %d bytes of values | %.1f bytes of CRDT metadata per register (%d registers incl. _deleted) |\n",
		len(b), valueBytes, float64(len(b)-valueBytes)/float64(regs), regs)
	return nil
}

func percentiles(d []time.Duration) map[int]time.Duration {
	out := map[int]time.Duration{}
	if len(d) == 0 {
		return out
	}
	sort.Slice(d, func(i, j int) bool { return d[i] < d[j] })
	for _, p := range []int{50, 90, 99, 100} {
		i := len(d) * p / 100
		if i >= len(d) {
			i = len(d) - 1
		}
		out[p] = d[i].Round(time.Microsecond)
	}
	return out
}
