package cluster_test

import (
	"context"
	"fmt"
	"os"
	"os/exec"
	"sort"
	"strconv"
	"strings"
	"sync"
	"testing"
	"time"

	pb "github.com/lattice-sync/lattice/api/lattice/v1"
	"github.com/lattice-sync/lattice/cluster/clustertest"
)

// Cluster benchmarks run real node processes; `make bench` runs each once
// (-benchtime 1x) and they report their figures with b.ReportMetric and
// b.Logf. They are not part of `make test`.

// BenchmarkPropagation: an edit made on n1, visible on all three nodes
// (applied and streamed by Watch on n2 and n3), at fixed offered rates.
func BenchmarkPropagation(b *testing.B) {
	for _, rate := range []int{1000, 5000} {
		b.Run(fmt.Sprintf("rate=%d", rate), func(b *testing.B) {
			c := clustertest.Start(b, bin, 3, clustertest.Options{})
			lat, sent, seen := propagation(b, c, rate, 10*time.Second)
			sort.Slice(lat, func(i, j int) bool { return lat[i] < lat[j] })
			if len(lat) == 0 {
				b.Fatal("no edit became visible")
			}
			p := func(q float64) time.Duration { return lat[int(float64(len(lat)-1)*q)] }
			b.ReportMetric(float64(p(0.5).Microseconds())/1000, "p50-ms")
			b.ReportMetric(float64(p(0.99).Microseconds())/1000, "p99-ms")
			b.Logf("offered %d edits/s for 10 s: %d sent, %d visible on all 3 nodes; visible-on-all p50 %s p99 %s max %s",
				rate, sent, seen, p(0.5).Round(10*time.Microsecond), p(0.99).Round(10*time.Microsecond), p(1).Round(10*time.Microsecond))
		})
	}
}

func propagation(b *testing.B, c *clustertest.Cluster, rate int, d time.Duration) ([]time.Duration, int, int) {
	ctx, cancel := context.WithCancel(context.Background())
	defer cancel()
	var mu sync.Mutex
	sentAt := map[string]time.Time{}
	seenOn := map[string]int{}
	var lat []time.Duration
	ready := make(chan struct{}, 2)
	var wg sync.WaitGroup
	for _, nd := range c.Nodes[1:] {
		s, err := nd.Records().Watch(ctx, &pb.WatchRequest{Entity: "contact"})
		if err != nil {
			b.Fatal(err)
		}
		wg.Add(1)
		go func() {
			defer wg.Done()
			ready <- struct{}{}
			for {
				ev, err := s.Recv()
				if err != nil {
					return
				}
				now := time.Now()
				id := ev.GetRecord().GetId()
				mu.Lock()
				seenOn[id]++
				if seenOn[id] == 2 {
					if t, ok := sentAt[id]; ok {
						lat = append(lat, now.Sub(t))
					}
				}
				mu.Unlock()
			}
		}()
	}
	<-ready
	<-ready
	time.Sleep(200 * time.Millisecond) // let the watches subscribe
	// Open loop: 32 schedules; each edit is sent at its scheduled time
	// whatever the replies to earlier ones are doing.
	const senders = 32
	interval := time.Duration(float64(time.Second) * senders / float64(rate))
	deadline := time.Now().Add(d)
	var sendWG sync.WaitGroup
	var sent int
	for w := 0; w < senders; w++ {
		sendWG.Add(1)
		go func(w int) {
			defer sendWG.Done()
			next := time.Now().Add(time.Duration(w) * interval / senders)
			for i := 0; next.Before(deadline); i++ {
				time.Sleep(time.Until(next))
				id := fmt.Sprintf("p%d-%d", w, i)
				mu.Lock()
				sentAt[id] = next // from the scheduled time: no coordinated omission
				sent++
				mu.Unlock()
				// Each edit on its own goroutine: a slow reply must not
				// delay the next send, or the load stops being offered (32
				// senders each waiting 6.4 ms for a reply cap it at 5,000/s).
				sendWG.Add(1)
				go func() {
					defer sendWG.Done()
					_, _ = c.Nodes[0].Records().Put(ctx, &pb.PutRequest{Entity: "contact", Id: id, Fields: map[string]*pb.Value{"name": str("x")}})
				}()
				next = next.Add(interval)
			}
		}(w)
	}
	sendWG.Wait()
	time.Sleep(2 * time.Second) // stragglers
	cancel()
	wg.Wait()
	mu.Lock()
	defer mu.Unlock()
	seen := 0
	for _, n := range seenOn {
		if n >= 2 {
			seen++
		}
	}
	return lat, sent, seen
}

// BenchmarkPartitionConvergence: a 30 s partition during which both sides
// write 10,000 divergent records, then the time from heal to identical state.
func BenchmarkPartitionConvergence(b *testing.B) {
	if !clustertest.InNetNS() {
		b.Skip("needs root, unshare and iptables")
	}
	c := clustertest.Start(b, bin, 3, clustertest.Options{})
	n1, n2, n3 := c.Nodes[0], c.Nodes[1], c.Nodes[2]
	c.Partition([]*clustertest.Node{n1}, []*clustertest.Node{n2, n3})
	start := time.Now()
	loadRange(b, n1, "left", 5000)
	loadRange(b, n2, "right", 5000)
	time.Sleep(time.Until(start.Add(30 * time.Second)))
	healAt := time.Now()
	c.Heal()
	members := waitFor(b, "membership back", 10*time.Second, func() (bool, string) {
		ctx, cancel := context.WithTimeout(context.Background(), time.Second)
		defer cancel()
		r, err := n1.Cluster().Members(ctx, &pb.MembersRequest{})
		if err != nil {
			return false, err.Error()
		}
		alive := 0
		for _, m := range r.GetMembers() {
			if m.GetState() == "alive" {
				alive++
			}
		}
		return alive == 3, fmt.Sprint(alive)
	})
	c.WaitConverged(60 * time.Second)
	took := time.Since(healAt)
	b.ReportMetric(took.Seconds(), "converge-s")
	b.ReportMetric(members.Seconds(), "membership-s")
	b.Logf("10,000 divergent records after a 30 s partition: membership back %s after heal, identical state on all nodes %s after heal",
		members.Round(10*time.Millisecond), took.Round(10*time.Millisecond))
}

func loadRange(tb testing.TB, nd *clustertest.Node, prefix string, n int) {
	var wg sync.WaitGroup
	for w := 0; w < 16; w++ {
		wg.Add(1)
		go func(w int) {
			defer wg.Done()
			for i := w; i < n; i += 16 {
				if _, err := put(tb, nd, fmt.Sprintf("%s%05d", prefix, i), map[string]string{"name": prefix}, ""); err != nil {
					tb.Error(err)
					return
				}
			}
		}(w)
	}
	wg.Wait()
}

// BenchmarkRaftOffEditPath compares a Raft commit (a configuration apply)
// with an edit: edits never touch Raft.
func BenchmarkRaftOffEditPath(b *testing.B) {
	c := clustertest.Start(b, bin, 3, clustertest.Options{})
	n1 := c.Nodes[0]
	cfg, err := os.ReadFile("../cmd/lattice/quickstart.yaml")
	if err != nil {
		b.Fatal(err)
	}
	measure := func(f func() error) time.Duration {
		var d []time.Duration
		for i := 0; i < 200; i++ {
			t := time.Now()
			if err := f(); err != nil {
				b.Fatal(err)
			}
			d = append(d, time.Since(t))
		}
		sort.Slice(d, func(i, j int) bool { return d[i] < d[j] })
		return d[len(d)/2]
	}
	i := 0
	put := measure(func() error {
		i++
		_, err := n1.Records().Put(context.Background(), &pb.PutRequest{Entity: "contact", Id: "r" + strconv.Itoa(i), Fields: map[string]*pb.Value{"name": str("x")}})
		return err
	})
	raftApply := measure(func() error {
		_, err := n1.Cluster().ApplyConfig(context.Background(), &pb.ApplyConfigRequest{Yaml: string(cfg), Filename: "quickstart.yaml"})
		return err
	})
	b.ReportMetric(float64(put.Microseconds())/1000, "put-p50-ms")
	b.ReportMetric(float64(raftApply.Microseconds())/1000, "raft-p50-ms")
	b.Logf("sequential, 200 each on n1: Put p50 %s (no Raft on the path); a Raft commit (config apply) p50 %s",
		put.Round(10*time.Microsecond), raftApply.Round(10*time.Microsecond))
}

// BenchmarkSnapshotToNewNode: a fourth node joins a cluster holding
// LATTICE_BENCH_RECORDS records (default 1,000,000) whose op log is truncated.
func BenchmarkSnapshotToNewNode(b *testing.B) {
	n := 1000000
	if v := os.Getenv("LATTICE_BENCH_RECORDS"); v != "" {
		n, _ = strconv.Atoi(v)
	}
	c := clustertest.Start(b, bin, 3, clustertest.Options{Args: []string{"--truncate-interval", "500ms", "--truncate-keep", "10"}})
	loadStart := time.Now()
	load(b, c.Nodes[0], n)
	c.WaitConverged(10 * time.Minute)
	b.Logf("loaded %d records in %s", n, time.Since(loadStart).Round(time.Second))
	waitFor(b, "op log truncated", 30*time.Second, func() (bool, string) {
		st, err := c.Nodes[0].Digest()
		if err != nil {
			return false, err.Error()
		}
		return st.GetTruncated().GetEntries()["n1"] > 0, ""
	})
	start := time.Now()
	n4 := c.AddNode()
	c.WaitConverged(10 * time.Minute)
	took := time.Since(start)
	rss := peakRSS(n4)
	b.ReportMetric(float64(n)/took.Seconds(), "records/s")
	b.ReportMetric(float64(rss)/(1<<20), "peak-RSS-MiB")
	b.Logf("snapshot of %d records to a new node: identical state %s after start, %.0f records/s; new node's peak RSS %d MiB",
		n, took.Round(100*time.Millisecond), float64(n)/took.Seconds(), rss>>20)
}

// peakRSS reads VmHWM of a node process.
func peakRSS(nd *clustertest.Node) uint64 {
	out, err := exec.Command("sh", "-c", fmt.Sprintf("grep VmHWM /proc/%d/status", nd.Pid())).Output()
	if err != nil {
		return 0
	}
	f := strings.Fields(string(out))
	if len(f) < 2 {
		return 0
	}
	kb, _ := strconv.ParseUint(f[1], 10, 64)
	return kb << 10
}
