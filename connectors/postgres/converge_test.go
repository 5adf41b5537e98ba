package postgres_test

import (
	"context"
	"crypto/md5"
	"encoding/hex"
	"fmt"
	"io"
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

// TestConvergenceUnderPgbench: pgbench drives concurrent updates (and
// inserts) into both databases at once, on different and on the same
// columns of the same rows, while the three-node cluster syncs them. Once
// the load stops, both tables hold exactly the cluster's resolved state (a
// checksum of every row of each table equals one computed from the
// cluster's records), every node holds identical state and history, and
// the same-column collisions show as conflicts resolved by policy.
func TestConvergenceUnderPgbench(t *testing.T) {
	if testing.Short() {
		t.Skip("starts a cluster, two databases and pgbench")
	}
	bin, err := pgtest.Bin()
	if err != nil {
		t.Fatal(err)
	}
	crm, billing := pgtest.Start(t), pgtest.Start(t)
	crm.CreateDB(t, "crm")
	billing.CreateDB(t, "billing")
	const rows = 200
	crm.Exec(t, "crm", `CREATE TABLE customers (customer_id int PRIMARY KEY, full_name text, email_address text, phone text)`)
	crm.Exec(t, "crm", fmt.Sprintf(`INSERT INTO customers SELECT i, 'name '||i, 'c'||i||'@example.com', '0' FROM generate_series(1, %d) i`, rows))
	billing.Exec(t, "billing", `CREATE TABLE clients (client_ref int PRIMARY KEY, name text, email text, tel text)`)
	cfg := schemaYAML + fmt.Sprintf(`connectors:
  crm:
    kind: postgres
    dsn: %q
    tables:
      customers:
        entity: contact
        key: [customer_id]
        columns: {full_name: name, email_address: email, phone: phone}
  billing:
    kind: postgres
    dsn: %q
    tables:
      clients:
        entity: contact
        key: [client_ref]
        columns: {name: name, email: email, tel: phone}
`, crm.DSN("crm"), billing.DSN("billing"))
	c := clustertest.Start(t, latticeBin, 3, clustertest.Options{Config: cfg})

	crmSum := func() (string, int) {
		return tableSum(t, crm, "crm", "customers", "customer_id", "full_name", "email_address", "phone")
	}
	billSum := func() (string, int) {
		return tableSum(t, billing, "billing", "clients", "client_ref", "name", "email", "tel")
	}
	eventually(t, "initial snapshot reaches billing", func() (bool, string) {
		a, n := crmSum()
		b, m := billSum()
		return a == b && n == rows, fmt.Sprintf("crm %d rows %s, billing %d rows %s", n, a, m, b)
	})

	// crm edits names and phones; billing edits emails and phones (the
	// phones of five hot rows collide: same-field conflicts) and inserts rows
	// of its own.
	dir := t.TempDir()
	os.Chmod(dir, 0o755)
	script := func(name, body string) string {
		p := filepath.Join(dir, name)
		if err := os.WriteFile(p, []byte(body), 0o644); err != nil {
			t.Fatal(err)
		}
		return p
	}
	crmScript := script("crm.sql", fmt.Sprintf(`\set id random(1, %d)
\set hot random(1, 5)
\set f random(1, 2)
\if :f = 1
UPDATE customers SET full_name = 'crm-' || :client_id || '-' || :id || '-' || random() WHERE customer_id = :id;
\else
UPDATE customers SET phone = 'crm-' || :client_id || '-' || random() WHERE customer_id = :hot;
\endif
`, rows))
	billScript := script("billing.sql", fmt.Sprintf(`\set id random(1, %d)
\set hot random(1, 5)
\set f random(1, 5)
\if :f = 1
INSERT INTO clients VALUES (100000 + :client_id * 10000 + :id, 'new-' || :id, 'n' || :id || '@example.com', 'b') ON CONFLICT (client_ref) DO NOTHING;
\elif :f = 2
UPDATE clients SET tel = 'bill-' || :client_id || '-' || random() WHERE client_ref = :hot;
\else
UPDATE clients SET email = 'bill-' || :client_id || '-' || random() || '@example.com' WHERE client_ref = :id;
\endif
`, rows))
	pgbench := func(s *pgtest.Server, db, file string) *exec.Cmd {
		cmd := exec.Command(filepath.Join(bin, "pgbench"), "-n", "-h", "127.0.0.1", "-p", strconv.Itoa(s.Port), "-U", "postgres",
			"-f", file, "-R", "300", "-T", "8", "-c", "4", "-j", "2", db)
		return cmd
	}
	var wg sync.WaitGroup
	outs := make([]string, 2)
	for i, cmd := range []*exec.Cmd{pgbench(crm, "crm", crmScript), pgbench(billing, "billing", billScript)} {
		wg.Add(1)
		go func() {
			defer wg.Done()
			out, err := cmd.CombinedOutput()
			if err != nil {
				t.Errorf("pgbench: %v\n%s", err, out)
			}
			outs[i] = lastLine(string(out))
		}()
	}
	wg.Wait()
	t.Logf("pgbench crm: %s; billing: %s", outs[0], outs[1])

	// Everything converges: both tables equal the cluster's resolved state.
	deadline := time.Now().Add(60 * time.Second)
	var why string
	for {
		a, n := crmSum()
		b, m := billSum()
		l, k := clusterSum(t, c.Nodes[0])
		if a == b && b == l && n == m && m == k {
			t.Logf("converged: %d rows, checksum %s", n, a)
			break
		}
		why = fmt.Sprintf("crm %d rows %s, billing %d rows %s, cluster %d records %s", n, a, m, b, k, l)
		if time.Now().After(deadline) {
			t.Errorf("no convergence 60 s after the load stopped: %s", why)
			diffRows(t, crm, billing, c.Nodes[0])
			t.FailNow()
		}
		time.Sleep(250 * time.Millisecond)
	}
	c.WaitConverged(30 * time.Second)

	// Both sides inserted and updated: rows beyond the first 200 came from
	// billing, and phone collisions were resolved by policy with the loser
	// kept in history.
	if _, n := crmSum(); n <= rows {
		t.Errorf("crm has %d rows: billing's inserts did not arrive", n)
	}
	// Both sides hammer the phone of rows 1-5 (tens of edits a second per
	// row, each way), so edits made before the other side's arrived collide.
	// A conflict later edits saw past shows in history as superseded, so
	// count what the nodes detected when the edits met.
	detected := 0.0
	for _, nd := range c.Nodes {
		detected += metric(t, nd, "lattice_store_conflicts_total")
	}
	if detected == 0 {
		t.Errorf("no node detected a conflict: same-field collisions of rows 1-5 went unnoticed")
	}
	t.Logf("conflicts detected on the three nodes: %v; hot records with a version that still shows as lost: %d of 5",
		detected, conflictCount(t, c.Nodes[1], 5))
}

// tableSum is an MD5 over every row (key and mapped columns, NULL as \N) in
// key order, and the row count.
func tableSum(t *testing.T, s *pgtest.Server, db, table, key string, cols ...string) (string, int) {
	t.Helper()
	parts := []string{key + "::text"}
	for _, c := range cols {
		parts = append(parts, fmt.Sprintf(`coalesce(%s, '\N')`, c))
	}
	r := query(t, s, db, fmt.Sprintf(`SELECT count(*), coalesce(md5(string_agg(%s, E'\n' ORDER BY %s)), '') FROM %s`,
		strings.Join(parts, ` || '|' || `), key, table))
	f := strings.SplitN(r[0], " ", 2)
	n, _ := strconv.Atoi(f[0])
	sum := ""
	if len(f) > 1 {
		sum = f[1]
	}
	return sum, n
}

// clusterSum is tableSum computed from the cluster's resolved records (ids
// ordered as integers, like the tables' keys).
func clusterSum(t *testing.T, nd *clustertest.Node) (string, int) {
	t.Helper()
	ctx, cancel := context.WithTimeout(context.Background(), 10*time.Second)
	defer cancel()
	type rec struct {
		id   int
		line string
	}
	var recs []rec
	token := ""
	for {
		resp, err := nd.Records().List(ctx, &pb.ListRequest{Entity: "contact", PageSize: 1000, PageToken: token})
		if err != nil {
			t.Fatal(err)
		}
		for _, r := range resp.GetRecords() {
			if r.GetDeleted() {
				continue
			}
			vals := map[string]string{}
			for _, f := range r.GetFields() {
				if s, ok := f.GetValue().GetKind().(*pb.Value_StringValue); ok {
					vals[f.GetName()] = s.StringValue
				}
			}
			line := r.GetId()
			for _, f := range []string{"name", "email", "phone"} {
				v, ok := vals[f]
				if !ok {
					v = `\N`
				}
				line += "|" + v
			}
			id, _ := strconv.Atoi(r.GetId())
			recs = append(recs, rec{id, line})
		}
		if token = resp.GetNextPageToken(); token == "" {
			break
		}
	}
	if len(recs) == 0 {
		return "", 0
	}
	sort.Slice(recs, func(i, j int) bool { return recs[i].id < recs[j].id })
	lines := make([]string, len(recs))
	for i, r := range recs {
		lines[i] = r.line
	}
	h := md5.Sum([]byte(strings.Join(lines, "\n")))
	return hex.EncodeToString(h[:]), len(recs)
}

// conflictCount counts records 1..upto whose phone history holds a version
// that lost to a concurrent edit.
func conflictCount(t *testing.T, nd *clustertest.Node, upto int) int {
	t.Helper()
	ctx, cancel := context.WithTimeout(context.Background(), 30*time.Second)
	defer cancel()
	n := 0
	for id := 1; id <= upto; id++ {
		h, err := nd.Records().History(ctx, &pb.HistoryRequest{Entity: "contact", Id: strconv.Itoa(id), Field: "phone"})
		if err != nil {
			t.Fatal(err)
		}
		for _, e := range h.GetEntries() {
			if e.GetFate() == pb.Fate_FATE_LOST {
				n++
				break
			}
		}
	}
	return n
}

// metric reads a counter from a node's /metrics.
func metric(t *testing.T, nd *clustertest.Node, name string) float64 {
	t.Helper()
	resp, err := http.Get("http://" + nd.HTTP + "/metrics")
	if err != nil {
		t.Fatal(err)
	}
	defer resp.Body.Close()
	body, _ := io.ReadAll(resp.Body)
	for _, line := range strings.Split(string(body), "\n") {
		if f := strings.Fields(line); len(f) == 2 && f[0] == name {
			v, _ := strconv.ParseFloat(f[1], 64)
			return v
		}
	}
	t.Fatalf("%s has no metric %s", nd.ID, name)
	return 0
}

// diffRows logs the rows where crm, billing and the cluster disagree.
func diffRows(t *testing.T, crm, billing *pgtest.Server, nd *clustertest.Node) {
	t.Helper()
	a := map[string]string{}
	for _, r := range query(t, crm, "crm", `SELECT customer_id, coalesce(full_name, '\N'), coalesce(email_address, '\N'), coalesce(phone, '\N') FROM customers`) {
		f := strings.SplitN(r, " ", 2)
		a[f[0]] = f[1]
	}
	b := map[string]string{}
	for _, r := range query(t, billing, "billing", `SELECT client_ref, coalesce(name, '\N'), coalesce(email, '\N'), coalesce(tel, '\N') FROM clients`) {
		f := strings.SplitN(r, " ", 2)
		b[f[0]] = f[1]
	}
	for id, v := range a {
		if b[id] != v {
			ctx, cancel := context.WithTimeout(context.Background(), 5*time.Second)
			rec, err := nd.Records().Get(ctx, &pb.GetRequest{Entity: "contact", Id: id})
			cancel()
			t.Logf("row %s: crm %q, billing %q, cluster %v (%v)", id, v, b[id], rec, err)
		}
	}
}
