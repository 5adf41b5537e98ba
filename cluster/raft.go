package cluster

import (
	"context"
	"encoding/json"
	"errors"
	"fmt"
	"net"
	"path/filepath"
	"sort"
	"strings"
	"time"

	"github.com/hashicorp/go-hclog"
	"github.com/hashicorp/raft"
	raftboltdb "github.com/hashicorp/raft-boltdb/v2"
	"google.golang.org/grpc/codes"
	"google.golang.org/grpc/status"

	pb "github.com/lattice-sync/lattice/api/lattice/v1"
	"github.com/lattice-sync/lattice/crdt"
)

// ErrNoLeader is returned when no Raft leader is known.
var ErrNoLeader = errors.New("no raft leader: the cluster has no quorum right now")

// streamLayer is Raft's TCP transport with outgoing connections bound to the
// node's IP (see boundTransport).
type streamLayer struct {
	net.Listener
	ip        net.IP
	advertise net.Addr
}

func (s *streamLayer) Dial(addr raft.ServerAddress, timeout time.Duration) (net.Conn, error) {
	d := net.Dialer{Timeout: timeout, LocalAddr: &net.TCPAddr{IP: s.ip}}
	return d.Dial("tcp", string(addr))
}

func (s *streamLayer) Addr() net.Addr { return s.advertise }

func (n *Node) startRaft() error {
	cfg := n.cfg
	n.fsm = &fsm{state: newState(), onConfig: n.applySchema}
	rc := raft.DefaultConfig()
	rc.LocalID = raft.ServerID(cfg.NodeID)
	rc.HeartbeatTimeout = cfg.RaftHeartbeat
	rc.ElectionTimeout = cfg.RaftHeartbeat
	rc.LeaderLeaseTimeout = cfg.RaftHeartbeat / 2
	rc.CommitTimeout = 5 * time.Millisecond
	rc.SnapshotThreshold = 1024
	rc.Logger = hclog.New(&hclog.LoggerOptions{Name: "raft", Level: hclog.Info,
		Output: slogWriter{n.log.With("component", "raft")}, DisableTime: true})

	store, err := raftboltdb.NewBoltStore(filepath.Join(cfg.DataDir, "raft.db"))
	if err != nil {
		return fmt.Errorf("open raft log: %w", err)
	}
	snaps, err := raft.NewFileSnapshotStoreWithLogger(cfg.DataDir, 2, rc.Logger)
	if err != nil {
		store.Close()
		return fmt.Errorf("open raft snapshots: %w", err)
	}
	lis, err := net.Listen("tcp", cfg.RaftAddr)
	if err != nil {
		store.Close()
		return fmt.Errorf("raft on %s: %w (is the port in use? pick another --raft-addr)", cfg.RaftAddr, err)
	}
	adv, err := net.ResolveTCPAddr("tcp", cfg.RaftAddr)
	if err != nil {
		lis.Close()
		store.Close()
		return err
	}
	trans := raft.NewNetworkTransportWithConfig(raftTransportConfig(
		&streamLayer{Listener: lis, ip: hostIP(cfg.RaftAddr), advertise: adv}, rc.Logger))
	r, err := raft.NewRaft(rc, n.fsm, store, store, snaps, trans)
	if err != nil {
		trans.Close()
		store.Close()
		return fmt.Errorf("start raft: %w", err)
	}
	n.raft = r
	n.raftClose = func() error {
		err := r.Shutdown().Error()
		return errors.Join(err, trans.Close(), store.Close())
	}
	existing, err := raft.HasExistingState(store, store, snaps)
	if err != nil {
		return err
	}
	if !existing && len(cfg.Join) == 0 {
		n.log.Info("bootstrapping a new cluster", "raft", cfg.RaftAddr)
		f := r.BootstrapCluster(raft.Configuration{Servers: []raft.Server{{
			ID: raft.ServerID(cfg.NodeID), Address: raft.ServerAddress(cfg.RaftAddr), Suffrage: raft.Voter}}})
		if err := f.Error(); err != nil && !errors.Is(err, raft.ErrCantBootstrap) {
			return fmt.Errorf("bootstrap raft: %w", err)
		}
	}
	return nil
}

// applySchema is the FSM's configuration callback.
func (n *Node) applySchema(yaml, name string) {
	s, err := crdt.ParseSchema(name, []byte(yaml))
	if err != nil {
		// Validated before it was proposed; a node running an older version
		// may still refuse it. Keep the current schema and say so.
		n.log.Error("configuration from raft refused; keeping the current one", "err", err)
		return
	}
	if n.cfg.OnSchema != nil {
		n.cfg.OnSchema(s)
	}
}

// IsLeader reports whether this node is the Raft leader.
func (n *Node) IsLeader() bool { return n.raft.State() == raft.Leader }

// Leader returns the leader's node id ("" when none is known).
func (n *Node) Leader() string {
	_, id := n.raft.LeaderWithID()
	return string(id)
}

// ownerLease is how long a follower keeps running its connectors without
// hearing from a leader: several heartbeats, and at least a second, so a
// busy machine's late heartbeat does not restart them.
func (n *Node) ownerLease() time.Duration { return max(time.Second, 5*n.cfg.RaftHeartbeat) }

// Owned returns the connectors the leader placed on this node, with their
// epochs (connectors.Placement).
//
// A follower that has not heard from a leader for ownerLease (cut off by a
// partition, paused, or the cluster electing) owns nothing until it hears
// from one again: the leader may have moved its connectors to a node in
// the majority, and two owners capturing one source make the same change
// twice (jepsen/README.md, pg-recapture). A leader holds its lease (Raft
// steps it down when it loses its quorum).
func (n *Node) Owned() map[string]uint64 {
	out := map[string]uint64{}
	if lease := n.ownerLease(); n.raft.State() != raft.Leader && time.Since(n.raft.LastContact()) > lease {
		if n.raft.LastContact().IsZero() {
			return out // starting: no leader heard from yet
		}
		if !n.leaseLost.Swap(true) {
			n.log.Warn("no contact with a raft leader: stopping this node's connectors until it is back (the leader moves them to a node it reaches)",
				"last_contact", n.raft.LastContact(), "lease", lease)
		}
		return out
	}
	if n.leaseLost.Swap(false) {
		n.log.Info("raft leader in contact again: this node runs the connectors placed on it")
	}
	st := n.fsm.read()
	for name, p := range st.Placement {
		if p.Node == n.cfg.NodeID && !st.Paused[name] {
			out[name] = p.Epoch
		}
	}
	return out
}

// PauseConnector stops a connector wherever it runs until ResumeConnector.
func (n *Node) PauseConnector(ctx context.Context, name string, pause bool) error {
	op := "resume"
	if pause {
		op = "pause"
	}
	_, err := n.propose(ctx, command{Op: op, Name: name})
	return err
}

// PauseConnectorFor is a connector pausing itself (it met a schema change
// it cannot go on with): like PauseConnector, with the reason an operator
// sees in the connector's status until it is resumed. epoch fences it: a
// connector that was moved meanwhile gets ErrStaleEpoch.
func (n *Node) PauseConnectorFor(ctx context.Context, name string, epoch uint64, reason string) error {
	if reason == "" {
		reason = "paused by the connector"
	}
	_, err := n.propose(ctx, command{Op: "pause", Name: name, Epoch: epoch, Error: reason})
	return err
}

// State returns a copy of the control-plane state.
func (n *Node) State() State { return n.fsm.read() }

// propose applies a command through Raft, forwarding it to the leader when
// this node is not the leader.
func (n *Node) propose(ctx context.Context, c command) (uint64, error) {
	b, err := json.Marshal(c)
	if err != nil {
		return 0, err
	}
	if n.IsLeader() {
		return n.applyLocal(b)
	}
	leader := n.Leader()
	if leader == "" {
		return 0, ErrNoLeader
	}
	addr := n.grpcAddrOf(leader)
	if addr == "" {
		return 0, fmt.Errorf("raft leader %s is not in the member list yet: retry", leader)
	}
	conn, err := n.conn(addr)
	if err != nil {
		return 0, err
	}
	resp, err := pb.NewPeerClient(conn).Propose(ctx, &pb.ProposeRequest{Command: b})
	if err != nil {
		return 0, fmt.Errorf("forward to raft leader %s: %w", leader, err)
	}
	if resp.GetError() != "" {
		if strings.Contains(resp.GetError(), ErrStaleEpoch.Error()) {
			return 0, fmt.Errorf("%w: %s", ErrStaleEpoch, resp.GetError())
		}
		return 0, errors.New(resp.GetError())
	}
	return resp.GetIndex(), nil
}

func (n *Node) applyLocal(b []byte) (uint64, error) {
	f := n.raft.Apply(b, 5*time.Second)
	if err := f.Error(); err != nil {
		if errors.Is(err, raft.ErrNotLeader) || errors.Is(err, raft.ErrLeadershipLost) {
			return 0, fmt.Errorf("leadership changed while applying (outcome unknown, retry): %w", err)
		}
		return 0, err
	}
	if err, ok := f.Response().(error); ok && err != nil {
		return f.Index(), err
	}
	return f.Index(), nil
}

// Propose serves a forwarded Raft command (leader only).
func (n *Node) Propose(ctx context.Context, req *pb.ProposeRequest) (*pb.ProposeResponse, error) {
	if !n.IsLeader() {
		return nil, status.Errorf(codes.FailedPrecondition, "not the raft leader (leader: %q)", n.Leader())
	}
	var c command
	if err := json.Unmarshal(req.GetCommand(), &c); err != nil {
		return nil, status.Errorf(codes.InvalidArgument, "bad raft command: %v", err)
	}
	idx, err := n.applyLocal(req.GetCommand())
	if err != nil {
		return &pb.ProposeResponse{Index: idx, Error: err.Error()}, nil
	}
	return &pb.ProposeResponse{Index: idx}, nil
}

// ApplyConfigYAML validates a configuration and commits it through Raft.
func (n *Node) ApplyConfigYAML(ctx context.Context, name, yaml string) (uint64, *crdt.Schema, error) {
	s, err := crdt.ParseSchema(name, []byte(yaml))
	if err != nil {
		return 0, nil, err
	}
	idx, err := n.propose(ctx, command{Op: "config", ConfigYAML: yaml, ConfigName: name})
	return idx, s, err
}

// PutConnector stores a connector's spec; the leader places it on a node.
func (n *Node) PutConnector(ctx context.Context, spec ConnectorSpec) error {
	_, err := n.propose(ctx, command{Op: "connector_put", Connector: &spec})
	return err
}

// AddDeadLetter records a change a connector could not apply.
func (n *Node) AddDeadLetter(ctx context.Context, connector string, l DeadLetter) error {
	_, err := n.propose(ctx, command{Op: "dlq_add", Name: connector, Letter: &l})
	return err
}

// DeadLetters returns a connector's queue.
func (n *Node) DeadLetters(connector string) []DeadLetter {
	return n.fsm.read().DeadLetters[connector]
}

// ReplayDeadLetters flags entries for the owner to retry; DiscardDeadLetters drops them.
func (n *Node) ReplayDeadLetters(ctx context.Context, connector string, ids []uint64, all bool) error {
	_, err := n.propose(ctx, command{Op: "dlq_replay", Name: connector, IDs: ids, All: all})
	return err
}

// DiscardDeadLetters drops entries for good.
func (n *Node) DiscardDeadLetters(ctx context.Context, connector string, ids []uint64, all bool) error {
	_, err := n.propose(ctx, command{Op: "dlq_discard", Name: connector, IDs: ids, All: all})
	return err
}

// ResolveDeadLetter reports a retry's outcome: nil removes the entry.
func (n *Node) ResolveDeadLetter(ctx context.Context, connector string, id uint64, failure error) error {
	c := command{Op: "dlq_result", Name: connector, IDs: []uint64{id}}
	if failure != nil {
		c.Error = failure.Error()
		c.Letter = &DeadLetter{At: time.Now().UTC()}
	}
	_, err := n.propose(ctx, c)
	return err
}

// ReadCheckpoint returns a connector's last checkpoint.
func (n *Node) ReadCheckpoint(connector string) (uint64, []byte, bool) {
	st := n.fsm.read()
	cp, ok := st.Checkpoints[connector]
	return cp.Epoch, cp.Data, ok
}

// WriteCheckpoint stores a connector checkpoint, fenced by the placement
// epoch: a node that no longer owns the connector gets ErrStaleEpoch.
func (n *Node) WriteCheckpoint(ctx context.Context, connector string, epoch uint64, data []byte) error {
	_, err := n.propose(ctx, command{Op: "checkpoint", Name: connector, Node: n.cfg.NodeID, Epoch: epoch, Data: data})
	return err
}

func (n *Node) grpcAddrOf(id string) string {
	for _, m := range n.members() {
		if m.ID == id {
			return m.GRPCAddr
		}
	}
	return ""
}

// removeServer takes a node out of the Raft configuration and marks it
// removed (connector placement moves off it).
func (n *Node) removeServer(ctx context.Context, id string) error {
	if _, err := n.propose(ctx, command{Op: "remove_node", Node: id}); err != nil {
		return err
	}
	if n.IsLeader() {
		return n.raft.RemoveServer(raft.ServerID(id), 0, 5*time.Second).Error()
	}
	return nil
}

// leaderLoop runs the leader's duties every half second: voters follow
// membership, the first configuration is proposed, connectors are placed.
func (n *Node) leaderLoop() {
	defer n.wg.Done()
	t := time.NewTicker(500 * time.Millisecond)
	defer t.Stop()
	deadSince := map[string]time.Time{}
	for {
		select {
		case <-n.stop:
			return
		case <-t.C:
		case <-n.raft.LeaderCh():
		}
		if !n.IsLeader() {
			continue
		}
		n.leaderDuties(deadSince)
	}
}

func (n *Node) leaderDuties(deadSince map[string]time.Time) {
	st := n.fsm.read()
	// The first leader proposes the configuration it started with.
	if st.ConfigIndex == 0 && n.cfg.SchemaYAML != "" {
		if _, err := n.applyLocal(mustJSON(command{Op: "config", ConfigYAML: n.cfg.SchemaYAML, ConfigName: "initial configuration of " + n.cfg.NodeID})); err != nil {
			n.log.Warn("propose initial configuration", "err", err)
		}
	}
	f := n.raft.GetConfiguration()
	if f.Error() != nil {
		return
	}
	servers := map[string]raft.Server{}
	for _, s := range f.Configuration().Servers {
		servers[string(s.ID)] = s
	}
	members := n.members()
	alive := map[string]bool{}
	now := time.Now()
	for _, m := range members {
		if m.State == StateAlive || m.State == StateSuspect {
			alive[m.ID] = true
			delete(deadSince, m.ID)
		} else if _, ok := deadSince[m.ID]; !ok {
			deadSince[m.ID] = now
		}
		// Joining members become voters.
		if m.State == StateAlive && !st.Removed[m.ID] && m.RaftAddr != "" {
			if s, ok := servers[m.ID]; !ok || string(s.Address) != m.RaftAddr {
				n.log.Info("adding raft voter", "node", m.ID, "raft", m.RaftAddr)
				if err := n.raft.AddVoter(raft.ServerID(m.ID), raft.ServerAddress(m.RaftAddr), 0, 5*time.Second).Error(); err != nil {
					n.log.Warn("add raft voter", "node", m.ID, "err", err)
				}
			}
		}
	}
	// Voters gone longer than the grace period, or removed, are dropped; the
	// leader never removes itself, and removal never leaves fewer voters than
	// the live ones can form a quorum of.
	for id := range servers {
		if id == n.cfg.NodeID {
			continue
		}
		since, dead := deadSince[id]
		if st.Removed[id] || (dead && now.Sub(since) > n.cfg.DeadGrace) || (!alive[id] && !known(members, id) && dead) {
			liveVoters := 0
			for sid := range servers {
				if alive[sid] && sid != id {
					liveVoters++
				}
			}
			if liveVoters < (len(servers)-1)/2+1 {
				continue // removing it would not leave a working majority
			}
			n.log.Info("removing raft voter", "node", id, "removed", st.Removed[id])
			if err := n.raft.RemoveServer(raft.ServerID(id), 0, 5*time.Second).Error(); err != nil {
				n.log.Warn("remove raft voter", "node", id, "err", err)
			}
		}
	}
	n.syncConnectors(&st)
	n.placeConnectors(st, alive)
}

// syncConnectors makes the connector specs in Raft match the connectors the
// committed configuration declares.
func (n *Node) syncConnectors(st *State) {
	if st.ConfigYAML == "" {
		return
	}
	schema, err := crdt.ParseSchema(st.ConfigName, []byte(st.ConfigYAML))
	if err != nil {
		return
	}
	want := map[string]ConnectorSpec{}
	for _, c := range schema.Connectors {
		raw, err := json.Marshal(c.Config)
		if err != nil {
			n.log.Warn("connector config does not encode as JSON", "connector", c.Name, "err", err)
			continue
		}
		want[c.Name] = ConnectorSpec{Name: c.Name, Kind: c.Kind, Config: raw}
	}
	for name, spec := range want {
		if cur, ok := st.Connectors[name]; ok && cur.Kind == spec.Kind && string(cur.Config) == string(spec.Config) {
			continue
		}
		if _, err := n.applyLocal(mustJSON(command{Op: "connector_put", Connector: &spec})); err != nil {
			n.log.Warn("store connector spec", "connector", name, "err", err)
			continue
		}
		st.Connectors[name] = spec
	}
	for name := range st.Connectors {
		if _, ok := want[name]; ok {
			continue
		}
		if _, err := n.applyLocal(mustJSON(command{Op: "connector_delete", Name: name})); err != nil {
			n.log.Warn("delete connector spec", "connector", name, "err", err)
			continue
		}
		delete(st.Connectors, name)
		delete(st.Placement, name)
	}
}

func known(ms []memberInfo, id string) bool {
	for _, m := range ms {
		if m.ID == id {
			return true
		}
	}
	return false
}

// placeConnectors puts every connector without a live owner on the live node
// running the fewest connectors (ties by id), with the next epoch.
func (n *Node) placeConnectors(st State, alive map[string]bool) {
	load := map[string]int{}
	var nodes []string
	for id := range alive {
		if !st.Removed[id] {
			nodes = append(nodes, id)
		}
	}
	sort.Strings(nodes)
	if len(nodes) == 0 {
		return
	}
	for _, p := range st.Placement {
		load[p.Node]++
	}
	for _, name := range st.connectorNames() {
		p, ok := st.Placement[name]
		if ok && alive[p.Node] && !st.Removed[p.Node] {
			continue
		}
		best := nodes[0]
		for _, id := range nodes {
			if load[id] < load[best] {
				best = id
			}
		}
		c := command{Op: "place", Name: name, Node: best, Epoch: p.Epoch + 1}
		if _, err := n.applyLocal(mustJSON(c)); err != nil {
			n.log.Warn("place connector", "connector", name, "err", err)
			continue
		}
		n.log.Info("placed connector", "connector", name, "node", best, "epoch", c.Epoch, "previous", p.Node)
		load[best]++
		if ok {
			load[p.Node]--
		}
	}
}

func mustJSON(v any) []byte {
	b, err := json.Marshal(v)
	if err != nil {
		panic(err)
	}
	return b
}

// raftRole returns the Raft role of a member as this node sees it.
func (n *Node) raftRole(id string) string {
	f := n.raft.GetConfiguration()
	if f.Error() != nil {
		return ""
	}
	leader := n.Leader()
	for _, s := range f.Configuration().Servers {
		if string(s.ID) != id {
			continue
		}
		switch {
		case string(s.ID) == leader:
			return "leader"
		case s.Suffrage == raft.Voter:
			return "voter"
		default:
			return "nonvoter"
		}
	}
	return "none"
}

// raftTransportConfig configures Raft's TCP transport. Pipelined
// replication is off (MaxRPCsInFlight 1: every AppendEntries waits for its
// answer). hashicorp/raft v1.8's pipeline can deadlock: when a follower
// answers with a newer term or a failure, the response decoder stops, and a
// send racing with it parks forever on the pipeline's unbuffered channel;
// the pipeline is closed only by the goroutine that is stuck. Replication
// to that follower then stops for good and Shutdown never returns (a node
// resumed after SIGSTOP hung on SIGTERM in TestConnectorStatusFromAnotherNode;
// the goroutine dump showed pipelineSend blocked in netPipeline.AppendEntries
// with decodeResponses blocked on doneCh). Raft carries only configuration,
// placement and checkpoints here, a few entries a second, so pipelining
// buys nothing.
func raftTransportConfig(stream raft.StreamLayer, logger hclog.Logger) *raft.NetworkTransportConfig {
	return &raft.NetworkTransportConfig{Stream: stream, MaxPool: 3, Timeout: 5 * time.Second, Logger: logger, MaxRPCsInFlight: 1}
}
