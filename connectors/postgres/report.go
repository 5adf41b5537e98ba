package postgres

import (
	"context"
	"encoding/json"
	"fmt"
	"sync"
	"time"

	"github.com/jackc/pglogrepl"

	"github.com/lattice-sync/lattice/connectors"
	"github.com/lattice-sync/lattice/crdt"
)

// Runtime report (connectors.Reporter).
//
// A connector built with WithReport keeps a stats value: counters,
// positions and lags as last measured, behind a mutex. It takes the place
// of the connector's observer, and wraps its dead-letter queue and
// checkpointer, so what passes through those hooks is counted with no
// change to capture or projection: capture and projection lag, captured
// edits, projected records, dead letters sent (and the last refusal as the
// last error), and the source position confirmed by each checkpoint. Every
// call is forwarded to the hook it wraps, unchanged.
//
// The rest needs calls from capture and projection, through c.stats()
// (nil-safe: a connector built without WithReport reports only its mode and
// state):
//
//   - setState(connectors.StateSnapshotting) in capture, before the
//     initial snapshot. StateStarting before it and StateStreaming once
//     c.ready is closed are derived without a call.
//   - received(lsn) in stream, for every XLogData message
//     (xld.WALStart + pglogrepl.LSN(len(xld.WALData))).
//   - confirmed(flushed) in stream's status, after
//     SendStandbyStatusUpdate succeeds (without it the confirmed position
//     moves only with checkpoints, which a connector built without
//     WithCheckpoints never writes).
//   - projectedTo(pos) in project, after projectAll and after each batch
//     (the cursor the next batch starts from).
//   - fail(err) where an error is logged and the connector goes on: a
//     skipped snapshot row, a refused captured row, a malformed projection
//     message.

var _ connectors.Reporter = (*Connector)(nil)

// WithReport makes the connector keep what Report gives. It wraps the
// observer, dead-letter queue and checkpointer set by the options before
// it: pass it after WithObserver, WithDeadLetters and WithCheckpoints.
func WithReport() Option {
	return func(c *Connector) {
		s := &stats{next: c.obs, started: time.Now().UTC()}
		c.obs = s
		if c.dlq != nil {
			c.dlq = &reportedLetters{s: s, next: c.dlq}
		}
		if c.checkpoints != nil {
			c.checkpoints = &reportedCheckpoints{s: s, next: c.checkpoints}
		}
	}
}

// stats returns the connector's stats; nil without WithReport.
func (c *Connector) stats() *stats {
	s, _ := c.obs.(*stats)
	return s
}

// Report describes the connector as it runs (connectors.Reporter). It takes
// only the stats' mutex and does no I/O.
func (c *Connector) Report() connectors.Report {
	r := connectors.Report{Mode: c.modeReport()} // auto.go
	if c.cfg != nil && !c.cfg.Capture {
		r.Mode = "project-only"
	}
	if s := c.stats(); s != nil {
		s.fill(&r)
	}
	r.RateLimits = c.limits().report() // ratelimit.go
	c.pollReport(&r)                   // poll mode (poll.go)
	c.triggerReport(&r)                // trigger mode (trigger.go)
	select {
	case <-c.ready: // capture has its slot and snapshot (or there is no capture)
		r.State = connectors.StateStreaming
	default:
		if r.State == "" {
			r.State = connectors.StateStarting
		}
	}
	return r
}

// stats is what a running connector measured of itself; every method is
// safe for concurrent use and does nothing on a nil *stats.
type stats struct {
	next    connectors.Observer // the observer WithReport replaced, if any
	started time.Time

	mu struct {
		sync.Mutex
		state                    string
		confirmed, received      pglogrepl.LSN
		cursor                   crdt.VV
		capLag, projLag          time.Duration
		capAt, projAt            time.Time
		captured, projected, dlq uint64
		lastErr                  string
		lastErrAt                time.Time
	}
}

func (s *stats) fill(r *connectors.Report) {
	s.mu.Lock()
	defer s.mu.Unlock()
	r.State = s.mu.state
	if s.mu.confirmed != 0 {
		r.SourcePosition = s.mu.confirmed.String()
	}
	// What was confirmed was received, also when received is not reported.
	if rec := max(s.mu.received, s.mu.confirmed); rec != 0 {
		r.ReceivedPosition = rec.String()
	}
	r.ProjectionCursor = append(crdt.VV(nil), s.mu.cursor...)
	r.CaptureLag, r.LastCapture = s.mu.capLag, s.mu.capAt
	r.ProjectionLag, r.LastProjection = s.mu.projLag, s.mu.projAt
	r.CapturedEdits, r.ProjectedRecords, r.DeadLetters = s.mu.captured, s.mu.projected, s.mu.dlq
	r.LastError, r.LastErrorAt = s.mu.lastErr, s.mu.lastErrAt
	r.StartedAt = s.started
}

// setState records a state the connector cannot derive (StateSnapshotting).
func (s *stats) setState(state string) {
	if s == nil {
		return
	}
	s.mu.Lock()
	s.mu.state = state
	s.mu.Unlock()
}

// received records a source position received from the stream.
func (s *stats) received(lsn pglogrepl.LSN) {
	if s == nil {
		return
	}
	s.mu.Lock()
	s.mu.received = max(s.mu.received, lsn)
	s.mu.Unlock()
}

// confirmed records the position confirmed (flushed) to the source.
func (s *stats) confirmed(lsn pglogrepl.LSN) {
	if s == nil {
		return
	}
	s.mu.Lock()
	s.mu.confirmed = max(s.mu.confirmed, lsn)
	s.mu.Unlock()
}

// projectedTo records the projection cursor.
func (s *stats) projectedTo(pos crdt.VV) {
	if s == nil {
		return
	}
	s.mu.Lock()
	s.mu.cursor = append(s.mu.cursor[:0], pos...)
	s.mu.Unlock()
}

// fail records an error the connector went on after.
func (s *stats) fail(err error) {
	if s == nil || err == nil {
		return
	}
	s.failed(err.Error())
}

func (s *stats) failed(msg string) {
	s.mu.Lock()
	s.mu.lastErr, s.mu.lastErrAt = msg, time.Now().UTC()
	s.mu.Unlock()
}

// Captured implements connectors.Observer.
func (s *stats) Captured(connector string, edits int, lag time.Duration) {
	s.mu.Lock()
	s.mu.captured += uint64(edits)
	s.mu.capLag, s.mu.capAt = lag, time.Now().UTC()
	s.mu.Unlock()
	if s.next != nil {
		s.next.Captured(connector, edits, lag)
	}
}

// Projected implements connectors.Observer.
func (s *stats) Projected(connector string, lag time.Duration) {
	s.mu.Lock()
	s.mu.projected++
	s.mu.projLag, s.mu.projAt = lag, time.Now().UTC()
	s.mu.Unlock()
	if s.next != nil {
		s.next.Projected(connector, lag)
	}
}

// Resnapshot implements connectors.Observer.
func (s *stats) Resnapshot(connector, reason string) {
	s.failed("capture started over from a new snapshot: " + reason)
	if s.next != nil {
		s.next.Resnapshot(connector, reason)
	}
}

// reportedLetters counts the changes sent to the dead-letter queue.
type reportedLetters struct {
	s    *stats
	next connectors.DeadLetters
}

func (q *reportedLetters) Add(ctx context.Context, connector string, l connectors.Letter) error {
	if err := q.next.Add(ctx, connector, l); err != nil {
		return err
	}
	q.s.mu.Lock()
	q.s.mu.dlq++
	q.s.mu.Unlock()
	q.s.failed(fmt.Sprintf("%s %s %s sent to the dead-letter queue: %s", l.Direction, l.Entity, l.RecordID, l.Error))
	return nil
}

func (q *reportedLetters) List(connector string) []connectors.Letter { return q.next.List(connector) }

func (q *reportedLetters) Resolve(ctx context.Context, connector string, id uint64, failure error) error {
	return q.next.Resolve(ctx, connector, id, failure)
}

// reportedCheckpoints records the position each accepted checkpoint confirms.
type reportedCheckpoints struct {
	s    *stats
	next connectors.Checkpointer
}

func (p *reportedCheckpoints) WriteCheckpoint(ctx context.Context, connector string, epoch uint64, data []byte) error {
	if err := p.next.WriteCheckpoint(ctx, connector, epoch, data); err != nil {
		return err
	}
	var cp checkpoint
	if json.Unmarshal(data, &cp) == nil {
		if lsn, err := pglogrepl.ParseLSN(cp.LSN); err == nil {
			p.s.confirmed(lsn)
		}
	}
	return nil
}

func (p *reportedCheckpoints) ReadCheckpoint(connector string) (uint64, []byte, bool) {
	return p.next.ReadCheckpoint(connector)
}
