package cluster

import (
	"context"
	"errors"
	"fmt"
	"log/slog"
	"net"
	"os"
	"sort"
	"sync"
	"sync/atomic"
	"time"

	"github.com/hashicorp/memberlist"
	"github.com/hashicorp/raft"
	"google.golang.org/grpc"
	"google.golang.org/grpc/credentials/insecure"
	"google.golang.org/grpc/keepalive"

	pb "github.com/lattice-sync/lattice/api/lattice/v1"
	"github.com/lattice-sync/lattice/crdt"
	"github.com/lattice-sync/lattice/storage"
)

// Node is one member of a lattice cluster: membership (memberlist), the data
// plane (op-log replication and anti-entropy between every pair of nodes)
// and the control plane (Raft). See DESIGN.md.
type Node struct {
	pb.UnimplementedPeerServer

	cfg    Config
	log    *slog.Logger
	store  *storage.Store
	ml     *memberlist.Memberlist
	events *events
	known  map[string]bool // gossip addresses ever seen; guarded by mu

	raft      *raft.Raft
	fsm       *fsm
	raftClose func() error
	// leaseLost: Owned last found no recent contact with a leader.
	leaseLost atomic.Bool

	stop chan struct{}
	wg   sync.WaitGroup

	// ackCond is signalled whenever a peer acknowledges edits.
	ackCond *sync.Cond

	mu struct {
		sync.Mutex
		seen    map[string]memberInfo       // every member ever seen, by id
		left    map[string]bool             // members that left gracefully
		pullers map[string]*puller          // replication from each peer, by id
		acked   map[string]crdt.VV          // what each peer acknowledged having applied
		ackAt   map[string]time.Time        // when each peer last acknowledged
		peerApp map[string]crdt.VV          // each peer's applied vector as it reports it
		refused map[string]uint64           // edits refused for clock offset, by origin
		conns   map[string]*grpc.ClientConn // by gRPC address
	}
}

// New starts a node: it joins the cluster, starts replication and Raft.
func New(cfg Config) (*Node, error) {
	cfg.fill()
	if err := cfg.Validate(); err != nil {
		return nil, fmt.Errorf("cluster config: %w", err)
	}
	n := &Node{cfg: cfg, log: cfg.Logger.With("component", "cluster"), store: cfg.Store,
		events: &events{ch: make(chan struct{}, 1)}, known: map[string]bool{}, stop: make(chan struct{})}
	n.ackCond = sync.NewCond(&n.mu.Mutex)
	n.mu.seen = map[string]memberInfo{}
	n.mu.left = map[string]bool{}
	n.mu.pullers = map[string]*puller{}
	n.mu.acked = map[string]crdt.VV{}
	n.mu.ackAt = map[string]time.Time{}
	n.mu.peerApp = map[string]crdt.VV{}
	n.mu.refused = map[string]uint64{}
	n.mu.conns = map[string]*grpc.ClientConn{}
	if err := os.MkdirAll(cfg.DataDir, 0o755); err != nil {
		return nil, fmt.Errorf("create raft directory: %w", err)
	}
	// Raft first: the FSM must exist before anyone asks for configuration.
	if err := n.startRaft(); err != nil {
		return nil, err
	}
	// Then membership, which pokes the reconcile loop on every change.
	if err := n.startMembership(); err != nil {
		n.raftClose()
		return nil, err
	}
	n.wg.Add(4)
	go n.reconcileLoop()
	go n.rejoinLoop()
	go n.leaderLoop()
	go n.truncateLoop()
	return n, nil
}

// Register adds the Peer and Cluster services to a gRPC server.
func (n *Node) Register(s *grpc.Server) {
	pb.RegisterPeerServer(s, n)
	pb.RegisterClusterServer(s, &service{n: n})
}

// Close leaves nothing running: pullers, loops, Raft and memberlist stop.
// It does not leave the cluster (see Leave): a restarted node resumes.
func (n *Node) Close() error {
	select {
	case <-n.stop:
		return nil
	default:
	}
	close(n.stop)
	n.mu.Lock()
	for id, p := range n.mu.pullers {
		p.cancel()
		delete(n.mu.pullers, id)
	}
	n.ackCond.Broadcast()
	n.mu.Unlock()
	n.wg.Wait()
	var errs []error
	errs = append(errs, n.ml.Shutdown())
	errs = append(errs, n.raftClose())
	n.mu.Lock()
	for _, c := range n.mu.conns {
		c.Close()
	}
	n.mu.Unlock()
	return errors.Join(errs...)
}

// LeaveCluster announces a graceful departure to the other members and removes this
// node from the Raft voters (through the leader), then stops.
func (n *Node) LeaveCluster(ctx context.Context) error {
	if err := n.removeServer(ctx, n.cfg.NodeID); err != nil {
		n.log.Warn("leave: could not remove this node from raft", "err", err)
	}
	if err := n.ml.Leave(2 * time.Second); err != nil {
		n.log.Warn("leave: gossip", "err", err)
	}
	return n.Close()
}

// conn returns a shared client connection to a peer's gRPC address, bound
// to this node's IP.
func (n *Node) conn(addr string) (*grpc.ClientConn, error) {
	n.mu.Lock()
	defer n.mu.Unlock()
	if c, ok := n.mu.conns[addr]; ok {
		return c, nil
	}
	ip := hostIP(n.cfg.GRPCAddr)
	dial := func(ctx context.Context, a string) (net.Conn, error) {
		d := net.Dialer{LocalAddr: &net.TCPAddr{IP: ip}}
		return d.DialContext(ctx, "tcp", a)
	}
	c, err := grpc.NewClient("passthrough:///"+addr, grpc.WithTransportCredentials(insecure.NewCredentials()),
		grpc.WithContextDialer(dial),
		// A partition stalls TCP rather than resetting it: pings find out.
		grpc.WithKeepaliveParams(keepalive.ClientParameters{Time: time.Second, Timeout: time.Second, PermitWithoutStream: true}))
	if err != nil {
		return nil, err
	}
	n.mu.conns[addr] = c
	return c, nil
}

// reconcileLoop keeps one puller per live peer.
func (n *Node) reconcileLoop() {
	defer n.wg.Done()
	t := time.NewTicker(500 * time.Millisecond)
	defer t.Stop()
	for {
		n.reconcile()
		select {
		case <-n.stop:
			return
		case <-t.C:
		case <-n.events.ch:
		}
	}
}

func (n *Node) reconcile() {
	ms := n.members()
	want := map[string]memberInfo{}
	for _, m := range ms {
		if m.ID != n.cfg.NodeID && m.State == StateAlive && m.GRPCAddr != "" {
			want[m.ID] = m
		}
	}
	n.mu.Lock()
	defer n.mu.Unlock()
	// Close closes stop before it cancels the pullers under mu: a reconcile
	// that gets mu after that must start none, or Close waits forever for a
	// puller nobody cancels.
	select {
	case <-n.stop:
		return
	default:
	}
	for id, p := range n.mu.pullers {
		if m, ok := want[id]; !ok || m.GRPCAddr != p.addr {
			p.cancel()
			delete(n.mu.pullers, id)
		}
	}
	for id, m := range want {
		if _, ok := n.mu.pullers[id]; ok {
			continue
		}
		ctx, cancel := context.WithCancel(context.Background())
		p := &puller{n: n, peer: id, addr: m.GRPCAddr, cancel: cancel}
		n.mu.pullers[id] = p
		n.wg.Add(1)
		go p.run(ctx)
	}
}

// Peers returns the ids of the other members this node currently sees alive.
func (n *Node) Peers() []string {
	var out []string
	for _, m := range n.ml.Members() {
		if m.Name != n.cfg.NodeID {
			out = append(out, m.Name)
		}
	}
	sort.Strings(out)
	return out
}
