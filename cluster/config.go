package cluster

import (
	"errors"
	"fmt"
	"log/slog"
	"net"
	"time"

	"github.com/lattice-sync/lattice/crdt"
	"github.com/lattice-sync/lattice/storage"
)

// Config configures a cluster node.
type Config struct {
	// NodeID is this node's id (the node part of its dots).
	NodeID string
	// GRPCAddr is the address peers and clients reach this node's gRPC server at.
	GRPCAddr string
	// GossipAddr is the host:port memberlist binds (UDP and TCP).
	GossipAddr string
	// RaftAddr is the host:port Raft binds.
	RaftAddr string
	// Join lists gossip addresses of existing members; empty starts a new
	// cluster (this node bootstraps Raft as its only voter).
	Join []string
	// DataDir holds Raft's log, stable store and snapshots.
	DataDir string
	// Store is the node's store.
	Store *storage.Store
	// Schema is the entity configuration this node starts with; once the
	// cluster holds one in Raft, that one wins.
	Schema *crdt.Schema
	// SchemaYAML is Schema's source text (proposed to Raft by the first leader).
	SchemaYAML string
	// OnSchema is called with every configuration committed through Raft.
	OnSchema func(*crdt.Schema)
	// OnLeave is called after the node was asked (Cluster.Leave) to leave:
	// it should shut the agent down, which leaves the member list gracefully.
	OnLeave func()
	// LocalConnectors reports the connectors running on this node (the
	// agent's connector manager), for Cluster.ConnectorStatus; it must be
	// safe to call from any goroutine. Nil: none run here.
	LocalConnectors func() []ConnectorRuntime
	// Logger receives the node's logs, raft's and memberlist's included.
	Logger *slog.Logger
	// Metrics receives cluster measurements; nil records nothing.
	Metrics Observer

	// ProbeInterval, ProbeTimeout, SuspicionMult and GossipInterval tune
	// failure detection (defaults notice a dead node in about 1 s on a LAN).
	ProbeInterval  time.Duration
	ProbeTimeout   time.Duration
	SuspicionMult  int
	GossipInterval time.Duration
	// RejoinInterval is how often known peers that are not alive are joined
	// again (memberlist forgets dead peers after its gossip-to-the-dead window).
	RejoinInterval time.Duration
	// RaftHeartbeat is Raft's heartbeat and election timeout.
	RaftHeartbeat time.Duration
	// DeadGrace is how long a member may be dead before the Raft leader
	// removes it from the voters.
	DeadGrace time.Duration
	// AckTimeout bounds how long a write with a write concern waits when the
	// request carries no deadline.
	AckTimeout time.Duration
	// TruncateInterval is how often the op log is truncated below what every
	// member holds; zero disables truncation.
	TruncateInterval time.Duration
	// TruncateKeep is how many of each origin's newest entries are kept even
	// when every member has them.
	TruncateKeep uint64
}

// Observer receives cluster measurements; the agent wires Prometheus.
type Observer interface {
	// ClockRefused counts an edit from origin refused because its timestamp
	// was beyond max-offset ahead of this node's clock.
	ClockRefused(origin string)
	// SnapshotInstalled counts records merged from a peer's snapshot.
	SnapshotInstalled(records int)
	// Truncated reports op-log entries removed.
	Truncated(entries uint64)
	// Repaired counts edits of another origin received from a peer
	// (anti-entropy filling what the origin could not deliver directly).
	Repaired(edits int)
}

// DefaultConfig returns a Config with tuned timings.
func DefaultConfig() Config {
	return Config{
		ProbeInterval:    200 * time.Millisecond,
		ProbeTimeout:     100 * time.Millisecond,
		SuspicionMult:    2,
		GossipInterval:   50 * time.Millisecond,
		RejoinInterval:   2 * time.Second,
		RaftHeartbeat:    300 * time.Millisecond,
		DeadGrace:        30 * time.Second,
		AckTimeout:       5 * time.Second,
		TruncateInterval: 10 * time.Second,
		TruncateKeep:     10000,
	}
}

// Validate checks the configuration.
func (c *Config) Validate() error {
	var errs []error
	if c.NodeID == "" {
		errs = append(errs, errors.New("node id is required"))
	}
	if c.Store == nil {
		errs = append(errs, errors.New("store is required"))
	}
	if c.DataDir == "" {
		errs = append(errs, errors.New("data directory is required"))
	}
	for name, addr := range map[string]string{"gRPC": c.GRPCAddr, "gossip": c.GossipAddr, "raft": c.RaftAddr} {
		if _, _, err := net.SplitHostPort(addr); err != nil {
			errs = append(errs, fmt.Errorf("%s address %q: want host:port", name, addr))
		}
	}
	if c.Schema == nil {
		errs = append(errs, errors.New("schema is required"))
	}
	return errors.Join(errs...)
}

func (c *Config) fill() {
	d := DefaultConfig()
	if c.ProbeInterval <= 0 {
		c.ProbeInterval = d.ProbeInterval
	}
	if c.ProbeTimeout <= 0 {
		c.ProbeTimeout = d.ProbeTimeout
	}
	if c.SuspicionMult <= 0 {
		c.SuspicionMult = d.SuspicionMult
	}
	if c.GossipInterval <= 0 {
		c.GossipInterval = d.GossipInterval
	}
	if c.RejoinInterval <= 0 {
		c.RejoinInterval = d.RejoinInterval
	}
	if c.RaftHeartbeat <= 0 {
		c.RaftHeartbeat = d.RaftHeartbeat
	}
	if c.DeadGrace <= 0 {
		c.DeadGrace = d.DeadGrace
	}
	if c.AckTimeout <= 0 {
		c.AckTimeout = d.AckTimeout
	}
	if c.TruncateKeep == 0 {
		c.TruncateKeep = d.TruncateKeep
	}
	if c.Logger == nil {
		c.Logger = slog.Default()
	}
}

// hostIP returns the IP of a host:port, used to bind outgoing connections so
// a peer (and a firewall rule in the fault harness) sees this node's address.
func hostIP(addr string) net.IP {
	host, _, err := net.SplitHostPort(addr)
	if err != nil {
		return nil
	}
	return net.ParseIP(host)
}
