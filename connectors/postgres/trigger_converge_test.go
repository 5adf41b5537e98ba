package postgres_test

import (
	"fmt"
	"os"
	"os/exec"
	"path/filepath"
	"strconv"
	"sync"
	"testing"
	"time"

	"github.com/lattice-sync/lattice/cluster/clustertest"
	"github.com/lattice-sync/lattice/connectors/postgres/pgtest"
)

// TestTriggerConvergenceUnderPgbench is TestConvergenceUnderPgbench with
// crm in trigger mode on a server without logical decoding
// (wal_level=replica): pgbench updates both databases at once, on different
// and on the same columns of the same rows (crm also deletes and inserts
// rows), and billing inserts rows of its own. Once the load stops, both
// tables hold exactly the cluster's resolved state, every node holds
// identical state and history, nothing more happens (no echo through the
// change table), and the change table is empty.
func TestTriggerConvergenceUnderPgbench(t *testing.T) {
	if testing.Short() {
		t.Skip("starts a cluster, two databases and pgbench")
	}
	bin, err := pgtest.Bin()
	if err != nil {
		t.Fatal(err)
	}
	crm, billing := pgtest.Start(t, pgtest.WithConf("wal_level", "replica")), pgtest.Start(t)
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
    mode: trigger
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
	eventually(t, "crm's snapshot reaches billing", func() (bool, string) {
		a, n := crmSum()
		b, m := billSum()
		return a == b && n == rows, fmt.Sprintf("crm %d rows %s, billing %d rows %s", n, a, m, b)
	})

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
\set f random(1, 10)
\if :f <= 5
UPDATE customers SET full_name = 'crm-' || :client_id || '-' || :id || '-' || random() WHERE customer_id = :id;
\elif :f <= 9
UPDATE customers SET phone = 'crm-' || :client_id || '-' || random() WHERE customer_id = :hot;
\else
BEGIN;
DELETE FROM customers WHERE customer_id = 200000 + :id;
INSERT INTO customers VALUES (200000 + :id, 'crm-new-' || :id, NULL, 'c') ON CONFLICT (customer_id) DO UPDATE SET phone = 'c2';
COMMIT;
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
		return exec.Command(filepath.Join(bin, "pgbench"), "-n", "-h", "127.0.0.1", "-p", strconv.Itoa(s.Port), "-U", "postgres",
			"-f", file, "-R", "300", "-T", "8", "-c", "4", "-j", "2", db)
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

	deadline := time.Now().Add(60 * time.Second)
	for {
		a, n := crmSum()
		b, m := billSum()
		l, k := clusterSum(t, c.Nodes[0])
		if a == b && b == l && n == m && m == k {
			t.Logf("converged: %d rows, checksum %s", n, a)
			break
		}
		if time.Now().After(deadline) {
			t.Errorf("no convergence 60 s after the load stopped: crm %d rows %s, billing %d rows %s, cluster %d records %s", n, a, m, b, k, l)
			diffRows(t, crm, billing, c.Nodes[0])
			t.FailNow()
		}
		time.Sleep(250 * time.Millisecond)
	}
	c.WaitConverged(30 * time.Second)
	if _, n := crmSum(); n <= rows {
		t.Errorf("crm has %d rows: billing's inserts did not arrive", n)
	}
	detected := 0.0
	for _, nd := range c.Nodes {
		detected += metric(t, nd, "lattice_store_conflicts_total")
	}
	t.Logf("conflicts detected on the three nodes: %v", detected)

	// Quiet: no edits appear once nothing changes (no echo through the
	// change table), and the change table empties.
	before := clusterEdits(t, c.Nodes[0])
	time.Sleep(2 * time.Second)
	if after := clusterEdits(t, c.Nodes[0]); after != before {
		t.Errorf("edits keep appearing after the load stopped (echo through the change table): %s -> %s", before, after)
	}
	eventually(t, "change table emptied", func() (bool, string) {
		n := row(t, crm, "crm", "SELECT count(*) FROM lattice.changes_crm")
		return n == "0", n + " rows"
	})
}
