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

// TestPollConvergenceUnderPgbench is TestConvergenceUnderPgbench with crm
// in poll mode on a server without logical decoding (wal_level=replica):
// pgbench updates both databases at once (crm's updates stamp updated_at =
// clock_timestamp()), on different and on the same columns of the same
// rows, and billing inserts rows of its own. Once the load stops, both
// tables hold exactly the cluster's resolved state and every node holds
// identical state and history.
func TestPollConvergenceUnderPgbench(t *testing.T) {
	if testing.Short() {
		t.Skip("starts a cluster, two databases and pgbench")
	}
	pgbenchConvergence(t, convergeCase{
		mode: "poll",
		crmDDL: `CREATE TABLE customers (customer_id int PRIMARY KEY, full_name text, email_address text, phone text,
		updated_at timestamptz NOT NULL DEFAULT clock_timestamp());
		CREATE INDEX customers_poll ON customers (updated_at, customer_id)`,
		crmTable: `        updated_at: updated_at
        poll: {interval: 100ms, keyset_every: 10}
`,
		crmScript: `\set id random(1, %[1]d)
\set hot random(1, 5)
\set f random(1, 2)
\if :f = 1
UPDATE customers SET full_name = 'crm-' || :client_id || '-' || :id || '-' || random(), updated_at = clock_timestamp() WHERE customer_id = :id;
\else
UPDATE customers SET phone = 'crm-' || :client_id || '-' || random(), updated_at = clock_timestamp() WHERE customer_id = :hot;
\endif
`,
		via: "the polled table",
	})
}

// convergeCase is one capture mode's run of pgbenchConvergence: crm's
// table (DDL and the mapping lines besides entity, key and columns), its
// pgbench script (%[1]d: the rows), what an echo would come through, and
// checks to run at the end.
type convergeCase struct {
	mode, crmDDL, crmTable, crmScript, via string
	after                                  func(t *testing.T, crm *pgtest.Server)
}

// pgbenchConvergence runs a convergence test under pgbench with crm in
// k.mode (on wal_level=replica) and billing in logical mode.
func pgbenchConvergence(t *testing.T, k convergeCase) {
	bin, err := pgtest.Bin()
	if err != nil {
		t.Fatal(err)
	}
	crm, billing := pgtest.Start(t, pgtest.WithConf("wal_level", "replica")), pgtest.Start(t)
	crm.CreateDB(t, "crm")
	billing.CreateDB(t, "billing")
	const rows = 200
	crm.Exec(t, "crm", k.crmDDL)
	crm.Exec(t, "crm", fmt.Sprintf(`INSERT INTO customers SELECT i, 'name '||i, 'c'||i||'@example.com', '0' FROM generate_series(1, %d) i`, rows))
	billing.Exec(t, "billing", `CREATE TABLE clients (client_ref int PRIMARY KEY, name text, email text, tel text)`)
	cfg := schemaYAML + fmt.Sprintf(`connectors:
  crm:
    kind: postgres
    dsn: %q
    mode: %s
    tables:
      customers:
        entity: contact
        key: [customer_id]
        columns: {full_name: name, email_address: email, phone: phone}
%s  billing:
    kind: postgres
    dsn: %q
    tables:
      clients:
        entity: contact
        key: [client_ref]
        columns: {name: name, email: email, tel: phone}
`, crm.DSN("crm"), k.mode, k.crmTable, billing.DSN("billing"))
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
	crmScript := script("crm.sql", fmt.Sprintf(k.crmScript, rows))
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

	// Quiet: no edits appear once nothing changes (no echo).
	// An echo never goes 2 s without a new edit.
	eventually(t, "no new edits for 2 s (no echo through "+k.via+")", func() (bool, string) {
		before := clusterEdits(t, c.Nodes[0])
		time.Sleep(2 * time.Second)
		after := clusterEdits(t, c.Nodes[0])
		return after == before, fmt.Sprintf("edits keep appearing after the load stopped: %s -> %s", before, after)
	})
	if k.after != nil {
		k.after(t, crm)
	}
}

// clusterEdits is the edits a node has applied (its lattice_store_edits_total).
func clusterEdits(t *testing.T, nd *clustertest.Node) string {
	t.Helper()
	return fmt.Sprint(metric(t, nd, "lattice_store_edits_total"))
}
