package connectors

import (
	"context"
	"log/slog"
	"math/rand/v2"
	"sort"
	"sync"
	"time"

	"github.com/lattice-sync/lattice/crdt"
)

// Placement tells a node which connectors it runs: the Raft leader places
// each connector on one live node, with an epoch that grows at every move.
type Placement interface {
	// Owned returns the connectors placed on this node and their epochs.
	Owned() map[string]uint64
}

// Checkpointer stores a connector's position through the control plane,
// fenced by its placement epoch: a node that no longer owns the connector
// gets an error wrapping ErrStaleEpoch and must stop.
type Checkpointer interface {
	WriteCheckpoint(ctx context.Context, connector string, epoch uint64, data []byte) error
	ReadCheckpoint(connector string) (epoch uint64, data []byte, ok bool)
}

// Letter is a change a connector could not apply: a projection the system
// refused (a constraint or type violation) or a source change that could
// not become an edit. It stays in the connector's dead-letter queue (held
// by the control plane, so it survives the connector moving) until it is
// replayed successfully or discarded.
type Letter struct {
	ID        uint64
	Direction string // DirectionProject or DirectionCapture
	Entity    string
	RecordID  string
	Error     string
	At        time.Time
	Attempts  uint32
	Replay    bool // an operator asked for a retry
}

// Dead-letter directions.
const (
	DirectionProject = "project"
	DirectionCapture = "capture"
)

// DeadLetters is a connector's dead-letter queue.
type DeadLetters interface {
	Add(ctx context.Context, connector string, l Letter) error
	List(connector string) []Letter
	// Resolve reports the outcome of a replay: nil removes the entry.
	Resolve(ctx context.Context, connector string, id uint64, failure error) error
}

// Observer receives connector measurements; the agent wires Prometheus.
type Observer interface {
	// Captured reports a source transaction made durable as edits, and how
	// long after its commit at the source.
	Captured(connector string, edits int, lag time.Duration)
	// Projected reports a record written into the system, and how long
	// after the edit that changed it.
	Projected(connector string, lag time.Duration)
	// Resnapshot reports that capture could not trust its source position
	// (a lost, invalidated or recreated replication slot) and starts over
	// from a new snapshot, and why.
	Resnapshot(connector, reason string)
}

// Runnable is a started connector.
type Runnable interface {
	// Run syncs until ctx ends; an error stops this attempt (the manager
	// retries with backoff).
	Run(ctx context.Context) error
}

// Factory builds a connector from its declaration, for the given epoch.
type Factory func(decl crdt.ConnectorDecl, epoch uint64) (Runnable, error)

// Status is what the manager knows of one connector on this node.
type Status struct {
	Name    string
	Kind    string
	Epoch   uint64
	Running bool
	Since   time.Time
	// LastError is the error that ended the last attempt, if any.
	LastError string
}

// Manager runs the connectors placed on this node, stops the ones moved
// away, and restarts a failed one with capped exponential backoff and
// jitter. Every goroutine it starts ends before Run returns.
type Manager struct {
	placement Placement
	schema    SchemaSource
	factory   Factory
	log       *slog.Logger

	mu      sync.Mutex
	running map[string]*instance
}

type instance struct {
	decl   crdt.ConnectorDecl
	epoch  uint64
	cancel context.CancelFunc
	done   chan struct{}
	status Status
}

// NewManager returns a manager; Run starts it.
func NewManager(p Placement, schema SchemaSource, f Factory, log *slog.Logger) *Manager {
	return &Manager{placement: p, schema: schema, factory: f, log: log.With("component", "connectors"), running: map[string]*instance{}}
}

// Run reconciles every half second until ctx ends, then stops every connector.
func (m *Manager) Run(ctx context.Context) {
	t := time.NewTicker(500 * time.Millisecond)
	defer t.Stop()
	for {
		m.reconcile(ctx)
		select {
		case <-ctx.Done():
			m.mu.Lock()
			insts := make([]*instance, 0, len(m.running))
			for _, in := range m.running {
				in.cancel()
				insts = append(insts, in)
			}
			m.mu.Unlock()
			for _, in := range insts {
				<-in.done
			}
			return
		case <-t.C:
		}
	}
}

func (m *Manager) reconcile(ctx context.Context) {
	owned := m.placement.Owned()
	decls := map[string]crdt.ConnectorDecl{}
	for _, d := range m.schema.Schema().Connectors {
		decls[d.Name] = d
	}
	m.mu.Lock()
	defer m.mu.Unlock()
	for name, in := range m.running {
		epoch, ok := owned[name]
		if !ok || epoch != in.epoch || !sameDecl(decls[name], in.decl) {
			m.log.Info("stopping connector", "connector", name, "epoch", in.epoch, "placed_here", ok)
			in.cancel()
			<-in.done
			delete(m.running, name)
		}
	}
	for name, epoch := range owned {
		if _, ok := m.running[name]; ok {
			continue
		}
		decl, ok := decls[name]
		if !ok {
			continue
		}
		cctx, cancel := context.WithCancel(ctx)
		in := &instance{decl: decl, epoch: epoch, cancel: cancel, done: make(chan struct{}),
			status: Status{Name: name, Kind: decl.Kind, Epoch: epoch, Since: time.Now()}}
		m.running[name] = in
		m.log.Info("starting connector", "connector", name, "kind", decl.Kind, "epoch", epoch)
		go m.supervise(cctx, in)
	}
}

func sameDecl(a, b crdt.ConnectorDecl) bool {
	return a.Name == b.Name && a.Kind == b.Kind && a.Line == b.Line && len(a.Config) == len(b.Config)
}

// supervise runs one connector until its context ends, retrying failures.
func (m *Manager) supervise(ctx context.Context, in *instance) {
	defer close(in.done)
	backoff := 500 * time.Millisecond
	for ctx.Err() == nil {
		r, err := m.factory(in.decl, in.epoch)
		if err == nil {
			m.setStatus(in, true, "")
			err = r.Run(ctx)
		}
		if ctx.Err() != nil {
			return
		}
		msg := "stopped"
		if err != nil {
			msg = err.Error()
		}
		m.setStatus(in, false, msg)
		m.log.Error("connector failed; retrying", "connector", in.decl.Name, "err", msg, "in", backoff)
		select {
		case <-ctx.Done():
			return
		case <-time.After(backoff/2 + time.Duration(rand.Int64N(int64(backoff)))):
		}
		if backoff *= 2; backoff > 30*time.Second {
			backoff = 30 * time.Second
		}
	}
}

func (m *Manager) setStatus(in *instance, running bool, lastErr string) {
	m.mu.Lock()
	defer m.mu.Unlock()
	in.status.Running = running
	if lastErr != "" {
		in.status.LastError = lastErr
	}
}

// Statuses returns the connectors this node runs.
func (m *Manager) Statuses() []Status {
	m.mu.Lock()
	defer m.mu.Unlock()
	var out []Status
	for _, in := range m.running {
		out = append(out, in.status)
	}
	sort.Slice(out, func(i, j int) bool { return out[i].Name < out[j].Name })
	return out
}
