package postgres_test

import (
	"testing"

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
	pgbenchConvergence(t, convergeCase{
		mode:   "trigger",
		crmDDL: `CREATE TABLE customers (customer_id int PRIMARY KEY, full_name text, email_address text, phone text)`,
		crmScript: `\set id random(1, %[1]d)
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
`,
		via: "the change table",
		after: func(t *testing.T, crm *pgtest.Server) {
			eventually(t, "change table emptied", func() (bool, string) {
				n := row(t, crm, "crm", "SELECT count(*) FROM lattice.changes_crm")
				return n == "0", n + " rows"
			})
		},
	})
}
