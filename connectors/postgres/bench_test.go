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
// run under the same load, PostgreSQL's own logical replication between the
// same two instances (crm_native -> billing_native). pgbench drives both
// sources at once; a trigger in each target records when each update lands.
//
//	go test ./connectors/postgres/ -run '^$' -bench PropagationVsNative -benchtime 1x
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
	for _, rate := range []int{1000, 4000} {
		for _, db := range []string{"billing", "billing_native"} {
			dst.Exec(b, db, "TRUNCATE arrivals")
		}
		// Both sources under the same offered load at the same time.
		run := func(db string) *exec.Cmd {
			return exec.Command(filepath.Join(bin, "pgbench"), "-n", "-h", "127.0.0.1", "-p", strconv.Itoa(src.Port), "-U", "postgres",
				"-f", script, "-R", strconv.Itoa(rate), "-T", "10", "-c", "8", "-j", "2", db)
		}
		a, n := run("crm"), run("crm_native")
		var aout, nout strings.Builder
		a.Stdout, a.Stderr, n.Stdout, n.Stderr = &aout, &aout, &nout, &nout
		if err := a.Start(); err != nil {
			b.Fatal(err)
		}
		profiles := profileNodes(b, c, fmt.Sprintf("%d", rate))
		before := scrapeHist(b, c)
		if err := n.Start(); err != nil {
			b.Fatal(err)
		}
		if err := a.Wait(); err != nil {
			logf(b, "pgbench on crm: %v", err)
		}
		if err := n.Wait(); err != nil {
			logf(b, "pgbench on crm_native: %v", err)
		}
		logf(b, "pgbench crm: %s", lastLine(aout.String()))
		logf(b, "pgbench crm_native: %s", lastLine(nout.String()))
		<-profiles
		time.Sleep(5 * time.Second) // drain
		logStages(b, before, scrapeHist(b, c))
		for _, db := range []string{"billing", "billing_native"} {
			r := query(b, dst, db, `SELECT count(*),
				round((percentile_cont(0.5) WITHIN GROUP (ORDER BY extract(epoch FROM arrived_at - sent_at)) * 1000)::numeric, 2)::float8,
				round((percentile_cont(0.99) WITHIN GROUP (ORDER BY extract(epoch FROM arrived_at - sent_at)) * 1000)::numeric, 2)::float8,
				round((max(extract(epoch FROM arrived_at - sent_at)) * 1000)::numeric, 2)::float8 FROM arrivals`)
			name := "lattice"
			if db == "billing_native" {
				name = "native"
			}
			logf(b, "%d updates/s offered for 10 s, %s: arrivals, p50 ms, p99 ms, max ms = %s", rate, name, r[0])
		}
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
