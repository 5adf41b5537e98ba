package connectors

import (
	"time"

	"github.com/lattice-sync/lattice/crdt"
)

// Connector states, as Report.State and the cluster's connector status give
// them. A connector reports the first three itself; the manager reports
// StateFailed for a connector whose last attempt ended and that waits for
// its retry, and the control plane knows StatePaused.
const (
	// StateStarting: connecting, preparing the source, catching up.
	StateStarting = "starting"
	// StateSnapshotting: reading the rows that existed before capture began.
	StateSnapshotting = "snapshotting"
	// StateStreaming: following the source's change stream and projecting.
	StateStreaming = "streaming"
	// StatePaused: an operator paused the connector, or it paused itself
	// (a schema change it cannot go on with); it does not run.
	StatePaused = "paused"
	// StateFailed: the last attempt ended with an error; a retry is due.
	StateFailed = "failed"
)

// Report is what a running connector knows of itself. Every field is as of
// the moment Report was called; counts start at zero when the connector
// starts (each attempt is a new connector).
type Report struct {
	// Mode is how the connector captures, e.g. "logical" (PostgreSQL logical
	// replication) or "project-only".
	Mode string
	// State is one of StateStarting, StateSnapshotting, StateStreaming.
	State string
	// SourcePosition is the source position last confirmed to the source
	// (PostgreSQL: the LSN reported as flushed, below which the source may
	// discard its log); empty until the first confirmation.
	SourcePosition string
	// ReceivedPosition is the last source position received, confirmed or not.
	ReceivedPosition string
	// ProjectionCursor is the version vector of the edits projection has
	// gone through (nil until projection has one).
	ProjectionCursor crdt.VV
	// CaptureLag is, as last measured, the time from a source commit to its
	// edits being durable; LastCapture is when it was measured.
	CaptureLag  time.Duration
	LastCapture time.Time
	// ProjectionLag is, as last measured, the time from an edit to its
	// record being written into the system; LastProjection is when.
	ProjectionLag  time.Duration
	LastProjection time.Time
	// CapturedEdits, ProjectedRecords and DeadLetters count, since start,
	// source changes made edits, records written into the system, and
	// changes sent to the dead-letter queue.
	CapturedEdits    uint64
	ProjectedRecords uint64
	DeadLetters      uint64
	// LastError is the last error the connector met without stopping (a
	// refused change, a skipped row), and LastErrorAt when; errors that stop
	// the connector are the manager's Status.LastError.
	LastError   string
	LastErrorAt time.Time
	// StartedAt is when this connector started.
	StartedAt time.Time
	// RateLimits are the connector's rate-limit pools (reads, writes), as
	// of now; none when it is not rate-limited.
	RateLimits []RateLimit
}

// RateLimit is one rate-limit pool of a connector: a token bucket of rows
// per second.
type RateLimit struct {
	// Pool is PoolReads (rows captured from the source) or PoolWrites (rows
	// projected into it).
	Pool string
	// Limit is the configured rate in rows per second, Burst the most rows
	// taken at once with a full budget.
	Limit float64
	Burst int
	// Tokens is the budget available now, in rows (at most Burst).
	Tokens float64
	// Rate is the rate of rows taken, measured over the last 10 seconds.
	Rate float64
	// Waited is the time spent waiting for budget, and Rows the rows taken,
	// since the connector started.
	Waited time.Duration
	Rows   uint64
}

// Rate-limit pools.
const (
	PoolReads  = "reads"
	PoolWrites = "writes"
)

// Reporter is implemented by a Runnable that can describe itself while it
// runs. Report is called from other goroutines than Run's (an operator's
// status request), at any time, also after Run returned: it must be safe
// for concurrent use and cheap (no I/O).
type Reporter interface {
	Report() Report
}
