package crdt

import (
	"errors"
	"fmt"
	"sync"
	"time"
)

// Timestamp is a hybrid logical clock value: milliseconds since the Unix
// epoch in the high 48 bits and a logical counter in the low 16 bits. Ordering
// timestamps as integers orders them by (physical, logical).
type Timestamp uint64

const logicalBits = 16
const logicalMask = 1<<logicalBits - 1

// MakeTimestamp builds a Timestamp from wall milliseconds and a logical counter.
func MakeTimestamp(ms int64, logical uint16) Timestamp {
	return Timestamp(uint64(ms)<<logicalBits | uint64(logical))
}

// TimestampFromTime converts a wall time to a Timestamp with logical 0.
func TimestampFromTime(t time.Time) Timestamp { return MakeTimestamp(t.UnixMilli(), 0) }

// Millis is the physical part in milliseconds since the Unix epoch.
func (t Timestamp) Millis() int64 { return int64(uint64(t) >> logicalBits) }

// Logical is the logical counter.
func (t Timestamp) Logical() uint16 { return uint16(uint64(t) & logicalMask) }

// Time is the physical part as a time.Time (UTC).
func (t Timestamp) Time() time.Time { return time.UnixMilli(t.Millis()).UTC() }

func (t Timestamp) String() string {
	return fmt.Sprintf("%s+%d", t.Time().Format("2006-01-02T15:04:05.000Z"), t.Logical())
}

// ErrClockOffset is returned by Update when a received timestamp is further
// ahead of the local physical clock than the configured maximum offset.
var ErrClockOffset = errors.New("clock offset exceeds max-offset")

// OffsetError says by how much a received timestamp was ahead. It wraps ErrClockOffset.
type OffsetError struct {
	Received  Timestamp
	Local     int64 // local physical milliseconds
	MaxOffset time.Duration
}

func (e *OffsetError) Error() string {
	ahead := time.Duration(e.Received.Millis()-e.Local) * time.Millisecond
	return fmt.Sprintf("timestamp %s is %s ahead of the local clock, beyond max-offset %s: check NTP on the sending node",
		e.Received, ahead, e.MaxOffset)
}

func (e *OffsetError) Unwrap() error { return ErrClockOffset }

// ClockConfig configures a Clock.
type ClockConfig struct {
	// Physical returns wall milliseconds since the Unix epoch. Required:
	// production passes a wrapper over time.Now, tests and the fault harness a
	// skewable one.
	Physical func() int64
	// MaxOffset is how far ahead of local physical time a received timestamp
	// may be. Zero means DefaultMaxOffset.
	MaxOffset time.Duration
	// Floor is a timestamp the clock must issue above, e.g. the ceiling
	// persisted before a restart.
	Floor Timestamp
	// Persist, when set, is called with a new ceiling before the clock issues
	// any timestamp at or above the previous ceiling. The caller must make the
	// ceiling durable before returning; after a restart, pass it as Floor.
	// If Persist fails, Now and Update panic: issuing a timestamp that a
	// restart could reissue would break monotonicity.
	Persist func(ceiling Timestamp) error
	// Window is how far ahead of issued timestamps the persisted ceiling is
	// set (default 200ms). Keep it below MaxOffset: after a restart the clock
	// may run up to Window ahead of physical time.
	Window time.Duration
}

// DefaultMaxOffset is the default bound on accepted clock skew.
const DefaultMaxOffset = 500 * time.Millisecond

// Clock is a hybrid logical clock. It is safe for concurrent use.
//
// Properties (see doc.go): Now never returns a value less than or equal to a
// value it returned before or a value passed to a successful Update, also
// across restarts when a Persist/Floor pair is wired; Update refuses remote
// timestamps beyond MaxOffset and leaves the clock unchanged.
type Clock struct {
	physical  func() int64
	maxOffset time.Duration
	persist   func(Timestamp) error
	window    int64 // ms

	mu struct {
		sync.Mutex
		last    Timestamp
		ceiling Timestamp
	}
}

// NewClock returns a Clock.
func NewClock(cfg ClockConfig) *Clock {
	if cfg.Physical == nil {
		panic("crdt: ClockConfig.Physical is required")
	}
	c := &Clock{physical: cfg.Physical, maxOffset: cfg.MaxOffset, persist: cfg.Persist}
	if c.maxOffset <= 0 {
		c.maxOffset = DefaultMaxOffset
	}
	w := cfg.Window
	if w <= 0 {
		w = 200 * time.Millisecond
	}
	c.window = w.Milliseconds()
	c.mu.last = cfg.Floor
	c.mu.ceiling = cfg.Floor
	return c
}

// WallClock returns wall milliseconds from the system clock.
func WallClock() int64 { return time.Now().UnixMilli() }

// MaxOffset is the configured bound on accepted skew.
func (c *Clock) MaxOffset() time.Duration { return c.maxOffset }

// Now returns a timestamp greater than every timestamp this clock issued or
// received before.
func (c *Clock) Now() Timestamp {
	pt := MakeTimestamp(c.physical(), 0)
	c.mu.Lock()
	defer c.mu.Unlock()
	if pt > c.mu.last {
		c.mu.last = pt
	} else {
		c.mu.last = c.next(c.mu.last)
	}
	c.ensureCeiling()
	return c.mu.last
}

// next returns the successor of t: the logical counter advances; on overflow
// the physical part advances by one millisecond.
func (c *Clock) next(t Timestamp) Timestamp { return t + 1 }

// Update merges a timestamp received from a peer or a source system, so that
// later Now values are greater than it. A timestamp further than MaxOffset
// ahead of local physical time is refused with an *OffsetError and the clock
// is not changed.
func (c *Clock) Update(remote Timestamp) error {
	phys := c.physical()
	if remote.Millis()-phys > c.maxOffset.Milliseconds() {
		return &OffsetError{Received: remote, Local: phys, MaxOffset: c.maxOffset}
	}
	c.mu.Lock()
	defer c.mu.Unlock()
	if remote > c.mu.last {
		c.mu.last = remote
		c.ensureCeiling()
	}
	return nil
}

// Last returns the greatest timestamp issued or received, without advancing.
func (c *Clock) Last() Timestamp {
	c.mu.Lock()
	defer c.mu.Unlock()
	return c.mu.last
}

// ensureCeiling persists a new ceiling when last reached the old one. Called with mu held.
func (c *Clock) ensureCeiling() {
	if c.persist == nil || c.mu.last < c.mu.ceiling {
		return
	}
	ceiling := MakeTimestamp(c.mu.last.Millis()+c.window, 0)
	if err := c.persist(ceiling); err != nil {
		panic(fmt.Sprintf("crdt: persist HLC ceiling: %v", err))
	}
	c.mu.ceiling = ceiling
}
