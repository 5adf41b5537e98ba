package main

import (
	"context"
	"fmt"
	"net/http"
	"regexp"
	"strings"
	"syscall"
	"testing"
	"time"

	"google.golang.org/grpc"
	"google.golang.org/grpc/credentials/insecure"
	"google.golang.org/protobuf/encoding/protojson"

	pb "github.com/lattice-sync/lattice/api/lattice/v1"
	"github.com/lattice-sync/lattice/cluster/clustertest"
	"github.com/lattice-sync/lattice/connectors/postgres/pgtest"
)

func eventually(t *testing.T, what string, timeout time.Duration, cond func() (bool, string)) {
	t.Helper()
	deadline := time.Now().Add(timeout)
	var why string
	for time.Now().Before(deadline) {
		var ok bool
		if ok, why = cond(); ok {
			return
		}
		time.Sleep(100 * time.Millisecond)
	}
	t.Fatalf("%s: not within %s: %s", what, timeout, why)
}

func statusJSON(t *testing.T, addr string, args ...string) *pb.ConnectorStatusResponse {
	t.Helper()
	out := mustCLI(t, addr, append([]string{"connectors", "status", "-o", "json"}, args...)...)
	var resp pb.ConnectorStatusResponse
	if err := protojson.Unmarshal([]byte(out), &resp); err != nil {
		t.Fatalf("connectors status -o json is not a ConnectorStatusResponse: %v\n%s", err, out)
	}
	return &resp
}

func byName(resp *pb.ConnectorStatusResponse, name string) *pb.ConnectorStatus {
	for _, cs := range resp.GetConnectors() {
		if cs.GetPlacement().GetName() == name {
			return cs
		}
	}
	return nil
}

// TestConnectorStatusFromAnotherNode: `lattice connectors status` asked of
// a node that does not run the connector shows its owner and, from the
// owner, its state and source position; an owner that does not answer is
// reported as such without failing the command.
func TestConnectorStatusFromAnotherNode(t *testing.T) {
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
    tables:
      customers: {entity: contact, key: [customer_id], columns: {full_name: name, email_address: email, phone: phone}}
  billing:
    kind: postgres
    dsn: %q
    tables:
      clients: {entity: contact, key: [client_ref], columns: {name: name, email: email, tel: phone}}
`, crm.DSN("crm"), billing.DSN("billing"))
	c := clustertest.Start(t, latticeBin, 3, clustertest.Options{Config: cfg})

	// Where crm runs, and a node that does not run it.
	var owner, other *clustertest.Node
	eventually(t, "crm streaming", 30*time.Second, func() (bool, string) {
		cs := byName(statusJSON(t, c.Nodes[0].GRPC), "crm")
		if cs.GetState() != "streaming" {
			return false, fmt.Sprint(cs)
		}
		for _, nd := range c.Nodes {
			if nd.ID == cs.GetPlacement().GetNode() {
				owner = nd
			} else if other == nil {
				other = nd
			}
		}
		return owner != nil, fmt.Sprint(cs)
	})
	other = nil
	for _, nd := range c.Nodes {
		if nd != owner && other == nil {
			other = nd
		}
	}
	t.Logf("crm runs on %s; asking %s", owner.ID, other.ID)

	// A change streams through; its position is confirmed to crm and shows.
	crm.Exec(t, "crm", `INSERT INTO customers VALUES (1, 'Ann', 'ann@example.com', '1')`)
	lsn := regexp.MustCompile(`^[0-9A-F]+/[0-9A-F]+$`)
	var cs *pb.ConnectorStatus
	eventually(t, "crm's confirmed source position, seen from another node", 30*time.Second, func() (bool, string) {
		resp := statusJSON(t, other.GRPC)
		cs = byName(resp, "crm")
		rep := cs.GetRuntime().GetReport()
		return resp.GetNodeId() == other.ID && cs.GetPlacement().GetNode() == owner.ID && cs.GetState() == "streaming" &&
			cs.GetRuntime().GetNode() == owner.ID && lsn.MatchString(rep.GetSourcePosition()) && rep.GetCapturedEdits() >= 1, fmt.Sprint(resp)
	})
	rep := cs.GetRuntime().GetReport()
	if rep.GetMode() != "logical" || rep.GetStartedAt() == nil || !cs.GetRuntime().GetRunning() || cs.GetRuntime().GetAttempts() != 1 ||
		rep.GetLastCapture() == nil || cs.GetOwnerUnreachable() {
		t.Errorf("crm status: %v", cs)
	}
	if b := byName(statusJSON(t, other.GRPC), "billing"); b.GetState() != "streaming" || b.GetRuntime().GetReport() == nil {
		t.Errorf("billing status: %v", b)
	}
	// Stable JSON names for scripts.
	out := mustCLI(t, other.GRPC, "connectors", "status", "-o", "json")
	wantContains(t, "connectors status -o json", out, `"nodeId": "`+other.ID+`"`, `"placement"`, `"node": "`+owner.ID+`"`,
		`"state": "streaming"`, `"runtime"`, `"report"`, `"sourcePosition": "`+rep.GetSourcePosition(), `"capturedEdits"`)

	// The table: one row per connector.
	out = mustCLI(t, other.GRPC, "connectors", "status")
	t.Logf("lattice connectors status:\n%s", out)
	wantContains(t, "connectors status", out, "NAME", "OWNER", "CAPTURE LAG", "SOURCE POSITION", "DEAD LETTERS", "LAST ERROR")
	var crmRow string
	for _, line := range strings.Split(out, "\n") {
		if strings.HasPrefix(line, "crm ") {
			crmRow = line
		}
	}
	if f := strings.Fields(crmRow); len(f) < 9 || f[1] != "postgres" || f[2] != owner.ID || f[4] != "streaming" || !lsn.MatchString(f[7]) {
		t.Errorf("crm row: %q\n%s", crmRow, out)
	}
	if !strings.Contains(out, "\nbilling ") {
		t.Errorf("no billing row:\n%s", out)
	}

	// One connector: everything, one key per line.
	out = mustCLI(t, other.GRPC, "connectors", "status", "crm")
	t.Logf("lattice connectors status crm:\n%s", out)
	wantContains(t, "connectors status crm", out, "owner              "+owner.ID, "state              streaming",
		"mode               logical", "source position    0/", "projection cursor", "captured edits", "answered by        "+other.ID)

	// Bad input.
	_, err := cli(other.GRPC, "connectors", "status", "nope")
	if err == nil || !strings.Contains(err.Error(), `not found: no connector "nope" (see lattice connectors list)`) {
		t.Errorf("status of an unknown connector: %v", err)
	}

	// Metrics: crm runs on its owner only.
	running := regexp.MustCompile(`(?m)^lattice_connector_running\{connector="crm"\} (\d)$`)
	for _, nd := range c.Nodes {
		code, body := httpGet(t, "http://"+nd.HTTP+"/metrics")
		m := running.FindStringSubmatch(body)
		want := map[bool]string{true: "1", false: "0"}[nd == owner]
		if code != http.StatusOK || m == nil || m[1] != want {
			t.Errorf("%s: lattice_connector_running{connector=\"crm\"} = %v, want %s", nd.ID, m, want)
		}
		if nd == owner && !strings.Contains(body, `lattice_connector_restarts_total{connector="crm"} 0`) {
			t.Errorf("%s: no restarts counter for crm", nd.ID)
		}
	}

	// An owner that does not answer (stopped, not yet noticed dead): the
	// placement comes back with the reason, and the command succeeds.
	if err := syscall.Kill(owner.Pid(), syscall.SIGSTOP); err != nil {
		t.Fatal(err)
	}
	// Both at once: the connector moves a few seconds after.
	start := time.Now()
	var resp *pb.ConnectorStatusResponse
	var took time.Duration
	asked := make(chan struct{})
	go func() {
		defer close(asked)
		out, err = cli(other.GRPC, "connectors", "status")
	}()
	resp = statusJSON(t, other.GRPC, "crm")
	took = time.Since(start)
	<-asked
	t.Logf("lattice connectors status, owner stopped:\n%s", out)
	if err := syscall.Kill(owner.Pid(), syscall.SIGCONT); err != nil {
		t.Fatal(err)
	}
	if err != nil {
		t.Errorf("connectors status with the owner stopped: %v", err)
	}
	cs = byName(resp, "crm")
	if cs.GetPlacement().GetNode() != owner.ID {
		t.Logf("crm moved off %s before the request: %v", owner.ID, cs)
	} else {
		if !cs.GetOwnerUnreachable() || cs.GetState() != "unknown" || !strings.Contains(cs.GetOwnerError(), owner.ID) || cs.GetRuntime() != nil {
			t.Errorf("crm with its owner stopped: %v", cs)
		}
		if took > 6*time.Second {
			t.Errorf("status with the owner stopped took %s", took)
		}
		wantContains(t, "connectors status with the owner stopped", out, "unknown (owner unreachable)")
	}
}

// TestConnectorStatusErrors: the answers without connectors, for an
// unknown name, and with a bad -o.
func TestConnectorStatusErrors(t *testing.T) {
	a := startAgent(t, t.TempDir())
	out := mustCLI(t, a.addr, "connectors", "status")
	wantContains(t, "connectors status without connectors", out, "no connectors: declare them under connectors:")
	_, err := cli(a.addr, "connectors", "status", "crm")
	if err == nil || !strings.Contains(err.Error(), `not found: no connector "crm" (see lattice connectors list)`) {
		t.Errorf("status of an unknown connector: %v", err)
	}
	_, err = cli(a.addr, "connectors", "status", "-o", "yaml")
	if err == nil || !strings.Contains(err.Error(), `--output "yaml": want table or json`) {
		t.Errorf("-o yaml: %v", err)
	}
	// The local view a node gives another lists nothing here, without error.
	conn, err := grpc.NewClient(a.addr, grpc.WithTransportCredentials(insecure.NewCredentials()))
	if err != nil {
		t.Fatal(err)
	}
	defer conn.Close()
	ctx, cancel := context.WithTimeout(context.Background(), 5*time.Second)
	defer cancel()
	resp, err := pb.NewClusterClient(conn).ConnectorStatus(ctx, &pb.ConnectorStatusRequest{Connector: "crm", LocalOnly: true})
	if err != nil || len(resp.GetConnectors()) != 0 || resp.GetNodeId() != "n1" {
		t.Errorf("local-only status of a connector not running here: %v %v", resp, err)
	}
}
