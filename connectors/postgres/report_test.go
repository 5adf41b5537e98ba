package postgres

import (
	"context"
	"errors"
	"io"
	"log/slog"
	"sync"
	"testing"
	"time"

	"github.com/lattice-sync/lattice/connectors"
	"github.com/lattice-sync/lattice/crdt"
)

type fakeObserver struct {
	mu                  sync.Mutex
	captured, projected int
}

func (o *fakeObserver) Captured(string, int, time.Duration) { o.mu.Lock(); o.captured++; o.mu.Unlock() }
func (o *fakeObserver) Projected(string, time.Duration)     { o.mu.Lock(); o.projected++; o.mu.Unlock() }
func (o *fakeObserver) Resnapshot(string, string)           {}

type fakeLetters struct{ added int }

func (q *fakeLetters) Add(context.Context, string, connectors.Letter) error { q.added++; return nil }
func (q *fakeLetters) List(string) []connectors.Letter                      { return nil }
func (q *fakeLetters) Resolve(context.Context, string, uint64, error) error { return nil }

type fakeCheckpoints struct {
	refuse bool
	data   []byte
}

func (p *fakeCheckpoints) WriteCheckpoint(_ context.Context, _ string, _ uint64, data []byte) error {
	if p.refuse {
		return errors.New("stale epoch")
	}
	p.data = data
	return nil
}
func (p *fakeCheckpoints) ReadCheckpoint(string) (uint64, []byte, bool) {
	return 1, p.data, p.data != nil
}

// TestReportThroughHooks: what passes through the observer, dead-letter
// queue and checkpointer shows in Report, and still reaches them.
func TestReportThroughHooks(t *testing.T) {
	obs, dlq, cps := &fakeObserver{}, &fakeLetters{}, &fakeCheckpoints{}
	cfg := &Config{Name: "crm", Capture: true, Project: true}
	log := slog.New(slog.NewTextHandler(io.Discard, nil))
	c := New(cfg, nil, nil, log, WithObserver(obs), WithDeadLetters(dlq), WithCheckpoints(cps, 3), WithReport())
	ctx := context.Background()

	r := c.Report()
	if r.Mode != "logical" || r.State != connectors.StateStarting || r.StartedAt.IsZero() || r.SourcePosition != "" || r.CapturedEdits != 0 {
		t.Errorf("report before anything happened: %+v", r)
	}
	c.stats().setState(connectors.StateSnapshotting)
	if r := c.Report(); r.State != connectors.StateSnapshotting {
		t.Errorf("state while snapshotting = %q", r.State)
	}
	c.obs.Captured("crm", 3, 40*time.Millisecond)
	c.obs.Captured("crm", 2, 25*time.Millisecond)
	c.obs.Projected("crm", 60*time.Millisecond)
	if err := c.deadLetter(ctx, connectors.DirectionProject, "contact", "7", errors.New(`violates check constraint "no_test_names"`)); err != nil {
		t.Fatal(err)
	}
	if err := c.checkpoints.WriteCheckpoint(ctx, "crm", 3, []byte(`{"slot":"lattice_crm","lsn":"0/16B3748"}`)); err != nil {
		t.Fatal(err)
	}
	c.stats().projectedTo(crdt.VV{}.WithDot(crdt.Dot{Node: "n1", Seq: 9}))
	close(c.ready)

	r = c.Report()
	if r.State != connectors.StateStreaming || r.CapturedEdits != 5 || r.CaptureLag != 25*time.Millisecond || r.LastCapture.IsZero() ||
		r.ProjectedRecords != 1 || r.ProjectionLag != 60*time.Millisecond || r.DeadLetters != 1 ||
		r.SourcePosition != "0/16B3748" || r.ReceivedPosition != "0/16B3748" || r.ProjectionCursor.String() != "{n1:9}" {
		t.Errorf("report: %+v", r)
	}
	if r.LastError != `project contact 7 sent to the dead-letter queue: violates check constraint "no_test_names"` || r.LastErrorAt.IsZero() {
		t.Errorf("last error %q at %v", r.LastError, r.LastErrorAt)
	}
	c.stats().received(0x16B3800)
	if r := c.Report(); r.ReceivedPosition != "0/16B3800" || r.SourcePosition != "0/16B3748" {
		t.Errorf("received %s confirmed %s", r.ReceivedPosition, r.SourcePosition)
	}
	// A refused checkpoint confirms nothing.
	cps.refuse = true
	if err := c.checkpoints.WriteCheckpoint(ctx, "crm", 3, []byte(`{"slot":"lattice_crm","lsn":"0/FFFFFFF"}`)); err == nil {
		t.Fatal("refused checkpoint: no error")
	}
	if r := c.Report(); r.SourcePosition != "0/16B3748" {
		t.Errorf("confirmed after a refused checkpoint: %s", r.SourcePosition)
	}
	// Everything reached the wrapped hooks.
	if obs.captured != 2 || obs.projected != 1 || dlq.added != 1 || string(cps.data) != `{"slot":"lattice_crm","lsn":"0/16B3748"}` {
		t.Errorf("forwarded: captured %d projected %d letters %d checkpoint %s", obs.captured, obs.projected, dlq.added, cps.data)
	}
}

// TestReportWithoutStats: without WithReport, Report still gives mode and
// state, and the hooks are no-ops.
func TestReportWithoutStats(t *testing.T) {
	c := New(&Config{Name: "erp", Project: true}, nil, nil, slog.New(slog.NewTextHandler(io.Discard, nil)))
	c.stats().setState(connectors.StateSnapshotting)
	c.stats().received(1)
	c.stats().fail(errors.New("x"))
	if r := c.Report(); r.Mode != "project-only" || r.State != connectors.StateStarting || r.CapturedEdits != 0 || !r.StartedAt.IsZero() {
		t.Errorf("report without stats: %+v", r)
	}
	if c.obs != nil || c.dlq != nil || c.checkpoints != nil {
		t.Error("hooks installed without WithReport")
	}
}
