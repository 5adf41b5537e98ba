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
	Name  string
	Kind  string
	Epoch uint64
	// Running is set while an attempt runs; false between a failed attempt
	// and its retry.
	Running bool
	// Since is when this node started the connector under this epoch.
	Since time.Time
	// Attempts counts the attempts started under this epoch (1 for a
	// connector that never failed).
	Attempts int
	// Restarts counts, since this node started, the attempts of this
	// connector that ended with an error and were retried (all epochs).
	Restarts uint64
	// LastError is the error that ended the last attempt, if any, and
	// LastErrorAt when it did.
	LastError   string
	LastErrorAt time.Time
	// NextRetry is when the next attempt starts; zero while one runs.
	NextRetry time.Time
	// Report is what the connector says of itself, when its Runnable is a
	// Reporter: the running attempt's, or after a failure the last one's,
	// with State set to StateFailed. Nil otherwise.
	Report *Report
}

// Manager runs the connectors placed on this node, stops the ones moved
// away, and restarts a failed one with capped exponential backoff and
// jitter. Every goroutine it starts ends before Run returns. It is safe for
// concurrent use: Statuses may be called while connectors run.
type Manager struct {
	placement Placement
	schema    SchemaSource
	factory   Factory
	log       *slog.Logger

	// mu guards running, restarts and every instance's status and reporter.
	// It is never held while waiting for a connector or calling into one
	// (Run, Report), so a slow connector cannot stall a status request.
	mu       sync.Mutex
	running  map[string]*instance
	restarts map[string]uint64
}

type instance struct {
	decl   crdt.ConnectorDecl
	epoch  uint64
	cancel context.CancelFunc
	done   chan struct{}
	// status and reporter are guarded by Manager.mu.
	status   Status
	reporter Reporter
}

// NewManager returns a manager; Run starts it.
func NewManager(p Placement, schema SchemaSource, f Factory, log *slog.Logger) *Manager {
	return &Manager{placement: p, schema: schema, factory: f, log: log.With("component", "connectors"),
		running: map[string]*instance{}, restarts: map[string]uint64{}}
}

// Run reconciles every 200 ms (placement changes take effect within it) until ctx ends, then stops every connector.
func (m *Manager) Run(ctx context.Context) {
	t := time.NewTicker(200 * time.Millisecond)
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

// reconcile stops the connectors no longer placed here (or redeclared),
// waits until they have stopped, then starts the ones newly placed here: a
// connector moving epochs never runs twice at once on this node. Only Run's
// goroutine calls it.
func (m *Manager) reconcile(ctx context.Context) {
	owned := m.placement.Owned()
	decls := map[string]crdt.ConnectorDecl{}
	for _, d := range m.schema.Schema().Connectors {
		decls[d.Name] = d
	}
	var stopping []*instance
	m.mu.Lock()
	for name, in := range m.running {
		epoch, ok := owned[name]
		if !ok || epoch != in.epoch || !sameDecl(decls[name], in.decl) {
			m.log.Info("stopping connector", "connector", name, "epoch", in.epoch, "placed_here", ok)
			in.cancel()
			stopping = append(stopping, in)
			delete(m.running, name)
		}
	}
	m.mu.Unlock()
	// Wait without the lock: a stopping connector's supervisor may still
	// record its status.
	for _, in := range stopping {
		<-in.done
	}
	m.mu.Lock()
	defer m.mu.Unlock()
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
		m.mu.Lock()
		in.status.Attempts++
		m.mu.Unlock()
		r, err := m.factory(in.decl, in.epoch)
		if err == nil {
			m.started(in, r)
			err = r.Run(ctx)
		}
		if ctx.Err() != nil {
			return
		}
		msg := "stopped"
		if err != nil {
			msg = err.Error()
		}
		wait := backoff/2 + time.Duration(rand.Int64N(int64(backoff)))
		m.failed(in, msg, wait)
		m.log.Error("connector failed; retrying", "connector", in.decl.Name, "err", msg, "in", wait)
		select {
		case <-ctx.Done():
			return
		case <-time.After(wait):
		}
		if backoff *= 2; backoff > 30*time.Second {
			backoff = 30 * time.Second
		}
	}
}

// started records a new attempt's Runnable.
func (m *Manager) started(in *instance, r Runnable) {
	m.mu.Lock()
	defer m.mu.Unlock()
	in.status.Running = true
	in.status.NextRetry = time.Time{}
	in.reporter, _ = r.(Reporter)
}

// failed records an attempt that ended with msg; the next starts after wait.
func (m *Manager) failed(in *instance, msg string, wait time.Duration) {
	m.mu.Lock()
	defer m.mu.Unlock()
	now := time.Now()
	in.status.Running = false
	in.status.LastError, in.status.LastErrorAt = msg, now
	in.status.NextRetry = now.Add(wait)
	m.restarts[in.decl.Name]++
}

// Statuses returns the connectors this node runs, by name, each with its
// connector's own Report when it has one.
func (m *Manager) Statuses() []Status {
	m.mu.Lock()
	out := make([]Status, 0, len(m.running))
	reporters := make([]Reporter, 0, len(m.running))
	for _, in := range m.running {
		st := in.status
		st.Restarts = m.restarts[in.decl.Name]
		out = append(out, st)
		reporters = append(reporters, in.reporter)
	}
	m.mu.Unlock()
	// Ask the connectors outside the lock (Report takes their own locks).
	for i, r := range reporters {
		if r == nil {
			continue
		}
		rep := r.Report()
		if !out[i].Running {
			rep.State = StateFailed
		}
		out[i].Report = &rep
	}
	sort.Slice(out, func(i, j int) bool { return out[i].Name < out[j].Name })
	return out
}
