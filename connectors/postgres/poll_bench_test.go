package postgres_test

import (
	"fmt"
	"os"
	"os/exec"
	"path/filepath"
	"sort"
	"strconv"
	"strings"
	"testing"
	"time"

	"github.com/lattice-sync/lattice/cluster/clustertest"
	"github.com/lattice-sync/lattice/connectors/postgres/pgtest"
)

// BenchmarkPollPropagation measures commit-in-source to commit-in-target
// latency through a three-node cluster for three source connectors side by
// side in one run: poll mode with a 100 ms interval, poll mode with the
// default interval (1 s), and logical mode. Each source database (1,000
// rows, its own entity) syncs with its own target database, where a
// trigger records when each update lands. The systems take turns under the
// same pgbench load (single-row UPDATEs of a random row at 1,000/s for
// 10 s, stamping sent_at and updated_at with clock_timestamp()),
// interleaved, LATTICE_BENCH_REPS times (default 2); the summary gives the
// medians.
//
//	go test ./connectors/postgres/ -run '^$' -bench PollPropagation -benchtime 1x -timeout 30m
func BenchmarkPollPropagation(b *testing.B) {
	benchPropagation(b, []benchSystem{
		{"poll 100ms", "contact_p100", "poll", "{interval: 100ms}", "crm_p100", "billing_p100"},
		{"poll 1s", "contact_p1s", "poll", "{}", "crm_p1s", "billing_p1s"},
		{"logical", "contact_logical", "logical", "", "crm_logical", "billing_logical"},
	})
}

// BenchmarkTriggerPropagation is BenchmarkPollPropagation for trigger mode
// beside logical mode (one source server with wal_level=logical, so both
// run on it; the trigger connector reads its change table only).
//
//	go test ./connectors/postgres/ -run '^$' -bench TriggerPropagation -benchtime 1x -timeout 30m
func BenchmarkTriggerPropagation(b *testing.B) {
	benchPropagation(b, []benchSystem{
		{"trigger", "contact_trigger", "trigger", "", "crm_trigger", "billing_trigger"},
		{"logical", "contact_logical", "logical", "", "crm_logical", "billing_logical"},
	})
}

// benchSystem is one source connector of a propagation benchmark.
type benchSystem struct {
	name, entity, mode, poll string
	src, dst                 string // databases
}

// benchPropagation runs the propagation benchmark described on
// BenchmarkPollPropagation for the given systems.
func benchPropagation(b *testing.B, systems []benchSystem) {
	src, dst := pgtest.Start(b), pgtest.Start(b)
	bin, err := pgtest.Bin()
	if err != nil {
		b.Fatal(err)
	}
	const rows = 1000
	type system = benchSystem
	cfg := "entities:\n"
	for _, s := range systems {
		cfg += fmt.Sprintf("  %s:\n    fields: {name: string, email: string, phone: string, sent_at: timestamp}\n", s.entity)
	}
	cfg += "connectors:\n"
	for _, s := range systems {
		src.CreateDB(b, s.src)
		src.Exec(b, s.src, `CREATE TABLE customers (customer_id int PRIMARY KEY, full_name text, email_address text, phone text, sent_at timestamptz,
			updated_at timestamptz NOT NULL DEFAULT clock_timestamp());
			CREATE INDEX customers_poll ON customers (updated_at, customer_id)`)
		src.Exec(b, s.src, fmt.Sprintf("INSERT INTO customers SELECT i, 'name '||i, 'c'||i||'@example.com', '0', now() FROM generate_series(1, %d) i", rows))
		dst.CreateDB(b, s.dst)
		dst.Exec(b, s.dst, `CREATE TABLE clients (client_ref int PRIMARY KEY, name text, email text, tel text, sent_at timestamptz);
			CREATE TABLE arrivals (sent_at timestamptz, arrived_at timestamptz);
			CREATE FUNCTION record_arrival() RETURNS trigger AS $$ BEGIN
				INSERT INTO public.arrivals VALUES (NEW.sent_at, pg_catalog.clock_timestamp()); RETURN NEW; END $$ LANGUAGE plpgsql;
			CREATE TRIGGER arrival AFTER UPDATE ON clients FOR EACH ROW WHEN (NEW.sent_at IS DISTINCT FROM OLD.sent_at) EXECUTE FUNCTION record_arrival()`)
		table := fmt.Sprintf("{entity: %s, key: [customer_id], columns: {full_name: name, email_address: email, phone: phone, sent_at: sent_at}}", s.entity)
		if s.mode == "poll" {
			table = fmt.Sprintf("{entity: %s, key: [customer_id], updated_at: updated_at, poll: %s, columns: {full_name: name, email_address: email, phone: phone, sent_at: sent_at}}", s.entity, s.poll)
		}
		cfg += fmt.Sprintf(`  %[1]s:
    kind: postgres
    mode: %[2]s
    dsn: %[3]s
    tables:
      customers: %[4]s
  %[5]s:
    kind: postgres
    dsn: %[6]s
    tables:
      clients: {entity: %[7]s, key: [client_ref], columns: {name: name, email: email, tel: phone, sent_at: sent_at}}
`, s.src, s.mode, strconv.Quote(src.DSN(s.src)), table, s.dst, strconv.Quote(dst.DSN(s.dst)), s.entity)
	}
	c := clustertest.Start(b, latticeBin, 3, clustertest.Options{Config: cfg})
	count := func(db string) int {
		n, _ := strconv.Atoi(query(b, dst, db, "SELECT count(*) FROM clients")[0])
		return n
	}
	deadline := time.Now().Add(90 * time.Second)
	for _, s := range systems {
		for count(s.dst) < rows {
			if time.Now().After(deadline) {
				b.Fatalf("initial sync of %s did not finish in 90 s (%d rows)", s.name, count(s.dst))
			}
			time.Sleep(100 * time.Millisecond)
		}
	}
	script := filepath.Join(b.TempDir(), "update.sql")
	if err := os.WriteFile(script, []byte(fmt.Sprintf("\\set id random(1, %d)\nUPDATE customers SET phone = :id, sent_at = clock_timestamp(), updated_at = clock_timestamp() WHERE customer_id = :id;\n", rows)), 0o644); err != nil {
		b.Fatal(err)
	}
	os.Chmod(filepath.Dir(script), 0o755)
	os.Chmod(script, 0o644)
	srcSum := "SELECT md5(string_agg(customer_id||':'||phone||':'||extract(epoch FROM sent_at), ',' ORDER BY customer_id)) FROM customers"
	dstSum := "SELECT md5(string_agg(client_ref||':'||tel||':'||extract(epoch FROM sent_at), ',' ORDER BY client_ref)) FROM clients"
	caughtUp := func(s system, limit time.Duration) (time.Duration, bool) {
		start := time.Now()
		want := query(b, src, s.src, srcSum)[0]
		for time.Since(start) < limit {
			if query(b, dst, s.dst, dstSum)[0] == want {
				return time.Since(start), true
			}
			time.Sleep(20 * time.Millisecond)
		}
		return time.Since(start), false
	}
	type result struct{ n, p50, p99, max float64 }
	run := func(s system, rate int, d time.Duration, tag string) result {
		dst.Exec(b, s.dst, "TRUNCATE arrivals")
		before := scrapeHist(b, c)
		args := []string{"-n", "-h", "127.0.0.1", "-p", strconv.Itoa(src.Port), "-U", "postgres", "-f", script,
			"-T", strconv.Itoa(int(d.Seconds())), "-c", "8", "-j", "2", "-R", strconv.Itoa(rate), s.src}
		out, err := exec.Command(filepath.Join(bin, "pgbench"), args...).CombinedOutput()
		if err != nil {
			logf(b, "pgbench on %s: %v: %s", s.src, err, lastLine(string(out)))
		}
		if took, ok := caughtUp(s, 60*time.Second); !ok {
			logf(b, "%s: target not caught up %v after the load", s.name, took)
			if dir := os.Getenv("LATTICE_BENCH_PROFILE"); dir != "" {
				for _, nd := range c.Nodes {
					os.WriteFile(filepath.Join(dir, nd.ID+"-"+strings.ReplaceAll(tag+" "+s.name, " ", "_")+".log"), []byte(nd.Logs()), 0o644)
				}
			}
		}
		r := query(b, dst, s.dst, `SELECT count(*),
			coalesce(round((percentile_cont(0.5) WITHIN GROUP (ORDER BY extract(epoch FROM arrived_at - sent_at)) * 1000)::numeric, 2)::float8, 0),
			coalesce(round((percentile_cont(0.99) WITHIN GROUP (ORDER BY extract(epoch FROM arrived_at - sent_at)) * 1000)::numeric, 2)::float8, 0),
			coalesce(round((max(extract(epoch FROM arrived_at - sent_at)) * 1000)::numeric, 2)::float8, 0) FROM arrivals`)
		f := strings.Fields(r[0])
		var res result
		for i, p := range []*float64{&res.n, &res.p50, &res.p99, &res.max} {
			*p, _ = strconv.ParseFloat(f[i], 64)
		}
		logf(b, "%s, %s: pgbench %s; arrivals %v, p50 %.2f ms, p99 %.2f ms, max %.2f ms", tag, s.name, lastLine(string(out)), res.n, res.p50, res.p99, res.max)
		logStages(b, before, scrapeHist(b, c))
		return res
	}
	reps := 2
	if v, err := strconv.Atoi(os.Getenv("LATTICE_BENCH_REPS")); err == nil && v > 0 {
		reps = v
	}
	const rate = 1000
	results := map[string][]result{}
	for rep := 1; rep <= reps; rep++ {
		for _, s := range systems {
			results[s.name] = append(results[s.name], run(s, rate, 10*time.Second, fmt.Sprintf("rep %d, %d updates/s", rep, rate)))
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
	for _, s := range systems {
		rs := results[s.name]
		logf(b, "SUMMARY %d updates/s, median of %d: %s p50 %.2f ms p99 %.2f ms (arrivals %.0f)", rate, reps, s.name,
			median(rs, func(r result) float64 { return r.p50 }), median(rs, func(r result) float64 { return r.p99 }),
			median(rs, func(r result) float64 { return r.n }))
	}
}
