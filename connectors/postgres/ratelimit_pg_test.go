package postgres_test

import (
	"context"
	"fmt"
	"log/slog"
	"testing"
	"time"

	"github.com/lattice-sync/lattice/connectors"
	"github.com/lattice-sync/lattice/connectors/postgres"
	"github.com/lattice-sync/lattice/crdt"
)

func TestRateLimitConfig(t *testing.T) {
	sch, _ := crdt.ParseSchema("s.yaml", []byte(schemaYAML))
	decl := func(extra map[string]any) map[string]any {
		d := map[string]any{"kind": "postgres", "dsn": "x", "tables": map[string]any{"t": map[string]any{
			"entity": "contact", "key": []any{"id"}, "columns": map[string]any{"a": "name"}}}}
		for k, v := range extra {
			d[k] = v
		}
		return d
	}
	good := []struct {
		name          string
		rl            any
		reads, writes float64
		burst         int
	}{
		{"absent", nil, 0, 0, 0},
		{"reads", map[string]any{"reads": 2000}, 2000, 0, 0},
		{"both with a burst", map[string]any{"reads": 2000, "writes": 500.5, "burst": 100}, 2000, 500.5, 100},
	}
	for _, tc := range good {
		t.Run(tc.name, func(t *testing.T) {
			extra := map[string]any{}
			if tc.rl != nil {
				extra["rate_limit"] = tc.rl
			}
			cfg, err := postgres.ParseConfig("crm", decl(extra), sch)
			if err != nil {
				t.Fatal(err)
			}
			if r := cfg.RateLimit; r.Reads != tc.reads || r.Writes != tc.writes || r.Burst != tc.burst {
				t.Errorf("rate limit %+v", r)
			}
		})
	}
	bad := []struct {
		name  string
		extra map[string]any
		want  string
	}{
		{"zero", map[string]any{"rate_limit": map[string]any{"reads": 0}}, "reads 0: want at least 1 row per second"},
		{"negative", map[string]any{"rate_limit": map[string]any{"writes": -5}}, "writes -5"},
		{"text", map[string]any{"rate_limit": map[string]any{"reads": "fast"}}, "rate_limit"},
		{"unknown key", map[string]any{"rate_limit": map[string]any{"read": 10}}, `unknown key "read" (want reads, writes, burst)`},
		{"burst alone", map[string]any{"rate_limit": map[string]any{"burst": 10}}, "give reads, writes or both"},
		{"zero burst", map[string]any{"rate_limit": map[string]any{"reads": 10, "burst": 0}}, "burst 0"},
		{"not a mapping", map[string]any{"rate_limit": 100}, "want a mapping"},
		{"reads without capture", map[string]any{"capture": false, "rate_limit": map[string]any{"reads": 10}}, "capture is off"},
		{"writes without projection", map[string]any{"project": false, "rate_limit": map[string]any{"writes": 10}}, "project is off"},
	}
	for _, tc := range bad {
		t.Run(tc.name, func(t *testing.T) {
			_, err := postgres.ParseConfig("crm", decl(tc.extra), sch)
			if err == nil || !contains(err.Error(), tc.want) || !contains(err.Error(), `connector "crm": rate_limit`) {
				t.Fatalf("got %v, want an error containing %q", err, tc.want)
			}
		})
	}
}

func poolOf(r connectors.Report, name string) connectors.RateLimit {
	for _, l := range r.RateLimits {
		if l.Pool == name {
			return l
		}
	}
	return connectors.RateLimit{}
}

// TestReadRateLimit: with reads: R, capturing N rows (the initial snapshot,
// then streamed changes) takes at least (N - burst)/R seconds, and nothing
// is lost; the report shows the pool; the checkpoint carries its budget.
func TestReadRateLimit(t *testing.T) {
	e := setupOne(t)
	const rate, burst, before, after = 100, 10, 250, 200
	e.crm.Exec(t, "crm", fmt.Sprintf(`INSERT INTO customers SELECT i, 'n'||i, NULL, NULL FROM generate_series(1, %d) i`, before))
	cfg, err := postgres.ParseConfig("crm", map[string]any{"kind": "postgres", "dsn": e.crm.DSN("crm"), "project": false, "acks": 1,
		"rate_limit": map[string]any{"reads": rate, "burst": burst},
		"tables": map[string]any{"customers": map[string]any{"entity": "contact", "key": []any{"customer_id"},
			"columns": map[string]any{"full_name": "name", "email_address": "email", "phone": "phone"}}}}, e.schema.s)
	if err != nil {
		t.Fatal(err)
	}
	cp := &memCheckpoints{epoch: 1}
	c := postgres.New(cfg, e.store, e.schema, slog.New(slog.NewTextHandler(testWriter{t}, &slog.HandlerOptions{Level: slog.LevelInfo})),
		postgres.WithCheckpoints(cp, 1), postgres.WithReport())
	ctx, cancel := context.WithCancel(context.Background())
	done := make(chan error, 1)
	start := time.Now()
	go func() { done <- c.Run(ctx) }()
	defer func() { cancel(); <-done }()
	captured := func(from, to int) (bool, string) {
		for i := from; i <= to; i++ {
			if got := e.name(t, fmt.Sprint(i)); got != fmt.Sprintf("n%d", i) {
				return false, fmt.Sprintf("row %d: %q", i, got)
			}
		}
		return true, ""
	}
	waitFor := func(what string, t0 time.Time, from, to int) time.Duration {
		t.Helper()
		deadline := t0.Add(60 * time.Second)
		for {
			ok, why := captured(from, to)
			if ok {
				return time.Since(t0)
			}
			if time.Now().After(deadline) {
				t.Fatalf("%s: not within 60 s: %s", what, why)
			}
			time.Sleep(50 * time.Millisecond)
		}
	}
	waitFor("snapshot captured", start, 1, before)
	snap := time.Since(start)
	if want := time.Duration(float64(before-burst) / rate * float64(time.Second)); snap < want {
		t.Errorf("snapshot of %d rows at %d rows/s (burst %d) took %s, want at least %s", before, rate, burst, snap, want)
	}
	t0 := time.Now()
	e.crm.Exec(t, "crm", fmt.Sprintf(`INSERT INTO customers SELECT i, 'n'||i, NULL, NULL FROM generate_series(%d, %d) i`, before+1, before+after))
	took := waitFor("streamed rows captured", t0, before+1, before+after)
	if want := time.Duration(float64(after-burst) / rate * float64(time.Second)); took < want {
		t.Errorf("streaming %d rows at %d rows/s (burst %d) took %s, want at least %s", after, rate, burst, took, want)
	}
	t.Logf("snapshot of %d rows: %s; %d streamed rows: %s", before, snap, after, took)
	r := poolOf(c.Report(), connectors.PoolReads)
	if r.Limit != rate || r.Burst != burst || r.Rows < before+after || r.Waited < time.Second || r.Tokens > burst {
		t.Errorf("reads pool in the report: %+v", r)
	}
	if len(c.Report().RateLimits) != 1 {
		t.Errorf("pools: %+v (writes are not limited)", c.Report().RateLimits)
	}
	m := waitCheckpoint(t, cp, "checkpoint with the reads budget", func(m map[string]any) bool {
		rl, _ := m["rate_limits"].(map[string]any)
		_, ok := rl["reads"]
		return ok
	})
	pool := m["rate_limits"].(map[string]any)["reads"].(map[string]any)
	if tok, _ := pool["tokens"].(float64); tok < 0 || tok > burst || pool["at"] == nil {
		t.Errorf("checkpointed budget %v", pool)
	}
}

// TestWriteRateLimit: with writes: W, projecting N records takes at least
// (N - burst)/W seconds, and every record lands.
func TestWriteRateLimit(t *testing.T) {
	e := setupOne(t)
	const rate, burst, before, after = 100, 10, 120, 150
	ent, _ := e.schema.s.Entity("contact")
	ctx := context.Background()
	put := func(from, to int) {
		for i := from; i <= to; i++ {
			if _, err := e.store.Write(ctx, "contact", fmt.Sprint(i), "api", putFields(ent, map[string]string{"name": fmt.Sprintf("n%d", i)})); err != nil {
				t.Fatal(err)
			}
		}
	}
	put(1, before)
	cfg, err := postgres.ParseConfig("crm", map[string]any{"kind": "postgres", "dsn": e.crm.DSN("crm"), "capture": false,
		"rate_limit": map[string]any{"writes": rate, "burst": burst},
		"tables": map[string]any{"customers": map[string]any{"entity": "contact", "key": []any{"customer_id"},
			"columns": map[string]any{"full_name": "name", "email_address": "email", "phone": "phone"}}}}, e.schema.s)
	if err != nil {
		t.Fatal(err)
	}
	c := postgres.New(cfg, e.store, e.schema, slog.New(slog.NewTextHandler(testWriter{t}, &slog.HandlerOptions{Level: slog.LevelInfo})), postgres.WithReport())
	rctx, cancel := context.WithCancel(ctx)
	done := make(chan error, 1)
	start := time.Now()
	go func() { done <- c.Run(rctx) }()
	defer func() { cancel(); <-done }()
	count := func(t0 time.Time, n int) time.Duration {
		t.Helper()
		deadline := t0.Add(60 * time.Second)
		for {
			got := row(t, e.crm, "crm", "SELECT count(*) FROM customers")
			if got == fmt.Sprint(n) {
				return time.Since(t0)
			}
			if time.Now().After(deadline) {
				t.Fatalf("%s of %d records projected after 60 s", got, n)
			}
			time.Sleep(50 * time.Millisecond)
		}
	}
	count(start, before)
	first := time.Since(start)
	if want := time.Duration(float64(before-burst) / rate * float64(time.Second)); first < want {
		t.Errorf("projecting %d records at %d rows/s (burst %d) took %s, want at least %s", before, rate, burst, first, want)
	}
	t0 := time.Now()
	put(before+1, before+after)
	took := count(t0, before+after)
	if want := time.Duration(float64(after-burst) / rate * float64(time.Second)); took < want {
		t.Errorf("projecting %d more records at %d rows/s took %s, want at least %s", after, rate, took, want)
	}
	t.Logf("%d records at start: %s; %d more: %s", before, first, after, took)
	if got := row(t, e.crm, "crm", fmt.Sprintf("SELECT full_name FROM customers WHERE customer_id = %d", before+after)); got != fmt.Sprintf("n%d", before+after) {
		t.Errorf("last record: %q", got)
	}
	w := poolOf(c.Report(), connectors.PoolWrites)
	if w.Limit != rate || w.Rows < before+after || w.Waited <= 0 {
		t.Errorf("writes pool in the report: %+v", w)
	}
}
