package connectors_test

import (
	"context"
	"errors"
	"io"
	"log/slog"
	"sync"
	"sync/atomic"
	"testing"
	"time"

	"github.com/lattice-sync/lattice/connectors"
	"github.com/lattice-sync/lattice/crdt"
)

type placement struct {
	mu    sync.Mutex
	owned map[string]uint64
}

func (p *placement) Owned() map[string]uint64 {
	p.mu.Lock()
	defer p.mu.Unlock()
	out := map[string]uint64{}
	for k, v := range p.owned {
		out[k] = v
	}
	return out
}

func (p *placement) set(m map[string]uint64) {
	p.mu.Lock()
	p.owned = m
	p.mu.Unlock()
}

type schema struct{ s *crdt.Schema }

func (s schema) Schema() *crdt.Schema { return s.s }

type runFunc func(ctx context.Context) error

func (f runFunc) Run(ctx context.Context) error { return f(ctx) }

func waitUntil(t *testing.T, what string, cond func() bool) {
	t.Helper()
	deadline := time.Now().Add(10 * time.Second)
	for !cond() {
		if time.Now().After(deadline) {
			t.Fatalf("%s: not within 10 s", what)
		}
		time.Sleep(20 * time.Millisecond)
	}
}

func TestManagerFollowsPlacement(t *testing.T) {
	p := &placement{}
	sch := schema{&crdt.Schema{Connectors: []crdt.ConnectorDecl{{Name: "crm", Kind: "fake"}, {Name: "erp", Kind: "fake"}}}}
	var running sync.Map // name -> epoch
	var starts, failures atomic.Int64
	factory := func(decl crdt.ConnectorDecl, epoch uint64) (connectors.Runnable, error) {
		return runFunc(func(ctx context.Context) error {
			starts.Add(1)
			if decl.Name == "erp" && failures.Add(1) <= 2 {
				return errors.New("database unreachable")
			}
			running.Store(decl.Name, epoch)
			<-ctx.Done()
			running.Delete(decl.Name)
			return ctx.Err()
		}), nil
	}
	m := connectors.NewManager(p, sch, factory, slog.New(slog.NewTextHandler(io.Discard, nil)))
	ctx, cancel := context.WithCancel(context.Background())
	done := make(chan struct{})
	go func() { m.Run(ctx); close(done) }()

	is := func(name string, epoch uint64) func() bool {
		return func() bool { v, ok := running.Load(name); return ok && v.(uint64) == epoch }
	}
	gone := func(name string) func() bool {
		return func() bool { _, ok := running.Load(name); return !ok }
	}
	p.set(map[string]uint64{"crm": 1})
	waitUntil(t, "crm starts at epoch 1", is("crm", 1))
	// A new epoch (moved away and back) restarts it under the new epoch.
	p.set(map[string]uint64{"crm": 3})
	waitUntil(t, "crm restarts at epoch 3", is("crm", 3))
	// Placed elsewhere: stopped.
	p.set(map[string]uint64{})
	waitUntil(t, "crm stops when placed elsewhere", gone("crm"))
	// A failing connector is retried with backoff until it runs.
	p.set(map[string]uint64{"erp": 1})
	waitUntil(t, "erp runs after two failures", is("erp", 1))
	if f := failures.Load(); f < 3 {
		t.Errorf("erp ran after %d attempts, want 3 (two failures then success)", f)
	}
	st := m.Statuses()
	if len(st) != 1 || st[0].Name != "erp" || !st[0].Running || st[0].LastError != "database unreachable" {
		t.Errorf("statuses = %+v", st)
	}
	// A connector placed here but not declared is not started.
	p.set(map[string]uint64{"erp": 1, "ghost": 1})
	time.Sleep(700 * time.Millisecond)
	if _, ok := running.Load("ghost"); ok {
		t.Error("an undeclared connector was started")
	}
	cancel()
	select {
	case <-done:
	case <-time.After(10 * time.Second):
		t.Fatal("Run did not return after cancel")
	}
	if _, ok := running.Load("erp"); ok {
		t.Error("a connector kept running after the manager stopped")
	}
}

// reporting is a connector that reports on itself; fail makes its running
// attempt end with an error.
type reporting struct {
	mu       sync.Mutex
	captured uint64
	fail     chan error
}

func (r *reporting) Run(ctx context.Context) error {
	for {
		select {
		case <-ctx.Done():
			return ctx.Err()
		case err := <-r.fail:
			return err
		case <-time.After(time.Millisecond):
			r.mu.Lock()
			r.captured++
			r.mu.Unlock()
		}
	}
}

func (r *reporting) Report() connectors.Report {
	r.mu.Lock()
	defer r.mu.Unlock()
	return connectors.Report{Mode: "logical", State: connectors.StateStreaming, SourcePosition: "0/16B3748",
		CapturedEdits: r.captured, ProjectionCursor: crdt.VV{}.WithDot(crdt.Dot{Node: "n1", Seq: 7})}
}

func TestManagerReportPassthrough(t *testing.T) {
	p := &placement{}
	sch := schema{&crdt.Schema{Connectors: []crdt.ConnectorDecl{{Name: "crm", Kind: "fake"}, {Name: "plain", Kind: "fake"}}}}
	rep := &reporting{fail: make(chan error)}
	factory := func(decl crdt.ConnectorDecl, epoch uint64) (connectors.Runnable, error) {
		if decl.Name == "plain" {
			return runFunc(func(ctx context.Context) error { <-ctx.Done(); return ctx.Err() }), nil
		}
		return rep, nil
	}
	m := connectors.NewManager(p, sch, factory, slog.New(slog.NewTextHandler(io.Discard, nil)))
	ctx, cancel := context.WithCancel(context.Background())
	done := make(chan struct{})
	go func() { m.Run(ctx); close(done) }()
	defer func() { cancel(); <-done }()
	// Status requests race with the running connectors (run with -race).
	stop := make(chan struct{})
	var readers sync.WaitGroup
	readers.Add(1)
	go func() {
		defer readers.Done()
		for {
			select {
			case <-stop:
				return
			default:
				_ = m.Statuses()
			}
		}
	}()
	defer func() { close(stop); readers.Wait() }()

	byName := func() map[string]connectors.Status {
		out := map[string]connectors.Status{}
		for _, s := range m.Statuses() {
			out[s.Name] = s
		}
		return out
	}
	p.set(map[string]uint64{"crm": 2, "plain": 1})
	// Each connector starts on its own goroutine: wait for both.
	waitUntil(t, "crm reports captured edits and plain runs", func() bool {
		st := byName()
		s, ok := st["crm"]
		return ok && s.Running && s.Report != nil && s.Report.CapturedEdits > 0 && st["plain"].Running
	})
	st := byName()
	crm := st["crm"]
	if r := crm.Report; r.Mode != "logical" || r.State != connectors.StateStreaming || r.SourcePosition != "0/16B3748" ||
		r.ProjectionCursor.String() != "{n1:7}" {
		t.Errorf("crm report = %+v", *r)
	}
	if crm.Epoch != 2 || crm.Attempts != 1 || crm.Restarts != 0 || crm.LastError != "" || !crm.NextRetry.IsZero() {
		t.Errorf("crm status = %+v", crm)
	}
	if plain, ok := st["plain"]; !ok || !plain.Running || plain.Report != nil {
		t.Errorf("a connector that is not a Reporter: status %+v, want running without a report", plain)
	}

	// A failed attempt: not running, the error and the retry time are
	// known, and the last report is kept with state failed.
	rep.fail <- errors.New("replication slot is gone")
	waitUntil(t, "crm shows the failure", func() bool { return !byName()["crm"].Running })
	crm = byName()["crm"]
	if crm.LastError != "replication slot is gone" || crm.LastErrorAt.IsZero() || crm.NextRetry.IsZero() || crm.Restarts != 1 ||
		crm.Report == nil || crm.Report.State != connectors.StateFailed || crm.Report.CapturedEdits == 0 {
		t.Errorf("crm after a failure: %+v report %+v", crm, crm.Report)
	}
	// The retry runs again: attempt 2, the restart still counted.
	waitUntil(t, "crm retried", func() bool { s := byName()["crm"]; return s.Running && s.Attempts == 2 })
	crm = byName()["crm"]
	if crm.Restarts != 1 || crm.Report.State != connectors.StateStreaming || !crm.NextRetry.IsZero() {
		t.Errorf("crm after the retry: %+v report %+v", crm, crm.Report)
	}
}
