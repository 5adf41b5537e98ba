// Package clustertest runs real lattice node processes for tests: each node
// on its own loopback address (127.0.0.11, .12, ...), with Kill (SIGKILL),
// Restart, Partition and Heal (iptables rules inside a private network
// namespace) and WaitConverged (equal digests of every record and its
// history on every node).
//
// Partitions need root and a private network namespace: call
// EnterNetNS from TestMain. Outside one, Partition fails the test rather
// than touch the host's firewall.
package clustertest

import (
	"bytes"
	"context"
	"fmt"
	"os"
	"os/exec"
	"path/filepath"
	"strings"
	"sync"
	"syscall"
	"testing"
	"time"

	"google.golang.org/grpc"
	"google.golang.org/grpc/credentials/insecure"

	pb "github.com/lattice-sync/lattice/api/lattice/v1"
)

const netnsEnv = "LATTICE_TEST_NETNS"

// EnterNetNS re-executes the test binary inside a new network namespace
// (unshare -n) when running as root with unshare and iptables available, so
// firewall rules touch nothing outside. It returns false when it cannot (the
// caller runs the tests in place; Partition then fails). Call it first in
// TestMain; when it re-executes, it exits with the child's status.
func EnterNetNS() bool {
	if os.Getenv(netnsEnv) == "1" {
		if out, err := exec.Command("ip", "link", "set", "lo", "up").CombinedOutput(); err != nil {
			fmt.Fprintf(os.Stderr, "clustertest: bring lo up: %v: %s\n", err, out)
			os.Exit(2)
		}
		return true
	}
	if os.Geteuid() != 0 {
		return false
	}
	for _, tool := range []string{"unshare", "iptables", "ip"} {
		if _, err := exec.LookPath(tool); err != nil {
			return false
		}
	}
	cmd := exec.Command("unshare", append([]string{"-n", "--", os.Args[0]}, os.Args[1:]...)...)
	cmd.Env = append(os.Environ(), netnsEnv+"=1")
	cmd.Stdin, cmd.Stdout, cmd.Stderr = os.Stdin, os.Stdout, os.Stderr
	if err := cmd.Run(); err != nil {
		if ee, ok := err.(*exec.ExitError); ok {
			os.Exit(ee.ExitCode())
		}
		fmt.Fprintf(os.Stderr, "clustertest: unshare: %v\n", err)
		os.Exit(2)
	}
	os.Exit(0)
	return true
}

// InNetNS reports whether the process runs in the private namespace.
func InNetNS() bool { return os.Getenv(netnsEnv) == "1" }

// Build compiles the lattice binary into dir and returns its path.
func Build(dir string) (string, error) {
	bin := filepath.Join(dir, "lattice")
	cmd := exec.Command("go", "build", "-o", bin, "github.com/lattice-sync/lattice/cmd/lattice")
	out, err := cmd.CombinedOutput()
	if err != nil {
		return "", fmt.Errorf("go build: %v\n%s", err, out)
	}
	return bin, nil
}

// Options configure a cluster.
type Options struct {
	// Config is the entity configuration (YAML); empty uses the quickstart.
	Config string
	// Args are extra agent flags for every node.
	Args []string
}

// Cluster is a set of node processes.
type Cluster struct {
	t     testing.TB
	bin   string
	dir   string
	opts  Options
	Nodes []*Node
}

// Node is one agent process.
type Node struct {
	ID, IP                   string
	GRPC, HTTP, Gossip, Raft string
	DataDir                  string
	c                        *Cluster
	cmd                      *exec.Cmd
	done                     chan struct{}
	logs                     *syncBuffer
	conn                     *grpc.ClientConn
}

type syncBuffer struct {
	mu sync.Mutex
	b  bytes.Buffer
}

func (s *syncBuffer) Write(p []byte) (int, error) {
	s.mu.Lock()
	defer s.mu.Unlock()
	return s.b.Write(p)
}

func (s *syncBuffer) String() string {
	s.mu.Lock()
	defer s.mu.Unlock()
	return s.b.String()
}

// Start runs n nodes that form one cluster and waits until all see each other.
func Start(t testing.TB, bin string, n int, opts Options) *Cluster {
	t.Helper()
	c := &Cluster{t: t, bin: bin, dir: t.TempDir(), opts: opts}
	if opts.Config != "" {
		if err := os.WriteFile(filepath.Join(c.dir, "config.yaml"), []byte(opts.Config), 0o644); err != nil {
			t.Fatal(err)
		}
	}
	t.Cleanup(c.stop)
	for i := 0; i < n; i++ {
		c.AddNode()
	}
	c.WaitMembers(10 * time.Second)
	return c
}

// AddNode starts one more node that joins the first.
func (c *Cluster) AddNode() *Node {
	c.t.Helper()
	i := len(c.Nodes) + 1
	ip := fmt.Sprintf("127.0.0.%d", 10+i)
	nd := &Node{ID: fmt.Sprintf("n%d", i), IP: ip, GRPC: ip + ":7101", HTTP: ip + ":7201", Gossip: ip + ":7301",
		Raft: ip + ":7401", DataDir: filepath.Join(c.dir, fmt.Sprintf("n%d", i)), c: c, logs: &syncBuffer{}}
	conn, err := grpc.NewClient(nd.GRPC, grpc.WithTransportCredentials(insecure.NewCredentials()))
	if err != nil {
		c.t.Fatal(err)
	}
	nd.conn = conn
	c.Nodes = append(c.Nodes, nd)
	nd.start()
	return nd
}

func (nd *Node) start() {
	c := nd.c
	args := []string{"agent", "--node-id", nd.ID, "--data-dir", nd.DataDir, "--grpc-addr", nd.GRPC,
		"--http-addr", nd.HTTP, "--gossip-addr", nd.Gossip, "--raft-addr", nd.Raft, "--log-level", "info"}
	if c.opts.Config != "" {
		args = append(args, "--config", filepath.Join(c.dir, "config.yaml"))
	}
	if nd != c.Nodes[0] {
		args = append(args, "--join", c.Nodes[0].Gossip)
	}
	args = append(args, c.opts.Args...)
	nd.cmd = exec.Command(c.bin, args...)
	nd.cmd.Stdout, nd.cmd.Stderr = nd.logs, nd.logs
	if err := nd.cmd.Start(); err != nil {
		c.t.Fatalf("start %s: %v", nd.ID, err)
	}
	nd.done = make(chan struct{})
	go func(cmd *exec.Cmd, done chan struct{}) { _ = cmd.Wait(); close(done) }(nd.cmd, nd.done)
	// Wait until it answers.
	deadline := time.Now().Add(15 * time.Second)
	for {
		ctx, cancel := context.WithTimeout(context.Background(), time.Second)
		_, err := nd.Cluster().Status(ctx, &pb.StatusRequest{})
		cancel()
		if err == nil {
			return
		}
		select {
		case <-nd.done:
			c.t.Fatalf("%s exited at start:\n%s", nd.ID, nd.logs)
		default:
		}
		if time.Now().After(deadline) {
			c.t.Fatalf("%s did not answer within 15 s: %v\n%s", nd.ID, err, nd.logs)
		}
		time.Sleep(50 * time.Millisecond)
	}
}

// Records returns a Records client for the node.
func (nd *Node) Records() pb.RecordsClient { return pb.NewRecordsClient(nd.conn) }

// Cluster returns a Cluster client for the node.
func (nd *Node) Cluster() pb.ClusterClient { return pb.NewClusterClient(nd.conn) }

// Pid returns the node's process id (0 if not running).
func (nd *Node) Pid() int {
	if !nd.Running() {
		return 0
	}
	return nd.cmd.Process.Pid
}

// Logs returns what the node printed.
func (nd *Node) Logs() string { return nd.logs.String() }

// Running reports whether the process is alive.
func (nd *Node) Running() bool {
	select {
	case <-nd.done:
		return false
	default:
		return nd.cmd != nil
	}
}

// Kill sends SIGKILL to the node and waits for it to die.
func (c *Cluster) Kill(nd *Node) {
	c.t.Helper()
	if !nd.Running() {
		return
	}
	_ = nd.cmd.Process.Signal(syscall.SIGKILL)
	<-nd.done
}

// Stop sends SIGTERM and waits (graceful shutdown).
func (c *Cluster) Stop(nd *Node) {
	if !nd.Running() {
		return
	}
	_ = nd.cmd.Process.Signal(syscall.SIGTERM)
	select {
	case <-nd.done:
	case <-time.After(20 * time.Second):
		// SIGQUIT makes the Go runtime print every goroutine's stack: what
		// the shutdown waits for.
		_ = nd.cmd.Process.Signal(syscall.SIGQUIT)
		select {
		case <-nd.done:
		case <-time.After(5 * time.Second):
			_ = nd.cmd.Process.Kill()
			<-nd.done
		}
		logs := nd.Logs()
		if i := strings.LastIndex(logs, "SIGQUIT"); i >= 0 {
			logs = logs[i:]
		}
		c.t.Errorf("%s did not stop within 20 s after SIGTERM; its goroutines when it was killed:\n%s", nd.ID, logs)
	}
}

// Restart starts a stopped or killed node again on its data directory.
func (c *Cluster) Restart(nd *Node) {
	c.t.Helper()
	if nd.Running() {
		c.t.Fatalf("restart %s: still running", nd.ID)
	}
	nd.start()
}

func (c *Cluster) stop() {
	for _, nd := range c.Nodes {
		c.Stop(nd)
		nd.conn.Close()
	}
	if InNetNS() {
		_ = exec.Command("iptables", "-F", "INPUT").Run()
	}
	if c.t.Failed() {
		for _, nd := range c.Nodes {
			c.t.Logf("---- logs of %s ----\n%s", nd.ID, tail(nd.Logs(), 60))
		}
	}
}

func tail(s string, lines int) string {
	parts := strings.Split(s, "\n")
	if len(parts) > lines {
		parts = parts[len(parts)-lines:]
	}
	return strings.Join(parts, "\n")
}

// Partition cuts all traffic (TCP and UDP) between the groups; nodes within
// a group still talk. It needs the private network namespace.
func (c *Cluster) Partition(groups ...[]*Node) {
	c.t.Helper()
	if !InNetNS() {
		c.t.Fatal("Partition needs root and a private network namespace (clustertest.EnterNetNS in TestMain)")
	}
	for i, g := range groups {
		for j, h := range groups {
			if i == j {
				continue
			}
			for _, a := range g {
				for _, b := range h {
					if out, err := exec.Command("iptables", "-A", "INPUT", "-s", a.IP, "-d", b.IP, "-j", "DROP").CombinedOutput(); err != nil {
						c.t.Fatalf("iptables: %v: %s", err, out)
					}
				}
			}
		}
	}
}

// Heal removes every partition.
func (c *Cluster) Heal() {
	c.t.Helper()
	if out, err := exec.Command("iptables", "-F", "INPUT").CombinedOutput(); err != nil {
		c.t.Fatalf("iptables -F: %v: %s", err, out)
	}
}

// WaitMembers waits until every running node sees every running node alive.
func (c *Cluster) WaitMembers(timeout time.Duration) {
	c.t.Helper()
	deadline := time.Now().Add(timeout)
	for {
		ok, why := c.membersAgree()
		if ok {
			return
		}
		if time.Now().After(deadline) {
			c.t.Fatalf("members did not agree within %s: %s", timeout, why)
		}
		time.Sleep(100 * time.Millisecond)
	}
}

func (c *Cluster) membersAgree() (bool, string) {
	running := 0
	for _, nd := range c.Nodes {
		if nd.Running() {
			running++
		}
	}
	for _, nd := range c.Nodes {
		if !nd.Running() {
			continue
		}
		ctx, cancel := context.WithTimeout(context.Background(), time.Second)
		resp, err := nd.Cluster().Members(ctx, &pb.MembersRequest{})
		cancel()
		if err != nil {
			return false, fmt.Sprintf("%s: %v", nd.ID, err)
		}
		alive := 0
		for _, m := range resp.GetMembers() {
			if m.GetState() == "alive" {
				alive++
			}
		}
		if alive != running {
			return false, fmt.Sprintf("%s sees %d alive of %d running", nd.ID, alive, running)
		}
	}
	return true, ""
}

// Digest returns a node's state digest, record count and applied vector.
func (nd *Node) Digest() (*pb.StatusResponse, error) {
	ctx, cancel := context.WithTimeout(context.Background(), 30*time.Second)
	defer cancel()
	return nd.Cluster().Status(ctx, &pb.StatusRequest{Digest: true})
}

// WaitConverged waits until every running node reports the same digest of
// every record and its history, and the same applied vector, and returns
// how long it took.
func (c *Cluster) WaitConverged(timeout time.Duration) time.Duration {
	c.t.Helper()
	start := time.Now()
	deadline := start.Add(timeout)
	var last string
	for {
		var first *pb.StatusResponse
		same := true
		var lines []string
		for _, nd := range c.Nodes {
			if !nd.Running() {
				continue
			}
			st, err := nd.Digest()
			if err != nil {
				same = false
				lines = append(lines, fmt.Sprintf("%s: %v", nd.ID, err))
				continue
			}
			lines = append(lines, fmt.Sprintf("%s: %d records digest %.12s applied %v", nd.ID, st.GetRecords(), st.GetDigest(), st.GetApplied().GetEntries()))
			if first == nil {
				first = st
			} else if st.GetDigest() != first.GetDigest() || !sameVV(st.GetApplied(), first.GetApplied()) {
				same = false
			}
		}
		last = strings.Join(lines, "\n  ")
		if same && first != nil {
			return time.Since(start)
		}
		if time.Now().After(deadline) {
			c.t.Fatalf("not converged within %s:\n  %s", timeout, last)
		}
		time.Sleep(100 * time.Millisecond)
	}
}

func sameVV(a, b *pb.VersionVector) bool {
	if len(a.GetEntries()) != len(b.GetEntries()) {
		return false
	}
	for k, v := range a.GetEntries() {
		if b.GetEntries()[k] != v {
			return false
		}
	}
	return true
}

// Main is a TestMain for packages that run node processes: it enters a
// private network namespace (when it can), builds the lattice binary into a
// temporary directory, stores its path in *bin, runs the tests and exits.
func Main(m *testing.M, bin *string) {
	EnterNetNS()
	dir, err := os.MkdirTemp("", "lattice-test-bin-")
	if err != nil {
		fmt.Fprintln(os.Stderr, err)
		os.Exit(2)
	}
	if *bin, err = Build(dir); err != nil {
		fmt.Fprintln(os.Stderr, err)
		os.RemoveAll(dir)
		os.Exit(2)
	}
	code := m.Run()
	os.RemoveAll(dir)
	os.Exit(code)
}
