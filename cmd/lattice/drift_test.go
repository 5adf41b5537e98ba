package main

import (
	"context"
	"fmt"
	"net/http"
	"regexp"
	"strings"
	"testing"
	"time"

	"github.com/jackc/pgx/v5"

	"github.com/lattice-sync/lattice/cluster/clustertest"
	"github.com/lattice-sync/lattice/connectors/postgres/pgtest"
)

// TestSchemaDriftPauseThroughRaft: in a three-node cluster, dropping a
// column crm's connector maps pauses the connector through Raft; every
// node's `connectors status` and `connectors list` say why and what to do,
// and nothing captured after the drop reaches billing. Once the column is
// restored, `connectors resume crm` lets it pick up where it paused: the
// row inserted meanwhile arrives. The connector's rate-limit pools show in
// its status and metrics.
func TestSchemaDriftPauseThroughRaft(t *testing.T) {
	if testing.Short() {
		t.Skip("starts a cluster and two databases")
	}
	crm, billing := pgtest.Start(t), pgtest.Start(t)
	crm.CreateDB(t, "crm")
	billing.CreateDB(t, "billing")
	crm.Exec(t, "crm", `CREATE TABLE customers (customer_id int PRIMARY KEY, full_name text, email_address text, phone text)`)
	billing.Exec(t, "billing", `CREATE TABLE clients (client_ref int PRIMARY KEY, name text, email text, tel text)`)
	cfg := fmt.Sprintf(`entities:
  contact:
    fields: {name: string, email: string, phone: string, company: string}
connectors:
  crm:
    kind: postgres
    dsn: %q
    rate_limit: {reads: 1000, writes: 500, burst: 100}
    tables:
      customers: {entity: contact, key: [customer_id], columns: {full_name: name, email_address: email, phone: phone}}
  billing:
    kind: postgres
    dsn: %q
    tables:
      clients: {entity: contact, key: [client_ref], columns: {name: name, email: email, tel: phone}}
`, crm.DSN("crm"), billing.DSN("billing"))
	c := clustertest.Start(t, latticeBin, 3, clustertest.Options{Config: cfg})
	addr := c.Nodes[0].GRPC
	billingName := func(id int) string {
		r := query(t, billing, "billing", fmt.Sprintf("SELECT name FROM clients WHERE client_ref = %d", id))
		if len(r) == 0 {
			return "<none>"
		}
		return r[0]
	}
	eventually(t, "connectors streaming", 60*time.Second, func() (bool, string) {
		resp := statusJSON(t, addr)
		a, b := byName(resp, "crm"), byName(resp, "billing")
		return a.GetState() == "streaming" && b.GetState() == "streaming", fmt.Sprint(resp)
	})
	crm.Exec(t, "crm", `INSERT INTO customers VALUES (1, 'Ann', 'ann@example.com', '1')`)
	eventually(t, "row 1 reaches billing", 30*time.Second, func() (bool, string) { return billingName(1) == "Ann", billingName(1) })

	// Rate limits: in the status (from any node) and the owner's metrics.
	cs := byName(statusJSON(t, addr, "crm"), "crm")
	pools := cs.GetRuntime().GetReport().GetRateLimits()
	if len(pools) != 2 || pools[0].GetPool() != "reads" || pools[0].GetLimitPerSecond() != 1000 || pools[0].GetBurst() != 100 ||
		pools[1].GetPool() != "writes" || pools[1].GetLimitPerSecond() != 500 || pools[0].GetRows() < 1 {
		t.Errorf("crm's rate-limit pools: %v", pools)
	}
	out := mustCLI(t, addr, "connectors", "status", "crm")
	wantContains(t, "connectors status crm", out, "rate limit reads   1000 rows/s (burst 100)", "rate limit writes  500 rows/s (burst 100)")
	owner := cs.GetPlacement().GetNode()
	tokens := regexp.MustCompile(`(?m)^lattice_connector_ratelimit_tokens\{connector="crm",pool="reads"\} [0-9.e+]+$`)
	for _, nd := range c.Nodes {
		if nd.ID != owner {
			continue
		}
		code, body := httpGet(t, "http://"+nd.HTTP+"/metrics")
		if code != http.StatusOK || !tokens.MatchString(body) ||
			!strings.Contains(body, `lattice_connector_ratelimit_wait_seconds_total{connector="crm",pool="writes"}`) {
			t.Errorf("%s (crm's owner): no rate-limit metrics for crm", nd.ID)
		}
	}

	// The drop: the connector pauses itself through Raft.
	crm.Exec(t, "crm", `ALTER TABLE customers DROP COLUMN phone`)
	crm.Exec(t, "crm", `INSERT INTO customers (customer_id, full_name) VALUES (2, 'After drop')`)
	for _, nd := range c.Nodes {
		eventually(t, nd.ID+" sees crm paused with the reason", 30*time.Second, func() (bool, string) {
			cs := byName(statusJSON(t, nd.GRPC, "crm"), "crm")
			r := cs.GetPlacement().GetPauseReason()
			return cs.GetState() == "paused" && cs.GetPlacement().GetPaused() && strings.Contains(r, "table customers") &&
				strings.Contains(r, `column "phone"`) && strings.Contains(r, "lattice connectors resume crm"), fmt.Sprint(cs)
		})
	}
	out = mustCLI(t, addr, "connectors", "list")
	t.Logf("lattice connectors list:\n%s", out)
	wantContains(t, "connectors list", out, "paused", `crm paused itself: schema drift: table customers: column "phone" (mapped to field phone) was dropped`,
		`ALTER TABLE "customers" ADD COLUMN "phone" text`)
	out = mustCLI(t, addr, "connectors", "status")
	wantContains(t, "connectors status", out, "paused: schema drift")
	out = mustCLI(t, addr, "connectors", "status", "crm")
	if !regexp.MustCompile(`(?m)^paused +yes, by the connector: schema drift: table customers`).MatchString(out) {
		t.Errorf("connectors status crm does not show the pause reason:\n%s", out)
	}
	time.Sleep(time.Second)
	if got := billingName(2); got != "<none>" {
		t.Fatalf("a change after the drop reached billing while crm was paused: %q", got)
	}

	// Restore the column and resume: the row inserted meanwhile arrives.
	crm.Exec(t, "crm", `ALTER TABLE customers ADD COLUMN phone text`)
	crm.Exec(t, "crm", `INSERT INTO customers VALUES (3, 'Restored', NULL, '3')`)
	mustCLI(t, addr, "connectors", "resume", "crm")
	eventually(t, "rows changed while paused reach billing", 60*time.Second, func() (bool, string) {
		return billingName(2) == "After drop" && billingName(3) == "Restored", billingName(2) + " " + billingName(3)
	})
	cs = byName(statusJSON(t, addr, "crm"), "crm")
	if cs.GetPlacement().GetPaused() || cs.GetPlacement().GetPauseReason() != "" {
		t.Errorf("after resume: %v", cs.GetPlacement())
	}
}

// query returns the first column of each row of q.
func query(t *testing.T, s *pgtest.Server, db, q string) []string {
	t.Helper()
	ctx, cancel := context.WithTimeout(context.Background(), 5*time.Second)
	defer cancel()
	conn, err := pgx.Connect(ctx, s.DSN(db))
	if err != nil {
		t.Fatal(err)
	}
	defer conn.Close(context.Background())
	rows, err := conn.Query(ctx, q)
	if err != nil {
		t.Fatal(err)
	}
	defer rows.Close()
	var out []string
	for rows.Next() {
		var v *string
		if err := rows.Scan(&v); err != nil {
			t.Fatal(err)
		}
		if v == nil {
			out = append(out, "<null>")
		} else {
			out = append(out, *v)
		}
	}
	return out
}
