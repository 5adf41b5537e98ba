// Command lattice-demo is a scripted tour of lattice syncing two PostgreSQL
// databases, run by `make demo`.
//
// It starts two private PostgreSQL instances (a CRM and a billing system,
// with differently named tables and columns), a three-node lattice cluster
// (`lattice dev`) whose configuration declares one connector per database,
// and then walks through the initial snapshot, a one-sided update,
// concurrent edits of different fields and of one field, and the conflict
// history. It cleans everything up on exit, on failure and on Ctrl-C.
//
// It builds nothing: --lattice names the lattice binary (make demo builds
// bin/lattice first).
package main

import (
	"bufio"
	"context"
	"errors"
	"flag"
	"fmt"
	"io"
	"net"
	"os"
	"os/exec"
	"os/signal"
	"path/filepath"
	"slices"
	"strings"
	"sync"
	"syscall"
	"text/tabwriter"
	"time"

	"github.com/jackc/pgx/v5"
	"google.golang.org/protobuf/encoding/protojson"
	"google.golang.org/protobuf/proto"

	pb "github.com/lattice-sync/lattice/api/lattice/v1"
	"github.com/lattice-sync/lattice/connectors/postgres/pgtest"
)

const (
	// waitTimeout bounds every wait of the tour.
	waitTimeout = 20 * time.Second
	// devStopWait is how long `lattice dev` gets to stop after SIGINT.
	devStopWait = 20 * time.Second
	// cmdTimeout bounds each lattice client command.
	cmdTimeout = 10 * time.Second
	// logTail is how many lines of the dev log a failure shows.
	logTail = 30
	// addr is n1's gRPC address as `lattice dev` assigns it.
	addr  = "127.0.0.1:7101"
	nodes = 3
)

var errInterrupted = errors.New("interrupted")

func main() {
	ctx, stop := signal.NotifyContext(context.Background(), os.Interrupt, syscall.SIGTERM)
	err := run(ctx, os.Args[1:], os.Stdout, os.Stderr)
	stop()
	switch {
	case errors.Is(err, errInterrupted):
		fmt.Fprintln(os.Stderr, "lattice-demo: interrupted; everything it started is stopped")
		os.Exit(130)
	case errors.Is(err, flag.ErrHelp):
		os.Exit(0)
	case err != nil:
		fmt.Fprintln(os.Stderr, "lattice-demo: FAILED:", err)
		os.Exit(1)
	}
}

type demo struct {
	lattice string // absolute path of the lattice binary
	tmp     string
	out     io.Writer
	errOut  io.Writer

	crm, billing         *pgtest.Server
	crmConn, billingConn *pgx.Conn

	devLog  string
	dev     *exec.Cmd
	devDone chan struct{} // closed when the dev process has exited
	devErr  error         // its exit status, valid once devDone is closed
}

// run runs the demo; it returns nil when the whole tour succeeded.
func run(ctx context.Context, args []string, stdout, stderr io.Writer) (err error) {
	fs := flag.NewFlagSet("lattice-demo", flag.ContinueOnError)
	fs.SetOutput(stderr)
	latticeBin := fs.String("lattice", filepath.Join("bin", "lattice"), "path of the lattice binary (make demo builds it)")
	keep := fs.Bool("keep", false, "keep the temporary directory (configuration, dev log, node data) on exit")
	fs.Usage = func() {
		fmt.Fprintln(stderr, "usage: lattice-demo [--lattice PATH] [--keep]\n\nA scripted tour: two PostgreSQL databases kept in sync by a three-node lattice cluster.")
		fs.PrintDefaults()
	}
	if err := fs.Parse(args); err != nil {
		return err
	}
	if fs.NArg() > 0 {
		return fmt.Errorf("unexpected arguments %q", fs.Args())
	}

	d := &demo{out: stdout, errOut: stderr}
	if d.lattice, err = filepath.Abs(*latticeBin); err != nil {
		return err
	}
	if fi, err := os.Stat(d.lattice); err != nil || fi.IsDir() || fi.Mode()&0o111 == 0 {
		return fmt.Errorf("lattice binary %s not found or not executable: build it first (make build), or pass --lattice PATH", d.lattice)
	}
	if err := portsFree(); err != nil {
		return err
	}
	if d.tmp, err = os.MkdirTemp("", "lattice-demo-"); err != nil {
		return err
	}
	started := time.Now()
	defer func() {
		if cerr := d.cleanup(*keep); cerr != nil {
			fmt.Fprintln(stderr, "lattice-demo: cleanup:", cerr)
			if err == nil {
				err = cerr
			}
		}
		if err == nil {
			fmt.Fprintf(stdout, "Stopped; everything the demo started is gone (%.1f s in all).\n", time.Since(started).Seconds())
		}
		if ctx.Err() != nil && err != nil && !errors.Is(err, errInterrupted) {
			err = fmt.Errorf("%w (%v)", errInterrupted, err)
		}
	}()

	if err := d.setup(ctx); err != nil {
		return err
	}
	if err := d.tour(ctx); err != nil {
		return err
	}
	fmt.Fprintf(stdout, "\nThe tour is over (%.1f s). Stopping the cluster and the databases...\n", time.Since(started).Seconds())
	return nil
}

// portsFree checks that the ports `lattice dev --nodes 3` uses are free, so
// a running `make run` gives a clear message instead of a confusing tour.
func portsFree() error {
	for i := 1; i <= nodes; i++ {
		for _, base := range []int{7100, 7200, 7300, 7400} {
			a := fmt.Sprintf("127.0.0.1:%d", base+i)
			l, err := net.Listen("tcp", a)
			if err != nil {
				return fmt.Errorf("port %s is in use (%v): the demo runs `lattice dev` on 127.0.0.1:7101-7103, 7201-7203, 7301-7303 and 7401-7403; stop whatever uses it (another `make run` or `make demo`?) and try again", a, err)
			}
			l.Close()
		}
	}
	return nil
}

func (d *demo) say(format string, args ...any) {
	fmt.Fprintf(d.out, format+"\n", args...)
}

func (d *demo) step(title, explain string) {
	fmt.Fprintf(d.out, "\n=== %s ===\n", title)
	for _, line := range strings.Split(strings.TrimSpace(explain), "\n") {
		fmt.Fprintln(d.out, "  "+strings.TrimSpace(line))
	}
	fmt.Fprintln(d.out)
}

// ---- setup ----

const customersDDL = `CREATE TABLE customers (customer_id int PRIMARY KEY, full_name text, email_address text, phone text)`
const clientsDDL = `CREATE TABLE clients (client_ref int PRIMARY KEY, name text, email text, tel text)`

const configYAML = `# written by lattice-demo
entities:
  contact:
    fields:
      name: {type: string, policy: lww}
      email: {type: string, policy: lww}
      phone: {type: string, policy: lww}
      company: {type: string, policy: lww}
connectors:
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
`

func (d *demo) setup(ctx context.Context) error {
	d.say("lattice demo: two PostgreSQL databases, a CRM and a billing system, kept in sync")
	d.say("field by field by a three-node lattice cluster. Working directory: %s", d.tmp)

	t0 := time.Now()
	d.say("\nStarting two private PostgreSQL instances (initdb, about 2 s)...")
	var wg sync.WaitGroup
	var crmErr, billErr error
	wg.Add(2)
	go func() { defer wg.Done(); d.crm, crmErr = pgtest.Launch() }()
	go func() { defer wg.Done(); d.billing, billErr = pgtest.Launch() }()
	wg.Wait()
	if err := errors.Join(crmErr, billErr); err != nil {
		return fmt.Errorf("start PostgreSQL: %w", err)
	}
	if ctx.Err() != nil {
		return errInterrupted
	}
	d.say("  crm:     PostgreSQL on 127.0.0.1:%d, database crm, table customers(customer_id, full_name, email_address, phone)", d.crm.Port)
	d.say("  billing: PostgreSQL on 127.0.0.1:%d, database billing, table clients(client_ref, name, email, tel)", d.billing.Port)

	sqlCtx, cancel := context.WithTimeout(ctx, 30*time.Second)
	defer cancel()
	for _, s := range []struct {
		srv      *pgtest.Server
		db, ddl  string
		conn     **pgx.Conn
		afterDDL string
	}{
		{d.crm, "crm", customersDDL, &d.crmConn, `INSERT INTO customers VALUES
			(1, 'Ann Lee', 'ann@example.com', '555-0101'),
			(2, 'Bob Stone', 'bob@example.com', '555-0102')`},
		{d.billing, "billing", clientsDDL, &d.billingConn, ""},
	} {
		if err := s.srv.ExecContext(sqlCtx, "postgres", "CREATE DATABASE "+pgx.Identifier{s.db}.Sanitize()); err != nil {
			return err
		}
		if err := s.srv.ExecContext(sqlCtx, s.db, s.ddl); err != nil {
			return err
		}
		if s.afterDDL != "" {
			if err := s.srv.ExecContext(sqlCtx, s.db, s.afterDDL); err != nil {
				return err
			}
		}
		conn, err := pgx.Connect(sqlCtx, s.srv.DSN(s.db))
		if err != nil {
			return fmt.Errorf("connect to %s: %w", s.db, err)
		}
		*s.conn = conn
	}
	d.say("  inserted two customers into crm before lattice starts (billing is empty)  [%.1f s]", time.Since(t0).Seconds())

	cfgPath := filepath.Join(d.tmp, "lattice.yaml")
	if err := os.WriteFile(cfgPath, fmt.Appendf(nil, configYAML, d.crm.DSN("crm"), d.billing.DSN("billing")), 0o600); err != nil {
		return err
	}
	d.say("\nConfiguration %s: entity contact (name, email, phone, company; last-writer-wins)", cfgPath)
	d.say("and two connectors: crm (customers: full_name->name, email_address->email, phone->phone)")
	d.say("and billing (clients: name->name, email->email, tel->phone).")

	t0 = time.Now()
	if err := d.startDev(cfgPath); err != nil {
		return err
	}
	d.say("\nStarting a three-node cluster: lattice dev --nodes 3 (gRPC on 127.0.0.1:7101-7103)")
	d.say("  its output goes to %s", d.devLog)
	if err := d.waitFor(ctx, "3 alive members in `lattice members`", func(ctx context.Context) (bool, string) {
		out, err := d.lattice1(ctx, "members", "-o", "json")
		if err != nil {
			return false, err.Error()
		}
		m := &pb.MembersResponse{}
		if err := unmarshal(out, m); err != nil {
			return false, err.Error()
		}
		alive := 0
		for _, mb := range m.GetMembers() {
			if mb.GetState() == "alive" {
				alive++
			}
		}
		return alive == nodes, fmt.Sprintf("%d of %d members alive", alive, nodes)
	}, nil); err != nil {
		return err
	}
	if out, err := d.lattice1(ctx, "members"); err == nil {
		d.say("\n$ lattice members")
		d.indent(out)
	}
	var placed []*pb.ConnectorPlacement
	if err := d.waitFor(ctx, "both connectors placed (`lattice status -o json`)", func(ctx context.Context) (bool, string) {
		out, err := d.lattice1(ctx, "status", "-o", "json")
		if err != nil {
			return false, err.Error()
		}
		st := &pb.StatusResponse{}
		if err := unmarshal(out, st); err != nil {
			return false, err.Error()
		}
		placed = st.GetConnectors()
		n := 0
		for _, c := range placed {
			if c.GetNode() != "" {
				n++
			}
		}
		return n == 2 && len(placed) == 2, fmt.Sprintf("connectors: %v", placed)
	}, nil); err != nil {
		return err
	}
	d.say("\nThe Raft leader placed each connector on one node; only that node runs it:")
	for _, c := range placed {
		d.say("  connector %-8s (%s) runs on %s (epoch %d)", c.GetName(), c.GetKind(), c.GetNode(), c.GetEpoch())
	}
	d.say("[cluster up and connectors placed in %.1f s]", time.Since(t0).Seconds())
	return nil
}

// startDev starts `lattice dev` in its own process group, its output in
// the dev log.
func (d *demo) startDev(cfgPath string) error {
	d.devLog = filepath.Join(d.tmp, "dev.log")
	f, err := os.Create(d.devLog)
	if err != nil {
		return err
	}
	cmd := exec.Command(d.lattice, "dev", "--nodes", fmt.Sprint(nodes), "--fresh",
		"--data-dir", filepath.Join(d.tmp, "dev"), "--config", cfgPath, "--log-level", "info")
	cmd.Stdout, cmd.Stderr = f, f
	cmd.Env = withoutEnv(os.Environ(), "LATTICE_ADDR")
	// Its own process group: Ctrl-C reaches only the demo, which stops the
	// cluster in order; a stuck cluster can be killed as a group.
	cmd.SysProcAttr = &syscall.SysProcAttr{Setpgid: true}
	if err := cmd.Start(); err != nil {
		f.Close()
		return fmt.Errorf("start lattice dev: %w", err)
	}
	d.dev = cmd
	d.devDone = make(chan struct{})
	go func() {
		d.devErr = cmd.Wait()
		f.Close()
		close(d.devDone)
	}()
	return nil
}

func withoutEnv(env []string, name string) []string {
	return slices.DeleteFunc(slices.Clone(env), func(kv string) bool { return strings.HasPrefix(kv, name+"=") })
}

// cleanup stops the cluster (SIGINT, then a kill after devStopWait), closes
// both PostgreSQL instances and removes the temporary directory unless keep.
func (d *demo) cleanup(keep bool) error {
	var errs []error
	if d.dev != nil {
		select {
		case <-d.devDone:
			fmt.Fprintf(d.errOut, "lattice dev had already exited (%v)\n", d.devErr)
		default:
			_ = d.dev.Process.Signal(syscall.SIGINT)
			select {
			case <-d.devDone:
			case <-time.After(devStopWait):
				errs = append(errs, fmt.Errorf("lattice dev did not stop within %s of SIGINT: killed it and its nodes", devStopWait))
				_ = syscall.Kill(-d.dev.Process.Pid, syscall.SIGKILL)
				<-d.devDone
			}
		}
	}
	for _, c := range []*pgx.Conn{d.crmConn, d.billingConn} {
		if c != nil {
			ctx, cancel := context.WithTimeout(context.Background(), 2*time.Second)
			c.Close(ctx)
			cancel()
		}
	}
	var wg sync.WaitGroup
	var mu sync.Mutex
	for _, s := range []*pgtest.Server{d.crm, d.billing} {
		if s == nil {
			continue
		}
		wg.Add(1)
		go func() {
			defer wg.Done()
			if err := s.Close(); err != nil {
				mu.Lock()
				errs = append(errs, err)
				mu.Unlock()
			}
		}()
	}
	wg.Wait()
	if keep {
		fmt.Fprintf(d.out, "kept %s (configuration lattice.yaml, dev.log, node data in dev/)\n", d.tmp)
	} else if err := os.RemoveAll(d.tmp); err != nil {
		errs = append(errs, err)
	}
	return errors.Join(errs...)
}

// ---- lattice client commands ----

// lattice1 runs a lattice client command against n1 and returns its
// standard output; on failure the error holds its standard error.
func (d *demo) lattice1(ctx context.Context, args ...string) (string, error) {
	ctx, cancel := context.WithTimeout(ctx, cmdTimeout)
	defer cancel()
	full := append([]string{"--addr", addr, "--timeout", "5s"}, args...)
	cmd := exec.CommandContext(ctx, d.lattice, full...)
	cmd.Env = withoutEnv(os.Environ(), "LATTICE_ADDR")
	var stdout, stderr strings.Builder
	cmd.Stdout, cmd.Stderr = &stdout, &stderr
	cmd.WaitDelay = time.Second
	if err := cmd.Run(); err != nil {
		return stdout.String(), fmt.Errorf("lattice %s: %v: %s", strings.Join(args, " "), err, strings.TrimSpace(stderr.String()))
	}
	return stdout.String(), nil
}

// show runs a lattice command and prints it and its output.
func (d *demo) show(ctx context.Context, args ...string) error {
	out, err := d.lattice1(ctx, args...)
	if err != nil {
		return err
	}
	d.say("$ lattice %s", strings.Join(args, " "))
	d.indent(out)
	return nil
}

func (d *demo) indent(text string) {
	for _, line := range strings.Split(strings.TrimRight(text, "\n"), "\n") {
		fmt.Fprintln(d.out, "  "+line)
	}
}

func unmarshal(out string, m proto.Message) error {
	return protojson.UnmarshalOptions{DiscardUnknown: true}.Unmarshal([]byte(out), m)
}

// ---- waiting ----

// waitFor polls cond until it holds, for up to waitTimeout. On timeout the
// error says what was awaited and what was last seen, then adds explain's
// diagnosis (if explain is not nil) and the end of the dev log.
func (d *demo) waitFor(ctx context.Context, what string, cond func(context.Context) (bool, string), explain func(context.Context) string) error {
	deadline := time.Now().Add(waitTimeout)
	for {
		ok, last := cond(ctx)
		if ok {
			return nil
		}
		if ctx.Err() != nil {
			return errInterrupted
		}
		select {
		case <-d.devDone:
			return fmt.Errorf("waiting for %s: lattice dev exited (%v)\nlast seen: %s\n%s", what, d.devErr, last, d.devLogTail())
		default:
		}
		if time.Now().After(deadline) {
			diag := ""
			if explain != nil {
				diag = explain(context.WithoutCancel(ctx))
			}
			return fmt.Errorf("waiting for %s: not within %s\nlast seen: %s\n%s%s", what, waitTimeout, last, diag, d.devLogTail())
		}
		select {
		case <-ctx.Done():
			return errInterrupted
		case <-time.After(200 * time.Millisecond):
		}
	}
}

// commands returns an explain function that runs lattice commands and
// returns their output.
func (d *demo) commands(cmds ...[]string) func(context.Context) string {
	return func(ctx context.Context) string {
		var b strings.Builder
		for _, args := range cmds {
			out, err := d.lattice1(ctx, args...)
			fmt.Fprintf(&b, "--- what lattice holds: lattice %s ---\n", strings.Join(args, " "))
			if err != nil {
				fmt.Fprintf(&b, "(%v)\n", err)
			}
			b.WriteString(out)
		}
		return b.String()
	}
}

func (d *demo) devLogTail() string {
	f, err := os.Open(d.devLog)
	if err != nil {
		return fmt.Sprintf("(no dev log: %v)", err)
	}
	defer f.Close()
	var lines []string
	sc := bufio.NewScanner(f)
	sc.Buffer(make([]byte, 64*1024), 1<<20)
	for sc.Scan() {
		lines = append(lines, sc.Text())
		if len(lines) > 4*logTail {
			lines = append(lines[:0], lines[len(lines)-logTail:]...)
		}
	}
	if len(lines) > logTail {
		lines = lines[len(lines)-logTail:]
	}
	return fmt.Sprintf("--- last %d lines of %s ---\n%s", len(lines), d.devLog, strings.Join(lines, "\n"))
}

// ---- the databases ----

// contact is one row in either database, in lattice's field names.
type contact struct {
	id                 int
	name, email, phone string
}

func (c contact) String() string {
	return fmt.Sprintf("%d|%s|%s|%s", c.id, c.name, c.email, c.phone)
}

const crmQuery = `SELECT customer_id, coalesce(full_name, ''), coalesce(email_address, ''), coalesce(phone, '') FROM customers ORDER BY customer_id`
const billingQuery = `SELECT client_ref, coalesce(name, ''), coalesce(email, ''), coalesce(tel, '') FROM clients ORDER BY client_ref`

func readContacts(ctx context.Context, conn *pgx.Conn, q string) ([]contact, error) {
	ctx, cancel := context.WithTimeout(ctx, 5*time.Second)
	defer cancel()
	rows, err := conn.Query(ctx, q)
	if err != nil {
		return nil, err
	}
	var out []contact
	for rows.Next() {
		var c contact
		if err := rows.Scan(&c.id, &c.name, &c.email, &c.phone); err != nil {
			rows.Close()
			return nil, err
		}
		out = append(out, c)
	}
	return out, rows.Err()
}

// both reads both databases.
func (d *demo) both(ctx context.Context) (crm, billing []contact, err error) {
	if crm, err = readContacts(ctx, d.crmConn, crmQuery); err != nil {
		return nil, nil, fmt.Errorf("read crm: %w", err)
	}
	if billing, err = readContacts(ctx, d.billingConn, billingQuery); err != nil {
		return nil, nil, fmt.Errorf("read billing: %w", err)
	}
	return crm, billing, nil
}

// waitSame waits until both databases hold want (in lattice's terms). On
// timeout it compares each database with lattice and with want, then adds
// the output of extra (if not nil).
func (d *demo) waitSame(ctx context.Context, what string, want []contact, extra func(context.Context) string) error {
	return d.waitFor(ctx, what, func(ctx context.Context) (bool, string) {
		crm, billing, err := d.both(ctx)
		if err != nil {
			return false, err.Error()
		}
		return slices.Equal(crm, want) && slices.Equal(billing, want),
			fmt.Sprintf("crm %v, billing %v; want both %v", crm, billing, want)
	}, func(ctx context.Context) string {
		s := d.compare(ctx, want)
		if extra != nil {
			s += extra(ctx)
		}
		return s
	})
}

// compare says, for each record of want that is not everywhere as
// expected, what lattice and each database hold, and who is off.
func (d *demo) compare(ctx context.Context, want []contact) string {
	crm, billing, err := d.both(ctx)
	if err != nil {
		return fmt.Sprintf("(cannot read the databases: %v)\n", err)
	}
	find := func(rows []contact, id int) (contact, bool) {
		for _, r := range rows {
			if r.id == id {
				return r, true
			}
		}
		return contact{}, false
	}
	show := func(c contact, ok bool) string {
		if !ok {
			return "(no row)"
		}
		return fmt.Sprintf("name=%q email=%q phone=%q", c.name, c.email, c.phone)
	}
	var b strings.Builder
	for _, w := range want {
		c, cok := find(crm, w.id)
		bl, bok := find(billing, w.id)
		if cok && bok && c == w && bl == w {
			continue
		}
		l, lerr := d.latticeContact(ctx, w.id)
		lat := show(l, lerr == nil)
		if lerr != nil {
			lat = fmt.Sprintf("(%v)", lerr)
		}
		fmt.Fprintf(&b, "--- contact %d ---\n  expected: %s\n  lattice:  %s\n  crm:      %s\n  billing:  %s\n",
			w.id, show(w, true), lat, show(c, cok), show(bl, bok))
		if lerr == nil && l != w {
			fmt.Fprintf(&b, "  => lattice itself does not hold the expected values: an edit was lost or not captured\n")
		}
		if lerr == nil && (!cok || c != l) {
			fmt.Fprintf(&b, "  => crm differs from what lattice resolved: the crm connector did not project the resolved record\n")
		}
		if lerr == nil && (!bok || bl != l) {
			fmt.Fprintf(&b, "  => billing differs from what lattice resolved: the billing connector did not project the resolved record\n")
		}
	}
	return b.String()
}

// latticeContact reads contact id from lattice (on n1).
func (d *demo) latticeContact(ctx context.Context, id int) (contact, error) {
	out, err := d.lattice1(ctx, "get", "contact", fmt.Sprint(id), "-o", "json")
	if err != nil {
		return contact{}, err
	}
	rec := &pb.Record{}
	if err := unmarshal(out, rec); err != nil {
		return contact{}, err
	}
	c := contact{id: id}
	for _, f := range rec.GetFields() {
		v := f.GetValue().GetStringValue()
		switch f.GetName() {
		case "name":
			c.name = v
		case "email":
			c.email = v
		case "phone":
			c.phone = v
		}
	}
	return c, nil
}

// printTables prints both tables as they are in the databases.
func (d *demo) printTables(ctx context.Context) error {
	for _, t := range []struct {
		label string
		conn  *pgx.Conn
		q     string
	}{
		{"crm.customers", d.crmConn, "SELECT * FROM customers ORDER BY customer_id"},
		{"billing.clients", d.billingConn, "SELECT * FROM clients ORDER BY client_ref"},
	} {
		if err := d.printTable(ctx, t.label, t.conn, t.q); err != nil {
			return err
		}
	}
	return nil
}

func (d *demo) printTable(ctx context.Context, label string, conn *pgx.Conn, q string) error {
	ctx, cancel := context.WithTimeout(ctx, 5*time.Second)
	defer cancel()
	rows, err := conn.Query(ctx, q)
	if err != nil {
		return fmt.Errorf("%s: %w", label, err)
	}
	defer rows.Close()
	tw := tabwriter.NewWriter(d.out, 0, 4, 2, ' ', 0)
	fmt.Fprintf(tw, "  %s\n", label)
	var hdr []string
	for _, f := range rows.FieldDescriptions() {
		hdr = append(hdr, f.Name)
	}
	fmt.Fprintf(tw, "    %s\n", strings.Join(hdr, "\t"))
	n := 0
	for rows.Next() {
		vals, err := rows.Values()
		if err != nil {
			return err
		}
		cells := make([]string, len(vals))
		for i, v := range vals {
			if v == nil {
				cells[i] = "NULL"
			} else {
				cells[i] = fmt.Sprint(v)
			}
		}
		fmt.Fprintf(tw, "    %s\n", strings.Join(cells, "\t"))
		n++
	}
	if err := rows.Err(); err != nil {
		return err
	}
	if n == 0 {
		fmt.Fprintln(tw, "    (no rows)")
	}
	return tw.Flush()
}

// backToBack runs one UPDATE in crm and one in billing at the same moment,
// on connections already open, and returns how far apart they committed.
func (d *demo) backToBack(ctx context.Context, crmSQL, billingSQL string) (time.Duration, error) {
	ctx, cancel := context.WithTimeout(ctx, 5*time.Second)
	defer cancel()
	var wg sync.WaitGroup
	var errs [2]error
	var done [2]time.Time
	start := make(chan struct{})
	for i, s := range []struct {
		conn *pgx.Conn
		sql  string
	}{{d.crmConn, crmSQL}, {d.billingConn, billingSQL}} {
		wg.Add(1)
		go func() {
			defer wg.Done()
			<-start
			_, errs[i] = s.conn.Exec(ctx, s.sql)
			done[i] = time.Now()
		}()
	}
	close(start)
	wg.Wait()
	if err := errors.Join(errs[:]...); err != nil {
		return 0, err
	}
	gap := done[0].Sub(done[1])
	if gap < 0 {
		gap = -gap
	}
	return gap, nil
}

func (d *demo) exec(ctx context.Context, conn *pgx.Conn, sql string) error {
	ctx, cancel := context.WithTimeout(ctx, 5*time.Second)
	defer cancel()
	_, err := conn.Exec(ctx, sql)
	return err
}

// ---- the tour ----

func (d *demo) tour(ctx context.Context) error {
	want := []contact{
		{1, "Ann Lee", "ann@example.com", "555-0101"},
		{2, "Bob Stone", "bob@example.com", "555-0102"},
	}

	// a) initial snapshot.
	d.step("1. Initial snapshot", `
		The crm connector read the rows that were in crm before lattice started;
		lattice stored them as contact records and the billing connector wrote them
		into billing.clients, renaming the columns on the way.`)
	t0 := time.Now()
	if err := d.waitSame(ctx, "the two crm customers to appear in billing (initial snapshot)", want, nil); err != nil {
		return err
	}
	if err := d.printTables(ctx); err != nil {
		return err
	}
	d.say("  [in billing %.1f s after the cluster was ready]", time.Since(t0).Seconds())

	// b) one-sided update.
	d.step("2. An update in crm reaches billing", `
		UPDATE customers SET email_address = 'ann.lee@example.org' WHERE customer_id = 1
		The crm connector captures it from PostgreSQL's logical replication stream;
		the billing connector projects it.`)
	t0 = time.Now()
	if err := d.exec(ctx, d.crmConn, `UPDATE customers SET email_address = 'ann.lee@example.org' WHERE customer_id = 1`); err != nil {
		return fmt.Errorf("update crm: %w", err)
	}
	want[0].email = "ann.lee@example.org"
	if err := d.waitSame(ctx, "crm's email update to reach billing", want, func(ctx context.Context) string {
		return d.explainStep2(ctx) + d.commands([]string{"history", "contact", "1", "email"})(ctx)
	}); err != nil {
		return err
	}
	if err := d.printTables(ctx); err != nil {
		return err
	}
	d.say("  [synced in %.2f s]", time.Since(t0).Seconds())

	// c) concurrent edits of different fields.
	d.step("3. Concurrent edits of different fields", `
		At the same moment, crm changes Bob's phone and billing changes his name:
		  crm:     UPDATE customers SET phone = '555-0199' WHERE customer_id = 2
		  billing: UPDATE clients SET name = 'Robert Stone' WHERE client_ref = 2
		A row-level sync would let one row overwrite the other; lattice merges per
		field, so both edits survive on both sides.`)
	t0 = time.Now()
	gap, err := d.backToBack(ctx,
		`UPDATE customers SET phone = '555-0199' WHERE customer_id = 2`,
		`UPDATE clients SET name = 'Robert Stone' WHERE client_ref = 2`)
	if err != nil {
		return fmt.Errorf("concurrent updates: %w", err)
	}
	d.say("  (both UPDATEs committed %.1f ms apart%s)", float64(gap.Microseconds())/1000,
		map[bool]string{true: ", before either could be synced"}[gap < 50*time.Millisecond])
	want[1].phone, want[1].name = "555-0199", "Robert Stone"
	if err := d.waitSame(ctx, "both concurrent edits (crm phone, billing name) on both sides", want,
		d.explainStep3); err != nil {
		return err
	}
	if err := d.printTables(ctx); err != nil {
		return err
	}
	d.say("  [converged in %.2f s]", time.Since(t0).Seconds())

	// d) concurrent edits of one field.
	const crmName, billingName = "Ann Lee-Smith", "Annie Lee"
	d.step("4. Concurrent edits of the same field", `
		At the same moment, both systems rename customer 1:
		  crm:     UPDATE customers SET full_name = 'Ann Lee-Smith' WHERE customer_id = 1
		  billing: UPDATE clients SET name = 'Annie Lee' WHERE client_ref = 1
		name is last-writer-wins: every node picks the same winner, and both
		databases end up holding it. Nothing is lost silently: the history says
		which version won and which lost.`)
	t0 = time.Now()
	gap, err = d.backToBack(ctx,
		`UPDATE customers SET full_name = 'Ann Lee-Smith' WHERE customer_id = 1`,
		`UPDATE clients SET name = 'Annie Lee' WHERE client_ref = 1`)
	if err != nil {
		return fmt.Errorf("concurrent updates: %w", err)
	}
	d.say("  (both UPDATEs committed %.1f ms apart)", float64(gap.Microseconds())/1000)
	var winner string
	if err := d.waitFor(ctx, "the two names to converge (both captured, the winner in both databases)", func(ctx context.Context) (bool, string) {
		out, err := d.lattice1(ctx, "history", "contact", "1", "name", "-o", "json")
		if err != nil {
			return false, err.Error()
		}
		h := &pb.HistoryResponse{}
		if err := unmarshal(out, h); err != nil {
			return false, err.Error()
		}
		seen := map[string]bool{}
		won := ""
		for _, e := range h.GetEntries() {
			v := e.GetVersion().GetValue().GetStringValue()
			seen[v] = true
			if e.GetFate() == pb.Fate_FATE_WON {
				won = v
			}
		}
		crm, billing, err := d.both(ctx)
		if err != nil {
			return false, err.Error()
		}
		status := fmt.Sprintf("history has %q: %v, %q: %v, winner %q; crm %v, billing %v",
			crmName, seen[crmName], billingName, seen[billingName], won, crm, billing)
		if !seen[crmName] || !seen[billingName] || won == "" || len(crm) < 1 || len(billing) < 1 {
			return false, status
		}
		winner = won
		return crm[0].name == won && billing[0].name == won, status
	}, func(ctx context.Context) string {
		// Expect whichever name lattice resolved, the rest unchanged.
		w := slices.Clone(want)
		if l, err := d.latticeContact(ctx, 1); err == nil {
			w[0].name = l.name
		}
		return d.compare(ctx, w) + d.explainStep4(ctx) + d.commands([]string{"history", "contact", "1", "name"})(ctx)
	}); err != nil {
		return err
	}
	want[0].name = winner
	if err := d.waitSame(ctx, "both databases to hold the winner and the other fields unchanged", want,
		d.commands([]string{"history", "contact", "1", "name"})); err != nil {
		return err
	}
	if err := d.printTables(ctx); err != nil {
		return err
	}
	d.say("  [converged in %.2f s] Both databases hold %q.\n", time.Since(t0).Seconds(), winner)
	if err := d.show(ctx, "history", "contact", "1", "name"); err != nil {
		return err
	}
	d.say(`
  Reading the history: each row is one version of contact 1's name, with the
  origin that wrote it (postgres:crm or postgres:billing), its edit id and what
  its writer had seen (SAW). Two versions that did not see each other are
  concurrent: last-writer-wins keeps the later one ("won") and the other
  "lost to" it. A version its writer had seen is "superseded" instead.`)

	// e) the record as lattice holds it.
	d.step("5. The record in lattice", `
		lattice get shows each field's value, the edit that wrote it and whether
		the field had concurrent versions.`)
	if err := d.show(ctx, "get", "contact", "1"); err != nil {
		return err
	}
	return nil
}

// explainStep3 diagnoses a failed step 3: beyond the comparison, it checks
// whether lattice recorded a version of a field from a database whose
// UPDATE did not change that field (the UPDATEs then conflict on it).
func (d *demo) explainStep3(ctx context.Context) string {
	var b strings.Builder
	for _, c := range []struct{ field, origin, changed string }{
		{"phone", "postgres:billing", "name"},
		{"name", "postgres:crm", "phone"},
	} {
		out, err := d.lattice1(ctx, "history", "contact", "2", c.field, "-o", "json")
		if err != nil {
			continue
		}
		h := &pb.HistoryResponse{}
		if unmarshal(out, h) != nil {
			continue
		}
		for _, e := range h.GetEntries() {
			v := e.GetVersion()
			if v.GetOrigin() == c.origin && len(v.GetContext().GetEntries()) > 0 {
				fmt.Fprintf(&b, "  => %s's UPDATE changed only %s, yet lattice holds a version of %s from %s (value %q, edit %s:%d, %s):\n"+
					"     the connector captured the unchanged column as an edit, so the two UPDATEs conflict on every field and\n"+
					"     last-writer-wins keeps one whole row: a row-level overwrite, not a field-level merge.\n",
					strings.TrimPrefix(c.origin, "postgres:"), c.changed, c.field, c.origin, v.GetValue().GetStringValue(),
					v.GetDot().GetNode(), v.GetDot().GetSeq(), strings.ToLower(strings.TrimPrefix(e.GetFate().String(), "FATE_")))
			}
		}
	}
	return b.String() + d.commands([]string{"history", "contact", "2", "phone"}, []string{"history", "contact", "2", "name"})(ctx)
}

// explainStep4 diagnoses a failed step 4: a database whose own edit won but
// that still holds the losing value was overwritten by the projection of
// the losing edit after its UPDATE, and its connector did not project its
// own winning edit back.
func (d *demo) explainStep4(ctx context.Context) string {
	out, err := d.lattice1(ctx, "history", "contact", "1", "name", "-o", "json")
	if err != nil {
		return ""
	}
	h := &pb.HistoryResponse{}
	if unmarshal(out, h) != nil {
		return ""
	}
	var won, lost *pb.Version
	for _, e := range h.GetEntries() {
		switch e.GetFate() {
		case pb.Fate_FATE_WON:
			won = e.GetVersion()
		case pb.Fate_FATE_LOST:
			if lost == nil {
				lost = e.GetVersion()
			}
		}
	}
	crm, billing, err := d.both(ctx)
	if err != nil || won == nil || lost == nil || len(crm) == 0 || len(billing) == 0 {
		return ""
	}
	holds := map[string]string{"postgres:crm": crm[0].name, "postgres:billing": billing[0].name}
	db := strings.TrimPrefix(won.GetOrigin(), "postgres:")
	if held, ok := holds[won.GetOrigin()]; ok && held == lost.GetValue().GetStringValue() {
		return fmt.Sprintf("  => %s's own edit %s:%d (%q) won, yet %s holds the losing value %q: the projection of the losing edit\n"+
			"     overwrote %s's UPDATE after it committed, and the %s connector then skipped its own winning edit as an\n"+
			"     echo instead of writing it back, so %s and lattice stay diverged.\n",
			db, won.GetDot().GetNode(), won.GetDot().GetSeq(), won.GetValue().GetStringValue(), db, held, db, db, db)
	}
	return ""
}

// explainStep2 diagnoses a failed step 2: billing never edits contact 1's
// email natively, so a version of it from postgres:billing is lattice's own
// projection captured back as if it were a new edit.
func (d *demo) explainStep2(ctx context.Context) string {
	out, err := d.lattice1(ctx, "history", "contact", "1", "email", "-o", "json")
	if err != nil {
		return ""
	}
	h := &pb.HistoryResponse{}
	if unmarshal(out, h) != nil {
		return ""
	}
	var b strings.Builder
	for _, e := range h.GetEntries() {
		v := e.GetVersion()
		if v.GetOrigin() != "postgres:billing" {
			continue
		}
		fmt.Fprintf(&b, "  => nobody edited billing's copy of contact 1's email, yet lattice holds a version of it from postgres:billing\n"+
			"     (%q, edit %s:%d, saw %s, %s): the billing connector captured a row that lattice itself had\n"+
			"     projected into billing as a new edit (for example, its initial snapshot re-read rows projected before\n"+
			"     its replication slot existed); an edit that saw nothing is concurrent with every other one and may win.\n",
			v.GetValue().GetStringValue(), v.GetDot().GetNode(), v.GetDot().GetSeq(), vvText(v.GetContext()),
			strings.ToLower(strings.TrimPrefix(e.GetFate().String(), "FATE_")))
	}
	return b.String()
}

// vvText renders a version vector as the CLI does: {n1:3 n2:1}.
func vvText(v *pb.VersionVector) string {
	var parts []string
	for n, s := range v.GetEntries() {
		parts = append(parts, fmt.Sprintf("%s:%d", n, s))
	}
	slices.Sort(parts)
	return "{" + strings.Join(parts, " ") + "}"
}
