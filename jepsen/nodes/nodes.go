// Package nodes runs the lattice node processes of one fault-injection run
// and carries out what faults do to them: SIGKILL and restart, SIGSTOP and
// SIGCONT, packet drops between nodes (iptables rules) and clock offsets
// (the agent's test-only --clock-offset-file).
//
// It is cluster/clustertest with errors instead of testing.TB: faults act
// from their own goroutines in the middle of a run, and a node that fails to
// restart is a finding to report, not a reason to abort the harness.
// Addresses, the network namespace and the binary come from clustertest:
// node i listens on 127.0.0.(10+i), and Drop needs the private network
// namespace (clustertest.EnterNetNS), so no rule ever touches the host.
package nodes

import (
	"context"
	"errors"
	"fmt"
	"log/slog"
	"os"
	"os/exec"
	"path/filepath"
	"strconv"
	"strings"
	"sync"
	"syscall"
	"time"

	"google.golang.org/grpc"
	"google.golang.org/grpc/backoff"
	"google.golang.org/grpc/credentials/insecure"

	pb "github.com/lattice-sync/lattice/api/lattice/v1"
	"github.com/lattice-sync/lattice/cluster/clustertest"
)

// Config configures a cluster of node processes.
type Config struct {
	// Bin is the lattice binary (clustertest.Build makes one).
	Bin string
	// Dir holds the nodes' data, logs and clock files.
	Dir string
	// N is the number of nodes (default 3).
	N int
	// Schema is the entity configuration (YAML) every node starts with.
	Schema string
	// MaxOffset is passed to every node as --max-offset (default 500ms).
	MaxOffset time.Duration
	// Args are extra agent flags for every node.
	Args []string
	// StartTimeout bounds how long a node may take to answer after a start
	// or restart (default 20 s).
	StartTimeout time.Duration
	// OnClock, when set, is called after every clock offset change.
	OnClock func(node string, offset time.Duration)
	// Logger receives the runner's logs (default: discard).
	Logger *slog.Logger
}

// Cluster is a set of node processes. Its methods are safe for concurrent use.
type Cluster struct {
	cfg   Config
	Nodes []*Node
	netMu sync.Mutex // serialises iptables calls
}

// Node is one agent process and its addresses.
type Node struct {
	ID, IP                   string
	GRPC, HTTP, Gossip, Raft string
	DataDir, ClockFile, Log  string
	conn                     *grpc.ClientConn

	c  *Cluster
	mu struct {
		sync.Mutex
		cmd    *exec.Cmd
		done   chan struct{}
		paused bool
		starts int
		offset time.Duration
	}
}

// ErrNoNetNS is returned by Drop outside the private network namespace.
var ErrNoNetNS = errors.New("packet drops need root and a private network namespace (clustertest.EnterNetNS)")

// Start launches cfg.N nodes, the first bootstrapping the cluster and the
// others joining it, and waits until every node sees every other alive.
func Start(ctx context.Context, cfg Config) (*Cluster, error) {
	if cfg.N <= 0 {
		cfg.N = 3
	}
	if cfg.MaxOffset <= 0 {
		cfg.MaxOffset = 500 * time.Millisecond
	}
	if cfg.StartTimeout <= 0 {
		cfg.StartTimeout = 20 * time.Second
	}
	if cfg.Logger == nil {
		cfg.Logger = slog.New(slog.DiscardHandler)
	}
	if cfg.Bin == "" || cfg.Dir == "" {
		return nil, errors.New("nodes: Bin and Dir are required")
	}
	if err := os.MkdirAll(cfg.Dir, 0o755); err != nil {
		return nil, err
	}
	if cfg.Schema != "" {
		if err := os.WriteFile(filepath.Join(cfg.Dir, "schema.yaml"), []byte(cfg.Schema), 0o644); err != nil {
			return nil, err
		}
	}
	c := &Cluster{cfg: cfg}
	for i := 1; i <= cfg.N; i++ {
		ip := fmt.Sprintf("127.0.0.%d", 10+i)
		id := fmt.Sprintf("n%d", i)
		nd := &Node{ID: id, IP: ip, GRPC: ip + ":7101", HTTP: ip + ":7201", Gossip: ip + ":7301", Raft: ip + ":7401",
			DataDir: filepath.Join(cfg.Dir, id), ClockFile: filepath.Join(cfg.Dir, id+".clock"),
			Log: filepath.Join(cfg.Dir, id+".log"), c: c}
		// Reconnect quickly after a restart (gRPC's default backoff grows
		// to two minutes: clients would see a restarted node as down).
		conn, err := grpc.NewClient(nd.GRPC, grpc.WithTransportCredentials(insecure.NewCredentials()),
			grpc.WithConnectParams(grpc.ConnectParams{MinConnectTimeout: time.Second,
				Backoff: backoff.Config{BaseDelay: 50 * time.Millisecond, Multiplier: 1.6, Jitter: 0.2, MaxDelay: time.Second}}))
		if err != nil {
			c.Close()
			return nil, err
		}
		nd.conn = conn
		c.Nodes = append(c.Nodes, nd)
		if err := nd.start(ctx); err != nil {
			c.Close()
			return nil, err
		}
	}
	if err := c.WaitMembers(ctx, 20*time.Second); err != nil {
		c.Close()
		return nil, err
	}
	return c, nil
}

// Node returns the node with id, or nil.
func (c *Cluster) Node(id string) *Node {
	for _, nd := range c.Nodes {
		if nd.ID == id {
			return nd
		}
	}
	return nil
}

func (c *Cluster) node(id string) (*Node, error) {
	if nd := c.Node(id); nd != nil {
		return nd, nil
	}
	return nil, fmt.Errorf("no node %q", id)
}

// IDs returns the node ids in order.
func (c *Cluster) IDs() []string {
	out := make([]string, len(c.Nodes))
	for i, nd := range c.Nodes {
		out[i] = nd.ID
	}
	return out
}

// Conn is the node's gRPC client connection (shared; do not close).
func (nd *Node) Conn() *grpc.ClientConn { return nd.conn }

// Records returns a Records client for the node.
func (nd *Node) Records() pb.RecordsClient { return pb.NewRecordsClient(nd.conn) }

// Cluster returns a Cluster client for the node.
func (nd *Node) Cluster() pb.ClusterClient { return pb.NewClusterClient(nd.conn) }

func (nd *Node) start(ctx context.Context) error {
	c := nd.c
	args := []string{"agent", "--node-id", nd.ID, "--data-dir", nd.DataDir, "--grpc-addr", nd.GRPC,
		"--http-addr", nd.HTTP, "--gossip-addr", nd.Gossip, "--raft-addr", nd.Raft, "--log-level", "info",
		"--max-offset", c.cfg.MaxOffset.String(), "--clock-offset-file", nd.ClockFile}
	if c.cfg.Schema != "" {
		args = append(args, "--config", filepath.Join(c.cfg.Dir, "schema.yaml"))
	}
	nd.mu.Lock()
	first := nd.mu.starts == 0
	nd.mu.Unlock()
	// The first start of n1 bootstraps and the first start of the others
	// joins it; every restart joins every other node (a restarted n1 finds
	// its way back without waiting for the others' rejoin loops).
	for _, o := range c.Nodes {
		switch {
		case o == nd, first && nd == c.Nodes[0], first && o != c.Nodes[0]:
			continue
		}
		args = append(args, "--join", o.Gossip)
	}
	args = append(args, c.cfg.Args...)
	logf, err := os.OpenFile(nd.Log, os.O_CREATE|os.O_WRONLY|os.O_APPEND, 0o644)
	if err != nil {
		return err
	}
	fmt.Fprintf(logf, "---- harness: start %s at %s: %s\n", nd.ID, time.Now().UTC().Format(time.RFC3339Nano), strings.Join(args, " "))
	cmd := exec.Command(c.cfg.Bin, args...)
	cmd.Stdout, cmd.Stderr = logf, logf
	if err := cmd.Start(); err != nil {
		logf.Close()
		return fmt.Errorf("start %s: %w", nd.ID, err)
	}
	done := make(chan struct{})
	go func() { _ = cmd.Wait(); logf.Close(); close(done) }()
	nd.mu.Lock()
	nd.mu.cmd, nd.mu.done, nd.mu.paused = cmd, done, false
	nd.mu.starts++
	nd.mu.Unlock()
	c.cfg.Logger.Info("node started", "node", nd.ID, "pid", cmd.Process.Pid)
	// Wait until it answers.
	deadline := time.Now().Add(c.cfg.StartTimeout)
	for {
		sctx, cancel := context.WithTimeout(ctx, time.Second)
		_, err := nd.Cluster().Status(sctx, &pb.StatusRequest{})
		cancel()
		if err == nil {
			return nil
		}
		select {
		case <-done:
			return fmt.Errorf("%s exited at start (see %s)", nd.ID, nd.Log)
		case <-ctx.Done():
			return ctx.Err()
		default:
		}
		if time.Now().After(deadline) {
			return fmt.Errorf("%s did not answer within %s after start: %v (see %s)", nd.ID, c.cfg.StartTimeout, err, nd.Log)
		}
		time.Sleep(50 * time.Millisecond)
	}
}

// Running reports whether the node's process is alive (paused counts).
func (nd *Node) Running() bool {
	nd.mu.Lock()
	defer nd.mu.Unlock()
	return nd.running()
}

func (nd *Node) running() bool {
	if nd.mu.cmd == nil {
		return false
	}
	select {
	case <-nd.mu.done:
		return false
	default:
		return true
	}
}

// Paused reports whether the node is stopped with SIGSTOP.
func (nd *Node) Paused() bool {
	nd.mu.Lock()
	defer nd.mu.Unlock()
	return nd.mu.paused && nd.running()
}

// Starts counts the node's process starts (restarts + 1).
func (nd *Node) Starts() int {
	nd.mu.Lock()
	defer nd.mu.Unlock()
	return nd.mu.starts
}

// Kill sends SIGKILL and waits for the process to die.
func (c *Cluster) Kill(id string) error {
	nd, err := c.node(id)
	if err != nil {
		return err
	}
	nd.mu.Lock()
	cmd, done, alive := nd.mu.cmd, nd.mu.done, nd.running()
	nd.mu.paused = false
	nd.mu.Unlock()
	if !alive {
		return nil
	}
	_ = cmd.Process.Signal(syscall.SIGKILL)
	<-done
	c.cfg.Logger.Info("node killed", "node", id)
	return nil
}

// Restart starts a killed node again on its data directory and waits until
// it answers. A running node is left alone.
func (c *Cluster) Restart(ctx context.Context, id string) error {
	nd, err := c.node(id)
	if err != nil {
		return err
	}
	if nd.Running() {
		return nil
	}
	return nd.start(ctx)
}

// Pause sends SIGSTOP.
func (c *Cluster) Pause(id string) error { return c.signal(id, syscall.SIGSTOP, true) }

// Resume sends SIGCONT.
func (c *Cluster) Resume(id string) error { return c.signal(id, syscall.SIGCONT, false) }

func (c *Cluster) signal(id string, sig syscall.Signal, paused bool) error {
	nd, err := c.node(id)
	if err != nil {
		return err
	}
	nd.mu.Lock()
	defer nd.mu.Unlock()
	if !nd.running() {
		return nil
	}
	if err := nd.mu.cmd.Process.Signal(sig); err != nil {
		return fmt.Errorf("%s %s: %w", sig, id, err)
	}
	nd.mu.paused = paused
	c.cfg.Logger.Info("node signalled", "node", id, "signal", sig.String())
	return nil
}

// Drop drops every packet (TCP and UDP) sent from node from to node to.
// Connections between them stall in both directions (no acknowledgements
// come back), but connectionless gossip from to to from still arrives.
func (c *Cluster) Drop(from, to string) error {
	if !clustertest.InNetNS() {
		return ErrNoNetNS
	}
	a, err := c.node(from)
	if err != nil {
		return err
	}
	b, err := c.node(to)
	if err != nil {
		return err
	}
	c.netMu.Lock()
	defer c.netMu.Unlock()
	if out, err := exec.Command("iptables", "-A", "INPUT", "-s", a.IP, "-d", b.IP, "-j", "DROP").CombinedOutput(); err != nil {
		return fmt.Errorf("iptables: %v: %s", err, out)
	}
	c.cfg.Logger.Info("dropping packets", "from", from, "to", to)
	return nil
}

// Heal removes every packet drop.
func (c *Cluster) Heal() error {
	if !clustertest.InNetNS() {
		return nil
	}
	c.netMu.Lock()
	defer c.netMu.Unlock()
	if out, err := exec.Command("iptables", "-F", "INPUT").CombinedOutput(); err != nil {
		return fmt.Errorf("iptables -F: %v: %s", err, out)
	}
	c.cfg.Logger.Info("network healed")
	return nil
}

// SetClockOffset makes the node's HLC physical clock run offset ahead
// (negative: behind) of real time, within ~100 ms (the agent re-reads its
// clock file every 100 ms). It persists across restarts until changed.
func (c *Cluster) SetClockOffset(id string, offset time.Duration) error {
	nd, err := c.node(id)
	if err != nil {
		return err
	}
	tmp := nd.ClockFile + ".tmp"
	if err := os.WriteFile(tmp, []byte(strconv.FormatInt(offset.Milliseconds(), 10)+"\n"), 0o644); err != nil {
		return err
	}
	if err := os.Rename(tmp, nd.ClockFile); err != nil {
		return err
	}
	nd.mu.Lock()
	nd.mu.offset = offset
	nd.mu.Unlock()
	if c.cfg.OnClock != nil {
		c.cfg.OnClock(id, offset)
	}
	return nil
}

// ClockOffset returns the offset last set on the node.
func (c *Cluster) ClockOffset(id string) time.Duration {
	nd := c.Node(id)
	if nd == nil {
		return 0
	}
	nd.mu.Lock()
	defer nd.mu.Unlock()
	return nd.mu.offset
}

// HealAll undoes every fault: the network heals, paused nodes continue,
// clocks lose their offsets and killed nodes restart.
func (c *Cluster) HealAll(ctx context.Context) error {
	var errs []error
	errs = append(errs, c.Heal())
	for _, nd := range c.Nodes {
		if nd.Paused() {
			errs = append(errs, c.Resume(nd.ID))
		}
		if c.ClockOffset(nd.ID) != 0 {
			errs = append(errs, c.SetClockOffset(nd.ID, 0))
		}
	}
	for _, nd := range c.Nodes {
		if !nd.Running() {
			errs = append(errs, c.Restart(ctx, nd.ID))
		}
	}
	return errors.Join(errs...)
}

// WaitMembers waits until every running node sees every running node alive.
func (c *Cluster) WaitMembers(ctx context.Context, timeout time.Duration) error {
	deadline := time.Now().Add(timeout)
	for {
		why := c.membersAgree(ctx)
		if why == "" {
			return nil
		}
		if time.Now().After(deadline) {
			return fmt.Errorf("members did not agree within %s: %s", timeout, why)
		}
		select {
		case <-ctx.Done():
			return ctx.Err()
		case <-time.After(100 * time.Millisecond):
		}
	}
}

func (c *Cluster) membersAgree(ctx context.Context) string {
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
		mctx, cancel := context.WithTimeout(ctx, time.Second)
		resp, err := nd.Cluster().Members(mctx, &pb.MembersRequest{})
		cancel()
		if err != nil {
			return fmt.Sprintf("%s: %v", nd.ID, err)
		}
		alive := 0
		for _, m := range resp.GetMembers() {
			if m.GetState() == "alive" {
				alive++
			}
		}
		if alive != running {
			return fmt.Sprintf("%s sees %d alive of %d running", nd.ID, alive, running)
		}
	}
	return ""
}

// Converged is the outcome of WaitConverged.
type Converged struct {
	// Took is how long the nodes took to agree.
	Took time.Duration
	// Digests and Applied are each node's final digest and applied vector.
	Digests map[string]string
	Applied map[string]map[string]uint64
	Records uint64
}

// WaitConverged waits until every node reports the same digest of every
// record and its history and the same applied vector. On timeout it returns
// an error saying what each node last reported.
func (c *Cluster) WaitConverged(ctx context.Context, timeout time.Duration) (*Converged, error) {
	start := time.Now()
	deadline := start.Add(timeout)
	var last string
	for {
		out := &Converged{Digests: map[string]string{}, Applied: map[string]map[string]uint64{}}
		same := true
		var lines []string
		var first *pb.StatusResponse
		for _, nd := range c.Nodes {
			sctx, cancel := context.WithTimeout(ctx, 30*time.Second)
			st, err := nd.Cluster().Status(sctx, &pb.StatusRequest{Digest: true})
			cancel()
			if err != nil {
				same = false
				lines = append(lines, fmt.Sprintf("%s: %v", nd.ID, err))
				continue
			}
			out.Digests[nd.ID] = st.GetDigest()
			out.Applied[nd.ID] = st.GetApplied().GetEntries()
			out.Records = st.GetRecords()
			lines = append(lines, fmt.Sprintf("%s: %d records digest %.12s applied %v", nd.ID, st.GetRecords(), st.GetDigest(), st.GetApplied().GetEntries()))
			if first == nil {
				first = st
			} else if st.GetDigest() != first.GetDigest() || !sameVV(st.GetApplied().GetEntries(), first.GetApplied().GetEntries()) {
				same = false
			}
		}
		last = strings.Join(lines, "; ")
		if same && len(out.Digests) == len(c.Nodes) {
			out.Took = time.Since(start)
			return out, nil
		}
		if time.Now().After(deadline) {
			return nil, fmt.Errorf("not converged within %s: %s", timeout, last)
		}
		select {
		case <-ctx.Done():
			return nil, ctx.Err()
		case <-time.After(200 * time.Millisecond):
		}
	}
}

func sameVV(a, b map[string]uint64) bool {
	if len(a) != len(b) {
		return false
	}
	for k, v := range a {
		if b[k] != v {
			return false
		}
	}
	return true
}

// Close stops every node (SIGCONT first for paused ones, then SIGTERM, then
// SIGKILL after 20 s), flushes the packet drops and closes the connections.
func (c *Cluster) Close() error {
	var wg sync.WaitGroup
	for _, nd := range c.Nodes {
		nd.mu.Lock()
		cmd, done, alive, paused := nd.mu.cmd, nd.mu.done, nd.running(), nd.mu.paused
		nd.mu.Unlock()
		if !alive {
			continue
		}
		wg.Add(1)
		go func() {
			defer wg.Done()
			if paused {
				_ = cmd.Process.Signal(syscall.SIGCONT)
			}
			_ = cmd.Process.Signal(syscall.SIGTERM)
			select {
			case <-done:
			case <-time.After(20 * time.Second):
				c.cfg.Logger.Warn("node did not stop within 20 s after SIGTERM; killing it", "node", nd.ID)
				_ = cmd.Process.Kill()
				<-done
			}
		}()
	}
	wg.Wait()
	err := c.Heal()
	for _, nd := range c.Nodes {
		if nd.conn != nil {
			nd.conn.Close()
		}
	}
	return err
}
