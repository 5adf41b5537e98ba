package cluster

import (
	"context"
	"errors"
	"sort"
	"time"

	"google.golang.org/grpc/codes"
	"google.golang.org/grpc/status"
	"google.golang.org/protobuf/types/known/timestamppb"

	pb "github.com/lattice-sync/lattice/api/lattice/v1"
	"github.com/lattice-sync/lattice/crdt"
)

// Version is the lattice build version reported by Status.
var Version = "dev"

// service implements lattice.v1.Cluster over a Node. Handlers are thin:
// domain errors become gRPC status codes here.
type service struct {
	pb.UnimplementedClusterServer
	n *Node
}

func (s *service) Status(ctx context.Context, req *pb.StatusRequest) (*pb.StatusResponse, error) {
	n := s.n
	out := &pb.StatusResponse{NodeId: n.cfg.NodeID, Version: Version, Hlc: uint64(n.store.Clock().Last()),
		Applied: &pb.VersionVector{Entries: n.store.Applied().Map()}, RaftLeader: n.Leader(),
		Truncated: &pb.VersionVector{Entries: n.store.Truncated().Map()}}
	st := n.fsm.read()
	for _, name := range st.connectorNames() {
		out.Connectors = append(out.Connectors, placementOf(&st, name))
	}
	if req.GetDigest() {
		d, records, applied, err := n.store.Digest(ctx)
		if err != nil {
			return nil, status.Errorf(codes.Unavailable, "digest: %v", err)
		}
		out.Digest, out.Records = d, records
		out.Applied = &pb.VersionVector{Entries: applied.Map()}
	}
	return out, nil
}

func (s *service) Members(ctx context.Context, _ *pb.MembersRequest) (*pb.MembersResponse, error) {
	n := s.n
	members := n.members()
	applied := n.store.Applied()
	n.mu.Lock()
	defer n.mu.Unlock()
	out := &pb.MembersResponse{}
	for _, m := range members {
		pm := &pb.Member{Id: m.ID, GrpcAddr: m.GRPCAddr, GossipAddr: m.GossipAddr, RaftAddr: m.RaftAddr,
			State: string(m.State), ClockRefusals: n.mu.refused[m.ID]}
		n.mu.Unlock()
		pm.RaftRole = n.raftRole(m.ID)
		n.mu.Lock()
		if m.ID == n.cfg.NodeID {
			pm.Applied = &pb.VersionVector{Entries: applied.Map()}
		} else {
			acked := n.mu.acked[m.ID]
			pm.Applied = &pb.VersionVector{Entries: n.mu.peerApp[m.ID].Map()}
			pm.LagEntries = lag(applied, acked)
			if pm.LagEntries > 0 {
				if at, ok := n.mu.ackAt[m.ID]; ok {
					pm.LagSeconds = time.Since(at).Seconds()
				}
			}
		}
		out.Members = append(out.Members, pm)
	}
	sort.Slice(out.Members, func(i, j int) bool { return out.Members[i].Id < out.Members[j].Id })
	return out, nil
}

// PeerLag is how far one peer is behind this node.
type PeerLag struct {
	Peer    string
	Entries uint64
	Seconds float64
}

// Lag reports, for every other member seen, the edits applied here that it
// has not acknowledged and for how long it has been behind.
func (n *Node) Lag() []PeerLag {
	members := n.members()
	applied := n.store.Applied()
	n.mu.Lock()
	defer n.mu.Unlock()
	var out []PeerLag
	for _, m := range members {
		if m.ID == n.cfg.NodeID {
			continue
		}
		l := PeerLag{Peer: m.ID, Entries: lag(applied, n.mu.acked[m.ID])}
		if l.Entries > 0 {
			if at, ok := n.mu.ackAt[m.ID]; ok {
				l.Seconds = time.Since(at).Seconds()
			}
		}
		out = append(out, l)
	}
	return out
}

// RaftState returns this node's Raft state: Leader, Follower, Candidate or Shutdown.
func (n *Node) RaftState() string { return n.raft.State().String() }

// lag counts the edits applied here that a peer has not acknowledged.
func lag(applied, acked crdt.VV) uint64 {
	var n uint64
	for _, e := range applied {
		if a := acked.Get(e.Node); a < e.Seq {
			n += e.Seq - a
		}
	}
	return n
}

func (s *service) ApplyConfig(ctx context.Context, req *pb.ApplyConfigRequest) (*pb.ApplyConfigResponse, error) {
	name := req.GetFilename()
	if name == "" {
		name = "config"
	}
	idx, schema, err := s.n.ApplyConfigYAML(ctx, name, req.GetYaml())
	if schema == nil && err != nil {
		return nil, status.Error(codes.InvalidArgument, err.Error())
	}
	if err != nil {
		return nil, toStatus(err)
	}
	out := &pb.ApplyConfigResponse{Index: idx}
	for _, e := range schema.Entities {
		out.Entities = append(out.Entities, e.Name)
	}
	return out, nil
}

func (s *service) RemoveMember(ctx context.Context, req *pb.RemoveMemberRequest) (*pb.RemoveMemberResponse, error) {
	id := req.GetNode()
	if id == "" {
		return nil, status.Error(codes.InvalidArgument, "node is required")
	}
	if !known(s.n.members(), id) {
		return nil, status.Errorf(codes.NotFound, "no member %q (see lattice members)", id)
	}
	if err := s.n.removeServer(ctx, id); err != nil {
		return nil, toStatus(err)
	}
	return &pb.RemoveMemberResponse{}, nil
}

func (s *service) Leave(ctx context.Context, _ *pb.LeaveRequest) (*pb.LeaveResponse, error) {
	if s.n.cfg.OnLeave == nil {
		return nil, status.Error(codes.Unimplemented, "this node cannot be asked to leave")
	}
	if err := s.n.removeServer(ctx, s.n.cfg.NodeID); err != nil {
		return nil, toStatus(err)
	}
	go s.n.cfg.OnLeave()
	return &pb.LeaveResponse{}, nil
}

func (s *service) DeadLetters(ctx context.Context, req *pb.DeadLettersRequest) (*pb.DeadLettersResponse, error) {
	if err := s.knownConnector(req.GetConnector()); err != nil {
		return nil, err
	}
	return s.letters(req.GetConnector()), nil
}

func (s *service) ReplayDeadLetters(ctx context.Context, req *pb.DeadLetterIDs) (*pb.DeadLettersResponse, error) {
	if err := s.knownConnector(req.GetConnector()); err != nil {
		return nil, err
	}
	if !req.GetAll() && len(req.GetIds()) == 0 {
		return nil, status.Error(codes.InvalidArgument, "name entries by id, or ask for all")
	}
	if err := s.n.ReplayDeadLetters(ctx, req.GetConnector(), req.GetIds(), req.GetAll()); err != nil {
		return nil, toStatus(err)
	}
	return s.letters(req.GetConnector()), nil
}

func (s *service) DiscardDeadLetters(ctx context.Context, req *pb.DeadLetterIDs) (*pb.DeadLettersResponse, error) {
	if err := s.knownConnector(req.GetConnector()); err != nil {
		return nil, err
	}
	if !req.GetAll() && len(req.GetIds()) == 0 {
		return nil, status.Error(codes.InvalidArgument, "name entries by id, or ask for all")
	}
	if err := s.n.DiscardDeadLetters(ctx, req.GetConnector(), req.GetIds(), req.GetAll()); err != nil {
		return nil, toStatus(err)
	}
	return s.letters(req.GetConnector()), nil
}

func placementOf(st *State, name string) *pb.ConnectorPlacement {
	p := st.Placement[name]
	return &pb.ConnectorPlacement{Name: name, Kind: st.Connectors[name].Kind, Node: p.Node, Epoch: p.Epoch,
		Paused: st.Paused[name], PauseReason: st.PauseReasons[name], Checkpoint: string(st.Checkpoints[name].Data), DeadLetters: uint32(len(st.DeadLetters[name]))}
}

func (s *service) PauseConnector(ctx context.Context, req *pb.ConnectorRequest) (*pb.ConnectorPlacement, error) {
	return s.pause(ctx, req.GetConnector(), true)
}

func (s *service) ResumeConnector(ctx context.Context, req *pb.ConnectorRequest) (*pb.ConnectorPlacement, error) {
	return s.pause(ctx, req.GetConnector(), false)
}

func (s *service) pause(ctx context.Context, name string, pause bool) (*pb.ConnectorPlacement, error) {
	if err := s.knownConnector(name); err != nil {
		return nil, err
	}
	if err := s.n.PauseConnector(ctx, name, pause); err != nil {
		return nil, toStatus(err)
	}
	st := s.n.fsm.read()
	return placementOf(&st, name), nil
}

func (s *service) knownConnector(name string) error {
	if name == "" {
		return status.Error(codes.InvalidArgument, "connector is required")
	}
	if _, ok := s.n.fsm.read().Connectors[name]; !ok {
		return status.Errorf(codes.NotFound, "no connector %q (see lattice connectors list)", name)
	}
	return nil
}

func (s *service) letters(name string) *pb.DeadLettersResponse {
	out := &pb.DeadLettersResponse{}
	for _, l := range s.n.DeadLetters(name) {
		out.Entries = append(out.Entries, &pb.DeadLetter{Id: l.ID, Direction: l.Direction, Entity: l.Entity, RecordId: l.RecordID,
			Error: l.Error, At: timestamppb.New(l.At), Attempts: l.Attempts, ReplayRequested: l.Replay})
	}
	return out
}

func toStatus(err error) error {
	switch {
	case errors.Is(err, ErrNoLeader):
		return status.Error(codes.Unavailable, err.Error())
	case errors.Is(err, ErrStaleEpoch):
		return status.Error(codes.FailedPrecondition, err.Error())
	case errors.Is(err, context.DeadlineExceeded):
		return status.Error(codes.DeadlineExceeded, err.Error())
	}
	return status.Error(codes.Unavailable, err.Error())
}
