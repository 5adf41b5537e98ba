package postgres_test

import (
	"fmt"
	"io"
	"net/http"
	"os"
	"os/exec"
	"path/filepath"
	"strconv"
	"strings"
	"sync"
	"testing"
	"time"

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
		if err := n.Start(); err != nil {
			b.Fatal(err)
		}
		if err := a.Wait(); err != nil {
			b.Logf("pgbench on crm: %v", err)
		}
		if err := n.Wait(); err != nil {
			b.Logf("pgbench on crm_native: %v", err)
		}
		b.Logf("pgbench crm: %s", lastLine(aout.String()))
		b.Logf("pgbench crm_native: %s", lastLine(nout.String()))
		<-profiles
		time.Sleep(5 * time.Second) // drain
		for _, db := range []string{"billing", "billing_native"} {
			r := query(b, dst, db, `SELECT count(*),
				round((percentile_cont(0.5) WITHIN GROUP (ORDER BY extract(epoch FROM arrived_at - sent_at)) * 1000)::numeric, 2)::float8,
				round((percentile_cont(0.99) WITHIN GROUP (ORDER BY extract(epoch FROM arrived_at - sent_at)) * 1000)::numeric, 2)::float8,
				round((max(extract(epoch FROM arrived_at - sent_at)) * 1000)::numeric, 2)::float8 FROM arrivals`)
			name := "lattice"
			if db == "billing_native" {
				name = "native"
			}
			b.Logf("%d updates/s offered for 10 s, %s: arrivals, p50 ms, p99 ms, max ms = %s", rate, name, r[0])
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
					b.Logf("profile %s: %v", nd.ID, err)
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
