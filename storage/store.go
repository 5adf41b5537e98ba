package storage

import (
	"context"
	"errors"
	"fmt"
	"log/slog"
	"sync"
	"sync/atomic"
	"time"

	"github.com/cockroachdb/pebble/v2"
	"github.com/cockroachdb/pebble/v2/bloom"
	"github.com/cockroachdb/pebble/v2/vfs"

	"github.com/lattice-sync/lattice/crdt"
)

// Sentinel errors.
var (
	// ErrClosed is returned for operations on a closed store.
	ErrClosed = errors.New("store closed")
	// ErrNotFound is returned when a record does not exist.
	ErrNotFound = errors.New("record not found")
	// ErrCorrupt is returned when stored bytes do not decode.
	ErrCorrupt = errors.New("corrupt store data")
	// ErrNodeMismatch is returned when a data directory belongs to another node.
	ErrNodeMismatch = errors.New("data directory belongs to another node")
	// ErrGap is returned when a remote edit skips sequence numbers of its origin.
	ErrGap = errors.New("edit out of sequence")
	// ErrFailed is returned after a write to Pebble failed: the node must restart.
	ErrFailed = errors.New("store failed")
)

// Config configures a Store.
type Config struct {
	// Dir is the data directory. Required unless FS is an in-memory FS.
	Dir string
	// NodeID is this node's id; it is written on first open and checked after.
	NodeID string
	// Physical is the physical clock for the HLC (default crdt.WallClock).
	Physical func() int64
	// MaxOffset bounds accepted clock skew (default crdt.DefaultMaxOffset).
	MaxOffset time.Duration
	// MaxBatch caps the edits committed in one synced batch (default 1024).
	MaxBatch int
	// CacheBytes is the size of Pebble's block cache (default 256 MiB).
	CacheBytes int64
	// FS overrides the filesystem (tests use vfs.NewCrashableMem).
	FS vfs.FS
	// Logger receives store logs (default slog.Default()).
	Logger *slog.Logger
	// Metrics receives store measurements; nil records nothing.
	Metrics Observer
}

// Observer receives measurements from the store; the agent wires Prometheus.
type Observer interface {
	// Committed is called once per synced batch.
	Committed(edits int, conflicts int, took time.Duration)
}

// DefaultConfig returns a Config with defaults for dir and node.
func DefaultConfig(dir, node string) Config {
	return Config{Dir: dir, NodeID: node, Physical: crdt.WallClock, MaxOffset: crdt.DefaultMaxOffset, MaxBatch: 1024}
}

// Validate checks the configuration.
func (c *Config) Validate() error {
	if c.NodeID == "" {
		return errors.New("storage: node id is required")
	}
	if len(c.NodeID) > 64 {
		return fmt.Errorf("storage: node id %q is longer than 64 bytes", c.NodeID)
	}
	for _, r := range c.NodeID {
		if !(r >= 'a' && r <= 'z' || r >= 'A' && r <= 'Z' || r >= '0' && r <= '9' || r == '-' || r == '_' || r == '.') {
			return fmt.Errorf("storage: node id %q may hold only letters, digits, '-', '_' and '.'", c.NodeID)
		}
	}
	if c.Dir == "" && c.FS == nil {
		return errors.New("storage: data directory is required")
	}
	return nil
}

// Store is one node's durable state. Every accepted edit is applied by a
// single committer goroutine that gathers concurrent requests into one
// batch, commits it with one fsync and then answers every request in it
// (group commit). Batches are strictly serial, so the op log never has a
// gap: seq s is durable only if every seq below it is.
type Store struct {
	cfg   Config
	db    *pebble.DB
	clock *crdt.Clock
	log   *slog.Logger

	reqs    chan *op
	stop    chan struct{}
	stopped chan struct{}

	// Owned by the committer goroutine: the applied vector including batches
	// written but not yet synced, and the error that stopped the store.
	staged crdt.VV
	// visible is staged as readers may use it: every edit it covers is in
	// the records a read sees (Pebble shows a batch once it is applied,
	// before its fsync). Reads clip the context they hand out to it.
	visible atomic.Pointer[crdt.VV]
	// visGen is odd while a batch is being applied to Pebble and its vector
	// published: a read that began and ended on one even value saw exactly
	// the batches visible covers (see consistent in read.go).
	visGen  atomic.Uint64
	seqCeil uint64 // persisted: no local seq above it was ever issued

	// failed holds the error that stopped the store (set by committer or syncer).
	failed atomic.Pointer[error]
	// sourceClockSkew counts source times refused by WriteAt.
	sourceClockSkew atomic.Uint64

	// mu guards applied, the durable per-origin high-water marks, and subs.
	mu struct {
		sync.Mutex
		applied   crdt.VV
		truncated crdt.VV
		closed    bool
		subs      map[*Subscription]struct{}
	}
}

// Open opens or creates the store in cfg.Dir.
func Open(cfg Config) (*Store, error) {
	if cfg.Physical == nil {
		cfg.Physical = crdt.WallClock
	}
	if cfg.MaxBatch <= 0 {
		cfg.MaxBatch = 1024
	}
	if cfg.Logger == nil {
		cfg.Logger = slog.Default()
	}
	if err := cfg.Validate(); err != nil {
		return nil, err
	}
	if cfg.CacheBytes <= 0 {
		cfg.CacheBytes = 256 << 20
	}
	opts := &pebble.Options{Logger: pebbleLogger{cfg.Logger}, CacheSize: cfg.CacheBytes}
	// Bloom filters: a put of a new record looks up a key that does not exist.
	for i := range opts.Levels {
		opts.Levels[i].FilterPolicy = bloom.FilterPolicy(10)
	}
	opts.EnsureDefaults()
	if cfg.FS != nil {
		opts.FS = cfg.FS
	}
	db, err := pebble.Open(cfg.Dir, opts)
	if err != nil {
		return nil, fmt.Errorf("open pebble in %q: %w", cfg.Dir, err)
	}
	s := &Store{cfg: cfg, db: db, log: cfg.Logger.With("component", "storage"),
		reqs: make(chan *op, cfg.MaxBatch), stop: make(chan struct{}), stopped: make(chan struct{})}
	s.mu.subs = map[*Subscription]struct{}{}
	if err := s.load(); err != nil {
		db.Close()
		return nil, err
	}
	go s.committer()
	return s, nil
}

// load checks the node id and restores the applied vector and the HLC floor.
func (s *Store) load() error {
	v, closer, err := s.db.Get(keyNodeID)
	switch {
	case errors.Is(err, pebble.ErrNotFound):
		if err := s.db.Set(keyNodeID, []byte(s.cfg.NodeID), pebble.Sync); err != nil {
			return fmt.Errorf("write node id: %w", err)
		}
	case err != nil:
		return fmt.Errorf("read node id: %w", err)
	default:
		id := string(v)
		closer.Close()
		if id != s.cfg.NodeID {
			return fmt.Errorf("%w: %q was created by node %q, not %q: pass --node-id %s or use another --data-dir",
				ErrNodeMismatch, s.cfg.Dir, id, s.cfg.NodeID, id)
		}
	}
	applied, err := s.scanApplied()
	if err != nil {
		return err
	}
	s.mu.applied = applied
	s.staged = applied
	s.publishVisible()
	if s.mu.truncated, err = s.scanTruncated(); err != nil {
		return err
	}
	if err := s.burnSequence(); err != nil {
		return err
	}
	var floor crdt.Timestamp
	if v, closer, err := s.db.Get(keyCeiling); err == nil {
		x, derr := decodeUvarint(v)
		closer.Close()
		if derr != nil {
			return fmt.Errorf("read HLC ceiling: %w", derr)
		}
		floor = crdt.Timestamp(x)
	} else if !errors.Is(err, pebble.ErrNotFound) {
		return fmt.Errorf("read HLC ceiling: %w", err)
	}
	s.clock = crdt.NewClock(crdt.ClockConfig{
		Physical:  s.cfg.Physical,
		MaxOffset: s.cfg.MaxOffset,
		Floor:     floor,
		Persist: func(c crdt.Timestamp) error {
			return s.db.Set(keyCeiling, uvarintBytes(uint64(c)), pebble.Sync)
		},
	})
	return nil
}

// scanMarks reads a per-origin vector stored under prefix (one key per
// origin, uvarint value): the applied marks and the truncation marks.
func (s *Store) scanMarks(prefix byte, what string) (crdt.VV, error) {
	it, err := s.db.NewIter(&pebble.IterOptions{LowerBound: []byte{prefix}, UpperBound: []byte{prefix + 1}})
	if err != nil {
		return nil, err
	}
	defer it.Close()
	m := map[string]uint64{}
	for it.First(); it.Valid(); it.Next() {
		origin, _, err := readEscaped(it.Key()[1:])
		if err != nil {
			return nil, fmt.Errorf("%w: %s key: %v", ErrCorrupt, what, err)
		}
		seq, err := decodeUvarint(it.Value())
		if err != nil {
			return nil, err
		}
		m[origin] = seq
	}
	return crdt.MakeVV(m), it.Error()
}

func (s *Store) scanApplied() (crdt.VV, error) { return s.scanMarks(prefixApplied, "applied") }

// NodeID returns this node's id.
func (s *Store) NodeID() string { return s.cfg.NodeID }

// Clock returns the node's hybrid logical clock.
func (s *Store) Clock() *crdt.Clock { return s.clock }

// Applied returns the durable per-origin high-water marks: for each origin,
// the highest sequence applied (every lower one is applied too).
func (s *Store) Applied() crdt.VV {
	s.mu.Lock()
	defer s.mu.Unlock()
	return s.mu.applied
}

// DiskUsage is the store's size on disk in bytes.
func (s *Store) DiskUsage() uint64 { return s.db.Metrics().DiskSpaceUsage() }

// Close stops the committer after it finished the batch in flight, ends
// subscriptions and closes the database. Requests not yet taken by the
// committer fail with ErrClosed; nothing acknowledged is lost.
func (s *Store) Close() error {
	s.mu.Lock()
	if s.mu.closed {
		s.mu.Unlock()
		return nil
	}
	s.mu.closed = true
	for sub := range s.mu.subs {
		sub.closeLocked()
		delete(s.mu.subs, sub)
	}
	s.mu.Unlock()
	close(s.stop)
	<-s.stopped
	// Clean shutdown: everything issued is durable, so the next open needs
	// no burned sequence numbers.
	if s.failure() == nil {
		if err := s.db.Set(keySeqCeil, uvarintBytes(s.staged.Get(s.cfg.NodeID)), pebble.Sync); err != nil {
			s.db.Close()
			return fmt.Errorf("persist sequence ceiling: %w", err)
		}
	}
	return s.db.Close()
}

// Do is the entry point for writes; ctx bounds only the wait to be queued.
func (s *Store) submit(ctx context.Context, o *op) (*Result, error) {
	o.done = make(chan struct{})
	select {
	case s.reqs <- o:
	case <-s.stop:
		return nil, ErrClosed
	case <-ctx.Done():
		return nil, ctx.Err()
	}
	// Once queued, the edit may commit: wait for the outcome regardless of ctx,
	// so a caller never reports failure for an edit that landed.
	select {
	case <-o.done:
		return o.res, o.err
	case <-s.stopped:
		select {
		case <-o.done:
			return o.res, o.err
		default:
			return nil, ErrClosed
		}
	}
}

func uvarintBytes(x uint64) []byte {
	var b [10]byte
	n := putUvarint(b[:], x)
	return b[:n]
}

type pebbleLogger struct{ l *slog.Logger }

func (p pebbleLogger) Infof(format string, args ...any) {
	p.l.Debug(fmt.Sprintf(format, args...), "component", "pebble")
}
func (p pebbleLogger) Errorf(format string, args ...any) {
	p.l.Error(fmt.Sprintf(format, args...), "component", "pebble")
}
func (p pebbleLogger) Fatalf(format string, args ...any) {
	p.l.Error(fmt.Sprintf(format, args...), "component", "pebble")
	panic(fmt.Sprintf(format, args...))
}
