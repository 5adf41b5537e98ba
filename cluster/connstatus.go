package cluster

import (
	"context"
	"fmt"
	"sync"
	"time"

	"google.golang.org/grpc/status"
	"google.golang.org/protobuf/types/known/timestamppb"

	pb "github.com/lattice-sync/lattice/api/lattice/v1"
	"github.com/lattice-sync/lattice/crdt"
)

// ConnectorRuntime is what this node knows of a connector it runs: the
// connector manager's view of it, and the connector's own report (the
// agent fills it from connectors.Status; cluster does not import
// connectors).
type ConnectorRuntime struct {
	Name, Kind string
	Epoch      uint64
	// Running is set while an attempt runs.
	Running bool
	// Since is when this node started it under Epoch.
	Since time.Time
	// Attempts counts the attempts under Epoch; Restarts the attempts on
	// this node that ended with an error (all epochs).
	Attempts int
	Restarts uint64
	// LastError ended the last attempt, at LastErrorAt; NextRetry is when the
	// next one starts (zero while one runs).
	LastError   string
	LastErrorAt time.Time
	NextRetry   time.Time
	// Report is the connector's own report; nil when its kind gives none.
	Report *ConnectorReport
}

// ConnectorReport is what a running connector knows of itself (see
// connectors.Report).
type ConnectorReport struct {
	Mode, State                      string
	SourcePosition, ReceivedPosition string
	ProjectionCursor                 crdt.VV
	CaptureLag, ProjectionLag        time.Duration
	LastCapture, LastProjection      time.Time
	CapturedEdits, ProjectedRecords  uint64
	DeadLetters                      uint64
	LastError                        string
	LastErrorAt                      time.Time
	StartedAt                        time.Time
	RateLimits                       []RateLimitReport
}

// RateLimitReport is one of a connector's rate-limit pools (see
// connectors.RateLimit).
type RateLimitReport struct {
	Pool          string
	Limit, Tokens float64
	Burst         int
	Rate          float64
	Waited        time.Duration
	Rows          uint64
}

// Connector states the control plane or this service decides (the others
// come from the connector: see ConnectorStatus in lattice.proto).
const (
	connUnplaced   = "unplaced"
	connPaused     = "paused"
	connStarting   = "starting"
	connFailed     = "failed"
	connRunning    = "running"
	connNotRunning = "not running"
	connUnknown    = "unknown"
)

// ownerTimeout bounds how long a status request waits for an owner.
const ownerTimeout = 3 * time.Second

// ConnectorStatus joins the placement in Raft with each owner's runtime
// view, asking every owner once, in parallel.
func (s *service) ConnectorStatus(ctx context.Context, req *pb.ConnectorStatusRequest) (*pb.ConnectorStatusResponse, error) {
	n := s.n
	name := req.GetConnector()
	out := &pb.ConnectorStatusResponse{NodeId: n.cfg.NodeID}
	if req.GetLocalOnly() {
		for _, rt := range n.localRuntimes(name) {
			out.Connectors = append(out.Connectors, &pb.ConnectorStatus{
				Placement: &pb.ConnectorPlacement{Name: rt.name, Kind: rt.kind, Node: n.cfg.NodeID, Epoch: rt.pb.GetEpoch()},
				State:     runtimeState(rt.pb, rt.pb.GetEpoch()), Runtime: rt.pb})
		}
		return out, nil
	}
	if name != "" {
		if err := s.knownConnector(name); err != nil {
			return nil, err
		}
	}
	st := n.fsm.read()
	names := st.connectorNames()
	if name != "" {
		names = []string{name}
	}
	owners := map[string][]*pb.ConnectorStatus{}
	for _, nm := range names {
		p := placementOf(&st, nm)
		cs := &pb.ConnectorStatus{Placement: p}
		out.Connectors = append(out.Connectors, cs)
		switch {
		case p.GetNode() == "":
			cs.State = connUnplaced
		case p.GetPaused():
			cs.State = connPaused
		default:
			owners[p.GetNode()] = append(owners[p.GetNode()], cs)
		}
	}
	var wg sync.WaitGroup
	for owner, list := range owners {
		wg.Add(1)
		go func() {
			defer wg.Done()
			rts, err := n.ownerRuntimes(ctx, owner, name)
			for _, cs := range list {
				if err != nil {
					cs.State, cs.OwnerUnreachable, cs.OwnerError = connUnknown, true, err.Error()
					continue
				}
				rt, ok := rts[cs.GetPlacement().GetName()]
				if !ok {
					cs.State = connNotRunning
					continue
				}
				cs.Runtime, cs.State = rt, runtimeState(rt, cs.GetPlacement().GetEpoch())
			}
		}()
	}
	wg.Wait()
	return out, nil
}

// runtimeState sums up a running connector's state.
func runtimeState(rt *pb.ConnectorRuntime, placedEpoch uint64) string {
	switch {
	case !rt.GetRunning():
		return connFailed
	case rt.GetEpoch() < placedEpoch:
		return connStarting // the owner restarts it under the new epoch
	case rt.GetReport().GetState() != "":
		return rt.GetReport().GetState()
	}
	return connRunning
}

// ownerRuntimes asks a connector owner (this node or a peer) for the
// runtime of its connectors (only name's, when set), by name.
func (n *Node) ownerRuntimes(ctx context.Context, owner, name string) (map[string]*pb.ConnectorRuntime, error) {
	out := map[string]*pb.ConnectorRuntime{}
	if owner == n.cfg.NodeID {
		for _, rt := range n.localRuntimes(name) {
			out[rt.name] = rt.pb
		}
		return out, nil
	}
	var m *memberInfo
	for _, mi := range n.members() {
		if mi.ID == owner {
			m = &mi
		}
	}
	switch {
	case m == nil:
		return nil, fmt.Errorf("owner %s is not in this node's member list", owner)
	case m.State == StateDead || m.State == StateLeft:
		return nil, fmt.Errorf("owner %s is %s as this node's membership sees it (the Raft leader moves its connectors once it notices)", owner, m.State)
	case m.GRPCAddr == "":
		return nil, fmt.Errorf("owner %s has not announced its gRPC address", owner)
	}
	conn, err := n.conn(m.GRPCAddr)
	if err != nil {
		return nil, fmt.Errorf("owner %s at %s: %w", owner, m.GRPCAddr, err)
	}
	cctx, cancel := context.WithTimeout(ctx, ownerTimeout)
	defer cancel()
	resp, err := pb.NewClusterClient(conn).ConnectorStatus(cctx, &pb.ConnectorStatusRequest{Connector: name, LocalOnly: true})
	if err != nil {
		return nil, fmt.Errorf("owner %s at %s did not answer: %s", owner, m.GRPCAddr, status.Convert(err).Message())
	}
	for _, cs := range resp.GetConnectors() {
		if cs.GetRuntime() != nil {
			out[cs.GetPlacement().GetName()] = cs.GetRuntime()
		}
	}
	return out, nil
}

type namedRuntime struct {
	name, kind string
	pb         *pb.ConnectorRuntime
}

// localRuntimes returns the connectors running here (only name's, when set).
func (n *Node) localRuntimes(name string) []namedRuntime {
	if n.cfg.LocalConnectors == nil {
		return nil
	}
	var out []namedRuntime
	for _, rt := range n.cfg.LocalConnectors() {
		if name != "" && rt.Name != name {
			continue
		}
		out = append(out, namedRuntime{name: rt.Name, kind: rt.Kind, pb: runtimePB(n.cfg.NodeID, &rt)})
	}
	return out
}

func runtimePB(node string, rt *ConnectorRuntime) *pb.ConnectorRuntime {
	out := &pb.ConnectorRuntime{Node: node, Epoch: rt.Epoch, Running: rt.Running, Since: ts(rt.Since),
		Attempts: uint32(rt.Attempts), Restarts: rt.Restarts, LastExitError: rt.LastError, LastExitAt: ts(rt.LastErrorAt),
		NextRetry: ts(rt.NextRetry)}
	if r := rt.Report; r != nil {
		out.Report = &pb.ConnectorReport{Mode: r.Mode, State: r.State, SourcePosition: r.SourcePosition,
			ReceivedPosition:  r.ReceivedPosition,
			CaptureLagSeconds: r.CaptureLag.Seconds(), LastCapture: ts(r.LastCapture),
			ProjectionLagSeconds: r.ProjectionLag.Seconds(), LastProjection: ts(r.LastProjection),
			CapturedEdits: r.CapturedEdits, ProjectedRecords: r.ProjectedRecords, DeadLettersSent: r.DeadLetters,
			LastError: r.LastError, LastErrorAt: ts(r.LastErrorAt), StartedAt: ts(r.StartedAt)}
		if len(r.ProjectionCursor) > 0 {
			out.Report.ProjectionCursor = &pb.VersionVector{Entries: r.ProjectionCursor.Map()}
		}
		for _, l := range r.RateLimits {
			out.Report.RateLimits = append(out.Report.RateLimits, &pb.RateLimitPool{Pool: l.Pool, LimitPerSecond: l.Limit,
				Burst: uint32(l.Burst), Tokens: l.Tokens, RatePerSecond: l.Rate, WaitedSeconds: l.Waited.Seconds(), Rows: l.Rows})
		}
	}
	return out
}

// ts converts a time, the zero time to unset.
func ts(t time.Time) *timestamppb.Timestamp {
	if t.IsZero() {
		return nil
	}
	return timestamppb.New(t)
}
