package postgres_test

import (
	"context"
	"encoding/json"
	"fmt"
	"os"
	"os/exec"
	"path/filepath"
	"strings"
	"sync"
	"testing"
)

// TestBootstrapPrefilled connects two databases that already hold data:
// rows only one side has, rows both hold alike, and rows that differ (each
// dated by an updated_at column). `lattice connectors plan` predicts what
// will happen without writing anything; then the connectors start and
// both tables end identical, the newer row of each conflict winning, with
// every conflict in history.
func TestBootstrapPrefilled(t *testing.T) {
	e := setup(t)
	e.crm.Exec(t, "crm", `ALTER TABLE customers ADD COLUMN updated_at timestamptz`)
	e.billing.Exec(t, "billing", `ALTER TABLE clients ADD COLUMN changed timestamptz`)
	// 1-10 only in crm; 11-20 alike; 21-30 differ in email (21-25 newer in
	// billing, 26-30 newer in crm); 31-40 only in billing.
	e.crm.Exec(t, "crm", `INSERT INTO customers SELECT i, 'n'||i, 'c'||i||'@crm', '1', '2026-01-01' FROM generate_series(1, 20) i`)
	e.crm.Exec(t, "crm", `INSERT INTO customers SELECT i, 'n'||i, 'c'||i||'@crm', '1',
		CASE WHEN i <= 25 THEN timestamptz '2026-01-01' ELSE timestamptz '2026-03-01' END FROM generate_series(21, 30) i`)
	e.billing.Exec(t, "billing", `INSERT INTO clients SELECT i, 'n'||i, 'c'||i||'@crm', '1', '2026-01-01' FROM generate_series(11, 20) i`)
	e.billing.Exec(t, "billing", `INSERT INTO clients SELECT i, 'n'||i, 'c'||i||'@billing', '1', '2026-02-01' FROM generate_series(21, 30) i`)
	e.billing.Exec(t, "billing", `INSERT INTO clients SELECT i, 'n'||i, 'c'||i||'@billing', '1', '2026-02-01' FROM generate_series(31, 40) i`)

	crmDecl := map[string]any{"kind": "postgres", "dsn": e.crm.DSN("crm"), "tables": map[string]any{"customers": map[string]any{
		"entity": "contact", "key": []any{"customer_id"}, "updated_at": "updated_at",
		"columns": map[string]any{"full_name": "name", "email_address": "email", "phone": "phone"}}}}
	billDecl := map[string]any{"kind": "postgres", "dsn": e.billing.DSN("billing"), "tables": map[string]any{"clients": map[string]any{
		"entity": "contact", "key": []any{"client_ref"}, "updated_at": "changed",
		"columns": map[string]any{"name": "name", "email": "email", "tel": "phone"}}}}

	// The dry run.
	cfgFile := filepath.Join(t.TempDir(), "sync.yaml")
	yaml := schemaYAML + fmt.Sprintf(`connectors:
  crm:
    kind: postgres
    dsn: %q
    tables:
      customers: {entity: contact, key: [customer_id], updated_at: updated_at, columns: {full_name: name, email_address: email, phone: phone}}
  billing:
    kind: postgres
    dsn: %q
    tables:
      clients: {entity: contact, key: [client_ref], updated_at: changed, columns: {name: name, email: email, tel: phone}}
`, e.crm.DSN("crm"), e.billing.DSN("billing"))
	if err := os.WriteFile(cfgFile, []byte(yaml), 0o644); err != nil {
		t.Fatal(err)
	}
	out, err := exec.Command(latticeBin, "connectors", "plan", "--config", cfgFile, "-o", "json").CombinedOutput()
	if err != nil {
		t.Fatalf("plan: %v\n%s", err, out)
	}
	var plans []map[string]any
	if err := json.Unmarshal(out, &plans); err != nil {
		t.Fatalf("plan output: %v\n%s", err, out)
	}
	want := map[string]map[string]float64{
		"crm":     {"rows": 30, "create": 10, "update": 5, "unchanged": 25, "conflicts": 10, "undetermined": 0, "refused": 0},
		"billing": {"rows": 30, "create": 10, "update": 5, "unchanged": 25, "conflicts": 10, "undetermined": 0, "refused": 0},
	}
	for _, p := range plans {
		w := want[p["connector"].(string)]
		for k, v := range w {
			if p[k] != v {
				t.Errorf("plan for %s: %s = %v, want %v (%v)", p["connector"], k, p[k], v, p)
			}
		}
	}
	if got := row(t, e.crm, "crm", `SELECT count(*) FROM customers`); got != "30" {
		t.Fatalf("the dry run wrote into crm: %s rows", got)
	}
	if e.store.Applied().Get("n1") != 0 {
		t.Fatalf("the dry run wrote into lattice")
	}
	table, _ := exec.Command(latticeBin, "connectors", "plan", "--config", cfgFile).CombinedOutput()
	t.Logf("plan:\n%s", table)

	// Connect them.
	var wg sync.WaitGroup
	ctx, cancel := context.WithCancel(context.Background())
	defer func() { cancel(); wg.Wait() }()
	for name, decl := range map[string]map[string]any{"crm": crmDecl, "billing": billDecl} {
		c := e.connector(t, name, decl)
		wg.Add(1)
		go func() { defer wg.Done(); c.Run(ctx) }()
	}
	crmRows := func() string {
		return strings.Join(query(t, e.crm, "crm", `SELECT customer_id, full_name, email_address, phone FROM customers ORDER BY 1`), ",")
	}
	billRows := func() string {
		return strings.Join(query(t, e.billing, "billing", `SELECT client_ref, name, email, tel FROM clients ORDER BY 1`), ",")
	}
	eventually(t, "both tables identical with 40 rows", func() (bool, string) {
		a, b := crmRows(), billRows()
		return a == b && strings.Count(a, ",") == 39, fmt.Sprintf("crm %d rows, billing %d rows", strings.Count(a, ",")+1, strings.Count(b, ",")+1)
	})
	for id := 21; id <= 30; id++ {
		wantEmail := fmt.Sprintf("c%d@billing", id)
		if id > 25 {
			wantEmail = fmt.Sprintf("c%d@crm", id)
		}
		if got := row(t, e.crm, "crm", fmt.Sprintf(`SELECT email_address FROM customers WHERE customer_id = %d`, id)); got != wantEmail {
			t.Errorf("row %d: email %q, want the newer row's %q", id, got, wantEmail)
		}
		vs, err := e.store.Versions("contact", fmt.Sprint(id), "email")
		if err != nil {
			t.Fatal(err)
		}
		if len(vs) < 2 {
			t.Errorf("row %d: %d versions of email in history, want both sides' (the conflict)", id, len(vs))
		}
	}
	// Rows both held alike are not conflicts: one version each.
	vs, _ := e.store.Versions("contact", "15", "email")
	if len(vs) != 1 {
		t.Errorf("row 15 (alike on both sides) has %d versions of email, want 1", len(vs))
	}
}
