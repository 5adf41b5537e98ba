package postgres

import (
	"context"
	"encoding/json"
	"io"
	"log/slog"
	"math"
	"testing"
	"time"

	"github.com/lattice-sync/lattice/connectors"
	"github.com/lattice-sync/lattice/storage"
)

func near(a, b float64) bool { return math.Abs(a-b) < 1.01 }

// TestPoolRestoresBudget: a pool built from a saved budget starts from it
// plus what refilled since it was measured (capped at the burst), not from
// a full bucket.
func TestPoolRestoresBudget(t *testing.T) {
	t0 := time.Date(2025, 1, 2, 3, 4, 5, 0, time.UTC)
	p := newPool("reads", 100, 100, nil, t0)
	if got := p.tokens(t0); !near(got, 100) {
		t.Fatalf("a new pool holds %.1f tokens, want a full bucket (100)", got)
	}
	if !p.lim.AllowN(t0, 90) {
		t.Fatal("spend 90 of 100")
	}
	saved := poolState{Tokens: p.tokens(t0), At: t0}
	if !near(saved.Tokens, 10) {
		t.Fatalf("budget after spending 90 of 100: %.1f", saved.Tokens)
	}
	for _, tc := range []struct {
		name string
		at   time.Time
		want float64
	}{
		{"at once", t0, 10},
		{"half a second later (50 refilled)", t0.Add(500 * time.Millisecond), 60},
		{"long after (capped at the burst)", t0.Add(time.Hour), 100},
		{"on a node whose clock is behind (no refill)", t0.Add(-time.Minute), 10},
	} {
		r := newPool("reads", 100, 100, &saved, tc.at)
		if got := r.tokens(tc.at); !near(got, tc.want) {
			t.Errorf("%s: restored pool holds %.1f tokens, want %.0f", tc.name, got, tc.want)
		}
	}
	// A burst lowered since the checkpoint caps the restored budget.
	if got := newPool("reads", 100, 5, &poolState{Tokens: 50, At: t0}, t0).tokens(t0); !near(got, 5) {
		t.Errorf("restored into a smaller burst: %.1f tokens, want 5", got)
	}
}

// TestBudgetThroughCheckpoint: the connector's checkpoint carries each
// pool's budget, and a connector started from that checkpoint (a restart,
// or a new owner after a move) starts from it.
func TestBudgetThroughCheckpoint(t *testing.T) {
	scfg := storage.DefaultConfig(t.TempDir(), "n1")
	scfg.Logger = slog.New(slog.NewTextHandler(io.Discard, nil))
	store, err := storage.Open(scfg)
	if err != nil {
		t.Fatal(err)
	}
	defer store.Close()
	cps := &fakeCheckpoints{}
	cfg := &Config{Name: "crm", Capture: true, Project: true, Slot: "lattice_crm", RateLimit: RateLimit{Reads: 50, Writes: 20}}
	log := slog.New(slog.NewTextHandler(io.Discard, nil))
	c := New(cfg, store, nil, log, WithCheckpoints(cps, 1))
	ctx := context.Background()
	l := c.limits()
	if l.reads == nil || l.writes == nil || l.reads.burst != 50 || l.writes.burst != 20 {
		t.Fatalf("pools: %+v %+v", l.reads, l.writes)
	}
	// Spend most of both budgets, then checkpoint.
	if err := l.reads.take(ctx, 45, nil); err != nil {
		t.Fatal(err)
	}
	if err := l.writes.take(ctx, 20, nil); err != nil {
		t.Fatal(err)
	}
	if err := c.writeCheckpoint(ctx, position{LSN: 42}, true); err != nil {
		t.Fatal(err)
	}
	var cp checkpoint
	if err := json.Unmarshal(cps.data, &cp); err != nil {
		t.Fatal(err)
	}
	r, w := cp.Limits[connectors.PoolReads], cp.Limits[connectors.PoolWrites]
	if r.At.IsZero() || r.Tokens > 10 || w.Tokens > 5 {
		t.Fatalf("checkpoint budget: %s", cps.data)
	}
	// The next connector, from that checkpoint.
	c2 := New(cfg, store, nil, log, WithCheckpoints(cps, 2))
	now := time.Now()
	if got, max := c2.limits().reads.tokens(now), r.Tokens+now.Sub(r.At).Seconds()*50+1; got > max || got >= 50 {
		t.Errorf("restored reads budget %.1f, want at most %.1f (the checkpoint's %.1f plus refill), not a full bucket", got, max, r.Tokens)
	}
	rep := c2.Report().RateLimits
	if len(rep) != 2 || rep[0].Pool != "reads" || rep[0].Limit != 50 || rep[0].Burst != 50 || rep[1].Pool != "writes" || rep[1].Rows != 0 {
		t.Errorf("report: %+v", rep)
	}
	// Unlimited: no pools, nothing in the checkpoint, nothing waits.
	c3 := New(&Config{Name: "x", Capture: true}, store, nil, log)
	if l := c3.limits(); l.reads != nil || l.writes != nil || l.state(now) != nil || len(c3.Report().RateLimits) != 0 {
		t.Errorf("an unlimited connector has pools")
	}
	if err := c3.limits().reads.take(ctx, 1_000_000, nil); err != nil {
		t.Error(err)
	}
}

// TestPoolWaits: taking more than the budget waits for it (a lower bound
// only), counts the time waited and the rows, calls before once before
// waiting, and ends when the context does.
func TestPoolWaits(t *testing.T) {
	p := newPool("reads", 50, 5, nil, time.Now())
	ctx := context.Background()
	befores := 0
	start := time.Now()
	for i := 0; i < 30; i++ {
		if err := p.take(ctx, 1, func() error { befores++; return nil }); err != nil {
			t.Fatal(err)
		}
	}
	if took, want := time.Since(start), 500*time.Millisecond; took < want-20*time.Millisecond {
		t.Errorf("30 rows at 50/s with a burst of 5 took %s, want at least %s", took, want)
	}
	rep := p.report(time.Now())
	if rep.Rows != 30 || rep.Waited <= 0 || befores == 0 {
		t.Errorf("report %+v, before called %d times", rep, befores)
	}
	// More than the burst at once goes in parts.
	if err := p.take(ctx, 12, nil); err != nil {
		t.Fatal(err)
	}
	// Giving back makes the next take free.
	p.giveBack(3)
	st := time.Now()
	if err := p.take(ctx, 3, func() error { t.Error("waited for tokens given back"); return nil }); err != nil {
		t.Fatal(err)
	}
	if time.Since(st) > 50*time.Millisecond {
		t.Error("take of tokens given back waited")
	}
	cctx, cancel := context.WithCancel(ctx)
	cancel()
	if err := newPool("w", 1, 1, &poolState{Tokens: 0, At: time.Now()}, time.Now()).take(cctx, 1, nil); err == nil {
		t.Error("take on an ended context with no budget did not fail")
	}
}
