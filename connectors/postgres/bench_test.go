package postgres_test

import (
	"context"
	"fmt"
	"io"
	"math"
	"net/http"
	"os"
	"os/exec"
	"path/filepath"
	"sort"
	"strconv"
	"strings"
	"sync"
	"testing"
	"time"

	pb "github.com/lattice-sync/lattice/api/lattice/v1"
	"github.com/lattice-sync/lattice/cluster/clustertest"
	"github.com/lattice-sync/lattice/connectors/postgres/pgtest"
)

// BenchmarkPropagationVsNative measures commit-in-source to commit-in-target
// latency for lattice (crm -> three-node cluster -> billing) and, in the same
// run, PostgreSQL's own logical replication between the same two instances
// (crm_native -> billing_native). The two systems take turns under the same
// pgbench load (single-row UPDATEs of a random row of 1,000 at a fixed
// rate), interleaved, LATTICE_BENCH_REPS times (default 2); a trigger in
// each target records when each update lands. Then, for each system: the
// highest rate pgbench sustains (no -R) and the lag under it, and the rate a
// backlog of 20,000 updates drains at once capture (lattice: the crm
// connector paused; native: the subscription disabled) resumes.
//
//	go test ./connectors/postgres/ -run '^$' -bench PropagationVsNative -benchtime 1x -timeout 30m
func BenchmarkPropagationVsNative(b *testing.B) {
	src, dst := pgtest.Start(b), pgtest.Start(b)
	bin, err := pgtest.Bin()
	if err != nil {
		b.Fatal(err)
	}
	const rows = 1000
	table := `(customer_id int PRIMARY KEY, full_name text, email_address text, phone text, sent_at timestamptz)`
	arrivals := `CREATE TABLE arrivals (sent_at timestamptz, arrived_at timestamptz);
		CREATE FUNCTION record_arrival() RETURNS trigger AS $$ BEGIN
			INSERT INTO public.arrivals VALUES (NEW.sent_at, pg_catalog.clock_timestamp()); RETURN NEW; END $$ LANGUAGE plpgsql;`
	for _, db := range []string{"crm", "crm_native"} {
		src.CreateDB(b, db)
		src.Exec(b, db, "CREATE TABLE customers "+table)
		src.Exec(b, db, fmt.Sprintf("INSERT INTO customers SELECT i, 'name '||i, 'c'||i||'@example.com', '0', now() FROM generate_series(1, %d) i", rows))
	}
	dst.CreateDB(b, "billing")
	dst.Exec(b, "billing", `CREATE TABLE clients (client_ref int PRIMARY KEY, name text, email text, tel text, sent_at timestamptz)`)
	dst.Exec(b, "billing", arrivals)
	dst.Exec(b, "billing", `CREATE TRIGGER arrival AFTER UPDATE ON clients FOR EACH ROW WHEN (NEW.sent_at IS DISTINCT FROM OLD.sent_at) EXECUTE FUNCTION record_arrival()`)
	dst.CreateDB(b, "billing_native")
	dst.Exec(b, "billing_native", "CREATE TABLE customers "+table)
	dst.Exec(b, "billing_native", arrivals)
	dst.Exec(b, "billing_native", `CREATE TRIGGER arrival AFTER UPDATE ON customers FOR EACH ROW WHEN (NEW.sent_at IS DISTINCT FROM OLD.sent_at) EXECUTE FUNCTION record_arrival();
		ALTER TABLE customers ENABLE ALWAYS TRIGGER arrival`)
	// Native logical replication.
	src.Exec(b, "crm_native", "CREATE PUBLICATION native_pub FOR TABLE customers")
	dst.Exec(b, "billing_native", fmt.Sprintf("CREATE SUBSCRIPTION native_sub CONNECTION 'host=127.0.0.1 port=%d user=postgres dbname=crm_native' PUBLICATION native_pub", src.Port))
	// lattice.
	cfg := `entities:
  contact:
    fields: {name: string, email: string, phone: string, sent_at: timestamp}
connectors:
  crm:
    kind: postgres
    dsn: ` + strconv.Quote(src.DSN("crm")) + `
    tables:
      customers: {entity: contact, key: [customer_id], columns: {full_name: name, email_address: email, phone: phone, sent_at: sent_at}}
  billing:
    kind: postgres
    dsn: ` + strconv.Quote(dst.DSN("billing")) + `
    tables:
      clients: {entity: contact, key: [client_ref], columns: {name: name, email: email, tel: phone, sent_at: sent_at}}
`
	c := clustertest.Start(b, latticeBin, 3, clustertest.Options{Config: cfg})
	count := func(s *pgtest.Server, db, q string) int {
		r := query(b, s, db, q)
		n, _ := strconv.Atoi(r[0])
		return n
	}
	deadline := time.Now().Add(60 * time.Second)
	for count(dst, "billing", "SELECT count(*) FROM clients") < rows || count(dst, "billing_native", "SELECT count(*) FROM customers") < rows {
		if time.Now().After(deadline) {
			b.Fatal("initial sync did not finish in 60 s")
		}
		time.Sleep(100 * time.Millisecond)
	}
	if st, err := c.Nodes[0].Cluster().Status(context.Background(), &pb.StatusRequest{}); err == nil {
		for _, p := range st.GetConnectors() {
			logf(b, "connector %s runs on %s", p.GetName(), p.GetNode())
		}
	}
	script := filepath.Join(b.TempDir(), "update.sql")
	if err := os.WriteFile(script, []byte(fmt.Sprintf("\\set id random(1, %d)\nUPDATE customers SET phone = :id, sent_at = clock_timestamp() WHERE customer_id = :id;\n", rows)), 0o644); err != nil {
		b.Fatal(err)
	}
	os.Chmod(filepath.Dir(script), 0o755)
	os.Chmod(script, 0o644)

	type system struct {
		name, srcDB, dstDB string
		// sums are the source's and the target's (key, phone, sent_at) checksums.
		srcSum, dstSum string
	}
	systems := []system{
		{"lattice", "crm", "billing", "SELECT md5(string_agg(customer_id||':'||phone||':'||extract(epoch FROM sent_at), ',' ORDER BY customer_id)) FROM customers",
			"SELECT md5(string_agg(client_ref||':'||tel||':'||extract(epoch FROM sent_at), ',' ORDER BY client_ref)) FROM clients"},
		{"native", "crm_native", "billing_native", "SELECT md5(string_agg(customer_id||':'||phone||':'||extract(epoch FROM sent_at), ',' ORDER BY customer_id)) FROM customers",
			"SELECT md5(string_agg(customer_id||':'||phone||':'||extract(epoch FROM sent_at), ',' ORDER BY customer_id)) FROM customers"},
	}
	pgbench := func(db string, args ...string) string {
		all := append([]string{"-n", "-h", "127.0.0.1", "-p", strconv.Itoa(src.Port), "-U", "postgres", "-f", script}, args...)
		out, err := exec.Command(filepath.Join(bin, "pgbench"), append(all, db)...).CombinedOutput()
		if err != nil {
			logf(b, "pgbench on %s: %v: %s", db, err, lastLine(string(out)))
		}
		return lastLine(string(out))
	}
	// caughtUp waits until the target holds the source's rows.
	caughtUp := func(sys system, limit time.Duration) (time.Duration, bool) {
		start := time.Now()
		want := query(b, src, sys.srcDB, sys.srcSum)[0]
		for time.Since(start) < limit {
			if query(b, dst, sys.dstDB, sys.dstSum)[0] == want {
				return time.Since(start), true
			}
			time.Sleep(20 * time.Millisecond)
		}
		return time.Since(start), false
	}
	type result struct{ n, p50, p99, max float64 }
	measure := func(sys system, from string) result {
		r := query(b, dst, sys.dstDB, `SELECT count(*),
			coalesce(round((percentile_cont(0.5) WITHIN GROUP (ORDER BY extract(epoch FROM arrived_at - sent_at)) * 1000)::numeric, 2)::float8, 0),
			coalesce(round((percentile_cont(0.99) WITHIN GROUP (ORDER BY extract(epoch FROM arrived_at - sent_at)) * 1000)::numeric, 2)::float8, 0),
			coalesce(round((max(extract(epoch FROM arrived_at - sent_at)) * 1000)::numeric, 2)::float8, 0) FROM arrivals WHERE sent_at >= `+from)
		f := strings.Fields(r[0])
		var out result
		for i, p := range []*float64{&out.n, &out.p50, &out.p99, &out.max} {
			*p, _ = strconv.ParseFloat(f[i], 64)
		}
		return out
	}
	// run offers one rate (0: as fast as pgbench goes) to one system for d.
	run := func(sys system, rate int, d time.Duration, tag, file string) result {
		dst.Exec(b, sys.dstDB, "TRUNCATE arrivals")
		args := []string{"-T", strconv.Itoa(int(d.Seconds())), "-c", "8", "-j", "2"}
		if rate > 0 {
			args = append(args, "-R", strconv.Itoa(rate))
		}
		var profiles chan struct{}
		var before map[string]hist
		if sys.name == "lattice" {
			profiles = profileNodes(b, c, file)
			before = scrapeHist(b, c)
		}
		tps := pgbench(sys.srcDB, args...)
		if took, ok := caughtUp(sys, 30*time.Second); !ok {
			logf(b, "%s: target not caught up %v after the load", sys.name, took)
			if sys.name == "lattice" {
				benchDiff(b, src, dst, c)
			}
		}
		if profiles != nil {
			<-profiles
			logStages(b, before, scrapeHist(b, c))
		}
		res := measure(sys, "'-infinity'")
		logf(b, "%s, %s: pgbench %s; arrivals %v, p50 %.2f ms, p99 %.2f ms, max %.2f ms", tag, sys.name, tps, res.n, res.p50, res.p99, res.max)
		return res
	}

	reps := 2
	if os.Getenv("LATTICE_BENCH_ONLY") == "drain" {
		reps = 0
	}
	if v, err := strconv.Atoi(os.Getenv("LATTICE_BENCH_REPS")); err == nil && v > 0 && reps > 0 {
		reps = v
	}
	results := map[string][]result{}
	for rep := 1; rep <= reps; rep++ {
		for _, rate := range []int{1000, 4000} {
			for _, sys := range systems {
				tag := fmt.Sprintf("rep %d, %d updates/s", rep, rate)
				results[fmt.Sprintf("%d %s", rate, sys.name)] = append(results[fmt.Sprintf("%d %s", rate, sys.name)], run(sys, rate, 10*time.Second, tag, fmt.Sprintf("r%d-%d", rep, rate)))
			}
		}
	}
	median := func(rs []result, f func(result) float64) float64 {
		v := make([]float64, len(rs))
		for i, r := range rs {
			v[i] = f(r)
		}
		sort.Float64s(v)
		if len(v)%2 == 1 {
			return v[len(v)/2]
		}
		return (v[len(v)/2-1] + v[len(v)/2]) / 2
	}
	for _, rate := range []int{1000, 4000} {
		if reps == 0 {
			break
		}
		l, n := results[fmt.Sprintf("%d lattice", rate)], results[fmt.Sprintf("%d native", rate)]
		lp50, lp99 := median(l, func(r result) float64 { return r.p50 }), median(l, func(r result) float64 { return r.p99 })
		np50, np99 := median(n, func(r result) float64 { return r.p50 }), median(n, func(r result) float64 { return r.p99 })
		logf(b, "SUMMARY %d updates/s offered, median of %d: lattice p50 %.2f ms p99 %.2f ms; native p50 %.2f ms p99 %.2f ms; ratio p50 %.1fx p99 %.1fx",
			rate, reps, lp50, lp99, np50, np99, lp50/np50, lp99/np99)
	}

	// Highest sustained rate: pgbench as fast as it goes for 15 s; the lag
	// of the last 5 s shows whether it keeps up.
	for _, sys := range systems {
		if reps == 0 {
			break
		}
		dst.Exec(b, sys.dstDB, "TRUNCATE arrivals")
		start := time.Now()
		tps := pgbench(sys.srcDB, "-T", "15", "-c", "16", "-j", "2")
		took, ok := caughtUp(sys, 60*time.Second)
		if !ok && sys.name == "lattice" {
			benchDiff(b, src, dst, c)
		}
		all := measure(sys, "'-infinity'")
		last := measure(sys, "'"+start.Add(10*time.Second).UTC().Format(time.RFC3339Nano)+"'")
		logf(b, "SUMMARY highest rate, %s: pgbench %s; arrivals %v, p50 %.2f ms, p99 %.2f ms; last 5 s p50 %.2f ms, p99 %.2f ms; caught up %v after the load (%v)",
			sys.name, tps, all.n, all.p50, all.p99, last.p50, last.p99, took.Round(time.Millisecond), ok)
	}

	// Backlog drain: 20,000 updates while capture is stopped, then the time
	// from resuming until the target holds the source's rows.
	const burst = 20000
	ctx := context.Background()
	for _, sys := range systems {
		switch sys.name {
		case "lattice":
			if _, err := c.Nodes[0].Cluster().PauseConnector(ctx, &pb.ConnectorRequest{Connector: "crm"}); err != nil {
				b.Fatal(err)
			}
		case "native":
			dst.Exec(b, "billing_native", "ALTER SUBSCRIPTION native_sub DISABLE")
		}
		time.Sleep(2 * time.Second) // the capture side stops
		tps := pgbench(sys.srcDB, "-t", strconv.Itoa(burst/8), "-c", "8", "-j", "2")
		var profiles chan struct{}
		if sys.name == "lattice" {
			profiles = profileNodes(b, c, "drain")
		}
		start := time.Now()
		switch sys.name {
		case "lattice":
			if _, err := c.Nodes[0].Cluster().ResumeConnector(ctx, &pb.ConnectorRequest{Connector: "crm"}); err != nil {
				b.Fatal(err)
			}
		case "native":
			dst.Exec(b, "billing_native", "ALTER SUBSCRIPTION native_sub ENABLE")
		}
		took, ok := caughtUp(sys, 120*time.Second)
		took = time.Since(start)
		if profiles != nil {
			<-profiles
		}
		logf(b, "SUMMARY backlog drain, %s: %d updates (pgbench %s) drained in %v: %.0f updates/s (caught up: %v)",
			sys.name, burst, tps, took.Round(time.Millisecond), burst/took.Seconds(), ok)
	}
}

func lastLine(s string) string {
	lines := strings.Split(strings.TrimSpace(s), "\n")
	for i := len(lines) - 1; i >= 0; i-- {
		if strings.HasPrefix(lines[i], "tps") || strings.Contains(lines[i], "error") {
			return lines[i]
		}
	}
	return lines[len(lines)-1]
}

// profileNodes takes an 8 s CPU profile of every node into
// $LATTICE_BENCH_PROFILE/<node>-<tag>.pprof when that variable is set.
func profileNodes(b *testing.B, c *clustertest.Cluster, tag string) chan struct{} {
	done := make(chan struct{})
	dir := os.Getenv("LATTICE_BENCH_PROFILE")
	if dir == "" {
		close(done)
		return done
	}
	go func() {
		defer close(done)
		var wg sync.WaitGroup
		for _, nd := range c.Nodes {
			wg.Add(1)
			go func() {
				defer wg.Done()
				resp, err := http.Get("http://" + nd.HTTP + "/debug/pprof/profile?seconds=8")
				if err != nil {
					logf(b, "profile %s: %v", nd.ID, err)
					return
				}
				defer resp.Body.Close()
				f, err := os.Create(filepath.Join(dir, nd.ID+"-"+tag+".pprof"))
				if err != nil {
					return
				}
				defer f.Close()
				io.Copy(f, resp.Body)
			}()
		}
		wg.Wait()
	}()
	return done
}

// hist is a cumulative Prometheus histogram: upper bound -> count.
type hist map[float64]float64

// scrapeHist reads the connector lag histograms of every node, summed
// over nodes, keyed by "<metric>{connector}".
func scrapeHist(b *testing.B, c *clustertest.Cluster) map[string]hist {
	out := map[string]hist{}
	for _, nd := range c.Nodes {
		resp, err := http.Get("http://" + nd.HTTP + "/metrics")
		if err != nil {
			logf(b, "scrape %s: %v", nd.ID, err)
			continue
		}
		body, _ := io.ReadAll(resp.Body)
		resp.Body.Close()
		for _, line := range strings.Split(string(body), "\n") {
			if !strings.HasPrefix(line, "lattice_connector_") || !strings.Contains(line, "_bucket{") {
				continue
			}
			name := line[:strings.Index(line, "_bucket{")]
			conn := between(line, `connector="`, `"`)
			le := between(line, `le="`, `"`)
			f := strings.Fields(line)
			v, _ := strconv.ParseFloat(f[len(f)-1], 64)
			bound := math.Inf(1)
			if le != "+Inf" {
				bound, _ = strconv.ParseFloat(le, 64)
			}
			k := name + "{" + conn + "}"
			if out[k] == nil {
				out[k] = hist{}
			}
			out[k][bound] += v
		}
	}
	return out
}

func between(s, from, to string) string {
	i := strings.Index(s, from)
	if i < 0 {
		return ""
	}
	s = s[i+len(from):]
	if j := strings.Index(s, to); j >= 0 {
		return s[:j]
	}
	return s
}

// logStages logs, per connector, the p50 and p99 upper bucket bounds of
// the capture and projection lag observed between two scrapes.
func logStages(b *testing.B, before, after map[string]hist) {
	keys := make([]string, 0, len(after))
	for k := range after {
		keys = append(keys, k)
	}
	sort.Strings(keys)
	for _, k := range keys {
		var bounds []float64
		for bound := range after[k] {
			bounds = append(bounds, bound)
		}
		sort.Float64s(bounds)
		total := after[k][math.Inf(1)] - before[k][math.Inf(1)]
		if total <= 0 {
			continue
		}
		q := func(p float64) float64 {
			for _, bound := range bounds {
				if after[k][bound]-before[k][bound] >= p*total {
					return bound
				}
			}
			return math.Inf(1)
		}
		logf(b, "stage %s: %v observations, p50 <= %v ms, p99 <= %v ms", k, total, q(0.5)*1000, q(0.99)*1000)
	}
}

// logf prints a benchmark result line to stdout (benchmark logs are
// truncated after a few lines) and to the benchmark's log.
func logf(b *testing.B, format string, args ...any) {
	fmt.Printf(format+"\n", args...)
}

// benchDiff logs the first rows where crm and billing differ, with the
// record as the cluster holds it, and saves the nodes' logs.
func benchDiff(b *testing.B, src, dst *pgtest.Server, c *clustertest.Cluster) {
	ra := query(b, src, "crm", "SELECT customer_id, phone, extract(epoch FROM sent_at) FROM customers ORDER BY 1")
	rb := query(b, dst, "billing", "SELECT client_ref, tel, extract(epoch FROM sent_at) FROM clients ORDER BY 1")
	n := 0
	for i := range ra {
		if i < len(rb) && ra[i] != rb[i] && n < 5 {
			id := strings.Fields(ra[i])[0]
			ctx, cancel := context.WithTimeout(context.Background(), 5*time.Second)
			rec, err := c.Nodes[0].Records().Get(ctx, &pb.GetRequest{Entity: "contact", Id: id})
			cancel()
			logf(b, "differs: crm %s | billing %s | cluster %v %v", ra[i], rb[i], rec, err)
			n++
		}
	}
	if dir := os.Getenv("LATTICE_BENCH_PROFILE"); dir != "" {
		for _, nd := range c.Nodes {
			os.WriteFile(filepath.Join(dir, nd.ID+".log"), []byte(nd.Logs()), 0o644)
		}
	}
}
