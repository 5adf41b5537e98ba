package postgres

import (
	"context"
	"encoding/json"
	"fmt"
	"math"
	"strings"
	"sync"
	"time"

	"golang.org/x/time/rate"

	"github.com/lattice-sync/lattice/connectors"
)

// Rate limits.
//
// A connector may limit how fast it reads from its database and how fast
// it writes into it, each in rows per second (rate_limit: {reads, writes,
// burst}): two token buckets (golang.org/x/time/rate), one per pool, per
// connector (one connector is one external system).
//
//   - reads: every row change capture takes from the source (a change of
//     a mapped table that is not lattice's own write) and every row the
//     initial snapshot reads takes one token. When the budget is short,
//     what was gathered is queued first and then capture waits before
//     reading more: the source keeps what is not read yet (logical
//     replication: the slot keeps the WAL). A mode feeds its pipeline
//     through pipeline.pace, once per row, before it takes the row.
//   - writes: every record projection writes takes one token; projection
//     waits before building a batch (so nothing changes under it while it
//     waits) and gives back the tokens of records it then skips (the
//     database already holds them). A batch never exceeds the burst.
//
// Budget across the cluster: each checkpoint (capture.go) carries each
// pool's available tokens and the time they were measured. A connector
// that starts (a restart, or a new owner after a move) starts from that
// budget plus what refilled since, capped at the burst, instead of a full
// bucket. The budget is as of the last checkpoint (one a second while
// anything moves): what the last owner spent after it is not known to the
// next, so the limit can be exceeded by at most what it spent since then,
// which is one checkpoint interval's refill (rate × 1 s) when the bucket
// was empty (under sustained load) and at most the burst plus that
// otherwise. The time is the writing node's wall clock; a node whose clock
// is behind counts no refill, one whose clock is ahead counts more (never
// beyond the burst).

// RateLimit is a connector's rate_limit: rows per second for each pool
// (0: unlimited) and the burst (rows at once with a full budget; default
// one second's worth of each pool's rate).
type RateLimit struct {
	Reads  float64
	Writes float64
	Burst  int
}

type rawRateLimit struct {
	Reads  *float64 `json:"reads"`
	Writes *float64 `json:"writes"`
	Burst  *int     `json:"burst"`
}

// parseRateLimit reads rate_limit (absent: unlimited) into c.RateLimit.
func (c *Config) parseRateLimit(raw json.RawMessage) error {
	if len(raw) == 0 || string(raw) == "null" {
		return nil
	}
	at := fmt.Sprintf("connector %q: rate_limit", c.Name)
	var rr rawRateLimit
	dec := json.NewDecoder(strings.NewReader(string(raw)))
	dec.DisallowUnknownFields()
	if err := dec.Decode(&rr); err != nil {
		if k, ok := strings.CutPrefix(err.Error(), "json: unknown field "); ok {
			return fmt.Errorf("%s: unknown key %s (want reads, writes, burst)", at, k)
		}
		return fmt.Errorf("%s: %v (want a mapping {reads: ROWS_PER_SECOND, writes: ROWS_PER_SECOND, burst: ROWS})", at, err)
	}
	perSecond := func(key string, v *float64) (float64, error) {
		switch {
		case v == nil:
			return 0, nil
		case math.IsNaN(*v) || math.IsInf(*v, 0) || *v < 1:
			return 0, fmt.Errorf("%s: %s %v: want at least 1 row per second (leave it out for no limit)", at, key, *v)
		}
		return *v, nil
	}
	var err error
	if c.RateLimit.Reads, err = perSecond("reads", rr.Reads); err != nil {
		return err
	}
	if c.RateLimit.Writes, err = perSecond("writes", rr.Writes); err != nil {
		return err
	}
	switch {
	case rr.Reads == nil && rr.Writes == nil:
		return fmt.Errorf("%s: give reads, writes or both (rows per second)", at)
	case rr.Reads != nil && !c.Capture:
		return fmt.Errorf("%s: reads limits capture, but capture is off: remove reads", at)
	case rr.Writes != nil && !c.Project:
		return fmt.Errorf("%s: writes limits projection, but project is off: remove writes", at)
	case rr.Burst != nil && (*rr.Burst < 1 || *rr.Burst > 1_000_000):
		return fmt.Errorf("%s: burst %d: want 1 to 1000000 rows", at, *rr.Burst)
	case rr.Burst != nil:
		c.RateLimit.Burst = *rr.Burst
	}
	return nil
}

// burstOf is a pool's burst: the configured one, else a second's worth.
func (r RateLimit) burstOf(limit float64) int {
	if r.Burst > 0 {
		return r.Burst
	}
	return max(1, int(math.Ceil(limit)))
}

// poolState is a pool's budget as a checkpoint records it.
type poolState struct {
	Tokens float64   `json:"tokens"`
	At     time.Time `json:"at"`
}

// rateWindow is how many seconds Rate is measured over.
const rateWindow = 10

// pool is one token bucket. It is safe for concurrent use; a nil *pool is
// unlimited.
type pool struct {
	name  string
	limit float64
	burst int
	lim   *rate.Limiter
	// chunk is how many tokens a wait reserves at once (about 10 ms of
	// budget), so a fast limit does not sleep once per row; the rest is
	// kept as credit for the next rows.
	chunk   int
	started time.Time

	mu struct {
		sync.Mutex
		credit int // tokens reserved (or given back) and not yet spent
		waited time.Duration
		rows   uint64
		window [rateWindow]struct {
			sec int64
			n   uint64
		}
	}
}

// newPool returns a pool with a full budget, or the saved one plus what
// refilled since it was measured.
func newPool(name string, limit float64, burst int, saved *poolState, now time.Time) *pool {
	p := &pool{name: name, limit: limit, burst: burst, lim: rate.NewLimiter(rate.Limit(limit), burst),
		chunk: max(1, min(burst, int(limit/100))), started: now}
	if saved != nil {
		tokens := saved.Tokens
		if elapsed := now.Sub(saved.At); elapsed > 0 {
			tokens += elapsed.Seconds() * limit
		}
		tokens = max(0, min(float64(burst), tokens))
		if spend := int(math.Round(float64(burst) - tokens)); spend > 0 {
			p.lim.AllowN(now, spend) // a new limiter is full: spending takes it to the saved budget
		}
	}
	return p
}

// take takes n tokens, waiting while the budget is short. Before the first
// wait it calls before (capture queues what it gathered, so those changes
// do not wait behind the limit). It fails only when ctx ends.
func (p *pool) take(ctx context.Context, n int, before func() error) error {
	if p == nil || n <= 0 {
		return nil
	}
	for n > p.burst { // more than a bucket holds: in parts
		if err := p.take(ctx, p.burst, before); err != nil {
			return err
		}
		n -= p.burst
	}
	now := time.Now()
	p.mu.Lock()
	if p.mu.credit >= n {
		p.mu.credit -= n
		p.count(now, n)
		p.mu.Unlock()
		return nil
	}
	need := n - p.mu.credit
	p.mu.credit = 0
	if p.lim.AllowN(now, need) {
		p.count(now, n)
		p.mu.Unlock()
		return nil
	}
	p.mu.Unlock()
	if before != nil {
		if err := before(); err != nil {
			p.giveBack(n - need)
			return err
		}
	}
	now = time.Now()
	ask := min(p.burst, max(need, p.chunk))
	r := p.lim.ReserveN(now, ask)
	if d := r.DelayFrom(now); d > 0 {
		t := time.NewTimer(d)
		select {
		case <-ctx.Done():
			t.Stop()
			r.Cancel()
			p.giveBack(n - need)
			return ctx.Err()
		case <-t.C:
		}
	}
	done := time.Now()
	p.mu.Lock()
	p.mu.credit += ask - need
	p.mu.waited += done.Sub(now)
	p.count(done, n)
	p.mu.Unlock()
	return nil
}

// giveBack returns n tokens taken and not used (records projection then
// skipped); they are spent first by the next take.
func (p *pool) giveBack(n int) {
	if p == nil || n <= 0 {
		return
	}
	p.mu.Lock()
	defer p.mu.Unlock()
	p.mu.credit = min(p.burst, p.mu.credit+n)
	sec := time.Now().Unix()
	if w := &p.mu.window[sec%rateWindow]; w.sec == sec {
		w.n -= min(w.n, uint64(n))
	}
	p.mu.rows -= min(p.mu.rows, uint64(n))
}

// count records n rows taken at now; mu is held.
func (p *pool) count(now time.Time, n int) {
	p.mu.rows += uint64(n)
	sec := now.Unix()
	w := &p.mu.window[sec%rateWindow]
	if w.sec != sec {
		w.sec, w.n = sec, 0
	}
	w.n += uint64(n)
}

// tokens is the budget available at now, credit included.
func (p *pool) tokens(now time.Time) float64 {
	p.mu.Lock()
	credit := p.mu.credit
	p.mu.Unlock()
	return max(0, min(float64(p.burst), p.lim.TokensAt(now)+float64(credit)))
}

// report describes the pool as of now.
func (p *pool) report(now time.Time) connectors.RateLimit {
	r := connectors.RateLimit{Pool: p.name, Limit: p.limit, Burst: p.burst, Tokens: p.tokens(now)}
	p.mu.Lock()
	defer p.mu.Unlock()
	r.Waited, r.Rows = p.mu.waited, p.mu.rows
	// The rate over the last complete seconds (up to rateWindow of them).
	sec := now.Unix()
	var n uint64
	for _, w := range p.mu.window {
		if w.sec < sec && w.sec >= sec-rateWindow {
			n += w.n
		}
	}
	if span := min(rateWindow, sec-p.started.Unix()); span > 0 {
		r.Rate = float64(n) / float64(span)
	}
	return r
}

// limits are a connector's pools, built on first use from its
// configuration and its last checkpoint's budget.
type limits struct {
	once          sync.Once
	reads, writes *pool
}

// limits returns the connector's pools (nil ones are unlimited).
func (c *Connector) limits() *limits {
	c.rl.once.Do(func() {
		if c.cfg == nil {
			return
		}
		rl := c.cfg.RateLimit
		if rl.Reads == 0 && rl.Writes == 0 {
			return
		}
		var saved map[string]poolState
		if cp, ok := c.readCheckpoint(); ok {
			saved = cp.Limits
		}
		now := time.Now()
		build := func(name string, limit float64) *pool {
			if limit == 0 {
				return nil
			}
			var st *poolState
			if s, ok := saved[name]; ok {
				st = &s
			}
			p := newPool(name, limit, rl.burstOf(limit), st, now)
			c.log.Info("rate limit", "pool", name, "rows_per_second", limit, "burst", p.burst,
				"budget", fmt.Sprintf("%.0f", p.tokens(now)), "restored", st != nil)
			return p
		}
		c.rl.reads = build(connectors.PoolReads, rl.Reads)
		c.rl.writes = build(connectors.PoolWrites, rl.Writes)
	})
	return &c.rl
}

// state is what a checkpoint records of the pools (nil: none).
func (l *limits) state(now time.Time) map[string]poolState {
	var out map[string]poolState
	for _, p := range []*pool{l.reads, l.writes} {
		if p == nil {
			continue
		}
		if out == nil {
			out = map[string]poolState{}
		}
		out[p.name] = poolState{Tokens: p.tokens(now), At: now.UTC()}
	}
	return out
}

// report describes the pools for the connector's Report.
func (l *limits) report() []connectors.RateLimit {
	var out []connectors.RateLimit
	now := time.Now()
	for _, p := range []*pool{l.reads, l.writes} {
		if p != nil {
			out = append(out, p.report(now))
		}
	}
	return out
}

// pace takes a read token for the change a capture mode is about to take
// from the source (call it once per row, before advancing the position
// past the row). When the budget is short it first queues what was
// gathered, then waits: the source keeps what is not read yet.
func (p *pipeline) pace() error {
	return p.c.limits().reads.take(p.ctx, 1, p.flush)
}

// writeParts splits records into batches that fit the write burst; ok is
// false when they fit already (or writes are unlimited).
func (c *Connector) writeParts(records [][2]string) (parts [][][2]string, ok bool) {
	w := c.limits().writes
	if w == nil || len(records) <= w.burst {
		return nil, false
	}
	for len(records) > 0 {
		n := min(w.burst, len(records))
		parts = append(parts, records[:n])
		records = records[n:]
	}
	return parts, true
}

// buildPaced is build for a projection of one record, within the write
// budget: it waits for a token first, and gives it back when there is
// nothing to write.
func (c *Connector) buildPaced(ctx context.Context, entity, id string) (*projection, error) {
	w := c.limits().writes
	if err := w.take(ctx, 1, nil); err != nil {
		return nil, err
	}
	p, err := c.build(entity, id)
	if p == nil {
		w.giveBack(1)
	}
	return p, err
}
